# mk/cuda.mk — the engine's CUDA backend (engine/cuda/*.cu).
#
#   make CUDA=1          build/tollgate-engine with the CUDA backend (--device cuda:N)
#   make test-engine-cuda   (part of make test) whenever nvcc is present: compiles the
#                        backend (so it never rots), checks that --device cuda:0 without a
#                        GPU fails with a clear message, and with a GPU runs the op harness
#                        and a whole-model logits comparison against the CPU.
# The default build stays CPU-only and needs no CUDA toolkit.

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(firstword $(wildcard $(CUDA_HOME)/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
# sm_90 (H100/H200) machine code plus compute_90 PTX that newer GPUs JIT-compile
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCC_FLAGS := -O3 -std=c++17 $(CUDA_ARCH) -Icommon -Iengine -Iengine/model -Iengine/cuda \
              -Xcompiler -Wall,-Wno-unused-function
CUDA_SRCS := $(wildcard engine/cuda/*.cu)
CUDA_OBJ  := $(patsubst %.cu,$(B)/obj-cuda/%.o,$(CUDA_SRCS))
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lstdc++ -ldl -lrt -Wl,-rpath,$(CUDA_HOME)/lib64

$(B)/obj-cuda/engine/cuda/%.o: engine/cuda/%.cu $(wildcard engine/cuda/*.h) engine/model/eng_model_int.h engine/eng.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

ifneq ($(CUDA),)
$(BIN)/tollgate-engine: $(CUDA_OBJ)
endif
# switching between make and make CUDA=1 relinks the engine (a file that changes with the mode)
ENG_LINK_MODE := $(O)/engine-link-mode
$(shell mkdir -p $(O); m=$(if $(CUDA),cuda,cpu); [ "$$(cat $(ENG_LINK_MODE) 2>/dev/null)" = $$m ] || echo $$m > $(ENG_LINK_MODE))
$(BIN)/tollgate-engine: $(ENG_LINK_MODE)

# The test binaries with the CUDA backend linked in (never replacing the plain ones).
ENG_CUDA_DIR := $(O)/tests/engine/cuda
$(ENG_CUDA_DIR)/tollgate-engine: $(O)/engine/cli/eng_main.o $(CUDA_OBJ) $(LIBENG) $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(CUDA_OBJ) $(ENG_LIBS) $(LDLIBS) $(CUDA_LIBS)

$(ENG_CUDA_DIR)/eng_ops_test: tests/engine/eng_ops_test.c $(CUDA_OBJ) $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(CUDA_OBJ) $(ENG_LINK) $(LDLIBS) $(CUDA_LIBS)

# decode tokens/s vs the copy-bandwidth roofline (scripts/gpu-check.sh runs it on a GPU)
$(ENG_CUDA_DIR)/eng_gpu_bench: bench/cuda/eng_gpu_bench.c $(CUDA_OBJ) $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(CUDA_OBJ) $(ENG_LINK) $(LDLIBS) $(CUDA_LIBS)
$(O)/bench/cuda/eng_gpu_bench: bench/cuda/eng_gpu_bench.c $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

# CUDA kernels' own source run on the host (512 threads a block, barriers and
# shuffles emulated: tests/engine/cuda_emu.h) against the host sampler and the
# CPU backend's ops: the sampler, the router, MLA and GQA attention.  On every
# machine: no nvcc or GPU needed.
CXX ?= g++
ENG_CUDA_EMU := $(O)/tests/engine/cuda_emu_sample $(O)/tests/engine/cuda_emu_kernels
$(O)/tests/engine/cuda_emu_%: tests/engine/cuda_emu_%.cc tests/engine/cuda_emu.h $(wildcard engine/cuda/*.h) \
                              $(LIBENG) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CXX) $(filter-out -std=% -MMD -MP,$(CFLAGS)) -std=c++17 -Wno-unknown-pragmas $(LDFLAGS) -o $@ $< $(ENG_LINK) $(LDLIBS)

.PHONY: test-engine-cuda-emu
TEST_TARGETS += test-engine-cuda-emu
UNIT_TARGETS += test-engine-cuda-emu
test-engine-cuda-emu: $(ENG_CUDA_EMU)
	@set -e; for t in $(ENG_CUDA_EMU); do timeout 600 $$t; done

# The whole CUDA backend, host code too, on the host: engine/cuda/*.cu compiled by g++ against
# tests/engine/cuda_emu_inc/ (the runtime and cuBLAS as reference loops, launches through
# tests/engine/cuda_emu.h), linked into the op harness and the engine.  Not in make test (about
# 2 minutes for the harness and 3 per whole model on 2 busy cores): run it after any change to
# engine/cuda/.  make test-engine-cuda-emu-backend: the op harness against CPU/scalar, then the
# logits of a tiny V3 bf16 model against the CPU's (3, 17 and 70 tokens: the last takes the
# tensor-core paths through the reference cuBLAS).
ENG_EMU_BE_DIR := $(O)/tests/engine/cuda-emu
ENG_EMU_BE_OBJ := $(patsubst engine/cuda/%.cu,$(ENG_EMU_BE_DIR)/%.o,$(CUDA_SRCS))
$(ENG_EMU_BE_DIR)/%.o: engine/cuda/%.cu $(wildcard engine/cuda/*.h) $(wildcard tests/engine/cuda_emu_inc/*.h) \
                       tests/engine/cuda_emu.h engine/model/eng_model_int.h engine/eng.h
	@mkdir -p $(dir $@)
	$(CXX) -x c++ -std=c++17 -O1 -g -pthread -Wall -Wno-unknown-pragmas -Wno-unused-function -Wno-unused-variable \
	    -Wno-sign-compare $(filter -fsanitize=% -fno-sanitize-recover=% -fno-omit-frame-pointer,$(CFLAGS)) \
	    -Itests/engine/cuda_emu_inc -Icommon -Iengine -Iengine/model -Iengine/cuda -c $< -o $@
$(ENG_EMU_BE_DIR)/eng_ops_test: tests/engine/eng_ops_test.c $(ENG_EMU_BE_OBJ) $(LIBENG) $(LIBCOMMON)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(ENG_EMU_BE_OBJ) $(ENG_LINK) $(LDLIBS) -lstdc++
$(ENG_EMU_BE_DIR)/tollgate-engine: $(O)/engine/cli/eng_main.o $(ENG_EMU_BE_OBJ) $(LIBENG) $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	$(CC) $(LDFLAGS) -o $@ $< $(ENG_EMU_BE_OBJ) $(ENG_LIBS) $(LDLIBS) -lstdc++

.PHONY: test-engine-cuda-emu-backend
test-engine-cuda-emu-backend: $(ENG_EMU_BE_DIR)/eng_ops_test $(ENG_EMU_BE_DIR)/tollgate-engine $(O)/tests/engine/eng_ops_test \
                              $(BIN)/tollgate-engine
	bash tests/engine/cuda_emu_backend.sh $(ENG_EMU_BE_DIR) $(O)/tests/engine/eng_ops_test $(BIN)/tollgate-engine

.PHONY: test-engine-cuda cuda-objs
TEST_TARGETS += test-engine-cuda
cuda-objs: $(CUDA_OBJ)

ifneq ($(NVCC),)
test-engine-cuda: $(ENG_CUDA_DIR)/tollgate-engine $(ENG_CUDA_DIR)/eng_ops_test $(O)/tests/engine/eng_ops_test \
                  $(BIN)/tollgate-engine tokenizer-data
	bash tests/engine/cuda_test.sh $(ENG_CUDA_DIR) $(O)/tests/engine/eng_ops_test $(BIN)/tollgate-engine
else
test-engine-cuda:
	@. tests/lib/tgskip.sh; tg_skip "engine cuda" "no nvcc (CUDA toolkit) on this machine: the CUDA backend was not compiled"
endif
