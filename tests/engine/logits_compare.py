"""logits_compare.py NAME REF.jsonl GOT.jsonl TOL — two `tollgate-engine logits` outputs
(one {"logits": [...]} per line) agree: per line the worst |diff| is at most TOL times
the reference's largest |logit|, and the argmax (greedy token) is the same.
Prints one line per model; exit 1 on any disagreement."""
import json
import sys


def main():
    name, ref, got, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    a = [json.loads(l)["logits"] for l in open(ref)]
    b = [json.loads(l)["logits"] for l in open(got)]
    if len(a) != len(b) or not a:
        print("%s: %d reference lines, %d lines" % (name, len(a), len(b)))
        sys.exit(1)
    worst, bad = 0.0, 0
    for x, y in zip(a, b):
        scale = max(abs(v) for v in x) or 1.0
        err = max(abs(p - q) for p, q in zip(x, y)) / scale
        worst = max(worst, err)
        if max(range(len(x)), key=lambda i: (x[i], -i)) != max(range(len(y)), key=lambda i: (y[i], -i)):
            bad += 1
    ok = worst <= tol and bad == 0
    print("%-14s worst logit error %.2e of scale (tolerance %.0e), argmax differs on %d of %d lines: %s"
          % (name, worst, tol, bad, len(a), "ok" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


main()
