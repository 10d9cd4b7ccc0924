"""Every core (issue 8): one gateway with `loops: 2` serves the public port from
two event loops (SO_REUSEPORT), each with its own billing (PostgreSQL pool,
key cache, credit-lease holder, settler and spool subdirectory) and Redis
limiter.  Checked here: both loops answer (their per-loop counters in
/metrics), every request is settled exactly once and billed exactly, the
credit leases of both holders are given back, the settlement queue the admin
API reports is the sum of both loops', and each loop has its own spool
subdirectory, locked.

Runs against the test stack (scripts/stack.sh test-up) plus one gateway
instance this test starts on the same PostgreSQL, Redis and worker."""

import json
import os
import re
import subprocess
import sys
import threading
import unittest
import uuid


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwinstances import Instances, https  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import ctl, q  # noqa: E402

E = os.environ
MODEL = E["TG_TEST_MODEL"]
BASE = int(E["TG_TEST_GATEWAY"].rsplit(":", 1)[1])
PRICE_MISS, PRICE_OUT = 270000, 1100000  # stack.sh's demo prices, pico-USD per token
N = 48


class Loops(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Instances("loops-instance", [BASE + 66], loops=2, lease_idle_ms=300).start()

    @classmethod
    def tearDownClass(cls):
        cls.gw.stop()

    def per_loop(self, name):
        body = self.gw.admin(0, "/metrics").decode()
        return {int(m.group(1)): float(m.group(2))
                for m in re.finditer(r'^%s\{loop="(\d+)"\} (\S+)$' % name, body, re.M)}

    def test_both_loops_serve_and_bill_exactly(self):
        self.assertEqual(self.gw.metrics(0)["tollgate_event_loops"], 2)
        cust = "loops-" + uuid.uuid4().hex[:8]
        ctl("customer", "create", cust, "--credit-usd", "5")
        key = ctl("key", "create", "--customer", cust).strip().splitlines()[-1]
        results = [None] * N

        def one(i):  # each request on a connection of its own: the kernel picks its loop
            try:
                st, h, b = https(self.gw.ports[0], "POST", "/v1/chat/completions", key,
                                 {"model": MODEL, "messages": [{"role": "user", "content": "Hello %d" % i}],
                                  "max_tokens": 2})
                results[i] = (st, h.get("x-request-id"), json.loads(b).get("usage"))
            except Exception as e:  # recorded, asserted below
                results[i] = ("exception", repr(e), None)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertTrue(all(r is not None and r[0] == 200 for r in results), results)
        conns = self.per_loop("tollgate_loop_connections_total")
        reqs = self.per_loop("tollgate_loop_requests_total")
        self.assertEqual(sorted(conns), [0, 1], conns)
        self.assertGreater(conns[0], 0, conns)
        self.assertGreater(conns[1], 0, conns)
        self.assertGreater(reqs[0], 0, reqs)
        self.assertGreater(reqs[1], 0, reqs)
        # the admin API's settlement queue is both loops' together: idle means all committed
        self.gw.settled()
        ids = sorted(r[1] for r in results)
        self.assertEqual(len(set(ids)), N, "request ids unique across loops")
        (cid, bal), = q("SELECT id, balance_pico FROM customers WHERE name = %s", cust)
        rows = q("SELECT request_id::text, prompt_tokens, completion_tokens, cost_pico FROM usage"
                 " WHERE customer_id = %s ORDER BY request_id", cid)
        self.assertEqual([r[0] for r in rows], ids, "one usage row per request, none twice")
        want = 0
        by_id = {r[1]: r[2] for r in results}
        for rid, prompt, completion, cost in rows:
            u = by_id[rid]
            self.assertEqual((prompt, completion), (u["prompt_tokens"], u["completion_tokens"]))
            self.assertEqual(cost, prompt * PRICE_MISS + completion * PRICE_OUT)
            want += cost
        self.assertEqual(int(bal), 5 * 10 ** 12 - want, "balance = credit - sum of costs")
        (debits,), = q("SELECT -coalesce(sum(amount_pico), 0) FROM ledger WHERE customer_id = %s AND kind = 'usage'",
                       cid)
        self.assertEqual(int(debits), want)
        m = self.gw.metrics(0)
        self.assertEqual(m["tollgate_open_holds"], 0)
        # both holders give their leases back once idle
        import time
        deadline = time.time() + 60
        while q("SELECT count(*) FROM credit_leases WHERE customer_id = %s", cid)[0][0]:
            self.assertLess(time.time(), deadline, "credit leases not given back")
            time.sleep(0.1)

    def test_spool_subdirectory_per_loop_locked(self):
        spool = os.path.join(self.gw.dir, "spool0")
        for i in range(2):
            self.assertTrue(os.path.isfile(os.path.join(spool, "loop%d" % i, "gateway.lock")), i)
        self.assertTrue(os.path.isfile(os.path.join(spool, "gateway.lock")))
        # a second gateway on the same spool directory is refused (the directory's lock)
        cfg = os.path.join(self.gw.dir, "gw0.json")
        p = subprocess.run([os.path.join(E["TG_TEST_BIN"], "tollgate"), "--config", cfg,
                            "--listen", "127.0.0.1:%d" % (BASE + 67), "--admin-listen", ""],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("spool directory %s is in use by another gateway (pid %d" % (spool, self.gw.procs[0].pid),
                      p.stderr)


if __name__ == "__main__":
    main(verbosity=2)
