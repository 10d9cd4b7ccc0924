/* fuzz_spool.c — libFuzzer target for spool record decoding
 * (metering/mtr_spool.c): the input is a spool file's bytes, decoded record
 * by record the way mtr_spool_read does.  Whatever decodes must re-encode to
 * the very same bytes.
 *   make fuzz-billing               libFuzzer (clang), FUZZ_SECONDS (default 60)
 *   make test-billing-unit          replays fuzz/metering/corpus/ (fuzz/replay.c)
 * The seed corpus comes from gen_corpus.py (valid, torn and garbled records). */
#include <stdlib.h>

#include "../../metering/mtr_spool.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char model[MTR_MODEL_MAX + 1];
    uint8_t e[MTR_REC_HDR + MTR_REC_MAX];
    size_t off = 0;
    while (off < size) {
        mtr_usage_t u;
        size_t used;
        int d = mtr_spool_decode(data + off, size - off, &u, model, &used);
        if (d <= 0) break;
        if (used < MTR_REC_HDR + MTR_REC_MIN || used > size - off) abort();
        size_t m = mtr_spool_encode(&u, e, sizeof e);
        if (m != used || memcmp(e, data + off, m) != 0) abort();
        off += used;
    }
    return 0;
}
