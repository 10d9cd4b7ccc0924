"""The operator's admin API and the dashboard API under hostile input, as an
independent tester sends it: wrong methods (405 with Allow), oversized and
malformed bodies, numbers that a double cannot hold, strings with NUL,
idempotency keys raced, and one customer's session poking at another's.

Runs against the test stack (scripts/stack.sh test-up): the gateway's admin
listener ($TG_TEST_ADMIN) and its public port's /dashboard/api/
($TG_TEST_GATEWAY).  Every answer that is an error must be the API's error
body {"error":{"message","type","param","code"}}; a refused field names itself
in "param".  Names start with edges-.
"""

import http.client
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import unittest
import urllib.parse
import uuid

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwinstances import ADMIN_OFFSET, Instances, https  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import ctl, ctl_run  # noqa: E402

E = os.environ
ADMIN = urllib.parse.urlparse(E["TG_TEST_ADMIN"])
GW = urllib.parse.urlparse(E["TG_TEST_GATEWAY"])
TOKEN = E["TG_TEST_ADMIN_TOKEN"]
TIMEOUT = 30
PORTS = (GW.port + 50, GW.port + 51)  # Close's two gateway instances (admin: + gwinstances.ADMIN_OFFSET)


def q(sql, *args):
    c = psycopg2.connect(E["TG_TEST_PG"])
    try:
        with c, c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        c.close()


def send(conn, method, path, body, headers):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    h = dict(headers)
    if body is not None:
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def admin(method, path, body=None, token=TOKEN, headers=()):
    h = dict(headers)
    if token:
        h["Authorization"] = "Bearer " + token
    return send(http.client.HTTPConnection(ADMIN.hostname, ADMIN.port, timeout=TIMEOUT), method,
                "/admin/v1/" + path, body, h)


def dash(method, path, body=None, session=None, headers=()):
    """One call to /dashboard/api/<path>; session: (cookie token, csrf) or None."""
    ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
    h = dict(headers)
    if session:
        h["Cookie"] = "tg_session=" + session[0]
        h.setdefault("X-CSRF-Token", session[1])
    return send(http.client.HTTPSConnection(GW.hostname, GW.port, context=ctx, timeout=TIMEOUT), method,
                "/dashboard/api/" + path, body, h)


def new_customer(credit="1"):
    name = "edges-" + uuid.uuid4().hex[:10]
    st, _, b = admin("POST", "customers", {"name": name, "credit_usd": credit})
    assert st == 200, b
    return name


def new_key(cust, body=None):
    st, _, b = admin("POST", "customers/%s/keys" % cust, body or {})
    assert st == 201, b
    return json.loads(b)


def sign_in(key):
    st, h, b = dash("POST", "login", {"api_key": key})
    assert st == 200, b
    tok = re.search(r"tg_session=([0-9a-f]{64})", h["set-cookie"]).group(1)
    return tok, json.loads(b)["csrf"]


class Checks(unittest.TestCase):
    def error(self, answer, status, code=None, param=None):
        """answer is the API's error body with this status (and code, param)."""
        st, h, b = answer
        self.assertEqual(st, status, b)
        self.assertTrue(h.get("content-type", "").startswith("application/json"), h)
        e = json.loads(b)["error"]
        self.assertEqual(set(e), {"message", "type", "param", "code"}, e)
        self.assertTrue(e["message"])
        if code is not None:
            self.assertEqual(e["code"], code, e)
        if param is not None:
            self.assertEqual(e["param"], param, e)
        return e

    def allow(self, answer, methods):
        self.error(answer, 405, "method_not_allowed")
        got = {m.strip() for m in answer[1].get("allow", "").split(",") if m.strip()}
        self.assertEqual(got, set(methods), "Allow of a 405: %r" % (answer[1],))


class Edges(Checks):

    # ---- HTTP details -----------------------------------------------------------------------

    def test_admin_405_carries_allow(self):
        cust = new_customer()
        kid = new_key(cust)["id"]
        for method, path, methods in (
                ("PUT", "customers", ("GET", "POST")),
                ("OPTIONS", "customers", ("GET", "POST")),  # was evhttp's 501 HTML page
                ("DELETE", "customers/" + cust, ("GET",)),
                ("POST", "customers/%s/balance" % cust, ("GET",)),
                ("GET", "customers/%s/credits" % cust, ("POST",)),
                ("GET", "customers/%s/spending-limits" % cust, ("POST", "PUT")),
                ("PUT", "customers/%s/limits" % cust, ("GET", "POST", "PATCH")),
                ("POST", "customers/%s/ledger" % cust, ("GET",)),
                ("PUT", "customers/%s/keys" % cust, ("GET", "POST")),
                ("GET", "keys/%d" % kid, ("POST", "PATCH", "DELETE")),
                ("GET", "keys/%d/revoke" % kid, ("POST",)),
                ("GET", "keys/%d/rotate" % kid, ("POST",)),
                ("DELETE", "prices", ("GET", "POST", "PUT")),
                ("PATCH", "tokens", ("GET", "POST")),
                ("GET", "tokens/nobody/revoke", ("POST",)),
                ("GET", "tokens/nobody", ("DELETE",)),
                ("POST", "reports/top", ("GET",)),
                ("POST", "settlement", ("GET",)),
                ("GET", "invoices/finalize", ("POST",)),
                ("POST", "reconcile", ("GET",))):
            with self.subTest(method=method, path=path):
                self.allow(admin(method, path, {} if method in ("POST", "PUT", "PATCH") else None), methods)
        # the embedding program's page (/metrics), and /health (it answered 200 to any method)
        for method, path, methods in (("POST", "/metrics", ("GET", "HEAD")), ("POST", "/health", ("GET", "HEAD")),
                                      ("PATCH", "/health", ("GET", "HEAD")), ("DELETE", "/health", ("GET", "HEAD"))):
            with self.subTest(method=method, path=path):
                st, h, b = send(http.client.HTTPConnection(ADMIN.hostname, ADMIN.port, timeout=TIMEOUT), method,
                                path, b"" if method != "DELETE" else None, {})
                self.allow((st, h, b), methods)
        st, _, b = send(http.client.HTTPConnection(ADMIN.hostname, ADMIN.port, timeout=TIMEOUT), "GET", "/health",
                        None, {})
        self.assertEqual((st, json.loads(b)), (200, {"status": "ok"}))

    def test_admin_unknown_route_bad_json_oversized(self):
        self.error(admin("GET", "no-such-thing"), 404, "not_found")
        self.error(admin("GET", "no-such-thing", token=None), 401, "invalid_admin_token")
        for bad in ('{"name":', "[1]", "", "nul\x00l"):
            if bad == "":
                continue  # an empty body is an empty object
            with self.subTest(body=bad):
                self.error(admin("POST", "customers", bad), 400, "invalid_json")
        # a body over 64 KiB: the API's own 413, not the HTTP library's HTML page
        big = json.dumps({"name": "edges-" + "a" * 100000})
        self.error(admin("POST", "customers", big), 413, "request_too_large")
        self.assertEqual(q("SELECT count(*) FROM customers WHERE length(name) > 64")[0][0], 0)

    def test_admin_http_errors_are_json(self):
        """What libevent answered with its own HTML page (a body over 1 MiB: 413; a malformed request:
        400; an unknown method: 501) is the API's JSON error, before any token check; headers over the
        limit are 431 (Request Header Fields Too Large), as the gateway answers them."""
        big = json.dumps({"name": "edges-" + "a" * (2 << 20)})
        self.error(admin("POST", "customers", big), 413, "request_too_large")
        self.error(admin("POST", "customers", big, token=None), 413, "request_too_large")
        for data, status in ((b"GARBAGE\r\n\r\n", 400), (b"GET /admin/v1/customers HTTP/1.1\r\nBad header\r\n\r\n", 400),
                             (b"BREW /admin/v1/customers HTTP/1.1\r\n\r\n", 501),
                             (b"GET /admin/v1/customers HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
                             (b"POST /admin/v1/customers HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n", 413)):
            with self.subTest(data=data[:40]):
                s = socket.create_connection((ADMIN.hostname, ADMIN.port), timeout=TIMEOUT)
                s.sendall(data)
                got = b""
                while b"\r\n\r\n" not in got:
                    b = s.recv(65536)
                    self.assertTrue(b, got)
                    got += b
                head, body = got.split(b"\r\n\r\n", 1)
                n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < n:
                    body += s.recv(65536)
                s.close()
                h = dict(l.split(": ", 1) for l in head.decode().lower().split("\r\n")[1:])
                self.error((int(head.split(b" ")[1]), h, body), status)

    def test_query_plus_is_a_plus(self):
        """The admin API reads its query string as RFC 3986 says (percent-decoding only): a '+' is a
        plus sign (%20 is a space).  Names may hold '+' (e-mail sub-addresses), and such a name
        round-trips through ?customer= whether the client writes the '+' as is or as %2B; form
        decoding made "team+a@x" into "team a@x" (a 404, or another customer's report)."""
        stem = "edges-%s" % uuid.uuid4().hex[:8]
        name = stem + "+a@example.com"
        made = json.loads(ctl("--json", "customer", "create", name, "--credit-usd", "1"))
        self.assertEqual(made["name"], name)
        for query in (name, urllib.parse.quote(name, safe="")):
            for report in ("usage", "balance"):
                with self.subTest(query=query, report=report):
                    st, _, b = admin("GET", "reports/%s?by=day&customer=%s" % (report, query))
                    self.assertEqual(st, 200, b)
                    self.assertEqual(json.loads(b)["customer"], name)
        # the name with a space where the '+' was is not the same customer (and cannot be made)
        self.error(admin("GET", "reports/usage?customer=" + urllib.parse.quote(name.replace("+", " "))), 404)
        # tollgatectl and the path form find it too
        self.assertEqual(json.loads(ctl("--json", "balance", "--customer", name))["customer"], name)
        st, _, b = admin("GET", "customers/" + name)
        self.assertEqual((st, json.loads(b)["name"]), (200, name), b)
        # an encoded NUL in a query value is refused, not cut short
        self.error(admin("GET", "reports/usage?customer=edges%00x"), 400, "invalid_query")

    def test_dashboard_405_carries_allow(self):
        cust = new_customer()
        s = sign_in(new_key(cust)["key"])
        for method, path, methods in (
                ("POST", "session", ("GET", "HEAD")),
                ("GET", "login", ("POST",)),
                ("GET", "logout", ("POST",)),
                ("PUT", "keys", ("GET", "HEAD", "POST")),
                ("DELETE", "keys", ("GET", "HEAD", "POST")),
                ("POST", "overview", ("GET", "HEAD")),
                ("POST", "usage", ("GET", "HEAD")),
                ("GET", "keys/1/revoke", ("POST",)),
                ("POST", "invoices", ("GET", "HEAD")),
                ("POST", "invoices/2026-01/csv", ("GET", "HEAD")),
                ("POST", "requests", ("GET", "HEAD")),
                ("POST", "admin/overview", ("GET", "HEAD"))):
            with self.subTest(method=method, path=path):
                self.allow(dash(method, path, "{}" if method not in ("GET", "HEAD") else None, session=s), methods)
        # without a session too: the method is checked before it
        self.allow(dash("PUT", "keys", "{}"), ("GET", "HEAD", "POST"))
        # HEAD is GET without the body (RFC 9110 9.3.2): the same status and headers
        for path in ("session", "overview", "keys", "usage", "invoices", "requests"):
            with self.subTest(head=path):
                st, h, b = dash("GET", path, session=s)
                self.assertEqual(st, 200, b)
                hst, hh, hb = dash("HEAD", path, session=s)
                self.assertEqual((hst, hb), (200, b""), path)
                self.assertEqual(hh.get("content-type"), h.get("content-type"), path)
        self.error(dash("GET", "no-such-view", session=s), 404, "not_found")

    # ---- numbers: exact, or a 400 naming the field ------------------------------------------

    def test_money_exact_or_refused_naming_the_field(self):
        cust = new_customer("0.000001")
        path = "customers/%s/credits" % cust

        def credit(usd):
            return admin("POST", path, '{"usd": %s, "reason": "edges"}' % usd)

        # 2^53 + 1 pico-USD, as a string: exact (a double would make it ...992)
        st, _, b = credit('"9007.199254740993"')
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["amount_pico"], "9007199254740993")
        self.assertEqual(json.loads(b)["balance_pico"], str(9007199254740993 + 10**6))
        st, _, b = credit('"1.5"')
        self.assertEqual((st, json.loads(b)["amount_pico"]), (200, "1500000000000"))
        st, _, b = credit('"0001"')  # leading zeros: the same number
        self.assertEqual((st, json.loads(b)["amount_pico"]), (200, "1000000000000"))
        st, _, b = credit('"9223372.036854775807"')  # the largest: int64 pico-USD
        self.assertEqual((st, json.loads(b)["amount_pico"]), (200, "9223372036854775807"))
        before = q("SELECT balance_pico FROM customers WHERE name = %s", cust)[0][0]
        for usd in ("9007199254740993", '"9007199254740993"', "1.5", "1e3", '"1e3"', '"-5"', '"0"', "0",
                    '"' + "1" + "0" * 30 + '"', "1" + "0" * 400, '"9223372.036854775808"', '"0.0000000000001"',
                    '" 5"', '"+5"', '".5"', '"5."', '"0x10"', "true", "[]", '"\\uff11"'):
            with self.subTest(usd=usd):
                self.error(credit(usd), 400, param="usd")
        self.assertEqual(q("SELECT balance_pico FROM customers WHERE name = %s", cust)[0][0], before)
        # a member given twice: which one would count is the reader's guess
        self.error(admin("POST", path, '{"usd": "1", "usd": "1000"}'), 400, "invalid_json", "usd")
        self.assertEqual(q("SELECT balance_pico FROM customers WHERE name = %s", cust)[0][0], before)
        # spending limits: int64 pico-USD, exact, or refused by name
        lp = "customers/%s/spending-limits" % cust
        st, _, b = admin("POST", lp, {"daily_limit_usd": "9223372.036854775807"})
        self.assertEqual((st, json.loads(b)["daily_limit_pico"]), (200, "9223372036854775807"), b)
        for v in ('"9223372.036854775808"', "5", '"-1"', '"1e3"'):
            with self.subTest(limit=v):
                self.error(admin("POST", lp, '{"monthly_limit_usd": %s}' % v), 400, "invalid_amount",
                           "monthly_limit_usd")

    def test_counters_exact_or_refused_naming_the_field(self):
        cust = new_customer()
        kp = "customers/%s/keys" % cust
        # written as integers: exact up to the field's maximum
        for text, want in (("2147483647", 2147483647), ('"007"', 7), ("0", 0), ('"0"', 0)):
            with self.subTest(rpm=text):
                st, _, b = admin("POST", kp, '{"rpm": %s}' % text)
                self.assertEqual((st, json.loads(b)["rpm"]), (201, want), b)
        n = q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id WHERE c.name = %s",
              cust)[0][0]
        # anything else is refused by name: a double would read 60.000000000000001 and 6e1 as 60
        bad = ("60.000000000000001", "60.0", "6e1", "1e3", "-0", "-1", "1.5", '"1.5"', '"1e3"', '"-1"',
               "2147483648", "9007199254740993", '"9007199254740993"', "1" + "0" * 400, "true", '""', '" 7"')
        for field in ("rpm", "tpm", "concurrency"):
            for text in bad:
                with self.subTest(field=field, value=text):
                    self.error(admin("POST", kp, '{"%s": %s}' % (field, text)), 400, "invalid_value", field)
        self.assertEqual(q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id"
                           " WHERE c.name = %s", cust)[0][0], n, "no key made by a refused request")
        kid = new_key(cust, {"rpm": 5})["id"]
        for path, field, text in (("keys/%d" % kid, "tpm", "100.0"), ("keys/%d" % kid, "expires_in_seconds", "86400.5"),
                                  ("keys/%d" % kid, "expires_in_seconds", "8.64e4"),
                                  ("keys/%d/rotate" % kid, "grace_seconds", "3600.0"),
                                  ("keys/%d/rotate" % kid, "grace_seconds", "-0"),
                                  ("customers/%s/limits" % cust, "rpm", "1e2")):
            with self.subTest(path=path, field=field, value=text):
                self.error(admin("POST", path, '{"%s": %s}' % (field, text)), 400, "invalid_value", field)
        self.assertEqual(q("SELECT rpm, tpm, replaced_by FROM api_keys WHERE id = %s", kid)[0], (5, 0, None))
        st, _, b = admin("PATCH", "keys/%d" % kid, {"tpm": 2147483647, "expires_in_seconds": 86400})
        self.assertEqual((st, json.loads(b)["tpm"]), (200, 2147483647), b)

    # ---- hostile strings ----------------------------------------------------------------------

    def test_hostile_strings(self):
        # U+0000 inside a name: the C string ended there, and "ab" was made
        stem = "edges-" + uuid.uuid4().hex[:8]
        self.error(admin("POST", "customers", '{"name": "%s\\u0000evil"}' % stem), 400, "invalid_value", "name")
        self.assertEqual(q("SELECT count(*) FROM customers WHERE name = %s", stem)[0][0], 0)
        cust = new_customer()
        kp = "customers/%s/keys" % cust
        n = q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id WHERE c.name = %s",
              cust)[0][0]
        self.error(admin("POST", kp, '{"name": "ci\\u0000prod"}'), 400, "invalid_value", "name")
        self.error(admin("POST", kp, '{"models": ["m\\u0000x"]}'), 400, "invalid_value", "models")
        self.error(admin("POST", "customers/%s/credits" % cust, '{"usd": "1", "reason": "x\\u0000y"}'), 400,
                   "invalid_value", "reason")
        self.error(admin("POST", kp, b'{"name": "ci\xff"}'), 400, "invalid_json")  # invalid UTF-8
        self.error(admin("POST", kp, '{"name": "\\ud800"}'), 400, "invalid_json")  # a lone surrogate
        self.error(admin("POST", kp, {"name": "n" * 201}), 400, "invalid_value", "name")
        self.error(admin("POST", kp, {"name": "n" * 100000}), 413, "request_too_large")
        self.assertEqual(q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id"
                           " WHERE c.name = %s", cust)[0][0], n)
        # what is allowed comes back byte for byte
        odd = "<script>alert(1)</script> \\ \" \u2028 \U0001F600 \u00e9 %s" + "x" * 150
        st, _, b = admin("POST", kp, {"name": odd})
        self.assertEqual(st, 201, b)
        k = json.loads(b)
        self.assertEqual(k["name"], odd)
        self.assertEqual(q("SELECT name FROM api_keys WHERE id = %s", k["id"])[0][0], odd)

        # the dashboard reads its bodies the same way
        s = sign_in(k["key"])
        self.error(dash("POST", "keys", '{"name": "a\\u0000b"}', session=s), 400, "invalid_value", "name")
        self.error(dash("POST", "keys", b'{"name": "a\xffb"}', session=s), 400, "invalid_json")
        self.error(dash("POST", "keys", '{"daily_limit_usd": 5}', session=s), 400, "invalid_amount",
                   "daily_limit_usd")
        self.error(dash("POST", "keys", '{"name": "a", "name": "b"}', session=s), 400, "invalid_json", "name")
        # a key with something after a NUL signed in as the key (the C string ended at the NUL)
        self.error(dash("POST", "login", '{"api_key": "%s\\u0000junk"}' % k["key"]), 400, "invalid_value",
                   "api_key")
        self.assertEqual(q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id"
                           " WHERE c.name = %s", cust)[0][0], n + 1)

    def test_control_characters_reach_no_terminal(self):
        """A key's name is the one free text a customer writes (from the dashboard) that the operator
        reads in a terminal (tollgatectl key list). Control characters in it are refused by both APIs,
        and tollgatectl shows any that are stored (a row from before) as '?': before 2026-12-01 a name
        "\x1b[2J\r\n..." cleared the operator's terminal and forged a table row."""
        cust = new_customer()
        (cid,), = q("SELECT id FROM customers WHERE name = %s", cust)
        key = new_key(cust)
        s = sign_in(key["key"])
        n = q("SELECT count(*) FROM api_keys WHERE customer_id = %s", cid)[0][0]
        for bad in (r"a\u001b[2Jb", r"a\u001b]0;owned\u0007", r"a\r\nb", r"a\nb", r"a\tb", r"a\u007fb",
                    r"a\u009b31mb", r"a\u0085b"):
            with self.subTest(name=bad):
                body = '{"name": "%s"}' % bad  # JSON escapes: the body itself is valid JSON
                self.error(dash("POST", "keys", body, session=s), 400, "invalid_value", "name")
                self.error(admin("POST", "customers/%s/keys" % cust, body), 400, "invalid_value", "name")
                self.error(admin("PATCH", "keys/%d" % key["id"], body), 400, "invalid_value", "name")
        self.assertEqual(q("SELECT count(*) FROM api_keys WHERE customer_id = %s", cid)[0][0], n)
        self.assertEqual(q("SELECT name FROM api_keys WHERE id = %s", key["id"])[0][0], "")
        # what a terminal shows is harmless even for a name stored before the check
        evil = "\x1b[2J\r\nforged\x07\u009b1m\u202e"
        q("UPDATE api_keys SET name = %s WHERE id = %s RETURNING 1", evil, key["id"])
        out = ctl_run("key", "list", "--customer", cust).stdout
        for ch in ("\x1b", "\x07", "\r", "\u009b", "\u202e"):
            self.assertNotIn(ch, out)
        self.assertEqual(len(out.split("\n")), n + 2, out)  # the heading, a line per key, the last "\n"
        self.assertIn("?[2J??forged???1", out)  # the NAME column: its first 16 bytes
        self.assertEqual([k["name"] for k in json.loads(ctl_run("key", "list", "--customer", cust, "--json").stdout)["data"]
                          if k["id"] == key["id"]], [evil])  # --json: the exact name, JSON-escaped

    def test_dashboard_login_with_a_malformed_key_costs_no_statement(self):
        """A key with the wrong shape or checksum is refused before any statement, as /v1
        refuses it: the login statement would have counted it in dash_login_throttle."""
        good = new_key(new_customer())["key"]
        flip = good[:-1] + ("A" if good[-1] != "A" else "B")  # its checksum broken

        def row():
            return q("SELECT failures, window_start, locked_until FROM dash_login_throttle"
                     " WHERE subject = 'ip:127.0.0.1'")
        before = row()
        for bad in (flip, "sk-tg1-" + "A" * 46, "garbage", "sk-" + "g" * 48, good + "x"):
            with self.subTest(key=bad):
                self.error(dash("POST", "login", {"api_key": bad}), 401, "invalid_credentials")
        self.assertEqual(row(), before, "a malformed key reached the login statement")
        self.assertEqual(dash("POST", "login", {"api_key": good})[0], 200)

    # ---- who may do what ---------------------------------------------------------------------

    def test_every_admin_endpoint_refuses_a_bad_token_and_readonly_writes(self):
        cust = new_customer()
        kid = new_key(cust)["id"]
        rid = "00000000-0000-7000-8000-000000000000"
        ro_name, gone_name = "edges-ro-" + uuid.uuid4().hex[:6], "edges-gone-" + uuid.uuid4().hex[:6]
        tokens = {}
        for name, role in ((ro_name, "readonly"), (gone_name, "admin")):
            st, _, b = admin("POST", "tokens", {"name": name, "role": role})
            self.assertEqual(st, 201, b)
            tokens[name] = json.loads(b)["token"]
        self.assertEqual(admin("POST", "tokens/%s/revoke" % gone_name, {})[0], 200)
        reads = ["customers", "customers/" + cust, "customers/%s/balance" % cust, "customers/%s/ledger" % cust,
                 "customers/%s/usage" % cust, "customers/%s/limits" % cust, "customers/%s/keys" % cust,
                 "customers/%s/prices" % cust, "customers/%s/invoice?month=2026-01" % cust, "prices", "tokens",
                 "dashboard-users", "invoices?month=2026-01", "reconcile", "settlement",
                 "reports/usage?customer=" + cust, "reports/top", "reports/balance?customer=" + cust, "usage/" + rid]
        writes = [("POST", "customers", {"name": "edges-x" + uuid.uuid4().hex[:6]}),
                  ("POST", "customers/%s/credits" % cust, {"usd": "1"}),
                  ("POST", "customers/%s/adjustments" % cust, {"usd": "1", "reason": "x"}),
                  ("POST", "customers/%s/refunds" % cust, {"usd": "0.1", "reason": "x"}),
                  ("POST", "customers/%s/spending-limits" % cust, {"daily_limit_usd": "1"}),
                  ("PATCH", "customers/%s/limits" % cust, {"rpm": 1}),
                  ("POST", "customers/%s/prices" % cust, {"model": "m", "percent": "50"}),
                  ("POST", "customers/%s/keys" % cust, {}), ("PATCH", "keys/%d" % kid, {"rpm": 1}),
                  ("POST", "keys/%d/rotate" % kid, {}), ("POST", "keys/%d/revoke" % kid, {}),
                  ("DELETE", "keys/%d" % kid, None),
                  ("POST", "prices", {"model": "m", "input_cache_miss": "1", "input_cache_hit": "1", "output": "1"}),
                  ("POST", "tokens", {"name": "edges-t" + uuid.uuid4().hex[:6]}),
                  ("POST", "tokens/%s/revoke" % ro_name, {}), ("DELETE", "tokens/" + ro_name, None),
                  ("POST", "dashboard-users", {"login": "edges-u" + uuid.uuid4().hex[:6], "role": "operator"}),
                  ("POST", "invoices/finalize", {"month": "2026-01", "customer": cust})]
        audit = q("SELECT count(*) FROM admin_audit")[0][0]
        for tok in (None, "", "wrong", "tga_" + "0" * 48, tokens[gone_name], TOKEN + "x", TOKEN[:-1]):
            for path in reads:
                with self.subTest(token=tok, path=path):
                    self.error(admin("GET", path, token=tok), 401, "invalid_admin_token")
            for method, path, body in writes:
                with self.subTest(token=tok, method=method, path=path):
                    self.error(admin(method, path, body, token=tok), 401, "invalid_admin_token")
        for path in reads:
            with self.subTest(readonly=path):
                self.assertEqual(admin("GET", path, token=tokens[ro_name])[0], 200 if "usage/" not in path else 404)
        for method, path, body in writes + [("HEAD", "customers", None), ("OPTIONS", "customers", None)]:
            with self.subTest(readonly=path, method=method):
                if method == "HEAD":
                    st, _, _ = admin(method, path, body, token=tokens[ro_name])
                    self.assertEqual(st, 403)
                    continue
                self.error(admin(method, path, body, token=tokens[ro_name]), 403, "insufficient_role")
        self.assertEqual(q("SELECT count(*) FROM admin_audit")[0][0], audit, "a refused token wrote something")
        self.assertEqual(q("SELECT revoked_at IS NULL, replaced_by FROM api_keys WHERE id = %s", kid)[0], (True, None))

    def test_dashboard_sessions_end(self):
        cust = new_customer()
        key = new_key(cust)
        s = sign_in(key["key"])
        self.assertEqual(dash("GET", "overview", session=s)[0], 200)
        # rotated with no grace: the old key's session ends at once
        st, _, b = admin("POST", "keys/%d/rotate" % key["id"], {"grace_seconds": 0})
        self.assertEqual(st, 201, b)
        st, h, b = dash("GET", "overview", session=s)
        self.error((st, h, b), 401, "not_signed_in")
        self.assertIn("Max-Age=0", h.get("set-cookie", ""))
        self.error(dash("POST", "keys", {}, session=s), 401, "not_signed_in")
        # revoked by the operator, or past its expiry: the key's session ends with it, at once
        # (the dashboard reads the key's row on every call; no cached session outlives the key)
        key = new_key(cust)
        s = sign_in(key["key"])
        self.assertEqual(dash("GET", "usage", session=s)[0], 200)
        st, _, b = admin("POST", "keys/%d/revoke" % key["id"], {})
        self.assertEqual(st, 200, b)
        self.error(dash("GET", "usage", session=s), 401, "not_signed_in")
        self.assertEqual(dash("GET", "session", session=s)[2], b'{"signed_in":false}')
        key = new_key(cust, {"expires_in_seconds": 1})
        s = sign_in(key["key"])
        self.assertEqual(dash("GET", "keys", session=s)[0], 200)
        time.sleep(1.2)
        self.error(dash("GET", "keys", session=s), 401, "not_signed_in")
        self.error(dash("POST", "keys/%d/revoke" % key["id"], {}, session=s), 401, "not_signed_in")
        # a session past its expiry (12 h, moved back here) ends; the new key signs in
        s2 = sign_in(new_key(cust)["key"])
        self.assertEqual(dash("GET", "keys", session=s2)[0], 200)
        q("UPDATE dash_sessions SET expires_at = now() - interval '1 second' WHERE csrf = %s RETURNING 1", s2[1])
        self.error(dash("GET", "keys", session=s2), 401, "not_signed_in")
        # a cookie that is no session: 401, never another customer's data
        self.error(dash("GET", "overview", session=("0" * 64, "0" * 64)), 401, "not_signed_in")
        self.assertEqual(dash("GET", "session", session=("f" * 64, "x"))[2], b'{"signed_in":false}')

    def test_dashboard_restricted_key_makes_no_wider_key(self):
        """A session signed in with a key that has limits (rate, models, spending, expiry) makes no
        key and revokes none but its own: before, a key limited to 1 rpm, one model and $0.01 a
        day made an unlimited, never-expiring key from the dashboard, which outlived it."""
        cust = new_customer()
        (cid,), = q("SELECT id FROM customers WHERE name = %s", cust)
        other = new_key(cust)
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        for limits in ({"rpm": 1}, {"tpm": 100}, {"concurrency": 1}, {"models": [E["TG_TEST_MODEL"]]},
                       {"daily_limit_usd": "0.01"}, {"monthly_limit_usd": "1"}, {"expires_at": soon}):
            with self.subTest(limits=limits):
                k = new_key(cust, limits)
                s = sign_in(k["key"])
                n = q("SELECT count(*) FROM api_keys WHERE customer_id = %s", cid)[0][0]
                self.error(dash("POST", "keys", {"name": "escalated"}, session=s), 403, "key_restricted")
                self.error(dash("POST", "keys/%d/revoke" % other["id"], {}, session=s), 403, "key_restricted")
                self.assertEqual(q("SELECT count(*) FROM api_keys WHERE customer_id = %s", cid)[0][0], n)
                self.assertEqual(q("SELECT revoked_at FROM api_keys WHERE id = %s", other["id"])[0][0], None)
                self.assertEqual(dash("GET", "keys", session=s)[0], 200)  # it still reads
                self.assertIs(json.loads(dash("GET", "session", session=s)[2])["key_restricted"], True)
                # its own key it may revoke (a leaked key killed by whoever holds it)
                self.assertEqual(dash("POST", "keys/%d/revoke" % k["id"], {}, session=s)[0], 200)
        # an unrestricted key manages keys as before; the page learns which it is from the session
        st, _, b = dash("POST", "login", {"api_key": new_key(cust, {"rpm": 1})["key"]})
        self.assertEqual((st, json.loads(b)["key_restricted"], json.loads(b)["signed_in_with"]), (200, True, "api_key"))
        s = sign_in(new_key(cust)["key"])
        self.assertIs(json.loads(dash("GET", "session", session=s)[2])["key_restricted"], False)
        st, _, b = dash("POST", "keys", {"name": "plain"}, session=s)
        self.assertEqual(st, 200, b)
        self.assertEqual(dash("POST", "keys/%d/revoke" % json.loads(b)["id"], {}, session=s)[0], 200)

    def test_dashboard_filters_are_never_dropped(self):
        """A filter the view cannot take is a 400 naming it, never quietly every row: a model
        name over 200 bytes used to read as no filter at all."""
        s = sign_in(new_key(new_customer())["key"])
        for view in ("usage", "requests"):
            with self.subTest(view=view):
                self.error(dash("GET", view + "?model=" + "m" * 201, session=s), 400, "invalid_value", "model")
                self.assertEqual(dash("GET", view + "?model=" + "m" * 200, session=s)[0], 200)
                self.error(dash("GET", view + "?key=1x", session=s), 400, "invalid_value", "key")
        self.error(dash("GET", "requests?limit=501", session=s), 400, "invalid_value", "limit")
        self.error(dash("GET", "requests?before=1,x", session=s), 400, "invalid_value", "before")
        self.error(dash("GET", "usage?by=week", session=s), 400, "invalid_value", "by")

    # ---- idempotency --------------------------------------------------------------------------

    def race(self, lock_sql, statement, method, path, body, n=3):
        """n requests with one Idempotency-Key, all inside their write statement at once (n below
        the admin API's 4 PostgreSQL connections): a
        transaction holding lock_sql keeps them waiting (seen in pg_stat_activity, not timed)
        until every one has passed its look-up, then lets them go.  statement: how the write's
        text starts (pg_stat_activity keeps only its first 1 KiB).  -> their answers."""
        key = "edges-" + uuid.uuid4().hex
        blocker = psycopg2.connect(E["TG_TEST_PG"])
        answers = []
        try:
            cur = blocker.cursor()
            cur.execute(lock_sql)

            def one():
                answers.append(admin(method, path, body, headers={"Idempotency-Key": key}))
            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads:
                t.start()
            watch = psycopg2.connect(E["TG_TEST_PG"])
            watch.autocommit = True
            wc = watch.cursor()
            deadline = time.time() + 60
            while True:
                wc.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                           " AND starts_with(query, %s)", (statement,))
                if wc.fetchone()[0] == n:
                    break
                self.assertLess(time.time(), deadline, "the writes never all waited on the lock")
                time.sleep(0.02)
            watch.close()
        finally:
            blocker.rollback()
            blocker.close()
        for t in threads:
            t.join(timeout=60)
        self.assertEqual(len(answers), n)
        return answers

    def test_idempotent_race_every_answer_is_the_winners(self):
        # a customer made 3 times at once with one key: one customer, 3 identical 200s (the
        # losers failed on the name the winner took: they answered 409 instead of the replay)
        name = "edges-" + uuid.uuid4().hex[:10]
        answers = self.race("LOCK TABLE customers IN SHARE MODE", "WITH c AS (INSERT INTO customers", "POST", "customers",
                            {"name": name, "credit_usd": "1"})
        self.assertEqual([a[0] for a in answers], [200] * len(answers), [a[2] for a in answers])
        self.assertEqual(len({a[2] for a in answers}), 1)
        self.assertEqual(sum(a[1].get("idempotent-replayed") == "true" for a in answers), len(answers) - 1)
        self.assertEqual(q("SELECT count(*), sum(balance_pico) FROM customers WHERE name = %s", name)[0],
                         (1, 10**12))
        # a refund of 0.6 of a balance of 1, 3 times at once with one key: refunded once, 3 x 200
        # (the losers found the balance too small for a second refund: they answered 400)
        cust = new_customer("1")
        answers = self.race("SELECT 1 FROM customers WHERE name = '%s' FOR UPDATE" % cust,
                            "WITH c AS (SELECT * FROM customers WHERE name = $1 FOR UPDATE)", "POST",
                            "customers/%s/refunds" % cust, {"usd": "0.6", "reason": "race"})
        self.assertEqual([a[0] for a in answers], [200] * len(answers), [a[2] for a in answers])
        self.assertEqual(len({a[2] for a in answers}), 1)
        self.assertEqual(q("SELECT balance_pico FROM customers WHERE name = %s", cust)[0][0], 4 * 10**11)
        self.assertEqual(q("SELECT count(*) FROM ledger l JOIN customers c ON c.id = l.customer_id"
                           " WHERE c.name = %s AND l.kind = 'refund'", cust)[0][0], 1)
        # a failed write still stores nothing: the same key, alone, after a real conflict
        st, _, b = admin("POST", "customers", {"name": name}, headers={"Idempotency-Key": "edges-" + name})
        self.error((st, _, b), 409, "already_exists")
        self.assertEqual(q("SELECT count(*) FROM admin_idempotency WHERE key = %s", "edges-" + name)[0][0], 0)

    def test_writes_held_on_a_lock_fail_whole(self):
        """A write whose customer row another session holds past the deadline: the admin API and
        the dashboard answer 503 database_busy, and nothing is written once the lock goes (before,
        the backend waited on and committed after a 503: a credit applied, a key made; the
        dashboard answered 500 for the lock timeout the gateway's sessions now have)."""
        cust = new_customer("1")
        session = sign_in(new_key(cust)["key"])
        (cid,), = q("SELECT id FROM customers WHERE name = %s", cust)
        holder = psycopg2.connect(E["TG_TEST_PG"])
        try:
            holder.cursor().execute("SELECT id FROM customers WHERE id = %s FOR UPDATE", (cid,))
            credit = admin("POST", "customers/%s/credits" % cust, {"usd": "2"})
            key = dash("POST", "keys", {"name": "held"}, session=session)
        finally:
            holder.rollback()
            holder.close()
        time.sleep(1)  # what a backend left waiting would do now that the lock is gone
        self.assertEqual(q("SELECT balance_pico FROM customers WHERE id = %s", cid)[0][0], 10**12)
        self.assertEqual(q("SELECT count(*) FROM api_keys WHERE customer_id = %s AND name = 'held'", cid)[0][0], 0)
        self.error(credit, 503, "database_busy")
        self.error(key, 503, "database_busy")


class Close(Checks):
    """Closing a customer, on two gateway instances of our own (ports: the stack's + 50, + 51)."""

    @classmethod
    def setUpClass(cls):
        cls.gw = Instances("edges-instances", list(PORTS)).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def notices(self):
        return [int(self.gw.metrics(i)["tollgate_key_invalidations_total"]) for i in range(len(PORTS))]

    def after_notice(self, before, what):
        """Wait until every instance has had a key-cache notice since `before`."""
        deadline = time.time() + 60
        while not all(n > b for n, b in zip(self.notices(), before)):
            self.assertLess(time.time(), deadline, "no notice reached every instance after " + what)
            time.sleep(0.02)

    def models(self, port, key):
        st, _, b = https(port, "GET", "/v1/models", key, timeout=TIMEOUT)
        return st, json.loads(b)

    def test_close_customer(self):
        cust = new_customer("5")
        k1, k2 = new_key(cust), new_key(cust)
        login = "edges-" + uuid.uuid4().hex[:8]
        st, _, b = admin("POST", "dashboard-users", {"login": login, "customer": cust})
        self.assertEqual(st, 201, b)
        st, _, b = dash("POST", "login", {"login": login, "password": json.loads(b)["password"]})
        self.assertEqual(st, 200, b)
        sessions = [sign_in(k1["key"])]
        for port in PORTS:  # both keys cached on both instances
            for k in (k1, k2):
                self.assertEqual(self.models(port, k["key"])[0], 200)
        before = self.notices()
        st, _, b = admin("POST", "customers/%s/close" % cust, {})
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        self.assertIsNotNone(j["closed_at"])
        self.assertEqual((j["keys_revoked"], j["logins_revoked"], j["sessions_ended"]), (2, 1, 2), j)
        self.after_notice(before, "the close")
        # each event loop of an instance has its own key cache and notice
        # connection, and the counter is their sum: wait for the refusal itself
        deadline = time.time() + 60
        for port in PORTS:
            for k in (k1, k2):
                st, body = self.models(port, k["key"])
                while st != 401 and time.time() < deadline:
                    time.sleep(0.02)
                    st, body = self.models(port, k["key"])
                self.assertEqual(st, 401, body)
                self.assertEqual(body["error"]["code"], "invalid_api_key", body)
        for sess in sessions:
            self.error(dash("GET", "overview", session=sess), 401, "not_signed_in")
        # closing again changes nothing; closing is final
        st, _, b = admin("POST", "customers/%s/close" % cust, {})
        self.assertEqual((st, json.loads(b)["closed_at"], json.loads(b)["keys_revoked"]), (200, j["closed_at"], 0))
        with self.assertRaises(psycopg2.Error):
            q("UPDATE customers SET closed_at = NULL WHERE name = %s RETURNING 1", cust)
        # a key that comes back (here: un-revoked by hand) is still refused: admission reads closed_at
        before = self.notices()
        q("UPDATE api_keys SET revoked_at = NULL WHERE id = %s RETURNING 1", k1["id"])
        self.after_notice(before, "the un-revocation")
        for port in PORTS + (GW.port,):
            st, body = self.models(port, k1["key"])
            self.assertEqual(st, 401, body)
            self.assertEqual(body["error"]["code"], "invalid_api_key", body)
        self.error(dash("POST", "login", {"api_key": k1["key"]}), 401, "invalid_credentials")
        # nothing new for a closed customer: keys (made or rotated), dashboard logins
        self.error(admin("POST", "customers/%s/keys" % cust, {}), 409, "conflict")
        self.error(admin("POST", "keys/%d/rotate" % k1["id"], {}), 409, "conflict")
        self.error(admin("POST", "dashboard-users", {"login": login + "x", "customer": cust}), 409, "conflict")
        self.assertEqual(q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id"
                           " WHERE c.name = %s", cust)[0][0], 2)
        # the money stays and can be paid back
        st, _, b = admin("POST", "customers/%s/refunds" % cust, {"usd": "5", "reason": "account closed"})
        self.assertEqual((st, json.loads(b)["balance_pico"]), (200, "0"), b)
        self.assertEqual(q("SELECT actor, after->>'keys_revoked' FROM admin_audit WHERE action = 'customer.close'"
                           " AND target = %s ORDER BY id", "customer:" + cust), [("root", "2"), ("root", "0")])
        self.assertEqual(q("SELECT count(*) FROM ledger_mismatch")[0][0], 0)

    def test_close_with_tollgatectl(self):
        cust = new_customer()
        new_key(cust)
        out = ctl("customer", "close", cust)
        self.assertRegex(out, r"closed customer %s at .*: 1 keys and 0 dashboard logins revoked" % cust)
        j = json.loads(ctl("--json", "customer", "show", cust))
        self.assertIsNotNone(j["closed_at"])
        r = ctl_run("customer", "close", "edges-nobody-" + uuid.uuid4().hex[:6], check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no such customer", r.stderr)


class OpenAdmin(Checks):
    """An admin listener on a non-loopback address (0.0.0.0, on an instance of our own at the stack's
    port + 52, admin + 152): /metrics there needs an admin token, as every route but /health does.
    Before, it answered anyone who could reach the port, with only a warning at start."""

    PORT = GW.port + 52

    @classmethod
    def setUpClass(cls):
        cls.gw = Instances("edges-open-admin", [cls.PORT],
                           admin_listen="0.0.0.0:%d" % (cls.PORT + ADMIN_OFFSET)).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def get(self, method, path, token=None, port=None):
        h = {"Authorization": "Bearer " + token} if token is not None else {}
        return send(http.client.HTTPConnection("127.0.0.1", port or self.PORT + ADMIN_OFFSET, timeout=TIMEOUT),
                    method, path, None, h)

    def test_metrics_need_a_token_off_loopback(self):
        ro = "edges-scrape-" + uuid.uuid4().hex[:6]
        st, _, b = admin("POST", "tokens", {"name": ro, "role": "readonly"})
        self.assertEqual(st, 201, b)
        ro = json.loads(b)["token"]
        for tok in (None, "", "wrong", TOKEN + "x", "tga_" + "0" * 48):
            with self.subTest(token=tok):
                e = self.error(self.get("GET", "/metrics", tok), 401, "invalid_admin_token")
                self.assertNotIn("tollgate_", e["message"])
                st, _, b = self.get("HEAD", "/metrics", tok)
                self.assertEqual((st, b), (401, b""))
        for tok in (TOKEN, ro):  # the bootstrap token, or a readonly one (a scraper's)
            st, h, b = self.get("GET", "/metrics", tok)
            self.assertEqual(st, 200, b)
            self.assertTrue(h["content-type"].startswith("text/plain"), h)
            self.assertIn(b"\ntollgate_connections ", b)
            st, h, b = self.get("HEAD", "/metrics", tok)
            self.assertEqual((st, b), (200, b""))
            self.assertGreater(int(h["content-length"]), 0)
            self.allow(self.get("POST", "/metrics", tok), ("GET", "HEAD"))
        self.assertEqual(self.get("GET", "/health")[0], 200)  # a load balancer's probe needs none
        self.error(self.get("GET", "/admin/v1/customers"), 401, "invalid_admin_token")
        with open(os.path.join(self.gw.dir, "gw0.log")) as f:
            self.assertIn("not a loopback address: /metrics there needs the admin token", f.read())
        # on loopback (the stack's, as `make run` has it) /metrics stays a scraper's plain GET
        st, _, b = self.get("GET", "/metrics", port=ADMIN.port)
        self.assertEqual(st, 200, b)
        self.assertIn(b"\ntollgate_connections ", b)


class Ctl(Checks):
    """build/tollgatectl typed as people type it: options before or after the positional
    arguments (getopt's order), --option=value, and the contract's bad input refused by name,
    with nothing half done and nothing on stdout."""

    def refused(self, *args, code=1, says=None):
        r = ctl_run(*args, check=False)
        self.assertEqual(r.returncode, code, (args, r.stdout, r.stderr))
        self.assertEqual(r.stdout, "", args)  # errors go to stderr only, --json or not
        self.assertTrue(r.stderr.startswith("tollgatectl: "), (args, r.stderr))
        if says:
            self.assertIn(says, r.stderr, args)
        return r

    def test_to_date_includes_its_day(self):
        """--to as a date alone is that whole UTC day, on every command with a period, as the
        dashboard's To ("from 2026-11-01 to 2026-11-30" is all of November); before, it was the
        midnight starting it, so --from D --to D was always empty and the last day was left out.
        A --to with a time or in Unix seconds is still the end, not included."""
        cust = "edges-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", cust, "--credit-usd", "1")
        row = json.loads(ctl("--json", "credit", "list", "--customer", cust))["data"][0]
        day = row["created_at"][:10]
        t = time.mktime(time.strptime(day, "%Y-%m-%d")) - time.timezone
        before, after = (time.strftime("%Y-%m-%d", time.gmtime(t + s)) for s in (-86400, 86400))
        for to in (day, day.replace("-", "")):
            j = json.loads(ctl("--json", "credit", "list", "--customer", cust, "--from", day, "--to", to))
            self.assertEqual(([r["id"] for r in j["data"]], j["to"]), ([row["id"]], after + "T00:00:00+00:00"), to)
        for to in (before, day + "T00:00:00Z", str(int(t))):
            j = json.loads(ctl("--json", "credit", "list", "--customer", cust, "--from", before, "--to", to))
            self.assertEqual(j["data"], [], to)
        for cmd in (["usage", "--customer", cust], ["reconcile"], ["report", "usage", "--customer", cust],
                    ["report", "top"], ["report", "balance", "--customer", cust]):
            j = json.loads(ctl("--json", *cmd, "--from", day, "--to", day))
            self.assertEqual((j["from"], j["to"]), (day + "T00:00:00+00:00", after + "T00:00:00+00:00"), cmd)
        self.assertEqual(json.loads(ctl("--json", "report", "balance", "--customer", cust, "--from", day,
                                        "--to", day, "--by", "day"))["data"][0]["balance_usd"], "1.000000")
        # a date that is no date goes to the API as typed, which refuses it naming to
        self.refused("credit", "list", "--customer", cust, "--to", "2026-02-30", says="to ")
        self.assertIn("that whole UTC day", ctl_run("--help", check=False).stdout)

    def test_options_in_any_order_and_with_equals(self):
        # before 2026-12-01 an option before NAME or KEY_ID was "NAME is required" (exit 2), and
        # --customer=NAME, --credit-usd=5, --idempotency-key=K were "unexpected argument"
        c1, c2 = "edges-" + uuid.uuid4().hex[:10], "edges-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", "--credit-usd", "2.5", c1)
        ctl("customer", "create", c2, "--credit-usd=0.000001")
        self.assertEqual(json.loads(ctl("--json", "balance", "--customer=" + c1))["balance_pico"], "2500000000000")
        self.assertEqual(json.loads(ctl("balance", "--json", "--customer", c2))["balance_pico"], "1000000")
        key = ctl("key", "create", "--customer=" + c1, "--rpm=9", "--tpm", "5000").strip().splitlines()[-1]
        self.assertTrue(key.startswith("sk-tg1-"), key)
        k = json.loads(ctl("--json", "key", "list", "--customer", c1))["data"]
        self.assertEqual([(x["rpm"], x["tpm"]) for x in k], [(9, 5000)])
        ctl("key", "update", "--rpm", "4", str(k[0]["id"]))
        ctl("customer", "limits", "--concurrency=3", c1)
        self.assertEqual(json.loads(ctl("--json", "customer", "limits", c1))["concurrency"], 3)
        self.assertEqual(json.loads(ctl("--json", "key", "list", "--customer", c1))["data"][0]["rpm"], 4)
        ik = "edges-" + uuid.uuid4().hex
        for _ in range(2):  # the same write twice with --idempotency-key=K: done once
            ctl("--idempotency-key=" + ik, "credit", "add", "--customer", c2, "--usd", "1")
        self.assertEqual(json.loads(ctl("--json", "balance", "--customer", c2))["balance_pico"], "1000001000000")
        ctl("key", "revoke", str(k[0]["id"]))
        # what is left over is named: an unknown option, before or after NAME
        c3 = "edges-" + uuid.uuid4().hex[:10]
        self.refused("customer", "create", "--bogus", c3, code=2, says="unexpected argument '--bogus'")
        self.refused("customer", "create", c3, "--bogus", code=2, says="unexpected argument '--bogus'")
        self.refused("customer", "create", code=2, says="NAME is required")
        self.refused("key", "revoke", "--now", str(k[0]["id"]), code=2, says="unexpected argument '--now'")
        self.assertEqual(q("SELECT count(*) FROM customers WHERE name = %s", c3)[0][0], 0)

    def test_key_create_replayed_names_the_key(self):
        """A key create replayed with its --idempotency-key has no key to print (it is shown once):
        the error names the key made and says why, instead of 'the server did not return the key'."""
        cust = new_customer()
        ik = "edges-" + uuid.uuid4().hex
        key = ctl("--idempotency-key", ik, "key", "create", "--customer", cust).strip().splitlines()[-1]
        kid = json.loads(ctl("--json", "key", "list", "--customer", cust))["data"][0]["id"]
        r = self.refused("--idempotency-key", ik, "key", "create", "--customer", cust,
                      says="key id %d (%s) was made by the first request with this --idempotency-key" % (kid, key[:15]))
        self.assertNotIn("did not return", r.stderr)
        self.assertEqual(len(json.loads(ctl("--json", "key", "list", "--customer", cust))["data"]), 1)

    def test_price_set_says_whether_it_is_in_force(self):
        """price set --json's active_now is whether admission uses the row now, as price list says;
        before 2026-12-01 the answer could not see the row it inserted: null for a new model's
        first price, false for a price in force at once."""
        model = "edges-m-" + uuid.uuid4().hex[:8]

        def price_set(*extra):
            j = json.loads(ctl("--json", "price", "set", "--model", model, "--input-miss", "3", "--input-hit", "1",
                               "--output", "5", *extra))
            listed = {p["id"]: p["active_now"]
                      for p in json.loads(ctl("--json", "price", "list", "--history"))["data"] if p["model"] == model}
            self.assertEqual(j["active_now"], listed[j["id"]], (extra, j))
            return j["active_now"]

        self.assertIs(price_set("--effective-from", "2099-01-01"), False)  # none in force yet: false, not null
        self.assertIs(price_set(), True)  # a new model's first price, in force at once
        self.assertIs(price_set("--effective-from", "2020-01-01"), False)  # older than the one in force
        hour = time.gmtime().tm_hour
        self.assertIs(price_set("--band", "13:00-14:00" if hour < 12 else "01:00-02:00"), False)
        if time.gmtime().tm_hour == hour and (hour, time.gmtime().tm_min) != (23, 59):
            self.assertIs(price_set("--band", "00:00-23:59"), True)  # a band holding now wins over the base
        self.assertIs(price_set(), True)  # a new base price: in force, the bands before it end
        self.assertIs(price_set("--effective-from", "2098-01-01"), False)

    def test_admin_url_and_token_from_the_environment(self):
        """TOLLGATE_ADMIN_URL and TOLLGATE_ADMIN_TOKEN override the defaults; the URL may name the
        admin API's root as DESIGN writes it (.../admin/v1), which before 2026-12-01 was 'no such
        admin endpoint' (the paths doubled: /admin/v1/admin/v1/...)."""
        cust = new_customer("0.000001")
        url = "http://%s:%d" % (ADMIN.hostname, ADMIN.port)
        env = dict(os.environ, TOLLGATE_ADMIN_URL=url, TOLLGATE_ADMIN_TOKEN=TOKEN)
        for u in (url, url + "/", url + "/admin/v1", url + "/admin/v1/", url + "/admin"):
            r = ctl_run("--json", "balance", "--customer", cust, env=dict(env, TOLLGATE_ADMIN_URL=u), check=False)
            self.assertEqual((r.returncode, r.stderr), (0, ""), u)
            self.assertEqual(json.loads(r.stdout)["balance_pico"], "1000000", u)
        r = ctl_run("balance", "--customer", cust, env=dict(env, TOLLGATE_ADMIN_TOKEN="wrong"), check=False)
        self.assertEqual((r.returncode, r.stdout), (1, ""))
        self.assertIn("missing or wrong admin token", r.stderr)
        r = ctl_run("balance", "--customer", cust, env=dict(env, TOLLGATE_ADMIN_URL=url + "/elsewhere"), check=False)
        self.assertEqual((r.returncode, r.stdout), (1, ""))  # another path is not the admin API's root
        r = ctl_run("balance", "--customer", cust, env=dict(env, TOLLGATE_ADMIN_URL="https://" + ADMIN.netloc),
                    check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("must start with http://", r.stderr)

    def test_contract_bad_input(self):
        """DESIGN's commands with the bad input a tester types: a clear message on stderr, exit 1
        (the server refused) or 2 (usage), nothing on stdout, nothing half created."""
        name = "edges-" + uuid.uuid4().hex[:10]
        for amount in ("abc", "-1", "1e3", "0x10", "+5", "1,5", "", "1.0000000000001", "9223372.036854775808",
                       "1" + "0" * 30):
            self.refused("customer", "create", name, "--credit-usd", amount, says="credit_usd")
            self.refused("--json", "customer", "create", name, "--credit-usd", amount, says="credit_usd")
        self.assertEqual(q("SELECT count(*) FROM customers WHERE name = %s", name)[0][0], 0)
        # 12 decimals are exact; the text shows USD rounded to 6 decimals and the exact pico-USD
        # (before 2026-12-01 only "balance 1.000000 USD": the 0.0000001 seemed lost)
        self.assertIn("balance 1.000000 USD (1000000100000 pico-USD)",
                      ctl("customer", "create", name, "--credit-usd", "1.0000001"))
        self.assertIn("added 0.000000 USD (100000 pico-USD) for %s" % name,
                      ctl("credit", "add", "--customer", name, "--usd", "0.0000001"))
        self.assertEqual(json.loads(ctl("--json", "balance", "--customer", name))["balance_pico"], "1000000200000")
        self.refused("customer", "create", name, says="already exists")
        for usd in ("abc", "-1", "0"):
            self.refused("credit", "add", "--customer", name, "--usd", usd)
        self.assertEqual(json.loads(ctl("--json", "balance", "--customer", name))["balance_pico"], "1000000200000")
        for month in ("2026-13", "2026-1", "2026-00", "26-12", "abc", "0000-01"):
            # 0000-01 was PostgreSQL's 'date/time field value out of range: "0000-01-01"' before 2026-12-01
            self.refused("invoice", "--customer", name, "--month", month, says="month must be YYYY-MM")
            self.refused("--json", "invoice", "finalize", "--month", month, says="month")
            self.refused("invoice", "list", "--month", month, says="month must be YYYY-MM")
        for args in (["balance", "--customer", "edges-nobody"], ["usage", "--customer", "edges-nobody"],
                     ["key", "list", "--customer", "edges-nobody"]):
            self.refused("--json", *args, says="no such customer")
        self.refused("key", "revoke", "99999999999", says="no such key")
        self.refused("key", "revoke", "abc", code=2)
        self.refused("usage", "--customer", name, "--from", "yesterday", says="from must be")
        self.refused("frobnicate", code=2, says="unknown command")
        self.refused("balance", code=2, says="--customer is required")


if __name__ == "__main__":
    main()
