/* tok_vectors.c — exactness against the reference: every string of
 * tests/tokenizer/vectors/encode.tsv.gz (encoded by @huggingface/tokenizers)
 * must give the same ids and decode back to itself; decode.tsv.gz gives
 * id sequences and the reference's decoded text (split characters, specials,
 * skip_special); the stream decoder must produce the same text; chat.jsonl
 * holds conversations rendered by @huggingface/jinja from the published
 * templates, which tok_chat_render must reproduce byte for byte.
 *
 *   usage: tok_vectors TOKENIZER_JSON VECTOR_DIR [--encode-only]
 * (--encode-only: only encode.tsv.gz, for other tokenizers checked by hand) */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tg_test.h"
#include "tok-int.h" /* tok_nfc, and whether the tokenizer normalizes */

static const char *tok_path, *vec_dir;
static int encode_only;
static tok_t *T;

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static size_t unhex(const char *h, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i + 1 < n; i += 2) out[k++] = (char)(hexval(h[i]) << 4 | hexval(h[i + 1]));
    return k;
}

static size_t parse_ids(const char *s, size_t n, int32_t *ids) {
    size_t k = 0;
    const char *e = s + n;
    while (s < e) {
        char *end;
        ids[k++] = (int32_t)strtol(s, &end, 10);
        s = end;
        if (s < e && *s == ',') s++;
        else break;
    }
    return k;
}

static FILE *open_gz(const char *name) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s/%s'", vec_dir, name);
    return popen(cmd, "r");
}

static void test_encode_vectors(void) {
    FILE *f = open_gz("encode.tsv.gz");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0, total = 0, same = 0, rt = 0, cnt_ok = 0, first_ok = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n') line[--n] = 0;
        char *tab = memchr(line, '\t', (size_t)n);
        if (!tab) continue;
        char *text = malloc((size_t)(tab - line) / 2 + 1);
        size_t tl = unhex(line, (size_t)(tab - line), text);
        int32_t *want = malloc(((size_t)n + 1) * sizeof *want);
        size_t wn = parse_ids(tab + 1, (size_t)(line + n - tab - 1), want);
        /* the count and first ids without the array, before tok_encode (so
         * that a word's first time, a cache miss, goes through it too) */
        static const size_t caps[] = {1, 5, 16, 4096};
        size_t fc = caps[total % 4];
        int32_t first[4096];
        long fn = tok_count_first(T, text, tl, 1, first, fc);
        int32_t *got = NULL;
        long gn = tok_encode(T, text, tl, 1, &got);
        total++;
        if (fn == gn && gn >= 0 && !memcmp(first, got, (size_t)(gn < (long)fc ? gn : (long)fc) * sizeof *got)) first_ok++;
        if (gn == (long)wn && !memcmp(got, want, wn * sizeof *want)) same++;
        else if (total - same <= 5) {
            fprintf(stderr, "MISMATCH line %zu: text=%.*s\n  want:", total, (int)(tab - line), line);
            for (size_t i = 0; i < wn && i < 40; i++) fprintf(stderr, " %d", want[i]);
            fprintf(stderr, "\n  got: ");
            for (long i = 0; i < gn && i < 40; i++) fprintf(stderr, " %d", got[i]);
            fprintf(stderr, "\n");
        }
        if (tok_count(T, text, tl, 1) == gn) cnt_ok++;
        size_t dl = 0, el = tl;
        char *back = gn >= 0 ? tok_decode(T, got, (size_t)gn, 0, &dl) : NULL;
        char *nf = NULL;
        const char *expect = text; /* a normalizing tokenizer gives back the normalized text */
        if (T->nfc && tok_nfc(text, tl, &nf, &el) > 0) expect = nf;
        if (back && dl == el && !memcmp(back, expect, el)) rt++;
        free(nf);
        free(back);
        free(got);
        free(want);
        free(text);
    }
    free(line);
    pclose(f);
    printf("encode vectors: %zu/%zu identical ids, %zu/%zu round-trip, %zu/%zu count == encode\n", same,
           total, rt, total, cnt_ok, total);
    CHECK(total >= 3000);
    CHECK_EQ_I(same, total);
    CHECK_EQ_I(rt, total);
    CHECK_EQ_I(cnt_ok, total);
    printf("encode vectors: %zu/%zu tok_count_first == encode's count and first ids\n", first_ok, total);
    CHECK_EQ_I(first_ok, total);
}

static void test_nfc_vectors(void) {
    FILE *f = open_gz("nfc.tsv.gz");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0, total = 0, same = 0, changed = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n') line[--n] = 0;
        char *tab = memchr(line, '\t', (size_t)n);
        if (!tab) continue;
        char *in = malloc((size_t)n), *want = malloc((size_t)n);
        size_t il = unhex(line, (size_t)(tab - line), in);
        size_t wl = unhex(tab + 1, (size_t)(line + n - tab - 1), want);
        char *got = NULL;
        size_t gl = 0;
        int r = tok_nfc(in, il, &got, &gl);
        const char *g = r > 0 ? got : in;
        if (r == 0) gl = il;
        total++;
        changed += r > 0;
        if (r >= 0 && gl == wl && !memcmp(g, want, wl)) same++;
        else if (total - same <= 5) fprintf(stderr, "NFC mismatch: %s\n", line);
        free(got), free(in), free(want);
    }
    free(line);
    pclose(f);
    printf("NFC vectors (node's String.normalize): %zu/%zu identical (%zu changed by NFC)\n", same, total,
           changed);
    CHECK(total >= 500);
    CHECK_EQ_I(same, total);
}

static void test_decode_vectors(void) {
    FILE *f = open_gz("decode.tsv.gz");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0, total = 0, same = 0, stream_same = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n') line[--n] = 0;
        char *t1 = strchr(line, '\t');
        char *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t2) continue;
        int32_t ids[64];
        size_t k = parse_ids(line, (size_t)(t1 - line), ids);
        int skip = t1[1] == '1';
        char *want = malloc((size_t)(line + n - t2) / 2 + 1);
        size_t wl = unhex(t2 + 1, (size_t)(line + n - t2 - 1), want);
        size_t gl = 0;
        char *got = tok_decode(T, ids, k, skip, &gl);
        total++;
        if (got && gl == wl && !memcmp(got, want, wl)) same++;
        else if (total - same <= 5) fprintf(stderr, "decode mismatch at line %zu: %s\n", total, line);
        /* stream: concatenation of pushes + flush equals tok_decode */
        tok_stream_t *s = tok_stream_new(T, skip);
        char *acc = malloc(gl + 64 * 4 + 16);
        size_t al = 0, pl;
        int ok = 1;
        for (size_t i = 0; i < k && ok; i++) {
            const char *p = tok_stream_push(s, ids[i], &pl);
            if (!p || !tg_utf8_valid(p, pl)) ok = 0;
            else memcpy(acc + al, p, pl), al += pl;
        }
        const char *p = tok_stream_flush(s, &pl);
        if (p) memcpy(acc + al, p, pl), al += pl;
        if (ok && got && al == gl && !memcmp(acc, got, gl)) stream_same++;
        tok_stream_free(s);
        free(acc);
        free(got);
        free(want);
    }
    free(line);
    pclose(f);
    printf("decode vectors: %zu/%zu identical, stream decode %zu/%zu identical\n", same, total,
           stream_same, total);
    CHECK(total >= 500);
    CHECK_EQ_I(same, total);
    CHECK_EQ_I(stream_same, total);
}

static void test_chat_vectors(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/chat.jsonl", vec_dir);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0, total = 0, text_same = 0, ids_same = 0, with_tools = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(j, "kind"));
        tok_tmpl_kind_t k = !strcmp(kind, "deepseek_v3")   ? TOK_TMPL_DEEPSEEK_V3
                            : !strcmp(kind, "deepseek_r1") ? TOK_TMPL_DEEPSEEK_R1
                                                           : TOK_TMPL_MIXTRAL;
        int agp = cJSON_IsTrue(cJSON_GetObjectItem(j, "add_generation_prompt"));
        cJSON *msgs = cJSON_GetObjectItem(j, "messages");
        size_t nm = (size_t)cJSON_GetArraySize(msgs);
        tok_chat_msg_t *m = calloc(nm + 1, sizeof *m);
        tok_tool_call_t *calls = calloc(64, sizeof *calls);
        size_t nc = 0;
        for (size_t i = 0; i < nm; i++) {
            cJSON *e = cJSON_GetArrayItem(msgs, (int)i);
            m[i].role = cJSON_GetStringValue(cJSON_GetObjectItem(e, "role"));
            m[i].content = cJSON_GetStringValue(cJSON_GetObjectItem(e, "content"));
            cJSON *tc = cJSON_GetObjectItem(e, "tool_calls"), *c;
            m[i].tool_calls = calls + nc;
            cJSON_ArrayForEach(c, tc) {
                cJSON *fn = cJSON_GetObjectItem(c, "function");
                calls[nc].id = cJSON_GetStringValue(cJSON_GetObjectItem(c, "id"));
                calls[nc].type = cJSON_GetStringValue(cJSON_GetObjectItem(c, "type"));
                calls[nc].name = cJSON_GetStringValue(cJSON_GetObjectItem(fn, "name"));
                calls[nc].arguments = cJSON_GetStringValue(cJSON_GetObjectItem(fn, "arguments"));
                nc++;
                m[i].n_tool_calls++;
            }
        }
        char err[256];
        /* tools: their tojson text as the reference rendered it (api/ writes
         * it from the request; tests/unit/api/api_vectors.c checks that) */
        cJSON *tj = cJSON_GetObjectItem(j, "tools_json"), *x;
        const char *tools[64];
        size_t tlen[64], nt = 0;
        cJSON_ArrayForEach(x, tj) if (nt < 64) {
            tools[nt] = cJSON_GetStringValue(x);
            tlen[nt] = strlen(tools[nt]);
            nt++;
        }
        char *text = tok_chat_render_tools(k, m, nm, tools, tlen, nt, agp, NULL, err, sizeof err);
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(j, "text"));
        total++;
        with_tools += nt > 0;
        if (text && !strcmp(text, want)) text_same++;
        else fprintf(stderr, "chat mismatch (%s, agp=%d):\n  want %s\n  got  %s\n", kind, agp, want,
                     text ? text : err);
        if (text) {
            int32_t *ids = NULL;
            long gn = tok_encode(T, text, strlen(text), 1, &ids);
            cJSON *wids = cJSON_GetObjectItem(j, "ids");
            int ok = gn == cJSON_GetArraySize(wids);
            for (long i = 0; ok && i < gn; i++) ok = ids[i] == cJSON_GetArrayItem(wids, (int)i)->valueint;
            ids_same += ok;
            free(ids);
        }
        free(text);
        free(calls);
        free(m);
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    printf("chat vectors: %zu/%zu identical text (%zu with tools), %zu/%zu identical ids\n", text_same, total,
           with_tools, ids_same, total);
    CHECK(with_tools >= 8);
    CHECK(total >= 40);
    CHECK_EQ_I(text_same, total);
    CHECK_EQ_I(ids_same, total);
}

static void run_all(void) {
    char err[512];
    T = tok_load(tok_path, err, sizeof err);
    if (!T) fprintf(stderr, "%s\n", err);
    CHECK(T != NULL);
    if (!T) return;
    test_encode_vectors();
    if (!encode_only) {
        test_decode_vectors();
        test_chat_vectors();
        test_nfc_vectors();
    }
    tok_free(T);
}

int main(int argc, char **argv) {
    if (argc != 3 && !(argc == 4 && !strcmp(argv[3], "--encode-only"))) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON VECTOR_DIR [--encode-only]\n", argv[0]);
        return 2;
    }
    encode_only = argc == 4;
    tok_path = argv[1];
    vec_dir = argv[2];
    run_all();
    printf("%s: %d checks, %d failed\n", __FILE__, tg_test_checks, tg_test_fails);
    return tg_test_fails ? 1 : 0;
}
