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
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import psycopg2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GATEWAY = os.path.join(ROOT, os.environ.get("TG_GATEWAY", "build/tollgate"))
CTL = os.path.join(ROOT, os.environ.get("TG_CTL", "build/tollgatectl"))
PGSH = os.path.join(ROOT, "tests", "billing", "pg.sh")
WORKER = os.path.join(ROOT, "tests", "billing", "slow_done_worker.py")  # fake_worker.py, slow after [DONE]
P_PG, P_REDIS, P_WORKER, P_GW, P_ADMIN = 18760, 18761, 18762, 18763, 18764
PG = "host=127.0.0.1 port=%d dbname=tollgate user=tollgate" % P_PG
MODEL = "fake-model"
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from tgskip import main  # noqa: E402


def q(sql, *args):
    with psycopg2.connect(PG, connect_timeout=10, options="-c statement_timeout=30000") as c:
        c.autocommit = True
        cur = c.cursor()
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def wait_for(fn, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.1)


class GatewayKill(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="billtest-gwkill.")
        os.chmod(cls.dir, 0o755)
        cls.pgdir = os.path.join(cls.dir, "pg")
        cls.spool = os.path.join(cls.dir, "spool")
        cls.procs = {}
        cls.gw = None
        try:
            cls.pg(True)
            cls.procs["redis"] = subprocess.Popen(
                ["redis-server", "--port", str(P_REDIS), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cls.procs["worker"] = subprocess.Popen(
                ["/usr/bin/python3", WORKER, str(P_WORKER)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=dict(os.environ, FAKE_WORKER_LOG=os.path.join(cls.dir, "worker.jsonl")))
            cert, key = os.path.join(cls.dir, "cert.pem"), os.path.join(cls.dir, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                           check=True, capture_output=True, timeout=60)
            cls.tls = ssl.create_default_context(cafile=cert)
            cls.token = os.urandom(16).hex()
            for name, val in (("admin.token", cls.token), ("key.secret", os.urandom(32).hex())):
                with open(os.path.join(cls.dir, name), "w") as f:
                    f.write(val + "\n")
            cls.config = os.path.join(cls.dir, "tollgate.json")
            with open(cls.config, "w") as f:
                json.dump({"listen": "127.0.0.1:%d" % P_GW, "admin_listen": "127.0.0.1:%d" % P_ADMIN,
                           "tls_cert": cert, "tls_key": key, "postgres": PG, "redis": "127.0.0.1:%d" % P_REDIS,
                           "admin_token_file": os.path.join(cls.dir, "admin.token"),
                           "key_secret_file": os.path.join(cls.dir, "key.secret"), "spool_dir": cls.spool,
                           "access_log": os.path.join(cls.dir, "access.log"),
                           "upstream_timeout_ms": 5000, "loops": 2,
                           "workers": [{"url": "http://127.0.0.1:%d" % P_WORKER, "models": [MODEL]}]}, f)
            cls.start_gateway()
            cls.ctl("price", "set", "--model", MODEL, "--input-miss", "270000", "--input-hit", "70000",
                    "--output", "1100000")
            cls.ctl("customer", "create", "gwkill", "--credit-usd", "10")
            cls.key = cls.ctl("key", "create", "--customer", "gwkill").strip().splitlines()[-1]
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gw and cls.gw.poll() is None:
            cls.gw.terminate()
            cls.gw.wait(timeout=20)
        for p in cls.procs.values():
            p.terminate()
            p.wait(timeout=10)
        cls.pg(False)
        if os.environ.get("KEEP_TEST_DIR"):
            print("kept", cls.dir, file=sys.stderr)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def pg(cls, up):
        subprocess.run(["bash", PGSH, "start" if up else "stop", cls.pgdir, str(P_PG)], check=True, timeout=120)

    @classmethod
    def ctl(cls, *args):
        env = dict(os.environ, TOLLGATE_ADMIN_URL="http://127.0.0.1:%d" % P_ADMIN, TOLLGATE_ADMIN_TOKEN=cls.token)
        p = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=30, env=env)
        if p.returncode != 0:
            raise AssertionError("tollgatectl %s: %s" % (" ".join(args), p.stderr))
        return p.stdout

    @classmethod
    def start_gateway(cls):
        log = open(os.path.join(cls.dir, "gateway.log"), "a")
        cls.gw = subprocess.Popen([GATEWAY, "--config", cls.config], stdout=log, stderr=log)
        log.close()
        deadline = time.time() + 15
        while time.time() < deadline:
            if cls.gw.poll() is not None:
                raise AssertionError("gateway exited: see %s/gateway.log" % cls.dir)
            try:
                urllib.request.urlopen("https://127.0.0.1:%d/health" % P_GW, timeout=1, context=cls.tls)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("gateway did not start")

    def settlement(self):
        req = urllib.request.Request("http://127.0.0.1:%d/admin/v1/settlement" % P_ADMIN,
                                     headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def drain(self, timeout=30.0):
        """Wait until the gateway's settlement queue is idle; returns its stats."""
        deadline = time.time() + timeout
        while True:
            j = self.settlement()
            if j["idle"]:
                return j
            if time.time() > deadline:
                self.fail("the settlement queue did not drain: %r" % j)
            time.sleep(0.05)

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
        self.assertTrue(wait_for(lambda: q("select count(*) from usage where request_id = any(%s::uuid[])",
                                           rids)[0][0] == len(rids)), what + ": usage rows missing after restart")
        self.assertTrue(wait_for(lambda: not self.spooled(), 10), what + ": journal files left")
        st = self.drain()  # whatever the restart replays has committed: a second debit would be in
        self.assertEqual(st["rejected_total"], 0, what)
        rows = q("select u.request_id::text, u.cost_pico, count(l.id), coalesce(-sum(l.amount_pico), 0)"
                 " from usage u left join ledger l on l.request_id = u.request_id"
                 " where u.request_id = any(%s::uuid[]) group by 1, 2", rids)
        self.assertEqual(len(rows), len(rids), what)
        for rid, cost, n, debit in rows:
            self.assertGreater(cost, 0, what)
            self.assertEqual((n, int(debit)), (1, cost), what + ": one debit per request " + rid)
        self.assertEqual(q("select count(*) from ledger_mismatch")[0][0], 0)

    def spooled(self):
        """Journal and spool files: in the spool directory (a single-loop run's) and its loop<i>."""
        return [os.path.join(d, f) for d, _, fs in os.walk(self.spool) for f in fs if f.endswith(".spool")]

    def round(self, lock, pg_down, legacy=False):
        lk = None
        if lock:
            lk = psycopg2.connect(PG)
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
        n, = q("select count(*) from usage u join customers c on c.id = u.customer_id where c.name = 'gwkill'")[0]
        self.assertEqual(n, len(all_rids), "no other rows")
        bal, spent = q("select c.balance_pico, (select sum(cost_pico) from usage where customer_id = c.id)"
                       " from customers c where name = 'gwkill'")[0]
        self.assertEqual(int(bal), 10 * 10**12 - int(spent))
        with open(os.path.join(self.dir, "gateway.log")) as f:
            log = f.read()
        self.assertNotIn("Sanitizer", log)
        self.assertNotIn("runtime error:", log)
        self.assertNotIn("rejected", log)
        self.assertNotIn("out of memory", log)
        self.assertNotIn("cannot ", log)


if __name__ == "__main__":
    if not os.access(GATEWAY, os.X_OK):
        print("test_gw_kill: FAIL, no gateway binary at %s (make test-billing builds it)" % GATEWAY, file=sys.stderr)
        sys.exit(1)
    main()
