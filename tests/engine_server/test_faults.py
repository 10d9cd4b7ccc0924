#!/usr/bin/python3
"""Fault injection into `tollgate-engine serve`, from outside, as an independent
tester would do it (python3 stdlib only; run by `make test-engine-server` after
test_server.py, under the same lock).

Workers, on the demo model of test_server.py (ports 18725-18728, 18731):
- "fa": run with LD_PRELOAD of the allocation-failure shim
  (tests/engine_server/failalloc.c, built by the make target; TOLLGATE_FAILALLOC
  names it).  The test writes the shim's control file to make the worker's
  malloc/calloc/realloc/posix_memalign/aligned_alloc/mmap fail: the nth call
  only, every call from the nth on, or each call with a probability.  The
  worker must never crash or hang; a request hit by a failure gets a 500 (or,
  once its stream has started, an error event and no [DONE]); every answer that
  comes whole is the one it gets without failures; afterwards no KV block is
  held and the worker answers as before.
- "fd": file descriptors limited to 64 (RLIMIT_NOFILE): accept() runs out.
- "big": request bodies of 30 MiB from many connections at once (413 at once), and
  of 7 MiB stalled before their end: bounded by --max-buffered 64M.
- start-ups with every allocation failing from some point of the start on.
- "mw": memory gone for good under a stream (--memory-wait 1): the worker gives
  up within the bound, says why and exits 3 (it waited forever).

Like test_server.py: outputs are fixtures of the seeded demo model (greedy),
and every wait is for an event, bounded by WAIT seconds (TG_TEST_WAIT).
"""
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (its helpers; its workers are not started)
from test_server import MODEL, VAR, WAIT, connect, http_parse, raw_post, recv_to_eof, request, sse, wait_for  # noqa: E402
from tgskip import main  # noqa: E402

FAILALLOC = os.environ.get("TOLLGATE_FAILALLOC") or os.path.join(ts.ROOT, "build", "tests", "engine_server",
                                                                 "failalloc.so")
PORT_FA, PORT_FD, PORT_BIG, PORT_START, PORT_MW = 18725, 18726, 18727, 18728, 18731
CTL = os.path.join(VAR, "failalloc.ctl")
FD_LIMIT = 64
MODE_OFF, MODE_FROM, MODE_NTH, MODE_RANDOM = 0, 1, 2, 3

procs = {}


def sanitized():
    """Whether the worker is a sanitizer build (its allocator then keeps
    freed memory: the RSS check below does not apply)."""
    p = subprocess.run(["ldd", ts.ENGINE], capture_output=True, text=True)
    return "libasan" in p.stdout or "libtsan" in p.stdout


class Ctl:
    """The shim's control file (failalloc.c has its byte table)."""

    def __init__(self, path):
        self.path, self.gen = path, 0
        with open(path, "wb") as f:
            f.write(bytes(40))

    def set(self, mode, n=0, ppm=0):
        self.gen += 1
        with open(self.path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<IQI", mode, n, ppm))
            f.flush()
            f.seek(0)
            f.write(struct.pack("<I", self.gen))  # last: the shim restarts its count on it

    def read(self):
        """(calls failed so far, calls counted since the last set)"""
        with open(self.path, "rb") as f:
            b = f.read(40)
        return struct.unpack("<QQ", b[24:40])


def start(name, port, *extra, env=None, preexec=None):
    log = open(os.path.join(VAR, "%s.log" % name), "w")
    p = subprocess.Popen([ts.ENGINE, "serve", "--model", ts.MODEL_DIR, "--listen", "127.0.0.1:%d" % port,
                          "--threads", "2", *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ts.ROOT,
                         env=dict(os.environ, **(env or {})), preexec_fn=preexec)
    procs[name] = (p, log)

    def up():
        if p.poll() is not None:
            raise RuntimeError("%s exited with %s, see %s.log" % (name, p.returncode, name))
        try:
            return request(port, "GET", "/health", timeout=WAIT)[0] == 200
        except OSError:
            return False
    wait_for("%s to answer /health" % name, up, timeout=max(WAIT, 120))
    return p


def setUpModule():
    global ctl
    ts.ensure_models()
    if not os.path.exists(FAILALLOC):
        raise RuntimeError("no allocation-failure shim at %s (make test-engine-server builds it)" % FAILALLOC)
    ctl = Ctl(CTL)
    asan = os.environ.get("ASAN_OPTIONS", "")
    start("fa", PORT_FA, "--kv-mem", "16M", env={
        "LD_PRELOAD": FAILALLOC, "FAILALLOC_CTL": CTL,
        # the shim comes before a sanitizer's runtime, which then calls it
        "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"})
    start("fd", PORT_FD, "--kv-mem", "16M",
          preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)))
    start("big", PORT_BIG, "--kv-mem", "16M", "--max-buffered", "64M")


def tearDownModule():
    ctl.set(MODE_OFF)
    bad = []
    for name, (p, log) in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                bad.append("%s: no exit within %gs of SIGTERM" % (name, WAIT))
        log.close()
        if p.returncode != 0:
            bad.append("%s: exit status %s" % (name, p.returncode))
        with open(os.path.join(VAR, "%s.log" % name), encoding="utf-8", errors="replace") as f:
            text = f.read()
        bad += ["%s: %s in %s.log" % (name, r, name) for r in ts.SANITIZER_REPORTS if r in text]
    if bad:
        raise AssertionError("; ".join(bad))


def exchange(port, body, pad=0, path="/v1/chat/completions"):
    """One request on its own connection: (status, headers, body), or None
    when the connection closed without a byte.  pad: that many spaces of
    JSON whitespace in the body."""
    s = connect(port)
    try:
        data = json.dumps(body).encode()
        data = b"{" + b" " * pad + data[1:]
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
        raw = recv_to_eof(s)
    finally:
        s.close()
    return http_parse(raw) if raw else None


def outcome(tc, res, stream, n=1):
    """What one exchange under injected failures gave: the answer's texts
    and log-probs (one pair per choice; chat or completions) when it came whole, else None after checking that the
    failure was said properly: a JSON 500 that names memory (never a 4xx:
    the client did nothing wrong; never "shutting down": the gateway would
    take it for a worker going away), or, once a stream's head was out, an
    error event in place of [DONE]."""
    tc.assertIsNotNone(res, "the connection closed without an answer")
    st, _, b = res
    if st != 200:
        tc.assertEqual(st, 500, b)
        e = json.loads(b)["error"]
        tc.assertEqual(set(e), {"message", "type", "param", "code"})
        tc.assertEqual(e["type"], "server_error", e)
        tc.assertIn(e["code"], ("engine_error", None), e)
        tc.assertIn("memory", e["message"], e)
        return None
    if not stream:
        return [(c["message"]["content"] if "message" in c else c["text"], c.get("logprobs"))
                for c in json.loads(b)["choices"]]
    ev = sse(b)
    if ev[-1] != "[DONE]":
        e = json.loads(ev[-1])["error"]
        tc.assertEqual((e["type"], e["code"]), ("server_error", "engine_error"), e)
        tc.assertIn("memory", e["message"], e)
        for x in ev[:-1]:
            json.loads(x)  # whole chunks before it
        return None
    text, lps = [""] * n, [[] for _ in range(n)]
    for x in ev[:-1]:
        for c in json.loads(x)["choices"]:
            text[c["index"]] += c["delta"].get("content") or "" if "delta" in c else c["text"]
            if c.get("logprobs"):
                lps[c["index"]].append(c["logprobs"])
    return list(zip(text, lps))


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def wait_idle(port):
    """The worker's metrics once nothing is in flight; no KV block may be held then."""
    return ts.wait_metrics("the worker to be idle", lambda m: m["tollgate_engine_requests_in_flight"] == 0
                           and m["tollgate_engine_active_sequences"] == 0 and m["tollgate_engine_queue_depth"] == 0,
                           port=port)


class AllocationFailures(unittest.TestCase):
    """The "fa" worker with the allocation-failure shim."""

    def body(self, content, stream, **kw):
        b = {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0,
             "max_tokens": 4, "stream": stream}
        b.update(kw)
        return b

    def alive(self):
        p = procs["fa"][0]
        self.assertIsNone(p.poll(), "the worker died (exit status %s), see fa.log" % p.returncode)

    def tearDown(self):
        ctl.set(MODE_OFF)

    def check_recovered(self, want=None):
        ctl.set(MODE_OFF)
        self.alive()
        m = wait_idle(PORT_FA)
        self.assertEqual(m["tollgate_engine_kv_blocks_used"], 0)
        if want:
            self.assertEqual(outcome(self, exchange(PORT_FA, want[0]), want[0]["stream"], want[0].get("n", 1)),
                             want[1])

    def test_each_allocation_of_a_request_failing_in_turn(self):
        """The kth allocation fails, for every k of a whole request (accept,
        parse, tokenize, schedule, forward, reply), on an idle worker; and a
        request whose body spans several of evhttp's blocks (joined into one
        before it is parsed)."""
        for stream, pad, path, lp in ((False, 0, None, False), (True, 0, None, True), (False, 0, None, True),
                                      (False, 100000, None, False), (False, 0, "/v1/completions", False),
                                      (True, 0, "/v1/completions", False)):
            body = self.body("Fail me in turn", stream)
            if lp:  # chat logprobs: an answer without its entries is neither the answer nor a failure
                body.update(logprobs=True, top_logprobs=2)
            if path:  # legacy completions: n choices, a suffix (FIM), legacy log-probs
                body = {"model": MODEL, "prompt": "def f(", "suffix": "return x", "max_tokens": 4, "temperature": 0,
                        "logprobs": 2, "n": 2, "stream": stream}
            path = path or "/v1/chat/completions"
            ctl.set(MODE_OFF)
            n = body.get("n", 1)
            want = outcome(self, exchange(PORT_FA, body, pad, path), stream, n)
            self.assertIsNotNone(want)
            ctl.set(MODE_NTH, 0)  # counts, fails nothing
            self.assertEqual(outcome(self, exchange(PORT_FA, body, pad, path), stream, n), want)
            wait_idle(PORT_FA)
            calls = ctl.read()[1]
            self.assertGreater(calls, 20)
            # every k, and some beyond (the count moves a little between runs); for
            # the long body, what differs is its blocks, early on: a spread after them
            ks = list(range(1, calls + 20)) if not pad else \
                list(range(1, 150)) + list(range(150, calls + 20, max(1, calls // 40)))
            failed = 0
            for k in ks:
                ctl.set(MODE_NTH, k)
                got = outcome(self, exchange(PORT_FA, body, pad, path), stream, n)
                self.alive()
                if got is None:
                    failed += 1
                else:
                    self.assertEqual(got, want, "allocation %d failed" % k)
                ctl.set(MODE_OFF)
                self.assertEqual(wait_idle(PORT_FA)["tollgate_engine_kv_blocks_used"], 0, "allocation %d" % k)
            print("  %s stream=%s: %d allocations a request, %d of %d failures failed the request"
                  % (path, stream, calls, failed, len(ks)), file=sys.stderr)
        self.check_recovered()

    def test_random_failures_under_concurrent_load(self):
        """Each allocation fails with probability 1/300 while 8 requests run
        together (streams, n = 2, stop strings, logprobs)."""
        bodies = [self.body("Load %d: %s" % (i, "word%d " % i * (3 + 20 * (i % 3))), i % 2 == 1, max_tokens=12)
                  for i in range(8)]
        bodies[2].update(n=2)
        bodies[3].update(n=2)
        bodies[4].update(stop=["e", "a"])
        bodies[5].update(logprobs=True, top_logprobs=2)
        want = []
        for b in bodies:
            want.append(outcome(self, exchange(PORT_FA, b), b["stream"], b.get("n", 1)))
            self.assertIsNotNone(want[-1])
        whole = 0
        for seed in range(1, 7):
            ctl.set(MODE_RANDOM, seed, 3333)
            res = [None] * len(bodies)

            def one(i):
                res[i] = exchange(PORT_FA, bodies[i])
            th = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
            for t in th:
                t.start()
            for t in th:
                t.join()
            ctl.set(MODE_OFF)
            self.alive()
            for i, b in enumerate(bodies):
                got = outcome(self, res[i], b["stream"], b.get("n", 1))
                if got is not None:
                    whole += 1
                    self.assertEqual(got, want[i], "seed %d, request %d" % (seed, i))
            self.assertEqual(wait_idle(PORT_FA)["tollgate_engine_kv_blocks_used"], 0)
        print("  %d of %d answers came whole" % (whole, 6 * len(bodies)), file=sys.stderr)
        self.check_recovered((bodies[0], want[0]))

    def test_every_allocation_failing_then_memory_back(self):
        """Streams under way, then every allocation fails for a while (the
        shim counts the failures), then memory is back: each stream ends
        whole or with an error event, and the worker serves again."""
        bodies = [self.body("Starve %d" % i, True, max_tokens=300) for i in range(4)]
        socks = []
        for b in bodies:
            s = connect(PORT_FA)
            s.sendall(raw_post(b))
            socks.append(s)
        heads = [ts.recv_until(s, lambda g: b'"delta":{"content"' in g, "the first token") for s in socks]
        failed0 = ctl.read()[0]
        ctl.set(MODE_FROM, 1)
        wait_for("allocations to fail", lambda: ctl.read()[0] >= failed0 + 200)
        ctl.set(MODE_OFF)
        for h, s in zip(heads, socks):
            raw = h + recv_to_eof(s)
            s.close()
            outcome(self, http_parse(raw), True)
        self.alive()
        plain = self.body("Starve 0", False, max_tokens=4)
        ctl.set(MODE_OFF)
        self.check_recovered((plain, outcome(self, exchange(PORT_FA, plain), False)))


class MemoryNeverBack(unittest.TestCase):
    def test_waiting_for_memory_is_bounded(self):
        """A stream is being generated, then every allocation fails and memory never comes back:
        within --memory-wait (1 s here) of retrying, the worker says why on stderr and exits with
        status 3 (a supervisor starts it again), and the client's connection ends; before, the
        worker and its clients waited forever."""
        mw = Ctl(os.path.join(VAR, "failalloc-mw.ctl"))
        asan = os.environ.get("ASAN_OPTIONS", "")
        p = start("mw", PORT_MW, "--kv-mem", "16M", "--memory-wait", "1", env={
            "LD_PRELOAD": FAILALLOC, "FAILALLOC_CTL": mw.path,
            "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"})
        _, log = procs.pop("mw")  # it is meant to exit non-zero: not tearDownModule's to judge
        try:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Starve"}], "temperature": 0,
                    "stream": True}  # up to the default 4096 tokens: still going when memory goes
            s = connect(PORT_MW)
            s.sendall(raw_post(body))
            ts.recv_until(s, lambda g: b'"delta":{"content"' in g, "the first token")
            t0 = time.monotonic()
            mw.set(MODE_FROM, 1)
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.fail("the worker still waited for memory %gs after it was gone" % WAIT)
            self.assertEqual(p.returncode, 3, read(os.path.join(VAR, "mw.log"))[-2000:])
            self.assertLess(time.monotonic() - t0, 15)
            text = read(os.path.join(VAR, "mw.log"))
            self.assertRegex(text, r'"event":"fatal","error":"out of memory[^"]*--memory-wait')
            for r in ts.SANITIZER_REPORTS:
                self.assertNotIn(r, text)
            s.settimeout(WAIT)
            try:
                recv_to_eof(s)  # the connection ended, it does not hang
            except ConnectionResetError:
                pass
            s.close()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()


class StartUp(unittest.TestCase):
    def test_start_up_without_memory_exits_1(self):
        """Every allocation fails from the kth of the start-up on: serve says
        why and exits 1 (no crash, and no wait: libevent's allocations wait
        for memory only once the loop runs, not while a worker that cannot
        start would hang)."""
        c = Ctl(os.path.join(VAR, "failalloc-start.ctl"))
        asan = os.environ.get("ASAN_OPTIONS", "")
        env = dict(os.environ, LD_PRELOAD=FAILALLOC, FAILALLOC_CTL=c.path,
                   ASAN_OPTIONS=(asan + ":" if asan else "") + "verify_asan_link_order=0")
        cmd = [ts.ENGINE, "serve", "--model", ts.MODEL_DIR, "--listen", "127.0.0.1:%d" % PORT_START,
               "--threads", "2", "--kv-mem", "16M"]
        c.set(MODE_NTH, 0)  # count the start-up's allocations: those before its "listening" line
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        for line in p.stderr:  # EOF first: the start failed, and total below is 0
            if '"listening"' in line:
                break
        total = c.read()[1]
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(WAIT), 0)
        p.stderr.close()
        self.assertGreater(total, 100)
        # the last points are in the loop's set-up, the listener, the scheduler's thread
        for k in sorted({1, 2, 10, 100, 1000, total // 4, total // 2, total * 3 // 4, total - 200, total - 50,
                         total - 10, total - 1}):
            c.set(MODE_FROM, k)
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.fail("allocations failing from the %dth of %d: serve did not end" % (k, total))
            self.assertEqual(r.returncode, 1, "from the %dth of %d: %s" % (k, total, r.stderr[-500:]))
            self.assertTrue(r.stderr.strip(), "from the %dth: no message" % k)
            for rep in ts.SANITIZER_REPORTS:
                self.assertNotIn(rep, r.stderr)


class Connections(unittest.TestCase):
    def test_out_of_file_descriptors_pauses_accepting(self):
        """With every descriptor taken, accept() fails (EMFILE): the worker
        says so once and waits, instead of retrying in a loop that wrote a
        warning per try (gigabytes of log within minutes, a core at 100%);
        the connections it has keep being served, and once descriptors are
        free again new ones are accepted."""
        log = os.path.join(VAR, "fd.log")
        kept = connect(PORT_FD)
        get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

        def health():
            kept.sendall(get)
            got = ts.recv_until(kept, lambda g: b"\r\n\r\n" in g and g.endswith(b"}"), "a /health answer")
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got)
        health()
        socks = [connect(PORT_FD) for _ in range(FD_LIMIT + 16)]  # the last ones wait in the backlog
        wait_for("accept to fail", lambda: "Too many open files" in read(log))
        for _ in range(50):
            health()
        for s in socks:
            s.close()
        st, _, b = ts.chat("hi", port=PORT_FD, max_tokens=2)
        self.assertEqual(st, 200, b)
        health()
        kept.close()
        text = read(log)
        self.assertEqual(text.count("Error from accept() call"), 0, "libevent's warning per failed accept()")
        self.assertLessEqual(text.count("Too many open files"), 2, text[-2000:])


class Bodies(unittest.TestCase):
    def test_body_memory_is_bounded(self):
        """Request bodies cannot take the worker's memory (common/tg_httpguard.c): 10 connections
        announce 31 MiB bodies and send 30 MiB each: each is answered 413 at once and its bytes go
        by unread (before, evhttp buffered up to 32 MiB a connection: the worker held 300 MB
        here, 1.7 GB once 50 had come); 20 connections each send all but the last byte of a 7 MiB
        body and stall: together they hold no more than --max-buffered (64 MiB on this worker),
        the ones past it are answered 503; once they are gone the memory goes back to the system
        and the worker serves."""
        p = procs["big"][0]

        def rss_mb():
            with open("/proc/%d/status" % p.pid) as f:
                return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // 1024

        def answer(s, timeout):
            """The response on s (head and its Content-Length of body), b"" when none came in time."""
            s.settimeout(timeout)
            got = b""
            try:
                while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < int(
                        re.search(rb"(?i)content-length: *(\d+)", got).group(1)):
                    b = s.recv(65536)
                    if not b:
                        break
                    got += b
            except socket.timeout:
                pass
            s.settimeout(WAIT)
            return got
        rss0 = rss_mb()
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n")
        socks, peak = [], rss0
        for _ in range(10):
            s = connect(PORT_BIG)
            s.sendall(head % (31 << 20))
            for _ in range(30):
                s.sendall(b" " * (1 << 20))
            peak = max(peak, rss_mb())
            socks.append(s)
        for s in socks:
            self.assertTrue(answer(s, WAIT).startswith(b"HTTP/1.1 413 "))
            s.close()
        if not sanitized():  # a sanitizer's allocator keeps freed memory in quarantine (256 MB under ASan)
            self.assertLess(peak, rss0 + 100, "the worker held the bodies (RSS %d MB before)" % rss0)
        socks, refused = [], 0
        for _ in range(20):
            s = connect(PORT_BIG)
            s.sendall(head % (7 << 20))
            s.sendall(b" " * ((7 << 20) - 1))
            socks.append(s)
        m = ts.metrics(PORT_BIG)
        self.assertLessEqual(m["tollgate_engine_http_buffered_bytes"], 64 << 20)
        self.assertGreater(m["tollgate_engine_http_buffered_bytes"], 48 << 20)
        for s in socks:
            got = answer(s, 0.5)
            if got:
                self.assertTrue(got.startswith(b"HTTP/1.1 503 "), got[:100])
                self.assertIn(b'"code":"server_busy"', got)
                refused += 1
        self.assertGreaterEqual(refused, 20 - 9)  # at most 9 bodies of 7 MiB in 64 MiB
        if not sanitized():  # (the quarantine again; the buffered-bytes gauge above still holds there)
            self.assertLess(rss_mb(), rss0 + 64 + 80)  # 64 MiB held, and the heap's slack (140 MB held before)
        for s in socks:
            s.close()
        st, _, b = ts.chat("hi", port=PORT_BIG, max_tokens=2)
        self.assertEqual(st, 200, b)
        ts.wait_metrics("the connections to be let go", lambda m: m["tollgate_engine_http_buffered_bytes"] == 0,
                        port=PORT_BIG)
        if sanitized():  # a sanitizer's allocator keeps freed memory in quarantine
            return
        wait_for("the memory to go back (RSS %d MB before)" % rss0, lambda: rss_mb() < rss0 + 150)


if __name__ == "__main__":
    main()
