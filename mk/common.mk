# mk/common.mk — common/ (tg_json: the strict JSON reader and string writer; tg_work: worker
# threads for an event loop).
#
#   make test-common    unit tests (tests/unit/common/) + replay of the fuzz seed corpus
#   make fuzz-common    libFuzzer on tg_json_parse (clang), FUZZ_SECONDS (default 60)
#
# common/*.c is archived into $(LIBCOMMON) by the Makefile.  fuzz/replay.c is
# the driver that replays files through any fuzz target without libFuzzer (the
# common, tokenizer and gateway replays link it, with $(LIBCOMMON) for tg_file_read).

COMMON_TEST_DIR := $(O)/tests/unit/common
COMMON_UNIT_BINS := $(patsubst tests/unit/common/%.c,$(COMMON_TEST_DIR)/%,$(wildcard tests/unit/common/*.c))
COMMON_FUZZ_REPLAY := $(O)/fuzz/common/fuzz_json_replay

$(COMMON_TEST_DIR)/%: tests/unit/common/%.c $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIBCOMMON) $(LDLIBS)

$(COMMON_TEST_DIR)/tg_work: LDLIBS += -levent

$(COMMON_FUZZ_REPLAY): fuzz/common/fuzz_json.c fuzz/replay.c $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuzz/common/fuzz_json.c fuzz/replay.c $(LIBCOMMON) $(LDLIBS)

.PHONY: test-common fuzz fuzz-common
test-common: $(COMMON_UNIT_BINS) $(COMMON_FUZZ_REPLAY)
	@set -e; for t in $(COMMON_UNIT_BINS); do $$t; done
	$(COMMON_FUZZ_REPLAY) fuzz/common/corpus/*

fuzz: fuzz-common
fuzz-common:
	@mkdir -p $(B)/fuzz/common-corpus
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon \
	    -o $(B)/fuzz/fuzz_json fuzz/common/fuzz_json.c common/tg_json.c common/tg_utf8.c common/tg_buf.c
	$(B)/fuzz/fuzz_json -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=4096 \
	    $(B)/fuzz/common-corpus fuzz/common/corpus

TEST_TARGETS += test-common
UNIT_TARGETS += test-common
