/* tok_unit.c — behaviour of the tokenizer beyond the reference vectors:
 * refusal of unsupported tokenizer.json kinds, invalid UTF-8, special-token
 * control, embedded NUL, streaming decode of split characters, chat template
 * errors, R1 reasoning split (whole and streamed), template detection, and
 * many threads sharing one tokenizer.
 *
 *   usage: tok_unit TOKENIZER_JSON */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tg_test.h"
#include "tok.h"

int tok_ds3_class(uint32_t cp); /* tok_pre_ds3.c */

static const char *tok_path;
static tok_t *T;
static char tmpdir[256];

static int32_t *enc(const char *s, int allow, long *n) {
    int32_t *ids = NULL;
    *n = tok_encode(T, s, strlen(s), allow, &ids);
    return ids;
}

static void write_file(const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

static void expect_refused(const char *json, const char *want_in_err) {
    write_file("tokenizer.json", json);
    char p[512], err[512] = "";
    snprintf(p, sizeof p, "%s/tokenizer.json", tmpdir);
    tok_t *t = tok_load(p, err, sizeof err);
    CHECK(t == NULL);
    if (!strstr(err, want_in_err)) fprintf(stderr, "error '%s' lacks '%s'\n", err, want_in_err);
    CHECK(strstr(err, want_in_err) != NULL);
    CHECK(strstr(err, p) != NULL); /* names the file */
    tok_free(t);
}

#define BL_PRE "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define SMALL_MODEL "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static void test_refusals(void) {
    char err[512] = "";
    CHECK(tok_load("/nonexistent/tokenizer.json", err, sizeof err) == NULL);
    CHECK(strstr(err, "/nonexistent/tokenizer.json") != NULL);
    expect_refused("{not json", "not valid JSON");
    expect_refused("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "WordPiece");
    expect_refused("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "Unigram");
    expect_refused("{\"normalizer\":{\"type\":\"NFKC\"}," BL_PRE "," SMALL_MODEL "}", "normalizer 'NFKC'");
    expect_refused("{\"pre_tokenizer\":{\"type\":\"Metaspace\"}," SMALL_MODEL "}", "Metaspace");
    expect_refused("{\"pre_tokenizer\":{\"type\":\"Whitespace\"}," SMALL_MODEL "}", "not supported");
    expect_refused("{" SMALL_MODEL "}", "no ByteLevel pre_tokenizer");
    expect_refused("{" BL_PRE ",\"decoder\":{\"type\":\"WordPiece\"}," SMALL_MODEL "}", "decoder 'WordPiece'");
    expect_refused("{" BL_PRE ",\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{},\"merges\":[]}}",
                   "byte_fallback");
    expect_refused("{" BL_PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a zz\"]}}",
                   "missing from the vocab");
    expect_refused("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                   "\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\"}]}," SMALL_MODEL "}",
                   "regex");
    expect_refused("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                   "\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Contiguous\"}]}," SMALL_MODEL "}",
                   "Contiguous");
}

static void test_small_gpt2_style(void) {
    /* a GPT-2 style tokenizer: ByteLevel with its own regex, merges as arrays */
    write_file("tokenizer.json",
               "{\"added_tokens\":[{\"id\":6,\"content\":\"<|x|>\",\"special\":true}]," BL_PRE
               ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,"
               "\"\\u0120ab\":4,\"!\":5},\"merges\":[[\"a\",\"b\"],[\"\\u0120\",\"ab\"]]}}");
    char p[512], err[512] = "";
    snprintf(p, sizeof p, "%s/tokenizer.json", tmpdir);
    tok_t *t = tok_load(p, err, sizeof err);
    CHECK(t != NULL);
    if (!t) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    int32_t *ids = NULL;
    long n = tok_encode(t, "ab ab!<|x|>", 11, 1, &ids);
    CHECK_EQ_I(n, 4);
    if (n == 4) {
        CHECK_EQ_I(ids[0], 2);
        CHECK_EQ_I(ids[1], 4);
        CHECK_EQ_I(ids[2], 5);
        CHECK_EQ_I(ids[3], 6);
    }
    free(ids);
    CHECK_EQ_I(tok_n_vocab(t), 7);
    CHECK_EQ_I(tok_id(t, "\xc4\xa0" "ab"), 4); /* "Ġab" */
    CHECK_EQ_I(tok_id(t, "<|x|>"), 6);
    CHECK_EQ_I(tok_id(t, "zz"), -1);
    tok_free(t);

    /* Digits (individual) before ByteLevel: "a12" -> a, 1, 2 */
    write_file("tokenizer.json",
               "{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\","
               "\"individual_digits\":true},{\"type\":\"ByteLevel\",\"use_regex\":false}]},"
               "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"1\":1,\"2\":2,\"12\":3,\"a1\":4},"
               "\"merges\":[\"1 2\",\"a 1\"]}}");
    t = tok_load(p, err, sizeof err);
    CHECK(t != NULL);
    if (t) {
        n = tok_encode(t, "a12", 3, 1, &ids);
        CHECK_EQ_I(n, 3);
        if (n == 3) CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2);
        free(ids);
        tok_free(t);
    }
}

static void test_special_control(void) {
    long n;
    int32_t *ids = enc("<｜User｜>hi", 1, &n);
    CHECK(n >= 2 && ids[0] == tok_id(T, "<｜User｜>"));
    free(ids);
    ids = enc("<｜User｜>hi", 0, &n);
    CHECK(n > 2);
    for (long i = 0; i < n; i++) CHECK(ids[i] < 128000); /* never an added token */
    size_t l;
    char *s = tok_decode(T, ids, (size_t)n, 0, &l);
    CHECK_EQ_S(s, "<｜User｜>hi");
    free(s);
    free(ids);
    /* BOS/EOS ids and skip_special */
    CHECK_EQ_I(tok_bos(T), 0);
    CHECK_EQ_I(tok_eos(T), 1);
    int32_t x[3] = {0, 19923, 1};
    s = tok_decode(T, x, 3, 1, &l);
    CHECK_EQ_S(s, "Hello");
    free(s);
    s = tok_decode(T, x, 3, 0, &l);
    CHECK_EQ_S(s, "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>");
    free(s);
    /* an id out of range is refused */
    int32_t bad[2] = {5, tok_n_vocab(T)};
    CHECK(tok_decode(T, bad, 2, 0, &l) == NULL);
    bad[1] = -1;
    CHECK(tok_decode(T, bad, 2, 0, &l) == NULL);
}

static void test_utf8(void) {
    int32_t *ids = (int32_t *)1;
    CHECK_EQ_I(tok_encode(T, "a\xff" "b", 3, 1, &ids), -1);
    CHECK_EQ_I(tok_count(T, "\xc0\x80", 2, 1), -1);         /* overlong NUL */
    CHECK_EQ_I(tok_count(T, "\xed\xa0\x80", 3, 1), -1);     /* surrogate */
    CHECK_EQ_I(tok_count(T, "\xf4\x90\x80\x80", 4, 1), -1); /* > U+10FFFF */
    CHECK_EQ_I(tok_count(T, "\xe4\xbd", 2, 1), -1);         /* truncated */
    CHECK(tg_utf8_valid("h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    CHECK(!tg_utf8_valid("\x80", 1));
    /* embedded NUL is text like any other byte */
    long n = tok_encode(T, "a\0b", 3, 1, &ids);
    CHECK(n >= 2);
    size_t l;
    char *s = tok_decode(T, ids, (size_t)n, 0, &l);
    CHECK_EQ_I(l, 3);
    CHECK(s && !memcmp(s, "a\0b", 3));
    free(s);
    free(ids);
    CHECK_EQ_I(tok_count(T, "", 0, 1), 0);
}

static void test_stream_split_chars(void) {
    /* "😀" is 4 bytes; feed it as single-byte tokens: nothing until complete */
    const unsigned char emoji[4] = {0xF0, 0x9F, 0x98, 0x80};
    /* its ids are byte-level pieces that split the character */
    long n;
    int32_t *e = enc("😀", 1, &n);
    tok_stream_t *st = tok_stream_new(T, 0);
    size_t total = 0, l;
    char acc[64];
    for (long i = 0; i < n; i++) {
        const char *p = tok_stream_push(st, e[i], &l);
        CHECK(p != NULL);
        CHECK(tg_utf8_valid(p, l));
        if (i + 1 < n) CHECK_EQ_I(l, 0); /* incomplete until the last piece */
        memcpy(acc + total, p, l);
        total += l;
    }
    const char *p = tok_stream_flush(st, &l);
    CHECK_EQ_I(l, 0);
    (void)p;
    CHECK_EQ_I(total, 4);
    CHECK(!memcmp(acc, emoji, 4));
    free(e);
    /* an incomplete character at the end becomes U+FFFD on flush, never broken UTF-8 */
    int32_t lead = tok_id(T, "\xc3\xb0"); /* byte-level "ð": the lone byte 0xF0 */
    CHECK(lead >= 0);
    if (lead >= 0) {
        p = tok_stream_push(st, lead, &l);
        CHECK(p != NULL);
        CHECK_EQ_I(l, 0); /* held: it may still complete */
        p = tok_stream_flush(st, &l);
        CHECK(p && tg_utf8_valid(p, l) && l >= 3);
    }
    CHECK(tok_stream_push(st, -5, &l) == NULL);
    tok_stream_free(st);
    tok_stream_free(NULL);
}

static void test_chat_errors(void) {
    char err[256] = "";
    tok_chat_msg_t m[2] = {{.role = "wizard", .content = "x"}};
    CHECK(tok_chat_render(TOK_TMPL_DEEPSEEK_V3, m, 1, 1, err, sizeof err) == NULL);
    CHECK(strstr(err, "wizard") != NULL);
    m[0] = (tok_chat_msg_t){.role = "user", .content = NULL};
    CHECK(tok_chat_render(TOK_TMPL_DEEPSEEK_V3, m, 1, 1, err, sizeof err) == NULL);
    m[0] = (tok_chat_msg_t){.role = "system", .content = "s"};
    m[1] = (tok_chat_msg_t){.role = "user", .content = "u"};
    CHECK(tok_chat_render(TOK_TMPL_MIXTRAL, m, 2, 1, err, sizeof err) == NULL);
    char *s = tok_chat_render(TOK_TMPL_DEEPSEEK_V3, m, 2, 1, err, sizeof err);
    CHECK_EQ_S(s, "<｜begin▁of▁sentence｜>s<｜User｜>u<｜Assistant｜>");
    free(s);
    s = tok_chat_render(TOK_TMPL_DEEPSEEK_R1, m + 1, 1, 1, err, sizeof err);
    CHECK_EQ_S(s, "<｜begin▁of▁sentence｜><｜User｜>u<｜Assistant｜><think>\n");
    free(s);
    s = tok_chat_render(TOK_TMPL_MIXTRAL, m + 1, 1, 1, err, sizeof err);
    CHECK_EQ_S(s, "<s>[INST] u [/INST]");
    free(s);
    CHECK(tok_chat_render((tok_tmpl_kind_t)42, m, 1, 1, err, sizeof err) == NULL);
    /* (messages from JSON: api/, tests/unit/api/api_chat.c) */
}

/* U+0000 in a content or arguments is text: rendered as a NUL byte, with the
 * length returned, and counted like any other character. */
static void test_chat_nul(void) {
    char err[256] = "";
    size_t n = 0;
    tok_chat_msg_t m[3] = {{.role = "system", .content = "s\0t", .content_len = 3},
                           {.role = "user", .content = "a\0b", .content_len = 3}};
    char *s = tok_chat_render_n(TOK_TMPL_DEEPSEEK_V3, m, 2, 1, &n, err, sizeof err);
    static const char want[] = "<｜begin▁of▁sentence｜>s\0t<｜User｜>a\0b<｜Assistant｜>";
    CHECK(s != NULL);
    CHECK_EQ_I(n, sizeof want - 1);
    CHECK(s && n == sizeof want - 1 && !memcmp(s, want, n) && s[n] == 0);
    /* the NUL is a token of its own kind: 'a\0b' is not 'ab' */
    long with = tok_count(T, s, n, 1);
    char *s2 = tok_chat_render(TOK_TMPL_DEEPSEEK_V3, m, 2, 1, err, sizeof err); /* no length: cut at NUL */
    CHECK(with > 0 && s2 && tok_count(T, s2, strlen(s2), 1) < with);
    free(s2);
    free(s);
    /* R1 keeps what follows the last </think>, past a NUL */
    m[0] = (tok_chat_msg_t){.role = "user", .content = "q"};
    m[1] = (tok_chat_msg_t){.role = "assistant", .content = "x\0</think>y\0z", .content_len = 13};
    m[2] = (tok_chat_msg_t){.role = "user", .content = "\0", .content_len = 1};
    s = tok_chat_render_n(TOK_TMPL_DEEPSEEK_R1, m, 3, 0, &n, err, sizeof err);
    static const char want_r1[] = "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜>y\0z<｜end▁of▁sentence｜><｜User｜>\0";
    CHECK(s && n == sizeof want_r1 - 1 && !memcmp(s, want_r1, n));
    free(s);
    /* tool arguments with NUL, by length */
    tok_tool_call_t call = {.name = "f", .arguments = "{\"k\":\"\0\"}", .arguments_len = 9};
    m[0] = (tok_chat_msg_t){.role = "assistant", .tool_calls = &call, .n_tool_calls = 1};
    s = tok_chat_render_n(TOK_TMPL_DEEPSEEK_V3, m, 1, 0, &n, err, sizeof err);
    static const char want_tc[] = "<｜begin▁of▁sentence｜><｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
                                  "function<｜tool▁sep｜>f\n```json\n{\"k\":\"\0\"}\n```<｜tool▁call▁end｜>";
    CHECK(s && n == sizeof want_tc - 1 && !memcmp(s, want_tc, n));
    free(s);
    /* Mixtral */
    m[0] = (tok_chat_msg_t){.role = "user", .content = "\0\0", .content_len = 2};
    s = tok_chat_render_n(TOK_TMPL_MIXTRAL, m, 1, 1, &n, err, sizeof err);
    CHECK(s && n == 3 + 7 + 2 + 8 && !memcmp(s, "<s>[INST] \0\0 [/INST]", n));
    free(s);
}

static void r1_stream_check(const char *text, size_t chunk) {
    char *wr, *wc;
    tok_r1_split(text, strlen(text), &wr, &wc);
    tok_r1_state_t st = {0};
    size_t n = strlen(text);
    char *r = calloc(n + 200, 1), *c = calloc(n + 200, 1), rb[400], cb[400];
    size_t rl = 0, cl = 0, a, b;
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        tok_r1_feed(&st, text + i, k, rb, &a, cb, &b);
        memcpy(r + rl, rb, a), rl += a;
        memcpy(c + cl, cb, b), cl += b;
    }
    tok_r1_finish(&st, rb, &a, cb, &b);
    memcpy(r + rl, rb, a), rl += a;
    memcpy(c + cl, cb, b), cl += b;
    if (strcmp(r, wr) || strcmp(c, wc))
        fprintf(stderr, "r1 stream (chunk %zu) of [%s]: [%s|%s] want [%s|%s]\n", chunk, text, r, c, wr, wc);
    CHECK_EQ_S(r, wr);
    CHECK_EQ_S(c, wc);
    free(r), free(c), free(wr), free(wc);
}

static void test_r1_split(void) {
    char *r, *c;
    CHECK_EQ_I(tok_r1_split("Let me think.\n</think>\n\nThe answer is 4.", 40, &r, &c), 1);
    CHECK_EQ_S(r, "Let me think.");
    CHECK_EQ_S(c, "The answer is 4.");
    free(r), free(c);
    const char *t2 = "<think>\nhmm\n</think>ok";
    CHECK_EQ_I(tok_r1_split(t2, strlen(t2), &r, &c), 1);
    CHECK_EQ_S(r, "hmm");
    CHECK_EQ_S(c, "ok");
    free(r), free(c);
    const char *t3 = "still thinking <thi";
    CHECK_EQ_I(tok_r1_split(t3, strlen(t3), &r, &c), 0);
    CHECK_EQ_S(r, "still thinking <thi");
    CHECK_EQ_S(c, "");
    free(r), free(c);
    static const char *cases[] = {
        "Let me think.\n</think>\n\nThe answer is 4.", "<think>\nhmm\n</think>ok", "still thinking <thi",
        "a</thinx>b</think>c</think>d", "\n\n  </think>\n\n", "", "<think>", "x\n\ny\n</think>\n\n z \n",
        "</think", "<</think>>", "no markers at all \n",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        for (size_t ch = 1; ch <= 9; ch += 4) r1_stream_check(cases[i], ch);
}

static void test_detect(void) {
    write_file("tokenizer_config.json", "{\"chat_template\":\"{{'<｜Assistant｜>'}}\"}");
    CHECK_EQ_I(tok_tmpl_detect(tmpdir), TOK_TMPL_DEEPSEEK_V3);
    write_file("tokenizer_config.json", "{\"chat_template\":\"{{'<｜Assistant｜><think>\\\\n'}}\"}");
    CHECK_EQ_I(tok_tmpl_detect(tmpdir), TOK_TMPL_DEEPSEEK_R1);
    write_file("tokenizer_config.json", "{\"chat_template\":\"[INST] x [/INST]\"}");
    CHECK_EQ_I(tok_tmpl_detect(tmpdir), TOK_TMPL_MIXTRAL);
    write_file("tokenizer_config.json", "{}");
    write_file("config.json", "{\"architectures\":[\"MixtralForCausalLM\"]}");
    CHECK_EQ_I(tok_tmpl_detect(tmpdir), TOK_TMPL_MIXTRAL);
    write_file("config.json", "{\"architectures\":[\"DeepseekV3ForCausalLM\"]}");
    CHECK_EQ_I(tok_tmpl_detect(tmpdir), TOK_TMPL_DEEPSEEK_V3);
    write_file("config.json", "{\"architectures\":[\"BertModel\"]}");
    CHECK_EQ_I(tok_tmpl_detect(tmpdir), -1);
    CHECK_EQ_I(tok_tmpl_detect("/nonexistent"), -1);
}

/* Many threads encode different texts with one tokenizer; each must get what
 * a single thread gets. */
static const char *thread_texts[] = {
    "The quick brown fox jumps over the lazy dog. ", "深度求索的大语言模型按词元计费。", "def f(x):\n    return x * 2\n",
    "Привет, мир! 👋🏽 12345678", "<｜User｜>hi<｜Assistant｜>",
};
static long thread_want[5];
static int thread_bad;

static void *thread_main(void *arg) {
    size_t k = (size_t)arg;
    for (int it = 0; it < 300; it++) {
        const char *s = thread_texts[(k + (size_t)it) % 5];
        long n = tok_count(T, s, strlen(s), 1);
        if (n != thread_want[(k + (size_t)it) % 5]) __atomic_add_fetch(&thread_bad, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void test_threads(void) {
    for (int i = 0; i < 5; i++) thread_want[i] = tok_count(T, thread_texts[i], strlen(thread_texts[i]), 1);
    pthread_t th[8];
    for (size_t i = 0; i < 8; i++) pthread_create(&th[i], NULL, thread_main, (void *)i);
    for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
    CHECK_EQ_I(thread_bad, 0);
}

/* The hand-written DeepSeek-V3 pre-tokenizer against the PCRE2 path (the
 * regexes as written in tokenizer.json).  Their Unicode tables differ only on
 * code points assigned after PCRE2's Unicode version; those are listed and
 * left out of the random texts. */
static uint32_t rnd_state = 12345;
static uint32_t rnd(void) {
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 17;
    rnd_state ^= rnd_state << 5;
    return rnd_state;
}

static int put_cp(char *o, uint32_t c) {
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xC0 | c >> 6), o[1] = (char)(0x80 | (c & 0x3F)), 2;
    if (c < 0x10000)
        return o[0] = (char)(0xE0 | c >> 12), o[1] = (char)(0x80 | ((c >> 6) & 0x3F)),
               o[2] = (char)(0x80 | (c & 0x3F)), 3;
    return o[0] = (char)(0xF0 | c >> 18), o[1] = (char)(0x80 | ((c >> 12) & 0x3F)),
           o[2] = (char)(0x80 | ((c >> 6) & 0x3F)), o[3] = (char)(0x80 | (c & 0x3F)), 4;
}

static void test_fast_vs_regex(void) {
    static const char *pats[5] = {"\\p{L}", "\\p{N}", "\\p{M}", "\\p{P}", "\\p{S}"};
    pcre2_code *re[5];
    for (int i = 0; i < 5; i++) {
        int ec;
        PCRE2_SIZE eo;
        re[i] = pcre2_compile((PCRE2_SPTR)pats[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        pcre2_jit_compile(re[i], PCRE2_JIT_COMPLETE);
    }
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    uint8_t *agree = malloc(0x110000);
    size_t differ = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        agree[cp] = 0;
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        char u[4];
        int l = put_cp(u, cp);
        int pc = 0;
        for (int i = 0; i < 5; i++)
            if (pcre2_match(re[i], (PCRE2_SPTR)u, (size_t)l, 0, 0, md, NULL) >= 0) pc |= 1 << i;
        if (pc == (tok_ds3_class(cp) & 31)) agree[cp] = 1;
        else if (differ++ < 3)
            fprintf(stderr, "note: U+%04X class %d in node's Unicode tables, %d in PCRE2's\n", cp,
                    tok_ds3_class(cp) & 31, pc);
    }
    printf("Unicode classes: %zu code points differ between the tables (assigned after PCRE2's Unicode)\n",
           differ);
    CHECK(differ < 20000);
    for (int i = 0; i < 5; i++) pcre2_code_free(re[i]);
    pcre2_match_data_free(md);

    setenv("TOK_NO_FAST", "1", 1);
    char err[512];
    tok_t *slow = tok_load(tok_path, err, sizeof err);
    unsetenv("TOK_NO_FAST");
    CHECK(slow != NULL);
    if (!slow) {
        free(agree);
        return;
    }
    static const uint32_t pool[] = {' ', ' ', ' ', '\n', '\r', '\t', 'a', 'Z', 'q', '0', '7', '\'', '"', '-', '.',
                                    '!', '$', '_', '`', '~', 0x85, 0xA0, 0x1680, 0x2000, 0x2028, 0x202F, 0x3000,
                                    0x180E, 0x200B, 0xFEFF, 0x0301, 0x0300, 0x20DD, 0x4E00, 0x9FA5, 0x9FA6, 0x3042,
                                    0x30A2, 0x30FC, 0x3001, 0xFF01, 0x00E9, 0x0660, 0x00BD, 0x2160, 0x1F600,
                                    0x1F3FD, 0x200D, 0xFE0F, 0x0, 0x1F, 0x7F, 0xAD, 0x10FFFF};
    size_t np = sizeof pool / sizeof *pool, same = 0, total = 0;
    char buf[400];
    for (int it = 0; it < 20000; it++) {
        size_t len = 0, m = 1 + rnd() % 60;
        for (size_t i = 0; i < m; i++) {
            uint32_t cp;
            do cp = (rnd() % 3) ? pool[rnd() % np] : rnd() % (rnd() % 2 ? 0x3100 : 0x110000);
            while (!agree[cp]);
            len += (size_t)put_cp(buf + len, cp);
        }
        int32_t *a = NULL, *b = NULL;
        long na = tok_encode(T, buf, len, 1, &a), nb = tok_encode(slow, buf, len, 1, &b);
        total++;
        if (na == nb && na >= 0 && !memcmp(a, b, (size_t)na * sizeof *a)) same++;
        else if (total - same < 4) {
            fprintf(stderr, "fast/regex differ on:");
            for (size_t i = 0; i < len; i++) fprintf(stderr, " %02x", (unsigned char)buf[i]);
            fprintf(stderr, "\n");
        }
        free(a), free(b);
    }
    printf("hand-written vs PCRE2 pre-tokenizer: %zu/%zu random texts identical\n", same, total);
    CHECK_EQ_I(same, total);
    tok_free(slow);
    free(agree);
}

static void test_memory_figure(void) {
    size_t m = tok_mem(T);
    printf("one loaded DeepSeek-V3 tokenizer holds %.1f MiB\n", m / 1048576.0);
    CHECK(m > 1000000 && m < 64u << 20);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s TOKENIZER_JSON\n", argv[0]);
        return 2;
    }
    tok_path = argv[1];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tok_unit.XXXXXX");
    if (!mkdtemp(tmpdir)) return 2;
    char err[512];
    T = tok_load(tok_path, err, sizeof err);
    if (!T) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    test_refusals();
    test_small_gpt2_style();
    test_special_control();
    test_utf8();
    test_stream_split_chars();
    test_chat_errors();
    test_chat_nul();
    test_r1_split();
    test_detect();
    test_threads();
    test_fast_vs_regex();
    test_memory_figure();
    tok_free(T);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) return 2;
    printf("%s: %d checks, %d failed\n", __FILE__, tg_test_checks, tg_test_fails);
    return tg_test_fails ? 1 : 0;
}
