/* tests/unit/engine/eng_st.c — the safetensors reader and number formats:
 * every lie a header can tell is an error naming the file and tensor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tg_test.h"
#include "eng_model_int.h"

/* a file: 8-byte length, header, data */
static size_t mk(uint8_t *buf, const char *hdr, size_t data_len) {
    size_t h = strlen(hdr);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, hdr, h);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + i] = (uint8_t)i;
    return 8 + h + data_len;
}

static int parse(const char *hdr, size_t data_len, char *err) {
    static uint8_t buf[1 << 16];
    size_t n = mk(buf, hdr, data_len);
    eng_st_tensor_t *t;
    int nt;
    int rc = eng_st_parse(buf, n, "x.safetensors", &t, &nt, err, 256);
    eng_st_tensors_free(t, nt);
    return rc;
}

static void test_valid(void) {
    uint8_t buf[512];
    size_t n = mk(buf, "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                       "\"e\":{\"dtype\":\"F8_E4M3\",\"shape\":[0],\"data_offsets\":[32,32]}}", 32);
    eng_st_tensor_t *t;
    int nt;
    char err[256];
    CHECK_EQ_I(eng_st_parse(buf, n, "ok.safetensors", &t, &nt, err, sizeof err), 0);
    CHECK_EQ_I(nt, 3);
    CHECK_EQ_S(t[0].name, "a");
    CHECK_EQ_I(t[0].shape[1], 3);
    CHECK(t[1].dt == ENG_DT_BF16);
    CHECK(t[1].data == buf + n - 8);
    eng_st_tensors_free(t, nt);
}

static void test_lies(void) {
    char err[256];
    uint8_t small[4] = {1, 2, 3, 4};
    eng_st_tensor_t *t;
    int nt;
    CHECK_EQ_I(eng_st_parse(small, 4, "tiny.safetensors", &t, &nt, err, sizeof err), -1);
    CHECK(strstr(err, "tiny.safetensors") != NULL);
    uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{', '}'};
    CHECK_EQ_I(eng_st_parse(big, 16, "len.safetensors", &t, &nt, err, sizeof err), -1);
    CHECK(strstr(err, "exceeds") != NULL);
    CHECK_EQ_I(parse("not json", 0, err), -1);
    CHECK_EQ_I(parse("[1,2]", 0, err), -1);
    /* data past the end: truncated */
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, err), -1);
    CHECK(strstr(err, "'w'") && strstr(err, "truncated"));
    /* size disagrees with shape */
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}", 16, err), -1);
    CHECK(strstr(err, "'w'") != NULL);
    /* overflowing shape */
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", 16, err), -1);
    /* negative, fractional, huge offsets */
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, err), -1);
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4.5]}}", 8, err), -1);
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1e300,1e300]}}", 8, err), -1);
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8, err), -1);
    /* overlapping tensors */
    CHECK_EQ_I(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, err), -1);
    CHECK(strstr(err, "overlaps") != NULL);
    /* unknown dtype, missing fields */
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 8, err), -1);
    CHECK(strstr(err, "dtype") != NULL);
    CHECK_EQ_I(parse("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 8, err), -1);
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 8, err), -1);
    CHECK_EQ_I(parse("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, err), -1);
    CHECK_EQ_I(parse("{\"w\":3}", 8, err), -1);
}

static void test_numbers(void) {
    int bad = 0;
    for (int v = 0; v < 256; v++) {
        if ((v & 0x7f) == 0x7f) continue; /* NaN */
        float f = eng_f8e4m3_to_f32((uint8_t)v);
        if (eng_f32_to_f8e4m3(f) != v && !(f == 0 && (v & 0x7f) == 0)) bad++;
    }
    CHECK_EQ_I(bad, 0);
    CHECK(eng_f8e4m3_to_f32(0x7e) == 448.0f);
    CHECK(eng_f8e4m3_to_f32(0x01) == ldexpf(1, -9));
    CHECK(eng_f8e4m3_to_f32(0x38) == 1.0f);
    CHECK(isnan(eng_f8e4m3_to_f32(0xff)));
    CHECK_EQ_I(eng_f32_to_f8e4m3(1000.0f), 0x7e); /* saturates */
    bad = 0;
    for (int v = 0; v < 65536; v++) {
        float f = eng_f16_to_f32((uint16_t)v);
        if (isnan(f)) continue;
        if (eng_f32_to_f16(f) != v) bad++;
        if (!isnan(eng_bf16_to_f32((uint16_t)v)) && eng_f32_to_bf16(eng_bf16_to_f32((uint16_t)v)) != v) bad++;
    }
    CHECK_EQ_I(bad, 0);
    CHECK_EQ_I(eng_f32_to_bf16(1.00390625f), 0x3f80); /* ties to even */
    CHECK_EQ_I(eng_f32_to_bf16(1.01171875f), 0x3f82);
}

TG_TEST_MAIN(test_valid, test_lies, test_numbers)
