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

int eng_buf_add(eng_buf_t *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void eng_buf_free(eng_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Drop the first n bytes of b. */
static void buf_consume(eng_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p) b->p[b->len] = 0;
}

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

int eng_stop_push(eng_stop_t *st, const char *text, size_t len, eng_buf_t *out) {
    if (st->matched) return 1;
    if (!st->n_stop) return eng_buf_add(out, text, len) ? -1 : 0;
    if (eng_buf_add(&st->hold, text, len)) return -1;
    const char *h = st->hold.p;
    size_t hn = st->hold.len;
    const char *first = NULL;
    for (int i = 0; i < st->n_stop; i++) {
        const char *at = find(h, hn, st->stop[i], st->stop_len[i]);
        if (at && (!first || at < first)) first = at;
    }
    if (first) {
        st->matched = 1;
        int rc = eng_buf_add(out, h, (size_t)(first - h));
        eng_buf_free(&st->hold);
        return rc ? -1 : 1;
    }
    size_t keep = 0;
    for (int i = 0; i < st->n_stop; i++) {
        size_t k = suffix_prefix(h, hn, st->stop[i], st->stop_len[i]);
        if (k > keep) keep = k;
    }
    if (eng_buf_add(out, h, hn - keep)) return -1;
    buf_consume(&st->hold, hn - keep);
    return 0;
}

int eng_stop_flush(eng_stop_t *st, eng_buf_t *out) {
    int rc = 0;
    if (!st->matched && st->hold.len) rc = eng_buf_add(out, st->hold.p, st->hold.len);
    st->hold.len = 0;
    return rc;
}

void eng_stop_free(eng_stop_t *st) { eng_buf_free(&st->hold); }

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

int eng_think_push(eng_think_t *th, const char *text, size_t len, eng_buf_t *content,
                   eng_buf_t *reasoning) {
    if (!th->on) return eng_buf_add(content, text, len);
    if (think_scratch(th, len)) return -1;
    size_t rl = 0, cl = 0;
    tok_r1_feed(&th->st, text, len, th->rbuf, &rl, th->cbuf, &cl);
    if (eng_buf_add(reasoning, th->rbuf, rl) || eng_buf_add(content, th->cbuf, cl)) return -1;
    return 0;
}

int eng_think_flush(eng_think_t *th, eng_buf_t *content, eng_buf_t *reasoning) {
    if (!th->on) return 0;
    if (think_scratch(th, 0)) return -1;
    size_t rl = 0, cl = 0;
    tok_r1_finish(&th->st, th->rbuf, &rl, th->cbuf, &cl);
    if (eng_buf_add(reasoning, th->rbuf, rl) || eng_buf_add(content, th->cbuf, cl)) return -1;
    return 0;
}

int eng_think_in_reasoning(const eng_think_t *th) { return th->on && th->st.phase < 2; }

void eng_think_free(eng_think_t *th) {
    free(th->rbuf);
    free(th->cbuf);
    th->rbuf = th->cbuf = NULL;
    th->cap = 0;
}
