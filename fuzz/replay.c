/* replay.c — runs a libFuzzer target over the files named on the command
 * line (each file is one input, read whole with tg_file_read, any size), so
 * `make test-*` replays the seed corpora with any compiler and no libFuzzer:
 *   replay FILE...
 * Linked with one fuzz target's source and libtg_common.  Exits 1 when a
 * file cannot be read. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv) {
    int n = 0;
    for (int i = 1; i < argc; i++) {
        size_t len;
        char *buf = tg_file_read(argv[i], 0, &len);
        if (!buf) {
            fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
        free(buf);
        n++;
    }
    printf("fuzz replay: %d inputs ok\n", n);
    return 0;
}
