# Integration tests: the whole stack (scripts/stack.sh test-up) as a customer
# and an operator use it: Python (stdlib + psycopg2) and the official OpenAI
# Node SDK (pinned in tests/sdk/package-lock.json).  Needs var/test/env, which
# scripts/test.sh sources before running this target.
.PHONY: test-integration test-sdk
test-integration: $(BINS)
	/usr/bin/python3 tests/integration/test_stack.py
	/usr/bin/python3 tests/integration/test_keys.py
	/usr/bin/python3 tests/integration/test_admin_edges.py
	/usr/bin/python3 tests/integration/test_holds.py
	/usr/bin/python3 tests/integration/test_limits.py
	/usr/bin/python3 tests/integration/test_money.py
	/usr/bin/python3 tests/integration/test_pool.py
	/usr/bin/python3 tests/integration/test_choices.py
	/usr/bin/python3 tests/integration/test_loops.py
	/usr/bin/python3 tests/integration/test_completions.py
	/usr/bin/python3 tests/integration/test_framing.py
	$(MAKE) --no-print-directory test-sdk

test-sdk:
	cd tests/sdk && npm ci --silent --no-audit --no-fund
	cd tests/sdk && NODE_EXTRA_CA_CERTS="$$TG_TEST_CERT" node --test sdk.test.mjs
TEST_TARGETS += test-integration
