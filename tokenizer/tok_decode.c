/* tok_decode.c — ids -> UTF-8.  Each id stands for a byte string (decoded
 * byte-level form, prepared by tok_load); the concatenation is turned into
 * valid UTF-8 by replacing every maximal invalid subpart with U+FFFD (Rust's
 * from_utf8_lossy, which Hugging Face uses).  The stream decoder emits a
 * character only when all its bytes have arrived; the concatenation of its
 * outputs equals tok_decode of the same ids. */
#include <stdlib.h>
#include <string.h>

#include "tg_json.h"
#include "tok-int.h"

/* Output in tg_json's growing, NUL-terminated byte buffer. */
typedef tg_buf_t buf_t;

static int buf_put(buf_t *b, const void *s, size_t n) { return tg_buf_put(b, s, n); }

static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Append the lossy UTF-8 of s[0..n) to b.  When final is 0, a trailing valid
 * but incomplete sequence is not consumed; returns the bytes consumed, or -1. */
static long lossy(buf_t *b, const uint8_t *s, size_t n, int final) {
    size_t i = 0, run = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad = 0;
        int l = tg_utf8_seq(s + i, n - i, &bad);
        if (l > 0) {
            i += (size_t)l;
            continue;
        }
        if (l < 0 && !final) break;
        if (buf_put(b, s + run, i - run) || buf_put(b, fffd, 3)) return -1;
        i += l < 0 ? n - i : bad;
        run = i;
    }
    if (buf_put(b, s + run, i - run)) return -1;
    return (long)i;
}

char *tok_decode(const tok_t *t, const int32_t *ids, size_t n, int skip_special, size_t *len) {
    buf_t raw = {0}, out = {0};
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) goto fail;
        if (skip_special && t->is_special[ids[i]]) continue;
        if (buf_put(&raw, t->text + t->off[ids[i]], t->off[ids[i] + 1] - t->off[ids[i]])) goto fail;
    }
    if (buf_put(&out, "", 0)) goto fail;
    if (raw.len && lossy(&out, (const uint8_t *)raw.p, raw.len, 1) < 0) goto fail;
    free(raw.p);
    if (len) *len = out.len;
    return out.p;
fail:
    free(raw.p);
    free(out.p);
    return NULL;
}

struct tok_stream {
    const tok_t *t;
    int skip_special;
    uint8_t pend[8]; /* bytes of an incomplete character */
    size_t npend;
    buf_t out;
};

tok_stream_t *tok_stream_new(const tok_t *t, int skip_special) {
    tok_stream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->t = t;
    s->skip_special = skip_special;
    return s;
}

void tok_stream_free(tok_stream_t *s) {
    if (!s) return;
    free(s->out.p);
    free(s);
}

const char *tok_stream_push(tok_stream_t *s, int32_t id, size_t *len) {
    const tok_t *t = s->t;
    if (id < 0 || id >= t->n_vocab) return NULL;
    s->out.len = 0;
    s->out.oom = 0; /* a failed call before does not fail this one */
    if (buf_put(&s->out, "", 0)) return NULL;
    if (s->skip_special && t->is_special[id]) {
        *len = 0;
        return s->out.p;
    }
    const uint8_t *tx = (const uint8_t *)t->text + t->off[id];
    size_t tn = t->off[id + 1] - t->off[id];
    /* pending bytes + the new ones; only the head can be incomplete from before */
    size_t tot = s->npend + tn;
    uint8_t small[64];
    uint8_t *w = tot <= sizeof small ? small : malloc(tot);
    if (!w) return NULL;
    memcpy(w, s->pend, s->npend);
    memcpy(w + s->npend, tx, tn);
    long used = lossy(&s->out, w, tot, 0);
    if (used < 0) {
        if (w != small) free(w);
        return NULL;
    }
    s->npend = tot - (size_t)used; /* < 4: an incomplete valid prefix */
    memcpy(s->pend, w + used, s->npend);
    if (w != small) free(w);
    *len = s->out.len;
    return s->out.p;
}

const char *tok_stream_flush(tok_stream_t *s, size_t *len) {
    s->out.len = 0;
    s->out.oom = 0; /* a failed call before does not fail this one */
    if (buf_put(&s->out, "", 0)) return NULL;
    if (s->npend && lossy(&s->out, s->pend, s->npend, 1) < 0) return NULL;
    s->npend = 0;
    *len = s->out.len;
    return s->out.p;
}
