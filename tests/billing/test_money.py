"""Ledger, prices and admin against a real PostgreSQL: idempotent admin writes,
named admin tokens (a readonly one is refused every write), the audit of every
write, adjustments and refunds with reasons, per-customer price overrides
billed with their version on the usage row (through admission, settlement and
a spool replay), and price and usage rows that the database refuses to change.

bill_server (tests/billing/bill_server.c) on port 18697 (18698: one on a dead
PostgreSQL, for the spool); names start with billtest-."""
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import psycopg2

sys.path.insert(0, os.path.dirname(__file__))
from test_billing import PG, PRICE, MODEL, Server, ServerCase, q, new_name, unexpected_stderr, main  # noqa: E402

PORT = 18697
DEAD_PG = "host=127.0.0.1 port=1 dbname=tollgate user=tollgate connect_timeout=1"
T = 10**12  # pico-USD per USD


def rid():
    return str(uuid.uuid4())


class Api:
    """Raw admin API calls: (status, headers, body bytes)."""

    def __init__(self, port, token):
        self.port, self.token = port, token

    def __call__(self, method, path, body=None, token=None, idem=None):
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method, data=data)
        req.add_header("Authorization", "Bearer " + (token or self.token))
        if idem is not None:
            req.add_header("Idempotency-Key", idem)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method, path, body=None, token=None, idem=None):
        st, _, raw = self(method, path, body, token, idem)
        return st, json.loads(raw)


class Money(ServerCase):
    PORT = PORT

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.api = Api(PORT, cls.s.token)

    def tearDown(self):
        self.s.drain()
        self.assertEqual(q("SELECT count(*) FROM ledger_mismatch")[0][0], 0)

    def customer(self, credit="5.00"):
        name = new_name()
        self.s.ctl("customer", "create", name, *(["--credit-usd", credit] if credit else []))
        cid = q("SELECT id FROM customers WHERE name = %s", name)[0][0]
        return name, cid

    def key(self, name):
        k = self.s.ctl("key", "create", "--customer", name).stdout.strip().splitlines()[-1]
        kid = q("SELECT max(k.id) FROM api_keys k JOIN customers c ON c.id = k.customer_id WHERE c.name = %s", name)[0][0]
        return k, kid

    def balance(self, name):
        return int(q("SELECT balance_pico FROM customers WHERE name = %s", name)[0][0])

    def audit(self, target):
        return q("SELECT actor, action, before, after FROM admin_audit WHERE target = %s ORDER BY id", target)

    # ---- idempotency -------------------------------------------------------------------------

    def test_idempotent_writes_replayed(self):
        name = new_name()
        k = "billtest-" + uuid.uuid4().hex
        st1, h1, b1 = self.api("POST", "/admin/v1/customers", {"name": name, "credit_usd": "1"}, idem=k + "-c")
        st2, h2, b2 = self.api("POST", "/admin/v1/customers", {"name": name, "credit_usd": "1"}, idem=k + "-c")
        self.assertEqual((st1, st2), (200, 200), b2)
        self.assertEqual(b1, b2, "the replay is the first answer, byte for byte")
        self.assertNotIn("Idempotent-Replayed", h1)
        self.assertEqual(h2.get("Idempotent-Replayed"), "true")
        self.assertEqual(q("SELECT count(*) FROM customers WHERE name = %s", name)[0][0], 1)
        self.assertEqual(self.balance(name), 1 * T)

        # a credit sent twice is added once
        path = "/admin/v1/customers/%s/credits" % name
        body = {"usd": "0.5", "reason": "promo"}
        a = self.api("POST", path, body, idem=k + "-credit")
        b = self.api("POST", path, body, idem=k + "-credit")
        self.assertEqual((a[0], b[0]), (200, 200))
        self.assertEqual(a[2], b[2])
        self.assertEqual(self.balance(name), 3 * T // 2)
        self.assertEqual(q("SELECT count(*) FROM ledger l JOIN customers c ON c.id = l.customer_id"
                           " WHERE c.name = %s AND l.note = 'promo'", name)[0][0], 1)

        # the same key with another body, or on another path: refused, nothing written
        for p, bd in ((path, {"usd": "0.6", "reason": "promo"}),
                      ("/admin/v1/customers/%s/adjustments" % name, body)):
            st, j = self.api.json("POST", p, bd, idem=k + "-credit")
            self.assertEqual(st, 422, j)
            self.assertEqual(j["error"]["code"], "idempotency_key_reused")
            self.assertIn(k + "-credit", j["error"]["message"])
        self.assertEqual(self.balance(name), 3 * T // 2)

        # keys are per admin token: another token's same key is another request
        tok = self.s.ctl("token", "create", new_name()).stdout.strip().splitlines()[-1]
        st, _, _ = self.api("POST", path, body, token=tok, idem=k + "-credit")
        self.assertEqual(st, 200)
        self.assertEqual(self.balance(name), 2 * T)

        # an API key made twice: one key; the replay says 201 again and never shows the key
        kp = "/admin/v1/customers/%s/keys" % name
        st1, _, b1 = self.api("POST", kp, {"name": "ci"}, idem=k + "-key")
        st2, h2, b2 = self.api("POST", kp, {"name": "ci"}, idem=k + "-key")
        self.assertEqual((st1, st2), (201, 201))
        j1, j2 = json.loads(b1), json.loads(b2)
        self.assertRegex(j1["key"], r"^sk-tg1-[0-9A-Za-z]{46}$")
        self.assertNotIn("key", j2)
        self.assertEqual(h2.get("Idempotent-Replayed"), "true")
        self.assertEqual({x: v for x, v in j1.items() if x != "key"}, j2)
        self.assertEqual(q("SELECT count(*) FROM api_keys k JOIN customers c ON c.id = k.customer_id"
                           " WHERE c.name = %s", name)[0][0], 1)
        self.assertEqual(q("SELECT count(*) FROM admin_idempotency WHERE response LIKE %s",
                           "%" + j1["key"] + "%")[0][0], 0, "an API key is never stored")

        # a write that failed stored nothing: the same key works once the customer exists
        other = new_name()
        st, _, _ = self.api("POST", "/admin/v1/customers/%s/credits" % other, body, idem=k + "-late")
        self.assertEqual(st, 404)
        self.assertEqual(q("SELECT count(*) FROM admin_idempotency WHERE key = %s", k + "-late")[0][0], 0)
        self.s.ctl("customer", "create", other)
        st, _, _ = self.api("POST", "/admin/v1/customers/%s/credits" % other, body, idem=k + "-late")
        self.assertEqual(st, 200)

        # 8 at once with one key: one adjustment, eight identical answers
        answers = []
        adj = "/admin/v1/customers/%s/adjustments" % name

        def send():
            answers.append(self.api("POST", adj, {"usd": "-0.25", "reason": "race"}, idem=k + "-race"))
        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        self.assertEqual([a[0] for a in answers], [200] * 8)
        self.assertEqual(len({a[2] for a in answers}), 1)
        self.assertEqual(q("SELECT count(*) FROM ledger l JOIN customers c ON c.id = l.customer_id"
                           " WHERE c.name = %s AND l.kind = 'adjustment'", name)[0][0], 1)
        self.assertEqual(self.balance(name), 2 * T - T // 4)

        # tollgatectl --idempotency-key
        for _ in range(2):
            self.s.ctl("--idempotency-key", k + "-ctl", "credit", "add", "--customer", name, "--usd", "1",
                       "--reason", "ctl")
        self.assertEqual(self.balance(name), 3 * T - T // 4)
        p = self.s.ctl("--idempotency-key", k + "-ctl", "credit", "add", "--customer", name, "--usd", "2",
                       "--reason", "ctl", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("HTTP 422", p.stderr)

    # ---- tokens and roles -----------------------------------------------------------------

    def test_named_tokens_and_readonly(self):
        name, _ = self.customer("1")
        ro_name, adm_name = new_name(), new_name()
        out = self.s.ctl("token", "create", ro_name, "--role", "readonly").stdout.strip().splitlines()
        ro = out[-1]
        self.assertRegex(ro, r"^tga_[0-9a-f]{48}$")
        adm = self.s.ctl("token", "create", adm_name, "--role", "admin").stdout.strip().splitlines()[-1]
        # stored as a keyed hash, never in clear
        h = q("SELECT token_hash, role, created_by FROM admin_tokens WHERE name = %s", ro_name)[0]
        self.assertEqual(h[0], hmac.new(bytes.fromhex(self.s.secret), ro.encode(), hashlib.sha256).hexdigest())
        self.assertEqual(h[1:], ("readonly", "root"))
        self.assertEqual(q("SELECT count(*) FROM admin_audit WHERE after::text LIKE %s", "%" + ro[4:] + "%")[0][0], 0)
        lst = json.loads(self.s.ctl("token", "list", "--json").stdout)["data"]
        self.assertIn((ro_name, "readonly", True), [(t["name"], t["role"], t["active"]) for t in lst])

        # readonly: every read works, every write is 403 and writes nothing
        for path in ("/admin/v1/customers", "/admin/v1/customers/%s/balance" % name, "/admin/v1/prices",
                     "/admin/v1/customers/%s/ledger" % name, "/admin/v1/tokens", "/admin/v1/settlement"):
            self.assertEqual(self.api("GET", path, token=ro)[0], 200, path)
        audit_before = q("SELECT count(*) FROM admin_audit")[0][0]
        kid = self.key(name)[1]
        audit_before += 1
        writes = [("POST", "/admin/v1/customers", {"name": new_name()}),
                  ("POST", "/admin/v1/customers/%s/credits" % name, {"usd": "1"}),
                  ("POST", "/admin/v1/customers/%s/adjustments" % name, {"usd": "1", "reason": "x"}),
                  ("POST", "/admin/v1/customers/%s/refunds" % name, {"usd": "0.1", "reason": "x"}),
                  ("POST", "/admin/v1/customers/%s/keys" % name, {}),
                  ("PATCH", "/admin/v1/keys/%d" % kid, {"rpm": 1}),
                  ("DELETE", "/admin/v1/keys/%d" % kid, None),
                  ("POST", "/admin/v1/keys/%d/rotate" % kid, {}),
                  ("POST", "/admin/v1/prices", {"model": "m", "input_cache_miss": "1", "input_cache_hit": "1",
                                                "output": "1"}),
                  ("POST", "/admin/v1/customers/%s/prices" % name, {"model": "m", "percent": "50"}),
                  ("POST", "/admin/v1/tokens", {"name": new_name()}),
                  ("POST", "/admin/v1/tokens/%s/revoke" % adm_name, {}),
                  ("POST", "/admin/v1/invoices/finalize", {"month": "2001-01"})]
        for method, path, body in writes:
            st, j = self.api.json(method, path, body, token=ro)
            self.assertEqual(st, 403, (method, path, j))
            self.assertEqual((j["error"]["code"], j["error"]["type"]), ("insufficient_role", "permission_error"))
        self.assertEqual(q("SELECT count(*) FROM admin_audit")[0][0], audit_before, "a refused write wrote")
        self.assertEqual(self.balance(name), T)
        env = dict(os.environ, TOLLGATE_ADMIN_URL="http://127.0.0.1:%d" % PORT, TOLLGATE_ADMIN_TOKEN=ro)
        p = subprocess.run([self.s_ctl(), "credit", "add", "--customer", name, "--usd", "1"], capture_output=True,
                           text=True, timeout=30, env=env)
        self.assertEqual(p.returncode, 1)
        self.assertIn("readonly", p.stderr)
        p = subprocess.run([self.s_ctl(), "balance", "--customer", name, "--json"], capture_output=True, text=True,
                           timeout=30, env=env)
        self.assertEqual(json.loads(p.stdout)["balance_pico"], str(T))

        # an admin token writes, and the audit names it
        st, _ = self.api.json("POST", "/admin/v1/customers/%s/credits" % name, {"usd": "2", "reason": "by name"},
                              token=adm)
        self.assertEqual(st, 200)
        self.assertEqual([(a[0], a[1]) for a in self.audit("customer:" + name)][-1], (adm_name, "ledger.topup"))
        # revoked: refused from the next request on
        self.s.ctl("token", "revoke", adm_name)
        st, j = self.api.json("GET", "/admin/v1/customers", token=adm)
        self.assertEqual((st, j["error"]["code"]), (401, "invalid_admin_token"))
        self.assertEqual(self.api("GET", "/admin/v1/customers", token="tga_" + "0" * 48)[0], 401)
        self.assertEqual(self.audit("token:" + adm_name)[-1][:2], ("root", "token.revoke"))
        # names: "root" is the bootstrap token's; a name is unique
        self.assertEqual(self.api("POST", "/admin/v1/tokens", {"name": "root"})[0], 400)
        self.assertEqual(self.api("POST", "/admin/v1/tokens", {"name": ro_name})[0], 409)
        self.assertEqual(self.api("POST", "/admin/v1/tokens", {"name": new_name(), "role": "god"})[0], 400)

    def s_ctl(self):
        from test_billing import CTL
        return CTL

    # ---- ledger -------------------------------------------------------------------------------

    def test_ledger_adjust_refund_reasons_audited(self):
        name, _ = self.customer("10")
        self.s.ctl("credit", "adjust", "--customer", name, "--usd", "2.5", "--reason", "goodwill")
        self.s.ctl("credit", "adjust", "--customer", name, "--usd", "-0.000001", "--reason", "rounding fix")
        self.s.ctl("credit", "refund", "--customer", name, "--usd", "3", "--reason", "paid back")
        self.assertEqual(self.balance(name), 10 * T + 5 * T // 2 - 10**6 - 3 * T)
        for args, code, text in ((["refund", "--usd", "100", "--reason", "r"], 1, "more than the balance"),
                                 (["adjust", "--usd", "0", "--reason", "r"], 1, "HTTP 400"),
                                 (["adjust", "--usd", "1"], 2, "--reason is required"),
                                 (["refund", "--usd", "1"], 2, "--reason is required"),
                                 (["refund", "--usd", "-1", "--reason", "r"], 1, "HTTP 400"),
                                 (["add", "--usd", "-1"], 1, "HTTP 400")):
            p = self.s.ctl("credit", args[0], "--customer", name, *args[1:], check=False)
            self.assertEqual(p.returncode, code, (args, p.stderr))
            self.assertIn(text, p.stderr, args)
        st, j = self.api.json("POST", "/admin/v1/customers/%s/adjustments" % name, {"usd": "1"})
        self.assertEqual((st, j["error"]["code"]), (400, "missing_field"))
        rows = json.loads(self.s.ctl("credit", "list", "--customer", name, "--json").stdout)["data"]
        self.assertEqual([(r["kind"], r["amount_pico"], r["reason"]) for r in rows],
                         [("refund", str(-3 * T), "paid back"), ("adjustment", str(-10**6), "rounding fix"),
                          ("adjustment", str(5 * T // 2), "goodwill"), ("topup", str(10 * T), "initial credit")])
        au = self.audit("customer:" + name)
        self.assertEqual([a[1] for a in au], ["customer.create", "ledger.adjustment", "ledger.adjustment",
                                              "ledger.refund"])
        self.assertEqual({a[0] for a in au}, {"root"})
        self.assertEqual((au[3][2]["balance_pico"], au[3][3]["balance_pico"], au[3][3]["reason"]),
                         (str(10 * T + 5 * T // 2 - 10**6), str(self.balance(name)), "paid back"))

    def test_write_refused_in_time_is_never_applied_later(self):
        """A credit that waits for a lock (the customer's row held, as a long finalization or a
        settlement holds it) past the deadline: answered 503 and rolled back by the server, so
        it is not applied once the lock goes (before, the waiting backend never saw its closed
        connection and committed after the 503: the operator's retry credited twice)."""
        name, cid = self.customer("1")
        holder = psycopg2.connect(PG, options="-c statement_timeout=60000")
        try:
            holder.cursor().execute("SELECT id FROM customers WHERE id = %s FOR UPDATE", (cid,))
            p = self.s.ctl("credit", "add", "--customer", name, "--usd", "2", check=False)
            # while the lock is still held: does a session of the server still wait for it?
            waiting = q("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tollgate'"
                        " AND wait_event_type = 'Lock' AND query LIKE 'WITH c AS (SELECT * FROM customers%%'")[0][0]
        finally:
            holder.rollback()
            holder.close()
        self.assertEqual(p.returncode, 1, p.stdout)
        time.sleep(1)  # what a backend left waiting would do now that the lock is gone
        self.assertEqual(self.balance(name), 1 * T, "the credit answered 503 was applied")
        self.assertEqual(q("SELECT count(*) FROM ledger WHERE customer_id = %s", cid)[0][0], 1)
        self.assertEqual(waiting, 0, "a statement of the server still waited for the lock")
        self.assertIn("HTTP 503", p.stderr)
        self.assertIn("nothing was written", p.stderr)
        self.s.ctl("credit", "add", "--customer", name, "--usd", "2")  # the retry: applied once
        self.assertEqual(self.balance(name), 3 * T)

    # ---- prices ---------------------------------------------------------------------------------

    def test_override_billed_with_version(self):
        m = "billtest-ovr-" + uuid.uuid4().hex[:6]
        self.s.ctl("price", "set", "--model", m, "--input-miss", "11", "--input-hit", "3", "--output", "7")
        base_id = q("SELECT id FROM model_prices WHERE model = %s", m)[0][0]
        a, aid = self.customer("1")
        b, _ = self.customer("1")
        ka, kb = self.key(a)[0], self.key(b)[0]
        self.assertEqual(self.s.admit(kb, m)[7:], ["11", "3", "7", str(base_id), "0"])
        # 50 %: 5.5 -> 6, 1.5 -> 2, 3.5 -> 4 (half away from zero)
        o1 = json.loads(self.s.ctl("price", "override", "--customer", a, "--model", m, "--percent", "50",
                                   "--json").stdout)
        self.assertEqual(self.s.admit(ka, m)[7:], ["6", "2", "4", str(base_id), str(o1["id"])])
        self.assertEqual(self.s.admit(kb, m)[7:], ["11", "3", "7", str(base_id), "0"], "only its customer")
        # a future override is not in force yet; explicit prices replace the base
        self.s.ctl("price", "override", "--customer", a, "--model", m, "--input-miss", "1", "--input-hit", "1",
                   "--output", "1", "--effective-from", "2999-01-01")
        self.assertEqual(self.s.admit(ka, m)[7:], ["6", "2", "4", str(base_id), str(o1["id"])])
        o2 = json.loads(self.s.ctl("price", "override", "--customer", a, "--model", m, "--input-miss", "100",
                                   "--input-hit", "20", "--output", "300", "--json").stdout)
        adm = self.s.admit(ka, m)
        self.assertEqual(adm[7:], ["100", "20", "300", str(base_id), str(o2["id"])])
        lst = json.loads(self.s.ctl("price", "overrides", "--customer", a, "--json").stdout)["data"]
        self.assertEqual([(x["id"], x["now"]["output"]) for x in lst], [(o2["id"], "300")])
        self.assertEqual(len(json.loads(self.s.ctl("price", "overrides", "--customer", a, "--history",
                                                   "--json").stdout)["data"]), 3)
        # billed at the admitted price, the version on the usage row: settled directly ...
        kid = int(adm[2])
        r1 = rid()
        now_us = int(time.time() * 1e6)
        self.assertEqual(self.s.cmd("settle %s %d %d %s 100 20 300 1000 400 50 0 200 %d %d %d" % (
            r1, kid, aid, m, now_us, base_id, o2["id"])), "settled")
        # ... and through the spool: a server on a dead PostgreSQL journals the row, a live one replays it
        r2 = rid()
        spool = tempfile.mkdtemp(prefix="billtest-spool.")
        try:
            dead = Server(DEAD_PG, 18698, spool)
            self.assertEqual(dead.cmd("settle %s %d %d %s 100 20 300 1000 400 50 0 200 %d %d %d" % (
                r2, kid, aid, m, now_us, base_id, o2["id"])), "settled")
            dead.stop()
            again = Server(PG, 18698, spool)
            again.drain()
            again.stop()
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        self.s.drain()
        for r in (r1, r2):
            row = q("SELECT price_id, override_id, price_input_cache_miss, price_input_cache_hit, price_output,"
                    " cost_pico FROM usage WHERE request_id = %s", r)
            self.assertEqual(row, [(base_id, o2["id"], 100, 20, 300, 600 * 100 + 400 * 20 + 50 * 300)], r)
        rows = json.loads(self.s.ctl("usage", "--customer", a, "--json").stdout)["data"]
        self.assertEqual({(x["request_id"], x["price_id"], x["override_id"], x["price_output"]) for x in rows},
                         {(r1, base_id, o2["id"], "300"), (r2, base_id, o2["id"], "300")})
        # back to the base price book
        self.s.ctl("price", "override", "--customer", a, "--model", m, "--base")
        self.assertEqual(self.s.admit(ka, m)[7:], ["11", "3", "7", str(base_id), "0"])
        # an explicit override prices a model that has no base price; a percentage does not
        m2 = m + "-private"
        self.assertEqual(self.s.admit(ka, m2)[1], "no_price")
        self.s.ctl("price", "override", "--customer", a, "--model", m2, "--percent", "10")
        self.assertEqual(self.s.admit(ka, m2)[1], "no_price")
        o3 = json.loads(self.s.ctl("price", "override", "--customer", a, "--model", m2, "--input-miss", "5",
                                   "--input-hit", "5", "--output", "5", "--json").stdout)
        self.assertEqual(self.s.admit(ka, m2)[7:], ["5", "5", "5", "0", str(o3["id"])])
        self.assertEqual([x[1] for x in self.audit("customer:" + a)].count("price.override"), 6)
        for bad in (["--percent", "1001"], ["--percent", "-5"], ["--percent", "1.23456"], ["--percent", "abc"],
                    ["--input-miss", "1"]):
            p = self.s.ctl("price", "override", "--customer", a, "--model", m, *bad, check=False)
            self.assertNotEqual(p.returncode, 0, bad)

    def test_price_and_usage_rows_immutable(self):
        name, cid = self.customer("1")
        r = rid()
        self.s.settle(r, 0, cid, 10, 0, 10)
        self.s.drain()
        self.s.ctl("price", "override", "--customer", name, "--model", MODEL, "--percent", "90")
        pid = q("SELECT max(id) FROM model_prices")[0][0]
        oid = q("SELECT max(id) FROM price_overrides WHERE customer_id = %s", cid)[0][0]
        for sql, arg in (("UPDATE model_prices SET output = 0 WHERE id = %s", pid),
                         ("DELETE FROM model_prices WHERE id = %s", pid),
                         ("UPDATE price_overrides SET percent = 1 WHERE id = %s", oid),
                         ("DELETE FROM price_overrides WHERE id = %s", oid),
                         ("UPDATE usage SET cost_pico = 0 WHERE request_id = %s", r),
                         ("UPDATE usage SET price_id = NULL WHERE request_id = %s", r),
                         ("DELETE FROM usage WHERE request_id = %s", r),
                         ("TRUNCATE usage CASCADE", None),
                         ("TRUNCATE model_prices CASCADE", None)):
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                q(sql, *([arg] if arg is not None else []))
            self.assertIn("never changed or deleted", str(cm.exception), sql)
        self.assertEqual(q("SELECT cost_pico FROM usage WHERE request_id = %s", r)[0][0], 10 * PRICE[0] + 10 * PRICE[2])
        # references are checked per statement (0017): a row naming a missing customer, key, price,
        # override or usage row is refused as a foreign-key violation, and what rows refer to is never deleted
        self.key(name)
        kid = q("SELECT id FROM api_keys WHERE customer_id = %s", cid)
        now = "timestamptz '2001-01-01'"
        for sql in ("INSERT INTO usage (request_id, customer_id, key_id, model, prompt_tokens, prompt_cache_hit_tokens,"
                    " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, price_input_cache_miss,"
                    " price_input_cache_hit, price_output, cost_pico, http_status, stream, received_at, finished_at,"
                    " price_id, override_id) VALUES (gen_random_uuid(), %d, %s, 'm', 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, false,"
                    " %s, %s, %s, %s)" % (c, k, now, now, p, o)
                    for c, k, p, o in ((999999999, "NULL", "NULL", "NULL"), (cid, "999999999", "NULL", "NULL"),
                                       (cid, "NULL", "999999999", "NULL"), (cid, "NULL", "NULL", "999999999"))):
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                q(sql)
            self.assertEqual(cm.exception.pgcode, "23503", sql)
        for sql in ("INSERT INTO ledger (customer_id, kind, amount_pico, request_id) VALUES (%d, 'usage', -1, '%s')"
                    % (cid, rid()),
                    "INSERT INTO ledger (customer_id, kind, amount_pico, note) VALUES (999999999, 'topup', 1, 'x')"):
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                q(sql)
            self.assertEqual(cm.exception.pgcode, "23503", sql)
        for sql in ["DELETE FROM customers WHERE id = %d" % cid, "UPDATE customers SET id = -id WHERE id = %d" % cid,
                    "TRUNCATE customers CASCADE", "TRUNCATE api_keys CASCADE"] + \
                   ["DELETE FROM api_keys WHERE id = %d" % kid[0][0], "UPDATE api_keys SET id = -id WHERE id = %d" % kid[0][0]]:
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                q(sql)
            self.assertIn("never", str(cm.exception), sql)
        self.assertEqual(q("SELECT count(*) FROM customers WHERE id = %s", cid)[0][0], 1)

    def test_ledger_refs_probe_whatever_the_first_plan(self):
        """The ledger -> usage check (0028) probes usage's primary key per new ledger row even in a
        session that planned it while usage was nearly empty: such a plan (0018's NOT EXISTS) hashed
        the whole usage table at every later batch.  In one transaction, rolled back: usage and the
        ledger emptied (TRUNCATE, as a superuser past the triggers that refuse it), a first batch of
        50 rows plans the check, usage grows to 20,000 rows, then a batch of 1,000 ledger rows must
        not scan usage (its seq_scan counter in this transaction)."""
        _, cid = self.customer(credit=None)
        conn = psycopg2.connect(PG.replace("user=tollgate", "user=postgres"))
        try:
            cur = conn.cursor()
            cur.execute("SET LOCAL lock_timeout = '20s'")
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute("TRUNCATE usage, ledger CASCADE")
            cur.execute("SET LOCAL session_replication_role = origin")
            cur.execute("CREATE TEMP TABLE ids ON COMMIT DROP AS SELECT"
                        " ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid AS id, g"
                        " FROM generate_series(1, 20000) g")

            def usage(where):
                cur.execute("INSERT INTO usage (request_id, customer_id, model, prompt_tokens,"
                            " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens,"
                            " price_input_cache_miss, price_input_cache_hit, price_output, cost_pico, http_status,"
                            " stream, received_at, finished_at) SELECT id, %s, 'm', 0, 0, 0, 0, 0, 0, 0, 0, 0, 200,"
                            " false, now(), now() FROM ids WHERE " + where, (cid,))

            def debits(where):
                cur.execute("INSERT INTO ledger (customer_id, kind, amount_pico, request_id)"
                            " SELECT %s, 'usage', -1, id FROM ids WHERE " + where, (cid,))

            def scans():
                cur.execute("SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'usage'")
                return cur.fetchone()

            usage("g <= 50")
            debits("g <= 50")  # plans ledger_refs_check in this session
            usage("g > 50")
            before = scans()
            debits("g BETWEEN 1001 AND 2000")
            self.assertEqual(scans(), before, "the check read usage whole instead of probing its primary key")
            # and a missing usage row is still refused
            cur.execute("SAVEPOINT s")
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("INSERT INTO ledger (customer_id, kind, amount_pico, request_id)"
                            " VALUES (%s, 'usage', -1, '00000000-0000-7000-8000-ffffffffffff')", (cid,))
            self.assertEqual(cm.exception.pgcode, "23503")
            cur.execute("ROLLBACK TO SAVEPOINT s")
        finally:
            conn.rollback()
            conn.close()

    def test_settle_probe_whatever_the_first_plan(self):
        """The settlement statement (bill_settle.c SETTLE_SQL) probes usage's primary key per row even
        with a generic plan made while usage was nearly empty: NOT EXISTS was planned then as a hash
        anti-join over the whole of usage, and a prepared statement keeps its generic plan, so every
        later batch read usage whole (bench/gateway: 12-37 million rows per run).  In one transaction,
        rolled back: usage emptied, the statement prepared and run once with a generic plan
        (plan_cache_mode), usage grown to 20,000 rows, then a batch of 1,000 rows must not scan usage;
        and the rows it inserted, and only those, are there, once."""
        _, cid = self.customer(credit=None)
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "billing", "bill_settle.c")) as f:
            src = f.read()
        body = src[src.index("static const char SETTLE_SQL[] ="):]
        body = body[:body.index(";\n")]
        sql = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', re.sub(r"/\*.*?\*/", "", body, flags=re.S)))
        conn = psycopg2.connect(PG.replace("user=tollgate", "user=postgres"))
        try:
            cur = conn.cursor()
            cur.execute("SET LOCAL lock_timeout = '20s'")
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute("TRUNCATE usage, ledger CASCADE")
            cur.execute("SET LOCAL session_replication_role = origin")
            cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cur.execute("PREPARE settle_probe AS " + sql)

            def ids(a, b):
                return ["00000000-0000-7000-8000-%012x" % g for g in range(a, b)]

            def settle(rows):
                n = len(rows)
                arr = lambda v: "{" + ",".join(v) + "}"  # noqa: E731
                cur.execute("EXECUTE settle_probe (%s)" % ", ".join(["%s"] * 19), (
                    arr(rows), arr(["NULL"] * n), arr([str(cid)] * n), arr(["m"] * n), arr(["10"] * n),
                    arr(["0"] * n), arr(["1"] * n), arr(["0"] * n), arr(["1000000"] * n), arr(["0"] * n),
                    arr(["1000000"] * n), arr(["11"] * n), arr(["200"] * n), arr(["f"] * n),
                    arr(['"2026-12-01 00:00:00+00"'] * n), arr(["NULL"] * n), arr(['"2026-12-01 00:00:01+00"'] * n),
                    arr(["NULL"] * n), arr(["NULL"] * n)))
                return cur.fetchall()[0][:2]

            def scans():
                cur.execute("SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'usage'")
                return cur.fetchone()

            self.assertEqual(settle(ids(1, 51)), (50, 50))  # the generic plan is made here
            cur.execute("INSERT INTO usage (request_id, customer_id, model, prompt_tokens, prompt_cache_hit_tokens,"
                        " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, price_input_cache_miss,"
                        " price_input_cache_hit, price_output, cost_pico, http_status, stream, received_at,"
                        " finished_at) SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, %s,"
                        " 'm', 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, false, now(), now()"
                        " FROM generate_series(100001, 120000) g", (cid,))
            before = scans()
            batch = ids(51, 551) + ids(100001, 100501)  # 500 new rows, 500 already there
            self.assertEqual(settle(batch), (500, 500))
            self.assertEqual(scans(), before, "the statement read usage whole instead of probing its primary key")
            cur.execute("SELECT count(*), count(DISTINCT request_id) FROM usage")
            self.assertEqual(cur.fetchone(), (20550, 20550))
            cur.execute("SELECT count(*), sum(amount_pico) FROM ledger WHERE kind = 'usage'")
            self.assertEqual(cur.fetchone(), (550, -550 * 11))
        finally:
            conn.rollback()
            conn.close()

    # ---- invoices ---------------------------------------------------------------------------------

    def settle_at(self, cid, when_us, prompt, hit, completion, price=PRICE, server=None):
        r = rid()
        self.assertEqual((server or self.s).cmd("settle %s 0 %d %s %d %d %d %d %d %d 0 200 %d" % (
            r, cid, MODEL, *price, prompt, hit, completion, when_us)), "settled")
        return r

    def docs(self, name, month):
        """The invoice as JSON (parsed), and the exact JSON and CSV bytes from the API and tollgatectl."""
        st, hj, j = self.api("GET", "/admin/v1/customers/%s/invoice?month=%s" % (name, month))
        st2, hc, c = self.api("GET", "/admin/v1/customers/%s/invoice?month=%s&format=csv" % (name, month))
        self.assertEqual((st, st2), (200, 200), (j, c))
        self.assertTrue(hc["Content-Type"].startswith("text/csv"), hc)
        cj = self.s.ctl("invoice", "--customer", name, "--month", month, "--json").stdout.encode()
        cc = self.s.ctl("invoice", "--customer", name, "--month", month, "--csv").stdout.encode()
        self.assertEqual((cj, cc), (j, c), "tollgatectl prints the documents as served")
        return json.loads(j), j, c

    def check_totals(self, inv):
        lines = sum(int(x["amount_pico"]) for x in inv["lines"])
        for x in inv["lines"]:
            self.assertEqual(int(x["amount_pico"]), int(x["quantity"]) * int(x["unit_price_micro_usd_per_1m"]), x)
        self.assertEqual(int(inv["usage_pico"]), lines, "the total is the sum of the lines, to the pico-USD")
        self.assertEqual(int(inv["total_pico"]), lines)
        credits = {k: sum(int(c["amount_pico"]) for c in inv["credits"] if c["kind"] == k)
                   for k in ("topup", "adjustment", "refund")}
        self.assertEqual((int(inv["credits_pico"]), int(inv["adjustments_pico"]), int(inv["refunds_pico"])),
                         (credits["topup"], credits["adjustment"], credits["refund"]))
        self.assertEqual(int(inv["closing_balance_pico"]),
                         int(inv["opening_balance_pico"]) + sum(credits.values()) - lines)

    def test_invoice_finalized_never_changes_late_line_on_next(self):
        name, cid = self.customer("5")
        # months of the past with nothing finalized yet (random: reruns on one database stay apart)
        year = 1971 + int(uuid.uuid4().int % 40)
        p1, p2 = "%d-03" % year, "%d-04" % year
        mar = int(time.mktime(time.strptime("%d-03-10 12:00" % year, "%Y-%m-%d %H:%M")) - time.timezone) * 10**6
        apr = mar + 31 * 86400 * 10**6
        self.settle_at(cid, mar, 1000, 400, 50)
        self.settle_at(cid, mar + 10**6, 300, 0, 7)
        self.settle_at(cid, mar + 2 * 10**6, 0, 0, 0)  # a failed request: no cost, still a request
        self.settle_at(cid, apr, 10, 0, 10)
        self.s.drain()
        draft, _, _ = self.docs(name, p1)
        self.assertEqual((draft["status"], draft["id"], draft["requests"]), ("draft", None, "3"))
        self.check_totals(draft)

        j = json.loads(self.s.ctl("invoice", "finalize", "--month", p1, "--customer", name, "--json").stdout)
        self.assertEqual((j["finalized"], [x["customer"] for x in j["invoices"]]), (1, [name]))
        inv1, json1, csv1 = self.docs(name, p1)
        self.assertEqual((inv1["status"], inv1["finalized_by"], inv1["requests"], inv1["late_requests"]),
                         ("finalized", "root", "3", "0"))
        # counters are strings of digits, as everywhere else in the admin API (they were JSON numbers):
        # in the document and in the month's list of finalized invoices
        st, lst = self.api.json("GET", "/admin/v1/invoices?month=%s" % p1)
        mine = [x for x in lst["data"] if x["customer"] == name]
        self.assertEqual((st, [(x["requests"], x["late_requests"]) for x in mine]), (200, [("3", "0")]), lst)
        self.check_totals(inv1)
        want1 = 600 * PRICE[0] + 400 * PRICE[1] + 50 * PRICE[2] + 300 * PRICE[0] + 7 * PRICE[2]
        self.assertEqual((int(inv1["usage_pico"]), int(inv1["opening_balance_pico"]), inv1["credits"]),
                         (want1, 0, []))
        self.assertEqual(int(inv1["closing_balance_pico"]), -want1)
        self.assertEqual(csv1.decode().splitlines()[0], "customer,month,record,period,model,token_class,quantity,"
                         "unit_price_micro_usd_per_1m,amount_pico,amount_usd,note")
        self.assertIn("%s,%s,usage,%s,%s,input_cache_miss,900,%d,%d," % (name, p1, p1, MODEL, PRICE[0], 900 * PRICE[0]),
                      csv1.decode())

        # a late row for p1, replayed from a spool (written by a server whose PostgreSQL was down)
        spool = tempfile.mkdtemp(prefix="billtest-spool.")
        try:
            dead = Server(DEAD_PG, 18698, spool)
            late = self.settle_at(cid, mar + 3600 * 10**6, 2000, 1000, 100, server=dead)
            dead.stop()
            again = Server(PG, 18698, spool)
            again.drain()
            again.stop()
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = %s", late)[0][0], 1)
        late_cost = 1000 * PRICE[0] + 1000 * PRICE[1] + 100 * PRICE[2]

        # the finalized invoice is byte-identical, finalizing again changes nothing
        _, json1b, csv1b = self.docs(name, p1)
        self.assertEqual((json1b, csv1b), (json1, csv1))
        j = json.loads(self.s.ctl("invoice", "finalize", "--month", p1, "--customer", name, "--json").stdout)
        self.assertEqual((j["finalized"], j["already_finalized"] >= 1), (0, True))
        self.assertEqual(self.docs(name, p1)[1:], (json1, csv1))

        # the late line is on the next invoice, naming its own period
        inv2, json2, csv2 = self.docs(name, p2)
        self.assertEqual((inv2["status"], inv2["requests"], inv2["late_requests"]), ("draft", "2", "1"))
        self.s.ctl("invoice", "finalize", "--month", p2, "--customer", name)
        inv2, json2, csv2 = self.docs(name, p2)
        self.assertEqual((inv2["status"], inv2["requests"], inv2["late_requests"]), ("finalized", "2", "1"))
        self.check_totals(inv2)
        late_lines = [x for x in inv2["lines"] if x["late"]]
        self.assertEqual({x["period"] for x in late_lines}, {p1})
        self.assertEqual(sum(int(x["amount_pico"]) for x in late_lines), late_cost)
        self.assertEqual([x["period"] for x in inv2["lines"] if not x["late"]], [p2, p2])
        self.assertEqual(int(inv2["opening_balance_pico"]), int(inv1["closing_balance_pico"]))
        self.assertEqual(int(inv2["usage_pico"]), late_cost + 10 * PRICE[0] + 10 * PRICE[2])
        self.assertIn(",late_usage,%s,%s,input_cache_hit,1000,%d,%d,%s,usage of %s billed late" % (
            p1, MODEL, PRICE[1], 1000 * PRICE[1], "0.000070", p1), csv2.decode())
        self.assertEqual(self.docs(name, p1)[1:], (json1, csv1))
        self.assertEqual(q("SELECT count(DISTINCT invoice_id), count(*) FROM invoice_usage iu JOIN usage u"
                           " USING (request_id) WHERE u.customer_id = %s", cid)[0], (2, 5))

        # this month's draft: opening = the last closing, the credit, and a closing equal to the balance
        now = time.strftime("%Y-%m", time.gmtime())
        cur, _, _ = self.docs(name, now)
        self.check_totals(cur)
        self.assertEqual(int(cur["opening_balance_pico"]), int(inv2["closing_balance_pico"]))
        self.assertEqual([(c["kind"], c["amount_pico"], c["reason"]) for c in cur["credits"]],
                         [("topup", str(5 * T), "initial credit")])
        self.assertEqual(int(cur["closing_balance_pico"]), self.balance(name))
        p = self.s.ctl("invoice", "finalize", "--month", now, "--customer", name, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("is not over yet", p.stderr)
        for bad in ("2001-13", "01-2001", "2001-1"):
            self.assertEqual(self.api("POST", "/admin/v1/invoices/finalize", {"month": bad})[0], 400, bad)
        self.assertIn("invoice.finalize", [a[1] for a in q("SELECT actor, action FROM admin_audit WHERE target = %s",
                                                               "month:%s customer:%s" % (p1, name))])

        # the database refuses to change a finalized invoice or move a row to another one
        inv_id = inv1["id"]
        for sql in ("UPDATE invoices SET body_json = '{}' WHERE id = %s",
                    "UPDATE invoices SET closing_pico = 0 WHERE id = %s",
                    "DELETE FROM invoices WHERE id = %s",
                    "UPDATE invoice_lines SET amount_pico = 0, quantity = 0 WHERE invoice_id = %s",
                    "DELETE FROM invoice_lines WHERE invoice_id = %s",
                    "DELETE FROM invoice_usage WHERE invoice_id = %s",
                    "UPDATE invoice_usage SET invoice_id = invoice_id WHERE invoice_id = %s"):
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                q(sql, inv_id)
            self.assertIn("never changed or deleted", str(cm.exception), sql)
        with self.assertRaises(psycopg2.errors.UniqueViolation):
            q("INSERT INTO invoice_usage VALUES (%s, %s)", late, inv_id)
        self.assertEqual(self.docs(name, p1)[1:], (json1, csv1))

        # and everything reconciles
        p = self.s.ctl("reconcile", "--from", "%d-01-01" % year, "--to", "%d-12-31" % year, check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("everything agrees", p.stdout)
        p = self.s.ctl("reconcile", "--json", check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(json.loads(p.stdout)["differences"], [])

    def test_reconcile_names_planted_differences(self):
        name, cid = self.customer("1")
        year = 1971 + int(uuid.uuid4().int % 40)
        month = "%d-06" % year
        t = int(time.mktime(time.strptime("%d-06-15 10:30" % year, "%Y-%m-%d %H:%M")) - time.timezone) * 10**6
        r1 = self.settle_at(cid, t, 100, 20, 30)
        self.settle_at(cid, t + 10**6, 50, 0, 5)
        self.s.drain()
        self.s.ctl("invoice", "finalize", "--month", month, "--customer", name)
        inv = q("SELECT id FROM invoices WHERE customer_id = %s", cid)[0][0]
        window = ("--from", "%d-01-01" % year, "--to", "%d-12-31" % year)  # a date --to: its whole day

        def reconcile():
            p = self.s.ctl("reconcile", *window, check=False)
            pj = self.s.ctl("--json", "reconcile", *window, check=False)
            self.assertEqual(pj.returncode, p.returncode)
            self.assertEqual(pj.stderr, p.stderr)  # the differences named on stderr, --json or not
            diffs = json.loads(pj.stdout)["differences"]
            if diffs:
                self.assertIn("tollgatectl: reconcile: %d difference" % len(diffs), p.stderr)
            return p, {(d["check"], d["subject"]) for d in diffs}

        p, found = reconcile()
        self.assertEqual((p.returncode, found, p.stderr), (0, set(), ""), p.stdout)
        self.assertGreaterEqual(int(json.loads(self.s.ctl("--json", "reconcile", *window).stdout)["checked"]["usage_rows"]), 2)

        def plant(table, trigger, change, undo, want):
            """Change a row past its trigger, reconcile must name it; then put it back."""
            for sql in (change, undo):
                with psycopg2.connect(PG, connect_timeout=10) as c:  # one transaction: the trigger is off only inside
                    cur = c.cursor()
                    if trigger:
                        cur.execute("ALTER TABLE %s DISABLE TRIGGER %s" % (table, trigger))
                    cur.execute(sql)
                    if trigger:
                        cur.execute("ALTER TABLE %s ENABLE TRIGGER %s" % (table, trigger))
                c.close()
                if sql is change:
                    p, got = reconcile()
                    self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
                    self.assertTrue(want <= got, (want, got))
                    for check, subject in want:
                        self.assertIn("DIFFERENCE %s: %s: expected" % (check, subject), p.stdout)
                        self.assertIn("\n  %s: %s\n" % (check, subject), p.stderr)
            p, got = reconcile()
            self.assertEqual((p.returncode, got), (0, set()), p.stdout)

        req = "request " + r1
        plant("usage", "usage_immutable",
              "UPDATE usage SET cost_pico = cost_pico + 1 WHERE request_id = '%s'" % r1,
              "UPDATE usage SET cost_pico = cost_pico - 1 WHERE request_id = '%s'" % r1,
              {("usage_cost", req), ("usage_debit", req)})
        plant("customers", "customers_balance_guard",
              "UPDATE customers SET balance_pico = balance_pico + 1 WHERE id = %d" % cid,
              "UPDATE customers SET balance_pico = balance_pico - 1 WHERE id = %d" % cid,
              {("balance", "customer " + name)})
        plant("invoice_lines", "invoice_lines_immutable",
              "UPDATE invoice_lines SET quantity = quantity + 1, amount_pico = (quantity + 1) * unit_price"
              " WHERE invoice_id = %d AND line_no = 1" % inv,
              "UPDATE invoice_lines SET quantity = quantity - 1, amount_pico = (quantity - 1) * unit_price"
              " WHERE invoice_id = %d AND line_no = 1" % inv,
              {("invoice_total", "invoice %d (customer %d, %s)" % (inv, cid, month)),
               ("invoice_lines", "invoice %d line 1" % inv)})
        plant("invoices", "invoices_immutable",
              "UPDATE invoices SET opening_pico = opening_pico + 7, closing_pico = closing_pico + 7 WHERE id = %d" % inv,
              "UPDATE invoices SET opening_pico = opening_pico - 7, closing_pico = closing_pico - 7 WHERE id = %d" % inv,
              {("invoice_opening", "invoice %d" % inv)})
        hour = time.strftime("%Y-%m-%dT%H:00:00.000000Z", time.gmtime(t // 10**6))
        plant("usage_hourly", None,
              "UPDATE usage_hourly SET requests = requests + 1 WHERE customer_id = %d" % cid,
              "UPDATE usage_hourly SET requests = requests - 1 WHERE customer_id = %d" % cid,
              {("rollup", "customer %d hour %s key 0 model %s" % (cid, hour, MODEL))})
        # cost and tokens in a rollup row without requests (no usage row at all), the daily rollup
        # kept equal to the hourly ones: before migration 0021 the hourly check skipped rows with
        # requests 0 (refusals only), so reports showed this money and reconcile agreed
        plant("usage_hourly", None,
              "INSERT INTO usage_hourly (customer_id, hour, key_id, model, requests, completion_tokens, cost_pico)"
              " VALUES (%d, '%s', 0, 'ghost', 0, 7, 5000000);"
              " UPDATE usage_daily SET completion_tokens = completion_tokens + 7, cost_pico = cost_pico + 5000000"
              " WHERE customer_id = %d" % (cid, hour, cid),
              "DELETE FROM usage_hourly WHERE customer_id = %d AND model = 'ghost';"
              " UPDATE usage_daily SET completion_tokens = completion_tokens - 7, cost_pico = cost_pico - 5000000"
              " WHERE customer_id = %d" % (cid, cid),
              {("rollup", "customer %d hour %s key 0 model ghost" % (cid, hour))})
        day = time.strftime("%Y-%m-%d", time.gmtime(t // 10**6))
        plant("usage_daily", None,
              "UPDATE usage_daily SET cost_pico = cost_pico + 1 WHERE customer_id = %d" % cid,
              "UPDATE usage_daily SET cost_pico = cost_pico - 1 WHERE customer_id = %d" % cid,
              {("rollup_daily", "customer %d day %s" % (cid, day))})

    def test_ctl_unreachable_silent_or_misconfigured(self):
        """tollgatectl against an admin API that accepts and never answers: a clear message and exit
        1 after TOLLGATE_ADMIN_TIMEOUT (before: 30 s, then "Resource temporarily unavailable"); a
        port that is not one is a usage error (before, :99999 connected to port 34463, :abc said
        "Servname not supported"); nothing listening: refused at once."""
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        try:
            url = "http://127.0.0.1:%d" % silent.getsockname()[1]
            for args, what in ((["balance", "--customer", "x"], ""),
                               (["credit", "add", "--customer", "x", "--usd", "1"], "may or may not have been done")):
                p = self.s.ctl(*args, check=False, env_extra={"TOLLGATE_ADMIN_URL": url, "TOLLGATE_ADMIN_TIMEOUT": "1"})
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn("no answer from the admin API at %s within 1 s" % url, p.stderr)
                self.assertIn(what, p.stderr)
        finally:
            silent.close()
        for url in ("http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://127.0.0.1:"):
            p = self.s.ctl("balance", "--customer", "x", check=False, env_extra={"TOLLGATE_ADMIN_URL": url})
            self.assertEqual(p.returncode, 2, (url, p.stderr))
            self.assertIn("bad port", p.stderr)
        p = self.s.ctl("balance", "--customer", "x", check=False,
                       env_extra={"TOLLGATE_ADMIN_URL": url, "TOLLGATE_ADMIN_TIMEOUT": "0"})
        self.assertEqual(p.returncode, 2, p.stderr)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nothing listens there now
        p = self.s.ctl("balance", "--customer", "x", check=False,
                       env_extra={"TOLLGATE_ADMIN_URL": "http://127.0.0.1:%d" % port})
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("cannot connect to the admin API at http://127.0.0.1:%d: Connection refused" % port, p.stderr)

    def test_reversed_period_refused(self):
        """A period whose from is after its to is a 400 naming both, on every command that takes one;
        before, it was answered as an empty period: reconcile said "everything agrees" (exit 0)
        having checked no usage row.  A period with from = to (instants) is empty, not an error."""
        name, _ = self.customer("1")
        rev, empty = ("--from", "2026-12-01", "--to", "2026-11-01"), ("--from", "2026-11-01", "--to", "2026-11-01T00:00:00Z")
        for cmd in (["usage", "--customer", name], ["credit", "list", "--customer", name], ["reconcile"],
                    ["report", "usage", "--customer", name], ["report", "top"],
                    ["report", "balance", "--customer", name]):
            p = self.s.ctl(*cmd, *rev, check=False)
            self.assertEqual(p.returncode, 1, (cmd, p.stdout[:300]))
            self.assertIn("is after to", p.stderr, cmd)
            self.assertIn("HTTP 400", p.stderr, cmd)
            j = json.loads(self.s.ctl("--json", *cmd, *empty).stdout)
            self.assertEqual(j.get("data", []), [], cmd)
        st, j = self.api.json("GET", "/admin/v1/reconcile?from=1796000000&to=1795000000")
        self.assertEqual((st, j["error"]["code"]), (400, "invalid_value"))
        # 8 digits are a date, not 20,261,130 Unix seconds (1970-08-23); 10 digits are Unix seconds
        j = json.loads(self.s.ctl("--json", "usage", "--customer", name, "--from", "20261130", "--to", "1796083200").stdout)
        self.assertEqual((j["from"], j["to"]), ("2026-11-30T00:00:00+00:00", "2026-12-01T00:00:00+00:00"))

    def test_bad_times_are_400_naming_the_parameter(self):
        """A from/to (or effective_from, expires_at) that is not a time is a 400 invalid_value naming
        the parameter, in the API's error format; before, PostgreSQL's own text came back
        ('invalid input syntax for type timestamp with time zone: ...', param null)."""
        name, _ = self.customer("1")
        for path in ("/admin/v1/reconcile?%s", "/admin/v1/customers/%s/usage?%%s" % name,
                     "/admin/v1/customers/%s/ledger?%%s" % name, "/admin/v1/reports/top?%s",
                     "/admin/v1/reports/usage?customer=%s&%%s" % name,
                     "/admin/v1/reports/balance?customer=%s&%%s" % name):
            for qs, param in (("from=yesterday-ish", "from"), ("from=2026-02-30", "from"),
                              ("from=2026-11-01&to=2026-13-01", "to"), ("to=2026-11-01T25:00:00Z", "to"),
                              ("from=2026-11-01T10:00:00%2B99:00", "from"), ("from=1e9", "from")):
                st, j = self.api.json("GET", path % qs)
                self.assertEqual(st, 400, (path % qs, j))
                e = j["error"]
                self.assertEqual((e["code"], e["param"], e["type"]), ("invalid_value", param, "invalid_request_error"),
                                 (path % qs, e))
                self.assertIn("ISO 8601", e["message"])
                self.assertNotIn("timestamp with time zone", e["message"])
        for qs in ("from=2026-11-30", "from=2026-11-30T12:00:00Z&to=2026-12-01 00:00:00.5+01:00",
                   "from=20261130&to=1796083200", "from=-infinity&to=infinity", "from=2026-11-30T12:00-0530"):
            st, j = self.api.json("GET", "/admin/v1/reconcile?" + qs.replace(" ", "%20").replace("+", "%2B"))
            self.assertEqual(st, 200, (qs, j))
        p = self.s.ctl("usage", "--customer", name, "--from", "last tuesday", check=False)
        self.assertEqual(p.returncode, 1, p.stdout[:300])
        self.assertIn("from must be Unix seconds or an ISO 8601 date", p.stderr)
        self.assertNotIn("timestamp with time zone", p.stderr)
        st, j = self.api.json("POST", "/admin/v1/prices", {"model": "m-" + uuid.uuid4().hex[:8],
                                                            "input_cache_miss": "1", "input_cache_hit": "1",
                                                            "output": "1", "effective_from": "soon"})
        self.assertEqual((st, j["error"]["param"]), (400, "effective_from"), j)

    def test_unix_seconds_in_bodies(self):
        """effective_from and expires_at take Unix seconds as from and to do (and 8 digits as a
        date); before, they were a 400 ('date/time field value out of range')."""
        name, _ = self.customer("1")
        day = (int(time.time()) // 86400 + 10) * 86400  # a UTC midnight 10 days ahead
        iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(day))
        model = "unix-" + uuid.uuid4().hex[:8]
        j = json.loads(self.s.ctl("--json", "price", "set", "--model", model, "--input-miss", "1", "--input-hit", "1",
                                  "--output", "1", "--effective-from", str(day)).stdout)
        self.assertEqual(j["effective_from"], iso)
        j = json.loads(self.s.ctl("--json", "price", "override", "--customer", name, "--model", model, "--percent",
                                  "50", "--effective-from", str(day)).stdout)
        self.assertEqual(j["effective_from"], iso)
        out = self.s.ctl("--json", "key", "create", "--customer", name, "--expires-at", str(day)).stdout
        k = json.loads(out.splitlines()[0])
        self.assertEqual(k["expires_at"], iso)
        j = json.loads(self.s.ctl("--json", "key", "update", str(k["id"]), "--expires-at",
                                  time.strftime("%Y%m%d", time.gmtime(day - 86400))).stdout)
        self.assertEqual(j["expires_at"], time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(day - 86400)))

    def test_invoices_finalized_automatically(self):
        """bill_new's timer finalizes last month a configured time after it ended (here 1 s)."""
        name, cid = self.customer("1")
        now = time.gmtime()
        y, m = (now.tm_year, now.tm_mon - 1) if now.tm_mon > 1 else (now.tm_year - 1, 12)
        month = "%04d-%02d" % (y, m)
        t = int(time.mktime(time.strptime("%s-10 08:00" % month, "%Y-%m-%d %H:%M")) - time.timezone) * 10**6
        self.settle_at(cid, t, 100, 0, 10)
        self.s.drain()
        spool = tempfile.mkdtemp(prefix="billtest-spool.")
        os.environ["BILL_INVOICE_AFTER_S"] = "1"
        try:
            auto = Server(PG, 18698, spool)
        finally:
            del os.environ["BILL_INVOICE_AFTER_S"]
        try:
            deadline = time.time() + 150  # the first check runs 1 s after start, then every minute
            while not q("SELECT 1 FROM invoices WHERE customer_id = %s", cid) and time.time() < deadline:
                time.sleep(0.2)
        finally:
            auto.stop()
            shutil.rmtree(spool, ignore_errors=True)
        row = q("SELECT to_char(month, 'YYYY-MM'), finalized_by, usage_pico FROM invoices WHERE customer_id = %s", cid)
        self.assertEqual(row, [(month, "auto", 100 * PRICE[0] + 10 * PRICE[2])])
        self.assertEqual(unexpected_stderr(auto.err_lines), [])
        self.assertIn("auto", [a[0] for a in q("SELECT actor FROM admin_audit WHERE target = %s", "month:" + month)])


if __name__ == "__main__":
    main()
