"""Price overrides and reconciliation through the whole stack (scripts/stack.sh
test-up): a customer with a percentage override sends a request through the
real TLS gateway; its usage row carries the overridden prices and the price
version (price_id, override_id), its cost is exact at those prices; then
`tollgatectl reconcile` finds the whole database in agreement (usage rows and
debits, balances, invoices, hourly rollups)."""

import http.client
import json
import os
import ssl
import sys
import time
import unittest
import urllib.parse
import uuid


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tgskip import main  # noqa: E402
from tgstack import ctl_run as ctl, q  # noqa: E402

E = os.environ
MODEL = E["TG_TEST_MODEL"]
GW = urllib.parse.urlparse(E["TG_TEST_GATEWAY"])
WAIT = 60  # seconds for a settlement to land


def chat(key):
    ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
    c = http.client.HTTPSConnection("127.0.0.1", GW.port, context=ctx, timeout=120)
    c.request("POST", "/v1/chat/completions",
              body=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}],
                               "max_tokens": 5}),
              headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return r.status, r.getheader("x-request-id"), body


def get(path, key, method="GET"):
    ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
    c = http.client.HTTPSConnection("127.0.0.1", GW.port, context=ctx, timeout=120)
    c.request(method, path, headers={"Authorization": "Bearer " + key})
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


class Balance(unittest.TestCase):
    """GET /user/balance, DeepSeek's balance endpoint, with the customer's key:
    what the ledger says, exactly, after a request was billed."""

    def test_balance_endpoint_follows_the_ledger(self):
        name = "it-bal-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", name, "--credit-usd", "2.5")
        key = ctl("key", "create", "--customer", name).stdout.strip().splitlines()[-1]
        for path in ("/user/balance", "/v1/user/balance"):
            st, h, b = get(path, key)
            self.assertEqual(st, 200, b)
            self.assertEqual(b, {"is_available": True, "balance_infos": [
                {"currency": "USD", "total_balance": "2.500000", "granted_balance": "0.000000",
                 "topped_up_balance": "2.500000", "total_balance_pico": "2500000000000"}]})
            self.assertTrue(h.get("x-request-id"))
        st, rid, body = chat(key)
        self.assertEqual(st, 200, body)
        deadline = time.time() + WAIT
        while not q("SELECT 1 FROM usage WHERE request_id = %s", rid) and time.time() < deadline:
            time.sleep(0.1)
        (cost,), = q("SELECT cost_pico FROM usage WHERE request_id = %s", rid)
        self.assertGreater(cost, 0)
        left = 2500000000000 - cost
        st, _, b = get("/user/balance", key)
        self.assertEqual(st, 200, b)
        info = b["balance_infos"][0]
        self.assertEqual(info["total_balance_pico"], str(left))
        self.assertEqual(info["topped_up_balance"], info["total_balance"])
        # its USD is the pico-USD rounded half up to 6 decimals
        self.assertEqual(info["total_balance"], "%d.%06d" % divmod((left + 500000) // 1000000, 1000000))
        # a customer with nothing left may still ask: not available, not a 402
        poor = "it-bal0-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", poor)
        pkey = ctl("key", "create", "--customer", poor).stdout.strip().splitlines()[-1]
        st, _, b = get("/user/balance", pkey)
        self.assertEqual((st, b["is_available"], b["balance_infos"][0]["total_balance_pico"]), (200, False, "0"))
        # only with a key that works, and only read
        (kid,), = q("SELECT id FROM api_keys WHERE prefix = %s", pkey[:15])
        ctl("key", "revoke", str(kid))
        deadline = time.time() + WAIT
        while get("/user/balance", pkey)[0] == 200 and time.time() < deadline:
            time.sleep(0.05)
        st, _, b = get("/user/balance", pkey)
        self.assertEqual((st, b["error"]["code"]), (401, "invalid_api_key"))
        st, h, b = get("/user/balance", key, method="POST")
        self.assertEqual((st, h.get("allow")), (405, "GET, HEAD"))


    def test_is_available_follows_spending_limits(self):
        """is_available says whether a request with this key would be admitted: not only balance
        left, but room under the customer's and the key's spending limits (it said true while
        every request was refused 402 for a daily limit)."""
        name = "it-bal2-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", name, "--credit-usd", "5")
        key = json.loads(ctl("--json", "key", "create", "--customer", name).stdout)
        other = json.loads(ctl("--json", "key", "create", "--customer", name).stdout)
        st, rid, body = chat(key["key"])
        self.assertEqual(st, 200, body)
        deadline = time.time() + WAIT
        while not q("SELECT 1 FROM usage WHERE request_id = %s", rid) and time.time() < deadline:
            time.sleep(0.1)
        (cost,), = q("SELECT cost_pico FROM usage WHERE request_id = %s", rid)
        usd = lambda pico: "%d.%012d" % divmod(pico, 10**12)  # noqa: E731
        avail = lambda k: get("/user/balance", k["key"])[2]["is_available"]  # noqa: E731
        self.assertEqual((avail(key), avail(other)), (True, True))
        # the customer's daily limit reached (what it spent today is the limit): neither key
        ctl("customer", "spending-limits", name, "--daily-usd", usd(cost))
        self.assertEqual((avail(key), avail(other)), (False, False))
        ctl("customer", "spending-limits", name, "--daily-usd", usd(cost + 1))
        self.assertEqual((avail(key), avail(other)), (True, True))
        ctl("customer", "spending-limits", name, "--daily-usd", "none", "--monthly-usd", usd(cost))
        self.assertEqual((avail(key), avail(other)), (False, False))
        ctl("customer", "spending-limits", name, "--monthly-usd", "none")
        # the key's own limit reached: that key only (the other one spent nothing)
        ctl("key", "update", str(key["id"]), "--monthly-limit-usd", usd(cost))
        self.assertEqual((avail(key), avail(other)), (False, True))
        ctl("key", "update", str(key["id"]), "--monthly-limit-usd", "none", "--daily-limit-usd", usd(cost))
        self.assertEqual((avail(key), avail(other)), (False, True))
        ctl("key", "update", str(key["id"]), "--daily-limit-usd", usd(cost + 1))
        self.assertEqual((avail(key), avail(other)), (True, True))
        ctl("key", "update", str(other["id"]), "--daily-limit-usd", usd(1))
        self.assertEqual((avail(key), avail(other)), (True, True))

    def test_balance_shows_a_request_at_once(self):
        # read on the connection that sent the request, right after its answer:
        # its debit is there, though its settlement batch may not have committed
        # (the rows the gateway holds for the customer are taken off)
        name = "it-bal1-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", name, "--credit-usd", "1")
        key = ctl("key", "create", "--customer", name).stdout.strip().splitlines()[-1]
        ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
        c = http.client.HTTPSConnection("127.0.0.1", GW.port, context=ctx, timeout=120)
        auth = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
        reads = []
        try:
            for i, path in enumerate(("/v1/chat/completions", "/v1/completions", "/beta/completions")):
                body = {"model": MODEL, "max_tokens": 3}
                body.update({"messages": [{"role": "user", "content": "hi %d" % i}]} if "chat" in path else
                            {"prompt": "def f%d(" % i, "suffix": "return 1" if "beta" in path else None})
                c.request("POST", path, json.dumps(body), auth)
                r = c.getresponse()
                self.assertEqual(r.status, 200, r.read())
                rid = r.getheader("x-request-id")
                r.read()
                c.request("GET", "/v1/user/balance", headers=auth)
                r = c.getresponse()
                b = json.loads(r.read())
                self.assertEqual(r.status, 200, b)
                reads.append((rid, b["balance_infos"][0]["total_balance_pico"], b["balance_infos"][0]["total_balance"]))
        finally:
            c.close()
        left = 1000000000000
        for rid, pico, usd in reads:
            deadline = time.time() + WAIT
            while not q("SELECT 1 FROM usage WHERE request_id = %s", rid) and time.time() < deadline:
                time.sleep(0.1)
            (cost,), = q("SELECT cost_pico FROM usage WHERE request_id = %s", rid)
            self.assertGreater(cost, 0)
            left -= cost
            self.assertEqual((pico, usd), (str(left), "%d.%06d" % divmod((left + 500000) // 1000000, 1000000)))
        st, _, b = get("/user/balance", key)  # and later, from PostgreSQL alone
        self.assertEqual((st, b["balance_infos"][0]["total_balance_pico"]), (200, str(left)))


class Money(unittest.TestCase):
    def test_override_billed_through_the_gateway_and_reconcile(self):
        name = "it-money-" + uuid.uuid4().hex[:10]
        ctl("customer", "create", name, "--credit-usd", "1")
        ov = json.loads(ctl("--json", "price", "override", "--customer", name, "--model", MODEL,
                            "--percent", "50").stdout)
        key = ctl("key", "create", "--customer", name).stdout.strip().splitlines()[-1]
        (pid, miss, hit, out), = q("SELECT id, input_cache_miss, input_cache_hit, output FROM tg_price(%s, now())",
                                   MODEL)
        half = [(2 * p + 1) // 2 if p % 2 else p // 2 for p in (miss, hit, out)]  # half away from zero
        st, rid, body = chat(key)
        self.assertEqual(st, 200, body)
        self.assertTrue(rid)
        deadline = time.time() + WAIT
        rows = []
        while not rows and time.time() < deadline:
            rows = q("SELECT price_id, override_id, price_input_cache_miss, price_input_cache_hit, price_output,"
                     " prompt_cache_miss_tokens, prompt_cache_hit_tokens, completion_tokens, cost_pico"
                     " FROM usage WHERE request_id = %s", rid)
            if not rows:
                time.sleep(0.1)
        self.assertEqual(len(rows), 1, "the request was not billed within %d s" % WAIT)
        r = rows[0]
        self.assertEqual(r[:5], (pid, ov["id"], *half), "billed at the override, with its version")
        self.assertEqual(r[8], r[5] * half[0] + r[6] * half[1] + r[7] * half[2])
        u = body["usage"]
        self.assertEqual((r[5] + r[6], r[7]), (u["prompt_tokens"], u["completion_tokens"]))
        (debit,), = q("SELECT -amount_pico FROM ledger WHERE request_id = %s", rid)
        self.assertEqual(debit, r[8])
        # the whole stack's database agrees with itself
        p = ctl("reconcile", check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("everything agrees", p.stdout)


if __name__ == "__main__":
    main()
