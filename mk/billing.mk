# billing/ + metering/ + tollgatectl: unit tests and the PostgreSQL-backed tests.
#   make test-billing   unit tests, then tests/billing/run.sh (uses TG_TEST_PG from
#                       scripts/test.sh, or starts its own PostgreSQL on port 18680)
# Unit tests #include the .c they test (to reach statics) and link the other
# objects.  The test programs link billing/ and metering/ objects directly (not libgw),
# so a half-written gateway/ never breaks them.

BILL_OBJ  := $(call objs,$(call srcs,billing) $(call srcs,metering))
BILL_LIBS := $(BILL_OBJ) $(LIBCOMMON) $(LIB_EVENT) $(LIB_SSL) $(LIB_PQ) $(LIB_JSON)
BILL_UNIT := billing/bill_money billing/bill_settle metering/mtr_spool
BILL_UNIT_BINS := $(patsubst %,$(B)/tests/unit$(if $(SANITIZER),-$(SANITIZER))/%,$(BILL_UNIT))

$(B)/tests/unit$(if $(SANITIZER),-$(SANITIZER))/%: tests/unit/%.c $(BILL_OBJ) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests/unit -o $@ $< $(filter-out $(O)/$*.o,$(BILL_LIBS)) $(LDLIBS)

$(B)/bill_server$(if $(SANITIZER),-$(SANITIZER)): $(O)/tests/billing/bill_server.o $(BILL_OBJ) $(LIBCOMMON)
	$(CC) $(LDFLAGS) -o $@ $< $(BILL_LIBS) $(LDLIBS)

.PHONY: test-billing test-billing-unit
test-billing-unit: $(BILL_UNIT_BINS)
	@set -e; for t in $(BILL_UNIT_BINS); do $$t; done

test-billing: test-billing-unit $(B)/bill_server$(if $(SANITIZER),-$(SANITIZER)) $(BIN)/tollgatectl $(BIN)/tollgate
	BILL_SERVER=$(B)/bill_server$(if $(SANITIZER),-$(SANITIZER)) TG_CTL=$(BIN)/tollgatectl \
	    TG_GATEWAY=$(BIN)/tollgate bash tests/billing/run.sh

TEST_TARGETS += test-billing

# libFuzzer target for the spool record decoder (clang).
.PHONY: fuzz-billing
fuzz-billing: $(B)/fuzz/mtr_spool_fuzz
$(B)/fuzz/mtr_spool_fuzz: tests/unit/metering/mtr_spool_fuzz.c metering/mtr_spool.c metering/mtr.h common/tg_grow.h
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address -Icommon -Ibilling -Imetering -o $@ $<
