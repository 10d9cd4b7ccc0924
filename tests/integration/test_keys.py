"""API keys as customers and operators use them: names, expiry, rotation with
a grace period, model scopes, last use.

Runs against the test stack (scripts/stack.sh test-up: real PostgreSQL, Redis,
engine worker, TLS gateway and its admin API) and starts two more gateway
instances of its own on the same PostgreSQL, Redis and worker, so that every
check that matters is made on two instances: what the admin API changes must
hold on both.  Keys are made with build/tollgatectl, as an operator would.
"""

import http.client
import json
import os
import ssl
import sys
import time
import unittest
import urllib.parse
import uuid

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwinstances import Instances  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import ctl_run as ctl  # noqa: E402

E = os.environ
BIN = E["TG_TEST_BIN"]
CTL = os.path.join(BIN, "tollgatectl")
MODEL = E["TG_TEST_MODEL"]
STACK_GW = urllib.parse.urlparse(E["TG_TEST_GATEWAY"])
# The two instances this test starts: the stack's public port + 30 and + 31.
PORTS = (STACK_GW.port + 30, STACK_GW.port + 31)
FLUSH_MS = 1000  # key_last_used_flush_ms of the two instances


def ctl_json(*args):
    return json.loads(ctl("--json", *args).stdout)


def call(port, method, path, key, body=None):
    """One HTTPS request to a gateway instance -> (status, parsed JSON body)."""
    ctx = ssl.create_default_context(cafile=E["TG_TEST_CERT"])
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    h = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def models(port, key):
    return call(port, "GET", "/v1/models", key)


def chat(port, key, model=MODEL):
    return call(port, "POST", "/v1/chat/completions", key,
                {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})


def invalidations(port):
    """The instance's count of key-change notices (LISTEN/NOTIFY) received."""
    return int(Keys.gw.metrics(PORTS.index(port))["tollgate_key_invalidations_total"])


def after_notice(before, what):
    """Wait until every instance has received a key-change notice since `before`."""
    deadline = time.time() + 60
    while not all(invalidations(p) > n for p, n in zip(PORTS, before)):
        if time.time() > deadline:
            raise AssertionError("no key-change notice reached every instance after " + what)
        time.sleep(0.02)


def admin_patch(key_id, body):
    """PATCH /admin/v1/keys/{id} as the operator -> (status, parsed JSON body)."""
    a = urllib.parse.urlparse(E["TG_TEST_ADMIN"])
    c = http.client.HTTPConnection(a.hostname, a.port, timeout=60)
    c.request("PATCH", "/admin/v1/keys/%d" % key_id, body=json.dumps(body),
              headers={"Authorization": "Bearer " + E["TG_TEST_ADMIN_TOKEN"], "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def code(body):
    return body.get("error", {}).get("code")


def db():
    c = psycopg2.connect(E["TG_TEST_PG"])
    c.autocommit = True
    return c


def pg_now(cur):
    cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
    return cur.fetchone()[0]


def sleep_until_db_time(cur, t):
    """Sleep until PostgreSQL's clock (the one admission compares with) is past t."""
    while True:
        left = t - pg_now(cur)
        if left <= 0:
            return
        time.sleep(min(left + 0.01, 1.0))


def new_customer():
    name = "keys-" + uuid.uuid4().hex[:10]
    ctl("customer", "create", name, "--credit-usd", "5")
    return name


def key_row(cust, key_id):
    for k in ctl_json("key", "list", "--customer", cust)["data"]:
        if k["id"] == key_id:
            return k
    raise AssertionError("key %s not in key list of %s" % (key_id, cust))


class Keys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Instances("keys-instances", list(PORTS), key_last_used_flush_ms=FLUSH_MS).start()
        cls.conn = db()
        cls.cur = cls.conn.cursor()

    @classmethod
    def tearDownClass(cls):
        cls.conn.close()
        cls.gw.stop()

    def test_create_shows_name_scope_expiry_and_state(self):
        cust = new_customer()
        r = ctl("key", "create", "--customer", cust, "--name", "ci bot", "--models", MODEL,
                "--expires-in", "30d", "--rpm", "7", "--tpm", "900", "--concurrency", "3")
        key = r.stdout.strip().splitlines()[-1]
        self.assertRegex(key, r"^sk-tg1-[0-9A-Za-z]{46}$")
        rows = ctl_json("key", "list", "--customer", cust)["data"]
        self.assertEqual(len(rows), 1)
        k = rows[0]
        self.assertEqual((k["name"], k["models"], k["rpm"], k["tpm"], k["concurrency"], k["state"]),
                         ("ci bot", [MODEL], 7, 900, 3, "active"))
        self.assertEqual(key[:15], k["prefix"])
        self.cur.execute("SELECT expires_at - created_at FROM api_keys WHERE id = %s", (k["id"],))
        self.assertEqual(self.cur.fetchone()[0].total_seconds(), 30 * 86400)
        self.assertIsNone(k["last_used_at"])
        # text listing: name, state, scope and limits on the key's line
        line = [l for l in ctl("key", "list", "--customer", cust).stdout.splitlines() if k["prefix"] in l][0]
        for word in ("ci bot", "active", MODEL, " 7 ", " 900 "):
            self.assertIn(word, line)
        # the create was audited, without the key's hash
        self.cur.execute("SELECT action, after FROM admin_audit WHERE target = %s", ("key:%d" % k["id"],))
        audit = self.cur.fetchall()
        self.assertEqual([a[0] for a in audit], ["key.create"])
        self.assertNotIn("key_hash", audit[0][1])
        self.assertEqual(audit[0][1]["name"], "ci bot")
        # a bad duration or an expiry in the past is refused, and no key is made
        self.assertEqual(ctl("key", "create", "--customer", cust, "--expires-in", "5x", check=False).returncode, 2)
        bad = ctl("key", "create", "--customer", cust, "--expires-at", "2020-01-01T00:00:00Z", check=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("not in the future", bad.stderr)
        self.assertEqual(len(ctl_json("key", "list", "--customer", cust)["data"]), 1)

    def test_json_create_and_rotate_print_one_document(self):
        """--json: the output is one JSON document, the key inside it (not the JSON and then the
        bare key), for create and rotate; and the key it holds is the one that works."""
        cust = new_customer()
        made = json.loads(ctl("--json", "key", "create", "--customer", cust, "--name", "j").stdout)
        self.assertRegex(made["key"], r"^sk-tg1-[0-9A-Za-z]{46}$")
        self.assertEqual(made["prefix"], made["key"][:15])
        self.assertEqual(models(PORTS[0], made["key"])[0], 200)
        rot = json.loads(ctl("--json", "key", "rotate", str(made["id"]), "--grace", "1h").stdout)
        self.assertRegex(rot["key"], r"^sk-tg1-[0-9A-Za-z]{46}$")
        self.assertNotEqual(rot["key"], made["key"])
        self.assertEqual(models(PORTS[0], rot["key"])[0], 200)
        # without --json: the key alone on the last line, as before
        plain = ctl("key", "create", "--customer", cust).stdout.strip().splitlines()
        self.assertRegex(plain[-1], r"^sk-tg1-[0-9A-Za-z]{46}$")

    def test_expired_key_refused_on_every_instance_within_1s(self):
        cust = new_customer()
        key = ctl("key", "create", "--customer", cust, "--expires-in", "4").stdout.strip().splitlines()[-1]
        k = ctl_json("key", "list", "--customer", cust)["data"][0]
        self.assertEqual(k["state"], "expiring")
        for port in PORTS:
            self.assertEqual(models(port, key)[0], 200)
        self.cur.execute("SELECT extract(epoch FROM expires_at)::float8 FROM api_keys WHERE id = %s", (k["id"],))
        expires = self.cur.fetchone()[0]
        sleep_until_db_time(self.cur, expires + 1.0)
        for port in PORTS:
            st, body = models(port, key)
            self.assertEqual((st, code(body)), (401, "api_key_expired"), body)
            self.assertEqual(body["error"]["type"], "invalid_request_error")
            st, body = chat(port, key)
            self.assertEqual((st, code(body)), (401, "api_key_expired"), body)
        self.assertEqual(key_row(cust, k["id"])["state"], "expired")
        # an expired key stays expired: no update brings it back
        for args in (("--no-expiry",), ("--expires-in", "1h")):
            r = ctl("key", "update", str(k["id"]), *args, check=False)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("stays expired", r.stderr)
        st, body = admin_patch(k["id"], {"expires_at": None})
        self.assertEqual((st, body["error"]["code"]), (409, "conflict"), body)
        self.assertEqual(key_row(cust, k["id"])["state"], "expired")
        for port in PORTS:
            self.assertEqual(models(port, key)[0], 401)
        # refused before anything was billed
        self.cur.execute("SELECT count(*) FROM usage WHERE key_id = %s", (k["id"],))
        self.assertEqual(self.cur.fetchone()[0], 0)

    def test_revocation_reaches_every_instance(self):
        cust = new_customer()
        r = ctl("key", "create", "--customer", cust)
        key = r.stdout.strip().splitlines()[-1]
        kid = ctl_json("key", "list", "--customer", cust)["data"][0]["id"]
        for port in PORTS:
            self.assertEqual(models(port, key)[0], 200)
        # the key is cached on both instances now; the revocation is pushed to them
        before = [invalidations(p) for p in PORTS]
        ctl("key", "revoke", str(kid))
        t0 = time.time()
        refused = set()
        while len(refused) < len(PORTS) and time.time() - t0 < 10:
            for port in PORTS:
                st, body = models(port, key)
                if st == 401:
                    self.assertEqual(code(body), "invalid_api_key", body)
                    refused.add(port)
        self.assertEqual(refused, set(PORTS), "still admitted 10 s after the revocation")
        self.assertTrue(all(invalidations(p) > n for p, n in zip(PORTS, before)), "refused without a notice")
        # within 1 s: measured by the gateways' own clocks, from the revocation's commit (revoked_at,
        # PostgreSQL's clock on this host) to the time every event loop of each instance had the
        # notice (tollgate_key_invalidation_last_ms), not by this test's polling, whose TLS
        # handshakes on a loaded host took longer than the notice itself
        self.cur.execute("SELECT extract(epoch FROM revoked_at)::float8 FROM api_keys WHERE id = %s", (kid,))
        revoked = self.cur.fetchone()[0]
        for i, port in enumerate(PORTS):
            noticed = Keys.gw.metrics(i)["tollgate_key_invalidation_last_ms"] / 1000.0
            self.assertGreater(noticed, revoked - 0.05, "instance %d: its latest notice predates the revocation"
                               % port)
            self.assertLess(noticed - revoked, 1.0, "instance %d had the revocation %.3f s after it was made"
                            % (port, noticed - revoked))
        self.assertEqual(key_row(cust, kid)["state"], "revoked")
        # a revoked key cannot be rotated or updated
        self.assertEqual(ctl("key", "rotate", str(kid), check=False).returncode, 1)
        self.assertEqual(ctl("key", "update", str(kid), "--name", "x", check=False).returncode, 1)

    def test_rotation_grace_period(self):
        cust = new_customer()
        old = ctl("key", "create", "--customer", cust, "--name", "prod", "--models", MODEL, "--rpm", "50",
                  "--tpm", "5000", "--concurrency", "4").stdout.strip().splitlines()[-1]
        old_id = ctl_json("key", "list", "--customer", cust)["data"][0]["id"]
        r = ctl("key", "rotate", str(old_id), "--grace", "5s")
        new = r.stdout.strip().splitlines()[-1]
        self.assertRegex(new, r"^sk-tg1-[0-9A-Za-z]{46}$")
        self.assertNotEqual(new, old)
        rows = {k["id"]: k for k in ctl_json("key", "list", "--customer", cust)["data"]}
        self.assertEqual(len(rows), 2)
        o = rows[old_id]
        n = [k for k in rows.values() if k["id"] != old_id][0]
        self.assertEqual(o["state"], "expiring")
        self.assertEqual(o["replaced_by"], n["id"])
        self.assertEqual(n["rotated_from"], old_id)
        self.assertEqual(n["state"], "active")
        for f in ("name", "models", "rpm", "tpm", "concurrency"):
            self.assertEqual(n[f], o[f], f)
        self.assertEqual(n["prefix"], new[:15])
        # during the grace period both keys work, on both instances
        for port in PORTS:
            self.assertEqual(chat(port, old)[0], 200)
            self.assertEqual(chat(port, new)[0], 200)
        # the old key cannot be rotated a second time
        again = ctl("key", "rotate", str(old_id), check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already rotated", again.stderr)
        # nor can its grace period be extended, or the old key kept forever
        for args in (("--no-expiry",), ("--expires-in", "1h")):
            r = ctl("key", "update", str(old_id), *args, check=False)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("can be shortened, not extended", r.stderr)
        self.assertEqual(key_row(cust, old_id)["state"], "expiring")
        self.cur.execute("SELECT extract(epoch FROM expires_at)::float8 FROM api_keys WHERE id = %s", (old_id,))
        sleep_until_db_time(self.cur, self.cur.fetchone()[0] + 1.0)
        for port in PORTS:
            st, body = chat(port, old)
            self.assertEqual((st, code(body)), (401, "api_key_expired"), body)
            self.assertEqual(chat(port, new)[0], 200)
        self.assertEqual(key_row(cust, old_id)["state"], "expired")
        self.assertEqual(key_row(cust, n["id"])["state"], "active")
        st, body = admin_patch(old_id, {"expires_at": None})
        self.assertEqual((st, body["error"]["code"]), (409, "conflict"), body)
        self.assertEqual(chat(PORTS[0], old)[0], 401)
        self.cur.execute("SELECT action FROM admin_audit WHERE target = %s ORDER BY id", ("key:%d" % old_id,))
        self.assertEqual([a[0] for a in self.cur.fetchall()], ["key.create", "key.rotate"])

    def test_scope(self):
        cust = new_customer()
        other = ctl("key", "create", "--customer", cust, "--models", "some-other-model")
        other = other.stdout.strip().splitlines()[-1]
        mine = ctl("key", "create", "--customer", cust, "--models", MODEL).stdout.strip().splitlines()[-1]
        for port in PORTS:
            st, body = chat(port, other)
            self.assertEqual((st, code(body)), (403, "model_not_allowed"), body)
            self.assertEqual(body["error"]["param"], "model")
            st, body = models(port, other)
            self.assertEqual((st, body["data"]), (200, []))
            st, body = call(port, "GET", "/v1/models/" + MODEL, other)
            self.assertEqual((st, code(body)), (403, "model_not_allowed"), body)
            st, body = models(port, mine)
            self.assertEqual([m["id"] for m in body["data"]], [MODEL])
            self.assertEqual(chat(port, mine)[0], 200)
        # nothing billed for the refused requests
        self.cur.execute("SELECT count(*) FROM usage u JOIN api_keys k ON k.id = u.key_id"
                         " WHERE k.key_hash IS NOT NULL AND k.models = ARRAY['some-other-model']"
                         " AND k.customer_id = (SELECT id FROM customers WHERE name = %s)", (cust,))
        self.assertEqual(self.cur.fetchone()[0], 0)
        # widening the scope counts on both instances at once
        oid = [k for k in ctl_json("key", "list", "--customer", cust)["data"] if k["models"] != [MODEL]][0]["id"]
        before = [invalidations(p) for p in PORTS]
        ctl("key", "update", str(oid), "--models", "all", "--name", "widened")
        self.assertEqual(key_row(cust, oid)["models"], None)
        after_notice(before, "the scope change")
        for port in PORTS:
            self.assertEqual(chat(port, other)[0], 200)
            self.assertEqual([m["id"] for m in models(port, other)[1]["data"]], [MODEL])
        self.cur.execute("SELECT before->'models', after->'models', after->>'name' FROM admin_audit"
                         " WHERE target = %s AND action = 'key.update'", ("key:%d" % oid,))
        self.assertEqual(self.cur.fetchall(), [(["some-other-model"], None, "widened")])

    def test_last_used_written_in_batches(self):
        cust = new_customer()
        key = ctl("key", "create", "--customer", cust).stdout.strip().splitlines()[-1]
        kid = ctl_json("key", "list", "--customer", cust)["data"][0]["id"]
        # count every write of last_used_at to this key, in the database itself
        tag = uuid.uuid4().hex[:8]
        self.cur.execute("CREATE TABLE IF NOT EXISTS test_key_touch (key_id bigint, at timestamptz)")
        self.cur.execute("""CREATE OR REPLACE FUNCTION test_key_touch_%s() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO test_key_touch VALUES (NEW.id, clock_timestamp()); RETURN NULL; END $$""" % tag)
        self.cur.execute("CREATE TRIGGER test_key_touch_%s AFTER UPDATE OF last_used_at ON api_keys"
                         " FOR EACH ROW WHEN (NEW.id = %d) EXECUTE FUNCTION test_key_touch_%s()" % (tag, kid, tag))
        try:
            def writes():
                self.cur.execute("SELECT count(*) FROM test_key_touch WHERE key_id = %s", (kid,))
                return self.cur.fetchone()[0]

            def wait_used(after):
                deadline = time.time() + 60
                while time.time() < deadline:
                    k = key_row(cust, kid)
                    if k["last_used_at"] and (after is None or k["last_used_at"] > after):
                        return k
                    time.sleep(0.2)
                raise AssertionError("last_used_at did not move past %s" % after)

            self.assertEqual(models(PORTS[0], key)[0], 200)
            k1 = wait_used(None)
            self.assertEqual(k1["last_used_ip"], "127.0.0.1")
            w1 = writes()
            self.assertEqual(w1, 1)
            # many requests: the writes follow the flush interval, not the requests
            n = 200
            t0 = time.time()
            for _ in range(n):
                self.assertEqual(models(PORTS[0], key)[0], 200)
            elapsed = time.time() - t0
            k2 = wait_used(k1["last_used_at"])
            w2 = writes() - w1
            self.assertGreaterEqual(w2, 1)
            # each event loop flushes its own batch: at most one write per loop and interval begun,
            # and the last one wait_used waited for
            loops = int(Keys.gw.metrics(0).get("tollgate_event_loops", 1))
            self.assertLessEqual(w2, loops * (int(elapsed * 1000 / FLUSH_MS) + 1) + 1,
                                 "%d writes for %d requests in %.1f s on %d loops" % (w2, n, elapsed, loops))
            self.assertLess(w2, n / 4)
            self.assertEqual(k2["last_used_ip"], "127.0.0.1")
        finally:
            self.cur.execute("DROP TRIGGER test_key_touch_%s ON api_keys" % tag)
            self.cur.execute("DROP FUNCTION test_key_touch_%s()" % tag)


if __name__ == "__main__":
    main()
