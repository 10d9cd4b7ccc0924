/* Unit tests: common/tg_hex. */
#include <string.h>

#include "tg_hex.h"
#include "tg_test.h"

static void test_hex(void) {
    unsigned char b[256], back[256];
    for (int i = 0; i < 256; i++) b[i] = (unsigned char)i;
    char h[513];
    tg_hex_encode(b, 256, h);
    CHECK(strlen(h) == 512);
    CHECK(!memcmp(h, "000102", 6) && !memcmp(h + 506, "fdfeff", 6));
    CHECK(tg_hex_decode(h, 256, back) == 0 && !memcmp(b, back, 256));
    CHECK(tg_hex_decode("ABcd", 2, back) == 0 && back[0] == 0xab && back[1] == 0xcd);
    CHECK(tg_hex_decode("0g", 1, back) == -1);
    CHECK(tg_hex_decode("g0", 1, back) == -1);
    CHECK(tg_hex_val('f') == 15 && tg_hex_val('F') == 15 && tg_hex_val('/') == -1 && tg_hex_val(':') == -1);
    tg_hex_encode(b, 0, h);
    CHECK(h[0] == '\0');
}

TG_TEST_MAIN(test_hex)
