"""Small requests' latency while 1 MiB prompts stream in (issue 8: counting a
large prompt must not stall the other connections).

usage: large.py PORT KEY MODEL CAFILE [SECONDS]

Eight clients send small chat requests back to back on kept-alive
connections (one per connection, so they spread over the event loops) and
record each one's latency; first alone, then while four other clients send
1 MiB prompts (uploaded in 64 KiB pieces) back to back.  Prints p50/p99/max of
the small requests in both phases and how many large prompts were answered.
A benchmark, not a test: it asserts nothing."""

import http.client
import json
import ssl
import sys
import threading
import time

PORT, KEY, MODEL, CAFILE = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
SECONDS = float(sys.argv[5]) if len(sys.argv) > 5 else 8.0
SMALL = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()
# about 1 MiB of varied text (so the tokenizer does real work)
WORDS = " ".join("token%d sells by the million, word %d;" % (i % 977, i) for i in range(40000))
LARGE = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": WORDS[:1040000]}],
                    "max_tokens": 8}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer " + KEY}


def conn():
    ctx = ssl.create_default_context(cafile=CAFILE)
    return http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx, timeout=60)


def small_client(stop, lat):
    c = conn()
    while not stop.is_set():
        t0 = time.perf_counter()
        c.request("POST", "/v1/chat/completions", body=SMALL, headers=HEADERS)
        r = c.getresponse()
        r.read()
        if r.status == 200:
            lat.append((time.perf_counter() - t0) * 1000)
    c.close()


def large_client(stop, done):
    c = conn()
    while not stop.is_set():
        c.putrequest("POST", "/v1/chat/completions")
        for k, v in HEADERS.items():
            c.putheader(k, v)
        c.putheader("Content-Length", str(len(LARGE)))
        c.endheaders()
        for i in range(0, len(LARGE), 65536):
            c.send(LARGE[i:i + 65536])
        r = c.getresponse()
        r.read()
        done.append(r.status)
    c.close()


def phase(nlarge):
    stop = threading.Event()
    lat, done = [], []
    ts = [threading.Thread(target=small_client, args=(stop, lat)) for _ in range(8)]
    ts += [threading.Thread(target=large_client, args=(stop, done)) for _ in range(nlarge)]
    for t in ts:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in ts:
        t.join(120)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
    return len(lat), q(0.5), q(0.99), lat[-1] if lat else float("nan"), done


print("small requests (8 clients) while 1 MiB prompts stream in (%.0f s each):" % SECONDS)
for nlarge in (0, 4):
    n, p50, p99, mx, done = phase(nlarge)
    ok = sum(1 for s in done if s == 200)
    print("  %d large clients: %6d small requests, p50 %7.2f ms, p99 %7.2f ms, max %7.2f ms; large answered %d/%d"
          % (nlarge, n, p50, p99, mx, ok, len(done)))
