"""Fault test of the real gateway (build/tollgate): a SIGKILL right after the answers arrived loses no
usage row and counts none twice.

A private stack on ports 18760-18765: PostgreSQL (tests/billing/pg.sh), Redis, the gateway's scripted
fake worker (tests/gateway/fake_worker.py, through slow_done_worker.py: its streams pause 3 s after
"data: [DONE]" before their body ends, so the kill comes while the gateway still waits for them) and
the gateway.  Each round makes chat requests (plain ones
read to the end, streams read only up to their "data: [DONE]"), SIGKILLs the gateway at once, restarts
it and checks that every request has exactly one usage row and exactly one debit:
  - the usage table locked while the requests run, so no settlement can commit before the kill;
  - the same, and PostgreSQL stopped before the kill and started again before the restart;
  - no lock: the ordinary race between commits and the kill.
Before the write-ahead journal the first two rounds lost every row; with the journal but the stream
settled only at the end of the worker's body, every stream was lost.
Counts are taken once the gateway's settlement queue is idle (GET /admin/v1/settlement on its admin
listener), so a late duplicate debit is caught, not raced.  A missing gateway binary is a failure:
make test-billing builds it."""
import http.client
import json
import os
import signal
import sys

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import tggateway  # noqa: E402
from tggateway import MODEL  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import wait_for  # noqa: E402

P_PG, P_REDIS, P_WORKER, P_GW, P_ADMIN = 18760, 18761, 18762, 18763, 18764


class GatewayKill(tggateway.GatewayCase):
    NAME = "gwkill"
    PORTS = tggateway.Ports(pg=P_PG, redis=P_REDIS, worker=P_WORKER, gw=P_GW, admin=P_ADMIN)
    WORKER = os.path.join(tggateway.ROOT, "tests", "billing", "slow_done_worker.py")  # slow after [DONE]
    CONFIG = {"upstream_timeout_ms": 5000, "loops": 2}

    @classmethod
    def set_up_stack(cls):
        cls.set_price()
        cls.key = cls.customer_key("gwkill", "10")

    def kill_gateway(self):
        os.kill(self.gw.pid, signal.SIGKILL)
        self.gw.wait(timeout=10)

    def chat(self, stream, i):
        """One request; a stream is read only up to its [DONE] (what a client needs).  Returns the id."""
        c = http.client.HTTPSConnection("127.0.0.1", P_GW, context=self.tls, timeout=15)
        body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "kill test %d" % i}]}
        c.request("POST", "/v1/chat/completions", json.dumps(body),
                  {"Authorization": "Bearer " + self.key, "Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            self.fail("status %d: %r" % (r.status, r.read()))
        rid = r.getheader("x-request-id")
        if stream:
            seen = b""
            while b"data: [DONE]" not in seen:
                line = r.readline()
                self.assertTrue(line, "stream ended without [DONE]: %r" % seen)
                seen += line
        else:
            self.assertIn("choices", json.loads(r.read()))
        # the connection is dropped without waiting for anything more
        c.sock.close()
        return rid

    def check_once(self, rids, what):
        wait_for(lambda: self.q("select count(*) from usage where request_id = any(%s::uuid[])", rids)[0][0]
                 == len(rids), what + ": every usage row after the restart", 20)
        wait_for(lambda: not self.spooled(), what + ": no journal file left", 10)
        st = self.drain()  # whatever the restart replays has committed: a second debit would be in
        self.assertEqual(st["rejected_total"], 0, what)
        rows = self.q("select u.request_id::text, u.cost_pico, count(l.id), coalesce(-sum(l.amount_pico), 0)"
                      " from usage u left join ledger l on l.request_id = u.request_id"
                      " where u.request_id = any(%s::uuid[]) group by 1, 2", rids)
        self.assertEqual(len(rows), len(rids), what)
        for rid, cost, n, debit in rows:
            self.assertGreater(cost, 0, what)
            self.assertEqual((n, int(debit)), (1, cost), what + ": one debit per request " + rid)
        self.assertEqual(self.q("select count(*) from ledger_mismatch")[0][0], 0)

    def spooled(self):
        """Journal and spool files: in the spool directory (a single-loop run's) and its loop<i>."""
        return [os.path.join(d, f) for d, _, fs in os.walk(self.spool) for f in fs if f.endswith(".spool")]

    def round(self, lock, pg_down, legacy=False):
        lk = None
        if lock:
            lk = psycopg2.connect(self.pg_dsn)
            lk.cursor().execute("lock table usage in exclusive mode")  # settlements block, nothing commits
        try:
            rids = [self.chat(i % 2 == 1, i) for i in range(6)]
            if pg_down:
                self.pg(False)  # lock still held: the blocked batch dies with its server, uncommitted
            self.kill_gateway()
        finally:
            if lk:
                try:
                    lk.rollback()
                    lk.close()
                except psycopg2.Error:
                    pass  # its server was stopped
        if lock:
            self.assertTrue(self.spooled(), "nothing journaled")
        if legacy:  # as a single-loop run left them: in the spool directory itself, replayed by loop 0
            for path in self.spooled():
                os.rename(path, os.path.join(self.spool, os.path.basename(path)))
            self.assertTrue([f for f in os.listdir(self.spool) if f.endswith(".spool")])
        if pg_down:
            self.pg(True)
        self.start_gateway()
        return rids

    def test_sigkill_after_answers(self):
        all_rids = []
        for lock, pg_down, legacy, what in ((True, False, False, "usage locked"),
                                            (True, True, False, "PostgreSQL down at the kill"),
                                            (True, False, True, "journals of a single-loop run"),
                                            (False, False, False, "plain kill")):
            rids = self.round(lock, pg_down, legacy)
            self.check_once(rids, what)
            all_rids += rids
        n, = self.q("select count(*) from usage u join customers c on c.id = u.customer_id"
                    " where c.name = 'gwkill'")[0]
        self.assertEqual(n, len(all_rids), "no other rows")
        bal, spent = self.q("select c.balance_pico, (select sum(cost_pico) from usage where customer_id = c.id)"
                            " from customers c where name = 'gwkill'")[0]
        self.assertEqual(int(bal), 10 * 10**12 - int(spent))
        with open(os.path.join(self.dir, "gateway.log")) as f:
            log = f.read()
        self.assertNotIn("Sanitizer", log)
        self.assertNotIn("runtime error:", log)
        self.assertNotIn("rejected", log)
        self.assertNotIn("out of memory", log)
        self.assertNotIn("cannot ", log)

    def test_answers_wait_for_the_journal(self):
        """An answer leaves only after its usage row is in the journal, so a crash cannot deliver an
        answer that no journal or table remembers.  With TOLLGATE_FAULT=journal-stall the journal write
        never comes (the loop goes on) and the gateway kills itself 2 s later: a plain answer must not
        arrive at all and a stream must not reach its "data: [DONE]".  (The settler may still commit their
        rows from memory meanwhile: billed once at most, checked after a restart.)"""
        key = self.customer_key("gwstall", "10")
        stall = dict(os.environ, TOLLGATE_FAULT="journal-stall")
        for stream in (False, True):
            if self.gw.poll() is None:
                self.kill_gateway()
            self.start_gateway(env=stall)
            c = http.client.HTTPSConnection("127.0.0.1", P_GW, context=self.tls, timeout=15)
            body = {"model": MODEL, "stream": stream,
                    "messages": [{"role": "user", "content": "journal stall %d" % stream}]}
            c.request("POST", "/v1/chat/completions", json.dumps(body),
                      {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
            got = b""
            try:
                r = c.getresponse()
                got = b"status %d " % r.status
                while True:
                    line = r.readline()
                    if not line:
                        break
                    got += line
            except (http.client.HTTPException, OSError):
                pass  # the connection died with the gateway
            c.close()
            self.assertEqual(self.gw.wait(timeout=20), -signal.SIGKILL, "the fault's kill")
            if stream:
                self.assertNotIn(b"data: [DONE]", got, "the stream's end went before its journal record")
            else:
                self.assertNotIn(b"choices", got, "the answer went before its journal record")
        self.start_gateway()
        self.drain()
        rows = self.q("select count(*), count(distinct u.request_id), coalesce(sum(u.cost_pico), 0),"
                      " (select coalesce(-sum(l.amount_pico), 0) from ledger l where l.customer_id = c.id"
                      "  and l.kind = 'usage') from customers c left join usage u on u.customer_id = c.id"
                      " where c.name = 'gwstall' group by c.id")[0]
        self.assertLessEqual(rows[0], 2, "at most a row per request")
        self.assertEqual(rows[0], rows[1])
        self.assertEqual(int(rows[2]), int(rows[3]), "the debits are the rows' costs")

if __name__ == "__main__":
    tggateway.require_gateway("test_gw_kill")
    main()
