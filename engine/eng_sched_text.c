/* eng_sched_text.c — the per-job text pipeline of the scheduler: a growable
 * buffer, stop-string matching across token boundaries, and DeepSeek-R1
 * <think> splitting.  Pure code, no I/O, no threads.
 *
 * Invariant of both matchers: text is held back only while it could still be
 * the start of a marker (a stop string, "<think>", "</think>"), so output lags
 * input by less than the longest marker. */
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

/* ---- <think> splitting ------------------------------------------------------ */

enum { TH_OFF = 0, TH_DETECT, TH_IN, TH_OUT };

static const char OPEN[] = "<think>", CLOSE[] = "</think>";

void eng_think_init(eng_think_t *th, eng_think_mode_t mode) {
    memset(th, 0, sizeof *th);
    th->state = mode == ENG_THINK_DETECT ? TH_DETECT : mode == ENG_THINK_IN ? TH_IN : TH_OFF;
    th->skip_ws = mode == ENG_THINK_IN;
}

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* Append to dst, dropping leading whitespace while th->skip_ws is set. */
static int emit(eng_think_t *th, eng_buf_t *dst, const char *s, size_t n) {
    if (th->skip_ws) {
        while (n && is_ws(*s)) s++, n--;
        if (n) th->skip_ws = 0;
    }
    return eng_buf_add(dst, s, n);
}

int eng_think_push(eng_think_t *th, const char *text, size_t len, eng_buf_t *content,
                   eng_buf_t *reasoning) {
    if (th->state == TH_OFF) return eng_buf_add(content, text, len);
    if (th->state == TH_OUT) return emit(th, content, text, len);
    if (eng_buf_add(&th->hold, text, len)) return -1;
    for (;;) {
        const char *h = th->hold.p;
        size_t hn = th->hold.len;
        if (th->state == TH_DETECT) {
            size_t ws = 0;
            while (ws < hn && is_ws(h[ws])) ws++;
            size_t rest = hn - ws, ol = sizeof OPEN - 1;
            if (rest < ol && !memcmp(h + ws, OPEN, rest)) return 0; /* undecided */
            if (rest >= ol && !memcmp(h + ws, OPEN, ol)) {
                buf_consume(&th->hold, ws + ol);
                th->state = TH_IN;
                th->skip_ws = 1;
                continue;
            }
            th->state = TH_OUT;
            int rc = emit(th, content, h, hn);
            th->hold.len = 0;
            return rc;
        }
        if (th->state == TH_IN) {
            size_t cl = sizeof CLOSE - 1;
            const char *at = find(h, hn, CLOSE, cl);
            if (at) {
                if (emit(th, reasoning, h, (size_t)(at - h))) return -1;
                buf_consume(&th->hold, (size_t)(at - h) + cl);
                th->state = TH_OUT;
                th->skip_ws = 1;
                continue;
            }
            size_t keep = suffix_prefix(h, hn, CLOSE, cl);
            if (emit(th, reasoning, h, hn - keep)) return -1;
            buf_consume(&th->hold, hn - keep);
            return 0;
        }
        /* TH_OUT after a transition: the rest of hold is content */
        int rc = emit(th, content, h, hn);
        th->hold.len = 0;
        return rc;
    }
}

int eng_think_flush(eng_think_t *th, eng_buf_t *content, eng_buf_t *reasoning) {
    int rc = 0;
    if (th->hold.len) {
        if (th->state == TH_IN)
            rc = emit(th, reasoning, th->hold.p, th->hold.len);
        else
            rc = eng_buf_add(content, th->hold.p, th->hold.len);
    }
    th->hold.len = 0;
    return rc;
}

int eng_think_in_reasoning(const eng_think_t *th) { return th->state == TH_IN; }

void eng_think_free(eng_think_t *th) { eng_buf_free(&th->hold); }
