#!/usr/bin/env bash
# The engine's model subcommands end to end: gen-model is deterministic,
# logits prints one JSON object per input line (errors included).
#   cli_test.sh BUILD/tollgate-engine WORKDIR
set -euo pipefail
bin=${1:?usage: cli_test.sh ENGINE_BINARY WORKDIR}
work=${2:?usage: cli_test.sh ENGINE_BINARY WORKDIR}
fail() { echo "cli_test: FAIL: $*" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work"
"$bin" gen-model --arch deepseek_v3 --preset tiny --dtype bf16 --seed 3 --out "$work/a" 2>/dev/null
"$bin" gen-model --arch deepseek_v3 --preset tiny --dtype bf16 --seed 3 --out "$work/b" --shards 3 2>/dev/null
"$bin" gen-model --arch deepseek_v3 --preset tiny --dtype bf16 --seed 3 --out "$work/c" 2>/dev/null
cmp -s "$work/a/model.safetensors" "$work/c/model.safetensors" || fail "gen-model is not deterministic"
[ -f "$work/b/model.safetensors.index.json" ] || fail "no index for shards"
# --arch as DESIGN.md and config.json name the architectures, too (and deepseek-v3)
"$bin" gen-model --arch DeepseekV3ForCausalLM --preset tiny --dtype bf16 --seed 3 --out "$work/d" 2>/dev/null ||
    fail "gen-model --arch DeepseekV3ForCausalLM refused"
cmp -s "$work/a/model.safetensors" "$work/d/model.safetensors" || fail "DeepseekV3ForCausalLM is not deepseek_v3"
for a in DeepseekV2ForCausalLM:deepseek-v2 MixtralForCausalLM:MIXTRAL; do
    for name in ${a%%:*} ${a##*:}; do
        rm -rf "$work/e"
        "$bin" gen-model --arch "$name" --preset tiny --out "$work/e" 2>/dev/null || fail "gen-model --arch $name refused"
        grep -q "\"${a%%:*}\"" "$work/e/config.json" || fail "--arch $name: config.json does not name ${a%%:*}"
    done
done
"$bin" gen-model --arch LlamaForCausalLM --preset tiny --out "$work/e" 2>/dev/null && fail "an unknown arch must be refused"
out=$(printf '[0,5,9]\n[1]\nnot json\n[1,2,100000]\n' | "$bin" logits --model "$work/a" --top 3) && fail "bad lines must give exit 1" || true
[ "$(echo "$out" | wc -l)" = 4 ] || fail "want 4 output lines, got: $out"
echo "$out" | sed -n 1p | grep -q '^{"top":\[\[[0-9]*,[-0-9.e]*\],\[' || fail "top line: $(echo "$out" | sed -n 1p)"
echo "$out" | sed -n 3p | grep -q '"error"' || fail "bad json must give an error line"
echo "$out" | sed -n 4p | grep -q '"error"' || fail "bad id must give an error line"
# the sharded copy gives the same logits as the single file
a=$(echo '[0,5,9]' | "$bin" logits --model "$work/a")
b=$(echo '[0,5,9]' | "$bin" logits --model "$work/b")
[ "$a" = "$b" ] || fail "sharded model differs"
n=$(echo "$a" | tr ',' '\n' | wc -l)
[ "$n" = 512 ] || fail "want 512 logits, got $n"
printf '{"architectures":["LlamaForCausalLM"]}' > "$work/c/config.json"
err=$(echo '[1]' | "$bin" logits --model "$work/c" 2>&1 >/dev/null) && fail "unsupported arch must fail" || true
echo "$err" | grep -q LlamaForCausalLM || fail "error should name the architecture: $err"
echo "cli_test: ok"
