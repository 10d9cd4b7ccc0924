# mk/engine.mk — the engine's tests, goldens, benchmarks and fuzzers.
#
#   make test-engine      goldens (PyTorch reference), unit tests, fuzz corpus replay
#   make engine-golden    regenerate tests/engine/golden/* (needs /usr/bin/python3 with torch)
#   make bench-engine     decode (vs STREAM triad roofline) and prefill (vs OpenBLAS sgemm)
#   make fuzz-engine      libFuzzer on the safetensors parser (clang)

ENG_TEST_DIR := $(O)/tests/engine
ENG_GOLDEN_BIN := $(ENG_TEST_DIR)/eng_golden_test
ENG_UNIT_SRCS := $(wildcard tests/unit/engine/*.c)
ENG_UNIT_BINS := $(patsubst tests/unit/engine/%.c,$(ENG_TEST_DIR)/unit_%,$(ENG_UNIT_SRCS))
ENG_LINK := $(LIBENG) $(LIB_JSON)

$(ENG_GOLDEN_BIN): tests/engine/eng_golden_test.c $(LIBENG)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

$(ENG_TEST_DIR)/unit_%: tests/unit/engine/%.c $(LIBENG)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

.PHONY: test-engine engine-golden bench-engine fuzz-engine
TEST_TARGETS += test-engine

test-engine: $(ENG_GOLDEN_BIN) $(ENG_UNIT_BINS)
	@set -e; for t in $(ENG_UNIT_BINS); do $$t; done
	$(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models
	TOLLGATE_ENGINE_ISA=avx2 $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models | tail -1
	TOLLGATE_ENGINE_ISA=scalar $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models | tail -1

engine-golden: $(ENG_GOLDEN_BIN)
	bash tests/engine/make_golden.sh $(ENG_GOLDEN_BIN) $(ENG_TEST_DIR)/golden-models

ENG_BENCH_BIN := $(O)/bench/engine/eng_bench
$(ENG_BENCH_BIN): bench/engine/eng_bench.c $(LIBENG)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) -lopenblas $(LDLIBS)

bench-engine: $(ENG_BENCH_BIN)
	$(ENG_BENCH_BIN) decode
	$(ENG_BENCH_BIN) prefill
