# mk/api.mk — api/ (the OpenAI request reader shared by the gateway and the
# engine): unit tests against the reference chat vectors, and the fuzz target.
#
#   make test-api       unit tests (tests/unit/api/) + replay of fuzz/api/corpus
#   make fuzz-api       libFuzzer build of fuzz/api (clang)
#   make fuzz-api-run   run it for FUZZ_SECONDS (default 60)
#
# api/*.c is archived into $(LIBAPI) by the Makefile.  The unit test and the
# fuzz target #include api/api_chat.c (statics), so they link the tokenizer.

API_UNIT_BIN := $(O)/tests/unit/api/api_chat
API_FUZZ_REPLAY := $(O)/fuzz/api/fuzz_api_chat_replay
API_FUZZ_CORPUS := fuzz/api/corpus
API_CMPL_FUZZ_REPLAY := $(O)/fuzz/api/fuzz_api_completion_replay
API_CMPL_FUZZ_CORPUS := fuzz/api/corpus-completion

$(API_UNIT_BIN): tests/unit/api/api_chat.c api/api_completion.c api/api-int.h $(LIBAPI) api/api_chat.c api/api.h $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

API_CMPL_UNIT_BIN := $(O)/tests/unit/api/api_completion
$(API_CMPL_UNIT_BIN): tests/unit/api/api_completion.c api/api_completion.c api/api_chat.c api/api.h api/api-int.h $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

$(API_CMPL_FUZZ_REPLAY): fuzz/api/fuzz_api_completion.c fuzz/replay.c api/api_completion.c api/api_chat.c api/api.h api/api-int.h $(LIBAPI) $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< fuzz/replay.c $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

$(API_FUZZ_REPLAY): fuzz/api/fuzz_api_chat.c fuzz/replay.c api/api_chat.c api/api_completion.c api/api-int.h $(LIBAPI) api/api.h $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< fuzz/replay.c $(LIBAPI) $(TOK_LIBS) $(LDLIBS)

.PHONY: test-api fuzz-api fuzz-api-run fuzz-api-completion fuzz-api-completion-run
test-api: $(API_UNIT_BIN) $(API_CMPL_UNIT_BIN) $(API_FUZZ_REPLAY) $(API_CMPL_FUZZ_REPLAY) tokenizer-data
	$(API_UNIT_BIN) tests/tokenizer/vectors
	$(API_CMPL_UNIT_BIN)
	@test -n "$(wildcard $(API_FUZZ_CORPUS)/*)" || { echo "$(API_FUZZ_CORPUS): no seeds" >&2; exit 1; }
	$(API_FUZZ_REPLAY) $(wildcard $(API_FUZZ_CORPUS)/*)
	@test -n "$(wildcard $(API_CMPL_FUZZ_CORPUS)/*)" || { echo "$(API_CMPL_FUZZ_CORPUS): no seeds" >&2; exit 1; }
	$(API_CMPL_FUZZ_REPLAY) $(wildcard $(API_CMPL_FUZZ_CORPUS)/*)

fuzz: fuzz-api fuzz-api-completion
fuzz-api-completion: $(B)/fuzz/fuzz_api_completion
$(B)/fuzz/fuzz_api_completion: fuzz/api/fuzz_api_completion.c api/api_completion.c api/api_chat.c api/api_num.c api/api_fmt.c api/api.h api/api-int.h $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Itokenizer -Iapi -o $@ $< api/api_chat.c api/api_num.c api/api_fmt.c $(TOK_LIBS) $(LDLIBS)
fuzz-api-completion-run: $(B)/fuzz/fuzz_api_completion
	@mkdir -p $(B)/fuzz/corpus-api-completion
	$(B)/fuzz/fuzz_api_completion -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=4096 $(B)/fuzz/corpus-api-completion $(API_CMPL_FUZZ_CORPUS)
fuzz-api: $(B)/fuzz/fuzz_api_chat
$(B)/fuzz/fuzz_api_chat: fuzz/api/fuzz_api_chat.c api/api_chat.c api/api_completion.c api/api-int.h $(LIBAPI) api/api.h $(LIBTOK) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Itokenizer -Iapi -o $@ $< $(LIBAPI) $(TOK_LIBS) $(LDLIBS)
fuzz-api-run: $(B)/fuzz/fuzz_api_chat
	@mkdir -p $(B)/fuzz/corpus-api
	$(B)/fuzz/fuzz_api_chat -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=4096 $(B)/fuzz/corpus-api $(API_FUZZ_CORPUS)

TEST_TARGETS += test-api
UNIT_TARGETS += test-api
