"""Faults under load (issue 7's proof): the real gateway SIGKILLed 20 times at
random moments under streaming load, and PostgreSQL stopped for a minute under
load.  Afterwards every request the client saw complete has exactly one usage
row and one debit, no hold or credit lease is left open, and the ledger equals
the balance.

A private stack on ports 18770-18774: PostgreSQL (tests/billing/pg.sh), the
gateway's scripted fake worker (tests/gateway/fake_worker.py: every answer in
three chunks) and build/tollgate with short lease timers.  Load: client
threads sending streaming and plain chat requests back to back; a request
"completed" when a plain answer was read whole or a stream up to its
"data: [DONE]".  Counts are taken once the settlement queue is idle.

TG_FAULT_KILLS (default 20) and TG_FAULT_PG_OUTAGE_S (default 60) size it.  The journal's disk
full: test_journal_disk_full, with the LD_PRELOAD shim tests/billing/failwrite.c ($TG_FAILWRITE)."""
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import tggateway  # noqa: E402
import tgstack  # noqa: E402
from tggateway import MODEL  # noqa: E402
from tgskip import main  # noqa: E402

P_PG, P_WORKER, P_GW, P_ADMIN = 18770, 18771, 18772, 18773
KILLS = int(os.environ.get("TG_FAULT_KILLS", "20"))
OUTAGE_S = float(os.environ.get("TG_FAULT_PG_OUTAGE_S", "60"))
CLIENTS = 6


def wait_for(fn, what, timeout=120.0):
    """tgstack.wait_for, a server that is down (restarting) counting as "not yet"."""
    return tgstack.wait_for(fn, what, timeout, retry=(OSError, psycopg2.Error))


class Load:
    """CLIENTS threads sending requests until stop(); completed request ids are kept."""

    def __init__(self, tls, key):
        self.tls, self.key = tls, key
        self.done, self.answered, self.failed = [], {}, 0
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def one(self, i, n):
        stream = (i + n) % 3 != 0
        c = http.client.HTTPSConnection("127.0.0.1", P_GW, context=self.tls, timeout=30)
        try:
            body = {"model": MODEL, "stream": stream, "max_tokens": 64,
                    "messages": [{"role": "user", "content": "load %d %d" % (i, n)}]}
            c.request("POST", "/v1/chat/completions", json.dumps(body),
                      {"Authorization": "Bearer " + self.key, "Content-Type": "application/json"})
            r = c.getresponse()
            rid = r.getheader("x-request-id")
            if r.status != 200:
                r.read()
                with self.lock:
                    self.answered[r.status] = self.answered.get(r.status, 0) + 1
                return
            if stream:
                seen = b""
                while b"data: [DONE]" not in seen:
                    line = r.readline()
                    if not line:
                        return  # cut by the kill: not complete
                    seen += line
            else:
                if "choices" not in json.loads(r.read()):
                    return
            with self.lock:
                self.done.append(rid)
                self.answered[200] = self.answered.get(200, 0) + 1
        except (OSError, http.client.HTTPException, ValueError):
            with self.lock:
                self.failed += 1
            time.sleep(0.05)  # the gateway is restarting: do not spin
        finally:
            c.close()

    def run(self, i):
        n = 0
        while self.running:
            self.one(i, n)
            n += 1
            if not self.running:
                break

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"


class Faults(tggateway.GatewayCase):
    NAME = "faults"
    PORTS = tggateway.Ports(pg=P_PG, redis=None, worker=P_WORKER, gw=P_GW, admin=P_ADMIN)
    CONFIG = {"upstream_timeout_ms": 10000, "lease_ttl_ms": 5000, "lease_idle_ms": 300}

    @classmethod
    def set_up_stack(cls):
        cls.set_price()

    def admin_health_ok(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % P_ADMIN, timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def customer(self, usd):
        name = "fault-%s" % os.urandom(4).hex()
        key = self.customer_key(name, usd)
        (cid,), = self.q("select id from customers where name = %s", name)
        return cid, key, int(usd) * 10 ** 12

    def check(self, cid, credit, done, what):
        """Exactly once, nothing open, ledger = balance."""
        wait_for(lambda: self.settlement()["idle"], what + ": the settlement queue to drain")
        rows = self.q("select u.request_id::text, u.cost_pico, count(l.id), coalesce(-sum(l.amount_pico), 0)"
                      " from usage u left join ledger l on l.request_id = u.request_id"
                      " where u.customer_id = %s group by 1, 2", cid)
        by_id = {r[0]: r for r in rows}
        missing = [rid for rid in done if rid not in by_id]
        self.assertEqual(missing, [], what + ": completed requests without a usage row")
        for rid, cost, n, debit in rows:
            self.assertEqual((n, int(debit)), (1 if cost > 0 else 0, cost), what + ": one debit per row " + rid)
        spent = sum(r[1] for r in rows)
        (bal,), = self.q("select balance_pico from customers where id = %s", cid)
        self.assertEqual(int(bal), credit - spent, what)
        self.assertGreaterEqual(int(bal), 0, what)
        self.assertEqual(self.q("select count(*) from ledger_mismatch")[0][0], 0, what)
        # no hold and no lease left: the live gateway gives its leases back when idle,
        # the killed ones' leases were dropped at the restarts (or expired)
        wait_for(lambda: self.q("select count(*) from credit_leases where customer_id = %s", cid)[0][0] == 0,
                 what + ": the credit leases to be given back")
        self.assertEqual(self.gateway_metric("tollgate_open_holds"), 0, what)
        self.assertEqual(self.gateway_metric("tollgate_open_holds_pico"), 0, what)
        self.assertEqual(self.gateway_metric("tollgate_postgres_up"), 1, what)
        wait_for(lambda: self.gateway_metric("tollgate_spool_rows") == 0
                 and self.gateway_metric("tollgate_settle_queue_depth") == 0, what + ": the settle queue to drain")
        # and the operator's own check agrees: usage, ledger, balances, invoices, rollups
        rec = self.ctl("reconcile", check=False, raw=True, timeout=120)
        self.assertEqual(rec.returncode, 0, what + ": reconcile: " + rec.stdout + rec.stderr)
        return len(rows), spent

    def gateway_metric(self, name):
        for path, ctx in (("https://127.0.0.1:%d/metrics" % P_GW, self.tls),):
            try:
                req = urllib.request.Request(path, headers={"Authorization": "Bearer " + self.token})
                with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                    text = r.read().decode()
            except urllib.error.HTTPError:
                req = urllib.request.Request("http://127.0.0.1:%d/metrics" % P_ADMIN,
                                             headers={"Authorization": "Bearer " + self.token})
                with urllib.request.urlopen(req, timeout=10) as r:
                    text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError("no %s in /metrics" % name)

    def chat_once(self, key, i, stream):
        """One request read to its end -> (status, request id, body)."""
        c = http.client.HTTPSConnection("127.0.0.1", P_GW, context=self.tls, timeout=30)
        try:
            body = {"model": MODEL, "stream": stream, "max_tokens": 64,
                    "messages": [{"role": "user", "content": "journal %d" % i}]}
            c.request("POST", "/v1/chat/completions", json.dumps(body),
                      {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status == 200 and stream:
                self.assertIn(b"data: [DONE]", data)
            return r.status, r.getheader("x-request-id"), data
        finally:
            c.close()

    def restart_with_shim(self, var, flag):
        """Restarts the gateway under the LD_PRELOAD shim tests/billing/failwrite.c ($TG_FAILWRITE) on
        the spool directory, failing while the file flag exists (var: FAILWRITE_FLAG, writes with
        ENOSPC; FAILWRITE_SYNC_FLAG, fsync and fdatasync with EIO) -> the gateway's environment."""
        shim = os.environ.get("TG_FAILWRITE") or os.path.join(tggateway.ROOT, "build", "tests", "billing",
                                                                  "failwrite.so")
        self.assertTrue(os.access(shim, os.R_OK), "no failing-disk shim at %s (make test-billing builds it)" % shim)
        asan = os.environ.get("ASAN_OPTIONS", "")
        env = dict(os.environ, LD_PRELOAD=shim, FAILWRITE_DIR=self.spool,
                   ASAN_OPTIONS=(asan + ":" if asan else "") + "verify_asan_link_order=0")
        env[var] = flag
        os.kill(self.gw.pid, signal.SIGTERM)
        self.gw.wait(timeout=30)
        self.start_gateway(env=env)
        return env

    def serve_until_refused(self, key, i, served, refused, pause, what):
        """Requests (numbered from i, every second one streamed) until one is refused with the 503 in
        the API format that says usage cannot be recorded; at most 40.  Ids to served and refused."""
        for i in range(i, i + 40):
            st, rid, body = self.chat_once(key, i, i % 2 == 1)
            if st == 200:
                served.append(rid)
                time.sleep(pause)
                continue
            self.assertEqual(st, 503, body)
            err = json.loads(body)["error"]
            self.assertEqual((err["type"], err["code"], err["param"]), ("server_error", "service_unavailable", None))
            self.assertIn("Usage cannot be recorded", err["message"])
            refused.append(rid)
            return
        self.fail("40 requests served %s, none refused" % what)

    def test_journal_disk_full(self):
        """The journal's disk full (writes into the spool directory fail with ENOSPC: the
        LD_PRELOAD shim tests/billing/failwrite.c, $TG_FAILWRITE): once a journal write has failed,
        billable requests are refused with a 503 in the API format until the disk takes writes
        again, so nothing is served whose usage row lives in memory only.  Then PostgreSQL goes
        down and the gateway is SIGKILLed: every request answered 200 still has exactly one usage
        row (before, the requests served meanwhile were answered from memory-only rows, and the
        kill lost them); with room again the gateway serves again."""
        cid, key, credit = self.customer("100")
        flag = os.path.join(self.dir, "disk-full")
        env = self.restart_with_shim("FAILWRITE_FLAG", flag)
        served, refused = [], []
        try:
            for i in range(4):  # the disk has room: served and journaled
                st, rid, _ = self.chat_once(key, i, i % 2 == 1)
                self.assertEqual(st, 200)
                served.append(rid)
            open(flag, "w").close()
            # The request whose journal write fails first is answered (it was admitted before);
            # from then on requests are refused until the disk has room again.
            self.serve_until_refused(key, 100, served, refused, 0, "on a full journal disk")
            # the rows of what was served commit from memory (PostgreSQL is up); the disk stays full
            wait_for(lambda: self.settlement()["idle"], "the rows served on a full disk to commit")
            # PostgreSQL down, the disk still full: under load nothing is answered 200 any more
            self.pg(False)
            load = Load(self.tls, key)
            try:
                time.sleep(3.0)
            finally:
                load.stop()
            self.assertEqual(load.done, [], "requests served with the journal's disk full and PostgreSQL down")
            self.assertEqual(set(load.answered) - {503}, set(), load.answered)
            self.assertGreater(self.gateway_metric("tollgate_refused_journal_total"), 0)
            self.assertEqual(self.gateway_metric("tollgate_open_holds"), 0)
            os.kill(self.gw.pid, signal.SIGKILL)
            self.gw.wait(timeout=10)
            self.pg(True)
        finally:
            if os.path.exists(flag):
                os.unlink(flag)
            if self.gw.poll() is not None:
                self.start_gateway(env=env)
        # room again: served again (the next probe of the directory finds it writable)
        def serves():
            st, rid, _ = self.chat_once(key, 999, False)
            if st == 200:
                served.append(rid)
            return st == 200
        wait_for(serves, "the gateway to serve again once the disk has room", 30)
        self.assertEqual(self.q("select count(*) from usage where request_id = any(%s::uuid[])", refused)[0][0], 0)
        rows, spent = self.check(cid, credit, served, "after a full journal disk")
        self.assertEqual(rows, len(served))
        os.kill(self.gw.pid, signal.SIGTERM)  # the class's gateway again, without the shim
        self.gw.wait(timeout=30)
        self.start_gateway()

    def test_journal_sync_fails(self):
        """The journal's disk takes writes but its fdatasync fails with EIO (the shim's
        FAILWRITE_SYNC_FLAG): what was written may never reach the disk, so billable requests are
        refused with a 503 in the API format from the failed sync on, although writes still succeed,
        until a probe's write and fdatasync both succeed; then the gateway serves again.  Every
        request answered 200 has exactly one usage row, a refused one none.  Before (2026-12-01) a
        failed fdatasync was only logged and the gateway went on serving."""
        cid, key, credit = self.customer("100")
        flag = os.path.join(self.dir, "sync-fails")
        self.restart_with_shim("FAILWRITE_SYNC_FLAG", flag)
        served, refused = [], []
        try:
            for i in range(4):  # syncs work: served
                st, rid, _ = self.chat_once(key, i, i % 2 == 1)
                self.assertEqual(st, 200)
                served.append(rid)
            open(flag, "w").close()
            # the sync after the next journaled row (50 ms after it) fails; from then on: refused
            self.serve_until_refused(key, 200, served, refused, 0.1, "while the journal's fdatasync fails")
            time.sleep(1.5)  # past the next probe: its write works, its fdatasync does not
            st, rid, body = self.chat_once(key, 300, False)
            self.assertEqual(st, 503, "served after a probe whose fdatasync failed: %r" % body)
            refused.append(rid)
        finally:
            if os.path.exists(flag):
                os.unlink(flag)

        def serves():
            st, rid, _ = self.chat_once(key, 999, False)
            if st == 200:
                served.append(rid)
            return st == 200
        wait_for(serves, "the gateway to serve again once the disk syncs", 30)
        with open(os.path.join(self.dir, "gateway.log")) as f:
            self.assertIn("cannot sync the journal", f.read())
        wait_for(lambda: self.settlement()["idle"], "the rows to commit")
        self.assertEqual(self.q("select count(*) from usage where request_id = any(%s::uuid[])", refused)[0][0], 0)
        rows, spent = self.check(cid, credit, served, "after failed journal syncs")
        self.assertEqual(rows, len(served))
        os.kill(self.gw.pid, signal.SIGTERM)  # the class's gateway again, without the shim
        self.gw.wait(timeout=30)
        self.start_gateway()

    def test_sigkill_20_times_under_load(self):
        cid, key, credit = self.customer("100")
        load = Load(self.tls, key)
        rnd = random.Random(int(os.environ.get("TG_FAULT_SEED", "7")))
        try:
            for _ in range(KILLS):
                time.sleep(rnd.uniform(0.1, 1.2))
                os.kill(self.gw.pid, signal.SIGKILL)
                self.gw.wait(timeout=10)
                self.start_gateway()
            time.sleep(1.0)
        finally:
            load.stop()
        rows, spent = self.check(cid, credit, load.done, "after %d kills" % KILLS)
        print("\n  %d SIGKILLs under load: %d requests completed, %d usage rows (the rest were cut), "
              "answers %s, %d client errors; spent %d pico-USD"
              % (KILLS, len(load.done), rows, load.answered, load.failed, spent), file=sys.stderr)
        self.assertGreater(len(load.done), KILLS, "the load made too few requests to mean anything")

    def test_postgres_down_under_load(self):
        cid, key, credit = self.customer("100")
        load = Load(self.tls, key)
        try:
            time.sleep(1.0)
            before = len(load.done)
            self.pg(False)
            t0 = time.time()
            time.sleep(OUTAGE_S)
            during = len(load.done) - before
            # the money metrics show the outage: PostgreSQL down, the settlements of the requests
            # served meanwhile on disk waiting for a replay, not lost
            self.assertEqual(self.gateway_metric("tollgate_postgres_up"), 0)
            self.assertEqual(self.gateway_metric("tollgate_settle_replay_pending"), 1)
            self.assertGreater(self.gateway_metric("tollgate_spool_files"), 0)
            self.assertGreater(self.gateway_metric("tollgate_spool_bytes"), 0)
            self.pg(True)
            wait_for(self.admin_health_ok, "the gateway to see PostgreSQL again")
            time.sleep(1.0)
        finally:
            load.stop()
        rows, spent = self.check(cid, credit, load.done, "after a %.0f s PostgreSQL outage" % OUTAGE_S)
        print("\n  PostgreSQL down %.0f s under load: %d requests completed (%d during the outage), %d usage rows,"
              " answers %s, %d client errors; spent %d pico-USD"
              % (time.time() - t0, len(load.done), during, rows, load.answered, load.failed, spent), file=sys.stderr)
        self.assertGreater(during, 0, "nothing was served from the credit lease while PostgreSQL was down")


if __name__ == "__main__":
    tggateway.require_gateway("test_faults")
    main()
