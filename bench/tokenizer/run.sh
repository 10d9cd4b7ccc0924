#!/usr/bin/env bash
# Tokenizer benchmark: the same ~2 MB of mixed-language documents encoded by
# the JS reference (@huggingface/tokenizers, node) and by our C tokenizer, one
# core each, in one run.  usage: run.sh TOK_BENCH_BINARY TOKENIZER_DIR
set -euo pipefail
bin=${1:?usage: run.sh TOK_BENCH TOKENIZER_DIR}
dir=${2:?usage: run.sh TOK_BENCH TOKENIZER_DIR}
text=$(mktemp /tmp/tok_bench.XXXXXX)
trap 'rm -f "$text"' EXIT
ref=$(cd tests/tokenizer/node && taskset -c 0 node bench-ref.mjs "$OLDPWD/$dir" "$text")
c=$(taskset -c 0 "$bin" "$dir/tokenizer.json" "$text")
get() { printf '%s\n%s\n' "$ref" "$c" | awk -v k="$1" '$1 == k { print $2 }'; }
printf 'text: %s bytes, %s documents\n' "$(stat -c %s "$text")" "$(($(tr -cd '\f' <"$text" | wc -c) + 1))"
printf 'reference (@huggingface/tokenizers 0.2.0, node %s): %8.2f MB/s   load %7.1f ms   tokens %s\n' \
    "$(node --version)" "$(get ref_mb_s)" "$(get ref_load_ms)" "$(get ref_tokens)"
printf 'tollgate C tokenizer (tok_encode):                  %8.2f MB/s   load %7.1f ms   tokens %s\n' \
    "$(get c_mb_s)" "$(get c_load_ms)" "$(get c_tokens)"
printf 'tollgate C tokenizer (tok_count):                   %8.2f MB/s   load %7.1f ms wall clock\n' "$(get c_count_mb_s)" "$(get c_load_wall_ms)"
printf 'memory of one loaded tokenizer: %s MiB\n' "$(get c_mem_mib)"
awk -v a="$(get c_mb_s)" -v b="$(get ref_mb_s)" 'BEGIN { printf "speed ratio C / reference: %.1fx (goal: 30x)\n", a / b }'
[ "$(get ref_tokens)" = "$(get c_tokens)" ] && echo "token counts agree" || { echo "TOKEN COUNTS DIFFER"; exit 1; }
