#!/usr/bin/python3
"""Integration test of `tollgate-engine serve` on the demo model (python3 stdlib only).

Starts build/tollgate-engine serve on loopback ports 18720-18722 (generating the
demo model into var/test-engine-server/ when missing) and checks the OpenAI
protocol end to end: shapes, usage against the tokenizer CLI, streaming ==
non-streaming, every 400 case, 404, queue-full 503, seeds, stop strings,
cancellation on disconnect, batch invariance and R1 reasoning_content.
TOLLGATE_ENGINE=PATH runs another build of the binary (e.g. a sanitizer one).

Every check holds on every path, none hangs on a clock:
- Outputs are fixtures: the demo model is generated from a fixed seed and
  greedy decoding is deterministic (batch and thread invariant), so a test
  states what the output is (e.g. finish_reason "length" after max_tokens)
  instead of accepting whatever came.  If the demo model changes, a test fails
  and names the fixture to pick anew.
- Timing is order and causality: a test waits for the event it needs (a
  metric, a byte on a socket) with wait_for()/recv_until(), bounded by WAIT
  seconds (TG_TEST_WAIT, default 60) that only turn a hang into a failure.
  Every socket has that timeout, and an early EOF raises.
"""
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import uuid
import decimal
import ipaddress

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from tgskip import main  # noqa: E402  (unittest.main, skips recorded)

WAIT = float(os.environ.get("TG_TEST_WAIT", "60"))
ENGINE = os.environ.get("TOLLGATE_ENGINE") or os.path.join(ROOT, "build", "tollgate-engine")
VAR = os.path.join(ROOT, "var", "test-engine-server")
MODEL = "deepseek-v3-demo"
MODEL_DIR = os.path.join(VAR, MODEL)
R1_DIR = os.path.join(VAR, "deepseek-r1-demo")
PORT, PORT_SMALL, PORT_R1, PORT_KV, PORT_OOM = 18720, 18721, 18722, 18723, 18724
# The KV server's budget: 40 blocks of 16 tokens of the demo model (4 layers x
# (64 + 16) floats = 1280 bytes a token), so 640 tokens in all.
KV_BLOCK_BYTES, KV_BLOCKS = 16 * 1280, 40
# The OOM server fails every scratch allocation above this (TOLLGATE_ENGINE_MAX_ALLOC):
# a 512-token prompt chunk needs more (2 MB for its routed-expert inputs), one
# decoding sequence less (its 517 KB of logits), two decoding together more.
OOM_MAX_ALLOC = 1000000
BOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"

procs = {}


def wait_for(what, cond, timeout=None):
    """Polls cond() until it returns a true value, which it returns; fails
    naming `what` after timeout (default WAIT) seconds."""
    deadline = time.monotonic() + (WAIT if timeout is None else timeout)
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (WAIT if timeout is None else timeout, what))
        time.sleep(0.01)


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def recv_until(s, done, what):
    """Reads from s until done(bytes so far); EOF first raises, and so does the
    socket's timeout."""
    got = b""
    while not done(got):
        b = s.recv(65536)
        if not b:
            raise AssertionError("EOF before %s; got %r" % (what, got[-300:]))
        got += b
    return got


def recv_to_eof(s):
    """Reads the whole reply of a Connection: close request (EOF expected)."""
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            return got
        got += b


def http_parse(raw):
    """(status, headers, body) of one raw HTTP/1.1 reply, de-chunked."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hd = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    if hd.get("transfer-encoding") != "chunked":
        return status, hd, rest
    body = b""
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            return status, hd, body
        if len(rest) < n + 2:
            raise AssertionError("truncated chunked body")
        body, rest = body + rest[:n], rest[n + 2:]


def raw_post(body):
    """The bytes of a POST /v1/chat/completions that closes the connection
    after the reply."""
    data = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)


def ensure_models():
    if not os.path.exists(os.path.join(MODEL_DIR, "config.json")):
        os.makedirs(VAR, exist_ok=True)
        tmp = MODEL_DIR + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([ENGINE, "gen-model", "--arch", "deepseek_v3", "--preset", "demo", "--out", tmp,
                        "--tokenizer", os.path.join(ROOT, "build", "data", "deepseek-v3-tokenizer")],
                       check=True, cwd=ROOT)
        os.rename(tmp, MODEL_DIR)
    # An R1-style folder: the same weights, a chat template whose generation
    # prompt opens <think> (that is how the template is detected).
    if not os.path.exists(os.path.join(R1_DIR, "tokenizer_config.json")):
        tmp = R1_DIR + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for f in os.listdir(MODEL_DIR):
            if f != "tokenizer_config.json":
                os.symlink(os.path.join(MODEL_DIR, f), os.path.join(tmp, f))
        with open(os.path.join(MODEL_DIR, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["chat_template"] = cfg["chat_template"].replace("{{'<｜Assistant｜>'}}", "{{'<｜Assistant｜><think>\\n'}}")
        assert "<｜Assistant｜><think>" in cfg["chat_template"]
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False)
        shutil.rmtree(R1_DIR, ignore_errors=True)
        os.rename(tmp, R1_DIR)


def start(name, port, model_dir, *extra, env=None):
    log = open(os.path.join(VAR, "%s.log" % name), "w")
    p = subprocess.Popen([ENGINE, "serve", "--model", model_dir, "--listen", "127.0.0.1:%d" % port,
                          "--threads", "2", *extra], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                         env=dict(os.environ, **(env or {})))
    procs[name] = (p, log)

    def up():
        if p.poll() is not None:
            raise RuntimeError("%s exited with %s, see %s.log" % (name, p.returncode, name))
        try:
            return request(port, "GET", "/health", timeout=WAIT)[0] == 200
        except OSError:
            return False
    wait_for("%s to answer /health" % name, up, timeout=max(WAIT, 120))


def setUpModule():
    ensure_models()
    start("main", PORT, MODEL_DIR)
    start("small", PORT_SMALL, MODEL_DIR, "--max-batch", "1", "--max-queue", "1", "--keepalive", "1",
          "--default-max-tokens", "3")
    start("r1", PORT_R1, R1_DIR)
    start("kv", PORT_KV, MODEL_DIR, "--kv-mem", str(KV_BLOCK_BYTES * KV_BLOCKS), "--max-batch", "8")
    start("oom", PORT_OOM, MODEL_DIR, env={"TOLLGATE_ENGINE_MAX_ALLOC": str(OOM_MAX_ALLOC)})


SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer")


def tearDownModule():
    """Stops every server with SIGTERM; fails unless each exits 0 with no
    sanitizer report in its log (under SANITIZER=... builds)."""
    bad = []
    for name, (p, log) in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                bad.append("%s: no exit within %gs of SIGTERM" % (name, WAIT))
        log.close()
        if p.returncode != 0:
            bad.append("%s: exit status %s" % (name, p.returncode))
        with open(os.path.join(VAR, "%s.log" % name), encoding="utf-8", errors="replace") as f:
            text = f.read()
        bad += ["%s: %s in %s.log" % (name, r, name) for r in SANITIZER_REPORTS if r in text]
    if bad:
        raise AssertionError("; ".join(bad))


def request(port, method, path, body=None, headers=None, timeout=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout or max(WAIT, 120))
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    out = r.read()
    hd = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hd, out


def chat(content="Hello", port=PORT, model=MODEL, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0}
    body.update(kw)
    return request(port, "POST", "/v1/chat/completions", body)


def sse(body):
    events = []
    for block in body.decode("utf-8").split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        assert all(ln.startswith("data: ") for ln in lines), block
        events.append("\n".join(ln[6:] for ln in lines))
    return events


def tokenize(text):
    p = subprocess.run([ENGINE, "tokenize", "--model", MODEL_DIR], input=json.dumps(text) + "\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def wait_metrics(what, pred, port=PORT):
    """The metrics once pred(metrics) holds (wait_for)."""
    def get():
        m = metrics(port)
        return m if pred(m) else None
    return wait_for(what, get)


def metrics(port=PORT):
    st, _, b = request(port, "GET", "/metrics")
    assert st == 200
    out = {}
    for ln in b.decode().splitlines():
        if ln and not ln.startswith("#"):
            k, v = ln.rsplit(" ", 1)
            out[k] = float(v)
    return out


class Server(unittest.TestCase):
    def test_models_and_health(self):
        st, h, b = request(PORT, "GET", "/v1/models")
        self.assertEqual(st, 200)
        j = json.loads(b)
        self.assertEqual(j["object"], "list")
        self.assertEqual([m["id"] for m in j["data"]], [MODEL])
        self.assertEqual(j["data"][0]["object"], "model")
        st, _, b = request(PORT, "GET", "/health")
        self.assertEqual((st, json.loads(b)["status"]), (200, "ok"))
        st, _, b = request(PORT, "GET", "/nope")
        self.assertEqual(st, 404)

    def test_completion_shape_and_usage(self):
        content = "Count me exactly: 你好, мир! 12345 🙂"
        st, h, b = chat(content, max_tokens=6)
        self.assertEqual(st, 200, b)
        self.assertTrue(h["content-type"].startswith("application/json"))
        j = json.loads(b)
        self.assertTrue(j["id"].startswith("chatcmpl-"))
        self.assertEqual(j["object"], "chat.completion")
        self.assertEqual(j["model"], MODEL)
        self.assertIsInstance(j["created"], int)
        ch = j["choices"][0]
        self.assertEqual((ch["index"], ch["message"]["role"], ch["logprobs"]), (0, "assistant", None))
        self.assertIsInstance(ch["message"]["content"], str)
        self.assertNotIn("reasoning_content", ch["message"])
        u = j["usage"]
        want = len(tokenize(BOS + USER + content + ASSISTANT))
        self.assertEqual(u["prompt_tokens"], want)
        # fixture: greedy on the demo model, no end-of-sentence in 6 tokens
        self.assertEqual((ch["finish_reason"], u["completion_tokens"]), ("length", 6))
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])
        self.assertEqual((u["prompt_cache_hit_tokens"], u["prompt_cache_miss_tokens"]), (0, u["prompt_tokens"]))
        self.assertEqual(u["prompt_tokens_details"], {"cached_tokens": 0})
        self.assertEqual(u["completion_tokens_details"], {"reasoning_tokens": 0})

    def test_system_and_multi_turn_prompt_count(self):
        msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "What "}, {"type": "text", "text": "now?"}]}]
        st, _, b = request(PORT, "POST", "/v1/chat/completions",
                           {"model": MODEL, "messages": msgs, "max_tokens": 1, "temperature": 0})
        self.assertEqual(st, 200, b)
        text = BOS + "Be terse." + USER + "Hi" + ASSISTANT + "Hello!<｜end▁of▁sentence｜>" + USER + "What now?" + ASSISTANT
        self.assertEqual(json.loads(b)["usage"]["prompt_tokens"], len(tokenize(text)))

    def test_tool_conversation(self):
        msgs = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
        st, _, b = request(PORT, "POST", "/v1/chat/completions",
                           {"model": MODEL, "messages": msgs, "max_tokens": 2, "temperature": 0,
                            "tools": [{"type": "function", "function": {"name": "get_weather"}}]})
        self.assertEqual(st, 200, b)
        u = json.loads(b)["usage"]
        # the calls and outputs are in the prompt: more than the user text alone
        self.assertGreater(u["prompt_tokens"], len(tokenize(BOS + USER + "weather?" + ASSISTANT)) + 8)

    def test_request_id_echo(self):
        st, h, b = request(PORT, "POST", "/v1/chat/completions",
                           {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
                           headers={"X-Request-Id": "req-abc.123"})
        self.assertEqual(st, 200, b)
        self.assertEqual(h["x-request-id"], "req-abc.123")
        self.assertEqual(json.loads(b)["id"], "chatcmpl-req-abc.123")
        st, h, b = chat("x", max_tokens=1)
        self.assertEqual(json.loads(b)["id"], "chatcmpl-" + h["x-request-id"])
        self.assertEqual(len(h["x-request-id"]), 36)  # a UUIDv7
        self.assertEqual(h["x-request-id"][14], "7")

    def test_stream_equals_plain(self):
        st, _, b = chat("Stream this", max_tokens=12)
        self.assertEqual(st, 200, b)
        plain = json.loads(b)
        st, h, b = chat("Stream this", max_tokens=12, stream=True, stream_options={"include_usage": True})
        self.assertEqual(st, 200, b)
        self.assertTrue(h["content-type"].startswith("text/event-stream"))
        self.assertEqual(h.get("transfer-encoding"), "chunked")
        ev = sse(b)
        self.assertEqual(ev[-1], "[DONE]")
        chunks = [json.loads(e) for e in ev[:-1]]
        ids = {c["id"] for c in chunks}
        self.assertEqual(len(ids), 1)
        for c in chunks:
            self.assertEqual(c["object"], "chat.completion.chunk")
            self.assertIn("usage", c)
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        body = [c for c in chunks if c["choices"]]
        for c in body:
            self.assertIsNone(c["usage"])
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
        self.assertEqual(text, plain["choices"][0]["message"]["content"])
        self.assertEqual(body[-1]["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"])
        for c in body[:-1]:
            self.assertIsNone(c["choices"][0]["finish_reason"])
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], plain["usage"])
        # without include_usage: no usage-only chunk and no usage key
        st, _, b = chat("Stream this", max_tokens=3, stream=True)
        ev = sse(b)
        self.assertEqual(ev[-1], "[DONE]")
        for e in ev[:-1]:
            c = json.loads(e)
            self.assertTrue(c["choices"])
            self.assertNotIn("usage", c)

    def test_400s(self):
        def bad(body, param=None, raw=False):
            st, _, b = request(PORT, "POST", "/v1/chat/completions", body if raw else json.dumps(body).encode())
            self.assertEqual(st, 400, (body, b))
            e = json.loads(b)["error"]
            self.assertEqual(set(e), {"message", "type", "param", "code"})
            self.assertEqual(e["type"], "invalid_request_error")
            if param:
                self.assertEqual(e["param"], param, b)
            return e
        m = [{"role": "user", "content": "hi"}]
        bad(b"{nope", raw=True)
        bad(b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\xff"}]}', raw=True)
        for esc in (b"\\ud800", b"\\udc00", b"\\ud800\\u0041"):  # lone surrogates
            e = bad(b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"x' + esc + b'"}]}', raw=True)
            self.assertEqual(e["code"], "invalid_utf8")
        bad({"model": MODEL, "messages": [{"role": "us\0er", "content": "x"}]}, "messages[0].role")
        bad({"model": MODEL, "messages": m, "seed": 2 ** 64}, "seed")
        bad({"model": MODEL, "messages": []}, "messages")
        bad({"model": MODEL}, "messages")
        bad({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role")
        bad({"model": MODEL, "messages": [{"role": "user", "content": 3}]}, "messages[0].content")
        bad({"model": MODEL, "messages": m, "max_tokens": "3"}, "max_tokens")
        bad({"model": MODEL, "messages": m, "max_tokens": 0}, "max_tokens")
        bad({"model": MODEL, "messages": m, "temperature": 3}, "temperature")
        bad({"model": MODEL, "messages": m, "top_p": -0.1}, "top_p")
        bad({"model": MODEL, "messages": m, "n": 17}, "n")
        bad({"model": MODEL, "messages": m, "logprobs": "yes"}, "logprobs")
        bad({"model": MODEL, "messages": m, "top_logprobs": 2}, "top_logprobs")
        bad({"model": MODEL, "messages": m, "stop": [chr(97 + i) for i in range(17)]}, "stop")
        bad({"model": MODEL, "messages": m, "stream": "yes"}, "stream")
        ctx = json.loads(request(PORT, "GET", "/v1/models")[2])["data"][0]["context_length"]
        e = bad({"model": MODEL, "messages": m, "max_tokens": ctx})
        self.assertEqual(e["code"], "context_length_exceeded")
        e = bad({"model": MODEL, "messages": [{"role": "user", "content": "hello " * ctx}]})
        self.assertEqual(e["code"], "context_length_exceeded")

    def test_nul_in_content_is_text(self):
        # U+0000 is text: the prompt holds it and is counted like the tokenizer CLI counts it
        st, _, b = chat("a\0b", max_tokens=1)
        self.assertEqual(st, 200, b)
        want = tokenize(BOS + USER + "a\0b" + ASSISTANT)
        self.assertEqual(json.loads(b)["usage"]["prompt_tokens"], len(want))
        self.assertNotEqual(len(want), len(tokenize(BOS + USER + "ab" + ASSISTANT)))
        # the same in a system message, in content parts, and several NULs in a row
        msgs = [{"role": "system", "content": "\0s\0"},
                {"role": "user", "content": [{"type": "text", "text": "x\0"}, {"type": "text", "text": "\0\0y"}]}]
        st, _, b = request(PORT, "POST", "/v1/chat/completions",
                           {"model": MODEL, "messages": msgs, "max_tokens": 1, "temperature": 0})
        self.assertEqual(st, 200, b)
        text = BOS + "\0s\0" + USER + "x\0\0\0y" + ASSISTANT
        self.assertEqual(json.loads(b)["usage"]["prompt_tokens"], len(tokenize(text)))
        # a stop string holding NUL is kept whole (it never matches this text; no crash, no over-read)
        st, _, b = chat("a\0b", max_tokens=4)
        free = json.loads(b)["choices"][0]
        self.assertEqual(free["finish_reason"], "length")  # fixture: 4 tokens, no NUL among them
        self.assertNotIn("\0", free["message"]["content"])
        st, _, b = chat("a\0b", max_tokens=4, stop=["q\0r", "\0"])
        self.assertEqual(st, 200, b)
        ch = json.loads(b)["choices"][0]
        self.assertEqual((ch["finish_reason"], ch["message"]["content"]), ("length", free["message"]["content"]))
        # streaming too, with the usage chunk
        st, _, b = chat("\0", max_tokens=1, stream=True, stream_options={"include_usage": True})
        self.assertEqual(st, 200, b)
        ev = sse(b)
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(json.loads(ev[-2])["usage"]["prompt_tokens"], len(tokenize(BOS + USER + "\0" + ASSISTANT)))

    def test_default_max_tokens_bad_values(self):
        for v in ("0", "-3", "12x", ""):
            p = subprocess.run([ENGINE, "serve", "--model", MODEL_DIR, "--default-max-tokens", v],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 2, (v, p.stderr))
            self.assertIn("--default-max-tokens", p.stderr)

    def test_default_max_tokens_flag(self):
        # the small worker runs with --default-max-tokens 3: a request without max_tokens stops there
        st, _, b = chat("Tell me a long story", port=PORT_SMALL)
        self.assertEqual(st, 200, b)
        r = json.loads(b)
        # fixture: greedy on the demo model, no end-of-sentence in 6 tokens
        self.assertEqual((r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]), ("length", 3))
        # an explicit max_tokens is not capped by it
        st, _, b = chat("Tell me a long story", port=PORT_SMALL, max_tokens=6)
        self.assertEqual(st, 200, b)
        r = json.loads(b)
        self.assertEqual((r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]), ("length", 6))

    def test_413(self):
        st, _, b = request(PORT, "POST", "/v1/chat/completions", b" " * (9 << 20))
        self.assertEqual(st, 413)
        self.assertEqual(json.loads(b)["error"]["code"], "request_too_large")

    def test_404_model_and_405(self):
        st, _, b = chat("x", model="gpt-4o", max_tokens=1)
        self.assertEqual(st, 404)
        e = json.loads(b)["error"]
        # as OpenAI answers it: param null
        self.assertEqual((e["code"], e["param"], e["type"]), ("model_not_found", None, "invalid_request_error"))
        st, _, b = request(PORT, "GET", "/v1/models/gpt-4o")
        self.assertEqual(st, 404)
        e = json.loads(b)["error"]
        self.assertEqual((e["code"], e["param"], e["type"]), ("model_not_found", None, "invalid_request_error"))
        st, _, _ = request(PORT, "GET", "/v1/chat/completions")
        self.assertEqual(st, 405)
        # every wrong method on a known endpoint: an OpenAI-shaped 405 naming what is allowed
        # (POST /v1/models/{id} was a 404 "Unknown path"; PATCH evhttp's own HTML 501)
        for method, path, allow in (("PATCH", "/v1/chat/completions", "POST"), ("HEAD", "/v1/chat/completions", "POST"),
                                    ("POST", "/v1/models/" + MODEL, "GET, HEAD"), ("POST", "/models", "GET, HEAD"),
                                    ("DELETE", "/health", "GET, HEAD"), ("PUT", "/metrics", "GET, HEAD")):
            st, h, b = request(PORT, method, path)
            self.assertEqual((st, h.get("allow")), (405, allow), (method, path, b))
            if method != "HEAD":
                e = json.loads(b)["error"]
                self.assertEqual((e["code"], e["param"], e["type"]), ("method_not_allowed", None, "invalid_request_error"))
        st, h, b = request(PORT, "GET", "/models/" + MODEL)
        self.assertEqual((st, json.loads(b)["id"]), (200, MODEL))
        st, h, b = request(PORT, "POST", "/v1/nope", {})
        self.assertEqual(st, 404)
        e = json.loads(b)["error"]
        self.assertEqual((set(e), e["param"], e["type"]), ({"message", "type", "param", "code"}, None, "invalid_request_error"))

    def test_logprobs(self):
        st, _, b = chat("Logprobs please", max_tokens=6, logprobs=True, top_logprobs=3)
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        ch = j["choices"][0]
        entries = ch["logprobs"]["content"]
        # fixture: greedy on the demo model, no end-of-sentence in 6 tokens
        self.assertEqual((ch["finish_reason"], j["usage"]["completion_tokens"], len(entries)), ("length", 6, 6))
        for e in entries:
            self.assertEqual(set(e), {"token", "logprob", "bytes", "top_logprobs"})
            self.assertLessEqual(e["logprob"], 0)
            self.assertEqual(len(e["top_logprobs"]), 3)
            tops = [t["logprob"] for t in e["top_logprobs"]]
            self.assertEqual(tops, sorted(tops, reverse=True))
            # greedy: the chosen token is the most likely one
            self.assertEqual(e["token"], e["top_logprobs"][0]["token"])
            self.assertAlmostEqual(e["logprob"], tops[0], places=5)
            self.assertEqual(bytes(e["bytes"]).decode("utf-8"), e["token"])
        self.assertEqual("".join(e["token"] for e in entries), ch["message"]["content"])
        st, _, b = chat("Logprobs please", max_tokens=6, logprobs=True, top_logprobs=3, stream=True)
        chunks = [json.loads(e) for e in sse(b)[:-1]]
        streamed = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                    for e in c["choices"][0]["logprobs"]["content"]]
        self.assertEqual(streamed, entries)
        # without logprobs the field is null
        st, _, b = chat("Logprobs please", max_tokens=2)
        self.assertIsNone(json.loads(b)["choices"][0]["logprobs"])
        # a special token sampled (here the BOS, pushed by logit_bias) is skipped in the
        # content and so in its entry: tokens still join to the content, bytes to its UTF-8
        bos = tokenize(BOS)
        self.assertEqual(len(bos), 1, bos)
        for stream in (False, True):
            st, _, b = chat("Logprobs please", max_tokens=4, logprobs=True, top_logprobs=2, stream=stream,
                            logit_bias={str(bos[0]): 30})
            self.assertEqual(st, 200, b)
            if stream:
                chunks = [json.loads(e) for e in sse(b)[:-1]]
                content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
                got = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                       for e in c["choices"][0]["logprobs"]["content"]]
            else:
                ch = json.loads(b)["choices"][0]
                content, got = ch["message"]["content"], ch["logprobs"]["content"]
            self.assertEqual(len(got), 4)
            self.assertIn("", [e["token"] for e in got])  # the BOS was sampled at least once
            self.assertNotIn(BOS, content)
            self.assertEqual("".join(e["token"] for e in got), content)
            self.assertEqual(bytes(x for e in got for x in e["bytes"]), content.encode())
            self.assertEqual([e["token"] for e in got], [e["top_logprobs"][0]["token"] for e in got])

    def test_chat_prefix_completion(self):
        # DeepSeek's chat prefix completion: the last message, an assistant's with
        # "prefix": true, is the answer's start; the content is what follows it,
        # exactly what the same text continued as a plain completion gives
        msgs = [{"role": "user", "content": "Write quick sort"},
                {"role": "assistant", "content": "```python\n", "prefix": True}]
        st, _, b = chat(messages=msgs, max_tokens=8)
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        st, _, c = request(PORT, "POST", "/v1/completions", {
            "model": MODEL, "prompt": USER + "Write quick sort" + ASSISTANT + "```python\n", "max_tokens": 8,
            "temperature": 0})
        self.assertEqual(st, 200, c)
        k = json.loads(c)
        self.assertEqual(j["choices"][0]["message"]["content"], k["choices"][0]["text"])
        self.assertEqual(j["usage"]["prompt_tokens"], k["usage"]["prompt_tokens"])
        self.assertFalse(j["choices"][0]["message"]["content"].startswith("```python"))
        st, _, b = chat(messages=msgs, max_tokens=8, stream=True)
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in map(json.loads, sse(b)[:-1])
                       if e["choices"])
        self.assertEqual(text, k["choices"][0]["text"])
        # a prefix that is not the last message, or with a JSON answer: a 400 naming it
        for body, param in (({"messages": [msgs[1], msgs[0]]}, "messages[0].prefix"),
                            ({"messages": msgs, "response_format": {"type": "json_object"}}, "messages[1].prefix")):
            st, _, b = chat(max_tokens=2, **body)
            self.assertEqual((st, json.loads(b)["error"]["param"]), (400, param), b)

    def test_seed_repeats(self):
        outs = []
        for seed in (7, 7, 8):
            st, _, b = chat("Tell me a story", max_tokens=10, temperature=1.0, top_p=0.9, seed=seed)
            self.assertEqual(st, 200, b)
            outs.append(json.loads(b)["choices"][0]["message"]["content"])
        self.assertEqual(outs[0], outs[1])
        self.assertNotEqual(outs[0], outs[2])

    def test_stop_string(self):
        st, _, b = chat("Stop test", max_tokens=16)
        full = json.loads(b)["choices"][0]["message"]["content"]
        self.assertGreater(len(full), 6, full)
        stop = full[len(full) // 2:len(full) // 2 + 2]
        want = full[:full.find(stop)]
        for stream in (False, True):
            st, _, b = chat("Stop test", max_tokens=16, stop=[stop, "never-in-the-output-\u2603"], stream=stream)
            self.assertEqual(st, 200, b)
            if stream:
                chunks = [json.loads(e) for e in sse(b)[:-1]]
                got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
                fin = chunks[-1]["choices"][0]["finish_reason"]
            else:
                ch = json.loads(b)["choices"][0]
                got, fin = ch["message"]["content"], ch["finish_reason"]
            self.assertEqual(got, want)
            self.assertEqual(fin, "stop")

    def test_stop_string_logprobs_list_only_returned_tokens(self):
        # logprobs.content lists the tokens of the returned text only: a stop string's own tokens,
        # and those after it, are not listed; the token straddling the cut is (some of its text is
        # returned), as the text's first bytes
        st, _, b = chat("Stop test", max_tokens=16, logprobs=True)
        self.assertEqual(st, 200, b)
        ch = json.loads(b)["choices"][0]
        full, entries = ch["message"]["content"], ch["logprobs"]["content"]
        toks = [bytes(e["bytes"]) for e in entries]
        self.assertEqual(b"".join(toks).decode("utf-8"), full)
        starts = [len(b"".join(toks[:i])) for i in range(len(toks))]
        fb = full.encode("utf-8")
        cases = []  # (stop, index of the first token not listed)
        for k in range(1, len(toks) - 1):
            a, nx = toks[k], toks[k + 1]
            try:
                whole = (a + nx).decode("utf-8")  # a stop at a token boundary: tokens k, k+1
                mid = (a[1:] + nx).decode("utf-8") if len(a) > 1 else None  # starting inside token k
            except UnicodeDecodeError:
                continue
            if whole and fb.find(whole.encode()) == starts[k] and not any(c[1] == k for c in cases if c[2] == 0):
                cases.append((whole, k, 0))
            if mid and fb.find(mid.encode()) == starts[k] + 1 and not any(c[2] == 1 for c in cases):
                cases.append((mid, k + 1, 1))
        self.assertTrue(any(c[2] == 0 for c in cases) and any(c[2] == 1 for c in cases), (full, toks))
        for stop, keep, _ in cases[:4]:
            want = fb[:fb.find(stop.encode())].decode("utf-8")
            for stream in (False, True):
                st, _, b = chat("Stop test", max_tokens=16, logprobs=True, stop=[stop], stream=stream)
                self.assertEqual(st, 200, b)
                if stream:
                    chunks = [json.loads(e) for e in sse(b)[:-1]]
                    got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
                    lps = [e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
                           for e in c["choices"][0]["logprobs"]["content"]]
                else:
                    c = json.loads(b)["choices"][0]
                    got, lps = c["message"]["content"], (c["logprobs"] or {}).get("content") or []
                self.assertEqual(got, want, stop)
                self.assertEqual(lps, entries[:keep], (stop, stream, [e["token"] for e in lps]))
        # a stop string at the very start: nothing returned, nothing listed, still a logprobs object
        first = toks[0].decode("utf-8", "ignore")
        if first and fb.find(first.encode()) == 0:
            st, _, b = chat("Stop test", max_tokens=16, logprobs=True, stop=[first])
            c = json.loads(b)["choices"][0]
            self.assertEqual((c["message"]["content"], c["logprobs"]), ("", {"content": []}), b)

    def test_disconnect_frees_slot(self):
        before = metrics()
        s = connect(PORT)
        s.sendall(raw_post({"model": MODEL, "messages": [{"role": "user", "content": "long"}],
                            "max_tokens": 3000, "stream": True}))
        recv_until(s, lambda got: got.count(b"data: ") >= 4, "4 SSE events")
        m = metrics()
        self.assertEqual(m["tollgate_engine_active_sequences"], 1)
        self.assertGreater(m["tollgate_engine_kv_cache_tokens"], 3)
        self.assertGreater(m["tollgate_engine_kv_cache_bytes"], 0)
        s.close()
        m = wait_metrics("the hung-up stream to be cancelled", lambda m: m["tollgate_engine_active_sequences"] == 0
                         and m["tollgate_engine_requests_in_flight"] == 0)
        self.assertEqual(m["tollgate_engine_kv_cache_tokens"], 0)
        self.assertEqual(m["tollgate_engine_requests_cancelled_total"], before["tollgate_engine_requests_cancelled_total"] + 1)
        self.assertLess(m["tollgate_engine_completion_tokens_total"] - before["tollgate_engine_completion_tokens_total"], 3000)
        # the same for a non-streaming request: hang up once it is running
        s = connect(PORT)
        s.sendall(raw_post({"model": MODEL, "messages": [{"role": "user", "content": "long"}], "max_tokens": 3000}))
        wait_for("the request to run", lambda: metrics()["tollgate_engine_active_sequences"] == 1)
        s.close()
        m = wait_metrics("the hung-up request to be cancelled", lambda m: m["tollgate_engine_requests_in_flight"] == 0)
        self.assertEqual(m["tollgate_engine_active_sequences"], 0)
        self.assertEqual(m["tollgate_engine_requests_cancelled_total"], before["tollgate_engine_requests_cancelled_total"] + 2)

    def test_concurrent_batch_invariance(self):
        # a short, a medium and a long prompt (the long one is prefilled in
        # several 512-token chunks, sharing steps with the others' decodes)
        prompts = ["First prompt, a short one", "Second prompt is somewhat longer, really " * 20,
                   "long " * 1400 + "end"]
        solo = []
        for p in prompts:
            st, _, b = chat(p, max_tokens=12)
            self.assertEqual(st, 200, b)
            solo.append(json.loads(b))
        self.assertGreater(solo[2]["usage"]["prompt_tokens"], 1024)
        # One after another these take 12 + 12 + (3 prefill chunks + 11) = 38 steps.
        steps0 = metrics()["tollgate_engine_forward_steps_total"]
        # Each request goes out but for its last byte, so the server can start
        # none of them; then the three last bytes go together.  All three are
        # in the server before the first can have taken a step, whatever the
        # machine's speed: they must share steps.
        socks = []
        for i, p in enumerate(prompts):
            req = raw_post({"model": MODEL, "messages": [{"role": "user", "content": p}], "temperature": 0,
                            "max_tokens": 12, "stream": i == 1})
            s = connect(PORT)
            s.sendall(req[:-1])
            socks.append((s, req[-1:]))
        for s, last in socks:
            s.sendall(last)
        res = []
        for s, _ in socks:
            res.append(http_parse(recv_to_eof(s)))
            s.close()
        steps = metrics()["tollgate_engine_forward_steps_total"] - steps0
        for i in (0, 2):
            self.assertEqual(res[i][0], 200, res[i][2])
            self.assertEqual(json.loads(res[i][2])["choices"][0]["message"]["content"],
                             solo[i]["choices"][0]["message"]["content"], "prompt %d" % i)
            u, su = json.loads(res[i][2])["usage"], solo[i]["usage"]
            self.assertEqual((u["prompt_tokens"], u["completion_tokens"]), (su["prompt_tokens"], su["completion_tokens"]))
            # the second time the prompt's full blocks come from the prefix cache
            # (the first run may itself have hit blocks an earlier test left)
            self.assertEqual(u["prompt_cache_hit_tokens"], (u["prompt_tokens"] - 1) // 16 * 16, "prompt %d" % i)
        self.assertEqual(res[1][0], 200, res[1][2])
        chunks = [json.loads(e) for e in sse(res[1][2])[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        self.assertEqual(text, solo[1]["choices"][0]["message"]["content"])
        print("  batch of 3: %d forward steps" % steps, file=sys.stderr)
        # served in shared steps: fewer forward calls than one request after another
        self.assertLess(steps, 12 + 12 + 12 + 2)

    def test_32_streams_batch_invariant(self):
        # 32 greedy streams at once give exactly what each gives alone
        prompts = ["Stream %d: tell me about the number %d and its friends." % (i, i * 7919) for i in range(32)]
        solo = []
        for p in prompts:
            st, _, b = chat(p, max_tokens=8)
            self.assertEqual(st, 200, b)
            solo.append(json.loads(b)["choices"][0]["message"]["content"])
        steps0 = metrics()["tollgate_engine_forward_steps_total"]
        res = send_together([{"model": MODEL, "messages": [{"role": "user", "content": p}], "temperature": 0,
                              "max_tokens": 8, "stream": i % 2 == 1} for i, p in enumerate(prompts)], PORT)
        for i, (st, _, b) in enumerate(res):
            self.assertEqual(st, 200, b)
            self.assertEqual(answer_text(b, i % 2 == 1), solo[i], "stream %d" % i)
        steps = metrics()["tollgate_engine_forward_steps_total"] - steps0
        print("  32 streams: %d forward steps" % steps, file=sys.stderr)
        self.assertLess(steps, 32 * 8 / 2)  # they shared steps

    def test_queue_full_503(self):
        # the small worker: --max-batch 1 --max-queue 1 --keepalive 1
        before = metrics(PORT_SMALL)
        s1 = connect(PORT_SMALL)  # holds the only slot until it hangs up
        s1.sendall(raw_post({"model": MODEL, "messages": [{"role": "user", "content": "busy 1"}], "temperature": 0,
                             "max_tokens": 3000, "stream": True}))
        wait_for("request 1 to run", lambda: metrics(PORT_SMALL)["tollgate_engine_active_sequences"] == 1)
        s2 = connect(PORT_SMALL)  # streams, and waits in the queue
        s2.sendall(raw_post({"model": MODEL, "messages": [{"role": "user", "content": "busy 2"}], "temperature": 0,
                             "max_tokens": 5, "stream": True}))
        wait_for("request 2 to queue", lambda: metrics(PORT_SMALL)["tollgate_engine_queue_depth"] == 1)
        st, _, b = chat("one too many", port=PORT_SMALL, max_tokens=1)
        self.assertEqual(st, 503, b)
        self.assertIn("error", json.loads(b))
        # a waiting stream gets SSE comments, and no token while request 1 holds the slot
        got = recv_until(s2, lambda g: b": keep-alive\n\n" in g, "a keep-alive comment")
        self.assertNotIn(b'"delta":{"content"', got)
        s1.close()  # frees the slot: request 2 runs to its end
        raw = got + recv_to_eof(s2)
        s2.close()
        st, _, body = http_parse(raw)
        self.assertEqual(st, 200, raw)
        body = body.decode()
        self.assertIn("\n\n: keep-alive\n\n", body)
        self.assertLess(body.index(": keep-alive"), body.index('"delta":{"content"'))
        ev = sse(body.encode())
        self.assertEqual(ev[-1], "[DONE]")
        self.assertEqual(json.loads(ev[-2])["choices"][0]["finish_reason"], "length")
        m = wait_metrics("request 1 to be cancelled", lambda m: m["tollgate_engine_requests_in_flight"] == 0,
                         PORT_SMALL)
        self.assertEqual(m["tollgate_engine_requests_cancelled_total"],
                         before["tollgate_engine_requests_cancelled_total"] + 1)

    def test_r1_reasoning_content(self):
        st, _, b = request(PORT_R1, "GET", "/v1/models")
        self.assertEqual(json.loads(b)["data"][0]["id"], "deepseek-r1-demo")
        st, _, b = chat("Think first", port=PORT_R1, model="deepseek-r1-demo", max_tokens=8)
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        msg, u = j["choices"][0]["message"], j["usage"]
        self.assertIn("reasoning_content", msg)
        # the random model never closes </think>: everything is reasoning
        self.assertEqual(msg["content"], "")
        self.assertTrue(msg["reasoning_content"])
        self.assertEqual(u["completion_tokens_details"]["reasoning_tokens"], u["completion_tokens"])
        want = len(tokenize(BOS + USER + "Think first" + ASSISTANT + "<think>\n"))
        self.assertEqual(u["prompt_tokens"], want)
        # log-probs, as DeepSeek's reasoner: a 400 naming them (the entries could join to neither
        # reasoning_content nor content); without them the same request is answered
        st, _, b = chat("Think first", port=PORT_R1, model="deepseek-r1-demo", max_tokens=8, logprobs=True)
        e = json.loads(b)["error"]
        self.assertEqual((st, e["param"], e["code"]), (400, "logprobs", "unsupported_parameter"), b)
        st, _, b = chat("Think first", port=PORT_R1, model="deepseek-r1-demo", max_tokens=8, logprobs=False)
        self.assertEqual(st, 200, b)
        st, _, b = chat("Think first", port=PORT_R1, model="deepseek-r1-demo", max_tokens=8, stream=True)
        chunks = [json.loads(e) for e in sse(b)[:-1]]
        r = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks)
        self.assertEqual(r, msg["reasoning_content"])

    # ---- issue 10: strict parameters, sampling knobs, JSON mode, tools ----

    def test_unknown_parameter_400(self):
        st, _, b = chat(max_tokens=2, foo=1)
        self.assertEqual(st, 400, b)
        self.assertEqual(json.loads(b), {"error": {"message": "Unrecognized request argument supplied: foo",
                                                   "type": "invalid_request_error", "param": "foo",
                                                   "code": "unknown_parameter"}})
        st, _, b = chat(max_tokens=2, n=17)
        self.assertEqual((st, json.loads(b)["error"]["param"]), (400, "n"))
        st, _, b = chat(max_tokens=2, logit_bias={"999999": 5})
        self.assertEqual((st, json.loads(b)["error"]["param"]), (400, "logit_bias"))

    def test_logit_bias_and_top_k(self):
        st, _, b = chat("Bias test", max_tokens=3, logprobs=True)
        self.assertEqual(st, 200, b)
        first = json.loads(b)["choices"][0]["logprobs"]["content"][0]["bytes"]  # the unbiased greedy token
        # +100 on one id makes it the greedy choice at every step
        want = tokenize(" toll")
        self.assertEqual(len(want), 1, want)
        st, _, b = chat("Bias test", max_tokens=3, logit_bias={str(want[0]): 100})
        self.assertEqual(json.loads(b)["choices"][0]["message"]["content"], " toll toll toll")
        # -100 takes an id out: the next-biased id wins instead
        road = tokenize(" road")
        self.assertEqual(len(road), 1, road)
        st, _, b = chat("Bias test", max_tokens=2, logit_bias={str(want[0]): -100, str(road[0]): 60})
        self.assertEqual(json.loads(b)["choices"][0]["message"]["content"], " road road")
        self.assertNotEqual(bytes(first), b" road")
        # top_k=1 at temperature 1 is greedy, whatever the seed
        _, _, g = chat("Top-k test", max_tokens=6)
        for seed in (1, 2):
            _, _, b = chat("Top-k test", max_tokens=6, temperature=1.0, top_k=1, seed=seed)
            self.assertEqual(json.loads(b)["choices"][0]["message"]["content"],
                             json.loads(g)["choices"][0]["message"]["content"])

    def test_json_mode_parses(self):
        for seed in range(4):
            for max_tokens in (2, 5, 17, 40):
                st, _, b = chat("Give me JSON", max_tokens=max_tokens, temperature=1.0, seed=seed,
                                response_format={"type": "json_object"})
                self.assertEqual(st, 200, b)
                ch = json.loads(b)["choices"][0]
                self.assertEqual(ch["finish_reason"], "stop", (max_tokens, ch))
                self.assertIsInstance(json.loads(ch["message"]["content"]), dict)
                self.assertLessEqual(json.loads(b)["usage"]["completion_tokens"], max_tokens)
        # streamed: the deltas join into the same object
        st, _, b = chat("Give me JSON", max_tokens=25, temperature=1.0, seed=3, stream=True,
                        response_format={"type": "json_object"})
        evs = [json.loads(e) for e in sse(b) if e != "[DONE]"]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in evs)
        self.assertIsInstance(json.loads(text), dict)
        self.assertEqual(evs[-1]["choices"][0]["finish_reason"], "stop")

    TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]

    def test_tool_choice_required_and_named(self):
        names = {"get_weather", "get_time"}
        for seed in range(3):
            st, _, b = chat("Weather in Paris?", max_tokens=60, temperature=1.0, seed=seed, tools=self.TOOLS,
                            tool_choice="required")
            self.assertEqual(st, 200, b)
            ch = json.loads(b)["choices"][0]
            self.assertEqual(ch["finish_reason"], "tool_calls", ch)
            self.assertIsNone(ch["message"]["content"])
            self.assertGreaterEqual(len(ch["message"]["tool_calls"]), 1)
            for i, tc in enumerate(ch["message"]["tool_calls"]):
                self.assertEqual(tc["type"], "function")
                self.assertIn(tc["function"]["name"], names)
                self.assertIsInstance(json.loads(tc["function"]["arguments"]), dict)
                self.assertTrue(tc["id"].startswith("call_%d_" % i), tc["id"])
        st, _, b = chat("Time?", max_tokens=40, temperature=1.0, seed=1, tools=self.TOOLS, stream=True,
                        tool_choice={"type": "function", "function": {"name": "get_time"}})
        evs = [json.loads(e) for e in sse(b) if e != "[DONE]"]
        calls = [tc for e in evs for tc in e["choices"][0]["delta"].get("tool_calls", [])]
        self.assertEqual([c["function"]["name"] for c in calls], ["get_time"])
        self.assertEqual(calls[0]["index"], 0)
        self.assertIsInstance(json.loads(calls[0]["function"]["arguments"]), dict)
        self.assertEqual(evs[-1]["choices"][0]["finish_reason"], "tool_calls")
        # "none": the tool-calls marker is never sampled
        for seed in range(3):
            st, _, b = chat("Weather?", max_tokens=8, temperature=1.0, seed=seed, tools=self.TOOLS,
                            tool_choice="none", logit_bias={str(tokenize("<\uff5ctool\u2581calls\u2581begin\uff5c>")[0]): 100})
            ch = json.loads(b)["choices"][0]
            self.assertNotIn("tool_calls", ch["message"])
            self.assertEqual(ch["finish_reason"], "length")

    def test_tool_choice_auto_marker_arms_the_grammar(self):
        # a +100 bias on the marker makes the model open a block; the grammar takes it from there
        marker = tokenize("<\uff5ctool\u2581calls\u2581begin\uff5c>")
        self.assertEqual(len(marker), 1)
        st, _, b = chat("Weather?", max_tokens=60, temperature=1.0, seed=5, tools=self.TOOLS,
                        logit_bias={str(marker[0]): 100})
        ch = json.loads(b)["choices"][0]
        self.assertEqual(ch["finish_reason"], "tool_calls", ch)
        self.assertIn(ch["message"]["tool_calls"][0]["function"]["name"], {"get_weather", "get_time"})

    SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]},
                                               "c": {"type": "array", "items": {"type": "boolean"}}},
              "required": ["a", "b", "c"], "additionalProperties": False}

    def test_json_schema_each_of_n_choices_validates(self):
        # each choice has its own grammar state: a shared one would break the others' JSON
        rf = {"type": "json_schema", "json_schema": {"name": "t", "schema": self.SCHEMA}}
        for seed in range(3):
            st, _, b = chat("Schema", max_tokens=40, temperature=1.0, seed=seed, n=3, response_format=rf)
            self.assertEqual(st, 200, b)
            r = json.loads(b)
            self.assertEqual([c["index"] for c in r["choices"]], [0, 1, 2])
            for ch in r["choices"]:
                self.assertEqual(ch["finish_reason"], "stop", ch)
                v = json.loads(ch["message"]["content"])
                self.assertEqual(set(v), {"a", "b", "c"})
                self.assertIsInstance(v["a"], int)
                self.assertIn(v["b"], ("x", "y"))
                self.assertTrue(all(isinstance(x, bool) for x in v["c"]))
            self.assertLessEqual(r["usage"]["completion_tokens"], 3 * 40)

    # As zod v4's z.toJSONSchema writes z.object({id: z.int(), age: z.int().min(18).max(120),
    # score: z.number().positive().max(1), temp: z.number().min(-273.15), tags:
    # z.array(z.string().min(1).max(3)).min(2).max(4), name: z.string().min(2).nullable()})
    BOUNDED = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
               "properties": {
                   "id": {"type": "integer", "minimum": -9007199254740991, "maximum": 9007199254740991},
                   "age": {"type": "integer", "minimum": 18, "maximum": 120},
                   "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                   "temp": {"type": "number", "minimum": -273.15},
                   "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 3},
                            "minItems": 2, "maxItems": 4},
                   "name": {"anyOf": [{"type": "string", "minLength": 2}, {"type": "null"}]}},
               "required": ["id", "age", "score", "temp", "tags", "name"], "additionalProperties": False}

    def test_json_schema_bounds_hold(self):
        # numeric ranges, array and string lengths: every answer within them, plain
        # and streamed, at budgets from the shortest answer up (random sampling
        # would leave them at once: these are the grammar's doing)
        rf = {"type": "json_schema", "json_schema": {"name": "b", "strict": True, "schema": self.BOUNDED}}
        seen = set()
        for seed in range(4):
            for stream in (False, True):
                st, _, b = chat("Bounded", max_tokens=[70, 120, 200, 400][seed], temperature=1.2, seed=seed,
                                n=2, stream=stream, response_format=rf)
                self.assertEqual(st, 200, b)
                if stream:
                    evs = [json.loads(e) for e in sse(b) if e != "[DONE]"]
                    texts = ["".join(e["choices"][0]["delta"].get("content") or "" for e in evs
                                     if e["choices"] and e["choices"][0]["index"] == i) for i in range(2)]
                else:
                    texts = [c["message"]["content"] for c in json.loads(b)["choices"]]
                for t in texts:
                    v = json.loads(t)
                    self.assertTrue(self.valid(v, self.BOUNDED, self.BOUNDED), t)
                    seen.add(len(v["tags"]))
        self.assertTrue(seen <= {2, 3, 4} and seen, seen)
        # a strict function's arguments keep the same bounds
        tool = {"type": "function", "function": {"name": "rate", "strict": True, "parameters": self.BOUNDED}}
        for seed in range(3):
            st, _, b = chat("Rate it", max_tokens=300, temperature=1.0, seed=seed, tools=[tool],
                            tool_choice="required")
            self.assertEqual(st, 200, b)
            for tc in json.loads(b)["choices"][0]["message"]["tool_calls"]:
                args = tc["function"]["arguments"]
                self.assertTrue(self.valid(json.loads(args), self.BOUNDED, self.BOUNDED), args)
        # string formats as Pydantic writes datetime, date, UUID, Optional[datetime]: every value reads back
        fm = {"type": "object", "additionalProperties": False, "required": ["at", "day", "id", "until"],
              "properties": {"at": {"type": "string", "format": "date-time"},
                             "day": {"type": "string", "format": "date"},
                             "id": {"type": "string", "format": "uuid"},
                             "until": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}}}
        for seed in range(3):  # the shortest answer is 105 bytes: 110 tokens always fit one
            st, _, b = chat("When", max_tokens=[110, 150, 300][seed], temperature=1.2, seed=seed, n=2,
                            response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": fm}})
            self.assertEqual(st, 200, b)
            for c in json.loads(b)["choices"]:
                v = json.loads(c["message"]["content"])
                self.assertEqual(set(v), {"at", "day", "id", "until"})
                datetime.datetime.fromisoformat(v["at"].replace("Z", "+00:00"))
                self.assertRegex(v["at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
                datetime.date.fromisoformat(v["day"])
                self.assertEqual(str(uuid.UUID(v["id"])), v["id"])
                if v["until"] is not None:
                    datetime.datetime.fromisoformat(v["until"].replace("Z", "+00:00"))
        # what the grammar cannot enforce is still named in a 400, and an empty range too
        for sc, says in (({"type": "string", "pattern": "^a"}, "'pattern'"),
                         ({"type": "string", "format": "uri"}, "'format'"),
                         ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
                         ({"type": "integer", "multipleOf": 10, "minimum": 1, "maximum": 9}, "'multipleOf'"),
                         ({"type": "integer", "minimum": 5, "exclusiveMaximum": 5}, "no integer")):
            bad = {"type": "object", "properties": {"x": sc}, "required": ["x"], "additionalProperties": False}
            st, _, b = chat("x", max_tokens=4, response_format={"type": "json_schema", "json_schema": {
                "name": "b", "schema": bad}})
            err = json.loads(b)["error"]
            self.assertEqual((st, err["param"]), (400, "response_format.json_schema.schema"), b)
            self.assertIn(says, err["message"])
            self.assertIn("properties.x", err["message"])

    def test_json_schema_formats_and_multiples(self):
        # email, hostname, ipv4, ipv6, duration (Pydantic's EmailStr, IPv4Address, IPv6Address,
        # timedelta), zod's z.iso.time() pattern, multipleOf: every answer reads back valid, by
        # Python's own parsers where it has them
        lbl = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        sc = {"type": "object", "additionalProperties": False,
              "required": ["mail", "host", "v4", "v6", "took", "at", "price", "step"],
              "properties": {"mail": {"type": "string", "format": "email"},
                             "host": {"type": "string", "format": "hostname"},
                             "v4": {"type": "string", "format": "ipv4"},
                             "v6": {"type": "string", "format": "ipv6"},
                             "took": {"type": "string", "format": "duration"},
                             "at": {"type": "string",
                                    "pattern": r"^(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?$"},
                             "price": {"type": "number", "multipleOf": 0.05, "minimum": 0, "maximum": 100},
                             "step": {"type": "integer", "multipleOf": 15}}}
        dur = (r"^P(?:(?:\d+Y(?:\d+M(?:\d+D)?)?|\d+M(?:\d+D)?|\d+D)(?:T(?:\d+H(?:\d+M(?:\d+S)?)?|\d+M(?:\d+S)?|\d+S))?"
               r"|T(?:\d+H(?:\d+M(?:\d+S)?)?|\d+M(?:\d+S)?|\d+S)|\d+W)$")
        for seed in range(3):
            st, _, b = chat("Who and where", max_tokens=[140, 200, 320][seed], temperature=1.2, seed=seed, n=2,
                            response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": sc}})
            self.assertEqual(st, 200, b)
            for c in json.loads(b)["choices"]:
                t = c["message"]["content"]
                v = json.loads(t, parse_float=decimal.Decimal)
                local, _, domain = v["mail"].partition("@")
                self.assertRegex(local, r"^[a-z0-9]+([._+-][a-z0-9]+)*$", t)
                self.assertRegex(domain, r"^(" + lbl + r"\.)+[a-z]{2,63}$", t)
                self.assertLessEqual(len(v["mail"]), 254)
                self.assertRegex(v["host"], r"^" + lbl + r"(\." + lbl + r")*$", t)
                self.assertEqual(str(ipaddress.IPv4Address(v["v4"])), v["v4"])
                ipaddress.IPv6Address(v["v6"])
                self.assertRegex(v["took"], dur, t)
                self.assertRegex(v["at"], r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d+)?)?$", t)
                self.assertTrue(0 <= v["price"] <= 100 and v["price"] % decimal.Decimal("0.05") == 0, t)
                self.assertTrue(isinstance(v["step"], int) and v["step"] % 15 == 0, t)

    # ---- strict function tools: the arguments follow the chosen function's parameters ----

    STRICT_TOOLS = [
        {"type": "function", "function": {"name": "book_room", "strict": True, "parameters": {
            "type": "object", "additionalProperties": False,
            "$defs": {"guest": {"type": "object", "additionalProperties": False,
                                "properties": {"name": {"type": "string"},
                                               "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                                "required": ["name", "age"]}},
            "properties": {
                "room": {"type": "string", "enum": ["single", "double", "suite"]},
                "nights": {"type": "integer", "description": "how many"},
                "guests": {"type": "array", "items": {"$ref": "#/$defs/guest"}},
                "smoking": {"type": "boolean"},
                "budget": {"type": ["number", "null"]},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "required": ["room", "nights", "guests", "smoking", "budget", "note"]}}},
        {"type": "function", "function": {"name": "set_alarm", "strict": True, "parameters": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "at": {"type": "object", "additionalProperties": False,
                       "properties": {"hour": {"type": "integer"}, "minute": {"type": "integer"}},
                       "required": ["hour", "minute"]},
                "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed", "sat", "sun"]}},
                "label": {"const": "wake"}},
            "required": ["at", "days", "label"]}}},
        {"type": "function", "function": {"name": "search", "description": "not strict: any object",
                                          "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                         "required": ["q"]}}},
        {"type": "function", "function": {"name": "ping", "strict": True}},  # no parameters: {}
    ]

    @staticmethod
    def valid(v, sc, root):
        """v against JSON Schema sc (the keywords strict mode allows), written
        here apart from the engine: type, properties, required,
        additionalProperties, items, enum, const, anyOf, $ref to $defs."""
        if "$ref" in sc:
            return Server.valid(v, root["$defs"][sc["$ref"].split("/")[-1]], root)
        if "anyOf" in sc:
            return any(Server.valid(v, b, root) for b in sc["anyOf"])
        if "const" in sc and not (v == sc["const"] and type(v) is type(sc["const"])):
            return False
        if "enum" in sc and not any(v == e and type(v) is type(e) for e in sc["enum"]):
            return False
        if "type" in sc:
            kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
            ok = False
            for t in sc["type"] if isinstance(sc["type"], list) else [sc["type"]]:
                if t == "integer":
                    ok |= isinstance(v, int) and not isinstance(v, bool)
                elif t == "number":
                    ok |= isinstance(v, (int, float)) and not isinstance(v, bool)
                else:
                    ok |= isinstance(v, kinds[t])
            if not ok:
                return False
        if isinstance(v, dict):
            props = sc.get("properties", {})
            if sc.get("additionalProperties") is False and not set(v) <= set(props):
                return False
            if not set(sc.get("required", [])) <= set(v):
                return False
            if not all(Server.valid(v[k], props[k], root) for k in v if k in props):
                return False
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if ("minimum" in sc and v < sc["minimum"]) or ("maximum" in sc and v > sc["maximum"]) or \
               ("exclusiveMinimum" in sc and v <= sc["exclusiveMinimum"]) or \
               ("exclusiveMaximum" in sc and v >= sc["exclusiveMaximum"]):
                return False
        if isinstance(v, str) and not sc.get("minLength", 0) <= len(v) <= sc.get("maxLength", len(v)):
            return False
        if isinstance(v, list) and not sc.get("minItems", 0) <= len(v) <= sc.get("maxItems", len(v)):
            return False
        if isinstance(v, list) and "items" in sc:
            return all(Server.valid(x, sc["items"], root) for x in v)
        return True

    def check_calls(self, calls, allowed):
        """Each call names an allowed tool; a strict one's arguments validate
        against its parameters (none: {}), the others' are an object.  Returns
        how many calls were strict."""
        tools = {t["function"]["name"]: t["function"] for t in self.STRICT_TOOLS}
        strict = 0
        for c in calls:
            name, args = c["function"]["name"], c["function"]["arguments"]
            self.assertIn(name, allowed)
            v = json.loads(args)  # always one JSON object
            self.assertIsInstance(v, dict, args)
            f = tools[name]
            if f.get("strict"):
                sc = f.get("parameters", {"type": "object", "properties": {}, "additionalProperties": False})
                self.assertTrue(self.valid(v, sc, sc), "%s: %s" % (name, args))
                strict += 1
        return strict

    def strict_request(self, stream, **kw):
        """One strict-tools request: its tool calls (a stream's deltas joined per index)."""
        st, _, b = chat("Book a room and set an alarm", tools=self.STRICT_TOOLS, stream=stream, **kw)
        self.assertEqual(st, 200, b)
        if not stream:
            ch = json.loads(b)["choices"][0]
            self.assertEqual(ch["finish_reason"], "tool_calls", ch)
            return ch["message"]["tool_calls"]
        evs = [json.loads(e) for e in sse(b) if e != "[DONE]"]
        self.assertEqual(evs[-1]["choices"][0]["finish_reason"], "tool_calls")
        calls = {}
        for e in evs:
            for d in e["choices"][0]["delta"].get("tool_calls") or []:
                c = calls.setdefault(d["index"], {"function": {"name": "", "arguments": ""}})
                c["function"]["name"] += d.get("function", {}).get("name") or ""
                c["function"]["arguments"] += d.get("function", {}).get("arguments") or ""
        return [calls[i] for i in sorted(calls)]

    def test_strict_tool_arguments_validate(self):
        names = {t["function"]["name"] for t in self.STRICT_TOOLS}
        marker = tokenize("<\uff5ctool\u2581calls\u2581begin\uff5c>")
        strict = calls = 0
        cases = [  # (tool_choice, parallel_tool_calls, stream, temperature)
            ("required", True, False, 1.0), ("required", False, True, 1.0), ("required", True, True, 0.7),
            ("book_room", True, False, 1.0), ("book_room", False, True, 1.3),
            ("set_alarm", True, False, 1.0), ("set_alarm", True, True, 0.5), ("ping", True, False, 1.0),
            ("auto", True, False, 1.0), ("auto", False, True, 1.0)]
        for i, (choice, parallel, stream, temp) in enumerate(cases):
            for seed in range(2):
                kw = {"tool_choice": choice} if choice in ("required", "auto") else \
                    {"tool_choice": {"type": "function", "function": {"name": choice}}}
                if choice == "auto":  # the model opens the block; the grammar takes it from there
                    kw["logit_bias"] = {str(marker[0]): 100}
                got = self.strict_request(stream, max_tokens=400, temperature=temp, seed=seed + 10 * i,
                                          parallel_tool_calls=parallel, **kw)
                self.assertGreaterEqual(len(got), 1)
                if not parallel or choice not in ("required", "auto"):
                    self.assertEqual(len(got), 1, got)
                strict += self.check_calls(got, names if choice in ("required", "auto") else {choice})
                calls += len(got)
        self.assertGreaterEqual(strict, 14)  # most calls are of the strict functions

    def test_strict_tool_beside_json_schema_answer(self):
        # tool_choice auto with a json_schema answer: either validates against its own schema
        rf = {"type": "json_schema", "json_schema": {"name": "t", "schema": self.SCHEMA}}
        marker = tokenize("<\uff5ctool\u2581calls\u2581begin\uff5c>")
        answers = set()
        for seed in range(6):  # odd seeds: the model opens the block (a +100 bias on its marker)
            st, _, b = chat("Answer or call", tools=self.STRICT_TOOLS, response_format=rf, max_tokens=300,
                            temperature=1.0, seed=seed, logit_bias={str(marker[0]): 100 * (seed % 2)})
            self.assertEqual(st, 200, b)
            ch = json.loads(b)["choices"][0]
            if ch["message"].get("tool_calls"):
                self.check_calls(ch["message"]["tool_calls"], {t["function"]["name"] for t in self.STRICT_TOOLS})
                answers.add("tool")
            else:
                self.assertTrue(self.valid(json.loads(ch["message"]["content"]), self.SCHEMA, self.SCHEMA), ch)
                answers.add("json")
        self.assertEqual(answers, {"tool", "json"})

    def test_strict_tool_schema_refused_400(self):
        def body(params, strict=True):
            return [self.STRICT_TOOLS[0], {"type": "function", "function": {
                "name": "f", "strict": strict, "parameters": params}}]
        optional = {"type": "object", "additionalProperties": False,
                    "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]}
        open_obj = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        pattern = {"type": "object", "additionalProperties": False,
                   "properties": {"a": {"type": "string", "pattern": "^x"}}, "required": ["a"]}
        for params, says in ((optional, "'required'"), (open_obj, "additionalProperties"), (pattern, "'pattern'")):
            st, _, b = chat("x", max_tokens=4, tools=body(params))
            self.assertEqual(st, 400, b)
            err = json.loads(b)["error"]
            self.assertEqual((err["type"], err["param"]), ("invalid_request_error", "tools[1].function.parameters"))
            self.assertIn(says, err["message"])
            if params is not pattern:  # not strict: accepted, the arguments any object
                st, _, b = chat("x", max_tokens=4, tools=body(params, strict=False))
                self.assertEqual(st, 200, b)

    def test_zz_sigterm_finishes_in_flight_and_exits_0(self):
        p, _ = procs["small"]
        s = connect(PORT_SMALL)
        s.sendall(raw_post({"model": MODEL, "messages": [{"role": "user", "content": "finish me"}],
                            "temperature": 0, "max_tokens": 200, "stream": True,
                            "stream_options": {"include_usage": True}}))
        # SIGTERM once the answer is under way (its first token is out)
        got = recv_until(s, lambda g: b'"delta":{"content"' in g, "the first token")
        p.send_signal(signal.SIGTERM)
        raw = got + recv_to_eof(s)
        s.close()
        self.assertEqual(p.wait(WAIT), 0)
        st, _, body = http_parse(raw)
        self.assertEqual(st, 200, raw)
        ev = sse(body)
        self.assertEqual(ev[-1], "[DONE]")
        # all 200 tokens: the in-flight answer ran to its end after SIGTERM
        self.assertEqual(json.loads(ev[-3])["choices"][0]["finish_reason"], "length")
        self.assertEqual(json.loads(ev[-2])["usage"]["completion_tokens"], 200)
        with self.assertRaises(OSError):  # no longer listening
            request(PORT_SMALL, "GET", "/health", timeout=2)


def send_together(bodies, port):
    """Sends every request but its last byte, then all the last bytes, so the
    server holds them all before it can have finished any; returns each
    (status, headers, body)."""
    socks = []
    for body in bodies:
        req = raw_post(body)
        s = connect(port)
        s.sendall(req[:-1])
        socks.append((s, req[-1:]))
    for s, last in socks:
        s.sendall(last)
    res = []
    for s, _ in socks:
        res.append(http_parse(recv_to_eof(s)))
        s.close()
    return res


def answer_text(body, stream):
    if stream:
        chunks = [json.loads(e) for e in sse(body)[:-1]]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return json.loads(body)["choices"][0]["message"]["content"]


def chat_json(port, content, **kw):
    st, _, b = chat(content, port=port, **kw)
    assert st == 200, b
    return json.loads(b)


class KvCache(unittest.TestCase):
    """The paged KV cache and the prefix cache, on the server with a 40-block
    budget (PORT_KV), and allocation failures on the OOM server."""

    def test_context_is_what_the_budget_holds(self):
        j = json.loads(request(PORT_KV, "GET", "/v1/models")[2])
        self.assertEqual(j["data"][0]["context_length"], KV_BLOCKS * 16)
        m = metrics(PORT_KV)
        self.assertEqual(m["tollgate_engine_kv_blocks_total"], KV_BLOCKS)
        self.assertEqual(m["tollgate_engine_kv_block_tokens"], 16)
        # a request that could never fit: 400 before it starts, nothing run
        steps = m["tollgate_engine_forward_steps_total"]
        st, _, b = chat("hi", port=PORT_KV, max_tokens=KV_BLOCKS * 16)
        self.assertEqual(st, 400, b)
        self.assertEqual(json.loads(b)["error"]["code"], "context_length_exceeded")
        st, _, b = chat("hello " * (KV_BLOCKS * 16), port=PORT_KV, max_tokens=1)
        self.assertEqual(st, 400, b)
        self.assertEqual(json.loads(b)["error"]["code"], "context_length_exceeded")
        self.assertEqual(metrics(PORT_KV)["tollgate_engine_forward_steps_total"], steps)
        # the largest one that fits runs, alone in the whole budget (a long
        # prompt, so that few tokens are decoded, even under a sanitizer)
        text = "hello " * (KV_BLOCKS * 16 - 40)
        n = json.loads(chat(text, port=PORT_KV, max_tokens=1)[2])["usage"]["prompt_tokens"]
        self.assertLess(n, KV_BLOCKS * 16 - 8)
        u = chat_json(PORT_KV, text, max_tokens=KV_BLOCKS * 16 - n)["usage"]
        self.assertEqual((u["prompt_tokens"], u["completion_tokens"]), (n, KV_BLOCKS * 16 - n))

    def test_gateway_default_max_tokens_is_capped_not_refused(self):
        """The gateway writes its default_max_tokens into a request that gave none and says so in
        X-Tollgate-Default-Max-Tokens: that cap is a default (capped by the context left, as ours
        is), so a prompt that fits is answered, not refused as prompt + cap > context."""
        text = "hello " * (KV_BLOCKS * 16 - 40)
        n = json.loads(chat(text, port=PORT_KV, max_tokens=1)[2])["usage"]["prompt_tokens"]
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 512}
        st, _, b = request(PORT_KV, "POST", "/v1/chat/completions", body, headers={"X-Tollgate-Default-Max-Tokens": "512"})
        self.assertEqual(st, 200, b)
        j = json.loads(b)
        # fixture: greedy on the demo model, no end-of-sentence before the context is full
        self.assertEqual((j["usage"]["completion_tokens"], j["choices"][0]["finish_reason"]), (KV_BLOCKS * 16 - n, "length"))
        # the client's own max_tokens (no header, or a header that does not name it) is the client's: 400
        for hd in ({}, {"X-Tollgate-Default-Max-Tokens": "511"}, {"X-Tollgate-Default-Max-Tokens": "512x"}):
            st, _, b = request(PORT_KV, "POST", "/v1/chat/completions", body, headers=hd)
            self.assertEqual(st, 400, (hd, b))
            self.assertEqual(json.loads(b)["error"]["code"], "context_length_exceeded")

    def test_prefix_cache_hit_billed_and_same_answer(self):
        text = "The quick brown fox %s jumps over the lazy dog. " % "prefix-test"
        a = chat_json(PORT_KV, text * 12, max_tokens=5)
        before = metrics(PORT_KV)
        b = chat_json(PORT_KV, text * 12, max_tokens=5)
        after = metrics(PORT_KV)
        n = b["usage"]["prompt_tokens"]
        self.assertGreater(n, 100)
        self.assertEqual(b["choices"][0]["message"]["content"], a["choices"][0]["message"]["content"])
        want = (n - 1) // 16 * 16
        u = b["usage"]
        self.assertEqual((u["prompt_cache_hit_tokens"], u["prompt_cache_miss_tokens"]), (want, n - want))
        self.assertEqual(u["prompt_tokens_details"], {"cached_tokens": want})
        self.assertEqual(after["tollgate_engine_prefix_cache_hit_tokens_total"]
                         - before["tollgate_engine_prefix_cache_hit_tokens_total"], want)
        self.assertEqual(after["tollgate_engine_prefix_cache_prompt_tokens_total"]
                         - before["tollgate_engine_prefix_cache_prompt_tokens_total"], n)
        self.assertGreater(after["tollgate_engine_prefix_cache_hit_ratio"], 0)
        # finished: no block is held, the prompt's blocks stay cached
        self.assertEqual(after["tollgate_engine_kv_blocks_used"], 0)
        self.assertGreaterEqual(after["tollgate_engine_kv_blocks_cached"], want // 16)
        # a prompt that shares only the start hits that start
        c = chat_json(PORT_KV, text * 6 + "and then something else entirely", max_tokens=2)
        self.assertGreaterEqual(c["usage"]["prompt_cache_hit_tokens"], 48)
        self.assertLess(c["usage"]["prompt_cache_hit_tokens"], c["usage"]["prompt_tokens"])

    def test_prefix_cache_namespaces_kept_apart(self):
        # The gateway names each customer's namespace (X-Cache-Namespace): the
        # same prompt in another namespace, or in none, hits nothing there,
        # and each namespace then hits its own blocks.
        text = "Namespaced prompt %s. " % os.urandom(6).hex() + "Tokens are sold by the million. " * 8

        def ask(ns):
            h = {"X-Cache-Namespace": ns} if ns is not None else {}
            body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0,
                    "max_tokens": 2}
            st, _, b = request(PORT_KV, "POST", "/v1/chat/completions", body, headers=h)
            self.assertEqual(st, 200, b)
            return json.loads(b)

        a1 = ask("c1")
        n = a1["usage"]["prompt_tokens"]
        self.assertGreater(n, 64)
        want = (n - 1) // 16 * 16
        self.assertEqual(a1["usage"]["prompt_cache_hit_tokens"], 0)
        self.assertEqual(ask("c1")["usage"]["prompt_cache_hit_tokens"], want, "its own namespace hits")
        for other in ("c2", "c11", None):
            u = ask(other)["usage"]
            self.assertEqual((u["prompt_cache_hit_tokens"], u["prompt_tokens_details"]["cached_tokens"]), (0, 0),
                             "namespace %r must not see c1's blocks" % other)
            self.assertEqual(ask(other)["usage"]["prompt_cache_hit_tokens"], want, "%r hits its own" % other)
        self.assertEqual(ask("c1")["usage"]["prompt_cache_hit_tokens"], want)

    def test_preemption_leaves_results_unchanged(self):
        # 6 greedy answers of 150 tokens need 6 x 14 blocks of the 40: running
        # together, the youngest are preempted and recomputed later
        prompts = ["Preemption %d: %s" % (i, "word%d " % i * 20) for i in range(6)]
        solo = [chat_json(PORT_KV, p, max_tokens=150)["choices"][0]["message"]["content"] for p in prompts]
        pre0 = metrics(PORT_KV)["tollgate_engine_preemptions_total"]
        res = send_together([{"model": MODEL, "messages": [{"role": "user", "content": p}], "temperature": 0,
                              "max_tokens": 150, "stream": i % 2 == 0} for i, p in enumerate(prompts)], PORT_KV)
        for i, (st, _, b) in enumerate(res):
            self.assertEqual(st, 200, b)
            self.assertEqual(answer_text(b, i % 2 == 0), solo[i], "prompt %d" % i)
        m = metrics(PORT_KV)
        print("  preemptions: %d" % (m["tollgate_engine_preemptions_total"] - pre0), file=sys.stderr)
        self.assertGreater(m["tollgate_engine_preemptions_total"], pre0)
        self.assertEqual(m["tollgate_engine_kv_blocks_used"], 0)

    def test_preemption_with_choices_stops_and_edges(self):
        # under preemption churn, the other promises too: n seeded choices, stop strings, log-probs,
        # max_tokens 1 and a request that fills the whole budget, streamed and not, each equal to
        # what it gives alone (a preempted job keeps its sampler, stop matcher and log-probs)
        def body(i, **kw):
            b = {"model": MODEL, "messages": [{"role": "user", "content": "Churn %d: %s" % (i, "w%d " % i * (4 + 9 * i))}],
                 "temperature": 0, "stream": i % 2 == 1}
            b.update(kw)
            return b
        full = body(7, max_tokens=1)
        n = json.loads(request(PORT_KV, "POST", "/v1/chat/completions", dict(full, stream=False))[2])["usage"]["prompt_tokens"]
        bodies = [body(0, max_tokens=1), body(1, n=3, temperature=0.9, seed=11, max_tokens=120),
                  body(2, stop=["e", "the"], max_tokens=150), body(3, logprobs=True, top_logprobs=2, max_tokens=100),
                  body(4, n=2, temperature=0.7, seed=5, max_tokens=140), body(5, max_tokens=200),
                  body(6, temperature=0.8, seed=3, max_tokens=160, stop=["a"]), dict(full, max_tokens=KV_BLOCKS * 16 - n)]

        def norm(st, b, stream):
            self.assertEqual(st, 200, b)
            if not stream:
                j = json.loads(b)
                return [(c["message"]["content"], c["finish_reason"], c["logprobs"]) for c in j["choices"]], j["usage"]
            ev = sse(b)
            self.assertEqual(ev[-1], "[DONE]")
            out = {}
            for c in (json.loads(e) for e in ev[:-1]):
                for x in c["choices"]:
                    t, f, lp = out.get(x["index"], ("", None, []))
                    out[x["index"]] = (t + (x["delta"].get("content") or ""), x["finish_reason"] or f,
                                       lp + ((x.get("logprobs") or {}).get("content") or []))
            return [out[k] for k in sorted(out)], None
        solo = []
        for b in bodies:
            st, _, r = request(PORT_KV, "POST", "/v1/chat/completions", b)
            solo.append(norm(st, r, b["stream"]))
        pre0 = metrics(PORT_KV)["tollgate_engine_preemptions_total"]
        res = send_together(bodies, PORT_KV)
        for i, (st, _, b) in enumerate(res):
            self.assertEqual(norm(st, b, bodies[i]["stream"])[0], solo[i][0], "request %d" % i)
        m = metrics(PORT_KV)
        self.assertGreater(m["tollgate_engine_preemptions_total"], pre0)
        self.assertEqual(m["tollgate_engine_kv_blocks_used"], 0)

    def test_disconnect_frees_blocks(self):
        s = connect(PORT_KV)
        s.sendall(raw_post({"model": MODEL, "messages": [{"role": "user", "content": "long one"}],
                            "max_tokens": 500, "stream": True}))
        recv_until(s, lambda got: got.count(b"data: ") >= 40, "40 SSE events")
        m = metrics(PORT_KV)
        self.assertEqual(m["tollgate_engine_active_sequences"], 1)
        self.assertGreaterEqual(m["tollgate_engine_kv_blocks_used"], 2)
        s.close()
        m = wait_metrics("the hung-up stream to be cancelled",
                         lambda m: m["tollgate_engine_requests_in_flight"] == 0, port=PORT_KV)
        self.assertEqual(m["tollgate_engine_kv_blocks_used"], 0)
        self.assertEqual(m["tollgate_engine_kv_blocks_used"] + m["tollgate_engine_kv_blocks_cached"]
                         + m["tollgate_engine_kv_blocks_free"], KV_BLOCKS)

    def test_allocation_failure_fails_one_request_only(self):
        shorts = ["Short one %d" % i for i in range(2)]
        want = [chat_json(PORT, p, max_tokens=6)["choices"][0]["message"]["content"] for p in shorts]
        bodies = [{"model": MODEL, "messages": [{"role": "user", "content": "x " * 700}], "max_tokens": 4}]
        bodies += [{"model": MODEL, "messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": 6}
                   for p in shorts]
        res = send_together(bodies, PORT_OOM)
        self.assertEqual(res[0][0], 500, res[0][2])
        e = json.loads(res[0][2])["error"]
        self.assertEqual(e["code"], "engine_error")
        self.assertIn("out of memory", e["message"])
        for i in (1, 2):
            self.assertEqual(res[i][0], 200, res[i][2])
            self.assertEqual(answer_text(res[i][2], False), want[i - 1])
        # streamed, the failure comes after the head and the role chunk: an error event, no [DONE]
        # (the SDKs raise it as an APIError), and nothing is left running
        body = dict(bodies[0], stream=True, stream_options={"include_usage": True})
        st, h, b = request(PORT_OOM, "POST", "/v1/chat/completions", body)
        self.assertEqual(st, 200, b)
        ev = sse(b)
        self.assertEqual(json.loads(ev[0])["choices"][0]["delta"], {"role": "assistant", "content": ""})
        self.assertEqual(len(ev), 2, ev)
        e = json.loads(ev[1])["error"]
        self.assertEqual((set(e), e["type"], e["code"], e["param"]),
                         ({"message", "type", "param", "code"}, "server_error", "engine_error", None))
        m = wait_metrics("the failed stream to end", lambda m: m["tollgate_engine_requests_in_flight"] == 0, port=PORT_OOM)
        self.assertEqual(m["tollgate_engine_active_sequences"], 0)
        # the worker is still there and serves
        self.assertEqual(request(PORT_OOM, "GET", "/health")[0], 200)
        self.assertEqual(chat_json(PORT_OOM, shorts[0], max_tokens=6)["choices"][0]["message"]["content"], want[0])


FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def complete(prompt="def fib(n):", port=PORT, **kw):
    body = {"model": MODEL, "prompt": prompt, "temperature": 0}
    body.update(kw)
    return request(port, "POST", "/v1/completions", body)


def greedy_ids(ids, k):
    """The k ids greedy decoding appends to ids, from `tollgate-engine logits
    --top` (an independent path: no scheduler, no sampler), among the ids the
    tokenizer knows (as the server samples)."""
    with open(os.path.join(MODEL_DIR, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    n_vocab = max(list(tj["model"]["vocab"].values()) + [t["id"] for t in tj["added_tokens"]]) + 1
    p = subprocess.Popen([ENGINE, "logits", "--model", MODEL_DIR, "--top", "8"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    out = []
    try:
        for _ in range(k):
            p.stdin.write(json.dumps(ids + out) + "\n")
            p.stdin.flush()
            top = json.loads(p.stdout.readline())["top"]
            best = max(lg for i, lg in top if i < n_vocab)
            out.append(min(i for i, lg in top if i < n_vocab and lg == best))  # ties to the lower id
    finally:
        p.stdin.close()
        p.stdout.close()
        p.wait(WAIT)
    return out


def detokenize(ids):
    """The text of ids as an answer shows it: special tokens skipped (as the server does)."""
    with open(os.path.join(MODEL_DIR, "tokenizer.json"), encoding="utf-8") as f:
        special = {t["id"] for t in json.load(f)["added_tokens"] if t.get("special")}
    ids = [i for i in ids if i not in special]
    p = subprocess.run([ENGINE, "detokenize", "--model", MODEL_DIR], input=json.dumps(ids) + "\n",
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


class Completions(unittest.TestCase):
    """POST /v1/completions: the legacy text_completion API and DeepSeek's FIM."""

    def test_greedy_continues_the_prompt(self):
        prompt = "def fibonacci(n):\n    "
        ids = tokenize(BOS + prompt)
        self.assertEqual(ids[0], tokenize(BOS)[0])
        want = greedy_ids(ids, 5)
        st, h, b = complete(prompt, max_tokens=5)
        self.assertEqual(st, 200, b)
        r = json.loads(b)
        self.assertEqual(r["object"], "text_completion")
        self.assertEqual(r["id"], "cmpl-" + h["x-request-id"])
        self.assertEqual(r["model"], MODEL)
        self.assertEqual(r["system_fingerprint"], "fp_tollgate")
        self.assertIsInstance(r["created"], int)
        self.assertEqual(r["choices"], [{"text": detokenize(want), "index": 0, "logprobs": None,
                                         "finish_reason": "length"}])
        u = r["usage"]
        self.assertEqual(u, {"prompt_tokens": len(ids), "completion_tokens": 5, "total_tokens": len(ids) + 5,
                             "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": len(ids),
                             "prompt_tokens_details": {"cached_tokens": 0},
                             "completion_tokens_details": {"reasoning_tokens": 0}})
        # the default max_tokens is 16 (OpenAI's for completions); an array of one string is the string
        st, _, b = complete([prompt])
        r = json.loads(b)
        self.assertEqual(r["usage"]["completion_tokens"], 16)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")
        self.assertTrue(r["choices"][0]["text"].startswith(detokenize(want)))

    def test_fim_prompt(self):
        prompt, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
        ids = tokenize(BOS + FIM_BEGIN + prompt + FIM_HOLE + suffix + FIM_END)
        # the FIM markers are single special tokens of the DeepSeek-V3 tokenizer
        marks = [tokenize(m) for m in (FIM_BEGIN, FIM_HOLE, FIM_END)]
        for m in marks:
            self.assertEqual(len(m), 1)
        self.assertEqual(ids[:2], tokenize(BOS) + marks[0])
        self.assertEqual(ids[-1], marks[2][0])
        self.assertEqual(ids.count(marks[1][0]), 1)
        want = greedy_ids(ids, 4)
        st, _, b = complete(prompt, suffix=suffix, max_tokens=4)
        self.assertEqual(st, 200, b)
        r = json.loads(b)
        self.assertEqual(r["choices"][0]["text"], detokenize(want))
        self.assertEqual(r["usage"]["prompt_tokens"], len(ids))
        self.assertEqual(r["usage"]["completion_tokens"], 4)
        # suffix null is no suffix; "" is a FIM request with an empty suffix
        st, _, b = complete(prompt, suffix=None, max_tokens=1)
        self.assertEqual(json.loads(b)["usage"]["prompt_tokens"], len(tokenize(BOS + prompt)))
        st, _, b = complete(prompt, suffix="", max_tokens=1)
        self.assertEqual(json.loads(b)["usage"]["prompt_tokens"],
                         len(tokenize(BOS + FIM_BEGIN + prompt + FIM_HOLE + FIM_END)))

    def test_stream_equals_plain(self):
        for kw in ({}, {"suffix": " + 1"}, {"echo": True}, {"logprobs": 3}, {"n": 2, "seed": 7, "temperature": 1}):
            st, _, b = complete("x = ", max_tokens=9, **kw)
            self.assertEqual(st, 200, b)
            plain = json.loads(b)
            st, h, b = complete("x = ", max_tokens=9, stream=True, stream_options={"include_usage": True}, **kw)
            self.assertEqual(st, 200, b)
            self.assertTrue(h["content-type"].startswith("text/event-stream"))
            ev = sse(b)
            self.assertEqual(ev[-1], "[DONE]")
            chunks = [json.loads(e) for e in ev[:-1]]
            self.assertEqual({c["id"] for c in chunks}, {plain["id"].split("-", 1)[0] + "-" + h["x-request-id"]})
            for c in chunks:
                self.assertEqual(c["object"], "text_completion")
                self.assertEqual(c["model"], MODEL)
            body = [c for c in chunks if c["choices"]]
            for c in body:
                self.assertIsNone(c["usage"])
                self.assertEqual(set(c["choices"][0]), {"text", "index", "logprobs", "finish_reason"})
            for ch in plain["choices"]:
                mine = [c["choices"][0] for c in body if c["choices"][0]["index"] == ch["index"]]
                self.assertEqual("".join(c["text"] for c in mine), ch["text"], kw)
                self.assertEqual(mine[-1]["finish_reason"], ch["finish_reason"])
                self.assertEqual([c["finish_reason"] for c in mine[:-1]], [None] * (len(mine) - 1))
                if "logprobs" in kw:
                    lp = {k: sum((c["logprobs"][k] for c in mine if c["logprobs"]), []) for k in ch["logprobs"]}
                    self.assertEqual(lp, ch["logprobs"])
            self.assertEqual(chunks[-1]["choices"], [])
            self.assertEqual(chunks[-1]["usage"], plain["usage"])

    def test_echo_and_logprobs(self):
        st, _, b = complete("Once upon", max_tokens=6, echo=True)
        plain = json.loads(complete("Once upon", max_tokens=6)[2])
        self.assertEqual(json.loads(b)["choices"][0]["text"], "Once upon" + plain["choices"][0]["text"])
        st, _, b = complete("Once upon", max_tokens=6, logprobs=2)
        self.assertEqual(st, 200, b)
        ch = json.loads(b)["choices"][0]
        self.assertEqual(ch["text"], plain["choices"][0]["text"])
        lp = ch["logprobs"]
        self.assertEqual(set(lp), {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
        self.assertEqual(len(lp["tokens"]), 6)
        self.assertEqual("".join(lp["tokens"]), ch["text"])
        self.assertEqual(lp["text_offset"][0], 0)
        for i in range(1, 6):
            self.assertEqual(lp["text_offset"][i], lp["text_offset"][i - 1] + len(lp["tokens"][i - 1]))
        for tok, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            self.assertLess(l, 0)
            self.assertIn(len(top), (2, 3))
            self.assertEqual(top[tok], l)  # greedy: the chosen token is the best one
            self.assertEqual(max(top.values()), l)
        st, _, b = complete("Once upon", max_tokens=2, logprobs=0)
        top = json.loads(b)["choices"][0]["logprobs"]["top_logprobs"]
        self.assertEqual([len(t) for t in top], [1, 1])

    def test_cached_tokens_on_repeat(self):
        prompt = "Completions cache test: " + " ".join("w%d" % i for i in range(40))
        n = len(tokenize(BOS + prompt))
        self.assertGreater(n, 33)
        u1 = json.loads(complete(prompt, max_tokens=2)[2])["usage"]
        self.assertEqual((u1["prompt_tokens"], u1["prompt_cache_hit_tokens"]), (n, 0))
        u2 = json.loads(complete(prompt, max_tokens=2)[2])["usage"]
        want = (n - 1) // 16 * 16
        self.assertEqual((u2["prompt_cache_hit_tokens"], u2["prompt_cache_miss_tokens"]), (want, n - want))
        self.assertEqual(u2["prompt_tokens_details"], {"cached_tokens": want})

    def test_400s(self):
        def bad(body, param, code=None):
            st, _, b = request(PORT, "POST", "/v1/completions", body)
            self.assertEqual(st, 400, (body, b))
            e = json.loads(b)["error"]
            self.assertEqual(e["type"], "invalid_request_error", body)
            self.assertEqual(e["param"], param, body)
            if code:
                self.assertEqual(e["code"], code, body)
        m = {"model": MODEL}
        bad(m, "prompt", "missing_required_parameter")
        bad(dict(m, prompt=5), "prompt", "invalid_type")
        bad(dict(m, prompt=[1, 2]), "prompt", "invalid_value")
        bad(dict(m, prompt=["a", "b"]), "prompt", "invalid_value")
        bad(dict(m, prompt="a", suffix=5), "suffix", "invalid_type")
        bad(dict(m, prompt="a", echo="yes"), "echo", "invalid_type")
        bad(dict(m, prompt="a", logprobs=21), "logprobs", "invalid_value")
        bad(dict(m, prompt="a", logprobs=True), "logprobs", "invalid_type")
        bad(dict(m, prompt="a", logprobs=1, echo=True), "logprobs", "unsupported_parameter")
        bad(dict(m, prompt="a", best_of=2), "best_of", "invalid_value")
        bad(dict(m, prompt="a", messages=[]), "messages", "unknown_parameter")
        bad(dict(m, prompt="a", top_logprobs=2), "top_logprobs", "unknown_parameter")
        bad(dict(m, prompt="a", max_tokens=0), "max_tokens", "invalid_value")
        bad(dict(m, prompt="a", temperature=3), "temperature", "invalid_value")
        bad(dict(m, prompt="a", max_tokens=10 ** 6), "max_tokens", "context_length_exceeded")
        # a prompt longer than the context: the prompt is named, in param and message
        ctx = json.loads(request(PORT, "GET", "/v1/models")[2])["data"][0]["context_length"]
        st, _, b = request(PORT, "POST", "/v1/completions", dict(m, prompt="hello " * ctx))
        e = json.loads(b)["error"]
        self.assertEqual((st, e["param"], e["code"]), (400, "prompt", "context_length_exceeded"), b)
        self.assertIn("your prompt resulted in", e["message"])
        self.assertNotIn("messages", e["message"])
        bad(dict(m, prompt="a", logit_bias={"999999999": 1}), "logit_bias", "invalid_value")
        # best_of = n is served: n choices
        st, _, b = request(PORT, "POST", "/v1/completions", dict(m, prompt="a", best_of=2, n=2, max_tokens=1))
        self.assertEqual(st, 200, b)
        self.assertEqual([c["index"] for c in json.loads(b)["choices"]], [0, 1])
        st, _, b = request(PORT, "POST", "/completions", dict(m, prompt="a", max_tokens=1))
        self.assertEqual(st, 200, b)
        st, h, b = request(PORT, "GET", "/v1/completions")
        self.assertEqual((st, h.get("allow")), (405, "POST"))
        st, _, b = request(PORT, "POST", "/v1/completions", dict(m, model="nope", prompt="a"))
        self.assertEqual(st, 404)

    def test_disconnect_cancels(self):
        before = metrics()
        s = connect(PORT)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(
                      data := json.dumps({"model": MODEL, "prompt": "long", "max_tokens": 3000,
                                          "stream": True}).encode()) + data)
        recv_until(s, lambda got: got.count(b"data: ") >= 4, "4 SSE events")
        s.close()
        m = wait_metrics("the hung-up completion to be cancelled",
                         lambda m: m["tollgate_engine_requests_in_flight"] == 0)
        self.assertEqual(m["tollgate_engine_requests_cancelled_total"],
                         before["tollgate_engine_requests_cancelled_total"] + 1)
        self.assertLess(m["tollgate_engine_completion_tokens_total"] - before["tollgate_engine_completion_tokens_total"],
                        3000)


if __name__ == "__main__":
    main()
