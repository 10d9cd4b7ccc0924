#!/usr/bin/env bash
# Replay the tokenizer fuzz seed corpora through the non-libFuzzer builds of
# the targets (part of make test-tokenizer).  usage: replay-fuzz.sh BINDIR
set -euo pipefail
bin=${1:?usage: replay-fuzz.sh BINDIR}
"$bin/fuzz_tok_encode" fuzz/tokenizer/corpus_encode/*
"$bin/fuzz_tok_load" fuzz/tokenizer/corpus_load/*
