"""The worker pool (issue 10, "Pool"): a gateway that starts its worker
(`command`), health-checks it, restarts it when it dies, retries a request
that a worker dropped before answering, ends a stream cut mid-way with an
error event and bills it, and uses an external https upstream with its own
key, billed like our own.

Runs against the test stack (scripts/stack.sh test-up) plus gateway
instances this test starts on the same PostgreSQL and Redis.  Every wait is
on an event (a metric, a row, a byte) with a generous deadline."""

import http.client
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwinstances import Instances, https  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import E, MODEL, WAIT, ctl, q, wait_for  # noqa: E402

BASE = int(E["TG_TEST_GATEWAY"].rsplit(":", 1)[1])
P_GW = BASE + 60        # instances: P_GW, P_GW + 1, ... (admin: + gwinstances.ADMIN_OFFSET)
P_ENGINE = BASE + 70    # the engine the pool gateway starts
P_FAKE = BASE + 71      # a worker that passes /health and drops every chat request
P_FAKE503 = BASE + 73   # a worker that answers every chat request 503 (not admitted)
P_NEVER = BASE + 74     # the port of a worker that never becomes healthy
P_CLOSED = BASE + 75    # a worker's port where nothing listens (Unreachable; its gateway: P_GW + 5)


RUN = "%x" % int(time.time() * 1000)


def customer_key(name):
    """A new customer (name made unique per run) with $5 and a key -> (key, customer id)."""
    name = "%s-%s" % (name, RUN)
    ctl("customer", "create", name, "--credit-usd", "5.00")
    key = ctl("key", "create", "--customer", name).strip().splitlines()[-1]
    return key, q("SELECT id FROM customers WHERE name = %s", name)[0][0]


def labelled(gw, i, name, worker):
    """The value of name{worker="..."} in instance i's /metrics, or None."""
    want = '%s{worker="%s"} ' % (name, worker)
    for line in gw.admin(i, "/metrics").decode().splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return None


def usage_row(rid):
    rows = q("SELECT customer_id, prompt_tokens, completion_tokens, http_status, stream FROM usage "
             "WHERE request_id = %s", rid)
    return rows[0] if rows else None


def settled_row(gw, rid):
    gw.settled()
    return wait_for(lambda: usage_row(rid), "the usage row of " + rid)


class FakeWorker(threading.Thread):
    """Answers GET health_path 200 (with auth: only to that bearer key, else 401); reads every POST whole
    and then resets the connection before any answer byte (answer503: answers 503 server_overloaded, as
    a worker whose queue is full).  Over TLS with tls: an ssl context."""

    def __init__(self, port, tls=None, answer503=False, health_path="/health", auth=None, early_reset=False):
        super().__init__(daemon=True)
        self.tls = tls
        self.answer503 = answer503
        self.early_reset = early_reset  # reset a POST after its head, most of its body never read
        self.health_path = health_path
        self.auth = auth
        self.gets = []
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if early_reset:  # a small receive window (inherited by accepted sockets): the sender stalls
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.s.bind(("127.0.0.1", port))
        self.s.listen(64)
        self.s.settimeout(1)
        self.posts = []
        self.arrived = {}  # request id -> when its whole request was read (time.monotonic)
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                c, _ = self.s.accept()
            except OSError:
                continue
            c.settimeout(10)
            try:
                if self.tls:
                    c = self.tls.wrap_socket(c, server_side=True)
                data = b""
                while b"\r\n\r\n" not in data:
                    b = c.recv(65536)
                    if not b:
                        break
                    data += b
                head = {ln.split(b":", 1)[0].strip().lower(): ln.split(b":", 1)[1].strip()
                        for ln in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:] if b":" in ln}
                if data.startswith(b"GET "):
                    path = data.split(b" ")[1].decode()
                    self.gets.append(path)
                    ok = path == self.health_path and (
                        not self.auth or head.get(b"authorization") == b"Bearer " + self.auth.encode())
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n" if ok
                              else b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                elif data.startswith(b"POST") and self.early_reset:
                    self.posts.append(head.get(b"x-request-id", b"").decode() or None)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                elif data.startswith(b"POST"):
                    want = int(head.get(b"content-length", b"0"))
                    while len(data.split(b"\r\n\r\n", 1)[1]) < want:  # the whole request, body included
                        b = c.recv(65536)
                        if not b:
                            break
                        data += b
                    self.posts.append(head.get(b"x-request-id", b"").decode() or None)
                    self.arrived[self.posts[-1]] = time.monotonic()
                    if self.answer503:
                        e = b'{"error":{"message":"queue full","type":"server_error","param":null,' \
                            b'"code":"server_overloaded"}}'
                        c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(e) + e)
                    elif not self.tls:
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            c.close()

    def close(self):
        self.stop = True
        self.join(10)
        self.s.close()


def engine_cmd(port):
    return [os.path.join(E["TG_TEST_BIN"], "tollgate-engine"), "serve", "--model", E["TG_TEST_MODEL_DIR"],
            "--listen", "127.0.0.1:%d" % port, "--threads", "2", "--default-max-tokens", "512"]


def chat_body(text, max_tokens=8, stream=False):
    b = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    if stream:
        b["stream"] = True
    return b


class Supervised(unittest.TestCase):
    """One gateway running its own engine worker (command) beside a worker that reads requests and
    drops them unanswered and one that answers 503 (not admitted)."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeWorker(P_FAKE)
        cls.fake.start()
        cls.fake503 = FakeWorker(P_FAKE503, answer503=True)
        cls.fake503.start()
        cls.url = "http://127.0.0.1:%d" % P_ENGINE
        cls.fake_url = "http://127.0.0.1:%d" % P_FAKE
        cls.fake503_url = "http://127.0.0.1:%d" % P_FAKE503
        cls.key, _ = customer_key("pool-supervised")
        cls.gw = Instances("pool-instances", [P_GW], workers=[
            {"url": cls.url, "models": [MODEL], "command": engine_cmd(P_ENGINE)},
            {"url": cls.fake_url, "models": [MODEL]},
            {"url": cls.fake503_url, "models": [MODEL]},
        ]).start()
        wait_for(lambda: labelled(cls.gw, 0, "tollgate_worker_up", cls.url) == 1, "the started worker up")

    @classmethod
    def tearDownClass(cls):
        pid = labelled(cls.gw, 0, "tollgate_worker_pid", cls.url)
        cls.gw.stop()
        cls.fake.close()
        cls.fake503.close()
        if pid:  # the gateway stopped (and reaped) its worker on the way out
            assert not os.path.exists("/proc/%d" % pid), "the worker outlived its gateway"

    def test_dropped_after_reading_is_not_run_twice(self):
        """A worker that reads the whole request, then dies without answering: the request may have
        run there, so it is never sent to another worker; the client gets a 502, nothing billed."""
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1, "the worker up")
        answers = {}
        n0 = len(self.fake.posts)
        for i in range(60):
            if len(self.fake.posts) > n0:
                break
            st, h, data = https(P_GW, "POST", "/v1/chat/completions", self.key,
                                chat_body("drop me %d" % i), timeout=WAIT)
            answers[h["x-request-id"]] = (st, data)
        self.assertEqual(len(self.fake.posts), n0 + 1, "one request was sent to the dropping worker")
        dropped = self.fake.posts[-1]
        self.assertEqual(answers[dropped][0], 502, answers[dropped])
        self.assertEqual(json.loads(answers[dropped][1])["error"]["code"], "upstream_error")
        if dropped in self.fake503.posts:  # it may have been refused there first (a 503: never admitted) ...
            self.assertLess(self.fake503.arrived[dropped], self.fake.arrived[dropped],
                            "the dropped request was sent again")  # ... never after the drop
        row = settled_row(self.gw, dropped)
        self.assertEqual((row[1], row[2], row[3]), (0, 0, 502), "not run anywhere else, nothing billed")
        self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = %s", dropped)[0][0], 1)
        for rid, (st, data) in answers.items():
            if rid != dropped:
                self.assertEqual(st, 200, data)

    def test_not_admitted_503_retried_on_another_worker_billed_once(self):
        """An own worker that answers 503 (queue full: refused before its scheduler): the request goes
        to another worker, once, and is billed once."""
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1, "the worker up")
        rids = []
        n0 = len(self.fake503.posts)
        # Different prompts until one is routed to the 503 worker.  Each 503 of the
        # earlier tests doubled its back-off (up to 30 s), during which routing skips
        # it: keep asking for longer than that, not for a number of requests.
        deadline = time.time() + max(WAIT, 45)
        i = 0
        while len(self.fake503.posts) == n0 and time.time() < deadline:
            st, h, data = https(P_GW, "POST", "/v1/chat/completions", self.key,
                                chat_body("overloaded %d" % i), timeout=WAIT)
            rids.append((h["x-request-id"], st, data))
            i += 1
        self.assertEqual(len(self.fake503.posts), n0 + 1, "one request was sent to the 503 worker")
        refused = self.fake503.posts[-1]
        got = [x for x in rids if x[0] == refused]
        self.assertEqual(len(got), 1)
        if refused in self.fake.posts:  # retried onto the dropping worker: 502 there (may have run)
            self.assertEqual(got[0][1], 502, got[0][2])
            return
        self.assertEqual(got[0][1], 200, got[0][2])
        row = settled_row(self.gw, refused)
        self.assertEqual(row[3], 200)
        self.assertGreater(row[2], 0, "the engine ran it: billed")
        self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = %s", refused)[0][0], 1)
        self.assertEqual(q("SELECT count(*) FROM ledger WHERE request_id = %s", refused)[0][0], 1)

    def test_hung_worker_marked_down_then_killed_and_restarted(self):
        """A worker that stops answering (SIGSTOP): down by its health-check deadline, then restarted."""
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1, "the worker up")
        pid = int(labelled(self.gw, 0, "tollgate_worker_pid", self.url))
        restarts = labelled(self.gw, 0, "tollgate_worker_restarts_total", self.url)
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 0, "the hung worker down")
            wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_restarts_total", self.url) > restarts,
                     "the hung worker restarted")
        finally:
            if os.path.exists("/proc/%d" % pid):
                os.kill(pid, signal.SIGCONT)
        self.assertNotEqual(labelled(self.gw, 0, "tollgate_worker_pid", self.url), pid)
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1, "the new worker up")
        self.answered_again("after the hang")

    def test_killed_mid_stream_error_event_billed_then_restarted(self):
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1, "the worker up")
        pid = int(labelled(self.gw, 0, "tollgate_worker_pid", self.url))
        restarts = labelled(self.gw, 0, "tollgate_worker_restarts_total", self.url)
        self.assertGreater(pid, 0)
        ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
        deadline = time.time() + WAIT
        while True:  # a stream that lands on the engine (the other worker drops requests)
            c = http.client.HTTPSConnection("127.0.0.1", P_GW, context=ctx, timeout=WAIT)
            c.request("POST", "/v1/chat/completions", body=json.dumps(chat_body("tell me a long story", 400, True)),
                      headers={"Authorization": "Bearer " + self.key, "Content-Type": "application/json"})
            r = c.getresponse()
            if r.status == 200:
                break
            r.read()
            c.close()
            self.assertLess(time.time(), deadline, "no stream reached the engine")
        rid = r.getheader("x-request-id")
        texts = 0
        while texts < 3:  # a few text chunks have reached the client
            line = r.readline()
            self.assertTrue(line, "stream ended before any text")
            if line.startswith(b"data: {"):
                ch = json.loads(line[6:]).get("choices") or [{}]
                texts += bool(ch[0].get("delta", {}).get("content"))
        os.kill(pid, signal.SIGKILL)
        rest = r.read().decode()
        c.close()
        events = [ln[6:] for ln in rest.splitlines() if ln.startswith("data: ")]
        self.assertTrue(events, "no event after the kill")
        last = json.loads(events[-1])
        self.assertIn("error", last, "the stream's last event is an error: %r" % events[-3:])
        self.assertNotIn("data: [DONE]", rest)
        row = settled_row(self.gw, rid)
        self.assertEqual(row[3], 200)
        self.assertTrue(row[4])
        self.assertGreater(row[1], 0, "the prompt is billed (gateway's own count)")
        self.assertGreaterEqual(row[2], texts, "what was sent is billed")
        # the pool notices, restarts the worker and requests succeed again, untouched
        wait_for(lambda: (labelled(self.gw, 0, "tollgate_worker_restarts_total", self.url) or 0) > restarts,
                 "a restart")
        new_pid = labelled(self.gw, 0, "tollgate_worker_pid", self.url)
        self.assertNotEqual(new_pid, pid)
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1, "the restarted worker up")
        self.assertGreater(labelled(self.gw, 0, "tollgate_worker_health_failures_total", self.url) or 0, 0)
        self.answered_again("again")

    def answered_again(self, text):
        """Requests succeed again: the restarted engine answers one (the pool may first send one to the
        dropping worker, which is a 502: which worker comes first follows hashes of the ports)."""
        sent = []

        def answered():
            st, _, data = https(P_GW, "POST", "/v1/chat/completions", self.key,
                                chat_body("%s %d" % (text, len(sent))), timeout=WAIT)
            sent.append(st)
            self.assertIn(st, (200, 502), data)
            return st == 200
        wait_for(answered, "a request answered by the restarted worker")


class ResetBeforeWritten(unittest.TestCase):
    """A worker that resets the connection while the request is still being written (a 7 MB body,
    mostly JSON whitespace, into a 4 KiB receive window): it cannot have run it, so the request goes
    to the other worker, once, and is billed once."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeWorker(P_FAKE + 2, early_reset=True)
        cls.fake.start()
        cls.fake_url = "http://127.0.0.1:%d" % (P_FAKE + 2)
        cls.key, _ = customer_key("pool-early-reset")
        cls.gw = Instances("pool-early-reset", [P_GW + 4], max_body_bytes=8 << 20, workers=[
            {"url": E["TG_TEST_ENGINE"], "models": [MODEL]},
            {"url": cls.fake_url, "models": [MODEL]},
        ]).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.fake.close()

    def test_retried_on_the_other_worker_billed_once(self):
        ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
        answers = {}
        for i in range(40):
            if self.fake.posts:
                break
            body = json.dumps(chat_body("unsent %d" % i)).encode()
            body = body[:-1] + b" " * (7 << 20) + body[-1:]  # valid JSON, 7 MB
            c = http.client.HTTPSConnection("127.0.0.1", P_GW + 4, context=ctx, timeout=WAIT)
            c.request("POST", "/v1/chat/completions", body=body,
                      headers={"Authorization": "Bearer " + self.key, "Content-Type": "application/json"})
            r = c.getresponse()
            answers[r.getheader("x-request-id")] = (r.status, r.read())
            c.close()
        self.assertTrue(self.fake.posts, "no request reached the resetting worker")
        rid = self.fake.posts[0]
        self.assertEqual(answers[rid][0], 200, answers[rid][1][:300])
        row = settled_row(self.gw, rid)
        self.assertEqual(row[3], 200)
        self.assertGreater(row[2], 0, "the engine ran it")
        self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = %s", rid)[0][0], 1)


class External(unittest.TestCase):
    """The stack's own gateway as an https upstream with its own customer key."""

    @classmethod
    def setUpClass(cls):
        cls.up_key, cls.up_cust = customer_key("pool-upstream-account")
        cls.key, cls.cust = customer_key("pool-external-client")
        cls.url = E["TG_TEST_GATEWAY"]
        cls.gw = Instances("pool-external", [P_GW + 1], workers=[
            {"url": cls.url, "models": [MODEL], "api_key": cls.up_key, "tls_ca": E["TG_TEST_CERT"]},
        ]).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def check(self, stream):
        body = chat_body("external %s" % stream, 16, stream)
        if stream:
            body["stream_options"] = {"include_usage": True}
        before = q("SELECT count(*) FROM usage WHERE customer_id = %s", self.up_cust)[0][0]
        st, h, data = https(P_GW + 1, "POST", "/v1/chat/completions", self.key, body, timeout=WAIT)
        self.assertEqual(st, 200, data)
        if stream:
            events = [json.loads(ln[6:]) for ln in data.decode().splitlines()
                      if ln.startswith("data: {")]
            usage = [e["usage"] for e in events if e.get("usage")][-1]
        else:
            usage = json.loads(data)["usage"]
        row = settled_row(self.gw, h["x-request-id"])
        self.assertEqual(row[0], self.cust, "the client's customer pays us")
        self.assertEqual((row[1], row[2]), (usage["prompt_tokens"], usage["completion_tokens"]))
        self.assertEqual(row[3], 200)
        # the upstream billed its own key's account (our api_key, never the client's)
        wait_for(lambda: q("SELECT count(*) FROM usage WHERE customer_id = %s", self.up_cust)[0][0] > before,
                 "the upstream's usage row")
        m = self.gw.metrics(0)
        self.assertEqual(m.get("tollgate_upstream_usage_disagreements_total"), 0.0)

    def test_plain_answer_billed_from_upstream_usage(self):
        self.check(False)

    def test_stream_billed_from_upstream_usage(self):
        self.check(True)

    def test_upstream_health_checked_over_tls(self):
        wait_for(lambda: (labelled(self.gw, 0, "tollgate_worker_up", self.url) == 1 and
                          labelled(self.gw, 0, "tollgate_worker_health_failures_total", self.url) == 0),
                 "the upstream up")


class ExternalNoResend(unittest.TestCase):
    """An https upstream that takes the request and drops it unanswered: a 502, never a second send."""

    @classmethod
    def setUpClass(cls):
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(E["TG_TEST_CERT"], os.path.join(E["TG_TEST_DIR"], "tls", "key.pem"))
        cls.fake = FakeWorker(P_FAKE + 1, tls, health_path="/v1/models", auth="sk-fake")
        cls.fake.start()
        cls.up_key, cls.up_cust = customer_key("pool-upstream-noresend")
        cls.key, _ = customer_key("pool-noresend-client")
        cls.fake_url = "https://127.0.0.1:%d" % (P_FAKE + 1)
        cls.gw = Instances("pool-noresend", [P_GW + 2], workers=[
            {"url": cls.fake_url, "models": [MODEL], "api_key": "sk-fake", "tls_ca": E["TG_TEST_CERT"],
             "health_path": "/v1/models"},
            {"url": E["TG_TEST_GATEWAY"], "models": [MODEL], "api_key": cls.up_key, "tls_ca": E["TG_TEST_CERT"]},
        ]).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        cls.fake.close()

    def test_health_path_and_key(self):
        """The configured health path, with the upstream's key: the upstream is up by it."""
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_health_failures_total", self.fake_url) == 0 and
                 self.fake.gets, "a health check")
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.fake_url) == 1, "the fake upstream up")
        self.assertEqual(set(self.fake.gets), {"/v1/models"})
        self.assertEqual(labelled(self.gw, 0, "tollgate_worker_health_failures_total", self.fake_url), 0)

    def test_dropped_after_sending_is_not_sent_again(self):
        wait_for(lambda: labelled(self.gw, 0, "tollgate_worker_up", self.fake_url) == 1, "the fake upstream up")
        answers = {}
        for i in range(60):
            if self.fake.posts:
                break
            st, h, _ = https(P_GW + 2, "POST", "/v1/chat/completions", self.key, chat_body("once %d" % i),
                             timeout=WAIT)
            answers[h["x-request-id"]] = st
        self.assertTrue(self.fake.posts, "no request reached the dropping upstream")
        self.assertEqual(len(self.fake.posts), 1)
        rid = self.fake.posts[0]
        self.assertEqual(answers[rid], 502, "the dropped request is answered 502, not sent to the other upstream")
        self.assertEqual([st for r, st in answers.items() if r != rid], [200] * (len(answers) - 1))
        # the real upstream billed its key once per 200 answer, never for the dropped one
        self.gw.settled()
        wait_for(lambda: q("SELECT count(*) FROM usage WHERE customer_id = %s", self.up_cust)[0][0] ==
                 len(answers) - 1, "the upstream's rows")
        row = settled_row(self.gw, rid)
        self.assertEqual((row[1], row[2], row[3]), (0, 0, 502), "nothing billed for the dropped request")


class NeverHealthy(unittest.TestCase):
    """An own worker that runs but never answers its health check: killed after start_timeout_ms and
    started again, with a growing back-off."""

    @classmethod
    def setUpClass(cls):
        cls.url = "http://127.0.0.1:%d" % P_NEVER
        cls.children = os.path.join(E["TG_TEST_DIR"], "pool-never-children")
        if os.path.exists(cls.children):
            os.unlink(cls.children)
        # a wrapper (as a deployment's script would be) whose own child never answers either
        cls.gw = Instances("pool-never", [P_GW + 3], workers=[
            {"url": cls.url, "models": [MODEL], "start_timeout_ms": 500,
             "command": ["/bin/sh", "-c", "%s -c 'import time\nwhile True: time.sleep(60)' & echo $! >> %s; wait"
                         % (sys.executable, cls.children)]},
        ]).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()
        # the gateway's stop takes the running worker's children with it too (its process group)
        with open(cls.children) as f:
            kids = [int(x) for x in f.read().split()]
        for pid in kids:
            wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
                     open("/proc/%d/stat" % pid).read().split()[2] == "Z", "child %d gone after stop" % pid)

    def test_killed_and_restarted(self):
        seen = []
        def next_pid():
            pid = labelled(self.gw, 0, "tollgate_worker_pid", self.url)
            if pid and (not seen or pid != seen[-1]):
                seen.append(pid)
            return len(seen) >= 3
        wait_for(next_pid, "three starts of the never-healthy worker")
        self.assertGreaterEqual(labelled(self.gw, 0, "tollgate_worker_restarts_total", self.url), 2)
        self.assertEqual(labelled(self.gw, 0, "tollgate_worker_up", self.url), 0)
        for pid in seen[:-1]:  # each was killed and reaped, not left running
            wait_for(lambda: not os.path.exists("/proc/%d" % pid), "pid %d gone" % pid)
        with open(self.children) as f:  # and what each started went with it (its process group)
            kids = [int(x) for x in f.read().split()]
        self.assertGreaterEqual(len(kids), 2)
        for pid in kids[:-1]:
            wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
                     open("/proc/%d/stat" % pid).read().split()[2] == "Z", "child %d gone" % pid)
        with open(os.path.join(self.gw.dir, "gw0.log")) as f:
            log = f.read()
        self.assertGreaterEqual(log.count("not healthy 500 ms after its start: killing it"), 2, log[-2000:])


class Unreachable(unittest.TestCase):
    """The only worker's port refuses connections: the request is answered 502 upstream_unavailable
    and costs nothing.  Its usage row (a worker was asked: the row is the request id's record, counted
    as failed_5xx) has no token and no cost; no debit, the balance and its hold whole again, and the
    TPM charge given back: no token that was never generated is billed or counted."""

    @classmethod
    def setUpClass(cls):
        cls.key, cls.cid = customer_key("pool-unreachable")
        ctl("key", "update", str(q("SELECT id FROM api_keys WHERE customer_id = %s", cls.cid)[0][0]),
            "--tpm", "100000")
        cls.gw = Instances("pool-unreachable", [P_GW + 5], workers=[
            {"url": "http://127.0.0.1:%d" % P_CLOSED, "models": [MODEL]}]).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def test_502_costs_nothing(self):
        for stream in (False, True):
            st, h, data = https(P_GW + 5, "POST", "/v1/chat/completions", self.key,
                                chat_body("nobody home", 64, stream), timeout=WAIT)
            self.assertEqual((st, json.loads(data)["error"]["code"]), (502, "upstream_unavailable"), data)
            rid = h["x-request-id"]
            row = settled_row(self.gw, rid)
            self.assertEqual((row[1], row[2], row[3]), (0, 0, 502), "no token billed")
            self.assertEqual(q("SELECT prompt_cache_hit_tokens, prompt_cache_miss_tokens, reasoning_tokens,"
                               " cost_pico FROM usage WHERE request_id = %s", rid), [(0, 0, 0, 0)])
            self.assertEqual(q("SELECT count(*) FROM ledger WHERE request_id = %s", rid)[0][0], 0)
        self.assertEqual(q("SELECT balance_pico FROM customers WHERE id = %s", self.cid)[0][0], 5 * 10**12)
        self.assertIn("5.000000 USD", ctl("balance", "--customer", "pool-unreachable-" + RUN))
        m = self.gw.metrics(0)
        self.assertEqual((m["tollgate_open_holds"], m["tollgate_open_holds_pico"]), (0, 0))
        wait_for(lambda: https(P_GW + 5, "GET", "/v1/models", self.key)[1].get("x-ratelimit-remaining-tokens")
                 == "100000", "the TPM charge given back")


if __name__ == "__main__":
    main()
