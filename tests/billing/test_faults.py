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

TG_FAULT_KILLS (default 20) and TG_FAULT_PG_OUTAGE_S (default 60) size it."""
import http.client
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import psycopg2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GATEWAY = os.path.join(ROOT, os.environ.get("TG_GATEWAY", "build/tollgate"))
CTL = os.path.join(ROOT, os.environ.get("TG_CTL", "build/tollgatectl"))
PGSH = os.path.join(ROOT, "tests", "billing", "pg.sh")
WORKER = os.path.join(ROOT, "tests", "gateway", "fake_worker.py")
P_PG, P_WORKER, P_GW, P_ADMIN = 18770, 18771, 18772, 18773
PG = "host=127.0.0.1 port=%d dbname=tollgate user=tollgate" % P_PG
MODEL = "fake-model"
KILLS = int(os.environ.get("TG_FAULT_KILLS", "20"))
OUTAGE_S = float(os.environ.get("TG_FAULT_PG_OUTAGE_S", "60"))
CLIENTS = 6
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from tgskip import main  # noqa: E402


def q(sql, *args):
    with psycopg2.connect(PG, connect_timeout=10, options="-c statement_timeout=60000") as c:
        c.autocommit = True
        cur = c.cursor()
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else None


def wait_for(fn, what, timeout=120.0):
    deadline = time.time() + timeout
    while True:
        try:
            v = fn()
        except (OSError, psycopg2.Error):
            v = None
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


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


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="billtest-faults.")
        os.chmod(cls.dir, 0o755)
        cls.pgdir = os.path.join(cls.dir, "pg")
        cls.spool = os.path.join(cls.dir, "spool")
        cls.worker = None
        cls.gw = None
        try:
            cls.pg(True)
            cls.worker = subprocess.Popen(["/usr/bin/python3", WORKER, str(P_WORKER)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
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
                           "tls_cert": cert, "tls_key": key, "postgres": PG, "redis": "",
                           "admin_token_file": os.path.join(cls.dir, "admin.token"),
                           "key_secret_file": os.path.join(cls.dir, "key.secret"), "spool_dir": cls.spool,
                           "access_log": os.path.join(cls.dir, "access.log"), "upstream_timeout_ms": 10000,
                           "lease_ttl_ms": 5000, "lease_idle_ms": 300,
                           "workers": [{"url": "http://127.0.0.1:%d" % P_WORKER, "models": [MODEL]}]}, f)
            cls.start_gateway()
            cls.ctl("price", "set", "--model", MODEL, "--input-miss", "270000", "--input-hit", "70000",
                    "--output", "1100000")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.gw and cls.gw.poll() is None:
            cls.gw.terminate()
            cls.gw.wait(timeout=30)
        if cls.worker:
            cls.worker.terminate()
            cls.worker.wait(timeout=10)
        cls.pg(False)
        log = os.path.join(cls.dir, "gateway.log")
        bad = []
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                bad = [l for l in f if "AddressSanitizer" in l or "LeakSanitizer" in l or "runtime error:" in l]
        if os.environ.get("KEEP_TEST_DIR") or bad:
            print("kept", cls.dir, file=sys.stderr)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)
        if bad:
            raise AssertionError("sanitizer report in the gateway log: %s" % bad[:3])

    @classmethod
    def pg(cls, up):
        subprocess.run(["bash", PGSH, "start" if up else "stop", cls.pgdir, str(P_PG)], check=True, timeout=120)

    @classmethod
    def ctl(cls, *args):
        env = dict(os.environ, TOLLGATE_ADMIN_URL="http://127.0.0.1:%d" % P_ADMIN, TOLLGATE_ADMIN_TOKEN=cls.token)
        p = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=60, env=env)
        if p.returncode != 0:
            raise AssertionError("tollgatectl %s: %s" % (" ".join(args), p.stderr))
        return p.stdout

    @classmethod
    def start_gateway(cls):
        with open(os.path.join(cls.dir, "gateway.log"), "a") as log:
            cls.gw = subprocess.Popen([GATEWAY, "--config", cls.config], stdout=log, stderr=log)

        def up():
            if cls.gw.poll() is not None:
                raise AssertionError("gateway exited: see %s/gateway.log" % cls.dir)
            try:
                urllib.request.urlopen("https://127.0.0.1:%d/health" % P_GW, timeout=2, context=cls.tls)
            except urllib.error.HTTPError:
                pass
            return True
        wait_for(up, "the gateway to start", 60)

    def settlement(self):
        req = urllib.request.Request("http://127.0.0.1:%d/admin/v1/settlement" % P_ADMIN,
                                     headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def admin_health_ok(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % P_ADMIN, timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def customer(self, usd):
        name = "fault-%s" % os.urandom(4).hex()
        self.ctl("customer", "create", name, "--credit-usd", usd)
        key = self.ctl("key", "create", "--customer", name).strip().splitlines()[-1]
        (cid,), = q("select id from customers where name = %s", name)
        return cid, key, int(usd) * 10 ** 12

    def check(self, cid, credit, done, what):
        """Exactly once, nothing open, ledger = balance."""
        wait_for(lambda: self.settlement()["idle"], what + ": the settlement queue to drain")
        rows = q("select u.request_id::text, u.cost_pico, count(l.id), coalesce(-sum(l.amount_pico), 0)"
                 " from usage u left join ledger l on l.request_id = u.request_id"
                 " where u.customer_id = %s group by 1, 2", cid)
        by_id = {r[0]: r for r in rows}
        missing = [rid for rid in done if rid not in by_id]
        self.assertEqual(missing, [], what + ": completed requests without a usage row")
        for rid, cost, n, debit in rows:
            self.assertEqual((n, int(debit)), (1 if cost > 0 else 0, cost), what + ": one debit per row " + rid)
        spent = sum(r[1] for r in rows)
        (bal,), = q("select balance_pico from customers where id = %s", cid)
        self.assertEqual(int(bal), credit - spent, what)
        self.assertGreaterEqual(int(bal), 0, what)
        self.assertEqual(q("select count(*) from ledger_mismatch")[0][0], 0, what)
        # no hold and no lease left: the live gateway gives its leases back when idle,
        # the killed ones' leases were dropped at the restarts (or expired)
        wait_for(lambda: q("select count(*) from credit_leases where customer_id = %s", cid)[0][0] == 0,
                 what + ": the credit leases to be given back")
        self.assertEqual(self.gateway_metric("tollgate_open_holds"), 0, what)
        self.assertEqual(self.gateway_metric("tollgate_open_holds_pico"), 0, what)
        self.assertEqual(self.gateway_metric("tollgate_postgres_up"), 1, what)
        wait_for(lambda: self.gateway_metric("tollgate_spool_rows") == 0
                 and self.gateway_metric("tollgate_settle_queue_depth") == 0, what + ": the settle queue to drain")
        # and the operator's own check agrees: usage, ledger, balances, invoices, rollups
        env = dict(os.environ, TOLLGATE_ADMIN_URL="http://127.0.0.1:%d" % P_ADMIN, TOLLGATE_ADMIN_TOKEN=self.token)
        rec = subprocess.run([CTL, "reconcile"], capture_output=True, text=True, timeout=120, env=env)
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
    main()
