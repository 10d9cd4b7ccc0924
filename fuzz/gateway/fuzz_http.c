/* fuzz_http.c — libFuzzer target for the gateway's HTTP parsing: the request
 * parser (input split in two at a point chosen by the first byte, limits
 * small enough to be reached), the chunked decoder, the response-head parser
 * and the SSE splitter.  Properties checked beyond "no crash, no leak": a
 * parsed request's body never exceeds the limit, its header count is bounded,
 * and an error always carries a 4xx/5xx status. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gw-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t split = size > 1 ? data[0] % size : 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    if (split > n) split = n;

    gw_http_parser_t hp;
    gw_http_parser_init(&hp, 512, 256);
    size_t parts[3] = {0, split, n};
    for (int k = 0; k < 2; k++) {
        gw_http_parser_feed(&hp, p + parts[k], parts[k + 1] - parts[k]);
        for (;;) {
            gw_http_req_t *r;
            int rc = gw_http_parser_next(&hp, &r);
            if (rc == GW_OK) {
                if (r->body_len > 256 || r->nhdrs > GW_HTTP_MAX_HEADERS || !r->method || !r->target) abort();
                gw_http_header(r, "content-length");
                gw_http_req_free(r);
                continue;
            }
            if (rc == GW_CONTINUE) continue;
            if (rc == GW_ERROR && (hp.err_status < 400 || hp.err_status > 599)) abort();
            break;
        }
        if (hp.err_status) break;
    }
    gw_http_parser_release(&hp);

    gw_chunked_t ch = {0};
    tg_buf_t out = {0};
    ssize_t used = gw_chunked_feed(&ch, p, n, &out);
    if (used > (ssize_t)n || out.len > n) abort();
    tg_buf_free(&out);

    gw_http_resp_t resp;
    long hl = gw_http_resp_parse(p, n, 1024, &resp);
    if (hl > (long)n) abort();

    gw_sse_t sse = {0};
    gw_sse_feed(&sse, p, n);
    const char *ev;
    size_t evlen;
    tg_buf_t d = {0};
    while (gw_sse_next(&sse, &ev, &evlen) == GW_OK) gw_sse_data(ev, evlen, &d);
    tg_buf_free(&d);
    gw_sse_release(&sse);
    return 0;
}
