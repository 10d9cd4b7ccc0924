/* fuzz_tok_load.c — libFuzzer target: tok_load on arbitrary tokenizer.json
 * text must return a tokenizer or an error message, never crash or leak; a
 * loaded one must encode and decode its own input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_tok_load.%d.json", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    char err[512] = "";
    tok_t *t = tok_load(path, err, sizeof err);
    if (!t && !err[0]) abort(); /* a refusal always says why */
    if (t) {
        const char *s = "hello world 123 ü 😀 <s>";
        int32_t *ids = NULL;
        long n = tok_encode(t, s, strlen(s), 1, &ids);
        if (n >= 0) {
            size_t l;
            free(tok_decode(t, ids, (size_t)n, 0, &l));
        }
        free(ids);
        tok_free(t);
    }
    unlink(path);
    return 0;
}
