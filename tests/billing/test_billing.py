"""Billing tests against a real PostgreSQL: admin API + tollgatectl, admission
statuses, exactly-once settlement, and the spool across a PostgreSQL outage.

bill.h runs inside tests/billing/bill_server (admin API + a line protocol on
stdin/stdout for admit/settle).  Ports 18681-18699; names start with billtest-.

Nothing here sleeps before it counts: "billed once" and "not billed twice" are
checked once the settlement queue is idle (GET /admin/v1/settlement), so a late
duplicate is still in the queue, not missed.  Every line bill_server writes on
stderr is checked: a rejection or failure a test did not provoke fails it."""
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

import psycopg2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER = os.path.join(ROOT, os.environ.get("BILL_SERVER", "build/bill_server"))
CTL = os.path.join(ROOT, os.environ.get("TG_CTL", "build/tollgatectl"))
PG = os.environ["TG_TEST_PG"]
PGSH = os.path.join(ROOT, "tests", "billing", "pg.sh")
MODEL = "billtest-model"
PRICE = (270000, 70000, 1100000)  # micro-USD per 1M tokens
REPLY_TIMEOUT = 30  # seconds bill_server has to answer one stdin command
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
import tgstack  # noqa: E402
from tgskip import main  # noqa: E402


class Server:
    """One bill_server process: admin API on `port`, admit/settle on stdin."""

    def __init__(self, conninfo, port, spool, price_cache_ms=1):
        self.price_cache_ms = price_cache_ms  # 1: price changes are read back at once
        self.port = port
        self.token = secrets.token_hex(16)
        self.secret = secrets.token_hex(32)
        self.spool = spool
        self.conninfo = conninfo
        self.start()

    def start(self):
        self.p = subprocess.Popen([SERVER, self.conninfo, "127.0.0.1:%d" % self.port, self.token,
                                   self.secret + "\n", self.spool],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, bufsize=1,
                                  env=dict(os.environ, TG_BILL_PRICE_CACHE_MS=str(self.price_cache_ms)))
        # stdout and stderr are read by threads: a reply is awaited with a timeout, and no
        # stderr line is lost (or blocks the server on a full pipe)
        self.replies = queue.Queue()
        self.err_lines = getattr(self, "err_lines", [])
        self.readers = [threading.Thread(target=self._read, args=(self.p.stdout, self.replies.put), daemon=True),
                        threading.Thread(target=self._read, args=(self.p.stderr, self.err_lines.append), daemon=True)]
        for t in self.readers:
            t.start()
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.p.poll() is not None:
                break
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/health" % self.port, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # 503 while PG is down: the server is up
            except OSError:
                time.sleep(0.05)
        self.p.kill()
        self.p.wait(timeout=10)
        self._join()
        raise AssertionError("bill_server did not start: " + "\n".join(self.err_lines))

    @staticmethod
    def _read(f, put):
        for line in f:
            put(line.rstrip("\n"))

    def _join(self):
        for t in self.readers:
            t.join(timeout=10)
            assert not t.is_alive(), "bill_server output not closed"
        for f in (self.p.stdout, self.p.stdin, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass  # stdin's buffer may hold nothing more to flush into the dead pipe

    def reply(self):
        try:
            return self.replies.get(timeout=REPLY_TIMEOUT).strip()
        except queue.Empty:
            raise AssertionError("bill_server did not answer within %d s" % REPLY_TIMEOUT) from None

    def cmd(self, line, reply=True):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.reply() if reply else None

    def admit(self, key, model=MODEL):
        return self.cmd("admit %s %s" % (key, model)).split()

    def hold(self, key, amount, model=MODEL):
        """Admit, then hold `amount` pico-USD (released at once): [hold, status, needed, available, limit]."""
        return self.cmd("hold %s %s %d" % (key, model, amount)).split()

    def invalidations(self):
        return int(self.cmd("stats").split()[1])

    def settle(self, rid, key_id, cust_id, prompt, hit, completion, price=PRICE, model=MODEL):
        r = self.cmd("settle %s %d %d %s %d %d %d %d %d %d" % (rid, key_id, cust_id, model, *price,
                                                              prompt, hit, completion))
        assert r == "settled", r

    def settle_many(self, rows, model=MODEL, price=PRICE):
        """rows: (rid, key_id, cust_id, prompt, hit, completion); all sent, then all answers read."""
        self.p.stdin.write("".join("settle %s %d %d %s %d %d %d %d %d %d\n" % (r[0], r[1], r[2], model, *price, *r[3:])
                                   for r in rows))
        self.p.stdin.flush()
        for _ in rows:
            r = self.reply()
            assert r == "settled", r

    def kill(self):
        """SIGKILL: no bill_free, no drain."""
        self.p.kill()
        self.p.wait(timeout=10)
        self._join()

    def stop(self):
        """quit (bill_free drains or spools), then check the exit status and stderr."""
        if self.p.stderr.closed:  # killed, and already reaped by kill()
            return
        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=20)
        self._join()
        err = "\n".join(self.err_lines)
        if "Sanitizer" in err or "runtime error:" in err:
            raise AssertionError("bill_server: " + err)
        if self.p.returncode != 0:
            raise AssertionError("bill_server exited %d: %s" % (self.p.returncode, err))

    def settlement(self):
        return tgstack.settlement("http://127.0.0.1:%d" % self.port, self.token)

    def drain(self, timeout=30.0):
        """Wait until the settlement queue is idle (tgstack.drain); returns its stats."""
        return tgstack.drain("http://127.0.0.1:%d" % self.port, self.token, timeout)

    def ctl(self, *args, check=True, env_extra=None):
        env = dict(os.environ, TOLLGATE_ADMIN_URL="http://127.0.0.1:%d" % self.port,
                   TOLLGATE_ADMIN_TOKEN=self.token)
        env.update(env_extra or {})
        return tgstack.ctl_run(*args, check=check, timeout=30, ctl=CTL, env=env)

    def http(self, method, path, body=None, token=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method,
                                     data=None if body is None else body.encode())
        req.add_header("Authorization", "Bearer " + (self.token if token is None else token))
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def q(sql, *args, conninfo=PG):
    return tgstack.query(conninfo, sql, *args, options="-c statement_timeout=30000")


def new_name():
    return "billtest-" + uuid.uuid4().hex[:12]


def wait_for(fn, timeout=15.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.1)


def cost(prompt, hit, completion, price=PRICE):
    return (prompt - hit) * price[0] + hit * price[1] + completion * price[2]


REJECTED = re.compile(r"^bill: settlement of request (\S+) rejected: ")


def unexpected_stderr(lines, rejected=(), allowed=()):
    """The lines of bill_server's stderr that no test provoked: anything but its "ready" line,
    rejections of the request ids in `rejected`, and lines matching one of the `allowed`
    regular expressions (continuation lines of libpq messages follow the line they continue)."""
    bad, prev_ok = [], False
    for line in lines:
        m = REJECTED.match(line)
        ok = (line == "bill_server: ready" or (m is not None and m.group(1) in rejected)
              or any(re.search(a, line) for a in allowed)
              or (prev_ok and line[:1] in ("\t", " ", "") and "rejected" not in line))
        if not ok:
            bad.append(line)
        prev_ok = ok
    return bad


class ServerCase(unittest.TestCase):
    """One bill_server on PORT for the whole class (cls.s, its spool directory cls.spool), MODEL
    priced at PRICE.  When the class ends, a line on its stderr that no test provoked (rejections
    of the request ids in cls.rejected aside) fails it."""
    PORT = None

    @classmethod
    def setUpClass(cls):
        cls.rejected = set()  # request ids the tests had rejected on purpose
        cls.spool = tempfile.mkdtemp(prefix="billtest-spool.")
        cls.s = Server(PG, cls.PORT, cls.spool)
        cls.s.ctl("price", "set", "--model", MODEL, "--input-miss", str(PRICE[0]),
                  "--input-hit", str(PRICE[1]), "--output", str(PRICE[2]))

    @classmethod
    def tearDownClass(cls):
        try:
            cls.s.stop()
            bad = unexpected_stderr(cls.s.err_lines, cls.rejected)
            if bad:
                raise AssertionError("bill_server logged errors no test provoked:\n" + "\n".join(bad))
        finally:
            shutil.rmtree(cls.spool, ignore_errors=True)


class Billing(ServerCase):
    PORT = 18681

    def setUp(self):
        self.err_mark = len(self.s.err_lines)
        self.expect_rejected = []
        self.rejected_before = self.s.settlement()["rejected_total"]

    def tearDown(self):
        """Every test: the queue drains, only the rows it rejected on purpose were rejected, and
        bill_server logged nothing else."""
        st = self.s.drain()
        self.assertEqual(st["rejected_total"] - self.rejected_before, len(self.expect_rejected),
                         "rows rejected: %r" % self.s.err_lines[self.err_mark:])
        self.rejected.update(self.expect_rejected)
        want = set(self.expect_rejected)
        seen = lambda: {m.group(1) for m in map(REJECTED.match, self.s.err_lines[self.err_mark:]) if m}
        self.assertTrue(wait_for(lambda: want <= seen(), 5), "rejection not logged: %r" % (want - seen()))
        bad = unexpected_stderr(self.s.err_lines[self.err_mark:], want)
        self.assertEqual(bad, [], "bill_server logged errors this test did not provoke")

    def customer(self, credit="5.00"):
        name = new_name()
        args = ["customer", "create", name] + (["--credit-usd", credit] if credit else [])
        self.s.ctl(*args)
        return name

    def key(self, name, *limits):
        out = self.s.ctl("key", "create", "--customer", name, *limits).stdout
        k = out.strip().splitlines()[-1]
        self.assertRegex(k, r"^sk-tg1-[0-9A-Za-z]{46}$")
        return k

    def ids(self, name):
        j = json.loads(self.s.ctl("key", "list", "--customer", name, "--json").stdout)
        cust = json.loads(self.s.ctl("balance", "--customer", name, "--json").stdout)
        return [k["id"] for k in j["data"]], cust["customer_id"]

    def balance(self, name):
        b = json.loads(self.s.ctl("balance", "--customer", name, "--json").stdout)
        self.assertIsInstance(b["balance_pico"], str)
        return int(b["balance_pico"]), b["balance_usd"]

    # ---- admin API and tollgatectl ----

    def test_customer_credit_exact(self):
        c = self.customer("5.00")
        self.assertEqual(self.balance(c), (5 * 10**12, "5.000000"))
        for amount, pico in (("5", 5 * 10**12), ("0.000001", 10**6), ("0.000000000001", 1), ("12.34", 1234 * 10**10)):
            before = self.balance(c)[0]
            self.s.ctl("credit", "add", "--customer", c, "--usd", amount)
            self.assertEqual(self.balance(c)[0] - before, pico, amount)
        for bad in ("-1", "abc", "1e3", "0.0000000000001", "", "1.", ".5", "0", "+1", "1,5", "99999999"):
            p = self.s.ctl("credit", "add", "--customer", c, "--usd", bad, check=False)
            self.assertNotEqual(p.returncode, 0, bad)
            self.assertIn("HTTP 400", p.stderr, bad)
        self.assertEqual(q("select count(*) from ledger_mismatch")[0][0], 0)

    def test_errors(self):
        c = self.customer()
        p = self.s.ctl("customer", "create", c, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("already exists", p.stderr)
        p = self.s.ctl("balance", "--customer", "billtest-nobody", check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no such customer", p.stderr)
        st, j = self.s.http("GET", "/admin/v1/customers", token="wrong")
        self.assertEqual(st, 401)
        self.assertEqual(set(j["error"]), {"message", "type", "param", "code"})
        self.assertEqual(j["error"]["type"], "authentication_error")
        st, j = self.s.http("POST", "/admin/v1/customers", "{not json")
        self.assertEqual((st, j["error"]["type"]), (400, "invalid_request_error"))
        st, j = self.s.http("POST", "/admin/v1/customers", json.dumps({"name": c}))
        self.assertEqual((st, j["error"]["type"]), (409, "conflict_error"), j)
        st, j = self.s.http("POST", "/admin/v1/customers", json.dumps({"name": new_name(), "credit_usd": 5}))
        self.assertEqual(st, 400, "money as a JSON number is refused")
        st, j = self.s.http("POST", "/admin/v1/prices", json.dumps({"model": "x", "input_cache_miss": 1,
                                                                    "input_cache_hit": "1", "output": "1"}))
        self.assertEqual(st, 400)
        st, j = self.s.http("GET", "/admin/v1/nothing")
        self.assertEqual(st, 404)
        st, j = self.s.http("GET", "/admin/v1/customers/%s%%00x" % c)
        self.assertEqual(st, 404)
        st, j = self.s.http("GET", "/admin/v1/customers/%s" % c)
        self.assertEqual((st, j["name"]), (200, c))
        p = self.s.ctl("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("key create --customer NAME", p.stdout)
        p = self.s.ctl("key", "revoke", "999999999", check=False)
        self.assertIn("no such key", p.stderr)
        p = self.s.ctl("invoice", "--customer", c, "--month", "2026-13", check=False)
        self.assertEqual(p.returncode, 1)
        p = self.s.ctl("frobnicate", check=False)
        self.assertEqual(p.returncode, 2)

    def test_key_stored_as_keyed_hash(self):
        c = self.customer()
        k = self.key(c, "--rpm", "7", "--tpm", "1000", "--concurrency", "2")
        rows = q("select k.key_hash, k.prefix, k.rpm, k.tpm, k.concurrency from api_keys k join customers c"
                 " on c.id = k.customer_id where c.name = %s", c)
        self.assertEqual(len(rows), 1)
        want = hmac.new(bytes.fromhex(self.s.secret), k.encode(), hashlib.sha256).hexdigest()
        self.assertEqual(rows[0][0], want)
        self.assertEqual(rows[0][1:], (k[:15], 7, 1000, 2))
        dump = json.dumps(q("select row_to_json(k) from api_keys k"))
        self.assertNotIn(k, dump)
        self.assertNotIn(k[3:], dump)
        lst = json.loads(self.s.ctl("key", "list", "--customer", c, "--json").stdout)["data"]
        self.assertNotIn(k, json.dumps(lst))
        self.assertTrue(lst[0]["active"])

    # ---- admission ----

    def test_admit_statuses(self):
        c = self.customer("1.00")
        k = self.key(c, "--rpm", "5")
        (kid,), cid = self.ids(c)
        a = self.s.admit(k)
        self.assertEqual(a[:10], ["admit", "ok", str(kid), str(cid), "5", "0", "0"] + [str(p) for p in PRICE])
        # the price version: the model_prices row in force, no override
        pid = q("SELECT id FROM tg_price(%s, now())", MODEL)[0][0]
        self.assertEqual(a[10:], [str(pid), "0"])
        self.assertEqual(self.s.admit("sk-" + "0" * 48)[1], "unauthorized")
        self.assertEqual(self.s.admit("garbage")[1], "unauthorized")
        self.assertEqual(self.s.admit(k, "billtest-no-such-model")[1], "no_price")
        # a price change counts for the next admission
        self.s.ctl("price", "set", "--model", MODEL + "-2", "--input-miss", "1", "--input-hit", "2", "--output", "3")
        self.assertEqual(self.s.admit(k, MODEL + "-2")[7:10], ["1", "2", "3"])
        # no balance: admitted (the key is fine), but no hold; then credit: held at once
        c2 = self.customer(None)
        k2 = self.key(c2)
        self.assertEqual(self.s.admit(k2)[1], "ok")
        self.assertEqual(self.s.hold(k2, 1000)[:3], ["hold", "no_balance", "1000"])
        self.s.ctl("credit", "add", "--customer", c2, "--usd", "0.01")
        self.assertEqual(self.s.hold(k2, 1000)[1], "ok")
        # more than the balance: refused, naming what is available
        h = self.s.hold(k2, 10 ** 10 + 1)
        self.assertEqual(h[1:3], ["no_balance", str(10 ** 10 + 1)])
        self.assertEqual(int(h[3]), 10 ** 10)
        # revocation: pushed by NOTIFY, the cached key is dropped (wait for the
        # notice, then the next admission must refuse)
        n0 = self.s.invalidations()
        self.s.ctl("key", "revoke", str(kid))
        self.assertTrue(wait_for(lambda: self.s.invalidations() > n0, 30), "no key-change notice")
        self.assertEqual(self.s.admit(k)[1], "unauthorized")
        lst = json.loads(self.s.ctl("key", "list", "--customer", c, "--json").stdout)["data"]
        self.assertFalse(lst[0]["active"])

    def test_price_bands(self):
        c = self.customer("1.00")
        k = self.key(c)
        m = "billtest-band-" + uuid.uuid4().hex[:6]
        now = time.gmtime()
        hm = lambda minutes: "%02d:%02d" % ((minutes // 60) % 24, minutes % 60)
        mins = now.tm_hour * 60 + now.tm_min
        self.assertEqual(self.s.admit(k, m)[1], "no_price")
        # a band without a base price is no price
        self.s.ctl("price", "set", "--model", m, "--input-miss", "5", "--input-hit", "5", "--output", "5",
                   "--band", hm(mins - 60) + "-" + hm(mins + 60))
        self.assertEqual(self.s.admit(k, m)[1], "no_price")
        self.s.ctl("price", "set", "--model", m, "--input-miss", "10", "--input-hit", "2", "--output", "20")
        self.assertEqual(self.s.admit(k, m)[7:10], ["10", "2", "20"], "the new base ends older bands")
        # a band around now (wrapping midnight or not) applies; one elsewhere does not
        self.s.ctl("price", "set", "--model", m, "--input-miss", "1", "--input-hit", "1", "--output", "1",
                   "--band", hm(mins + 120) + "-" + hm(mins + 180))
        self.assertEqual(self.s.admit(k, m)[7:10], ["10", "2", "20"])
        self.s.ctl("price", "set", "--model", m, "--input-miss", "4", "--input-hit", "1", "--output", "8",
                   "--band", hm(mins - 30) + "-" + hm(mins + 30))
        a = self.s.admit(k, m)
        self.assertEqual(a[7:10], ["4", "1", "8"])
        lst = [p for p in json.loads(self.s.ctl("price", "list", "--json").stdout)["data"] if p["model"] == m]
        self.assertEqual([p["band"] for p in lst][0], None)
        self.assertEqual(len(lst), 3)
        self.assertEqual([p["input_cache_miss"] for p in lst if p["active_now"]], ["4"])
        self.assertEqual([str(p["id"]) for p in lst if p["active_now"]], [a[10]], "the band row is the version")
        self.assertIn("all day", self.s.ctl("price", "list").stdout)
        for bad in ("25:00-01:00", "10:00-10:00", "1:00-2:00", "10:00", "10:60-11:00"):
            p = self.s.ctl("price", "set", "--model", m, "--input-miss", "1", "--input-hit", "1", "--output", "1",
                           "--band", bad, check=False)
            self.assertIn("HTTP 400", p.stderr, bad)

    # ---- settlement ----

    def test_settle_beside_another_writer(self):
        """A batch holding a request id that another session is inserting, not yet committed (a
        killed gateway's statement still running while its successor replays the journal): the
        batch waits for that session, and once it commits every row is there once, with one
        debit, and nothing is rejected (the statement's NOT EXISTS misses an uncommitted row; the
        primary key makes it wait and fail with 23505; the batch is sent again)."""
        c = self.customer("1.00")
        self.key(c)
        (kid,), cid = self.ids(c)
        rids = [str(uuid.uuid4()) for _ in range(5)]
        before = self.balance(c)[0]
        st0 = self.s.settlement()
        want = cost(1000, 300, 500)
        other = psycopg2.connect(PG, options="-c statement_timeout=30000")
        try:
            cur = other.cursor()
            cur.execute("INSERT INTO usage (request_id, customer_id, key_id, model, prompt_tokens,"
                        " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens,"
                        " price_input_cache_miss, price_input_cache_hit, price_output, cost_pico, http_status, stream,"
                        " received_at, finished_at) VALUES (%s, %s, %s, %s, 1000, 300, 700, 500, 0, %s, %s, %s, %s,"
                        " 200, false, now(), now())", (rids[2], cid, kid, MODEL, *PRICE, want))
            cur.execute("INSERT INTO ledger (customer_id, kind, amount_pico, request_id) VALUES (%s, 'usage', %s, %s)",
                        (cid, -want, rids[2]))
            # and its rollups, as the settlement statement adds them (reconcile checks them)
            cur.execute("INSERT INTO usage_hourly AS h (customer_id, hour, key_id, model, requests,"
                        " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, cost_pico)"
                        " VALUES (%s, date_trunc('hour', now(), 'UTC'), %s, %s, 1, 300, 700, 500, %s)"
                        " ON CONFLICT (customer_id, hour, key_id, model) DO UPDATE SET requests = h.requests + 1,"
                        " prompt_cache_hit_tokens = h.prompt_cache_hit_tokens + 300,"
                        " prompt_cache_miss_tokens = h.prompt_cache_miss_tokens + 700,"
                        " completion_tokens = h.completion_tokens + 500, cost_pico = h.cost_pico + excluded.cost_pico",
                        (cid, kid, MODEL, want))
            cur.execute("INSERT INTO usage_daily AS d (customer_id, day, requests, prompt_cache_hit_tokens,"
                        " prompt_cache_miss_tokens, completion_tokens, cost_pico)"
                        " VALUES (%s, date_trunc('day', now(), 'UTC'), 1, 300, 700, 500, %s)"
                        " ON CONFLICT (customer_id, day) DO UPDATE SET requests = d.requests + 1,"
                        " prompt_cache_hit_tokens = d.prompt_cache_hit_tokens + 300,"
                        " prompt_cache_miss_tokens = d.prompt_cache_miss_tokens + 700,"
                        " completion_tokens = d.completion_tokens + 500, cost_pico = d.cost_pico + excluded.cost_pico",
                        (cid, want))
            for rid in rids:
                self.s.settle(rid, kid, cid, 1000, 300, 500)
            waiting = lambda: q("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tollgate'"
                                " AND wait_event_type = 'Lock'")[0][0] > 0
            self.assertTrue(wait_for(waiting, 20), "the batch did not wait for the other session's row")
            other.commit()
        finally:
            other.close()
        st = self.s.drain()
        self.assertEqual(st["settled_total"] - st0["settled_total"], 5)
        self.assertEqual(st["inserted_total"] - st0["inserted_total"], 4, "the other session's row is skipped")
        self.assertEqual(st["rejected_total"] - st0["rejected_total"], 0)
        for rid in rids:
            self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = %s", rid)[0][0], 1, rid)
            self.assertEqual(q("SELECT count(*), sum(amount_pico) FROM ledger WHERE request_id = %s", rid),
                             [(1, -want)], rid)
        self.assertEqual(before - self.balance(c)[0], 5 * want)
        self.assertEqual(q("SELECT count(*) FROM ledger_mismatch")[0][0], 0)
        self.assertEqual(q("SELECT count(*) FROM usage_hourly_mismatch WHERE customer_id = %s", cid)[0][0], 0)
        self.assertEqual(q("SELECT count(*) FROM usage_daily_mismatch WHERE customer_id = %s", cid)[0][0], 0)

    def test_settle_copy_path_exact(self):
        """A batch of fresh rows goes by COPY (bill_settle.c, copy_build): the usage rows, one debit per
        row with a cost, the hourly and daily rollups summed in C and the balances are exactly what
        SETTLE_SQL writes: two customers, three keys, two models (one named with a quote and a
        backslash), rows on both sides of an hour and of a UTC day (one received in the last
        half-millisecond of a day, finished in the next), a 5xx, reasoning, one row that costs
        nothing.  Sent again, the same rows go nowhere (the COPY fails on the primary key, the batch
        is re-sent through the statement, which skips them)."""
        c1, c2 = self.customer("10.00"), self.customer("10.00")
        self.key(c1)
        self.key(c1)
        self.key(c2)
        (k1, k2), cid1 = self.ids(c1)
        (k3,), cid2 = self.ids(c2)
        odd = "cp'q\\m"  # cp'q\m
        day = 1764460800 * 10**6  # 2025-11-30 00:00 UTC, in microseconds
        edge = day - 500  # the day before's last half-millisecond: finished in the next day
        h = 3600 * 10**6
        # (key, customer, model, prompt, hit, completion, reasoning, status, received_us)
        spec = [(k1, cid1, MODEL, 1000, 300, 500, 100, 200, edge),
                (k1, cid1, MODEL, 2000, 0, 40, 0, 200, day + 10),
                (k1, cid1, MODEL, 10, 10, 3, 3, 500, day + 20),
                (k2, cid1, MODEL, 7, 1, 1, 0, 200, day + 30),
                (k2, cid1, odd, 123, 23, 45, 6, 200, day + 40),
                (k2, cid1, odd, 0, 0, 0, 0, 502, day + h + 50),
                (k3, cid2, odd, 999, 998, 997, 1, 200, day + 2 * h),
                (k3, cid2, MODEL, 5, 0, 5, 0, 200, edge - h)]
        rids = [str(uuid.uuid4()) for _ in spec]
        lines = "".join("settle %s %d %d %s %d %d %d %d %d %d %d %d %d\n" % (rid, k, c, m, *PRICE, p, hi, co, re_, st, t)
                        for rid, (k, c, m, p, hi, co, re_, st, t) in zip(rids, spec))
        before = {c: self.balance(c)[0] for c in (c1, c2)}
        st0 = self.s.drain()

        def send():
            self.s.p.stdin.write(lines)
            self.s.p.stdin.flush()
            for _ in spec:
                self.assertEqual(self.s.reply(), "settled")
            return self.s.drain()

        st = send()
        costed = sum(1 for x in spec if cost(x[3], x[4], x[5]))
        self.assertEqual(st["inserted_total"] - st0["inserted_total"], len(spec))
        self.assertEqual(st["copied_total"] - st0["copied_total"], len(spec), "every row by COPY")
        self.assertEqual(st["copy_fallbacks_total"], st0["copy_fallbacks_total"])
        self.assertEqual(st["debited_total"] - st0["debited_total"], costed)
        got = q("SELECT request_id::text, key_id, customer_id, model, prompt_tokens, prompt_cache_hit_tokens,"
                " prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico, http_status,"
                " (extract(epoch FROM received_at) * 1000000)::bigint, first_byte_at IS NULL,"
                " (extract(epoch FROM finished_at) * 1000000)::bigint, price_input_cache_miss, price_input_cache_hit,"
                " price_output FROM usage WHERE request_id = ANY(%s::uuid[]) ORDER BY received_at, request_id", rids)
        want = sorted(((rid, k, c, m, p, hi, p - hi, co, re_, cost(p, hi, co), st_, t, True, t + 1000, *PRICE)
                       for rid, (k, c, m, p, hi, co, re_, st_, t) in zip(rids, spec)), key=lambda r: (r[11], r[0]))
        self.assertEqual([tuple(r) for r in got], want)
        debits = dict(q("SELECT request_id::text, amount_pico FROM ledger WHERE request_id = ANY(%s::uuid[])", rids))
        self.assertEqual(debits, {rid: -cost(x[3], x[4], x[5]) for rid, x in zip(rids, spec) if cost(x[3], x[4], x[5])})
        for c, cid in ((c1, cid1), (c2, cid2)):
            spent = sum(cost(x[3], x[4], x[5]) for x in spec if x[1] == cid)
            self.assertEqual(before[c] - self.balance(c)[0], spent)
        hourly, daily = {}, {}
        for k, c, m, p, hi, co, re_, st_, t in spec:
            for d, key in ((hourly, (c, t // h, k, m)), (daily, (c, t // (24 * h)))):
                v = d.setdefault(key, [0] * 7)
                for i, x in enumerate((1, hi, p - hi, co, re_, cost(p, hi, co), st_ >= 500)):
                    v[i] += x
        rows = q("SELECT customer_id, (extract(epoch FROM hour) * 1000000)::bigint / %s, key_id, model, requests,"
                 " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico,"
                 " failed_5xx FROM usage_hourly WHERE customer_id IN (%s, %s)", h, cid1, cid2)
        self.assertEqual({tuple(r[:4]): list(r[4:]) for r in rows}, hourly)
        rows = q("SELECT customer_id, (extract(epoch FROM day) * 1000000)::bigint / %s, requests,"
                 " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico,"
                 " failed_5xx FROM usage_daily WHERE customer_id IN (%s, %s)", 24 * h, cid1, cid2)
        self.assertEqual({tuple(r[:2]): list(r[2:]) for r in rows}, daily)
        for view in ("ledger_mismatch", "usage_hourly_mismatch", "usage_daily_mismatch"):
            self.assertEqual(q("SELECT count(*) FROM %s" % view)[0][0], 0, view)
        # the same rows again: nothing inserted, nothing debited, nothing added
        after = {c: self.balance(c)[0] for c in (c1, c2)}
        st2 = send()
        self.assertEqual((st2["inserted_total"], st2["debited_total"], st2["copied_total"], st2["rejected_total"]),
                         (st["inserted_total"], st["debited_total"], st["copied_total"], st["rejected_total"]))
        self.assertGreater(st2["copy_fallbacks_total"], st["copy_fallbacks_total"])
        self.assertEqual(st2["settled_total"] - st["settled_total"], len(spec))
        self.assertEqual({c: self.balance(c)[0] for c in (c1, c2)}, after)
        self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = ANY(%s::uuid[])", rids)[0][0], len(spec))
        self.assertEqual(q("SELECT count(*) FROM ledger WHERE request_id = ANY(%s::uuid[])", rids)[0][0], costed)
        rows = q("SELECT customer_id, (extract(epoch FROM hour) * 1000000)::bigint / %s, key_id, model, requests,"
                 " prompt_cache_hit_tokens, prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, cost_pico,"
                 " failed_5xx FROM usage_hourly WHERE customer_id IN (%s, %s)", h, cid1, cid2)
        self.assertEqual({tuple(r[:4]): list(r[4:]) for r in rows}, hourly)

    def test_settle_twice_one_row_one_debit(self):
        c = self.customer("1.00")
        k = self.key(c)
        (kid,), cid = self.ids(c)
        rid = str(uuid.uuid4())
        before = self.balance(c)[0]
        st0 = self.s.settlement()
        # with them, in the same batch, another customer's row that costs nothing: a usage row, no debit
        c2 = self.customer("1.00")
        self.key(c2)
        (kid2,), cid2 = self.ids(c2)
        free = str(uuid.uuid4())
        self.s.settle_many([(rid, kid, cid, 1000, 300, 500), (rid, kid, cid, 1000, 300, 500),
                            (free, kid2, cid2, 0, 0, 0)])
        st = self.s.drain()  # all settles committed (or given up): a double count would be in by now
        self.assertEqual(st["settled_total"] - st0["settled_total"], 3, "all settles reached PostgreSQL")
        self.assertEqual(st["inserted_total"] - st0["inserted_total"], 2, "two usage rows inserted")
        self.assertEqual(st["debited_total"] - st0["debited_total"], 1, "one debit")
        self.assertEqual(q("select count(*) from ledger where request_id = %s", free)[0][0], 0)
        rows = q("select prompt_tokens, prompt_cache_hit_tokens, prompt_cache_miss_tokens,"
                 " completion_tokens, cost_pico, price_input_cache_miss, price_output"
                 " from usage where request_id = %s", rid)
        want = cost(1000, 300, 500)
        self.assertEqual(rows, [(1000, 300, 700, 500, want, PRICE[0], PRICE[2])])
        self.assertEqual(q("select count(*), sum(amount_pico) from ledger where request_id = %s", rid),
                         [(1, -want)])
        self.assertEqual(before - self.balance(c)[0], want)
        # settling the same request again later changes nothing
        self.s.settle(rid, kid, cid, 1000, 300, 500)
        st = self.s.drain()
        self.assertEqual(st["settled_total"] - st0["settled_total"], 4)
        self.assertEqual((st["inserted_total"] - st0["inserted_total"], st["debited_total"] - st0["debited_total"]),
                         (2, 1))
        self.assertEqual(q("select count(*) from usage where request_id = %s", rid)[0][0], 1)
        self.assertEqual(q("select count(*) from ledger where request_id = %s", rid)[0][0], 1)
        self.assertEqual(before - self.balance(c)[0], want)
        self.assertEqual(q("select count(*) from ledger_mismatch")[0][0], 0)
        # usage and invoice show it, totals exact
        u = json.loads(self.s.ctl("usage", "--customer", c, "--json").stdout)
        self.assertEqual(u["data"][0]["request_id"], rid)
        self.assertTrue(u["data"][0]["received_at"].endswith("+00:00"), u["data"][0]["received_at"])
        t = int(time.time())
        for lo, hi, n in ((t - 600, t + 600, 1), (t + 600, t + 1200, 0), ("2000-01-01", "2000-01-02", 0)):
            w = json.loads(self.s.ctl("usage", "--customer", c, "--from", str(lo), "--to", str(hi), "--json").stdout)
            self.assertEqual((len(w["data"]), w["totals"]["requests"]), (n, str(n)), (lo, hi))  # counters: digits
        self.assertEqual(u["totals"]["cost_pico"], str(want))
        month = time.strftime("%Y-%m", time.gmtime())
        inv = json.loads(self.s.ctl("invoice", "--customer", c, "--month", month, "--json").stdout)
        self.assertEqual(inv["total_pico"], str(want))
        self.assertEqual(sum(int(l["amount_pico"]) for l in inv["lines"]), want)
        self.assertEqual({l["token_class"]: int(l["quantity"]) for l in inv["lines"]},
                         {"input_cache_miss": 700, "input_cache_hit": 300, "output": 500})
        self.assertIn(rid, self.s.ctl("usage", "--customer", c).stdout)
        self.assertNotIn("(rows:", self.s.ctl("usage", "--customer", c).stdout)
        # fewer rows shown than counted in the total: the text says so (before, nothing did)
        self.assertIn("(rows: the newest 0 of 1;", self.s.ctl("usage", "--customer", c, "--limit", "0").stdout)
        self.assertIn("input_cache_hit", self.s.ctl("invoice", "--customer", c, "--month", month).stdout)

    def test_settle_batch_and_bad_row(self):
        c = self.customer("1.00")
        k = self.key(c)
        (kid,), cid = self.ids(c)
        rids = [str(uuid.uuid4()) for _ in range(50)]
        for i, rid in enumerate(rids):
            self.s.settle(rid, kid, cid, 10 + i, i % 10, 3)
        # a row for a customer that does not exist is rejected alone
        bad = str(uuid.uuid4())
        self.expect_rejected.append(bad)
        self.s.settle(bad, kid, 999999999, 10, 0, 1)
        self.s.drain()
        self.assertEqual(q("select count(*) from usage where request_id = any(%s::uuid[])", rids)[0][0], 50)
        self.assertEqual(q("select count(*) from ledger where request_id = any(%s::uuid[])", rids)[0][0], 50)
        self.assertEqual(q("select count(*) from usage where request_id = %s", bad)[0][0], 0)
        want = sum(cost(10 + i, i % 10, 3) for i in range(50))
        self.assertEqual(10**12 - self.balance(c)[0], want)
        with open(os.path.join(self.spool, "rejected.jsonl")) as f:
            self.assertIn(bad, f.read())


# What bill_server logs when the Outage tests stop PostgreSQL under it (anything else fails them).
OUTAGE_LOG = (r"^bill: admission query failed: ",
              r"^bill: postgres: FATAL:  terminating connection due to administrator command$",
              r"^bill: settlement batch failed: .*; \d+ settlements (spooled to|wait in the journal in) ",
              r"^bill: shutting down with PostgreSQL unreachable; \d+ settlements (spooled to|wait in the journal in) ",
              r"^bill: replaying \d+ spooled settlements from ",
              r"^bill: key-change listener lost: ",
              r"^bill: lease upkeep failed: ",
              r"^bill: credit lease failed: ")


class Outage(unittest.TestCase):
    """Settlements while PostgreSQL is down: spooled, then replayed exactly once."""

    def check_log(self, s, allowed=OUTAGE_LOG):
        bad = unexpected_stderr(s.err_lines, allowed=allowed)
        self.assertEqual(bad, [], "bill_server logged errors the test did not provoke:\n" + "\n".join(s.err_lines))

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="billtest-outage.")
        os.chmod(cls.dir, 0o755)
        cls.pgdir = os.path.join(cls.dir, "pg")
        cls.port = 18690
        cls.conninfo = "host=127.0.0.1 port=%d dbname=tollgate user=tollgate" % cls.port
        subprocess.run(["bash", PGSH, "start", cls.pgdir, str(cls.port)], check=True)
        cls.spool = os.path.join(cls.dir, "spool")

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["bash", PGSH, "stop", cls.pgdir])
        shutil.rmtree(cls.dir, ignore_errors=True)

    def pg(self, up):
        subprocess.run(["bash", PGSH, "start" if up else "stop", self.pgdir, str(self.port)], check=True)

    def spooled(self):
        return sorted(f for f in os.listdir(self.spool) if f.endswith(".spool")) if os.path.isdir(self.spool) else []

    def test_outage(self):
        s = Server(self.conninfo, 18691, self.spool, price_cache_ms=3600000)
        try:
            s.ctl("price", "set", "--model", MODEL, "--input-miss", str(PRICE[0]), "--input-hit", str(PRICE[1]),
                  "--output", str(PRICE[2]))
            name = new_name()
            s.ctl("customer", "create", name, "--credit-usd", "2")
            key = s.ctl("key", "create", "--customer", name).stdout.strip().splitlines()[-1]
            a = s.admit(key)
            self.assertEqual(a[1], "ok")
            kid, cid = int(a[2]), int(a[3])
            count = lambda rid: q("select count(*) from usage where request_id = %s", rid, conninfo=self.conninfo)[0][0]

            # 0. every pool connection killed by the server: the next statement reconnects
            # (a hold above the lease needs a grant: a round trip)
            q("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'tollgate'",
              conninfo=self.conninfo)
            self.assertEqual(s.hold(key, 10 ** 11)[1], "ok")

            # 1. PostgreSQL goes down under a running server: admission goes on from the
            # cache, a hold that needs a grant fails (503, not a hang); settlements are
            # spooled, replayed once it is back
            self.pg(False)
            t0 = time.time()
            self.assertEqual(s.admit(key)[1], "ok")
            self.assertEqual(s.hold(key, 10 ** 12)[1], "error")
            self.assertLess(time.time() - t0, 30)
            r1 = [str(uuid.uuid4()) for _ in range(3)]
            for rid in r1:
                s.settle(rid, kid, cid, 100, 20, 10)
            self.assertTrue(wait_for(lambda: self.spooled(), 10), "nothing spooled")
            self.pg(True)
            self.assertEqual(s.hold(key, 18 * 10 ** 11)[1], "ok", "the first grant after the restart reconnects")
            self.assertTrue(wait_for(lambda: all(count(r) == 1 for r in r1), 20), "spool not replayed")
            self.assertTrue(wait_for(lambda: not self.spooled(), 10), "spool file not removed")

            # 2. down again, and the server stops: bill_free spools, the next start replays
            self.pg(False)
            r2 = str(uuid.uuid4())
            s.settle(r2, kid, cid, 100, 0, 10)
            time.sleep(0.3)
            s.stop()
            self.assertTrue(self.spooled(), "bill_free did not spool")
            self.pg(True)
            s.start()
            self.assertTrue(wait_for(lambda: count(r2) == 1, 20), "not replayed on start")
            self.assertTrue(wait_for(lambda: not self.spooled(), 10))

            # 3. a torn record at the end of a spool file is ignored, the rest replayed
            s.stop()
            r3 = str(uuid.uuid4())
            self.pg(False)
            s.start()
            s.settle(r3, kid, cid, 5, 0, 5)
            self.assertTrue(wait_for(lambda: self.spooled(), 10))
            s.stop()
            with open(os.path.join(self.spool, self.spooled()[0]), "ab") as f:
                f.write(b"TGS1\x90\x00")  # a crash half way through an append
            self.pg(True)
            s.start()
            self.assertTrue(wait_for(lambda: count(r3) == 1, 20))
            st = s.drain()
            self.assertTrue(wait_for(lambda: not self.spooled(), 10), "spool file with the torn record kept")
            self.assertEqual([f for f in os.listdir(self.spool) if f.endswith(".corrupt")], [])
            self.assertEqual(st["rejected_total"], 0)

            total = sum(cost(100, 20, 10) for _ in r1) + cost(100, 0, 10) + cost(5, 0, 5)
            rows = q("select count(*), -sum(amount_pico) from ledger l join customers c on c.id = l.customer_id"
                     " where c.name = %s and kind = 'usage'", name, conninfo=self.conninfo)
            self.assertEqual(rows, [(5, total)], "one debit per request")
            bal = q("select balance_pico from customers where name = %s", name, conninfo=self.conninfo)[0][0]
            self.assertEqual(int(bal), 2 * 10**12 - total)
            self.assertEqual(q("select count(*) from ledger_mismatch", conninfo=self.conninfo)[0][0], 0)

            # 4. PostgreSQL up, and the server stops with a row not yet committed (its batch
            # waits for company, or is in flight): bill_free's last synchronous statement
            # commits it, so nothing is left to replay and nothing says PostgreSQL was down
            r4 = str(uuid.uuid4())
            n0 = len(s.err_lines)
            s.settle(r4, kid, cid, 7, 0, 7)
            s.stop()
            self.assertEqual(count(r4), 1)
            self.assertEqual([f for f in self.spooled() if os.path.getsize(os.path.join(self.spool, f))], [],
                             "bill_free's drain committed the row, yet a spool file holds records")
            self.assertEqual([l for l in s.err_lines[n0:] if "unreachable" in l or "wait in the journal" in l], [],
                             "bill_free's drain committed the row, yet:\n" + "\n".join(s.err_lines[n0:]))
        finally:
            s.stop()
        self.check_log(s)  # a torn last record is not corrupt: nothing logged, nothing kept
        self.assertTrue([l for l in s.err_lines if re.search(r"^bill: credit lease failed: ", l)],
                        "no failed credit lease logged:\n" + "\n".join(s.err_lines))

    def test_sigkill_exactly_once(self):
        """The write-ahead journal: every settlement bill_settle accepted survives a SIGKILL of the
        process, committed exactly once after the restart (PostgreSQL up with the batch stuck in
        flight; PostgreSQL down during the kill)."""
        s = Server(self.conninfo, 18692, self.spool)
        try:
            s.ctl("price", "set", "--model", MODEL, "--input-miss", str(PRICE[0]), "--input-hit", str(PRICE[1]),
                  "--output", str(PRICE[2]))
            name = new_name()
            s.ctl("customer", "create", name, "--credit-usd", "3")
            key = s.ctl("key", "create", "--customer", name).stdout.strip().splitlines()[-1]
            a = s.admit(key)
            self.assertEqual(a[1], "ok")
            kid, cid = int(a[2]), int(a[3])

            # 1. PostgreSQL up, but the usage table locked: the first batch (256 rows) hangs in
            #    flight, the rest wait in memory; SIGKILL; the lock goes (the orphaned batch may
            #    commit after the kill); restart: every row exactly once
            lock = psycopg2.connect(self.conninfo, connect_timeout=10)
            try:
                lock.cursor().execute("lock table usage in exclusive mode")
                r1 = [(str(uuid.uuid4()), kid, cid, 100 + i % 7, i % 5, 10 + i % 3) for i in range(300)]
                s.settle_many(r1)
                # the first batch is sent and blocked on the lock, the rest queued behind it
                self.assertTrue(wait_for(lambda: s.settlement()["in_flight"] > 0, 10), s.settlement())
                self.assertEqual(s.settlement()["in_flight"] + s.settlement()["queued"], len(r1))
                s.kill()
                journaled = self.spooled()
            finally:
                lock.rollback()
                lock.close()
            self.assertTrue(journaled, "nothing journaled")
            time.sleep(0.5)
            s.start()
            # 2. PostgreSQL down during the kill, up before the restart
            self.assertTrue(wait_for(lambda: self.count([r[0] for r in r1]) == len(r1), 20), "journal not replayed")
            self.pg(False)
            r2 = [(str(uuid.uuid4()), kid, cid, 50, 0, 5 + i) for i in range(40)]
            s.settle_many(r2)
            s.kill()
            self.pg(True)
            s.start()
            rows = r1 + r2
            self.assertTrue(wait_for(lambda: self.count([r[0] for r in rows]) == len(rows), 20),
                            "journal not replayed after the outage")
            self.assertTrue(wait_for(lambda: not self.spooled(), 10), "journal files not removed")
            self.assertEqual(s.drain()["rejected_total"], 0)
            got = q("select request_id::text, count(*), -sum(amount_pico) from ledger where request_id = any(%s::uuid[])"
                    " group by 1", [r[0] for r in rows], conninfo=self.conninfo)
            want = {r[0]: cost(*r[3:]) for r in rows}
            self.assertEqual({g[0]: (g[1], int(g[2])) for g in got}, {k: (1, v) for k, v in want.items()},
                             "one debit per request")
            bal = q("select balance_pico from customers where name = %s", name, conninfo=self.conninfo)[0][0]
            self.assertEqual(int(bal), 3 * 10**12 - sum(want.values()))
            self.assertEqual(q("select count(*) from ledger_mismatch", conninfo=self.conninfo)[0][0], 0)
        finally:
            s.stop()
        self.check_log(s)

    def count(self, rids):
        return q("select count(*) from usage where request_id = any(%s::uuid[])", rids, conninfo=self.conninfo)[0][0]


if __name__ == "__main__":
    main()
