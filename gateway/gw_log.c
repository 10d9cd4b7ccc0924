/* gw_log.c — the access log: one JSON line per request (README "Request
 * flow" 5 names the fields). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "gw-int.h"
#include "tg_work.h"

typedef struct {
    FILE *f;
    tg_buf_t b;
} gw_log_job_t;

static void gw_log_write(void *arg) {
    gw_log_job_t *j = arg;
    fwrite(j->b.p, 1, j->b.len, j->f); /* stdio locks the stream: a batch holds whole lines, the loops' do not mix */
    fflush(j->f);
}

static void gw_log_free(void *arg) {
    gw_log_job_t *j = arg;
    tg_buf_free(&j->b);
    free(j);
}

void gw_log_request(gw_req_t *r) {
    gw_loop_t *l = r->loop;
    if (!r->srv->alog) return;
    tg_buf_t b = l->alog; /* appended to the loop's batch */
    time_t sec = (time_t)(r->received_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char ts[40];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    tg_buf_printf(&b, "{\"ts\":\"%s.%06lldZ\",\"request_id\":\"%s\",\"remote\":\"%s\",\"method\":\"", ts,
                  (long long)(r->received_us % 1000000), r->id, r->conn->peer);
    if (r->http) tg_json_write_chars(&b, r->http->method, strlen(r->http->method));
    tg_buf_printf(&b, "\",\"path\":\"");
    if (r->http) tg_json_write_chars(&b, r->http->target, strnlen(r->http->target, 512));
    tg_buf_printf(&b, "\",\"status\":%d", r->status);
    if (r->admitted) tg_buf_printf(&b, ",\"key_id\":%lld,\"customer_id\":%lld", (long long)r->key.key_id,
                                   (long long)r->key.customer_id);
    if (r->model) {
        tg_buf_printf(&b, ",\"model\":\"");
        tg_json_write_chars(&b, r->model, strlen(r->model));
        tg_buf_printf(&b, "\",\"stream\":%s", r->stream ? "true" : "false");
    }
    if (r->proxied)
        tg_buf_printf(&b, ",\"worker\":\"%s\",\"prompt_tokens\":%lld,\"prompt_cache_hit_tokens\":%lld,"
                          "\"completion_tokens\":%lld,\"reasoning_tokens\":%lld,\"usage_reported\":%s",
                      r->worker_url ? r->worker_url : "", (long long)r->prompt_tokens, (long long)r->cache_hit_tokens,
                      (long long)r->completion_tokens, (long long)r->reasoning_tokens,
                      r->have_usage ? "true" : "false");
    if (r->error_code) tg_buf_printf(&b, ",\"error\":\"%s\"", r->error_code);
    if (r->client_gone) tg_buf_printf(&b, ",\"client_aborted\":true");
    tg_buf_printf(&b, ",\"ttfb_ms\":%.3f,\"duration_ms\":%.3f}\n",
                  r->first_byte_us ? (r->first_byte_us - r->received_us) / 1000.0 : -1.0,
                  (r->finished_us - r->received_us) / 1000.0);
    l->alog = b;
    if (l->alog.len >= GW_LOG_BATCH || !l->alog_ev) gw_log_flush(l);
    else if (!evtimer_pending(l->alog_ev, NULL)) {
        struct timeval tv = {0, GW_LOG_FLUSH_MS * 1000};
        evtimer_add(l->alog_ev, &tv);
    }
}

/* Hand the batch to the loop's worker thread (written there, in order: one
 * thread); without one, or out of memory, write it here. */
void gw_log_flush(gw_loop_t *l) {
    FILE *f = l->srv->alog;
    if (!l->alog.len || !f) return;
    if (l->alog_ev) evtimer_del(l->alog_ev);
    gw_log_job_t *j = malloc(sizeof *j);
    if (j) {
        j->f = f;
        j->b = l->alog;
        memset(&l->alog, 0, sizeof l->alog);
        if (l->work && tg_work_submit(l->work, gw_log_write, gw_log_free, j) == 0) return;
        l->alog = j->b;
        free(j);
    }
    fwrite(l->alog.p, 1, l->alog.len, f);
    fflush(f);
    l->alog.len = 0;
}

static void gw_log_on_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    gw_log_flush(arg);
}

int gw_log_init(gw_loop_t *l) {
    l->alog_ev = evtimer_new(l->base, gw_log_on_timer, l);
    return l->alog_ev ? GW_OK : GW_ERROR;
}

/* Before the loop's worker thread stops: what is gathered goes to it. */
void gw_log_release(gw_loop_t *l) {
    gw_log_flush(l);
    if (l->alog_ev) event_free(l->alog_ev);
    l->alog_ev = NULL;
}
