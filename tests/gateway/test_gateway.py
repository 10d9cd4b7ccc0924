"""The gateway's own end-to-end tests: build/tollgate with real TLS, real
billing (PostgreSQL) and real Redis, in front of the scripted fake worker
(fake_worker.py) so that the failure paths can be driven: worker silence,
cut streams, floods, dead workers, Redis restarts, client hang-ups.

Run by tests/gateway/run.sh (which starts the stack, see stack.sh).  Python
standard library plus psycopg2.

Rules these tests keep (issue 13): no assertion on how fast the machine is.
A timing test makes the other end wait on an event the test controls (the
fake worker's "hold:T", released by release(T)) so that only one order of
events is possible, and waits for what it expects with a generous deadline
(WAIT) that fires only on a hang.  The timeouts under test run on a second
gateway with small timeouts (GW_SHORT_URL); the main one has 30 s timeouts.
Every socket has a timeout; every subprocess too."""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse
import urllib.request
import uuid

import psycopg2

E = os.environ
URL = urllib.parse.urlparse(E["GW_URL"])
SHORT = urllib.parse.urlparse(E["GW_SHORT_URL"])
MODEL = E["GW_MODEL"]
HERE = os.path.dirname(os.path.abspath(__file__))
WAIT = 30.0  # the deadline for anything awaited: it fires only when something hangs
# the short gateway's timeouts (stack.sh), in seconds
SHORT_HEADER = int(E["GW_SHORT_HEADER_MS"]) / 1000
SHORT_IDLE = int(E["GW_SHORT_IDLE_MS"]) / 1000
SHORT_UPSTREAM = int(E["GW_SHORT_UPSTREAM_MS"]) / 1000
SLACK = 0.05  # timer granularity, for "not before the timeout" only


def wait_until(what, cond, deadline=WAIT, every=0.05):
    """Poll cond() until it returns something true, and return that; raise
    AssertionError naming what after deadline seconds."""
    end = time.monotonic() + deadline
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("still waiting after %.0f s for %s" % (deadline, what))
        time.sleep(every)


def run(args, **kw):
    """subprocess.run with a deadline."""
    kw.setdefault("timeout", 60)
    return subprocess.run(args, **kw)


def hold_token():
    return uuid.uuid4().hex[:12]


def release(token):
    """Let the fake worker answer the request it holds for token."""
    with open(os.path.join(E["GW_HOLD_DIR"], "release-" + token), "w"):
        pass


def ctx():
    return ssl.create_default_context(cafile=E["GW_CERT"])


def seed(credit=5_000_000_000_000, rpm=0, conc=0, tpm=0):
    name = "gw-" + uuid.uuid4().hex[:12]
    out = run(["/usr/bin/python3", os.path.join(HERE, "seed.py"), name, str(credit), str(rpm), str(conc), str(tpm)],
              capture_output=True, text=True, check=True)
    return out.stdout.strip()


class Conn:
    """One TLS connection speaking raw HTTP/1.1, so tests control every byte."""

    def __init__(self, timeout=WAIT, url=URL):
        raw = socket.create_connection((url.hostname, url.port), timeout=timeout)
        self.s = ctx().wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def read_response(self, on_chunk=None, head_only=False):
        """-> (status, headers dict lower-case, body bytes); de-chunks.
        head_only: the answer to HEAD (a head, whatever Content-Length says)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 "):
            raise AssertionError("not a status line (a desynchronised connection?): %r" % head[:200])
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        h = {}
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            h[k.strip().lower()] = v.strip()
        body = b""
        if status == 100 or head_only:
            return status, h, body
        if "content-length" in h:
            n = int(h["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif h.get("transfer-encoding") == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, rest = self.buf.split(b"\r\n", 1)
                n = int(size_line, 16)
                while len(rest) < n + 2:
                    self._fill()
                    size_line, rest = self.buf.split(b"\r\n", 1)
                chunk, self.buf = rest[:n], rest[n + 2:]
                if n == 0:
                    break
                body += chunk
                if on_chunk:
                    on_chunk(chunk)
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return status, h, body

    def request(self, method, path, body=None, key=None, headers=None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: localhost"]
        if key:
            lines.append("Authorization: Bearer " + key)
        if data is not None:
            lines += ["Content-Type: application/json", "Content-Length: %d" % len(data)]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (data or b""))
        return self.read_response()

    def closed_by_peer(self, wait=WAIT):
        """True once the peer closes (EOF or reset), False if it has not
        after wait seconds.  Bytes instead of the close are an error."""
        self.s.settimeout(wait)
        try:
            d = self.s.recv(1)
        except (ConnectionError, ssl.SSLError):
            return True
        except socket.timeout:
            return False
        if d:
            raise AssertionError("bytes after the answer: %r" % (d + self.buf))
        return True

    def close(self):
        self.s.close()


class RecordConn(Conn):
    """TLS through memory BIOs: the test decides which TLS records go out
    in one send (the gateway reads ahead: one read may bring several)."""

    def __init__(self, timeout=WAIT, url=URL):
        self.raw = socket.create_connection((url.hostname, url.port), timeout=timeout)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx().wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.buf = b""
        self.rin, self.nrec = b"", 0  # raw bytes of a record not whole yet; whole records received
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                self._pull()
        self._push()

    def _push(self):
        d = self.out.read()
        if d:
            self.raw.sendall(d)

    def _pull(self):
        d = self.raw.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.inc.write(d)
        self.rin += d
        while len(self.rin) >= 5 and len(self.rin) >= 5 + int.from_bytes(self.rin[3:5], "big"):
            self.rin = self.rin[5 + int.from_bytes(self.rin[3:5], "big"):]
            self.nrec += 1

    def records(self, *parts):
        """Each part in a TLS record of its own, all of them in one send."""
        for p in parts:
            self.tls.write(p)
        self._push()

    def send(self, data):
        self.records(data)

    def _fill(self):
        while True:
            try:
                d = self.tls.read(65536)
                break
            except ssl.SSLWantReadError:
                self._push()
                self._pull()
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def close(self):
        self.raw.close()


def call(method, path, body=None, key=None, headers=None, url=URL):
    c = Conn(url=url)
    try:
        return c.request(method, path, body, key, headers)
    finally:
        c.close()


def chat(key, content="hi", stream=False, include_usage=False, url=URL, **extra):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return call("POST", "/v1/chat/completions", body, key, url=url)


class Background(threading.Thread):
    """chat(key, content) on a thread; result() joins it (with a deadline) and
    returns its answer, or raises what the thread raised."""

    def __init__(self, key, content):
        super().__init__(daemon=True)
        self.key, self.content, self.answer, self.error = key, content, None, None
        self.start()

    def run(self):
        try:
            self.answer = chat(self.key, self.content)
        except Exception as e:  # noqa: BLE001 - handed to result()
            self.error = e

    def result(self):
        self.join(WAIT)
        if self.is_alive():
            raise AssertionError("no answer after %.0f s to %r" % (WAIT, self.content))
        if self.error:
            raise self.error
        return self.answer


def s_client(port, *args):
    """openssl s_client to 127.0.0.1:port with args -> (exit status, stdout + stderr)."""
    p = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", "localhost", "-brief",
             *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def events(body):
    out = []
    for block in body.decode().split("\n\n"):
        d = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if d:
            out.append("\n".join(d))
    return out


def usage_rows(request_id, wait=WAIT, want=1):
    deadline = time.time() + wait
    c = psycopg2.connect(E["GW_PG"])
    c.autocommit = True
    try:
        cur = c.cursor()
        while True:
            cur.execute("select prompt_tokens, completion_tokens, prompt_cache_hit_tokens, http_status, cost_pico,"
                        " stream from usage where request_id = %s", (request_id,))
            rows = cur.fetchall()
            if len(rows) >= want or time.time() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        c.close()


def settled_idle():
    """Wait until the main gateway's settlement queue holds nothing (GET
    /admin/v1/settlement): whatever it was going to write is in PostgreSQL."""
    deadline = time.time() + WAIT
    while True:
        req = urllib.request.Request(E["GW_ADMIN"] + "/admin/v1/settlement",
                                     headers={"Authorization": "Bearer " + E["GW_ADMIN_TOKEN"]})
        with urllib.request.urlopen(req, timeout=10) as r:
            if json.loads(r.read())["idle"]:
                return
        if time.time() > deadline:
            raise AssertionError("the settlement queue did not drain")
        time.sleep(0.05)


def no_usage_row(request_id):
    """A request that must never be billed: once the settlement queue is idle
    (a late row would be committed by then), it has no usage row."""
    settled_idle()
    return usage_rows(request_id, wait=0, want=1) == []


def worker_saw(content):
    """Wait until a worker has received a request whose last message is
    content; return that request."""
    def find():
        for log in (E["GW_WORKER_LOG"], E["GW_WORKER2_LOG"]):
            if os.path.exists(log):
                with open(log) as f:
                    for line in f:
                        j = json.loads(line)
                        if "messages" in j["body"] and j["body"]["messages"][-1].get("content") == content:
                            return j
        return None
    return wait_until("a worker to receive %r" % content, find)


def worker_request(request_id, which=False):
    """What a worker received for request_id (and which worker: 1 or 2)."""
    for n, log in ((1, E["GW_WORKER_LOG"]), (2, E["GW_WORKER2_LOG"])):
        if not os.path.exists(log):
            continue
        with open(log) as f:
            for line in f:
                j = json.loads(line)
                if j["headers"].get("X-Request-Id") == request_id:
                    return (j, n) if which else j
    return (None, 0) if which else None


def admin_get(path, url=None):
    """GET on the gateway's admin listener (plain HTTP, loopback): -> (status, headers, body)."""
    import http.client
    u = urllib.parse.urlparse(url or E["GW_ADMIN_URL"])
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=WAIT)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def metric(name_and_labels, absent=None, admin=None):
    """The value of one series in /metrics (on the admin listener).  A series
    that is not there is an error unless absent says what it stands for (a
    labelled counter that has not counted yet), so a misspelt name cannot make
    a comparison pass."""
    st, h, b = admin_get("/metrics", admin)
    if st != 200:
        raise AssertionError("/metrics answered %d" % st)
    for line in b.decode().splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.split()[-1])
    if absent is None:
        raise AssertionError("no %s in /metrics" % name_and_labels)
    return absent


def openai_error(t, status, h, body, want_status, want_code=None):
    t.assertEqual(status, want_status, body)
    t.assertTrue(h.get("x-request-id"))
    t.assertEqual(h.get("x-content-type-options"), "nosniff")  # since 2026-12-01
    err = json.loads(body)["error"]
    for f in ("message", "type", "param", "code"):
        t.assertIn(f, err)
    t.assertTrue(err["message"])
    if want_code:
        t.assertEqual(err["code"], want_code)
    return err


def refused_raw(t, raw, want_status, want_code=None):
    """raw bytes on a new connection: an OpenAI error with want_status (a
    tuple: any of those), then the gateway closes the connection"""
    c = Conn()
    try:
        c.send(raw)
        st, h, b = c.read_response()
        if isinstance(want_status, tuple):
            t.assertIn(st, want_status, b)
            want_status = st
        err = openai_error(t, st, h, b, want_status, want_code)
        t.assertTrue(c.closed_by_peer())
        return h, err
    finally:
        c.close()


class Gateway(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = seed()

    # ---- the happy paths -------------------------------------------------

    def test_health_and_metrics(self):
        st, h, b = call("GET", "/health")
        self.assertEqual(st, 200)
        self.assertEqual(uuid.UUID(h["x-request-id"]).version, 7)
        before = metric('tollgate_http_requests_total{route="health",code="200"}')
        call("GET", "/health")
        self.assertEqual(metric('tollgate_http_requests_total{route="health",code="200"}'), before + 1)
        st, h, b = admin_get("/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"))
        self.assertIn(b"# TYPE tollgate_request_duration_seconds histogram", b)
        self.assertIn(b"tollgate_redis_up 1", b)

    def test_metrics_not_on_the_public_port(self):
        # operator endpoints live on the admin listener: the public port answers 404
        # (and the route is not even counted as "metrics")
        st, h, b = call("GET", "/metrics")
        openai_error(self, st, h, b, 404, "not_found")
        self.assertNotIn(b"tollgate_", b)
        st, h, b = admin_get("/metrics")
        self.assertEqual(st, 200)
        self.assertIn(b"tollgate_http_requests_total", b)

    def test_models(self):
        st, h, b = call("GET", "/v1/models", key=self.key)
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        self.assertEqual(j["object"], "list")
        self.assertEqual([m["id"] for m in j["data"]], [MODEL, "other-model"])
        self.assertEqual(j["data"][0]["object"], "model")
        st, h, b = call("GET", "/v1/models/" + MODEL, key=self.key)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["id"], MODEL)
        st, h, b = call("GET", "/v1/models/no%2Dsuch", key=self.key)
        err = openai_error(self, st, h, b, 404, "model_not_found")
        # as OpenAI answers it: param null (the model is in the path, not a parameter)
        self.assertEqual((err["message"], err["param"]),
                         ("The model `no-such` does not exist or you do not have access to it.", None))
        st, h, b = call("GET", "/v1/models")
        openai_error(self, st, h, b, 401, "invalid_api_key")
        st, h, b = call("GET", "/v1/models", key="sk-unknown")
        openai_error(self, st, h, b, 401, "invalid_api_key")

    def test_completion_settled(self):
        st, h, b = chat(self.key, "settle me")
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        self.assertEqual(j["choices"][0]["message"]["content"], "Hello from settle me")
        rid = h["x-request-id"]
        self.assertEqual(uuid.UUID(rid).version, 7)
        w = worker_request(rid)
        self.assertIsNotNone(w, "the worker saw X-Request-Id")
        self.assertNotIn("stream_options", w["body"])
        rows = usage_rows(rid)
        self.assertEqual(len(rows), 1)
        pt, ct, hit, status, cost, stream = rows[0]
        u = j["usage"]
        self.assertEqual((pt, ct, hit, status, stream), (u["prompt_tokens"], 3, 1, 200, False))
        self.assertEqual(int(cost), (pt - hit) * 270000 + hit * 70000 + ct * 1100000)

    def test_stream_without_usage(self):
        st, h, b = chat(self.key, "s1", stream=True)
        self.assertEqual(st, 200, b)
        self.assertTrue(h["content-type"].startswith("text/event-stream"))
        self.assertEqual(h.get("transfer-encoding"), "chunked")
        ev = events(b)
        self.assertEqual(ev[-1], "[DONE]")
        for e in ev[:-1]:
            c = json.loads(e)
            self.assertTrue(c["choices"])
            self.assertNotIn("usage", c)
        w = worker_request(h["x-request-id"])
        self.assertEqual(w["body"]["stream_options"], {"include_usage": True})
        rows = usage_rows(h["x-request-id"])
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][1], 3)
        self.assertEqual(rows[0][5], True)

    def test_stream_with_usage(self):
        st, h, b = chat(self.key, "s2", stream=True, include_usage=True)
        self.assertEqual(st, 200, b)
        ev = events(b)
        last = json.loads(ev[-2])
        self.assertEqual(last["choices"], [])
        self.assertEqual(last["usage"]["completion_tokens"], 3)
        for e in ev[:-2]:  # asked for: "usage": null on the other chunks, as OpenAI sends them
            self.assertIsNone(json.loads(e)["usage"])
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in ev[:-2])
        self.assertEqual(text, "Hello from s2")

    def test_keep_alive_comment_passes_through(self):
        # the worker's ": keep-alive" while a stream waits reaches the client as it is, before the
        # first chunk, and counts as no generated text
        for usage in (False, True):
            st, h, b = chat(self.key, "keepalive", stream=True, include_usage=usage)
            self.assertEqual(st, 200, b)
            self.assertTrue(b.startswith(b": keep-alive\n\ndata: {"), b[:80])
            ev = events(b)
            self.assertEqual(ev[-1], "[DONE]")
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                           for e in ev[:-1] if json.loads(e)["choices"])
            self.assertEqual(text, "Hello from keepalive")
            self.assertEqual(usage_rows(h["x-request-id"])[0][1], 3)

    def test_usage_on_last_content_chunk_is_stripped(self):
        st, h, b = chat(self.key, "usage-in-last", stream=True)
        self.assertEqual(st, 200, b)
        chunks = [json.loads(e) for e in events(b)[:-1]]
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "") for c in chunks),
                         "Hello from usage-in-last")
        for c in chunks:
            self.assertNotIn("usage", c)
        self.assertEqual(usage_rows(h["x-request-id"])[0][1], 3)

    def test_keep_alive_and_pipelining(self):
        c = Conn()
        try:
            ids = set()
            for i in range(3):
                st, h, b = c.request("POST", "/v1/chat/completions",
                                     {"model": MODEL, "messages": [{"role": "user", "content": "ka%d" % i}]}, self.key)
                self.assertEqual(st, 200)
                self.assertEqual(h["connection"], "keep-alive")
                ids.add(h["x-request-id"])
            self.assertEqual(len(ids), 3)
            # two requests in one write: answered in order
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "p"}]}).encode()
            one = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            c.send(one + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            st1, h1, b1 = c.read_response()
            st2, h2, b2 = c.read_response()
            self.assertEqual((st1, st2), (200, 200))
            self.assertIn(b"chat.completion", b1)
            self.assertEqual(json.loads(b2), {"status": "ok"})
        finally:
            c.close()

    def test_records_read_in_one_go(self):
        # The gateway reads ahead (one read(2) per TLS record): a request whose
        # records arrive together, and pipelined requests each in a record of
        # their own, are all answered, not left waiting in OpenSSL's buffer.
        c = RecordConn()
        try:
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "rec"}]}).encode()
            head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                    b"\r\nContent-Length: %d\r\n\r\n" % len(body))
            c.records(head, body[:10], body[10:])
            st, h, b = c.read_response()
            self.assertEqual(st, 200)
            self.assertIn(b"chat.completion", b)
            c.records(head + body, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", head + body)
            answers = [c.read_response() for _ in range(3)]
            self.assertEqual([a[0] for a in answers], [200, 200, 200])
            self.assertEqual(json.loads(answers[1][2]), {"status": "ok"})
            self.assertEqual(len({answers[0][1]["x-request-id"], answers[2][1]["x-request-id"], h["x-request-id"]}), 3)
        finally:
            c.close()

    def test_an_answer_is_one_tls_record(self):
        # bufferevent_openssl writes each evbuffer chain as TLS records of its
        # own (a write(2) each): a chat answer of 1-2 KiB went out as records
        # of 976 and 48 bytes, its head in the first chain.  An answer that
        # fits one record is one record (one write); a longer one as few as
        # its size needs.
        c = RecordConn()
        try:
            st, _, _ = c.request("GET", "/health")  # TLS 1.3 session tickets come before this answer
            self.assertEqual(st, 200)
            for content in ("r", "flood:1", "flood:6", "flood:14", "flood:40"):  # flood:N: N KiB of text
                n0 = c.nrec
                st, h, b = c.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": [
                    {"role": "user", "content": content}]}, self.key)
                self.assertEqual(st, 200)
                self.assertEqual(c.rin, b"")
                n = int(h["content-length"])
                want = -(-(n + 1024) // 16384)  # the head is under 1 KiB
                self.assertEqual(c.nrec - n0, want, "a %d-byte body in %d records" % (n, c.nrec - n0))
            c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # and a short one still one record
            n0 = c.nrec
            self.assertEqual(c.read_response()[0], 200)
            self.assertEqual(c.nrec - n0, 1)
        finally:
            c.close()

    def test_worker_answer_read_in_few_reads(self):
        # A kept worker connection is read by the gateway's own event, up to
        # 64 KiB a read(2); its bufferevent read 4 KiB a loop iteration, each
        # read after an ioctl(FIONREAD): a 100 KiB answer took 25 reads and 25
        # iterations.  /proc/PID/io counts the process's read system calls.
        def reads():
            with open("/proc/%s/io" % E["GW_PID"]) as f:
                return int(next(ln for ln in f if ln.startswith("syscr:")).split()[1])
        c = Conn()
        try:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "flood:100"}]}
            seen = []
            for i in range(6):  # the first ones leave kept connections to the workers
                n0 = reads()
                st, h, b = c.request("POST", "/v1/chat/completions", body, self.key)
                seen.append(reads() - n0)
                self.assertEqual(st, 200)
                self.assertGreater(len(b), 100 * 1024)
            # the worker's answer (2 reads on a kept connection), the client's request, the
            # settlement's and the limiter's answers: well under 25
            self.assertLessEqual(min(seen[2:]), 12, seen)
        finally:
            c.close()

    def test_http10_stream_is_close_delimited(self):
        c = Conn()
        try:
            body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "old"}]}).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            st, h, b = c.read_response()
            self.assertEqual(st, 200)
            self.assertNotIn("transfer-encoding", h)
            self.assertEqual(h["connection"], "close")
            self.assertEqual(events(b)[-1], "[DONE]")
        finally:
            c.close()

    def test_tls_only(self):
        # plain HTTP to the TLS port: no HTTP answer, the connection ends
        s = socket.create_connection((URL.hostname, URL.port), timeout=WAIT)
        got = b""
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            while True:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        except ConnectionResetError:
            pass
        finally:
            s.close()
        self.assertNotIn(b"HTTP/", got)

    def test_tls_versions_the_server_accepts(self):
        # What the server accepts, asked with a client that can offer every version and
        # cipher (`openssl s_client`, @SECLEVEL=0): a refusal must be the server's alert.
        for ver in ("-tls1", "-tls1_1"):
            rc, out = s_client(URL.port, ver, "-cipher", "ALL:@SECLEVEL=0")
            self.assertNotEqual(rc, 0, out)
            self.assertNotIn("CONNECTION ESTABLISHED", out)
            self.assertNotIn("no protocols available", out, "the client, not the server, refused")
            self.assertIn("alert protocol version", out, "the server's protocol_version alert")
        for ver, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            rc, out = s_client(URL.port, ver)
            self.assertEqual(rc, 0, out)
            self.assertIn("Protocol version: " + name, out)
        # Whether TLS 1.2 CBC suites are refused is issue 8; not asserted here.

    def test_tls_client_can_offer_tls11(self):
        # The control for test_tls_versions_the_server_accepts: the same client
        # options complete a TLS 1.1 handshake with a server that allows it.
        port = 18650
        srv = subprocess.Popen(["openssl", "s_server", "-accept", str(port), "-cert", E["GW_CERT"],
                                "-key", os.path.join(E["GW_DIR"], "tls", "key.pem"), "-tls1_1",
                                "-cipher", "ALL:@SECLEVEL=0", "-quiet"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def listening():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
                    return True
                except ConnectionRefusedError:
                    if srv.poll() is not None:
                        self.fail("openssl s_server exited: %r" % srv.stderr.read())
                    return False
            wait_until("openssl s_server on %d" % port, listening)
            rc, out = s_client(port, "-tls1_1", "-cipher", "ALL:@SECLEVEL=0")
            self.assertEqual(rc, 0, out)
            self.assertIn("Protocol version: TLSv1.1", out)
        finally:
            srv.kill()
            srv.wait(WAIT)
            srv.stderr.close()

    def test_expect_100_continue_and_chunked_request(self):
        c = Conn()
        try:
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "ch"}]}).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
            st, h, _ = c.read_response()
            self.assertEqual(st, 100)
            half = len(body) // 2
            c.send(b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))
            st, h, b = c.read_response()
            self.assertEqual(st, 200, b)
            self.assertIn(b"Hello from ch", b)
        finally:
            c.close()

    # ---- client errors, in the documented order ----------------------------

    def test_error_order_and_shapes(self):
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70000}]}
        st, h, b = call("POST", "/v1/chat/completions", big)  # 413 before 401
        openai_error(self, st, h, b, 413, "request_too_large")
        st, h, b = chat(None)
        openai_error(self, st, h, b, 401, "invalid_api_key")
        st, h, b = call("POST", "/v1/chat/completions", {"model": MODEL}, headers={"Authorization": "Basic abc"})
        openai_error(self, st, h, b, 401)
        st, h, b = call("POST", "/v1/chat/completions", b'{"model": "x", "messages": [', "sk-whatever")
        openai_error(self, st, h, b, 401, "invalid_api_key")  # a bad key is the 401 whatever the body (OpenAI)
        st, h, b = call("POST", "/v1/chat/completions", b'{"model": "x", "messages": [', "sk-" + "0" * 48)
        openai_error(self, st, h, b, 401, "invalid_api_key")  # well-formed, unknown: looked up first
        st, h, b = call("POST", "/v1/chat/completions", b'{"model": "x", "messages": [', self.key)
        openai_error(self, st, h, b, 400, "invalid_request")  # a good key: the body's own error
        st, h, b = call("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, self.key)
        self.assertEqual(openai_error(self, st, h, b, 400)["param"], "model")
        st, h, b = call("POST", "/v1/chat/completions", {"model": MODEL}, self.key)
        self.assertEqual(openai_error(self, st, h, b, 400)["param"], "messages")
        st, h, b = call("POST", "/v1/chat/completions", {"model": MODEL, "messages": [], "stream": "yes"}, self.key)
        openai_error(self, st, h, b, 400)
        st, h, b = chat("sk-" + "1" * 48, model="no-such-model")  # a bad key is told no model
        openai_error(self, st, h, b, 401, "invalid_api_key")
        st, h, b = chat(self.key, model="no-such-model")
        self.assertIsNone(openai_error(self, st, h, b, 404, "model_not_found")["param"])  # as OpenAI
        st, h, b = chat("sk-unknown")
        openai_error(self, st, h, b, 401, "invalid_api_key")
        st, h, b = chat(seed(credit=0))
        openai_error(self, st, h, b, 402, "insufficient_balance")
        st, h, b = call("GET", "/v1/nothing")
        openai_error(self, st, h, b, 404)
        st, h, b = call("GET", "/v1/chat/completions", key=self.key)
        openai_error(self, st, h, b, 405)

    def test_max_tokens_above_the_limit_is_a_400_before_the_hold(self):
        # a cap beyond any model's context is the request's error (400), not the balance's (402)
        poor = seed(credit=0)
        for field in ("max_tokens", "max_completion_tokens"):
            st, h, b = chat(poor, **{field: 163841})
            err = openai_error(self, st, h, b, 400, "invalid_value")
            self.assertEqual(err["param"], field)
            self.assertIn("163840", err["message"])
            st, h, b = chat(poor, **{field: 163840})  # at the limit: on to admission
            openai_error(self, st, h, b, 402, "insufficient_balance")
        st, h, b = chat(self.key, max_tokens=10**9, max_completion_tokens=5)  # the smaller one counts
        self.assertNotEqual(st, 400, b)
        st, h, b = chat(self.key, max_tokens=10**9)
        self.assertEqual(openai_error(self, st, h, b, 400, "invalid_value")["param"], "max_tokens")
        st, h, b = chat(self.key, max_tokens=10**9, max_completion_tokens=10**8)  # the one kept is named
        self.assertEqual(openai_error(self, st, h, b, 400, "invalid_value")["param"], "max_completion_tokens")

    def test_declared_body_too_large_answered_before_body(self):
        h, _ = refused_raw(self, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
                           413)
        self.assertEqual(h["connection"], "close")

    def test_head_answers_have_no_body(self):
        # HEAD gets the head GET would get (Content-Length included) and no
        # body: the client reads none, so body bytes would be taken for the
        # start of the next answer on the connection
        c = Conn()
        try:
            c.send(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"HEAD /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            st, h, _ = c.read_response(head_only=True)
            self.assertEqual((st, h["content-length"]), (200, "16"))
            st, h, _ = c.read_response(head_only=True)
            self.assertEqual((st, h["allow"]), (405, "POST"))
            self.assertGreater(int(h["content-length"]), 0)
            st, h, _ = c.read_response(head_only=True)
            self.assertEqual(st, 404)
            st, h, b = c.read_response()
            self.assertEqual((st, b), (200, b'{"status":"ok"}\n'))
        finally:
            c.close()

    def test_options_star_and_head_metrics(self):
        # "OPTIONS *" asks about the server (RFC 9110 §9.3.7): 200, Allow,
        # Content-Length 0, the connection goes on
        c = Conn()
        try:
            c.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            st, h, b = c.read_response()
            self.assertEqual((st, h.get("content-length"), b), (200, "0", b""), h)
            self.assertEqual([m.strip() for m in h["allow"].split(",")], ["GET", "HEAD", "POST", "OPTIONS"])
            self.assertEqual(h["connection"], "keep-alive")
            st, h, b = c.request("GET", "/health")
            self.assertEqual(st, 200, b)
        finally:
            c.close()
        # HEAD /metrics on the admin listener: GET's head, no body
        import http.client
        u = urllib.parse.urlparse(E["GW_ADMIN_URL"])
        a = http.client.HTTPConnection(u.hostname, u.port, timeout=WAIT)
        try:
            a.request("HEAD", "/metrics")
            r = a.getresponse()
            self.assertEqual(r.status, 200)
            self.assertTrue(r.getheader("content-type").startswith("text/plain"))
            self.assertGreater(int(r.getheader("content-length")), 100)
            self.assertEqual(r.read(), b"")
            a.request("GET", "/metrics")  # the same connection: no stray body in the way
            r = a.getresponse()
            self.assertEqual(r.status, 200)
            self.assertIn(b"tollgate_http_requests_total", r.read())
            a.request("POST", "/metrics", body=b"")
            r = a.getresponse()
            r.read()
            self.assertEqual((r.status, r.getheader("allow")), (405, "GET, HEAD"))
        finally:
            a.close()

    def test_content_type_of_json_bodies(self):
        # what SDKs, curl and browsers send passes (charset parameters, any case,
        # none at all); a body sent as another media type is refused by name,
        # before anything is counted or billed
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "ct"}]}).encode()
        cbody = json.dumps({"model": MODEL, "prompt": "ct", "max_tokens": 2}).encode()

        def post(path, data, ctype):
            c = Conn()
            try:
                c.send(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%sContent-Length: %d\r\n\r\n"
                        % (path, self.key, "Content-Type: %s\r\n" % ctype if ctype is not None else "",
                           len(data))).encode() + data)
                return c.read_response()
            finally:
                c.close()
        for ctype in ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
                      None):
            for path, data in (("/v1/chat/completions", body), ("/v1/completions", cbody)):
                st, h, b = post(path, data, ctype)
                self.assertEqual(st, 200, (ctype, path, b))
                # every answer with a body type says nosniff (the shared head writer, since 2026-12-01)
                self.assertEqual(h.get("x-content-type-options"), "nosniff", (ctype, path))
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                      "application/json; charset=latin1"):
            for path, data in (("/v1/chat/completions", body), ("/v1/completions", cbody),
                               ("/beta/completions", cbody)):
                st, h, b = post(path, data, ctype)
                err = openai_error(self, st, h, b, 400, "invalid_content_type")
                self.assertEqual((err["type"], err["param"]), ("invalid_request_error", None))
                self.assertIn(ctype, err["message"])
                self.assertIn("application/json" if "latin1" not in ctype else "utf-8", err["message"])
                self.assertTrue(no_usage_row(h["x-request-id"]))

    def test_405_names_the_allowed_methods(self):
        # RFC 9110 §15.5.6: a 405 carries Allow; the connection goes on
        c = Conn()
        try:
            for method, path, allow in (("GET", "/v1/chat/completions", "POST"),
                                        ("PUT", "/v1/chat/completions", "POST"),
                                        ("DELETE", "/v1/models", "GET, HEAD"),
                                        ("POST", "/v1/models/" + MODEL, "GET, HEAD"),
                                        ("POST", "/health", "GET, HEAD"),
                                        ("TRACE", "/health", "GET, HEAD"),
                                        ("get", "/health", "GET, HEAD"),
                                        ("PATCH", "/v1/receipt-key", "GET, HEAD"),
                                        ("POST", "/dashboard/", "GET, HEAD")):
                st, h, b = c.request(method, path, b"{}", self.key)
                err = openai_error(self, st, h, b, 405, "method_not_allowed")
                self.assertEqual(h.get("allow"), allow, (method, path))
                self.assertIn(allow, err["message"])
                self.assertEqual(h["connection"], "keep-alive")
            st, h, b = c.request("GET", "/health")
            self.assertEqual(st, 200, b)
        finally:
            c.close()

    def test_dashboard_serves_only_its_built_files(self):
        # the dashboard's files are read into memory at start (gateway/gw_dash.c): no request path
        # reaches the file system, whatever its encoding; every answer under /dashboard/, errors
        # included, carries nosniff, no framing, the CSP and (errors) no-store (before 2026-12-01 the
        # gateway's own 404 and 405 there had none of them)
        web = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "web")
        with open(os.path.join(web, "app.js"), "rb") as f:
            app = f.read()
        c = Conn()
        try:
            def dash_headers(h, what):
                self.assertEqual(h.get("x-content-type-options"), "nosniff", what)
                self.assertEqual(h.get("x-frame-options"), "DENY", what)
                self.assertIn("frame-ancestors 'none'", h.get("content-security-policy", ""), what)
                self.assertNotIn("access-control-allow-origin", h, what)
                self.assertNotIn("set-cookie", h, what)
            for path, ctype in (("/dashboard/", "text/html; charset=utf-8"),
                                ("/dashboard/index.html", "text/html; charset=utf-8"),
                                ("/dashboard/app.js", "text/javascript; charset=utf-8"),
                                ("/dashboard/app.js?v=1", "text/javascript; charset=utf-8"),
                                ("/dashboard/style.css", "text/css; charset=utf-8"),
                                ("/dashboard/vendor/chart.umd.js", "text/javascript; charset=utf-8")):
                st, h, b = c.request("GET", path, None, None, {"Origin": "https://evil.example"})
                self.assertEqual((st, h.get("content-type")), (200, ctype), path)
                dash_headers(h, path)
            self.assertEqual(c.request("GET", "/dashboard/app.js")[2], app)
            for path in ("/dashboard/../../../etc/passwd", "/dashboard/..%2f..%2f..%2fetc%2fpasswd",
                         "/dashboard/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/dashboard/%252e%252e%252fetc%252fpasswd",
                         "/dashboard/vendor/../../../../etc/passwd", "/dashboard/..%5c..%5cetc%5cpasswd",
                         "/dashboard//etc/passwd", "/dashboard/%2fetc%2fpasswd", "/dashboard/app.js%00.html",
                         "/dashboard/./app.js", "/dashboard/vendor/", "/dashboard/vendor", "/dashboard/.git/config",
                         "/dashboard/.env", "/dashboard/../web/app.js", "/dashboard/../build/web/app.js",
                         "/dashboard/APP.JS", "/dashboard/app.js/", "/dashboard/api/"):
                st, h, b = c.request("GET", path, None, None, {"Origin": "https://evil.example"})
                err = openai_error(self, st, h, b, 404, "not_found")
                self.assertEqual(err["message"], "No such dashboard file", path)
                dash_headers(h, path)
                self.assertEqual(h.get("cache-control"), "no-store", path)
                self.assertNotIn(b"root:", b, path)
            st, h, b = c.request("POST", "/dashboard/app.js", b"{}")
            openai_error(self, st, h, b, 405, "method_not_allowed")
            self.assertEqual(h.get("allow"), "GET, HEAD")
            dash_headers(h, "POST /dashboard/app.js")
            st, h, b = c.request("GET", "/dashboard")
            self.assertEqual((st, h.get("location")), (301, "/dashboard/"))
            dash_headers(h, "/dashboard")
            st, h, b = c.request("GET", "/health")
            self.assertEqual(st, 200, b)
        finally:
            c.close()
        # a byte no target may hold (NUL, backslash, space): refused before any routing
        for raw in (b"GET /dashboard/app.js\x00.html HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /dashboard/..\\..\\etc\\passwd HTTP/1.1\r\nHost: x\r\n\r\n"):
            c = Conn()
            try:
                c.send(raw)
                st, h, b = c.read_response()
                self.assertIn(st, (400, 404), raw)
                self.assertNotIn(b"root:", b)
            finally:
                c.close()

    def test_worker_pool_polled_only_for_an_operator(self):
        # GET /dashboard/api/admin/workers makes the gateway read every worker's /metrics every 2 s
        # for 60 s; only an operator's session may start that.  Before 2026-12-01 the gateway made
        # the pool's snapshot (and so started polling) before billing checked who asked: a request
        # without a session, or a customer's, set every worker polling.  The fake workers count the
        # GETs of their /metrics (fake_worker.py).
        def polls():
            n = 0
            for log in (E["GW_WORKER_LOG"], E["GW_WORKER2_LOG"]):
                try:
                    with open(log + ".metrics") as f:
                        n += sum(1 for _ in f)
                except FileNotFoundError:
                    pass
            return n

        def admin_post(path, body):
            req = urllib.request.Request(E["GW_ADMIN"] + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": "Bearer " + E["GW_ADMIN_TOKEN"],
                                                  "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                return json.loads(r.read())

        def sign_in(login, password):
            c = Conn()
            try:
                st, h, b = c.request("POST", "/dashboard/api/login", {"login": login, "password": password})
            finally:
                c.close()
            self.assertEqual(st, 200, b)
            return h["set-cookie"].split(";")[0]

        sfx = uuid.uuid4().hex[:10]
        pg = psycopg2.connect(E["GW_PG"])
        try:
            pg.autocommit = True
            pg.cursor().execute("insert into customers(name) values (%s)", ("gw-dash-" + sfx,))
        finally:
            pg.close()
        cust = sign_in("cust-" + sfx, admin_post("/admin/v1/dashboard-users", {
            "login": "cust-" + sfx, "role": "customer", "customer": "gw-dash-" + sfx})["password"])
        ops = sign_in("ops-" + sfx, admin_post("/admin/v1/dashboard-users", {
            "login": "ops-" + sfx, "role": "operator"})["password"])
        before = polls()
        c = Conn()
        try:
            for method, headers, want in (("GET", {}, 401), ("HEAD", {}, 401),
                                          ("GET", {"Cookie": "tg_session=" + "0" * 64}, 401),
                                          ("GET", {"Cookie": cust}, 403), ("HEAD", {"Cookie": cust}, 403)):
                c.send(("%s /dashboard/api/admin/workers HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (
                    method, "".join("%s: %s\r\n" % kv for kv in headers.items()))).encode())
                st, h, b = c.read_response(head_only=method == "HEAD")
                self.assertEqual(st, want, (method, headers, b))
                if b:
                    self.assertNotIn(b"workers", b.replace(b"admin/workers", b""))
            # the old order polled at once; more than one poll period (2 s) shows it did not start
            time.sleep(3)
            self.assertEqual(polls(), before, "a request that is not an operator's made the gateway poll the workers")
            # an operator's request starts the poll, and the pool shows what the workers reported
            st, h, b = c.request("GET", "/dashboard/api/admin/workers", None, None, {"Cookie": ops})
            self.assertEqual(st, 200, b)
            self.assertEqual(len(json.loads(b)["data"]), 3)
            wait_until("the operator's request to make the gateway poll both live workers",
                       lambda: polls() >= before + 2)

            def both_up():
                st, h, b = c.request("GET", "/dashboard/api/admin/workers", None, None, {"Cookie": ops})
                self.assertEqual(st, 200, b)
                states = [w["state"] for w in json.loads(b)["data"]]
                return states.count("up") == 2 and states
            self.assertNotEqual(wait_until("both live workers to be read as up", both_up, every=0.5)[0], "up",
                                "the dead worker (first in the config) is not up")
        finally:
            c.close()

    def test_cors_preflight_and_answers_readable_from_any_origin(self):
        # a page calling the API from a browser (the SDK's dangerouslyAllowBrowser):
        # its preflight needs no key and gets 204 with what it asked for; the
        # answers themselves carry Access-Control-Allow-Origin; the dashboard,
        # signed in with a cookie, does not answer other origins
        c = Conn()
        try:
            pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"}
            for path in ("/v1/chat/completions", "/v1/models", "/v1/models/" + MODEL):
                c.send(("OPTIONS %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
                    path, "".join("%s: %s\r\n" % kv for kv in pre.items()))).encode())
                st, h, _ = c.read_response(head_only=True)
                self.assertEqual(st, 204, (path, h))
                self.assertNotIn("content-length", h)
                self.assertNotIn("transfer-encoding", h)
                self.assertEqual(h["access-control-allow-origin"], "*")
                self.assertIn("POST", h["access-control-allow-methods"])
                self.assertEqual(h["access-control-allow-headers"], "authorization,content-type,x-stainless-os")
                self.assertEqual(h["connection"], "keep-alive")
            # asked headers that are not a list of header names: the API's own two
            # ("a b" is two names without their comma); a list with blanks is one
            for ask, allowed in (("a;b", "Authorization, Content-Type"), ("a b", "Authorization, Content-Type"),
                                 ("authorization, x-stainless-os y", "Authorization, Content-Type"),
                                 (" , ", "Authorization, Content-Type"),
                                 ("authorization , content-type", "authorization , content-type")):
                c.send(b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
                       b"Access-Control-Request-Headers: " + ask.encode() + b"\r\n\r\n")
                st, h, _ = c.read_response(head_only=True)
                self.assertEqual((st, h["access-control-allow-headers"]), (204, allowed), ask)
            # a /v1 path that does not exist: the page reads the 404 (its preflight
            # answered, the error carrying Access-Control-Allow-Origin), as any /v1 answer
            for path in ("/v1/embeddings", "/v1", "/beta/models"):
                c.send(("OPTIONS %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (
                    path, "".join("%s: %s\r\n" % kv for kv in pre.items()))).encode())
                st, h, _ = c.read_response(head_only=True)
                self.assertEqual((st, h.get("access-control-allow-origin")), (204, "*"), path)
                st, h, b = c.request("POST", path, {"input": "x"}, self.key, {"Origin": "https://app.example"})
                openai_error(self, st, h, b, 404, "not_found")
                self.assertEqual(h.get("access-control-allow-origin"), "*", path)
            st, h, b = c.request("POST", "/v1/chat/completions",
                                 {"model": MODEL, "messages": [{"role": "user", "content": "cors"}]}, self.key,
                                 {"Origin": "https://app.example"})
            self.assertEqual(st, 200, b)
            self.assertEqual(h["access-control-allow-origin"], "*")
            exposed = [x.strip().lower() for x in h["access-control-expose-headers"].split(",")]
            for name in ("x-request-id", "x-ratelimit-remaining-requests", "retry-after"):
                self.assertIn(name, exposed)
            st, h, b = c.request("GET", "/v1/models", None, None, {"Origin": "https://app.example"})
            openai_error(self, st, h, b, 401)
            self.assertEqual(h["access-control-allow-origin"], "*")  # a page can read why
            st, h, b = c.request("GET", "/dashboard/", None, None, {"Origin": "https://app.example"})
            self.assertNotIn("access-control-allow-origin", h)
            st, h, b = c.request("GET", "/nowhere", None, None, {"Origin": "https://app.example"})
            self.assertEqual(st, 404)
            self.assertNotIn("access-control-allow-origin", h)  # outside /v1: no CORS
            st, h, b = c.request("GET", "/health")
            self.assertEqual(st, 200, b)
        finally:
            c.close()

    def test_chunked_without_last_crlf_eats_no_request(self):
        # the last chunk, then no blank line: the next request's line is no
        # trailer field, so the request is refused (400, closed) instead of
        # the pipelined request being swallowed as a trailer
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "tr"}]}).encode()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode()
        h, _ = refused_raw(self, head + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n" % (len(body), body) +
                           b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request")
        self.assertEqual(h["connection"], "close")
        # a chunk size is hex digits, then blanks only before an extension's ';'
        _, err = refused_raw(self, head + b"\r\nTransfer-Encoding: chunked\r\n\r\n1 0\r\n{\r\n0\r\n\r\n", 400,
                             "invalid_request")
        self.assertIn("chunked", err["message"])

    def test_absolute_form_target(self):
        # RFC 9112 §3.2.2: a server must accept absolute-form; other forms are a 400
        c = Conn()
        try:
            st, h, b = c.request("GET", "https://localhost:%d/health" % URL.port)
            self.assertEqual((st, b), (200, b'{"status":"ok"}\n'))
            st, h, b = c.request("POST", "HTTPS://localhost/v1/chat/completions",
                                 {"model": MODEL, "messages": [{"role": "user", "content": "abs"}]}, self.key)
            self.assertEqual(st, 200, b)
            self.assertIn(b"Hello from abs", b)
        finally:
            c.close()
        for target in (b"health", b"*", b"https:///health", b"localhost:443"):
            refused_raw(self, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request")

    def test_expect_100_ignored_from_http10(self):
        # RFC 9110 §10.1.1: an HTTP/1.0 client's 100-continue is ignored: no
        # interim answer it cannot read, the first answer is the real one
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "e10"}]}).encode()
        c = Conn()
        try:
            c.send(b"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5])
            c.send(body[5:])
            st, h, b = c.read_response()
            self.assertEqual(st, 200, b)
            self.assertIn(b"Hello from e10", b)
        finally:
            c.close()

    def test_host_header_required_once(self):
        # RFC 9112 §3.2: a 400 to an HTTP/1.1 request without Host, to any with
        # two, or with an invalid value; HTTP/1.0 may leave it out.  Nothing is
        # forwarded or billed; the framing was sound, so the connection goes on
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "host"}]}).encode()
        c = Conn()
        try:
            for hosts, want in (([], "Missing Host"), (["a", "b"], "More than one Host"),
                                (["a", "a"], "More than one Host"), (["a b/c"], "Invalid Host"),
                                (["x@evil"], "Invalid Host")):
                c.send(b"POST /v1/chat/completions HTTP/1.1\r\n" + b"".join(b"Host: %s\r\n" % x.encode() for x in hosts) +
                       b"Authorization: Bearer " + self.key.encode() +
                       b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                st, h, b = c.read_response()
                err = openai_error(self, st, h, b, 400, "invalid_request")
                self.assertIn(want, err["message"])
                self.assertIsNone(worker_request(h["x-request-id"]), "never forwarded")
                self.assertTrue(no_usage_row(h["x-request-id"]), "a refused request is not billed")
            for host in (b"localhost", b"127.0.0.1:%d" % URL.port, b"[::1]:443", b""):
                c.send(b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                self.assertEqual(c.read_response()[0], 200, host)
            c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
        finally:
            c.close()

    def test_model_id_with_nul_and_two_authorizations(self):
        # a percent-encoded NUL does not cut the model id short
        st, h, b = call("GET", "/v1/models/%s%%00junk" % MODEL, key=self.key)
        openai_error(self, st, h, b, 404, "model_not_found")
        st, h, b = call("GET", "/v1/models/%s" % MODEL, key=self.key)
        self.assertEqual((st, json.loads(b)["id"]), (200, MODEL))
        # two Authorization fields: no key is guessed, nothing is forwarded
        c = Conn()
        try:
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "two"}]}).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nAuthorization: Bearer sk-other\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            st, h, b = c.read_response()
            self.assertIn("more than one", openai_error(self, st, h, b, 401, "invalid_api_key")["message"])
            self.assertIsNone(worker_request(h["x-request-id"]))
            self.assertTrue(no_usage_row(h["x-request-id"]))
        finally:
            c.close()

    def test_malformed_http(self):
        for raw in (b"NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                    b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n"):
            refused_raw(self, raw, (400, 431))

    # ---- limits ------------------------------------------------------------

    def test_rpm_exact_sliding_window(self):
        n = 4
        k = seed(rpm=n)
        ids = []
        for i in range(n):
            st, h, b = chat(k, "r%d" % i)
            self.assertEqual(st, 200, b)
            self.assertEqual(h["x-ratelimit-limit-requests"], str(n))
            self.assertEqual(h["x-ratelimit-remaining-requests"], str(n - i - 1))
            self.assertTrue(h["x-ratelimit-reset-requests"].endswith("s"))
            ids.append(h["x-request-id"])
        st, h, b = chat(k, "over")
        openai_error(self, st, h, b, 429, "rate_limit_exceeded")
        self.assertTrue(1 <= int(h["retry-after"]) <= 60)
        self.assertEqual(h["x-ratelimit-remaining-requests"], "0")
        for rid in ids:
            self.assertEqual(len(usage_rows(rid)), 1)
        self.assertTrue(no_usage_row(h["x-request-id"]), "a 429 is not billed")
        # GCRA state in Redis under one hash tag per key
        out = subprocess.run(["redis-cli", "-p", E["GW_REDIS_PORT"], "--scan", "--pattern", "tg:rl:{k:*}"],
                             capture_output=True, text=True).stdout.split()
        self.assertTrue(out)

    def test_tpm_prompt_plus_max_tokens(self):
        k = seed(tpm=100)
        st, h, b = chat(k, "tokens", max_tokens=48)
        self.assertEqual(st, 200, b)
        self.assertEqual(h["x-ratelimit-limit-tokens"], "100")
        left = int(h["x-ratelimit-remaining-tokens"])
        self.assertTrue(0 < left < 52, left)  # charged the prompt (a few tokens) + max_tokens
        self.assertNotIn("x-ratelimit-limit-requests", h)
        # settled with 13 tokens used (the fake worker's usage): the rest of the charge came back,
        # so about 87 are left: a request needing ~99 does not fit, one needing ~64 does (without
        # the refund 52 + 64 would not)
        st, h, b = chat(k, "tokens", max_tokens=95)
        openai_error(self, st, h, b, 429, "tokens_rate_limit_exceeded")
        self.assertTrue(1 <= int(h["retry-after"]) <= 60)
        st, h, b = chat(k, "tokens", max_tokens=60)
        self.assertEqual(st, 200, b)

    def test_concurrency_limit(self):
        k = seed(conc=1)
        tok = hold_token()
        try:
            first = Background(k, "hold:" + tok)
            worker_saw("hold:" + tok)  # admitted, and held by the worker until released
            st, h, b = chat(k, "second")
            openai_error(self, st, h, b, 429, "concurrency_limit_exceeded")
            self.assertTrue(first.is_alive(), "the first request was still in flight")
        finally:
            release(tok)
        self.assertEqual(first.result()[0], 200)
        # the slot is given back when the request is freed, which may follow its last byte
        wait_until("no request in flight", lambda: metric("tollgate_inflight_requests") == 0)
        st, h, b = chat(k, "after")
        self.assertEqual(st, 200, b)

    # ---- the worker misbehaves ----------------------------------------------

    def test_worker_error_passed_through(self):
        st, h, b = chat(self.key, "status:422")
        openai_error(self, st, h, b, 422, "scripted")
        rows = usage_rows(h["x-request-id"])
        self.assertEqual((rows[0][1], rows[0][3], int(rows[0][4])), (0, 422, 0))

    def test_worker_plain_error_becomes_openai_error(self):
        st, h, b = chat(self.key, "plain:500")
        self.assertEqual(openai_error(self, st, h, b, 500, "upstream_error")["type"], "server_error")
        self.assertTrue(h["content-type"].startswith("application/json"))

    def test_worker_answer_framed_two_ways(self):
        # a worker's answer whose framing is not exactly one of Content-Length or
        # chunked is a 502: "xchunked" is no chunked, "gzip, chunked" would pass
        # gzip bytes on as JSON, two lengths leave no length to trust (the last
        # was taken, and the bytes after it left behind)
        for kind in ("xchunked", "gzip-chunked", "two-lengths"):
            st, h, b = chat(self.key, "head:" + kind)
            self.assertEqual(openai_error(self, st, h, b, 502, "upstream_error")["type"], "server_error", kind)
        # chunked and a Content-Length: chunked frames it (RFC 9112 §6.3), and
        # that connection is not used again
        ports = set()
        for _ in range(2):
            st, h, b = chat(self.key, "head:te-and-cl")
            self.assertEqual(st, 200, b)
            self.assertEqual(json.loads(b)["choices"][0]["message"]["content"], "Hello from head:te-and-cl")
            w, n = worker_request(h["x-request-id"], which=True)
            ports.add((n, w["peer_port"]))
        self.assertEqual(len(ports), 2, "the connection of an answer framed two ways was used again")

    def test_stream_cut_ends_with_error_event_and_is_settled(self):
        st, h, b = chat(self.key, "cut", stream=True)
        self.assertEqual(st, 200)
        ev = events(b)
        self.assertIn("error", json.loads(ev[-1]))
        rows = usage_rows(h["x-request-id"])
        self.assertEqual(rows[0][1], 2, "two chunks were generated before the cut")

    def test_stream_cut_after_a_tool_call_bills_its_tokens(self):
        # a stream cut before its usage is billed with the gateway's own count: a text chunk is a
        # token, and a tool call (sent whole in one chunk) its name's and arguments' tokens; before
        # (2026-11-30) only text chunks counted, so a client that hung up once it had its tool call
        # paid for no completion token at all
        st, h, b = chat(self.key, "toolcut", stream=True)
        self.assertEqual(st, 200)
        ev = events(b)
        self.assertIn("tool_calls", json.loads(ev[0])["choices"][0]["delta"])
        self.assertIn("error", json.loads(ev[-1]))
        rows = usage_rows(h["x-request-id"])
        self.assertGreaterEqual(rows[0][1], 30, "the call's arguments hold 'Paris' 30 times")

    def test_answer_without_usage_is_counted(self):
        # A whole answer that came without usage (an upstream that reports none) is billed
        # for what it holds: the gateway's own prompt count, and the tokens of the message's
        # text and tool calls; before (2026-11-30) the completion counted 0 (only streams'
        # chunks were counted), so such an upstream's answers were free
        st, h, b = chat(self.key, "nousage:40")
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["choices"][0]["message"]["content"], " cheese" * 40)
        rows = usage_rows(h["x-request-id"])
        self.assertEqual(len(rows), 1)
        self.assertGreater(rows[0][0], 0, "the prompt, counted by the gateway")
        self.assertGreaterEqual(rows[0][1], 40 + 10, "40 words of text and 'Oslo' 10 times in the arguments")

    def test_stream_without_event_boundaries_is_cut(self):
        st, h, b = chat(self.key, "noframe", stream=True)
        self.assertEqual(st, 200)
        self.assertEqual(json.loads(events(b)[-1])["error"]["code"], "upstream_error")
        self.assertLess(len(b), 1 << 20)

    def test_dead_worker_skipped(self):
        # The first worker for the model refuses connections.  Every request is answered by
        # another one, and the dead one, once it failed, is left alone for its back-off
        # (1 s, doubling): two tries of it are never less than 1 s apart, whatever the
        # machine's speed.  (The gateway's clock and ours are both monotonic.)  Its health
        # checks fail: the pool marks it down (then routing does not try it at all).
        name = 'tollgate_worker_failures_total{worker="http://127.0.0.1:18645"}'
        tries = []  # (start, end) of the requests during which the dead worker was tried
        before = metric(name, absent=0.0)
        # Prefix affinity picks the first worker to try from the prompt's hash: 40
        # different prompts make it all but certain ((2/3)^40) that the dead one comes up.
        for i in range(40):
            t0 = time.monotonic()
            st, h, b = chat(self.key, "alive%d" % i)
            t1 = time.monotonic()
            self.assertEqual(st, 200, b)
            after = metric(name, absent=0.0)
            self.assertLessEqual(after - before, 1, "one request tries the dead worker at most once")
            if after > before:
                tries.append((t0, t1))
            before = after
        # the pool's health check (every second) marks it down; until then requests may try it
        deadline = time.time() + WAIT
        while metric('tollgate_worker_up{worker="http://127.0.0.1:18645"}') != 0:
            self.assertLess(time.time(), deadline, "the dead worker is never marked down")
            time.sleep(0.1)
        self.assertGreater(metric('tollgate_worker_health_failures_total{worker="http://127.0.0.1:18645"}'), 0)
        self.assertEqual(metric('tollgate_worker_up{worker="http://127.0.0.1:18643"}'), 1)
        for (s0, _), (_, e1) in zip(tries, tries[1:]):
            self.assertGreaterEqual(e1 - s0, 1.0, "the dead worker was tried again within its back-off")

    def test_prefix_affinity(self):
        def worker_of(content):
            st, h, b = call("POST", "/v1/chat/completions", {"model": MODEL, "messages": [
                {"role": "system", "content": content}, {"role": "user", "content": "q" + uuid.uuid4().hex}]},
                self.key)
            self.assertEqual(st, 200, b)
            return worker_request(h["x-request-id"], which=True)[1]

        same = {worker_of("You are helpful. " * 20) for _ in range(6)}
        self.assertEqual(len(same), 1, "one prefix, one worker")
        spread = {worker_of("system prompt %d" % i) for i in range(16)}
        self.assertEqual(spread, {1, 2}, "different prefixes use both workers")

    def test_cache_namespace_is_the_customers(self):
        # Workers keep each customer's prefix cache apart by the namespace the
        # gateway names (X-Cache-Namespace: c<customer id>); a client cannot
        # choose it, or it could read another customer's cache.
        def namespace_of(key, headers=None):
            st, h, b = call("POST", "/v1/chat/completions", {"model": MODEL, "messages": [
                {"role": "user", "content": "ns " + uuid.uuid4().hex}]}, key, headers=headers)
            self.assertEqual(st, 200, b)
            return worker_request(h["x-request-id"])["headers"].get("X-Cache-Namespace")

        mine = namespace_of(self.key)
        self.assertRegex(mine or "", r"^c[1-9][0-9]*$")
        self.assertEqual(namespace_of(self.key, {"X-Cache-Namespace": "c999999"}), mine)
        other = namespace_of(seed())
        self.assertRegex(other or "", r"^c[1-9][0-9]*$")
        self.assertNotEqual(other, mine, "another customer, another namespace")

    def test_concurrent_mix_settles_each_once(self):
        key = seed()
        lock = threading.Lock()
        seen, errors = [], []

        def client(n):
            c = Conn(timeout=30)
            try:
                for i in range(10):
                    kind = ("plain", "stream", "cut", "bad")[(n + i) % 4]
                    if kind == "bad":
                        st, h, b = c.request("POST", "/v1/chat/completions", b'{"model":', key)
                        want = 400
                    else:
                        body = {"model": MODEL, "messages": [{"role": "user", "content": "cut" if kind == "cut" else "m"}]}
                        if kind != "plain":
                            body["stream"] = True
                        st, h, b = c.request("POST", "/v1/chat/completions", body, key)
                        want = 200
                    with lock:
                        if st != want or h.get("connection") != "keep-alive":
                            errors.append((kind, st, h.get("connection")))
                        if want == 200:
                            seen.append(h["x-request-id"])
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                with lock:
                    errors.append(repr(e))
            finally:
                c.close()

        ts = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        self.assertEqual(errors, [])
        self.assertEqual(len(set(seen)), 150)
        deadline = time.time() + 10
        c = psycopg2.connect(E["GW_PG"])
        c.autocommit = True
        cur = c.cursor()
        while True:
            cur.execute("select count(*), count(distinct request_id) from usage where request_id = any(%s::uuid[])",
                        (seen,))
            n, distinct = cur.fetchone()
            if n >= 150 or time.time() > deadline:
                break
            time.sleep(0.1)
        c.close()
        self.assertEqual((n, distinct), (150, 150))

    def test_worker_connections_kept_alive(self):
        # the same prompt goes to the same worker; a JSON answer leaves the connection open for the next
        body = {"model": MODEL, "messages": [{"role": "user", "content": "reuse me please"}]}
        # (one client connection: its event loop's kept-alive worker connections serve it; each
        # loop keeps its own)
        before = metric("tollgate_upstream_reuses_total")
        ports = set()
        c = Conn()
        for _ in range(3):
            st, h, b = c.request("POST", "/v1/chat/completions", body, self.key)
            self.assertEqual(st, 200, b)
            w, n = worker_request(h["x-request-id"], which=True)
            self.assertEqual(w["headers"]["Connection"], "keep-alive")
            ports.add((n, w["peer_port"]))
        c.close()
        self.assertEqual(len(ports), 1, "one worker connection served all three")
        self.assertGreaterEqual(metric("tollgate_upstream_reuses_total") - before, 2)
        # the fake worker closes after each stream without saying so: the gateway resends on a fresh one
        for _ in range(3):
            st, h, b = chat(self.key, "reuse me please", stream=True)
            self.assertEqual(st, 200, b)
            self.assertEqual(events(b)[-1], "[DONE]")

    def test_flood_with_backpressure(self):
        c = Conn(timeout=30)
        try:
            n = 3000
            body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "flood:%d" % n}]}
            got = []
            slow = {"left": 50}

            def on_chunk(ch):
                got.append(len(ch))
                if slow["left"] > 0:  # a slow reader for a while: the gateway must buffer boundedly
                    slow["left"] -= 1
                    time.sleep(0.01)

            data = json.dumps(body).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            st, h, b = c.read_response(on_chunk)
            self.assertEqual(st, 200)
            chunks = [json.loads(e) for e in events(b)[:-1]]
            content = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
            self.assertEqual(len(content), n * 1024)
            self.assertEqual(usage_rows(h["x-request-id"])[0][1], n)
        finally:
            c.close()

    def test_client_hangup_mid_stream_is_settled(self):
        # the worker holds the stream after one chunk: only the hang-up can end it
        tok = hold_token()
        c = Conn()
        try:
            body = json.dumps({"model": MODEL, "stream": True,
                               "messages": [{"role": "user", "content": "stallhold:" + tok}]}).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            while b"data:" not in c.buf:
                c._fill()
            rid = [ln.split(b":", 1)[1].strip().decode() for ln in c.buf.split(b"\r\n")
                   if ln.lower().startswith(b"x-request-id")][0]
            c.close()
            rows = usage_rows(rid)
            self.assertEqual(len(rows), 1)
            self.assertEqual(rows[0][1], 1, "one chunk had been generated")
            self.assertGreater(rows[0][0], 3, "the prompt, counted by the gateway's tokenizer, is billed")
        finally:
            c.close()
            release(tok)


class PostgresDown(unittest.TestCase):
    def test_503_while_down_then_back(self):
        k = seed()
        with open(os.path.join(E["GW_DIR"], "pgdir")) as f:
            pgdir = f.read().strip()
        pg = os.path.join(HERE, "..", "billing", "pg.sh")
        run(["bash", pg, "stop", pgdir], check=True, capture_output=True)
        try:
            st, h, b = chat(k, "pg down")  # a hang would end in the socket's timeout
            openai_error(self, st, h, b, 503, "service_unavailable")
        finally:
            port = urllib.parse.parse_qs(E["GW_PG"].replace(" ", "&"))["port"][0]
            run(["bash", pg, "start", pgdir, port], check=True, capture_output=True)
        wait_until("a 200 once PostgreSQL is back", lambda: chat(k, "pg back")[0] == 200, every=0.3)


class RedisRestart(unittest.TestCase):
    def test_local_fallback_then_reconnect(self):
        k = seed(rpm=2)
        port = E["GW_REDIS_PORT"]
        run(["redis-cli", "-p", port, "shutdown", "nosave"], capture_output=True)
        wait_until("Redis to stop answering",
                   lambda: run(["redis-cli", "-p", port, "ping"], capture_output=True, text=True).stdout.strip()
                   != "PONG")
        # Redis is down: the in-process limiter decides (documented), the same limits per instance
        codes = [chat(k, "nr%d" % i)[0] for i in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        self.assertGreater(metric("tollgate_redis_errors_total"), 0)
        self.assertGreater(metric("tollgate_ratelimit_local_decisions_total"), 0)
        p = subprocess.Popen(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
        with open(os.path.join(E["GW_DIR"], "redis.pid"), "w") as f:
            f.write(str(p.pid))
        wait_until("tollgate_redis_up 1", lambda: metric("tollgate_redis_up") == 1, every=0.2)
        codes = [chat(k, "back%d" % i)[0] for i in range(3)]
        self.assertEqual(codes, [200, 200, 429])


class JsonBody(unittest.TestCase):
    """The request body is read strictly (common/tg_json): bad UTF-8 and lone
    surrogates are a 400 from the gateway itself, U+0000 is text."""

    @classmethod
    def setUpClass(cls):
        cls.key = seed()

    def raw_chat(self, body, key=None):
        return call("POST", "/v1/chat/completions", body, key or self.key)

    def test_invalid_utf8_body_is_400_before_the_worker(self):
        before = metric('tollgate_http_requests_total{route="chat_completions",code="200"}')
        for bad, skip in ((b"a\xffb", 1), (b"\xc0\x80", 0), (b"\xed\xa0\x80", 0), (b"ok \xe2\x82", 3)):
            body = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"' + bad + b'"}]}'
            st, h, b = self.raw_chat(body)
            err = openai_error(self, st, h, b, 400, "invalid_request")
            self.assertEqual(err["type"], "invalid_request_error")
            self.assertTrue(err["message"].endswith("Invalid JSON at byte %d: invalid UTF-8 in string"
                                                    % (body.index(bad) + skip)), err["message"])
            self.assertIsNone(worker_request(h["x-request-id"]), "never forwarded")
            self.assertTrue(no_usage_row(h["x-request-id"]), "a refused request is not billed")
        # raw invalid UTF-8 in a key, too (a bad api key is the 401 whatever the body, as OpenAI)
        st, h, b = self.raw_chat(b'{"model":"m","\xfe":1,"messages":[]}')
        openai_error(self, st, h, b, 400, "invalid_request")
        st, h, b = self.raw_chat(b'{"model":"m","\xfe":1,"messages":[]}', key="sk-unknown")
        openai_error(self, st, h, b, 401, "invalid_api_key")
        self.assertEqual(metric('tollgate_http_requests_total{route="chat_completions",code="200"}'), before)

    def test_lone_surrogate_is_400(self):
        for esc in (b"\\ud800", b"\\udc00", b"x\\ud83d", b"\\ud83d\\u0041", b"\\udc00\\ud800"):
            body = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"' + esc + b'"}]}'
            st, h, b = self.raw_chat(body)
            err = openai_error(self, st, h, b, 400, "invalid_request")
            self.assertIn("lone surrogate", err["message"])
            self.assertIsNone(worker_request(h["x-request-id"]))
        # a proper pair is fine and reaches the worker as the character
        st, h, b = self.raw_chat(b'{"model":"' + MODEL.encode() +
                                 b'","messages":[{"role":"user","content":"\\ud83d\\ude00"}]}')
        self.assertEqual(st, 200, b)
        self.assertEqual(worker_request(h["x-request-id"])["body"]["messages"][0]["content"], "\U0001F600")

    def test_completion_cap_forwarded_when_absent(self):
        # no cap from the client: the gateway's default (what the hold was charged with) is
        # forwarded as a new first member, the rest byte for byte; a given cap is left alone
        body = ('{"model":"%s","messages":[{"role":"user","content":"hi"}]}' % MODEL).encode()
        st, h, b = self.raw_chat(body)
        self.assertEqual(st, 200, b)
        w = worker_request(h["x-request-id"])
        self.assertEqual(w["body"]["max_tokens"], 4096)
        self.assertEqual(int(w["headers"]["Content-Length"]), len(body) + len('"max_tokens":4096,'))
        # ...and says it is its default, not the client's: the worker caps it by the context left
        # instead of refusing a long prompt that fits (engine/SERVER.md)
        self.assertEqual(w["headers"].get("X-Tollgate-Default-Max-Tokens"), "4096")
        for given in ('"max_tokens":7', '"max_completion_tokens":9'):
            body = ('{"model":"%s",%s,"messages":[{"role":"user","content":"hi"}]}' % (MODEL, given)).encode()
            st, h, b = self.raw_chat(body)
            self.assertEqual(st, 200, b)
            w = worker_request(h["x-request-id"])
            self.assertNotIn("X-Tollgate-Default-Max-Tokens", w["headers"])
            self.assertEqual(int(w["headers"]["Content-Length"]), len(body), given)
            self.assertNotIn("max_tokens" if "completion" in given else "max_completion_tokens", w["body"])

    def test_nul_in_content_forwarded_intact(self):
        # a 64-bit seed (not exact in a double) and NULs: the worker gets both exactly
        body = ('{ "model" : "%s", "seed": 9007199254740993, "max_tokens": 16, "messages": '
                '[{"role":"user","content":"a\\u0000b\\u0000"}] }' % MODEL).encode()
        st, h, b = self.raw_chat(body)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["choices"][0]["message"]["content"], "Hello from a\x00b\x00")
        w = worker_request(h["x-request-id"])
        self.assertEqual(w["body"]["messages"][0]["content"], "a\x00b\x00")
        self.assertEqual(w["body"]["seed"], 9007199254740993)
        self.assertEqual(int(w["headers"]["Content-Length"]), len(body), "non-stream body forwarded byte for byte")
        # a stream: stream_options spliced in, everything else kept
        for so, want in ((None, {"include_usage": True}),
                         ("null", {"include_usage": True}),
                         ('{}', {"include_usage": True}),
                         ('{"include_usage": false}', {"include_usage": True}),
                         ('{"include_usage": null}', {"include_usage": True})):
            body = ('{"model":"%s","stream":true,%s"messages":[{"role":"user","content":"n\\u0000l"}],'
                    '"seed":18446744073709551615}' % (MODEL, '"stream_options":%s,' % so if so else "")).encode()
            st, h, b = self.raw_chat(body)
            self.assertEqual(st, 200, b)
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events(b)[:-1])
            self.assertEqual(text, "Hello from n\x00l")
            w = worker_request(h["x-request-id"])["body"]
            self.assertEqual(w["messages"][0]["content"], "n\x00l")
            self.assertEqual(w["stream_options"], want)
            self.assertEqual(w["seed"], 18446744073709551615)
            for e in events(b)[:-1]:
                self.assertNotIn("usage", json.loads(e), "the client did not ask for usage")
        # what the shared reader (api/) refuses never reaches a worker: unknown members of
        # stream_options, and a member given twice
        for so in ('{"include_usage": false, "x": 1}', '{"include_usage": false, "include_usage": 0}'):
            body = ('{"model":"%s","stream":true,"stream_options":%s,"messages":[{"role":"user","content":"n"}]}'
                    % (MODEL, so)).encode()
            st, h, b = self.raw_chat(body)
            self.assertEqual(openai_error(self, st, h, b, 400)["param"], "stream_options" if "x" in so
                             else "stream_options.include_usage")

    def test_nul_counted_in_gateway_prompt_count(self):
        # a cut stream is settled with the gateway's own prompt count: NUL is
        # text to the tokenizer (as U+0001 is), not the end of the message
        def prompt_of(content):
            body = {"model": MODEL, "stream": True, "messages": [
                {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": content}]},
                {"role": "user", "content": content}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "cut"}]}  # the fake worker cuts the stream: no usage
            st, h, b = call("POST", "/v1/chat/completions", body, self.key)
            self.assertEqual(st, 200, b)
            return usage_rows(h["x-request-id"])[0][0]

        nul, one, trunc = prompt_of("x\x00y\x00\x00z"), prompt_of("x\x01y\x01\x01z"), prompt_of("x")
        self.assertGreater(trunc, 0)
        self.assertEqual(nul, one)
        self.assertGreater(nul, trunc)

    def test_gateway_count_developer_role_and_nul_arguments(self):
        # the gateway's own count reads "developer" as "system" (as the engine
        # does), and a NUL in tool call arguments is text
        def prompt_of(role, args):
            body = {"model": MODEL, "stream": True, "messages": [
                {"role": role, "content": "be brief"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}, {"role": "user", "content": "cut"}]}
            st, h, b = call("POST", "/v1/chat/completions", body, self.key)
            self.assertEqual(st, 200, b)
            return usage_rows(h["x-request-id"])[0][0]

        sys_nul, dev_nul = prompt_of("system", '{"a":"\x00\x00"}'), prompt_of("developer", '{"a":"\x00\x00"}')
        sys_one, sys_none = prompt_of("system", '{"a":"\x01\x01"}'), prompt_of("system", '{"a":""}')
        self.assertGreater(sys_none, 0)
        self.assertEqual(dev_nul, sys_nul)
        self.assertEqual(sys_nul, sys_one)
        self.assertGreater(sys_nul, sys_none)

    def test_duplicate_and_nul_keys_refused(self):
        st, h, b = self.raw_chat(('{"model":"%s","model":"other-model","messages":[{"role":"user","content":"d"}]}'
                                  % MODEL).encode())
        self.assertEqual(openai_error(self, st, h, b, 400, "invalid_value")["param"], "model")
        st, h, b = self.raw_chat(('{"model":"%s","messages":[{"role":"user","content":"d"}],"stream":false,'
                                  '"stream":true}' % MODEL).encode())
        self.assertEqual(openai_error(self, st, h, b, 400)["param"], "stream")
        st, h, b = self.raw_chat(('{"model":"%s\\u0000x","messages":[{"role":"user","content":"d"}]}'
                                  % MODEL).encode())
        self.assertEqual(openai_error(self, st, h, b, 400)["param"], "model")
        # any duplicated key: the shared reader (api/) refuses it, so the gateway
        # and the worker can never read different values
        st, h, b = self.raw_chat(('{"model":"%s","temperature":1,"temperature":0,"messages":[{"role":"user",'
                                  '"content":"d"}]}' % MODEL).encode())
        self.assertEqual(openai_error(self, st, h, b, 400, "invalid_value")["param"], "temperature")

    def test_unknown_parameter_refused_before_admission(self):
        # a parameter neither OpenAI nor DeepSeek knows: 400 naming it, before
        # admission (the key has no credit at all, so admission would say 402)
        k = seed(credit=0)
        st, h, b = self.raw_chat(('{"model":"%s","foo":1,"messages":[{"role":"user","content":"d"}]}'
                                  % MODEL).encode(), key=k)
        err = openai_error(self, st, h, b, 400, "unknown_parameter")
        self.assertEqual((err["param"], err["message"]), ("foo", "Unrecognized request argument supplied: foo"))

    def test_json_errors_name_the_byte(self):
        for body, off, what in ((b'{"model": "x", "messages": [', 28, "unexpected end of input"),
                                (b'{"model": "x",}', 14, "expected a string key"),
                                (b'{"model": 01}', 11, "expected ',' or '}'"),
                                (b'{"a":"\x01"}', 6, "control character in string"),
                                (b'[' * 200 + b']' * 200, 128, "nesting too deep")):
            st, h, b = self.raw_chat(body)
            err = openai_error(self, st, h, b, 400, "invalid_request")
            self.assertEqual(err["message"],
                             "Failed to parse the request body as JSON: Invalid JSON at byte %d: %s" % (off, what))
        st, h, b = self.raw_chat(b"")
        openai_error(self, st, h, b, 400, "invalid_request")

    def test_deep_schema_names_the_field(self):
        # a schema nested past the JSON reader's 128 levels (1,000 here) is the schema's fault:
        # a 400 naming it, as the engine says it (api_json_err), before admission
        deep = '{"type":"object","properties":{"a":' * 1000 + '{}' + '}}' * 1000
        for body, param in (('"response_format":{"type":"json_schema","json_schema":{"name":"d","schema":%s}}'
                             % deep, "response_format.json_schema.schema"),
                            ('"tools":[{"type":"function","function":{"name":"f","parameters":%s}}]' % deep,
                             "tools[0].function.parameters")):
            st, h, b = self.raw_chat(('{"model":"%s","messages":[{"role":"user","content":"d"}],%s}'
                                      % (MODEL, body)).encode())
            err = openai_error(self, st, h, b, 400, "invalid_value")
            self.assertEqual(err["param"], param)
            self.assertIn("nesting too deep", err["message"])

    def test_huge_max_tokens_refused(self):
        # max_tokens beyond the reader's range (exact integers, 1..1e9) is a 400 before admission
        k = seed(tpm=100)
        st, h, b = self.raw_chat(('{"model":"%s","max_tokens":9223372036854775807,"messages":[{"role":"user",'
                                  '"content":"t"}]}' % MODEL).encode(), key=k)
        self.assertEqual(openai_error(self, st, h, b, 400, "invalid_value")["param"], "max_tokens")
        # both limits given: the smaller is charged (here it fits the 100-token TPM)
        st, h, b = self.raw_chat(('{"model":"%s","max_tokens":5000,"max_completion_tokens":3,"messages":'
                                  '[{"role":"user","content":"t"}]}' % MODEL).encode(), key=k)
        self.assertEqual(st, 200, b)

class ShortTimeouts(unittest.TestCase):
    """The timeouts, on the gateway with small ones (GW_SHORT_URL).  The other
    end stays silent until the timeout must fire (a client that never finishes
    its request, a worker that holds until released), so the only possible
    answer is the timeout's; and it may not come before the configured time."""

    @classmethod
    def setUpClass(cls):
        cls.key = seed()

    def test_header_timeout_408(self):
        t0 = time.monotonic()  # before connect: the gateway's timer starts after this
        c = Conn(url=SHORT)
        try:
            c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            st, h, b = c.read_response()
            openai_error(self, st, h, b, 408, "request_timeout")
            self.assertGreaterEqual(time.monotonic() - t0, SHORT_HEADER - SLACK, "not before header_timeout_ms")
            self.assertTrue(c.closed_by_peer())
        finally:
            c.close()

    def test_idle_keep_alive_closed(self):
        c = Conn(url=SHORT)
        try:
            t0 = time.monotonic()  # before the request: the idle timer starts after its answer
            st, h, b = c.request("GET", "/health")
            self.assertEqual(st, 200)
            self.assertEqual(h["connection"], "keep-alive")
            self.assertTrue(c.closed_by_peer(), "closed after idle_timeout_ms")
            self.assertGreaterEqual(time.monotonic() - t0, SHORT_IDLE - SLACK, "not before idle_timeout_ms")
        finally:
            c.close()

    def test_worker_timeout_504(self):
        tok = hold_token()
        try:
            t0 = time.monotonic()
            st, h, b = chat(self.key, "hold:" + tok, url=SHORT)
            openai_error(self, st, h, b, 504, "upstream_timeout")
            self.assertGreaterEqual(time.monotonic() - t0, SHORT_UPSTREAM - SLACK, "not before upstream_timeout_ms")
            worker_saw("hold:" + tok)
        finally:
            release(tok)
        self.assertEqual(usage_rows(h["x-request-id"])[0][3], 504)

    def test_worker_timeout_504_on_a_kept_connection(self):
        # a kept worker connection is read by the gateway's own event, whose
        # timeout is the upstream timeout (gw_proxy.c): it fires as the
        # bufferevent's did, and the connection is not kept after it
        admin = E["GW_SHORT_ADMIN_URL"]
        for i in range(16):  # kept connections to both workers, on every loop
            self.assertEqual(chat(self.key, "warm %d" % i, url=SHORT)[0], 200)
        reuses = metric("tollgate_upstream_reuses_total", admin=admin)
        tok = hold_token()
        try:
            t0 = time.monotonic()
            st, h, b = chat(self.key, "hold:" + tok, url=SHORT)
            openai_error(self, st, h, b, 504, "upstream_timeout")
            self.assertGreaterEqual(time.monotonic() - t0, SHORT_UPSTREAM - SLACK, "not before upstream_timeout_ms")
        finally:
            release(tok)
        self.assertEqual(metric("tollgate_upstream_reuses_total", admin=admin), reuses + 1, "sent on a kept connection")
        self.assertEqual(chat(self.key, "after", url=SHORT)[0], 200)

    def test_stream_stall_times_out(self):
        tok = hold_token()
        try:
            st, h, b = chat(self.key, "stallhold:" + tok, stream=True, url=SHORT)
        finally:
            release(tok)
        self.assertEqual(st, 200)
        ev = events(b)
        self.assertEqual(json.loads(ev[0])["choices"][0]["delta"]["content"], "Hello", "the chunk before the stall")
        self.assertEqual(json.loads(ev[-1])["error"]["code"], "upstream_timeout")


class Shutdown(unittest.TestCase):
    def test_sigterm_lets_inflight_finish(self):
        # In order: a request in flight (held by the worker); SIGTERM, seen by the gateway
        # (its log) while the request is still held; a new connection, made then, is never
        # served; the request is released and answered 200; the gateway exits; the
        # request is settled.
        key = seed()
        pid = int(E["GW_PID"])
        log = os.path.join(E["GW_DIR"], "log", "gateway.log")
        tok = hold_token()
        probe = None
        try:
            t = Background(key, "hold:" + tok)
            worker_saw("hold:" + tok)
            os.kill(pid, signal.SIGTERM)

            def logged():
                with open(log, errors="replace") as f:
                    return "SIGTERM, shutting down" in f.read()
            wait_until("the gateway to log SIGTERM", logged)
            self.assertTrue(t.is_alive(), "the request in flight ended before its worker answered: %r"
                            % (t.error or t.answer,))
            os.kill(pid, 0)  # the gateway waits for it
            try:  # the listening socket may still take the TCP connection; the gateway must not serve it
                raw = socket.create_connection((URL.hostname, URL.port), timeout=WAIT)
            except (ConnectionRefusedError, ConnectionResetError):  # refused, or reset as the listener closed
                raw = None
            if raw is not None:
                probe = Probe(raw)
        finally:
            release(tok)
        st, h, b = t.result()
        self.assertEqual(st, 200, b)
        rid = h["x-request-id"]

        def exited():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_until("the gateway to exit after SIGTERM", exited)
        if probe is not None:
            probe.join(WAIT)
            self.assertFalse(probe.is_alive(), "the probe connection still open after the gateway exited")
            self.assertIsNone(probe.answer, "a connection made after SIGTERM was served")
            self.assertIsInstance(probe.error, OSError)
        self.assertEqual(len(usage_rows(rid)), 1)
        with self.assertRaises(OSError):
            Conn()


class Probe(threading.Thread):
    """GET /health over TLS on an already connected socket, on a thread: .answer
    or .error once joined."""

    def __init__(self, raw):
        super().__init__(daemon=True)
        self.raw, self.answer, self.error = raw, None, None
        self.start()

    def run(self):
        try:
            c = Conn.__new__(Conn)
            c.s, c.buf = ctx().wrap_socket(self.raw, server_hostname="localhost"), b""
            try:
                self.answer = c.request("GET", "/health")
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - the test asserts it is an OSError
            self.error = e
        finally:
            self.raw.close()


def complete(key, prompt="hi", stream=False, include_usage=False, path="/v1/completions", **extra):
    body = {"model": MODEL, "prompt": prompt}
    if stream:
        body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return call("POST", path, body, key)


class Completions(unittest.TestCase):
    """POST /v1/completions and /beta/completions: the chat path's phases, the worker's /v1/completions."""

    @classmethod
    def setUpClass(cls):
        cls.key = seed()

    def test_both_paths_reach_the_workers_completions(self):
        route = 'tollgate_http_requests_total{route="completions",code="200"}'
        before = metric(route, absent=0.0)
        for path in ("/v1/completions", "/beta/completions"):
            st, h, b = complete(self.key, "route me", path=path, suffix="!")
            self.assertEqual(st, 200, b)
            j = json.loads(b)
            self.assertEqual((j["object"], j["choices"][0]["text"]), ("text_completion", "Hello from route me"))
            seen = worker_request(h["x-request-id"])
            self.assertEqual(seen["path"], "/v1/completions")
            self.assertEqual(seen["body"]["suffix"], "!")
            self.assertNotIn("X-Tollgate-Default-Max-Tokens", seen["headers"])  # the reader's default, 16
            rows = usage_rows(h["x-request-id"])
            self.assertEqual((rows[0][0], rows[0][1], rows[0][3]), (j["usage"]["prompt_tokens"], 3, 200))
        self.assertEqual(metric(route, absent=0.0), before + 2)
        # DeepSeek's beta base_url serves chat too: a client set up for FIM on .../beta
        st, h, b = call("POST", "/beta/chat/completions",
                        {"model": MODEL, "messages": [{"role": "user", "content": "beta chat"}]}, self.key)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["object"], "chat.completion")
        self.assertEqual(worker_request(h["x-request-id"])["path"], "/v1/chat/completions")
        self.assertEqual(len(usage_rows(h["x-request-id"])), 1)
        # refused by the shared reader before admission: a 400 naming the parameter, never billed
        st, h, b = complete(self.key, ["a", "b"])
        self.assertEqual(openai_error(self, st, h, b, 400, "invalid_value")["param"], "prompt")
        self.assertTrue(no_usage_row(h["x-request-id"]))
        st, h, b = complete(self.key, "x", messages=[])
        self.assertEqual(openai_error(self, st, h, b, 400, "unknown_parameter")["param"], "messages")
        st, h, b = call("GET", "/v1/completions", None, self.key)
        self.assertEqual((st, h.get("allow")), (405, "POST"))
        # CORS as the other /v1 routes
        c = Conn()
        try:
            c.send(b"OPTIONS /beta/completions HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n")
            st, h, _ = c.read_response(head_only=True)
            self.assertEqual((st, h["access-control-allow-origin"]), (204, "*"))
        finally:
            c.close()

    def test_stream_cut_is_billed_per_text_chunk(self):
        st, h, b = complete(self.key, "cut", stream=True)
        self.assertEqual(st, 200)
        ev = events(b)
        self.assertEqual([json.loads(e)["choices"][0]["text"] for e in ev[:2]], ["Hello", " from"])
        self.assertIn("error", json.loads(ev[-1]))
        rows = usage_rows(h["x-request-id"])
        self.assertEqual(rows[0][1], 2, "two text chunks were generated before the cut")
        self.assertGreater(rows[0][0], 0, "the prompt, counted by the gateway")

    def test_echoed_prompt_is_not_billed_as_completion(self):
        # echo: the answer's text starts with the prompt, which the model did not
        # generate: a cut stream bills its generated chunks only (its echo chunk
        # not), an answer without usage the text after the prompt
        pad = " and a long prompt" * 60
        st, h, b = complete(self.key, "cut" + pad, stream=True, echo=True)
        self.assertEqual(st, 200)
        ev = events(b)
        self.assertEqual([json.loads(e)["choices"][0]["text"] for e in ev[:3]], ["cut" + pad, "Hello", " from"])
        self.assertEqual(usage_rows(h["x-request-id"])[0][1], 2, "two text chunks were generated before the cut")
        st, h, b = complete(self.key, "nousage:5" + pad, echo=True)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["choices"][0]["text"], "nousage:5" + pad + " cheese" * 5)
        st, h2, b = complete(self.key, "nousage:5" + pad)
        self.assertEqual(st, 200, b)
        # the same 5 words billed with echo as without (before: the prompt's 1000 bytes too)
        self.assertEqual(usage_rows(h["x-request-id"])[0][1], usage_rows(h2["x-request-id"])[0][1])

    def test_answer_without_usage_counts_the_text(self):
        st, h, b = complete(self.key, "nousage:40")
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["choices"][0]["text"], " cheese" * 40)
        rows = usage_rows(h["x-request-id"])
        self.assertGreaterEqual(rows[0][1], 40, "40 words of text")

    def test_stream_usage_passed_through(self):
        st, h, b = complete(self.key, "streamed", stream=True, include_usage=True)
        self.assertEqual(st, 200, b)
        chunks = [json.loads(e) for e in events(b) if e != "[DONE]"]
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks if c["choices"]), "Hello from streamed")
        self.assertEqual(chunks[-1]["choices"], [])
        rows = usage_rows(h["x-request-id"])
        self.assertEqual((rows[0][0], rows[0][1]), (chunks[-1]["usage"]["prompt_tokens"], 3))
        # without include_usage: the gateway asked for it, the client gets none
        st, h, b = complete(self.key, "streamed", stream=True)
        for e in events(b):
            if e != "[DONE]":
                self.assertNotIn("usage", json.loads(e))
                self.assertTrue(json.loads(e)["choices"])


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(HERE, "..", "lib"))
    from tgskip import main  # noqa: E402 - skips are counted, never a quiet pass
    main()
