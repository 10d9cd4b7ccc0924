/* eng_sched_text.c — the per-job text pipeline of the scheduler: a growable
 * buffer, stop-string matching across token boundaries, and DeepSeek-R1
 * <think> splitting (over the tokenizer's tok_r1_feed).  Pure code, no I/O,
 * no threads.
 *
 * Invariant: text is held back only while it could still be the start of a
 * marker (a stop string; "<think>"/"</think>" inside tok_r1_feed), so output
 * lags input by less than the longest marker. */
#include "eng_sched.h"

#include <stdlib.h>
#include <string.h>

/* Length of the longest proper suffix of s[0..n) that is a prefix of pat. */
static size_t suffix_prefix(const char *s, size_t n, const char *pat, size_t plen) {
    size_t k = n < plen ? n : plen - 1;
    if (plen == 0) return 0;
    if (k >= plen) k = plen - 1;
    for (; k > 0; k--)
        if (!memcmp(s + n - k, pat, k)) return k;
    return 0;
}

static const char *find(const char *h, size_t hn, const char *n, size_t nn) {
    if (nn == 0 || nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == n[0] && !memcmp(h + i, n, nn)) return h + i;
    return NULL;
}

/* ---- stop strings ---------------------------------------------------------- */

void eng_stop_init(eng_stop_t *st, const char *const *stop, const size_t *len, int n) {
    memset(st, 0, sizeof *st);
    for (int i = 0; i < n && st->n_stop < ENG_MAX_STOP; i++) {
        if (!stop[i] || !len[i]) continue; /* an empty stop string never matches */
        st->stop[st->n_stop] = stop[i];
        st->stop_len[st->n_stop++] = len[i];
    }
}

int eng_stop_push(eng_stop_t *st, const char *text, size_t len, tg_buf_t *out) {
    if (st->matched) return 1;
    st->in_total += len;
    if (!st->n_stop) {
        st->out_total += len;
        return tg_buf_put(out, text, len) ? -1 : 0;
    }
    if (tg_buf_put(&st->hold, text, len)) return -1;
    const char *h = st->hold.p;
    size_t hn = st->hold.len;
    const char *first = NULL;
    for (int i = 0; i < st->n_stop; i++) {
        const char *at = find(h, hn, st->stop[i], st->stop_len[i]);
        if (at && (!first || at < first)) first = at;
    }
    if (first) {
        st->matched = 1;
        st->out_total += (size_t)(first - h);
        int rc = tg_buf_put(out, h, (size_t)(first - h));
        tg_buf_free(&st->hold);
        return rc ? -1 : 1;
    }
    size_t keep = 0;
    for (int i = 0; i < st->n_stop; i++) {
        size_t k = suffix_prefix(h, hn, st->stop[i], st->stop_len[i]);
        if (k > keep) keep = k;
    }
    if (tg_buf_put(out, h, hn - keep)) return -1;
    st->out_total += hn - keep;
    tg_buf_consume(&st->hold, hn - keep);
    return 0;
}

int eng_stop_flush(eng_stop_t *st, tg_buf_t *out) {
    int rc = 0;
    if (!st->matched && st->hold.len) rc = tg_buf_put(out, st->hold.p, st->hold.len), st->out_total += st->hold.len;
    st->hold.len = 0;
    return rc;
}

void eng_stop_free(eng_stop_t *st) { tg_buf_free(&st->hold); }

/* ---- <think> splitting (tok_r1_feed does the matching) ------------------------ */

void eng_think_init(eng_think_t *th, eng_think_mode_t mode) {
    memset(th, 0, sizeof *th);
    th->on = mode != ENG_THINK_OFF;
}

static int think_scratch(eng_think_t *th, size_t n) {
    size_t need = n + 128; /* tok_r1_feed writes at most n + 80 bytes per output */
    if (need <= th->cap) return 0;
    char *r = realloc(th->rbuf, need);
    if (!r) return -1;
    th->rbuf = r;
    char *c = realloc(th->cbuf, need);
    if (!c) return -1;
    th->cbuf = c;
    th->cap = need;
    return 0;
}

int eng_think_push(eng_think_t *th, const char *text, size_t len, tg_buf_t *content,
                   tg_buf_t *reasoning) {
    if (!th->on) return tg_buf_put(content, text, len);
    if (think_scratch(th, len)) return -1;
    size_t rl = 0, cl = 0;
    tok_r1_feed(&th->st, text, len, th->rbuf, &rl, th->cbuf, &cl);
    if (tg_buf_put(reasoning, th->rbuf, rl) || tg_buf_put(content, th->cbuf, cl)) return -1;
    return 0;
}

int eng_think_flush(eng_think_t *th, tg_buf_t *content, tg_buf_t *reasoning) {
    if (!th->on) return 0;
    if (think_scratch(th, 0)) return -1;
    size_t rl = 0, cl = 0;
    tok_r1_finish(&th->st, th->rbuf, &rl, th->cbuf, &cl);
    if (tg_buf_put(reasoning, th->rbuf, rl) || tg_buf_put(content, th->cbuf, cl)) return -1;
    return 0;
}

int eng_think_in_reasoning(const eng_think_t *th) { return th->on && th->st.phase < 2; }

void eng_think_free(eng_think_t *th) {
    free(th->rbuf);
    free(th->cbuf);
    th->rbuf = th->cbuf = NULL;
    th->cap = 0;
}
