"""tggateway — a private gateway stack for one test class (tests/billing/test_gw_*.py, test_faults.py):
its own PostgreSQL (tests/billing/pg.sh), Redis (or none), the scripted fake worker, and the real
gateway ($TG_GATEWAY, default build/tollgate) started from a generated configuration with a
self-signed certificate, an admin token and a key secret, all in one temporary directory (kept with
KEEP_TEST_DIR=1).  Unlike the shared test stack (tgstack.py, scripts/stack.sh test-up), every port
is the test's own and fixed: tests/billing/run.sh runs one such test at a time.

    class Kill(tggateway.GatewayCase):
        NAME = "gwkill"                              # the directory is /tmp/billtest-gwkill.*
        PORTS = tggateway.Ports(pg=18760, redis=18761, worker=18762, gw=18763, admin=18764)
        CONFIG = {"loops": 2}                        # added to the gateway's configuration

        @classmethod
        def set_up_stack(cls):                       # once the gateway answers: prices, customers
            cls.set_price()

A failure anywhere in setUpClass stops what had started.  Queries, tollgatectl and waiting go
through tgstack's query, ctl_run, wait_for and drain."""
import collections
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

from tgstack import ctl_run, drain, query, settlement, wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GATEWAY = os.path.join(ROOT, os.environ.get("TG_GATEWAY", "build/tollgate"))
CTL = os.path.join(ROOT, os.environ.get("TG_CTL", "build/tollgatectl"))
PGSH = os.path.join(ROOT, "tests", "billing", "pg.sh")
FAKE_WORKER = os.path.join(ROOT, "tests", "gateway", "fake_worker.py")
MODEL = "fake-model"  # the one model the fake worker serves
PRICE = (270000, 70000, 1100000)  # MODEL's: micro-USD per 1M tokens, input cache miss and hit, output
START_S = 60.0        # a generous deadline for the gateway to answer /health

# redis None: the gateway runs without Redis (local rate limits).
Ports = collections.namedtuple("Ports", "pg redis worker gw admin")


def require_gateway(test):
    """A missing gateway binary fails the test program (make test-billing builds it)."""
    if not os.access(GATEWAY, os.X_OK):
        print("%s: FAIL, no gateway binary at %s (make test-billing builds it)" % (test, GATEWAY), file=sys.stderr)
        sys.exit(1)


def sanitizer_reports(path):
    """The lines of a log that a sanitizer wrote (none when the file is missing)."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        return [l for l in f if "AddressSanitizer" in l or "LeakSanitizer" in l or "runtime error:" in l]


class GatewayCase(unittest.TestCase):
    """The stack, up for the whole class.  What the tests read: cls.dir, cls.spool, cls.pgdir,
    cls.cfg (the gateway's configuration) and cls.config (its file), cls.tls (an SSL context that
    trusts the gateway), cls.token (the admin token), cls.gw (the gateway process), cls.pg_dsn;
    with RECEIPT_KEY, cls.receipt_key and cls.pub (PEM files)."""
    NAME = "gw"
    PORTS = None
    WORKER = FAKE_WORKER     # a script taking the port; FAKE_WORKER_LOG is <dir>/worker.jsonl
    CONFIG = {}              # added to (or replacing) the generated configuration
    RECEIPT_KEY = False      # make an Ed25519 receipt key and configure it
    STATEMENT_TIMEOUT_MS = 60000
    FAIL_ON_SANITIZER = True  # tearDownClass fails (and keeps the directory) on a sanitizer line in gateway.log

    @classmethod
    def setUpClass(cls):
        p = cls.PORTS
        cls.dir = tempfile.mkdtemp(prefix="billtest-%s." % cls.NAME)
        os.chmod(cls.dir, 0o755)  # the cluster may run as `postgres`
        cls.pgdir = os.path.join(cls.dir, "pg")
        cls.spool = os.path.join(cls.dir, "spool")
        cls.pg_dsn = "host=127.0.0.1 port=%d dbname=tollgate user=tollgate" % p.pg
        cls.procs = {}
        cls.gw = None
        cls.token = os.urandom(16).hex()
        try:
            cls.pg(True)
            if p.redis:
                cls.procs["redis"] = subprocess.Popen(
                    ["redis-server", "--port", str(p.redis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cls.procs["worker"] = subprocess.Popen(
                ["/usr/bin/python3", cls.WORKER, str(p.worker)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=dict(os.environ, FAKE_WORKER_LOG=os.path.join(cls.dir, "worker.jsonl")))
            cert, key = os.path.join(cls.dir, "cert.pem"), os.path.join(cls.dir, "key.pem")
            cls.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", key, "-out", cert)
            cls.tls = ssl.create_default_context(cafile=cert)
            for name, val in (("admin.token", cls.token), ("key.secret", os.urandom(32).hex())):
                with open(os.path.join(cls.dir, name), "w") as f:
                    f.write(val + "\n")
            cls.cfg = {"listen": "127.0.0.1:%d" % p.gw, "admin_listen": "127.0.0.1:%d" % p.admin,
                       "tls_cert": cert, "tls_key": key, "postgres": cls.pg_dsn,
                       "redis": "127.0.0.1:%d" % p.redis if p.redis else "",
                       "admin_token_file": os.path.join(cls.dir, "admin.token"),
                       "key_secret_file": os.path.join(cls.dir, "key.secret"), "spool_dir": cls.spool,
                       "access_log": os.path.join(cls.dir, "access.log"),
                       "workers": [{"url": "http://127.0.0.1:%d" % p.worker, "models": [MODEL]}]}
            if cls.RECEIPT_KEY:
                cls.receipt_key, cls.pub = cls.ed25519_key("receipt")
                cls.cfg["receipt_key"] = cls.receipt_key
            cls.cfg.update(cls.CONFIG)
            cls.config = os.path.join(cls.dir, "tollgate.json")
            with open(cls.config, "w") as f:
                json.dump(cls.cfg, f)
            cls.start_gateway()
            cls.set_up_stack()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def set_up_stack(cls):
        """The test class's own start-up once the gateway answers (prices, customers); may raise."""

    @classmethod
    def tearDownClass(cls):
        if cls.gw and cls.gw.poll() is None:
            cls.gw.terminate()
            cls.gw.wait(timeout=30)
        for p in cls.procs.values():
            p.terminate()
            p.wait(timeout=10)
        cls.pg(False)
        bad = sanitizer_reports(os.path.join(cls.dir, "gateway.log")) if cls.FAIL_ON_SANITIZER else []
        if os.environ.get("KEEP_TEST_DIR") or bad:
            print("kept", cls.dir, file=sys.stderr)
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)
        if bad:
            raise AssertionError("sanitizer report in the gateway log: %s" % bad[:3])

    # ---- the parts ----

    @classmethod
    def pg(cls, up):
        """Start (initdb and migrations the first time) or stop the stack's PostgreSQL."""
        subprocess.run(["bash", PGSH, "start" if up else "stop", cls.pgdir, str(cls.PORTS.pg)], check=True,
                       timeout=120)

    @classmethod
    def openssl(cls, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    @classmethod
    def ed25519_key(cls, name):
        """A new Ed25519 key pair in <dir>/<name>.key and <name>.pub -> (key path, public key path)."""
        key, pub = os.path.join(cls.dir, name + ".key"), os.path.join(cls.dir, name + ".pub")
        cls.openssl("genpkey", "-algorithm", "ed25519", "-out", key)
        cls.openssl("pkey", "-in", key, "-pubout", "-out", pub)
        return key, pub

    @classmethod
    def start_gateway(cls, env=None):
        """(Re)start the stack's gateway (cls.gw) and wait until it answers; env: its environment."""
        cls.gw = cls.launch(cls.config, "gateway.log", cls.PORTS.gw, env=env)

    @classmethod
    def launch(cls, config, log, port, env=None):
        """A gateway on config, its output appended to <dir>/<log>, once it answers on port
        (any HTTP status counts) -> the process.  It exiting first raises."""
        path = os.path.join(cls.dir, log)
        with open(path, "a") as f:
            gw = subprocess.Popen([GATEWAY, "--config", config], stdout=f, stderr=f, env=env)

        def up():
            if gw.poll() is not None:
                raise AssertionError("gateway exited: see %s" % path)
            try:
                urllib.request.urlopen("https://127.0.0.1:%d/health" % port, timeout=2, context=cls.tls).close()
            except urllib.error.HTTPError:
                pass  # an answer: it is up
            return True
        try:
            wait_for(up, "the gateway on port %d to start (%s)" % (port, path), START_S, retry=(OSError,))
        except BaseException:
            if gw.poll() is None:
                gw.kill()
                gw.wait(timeout=10)
            raise
        return gw

    @classmethod
    def ctl(cls, *args, check=True, raw=False, timeout=60):
        """tollgatectl against the stack's admin listener -> its standard output (raw: the process).
        A failure raises unless check=False."""
        env = dict(os.environ, TOLLGATE_ADMIN_URL="http://127.0.0.1:%d" % cls.PORTS.admin,
                   TOLLGATE_ADMIN_TOKEN=cls.token)
        p = ctl_run(*args, check=check, timeout=timeout, ctl=CTL, env=env)
        return p if raw else p.stdout

    @classmethod
    def set_price(cls):
        """MODEL's price: PRICE."""
        cls.ctl("price", "set", "--model", MODEL, "--input-miss", str(PRICE[0]), "--input-hit", str(PRICE[1]),
                "--output", str(PRICE[2]))

    @classmethod
    def customer_key(cls, name, credit_usd, *key_args):
        """A new customer with credit_usd (a decimal string) and an API key of its (key_args: more
        options of `tollgatectl key create`) -> the key."""
        cls.ctl("customer", "create", name, "--credit-usd", credit_usd)
        return cls.ctl("key", "create", "--customer", name, *key_args).strip().splitlines()[-1]

    @classmethod
    def q(cls, sql, *args):
        """One statement on the stack's database -> its rows (None when it returns none)."""
        return query(cls.pg_dsn, sql, *args, options="-c statement_timeout=%d" % cls.STATEMENT_TIMEOUT_MS)

    def settlement(self):
        """The gateway's settlement queue: its stats, "idle" among them."""
        return settlement("http://127.0.0.1:%d" % self.PORTS.admin, self.token)

    def drain(self, timeout=30.0):
        """Wait until the gateway's settlement queue is idle; returns its stats."""
        return drain("http://127.0.0.1:%d" % self.PORTS.admin, self.token, timeout)
