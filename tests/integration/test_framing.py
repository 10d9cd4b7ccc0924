"""HTTP/1.1 framing at both doors, tried as a request smuggler would: the
gateway's public port (TLS) and the stack's worker (plain TCP, the port the
gateway forwards to).

For every way of saying where a request ends (Content-Length, chunked, both,
neither) and every malformation around it (signs, blanks, hex, overflow, a
transfer coding that is not exactly "chunked", chunk sizes with extensions,
overflowing, negative, bare LF or missing CRLF, trailers, line folding,
blanks before the colon, bad name characters, NUL and bare CR, absolute-form
targets, HTTP/1.0, the HTTP/2 preface, Expect), checked here:

- a request whose framing is refused gets one answer, a 4xx (or 5xx where
  HTTP says so: 501, 505) in the API's own JSON error format, with
  "Connection: close", and then the connection closes: a request pipelined
  behind it, or hidden in its body, is never answered;
- a request that is refused after its framing was understood (no key, no
  route, no such model, a bad Host) keeps the connection: the next request is
  read from the byte after its body, never from inside it;
- an accepted variant (leading zeros, blanks around a value, chunk
  extensions, trailers, empty lines before a request line, ...) frames the
  body exactly: its JSON is parsed whole, and the request behind it is
  answered;
- nothing refused at the gateway reaches the worker, and afterwards neither
  holds a connection or a request (the gateway's gauges on /metrics, the
  worker's own).

Runs against the test stack (scripts/stack.sh test-up; var/test/env)."""

import concurrent.futures
import json
import os
import re
import socket
import ssl
import sys
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tgskip import main  # noqa: E402
from tgstack import ctl  # noqa: E402

E = os.environ
MODEL = E["TG_TEST_MODEL"]
GW_PORT = int(E["TG_TEST_GATEWAY"].rsplit(":", 1)[1])
ENGINE_PORT = int(E["TG_TEST_ENGINE"].rsplit(":", 1)[1])
WAIT = 30.0  # fires only on a hang
NEXT = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # the request pipelined behind each one


def wait_until(what, cond, deadline=WAIT):
    end = time.time() + deadline
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class Raw:
    """One connection speaking raw bytes: TLS to the gateway, TCP to the worker."""

    def __init__(self, port, tls):
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if tls:
            ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
            s = ctx.wrap_socket(s, server_hostname="localhost")
        self.s, self.buf = s, b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("closed after %r" % self.buf[:200])
        self.buf += d

    def response(self):
        """-> (status, headers (lower-case names), body); interim 100s are returned too."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if not re.match(r"HTTP/1\.[01] \d{3}", lines[0]):
            raise AssertionError("not a status line (desynchronised?): %r" % head[:200])
        status = int(lines[0].split(" ")[1])
        h = {}
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            h[k.strip().lower()] = v.strip()
        if status == 100:
            return status, h, b""
        if "content-length" in h:
            n = int(h["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif h.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size, rest = self.buf.split(b"\r\n", 1)
                n = int(size, 16)
                while len(rest) < n + 2:
                    self._fill()
                    size, rest = self.buf.split(b"\r\n", 1)
                body, self.buf = body + rest[:n], rest[n + 2:]
                if n == 0:
                    break
        else:  # close-delimited
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return status, h, body

    def closed(self):
        """True once the peer closes (EOF or reset) within WAIT; bytes instead are an error."""
        if self.buf:
            raise AssertionError("bytes after the answer: %r" % self.buf[:200])
        try:
            d = self.s.recv(1)
        except (ConnectionError, ssl.SSLError):
            return True
        except socket.timeout:
            return False
        if d:
            raise AssertionError("bytes after the answer: %r" % (d + self.s.recv(4096))[:300])
        return True

    def close(self):
        self.s.close()


def json_error(t, st, h, body, status, what):
    t.assertEqual(st, status, (what, body[:300]))
    t.assertTrue(h.get("content-type", "").startswith("application/json"), (what, h))
    err = json.loads(body)["error"]
    t.assertEqual(set(err), {"message", "type", "param", "code"}, (what, err))
    t.assertTrue(err["message"], what)
    return err


def body_for(tag):
    """A chat body naming a model that does not exist: the 404 quotes it, so the
    answer proves the body was read whole and nothing more."""
    return json.dumps({"model": "framing-" + tag, "messages": [{"role": "user", "content": "x"}]}).encode()


def chunked(body, n=2):
    """body in n chunks, CRLF everywhere."""
    step = max(1, len(body) // n)
    parts = [body[i:i + step] for i in range(0, len(body), step)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics", timeout=WAIT) as r:
        text = r.read().decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    if not m:
        raise AssertionError("no %s at %s" % (name, url))
    return float(m.group(1))


def engine_requests():
    """Requests the worker has answered, all codes together."""
    with urllib.request.urlopen(E["TG_TEST_ENGINE"] + "/metrics", timeout=WAIT) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"^tollgate_engine_requests_total\{[^}]*\} (\S+)$", text, re.M))


class Door:
    """What both doors share: the refused and accepted cases, run on fresh
    connections.  Subclasses say where (port, tls) and how a chat request's
    head looks there."""

    port, tls = None, False

    def conn(self):
        return Raw(self.port, self.tls)

    def post_head(self):
        raise NotImplementedError

    def exchange(self, raw):
        """raw, then NEXT on a new connection -> (status, headers, body, closed
        after it), or the exception."""
        c = self.conn()
        try:
            c.send(raw + NEXT)
            st, h, b = c.response()
            return st, h, b, c.closed()
        except Exception as e:  # noqa: BLE001 - reported by the caller, in the test's thread
            return e
        finally:
            c.close()

    def refused(self, what, raw, status, got=None):
        """raw, then NEXT on one connection: one JSON error (status), Connection:
        close, then the close; NEXT is never answered.  got: exchange(raw) done
        already (cases run side by side: a refused connection lingers ~2 s)."""
        got = got or self.exchange(raw)
        if isinstance(got, Exception):
            raise AssertionError("%s: %r" % (what, got))
        st, h, b, closed = got
        json_error(self, st, h, b, status, what)
        self.assertEqual(h.get("connection", "").lower(), "close", (what, h))
        self.assertTrue(closed, what + ": the connection stays open after a framing error")

    def refused_all(self, cases):
        """refused() for each (name, raw, status), the exchanges side by side."""
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda c: self.exchange(c[1]), cases))
        for (name, raw, status), g in zip(cases, got):
            with self.subTest(name):
                self.refused(name, raw, status, g)

    def framed(self, what, raw, tag):
        """raw (a chat request for model framing-<tag>), then NEXT: the 404 that
        quotes the model (the body read whole), then NEXT's 200."""
        c = self.conn()
        try:
            c.send(raw + NEXT)
            st, h, b = c.response()
            while st == 100:
                st, h, b = c.response()
            err = json_error(self, st, h, b, 404, what)
            self.assertIn("framing-" + tag, err["message"], what)
            st, h, b = c.response()
            self.assertEqual(st, 200, (what, b[:200]))
        finally:
            c.close()

    # ---- refused ------------------------------------------------------------

    def refused_cases(self):
        """(name, raw bytes, status) for framings both doors refuse."""
        p, b = self.post_head(), body_for("refused")
        n = len(b)
        te = p + b"Transfer-Encoding: chunked\r\n\r\n"
        return [
            ("CL and TE", p + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % n + chunked(b), 400),
            ("TE and CL", p + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % n + chunked(b), 400),
            ("TE and CL 0", p + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b), 400),
            ("two different CLs", p + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (n, n + 1) + b, 400),
            ("CL list", p + b"Content-Length: %d, %d\r\n\r\n" % (n, n) + b, 400),
            ("CL +", p + b"Content-Length: +%d\r\n\r\n" % n + b, 400),
            ("CL -", p + b"Content-Length: -%d\r\n\r\n" % n + b, 400),
            ("CL hex", p + b"Content-Length: 0x%x\r\n\r\n" % n + b, 400),
            ("CL inner blank", p + b"Content-Length: 1 %d\r\n\r\n" % n + b, 400),
            ("CL 2^64", p + b"Content-Length: 18446744073709551616\r\n\r\n" + b, 400),
            ("CL 2^64+n", p + b"Content-Length: %d\r\n\r\n" % (2 ** 64 + n) + b, 400),
            ("CL 2^63", p + b"Content-Length: 9223372036854775808\r\n\r\n" + b, 400),
            ("CL empty", p + b"Content-Length: \r\n\r\n" + b, 400),
            ("CL decimal", p + b"Content-Length: %d.0\r\n\r\n" % n + b, 400),
            ("CL blank before colon", p + b"Content-Length : %d\r\n\r\n" % n + b, 400),
            ("TE blank before colon", p + b"Transfer-Encoding : chunked\r\n\r\n" + chunked(b), 400),
            ("CL folded", p + b"X-A: 1\r\nContent-Length:\r\n %d\r\n\r\n" % n + b, 400),
            ("obs-fold", p + b"X-A: 1\r\n\t2\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("bad name character", p + b"X(A): 1\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("8-bit name", p + b"X-\xc3\xa9: 1\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("empty name", p + b": 1\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("NUL in a value", p + b"X-A: a\x00b\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("NUL in a name", p + b"X-\x00A: b\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("NUL after the version", p.replace(b" HTTP/1.1\r\n", b" HTTP/1.1\x00junk\r\n", 1) +
             b"Content-Length: %d\r\n\r\n" % n + b, 400),
            ("NUL in the target", b"GET /health\x00x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("bare CR in a value", p + b"X-A: a\rb\r\nContent-Length: %d\r\n\r\n" % n + b, 400),
            ("bare CR ending a line", p + b"X-A: a\rContent-Length: %d\r\n\r\n" % n + b, 400),
            ("8-bit target", b"GET /h\xc3\xa9alth HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("HTTP/2.0", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", None),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00", None),
            ("HTTP/0.9", b"GET /health\r\n\r\n", 400),
            ("lower-case version", b"GET /health http/1.1\r\nHost: x\r\n\r\n", 400),
            ("blank after the version", b"GET /health HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
            ("two blanks", b"GET  /health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("HTTP/1.0 chunked", p.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1) +
             b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b), 400),
            ("Expect other", p + b"Expect: 200-ok\r\nContent-Length: %d\r\n\r\n" % n + b, 417),
            # chunk framing
            ("chunk size hex overflow", te + b"1" + b"0" * 16 + b"\r\n" + b + b"\r\n0\r\n\r\n", 400),
            ("chunk size 2^64+n", te + b"1%016x\r\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk size negative", te + b"-%x\r\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk size 0x", te + b"0x%x\r\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk size blank first", te + b" %x\r\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk size blank after", te + b"%x \r\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk size two numbers", te + b"1 %x\r\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk no CRLF after data", te + b"%x\r\n" % n + b + b"0\r\n\r\n", 400),
            ("chunk data longer", te + b"%x\r\n" % (n - 1) + b + b"\r\n0\r\n\r\n", 400),
            ("chunk bare LF everywhere", te + b"%x\n" % n + b + b"\n0\n\n", 400),
            ("chunk bare LF after size", te + b"%x\n" % n + b + b"\r\n0\r\n\r\n", 400),
            ("chunk bare LF after data", te + b"%x\r\n" % n + b + b"\n0\r\n\r\n", 400),
            ("chunk bare LF at the end", te + b"%x\r\n" % n + b + b"\r\n0\r\n\n", 400),
            ("chunk bare CR", te + b"%x\r" % n + b + b"\r\n0\r\n\r\n", 400),
            ("no last CRLF: the next request is no trailer", te + b"%x\r\n" % n + b + b"\r\n0\r\n", 400),
            ("trailer folded", te + b"%x\r\n" % n + b + b"\r\n0\r\nX-T: 1\r\n 2\r\n\r\n", 400),
        ]

    def test_refused_framings(self):
        before = engine_requests()
        self.refused_all([(n, r, st or self.version_status) for n, r, st in self.refused_cases() + self.refused_here()])
        if self.tls:  # nothing the gateway refused reached the worker
            self.assertEqual(engine_requests(), before)

    def test_transfer_codings_other_than_chunked(self):
        p, b = self.post_head(), body_for("te")
        cases = [(repr(te), p + b"Transfer-Encoding: " + te + b"\r\n\r\n" + chunked(b), self.te_status)
                 for te in (b"chunked, identity", b"identity, chunked", b"gzip, chunked", b"xchunked", b"chunkedx",
                            b"chunk", b"chunked,", b"chunked;q=1", b"identity", b"", b"\"chunked\"")]
        cases.append(("two TE fields", p + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" +
                      chunked(b), self.te_status))
        self.refused_all(cases)

    def test_refused_body_is_never_parsed_as_requests(self):
        # a body hiding a whole request, refused before it is read: nothing in
        # it is answered (the connection closes after the refusal)
        hidden = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
        p = self.post_head()
        self.refused_all([
            ("CL and TE", p + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(hidden) + hidden, 400),
            ("TE and CL, chunk hides it", p + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" +
             hidden, 400),
            ("Expect other", p + b"Expect: nothing\r\nContent-Length: %d\r\n\r\n" % len(hidden) + hidden, 417)])
        self.body_too_large(hidden)

    def test_expect_100_ignored_from_http10(self):
        # RFC 9110 §10.1.1: an HTTP/1.0 client's 100-continue is ignored; the
        # first answer it reads is the real one (the head goes alone first, so
        # an interim 100 would come before the answer whatever the timing)
        b = body_for("e10")
        c = self.conn()
        try:
            c.send(self.post_head().replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1) +
                   b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(b))
            c.send(b)
            st, h, body = c.response()
            self.assertIn("framing-e10", json_error(self, st, h, body, 404, "HTTP/1.0 expect")["message"])
        finally:
            c.close()

    # ---- accepted -----------------------------------------------------------

    def test_accepted_variants_frame_exactly(self):
        p = self.post_head()
        for name, make in (
                ("CL", lambda b: b"Content-Length: %d\r\n\r\n" % len(b) + b),
                ("CL leading zeros", lambda b: b"Content-Length: 000%d\r\n\r\n" % len(b) + b),
                ("CL blanks around", lambda b: b"Content-Length: \t %d \t\r\n\r\n" % len(b) + b),
                ("CL no blank", lambda b: b"Content-Length:%d\r\n\r\n" % len(b) + b),
                ("cl lower-case name", lambda b: b"content-length: %d\r\n\r\n" % len(b) + b),
                ("chunked", lambda b: b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b, 3)),
                ("CHUNKED", lambda b: b"Transfer-Encoding: CHUNKED\r\n\r\n" + chunked(b)),
                ("TE blanks around", lambda b: b"Transfer-Encoding: \tchunked \r\n\r\n" + chunked(b)),
                ("upper-case hex sizes", lambda b: b"Transfer-Encoding: chunked\r\n\r\n%X\r\n%s\r\n0\r\n\r\n" %
                 (len(b), b)),
                ("one chunk, byte chunks", lambda b: b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b, len(b))),
                ("Expect 100-continue", lambda b: b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(b) + b),
                ("unrelated Transfer_Encoding", lambda b: b"Transfer_Encoding: chunked\r\nContent-Length: %d\r\n\r\n" %
                 len(b) + b),
                ("8-bit value", lambda b: b"X-A: caf\xc3\xa9 \xff\r\nContent-Length: %d\r\n\r\n" % len(b) + b),
                ("CRLF after the body", lambda b: b"Content-Length: %d\r\n\r\n" % len(b) + b + b"\r\n"),
        ) + self.accepted_here():
            tag = re.sub(r"[^a-z0-9]+", "-", name.lower())
            with self.subTest(name):
                self.framed(name, p + make(body_for(tag)), tag)
        with self.subTest("empty lines before the request line"):
            b = body_for("leading")
            self.framed("leading empty lines", b"\r\n\r\n\n" + p + b"Content-Length: %d\r\n\r\n" % len(b) + b,
                        "leading")

    def test_errors_after_sound_framing_keep_the_connection(self):
        # each answer comes from the byte after the refused request's body;
        # a body holding a request line is data, never a request
        hidden = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
        c = self.conn()
        try:
            for head, status in self.kept_errors():
                c.send(head + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden)
                st, h, b = c.response()
                json_error(self, st, h, b, status, head[:40].decode())
                self.assertNotEqual(h.get("connection", "").lower(), "close", head)
            c.send(NEXT)
            self.assertEqual(c.response()[0], 200)
        finally:
            c.close()


class Gateway(Door, unittest.TestCase):
    port, tls = GW_PORT, True
    version_status = 505  # RFC 9110 §15.6.6
    te_status = 501       # RFC 9112 §6.1: an unknown transfer coding

    @classmethod
    def setUpClass(cls):
        cust = "framing-" + uuid.uuid4().hex[:8]
        ctl("customer", "create", cust, "--credit-usd", "5")
        cls.key = ctl("key", "create", "--customer", cust).strip().splitlines()[-1]

    def post_head(self):
        return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " +
                self.key.encode() + b"\r\nContent-Type: application/json\r\n")

    def refused_here(self):
        p, b = self.post_head(), body_for("here")
        return [("authority-form", b"CONNECT localhost:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
                ("asterisk-form with GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
                ("absolute-form, not http", b"GET ftp://localhost/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
                ("chunked trailers over the head's limit", p + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b)[:-2] +
                 b"".join(b"X-T%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431)]

    def accepted_here(self):
        # the gateway takes trailers (and drops them) and chunk extensions (ignored)
        return (("chunk extensions", lambda b: b"Transfer-Encoding: chunked\r\n\r\n%x;a=1;b=\"x;y\"\r\n%s\r\n0;z\r\n\r\n" %
                 (len(b), b)),
                ("blanks before an extension", lambda b: b"Transfer-Encoding: chunked\r\n\r\n%x \t;a\r\n%s\r\n0\r\n\r\n" %
                 (len(b), b)),
                ("trailers, one a Content-Length", lambda b: b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b)[:-2] +
                 b"X-T: 1\r\nContent-Length: 5\r\n\r\n"),
                ("two equal CLs", lambda b: b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(b), len(b)) + b))

    def kept_errors(self):
        post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        return ((post, 401),
                (b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\n", 404),
                (b"POST /health HTTP/1.1\r\nHost: x\r\n", 405),
                (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400),
                (b"POST /v1/chat/completions HTTP/1.1\r\n", 400),  # no Host
                (post + b"Authorization: Bearer " + self.key.encode() + b"\r\n", 400))  # the body is no JSON

    def body_too_large(self, hidden):
        # refused on its Content-Length, before any body byte: the connection closes
        self.refused("body too large", self.post_head() + b"Content-Length: 99999999999\r\n\r\n" + hidden, 413)

    def test_absolute_form_and_http10(self):
        b = body_for("abs")
        self.framed("absolute-form", self.post_head().replace(b"POST /v1/", b"POST https://localhost/v1/", 1) +
                    b"Content-Length: %d\r\n\r\n" % len(b) + b, "abs")
        c = self.conn()
        try:  # HTTP/1.0: closed after the answer unless it asks to keep the connection
            c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.0\r\n\r\n" + NEXT)
            self.assertEqual(c.response()[0], 200)
            self.assertEqual(c.response()[0], 200)
            self.assertTrue(c.closed())
        finally:
            c.close()

    def test_expect_100_continue_waits_for_the_body(self):
        b = body_for("expect")
        c = self.conn()
        try:
            c.send(self.post_head() + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(b))
            self.assertEqual(c.response()[0], 100)
            c.send(b + NEXT)
            st, h, body = c.response()
            self.assertIn("framing-expect", json_error(self, st, h, body, 404, "expect")["message"])
            self.assertEqual(c.response()[0], 200)
        finally:
            c.close()

    def test_zz_nothing_left_open(self):
        # after every test above (unittest runs them by name): no connection
        # and no request left on the gateway (refused connections linger ~2 s)
        admin = E["TG_TEST_ADMIN"]
        wait_until("the gateway's connections to drain",
                   lambda: metric(admin, "tollgate_connections") == 0 and
                   metric(admin, "tollgate_inflight_requests") == 0)
        c = self.conn()  # and it serves
        try:
            c.send(NEXT)
            self.assertEqual(c.response()[0], 200)
        finally:
            c.close()


class Worker(Door, unittest.TestCase):
    port, tls = ENGINE_PORT, False
    version_status = 400  # the guard's unsupported_http_version
    te_status = 400

    def post_head(self):
        return b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"

    def refused_here(self):
        # stricter than the gateway: it is reached by the gateway only, which
        # sends Content-Length, origin-form and no trailers
        p, b = self.post_head(), body_for("here")
        te = p + b"Transfer-Encoding: chunked\r\n\r\n"
        return [("absolute-form", b"GET http://localhost/health HTTP/1.1\r\n\r\n", 400),
                ("two equal CLs", p + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(b), len(b)) + b, 400),
                ("chunk extension", te + b"%x;a=1\r\n%s\r\n0\r\n\r\n" % (len(b), b), 400),
                ("trailer", te + chunked(b)[:-2] + b"X-T: 1\r\n\r\n", 400),
                ("HEAD with a body", b"HEAD /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400)]

    def accepted_here(self):
        return ()

    def body_too_large(self, hidden):
        # refused on its Content-Length; the worker skips exactly that many
        # bytes and goes on: the request hidden in them is never answered,
        # the one after them is
        n = (8 << 20) + 1  # the worker's body limit (8 MiB), one byte over
        c = self.conn()
        try:
            c.send(self.post_head() + b"Content-Length: %d\r\n\r\n" % n)
            st, h, b = c.response()
            json_error(self, st, h, b, 413, "body too large")
            c.send(hidden + b"x" * (n - len(hidden)) + NEXT)
            st, h, b = c.response()
            self.assertEqual(st, 200, b[:200])
            self.assertIn(b'"status"', b)  # /health's answer, not /v1/models'
        finally:
            c.close()

    def kept_errors(self):
        return ((b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n", 404),
                (b"POST /health HTTP/1.1\r\nHost: x\r\n", 405),
                (self.post_head(), 400))  # the body is no JSON

    def test_zz_nothing_left_open(self):
        url = E["TG_TEST_ENGINE"]
        # our own /metrics request is the one connection left
        wait_until("the worker's connections to drain",
                   lambda: metric(url, "tollgate_engine_http_connections") <= 1 and
                   metric(url, "tollgate_engine_http_buffered_bytes") == 0 and
                   metric(url, "tollgate_engine_requests_in_flight") == 0)


if __name__ == "__main__":
    main()
