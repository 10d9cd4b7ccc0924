"""n choices through the whole stack (issue 10): each choice sampled on its own, the
usage the client sees summed (the prompt once, completion tokens over the choices),
and that usage is what lands in the usage row and its cost; the balance hold is
charged for n times max_tokens.  A "max_tokens": null (no cap) gets the gateway's
default_max_tokens written in its place, whatever the length of that number, plain and
streamed, with stream_options before or after it.

Runs against the test stack (scripts/stack.sh test-up), plus one gateway instance
(the stack's public port + 90) with a longer default_max_tokens."""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gwinstances import Instances, https  # noqa: E402
from tgskip import main  # noqa: E402
from tgstack import E, MODEL, WAIT, ctl, q, wait_for  # noqa: E402

PORT = int(E["TG_TEST_GATEWAY"].rsplit(":", 1)[1])
RUN = "%x" % int(time.time() * 1000)


def customer_key(name, usd):
    name = "%s-%s" % (name, RUN)
    ctl("customer", "create", name, "--credit-usd", usd)
    return ctl("key", "create", "--customer", name).strip().splitlines()[-1]


def usage_row(rid):
    return wait_for(lambda: (q("SELECT prompt_tokens, prompt_cache_hit_tokens, prompt_cache_miss_tokens, "
                               "completion_tokens, price_input_cache_miss, price_input_cache_hit, price_output, "
                               "cost_pico, http_status FROM usage WHERE request_id = %s", rid) or [None])[0],
                    "the usage row of " + rid)


def body(n, **extra):
    b = {"model": MODEL, "messages": [{"role": "user", "content": "choices please"}], "max_tokens": 5,
         "temperature": 1, "seed": 5, "n": n}
    b.update(extra)
    return b


class Choices(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = customer_key("choices", "5.00")

    def check_row(self, rid, usage):
        p, hit, miss, comp, pmiss, phit, pout, cost, status = usage_row(rid)
        self.assertEqual(status, 200)
        self.assertEqual((p, hit, miss, comp), (usage["prompt_tokens"], usage["prompt_cache_hit_tokens"],
                                                usage["prompt_cache_miss_tokens"], usage["completion_tokens"]))
        # n tokens at p micro-USD per 1M tokens cost exactly n*p pico-USD
        self.assertEqual(int(cost), miss * int(pmiss) + hit * int(phit) + comp * int(pout))

    def test_plain_usage_summed_and_billed(self):
        st, h, data = https(PORT, "POST", "/v1/chat/completions", self.key, body(3), timeout=WAIT)
        self.assertEqual(st, 200, data)
        r = json.loads(data)
        self.assertEqual([c["index"] for c in r["choices"]], [0, 1, 2])
        st1, _, d1 = https(PORT, "POST", "/v1/chat/completions", self.key, body(1), timeout=WAIT)
        one = json.loads(d1)
        self.assertEqual(r["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"], "the prompt counts once")
        self.assertEqual(r["usage"]["completion_tokens"], 15, "5 tokens in each of 3 choices")
        self.check_row(h["x-request-id"], r["usage"])

    def test_stream_usage_summed_and_billed(self):
        st, h, data = https(PORT, "POST", "/v1/chat/completions", self.key,
                            body(2, stream=True, stream_options={"include_usage": True}), timeout=WAIT)
        self.assertEqual(st, 200, data)
        events = [json.loads(ln[6:]) for ln in data.decode().splitlines() if ln.startswith("data: {")]
        idx = {c["index"] for e in events for c in e["choices"]}
        self.assertEqual(idx, {0, 1})
        usage = [e["usage"] for e in events if e.get("usage")][-1]
        self.assertEqual(usage["completion_tokens"], 10)
        self.check_row(h["x-request-id"], usage)

    def test_hold_is_for_n_times_max_tokens(self):
        key = customer_key("choices-poor", "0.01")
        st, _, data = https(PORT, "POST", "/v1/chat/completions", key, body(16, max_tokens=700), timeout=WAIT)
        self.assertEqual(st, 402, data[:300])
        self.assertIn("up to 11200 completion tokens", json.loads(data)["error"]["message"])
        # n = 1 with the same max_tokens fits (stopped early: the demo model writes these often)
        one = body(1, max_tokens=700, stop=[" ", "e", "a", "\u7684"])
        st, _, data = https(PORT, "POST", "/v1/chat/completions", key, one, timeout=WAIT)
        self.assertNotEqual(st, 402, data[:300])


SOON = [" ", "e", "a", "\u7684"]  # the demo model writes one of these within a few tokens


class DefaultCap(unittest.TestCase):
    def test_null_max_tokens_gets_the_default_in_place(self):
        key = customer_key("cap-null", "1.00")
        for cap in (7, 12345):  # shorter and longer than "null": the text shrinks and grows
            gw = Instances("cap-instance", [PORT + 90], default_max_tokens=cap).start()
            try:
                bodies = [body(2, max_tokens=None, stop=SOON),
                          body(2, max_tokens=None, stop=SOON, stream=True),
                          dict(body(1, stream=True, stream_options={"include_usage": False}, stop=SOON),
                               max_tokens=None),
                          dict({"stream_options": None}, **body(1, max_tokens=None, stream=True, stop=SOON))]
                for b in bodies:
                    st, _, data = https(PORT + 90, "POST", "/v1/chat/completions", key, b, timeout=WAIT)
                    self.assertEqual(st, 200, (cap, b, data[:300]))
                    if b.get("stream"):
                        self.assertTrue(data.rstrip().endswith(b"data: [DONE]"), data[-200:])
                    else:
                        r = json.loads(data)
                        self.assertLessEqual(r["usage"]["completion_tokens"], 2 * cap)
            finally:
                gw.stop()


if __name__ == "__main__":
    main()
