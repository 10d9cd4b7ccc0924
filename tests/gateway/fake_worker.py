"""A scripted stand-in for an engine worker, for the gateway's own tests of
the failure paths the real engine cannot be made to show on demand (silence,
a stream cut in the middle, a flood of chunks).  It speaks the same wire
format as `tollgate-engine serve`: HTTP/1.1, chunked SSE streams with a usage
chunk when stream_options.include_usage is set (and then "usage": null in every
other chunk, as the engine and OpenAI write them).

The last user message picks the behaviour:
  "sleep:S"     wait S seconds before the answer head
  "stall:S"     stream one chunk, then wait S seconds, then finish
  "hold:T"      wait before the answer head until the test releases T (touches
                $FAKE_WORKER_HOLD_DIR/release-T), at most HOLD_MAX seconds
  "stallhold:T" stream one chunk, then wait until T is released, then finish
  "stall2hold:T" stream one chunk, wait 2.5 s, a second chunk, then wait until T is released
  "cut"         stream two chunks, then close without the last chunk
  "toolcut"     stream one tool call (get_weather, arguments "Paris" x 30), then close
  "flood:N"     stream N chunks of 1 KiB each
  "status:C"    answer status C with an OpenAI error body
  "plain:C"     answer status C with a text/plain body
  "usage-in-last"  put usage on the last content chunk (no usage-only chunk)
  "nousage:N"   a whole answer (not a stream) of N words " cheese" and a tool call, without usage
  "keepalive"   an SSE comment ": keep-alive" before the first chunk (the engine's, while a
                request waits in its queue)
  "noframe"     stream 17 MiB that never ends an SSE event
  "head:KIND"   a whole answer (not a stream) framed oddly: KIND "xchunked" or "gzip-chunked" (that
                Transfer-Encoding, the body chunked), "two-lengths" (Content-Length N+5, then N; N
                bytes and 5 more), "te-and-cl" (chunked, and a Content-Length too)
  anything else echo it back in 3 chunks
POST /v1/completions (a body with "prompt"): the prompt picks the behaviour ("cut",
"nousage:N" without the tool call, anything else), answered as text_completion.
GET /metrics answers a few engine gauges (Prometheus text) and appends one line to
$FAKE_WORKER_LOG.metrics, so a test can count the gateway's polls of it.
Every request is appended to the file named by $FAKE_WORKER_LOG as one JSON
line {"headers":{...},"body":{...}}; a stream the gateway hung up on adds a
line {"cancelled": "<X-Request-Id>"} to $FAKE_WORKER_LOG.cancelled.
usage: fake_worker.py PORT
"""

import json
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

LOG = os.environ.get("FAKE_WORKER_LOG")
HOLD_DIR = os.environ.get("FAKE_WORKER_HOLD_DIR") or os.path.dirname(os.path.abspath(LOG or "."))
HOLD_MAX = 120.0  # a hang guard only: the tests release what they hold


def hold(token):
    """Wait until the test releases token: the worker's silence then has one
    end the test controls, so a gateway timeout cannot race it."""
    path = os.path.join(HOLD_DIR, "release-" + token)
    deadline = time.monotonic() + HOLD_MAX
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, status, obj):
        b = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/metrics":
            if LOG:
                with open(LOG + ".metrics", "a") as f:
                    f.write("GET /metrics\n")
            b = (b"# TYPE tollgate_engine_running_sequences gauge\ntollgate_engine_running_sequences 0\n"
                 b"tollgate_engine_completion_tokens_total 0\n")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
        else:
            self.send_json(404, {"error": {"message": "no", "type": "x", "param": None, "code": None}})

    def send_framed(self, kind, b):
        """b as a 200 whose framing is kind (see "head:KIND" above)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if kind == "two-lengths":
            self.send_header("Content-Length", str(len(b) + 5))
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b + b"junk!")
            return
        te = {"xchunked": "xchunked", "gzip-chunked": "gzip, chunked", "te-and-cl": "chunked"}[kind]
        self.send_header("Transfer-Encoding", te)
        if kind == "te-and-cl":
            self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.chunk(b)
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, obj):
        self.chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def do_POST(self):
        try:
            self.answer()
        except (BrokenPipeError, ConnectionResetError):  # the gateway closed: the generation is cancelled
            if LOG:
                with open(LOG + ".cancelled", "a") as f:
                    f.write(json.dumps({"cancelled": self.headers.get("X-Request-Id", "none")}) + "\n")
            self.close_connection = True

    def answer(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        req = json.loads(raw)
        if LOG:
            with open(LOG, "a") as f:
                f.write(json.dumps({"headers": dict(self.headers), "body": req,
                                    "peer_port": self.client_address[1], "path": self.path}) + "\n")
        rid = self.headers.get("X-Request-Id", "none")
        if "prompt" in req:  # POST /v1/completions
            self.answer_completion(req, rid)
            return
        text = req["messages"][-1].get("content", "")
        prompt = len(json.dumps(req["messages"])) // 4 + 1
        if text.startswith("sleep:"):
            time.sleep(float(text[6:]))
        if text.startswith("hold:"):
            hold(text[5:])
        if text.startswith("plain:"):  # an error that is not OpenAI-shaped
            b = b"upstream says no"
            self.send_response(int(text[6:]))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
            return
        if text.startswith("status:"):
            code = int(text[7:])
            self.send_json(code, {"error": {"message": "scripted", "type": "x", "param": None, "code": "scripted"}})
            return
        words = ["Hello", " from", " " + text[:40]]
        if text.startswith("flood:"):
            words = ["y" * 1024] * int(text[6:])
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words),
                 "prompt_cache_hit_tokens": 1, "prompt_cache_miss_tokens": prompt - 1,
                 "prompt_tokens_details": {"cached_tokens": 1},
                 "completion_tokens_details": {"reasoning_tokens": 0}}
        base = {"id": "chatcmpl-" + rid, "created": int(time.time()), "model": req["model"]}
        if text.startswith("nousage:") and not req.get("stream"):  # an upstream that reports no usage
            msg = {"role": "assistant", "content": " cheese" * int(text[8:]), "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                  "arguments": json.dumps({"city": "Oslo " * 10})}}]}
            self.send_json(200, dict(base, object="chat.completion", choices=[
                {"index": 0, "message": msg, "finish_reason": "tool_calls"}]))
            return
        if text.startswith("head:") and not req.get("stream"):
            b = json.dumps(dict(base, object="chat.completion", usage=usage, choices=[
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}]))
            self.send_framed(text[5:], b.encode())
            return
        if not req.get("stream"):
            self.send_json(200, dict(base, object="chat.completion", usage=usage, choices=[
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}]))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")  # it closes after a stream: says so, as HTTP/1.1 asks
        self.end_headers()
        ck = dict(base, object="chat.completion.chunk")
        include_usage = (req.get("stream_options") or {}).get("include_usage")
        if text == "toolcut":  # a whole tool call in one chunk (as the engine sends it), then the cut
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris " * 30})}}
            self.event(dict(ck, choices=[{"index": 0, "delta": {"role": "assistant", "content": None,
                                                                "tool_calls": [call]}, "finish_reason": None}]))
            self.wfile.flush()
            self.connection.shutdown(2)
            self.close_connection = True
            return
        if text == "noframe":  # 17 MiB without an event boundary
            self.chunk(b"data: ")
            for _ in range(17):
                self.chunk(b"x" * (1 << 20))
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        if text == "keepalive":
            self.chunk(b": keep-alive\n\n")
        for i, w in enumerate(words):
            c = dict(ck, choices=[{"index": 0, "delta": {"content": w}, "finish_reason": None}])
            if include_usage:
                c["usage"] = None
            if text == "usage-in-last" and i == len(words) - 1:
                c["usage"] = usage
            self.event(c)
            if text == "cut" and i == 1:
                self.wfile.flush()
                self.connection.shutdown(2)
                self.close_connection = True
                return
            if text.startswith("stall:") and i == 0:
                time.sleep(float(text[6:]))
            if text.startswith("stallhold:") and i == 0:
                hold(text[10:])
            if text.startswith("stall2hold:") and i == 0:
                time.sleep(2.5)
            if text.startswith("stall2hold:") and i == 1:
                hold(text[11:])
        self.event(dict(ck, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        **({"usage": None} if include_usage else {})))
        if text != "usage-in-last" and include_usage:
            self.event(dict(ck, choices=[], usage=usage))
        self.chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def answer_completion(self, req, rid):
        text = req["prompt"]
        prompt = len(text) // 4 + 1
        words = ["Hello", " from", " " + text[:40]]
        echo = text if req.get("echo") else ""  # echo: the text starts with the prompt (a chunk of its own)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words),
                 "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": prompt,
                 "prompt_tokens_details": {"cached_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0}}
        base = {"id": "cmpl-" + rid, "object": "text_completion", "created": int(time.time()), "model": req["model"]}
        if not req.get("stream"):
            if text.startswith("nousage:"):
                self.send_json(200, dict(base, choices=[{"text": echo + " cheese" * int(text[8:].split()[0]), "index": 0,
                                                         "logprobs": None, "finish_reason": "length"}]))
            else:
                self.send_json(200, dict(base, usage=usage, choices=[{"text": "".join(words), "index": 0,
                                                                      "logprobs": None, "finish_reason": "stop"}]))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        include_usage = (req.get("stream_options") or {}).get("include_usage")
        extra = {"usage": None} if include_usage else {}
        if echo:
            self.event(dict(base, choices=[{"text": echo, "index": 0, "logprobs": None, "finish_reason": None}], **extra))
        for i, w in enumerate(words):
            self.event(dict(base, choices=[{"text": w, "index": 0, "logprobs": None, "finish_reason": None}], **extra))
            if text.split(" ")[0] == "cut" and i == 1:
                self.wfile.flush()
                self.connection.shutdown(2)
                self.close_connection = True
                return
        self.event(dict(base, choices=[{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}], **extra))
        if include_usage:
            self.event(dict(base, choices=[], usage=usage))
        self.chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
