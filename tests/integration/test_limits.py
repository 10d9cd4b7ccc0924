"""Rate limits across gateway instances (gateway/README.md, "Rate limits").

Runs against the test stack's PostgreSQL and admin API (keys and customers are
made with build/tollgatectl) and starts its own pieces, so it can break them:
a Redis server, a three-master Redis Cluster, a scripted upstream (a Python
HTTP server in this process that can hold requests until released and
reports the usage it is told to), and gateway instances on that upstream.

Ports: the stack's public port + 60 .. + 82 (cluster buses at + 10000; the stack itself uses + 0 .. + 57),
20000 lower when that falls in the kernel's ephemeral port range.

Proves, on two instances sharing Redis:
- RPM exactness: 200 concurrent clients on one key, exactly N admitted per
  burst (bounded by N + what GCRA refills during the burst, from Redis' own
  clock), every other answer a 429 with retry-after;
- quota leases never pass a limit: leases taken on both instances and kept
  busy while the bucket drains, then a burst admits at most GCRA's bound over
  the burst's window (RPM of a key, TPM of a customer): what a lease holds
  must not drain while it holds it;
- concurrency never above the limit across both instances (requests held at
  the upstream until every other answer is in: exactly the limit admitted);
- TPM charged prompt + max_tokens and corrected at the end (refund, and an
  excess charged);
- per-customer limits over several keys, a refusal by the customer giving
  back what the key took;
- a SIGKILLed instance's concurrency slots expire (leases), while a live
  instance's long request keeps its slot past the lease (renewal);
- x-ratelimit-* headers on every /v1 answer after authentication;
- Redis down: the in-process fallback still limits, fail-closed answers 503,
  both counted in /metrics; Redis stopped (SIGSTOP): decisions still bounded;
- a Redis outage longer than concurrency_lease_ms, while requests admitted
  from a lease (and from Redis) run: once Redis is back, their expired slots
  are counted again and no instance admits on them: requests in flight never
  pass the concurrency limit;
- Redis Cluster: keys spread over the masters, exact limits, a MOVED after a
  slot migration followed;
- the failed-auth throttle.
"""

import concurrent.futures
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tgskip import main  # noqa: E402

E = os.environ
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = E["TG_TEST_BIN"]
CTL = os.path.join(BIN, "tollgatectl")
MODEL = E["TG_TEST_MODEL"]
BASE = urllib.parse.urlparse(E["TG_TEST_GATEWAY"]).port + 60


def _ephemeral(port):
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except OSError:
        lo, hi = 32768, 60999
    return lo <= port + 10030 and port <= hi  # the cluster buses too


if _ephemeral(BASE):  # ports the kernel hands out to outgoing connections: binds there can fail
    BASE -= 20000
P_UP, P_REDIS = BASE, BASE + 1
P_CLUSTER = (BASE + 2, BASE + 3, BASE + 4)
P_GW = BASE + 5  # instances: P_GW + 2*i (public), P_GW + 2*i + 1 (admin)
DIR = os.path.join(E["TG_TEST_DIR"], "limits")
W = 60000
DRAIN_S = 15  # leases held while the bucket drains (test_leases_never_pass_*)


def ctl(*args):
    r = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("tollgatectl %s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr))
    return r.stdout


def new_customer(credit="5"):
    name = "lim-" + uuid.uuid4().hex[:10]
    c = json.loads(ctl("--json", "customer", "create", name, "--credit-usd", credit))
    return name, c["id"]


def new_key(cust, *opts):
    """-> (key, key id)"""
    out = ctl("--json", "key", "create", "--customer", cust, *opts)
    j = json.loads(out)  # one JSON document, the key inside it
    return j["key"], j["id"]


# ---- the scripted upstream -------------------------------------------------------


class Upstream:
    """An OpenAI-shaped chat endpoint.  The last message's content:
    "hold"          wait until release() (counted in .inflight / .max_inflight)
    "usage:P:C"     report P prompt and C completion tokens (default 5 and 5)"""

    def __init__(self, port):
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.gate = threading.Event()
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                text = body["messages"][-1]["content"]
                p, c = 5, 5
                if text.startswith("usage:"):
                    p, c = (int(x) for x in text[6:].split(":"))
                if text == "hold":
                    with up.lock:
                        up.inflight += 1
                        up.max_inflight = max(up.max_inflight, up.inflight)
                    up.gate.wait(120)
                    with up.lock:
                        up.inflight -= 1
                out = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": p, "completion_tokens": c,
                                            "total_tokens": p + c}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        class S(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

            def handle_error(self, request, client_address):
                pass  # a gateway killed on purpose leaves broken pipes

        self.srv = S(("127.0.0.1", port), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def hold(self):
        self.gate.clear()

    def release(self):
        self.gate.set()

    def reset_max(self):
        with self.lock:
            self.max_inflight = self.inflight


# ---- Redis ------------------------------------------------------------------------


def redis_cli(port, *args):
    r = subprocess.run(["redis-cli", "-p", str(port), *[str(a) for a in args]], capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip()


def redis_start(port, *extra):
    d = os.path.join(DIR, "redis-%d" % port)
    os.makedirs(d, exist_ok=True)
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                          "no", "--dir", d, *extra], stdout=open(os.path.join(d, "log"), "a"),
                         stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while redis_cli(port, "ping") != "PONG":
        if p.poll() is not None or time.time() > deadline:
            raise AssertionError("redis-server on %d did not start" % port)
        time.sleep(0.05)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def redis_time_ms(port):
    s, us = redis_cli(port, "time").split()
    return int(s) * 1000 + int(us) // 1000


# ---- gateway instances ---------------------------------------------------------------


class Gateway:
    def __init__(self, idx, **over):
        self.port, self.admin = P_GW + 2 * idx, P_GW + 2 * idx + 1
        with open(os.path.join(E["TG_TEST_DIR"], "tollgate.json")) as f:
            cfg = json.load(f)
        cfg.update(listen="127.0.0.1:%d" % self.port, admin_listen="127.0.0.1:%d" % self.admin,
                   spool_dir=os.path.join(DIR, "spool%d" % idx), access_log=os.path.join(DIR, "access%d.log" % idx),
                   workers=[{"url": "http://127.0.0.1:%d" % P_UP, "models": [MODEL]}],
                   redis="127.0.0.1:%d" % P_REDIS, redis_timeout_ms=3000, concurrency_lease_ms=3000,
                   auth_fail_limit=0, default_rpm=0, default_tpm=0, default_concurrency=0)
        cfg.update(over)
        path = os.path.join(DIR, "gw%d.json" % idx)
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.logpath = os.path.join(DIR, "gw%d.log" % idx)
        self.log = open(self.logpath, "a")
        self.p = subprocess.Popen([os.path.join(BIN, "tollgate"), "--config", path], cwd=TOP,
                                  stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            if self.p.poll() is not None:
                raise AssertionError("gateway %d exited (%s): see %s" % (idx, self.p.returncode, self.logpath))
            try:
                if call(self.port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise AssertionError("gateway %d did not come up" % idx)
            time.sleep(0.05)

    def metric(self, name):
        """A counter or gauge from /metrics (public port, else the admin listener)."""
        for port in (self.port, self.admin):
            try:
                st, h, b = call(port, "GET", "/metrics", tls=port == self.port)
            except OSError:
                continue
            if st == 200:
                for line in b.decode().splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[-1])
                return 0.0
        raise AssertionError("no /metrics on gateway %d" % self.port)

    def stop(self, sig=signal.SIGTERM):
        stop(self.p, sig)
        self.log.close()
        with open(self.logpath) as f:
            text = f.read()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if bad in text:
                raise AssertionError("sanitizer report in %s" % self.logpath)


CTX = ssl.create_default_context(cafile=E["TG_TEST_CERT"])


def call(port, method, path, key=None, body=None, tls=True, timeout=60):
    """-> (status, headers (lower-case names), body bytes)"""
    if tls:
        c = http.client.HTTPSConnection("127.0.0.1", port, context=CTX, timeout=timeout)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def chat(port, key, content="hi", max_tokens=1, model=MODEL):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return call(port, "POST", "/v1/chat/completions", key, body)


def quiet_chat(*args):
    """chat() on a thread whose gateway may be killed under it."""
    try:
        chat(*args)
    except OSError:
        pass


def code(b):
    try:
        return json.loads(b)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def many(n, fn):
    """Run fn(i) for i < n on n threads released together -> list of results."""
    start = threading.Barrier(n)

    def one(i):
        start.wait(60)
        return fn(i)

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(one, range(n)))


def wait_for(what, pred, deadline_s=30):
    deadline = time.time() + deadline_s
    while not pred():
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def setUpModule():
    global UP
    shutil.rmtree(DIR, ignore_errors=True)
    os.makedirs(DIR)
    UP = Upstream(P_UP)


def tearDownModule():
    UP.release()
    UP.srv.shutdown()
    UP.srv.server_close()


class TwoInstances(unittest.TestCase):
    """Two gateways on one Redis: every limit holds across both."""

    @classmethod
    def setUpClass(cls):
        cls.a = cls.b = None
        cls.redis = redis_start(P_REDIS)
        try:
            cls.a = Gateway(0)
            cls.b = Gateway(1)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        UP.release()
        for g in (cls.a, cls.b):
            if g:
                g.stop()
        stop(cls.redis)

    def no_fallback(self):
        """Exactness holds while Redis answers: nothing was decided in process."""
        for g in (self.a, self.b):
            self.assertEqual(g.metric("tollgate_ratelimit_local_decisions_total"), 0)

    def test_rpm_exact_200_clients(self):
        n = 25
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--rpm", str(n))
        ports = (self.a.port, self.b.port)
        t0 = redis_time_ms(P_REDIS)
        res = many(200, lambda i: chat(ports[i % 2], key, "r%d" % i))
        t1 = redis_time_ms(P_REDIS)
        codes = [r[0] for r in res]
        ok = codes.count(200)
        self.assertEqual(codes.count(200) + codes.count(429), 200, codes)
        # GCRA: a burst of n, then one more per 60/n s of Redis time during the burst
        refill = (t1 - t0) * n // W
        print("rpm %d: %d admitted of 200 on two instances in %d ms (bound %d)" % (n, ok, t1 - t0, n + refill),
              file=sys.stderr)
        self.assertGreaterEqual(ok, n)
        self.assertLessEqual(ok, n + refill)
        self.no_fallback()
        for st, h, b in res:
            if st == 429:
                self.assertEqual(code(b), "rate_limit_exceeded")
                self.assertGreaterEqual(int(h["retry-after"]), 1)
                self.assertEqual(h["x-ratelimit-limit-requests"], str(n))
        # O(1) state per key: one hash (and no lease set without a concurrency limit)
        self.assertEqual(redis_cli(P_REDIS, "type", "tg:rl:{k:%d}" % key_id), "hash")
        self.assertEqual(redis_cli(P_REDIS, "exists", "tg:conc:{k:%d}" % key_id), "0")

    def test_quota_leases_high_limits(self):
        """High limits are taken from Redis in quota leases: most admissions make no
        round trip, and the two instances together still never pass the limit."""
        def evalsha_calls():
            for line in redis_cli(P_REDIS, "info", "commandstats").splitlines():
                if line.startswith("cmdstat_evalsha:"):
                    return int(line.split("calls=")[1].split(",")[0])
            return 0
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--rpm", "100000", "--concurrency", "1000", "--tpm", "100000000")
        ports = (self.a.port, self.b.port)
        many(64, lambda i: chat(ports[i % 2], key, "warm%d" % i))  # the first burst fills the leases
        leased0 = sum(g.metric("tollgate_ratelimit_lease_admissions_total") for g in (self.a, self.b))
        calls0 = evalsha_calls()
        codes = [r[0] for r in many(400, lambda i: chat(ports[i % 2], key, "lease%d" % i))]
        self.assertEqual(codes, [200] * 400)
        leased = sum(g.metric("tollgate_ratelimit_lease_admissions_total") for g in (self.a, self.b)) - leased0
        calls = evalsha_calls() - calls0
        print("quota leases: %d of 400 admissions without Redis, %d script calls" % (leased, calls), file=sys.stderr)
        # most admissions come from leases (without leases: none); how many depends on how fast
        # the loaded host lets the leases refill (284 of 400 once under CI on 2 busy cores, 300+ usually)
        self.assertGreater(leased, 200)
        self.assertLess(calls, 200)  # per-request limits make at least 800 (take and done)
        self.no_fallback()
        # a leased limit is still never passed: 600 a minute, 800 asked across both instances
        n = 600
        key, key_id = new_key(cust, "--rpm", str(n))
        t0 = redis_time_ms(P_REDIS)
        res = many(800, lambda i: chat(ports[i % 2], key, "r%d" % i))
        t1 = redis_time_ms(P_REDIS)
        ok = [r[0] for r in res].count(200)
        refill = (t1 - t0) * n // W
        print("rpm %d with leases: %d admitted of 800 in %d ms (bound %d)" % (n, ok, t1 - t0, n + refill),
              file=sys.stderr)
        self.assertEqual([r[0] for r in res].count(429), 800 - ok)
        self.assertLessEqual(ok, n + refill)
        # what a lease held unused when the other instance was refused: at most a sixteenth per instance
        self.assertGreaterEqual(ok, n - 2 * (n // 16))
        self.no_fallback()

    def leased_burst(self, key, lim, n, content, max_tokens, units, what):
        """Leases taken on both instances, kept busy while the bucket drains (DRAIN_S), then n
        concurrent clients over both instances.  -> (units admitted in the burst, bound).

        The bound is GCRA's over the burst's window, from Redis' own clock: at most lim at once plus
        lim per minute of the window, whatever the leases held when it began (gateway/README.md
        "Quota leases").  units(status, body) is what one answer counts against lim (1 a request,
        or the tokens settled).  The window is measured from before the first request to after the
        last answer, so a slow host only makes the bound larger."""
        ports = (self.a.port, self.b.port)
        for p in ports:  # a take from Redis with a lease grant, then a take from the lease (a fill)
            for _ in range(2):
                self.assertEqual(chat(p, key, content, max_tokens=max_tokens)[0], 200)
        stop_at = time.time() + DRAIN_S
        while time.time() < stop_at:  # never idle long enough for a lease to be given back
            for p in ports:
                chat(p, key, content, max_tokens=max_tokens)
            time.sleep(0.6)  # well below the refill: the bucket drains
        time.sleep(0.5)  # the last corrections (sent after their answers) land before the window opens
        t0 = redis_time_ms(P_REDIS)
        res = many(n, lambda i: chat(ports[i % 2], key, content, max_tokens=max_tokens))
        t1 = redis_time_ms(P_REDIS)
        codes = [r[0] for r in res]
        self.assertEqual(codes.count(200) + codes.count(429), n, codes)
        got = sum(units(st, b) for st, h, b in res if st == 200)
        for st, h, b in res:  # a header never shows more room than the limit
            rem = h.get("x-ratelimit-remaining-" + what)
            if rem is not None:
                self.assertLessEqual(int(rem), lim)
        bound = lim + (t1 - t0) * lim // W
        print("%s %d after a drain with leases held: %d admitted in a %d ms burst of %d (bound %d)" %
              (what, lim, got, t1 - t0, n, bound), file=sys.stderr)
        self.no_fallback()
        return got, bound

    def test_leases_never_pass_rpm_after_drain(self):
        """A lease's grant is charged when granted; the bucket must not drain it while the lease
        still holds it, or a burst gets the bucket's room and the leases' on top."""
        lim = 1024
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--rpm", str(lim))
        got, bound = self.leased_burst(key, lim, lim + 300, "r", 1, lambda st, b: 1, "requests")
        self.assertLessEqual(got, bound)

    def test_leases_never_pass_customer_tpm_after_drain(self):
        """The same for a customer's TPM over two keys; what counts is the tokens settled (the
        charge at admission corrected at the end)."""
        lim = 60000
        cust, _ = new_customer()
        ctl("customer", "limits", cust, "--tpm", str(lim))
        key, _ = new_key(cust)

        def used(st, b):
            u = json.loads(b)["usage"]
            return u["prompt_tokens"] + u["completion_tokens"]
        got, bound = self.leased_burst(key, lim, 900, "usage:40:60", 100, used, "tokens")
        self.assertLessEqual(got, bound)

    def test_concurrency_exact_200_clients(self):
        limit = 5
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--concurrency", str(limit))
        ports = (self.a.port, self.b.port)
        UP.hold()
        UP.reset_max()
        done = []
        lock = threading.Lock()

        def one(i):
            r = chat(ports[i % 2], key, "hold")
            with lock:
                done.append(r)
            return r

        th = threading.Thread(target=lambda: setattr(th, "res", many(200, one)))
        th.start()
        try:
            # every request is answered (429) or held at the upstream
            wait_for("all answered or held", lambda: len(done) + UP.inflight == 200, 120)
            self.assertEqual(UP.inflight, limit)
            self.assertEqual(redis_cli(P_REDIS, "zcard", "tg:conc:{k:%d}" % key_id), str(limit))
            for st, h, b in done:
                self.assertEqual(st, 429, b)
                self.assertEqual(code(b), "concurrency_limit_exceeded")
                self.assertIn("retry-after", h)
        finally:
            UP.release()
            th.join(120)
        self.assertEqual(UP.max_inflight, limit)
        self.assertEqual([r[0] for r in th.res].count(200), limit)
        # the slots are freed at completion (pipelined after the answer)
        wait_for("slots freed", lambda: redis_cli(P_REDIS, "zcard", "tg:conc:{k:%d}" % key_id) == "0")
        codes = [r[0] for r in many(limit, lambda i: chat(ports[i % 2], key, "after"))]
        self.assertEqual(codes, [200] * limit)
        self.no_fallback()

    def test_tpm_charged_then_corrected(self):
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--tpm", "100")
        # charged the prompt (the gateway's count, a few tokens) + max_tokens 60
        st, h, b = chat(self.a.port, key, "usage:4:6", max_tokens=60)
        self.assertEqual(st, 200, b)
        rem1 = int(h["x-ratelimit-remaining-tokens"])
        charge = 100 - rem1
        self.assertTrue(60 < charge < 75, charge)
        # corrected to the 10 tokens used: another charge of the same size fits on the other instance
        # (without the refund 2 x charge > 100 would wait ~20 s)
        st, h, b = chat(self.b.port, key, "usage:4:6", max_tokens=60)
        self.assertEqual(st, 200, b)
        rem2 = int(h["x-ratelimit-remaining-tokens"])
        self.assertTrue(100 - 10 - charge <= rem2 <= 100 - 10 - charge + 2, (rem2, charge))
        # a request that uses more than it was charged (an upstream reporting more than the cap, or a
        # prompt count below the upstream's) is charged the excess
        st, h, b = chat(self.a.port, key, "usage:4:80", max_tokens=20)
        self.assertEqual(st, 200, b)
        st, h, b = chat(self.a.port, key, "x", max_tokens=1)
        self.assertEqual(st, 429, b)  # 10 + 84 used (+ this one's charge) > 100
        self.assertEqual(code(b), "tokens_rate_limit_exceeded")
        self.assertGreaterEqual(int(h["retry-after"]), 1)
        # a request above the limit itself never fits
        st, h, b = chat(self.a.port, key, "x", max_tokens=500)
        self.assertEqual((st, code(b)), (429, "tokens_rate_limit_exceeded"))
        self.assertIn("too large", json.loads(b)["error"]["message"])

    def test_customer_limits_over_keys(self):
        cust, cust_id = new_customer()
        ctl("customer", "limits", cust, "--rpm", "3")
        self.assertEqual(json.loads(ctl("--json", "customer", "limits", cust))["rpm"], 3)
        k1, id1 = new_key(cust, "--rpm", "10")
        k2, _ = new_key(cust)
        codes = [chat(self.a.port, k1)[0], chat(self.b.port, k2)[0], chat(self.a.port, k1)[0]]
        self.assertEqual(codes, [200, 200, 200])
        st, h, b = chat(self.b.port, k1)
        self.assertEqual((st, code(b)), (429, "rate_limit_exceeded"))
        self.assertIn("this account", json.loads(b)["error"]["message"])
        self.assertEqual(h["x-ratelimit-limit-requests"], "3")  # the tighter of key and customer
        self.assertEqual(h["x-ratelimit-remaining-requests"], "0")
        # the key's own bucket got back what the refused request took from it: 10 - 2
        self.assertEqual(redis_cli(P_REDIS, "exists", "tg:rl:{c:%d}" % cust_id), "1")
        ctl("customer", "limits", cust, "--rpm", "0")
        # the change reaches the gateway's key cache through NOTIFY: wait for it (a
        # /v1/models answer shows the limits without taking from them)
        deadline = time.time() + 30
        while True:
            st, h, b = call(self.a.port, "GET", "/v1/models", k1)
            self.assertEqual(st, 200, b)
            if h.get("x-ratelimit-limit-requests") == "10" or time.time() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(h["x-ratelimit-limit-requests"], "10")
        self.assertEqual(h["x-ratelimit-remaining-requests"], "8")

    def test_headers_on_every_v1_answer(self):
        g = Gateway(2, default_rpm=100, default_tpm=50000, default_concurrency=3)
        try:
            cust, _ = new_customer()
            key, _ = new_key(cust)  # no limits of its own: the defaults
            scoped, _ = new_key(cust, "--models", "some-other-model")
            poor, _ = new_customer("0")
            broke, _ = new_key(poor)
            answers = {
                "chat 200": chat(g.port, key),
                "models": call(g.port, "GET", "/v1/models", key),
                "one model": call(g.port, "GET", "/v1/models/" + MODEL, key),
                "unknown model 404": call(g.port, "GET", "/v1/models/nope", key),
                "scope 403": chat(g.port, scoped),
                "no balance 402": chat(g.port, broke),
                "too many tokens 429": chat(g.port, key, max_tokens=60000),
            }
            want = {"chat 200": 200, "models": 200, "one model": 200, "unknown model 404": 404, "scope 403": 403,
                    "no balance 402": 402, "too many tokens 429": 429}
            for what, (st, h, b) in answers.items():
                self.assertEqual(st, want[what], (what, b))
                for name in HEADERS:
                    self.assertIn(name, h, what)
                self.assertEqual(h["x-ratelimit-limit-requests"], "100", what)
                self.assertEqual(h["x-ratelimit-limit-tokens"], "50000", what)
            self.assertIn("retry-after", answers["too many tokens 429"][1])
            # a look takes nothing: only the one admitted chat counted
            st, h, b = call(g.port, "GET", "/v1/models", key)
            self.assertEqual(h["x-ratelimit-remaining-requests"], "99")
            # before the key is known there is nothing to tell
            st, h, b = chat(g.port, "sk-" + "0" * 48)
            self.assertEqual(st, 401)
            self.assertNotIn("x-ratelimit-limit-requests", h)
        finally:
            g.stop()

    def test_sigkilled_instance_slots_expire_and_live_leases_renew(self):
        lease_ms = 3000
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--concurrency", "2")
        c = Gateway(3, concurrency_lease_ms=lease_ms)
        UP.hold()
        held = [threading.Thread(target=quiet_chat, args=(c.port, key, "hold")) for _ in range(2)]
        for t in held:
            t.start()
        try:
            wait_for("two held", lambda: UP.inflight == 2)
            st, h, b = chat(self.a.port, key)
            self.assertEqual((st, code(b)), (429, "concurrency_limit_exceeded"))
            c.stop(signal.SIGKILL)  # its leases are never freed nor renewed
            UP.release()
            for t in held:
                t.join(60)
            self.assertEqual(chat(self.a.port, key)[0], 429)  # still held by the dead instance's leases
            wait_for("the dead instance's leases to expire", lambda: chat(self.a.port, key)[0] == 200,
                     deadline_s=10 * lease_ms / 1000)
        finally:
            UP.release()
        # a live instance renews: a request held for two leases keeps its slot
        key2, _ = new_key(cust, "--concurrency", "1")
        UP.hold()
        t = threading.Thread(target=chat, args=(self.b.port, key2, "hold"))
        t.start()
        try:
            wait_for("held", lambda: UP.inflight == 1)
            t_end = time.time() + 2 * lease_ms / 1000
            while time.time() < t_end:
                st, h, b = chat(self.a.port, key2)
                self.assertEqual((st, code(b)), (429, "concurrency_limit_exceeded"))
                time.sleep(0.2)
        finally:
            UP.release()
            t.join(60)
        wait_for("slot freed", lambda: chat(self.a.port, key2)[0] == 200)

    def test_failed_auth_throttle(self):
        g = Gateway(4, auth_fail_limit=5, auth_fail_window_ms=60000, auth_fail_block_ms=2000)
        try:
            cust, _ = new_customer()
            key, _ = new_key(cust)
            self.assertEqual(chat(g.port, key)[0], 200)
            for i in range(5):
                st, h, b = chat(g.port, "sk-%048x" % i)
                self.assertEqual(st, 401, b)
            # blocked before any key lookup: even a good key, /v1/models too
            for st, h, b in (chat(g.port, key), call(g.port, "GET", "/v1/models", key)):
                self.assertEqual((st, code(b)), (429, "too_many_failed_authentications"))
                self.assertTrue(1 <= int(h["retry-after"]) <= 2, h)
            self.assertGreaterEqual(g.metric("tollgate_auth_throttled_total"), 2)
            self.assertEqual(g.metric("tollgate_auth_blocks_total"), 1)
            # per instance: the other one does not know
            self.assertEqual(chat(self.a.port, key)[0], 200)
            wait_for("the block to end", lambda: chat(g.port, key)[0] == 200)
        finally:
            g.stop()


class RedisDown(unittest.TestCase):
    """Redis unanswered: the in-process limiter, or 503 with redis_fail_closed."""

    def test_local_fallback_and_fail_closed(self):
        redis = redis_start(P_REDIS)
        local = closed = None
        try:
            local = Gateway(5, redis_timeout_ms=250)
            closed = Gateway(6, redis_fail_closed=True, redis_timeout_ms=250)
            cust, _ = new_customer()
            key, _ = new_key(cust, "--rpm", "3")
            self.assertEqual(chat(local.port, key)[0], 200)  # through Redis: the mirror holds it too
            # slow: Redis stopped, every call times out (redis_timeout_ms), decisions stay bounded
            redis.send_signal(signal.SIGSTOP)
            try:
                st, h, b = chat(local.port, key)
                self.assertEqual(st, 200, b)
                st, h, b = chat(closed.port, key)
                self.assertEqual((st, code(b)), (503, "service_unavailable"))
            finally:
                redis.send_signal(signal.SIGCONT)
            stop(redis, signal.SIGKILL)  # down
            st, h, b = chat(local.port, key)
            self.assertEqual(st, 200, b)  # third of 3 in this instance's buckets
            self.assertEqual(h["x-ratelimit-remaining-requests"], "0")
            st, h, b = chat(local.port, key)
            self.assertEqual((st, code(b)), (429, "rate_limit_exceeded"))  # still limited
            st, h, b = chat(closed.port, key)
            self.assertEqual((st, code(b)), (503, "service_unavailable"))
            self.assertGreaterEqual(local.metric("tollgate_ratelimit_local_decisions_total"), 3)
            self.assertGreaterEqual(local.metric("tollgate_redis_errors_total"), 3)
            self.assertEqual(local.metric("tollgate_redis_up"), 0)
            self.assertGreaterEqual(closed.metric("tollgate_ratelimit_fail_closed_total"), 2)
            self.assertEqual(closed.metric("tollgate_ratelimit_local_decisions_total"), 0)
            # back: Redis decides again (a fresh Redis: full buckets)
            redis = redis_start(P_REDIS)
            wait_for("redis up", lambda: local.metric("tollgate_redis_up") == 1 and
                     closed.metric("tollgate_redis_up") == 1)
            self.assertEqual(chat(closed.port, key)[0], 200)
            st, h, b = chat(local.port, key)
            self.assertEqual((st, h["x-ratelimit-remaining-requests"]), (200, "1"))
        finally:
            for g in (local, closed):
                if g:
                    g.stop()
            stop(redis)


class RedisOutage(unittest.TestCase):
    """A Redis outage longer than concurrency_lease_ms while requests run on a lease's slots."""

    def test_slots_lost_in_an_outage_are_not_admitted_on(self):
        """Requests held on one instance, most of them admitted from its quota lease, and short ones
        kept coming there from the lease's free slots; Redis stopped for three leases, so every
        slot (and the set itself) expires there.  Once Redis answers again, the running requests
        must be counted again and no lease may admit on the free slots Redis no longer has: both
        instances then fill the key, and what is in flight stays within the limit."""
        lease_ms, limit, held, n = 1000, 80, 4, 160
        redis = redis_start(P_REDIS)
        a = b = filler = pump = None
        holders, pumped, pumping = [], [], threading.Event()
        done, lock = [], threading.Lock()
        z = None
        try:
            a = Gateway(9, concurrency_lease_ms=lease_ms)
            b = Gateway(10, concurrency_lease_ms=lease_ms)
            cust, _ = new_customer()
            key, key_id = new_key(cust, "--concurrency", str(limit))
            z = "tg:conc:{k:%d}" % key_id
            UP.hold()
            for i in range(held):  # one at a time: a take with a grant of slots, then takes from the lease
                t = threading.Thread(target=quiet_chat, args=(a.port, key, "hold"))
                t.start()
                holders.append(t)
                wait_for("%d held" % (i + 1), lambda: UP.inflight == i + 1)
            leased = a.metric("tollgate_ratelimit_lease_admissions_total")
            self.assertGreater(leased, 0)  # leased slots in use
            direct = held - leased  # admitted by a take of their own: slots named by their request ids

            def pump_a():  # the lease stays busy (never idle, so never given back) through the outage
                while pumping.is_set():
                    pumped.append(chat(a.port, key)[0])

            pumping.set()
            pump = threading.Thread(target=pump_a)
            pump.start()
            wait_for("a short request through the lease", lambda: len(pumped) > 0)
            redis.send_signal(signal.SIGSTOP)
            try:
                time.sleep(3 * lease_ms / 1000)  # the outage: slots and the set's PEXPIRE pass meanwhile
            finally:
                redis.send_signal(signal.SIGCONT)
            t1 = redis_time_ms(P_REDIS)

            def live():
                return int(redis_cli(P_REDIS, "zcount", z, redis_time_ms(P_REDIS), "+inf") or 0)

            def live_by_kind():  # (slots of requests' own takes, the lease's slots)
                m = redis_cli(P_REDIS, "zrangebyscore", z, redis_time_ms(P_REDIS), "+inf").split()
                return sum(":" not in x for x in m), sum(":" in x for x in m)

            def counted():  # every held request's slot is in Redis again
                own, lease = live_by_kind()
                return own >= direct and lease >= held - direct

            # the renewals after the outage count A's running requests again and find its free slots
            # gone (or three leases went by)
            wait_for("the running requests counted in Redis again",
                     lambda: (live() >= held and a.metric("tollgate_ratelimit_lease_slots_lost_total") > 0) or
                     redis_time_ms(P_REDIS) > t1 + 3 * lease_ms, 60)
            pumping.clear()
            pump.join(120)
            self.assertEqual(set(pumped), {200})
            # Each event loop renews its own requests on its own connection, made again after the
            # outage on its own back-off: a held request's slot can come back a moment after the
            # lease's.  Until it has, B would see room that A's running request still takes (Redis
            # then ends over the limit once it is renewed: seen once in CI, 81 of 80).  That window
            # is the outage's, not an admission on lost slots, so the fill starts after it.
            wait_for("every held request's slot renewed", counted, 30)
            UP.reset_max()

            def one(i):
                try:
                    r = chat((a.port, b.port)[i % 2], key, "hold")
                except OSError as e:
                    r = (0, {}, str(e).encode())
                with lock:
                    done.append(r)

            filler = threading.Thread(target=many, args=(n, one))
            filler.start()
            wait_for("every request answered or held", lambda: len(done) + UP.inflight == held + n, 120)
            inflight, peak, slots = UP.inflight, UP.max_inflight, live()
            print("after a %d ms outage: %d in flight (peak %d, %d slots in Redis) of a limit of %d" %
                  (3 * lease_ms, inflight, peak, slots, limit), file=sys.stderr)
            self.assertGreater(inflight, held)  # Redis had room and gave it
            self.assertLessEqual(inflight, limit)
            self.assertLessEqual(peak, limit)
            for st, h, body in done:
                self.assertEqual((st, code(body)), (429, "concurrency_limit_exceeded"), body)
            for g in (a, b):
                self.assertEqual(g.metric("tollgate_ratelimit_local_decisions_total"), 0)
        finally:
            pumping.clear()
            UP.release()
            for t in holders + [t for t in (filler, pump) if t]:
                t.join(120)
            for g in (a, b):
                if g:
                    g.stop()
            stop(redis)


def limiter_script():
    """The limiter's Lua script, as gateway/gw_rl.c's string literal spells it."""
    src = open(os.path.join(TOP, "gateway", "gw_rl.c")).read()
    out = []
    for line in src[src.index("const char gw_rl_script[] ="):].split("\n")[1:]:
        line = line.strip()
        if not line.startswith('"'):
            continue  # a comment between the literals
        i = 1
        while line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        out.append(line[1:i].encode().decode("unicode_escape"))
        if line[i + 1:].startswith(";"):
            return "".join(out)
    raise AssertionError("gw_rl_script's end not found")


class LeaseReturn(unittest.TestCase):
    """The script's lret against a real Redis: a lease that gives its free slots back keeps exactly
    its running requests' slots [0, used), whichever of its slots an outage lost."""

    def test_running_slots_kept_whatever_an_outage_lost(self):
        redis = redis_start(P_REDIS)
        try:
            script = limiter_script()
            h, z, name, lease = "tg:rl:{k:999001}", "tg:conc:{k:999001}", "Ltest.1", 5000
            redis_cli(P_REDIS, "del", h, z)
            now = redis_time_ms(P_REDIS)
            # ten slots granted; an outage lost slot 4, the renewal made the running ones again
            # (0-3 and 5-8: used 8 of them, 9 free), as lrenew leaves a lease after an outage
            for j in range(10):
                if j != 4:
                    redis_cli(P_REDIS, "zadd", z, now + lease, "%s:%d" % (name, j))
            used, held = 9, 10  # one more request ran from the lease: its slot is the lost 4
            # op, rpm, tpm, conc, n, member, lease_ms, name, requests back, from, to, report
            r = redis_cli(P_REDIS, "eval", script, 2, h, z, "lret", 0, 0, 80, 0, "-", lease, name, 0, used, held,
                          0, 0)
            self.assertTrue(r, "the script ran")
            live = redis_cli(P_REDIS, "zrangebyscore", z, redis_time_ms(P_REDIS), "+inf").split()
            self.assertEqual(sorted(live), sorted("%s:%d" % (name, j) for j in range(used)),
                             "after the return Redis must hold exactly the lease's running requests' slots")
        finally:
            stop(redis)


class Cluster(unittest.TestCase):
    """A three-master Redis Cluster on loopback (hiredis 0.14 has no cluster
    support: the gateway routes by slot itself)."""

    @classmethod
    def setUpClass(cls):
        cls.nodes, cls.g, cls.h = [], None, None
        try:
            cls.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls):
        for p in P_CLUSTER:
            cls.nodes.append(redis_start(p, "--cluster-enabled", "yes", "--cluster-config-file",
                                         os.path.join(DIR, "nodes-%d.conf" % p), "--cluster-node-timeout", "5000"))
        r = subprocess.run(["redis-cli", "--cluster", "create", *["127.0.0.1:%d" % p for p in P_CLUSTER],
                            "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError("redis-cli --cluster create: %s %s" % (r.stdout, r.stderr))
        wait_for("cluster ok", lambda: all("cluster_state:ok" in redis_cli(p, "cluster", "info")
                                           for p in P_CLUSTER), 60)
        # one seed only: the gateway finds the other masters with CLUSTER SLOTS
        cls.g = Gateway(7, redis="127.0.0.1:%d" % P_CLUSTER[0], redis_cluster=True)
        cls.h = Gateway(8, redis="127.0.0.1:%d,127.0.0.1:%d" % (P_CLUSTER[1], P_CLUSTER[2]), redis_cluster=True)
        wait_for("cluster map", lambda: cls.g.metric("tollgate_redis_up") == 1 and cls.h.metric("tollgate_redis_up") == 1)

    @classmethod
    def tearDownClass(cls):
        for g in (cls.g, cls.h):
            if g:
                g.stop()
        for n in cls.nodes:
            stop(n)

    def owner(self, key):
        """The port of the master holding key."""
        for p in P_CLUSTER:
            if redis_cli(p, "exists", key) == "1":
                return p
        return None

    def test_keys_spread_and_exact(self):
        cust, cust_id = new_customer()
        ctl("customer", "limits", cust, "--rpm", "1000")
        owners = set()
        for i in range(8):
            key, key_id = new_key(cust, "--rpm", "2", "--concurrency", "3")
            codes = [chat((self.g.port, self.h.port)[j % 2], key)[0] for j in range(3)]
            self.assertEqual(codes, [200, 200, 429])
            p = self.owner("tg:rl:{k:%d}" % key_id)
            self.assertIsNotNone(p)
            slot = int(redis_cli(p, "cluster", "keyslot", "tg:rl:{k:%d}" % key_id))
            self.assertEqual(slot, int(redis_cli(p, "cluster", "keyslot", "tg:conc:{k:%d}" % key_id)))
            owners.add(p)
        self.assertGreaterEqual(len(owners), 2, "keys on one master only")
        self.assertIsNotNone(self.owner("tg:rl:{c:%d}" % cust_id))
        self.assertEqual(self.g.metric("tollgate_redis_errors_total"), 0)

    def test_moved_after_slot_migration(self):
        cust, _ = new_customer()
        key, key_id = new_key(cust, "--rpm", "5")
        rk = "tg:rl:{k:%d}" % key_id
        self.assertEqual(chat(self.g.port, key)[0], 200)
        src = self.owner(rk)
        dst = next(p for p in P_CLUSTER if p != src)
        slot = int(redis_cli(src, "cluster", "keyslot", rk))
        ids = {p: redis_cli(p, "cluster", "myid") for p in P_CLUSTER}
        moved0 = self.g.metric("tollgate_redis_moved_total")
        errors0 = self.g.metric("tollgate_redis_errors_total")
        # migrate the slot, its keys with it, as redis-cli --cluster reshard does
        self.assertEqual(redis_cli(dst, "cluster", "setslot", slot, "importing", ids[src]), "OK")
        self.assertEqual(redis_cli(src, "cluster", "setslot", slot, "migrating", ids[dst]), "OK")
        keys = redis_cli(src, "cluster", "getkeysinslot", slot, 100).split()
        self.assertIn(rk, keys)
        self.assertEqual(redis_cli(src, "migrate", "127.0.0.1", dst, "", 0, 5000, "keys", *keys), "OK")
        for p in P_CLUSTER:
            self.assertEqual(redis_cli(p, "cluster", "setslot", slot, "node", ids[dst]), "OK")
        # the gateway's map still says src: MOVED, followed; the state came along
        st, h, b = chat(self.g.port, key)
        self.assertEqual(st, 200, b)
        self.assertEqual(h["x-ratelimit-remaining-requests"], "3")
        self.assertEqual(self.owner(rk), dst)
        self.assertGreater(self.g.metric("tollgate_redis_moved_total"), moved0)
        codes = [chat((self.g.port, self.h.port)[i % 2], key)[0] for i in range(4)]
        self.assertEqual(codes, [200, 200, 200, 429])
        # all of it decided by the cluster, none by the in-process fallback
        self.assertEqual(self.g.metric("tollgate_redis_errors_total"), errors0)
        self.assertEqual(self.g.metric("tollgate_ratelimit_local_decisions_total"), 0)


if __name__ == "__main__":
    main()
