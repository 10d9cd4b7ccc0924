# Integration tests: the whole stack (scripts/stack.sh test-up) as a customer
# and an operator use it.  Needs var/test/env (scripts/test.sh sources it).
.PHONY: test-integration
test-integration: $(BINS)
	/usr/bin/python3 tests/integration/test_stack.py
TEST_TARGETS += test-integration
