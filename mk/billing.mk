# billing/ + metering/ + tollgatectl: unit tests and the PostgreSQL-backed tests.
#   make test-billing        unit tests + spool fuzz corpus replay, then tests/billing/run.sh
#                            (uses TG_TEST_PG from scripts/test.sh, or starts its own
#                            PostgreSQL on port 18680)
#   make test-billing-unit   unit tests + replay of fuzz/metering/corpus (no servers)
#   make fuzz-billing        libFuzzer on the spool record decoder (clang), FUZZ_SECONDS (default 60)
# Unit tests #include the .c they test (to reach statics) and link the other
# objects.  The test programs link billing/ and metering/ objects directly (not libgw),
# so a half-written gateway/ never breaks them.

BILL_OBJ  := $(call objs,$(call srcs,billing) $(call srcs,metering))
BILL_LIBS := $(BILL_OBJ) $(LIBCOMMON) $(LIB_EVENT) $(LIB_SSL) $(LIB_PQ) $(LIB_JSON)
BILL_UNIT := billing/bill_money billing/bill_admin billing/bill_settle billing/bill_lease billing/bill_receipt metering/mtr_spool metering/mtr_journal
BILL_UNIT_BINS := $(patsubst %,$(B)/tests/unit$(if $(SANITIZER),-$(SANITIZER))/%,$(BILL_UNIT))

$(B)/tests/unit$(if $(SANITIZER),-$(SANITIZER))/%: tests/unit/%.c $(BILL_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests/unit -o $@ $< $(filter-out $(O)/$*.o,$(BILL_LIBS)) $(LDLIBS)

$(B)/bill_server$(if $(SANITIZER),-$(SANITIZER)): $(O)/tests/billing/bill_server.o $(BILL_OBJ) $(LIBCOMMON)
	$(CC) $(LDFLAGS) -o $@ $< $(BILL_LIBS) $(LDLIBS)

# The spool fuzz target replayed without libFuzzer (fuzz/replay.c); it #includes
# metering/mtr_spool.c, so it links libtg_common only.
BILL_FUZZ_REPLAY := $(O)/fuzz/metering/fuzz_spool_replay
$(BILL_FUZZ_REPLAY): fuzz/metering/fuzz_spool.c fuzz/replay.c metering/mtr_spool.c metering/mtr.h $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuzz/metering/fuzz_spool.c fuzz/replay.c $(LIBCOMMON) $(LDLIBS)

# The API-key shape fuzz target (fuzz/billing/fuzz_key.c #includes billing/bill_key.c).
BILL_KEY_FUZZ_REPLAY := $(O)/fuzz/billing/fuzz_key_replay
$(BILL_KEY_FUZZ_REPLAY): fuzz/billing/fuzz_key.c fuzz/replay.c billing/bill_key.c $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuzz/billing/fuzz_key.c fuzz/replay.c $(LIBCOMMON) $(LIB_SSL) $(LDLIBS)

# The full-disk shim the journal fault test preloads into the gateway
# (tests/billing/failwrite.c): built without sanitizer flags, for any build.
BILL_FAILWRITE := $(B)/tests/billing/failwrite.so
$(BILL_FAILWRITE): tests/billing/failwrite.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -std=gnu11 -Wall -Wextra -fPIC -shared -o $@ $< -ldl

.PHONY: test-billing test-billing-unit
test-billing-unit: $(BILL_UNIT_BINS) $(BILL_FUZZ_REPLAY) $(BILL_KEY_FUZZ_REPLAY)
	@set -e; for t in $(BILL_UNIT_BINS); do $$t; done
	$(BILL_FUZZ_REPLAY) fuzz/metering/corpus/*
	$(BILL_KEY_FUZZ_REPLAY) fuzz/billing/corpus_key/*

test-billing: test-billing-unit $(B)/bill_server$(if $(SANITIZER),-$(SANITIZER)) $(BIN)/tollgatectl $(BIN)/tollgate \
	    $(BILL_FAILWRITE)
	BILL_SERVER=$(B)/bill_server$(if $(SANITIZER),-$(SANITIZER)) TG_CTL=$(BIN)/tollgatectl \
	    TG_GATEWAY=$(BIN)/tollgate TG_FAILWRITE=$(BILL_FAILWRITE) bash tests/billing/run.sh

TEST_TARGETS += test-billing
UNIT_TARGETS += test-billing-unit

# libFuzzer targets: the spool record decoder and the API-key shape (clang), seeded with their corpora.
.PHONY: fuzz-billing
fuzz: fuzz-billing
fuzz-billing: $(B)/fuzz/fuzz_spool $(B)/fuzz/fuzz_key
	@mkdir -p $(B)/fuzz/key-corpus
	$(B)/fuzz/fuzz_key -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=512 $(B)/fuzz/key-corpus fuzz/billing/corpus_key
	@mkdir -p $(B)/fuzz/metering-corpus
	$(B)/fuzz/fuzz_spool -max_total_time=$(or $(FUZZ_SECONDS),60) -max_len=8192 \
	    $(B)/fuzz/metering-corpus fuzz/metering/corpus
$(B)/fuzz/fuzz_spool: fuzz/metering/fuzz_spool.c metering/mtr_spool.c metering/mtr.h common/tg_grow.h
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Imetering -o $@ $<

# make bench-billing: 5 million usage rows (bench/billing/gen.sql, generated once into a
# private PostgreSQL kept in /tmp/tollgate-bench-pg), then bench/billing/bill_bench: settlements/s
# through bill_settle, admissions/s, receipt signing, report latency.  Figures: billing/README.md.
BILL_BENCH_BIN := $(O)/bench/billing/bill_bench
$(BILL_BENCH_BIN): bench/billing/bill_bench.c $(BILL_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BILL_LIBS) $(LDLIBS)

.PHONY: bench-billing
bench-billing: $(BILL_BENCH_BIN)
	BENCH_BIN=$(BILL_BENCH_BIN) bash bench/billing/run.sh

$(B)/fuzz/fuzz_key: fuzz/billing/fuzz_key.c billing/bill_key.c
	@mkdir -p $(dir $@)
	clang -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -Icommon -Ibilling -Imetering -Igateway -Itokenizer -Iapi \
	    -o $@ $< $(LIB_SSL)
