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

/* "YYYY-MM-DDTHH:MM:SS" of sec, formatted once a second per thread (a loop
 * logs many requests a second: gmtime_r and strftime once). */
static const char *gw_log_ts(time_t sec) {
    static __thread tg_timefmt_t c = TG_TIMEFMT_INIT;
    return tg_timefmt(&c, sec, "%Y-%m-%dT%H:%M:%S");
}

/* r's line, appended to b: the fields of README "Request flow" 5, written
 * without printf (it was a tenth of the gateway's instructions per request);
 * the bytes are those "%lld" and "%.3f" gave before. */
void gw_log_format(tg_buf_t *b, const gw_req_t *r) {
    int64_t us = r->received_us % 1000000;
    char frac[8];
    for (int i = 5; i >= 0; i--, us /= 10) frac[i] = (char)('0' + (us < 0 ? 0 : us % 10));
    tg_buf_puts(b, "{\"ts\":\"");
    tg_buf_puts(b, gw_log_ts((time_t)(r->received_us / 1000000)));
    tg_buf_put(b, ".", 1);
    tg_buf_put(b, frac, 6);
    tg_buf_puts(b, "Z\",\"request_id\":\"");
    tg_buf_puts(b, r->id);
    tg_buf_puts(b, "\",\"remote\":\"");
    tg_buf_puts(b, r->conn->peer);
    tg_buf_puts(b, "\",\"method\":\"");
    if (r->http) tg_json_write_chars(b, r->http->method, strlen(r->http->method));
    tg_buf_puts(b, "\",\"path\":\"");
    if (r->http) tg_json_write_chars(b, r->http->target, strnlen(r->http->target, 512));
    tg_buf_puts(b, "\",\"status\":");
    tg_buf_put_i64(b, r->status);
    if (r->admitted) {
        tg_buf_puts(b, ",\"key_id\":");
        tg_buf_put_i64(b, (long long)r->key.key_id);
        tg_buf_puts(b, ",\"customer_id\":");
        tg_buf_put_i64(b, (long long)r->key.customer_id);
    }
    if (r->model) {
        tg_buf_puts(b, ",\"model\":\"");
        tg_json_write_chars(b, r->model, strlen(r->model));
        tg_buf_puts(b, r->stream ? "\",\"stream\":true" : "\",\"stream\":false");
    }
    if (r->proxied) {
        tg_buf_puts(b, ",\"worker\":\"");
        if (r->worker_url) tg_json_write_chars(b, r->worker_url, strlen(r->worker_url)); /* configured text */
        tg_buf_puts(b, "\",\"prompt_tokens\":");
        tg_buf_put_i64(b, (long long)r->prompt_tokens);
        tg_buf_puts(b, ",\"prompt_cache_hit_tokens\":");
        tg_buf_put_i64(b, (long long)r->cache_hit_tokens);
        tg_buf_puts(b, ",\"completion_tokens\":");
        tg_buf_put_i64(b, (long long)r->completion_tokens);
        tg_buf_puts(b, ",\"reasoning_tokens\":");
        tg_buf_put_i64(b, (long long)r->reasoning_tokens);
        tg_buf_puts(b, r->have_usage ? ",\"usage_reported\":true" : ",\"usage_reported\":false");
    }
    if (r->error_code) {
        tg_buf_puts(b, ",\"error\":\"");
        tg_json_write_chars(b, r->error_code, strlen(r->error_code));
        tg_buf_put(b, "\"", 1);
    }
    if (r->client_gone) tg_buf_puts(b, ",\"client_aborted\":true");
    tg_buf_puts(b, ",\"ttfb_ms\":");
    tg_buf_put_fixed(b, r->first_byte_us ? (long long)(r->first_byte_us - r->received_us) : -1000, 3);
    tg_buf_puts(b, ",\"duration_ms\":");
    tg_buf_put_fixed(b, (long long)(r->finished_us - r->received_us), 3);
    tg_buf_puts(b, "}\n");
}

void gw_log_request(gw_req_t *r) {
    gw_loop_t *l = r->loop;
    if (!r->srv->alog) return;
    /* a new batch (the last one went to the worker thread with its buffer):
     * room for all of it at once, not doubled from 64 bytes to 128 KiB */
    if (!l->alog.p && tg_buf_reserve(&l->alog, GW_LOG_BATCH + 4096)) l->alog.oom = 0; /* then as it grows */
    gw_log_format(&l->alog, r); /* appended to the loop's batch */
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
