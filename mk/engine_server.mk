# engine server (tollgate-engine serve): unit tests of the pure parts and an
# integration test that runs the real binary on the demo model.
#
#   make test-engine-server        unit + integration (ports 18600-18619)
#   make test-engine-server-unit   unit tests only (no model needed)

ENG_SRV_UNIT := eng_sample eng_sched_text eng_server_req
ENG_SRV_UNIT_BINS := $(patsubst %,$(O)/tests/unit/engine_server/%,$(ENG_SRV_UNIT))

# The tests #include the .c under test (to reach statics), so they link only
# the tokenizer (UTF-8 check) and system libraries.
$(O)/tests/unit/engine_server/%: tests/unit/engine_server/%.c engine/%.c $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(TOK_LIBS) $(LDLIBS)

# eng_server_req needs the tokenizer (a recorded skip without it), so the
# target fetches it: under make it never skips.
.PHONY: test-engine-server test-engine-server-unit
test-engine-server-unit: $(ENG_SRV_UNIT_BINS) tokenizer-data
	@set -e; for t in $(ENG_SRV_UNIT_BINS); do $$t; done

test-engine-server: test-engine-server-unit $(BIN)/tollgate-engine tokenizer-data
	TOLLGATE_ENGINE=$(BIN)/tollgate-engine /usr/bin/python3 tests/engine_server/test_server.py

TEST_TARGETS += test-engine-server

# libFuzzer target for request bodies (clang); not part of `make test`.
.PHONY: fuzz-engine-server
fuzz-engine-server: $(B)/fuzz/fuzz_chat_req
$(B)/fuzz/fuzz_chat_req: tests/engine_server/fuzz_chat_req.c engine/eng_server_req.c $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address -Icommon -Itokenizer -Iengine -o $@ $< $(TOK_LIBS) $(LDLIBS)
