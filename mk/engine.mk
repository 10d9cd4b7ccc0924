# mk/engine.mk — the engine's tests, goldens, benchmarks and fuzzers.
#
#   make test-engine      goldens (PyTorch reference), unit tests, fuzz corpus replay
#   make engine-golden    regenerate tests/engine/golden/* (needs /usr/bin/python3 with torch)
#   make bench-engine     decode (vs STREAM triad roofline), prefill (vs OpenBLAS sgemm), time per token
#                         at 1k/8k/32k context, tokens/s at 1/4/16/64 streams, TTFT cold vs cached prefix
#   make fuzz-engine      libFuzzer on the safetensors parser (clang)

ENG_TEST_DIR := $(O)/tests/engine
ENG_GOLDEN_BIN := $(ENG_TEST_DIR)/eng_golden_test
ENG_UNIT_SRCS := $(wildcard tests/unit/engine/*.c)
ENG_UNIT_BINS := $(patsubst tests/unit/engine/%.c,$(ENG_TEST_DIR)/unit_%,$(ENG_UNIT_SRCS))
ENG_LINK := $(LIBENG) $(LIBCOMMON) $(LIB_JSON)

$(ENG_GOLDEN_BIN): tests/engine/eng_golden_test.c $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

$(ENG_TEST_DIR)/unit_%: tests/unit/engine/%.c $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

.PHONY: test-engine engine-golden bench-engine fuzz-engine
TEST_TARGETS += test-engine
UNIT_TARGETS += test-engine   # no servers: unit tests, goldens, fuzz replay, CLI

# The goldens run once per ISA the kernels dispatch to; each run prints the
# ISA of every model and fails when it is not the one asked for (a CPU that
# lacks it is a recorded skip).  No pipes: every run's exit status is make's.
test-engine: $(ENG_GOLDEN_BIN) $(ENG_UNIT_BINS)
	@set -e; for t in $(ENG_UNIT_BINS); do $$t; done
	TOLLGATE_ENGINE_ISA=amx $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models
	TOLLGATE_ENGINE_ISA=avx512bf16 $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models
	TOLLGATE_ENGINE_ISA=avx512 $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models
	TOLLGATE_ENGINE_ISA=avx2 $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models
	TOLLGATE_ENGINE_ISA=scalar $(ENG_GOLDEN_BIN) tests/engine/golden $(ENG_TEST_DIR)/models

# The op-by-op comparison harness (tests/engine/eng_ops_test.c): every op of
# the backend interface on seeded random inputs, CPU/scalar written to a file
# by one process, each faster ISA compared with it in another (the kernels pick
# their ISA once per process; a CPU that lacks one is a recorded skip, as the goldens).  The CUDA half: test-engine-cuda below.
ENG_OPS_BIN := $(ENG_TEST_DIR)/eng_ops_test
$(ENG_OPS_BIN): tests/engine/eng_ops_test.c $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

test-engine: test-engine-ops
.PHONY: test-engine-ops
test-engine-ops: $(ENG_OPS_BIN)
	TOLLGATE_ENGINE_ISA=scalar $(ENG_OPS_BIN) dump $(ENG_TEST_DIR)/ops-cpu-scalar.bin
	TOLLGATE_ENGINE_ISA=amx $(ENG_OPS_BIN) compare $(ENG_TEST_DIR)/ops-cpu-scalar.bin
	TOLLGATE_ENGINE_ISA=avx512bf16 $(ENG_OPS_BIN) compare $(ENG_TEST_DIR)/ops-cpu-scalar.bin
	TOLLGATE_ENGINE_ISA=avx512 $(ENG_OPS_BIN) compare $(ENG_TEST_DIR)/ops-cpu-scalar.bin
	TOLLGATE_ENGINE_ISA=avx2 $(ENG_OPS_BIN) compare $(ENG_TEST_DIR)/ops-cpu-scalar.bin

engine-golden: $(ENG_GOLDEN_BIN)
	bash tests/engine/make_golden.sh $(ENG_GOLDEN_BIN) $(ENG_TEST_DIR)/golden-models

ENG_BENCH_BIN := $(O)/bench/engine/eng_bench
$(ENG_BENCH_BIN): bench/engine/eng_bench.c $(LIBENG)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) -lopenblas $(LDLIBS)

bench-engine: $(ENG_BENCH_BIN)
	$(ENG_BENCH_BIN) decode
	$(ENG_BENCH_BIN) prefill
	$(ENG_BENCH_BIN) context
	$(ENG_BENCH_BIN) streams
	$(ENG_BENCH_BIN) ttft

# fuzz: libFuzzer (clang) on the safetensors parser; the plain driver replays
# the seed corpus under any compiler as part of test-engine.
ENG_FUZZ_DRIVER := $(ENG_TEST_DIR)/fuzz_safetensors_replay
$(ENG_FUZZ_DRIVER): fuzz/engine/fuzz_safetensors.c fuzz/engine/fuzz_driver.c engine/model/eng_st.c engine/model/eng_model_int.h common/tg_err.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuzz/engine/fuzz_safetensors.c fuzz/engine/fuzz_driver.c engine/model/eng_st.c \
	    common/tg_err.c $(LIB_JSON) $(LDLIBS)

test-engine: test-engine-fuzz-replay
.PHONY: test-engine-fuzz-replay
test-engine-fuzz-replay: $(ENG_FUZZ_DRIVER)
	$(ENG_FUZZ_DRIVER) fuzz/engine/corpus/safetensors

fuzz-engine:
	@mkdir -p $(B)/fuzz
	clang -O1 -g -fsanitize=fuzzer,address -Icommon -Iengine -Iengine/model -o $(B)/fuzz/fuzz_safetensors \
	    fuzz/engine/fuzz_safetensors.c engine/model/eng_st.c common/tg_err.c $(LIB_JSON) -lm
	mkdir -p $(B)/fuzz/corpus-safetensors
	$(B)/fuzz/fuzz_safetensors -max_total_time=$${FUZZ_SECONDS:-60} $(B)/fuzz/corpus-safetensors fuzz/engine/corpus/safetensors

fuzz: fuzz-engine

test-engine: test-engine-cli
.PHONY: test-engine-cli
test-engine-cli: $(BIN)/tollgate-engine
	bash tests/engine/cli_test.sh $(BIN)/tollgate-engine $(ENG_TEST_DIR)/cli
