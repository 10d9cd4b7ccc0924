# mk/gateway.mk — the gateway's tests and fuzzer.
#
#   make test-gateway        unit tests, fuzz corpus replay, then the gateway's own
#                            end-to-end tests (tests/gateway/run.sh: private PostgreSQL,
#                            Redis, scripted fake worker and build[/<sanitizer>]/tollgate on 18640-18679)
#   make test-gateway-unit   unit tests and corpus replay only (no servers)
#   make fuzz-gateway        libFuzzer on the HTTP parsers, then on the config loader (clang);
#                            FUZZ_SECONDS=60 each
#
# Unit tests link only the gateway's pure objects (no billing, no libevent).

GW_TEST_DIR := $(O)/tests/gateway
GW_PURE_OBJ := $(call objs,gateway/gw_pool.c gateway/gw_http.c gateway/gw_sse.c gateway/gw_uuid.c gateway/gw_config.c \
                       gateway/gw_rl_local.c)
GW_UNIT_SRCS := $(wildcard tests/unit/gateway/*.c)
GW_UNIT_BINS := $(patsubst tests/unit/gateway/%.c,$(GW_TEST_DIR)/unit_%,$(GW_UNIT_SRCS))
GW_FUZZ_REPLAY := $(GW_TEST_DIR)/fuzz_http_replay
GW_FUZZ_CONFIG_REPLAY := $(GW_TEST_DIR)/fuzz_config_replay
FUZZ_SECONDS ?= 60

$(GW_TEST_DIR)/unit_%: tests/unit/gateway/%.c $(GW_PURE_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(GW_PURE_OBJ) $(LIBCOMMON) $(LIB_JSON) $(LDLIBS)

# gw_log.c is included by its test: it posts batches to a worker thread (libevent)
$(GW_TEST_DIR)/unit_gw_log: LDLIBS += $(LIB_EVENT)

$(GW_FUZZ_REPLAY): fuzz/gateway/fuzz_http.c fuzz/replay.c $(GW_PURE_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuzz/gateway/fuzz_http.c fuzz/replay.c $(GW_PURE_OBJ) $(LIBCOMMON) $(LIB_JSON) $(LDLIBS)

$(GW_FUZZ_CONFIG_REPLAY): fuzz/gateway/fuzz_config.c fuzz/replay.c $(GW_PURE_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuzz/gateway/fuzz_config.c fuzz/replay.c $(GW_PURE_OBJ) $(LIBCOMMON) $(LIB_JSON) $(LDLIBS)

.PHONY: test-gateway test-gateway-unit fuzz fuzz-gateway
test-gateway-unit: $(GW_UNIT_BINS) $(GW_FUZZ_REPLAY) $(GW_FUZZ_CONFIG_REPLAY)
	@set -e; for t in $(GW_UNIT_BINS); do $$t; done
	$(GW_FUZZ_REPLAY) fuzz/gateway/corpus_http/*
	$(GW_FUZZ_CONFIG_REPLAY) fuzz/gateway/corpus_config/*

test-gateway: test-gateway-unit $(BIN)/tollgate tokenizer-data
	bash tests/gateway/run.sh $(BIN)/tollgate

fuzz: fuzz-gateway
fuzz-gateway:
	@mkdir -p $(B)/fuzz/gateway-corpus
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Igateway -Ibilling \
	    -o $(B)/fuzz/fuzz_http fuzz/gateway/fuzz_http.c gateway/gw_pool.c gateway/gw_http.c \
	    gateway/gw_sse.c gateway/gw_uuid.c gateway/gw_config.c common/tg_file.c common/tg_buf.c \
	    common/tg_json.c common/tg_utf8.c common/tg_hex.c $(LIB_JSON)
	$(B)/fuzz/fuzz_http -max_total_time=$(FUZZ_SECONDS) $(B)/fuzz/gateway-corpus fuzz/gateway/corpus_http
	@mkdir -p $(B)/fuzz/gateway-config-corpus
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Igateway -Ibilling \
	    -o $(B)/fuzz/fuzz_config fuzz/gateway/fuzz_config.c gateway/gw_pool.c gateway/gw_http.c \
	    gateway/gw_sse.c gateway/gw_uuid.c gateway/gw_config.c common/tg_file.c common/tg_buf.c \
	    common/tg_json.c common/tg_utf8.c common/tg_hex.c $(LIB_JSON)
	$(B)/fuzz/fuzz_config -max_total_time=$(FUZZ_SECONDS) $(B)/fuzz/gateway-config-corpus fuzz/gateway/corpus_config

TEST_TARGETS += test-gateway
UNIT_TARGETS += test-gateway-unit

# make bench-gateway: nginx and tollgate over TLS in front of one fixed upstream
# (bench/gateway/upstream.c), wrk with 64 connections, medians of ROUNDS runs; then small
# requests' p99 while 1 MiB prompts stream in.  Installs nginx and wrk (Debian) when missing.
# Figures: gateway/README.md "Bench".  Not part of make test.
GW_BENCH_UPSTREAM := $(O)/bench/gateway/upstream
$(GW_BENCH_UPSTREAM): bench/gateway/upstream.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LDLIBS)

.PHONY: bench-gateway
bench-gateway: $(BIN)/tollgate $(GW_BENCH_UPSTREAM) tokenizer-data
	TOLLGATE_BIN=$(BIN)/tollgate UPSTREAM_BIN=$(GW_BENCH_UPSTREAM) bash bench/gateway/run.sh
