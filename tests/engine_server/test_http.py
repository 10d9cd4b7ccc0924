#!/usr/bin/python3
"""The worker's HTTP front (common/tg_httpguard.c) under hostile clients, on the
demo model of test_server.py (ports 18729-18730):

- malformed requests, headers over 64 KiB, bodies over 8 MiB (by Content-Length,
  at once, and chunked), unknown methods: the API's JSON error
  {"error":{"message","type","param","code"}}, never libevent's HTML page;
- a cap on connections (--max-conns): one more is answered 503 and closed, and a
  slot comes back when a client leaves;
- a bound on request bytes being received by all connections together
  (--max-buffered): the request that would pass it is a 503, the others go on;
- a deadline from a request's first byte to its last (--request-timeout): a
  slowloris client gets a 408 and the connection closes;
- pipelined requests answered in order, a refused one in its place.
"""
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (the demo model, start(), request(), metrics())
from tgskip import main  # noqa: E402

PORT, PORT_TIGHT = 18729, 18730
MAX_CONNS, MAX_BUFFERED, TIMEOUT_S, IDLE_S = 6, 1 << 20, 2, 3


def setUpModule():
    ts.ensure_models()
    ts.start("http", PORT, ts.MODEL_DIR)
    ts.start("http-tight", PORT_TIGHT, ts.MODEL_DIR, "--max-conns", str(MAX_CONNS), "--max-buffered",
             str(MAX_BUFFERED), "--request-timeout", str(TIMEOUT_S), "--idle-timeout", str(IDLE_S))


def tearDownModule():
    ts.tearDownModule()


class Conn:
    """A client socket and the bytes read off it not yet parsed (pipelined answers)."""

    def __init__(self, port, rcvbuf=None):
        if rcvbuf:  # a small window: the server's answer waits in its own buffers while we do not read
            self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.s.settimeout(ts.WAIT)
            self.s.connect(("127.0.0.1", port))
        else:
            self.s = ts.connect(port)
        self.buf = b""

    def sendall(self, data):
        self.s.sendall(data)

    def more(self):
        b = self.s.recv(65536)
        if not b:
            raise EOFError("connection closed after %r" % self.buf[:200])
        self.buf += b

    def close(self):
        self.s.close()


def read_response(c):
    """One HTTP response from Conn c -> (status, headers (lower-case), body)."""
    while b"\r\n\r\n" not in c.buf:
        c.more()
    head, c.buf = c.buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    h = {}
    for ln in lines[1:]:
        k, v = ln.split(":", 1)
        h[k.strip().lower()] = v.strip()
    if status == 100:
        return status, h, b""
    if h.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in c.buf:
                c.more()
            line, c.buf = c.buf.split(b"\r\n", 1)
            n = int(line, 16)
            while len(c.buf) < n + 2:
                c.more()
            body, c.buf = body + c.buf[:n], c.buf[n + 2:]
            if n == 0:
                return status, h, body
    n = int(h.get("content-length", "0"))
    while len(c.buf) < n:
        c.more()
    body, c.buf = c.buf[:n], c.buf[n:]
    return status, h, body


def raw(port, data, keep=False):
    """Send bytes, read one response; the connection too when keep."""
    c = Conn(port)
    c.sendall(data)
    r = read_response(c)
    if keep:
        return r, c
    c.close()
    return r


def eof(c, within=ts.WAIT):
    """The server closed c (within seconds), having sent nothing more."""
    if c.buf:
        return False
    c.s.settimeout(within)
    try:
        return c.s.recv(1) == b""
    except ConnectionResetError:
        return True


CHAT = json.dumps({"model": ts.MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                   "temperature": 0}).encode()


class Http(unittest.TestCase):

    def json_error(self, r, status, code=None):
        st, h, b = r
        self.assertEqual(st, status, b[:300])
        self.assertTrue(h.get("content-type", "").startswith("application/json"), (h, b[:300]))
        e = json.loads(b)["error"]
        self.assertEqual(set(e), {"message", "type", "param", "code"}, e)
        self.assertTrue(e["message"])
        if code:
            self.assertEqual(e["code"], code, e)
        return e

    def test_malformed_requests_are_json(self):
        for name, data, status in (
                ("garbage line", b"GARBAGE\r\n\r\n", 400),
                ("no version", b"GET /health\r\n\r\n", 400),
                ("HTTP/2.0", b"GET /health HTTP/2.0\r\n\r\n", 400),
                ("header without colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400),
                ("obs-fold", b"GET /health HTTP/1.1\r\nX-A: 1\r\n  2\r\n\r\n", 400),
                ("NUL in a header", b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400),
                ("bad Content-Length", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
                ("two Content-Lengths", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1\r\n"
                                        b"Content-Length: 1\r\n\r\n{", 400),
                ("CL and TE", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 3\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
                ("TE gzip", b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
                ("bad chunk size", b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"zz\r\n", 400),
                ("absolute-form target", b"GET http://x/health HTTP/1.1\r\n\r\n", 400),
                ("the guard's own prefix", b"GET /.tg-httpguard/0 HTTP/1.1\r\n\r\n", 400),
                ("unknown method", b"BREW /health HTTP/1.1\r\n\r\n", 501),
                ("CONNECT", b"CONNECT /health HTTP/1.1\r\n\r\n", 501),
                ("Expect other", b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 2\r\n"
                                 b"\r\n{}", 417)):
            with self.subTest(name):
                self.json_error(raw(PORT, data), status)

    def test_headers_over_64k_are_json_431(self):
        # 431 Request Header Fields Too Large (RFC 6585), as the gateway answers: not 413, which is
        # about the body
        data = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
        (st, h, b) = raw(PORT, data + b"\r\n")
        self.json_error((st, h, b), 431, "header_too_large")
        one_line = b"GET /health?" + b"a" * (70 << 10) + b" HTTP/1.1\r\n\r\n"
        self.json_error(raw(PORT, one_line), 431, "header_too_large")

    def test_post_body_must_be_json_by_content_type(self):
        # as the gateway: application/json (or application/...+json, charset utf-8 only) or no
        # Content-Type at all; another media type is a 400 invalid_content_type naming it, in the
        # worker's own error format
        for ct, status in (("text/plain", 400), ("application/x-www-form-urlencoded", 400),
                           ("application/json; charset=latin1", 400), ("multipart/form-data; boundary=x", 400),
                           ("application/json", 200), ("application/json; charset=UTF-8", 200),
                           ("application/vnd.api+json", 200), (None, 200)):
            with self.subTest(ct=ct):
                hdr = b"Content-Type: %s\r\n" % ct.encode() if ct else b""
                r = raw(PORT, b"POST /v1/chat/completions HTTP/1.1\r\n" + hdr +
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(CHAT), CHAT))
                if status == 200:
                    self.assertEqual(r[0], 200, r)
                else:
                    err = self.json_error(r, 400, "invalid_content_type")
                    self.assertIn(ct, err["message"])

    def test_bodies_over_the_limit_are_json_413(self):
        # announced: answered at once, before the body (which then goes nowhere); the connection goes on
        (r, s) = raw(PORT, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % (40 << 20), keep=True)
        self.json_error(r, 413, "request_too_large")
        chunk = b" " * (1 << 20)
        for _ in range(40):
            s.sendall(chunk)
        s.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        st, _, b = read_response(s)
        self.assertEqual((st, json.loads(b)["status"]), (200, "ok"))
        s.close()
        # sent whole, over libevent's own 32 MiB limit (it answered that with its HTML page)
        st, h, b = ts.request(PORT, "POST", "/v1/chat/completions", b" " * (33 << 20))
        self.json_error((st, h, b), 413, "request_too_large")
        # chunked: refused once the chunks pass the limit
        s = Conn(PORT)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(9):
            s.sendall(b"100000\r\n" + chunk + b"\r\n")
        self.json_error(read_response(s), 413, "request_too_large")
        s.close()
        # and a body under the limit, chunked, is served
        s = Conn(PORT)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
                  b"".join(b"%x\r\n%s\r\n" % (len(CHAT[i:i + 7]), CHAT[i:i + 7]) for i in range(0, len(CHAT), 7)) +
                  b"0\r\n\r\n")
        st, _, b = read_response(s)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["object"], "chat.completion")
        s.close()

    def test_pipelined_answers_in_order_a_refused_one_in_its_place(self):
        good = b"GET /health HTTP/1.1\r\n\r\n"
        chat = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT)
        c = Conn(PORT)
        c.sendall(good + chat + b"GET /v1/models HTTP/1.1\r\n\r\n" + b"BAD LINE\r\n\r\n" + good)
        st1, _, b1 = read_response(c)
        st2, _, b2 = read_response(c)
        st3, _, b3 = read_response(c)
        st4, h4, b4 = read_response(c)
        self.assertEqual((st1, json.loads(b1)["status"]), (200, "ok"))
        self.assertEqual((st2, json.loads(b2)["object"]), (200, "chat.completion"))
        self.assertEqual((st3, json.loads(b3)["object"]), (200, "list"))
        self.json_error((st4, h4, b4), 400)
        self.assertEqual(h4.get("connection", "").lower(), "close")
        self.assertTrue(eof(c))  # the request after the bad one is not served
        c.close()

    def test_answers_being_written_survive_new_connections_and_pipelining(self):
        """A long stream and a long plain answer go on whole while other clients connect and leave
        (the guard let go of a connection whose answer was being written: evhttp clears its read
        callback meanwhile, which looked like a connection evhttp had freed, and its writes stopped);
        a request pipelined behind a stream is answered after it, in order."""
        stream = json.dumps({"model": ts.MODEL, "messages": [{"role": "user", "content": "Tell me a long story"}],
                             "max_tokens": 400, "temperature": 0, "stream": True, "logprobs": True,
                             "top_logprobs": 5}).encode()
        plain = json.dumps({"model": ts.MODEL, "messages": [{"role": "user", "content": "Another long story"}],
                            "max_tokens": 400, "temperature": 0, "logprobs": True, "top_logprobs": 5}).encode()
        # small windows, and nothing read for a while: the answers wait in the worker's buffers, being written
        s, p = Conn(PORT, rcvbuf=4096), Conn(PORT, rcvbuf=4096)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(stream), stream) +
                  b"GET /health HTTP/1.1\r\n\r\n")
        p.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(plain), plain))
        ts.wait_metrics("both answers to be generated", lambda m: m["tollgate_engine_requests_in_flight"] == 0,
                        port=PORT)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:  # connections come and go: each accept and each second sweeps
            self.assertEqual(health(PORT), 200)
        st, _, body = read_response(s)
        self.assertEqual(st, 200)
        events = ts.sse(body)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(json.loads(events[-2])["choices"][0]["finish_reason"], "length")
        st, _, b = read_response(s)
        self.assertEqual((st, json.loads(b)["status"]), (200, "ok"))
        st, _, b = read_response(p)
        self.assertEqual((st, json.loads(b)["usage"]["completion_tokens"]), (200, 400))
        s.close()
        p.close()

    def test_a_byte_a_packet_costs_a_byte(self):
        """Heads sent a byte a packet (TCP_NODELAY) on 16 connections: what the worker holds for them
        is about their bytes (each read kept its own buffer chunk, some 30 bytes resident a byte
        here: 28 MB for these 960 KB); the requests are served when they end."""
        pid = ts.procs["http"][0].pid

        def rss_mb():
            with open("/proc/%d/status" % pid) as f:
                return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // 1024
        rss0 = rss_mb()
        conns = [Conn(PORT) for _ in range(16)]
        for c in conns:
            c.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        for _ in range(60000):
            for c in conns:
                c.sendall(b"a")
        held = ts.wait_metrics("the bytes to be read", lambda m: m["tollgate_engine_http_buffered_bytes"] >= 16 * 60000,
                               port=PORT)["tollgate_engine_http_buffered_bytes"]
        self.assertLess(held, 16 * 61000)
        if not sanitized():  # a sanitizer's allocator keeps freed memory in quarantine
            self.assertLess(rss_mb() - rss0, 10, "RSS grew from %d MB" % rss0)
        for c in conns:
            c.sendall(b"\r\n\r\n")
            self.assertEqual(read_response(c)[0], 200)
            c.close()

    def test_expect_100_continue(self):
        c = Conn(PORT)
        c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                  % len(CHAT))
        c.s.settimeout(0.9)  # curl waits 1 s for it before sending the body anyway
        st, _, _ = read_response(c)
        self.assertEqual(st, 100)
        c.s.settimeout(ts.WAIT)
        c.sendall(CHAT)
        st, _, b = read_response(c)
        self.assertEqual(st, 200, b)
        c.close()

    def test_connection_cap(self):
        held = []
        try:
            held = [Conn(PORT_TIGHT) for _ in range(MAX_CONNS)]
            held[-1].sendall(b"GET /health HTTP/1.1\r\n\r\n")  # accepted in order: all are in once it answers
            self.assertEqual(read_response(held[-1])[0], 200)
            extra = Conn(PORT_TIGHT)
            st, h, b = read_response(extra)  # answered without a byte sent
            self.json_error((st, h, b), 503, "too_many_connections")
            self.assertEqual(h.get("connection", "").lower(), "close")
            self.assertEqual(h.get("retry-after"), "1")
            self.assertTrue(eof(extra))
            extra.close()
            # the held ones still work; one leaving makes room for another
            held[0].sendall(b"GET /health HTTP/1.1\r\n\r\n")
            self.assertEqual(read_response(held[0])[0], 200)
            held.pop().close()
            ts.wait_for("a slot to come back", lambda: health(PORT_TIGHT) == 200)
        finally:
            for c in held:
                c.close()
        ts.wait_for("the connections to be let go", lambda: health(PORT_TIGHT) == 200 and tight_metrics()[
            "tollgate_engine_http_connections"] <= 1)
        self.assertGreaterEqual(tight_metrics()['tollgate_engine_http_refused_total{reason="connections"}'], 1)

    def test_buffered_bytes_are_bounded(self):
        pad = MAX_BUFFERED * 3 // 4
        body = CHAT[:-1] + b" " * pad + b"}"
        a = Conn(PORT_TIGHT)
        a.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        a.sendall(body[:pad])  # held, not yet whole
        ts.wait_metrics("A's bytes to be held", lambda m: m["tollgate_engine_http_buffered_bytes"] >= pad,
                        port=PORT_TIGHT)
        b = Conn(PORT_TIGHT)
        b.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        b.sendall(body[:MAX_BUFFERED // 2])
        self.json_error(read_response(b), 503, "server_busy")
        # B's connection goes on once its body has gone by; A finishes and is served
        b.sendall(body[MAX_BUFFERED // 2:] + b"GET /health HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(b)[0], 200)
        a.sendall(body[pad:])
        st, _, out = read_response(a)
        self.assertEqual(st, 200, out[:300])
        a.close()
        b.close()
        ts.wait_metrics("nothing held", lambda m: m["tollgate_engine_http_buffered_bytes"] == 0, port=PORT_TIGHT)

    def test_idle_connections_are_closed(self):
        """Connections that wait for a request longer than --idle-timeout (3 s here) are closed, so
        that idle ones cannot hold every place under --max-conns (evhttp's own timeout, an hour here,
        was all there was); one whose answer is still being generated is not idle."""
        before = tight_metrics().get("tollgate_engine_http_idle_closed_total", 0)
        silent = Conn(PORT_TIGHT)  # never sends a byte
        used = Conn(PORT_TIGHT)  # one request, then nothing
        used.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(used)[0], 200)
        busy = Conn(PORT_TIGHT)  # a long answer: generated for longer than the idle timeout
        body = json.dumps({"model": ts.MODEL, "messages": [{"role": "user", "content": "A long story"}],
                           "max_tokens": 1500, "temperature": 0, "stream": True}).encode()
        busy.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        t0 = time.monotonic()
        self.assertTrue(eof(silent, IDLE_S + 5))
        self.assertTrue(eof(used, IDLE_S + 5))
        self.assertLess(time.monotonic() - t0, IDLE_S + 4)
        st, _, out = read_response(busy)
        self.assertEqual((st, ts.sse(out)[-1]), (200, "[DONE]"))
        self.assertGreaterEqual(tight_metrics()["tollgate_engine_http_idle_closed_total"], before + 2)
        for c in (silent, used, busy):
            c.close()

    def test_slowloris_gets_408_and_is_closed(self):
        c = Conn(PORT_TIGHT)
        t0 = time.monotonic()
        c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        for i in range(200):  # a header every 0.1 s, for up to 20 s: the deadline is TIMEOUT_S from the first byte
            if select.select([c.s], [], [], 0.1)[0]:
                break
            c.sendall(b"X-Slow-%d: 1\r\n" % i)
        self.assertLess(time.monotonic() - t0, TIMEOUT_S + 3)
        self.json_error(read_response(c), 408, "request_timeout")
        self.assertTrue(eof(c))
        c.close()


def sanitized():
    """Whether the worker is a sanitizer build (test_faults.sanitized)."""
    p = subprocess.run(["ldd", ts.ENGINE], capture_output=True, text=True)
    return "libasan" in p.stdout or "libtsan" in p.stdout


def health(port):
    """The status of GET /health on a new connection (0: refused or cut)."""
    try:
        c = Conn(port)
        try:
            c.sendall(b"GET /health HTTP/1.1\r\n\r\n")
            return read_response(c)[0]
        finally:
            c.close()
    except OSError:
        return 0


def tight_metrics():
    try:
        return ts.metrics(PORT_TIGHT)
    except AssertionError:  # refused at the cap meanwhile
        return {"tollgate_engine_http_connections": MAX_CONNS}


if __name__ == "__main__":
    main()
