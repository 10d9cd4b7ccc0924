"""The front door's transport, tried as an attacker would (issue 8): the TLS
profile, every request limit and timeout, a client that stops reading, a
client that pipelines without reading, too many connections, certificate
reload on SIGHUP, graceful drain on SIGTERM, several event loops.

Each class starts its own gateway (build[/<sanitizer>]/tollgate from the
stack's config: same PostgreSQL, Redis, workers and secrets) with small
limits, on the gateway test ports 18660-18669 (admin 18670-18679), so that
signals and limits touch no other test.  Run by tests/gateway/run.sh after
test_gateway.py.  Same rules as there: causality instead of clocks, a
generous deadline (WAIT) only for hangs, a timeout on every socket."""

import hashlib
import http.client
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_gateway as tg  # noqa: E402 - the stack's helpers (Conn, seed, usage_rows, ...)

E = os.environ
WAIT = tg.WAIT
SLACK = tg.SLACK
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.path.join(TOP, E.get("GW_BIN", "build/tollgate"))


class Gw:
    """One gateway of our own: the stack's config with overrides, its own port,
    admin port, spool, access log and certificate files (so SIGHUP can swap
    them)."""

    def __init__(self, name, port, rsa=False, **overrides):
        self.name, self.port, self.admin = name, port, port + 10
        self.dir = os.path.join(E["GW_DIR"], name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "spool"))
        if rsa:  # an RSA certificate: static-RSA and ECDHE-RSA suites become possible
            tg.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout",
                    os.path.join(self.dir, "key.pem"), "-out", os.path.join(self.dir, "cert.pem")],
                   check=True, capture_output=True)
        else:
            shutil.copy(os.path.join(E["GW_DIR"], "tls", "cert.pem"), os.path.join(self.dir, "cert.pem"))
            shutil.copy(os.path.join(E["GW_DIR"], "tls", "key.pem"), os.path.join(self.dir, "key.pem"))
        with open(os.path.join(E["GW_DIR"], "tollgate.json")) as f:
            cfg = json.load(f)
        cfg.update(listen="127.0.0.1:%d" % port, admin_listen="127.0.0.1:%d" % self.admin,
                   tls_cert=os.path.join(self.dir, "cert.pem"), tls_key=os.path.join(self.dir, "key.pem"),
                   spool_dir=os.path.join(self.dir, "spool"), access_log=os.path.join(self.dir, "access.log"))
        cfg.update(overrides)
        self.cfg = cfg
        path = os.path.join(self.dir, "tollgate.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.log = os.path.join(self.dir, "gateway.log")
        # under AddressSanitizer freed memory waits in a quarantine (256 MiB by default),
        # which would count as resident memory in the bounded-memory test: keep it small
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = ":".join(x for x in (env.get("ASAN_OPTIONS", ""), "quarantine_size_mb=8",
                                                   "thread_local_quarantine_size_kb=64") if x)
        with open(self.log, "w") as log:
            self.p = subprocess.Popen([BIN, "--config", path], cwd=TOP, stdout=log, stderr=subprocess.STDOUT,
                                      env=env)
        self.url = urllib.parse.urlparse("https://127.0.0.1:%d" % port)
        try:
            tg.wait_until("%s to answer /health" % name, self.healthy)
        except BaseException:
            self.p.kill()  # tearDownClass does not run after a failed setUpClass
            self.p.wait()
            raise

    def healthy(self):
        if self.p.poll() is not None:
            raise AssertionError("%s exited %s (see %s)" % (self.name, self.p.returncode, self.log))
        try:
            c = self.conn()
            try:
                return c.request("GET", "/health")[0] == 200
            finally:
                c.close()
        except OSError:
            return False

    def metric(self, name, absent=None):
        return tg.metric(name, absent, admin="http://127.0.0.1:%d" % self.admin)

    def logged(self, text):
        with open(self.log, errors="replace") as f:
            return text in f.read()

    def peak_rss_kib(self):
        """The most resident memory the gateway ever had (VmHWM)."""
        with open("/proc/%d/status" % self.p.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("%s did not stop on SIGTERM" % self.name)
        with open(self.log, errors="replace") as f:
            text = f.read()
        for bad in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if bad in text:
                raise AssertionError("sanitizer report in %s" % self.log)
        if self.p.returncode != 0:
            raise AssertionError("%s exited %d (see %s)" % (self.name, self.p.returncode, self.log))

    def conn(self, timeout=WAIT):
        """A tg.Conn that trusts this gateway's own certificate (as it is now)."""
        c = tg.Conn.__new__(tg.Conn)
        raw = raw_socket(self.port, timeout)
        c.s = ssl.create_default_context(cafile=self.cfg["tls_cert"]).wrap_socket(raw, server_hostname="localhost")
        c.buf = b""
        return c

    def wait_idle(self):
        tg.wait_until("no open connection on " + self.name, lambda: self.metric("tollgate_connections") == 0)


def raw_socket(port, timeout=WAIT):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def closed(s, deadline=WAIT):
    """Read until EOF (True) or the deadline (False); what the peer sends is dropped."""
    s.settimeout(deadline)
    try:
        while s.recv(65536):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True


# ---- limits and timeouts ------------------------------------------------------

class Limits(unittest.TestCase):
    HANDSHAKE_MS, HEADER_MS, BODY_MS, WRITE_MS = 1000, 1000, 1000, 1000

    @classmethod
    def setUpClass(cls):
        cls.gw = Gw("gw-limits", 18660, handshake_timeout_ms=cls.HANDSHAKE_MS, header_timeout_ms=cls.HEADER_MS,
                    body_timeout_ms=cls.BODY_MS, write_timeout_ms=cls.WRITE_MS, idle_timeout_ms=30000,
                    max_output_bytes=65536, stream_high_water=4096, max_connections=4)
        cls.key = tg.seed()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def setUp(self):
        self.gw.wait_idle()

    def send_raw(self, raw):
        c = self.gw.conn()
        try:
            c.send(raw)
            st, h, b = c.read_response()
            tg.openai_error(self, st, h, b, st)
            self.assertTrue(c.closed_by_peer(), "an unparseable request closes the connection")
            return st, json.loads(b)["error"]["code"]
        finally:
            c.close()

    def test_request_line_8k_then_414(self):
        line = b"GET /" + b"a" * (8192 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
        self.assertEqual(len(line), 8192)
        c = self.gw.conn()
        try:  # exactly 8 KiB: parsed (and answered 404: no such path)
            c.send(line + b"\r\nHost: x\r\n\r\n")
            self.assertEqual(c.read_response()[0], 404)
        finally:
            c.close()
        long = b"GET /" + b"a" * (8193 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
        self.assertEqual(self.send_raw(long + b"\r\nHost: x\r\n\r\n"), (414, "request_line_too_long"))
        # also while the line has not ended yet
        self.assertEqual(self.send_raw(long), (414, "request_line_too_long"))

    def test_header_block_32k_or_100_fields_then_431(self):
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n"
        fields = b"".join(b"x-f%d: v\r\n" % i for i in range(99))  # 100 fields with Host
        c = self.gw.conn()
        try:
            c.send(head + fields + b"\r\n")
            self.assertEqual(c.read_response()[0], 200)
        finally:
            c.close()
        self.assertEqual(self.send_raw(head + fields + b"x-one-more: v\r\n\r\n"), (431, "header_too_large"))
        big = b"x-big: " + b"a" * 33000 + b"\r\n"
        self.assertEqual(self.send_raw(head + big + b"\r\n"), (431, "header_too_large"))

    def test_trailers_count_with_the_head(self):
        body = json.dumps({"model": tg.MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % len(body) + body + b"\r\n0\r\n"
        trailers = b"".join(b"x-t%d: v\r\n" % i for i in range(97))  # 4 head fields + 97 = 101
        self.assertEqual(self.send_raw(head + chunk + trailers + b"\r\n"), (431, "header_too_large"))
        c = self.gw.conn()
        try:  # 96 trailer fields: 100 in all, fine
            c.send(head + chunk + b"".join(b"x-t%d: v\r\n" % i for i in range(96)) + b"\r\n")
            self.assertEqual(c.read_response()[0], 200)
        finally:
            c.close()

    def test_handshake_timeout(self):
        t0 = time.monotonic()
        s = raw_socket(self.gw.port)
        try:  # TCP only: no ClientHello ever comes
            self.assertTrue(closed(s), "the gateway closes a connection that never starts TLS")
            self.assertGreaterEqual(time.monotonic() - t0, self.HANDSHAKE_MS / 1000 - SLACK)
        finally:
            s.close()

    def test_header_timeout_408(self):
        t0 = time.monotonic()  # the head's timer starts when the handshake ends, which is after this
        c = self.gw.conn()
        try:
            c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            st, h, b = c.read_response()
            tg.openai_error(self, st, h, b, 408, "request_timeout")
            self.assertGreaterEqual(time.monotonic() - t0, self.HEADER_MS / 1000 - SLACK)
            self.assertTrue(c.closed_by_peer())
        finally:
            c.close()

    def test_body_idle_timeout_408(self):
        c = self.gw.conn()
        try:
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"")
            t0 = time.monotonic()  # after the last byte: the body timer counts silence
            st, h, b = c.read_response()
            tg.openai_error(self, st, h, b, 408, "request_timeout")
            self.assertIn("body", json.loads(b)["error"]["message"])
            self.assertGreaterEqual(time.monotonic() - t0, self.BODY_MS / 1000 - SLACK)
        finally:
            c.close()

    def test_body_timer_restarts_while_bytes_flow(self):
        # a body sent slowly, each piece well within body_timeout_ms but all of it
        # longer than that, is received whole
        body = json.dumps({"model": tg.MODEL, "messages": [{"role": "user", "content": "slow"}]}).encode()
        c = self.gw.conn()
        try:
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nContent-Length: %d\r\n\r\n" % len(body))
            t0 = time.monotonic()
            pieces = [body[i:i + 4] for i in range(0, len(body), 4)]
            step = 1.5 * self.BODY_MS / 1000 / len(pieces) * 2
            for p in pieces:
                c.send(p)
                time.sleep(step)
            st, h, b = c.read_response()
            self.assertGreater(time.monotonic() - t0, self.BODY_MS / 1000, "the body took longer than the timeout")
            self.assertEqual(st, 200, b)
        finally:
            c.close()

    def test_write_timeout_cancels_upstream_and_settles(self):
        # A stream to a client that reads its head and then nothing: the gateway stops
        # reading the worker (backpressure), then closes the client after write_timeout_ms
        # without progress; the worker connection is closed (the fake worker logs the
        # cancellation) and what was generated is settled, once.
        before = self.gw.metric("tollgate_write_timeouts_total")
        c = self.gw.conn()
        try:
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = json.dumps({"model": tg.MODEL, "stream": True,
                               "messages": [{"role": "user", "content": "flood:20000"}]}).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + self.key.encode() +
                   b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            while b"\r\n\r\n" not in c.buf:
                c._fill()
            head = c.buf.split(b"\r\n\r\n", 1)[0].decode()
            self.assertIn(" 200 ", head.split("\r\n")[0])
            rid = [ln.split(":", 1)[1].strip() for ln in head.split("\r\n") if ln.lower().startswith("x-request-id")][0]

            def cancelled():
                try:
                    with open(E["GW_WORKER_LOG"] + ".cancelled") as f:
                        return any(json.loads(ln).get("cancelled") == rid for ln in f if ln.strip())
                except FileNotFoundError:
                    return False
            tg.wait_until("the worker to see the stream cancelled",
                          lambda: cancelled() or self.cancelled_on_worker2(rid))
            rows = tg.usage_rows(rid)
            self.assertEqual(len(rows), 1, "settled once")
            prompt, completion, hit, status, cost, stream = rows[0]
            self.assertEqual(status, 200)
            self.assertTrue(stream)
            self.assertGreater(completion, 0, "what was generated is billed")
            self.assertLess(completion, 20000, "not what was asked: the generation was cut")
            self.assertGreater(prompt, 0, "the gateway's own prompt count")
            self.assertGreater(cost, 0)
            self.assertEqual(self.gw.metric("tollgate_write_timeouts_total"), before + 1)
        finally:
            c.close()

    @staticmethod
    def cancelled_on_worker2(rid):
        try:
            with open(E["GW_WORKER2_LOG"] + ".cancelled") as f:
                return any(json.loads(ln).get("cancelled") == rid for ln in f if ln.strip())
        except FileNotFoundError:
            return False

    def test_pipeliner_that_never_reads_stays_bounded(self):
        # GET /health pipelined as fast as the socket takes them, never reading an
        # answer.  The gateway must stop reading (our sends block; then, after
        # write_timeout_ms without a byte read, it closes) instead of answering into
        # memory: its peak RSS stays within a bound, and it never took more than the
        # socket buffers hold.
        rss0 = self.gw.peak_rss_kib()
        c = self.gw.conn()
        sent = 0
        stopped = None
        try:
            c.s.settimeout(3.0)
            req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
            while sent < (256 << 20):
                try:
                    c.s.sendall(req)
                except (socket.timeout, TimeoutError):
                    stopped = "blocked"
                    break
                except OSError:
                    stopped = "closed"
                    break
                sent += len(req)
            rss1 = self.gw.peak_rss_kib()
            self.assertIsNotNone(stopped, "the gateway kept reading %d MiB of requests nobody reads answers to"
                                 % (sent >> 20))
            self.assertLess(sent, 64 << 20, "the gateway took %d MiB of pipelined requests" % (sent >> 20))
            self.assertLess(rss1 - rss0, 48 * 1024, "gateway memory grew by %d KiB" % (rss1 - rss0))
            print("\n  pipeliner: %s after %.1f MiB sent; gateway peak RSS +%d KiB" % (stopped, sent / 2**20,
                  rss1 - rss0), file=sys.stderr)
        finally:
            c.close()

    def test_pipelined_answers_wait_for_the_reader(self):
        # With more answers pending than max_output_bytes, further pipelined requests
        # wait unread; a client that then reads gets every answer, in order.
        c = self.gw.conn()
        try:
            n = 2000  # ~2000 answers of ~200 bytes: several times max_output_bytes (64 KiB)
            c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * n)
            ids = []
            for _ in range(n):
                st, h, b = c.read_response()
                self.assertEqual(st, 200)
                ids.append(h["x-request-id"])
            self.assertEqual(ids, sorted(ids), "answers in request order (UUIDv7 ids increase)")
            self.assertEqual(len(set(ids)), n)
        finally:
            c.close()

    def test_max_connections_refused_cleanly(self):
        held = [self.gw.conn() for _ in range(4)]
        try:
            for c in held:  # each one served: they count
                c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertEqual(c.read_response()[0], 200)
            extra = self.gw.conn()  # the handshake completes, then a 503 and a close
            try:
                st, h, b = extra.read_response()
                tg.openai_error(self, st, h, b, 503, "too_many_connections")
                self.assertEqual(h["connection"], "close")
                self.assertTrue(extra.closed_by_peer())
            finally:
                extra.close()
            self.assertGreaterEqual(self.gw.metric("tollgate_connections_refused_total"), 1)
        finally:
            held[0].close()
        # one slot free again: a new connection is served (once the gateway saw the close)
        tg.wait_until("the gateway to see a connection closed", lambda: self.gw.metric("tollgate_connections") <= 3)
        c = self.gw.conn()
        try:
            c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(c.read_response()[0], 200)
        finally:
            c.close()
            for h in held[1:]:
                h.close()


# ---- TLS ------------------------------------------------------------------------

class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Gw("gw-tls", 18661, rsa=True)

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def s_client(self, *args):
        return tg.s_client(self.gw.port, *args)

    def test_profile(self):
        # What the server accepts, with a client able to offer the old things
        # (SECLEVEL=0 lets Debian's OpenSSL offer TLS 1.1 and SHA-1 CBC suites).
        rc, out = self.s_client("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        self.assertNotEqual(rc, 0, "TLS 1.1 accepted: " + out)
        for cbc in ("ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA", "ECDHE-RSA-AES128-SHA256",
                    "ECDHE-RSA-AES256-SHA384", "DHE-RSA-AES128-SHA"):
            rc, out = self.s_client("-tls1_2", "-cipher", cbc + ":@SECLEVEL=0")
            self.assertNotEqual(rc, 0, "CBC suite %s accepted: %s" % (cbc, out))
        rc, out = self.s_client("-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-GCM-SHA384:@SECLEVEL=0")
        self.assertNotEqual(rc, 0, "static RSA key exchange accepted: " + out)
        # and what it must accept
        rc, out = self.s_client("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
        self.assertEqual(rc, 0, out)
        self.assertIn("ECDHE-RSA-AES128-GCM-SHA256", out)
        rc, out = self.s_client("-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305")
        self.assertEqual(rc, 0, out)
        rc, out = self.s_client("-tls1_3")
        self.assertEqual(rc, 0, out)
        self.assertIn("TLSv1.3", out)

    def alpn(self, protos):
        t = ssl.create_default_context()
        t.check_hostname, t.verify_mode = False, ssl.CERT_NONE
        t.set_alpn_protocols(protos)
        with t.wrap_socket(raw_socket(self.gw.port), server_hostname="localhost") as w:
            return w.selected_alpn_protocol()

    def test_alpn_http11(self):
        self.assertEqual(self.alpn(["h2", "http/1.1"]), "http/1.1")
        with self.assertRaises(ssl.SSLError, msg="an ALPN offer without http/1.x was accepted"):
            self.alpn(["h2"])
        # HTTP/1.0 is served: a client offering only it (curl --http1.0) is not refused
        self.assertEqual(self.alpn(["http/1.0"]), "http/1.0")
        self.assertEqual(self.alpn(["http/1.0", "http/1.1"]), "http/1.1")
        t = ssl.create_default_context()
        t.check_hostname, t.verify_mode = False, ssl.CERT_NONE
        t.set_alpn_protocols(["http/1.0"])
        with t.wrap_socket(raw_socket(self.gw.port), server_hostname="localhost") as w:
            w.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            got = b""
            while True:
                d = w.recv(4096)
                if not d:
                    break
                got += d
        self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:80])

    def test_sighup_reloads_certificate_keeping_connections(self):
        def served_cert():
            s = raw_socket(self.gw.port)
            t = ssl.create_default_context()
            t.check_hostname, t.verify_mode = False, ssl.CERT_NONE
            with t.wrap_socket(s, server_hostname="localhost") as w:
                return hashlib.sha256(w.getpeercert(binary_form=True)).hexdigest()

        def file_cert(path):
            with open(path) as f:
                der = ssl.PEM_cert_to_DER_cert(f.read())
            return hashlib.sha256(der).hexdigest()
        cert, key = self.gw.cfg["tls_cert"], self.gw.cfg["tls_key"]
        self.assertEqual(served_cert(), file_cert(cert))
        old = self.gw.conn()  # an open keep-alive connection, made with the old certificate
        try:
            old.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(old.read_response()[0], 200)
            # a broken pair: refused, logged, the old one stays
            first = served_cert()
            with open(key, "w") as f:
                f.write("not a key\n")
            self.gw.p.send_signal(signal.SIGHUP)
            tg.wait_until("the failed reload logged", lambda: self.gw.logged("certificate not reloaded"))
            self.assertEqual(served_cert(), first)
            # a new pair
            tg.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=reloaded", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
            self.assertNotEqual(served_cert(), file_cert(cert), "not before SIGHUP")
            self.gw.p.send_signal(signal.SIGHUP)
            tg.wait_until("the reload logged", lambda: self.gw.logged("certificate and key reloaded"))
            self.assertEqual(served_cert(), file_cert(cert), "new connections get the new certificate")
            old.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # the old connection was not dropped
            self.assertEqual(old.read_response()[0], 200)
        finally:
            old.close()


# ---- shutdown -------------------------------------------------------------------

class Drain(unittest.TestCase):
    def test_sigterm_drains_a_stream(self):
        # A stream is in flight (its first chunk out, the rest held by the worker); SIGTERM;
        # the gateway stops taking connections but the stream runs to its end ([DONE] and
        # the last chunk), the connection then closes, the process exits 0 and the stream
        # is settled once.
        gw = Gw("gw-drain", 18662, shutdown_grace_ms=60000)
        key = tg.seed()
        tok = tg.hold_token()
        c = gw.conn()
        try:
            body = json.dumps({"model": tg.MODEL, "stream": True,
                               "messages": [{"role": "user", "content": "stallhold:" + tok}]}).encode()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
                   b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            while b"Hello" not in c.buf:
                c._fill()
            gw.p.send_signal(signal.SIGTERM)
            tg.wait_until("SIGTERM logged", lambda: gw.logged("SIGTERM, shutting down"))
            self.assertIsNone(gw.p.poll(), "the gateway waits for the stream")
            with self.assertRaises(OSError):  # nothing new is taken
                gw.conn(timeout=5).request("GET", "/health")
            tg.release(tok)
            st, h, b = c.read_response()
            self.assertEqual(st, 200)
            ev = tg.events(b)
            self.assertEqual(ev[-1], "[DONE]", "the stream ran to its end")
            self.assertTrue(c.closed_by_peer(), "closed after the answer")
            rid = h["x-request-id"]
        finally:
            tg.release(tok)
            c.close()
        gw.p.wait(timeout=WAIT)
        self.assertEqual(gw.p.returncode, 0)
        self.assertEqual(len(tg.usage_rows(rid)), 1)
        gw.stop()

    def test_grace_over_ends_requests_in_the_api_format(self):
        # A stream (its first chunk out) and a plain request, both held by the worker past a
        # 1 s shutdown grace; SIGTERM.  When the grace ends each client gets an answer it can
        # read: the stream an error event (server_shutting_down) and its terminating chunk, the
        # plain request a 503 in the API format; both are settled once (the stream as a cut
        # one: status 200, the chunk it got), and the process exits 0.  Before, the loop ended
        # at once: the stream's chunked body stopped mid-way (EOF), the plain request's
        # connection closed without an answer.
        gw = Gw("gw-grace", 18663, shutdown_grace_ms=1000)
        key = tg.seed()
        ts, tp = tg.hold_token(), tg.hold_token()
        cs, cp = gw.conn(), gw.conn()
        try:
            for c, stream, msg in ((cs, True, "stallhold:" + ts), (cp, False, "hold:" + tp)):
                body = json.dumps({"model": tg.MODEL, "stream": stream,
                                   "messages": [{"role": "user", "content": msg}]}).encode()
                c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() +
                       b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            while b"Hello" not in cs.buf:
                cs._fill()
            # the plain one has reached the worker too (its request is in the worker's log)
            def at_worker():
                for log in (E["GW_WORKER_LOG"], E["GW_WORKER2_LOG"]):
                    if os.path.exists(log):
                        with open(log) as f:
                            if tp in f.read():
                                return True
                return False
            tg.wait_until("the held plain request at a worker", at_worker)
            gw.p.send_signal(signal.SIGTERM)
            st, h, b = cs.read_response()
            self.assertEqual(st, 200)
            ev = tg.events(b)
            self.assertEqual(json.loads(ev[-1]), {"error": {
                "message": "The gateway is shutting down; the answer was cut short", "type": "server_error",
                "param": None, "code": "server_shutting_down"}}, ev)
            self.assertNotIn("[DONE]", ev)
            self.assertTrue(cs.closed_by_peer(), "closed after the answer")
            rid_s = h["x-request-id"]
            st, h, b = cp.read_response()
            self.assertEqual(st, 503, b)
            self.assertEqual(json.loads(b)["error"]["code"], "server_shutting_down")
            self.assertEqual(json.loads(b)["error"]["type"], "server_error")
            rid_p = h["x-request-id"]
        finally:
            tg.release(ts)
            tg.release(tp)
            cs.close()
            cp.close()
        gw.p.wait(timeout=WAIT)
        self.assertEqual(gw.p.returncode, 0)
        rows = tg.usage_rows(rid_s)
        self.assertEqual(len(rows), 1)
        prompt, completion, _, status, _, stream = rows[0]
        self.assertEqual((status, stream), (200, True))
        self.assertGreaterEqual(completion, 1)  # the chunk the client got
        self.assertGreater(prompt, 0)
        rows = tg.usage_rows(rid_p)
        self.assertEqual([(r[3], r[4]) for r in rows], [(503, 0)])
        gw.stop()


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(HERE, "..", "lib"))
    from tgskip import main  # noqa: E402 - skips are counted, never a quiet pass
    main()
