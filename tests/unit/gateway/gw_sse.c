/* Unit tests of gateway/gw_sse.c: events split across reads, CRLF endings,
 * data extraction. */
#include <string.h>

#include "../../../gateway/gw-int.h"
#include "tg_test.h"

static void test_split_everywhere(void) {
    const char *s = "data: {\"a\":1}\n\n: keep-alive\n\ndata: x\r\n\r\ndata: [DONE]\n\npartial";
    size_t len = strlen(s);
    for (size_t cut = 0; cut <= len; cut++) {
        gw_sse_t e = {0};
        const char *ev;
        size_t n;
        int count = 0;
        char got[256] = "";
        gw_sse_feed(&e, s, cut);
        while (gw_sse_next(&e, &ev, &n) == GW_OK) {
            count++;
            strncat(got, ev, n);
            strcat(got, "|");
        }
        gw_sse_feed(&e, s + cut, len - cut);
        while (gw_sse_next(&e, &ev, &n) == GW_OK) {
            count++;
            strncat(got, ev, n);
            strcat(got, "|");
        }
        CHECK_EQ_I(count, 4);
        CHECK_EQ_S(got, "data: {\"a\":1}\n\n|: keep-alive\n\n|data: x\r\n\r\n|data: [DONE]\n\n|");
        CHECK_EQ_I(gw_sse_pending(&e), 7);
        gw_sse_release(&e);
    }
}

static void test_data(void) {
    tg_buf_t d = {0};
    const char *ev = "event: x\ndata: one\ndata:two\r\nid: 3\n\n";
    CHECK_EQ_I(gw_sse_data(ev, strlen(ev), &d), GW_OK);
    CHECK_EQ_S(d.p, "one\ntwo");
    CHECK_EQ_I(gw_sse_data(": comment\n\n", 11, &d), GW_AGAIN);
    CHECK_EQ_I(gw_sse_data("data:\n\n", 7, &d), GW_OK);
    CHECK_EQ_I(d.len, 0);
    tg_buf_free(&d);
}

TG_TEST_MAIN(test_split_everywhere, test_data)
