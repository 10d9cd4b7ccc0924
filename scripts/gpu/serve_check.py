"""serve_check.py ENGINE MODEL_DIR PORT — continuous batching and the prefix cache on cuda:0.

Starts `ENGINE serve --device cpu` on PORT and `--device cuda:0` on PORT+1 over the same model,
sends 8 greedy chat requests at once to each (4 of them share a 300-character prefix), then the
4 prefix-sharing ones again, then 4 seeded sampled ones (temperature 0.8, top_p 0.9, top_k 40:
sampled on the device by CUDA, on the host by the CPU, the same draws).  Passes when every request
is answered 200 with a non-empty answer, the second round reports prompt_cache_hit_tokens > 0 on
CUDA, the CUDA answers equal the CPU answers for at least 7 of the 8 greedy prompts and 3 of the
4 sampled ones (random weights make near-ties possible; every difference is printed).  Exit 1
otherwise.
"""
import json
import subprocess
import sys
import threading
import time
import urllib.request


def req(port, body, timeout=300):
    r = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % port, data=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=timeout) as f:
        return f.status, json.loads(f.read())


def wait_up(port, proc, secs=180):
    t = time.time()
    while time.time() - t < secs:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as f:
                if f.status == 200:
                    return True
        except Exception:
            time.sleep(0.5)
    return False


def round_(port, model, prompts, sampled=False):
    out = [None] * len(prompts)

    def one(i):
        body = {"model": model, "messages": [{"role": "user", "content": prompts[i]}], "temperature": 0,
                "max_tokens": 24}
        if sampled:
            body.update(temperature=0.8, top_p=0.9, top_k=40, seed=1000 + i)
        try:
            out[i] = req(port, body)
        except Exception as e:  # noqa: BLE001
            out[i] = (0, {"error": repr(e)})

    th = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return out


def main():
    engine, model_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    devs = sys.argv[4:6] if len(sys.argv) > 5 else ["cpu", "cuda:0"]  # (two cpu: a dry run without a GPU)
    model = model_dir.rstrip("/").split("/")[-1]
    shared = "You are a careful assistant. " * 10
    prompts = [shared + q for q in ("What is 2+2?", "Name a color.", "Say hello.", "Count to five.")]
    prompts += ["Tell me a story.", "Why is the sky blue?", "List three fruits.", "What is tollgate?"]
    procs, ok = [], True
    try:
        for i, dev in enumerate(devs):
            p = subprocess.Popen([engine, "serve", "--model", model_dir, "--device", dev, "--listen",
                                  "127.0.0.1:%d" % (port + i), "--kv-mem", "2147483648"],
                                 stdout=subprocess.DEVNULL, stderr=open("serve-%d.log" % i, "w"))
            procs.append(p)
            if not wait_up(port + i, p):
                print("serve --device %s did not come up; the end of serve-%d.log:" % (dev, i))
                with open("serve-%d.log" % i) as f:
                    print(f.read()[-3000:])
                return 1
        res = {}
        for i, dev in enumerate(devs):
            t = time.time()
            r1 = round_(port + i, model, prompts)
            r2 = round_(port + i, model, prompts[:4])
            r3 = round_(port + i, model, prompts[4:], sampled=True)
            res[i] = (r1, r2, r3)
            hits = [b.get("usage", {}).get("prompt_cache_hit_tokens", 0) for _, b in r2]
            bad = [b for s, b in r1 + r2 + r3 if s != 200 or not b.get("choices")]
            print("%-7s %d requests in %.1f s, %d failed, prefix-cache hits in round 2: %s"
                  % (dev, len(r1) + len(r2) + len(r3), time.time() - t, len(bad), hits))
            if bad:
                print("  failures: %s" % bad[:2])
                ok = False
            if i == 1 and not all(h > 0 for h in hits):
                ok = False

        def text(sb):
            s_, b = sb
            return b.get("choices", [{}])[0].get("message", {}).get("content") if s_ == 200 else None

        for what, k_round, need in (("greedy", 0, 7), ("sampled (seeded)", 2, 3)):
            same = 0
            for k, (a, b) in enumerate(zip(res[0][k_round], res[1][k_round])):
                ta, tb = text(a), text(b)
                if ta is not None and ta == tb:
                    same += 1
                else:
                    print("  %s prompt %d differs: %s %r / %s %r" % (what, k, devs[0], ta, devs[1], tb))
            n = len(res[0][k_round])
            print("%s answers equal on %s and %s for %d of %d prompts (need %d)" % (what, devs[0], devs[1], same, n,
                                                                                   need))
            ok &= same >= need
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    print("serve_check: %s" % ("ok" if ok else "FAIL"))
    return 0 if ok else 1


sys.exit(main())
