"""POST /v1/completions and /beta/completions (DeepSeek's FIM) through the whole stack: the
usage the client sees is what the model's tokenizer counts for the rendered prompt (BOS, the
FIM markers around prompt and suffix), that usage lands in the usage row with its exact cost
and debit, a stream the client cuts mid-way is still billed (the gateway's own prompt count and
a token per text chunk it forwarded), and a body the shared reader refuses is a 400 before
admission, never billed.

Runs against the test stack (scripts/stack.sh test-up)."""

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from tgskip import main  # noqa: E402
from tgstack import E, MODEL, WAIT, ctl, drain, q, wait_for  # noqa: E402

GW_HOST, GW_PORT = E["TG_TEST_GATEWAY"].rsplit("/", 1)[1].rsplit(":", 1)
RUN = "%x" % int(time.time() * 1000)
BOS, FIM_BEGIN, FIM_HOLE, FIM_END = "<｜begin▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def tls():
    return ssl.create_default_context(cafile=E["TG_TEST_CERT"])


def customer_key(name, usd):
    name = "%s-%s" % (name, RUN)
    ctl("customer", "create", name, "--credit-usd", usd)
    return name, ctl("key", "create", "--customer", name).strip().splitlines()[-1]


def balance(name):
    return int(json.loads(ctl("balance", "--customer", name, "--json"))["balance_pico"])


def post(key, path, body):
    import http.client
    c = http.client.HTTPSConnection(GW_HOST, int(GW_PORT), context=tls(), timeout=WAIT)
    try:
        c.request("POST", path, json.dumps(body), {"Authorization": "Bearer " + key,
                                                  "Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def tokens(text):
    p = subprocess.run([os.path.join(E["TG_TEST_BIN"], "tollgate-engine"), "tokenize", "--model",
                        E["TG_TEST_MODEL_DIR"]], input=json.dumps(text) + "\n", capture_output=True, text=True,
                       timeout=WAIT)
    assert p.returncode == 0, p.stderr
    return len(json.loads(p.stdout))


def usage_row(rid):
    return wait_for(lambda: (q("SELECT prompt_tokens, prompt_cache_hit_tokens, prompt_cache_miss_tokens, "
                               "completion_tokens, price_input_cache_miss, price_input_cache_hit, price_output, "
                               "cost_pico, http_status, stream FROM usage WHERE request_id = %s", rid) or [None])[0],
                    "the usage row of " + rid)


def events(body):
    out = []
    for block in body.decode().split("\n\n"):
        d = [ln[6:] for ln in block.split("\n") if ln.startswith("data: ")]
        if d:
            out.append("\n".join(d))
    return out


def engine_metrics():
    with urllib.request.urlopen(E["TG_TEST_ENGINE"] + "/metrics", timeout=30) as r:
        return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in r.read().decode().splitlines()
                                         if ln and not ln.startswith("#"))}


class Completions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.name, cls.key = customer_key("cmpl", "2.50")

    def check_row(self, rid, usage, stream):
        p, hit, miss, comp, pmiss, phit, pout, cost, status, st = usage_row(rid)
        self.assertEqual((status, st), (200, stream))
        self.assertEqual((p, hit, miss, comp), (usage["prompt_tokens"], usage["prompt_cache_hit_tokens"],
                                                usage["prompt_cache_miss_tokens"], usage["completion_tokens"]))
        want = miss * int(pmiss) + hit * int(phit) + comp * int(pout)  # n tokens at p micro-USD/1M: n*p pico-USD
        self.assertEqual(int(cost), want)
        return want

    def test_usage_row_cost_and_debit_exact(self):
        before = balance(self.name)
        prompt = "def fibonacci(n):\n    "
        st, h, b = post(self.key, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 6,
                                                      "temperature": 0})
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        self.assertEqual((j["object"], j["id"]), ("text_completion", "cmpl-" + h["x-request-id"]))
        u = j["usage"]
        self.assertEqual(u["prompt_tokens"], tokens(BOS + prompt))
        self.assertEqual(u["completion_tokens"], 6)
        cost = self.check_row(h["x-request-id"], u, False)
        drain(E["TG_TEST_ADMIN"], E["TG_TEST_ADMIN_TOKEN"])
        self.assertEqual(q("SELECT count(*) FROM ledger WHERE request_id = %s", h["x-request-id"])[0][0], 1)
        self.assertEqual(before - balance(self.name), cost)

    def test_fim_stream_on_the_beta_path(self):
        prompt, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
        body = {"model": MODEL, "prompt": prompt, "suffix": suffix, "max_tokens": 7, "temperature": 0}
        st, h, b = post(self.key, "/beta/completions", body)
        self.assertEqual(st, 200, b)
        plain = json.loads(b)
        n = tokens(BOS + FIM_BEGIN + prompt + FIM_HOLE + suffix + FIM_END)
        self.assertEqual(plain["usage"]["prompt_tokens"], n)
        self.check_row(h["x-request-id"], plain["usage"], False)
        st, h, b = post(self.key, "/beta/completions", dict(body, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(st, 200, b)
        chunks = [json.loads(e) for e in events(b) if e != "[DONE]"]
        self.assertEqual(events(b)[-1], "[DONE]")
        self.assertEqual("".join(c["choices"][0]["text"] for c in chunks if c["choices"]), plain["choices"][0]["text"])
        u = chunks[-1]["usage"]
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual((u["prompt_tokens"], u["completion_tokens"]), (n, 7))
        self.assertGreater(u["prompt_cache_hit_tokens"], 0, "the same prompt again: its blocks are cached")
        self.check_row(h["x-request-id"], u, True)

    def test_stream_cut_mid_way_is_billed(self):
        prompt = "Hang up on this completion"
        before = engine_metrics()
        body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 5000, "stream": True,
                           "temperature": 0}).encode()
        s = tls().wrap_socket(socket.create_connection((GW_HOST, int(GW_PORT)), timeout=WAIT), server_hostname=GW_HOST)
        try:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (self.key.encode(), len(body), body))
            got = b""
            while got.count(b"data: ") < 4:
                d = s.recv(65536)
                self.assertTrue(d, "the stream ended before 4 events: " + got.decode(errors="replace"))
                got += d
            self.assertTrue(got.startswith(b"HTTP/1.1 200 "), got[:200])
            rid = [ln.split(b":", 1)[1].strip().decode() for ln in got.split(b"\r\n")
                   if ln.lower().startswith(b"x-request-id:")][0]
        finally:
            s.close()
        wait_for(lambda: engine_metrics()["tollgate_engine_requests_in_flight"] == 0, "the worker to cancel it")
        m = engine_metrics()
        self.assertEqual(m["tollgate_engine_requests_cancelled_total"],
                         before["tollgate_engine_requests_cancelled_total"] + 1)
        p, hit, miss, comp, pmiss, phit, pout, cost, status, st = usage_row(rid)
        # billed with the gateway's own count: the prompt as the model's tokenizer counts it (all
        # misses), and a completion token per text chunk it saw (at least the 4 the client read)
        self.assertEqual((p, hit, miss), (tokens(BOS + prompt), 0, tokens(BOS + prompt)))
        self.assertGreaterEqual(comp, 4)
        self.assertLess(comp, 5000)
        self.assertEqual(int(cost), miss * int(pmiss) + comp * int(pout))
        self.assertTrue(st)

    def test_refused_by_the_reader_before_admission(self):
        for body, param in (({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
                            ({"model": MODEL, "prompt": "a", "logprobs": 21}, "logprobs"),
                            ({"model": MODEL, "prompt": "a", "best_of": 3}, "best_of"),
                            ({"model": MODEL, "prompt": "a", "messages": []}, "messages")):
            st, h, b = post(self.key, "/v1/completions", body)
            self.assertEqual(st, 400, b)
            self.assertEqual(json.loads(b)["error"]["param"], param)
            drain(E["TG_TEST_ADMIN"], E["TG_TEST_ADMIN_TOKEN"])
            self.assertEqual(q("SELECT count(*) FROM usage WHERE request_id = %s", h["x-request-id"])[0][0], 0)


if __name__ == "__main__":
    main()
