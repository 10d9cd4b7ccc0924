/* fuzz_safetensors.c — libFuzzer target for the safetensors header and tensor
 * table (eng_st_parse): any bytes must give a table whose every tensor lies
 * inside the input, or an error; never a crash or an out-of-bounds read.
 * Built with clang -fsanitize=fuzzer,address by `make fuzz-engine`; with
 * fuzz_driver.c it replays a corpus under any compiler (make test-engine). */
#include <stdint.h>
#include <stdlib.h>

#include "eng_model_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    eng_st_tensor_t *t;
    int n;
    char err[256];
    if (eng_st_parse(data, size, "fuzz.safetensors", &t, &n, err, sizeof err) == 0) {
        for (int i = 0; i < n; i++) {
            if (t[i].data < data || t[i].data + (t[i].end - t[i].begin) > data + size) abort();
            volatile uint8_t sink = 0;
            if (t[i].end > t[i].begin) sink ^= t[i].data[t[i].end - t[i].begin - 1]; /* touch the last byte */
            (void)sink;
        }
        eng_st_tensors_free(t, n);
    }
    return 0;
}
