/* Unit tests of gateway/gw_config.c: defaults, file, environment and flag
 * overrides in that order, and clear errors on bad values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"

static char path[64];

static void write_file(const char *text) {
    snprintf(path, sizeof path, "/tmp/gw_config_test_%d.json", (int)getpid());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_defaults(void) {
    char err[256];
    char *argv[] = {"tollgate", "--config", "/dev/null/none", NULL};
    CHECK(gw_config_load(3, argv, err, sizeof err) == NULL); /* missing file is an error */
    CHECK(strstr(err, "/dev/null/none") != NULL);
    write_file("{}");
    char *argv2[] = {"tollgate", "--config", path, NULL};
    gw_config_t *c = gw_config_load(3, argv2, err, sizeof err);
    CHECK(c != NULL);
    if (!c) return;
    CHECK_EQ_S(c->listen, "127.0.0.1:8443");
    CHECK_EQ_S(c->admin_listen, "127.0.0.1:8444");
    CHECK_EQ_I(c->max_body_bytes, 1048576);
    CHECK_EQ_I(c->default_rpm, 0);
    CHECK_EQ_I(c->redis_fail_closed, 0);
    CHECK_EQ_I(c->nworkers, 1);
    CHECK_EQ_S(c->workers[0].url, "http://127.0.0.1:8500");
    CHECK_EQ_I(c->workers[0].port, 8500);
    CHECK_EQ_S(c->workers[0].models[0], "deepseek-v3-demo");
    gw_config_free(c);
}

static void test_priority(void) {
    char err[256];
    write_file("{\"listen\":\"127.0.0.1:1111\",\"max_body_bytes\":2048,\"default_rpm\":5,"
               "\"redis\":\"127.0.0.1:7000\",\"_comment\":\"ignored\","
               "\"workers\":[{\"url\":\"http://127.0.0.1:9000\",\"models\":[\"a\",\"b\"]},"
               "{\"url\":\"http://localhost:9001/\",\"models\":[\"b\"]}]}");
    setenv("TOLLGATE_MAX_BODY_BYTES", "4096", 1);
    setenv("TOLLGATE_DEFAULT_RPM", "7", 1);
    char *argv[] = {"tollgate", "--config", path, "--default-rpm", "9", "--redis_fail_closed=true", NULL};
    gw_config_t *c = gw_config_load(6, argv, err, sizeof err);
    unsetenv("TOLLGATE_MAX_BODY_BYTES");
    unsetenv("TOLLGATE_DEFAULT_RPM");
    CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_EQ_S(c->listen, "127.0.0.1:1111");   /* file */
    CHECK_EQ_I(c->max_body_bytes, 4096);       /* env beats file */
    CHECK_EQ_I(c->default_rpm, 9);             /* flag beats env */
    CHECK_EQ_I(c->redis_fail_closed, 1);
    CHECK_EQ_S(c->redis, "127.0.0.1:7000");
    CHECK_EQ_I(c->nworkers, 2);
    CHECK_EQ_I(c->workers[0].nmodels, 2);
    CHECK_EQ_S(c->workers[1].host, "localhost");
    CHECK_EQ_I(c->workers[1].port, 9001);
    CHECK_EQ_I(c->workers[1].addr.ss_family, AF_INET); /* "localhost" resolves to 127.0.0.1 first */
    gw_config_free(c);

    setenv("TOLLGATE_WORKERS", "[{\"url\":\"http://127.0.0.1:7\",\"models\":[\"z\"]}]", 1);
    char *argv2[] = {"tollgate", "--config", path, NULL};
    c = gw_config_load(3, argv2, err, sizeof err);
    unsetenv("TOLLGATE_WORKERS");
    CHECK(c && c->nworkers == 1 && !strcmp(c->workers[0].models[0], "z"));
    gw_config_free(c);
}

static int fails(const char *file_text, const char *flag, const char *val, const char *want) {
    char err[256] = "";
    write_file(file_text);
    char *argv[] = {"tollgate", "--config", path, (char *)flag, (char *)val, NULL};
    gw_config_t *c = gw_config_load(flag ? 5 : 3, argv, err, sizeof err);
    int ok = c == NULL && strstr(err, want) != NULL;
    if (!ok) fprintf(stderr, "  config error \"%s\" lacks \"%s\"\n", err, want);
    gw_config_free(c);
    return ok;
}

static void test_errors(void) {
    CHECK(fails("{\"max_body_bytes\":\"big\"}", NULL, NULL, "max_body_bytes"));
    CHECK(fails("{\"max_body_bytes\":0}", NULL, NULL, "max_body_bytes"));
    CHECK(fails("{\"max_body_bytes\":1.5}", NULL, NULL, "max_body_bytes"));
    CHECK(fails("{\"no_such_option\":1}", NULL, NULL, "no_such_option"));
    CHECK(fails("[1,2]", NULL, NULL, "JSON object"));
    CHECK(fails("{\"listen\":", NULL, NULL, "JSON object"));
    CHECK(fails("{}", "--idle-timeout-ms", "-5", "idle_timeout_ms"));
    CHECK(fails("{}", "--bogus", "1", "--bogus"));
    CHECK(fails("{}", "--redis_fail_closed", "maybe", "redis_fail_closed"));
    CHECK(fails("{\"workers\":[{\"url\":\"ftp://x:1\",\"models\":[\"a\"]}]}", NULL, NULL, "workers[0].url"));
    CHECK(fails("{\"workers\":[{\"url\":\"http://127.0.0.1:1\",\"models\":[\"a\"],\"log\":\"x\"}]}", NULL, NULL,
                "workers[0].log"));
    CHECK(fails("{\"workers\":[{\"url\":\"http://127.0.0.1:1\",\"models\":[\"a\"],\"command\":[]}]}", NULL, NULL,
                "workers[0].command"));
    CHECK(fails("{\"workers\":[{\"url\":\"http://127.0.0.1:1\",\"models\":[\"a\"],\"command\":\"x\"}]}", NULL, NULL,
                "workers[0].command"));
    CHECK(fails("{\"workers\":[{\"url\":\"http://127.0.0.1:1\",\"models\":[\"a\"],\"command\":[\"a\",1]}]}", NULL,
                NULL, "workers[0].command[1]"));
    CHECK(fails("{\"workers\":[{\"url\":\"https://127.0.0.1:1\",\"models\":[\"a\"],\"api_key\":\"a\\r\\nX: y\"}]}", NULL,
                NULL, "workers[0].api_key"));
    CHECK(fails("{\"workers\":[{\"url\":\"http://127.0.0.1:1\",\"models\":[]}]}", NULL, NULL, "models"));
    CHECK(fails("{\"workers\":[]}", NULL, NULL, "no workers"));
}

/* The pool's fields of a worker entry: command (argv), https, api_key, tls_ca. */
static void test_pool_entries(void) {
    write_file("{\"workers\":[{\"url\":\"http://127.0.0.1:9000\",\"models\":[\"a\"],"
               "\"command\":[\"build/tollgate-engine\",\"serve\",\"--listen\",\"127.0.0.1:9000\"],\"log\":\"e.log\"},"
               "{\"url\":\"https://127.0.0.1\",\"models\":[\"a\"],\"api_key\":\"sk-up\",\"tls_ca\":\"ca.pem\"}]}");
    char *argv[] = {"tollgate", "--config", path, NULL};
    char err[256];
    gw_config_t *c = gw_config_load(3, argv, err, sizeof err);
    CHECK(c != NULL);
    if (!c) return;
    CHECK_EQ_I(c->nworkers, 2);
    CHECK(c->workers[0].command && !strcmp(c->workers[0].command[0], "build/tollgate-engine") &&
          !strcmp(c->workers[0].command[3], "127.0.0.1:9000") && !c->workers[0].command[4]);
    CHECK(c->workers[0].log && !strcmp(c->workers[0].log, "e.log"));
    CHECK_EQ_I(c->workers[0].tls, 0);
    CHECK(c->workers[0].api_key == NULL);
    CHECK_EQ_I(c->workers[1].tls, 1);
    CHECK_EQ_I(c->workers[1].port, 443);
    CHECK(c->workers[1].command == NULL);
    CHECK(c->workers[1].api_key && !strcmp(c->workers[1].api_key, "sk-up"));
    CHECK(c->workers[1].tls_ca && !strcmp(c->workers[1].tls_ca, "ca.pem"));
    gw_config_free(c);
}

static void test_hostport(void) {
    char h[64];
    int p;
    CHECK_EQ_I(gw_split_hostport("127.0.0.1:8443", h, sizeof h, &p), GW_OK);
    CHECK_EQ_S(h, "127.0.0.1");
    CHECK_EQ_I(p, 8443);
    CHECK_EQ_I(gw_split_hostport("[::1]:99", h, sizeof h, &p), GW_OK);
    CHECK_EQ_S(h, "::1");
    CHECK_EQ_I(gw_split_hostport("host", h, sizeof h, &p), GW_ERROR);
    CHECK_EQ_I(gw_split_hostport("host:0", h, sizeof h, &p), GW_ERROR);
    CHECK_EQ_I(gw_split_hostport("host:70000", h, sizeof h, &p), GW_ERROR);
    CHECK_EQ_I(gw_split_hostport(":80", h, sizeof h, &p), GW_ERROR);
}

static void test_cleanup(void) { unlink(path); }

TG_TEST_MAIN(test_defaults, test_priority, test_errors, test_pool_entries, test_hostport, test_cleanup)
