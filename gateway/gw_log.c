/* gw_log.c — the access log: one JSON line per request (README "Request
 * flow" 5 names the fields). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw-int.h"
#include "tg_work.h"

typedef struct {
    FILE *f;
    gw_buf_t b;
} gw_log_job_t;

static void gw_log_write(void *arg) {
    gw_log_job_t *j = arg;
    fwrite(j->b.p, 1, j->b.len, j->f); /* stdio locks the stream: the loops' lines do not mix */
    fflush(j->f);
}

static void gw_log_free(void *arg) {
    gw_log_job_t *j = arg;
    gw_buf_free(&j->b);
    free(j);
}

void gw_log_request(gw_req_t *r) {
    FILE *f = r->srv->alog;
    if (!f) return;
    gw_buf_t b = {0};
    time_t sec = (time_t)(r->received_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char ts[40];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    gw_buf_printf(&b, "{\"ts\":\"%s.%06lldZ\",\"request_id\":\"%s\",\"remote\":\"%s\",\"method\":\"", ts,
                  (long long)(r->received_us % 1000000), r->id, r->conn->peer);
    if (r->http) gw_buf_json_str(&b, r->http->method, strlen(r->http->method));
    gw_buf_printf(&b, "\",\"path\":\"");
    if (r->http) gw_buf_json_str(&b, r->http->target, strnlen(r->http->target, 512));
    gw_buf_printf(&b, "\",\"status\":%d", r->status);
    if (r->admitted) gw_buf_printf(&b, ",\"key_id\":%lld,\"customer_id\":%lld", (long long)r->key.key_id,
                                   (long long)r->key.customer_id);
    if (r->model) {
        gw_buf_printf(&b, ",\"model\":\"");
        gw_buf_json_str(&b, r->model, strlen(r->model));
        gw_buf_printf(&b, "\",\"stream\":%s", r->stream ? "true" : "false");
    }
    if (r->proxied)
        gw_buf_printf(&b, ",\"worker\":\"%s\",\"prompt_tokens\":%lld,\"prompt_cache_hit_tokens\":%lld,"
                          "\"completion_tokens\":%lld,\"reasoning_tokens\":%lld,\"usage_reported\":%s",
                      r->worker_url ? r->worker_url : "", (long long)r->prompt_tokens, (long long)r->cache_hit_tokens,
                      (long long)r->completion_tokens, (long long)r->reasoning_tokens,
                      r->have_usage ? "true" : "false");
    if (r->error_code) gw_buf_printf(&b, ",\"error\":\"%s\"", r->error_code);
    if (r->client_gone) gw_buf_printf(&b, ",\"client_aborted\":true");
    gw_buf_printf(&b, ",\"ttfb_ms\":%.3f,\"duration_ms\":%.3f}\n",
                  r->first_byte_us ? (r->first_byte_us - r->received_us) / 1000.0 : -1.0,
                  (r->finished_us - r->received_us) / 1000.0);
    if (!b.p) return;
    /* written on the loop's worker thread, in order (one thread) */
    gw_log_job_t *j = malloc(sizeof *j);
    if (j) {
        j->f = f;
        j->b = b;
        if (r->loop->work && tg_work_submit(r->loop->work, gw_log_write, gw_log_free, j) == 0) return;
        free(j);
    }
    fwrite(b.p, 1, b.len, f);
    fflush(f);
    gw_buf_free(&b);
}
