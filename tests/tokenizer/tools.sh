#!/usr/bin/env bash
# tollgate-engine tokenize / detokenize against the reference vectors and on
# bad input.  usage: tools.sh ENGINE_BINARY MODEL_DIR
set -uo pipefail
eng=${1:?usage: tools.sh ENGINE MODEL_DIR}
dir=${2:?usage: tools.sh ENGINE MODEL_DIR}
py=/usr/bin/python3
fails=0
check() { # name, got, want
    if [ "$2" == "$3" ]; then echo "ok   $1"; else echo "FAIL $1: got [$2] want [$3]"; fails=$((fails + 1)); fi
}

check "tokenize plain" "$(printf '"Hello World"\n' | "$eng" tokenize --model "$dir")" "[19923,4495]"
check "tokenize special matched" "$(printf '"<｜User｜>hi"\n' | "$eng" tokenize --model "$dir")" "[128803,6366]"
check "tokenize --no-special" "$(printf '"<｜User｜>"\n' | "$eng" tokenize --model "$dir" --no-special | grep -c 128803)" "0"
check "tokenize empty string" "$(printf '""\n' | "$eng" tokenize --model "$dir")" "[]"
check "detokenize" "$(printf '[0,19923,4495]\n' | "$eng" detokenize --model "$dir")" '"<｜begin▁of▁sentence｜>Hello World"'
check "detokenize --skip-special" "$(printf '[0,19923]\n' | "$eng" detokenize --model "$dir" --skip-special)" '"Hello"'
nul=$(printf '"a\\u0000b\\n\\"q\\"\\\\"\n' | "$eng" tokenize --model "$dir" | "$eng" detokenize --model "$dir")
check "NUL and escapes round-trip" "$nul" '"a\u0000b\n\"q\"\\"'
check "split character decodes to U+FFFD" "$(printf '[2523]\n' | "$eng" detokenize --model "$dir" | $py -c 'import json,sys; print(json.loads(sys.stdin.read()) != "")')" "True"

bad() { # name, command input, subcommand
    out=$(printf "$2" | "$eng" "$3" --model "$dir" 2>&1 >/dev/null); rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [[ "$out" == *line* ]]; then echo "ok   $1 (exit $rc: $out)"
    else echo "FAIL $1: exit $rc, stderr [$out]"; fails=$((fails + 1)); fi
}
bad "not JSON" 'hello\n' tokenize
bad "number instead of string" '42\n' tokenize
bad "lone surrogate" '"\\ud800"\n' tokenize
bad "raw invalid UTF-8" '"\xff"\n' tokenize
bad "unterminated" '"abc\n' tokenize
bad "second line bad" '"ok"\n[1]\n' tokenize
bad "id out of range" '[99999999]\n' detokenize
bad "negative id" '[-1]\n' detokenize
bad "float id" '[1.5]\n' detokenize
bad "not an array" '"x"\n' detokenize
out=$("$eng" tokenize --model /nonexistent </dev/null 2>&1); rc=$?
if [ $rc -ne 0 ] && [[ "$out" == */nonexistent* ]]; then echo "ok   missing model"; else echo "FAIL missing model ($rc: $out)"; fails=$((fails+1)); fi

# The reference vectors through the CLI: JSON-escaped (ASCII only, surrogate
# pairs for astral characters), compared id for id.
res=$($py - "$eng" "$dir" <<'PY'
import gzip, json, subprocess, sys
eng, d = sys.argv[1], sys.argv[2]
rows = [l.rstrip("\n").split("\t") for l in gzip.open("tests/tokenizer/vectors/encode.tsv.gz", "rt")]
texts = [bytes.fromhex(h).decode("utf-8") for h, _ in rows]
want = [("[" + i + "]") for _, i in rows]
inp = "".join(json.dumps(t) + "\n" for t in texts)
out = subprocess.run([eng, "tokenize", "--model", d], input=inp.encode(), capture_output=True).stdout.decode().split("\n")[:-1]
same = sum(1 for a, b in zip(out, want) if a == b)
back = subprocess.run([eng, "detokenize", "--model", d], input=("\n".join(out) + "\n").encode(), capture_output=True).stdout.decode().split("\n")[:-1]
rt = sum(1 for a, b in zip(back, texts) if json.loads(a) == b)
print(f"{same} {rt} {len(rows)}")
PY
)
read -r same rt total <<<"$res"
[ -n "$total" ] && [ "$total" -ge 3000 ] || { echo "FAIL reading the vectors"; fails=$((fails + 1)); }
check "CLI ids equal the reference for all $total vectors" "$same" "$total"
check "CLI detokenize round-trips all $total vectors" "$rt" "$total"
if [ $fails -ne 0 ]; then echo "tools.sh: $fails failed"; exit 1; fi
echo "tools.sh: all passed"
