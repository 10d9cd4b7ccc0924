"""Extra gateway instances beside the test stack's, for the tests that must
hold on every instance (holds, revocation, limits).  Each instance gets the
stack's config (same PostgreSQL, Redis, workers, key secret, admin token) with
its own port, admin listener (port + ADMIN_OFFSET), spool directory and access log.

Ports: every port a test uses lies within BLOCK of the stack's public port, so
that stacks whose ports are BLOCK apart (one per worktree: 21443, 22443, ...) never
share one.  The admin listeners were at port + 1000 before: an instance of the stack
at 21443 took 22503 for its admin listener, the public port of the same instance of
the stack at 22443."""

import http.client
import json
import os
import shutil
import ssl
import subprocess
import time

E = os.environ
TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ADMIN_OFFSET = 100  # instances are at the stack's port + 30 .. + 91: admin listeners at + 130 .. + 191
BLOCK = 500


def own_port(port):
    """port, once checked to lie within BLOCK of the stack's public port."""
    base = int(E["TG_TEST_GATEWAY"].rsplit(":", 1)[1])
    if not base - BLOCK < port < base + BLOCK:
        raise AssertionError("port %d is outside this stack's block (%d +- %d): it may be another stack's"
                             % (port, base, BLOCK))
    return port


def https(port, method, path, key=None, body=None, timeout=120):
    """One HTTPS request -> (status, headers dict, body bytes)."""
    ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, data


class Instances:
    """start() n gateways on ports base..base+n-1; stop() checks their logs."""

    def __init__(self, name, ports, **overrides):
        self.dir = os.path.join(E["TG_TEST_DIR"], name)
        self.ports = ports
        self.overrides = overrides
        self.procs = []

    def start(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        with open(os.path.join(E["TG_TEST_DIR"], "tollgate.json")) as f:
            base = json.load(f)
        # the stack's gateway runs the engine (workers[].command): instances attach to it
        base["workers"] = [{k: v for k, v in w.items() if k not in ("command", "log")} for w in base["workers"]]
        for i, port in enumerate(self.ports):
            cfg = dict(base, listen="127.0.0.1:%d" % own_port(port),
                       admin_listen="127.0.0.1:%d" % own_port(port + ADMIN_OFFSET),
                       spool_dir=os.path.join(self.dir, "spool%d" % i),
                       access_log=os.path.join(self.dir, "access%d.log" % i))
            cfg.update(self.overrides)
            path = os.path.join(self.dir, "gw%d.json" % i)
            with open(path, "w") as f:
                json.dump(cfg, f)
            with open(os.path.join(self.dir, "gw%d.log" % i), "w") as log:
                self.procs.append(subprocess.Popen([os.path.join(E["TG_TEST_BIN"], "tollgate"), "--config", path],
                                                   cwd=TOP, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + 120
        for port, p in zip(self.ports, self.procs):
            while True:
                if p.poll() is not None:
                    raise AssertionError("gateway on %d exited (%s): see %s" % (port, p.returncode, self.dir))
                try:
                    if https(port, "GET", "/health", timeout=5)[0] == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise AssertionError("gateway on %d did not come up" % port)
                time.sleep(0.1)
        return self

    def admin(self, i, path):
        """GET path on instance i's admin listener -> body bytes."""
        import urllib.request
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.ports[i] + ADMIN_OFFSET, path),
                                     headers={"Authorization": "Bearer " + E["TG_TEST_ADMIN_TOKEN"]})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def settled(self):
        """Wait until every instance's settlement queue is idle: all it settled is committed."""
        deadline = time.time() + 120
        while not all(json.loads(self.admin(i, "/admin/v1/settlement"))["idle"] for i in range(len(self.ports))):
            if time.time() > deadline:
                raise AssertionError("an instance's settlement queue did not drain")
            time.sleep(0.05)

    def metrics(self, i):
        """The instance's /metrics as {name: value} (unlabelled series only); public port or admin."""
        st, _, body = https(self.ports[i], "GET", "/metrics")
        if st != 200:
            body = self.admin(i, "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                k, v = line.split()
                out[k] = float(v)
        return out

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for i in range(len(self.procs)):
            with open(os.path.join(self.dir, "gw%d.log" % i)) as f:
                text = f.read()
            for bad in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
                if bad in text:
                    raise AssertionError("sanitizer report in %s/gw%d.log" % (self.dir, i))
