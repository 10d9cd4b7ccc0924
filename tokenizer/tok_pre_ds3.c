/* tok_pre_ds3.c — hand-written DeepSeek-V3 pre-tokenizer (not yet enabled). */
#include "tok-int.h"

int tok_pre_ds3(const char *text, size_t len, tok_spans_t *out) {
    (void)text, (void)len, (void)out;
    return -1;
}
