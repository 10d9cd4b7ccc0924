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
import ssl
import sys
import threading
import unittest
import urllib.parse
import uuid

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tgskip import main  # noqa: E402

E = os.environ
ADMIN = urllib.parse.urlparse(E["TG_TEST_ADMIN"])
GW = urllib.parse.urlparse(E["TG_TEST_GATEWAY"])
TOKEN = E["TG_TEST_ADMIN_TOKEN"]
TIMEOUT = 30


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


class Edges(unittest.TestCase):
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
        # the embedding program's page (/metrics)
        st, h, b = send(http.client.HTTPConnection(ADMIN.hostname, ADMIN.port, timeout=TIMEOUT), "POST",
                        "/metrics", b"", {})
        self.allow((st, h, b), ("GET",))

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
        self.error(admin("POST", "customers", big), 413, "body_too_large")
        self.assertEqual(q("SELECT count(*) FROM customers WHERE length(name) > 64")[0][0], 0)

    def test_dashboard_405_carries_allow(self):
        cust = new_customer()
        s = sign_in(new_key(cust)["key"])
        for method, path, methods in (
                ("POST", "session", ("GET",)),
                ("GET", "login", ("POST",)),
                ("GET", "logout", ("POST",)),
                ("PUT", "keys", ("GET", "POST")),
                ("DELETE", "keys", ("GET", "POST")),
                ("POST", "overview", ("GET",)),
                ("POST", "usage", ("GET",)),
                ("GET", "keys/1/revoke", ("POST",)),
                ("POST", "invoices", ("GET",)),
                ("POST", "invoices/2026-01/csv", ("GET",)),
                ("POST", "requests", ("GET",)),
                ("POST", "admin/overview", ("GET",))):
            with self.subTest(method=method, path=path):
                self.allow(dash(method, path, "{}" if method != "GET" else None, session=s), methods)
        # without a session too: the method is checked before it
        self.allow(dash("PUT", "keys", "{}"), ("GET", "POST"))
        self.error(dash("GET", "no-such-view", session=s), 404, "not_found")


if __name__ == "__main__":
    main()
