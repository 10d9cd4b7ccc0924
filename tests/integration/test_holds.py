"""Money that cannot be overspent: balance holds through credit leases and
spending limits, checked on two gateway instances at once (issue 7), and keys
refused by their checksum without any lookup (issue 8).

Runs against the test stack (scripts/stack.sh test-up) plus gateway
instances this test starts on the same PostgreSQL, Redis and worker.  Every
number is read back from PostgreSQL: the usage rows, the ledger, the balance
and the credit leases."""

import json
import os
import sys
import threading
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwinstances import Instances, https  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import ctl, q, query, wait_for  # noqa: E402

E = os.environ
MODEL = E["TG_TEST_MODEL"]
BASE = int(E["TG_TEST_GATEWAY"].rsplit(":", 1)[1])
PRICE_MISS, PRICE_OUT = 270000, 1100000  # stack.sh's demo prices, pico-USD per token
MAX_TOKENS = 256
WAIT = float(E.get("TG_TEST_WAIT", "60"))


def new_key(cust, *extra):
    return ctl("key", "create", "--customer", cust, *extra).strip().splitlines()[-1]


def stream(port, key, results, i):
    """One streaming request read to its end; results[i] = (status, code, saw [DONE])."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": MAX_TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}
    try:
        st, h, data = https(port, "POST", "/v1/chat/completions", key, body, timeout=WAIT * 3)
        code = None
        if st != 200:
            code = json.loads(data)["error"]["code"]
        results[i] = (st, code, b"data: [DONE]" in data, h.get("x-request-id"))
    except Exception as e:  # recorded, asserted by the caller
        results[i] = ("exception", repr(e), False, None)


class Holds(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Instances("holds-instances", [BASE + 40, BASE + 41], lease_idle_ms=300).start()
        # the prompt's token count, from a real request
        cust = "holds-probe-" + uuid.uuid4().hex[:8]
        ctl("customer", "create", cust, "--credit-usd", "1")
        k = new_key(cust)
        st, _, b = https(cls.gw.ports[0], "POST", "/v1/chat/completions", k,
                         {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1})
        assert st == 200, b
        cls.prompt = json.loads(b)["usage"]["prompt_tokens"]
        cls.max_cost = cls.prompt * PRICE_MISS + MAX_TOKENS * PRICE_OUT

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def run_burst(self, key, n):
        results = [None] * n
        threads = [threading.Thread(target=stream, args=(self.gw.ports[i % 2], key, results, i)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 4)
        self.assertTrue(all(r is not None for r in results), "a request did not finish")
        return results

    def customer_state(self, cust):
        (cid, bal), = q("SELECT id, balance_pico FROM customers WHERE name = %s", cust)
        (spent, rows), = q("SELECT coalesce(sum(cost_pico), 0), count(*) FROM usage WHERE customer_id = %s", cid)
        return cid, int(bal), int(spent), rows

    def assert_no_leases_left(self, cid):
        # every lease is given back once idle (lease_idle_ms 300 here)
        wait_for(lambda: q("SELECT count(*) FROM credit_leases WHERE customer_id = %s", cid)[0][0] == 0,
                 "the credit leases to be given back")
        for i in range(2):
            m = self.gw.metrics(i)
            self.assertEqual(m["tollgate_open_holds"], 0, "instance %d" % i)
            self.assertEqual(m["tollgate_open_holds_pico"], 0, "instance %d" % i)

    def test_no_overspend_with_two_instances(self):
        cust = "holds-" + uuid.uuid4().hex[:8]
        credit = 10 * self.max_cost + self.max_cost // 2  # room for ten requests, not eleven
        ctl("customer", "create", cust, "--credit-usd", "%d.%012d" % divmod(credit, 10 ** 12))
        key = new_key(cust)
        results = self.run_burst(key, 64)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 402]
        self.assertEqual(len(ok) + len(refused), 64, results)
        self.assertTrue(all(r[2] for r in ok), "an accepted stream did not end with [DONE]")
        self.assertTrue(all(r[1] == "insufficient_balance" for r in refused), refused)
        self.assertGreaterEqual(len(ok), 1)
        self.assertGreaterEqual(len(refused), 1)
        # (more than ten may be accepted: a stream that ends early gives back what it did
        # not spend, and a later request may then fit; what may never happen is below)
        self.gw.settled()
        cid, bal, spent, rows = self.customer_state(cust)
        print("\n  holds: %d accepted, %d refused (402); spent %d of %d pico-USD; balance %d"
              % (len(ok), len(refused), spent, credit, bal), file=sys.stderr)
        self.assertEqual(rows, len(ok), "one usage row per accepted request")
        self.assertLessEqual(spent, credit)
        self.assertGreaterEqual(bal, 0)
        self.assertEqual(bal, credit - spent)
        self.assertEqual(q("SELECT count(*) FROM ledger_mismatch")[0][0], 0)
        self.assert_no_leases_left(cid)
        # the credit left still serves a request that fits
        left = credit - spent
        if left >= self.max_cost:
            st, _, b = https(self.gw.ports[0], "POST", "/v1/chat/completions", key,
                             {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
                              "max_tokens": MAX_TOKENS})
            self.assertEqual(st, 200, b)
        # a 402 names what the request needs and what is left
        st, _, b = https(self.gw.ports[1], "POST", "/v1/chat/completions", key,
                         {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
                          "max_tokens": 163840})  # the largest cap the gateway takes (max_tokens_limit)
        self.assertEqual(st, 402, b)
        err = json.loads(b)["error"]
        self.assertEqual(err["code"], "insufficient_balance")
        self.assertIn("may cost up to $", err["message"])

    def test_spending_limits(self):
        cust = "spend-" + uuid.uuid4().hex[:8]
        ctl("customer", "create", cust, "--credit-usd", "100")
        limit = 5 * self.max_cost + self.max_cost // 2  # five requests, not six
        usd = "%d.%012d" % divmod(limit, 10 ** 12)
        key = new_key(cust, "--daily-limit-usd", usd)
        results = self.run_burst(key, 32)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 402]
        self.assertEqual(len(ok) + len(refused), 32, results)
        self.assertTrue(all(r[1] == "spending_limit_exceeded" for r in refused), refused)
        self.assertGreaterEqual(len(ok), 1)
        self.assertGreaterEqual(len(refused), 1)
        self.gw.settled()
        (kid,), = q("SELECT id FROM api_keys WHERE prefix = %s", key[:15])
        (spent,), = q("SELECT coalesce(sum(cost_pico), 0) FROM usage WHERE key_id = %s", kid)
        self.assertLessEqual(int(spent), limit)
        # another key of the same customer is not limited by it ...
        other = new_key(cust)
        st, _, b = https(self.gw.ports[0], "POST", "/v1/chat/completions", other,
                         {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
        self.assertEqual(st, 200, b)
        # ... but a customer-wide monthly limit below what was spent stops both keys
        before = [self.gw.metrics(i)["tollgate_key_invalidations_total"] for i in range(2)]
        ctl("customer", "spending-limits", cust, "--monthly-usd", "%d.%012d" % divmod(int(spent), 10 ** 12))
        wait_for(lambda: all(self.gw.metrics(i)["tollgate_key_invalidations_total"] > before[i] for i in range(2)),
                 "the limit change to reach both instances")
        for port in self.gw.ports:
            st, _, b = https(port, "POST", "/v1/chat/completions", other,
                             {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
            self.assertEqual(st, 402, b)
            self.assertEqual(json.loads(b)["error"]["code"], "spending_limit_exceeded")
            self.assertIn("monthly", json.loads(b)["error"]["message"])
        (cid,), = q("SELECT id FROM customers WHERE name = %s", cust)
        self.assert_no_leases_left(cid)


class SpendingDays(unittest.TestCase):
    """Spending limits count UTC days, whatever the database session's time
    zone: the day a request falls in is the one the rollups, invoices and
    dashboards show."""

    def test_daily_limit_counts_utc_days_in_any_session_time_zone(self):
        cust = "utcday-" + uuid.uuid4().hex[:8]
        ctl("customer", "create", cust, "--credit-usd", "100")
        key = new_key(cust, "--daily-limit-usd", "1.00")
        (kid, cid), = q("SELECT k.id, k.customer_id FROM api_keys k WHERE k.prefix = %s", key[:15])
        # A spend at an instant inside today's UTC day but outside the local
        # day of a far time zone, or the other way round (which one depends on
        # the hour now): +14 h starts its day at 10:00 UTC, -12 h at 12:00 UTC.
        (hour,), = q("SELECT extract(hour FROM now() AT TIME ZONE 'UTC')::int")
        if hour >= 11:
            zone, at, in_utc_day = "Etc/GMT-14", "date_trunc('day', now() AT TIME ZONE 'UTC') + interval '30 min'", True
        else:
            zone, at, in_utc_day = "Etc/GMT+12", "date_trunc('day', now() AT TIME ZONE 'UTC') - interval '30 min'", False
        cost = 400_000_000_000  # 0.40 USD: one cache-miss token at that price
        # a whole settlement as the settler writes one (row, debit, hourly and daily rollups), so that
        # every later reconcile of the stack agrees (test_money.py reconciles everything)
        q("WITH u AS (INSERT INTO usage (request_id, customer_id, key_id, model, prompt_tokens,"
          " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens,"
          " price_input_cache_miss, price_input_cache_hit, price_output, cost_pico, http_status, stream, received_at,"
          " finished_at) SELECT %s, %s, %s, %s, 1, 0, 1, 0, 0, %s, 0, 0, %s, 200, false, t, t"
          " FROM (SELECT (" + at + ") AT TIME ZONE 'UTC' AS t) x RETURNING *),"
          " l AS (INSERT INTO ledger (customer_id, kind, amount_pico, request_id)"
          "   SELECT customer_id, 'usage', -cost_pico, request_id FROM u),"
          " h AS (INSERT INTO usage_hourly (customer_id, hour, key_id, model, requests, prompt_cache_miss_tokens,"
          "   cost_pico) SELECT customer_id, date_trunc('hour', received_at, 'UTC'), key_id, model, 1, 1, cost_pico"
          "   FROM u)"
          " INSERT INTO usage_daily (customer_id, day, requests, prompt_cache_miss_tokens, cost_pico)"
          " SELECT customer_id, date_trunc('day', received_at, 'UTC'), 1, 1, cost_pico FROM u",
          str(uuid.uuid4()), cid, kid, MODEL, cost, cost)
        room = {}
        for tz in ("UTC", zone):
            (kd,), = query(E["TG_TEST_PG"], "SELECT kd FROM tg_lease_grant('utcday-test', %s, %s, 0, 0, 1000)",
                           kid, cid, options="-c TimeZone=" + tz)
            room[tz] = int(kd)
        want = 10 ** 12 - (cost if in_utc_day else 0)
        self.assertEqual(room, {"UTC": want, zone: want})
        self.assertEqual(q("SELECT count(*) FROM credit_leases WHERE holder = 'utcday-test'"), [(0,)])


class LeaseTopUp(unittest.TestCase):
    """In the steady state no hold waits for PostgreSQL: a lease below half a
    chunk is topped up in the background while requests keep taking from it.
    A chunk here is eight requests' worth, so 48 requests need several grants;
    only the first hold (an empty lease) waits for one."""

    def test_steady_state_holds_do_not_wait(self):
        cust = "topup-" + uuid.uuid4().hex[:8]
        ctl("customer", "create", cust, "--credit-usd", "10")
        key = new_key(cust)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
        st, _, b = https(BASE, "POST", "/v1/chat/completions", key, body)  # the stack's gateway
        self.assertEqual(st, 200, b)
        prompt = json.loads(b)["usage"]["prompt_tokens"]
        # a chunk of eight requests' worth, in pico-USD
        chunk = 8 * (prompt * PRICE_MISS + 2 * PRICE_OUT)
        gw = Instances("topup-instance", [BASE + 43], loops=1, lease_chunk_pico=chunk).start()
        try:
            for _ in range(48):
                st, _, b = https(gw.ports[0], "POST", "/v1/chat/completions", key, body)
                self.assertEqual(st, 200, b)
            m = gw.metrics(0)
            print("\n  lease top-up: 48 requests, %d grants, %d holds waited"
                  % (m["tollgate_lease_grants_total"], m["tollgate_hold_waits_total"]), file=sys.stderr)
            self.assertGreaterEqual(m["tollgate_lease_grants_total"], 4)
            self.assertEqual(m["tollgate_holds_total"], 48)
            # the first hold waits (no lease yet); a top-up that comes back after the
            # lease ran dry makes another wait, which takes four requests answered
            # before one grant comes back: rare, and never most of them
            self.assertLessEqual(m["tollgate_hold_waits_total"], m["tollgate_lease_grants_total"] // 2)
        finally:
            gw.stop()


class OfflineKeyCheck(unittest.TestCase):
    """A key with a wrong shape or checksum is refused without PostgreSQL or Redis:
    an instance whose database and Redis do not exist still answers it 401."""

    def test_checksum_refused_without_lookup(self):
        gw = Instances("offline-instance", [BASE + 42], postgres="host=127.0.0.1 port=1 dbname=x user=x",
                       redis="127.0.0.1:1").start()
        try:
            # a real key of the stack, with one character changed: its checksum fails
            real = E["TG_TEST_DEMO_KEY"]
            self.assertTrue(real.startswith("sk-tg1-"), real)
            typo = real[:20] + ("A" if real[20] != "A" else "B") + real[21:]
            for k in (typo, "sk-tg1-" + "0" * 46, "sk-not-a-key", "x" * 80):
                st, _, b = https(gw.ports[0], "GET", "/v1/models", k)
                self.assertEqual(st, 401, b)
                self.assertEqual(json.loads(b)["error"]["code"], "invalid_api_key")
            self.assertEqual(gw.metrics(0)["tollgate_key_format_rejects_total"], 4)
            self.assertEqual(gw.metrics(0)["tollgate_key_cache_misses_total"], 0)
            # a well-formed key does need the lookup, which cannot happen here: 503
            st, _, b = https(gw.ports[0], "GET", "/v1/models", real)
            self.assertEqual(st, 503, b)
            self.assertEqual(gw.metrics(0)["tollgate_key_cache_misses_total"], 1)
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
