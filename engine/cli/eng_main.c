/* eng_main.c — build/tollgate-engine: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "eng_cmd.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} cmds[] = {
    {"serve", eng_cmd_serve, "--model DIR [--device cpu|cuda:N] [--threads N] [--listen ADDR:PORT]"},
    {"tokenize", eng_cmd_tokenize, "--model DIR   (stdin: JSON strings, stdout: JSON id arrays)"},
    {"detokenize", eng_cmd_detokenize, "--model DIR   (stdin: JSON id arrays, stdout: JSON strings)"},
    {"logits", eng_cmd_logits, "--model DIR [--top K] [--device cpu|cuda:N]   (stdin: JSON id arrays)"},
    {"gen-model", eng_cmd_gen_model, "--arch ARCH --preset NAME --out DIR [--seed N] ..."},
};

static void usage(FILE *f) {
    fprintf(f, "usage: tollgate-engine COMMAND [options]\n");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-11s %s\n", cmds[i].name, cmds[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 2, argv + 2);
    fprintf(stderr, "tollgate-engine: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
