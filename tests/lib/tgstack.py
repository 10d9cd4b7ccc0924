"""What the integration tests share about the running test stack
(`scripts/stack.sh test-up`, its environment in var/test/env): tollgatectl,
PostgreSQL, and waiting for something to become true.

The stack's names (CTL, MODEL, the default of ctl_run and q) are read from the
environment when first used, so that a test with a stack of its own
(tggateway.py, tests/billing's bill_server) uses the same ctl_run, query,
wait_for and drain without one."""

import json
import os
import subprocess
import time
import urllib.request

import psycopg2

E = os.environ
WAIT = float(E.get("TG_TEST_WAIT", "120"))


def stack_ctl():
    """The test stack's tollgatectl."""
    return os.path.join(E["TG_TEST_BIN"], "tollgatectl")


def __getattr__(name):
    """CTL and MODEL: the test stack's tollgatectl and model (KeyError without var/test/env)."""
    if name == "CTL":
        return stack_ctl()
    if name == "MODEL":
        return E["TG_TEST_MODEL"]
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def ctl_run(*args, check=True, timeout=120, ctl=None, env=None):
    """tollgatectl args -> the finished process; a failure raises unless check=False.
    ctl, env: another tollgatectl binary and environment than the test stack's."""
    r = subprocess.run([ctl or stack_ctl(), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError("tollgatectl %s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr))
    return r


def ctl(*args):
    """tollgatectl args -> its standard output; a failure raises."""
    return ctl_run(*args).stdout


def query(dsn, sql, *args, options=None):
    """One statement on the database dsn, committed -> its rows (None when it returns none).
    options: libpq's, e.g. "-c statement_timeout=60000"."""
    c = psycopg2.connect(dsn, connect_timeout=10, options=options)
    try:
        with c, c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        c.close()


def q(sql, *args):
    """One statement on the stack's database, committed -> its rows (None when it returns none)."""
    return query(E["TG_TEST_PG"], sql, *args)


def wait_for(pred, what, timeout=None, retry=()):
    """Poll pred until it returns something true (returned); raise AssertionError after timeout
    (WAIT) seconds.  what: a string, or a function called at the time-out for one (to show the
    state then).  retry: exception classes that count as "not yet" (say a server restarting)."""
    deadline = time.time() + (WAIT if timeout is None else timeout)
    while True:
        try:
            v = pred()
        except retry:
            v = None
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + (what() if callable(what) else what))
        time.sleep(0.1)


def settlement(admin, token):
    """The settlement queue of a gateway or bill_server (GET <admin>/admin/v1/settlement, admin
    its admin listener's URL) -> its stats, "idle" among them."""
    req = urllib.request.Request(admin.rstrip("/") + "/admin/v1/settlement", headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def drain(admin, token, timeout=30.0):
    """Wait until that settlement queue is idle (nothing queued, in flight or on disk waiting for a
    replay: whatever was settled has committed or been rejected) -> its stats; raise
    AssertionError when it is not idle after timeout seconds."""
    deadline = time.time() + timeout
    while True:
        j = settlement(admin, token)
        if j["idle"]:
            return j
        if time.time() > deadline:
            raise AssertionError("the settlement queue did not drain: %r" % j)
        time.sleep(0.05)
