"""What the integration tests share about the running test stack
(`scripts/stack.sh test-up`, its environment in var/test/env): tollgatectl,
PostgreSQL, and waiting for something to become true."""

import os
import subprocess
import time

import psycopg2

E = os.environ
CTL = os.path.join(E["TG_TEST_BIN"], "tollgatectl")
MODEL = E["TG_TEST_MODEL"]
WAIT = float(E.get("TG_TEST_WAIT", "120"))


def ctl_run(*args, check=True, timeout=120):
    """tollgatectl args -> the finished process; a failure raises unless check=False."""
    r = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("tollgatectl %s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr))
    return r


def ctl(*args):
    """tollgatectl args -> its standard output; a failure raises."""
    return ctl_run(*args).stdout


def q(sql, *args):
    """One statement on the stack's database, committed -> its rows (None when it returns none)."""
    c = psycopg2.connect(E["TG_TEST_PG"], connect_timeout=10)
    try:
        with c, c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        c.close()


def wait_for(pred, what, timeout=None):
    """Poll pred until it returns something true (returned); raise after timeout (WAIT) seconds."""
    deadline = time.time() + (WAIT if timeout is None else timeout)
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)
