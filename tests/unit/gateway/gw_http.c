/* Unit tests of gateway/gw_http.c: the request parser (every split point,
 * pipelining, chunked bodies, limits, bad input), the chunked decoder, the
 * response-head parser and the client answer's head writer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"

/* Feed msg split at `split` (0: in one piece), collect requests. */
static int parse_all(const char *msg, size_t len, size_t split, gw_http_req_t **reqs, int max, int *err) {
    gw_http_parser_t p;
    gw_http_parser_init(&p, 1024, 4096);
    int n = 0;
    *err = 0;
    size_t pieces[2][2] = {{0, split ? split : len}, {split ? split : len, len}};
    for (int k = 0; k < 2; k++) {
        gw_http_parser_feed(&p, msg + pieces[k][0], pieces[k][1] - pieces[k][0]);
        for (;;) {
            gw_http_req_t *r;
            int rc = gw_http_parser_next(&p, &r);
            if (rc == GW_OK && n < max) reqs[n++] = r;
            else if (rc == GW_OK) gw_http_req_free(r);
            else if (rc == GW_CONTINUE) continue;
            else if (rc == GW_ERROR) {
                *err = p.err_status;
                gw_http_parser_release(&p);
                return n;
            } else break;
        }
    }
    gw_http_parser_release(&p);
    return n;
}

static void test_simple_get(void) {
    const char *m = "GET /v1/models?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization:  Bearer sk-1  \r\n\r\n";
    gw_http_req_t *r[2];
    int err;
    CHECK_EQ_I(parse_all(m, strlen(m), 0, r, 2, &err), 1);
    CHECK_EQ_I(err, 0);
    CHECK_EQ_S(r[0]->method, "GET");
    CHECK_EQ_S(r[0]->target, "/v1/models?x=1");
    CHECK_EQ_I(r[0]->minor, 1);
    CHECK_EQ_S(gw_http_header(r[0], "authorization"), "Bearer sk-1");
    CHECK_EQ_S(gw_http_header(r[0], "HOST"), "a");
    CHECK(gw_http_header(r[0], "cookie") == NULL);
    CHECK_EQ_I(r[0]->keep_alive, 1);
    CHECK_EQ_I(r[0]->body_len, 0);
    gw_http_req_free(r[0]);
}

/* Two pipelined requests (Content-Length and chunked body), split at every byte. */
static void test_pipelined_every_split(void) {
    const char *m = "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                    "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    "3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"
                    "GET /c HTTP/1.0\r\n\r\n";
    size_t len = strlen(m);
    int bad = 0;
    for (size_t s = 0; s < len; s++) {
        gw_http_req_t *r[4] = {0};
        int err;
        int n = parse_all(m, len, s, r, 4, &err);
        if (n != 3 || err || strcmp(r[0]->target, "/a") || r[0]->body_len != 5 || memcmp(r[0]->body, "hello", 5) ||
            strcmp(r[1]->target, "/b") || r[1]->body_len != 19 || strcmp(r[1]->body, "abc0123456789abcdef") ||
            r[1]->keep_alive || strcmp(r[2]->target, "/c") || r[2]->minor != 0 || r[2]->keep_alive)
            bad++;
        for (int i = 0; i < 4; i++) gw_http_req_free(r[i]);
    }
    CHECK_EQ_I(bad, 0);
}

static void test_one_byte_at_a_time(void) {
    const char *m = "POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\r\nGET /y HTTP/1.1\r\n\r\n";
    gw_http_parser_t p;
    gw_http_parser_init(&p, 1024, 4096);
    int got = 0;
    for (size_t i = 0; m[i]; i++) {
        gw_http_parser_feed(&p, m + i, 1);
        gw_http_req_t *r;
        while (gw_http_parser_next(&p, &r) == GW_OK) {
            got++;
            CHECK_EQ_S(r->target, got == 1 ? "/x" : "/y");
            gw_http_req_free(r);
        }
    }
    CHECK_EQ_I(got, 2);
    CHECK_EQ_I(gw_http_parser_busy(&p), 0);
    gw_http_parser_release(&p);
}

static int err_of(const char *m) {
    gw_http_req_t *r[2] = {0};
    int err;
    int n = parse_all(m, strlen(m), 0, r, 2, &err);
    for (int i = 0; i < n; i++) gw_http_req_free(r[i]);
    return err;
}

static void test_errors(void) {
    CHECK_EQ_I(err_of("GET\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET / HTTP/2.0\r\n\r\n"), 505);
    CHECK_EQ_I(err_of("GET / FOO/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("G(T / HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET /a b HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET / HTTP/1.1\r\nNo colon\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET / HTTP/1.1\r\nBad name: x\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 400);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX"), 400);
    CHECK_EQ_I(err_of("GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n"), 417);
    CHECK_EQ_I(err_of("GET / HTTP/1.1\r\nX: a\001b\r\n\r\n"), 400);
}

static void test_limits(void) {
    /* body limit 4096: declared larger -> 413 before any body byte */
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: 4097\r\n\r\n"), 413);
    CHECK_EQ_I(err_of("POST / HTTP/1.1\r\nContent-Length: 4096\r\n\r\n"), 0); /* waits for the body */
    /* chunked body passes the limit while arriving */
    tg_buf_t b = {0};
    tg_buf_printf(&b, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 5; i++) {
        tg_buf_printf(&b, "400\r\n");
        for (int j = 0; j < 1024; j++) tg_buf_put(&b, "x", 1);
        tg_buf_printf(&b, "\r\n");
    }
    CHECK_EQ_I(err_of(b.p), 413);
    tg_buf_free(&b);
    /* header limit 1024 -> 431, both complete and incomplete heads */
    tg_buf_t h = {0};
    tg_buf_printf(&h, "GET / HTTP/1.1\r\nX: ");
    for (int i = 0; i < 1100; i++) tg_buf_put(&h, "a", 1);
    CHECK_EQ_I(err_of(h.p), 431);
    tg_buf_printf(&h, "\r\n\r\n");
    CHECK_EQ_I(err_of(h.p), 431);
    tg_buf_free(&h);
    tg_buf_t many = {0};
    tg_buf_printf(&many, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < GW_HTTP_MAX_HEADERS + 1; i++) tg_buf_printf(&many, "h%d: v\r\n", i);
    tg_buf_printf(&many, "\r\n");
    gw_http_parser_t p;
    gw_http_parser_init(&p, 8192, 100);
    gw_http_parser_feed(&p, many.p, many.len);
    gw_http_req_t *r;
    CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_ERROR);
    CHECK_EQ_I(p.err_status, 431);
    gw_http_parser_release(&p);
    tg_buf_free(&many);
    /* request line: 8 KiB passes, one byte more is 414, with or without its end */
    for (int extra = 0; extra <= 1; extra++) {
        tg_buf_t rl = {0};
        tg_buf_printf(&rl, "GET /");
        while (rl.len < GW_HTTP_MAX_REQUEST_LINE - 9 + (size_t)extra) tg_buf_put(&rl, "a", 1);
        tg_buf_printf(&rl, " HTTP/1.1"); /* now exactly 8192 (+extra) bytes */
        CHECK_EQ_I((int)rl.len, GW_HTTP_MAX_REQUEST_LINE + extra);
        gw_http_parser_init(&p, 65536, 100);
        gw_http_parser_feed(&p, rl.p, rl.len);
        int rc = gw_http_parser_next(&p, &r);
        CHECK_EQ_I(rc, extra ? GW_ERROR : GW_AGAIN);
        if (extra) CHECK_EQ_I(p.err_status, 414);
        gw_http_parser_feed(&p, "\r\n\r\n", 4);
        rc = gw_http_parser_next(&p, &r);
        CHECK_EQ_I(rc, extra ? GW_ERROR : GW_OK);
        if (extra) CHECK_EQ_I(p.err_status, 414);
        else gw_http_req_free(r);
        gw_http_parser_release(&p);
        tg_buf_free(&rl);
    }
    /* trailers count with the head: fields and bytes */
    for (int k = 0; k < 2; k++) {
        tg_buf_t t = {0};
        tg_buf_printf(&t, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n");
        for (int i = 0; i < 10; i++) tg_buf_printf(&t, "h%d: v\r\n", i);
        tg_buf_printf(&t, "\r\n1\r\nx\r\n0\r\n");
        int ntr = k ? GW_HTTP_MAX_HEADERS - 11 + 1 : GW_HTTP_MAX_HEADERS - 11; /* 11 head fields */
        for (int i = 0; i < ntr; i++) tg_buf_printf(&t, "t%d: v\r\n", i);
        tg_buf_printf(&t, "\r\n");
        gw_http_parser_init(&p, 65536, 100);
        gw_http_parser_feed(&p, t.p, t.len);
        int rc = gw_http_parser_next(&p, &r);
        CHECK_EQ_I(rc, k ? GW_ERROR : GW_OK);
        if (k) CHECK_EQ_I(p.err_status, 431);
        else gw_http_req_free(r);
        gw_http_parser_release(&p);
        tg_buf_free(&t);
    }
    {
        tg_buf_t t = {0};
        tg_buf_printf(&t, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n");
        for (int i = 0; i < 40; i++) tg_buf_printf(&t, "t%d: %s\r\n", i, "0123456789012345678901234567890123456789");
        tg_buf_printf(&t, "\r\n");
        gw_http_parser_init(&p, 1024, 100); /* the head fits, head + trailers do not */
        gw_http_parser_feed(&p, t.p, t.len);
        CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_ERROR);
        CHECK_EQ_I(p.err_status, 431);
        gw_http_parser_release(&p);
        tg_buf_free(&t);
    }
}

static void test_expect_continue(void) {
    gw_http_parser_t p;
    gw_http_parser_init(&p, 1024, 4096);
    const char *h = "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    gw_http_parser_feed(&p, h, strlen(h));
    gw_http_req_t *r;
    CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_CONTINUE);
    CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_AGAIN);
    gw_http_parser_feed(&p, "ok", 2);
    CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_OK);
    CHECK_EQ_I(r->body_len, 2);
    gw_http_req_free(r);
    gw_http_parser_release(&p);
}

/* The target of one request that parses, or NULL (*err says why). */
static char *target_of(const char *m, int *err) {
    static char t[256];
    gw_http_req_t *r[1] = {0};
    int n = parse_all(m, strlen(m), 0, r, 1, err);
    if (n != 1) return NULL;
    snprintf(t, sizeof t, "%s", r[0]->target);
    gw_http_req_free(r[0]);
    return t;
}

static void test_request_target_forms(void) {
    int err;
    /* absolute-form, which a server must accept: the handlers get the path */
    CHECK_EQ_S(target_of("GET https://example.com/v1/models?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", &err), "/v1/models?x=1");
    CHECK_EQ_S(target_of("GET HTTP://example.com:8443/health HTTP/1.1\r\n\r\n", &err), "/health");
    CHECK_EQ_S(target_of("GET http://h HTTP/1.1\r\n\r\n", &err), "/");
    CHECK_EQ_S(target_of("GET http://h?q=1 HTTP/1.1\r\n\r\n", &err), "/?q=1");
    CHECK_EQ_S(target_of("OPTIONS * HTTP/1.1\r\n\r\n", &err), "*");
    /* no authority, no leading '/', '*' but not OPTIONS, CONNECT's authority-form */
    CHECK_EQ_I(err_of("GET http:///x HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET health HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET * HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("CONNECT example.com:443 HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
}

static void test_chunked_strict(void) {
    const char *h = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    char m[512];
    /* blanks may come before an extension's ';', nothing else: "1 0" is no size */
    snprintf(m, sizeof m, "%s1 0\r\nx\r\n0\r\n\r\n", h);
    CHECK_EQ_I(err_of(m), 400);
    snprintf(m, sizeof m, "%s1 \t;a=b ; c\r\nx\r\n0\r\n\r\n", h);
    CHECK_EQ_I(err_of(m), 0);
    snprintf(m, sizeof m, "%s1;a\001\r\nx\r\n0\r\n\r\n", h);
    CHECK_EQ_I(err_of(m), 400);
    /* trailers are field lines: the last CRLF missing, the next request's
     * line is no trailer, and the request is refused, not the next one eaten */
    snprintf(m, sizeof m, "%s1\r\nx\r\n0\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n", h);
    gw_http_req_t *r[2] = {0};
    int err;
    CHECK_EQ_I(parse_all(m, strlen(m), 0, r, 2, &err), 0);
    CHECK_EQ_I(err, 400);
    static const char *const bad[] = {"no colon\r\n", ": v\r\n", " folded: v\r\n", "A b: v\r\n",
                                      "A: v\001\r\n", "A: v\177\r\n", "A\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(m, sizeof m, "%s1\r\nx\r\n0\r\nOk: 1\r\n%s\r\n", h, bad[i]);
        CHECK_EQ_I(err_of(m), 400);
    }
    snprintf(m, sizeof m, "%s1\r\nx\r\n0\r\nA: \t v\xff\r\nB:\r\n\r\n", h);
    CHECK_EQ_I(err_of(m), 0);
    /* every line of the framing ends in CRLF: a bare LF after a size, an
     * extension, a chunk's data, a trailer or as the last line is a 400; so
     * are blanks after a size with no extension behind them */
    static const char *const lf[] = {"1\nx\r\n0\r\n\r\n", "1;a=b\nx\r\n0\r\n\r\n", "1\r\nx\n0\r\n\r\n",
                                     "1\r\nx\r\n0\n\r\n", "1\r\nx\r\n0\r\nA: b\n\r\n", "1\r\nx\r\n0\r\n\n",
                                     "1 \r\nx\r\n0\r\n\r\n", "1\t\r\nx\r\n0\r\n\r\n", "1\r\nx\r\n0 \r\n\r\n"};
    for (size_t i = 0; i < sizeof lf / sizeof *lf; i++) {
        snprintf(m, sizeof m, "%s%s", h, lf[i]);
        CHECK_EQ_I(err_of(m), 400);
    }
}

/* A NUL in the request line ends no string early (the version followed by
 * junk is no version); a target is visible US-ASCII only. */
static void test_request_line_bytes(void) {
    static const char m[] = "GET / HTTP/1.1\0junk\r\nHost: a\r\n\r\n";
    gw_http_req_t *r[1] = {0};
    int err;
    CHECK_EQ_I(parse_all(m, sizeof m - 1, 0, r, 1, &err), 0);
    CHECK_EQ_I(err, 400);
    static const char m2[] = "GET / HTTP/1.1\0\r\nHost: a\r\n\r\n";
    CHECK_EQ_I(parse_all(m2, sizeof m2 - 1, 0, r, 1, &err), 0);
    CHECK_EQ_I(err, 400);
    CHECK_EQ_I(err_of("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    CHECK_EQ_I(err_of("GET /caf%C3%A9~ HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
}

static void test_expect_ignored_in_http10(void) {
    gw_http_parser_t p;
    gw_http_parser_init(&p, 1024, 4096);
    const char *h = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    gw_http_parser_feed(&p, h, strlen(h));
    gw_http_req_t *r;
    CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_AGAIN); /* an HTTP/1.0 client gets no 100 */
    gw_http_parser_feed(&p, "ok", 2);
    CHECK_EQ_I(gw_http_parser_next(&p, &r), GW_OK);
    gw_http_req_free(r);
    gw_http_parser_release(&p);
}

static void test_keep_alive_rules(void) {
    gw_http_req_t *r[1];
    int err;
    const char *a = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    CHECK_EQ_I(parse_all(a, strlen(a), 0, r, 1, &err), 1);
    CHECK_EQ_I(r[0]->keep_alive, 1);
    gw_http_req_free(r[0]);
    const char *b = "GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n";
    CHECK_EQ_I(parse_all(b, strlen(b), 0, r, 1, &err), 1);
    CHECK_EQ_I(r[0]->keep_alive, 0);
    gw_http_req_free(r[0]);
}

static void test_chunked_decoder(void) {
    const char *body = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
    size_t len = strlen(body);
    for (size_t s = 1; s < len; s++) { /* every split */
        gw_chunked_t c = {0};
        tg_buf_t out = {0};
        ssize_t a = gw_chunked_feed(&c, body, s, &out);
        ssize_t b = c.done ? 0 : gw_chunked_feed(&c, body + s, len - s, &out);
        CHECK(a >= 0 && b >= 0);
        CHECK_EQ_I(c.done, 1);
        CHECK_EQ_I((size_t)(a + b), len - 4); /* stops before NEXT */
        CHECK_EQ_S(out.p, "hello world");
        tg_buf_free(&out);
    }
    gw_chunked_t c = {0};
    tg_buf_t out = {0};
    CHECK_EQ_I(gw_chunked_feed(&c, "fffffffffffffffff\r\n", 19, &out), -1); /* size overflow */
    gw_chunked_t c2 = {0};
    CHECK_EQ_I(gw_chunked_feed(&c2, "\r\n", 2, &out), -1); /* no size */
    tg_buf_free(&out);
}

static void test_response_head(void) {
    gw_http_resp_t r;
    const char *h = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nxx";
    CHECK_EQ_I(gw_http_resp_parse(h, strlen(h), 4096, &r), (long)strlen(h) - 2);
    CHECK_EQ_I(r.status, 200);
    CHECK_EQ_I(r.chunked, 1);
    CHECK_EQ_S(r.content_type, "text/event-stream");
    const char *h2 = "HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\nConnection: close\r\n\r\n";
    CHECK(gw_http_resp_parse(h2, strlen(h2), 4096, &r) > 0);
    CHECK_EQ_I(r.status, 404);
    CHECK_EQ_I(r.content_length, 12);
    CHECK_EQ_I(r.close, 1);
    CHECK_EQ_I(gw_http_resp_parse(h2, 20, 4096, &r), 0);
    CHECK_EQ_I(gw_http_resp_parse("HTTP/1.1 2x0 OK\r\n\r\n", 19, 4096, &r), -1);
    CHECK_EQ_I(gw_http_resp_parse("SMTP ready\r\n\r\n", 14, 4096, &r), -1);
    CHECK_EQ_I(gw_http_resp_parse(h2, strlen(h2), 10, &r), -1);
    /* framing a worker's answer: exactly "chunked", one length */
    static const char *const bad[] = {"Transfer-Encoding: xchunked\r\n", "Transfer-Encoding: gzip, chunked\r\n",
                                      "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                      "Content-Length: 5\r\nContent-Length: 6\r\n", "Content-Length: +5\r\n"};
    char m[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(m, sizeof m, "HTTP/1.1 200 OK\r\n%s\r\n", bad[i]);
        CHECK_EQ_I(gw_http_resp_parse(m, strlen(m), 4096, &r), -1);
    }
    const char *h3 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n\r\n";
    CHECK(gw_http_resp_parse(h3, strlen(h3), 4096, &r) > 0);
    CHECK_EQ_I(r.chunked, 1);
    CHECK_EQ_I(r.content_length, -1);
    CHECK_EQ_I(r.close, 1); /* framed two ways: not reused */
    const char *h4 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    CHECK(gw_http_resp_parse(h4, strlen(h4), 4096, &r) > 0);
    CHECK_EQ_I(r.content_length, 5);
    CHECK_EQ_I(r.close, 0);
}

/* The client answer's head as gw_req_head wrote it with printf before
 * (the reference for gw_http_head_write). */
static void ref_head(tg_buf_t *b, const gw_http_head_t *h) {
    tg_buf_printf(b, "HTTP/1.1 %d %s\r\nDate: %s\r\nX-Request-Id: %s\r\n", h->status, gw_http_reason(h->status), h->date,
                  h->request_id);
    if (h->content_type) tg_buf_printf(b, "Content-Type: %s\r\n", h->content_type);
    /* since 2026-12-01: every answer with a body type says nosniff, once (the dashboard's extra has its own) */
    if (h->content_type && !(h->extra && strstr(h->extra, "X-Content-Type-Options:")))
        tg_buf_printf(b, "X-Content-Type-Options: nosniff\r\n");
    if (h->content_length >= 0) tg_buf_printf(b, "Content-Length: %lld\r\n", (long long)h->content_length);
    else if (h->chunked) tg_buf_printf(b, "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n");
    if (h->extra) tg_buf_printf(b, "%s", h->extra);
    const char *what[2] = {"requests", "tokens"};
    int64_t lim[2] = {h->rl_limit, h->tpm_limit}, rem[2] = {h->rl_remaining, h->tpm_remaining},
            ms[2] = {h->rl_reset_ms, h->tpm_reset_ms};
    for (int i = 0; i < 2; i++) {
        if (lim[i] <= 0) continue;
        tg_buf_printf(b, "x-ratelimit-limit-%s: %lld\r\nx-ratelimit-remaining-%s: %lld\r\n", what[i], (long long)lim[i],
                      what[i], (long long)rem[i]);
        if (ms[i] < 1000) tg_buf_printf(b, "x-ratelimit-reset-%s: %lldms\r\n", what[i], (long long)ms[i]);
        else tg_buf_printf(b, "x-ratelimit-reset-%s: %lld.%03llds\r\n", what[i], (long long)(ms[i] / 1000),
                           (long long)(ms[i] % 1000));
    }
    if (h->retry_after_s >= 0) tg_buf_printf(b, "retry-after: %lld\r\n", (long long)h->retry_after_s);
    if (h->receipt) tg_buf_printf(b, "x-tollgate-receipt: %s\r\n", h->receipt);
    tg_buf_printf(b, "Connection: %s\r\n\r\n", h->keep_alive ? "keep-alive" : "close");
}

static void check_head(const gw_http_head_t *h) {
    tg_buf_t got = {0}, want = {0};
    gw_http_head_write(&got, h);
    ref_head(&want, h);
    CHECK_EQ_S(got.p, want.p);
    tg_buf_free(&got);
    tg_buf_free(&want);
}

/* gw_http_head_write gives the bytes printf gave, for every kind of answer. */
static void test_head_write(void) {
    CHECK_EQ_S(gw_http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK_EQ_S(gw_http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT"); /* the cached second */
    CHECK_EQ_S(gw_http_date(784111778), "Sun, 06 Nov 1994 08:49:38 GMT");
    gw_http_head_t h = {.status = 200, .date = "Sun, 06 Nov 1994 08:49:37 GMT",
                        .request_id = "01a22a42-8cd7-70d3-8000-000000000001", .content_type = "application/json",
                        .content_length = 512, .retry_after_s = -1, .keep_alive = 1};
    check_head(&h);
    h.content_length = 0;
    h.content_type = NULL;
    h.keep_alive = 0;
    check_head(&h);
    h.status = 429;
    h.content_length = -1;
    h.chunked = 1;
    h.extra = "X-One: 1\r\nx-two: 2\r\n";
    h.rl_limit = 100;
    h.rl_remaining = 0;
    h.tpm_limit = 1000000;
    h.tpm_remaining = -3;
    h.retry_after_s = 60;
    h.receipt = "v1.abc.def";
    for (int64_t ms = -1; ms < 130000; ms = ms < 2100 ? ms + 1 : ms * 3 / 2) {
        h.rl_reset_ms = ms;
        h.tpm_reset_ms = 130000 - ms;
        check_head(&h);
    }
    h.chunked = 0; /* HTTP/1.0 stream: close-delimited */
    h.status = 799; /* no reason phrase known */
    check_head(&h);
    /* nosniff with a body type, once: not twice when extra (the dashboard's) has it, none without a type */
    tg_buf_t nb = {0};
    h.content_type = "application/json";
    h.extra = NULL;
    gw_http_head_write(&nb, &h);
    CHECK(strstr(nb.p, "\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n") != NULL);
    tg_buf_free(&nb);
    h.extra = "X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n";
    gw_http_head_write(&nb, &h);
    const char *once = strstr(nb.p, "nosniff");
    CHECK(once && !strstr(once + 1, "nosniff"));
    tg_buf_free(&nb);
    h.content_type = NULL;
    h.extra = NULL;
    gw_http_head_write(&nb, &h);
    CHECK(!strstr(nb.p, "nosniff"));
    tg_buf_free(&nb);
}

/* A request parsed into a block the one before used (gw_block cache): nothing
 * of the first (body, Content-Length, chunked, 100-continue, close, headers)
 * shows through in the second. */
static void test_reused_block(void) {
    gw_block_cache_drain();
    const char *m1 = "POST /a HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\nX-A: 1\r\nX-B: 2\r\n\r\nhello";
    const char *m2 = "GET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    gw_http_req_t *r[1];
    int err;
    CHECK_EQ_I(parse_all(m1, strlen(m1), 0, r, 1, &err), 1);
    gw_http_req_t *first = r[0];
    CHECK_EQ_I((int)r[0]->body_len, 5);
    gw_http_req_free(r[0]);
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_HTTP_REQ), 1);
    CHECK_EQ_I(parse_all(m2, strlen(m2), 0, r, 1, &err), 1);
    CHECK(r[0] == first); /* the same block, from the cache */
    CHECK_EQ_S(r[0]->method, "GET");
    CHECK(r[0]->body == NULL);
    CHECK_EQ_I((int)r[0]->body_len, 0);
    CHECK_EQ_I((int)r[0]->content_length, -1);
    CHECK_EQ_I(r[0]->chunked, 0);
    CHECK_EQ_I(r[0]->expect_continue, 0);
    CHECK_EQ_I(r[0]->keep_alive, 1);
    CHECK_EQ_I(r[0]->minor, 1);
    CHECK_EQ_I(r[0]->nhdrs, 1);
    CHECK(gw_http_header(r[0], "x-a") == NULL);
    gw_http_req_free(r[0]);
    gw_block_cache_drain();
    CHECK_EQ_I((int)gw_block_cached(GW_BLOCK_HTTP_REQ), 0);
}

/* Content-Type of a JSON body: what the SDKs, curl and browsers send passes;
 * another type or charset does not. */
static void test_json_media(void) {
    static const char *const OK[] = {
        "application/json", "Application/JSON", "application/json; charset=utf-8", "application/json;charset=UTF-8",
        "application/json ; charset=\"utf-8\"", " application/json\t", "application/json; charset=utf8",
        "application/vnd.api+json", "application/json; boundary=x; charset=utf-8", "application/json;",
    };
    for (size_t i = 0; i < sizeof OK / sizeof OK[0]; i++) CHECK_EQ_I(gw_http_json_media(OK[i]), GW_HTTP_MEDIA_JSON);
    static const char *const NOT[] = {
        "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "json",
        "application/jsonx", "application/json x", "application/json; charset", "application/json; =x",
        "application/json; charset=\"utf-8", "text/json", "application/+json", "application/", "/json",
    };
    for (size_t i = 0; i < sizeof NOT / sizeof NOT[0]; i++) CHECK_EQ_I(gw_http_json_media(NOT[i]), GW_HTTP_MEDIA_NOT_JSON);
    CHECK_EQ_I(gw_http_json_media("application/json; charset=latin1"), GW_HTTP_MEDIA_BAD_CHARSET);
    CHECK_EQ_I(gw_http_json_media("application/json; charset=\"utf-16\""), GW_HTTP_MEDIA_BAD_CHARSET);
}

/* Field values: a control byte (not HTAB) or DEL anywhere, in and across
 * the checker's 8-byte words, is a 400; HTAB and obs-text are kept.  Field
 * names: exactly RFC 9110's tchar.  The names the parser acts on are found
 * by length and case only. */
static void test_field_bytes(void) {
    static const unsigned char bad[] = {0x00, 0x01, 0x0b, 0x1f, 0x7f}, good[] = {'\t', ' ', 0x80, 0xff, '~'};
    char m[256];
    gw_http_req_t *r[2];
    int err;
    for (int g = 0; g < 2; g++)
        for (size_t k = 0; k < 5; k++)
            for (size_t at = 0; at < 20; at++) {
                char v[32];
                memset(v, 'v', 20);
                v[20] = 0;
                v[at] = (char)(g ? good[k] : bad[k]);
                if (v[0] == ' ' || v[0] == '\t') v[0] = 'v'; /* blanks around are not the value's */
                if (v[19] == ' ' || v[19] == '\t') v[19] = 'v';
                int n = snprintf(m, sizeof m, "GET / HTTP/1.1\r\nHost: a\r\nX-V: ");
                memcpy(m + n, v, 20);
                n += 20;
                n += snprintf(m + n, sizeof m - n, "\r\n\r\n");
                int got = parse_all(m, (size_t)n, 0, r, 2, &err);
                if (g) {
                    CHECK(got == 1 && err == 0 && r[0]->hdrs[1].value_len == 20 && !memcmp(r[0]->hdrs[1].value, v, 20));
                    if (got == 1) gw_http_req_free(r[0]);
                } else {
                    CHECK(got == 0 && err == 400);
                }
            }
    for (int c = 1; c < 256; c++) {
        if (c == '\r' || c == '\n' || c == ':') continue;
        int n = snprintf(m, sizeof m, "GET / HTTP/1.1\r\nHost: a\r\nX%c: 1\r\n\r\n", c);
        int got = parse_all(m, (size_t)n, 0, r, 2, &err);
        int tchar = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || strchr("!#$%&'*+-.^_`|~", c);
        CHECK(tchar ? got == 1 && err == 0 : got == 0 && err == 400);
        if (got == 1) gw_http_req_free(r[0]);
    }
    const char *e = "POST / HTTP/1.1\r\nHost: a\r\nCONTENT-length: 2\r\nContent-Lengthx: 9\r\nConnectio: close\r\n\r\nab";
    CHECK_EQ_I(parse_all(e, strlen(e), 0, r, 2, &err), 1);
    CHECK(r[0]->body_len == 2 && r[0]->keep_alive == 1);
    CHECK_EQ_S(gw_http_header(r[0], "content-lengthX"), "9");
    CHECK(gw_http_header(r[0], "content-lengt") == NULL);
    gw_http_req_free(r[0]);
}

TG_TEST_MAIN(test_simple_get, test_field_bytes, test_json_media, test_reused_block, test_pipelined_every_split, test_one_byte_at_a_time, test_errors, test_limits,
             test_expect_continue, test_keep_alive_rules, test_request_target_forms, test_chunked_strict, test_request_line_bytes,
             test_expect_ignored_in_http10, test_chunked_decoder, test_response_head, test_head_write)
