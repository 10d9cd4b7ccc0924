/* libFuzzer target for spool record decoding (metering/mtr_spool.c):
 *   make fuzz-billing && build/fuzz/mtr_spool_fuzz -max_total_time=60
 * Whatever decodes must re-encode to the very same bytes. */
#include <stdlib.h>

#include "../../../metering/mtr_spool.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char model[MTR_MODEL_MAX + 1];
    uint8_t e[MTR_REC_HDR + MTR_REC_MAX];
    size_t off = 0;
    while (off < size) {
        bill_usage_t u;
        size_t used;
        int d = mtr_spool_decode(data + off, size - off, &u, model, &used);
        if (d <= 0) break;
        size_t m = mtr_spool_encode(&u, e, sizeof e);
        if (m != used || memcmp(e, data + off, m) != 0) abort();
        off += used;
    }
    return 0;
}
