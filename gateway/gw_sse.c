/* gw_sse.c — splits a server-sent-events byte stream (already de-chunked)
 * into whole events, so the proxy can look at each one (usage chunk) and
 * forward it as a unit.  An event ends at a blank line: "\n\n", "\n\r\n"
 * ("\r\n\r\n" included).  Bare-CR line endings are not produced by the
 * workers we speak to and are not recognised. */
#include <string.h>

#include "gw-int.h"

int gw_sse_feed(gw_sse_t *s, const char *data, size_t len) { return tg_buf_put(&s->buf, data, len); }

/* Bytes consumed by the event handed out last; dropped on the next call. */
static size_t gw_sse_end(const char *p, size_t len, size_t from) {
    for (size_t i = from; i < len; i++) {
        if (p[i] != '\n') continue;
        if (i + 1 < len && p[i + 1] == '\n') return i + 2;
        if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n') return i + 3;
    }
    return 0;
}

int gw_sse_next(gw_sse_t *s, const char **ev, size_t *len) {
    /* s->scan holds, with its top bit set, the size of the event handed out
     * last; it is consumed now that the caller is done with it. */
    const size_t handed = (size_t)1 << (sizeof(size_t) * 8 - 1);
    if (s->scan & handed) {
        tg_buf_consume(&s->buf, s->scan & ~handed);
        s->scan = 0;
    }
    size_t from = s->scan > 2 ? s->scan - 2 : 0;
    size_t e = gw_sse_end(s->buf.p, s->buf.len, from);
    if (!e) {
        s->scan = s->buf.len;
        return GW_AGAIN;
    }
    *ev = s->buf.p;
    *len = e;
    s->scan = e | handed;
    return GW_OK;
}

size_t gw_sse_pending(const gw_sse_t *s) {
    const size_t handed = (size_t)1 << (sizeof(size_t) * 8 - 1);
    return s->buf.len - ((s->scan & handed) ? (s->scan & ~handed) : 0);
}

int gw_sse_data(const char *ev, size_t len, tg_buf_t *out) {
    const char *p = ev, *end = ev + len;
    int found = 0;
    out->len = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        const char *le = eol;
        if (le > p && le[-1] == '\r') le--;
        if (le - p >= 5 && !memcmp(p, "data:", 5)) {
            const char *v = p + 5;
            if (v < le && *v == ' ') v++;
            if (found && tg_buf_put(out, "\n", 1) != GW_OK) return GW_ERROR;
            if (tg_buf_put(out, v, (size_t)(le - v)) != GW_OK) return GW_ERROR;
            found = 1;
        }
        p = eol + 1;
    }
    if (found && !out->p && tg_buf_put(out, "", 0) != GW_OK) return GW_ERROR;
    return found ? GW_OK : GW_AGAIN;
}

void gw_sse_release(gw_sse_t *s) {
    tg_buf_free(&s->buf);
    s->scan = 0;
}
