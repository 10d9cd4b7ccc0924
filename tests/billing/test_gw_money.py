"""The money as the real gateway (build/tollgate) shows it: signed usage receipts (header, the final
usage chunk of a stream, the stream's trailer) that `tollgatectl receipt verify` accepts and matches
with their usage rows while a tampered one fails; refusals (402, 429) counted into the hourly rollups;
the settlement metrics on /metrics; and one gateway per spool directory.

A private stack on ports 18780-18786: PostgreSQL (tests/billing/pg.sh), Redis, the scripted fake
worker (tests/gateway/fake_worker.py) and the gateway (a second one tries 18785/18786).  Nothing is
counted before the settlement queue is idle (GET /admin/v1/settlement)."""
import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import tggateway  # noqa: E402
from tggateway import GATEWAY, MODEL  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import wait_for  # noqa: E402

P_PG, P_REDIS, P_WORKER, P_GW, P_ADMIN, P_GW2, P_ADMIN2 = 18780, 18781, 18782, 18783, 18784, 18785, 18786


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class GatewayMoney(tggateway.GatewayCase):
    NAME = "gwmoney"
    PORTS = tggateway.Ports(pg=P_PG, redis=P_REDIS, worker=P_WORKER, gw=P_GW, admin=P_ADMIN)
    CONFIG = {"upstream_timeout_ms": 5000}
    RECEIPT_KEY = True

    @classmethod
    def set_up_stack(cls):
        cls.set_price()
        cls.key = cls.customer_key("gwmoney", "10")

    def chat(self, content, stream=False, include_usage=False, key=None):
        """(status, headers, body): a stream's body is its events' data lines."""
        c = http.client.HTTPSConnection("127.0.0.1", P_GW, context=self.tls, timeout=15)
        body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": content}]}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        c.request("POST", "/v1/chat/completions", json.dumps(body),
                  {"Authorization": "Bearer " + (key or self.key), "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        if stream and r.status == 200:
            data = [json.loads(l[6:]) if l != b"data: [DONE]" else "[DONE]"
                    for l in data.split(b"\n") if l.startswith(b"data: ")]
        else:
            data = json.loads(data)
        return r.status, r, data

    def raw_stream(self, content):
        """A stream read as raw bytes (http.client drops trailers)."""
        s = self.tls.wrap_socket(socket.create_connection(("127.0.0.1", P_GW), timeout=15), server_hostname="localhost")
        body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": content}]})
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                   % (self.key, len(body), body)).encode())
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        s.close()
        return out

    def verify(self, receipt, *extra):
        return self.ctl("receipt", "verify", receipt, "--pubkey", self.pub, *extra, check=False, raw=True)

    # ---- receipts ----

    def test_receipts(self):
        st, r, body = self.chat("receipt plain")
        self.assertEqual(st, 200, body)
        rc = r.getheader("x-tollgate-receipt")
        self.assertTrue(rc and rc.startswith("tgr1."), rc)
        rid = r.getheader("x-request-id")
        payload = json.loads(b64d(rc.split(".")[1]))
        self.assertEqual(payload["request_id"], rid)
        self.assertEqual((payload["prompt_tokens"], payload["completion_tokens"]),
                         (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]))
        self.assertIsInstance(payload["cost_pico"], str)
        self.assertRegex(payload["price_version"], r"^p[1-9][0-9]*$")  # the base price row admission used
        # streams: in the final usage chunk (include_usage), and as the chunked trailer
        st, r, events = self.chat("receipt stream", stream=True, include_usage=True)
        self.assertEqual(st, 200)
        last = [e for e in events if e != "[DONE]"][-1]
        self.assertEqual(last["choices"], [])
        self.assertIn("usage", last)
        src = last["receipt"]
        self.assertEqual(json.loads(b64d(src.split(".")[1]))["request_id"], r.getheader("x-request-id"))
        raw = self.raw_stream("receipt trailer")
        m = re.search(rb"\r\n0\r\nx-tollgate-receipt: (tgr1\.[A-Za-z0-9_.-]+)\r\n\r\n$", raw)
        self.assertTrue(m, raw[-400:])
        trc = m.group(1).decode()
        self.assertNotIn(b'"receipt"', raw)  # no include_usage: no usage chunk to carry it
        # a worker error is billed (a usage row) and carries its receipt too
        st, r, body = self.chat("status:500")
        self.assertEqual(st, 500)
        erc = r.getheader("x-tollgate-receipt")
        self.assertEqual(json.loads(b64d(erc.split(".")[1]))["http_status"], 500)
        self.drain()
        for x in (rc, src, trc, erc):
            p = self.verify(x)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("signature: valid", p.stdout)
            self.assertIn("usage row: matches", p.stdout)
        j = json.loads(self.verify(rc, "--json").stdout)
        self.assertEqual((j["signature"], j["usage_row"]), ("valid", "matches"))
        row = self.q("SELECT cost_pico, prompt_cache_hit_tokens FROM usage WHERE request_id = %s", rid)[0]
        self.assertEqual((int(payload["cost_pico"]), payload["prompt_cache_hit_tokens"]), row)
        # tampered: one more completion token in the payload, the signature kept
        p2 = dict(payload, completion_tokens=payload["completion_tokens"] + 1)
        forged = "tgr1.%s.%s" % (b64e(json.dumps(p2, separators=(",", ":")).encode()), rc.split(".")[2])
        p = self.verify(forged)
        self.assertEqual(p.returncode, 1)
        self.assertIn("INVALID", p.stderr)
        sig = bytearray(b64d(rc.split(".")[2]))
        sig[5] ^= 1
        p = self.verify("tgr1.%s.%s" % (rc.split(".")[1], b64e(bytes(sig))))
        self.assertEqual(p.returncode, 1)
        self.assertIn("INVALID", p.stderr)
        # another operator's key
        _, other_pub = self.ed25519_key("other")
        p = self.ctl("receipt", "verify", rc, "--pubkey", other_pub, "--offline", check=False, raw=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("INVALID", p.stderr)
        # a genuine receipt whose usage row says otherwise (the row is immutable in production; here a
        # second customer's row with the same id stands in): not simulated; a missing row fails
        p = self.verify(rc, "--offline")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("not checked", p.stdout)
        # the published key
        with urllib.request.urlopen("https://127.0.0.1:%d/v1/receipt-key" % P_GW, timeout=10, context=self.tls) as r:
            k = json.loads(r.read())
        with open(self.pub) as f:
            self.assertEqual(k["public_key_pem"].strip(), f.read().strip())
        self.assertEqual(k["kid"], payload["kid"])

    def test_receipt_that_differs_from_its_row_fails(self):
        """A receipt signed with the operator's key (here by openssl, as a key leak or a bug would)
        whose numbers differ from the usage row is refused: the signature alone is not enough."""
        st, r, body = self.chat("receipt to alter")
        rc = r.getheader("x-tollgate-receipt")
        self.drain()
        payload = json.loads(b64d(rc.split(".")[1]))
        for field, value in (("cost_pico", str(int(payload["cost_pico"]) + 1)),
                             ("completion_tokens", payload["completion_tokens"] + 1),
                             ("price_version", payload["price_version"] + ".o1"),
                             ("request_id", "01900000-0000-7000-8000-000000000000")):
            signing = "tgr1." + b64e(json.dumps(dict(payload, **{field: value}), separators=(",", ":")).encode())
            msg = os.path.join(self.dir, "msg")
            with open(msg, "w") as f:
                f.write(signing)
            sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", self.receipt_key, "-in", msg],
                                 check=True, capture_output=True, timeout=30).stdout
            p = self.verify(signing + "." + b64e(sig))
            self.assertEqual(p.returncode, 1, (field, p.stdout, p.stderr))
            self.assertIn("signature: valid", p.stdout, (field, p.stdout, p.stderr))
            if field == "request_id":
                self.assertIn("no usage row", p.stderr)
            else:
                self.assertIn("usage row: DIFFERS: %s" % field, p.stdout)

    # ---- refusals and rollups ----

    def test_refusals_in_rollup(self):
        poor = self.customer_key("gwpoor", "0.000001")
        statuses = [self.chat("spend %d" % i, key=poor)[0] for i in range(4)]
        self.drain()
        n402 = statuses.count(402)  # the hold of the request's maximum cost is more than the credit
        self.assertGreater(n402, 0, statuses)
        self.assertEqual(n402 + statuses.count(200), 4, statuses)
        lim = self.customer_key("gwlimited", "1", "--rpm", "1")
        statuses2 = [self.chat("limit %d" % i, key=lim)[0] for i in range(3)]
        self.assertEqual(statuses2, [200, 429, 429])
        self.drain()
        sql = ("SELECT coalesce(sum(refused_402), 0), coalesce(sum(refused_429), 0), coalesce(sum(requests), 0)"
               " FROM usage_hourly h JOIN customers c ON c.id = h.customer_id WHERE c.name = %s")
        for name, want in (("gwpoor", (n402, 0, statuses.count(200))), ("gwlimited", (0, 2, 1))):
            wait_for(lambda: self.q(sql, name)[0] == want,
                     lambda: "%s's rollup to be %r, not %r" % (name, want, self.q(sql, name)[0]), 20)
        self.assertEqual(self.q("SELECT count(*) FROM usage_hourly_mismatch")[0][0], 0)
        j = json.loads(self.ctl("report", "usage", "--customer", "gwlimited", "--json"))
        self.assertEqual((j["totals"]["requests"], j["totals"]["refused_429"]), ("1", "2"))

    # ---- metrics ----

    def metrics(self):
        # operator endpoints are on the admin listener, not the public port
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % P_ADMIN, timeout=10) as r:
            return r.read().decode()

    def test_metrics(self):
        self.chat("metrics")
        self.drain()
        m = self.metrics()
        for name in ("tollgate_settle_queue_depth", "tollgate_journal_rows", "tollgate_journal_bytes",
                     "tollgate_spool_files", "tollgate_spool_rows", "tollgate_spool_bytes",
                     "tollgate_settle_rejected_total", "tollgate_usage_rows_inserted_total",
                     "tollgate_journal_write_failures_total", "tollgate_settle_memory_only_rows"):
            self.assertRegex(m, r"(?m)^%s \d+$" % name)
        self.assertRegex(m, r"(?m)^tollgate_settle_queue_depth 0$")
        self.assertRegex(m, r"(?m)^tollgate_settle_memory_only_rows 0$")
        self.assertRegex(m, r"(?m)^tollgate_postgres_up 1$")
        # the cost settled per model equals what this gateway inserted (the whole private database), exactly
        got = re.search(r'(?m)^tollgate_cost_settled_usd_total\{model="fake-model"\} (\d+\.\d{12})$', m)
        self.assertTrue(got, m)
        total = int(self.q("SELECT sum(cost_pico) FROM usage WHERE model = %s", MODEL)[0][0])
        self.assertEqual(got.group(1), "%d.%012d" % (total // 10**12, total % 10**12))
        inserted = int(re.search(r"(?m)^tollgate_usage_rows_inserted_total (\d+)$", m).group(1))
        self.assertEqual(inserted, self.q("SELECT count(*) FROM usage")[0][0])
        self.assertRegex(m, r"(?m)^tollgate_open_holds 0$")
        self.assertRegex(m, r"(?m)^tollgate_open_holds_pico 0$")

    def metric(self, name):
        got = re.search(r"(?m)^%s (-?\d+)$" % name, self.metrics())
        self.assertTrue(got, name)
        return int(got.group(1))

    def test_metrics_open_holds(self):
        """A request in flight holds its maximum cost: /metrics shows the hold (count and value),
        and both go back to 0 once it is settled."""
        done = []
        t = threading.Thread(target=lambda: done.append(self.chat("sleep:4")[0]))
        t.start()
        try:
            wait_for(lambda: self.metric("tollgate_open_holds") == 1, lambda: "an open hold: " + self.metrics(), 15)
            self.assertGreater(self.metric("tollgate_open_holds_pico"), 0)
        finally:
            t.join(30)
        self.assertEqual(done, [200])
        self.drain()
        wait_for(lambda: self.metric("tollgate_open_holds") == 0, lambda: "no open hold: " + self.metrics(), 15)
        self.assertEqual(self.metric("tollgate_open_holds_pico"), 0)

    # ---- one gateway per spool directory ----

    def test_second_gateway_same_spool_refuses(self):
        cfg = dict(self.cfg, listen="127.0.0.1:%d" % P_GW2, admin_listen="127.0.0.1:%d" % P_ADMIN2)
        path = os.path.join(self.dir, "second.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = subprocess.run([GATEWAY, "--config", path], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("spool directory %s is in use by another gateway (pid %d" % (self.spool, self.gw.pid), p.stderr)
        self.assertEqual(self.gw.poll(), None)  # the first one runs on
        # with its own spool directory the same configuration starts (and stops cleanly)
        cfg["spool_dir"] = os.path.join(self.dir, "spool2")
        with open(path, "w") as f:
            json.dump(cfg, f)
        g2 = self.launch(path, "gateway2.log", P_GW2)
        g2.terminate()
        self.assertEqual(g2.wait(timeout=20), 0)


if __name__ == "__main__":
    tggateway.require_gateway("test_gw_money")
    main()
