/* gw_http.c — HTTP/1.1 message parsing without I/O.
 *
 * The request parser takes bytes as they arrive (any split, pipelined
 * requests back to back) and hands out whole requests: head parsed, body
 * de-framed (Content-Length or chunked).  Limits are checked as early as
 * possible: a request line may not exceed GW_HTTP_MAX_REQUEST_LINE bytes
 * (414), the head may not exceed max_header bytes or GW_HTTP_MAX_HEADERS
 * fields (431) — a chunked body's trailer section counts with its head — a declared
 * Content-Length above max_body is refused before any body byte is read (413)
 * and a chunked body is refused as soon as its decoded size passes max_body.
 * A request with both Content-Length and Transfer-Encoding, a transfer coding
 * other than "chunked", a malformed header or request line is refused (400 /
 * 501 / 505); after an error the connection must be closed because the byte
 * stream can no longer be trusted to be in sync.
 *
 * The chunked decoder and the response-head parser are shared with the proxy
 * side (worker replies).  Every line of the chunked framing (chunk size, the
 * CRLF after a chunk's data, trailer fields, the last empty line) must end
 * in CRLF: RFC 9112 §2.2 lets a recipient take a bare LF for the end of a
 * start-line or header field, never of chunk framing, and two parsers that
 * disagree there disagree on where a request ends.  The request line may
 * hold no NUL and its target only visible US-ASCII. */
#include <ctype.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gw-int.h"
#include "tg_http_media.h"

enum { ST_HEAD, ST_BODY_CL, ST_BODY_CHUNKED };

/* ---- chunked ------------------------------------------------------------ */

enum { CH_SIZE, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_TRAILER, CH_TRAILER_LF };

#define GW_CHUNK_LINE_MAX 4096

/* RFC 9110 tchar: ALPHA, DIGIT and "!#$%&'*+-.^_`|~" */
static const unsigned char gw_tchar[256] = {
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1,
    ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1,
    ['|'] = 1, ['~'] = 1,
};

static int is_tchar(unsigned char c) { return gw_tchar[c]; }

/* Whether [q, e) is a valid field value: no control character but HTAB, no
 * DEL (obs-text, 0x80 and above, is allowed).  Eight bytes a step; a word
 * that may hold one of them (a borrow marks only bytes above a true one) is
 * checked byte by byte from there. */
static int gw_value_ok(const unsigned char *q, const unsigned char *e) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    for (uint64_t x, d; e - q >= 8; q += 8) {
        memcpy(&x, q, 8);
        d = x ^ (ones * 0x7f);
        if ((((x - ones * 0x20) & ~x) | ((d - ones) & ~d)) & high) break;
    }
    for (; q < e; q++)
        if ((*q < 0x20 && *q != '\t') || *q == 0x7f) return 0;
    return 1;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

ssize_t gw_chunked_feed(gw_chunked_t *c, const char *in, size_t len, tg_buf_t *out) {
    size_t i = 0;
    while (i < len && !c->done) {
        char ch = in[i];
        switch (c->state) {
        case CH_SIZE: {
            int v = hexval((unsigned char)ch);
            if (v >= 0) {
                if (++c->ndigits > 15) return -1; /* > 2^60: nonsense */
                c->remaining = c->remaining * 16 + (uint64_t)v;
                i++;
            } else if (c->ndigits == 0) {
                return -1;
            } else if (ch == ';' || ch == ' ' || ch == '\t') {
                c->state = CH_EXT;
                c->ext = ch == ';';
                c->line_len = 0;
                i++;
            } else if (ch == '\r') {
                c->state = CH_SIZE_LF;
                i++;
            } else {
                return -1; /* a bare LF ends no line here, nor does anything else */
            }
            break;
        }
        case CH_EXT: /* chunk extensions are ignored, but bounded; blanks only before a ';' */
            if (ch == '\r' && c->ext) {
                c->state = CH_SIZE_LF;
            } else if (ch == '\r' || ch == '\n') {
                return -1; /* "1 \r\n": blanks with no extension after them; or a bare LF */
            } else if (++c->line_len > GW_CHUNK_LINE_MAX || ((unsigned char)ch < 0x20 && ch != '\t') ||
                       ch == 0x7f || (!c->ext && ch != ';' && ch != ' ' && ch != '\t')) {
                return -1; /* "1 0" is not a size of 1 (nor of 16) */
            } else if (ch == ';') {
                c->ext = 1;
            }
            i++;
            break;
        case CH_SIZE_LF:
            if (ch != '\n') return -1;
            c->state = c->remaining ? CH_DATA : CH_TRAILER;
            c->line_len = 0;
            i++;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if (n > c->remaining) n = (size_t)c->remaining;
            if (out && tg_buf_put(out, in + i, n) != GW_OK) return -1;
            c->remaining -= n;
            i += n;
            if (!c->remaining) c->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (ch == '\r') c->state = CH_DATA_LF;
            else return -1; /* the data's CRLF: a bare LF is not one */
            i++;
            break;
        case CH_DATA_LF:
            if (ch != '\n') return -1;
            c->state = CH_SIZE;
            c->ndigits = 0;
            i++;
            break;
        case CH_TRAILER: /* field lines until an empty one, each ending in CRLF */
            c->trailer_bytes++;
            if (ch == '\n') {
                return -1;
            } else if (ch == '\r') {
                c->state = CH_TRAILER_LF;
            } else if (++c->line_len > GW_CHUNK_LINE_MAX) {
                return -1;
            } else if (!c->colon) { /* the name: a token (no folding, no blank before the ':') */
                if (ch == ':' && c->line_len > 1) c->colon = 1;
                else if (!is_tchar((unsigned char)ch)) return -1;
            } else if (((unsigned char)ch < 0x20 && ch != '\t') || ch == 0x7f) {
                return -1;
            }
            /* A trailer line that is no field (a missing last CRLF, then the
             * next request's line) is an error, never a request swallowed. */
            i++;
            break;
        case CH_TRAILER_LF:
            if (ch != '\n') return -1;
            c->trailer_bytes++;
            if (c->line_len == 0) c->done = 1;
            else if (!c->colon) return -1;
            else c->trailer_fields++;
            c->line_len = 0;
            c->colon = 0;
            c->state = CH_TRAILER;
            i++;
            break;
        }
    }
    return (ssize_t)i;
}

/* ---- request parser ----------------------------------------------------- */

void gw_http_parser_init(gw_http_parser_t *p, size_t max_header, size_t max_body) {
    memset(p, 0, sizeof *p);
    p->max_header = max_header;
    p->max_body = max_body;
}

void gw_http_parser_release(gw_http_parser_t *p) {
    tg_buf_free(&p->in);
    tg_buf_free(&p->body);
    gw_http_req_free(p->cur);
    p->cur = NULL;
}

int gw_http_parser_feed(gw_http_parser_t *p, const void *data, size_t len) {
    return tg_buf_put(&p->in, data, len);
}

int gw_http_parser_busy(const gw_http_parser_t *p) { return p->state != ST_HEAD || p->in.len > 0; }

void gw_http_req_free(gw_http_req_t *r) {
    if (!r) return;
    free(r->head);
    free(r->body);
    gw_block_put(GW_BLOCK_HTTP_REQ, r);
}

const char *gw_http_header(const gw_http_req_t *r, const char *name) {
    size_t n = strlen(name);
    for (int i = 0; i < r->nhdrs; i++)
        if (r->hdrs[i].name_len == n && !strcasecmp(r->hdrs[i].name, name)) return r->hdrs[i].value;
    return NULL;
}

int gw_http_json_media(const char *v) { return tg_http_json_media(v); }

static int fail(gw_http_parser_t *p, int status, const char *msg) {
    p->err_status = status;
    p->err_msg = msg;
    return GW_ERROR;
}

/* Does the comma-separated list in v contain token t (case-insensitive)? */
static int list_has(const char *v, const char *t) {
    size_t tl = strlen(t);
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',') v++;
        const char *s = v;
        while (*v && *v != ',') v++;
        const char *e = v;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t)(e - s) == tl && !strncasecmp(s, t, tl)) return 1;
    }
    return 0;
}

/* Cut the head (hlen bytes, ending with the blank line) into r. */
static int parse_head(gw_http_parser_t *p, gw_http_req_t *r, char *h, size_t hlen) {
    char *end = h + hlen;
    /* request line */
    char *eol = memchr(h, '\n', (size_t)(end - h));
    if (!eol) return fail(p, 400, "malformed request line");
    char *lend = eol;
    if (lend > h && lend[-1] == '\r') lend--;
    /* a NUL would end the line early for the string functions below:
     * "HTTP/1.1\0junk" must not read as "HTTP/1.1" */
    if (memchr(h, '\0', (size_t)(lend - h))) return fail(p, 400, "malformed request line");
    *lend = '\0';
    char *sp1 = strchr(h, ' ');
    if (!sp1 || sp1 == h) return fail(p, 400, "malformed request line");
    for (char *q = h; q < sp1; q++)
        if (!is_tchar((unsigned char)*q)) return fail(p, 400, "malformed method");
    if (sp1 - h > 16) return fail(p, 501, "method not implemented");
    *sp1 = '\0';
    char *target = sp1 + 1;
    char *sp2 = strchr(target, ' ');
    if (!sp2 || sp2 == target) return fail(p, 400, "malformed request line");
    *sp2 = '\0';
    for (char *q = target; *q; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f) /* US-ASCII only (RFC 3986) */
            return fail(p, 400, "malformed request target");
    char *ver = sp2 + 1;
    if (strncmp(ver, "HTTP/", 5) || !isdigit((unsigned char)ver[5]) || ver[6] != '.' ||
        !isdigit((unsigned char)ver[7]) || ver[8])
        return fail(p, 400, "malformed HTTP version");
    if (ver[5] != '1') return fail(p, 505, "HTTP version not supported");
    /* absolute-form (RFC 9112 §3.2.2), which a server must accept: the
     * handlers see its path (origin-form), "/" when it has none */
    size_t sch = !strncasecmp(target, "http://", 7) ? 7 : !strncasecmp(target, "https://", 8) ? 8 : 0;
    if (sch) {
        char *path = target + sch + strcspn(target + sch, "/?#");
        if (path == target + sch) return fail(p, 400, "malformed request target");
        if (*path != '/') *--path = '/'; /* over the authority's last byte, which nothing reads */
        target = path;
    }
    /* origin-form, or "*" for OPTIONS; CONNECT's authority-form is not served */
    if (*target != '/' && !(!strcmp(target, "*") && !strcmp(h, "OPTIONS")))
        return fail(p, 400, "malformed request target");
    r->method = h;
    r->target = target;
    r->minor = ver[7] - '0';
    r->content_length = -1;
    int conn_close = 0, conn_keep = 0, have_te = 0;

    /* header fields */
    char *line = eol + 1;
    while (line < end) {
        eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) return fail(p, 400, "malformed header");
        lend = eol;
        if (lend > line && lend[-1] == '\r') lend--;
        if (lend == line) break; /* the blank line */
        *lend = '\0';
        if (*line == ' ' || *line == '\t') return fail(p, 400, "obsolete header folding");
        char *colon = strchr(line, ':');
        if (!colon || colon == line) return fail(p, 400, "malformed header");
        for (char *q = line; q < colon; q++)
            if (!is_tchar((unsigned char)*q)) return fail(p, 400, "malformed header name");
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        char *ve = lend;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        *ve = '\0';
        if (!gw_value_ok((const unsigned char *)v, (const unsigned char *)ve))
            return fail(p, 400, "invalid character in header value");
        if (r->nhdrs == GW_HTTP_MAX_HEADERS) return fail(p, 431, "too many header fields");
        gw_hdr_t *hd = &r->hdrs[r->nhdrs++];
        hd->name = line;
        hd->name_len = (size_t)(colon - line);
        hd->value = v;
        hd->value_len = (size_t)(ve - v);

        size_t nl = hd->name_len; /* the names below by their length first */
        if (nl == 14 && !strcasecmp(line, "content-length")) {
            if (!*v) return fail(p, 400, "invalid Content-Length");
            int64_t n = 0;
            for (char *q = v; *q; q++) {
                if (!isdigit((unsigned char)*q) || n > (INT64_MAX - 9) / 10)
                    return fail(p, 400, "invalid Content-Length");
                n = n * 10 + (*q - '0');
            }
            if (r->content_length >= 0 && r->content_length != n)
                return fail(p, 400, "conflicting Content-Length");
            r->content_length = n;
        } else if (nl == 17 && !strcasecmp(line, "transfer-encoding")) {
            if (have_te || strcasecmp(v, "chunked")) return fail(p, 501, "unsupported Transfer-Encoding");
            have_te = 1;
            r->chunked = 1;
        } else if (nl == 10 && !strcasecmp(line, "connection")) {
            if (list_has(v, "close")) conn_close = 1;
            if (list_has(v, "keep-alive")) conn_keep = 1;
        } else if (nl == 6 && !strcasecmp(line, "expect")) {
            if (strcasecmp(v, "100-continue")) return fail(p, 417, "unsupported Expect");
            r->expect_continue = r->minor >= 1; /* an HTTP/1.0 client waits for no 100 (RFC 9110 §10.1.1) */
        }
        line = eol + 1;
    }
    if (r->chunked && r->content_length >= 0)
        return fail(p, 400, "both Content-Length and Transfer-Encoding");
    if (r->chunked && r->minor == 0) return fail(p, 400, "chunked body in HTTP/1.0");
    r->keep_alive = r->minor >= 1 ? !conn_close : (conn_keep && !conn_close);
    if (r->content_length > (int64_t)p->max_body) return fail(p, 413, "request body too large");
    return GW_OK;
}

/* Length of the head at the start of buf, blank line included, or 0. */
static size_t find_head_end(const char *buf, size_t len, size_t from) {
    size_t i = from > 3 ? from - 3 : 0;
    while (i < len) {
        const char *nl = memchr(buf + i, '\n', len - i); /* line by line, not byte by byte */
        if (!nl) break;
        i = (size_t)(nl - buf);
        if (i + 1 < len && buf[i + 1] == '\n') return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n') return i + 3;
        i++;
    }
    return 0;
}

static int finish(gw_http_parser_t *p, gw_http_req_t **out) {
    gw_http_req_t *r = p->cur;
    if (p->body.len) {
        r->body = p->body.p; /* ownership moves to the request */
        r->body_len = p->body.len;
        p->body.p = NULL;
        p->body.len = p->body.cap = 0;
    }
    p->cur = NULL;
    p->state = ST_HEAD;
    p->scan = 0;
    p->continue_reported = 0;
    *out = r;
    return GW_OK;
}

int gw_http_parser_next(gw_http_parser_t *p, gw_http_req_t **out) {
    *out = NULL;
    if (p->err_status) return GW_ERROR;
    if (p->state == ST_HEAD) {
        /* empty lines before a request line are ignored (RFC 9112 §2.2) */
        size_t skip = 0;
        while (skip < p->in.len && (p->in.p[skip] == '\r' || p->in.p[skip] == '\n')) skip++;
        if (skip) tg_buf_consume(&p->in, skip);
        if (!p->in.len) return GW_AGAIN;
        /* the request line first: 414 whether or not the head is complete */
        size_t look = p->in.len < GW_HTTP_MAX_REQUEST_LINE + 2 ? p->in.len : GW_HTTP_MAX_REQUEST_LINE + 2;
        const char *nl = memchr(p->in.p, '\n', look);
        size_t line = nl ? (size_t)(nl - p->in.p) - (nl > p->in.p && nl[-1] == '\r') : look;
        if (line > GW_HTTP_MAX_REQUEST_LINE) return fail(p, 414, "request line too long");
        size_t hlen = find_head_end(p->in.p, p->in.len, p->scan);
        if (!hlen) {
            if (p->in.len > p->max_header) return fail(p, 431, "request header fields too large");
            p->scan = p->in.len;
            return GW_AGAIN;
        }
        if (hlen > p->max_header) return fail(p, 431, "request header fields too large");
        gw_http_req_t *r = gw_block_get(GW_BLOCK_HTTP_REQ);
        char *h = r ? malloc(hlen + 1) : NULL;
        if (!h) {
            gw_block_put(GW_BLOCK_HTTP_REQ, r);
            return fail(p, 500, "out of memory");
        }
        /* a cached block holds the last request's bytes: zero all but the
         * header slots, of which parse_head fills the first nhdrs */
        memset(r, 0, offsetof(gw_http_req_t, hdrs));
        memset((char *)r + offsetof(gw_http_req_t, nhdrs), 0, sizeof *r - offsetof(gw_http_req_t, nhdrs));
        memcpy(h, p->in.p, hlen);
        h[hlen] = '\0';
        r->head = h;
        tg_buf_consume(&p->in, hlen);
        p->scan = 0;
        p->cur = r;
        p->head_len = hlen;
        if (parse_head(p, r, h, hlen) != GW_OK) return GW_ERROR;
        memset(&p->ch, 0, sizeof p->ch);
        p->body.len = 0;
        if (r->chunked) p->state = ST_BODY_CHUNKED;
        else if (r->content_length > 0) p->state = ST_BODY_CL;
        else return finish(p, out);
    }
    if (p->state == ST_BODY_CL) {
        size_t want = (size_t)p->cur->content_length - p->body.len;
        size_t n = p->in.len < want ? p->in.len : want;
        if (n) {
            if (tg_buf_put(&p->body, p->in.p, n) != GW_OK) return fail(p, 500, "out of memory");
            tg_buf_consume(&p->in, n);
        }
        if (p->body.len == (size_t)p->cur->content_length) return finish(p, out);
    } else { /* chunked */
        ssize_t n = gw_chunked_feed(&p->ch, p->in.p, p->in.len, &p->body);
        if (n < 0) return fail(p, 400, "malformed chunked body");
        tg_buf_consume(&p->in, (size_t)n);
        if (p->body.len > p->max_body) return fail(p, 413, "request body too large");
        if (p->head_len + p->ch.trailer_bytes > p->max_header || p->cur->nhdrs + p->ch.trailer_fields > GW_HTTP_MAX_HEADERS)
            return fail(p, 431, "request header fields too large (trailer section)");
        if (p->ch.done) return finish(p, out);
    }
    if (p->cur->expect_continue && !p->continue_reported) {
        p->continue_reported = 1;
        return GW_CONTINUE;
    }
    return GW_AGAIN;
}

/* ---- response head (from workers) ---------------------------------------- */

long gw_http_resp_parse(const char *buf, size_t len, size_t max, gw_http_resp_t *r) {
    size_t hlen = find_head_end(buf, len, 0);
    if (!hlen) return len > max ? -1 : 0;
    if (hlen > max) return -1;
    memset(r, 0, sizeof *r);
    r->content_length = -1;
    if (hlen < 12 || strncmp(buf, "HTTP/1.", 7) || !isdigit((unsigned char)buf[9]) ||
        !isdigit((unsigned char)buf[10]) || !isdigit((unsigned char)buf[11]) || buf[8] != ' ')
        return -1;
    r->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    if (r->status < 100) return -1;
    if (buf[7] == '0') r->close = 1;
    const char *line = memchr(buf, '\n', hlen);
    const char *end = buf + hlen;
    line++;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) return -1;
        const char *lend = eol;
        if (lend > line && lend[-1] == '\r') lend--;
        if (lend == line) break;
        const char *colon = memchr(line, ':', (size_t)(lend - line));
        if (!colon) return -1;
        size_t nl = (size_t)(colon - line);
        const char *v = colon + 1;
        while (v < lend && (*v == ' ' || *v == '\t')) v++;
        const char *ve = lend;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        size_t vl = (size_t)(ve - v);
        if (nl == 14 && !strncasecmp(line, "content-length", 14)) {
            int64_t n = 0;
            if (!vl) return -1;
            for (size_t i = 0; i < vl; i++) {
                if (!isdigit((unsigned char)v[i]) || n > (INT64_MAX - 9) / 10) return -1;
                n = n * 10 + (v[i] - '0');
            }
            if (r->content_length >= 0 && r->content_length != n) return -1; /* two lengths: no framing */
            r->content_length = n;
        } else if (nl == 17 && !strncasecmp(line, "transfer-encoding", 17)) {
            /* exactly "chunked", once: "xchunked" is no chunked, and "gzip, chunked"
             * would hand gzip bytes on as JSON */
            if (r->chunked || vl != 7 || strncasecmp(v, "chunked", 7)) return -1;
            r->chunked = 1;
        } else if (nl == 10 && !strncasecmp(line, "connection", 10)) {
            for (size_t i = 0; i + 5 <= vl; i++)
                if (!strncasecmp(v + i, "close", 5)) r->close = 1;
        } else if (nl == 12 && !strncasecmp(line, "content-type", 12)) {
            size_t n = vl < sizeof r->content_type - 1 ? vl : sizeof r->content_type - 1;
            memcpy(r->content_type, v, n);
            r->content_type[n] = '\0';
        }
        line = eol + 1;
    }
    /* both: chunked frames it (RFC 9112 §6.3), and the connection, whose
     * sender framed one answer two ways, is not used again */
    if (r->chunked && r->content_length >= 0) r->close = 1;
    if (r->chunked) r->content_length = -1;
    return (long)hlen;
}

const char *gw_http_reason(int s) {
    switch (s) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return s < 300 ? "OK" : s < 500 ? "Client Error" : "Server Error";
    }
}

/* ---- response head to the client -------------------------------------------- */

const char *gw_http_date(time_t now) {
    static __thread tg_timefmt_t c = TG_TIMEFMT_INIT;
    return tg_timefmt(&c, now, "%a, %d %b %Y %H:%M:%S GMT");
}

/* x-ratelimit-reset-<what>: time until the window has room again, in the
 * Go duration style OpenAI uses ("59.982s", "250ms"). */
static void gw_http_reset_header(tg_buf_t *b, const char *what, int64_t ms) {
    tg_buf_puts(b, "x-ratelimit-reset-");
    tg_buf_puts(b, what);
    tg_buf_puts(b, ": ");
    if (ms < 1000) {
        tg_buf_put_i64(b, ms);
        tg_buf_puts(b, "ms\r\n");
    } else {
        tg_buf_put_fixed(b, ms, 3);
        tg_buf_puts(b, "s\r\n");
    }
}

void gw_http_head_write(tg_buf_t *b, const gw_http_head_t *h) {
    tg_buf_puts(b, "HTTP/1.1 ");
    tg_buf_put_i64(b, h->status);
    tg_buf_put(b, " ", 1);
    tg_buf_puts(b, gw_http_reason(h->status));
    tg_buf_puts(b, "\r\nDate: ");
    tg_buf_puts(b, h->date);
    tg_buf_puts(b, "\r\nX-Request-Id: ");
    tg_buf_puts(b, h->request_id);
    tg_buf_puts(b, "\r\n");
    if (h->content_type) {
        tg_buf_puts(b, "Content-Type: ");
        tg_buf_puts(b, h->content_type);
        tg_buf_puts(b, "\r\n");
        if (!h->extra || !strstr(h->extra, "X-Content-Type-Options:")) tg_buf_puts(b, "X-Content-Type-Options: nosniff\r\n");
    }
    if (h->content_length >= 0) {
        tg_buf_puts(b, "Content-Length: ");
        tg_buf_put_i64(b, h->content_length);
        tg_buf_puts(b, "\r\n");
    } else if (h->chunked) {
        tg_buf_puts(b, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n");
    }
    if (h->extra) tg_buf_puts(b, h->extra);
    if (h->rl_limit > 0) {
        tg_buf_puts(b, "x-ratelimit-limit-requests: ");
        tg_buf_put_i64(b, h->rl_limit);
        tg_buf_puts(b, "\r\nx-ratelimit-remaining-requests: ");
        tg_buf_put_i64(b, h->rl_remaining);
        tg_buf_puts(b, "\r\n");
        gw_http_reset_header(b, "requests", h->rl_reset_ms);
    }
    if (h->tpm_limit > 0) {
        tg_buf_puts(b, "x-ratelimit-limit-tokens: ");
        tg_buf_put_i64(b, h->tpm_limit);
        tg_buf_puts(b, "\r\nx-ratelimit-remaining-tokens: ");
        tg_buf_put_i64(b, h->tpm_remaining);
        tg_buf_puts(b, "\r\n");
        gw_http_reset_header(b, "tokens", h->tpm_reset_ms);
    }
    if (h->retry_after_s >= 0) {
        tg_buf_puts(b, "retry-after: ");
        tg_buf_put_i64(b, h->retry_after_s);
        tg_buf_puts(b, "\r\n");
    }
    if (h->cors)
        tg_buf_puts(b, "Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: X-Request-Id, "
                       "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
                       "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, "
                       "retry-after, x-tollgate-receipt\r\n");
    if (h->receipt) {
        tg_buf_puts(b, "x-tollgate-receipt: ");
        tg_buf_puts(b, h->receipt);
        tg_buf_puts(b, "\r\n");
    }
    tg_buf_puts(b, h->keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
}
