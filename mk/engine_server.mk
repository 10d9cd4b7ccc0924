# engine server (tollgate-engine serve): unit tests of the pure parts and an
# integration test that runs the real binary on the demo model.
#
#   make test-engine-server        unit + fuzz corpus replay + integration (ports 18720-18732)
#   make test-engine-server-unit   unit tests only (no model needed)
#   make fuzz-engine-server        libFuzzer build of fuzz/engine_server (clang)

ENG_SRV_UNIT := eng_sample eng_sched_text eng_sched_piece eng_server_req eng_gram
ENG_SRV_UNIT_BINS := $(patsubst %,$(O)/tests/unit/engine_server/%,$(ENG_SRV_UNIT))

# The tests #include the .c under test (to reach statics), so they link only
# the tokenizer (UTF-8 check) and system libraries.
$(O)/tests/unit/engine_server/%: tests/unit/engine_server/%.c $(wildcard engine/sched/*.[ch] engine/server/*.[ch]) api/api_chat.c api/api_completion.c api/api-int.h $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

# The allocation-failure shim the fault tests preload into the worker
# (tests/engine_server/failalloc.c): built without sanitizer flags, for any
# build of the worker (a sanitizer's allocator is the next one it calls).
ENG_SRV_FAILALLOC := $(B)/tests/engine_server/failalloc.so
$(ENG_SRV_FAILALLOC): tests/engine_server/failalloc.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -std=gnu11 -Wall -Wextra -fPIC -shared -o $@ $< -ldl

# eng_server_req needs the tokenizer (a recorded skip without it), so the
# target fetches it: under make it never skips.
.PHONY: test-engine-server test-engine-server-unit
test-engine-server-unit: $(ENG_SRV_UNIT_BINS) tokenizer-data
	@set -e; for t in $(ENG_SRV_UNIT_BINS); do $$t $(TOK_JSON); done

test-engine-server: test-engine-server-unit $(BIN)/tollgate-engine tokenizer-data $(ENG_SRV_FAILALLOC)
	TOLLGATE_ENGINE=$(BIN)/tollgate-engine flock -w 1800 /tmp/tollgate-engsrv-run.lock /usr/bin/python3 tests/engine_server/test_server.py
	TOLLGATE_ENGINE=$(BIN)/tollgate-engine flock -w 1800 /tmp/tollgate-engsrv-run.lock /usr/bin/python3 tests/engine_server/test_http.py
	TOLLGATE_ENGINE=$(BIN)/tollgate-engine flock -w 1800 /tmp/tollgate-engsrv-run.lock /usr/bin/python3 tests/engine_server/test_structured.py
	TOLLGATE_ENGINE=$(BIN)/tollgate-engine TOLLGATE_FAILALLOC=$(ENG_SRV_FAILALLOC) \
	    flock -w 1800 /tmp/tollgate-engsrv-run.lock /usr/bin/python3 tests/engine_server/test_faults.py

TEST_TARGETS += test-engine-server
UNIT_TARGETS += test-engine-server-unit test-engine-server-fuzz-replay

# Fuzz target for request bodies (fuzz/engine_server/): a plain build replays
# the seed corpus in test-engine-server (any compiler, any SANITIZER); the
# libFuzzer build needs clang.
ENG_SRV_FUZZ_CORPUS := fuzz/engine_server/corpus/chat_req
ENG_SRV_FUZZ_REPLAY := $(O)/fuzz/engine_server/fuzz_chat_req_replay
$(ENG_SRV_FUZZ_REPLAY): fuzz/engine_server/fuzz_chat_req.c fuzz/replay.c engine/server/eng_server_req.c api/api_chat.c api/api_completion.c api/api-int.h $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< fuzz/replay.c $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

.PHONY: test-engine-server-fuzz-replay
test-engine-server-fuzz-replay: $(ENG_SRV_FUZZ_REPLAY)
	@test -n "$(wildcard $(ENG_SRV_FUZZ_CORPUS)/*)" || { echo "$(ENG_SRV_FUZZ_CORPUS): no seeds" >&2; exit 1; }
	$(ENG_SRV_FUZZ_REPLAY) $(wildcard $(ENG_SRV_FUZZ_CORPUS)/*)
test-engine-server: test-engine-server-fuzz-replay

.PHONY: fuzz-engine-server fuzz-engine-server-run
fuzz: fuzz-engine-server
fuzz-engine-server: $(B)/fuzz/fuzz_chat_req
$(B)/fuzz/fuzz_chat_req: fuzz/engine_server/fuzz_chat_req.c engine/server/eng_server_req.c api/api_chat.c api/api_completion.c api/api-int.h $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address -Icommon -Itokenizer -Iapi -Iengine -o $@ $< $(LIBAPI) $(TOK_LIBS) $(LDLIBS)
fuzz-engine-server-run: $(B)/fuzz/fuzz_chat_req
	@mkdir -p $(B)/fuzz/corpus-chat-req
	$(B)/fuzz/fuzz_chat_req -max_total_time=$(or $(FUZZ_SECONDS),60) $(B)/fuzz/corpus-chat-req $(ENG_SRV_FUZZ_CORPUS)

# The structured-output grammar end to end (fuzz/engine_server/fuzz_gram.c): a
# schema through the API reader, the grammar over a small real vocabulary
# (fuzz/engine_server/gram_tok.json), a decoding walk driven by the input;
# its corpus replayed by a plain build in test-engine-server.
ENG_GRAM_FUZZ_CORPUS := fuzz/engine_server/corpus/gram
ENG_GRAM_FUZZ_REPLAY := $(O)/fuzz/engine_server/fuzz_gram_replay
ENG_GRAM_FUZZ_DEPS := fuzz/engine_server/fuzz_gram.c engine/sched/eng_gram.c engine/sched/eng_gram.h \
    engine/server/eng_server_req.c $(wildcard api/*.[ch]) $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
$(ENG_GRAM_FUZZ_REPLAY): $(ENG_GRAM_FUZZ_DEPS) fuzz/replay.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< fuzz/replay.c $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

.PHONY: test-engine-server-gram-replay fuzz-gram fuzz-gram-run
test-engine-server-gram-replay: $(ENG_GRAM_FUZZ_REPLAY)
	@test -n "$(wildcard $(ENG_GRAM_FUZZ_CORPUS)/*)" || { echo "$(ENG_GRAM_FUZZ_CORPUS): no seeds" >&2; exit 1; }
	$(ENG_GRAM_FUZZ_REPLAY) $(wildcard $(ENG_GRAM_FUZZ_CORPUS)/*)
test-engine-server: test-engine-server-gram-replay
UNIT_TARGETS += test-engine-server-gram-replay

fuzz: fuzz-gram
fuzz-gram: $(B)/fuzz/fuzz_gram
$(B)/fuzz/fuzz_gram: $(ENG_GRAM_FUZZ_DEPS)
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -Icommon -Itokenizer -Iapi -Iengine -Iengine/sched -o $@ $< $(wildcard api/*.c) $(TOK_LIBS) $(LDLIBS)
fuzz-gram-run: $(B)/fuzz/fuzz_gram
	@mkdir -p $(B)/fuzz/corpus-gram
	$(B)/fuzz/fuzz_gram -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
	    -dict=fuzz/engine_server/gram.dict -jobs=1 $(B)/fuzz/corpus-gram $(ENG_GRAM_FUZZ_CORPUS)
