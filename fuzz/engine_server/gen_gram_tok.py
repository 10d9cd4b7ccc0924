#!/usr/bin/env python3
"""Write fuzz/engine_server/gram_tok.json: a small real vocabulary for the
grammar fuzz target (fuzz_gram.c), cut from the DeepSeek-V3 tokenizer.json:
its first N ids (the three specials, the 256 byte tokens, then the most
frequent merges: JSON punctuation, digits, common words), the merges among
them in their order, and the tool-call markers (renumbered after them).

    gen_gram_tok.py [DEEPSEEK_TOKENIZER_JSON [N]]
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "data", "deepseek-v3-tokenizer", "tokenizer.json")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
with open(src, encoding="utf-8") as f:
    d = json.load(f)
vocab = {k: i for k, i in d["model"]["vocab"].items() if i < n}
merges = []
for m in d["model"]["merges"]:
    a, b = m.split(" ") if isinstance(m, str) else m
    if a in vocab and b in vocab and a + b in vocab:
        merges.append(a + " " + b)
added = [t for t in d["added_tokens"] if t["id"] < n]
marks = [t for t in d["added_tokens"] if "tool\u2581" in t["content"] or t["content"] in ("<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>")]
for k, t in enumerate(sorted(marks, key=lambda t: t["id"])):
    t = dict(t)
    t["id"] = n + k
    added.append(t)
out = dict(d)
out["added_tokens"] = added
out["model"] = dict(d["model"])
out["model"]["vocab"] = vocab
out["model"]["merges"] = merges
with open(os.path.join(ROOT, "fuzz", "engine_server", "gram_tok.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    f.write("\n")
print(f"{len(vocab)} tokens, {len(merges)} merges, {len(added)} added")
