# mk/dashboard.mk — the browser dashboards (web/, billing/bill_dash*.c, gateway/gw_dash.c).
#
#   make                 also assembles build/web/: web/*.html|js|css and Chart.js's UMD build,
#                        from the npm registry pinned in web/package-lock.json (vendored: the
#                        page loads nothing from any other host, so it works offline)
#   make test-dashboard  browser tests in headless Chromium (Debian's chromium, driven by
#                        playwright-core pinned in tests/dashboard/package-lock.json) against the
#                        test stack (var/test/env): screenshots in var/test/dashboard-shots/

WEB_OUT  := $(B)/web
WEB_SRC  := $(wildcard web/*.html web/*.js web/*.css)
WEB_DEPS := web/node_modules/.package-lock.json

.PHONY: dashboard-web test-dashboard
all: dashboard-web
dashboard-web: $(WEB_OUT)/vendor/chart.umd.js $(patsubst web/%,$(WEB_OUT)/%,$(WEB_SRC))

$(WEB_DEPS): web/package.json web/package-lock.json
	cd web && npm ci --silent --no-audit --no-fund
	touch $@

$(WEB_OUT)/vendor/chart.umd.js: $(WEB_DEPS)
	@mkdir -p $(dir $@)
	cp web/node_modules/chart.js/dist/chart.umd.js $@

$(WEB_OUT)/%: web/%
	@mkdir -p $(dir $@)
	cp $< $@

test-dashboard: dashboard-web $(BIN)/tollgatectl
	cd tests/dashboard && npm ci --silent --no-audit --no-fund
	NODE_EXTRA_CA_CERTS="$$TG_TEST_CERT" node --test tests/dashboard/dashboard.test.mjs

TEST_TARGETS += test-dashboard
