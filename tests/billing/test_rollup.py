"""Hourly rollups (usage_hourly) against a real PostgreSQL: after settlements,
duplicates and a spool replay, every rollup row equals the sums of the usage
rows it covers (and the ledger's debits); refusals (bill_refusal) appear as
counters.  The report endpoints (GET /admin/v1/reports/...) and tollgatectl
report equal direct SQL sums.

bill_server (tests/billing/bill_server.c) on port 18695 (18696: one on a dead
PostgreSQL, for the replay); names start with billtest-."""
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from test_billing import (PG, PRICE, MODEL, Server, ServerCase, q, new_name, wait_for, unexpected_stderr,
                          main)  # noqa: E402

HOUR_US = 3600 * 10**6
DEAD_PG = "host=127.0.0.1 port=1 dbname=tollgate user=tollgate connect_timeout=1"


def rid():
    return str(uuid.uuid4())


def usage_sums(cust):
    """Direct SQL over usage: {(hour_epoch, key_id, model): (requests, hit, miss, completion, reasoning, cost, 5xx)}."""
    rows = q("SELECT extract(epoch FROM date_trunc('hour', received_at, 'UTC'))::bigint, coalesce(key_id, 0), model,"
             " count(*), sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens), sum(completion_tokens),"
             " sum(reasoning_tokens), sum(cost_pico), count(*) FILTER (WHERE http_status >= 500)"
             " FROM usage WHERE customer_id = %s GROUP BY 1, 2, 3", cust)
    return {(r[0], r[1], r[2]): tuple(int(x) for x in r[3:]) for r in rows}


def daily_sums(cust):
    """Direct SQL over usage_hourly: {day_epoch: (requests, hit, miss, completion, reasoning, cost, 5xx, 402, 429, 5xx')}."""
    rows = q("SELECT extract(epoch FROM date_trunc('day', hour, 'UTC'))::bigint, sum(requests),"
             " sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens), sum(completion_tokens), sum(reasoning_tokens),"
             " sum(cost_pico), sum(failed_5xx), sum(refused_402), sum(refused_429), sum(refused_5xx)"
             " FROM usage_hourly WHERE customer_id = %s GROUP BY 1", cust)
    return {r[0]: tuple(int(x) for x in r[1:]) for r in rows}


def daily_rows(cust):
    rows = q("SELECT extract(epoch FROM day)::bigint, requests, prompt_cache_hit_tokens, prompt_cache_miss_tokens,"
             " completion_tokens, reasoning_tokens, cost_pico, failed_5xx, refused_402, refused_429, refused_5xx"
             " FROM usage_daily WHERE customer_id = %s", cust)
    return {r[0]: tuple(int(x) for x in r[1:]) for r in rows}


def rollup_rows(cust):
    rows = q("SELECT extract(epoch FROM hour)::bigint, key_id, model, requests, prompt_cache_hit_tokens,"
             " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico, failed_5xx"
             " FROM usage_hourly WHERE customer_id = %s AND requests > 0", cust)
    return {(r[0], r[1], r[2]): tuple(int(x) for x in r[3:]) for r in rows}


class Rollup(ServerCase):
    PORT = 18695

    def customer(self, keys=2):
        name = new_name()
        self.s.ctl("customer", "create", name, "--credit-usd", "100")
        for _ in range(keys):
            self.s.ctl("key", "create", "--customer", name)
        j = json.loads(self.s.ctl("key", "list", "--customer", name, "--json").stdout)
        cust = json.loads(self.s.ctl("balance", "--customer", name, "--json").stdout)["customer_id"]
        return name, cust, sorted(k["id"] for k in j["data"])

    def settle(self, rows):
        """rows: (rid, key, cust, model, prompt, hit, completion, reasoning, status, received_us)"""
        self.s.p.stdin.write("".join(
            "settle %s %d %d %s %d %d %d %d %d %d %d %d %d\n" % (r[0], r[1], r[2], r[3], *PRICE, *r[4:])
            for r in rows))
        self.s.p.stdin.flush()
        for _ in rows:
            self.assertEqual(self.s.reply(), "settled")

    def rows_for(self, cust, keys, n, base_us):
        out = []
        for i in range(n):
            prompt = 10 + i % 37
            out.append((rid(), keys[i % len(keys)], cust, (MODEL, MODEL + "-b")[i % 2], prompt, i % 7 % (prompt + 1),
                        3 + i % 11, i % 3, (200, 200, 200, 500, 429)[i % 5], base_us - (i % 4) * HOUR_US - i))
        return out

    def check(self, cust):
        u, h = usage_sums(cust), rollup_rows(cust)
        self.assertTrue(u)
        self.assertEqual(h, u)
        self.assertEqual(q("SELECT count(*) FROM usage_hourly_mismatch WHERE customer_id = %s", cust)[0][0], 0)
        self.assertEqual(daily_rows(cust), daily_sums(cust))  # the daily rollup sums the hourly one, exactly
        self.assertEqual(q("SELECT count(*) FROM usage_daily_mismatch WHERE customer_id = %s", cust)[0][0], 0)
        debits = q("SELECT coalesce(-sum(amount_pico), 0) FROM ledger WHERE customer_id = %s AND kind = 'usage'",
                   cust)[0][0]
        self.assertEqual(int(debits), sum(v[5] for v in h.values()))
        self.assertEqual(q("SELECT count(*) FROM ledger_mismatch")[0][0], 0)

    def test_rollup_equals_usage_with_duplicates(self):
        name, cust, keys = self.customer()
        now = int(time.time() * 1e6)
        rows = self.rows_for(cust, keys, 300, now)
        self.settle(rows[:200])
        # duplicates: in the same batches as new rows, and again once committed
        self.settle(rows[150:300] + rows[:50])
        self.s.drain()
        self.settle(rows[::3])
        st = self.s.drain()
        self.assertEqual(q("SELECT count(*) FROM usage WHERE customer_id = %s", cust)[0][0], 300)
        self.check(cust)
        self.assertGreater(st["inserted_total"], 0)
        # a usage row without a key is rolled up under key 0
        r = (rid(), 0, cust, MODEL, 5, 0, 1, 0, 200, now)
        self.settle([r, r])
        self.s.drain()
        self.check(cust)
        self.assertEqual(q("SELECT requests FROM usage_hourly WHERE customer_id = %s AND key_id = 0", cust)[0][0], 1)

    def test_rollup_after_spool_replay(self):
        """Rows spooled by a server whose PostgreSQL is down are replayed by the next one on the
        same spool, some of them already written by another server: each counted once."""
        name, cust, keys = self.customer()
        rows = self.rows_for(cust, keys, 40, int(time.time() * 1e6))
        spool = tempfile.mkdtemp(prefix="billtest-spool.")
        try:
            dead = Server(DEAD_PG, 18696, spool)
            for r in rows:
                self.assertEqual(dead.cmd("settle %s %d %d %s %d %d %d %d %d %d %d %d %d" % (
                    r[0], r[1], r[2], r[3], *PRICE, *r[4:])), "settled")
            dead.stop()
            self.assertTrue([f for f in os.listdir(spool) if f.endswith(".spool")], "nothing spooled")
            self.settle(rows[:15])  # written before the replay: the replay must skip them
            self.s.drain()
            again = Server(PG, 18696, spool)
            again.drain()
            again.stop()
            self.assertEqual(unexpected_stderr(again.err_lines, allowed=[r"^bill: replaying \d+ spooled"]), [])
            self.assertFalse([f for f in os.listdir(spool) if f.endswith(".spool")])
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        self.assertEqual(q("SELECT count(*) FROM usage WHERE customer_id = %s", cust)[0][0], 40)
        self.check(cust)

    def test_refusals_counted(self):
        name, cust, keys = self.customer(1)
        lines = ["refusal %d %d %s 402" % (cust, keys[0], MODEL)] * 3 + \
                ["refusal %d %d %s 429" % (cust, keys[0], MODEL)] * 5 + \
                ["refusal %d %d %s 503" % (cust, keys[0], MODEL)] * 2 + \
                ["refusal %d %d %s 404" % (cust, keys[0], MODEL)] * 4  # not a refusal: ignored
        for line in lines:
            self.assertEqual(self.s.cmd(line), "counted")
        sql = ("SELECT coalesce(sum(refused_402), 0), coalesce(sum(refused_429), 0), coalesce(sum(refused_5xx), 0),"
               " coalesce(sum(requests), 0), coalesce(sum(cost_pico), 0) FROM usage_hourly WHERE customer_id = %s")
        self.assertTrue(wait_for(lambda: q(sql, cust)[0][:3] == (3, 5, 2), 15), q(sql, cust))
        self.assertEqual(q(sql, cust)[0][3:], (0, 0))  # refusals carry no usage and no cost
        self.assertEqual(q("SELECT count(*) FROM usage_hourly_mismatch WHERE customer_id = %s", cust)[0][0], 0)
        # more later: added to the same hour's row
        self.assertEqual(self.s.cmd("refusal %d %d %s 429" % (cust, keys[0], MODEL)), "counted")
        self.assertTrue(wait_for(lambda: q(sql, cust)[0][:3] == (3, 6, 2), 15), q(sql, cust))
        # in the daily rollup too, in the same statement
        self.assertEqual(daily_rows(cust), daily_sums(cust))
        self.assertEqual(sum(v[8] for v in daily_rows(cust).values()), 6)


    # ---- reports: they read the rollups; they must equal direct sums over usage ----

    def report(self, path):
        st, j = self.s.http("GET", path)
        self.assertEqual(st, 200, j)
        return j

    def test_usage_report_equals_sql(self):
        name, cust, keys = self.customer(3)
        # a private period: hours of a day in 2001, 60 rows over 4 hours, 3 keys, 2 models
        base = int(time.mktime((2001, 3, 4, 12, 0, 0, 0, 0, 0)) - time.timezone) * 10**6 + 30 * 60 * 10**6
        rows = self.rows_for(cust, keys, 60, base)
        self.settle(rows + rows[:10])
        self.s.drain()
        cols = ("requests", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "completion_tokens",
                "reasoning_tokens", "cost_pico", "failed_5xx")
        sql_cols = ("count(*), sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens), sum(completion_tokens),"
                    " sum(reasoning_tokens), sum(cost_pico), count(*) FILTER (WHERE http_status >= 500)")
        for by, split, group in (("hour", "key,model", "coalesce(key_id, 0), model"), ("day", "", "NULL::bigint, NULL"),
                                 ("hour", "model", "NULL::bigint, model"), ("day", "key", "key_id, NULL")):
            j = self.report("/admin/v1/reports/usage?customer=%s&by=%s&split=%s&from=2001-03-04T00:00:00Z"
                            "&to=2001-03-05T00:00:00Z" % (name, by, split))
            want = q("SELECT extract(epoch FROM date_trunc(%s, received_at, 'UTC'))::bigint, " + group + ", "
                     + sql_cols + " FROM usage WHERE customer_id = %s AND received_at >= '2001-03-04T00:00:00Z'"
                     " AND received_at < '2001-03-05T00:00:00Z' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", by, cust)
            got = []
            for r in j["data"]:
                t = q("SELECT extract(epoch FROM %s::timestamptz)::bigint", r["period"])[0][0]
                self.assertIsInstance(r["cost_pico"], str)
                got.append((t, r.get("key_id"), r.get("model")) + tuple(int(r[c]) for c in cols))
            self.assertEqual(got, [tuple(int(x) if isinstance(x, (int, float)) or hasattr(x, "as_integer_ratio")
                                         else x for x in w) for w in want], (by, split))
            tot = q("SELECT " + sql_cols + " FROM usage WHERE customer_id = %s", cust)[0]
            self.assertEqual(tuple(int(j["totals"][c]) for c in cols), tuple(int(x) for x in tot))
            # every counter and sum is a string of digits, as money and tokens are (a JSON number
            # is a double to most readers: exact only up to 2^53); totals.requests was a number
            for r in j["data"] + [j["totals"]]:
                for c in cols + ("refused_402", "refused_429", "refused_5xx"):
                    self.assertRegex(r[c], r"^[0-9]+$", (c, r))
        self.assertEqual(len(self.report("/admin/v1/reports/usage?customer=%s&by=hour&split=key,model"
                                         % name)["data"]), len(rollup_rows(cust)))
        # tollgatectl: the same JSON, and a text table with the total
        out = self.s.ctl("report", "usage", "--customer", name, "--by", "day", "--json").stdout
        self.assertEqual(json.loads(out)["totals"], j["totals"])
        out = self.s.ctl("report", "usage", "--customer", name, "--by", "hour", "--split", "model").stdout
        self.assertIn("total", out)
        self.assertIn(MODEL + "-b", out)
        for bad in ("by=week", "split=colour"):
            st, e = self.s.http("GET", "/admin/v1/reports/usage?customer=%s&%s" % (name, bad))
            self.assertEqual(st, 400, e)
        st, e = self.s.http("GET", "/admin/v1/reports/usage?customer=billtest-nobody")
        self.assertEqual(st, 404, e)

    def test_top_report_equals_sql(self):
        # a private period of 4 hours in the 1990s (one per run): only this test's customers spend in it
        t0 = 631152000 + random.randrange(0, 80000) * 4 * 3600
        custs = []
        for n in (5, 1, 9, 3):
            name, cust, keys = self.customer(1)
            self.settle(self.rows_for(cust, keys, n * 4, t0 * 10**6 + 3 * HOUR_US + 1))
            custs.append((name, cust))
        self.s.drain()
        frm, to = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in (t0, t0 + 4 * 3600))
        want = q("SELECT c.name, sum(u.cost_pico), count(*) FROM usage u JOIN customers c ON c.id = u.customer_id"
                 " WHERE u.received_at >= %s AND u.received_at < %s GROUP BY c.name ORDER BY 2 DESC, min(c.id)",
                 frm, to)
        self.assertEqual(len(want), 4)
        j = self.report("/admin/v1/reports/top?from=%s&to=%s&limit=3" % (frm, to))
        self.assertEqual([(r["customer"], int(r["cost_pico"]), r["requests"]) for r in j["data"]],
                         [(w[0], int(w[1]), str(w[2])) for w in want[:3]])  # counters: strings of digits
        self.assertEqual([r["rank"] for r in j["data"]], [1, 2, 3])
        self.assertEqual(j["customers"], "4")
        self.assertEqual(int(j["total_cost_pico"]), sum(int(w[1]) for w in want))
        out = self.s.ctl("report", "top", "--from", frm, "--to", to, "--limit", "2").stdout
        self.assertIn(want[0][0], out)
        self.assertNotIn(want[2][0], out)

    def test_reports_across_days(self):
        """A period of whole days with partial days at both ends: the whole days come from the
        daily rollup, the edges from the hourly one; by day and top equal direct sums over usage."""
        # three customers in a private 4-day stretch of the 1980s (one per run)
        d0 = 315532800 + random.randrange(0, 2000) * 8 * 86400
        custs = []
        for n in (4, 7, 2):
            name, cust, keys = self.customer(1)
            rows = []
            for day in range(4):  # 06:xx and 20:xx of each day: edges and whole days
                for hh in (6, 20):
                    base = (d0 + day * 86400 + hh * 3600) * 10**6 + 3 * HOUR_US + 10**6
                    rows += self.rows_for(cust, keys, n, base)
            self.settle(rows)
            custs.append((name, cust))
        self.s.drain()
        for cust in (c for _, c in custs):
            self.assertEqual(daily_rows(cust), daily_sums(cust))
        frm, to = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in (d0 + 12 * 3600, d0 + 3 * 86400 + 12 * 3600))
        want = q("SELECT c.name, sum(u.cost_pico), count(*), sum(u.completion_tokens) FROM usage u"
                 " JOIN customers c ON c.id = u.customer_id"
                 " WHERE u.received_at >= %s AND u.received_at < %s GROUP BY c.name ORDER BY 2 DESC, min(c.id)", frm, to)
        self.assertEqual(len(want), 3)
        j = self.report("/admin/v1/reports/top?from=%s&to=%s&limit=2" % (frm, to))
        self.assertEqual([(r["customer"], int(r["cost_pico"]), r["requests"], int(r["completion_tokens"]))
                          for r in j["data"]], [(w[0], int(w[1]), str(w[2]), int(w[3])) for w in want[:2]])
        self.assertEqual(int(j["total_cost_pico"]), sum(int(w[1]) for w in want))
        name, cust = custs[1]
        cols = ("requests", "prompt_cache_hit_tokens", "prompt_cache_miss_tokens", "completion_tokens",
                "reasoning_tokens", "cost_pico", "failed_5xx")
        want = q("SELECT extract(epoch FROM date_trunc('day', received_at, 'UTC'))::bigint, count(*),"
                 " sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens), sum(completion_tokens),"
                 " sum(reasoning_tokens), sum(cost_pico), count(*) FILTER (WHERE http_status >= 500)"
                 " FROM usage WHERE customer_id = %s AND received_at >= %s AND received_at < %s GROUP BY 1 ORDER BY 1",
                 cust, frm, to)
        self.assertEqual(len(want), 4)  # a half day, two whole days, a half day
        for split in ("", "model"):
            j = self.report("/admin/v1/reports/usage?customer=%s&by=day&split=%s&from=%s&to=%s" % (name, split, frm, to))
            got = {}
            for r in j["data"]:
                t = q("SELECT extract(epoch FROM %s::timestamptz)::bigint", r["period"])[0][0]
                got[t] = tuple(a + int(r[c]) for a, c in zip(got.get(t, (0,) * len(cols)), cols))
            self.assertEqual(sorted(got.items()), [(w[0], tuple(int(x) for x in w[1:])) for w in want], split)

    def test_balance_report_equals_ledger(self):
        name, cust, keys = self.customer(1)
        self.s.ctl("credit", "add", "--customer", name, "--usd", "1.5")
        self.settle(self.rows_for(cust, keys, 20, int(time.time() * 1e6)))  # over the last 4 hours
        self.s.drain()
        self.s.ctl("credit", "add", "--customer", name, "--usd", "0.25")
        for by in ("hour", "day"):
            j = json.loads(self.s.ctl("report", "balance", "--customer", name, "--by", by, "--json").stdout)
            self.assertEqual(len(j["data"]), 48 if by == "hour" else 30)
            for r in j["data"]:
                end = q("SELECT %s::timestamptz + interval '1 " + by + "'", r["period"])[0][0]
                # the definition: credits by their time, usage debits by the time the request arrived
                bal = q("SELECT (SELECT coalesce(sum(amount_pico), 0) FROM ledger WHERE customer_id = %s"
                        " AND kind <> 'usage' AND created_at < %s) - (SELECT coalesce(sum(cost_pico), 0) FROM usage"
                        " WHERE customer_id = %s AND received_at < %s)", cust, end, cust, end)[0][0]
                self.assertEqual(int(r["balance_pico"]), int(bal), (by, r))
            last = j["data"][-1]
            self.assertEqual(last["balance_pico"], j["balance_pico"])
            self.assertEqual(int(j["balance_pico"]), int(q("SELECT balance_pico FROM customers WHERE id = %s",
                                                           cust)[0][0]))
            self.assertEqual(j["opening_balance_pico"], "0")
            credits = sum(int(r["credits_pico"]) for r in j["data"])
            self.assertEqual(credits, int(101.75 * 10**12))
        out = self.s.ctl("report", "balance", "--customer", name).stdout
        self.assertIn("balance now: ", out)

    def test_balance_report_bounded(self):
        """More than 10000 periods, or an infinite bound, is a 400 at once: before, -infinity and
        infinity made generate_series run on forever in the backend (the request answered 503 after
        5 s and the statement went on burning a core: a LIMIT does not stop a set-returning function
        in FROM), and a long range by hour was cut silently at 10000 hours, its last period's balance
        not the balance now."""
        name, cust, keys = self.customer(1)
        now = int(time.time())
        for args in (["--from", "-infinity"], ["--to", "infinity"], ["--from", str(now - 10001 * 3600), "--by", "hour"],
                     ["--from", "1970-01-01"]):
            p = self.s.ctl("report", "balance", "--customer", name, *args, check=False)
            self.assertEqual(p.returncode, 1, (args, p.stdout[:200]))
            self.assertIn("at most 10000 periods", p.stderr, args)
            self.assertIn("HTTP 400", p.stderr, args)  # not the pool's deadline: 503 database timeout
        running = q("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tollgate' AND state = 'active'"
                    " AND query LIKE '%%generate_series%%'")[0][0]
        self.assertEqual(running, 0, "a balance report still runs in the backend")
        j = json.loads(self.s.ctl("report", "balance", "--customer", name, "--by", "hour",
                                  "--from", str(now - 9990 * 3600), "--json").stdout)
        self.assertIn(len(j["data"]), (9991, 9992))
        self.assertEqual(j["data"][-1]["balance_pico"], j["balance_pico"])


if __name__ == "__main__":
    main()
