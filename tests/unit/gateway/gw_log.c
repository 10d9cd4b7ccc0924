/* Unit tests of gateway/gw_log.c: the access-log line, written without
 * printf, against the printf format it replaced (the same bytes for every
 * state a request ends in), and the line is one JSON object. */
#include <stdint.h>
#include <string.h>

#include "../../../gateway/gw_log.c"
#include "tg_json.h"
#include "tg_test.h"

/* The line as gw_log_request wrote it before (printf), the reference. */
static void ref_format(tg_buf_t *b, const gw_req_t *r) {
    time_t sec = (time_t)(r->received_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char ts[40];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    tg_buf_printf(b, "{\"ts\":\"%s.%06lldZ\",\"request_id\":\"%s\",\"remote\":\"%s\",\"method\":\"", ts,
                  (long long)(r->received_us % 1000000), r->id, r->conn->peer);
    if (r->http) tg_json_write_chars(b, r->http->method, strlen(r->http->method));
    tg_buf_printf(b, "\",\"path\":\"");
    if (r->http) tg_json_write_chars(b, r->http->target, strnlen(r->http->target, 512));
    tg_buf_printf(b, "\",\"status\":%d", r->status);
    if (r->admitted) tg_buf_printf(b, ",\"key_id\":%lld,\"customer_id\":%lld", (long long)r->key.key_id,
                                   (long long)r->key.customer_id);
    if (r->model) {
        tg_buf_printf(b, ",\"model\":\"");
        tg_json_write_chars(b, r->model, strlen(r->model));
        tg_buf_printf(b, "\",\"stream\":%s", r->stream ? "true" : "false");
    }
    if (r->proxied) {
        tg_buf_printf(b, ",\"worker\":\"");
        if (r->worker_url) tg_json_write_chars(b, r->worker_url, strlen(r->worker_url));
        tg_buf_printf(b, "\",\"prompt_tokens\":%lld,\"prompt_cache_hit_tokens\":%lld,"
                         "\"completion_tokens\":%lld,\"reasoning_tokens\":%lld,\"usage_reported\":%s",
                      (long long)r->prompt_tokens, (long long)r->cache_hit_tokens,
                      (long long)r->completion_tokens, (long long)r->reasoning_tokens,
                      r->have_usage ? "true" : "false");
    }
    if (r->error_code) {
        tg_buf_printf(b, ",\"error\":\"");
        tg_json_write_chars(b, r->error_code, strlen(r->error_code));
        tg_buf_printf(b, "\"");
    }
    if (r->client_gone) tg_buf_printf(b, ",\"client_aborted\":true");
    tg_buf_printf(b, ",\"ttfb_ms\":%.3f,\"duration_ms\":%.3f}\n",
                  r->first_byte_us ? (r->first_byte_us - r->received_us) / 1000.0 : -1.0,
                  (r->finished_us - r->received_us) / 1000.0);
}

static void check_same(const gw_req_t *r) {
    tg_buf_t got = {0}, want = {0};
    gw_log_format(&got, r);
    gw_log_format(&got, r); /* the second second-cache hit, appended */
    ref_format(&want, r);
    ref_format(&want, r);
    CHECK_EQ_S(got.p, want.p);
    char *nl = got.p ? strchr(got.p, '\n') : NULL;
    tg_json_err_t e;
    tg_json_t *j = nl ? tg_json_parse(got.p, (size_t)(nl - got.p), NULL, &e) : NULL;
    CHECK(j && tg_json_type(j) == TG_JSON_OBJECT);
    tg_json_free(j);
    tg_buf_free(&got);
    tg_buf_free(&want);
}

static void test_line(void) {
    gw_conn_t c;
    memset(&c, 0, sizeof c);
    strcpy(c.peer, "127.0.0.1");
    gw_http_req_t h;
    memset(&h, 0, sizeof h);
    char target[700];
    h.method = "POST";
    h.target = "/v1/chat/completions";
    gw_req_t r;
    memset(&r, 0, sizeof r);
    r.conn = &c;
    strcpy(r.id, "01a22a42-8cd7-70d3-8000-000000000001");
    r.received_us = 1796000000000005LL; /* 2026-11-30, 5 µs past the second: zero padded */
    r.finished_us = r.received_us + 1234;
    r.status = 400;
    check_same(&r); /* unparsable input: no http, no model, no first byte */
    r.http = &h;
    r.error_code = "invalid_request";
    check_same(&r);
    r.status = 200;
    r.error_code = NULL;
    r.admitted = 1;
    r.key.key_id = 42;
    r.key.customer_id = INT64_MAX;
    r.model = "deepseek-v3-demo";
    r.proxied = 2;
    r.worker_url = "http://127.0.0.1:8500";
    r.prompt_tokens = 17;
    r.cache_hit_tokens = 0;
    r.completion_tokens = 1000000000000LL;
    r.reasoning_tokens = 3;
    r.have_usage = 1;
    r.first_byte_us = r.received_us + 999;
    check_same(&r);
    for (int64_t d = -2001; d <= 2001; d += 7) { /* every rounding of the milliseconds, negative ones too */
        r.received_us = 1796000000999999LL - d;
        r.first_byte_us = r.received_us + d;
        r.finished_us = r.received_us - d;
        check_same(&r);
    }
    r.stream = 1;
    r.have_usage = 0;
    r.client_gone = 1;
    r.status = 499;
    r.worker_url = NULL;
    r.model = "m\"odel\xff\xc3\xa9"; /* escaped, bad UTF-8 replaced */
    memset(target, 'a', sizeof target - 1);
    target[sizeof target - 1] = '\0';
    target[3] = '\x01';
    h.target = target; /* cut at 512 bytes */
    check_same(&r);
    r.worker_url = "http://w\"orker\\:8500"; /* configured text, escaped like the rest */
    r.error_code = "upstream_\"error";
    check_same(&r);
    r.received_us = 0; /* the epoch: the second cache's first value */
    r.finished_us = 0;
    r.first_byte_us = 0;
    check_same(&r);
}

TG_TEST_MAIN(test_line)
