/* eng_model.c — load a Hugging Face MoE checkpoint (DeepSeek-V3, DeepSeek-V2,
 * Mixtral) and run its forward pass over a batch of sequences.
 *
 * The maths follows /work/shared/REFERENCE-DEEPSEEK.md (DeepSeek's own
 * inference code) and Hugging Face's Mixtral.  Weights stay in the mmapped
 * files; activations and the KV cache are fp32.  Heavy ops (matmul,
 * attention) go through the backend ops table; this file does the cheap
 * per-token glue (norms, RoPE, routing), which is O(hidden) per token.
 * A batch is the concatenation of every sequence's new tokens: each matmul
 * runs once over all of them, and every token's numbers are computed the same
 * way whatever else is in the batch. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tg_err.h"
#include "tg_file.h"
#include "eng_model_int.h"


/* ---- config.json ------------------------------------------------------------- */

static double jnum(const cJSON *o, const char *k, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int jint(const cJSON *o, const char *k, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsArray(v) && cJSON_IsNumber(v->child)) return (int)v->child->valuedouble;
    return cJSON_IsNumber(v) ? (int)v->valuedouble : def;
}

static const char *jstr(const cJSON *o, const char *k, const char *def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : def;
}

static int parse_config(eng_model_t *m, const char *dir, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t n;
    char *buf = tg_file_read(path, 16 << 20, &n);
    if (!buf) {
        tg_errf(err, errlen, "%s: %s", path, errno == EFBIG ? "larger than 16 MiB" : strerror(errno));
        return -1;
    }
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!cJSON_IsObject(j)) {
        tg_errf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(j);
        return -1;
    }
    int rc = -1;
    eng_cfg_t *c = &m->cfg;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(j, "architectures");
    const char *arch = cJSON_IsArray(archs) && cJSON_IsString(archs->child) ? archs->child->valuestring : "";
    snprintf(m->arch_name, sizeof m->arch_name, "%s", arch);
    if (!strcmp(arch, "DeepseekV3ForCausalLM")) m->info.arch = ENG_ARCH_DEEPSEEK_V3;
    else if (!strcmp(arch, "DeepseekV2ForCausalLM")) m->info.arch = ENG_ARCH_DEEPSEEK_V2;
    else if (!strcmp(arch, "MixtralForCausalLM")) m->info.arch = ENG_ARCH_MIXTRAL;
    else {
        tg_errf(err, errlen, "%s: unsupported architecture '%s' (supported: DeepseekV3ForCausalLM, "
               "DeepseekV2ForCausalLM, MixtralForCausalLM)", path, arch);
        goto out;
    }
    m->info.arch_name = m->arch_name;
    c->D = jint(j, "hidden_size", 0);
    c->n_layers = jint(j, "num_hidden_layers", 0);
    c->vocab = jint(j, "vocab_size", 0);
    c->H = jint(j, "num_attention_heads", 0);
    c->eps = (float)jnum(j, "rms_norm_eps", 1e-6);
    c->max_pos = jint(j, "max_position_embeddings", 4096);
    c->inter = jint(j, "intermediate_size", 0);
    m->info.bos_id = jint(j, "bos_token_id", -1);
    m->info.eos_id = jint(j, "eos_token_id", -1);
    if (m->info.arch == ENG_ARCH_MIXTRAL) {
        c->kvh = jint(j, "num_key_value_heads", c->H);
        c->hd = jint(j, "head_dim", c->H ? c->D / c->H : 0);
        c->rope_theta = (float)jnum(j, "rope_theta", 1e6);
        c->rope_interleaved = 0;
        c->E = jint(j, "num_local_experts", 8);
        c->topk = jint(j, "num_experts_per_tok", 2);
        c->moe_inter = c->inter;
        c->first_dense = 0;
        c->moe_freq = 1;
        c->n_group = c->topk_group = 1;
        c->sigmoid = 0;
        c->norm_topk = 1;
        c->routed_scale = 1.0f;
        c->scale_after_norm = 1;
        if (c->E <= 0 || c->inter <= 0) {
            tg_errf(err, errlen, "%s: bad MoE shape (num_local_experts %d, intermediate_size %d)", path, c->E, c->inter);
            goto out;
        }
        if (c->H <= 0 || c->kvh <= 0 || c->H % c->kvh || c->hd <= 0 || c->hd % 2) {
            tg_errf(err, errlen, "%s: bad attention shape (heads %d, kv heads %d, head_dim %d)", path, c->H,
                   c->kvh, c->hd);
            goto out;
        }
    } else {
        c->q_lora = jint(j, "q_lora_rank", 0);
        c->c = jint(j, "kv_lora_rank", 0);
        c->dn = jint(j, "qk_nope_head_dim", 0);
        c->dr = jint(j, "qk_rope_head_dim", 0);
        c->dv = jint(j, "v_head_dim", 0);
        c->rope_theta = (float)jnum(j, "rope_theta", 10000);
        c->rope_interleaved = 1;
        const cJSON *ne = cJSON_GetObjectItemCaseSensitive(j, "n_routed_experts");
        c->E = cJSON_IsNumber(ne) ? (int)ne->valuedouble : 0;
        c->topk = jint(j, "num_experts_per_tok", 0);
        c->moe_inter = jint(j, "moe_intermediate_size", 0);
        c->n_shared = jint(j, "n_shared_experts", 0);
        c->first_dense = jint(j, "first_k_dense_replace", 0);
        c->moe_freq = jint(j, "moe_layer_freq", 1);
        c->n_group = jint(j, "n_group", 1);
        c->topk_group = jint(j, "topk_group", 1);
        int v3 = m->info.arch == ENG_ARCH_DEEPSEEK_V3;
        const char *sf = jstr(j, "scoring_func", v3 ? "sigmoid" : "softmax");
        if (!strcmp(sf, "sigmoid")) c->sigmoid = 1;
        else if (!strcmp(sf, "softmax")) c->sigmoid = 0;
        else {
            tg_errf(err, errlen, "%s: unsupported scoring_func '%s'", path, sf);
            goto out;
        }
        const char *tm = jstr(j, "topk_method", v3 ? "noaux_tc" : "greedy");
        if (!strcmp(tm, "greedy")) c->n_group = c->topk_group = 1;
        else if (strcmp(tm, "noaux_tc") && strcmp(tm, "group_limited_greedy")) {
            tg_errf(err, errlen, "%s: unsupported topk_method '%s'", path, tm);
            goto out;
        }
        const cJSON *nt = cJSON_GetObjectItemCaseSensitive(j, "norm_topk_prob");
        c->norm_topk = cJSON_IsBool(nt) ? cJSON_IsTrue(nt) : 0;
        c->routed_scale = (float)jnum(j, "routed_scaling_factor", 1.0);
        c->scale_after_norm = v3;
        if (c->H <= 0 || c->c <= 0 || c->dn <= 0 || c->dr <= 0 || c->dr % 2 || c->dv <= 0 || c->q_lora < 0) {
            tg_errf(err, errlen, "%s: bad MLA shape (heads %d, kv_lora_rank %d, nope %d, rope %d, v %d)", path,
                   c->H, c->c, c->dn, c->dr, c->dv);
            goto out;
        }
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
        if (cJSON_IsObject(rs)) {
            const char *ty = jstr(rs, "type", jstr(rs, "rope_type", ""));
            if (!strcmp(ty, "yarn")) {
                c->yarn = 1;
                c->yarn_factor = (float)jnum(rs, "factor", 1);
                c->orig_max_pos = jint(rs, "original_max_position_embeddings", 4096);
                c->beta_fast = (float)jnum(rs, "beta_fast", 32);
                c->beta_slow = (float)jnum(rs, "beta_slow", 1);
                c->yarn_mscale = (float)jnum(rs, "mscale", 1);
                c->yarn_mscale_all = (float)jnum(rs, "mscale_all_dim", 0);
            } else if (*ty) {
                tg_errf(err, errlen, "%s: unsupported rope_scaling type '%s'", path, ty);
                goto out;
            }
        }
    }
    if (c->D <= 0 || c->n_layers <= 0 || c->vocab <= 0 || c->D > (1 << 20) || c->n_layers > 4096) {
        tg_errf(err, errlen, "%s: bad hidden_size %d / num_hidden_layers %d / vocab_size %d", path, c->D,
               c->n_layers, c->vocab);
        goto out;
    }
    if (c->E > 0 && (c->topk <= 0 || c->topk > c->E || c->n_group <= 0 || c->E % c->n_group ||
                     c->topk_group <= 0 || c->topk_group > c->n_group || c->moe_inter <= 0 ||
                     c->topk > c->topk_group * (c->E / c->n_group))) {
        tg_errf(err, errlen, "%s: bad MoE shape (experts %d, top-k %d, groups %d, topk_group %d)", path, c->E,
               c->topk, c->n_group, c->topk_group);
        goto out;
    }
    if (c->n_group > 256) {
        tg_errf(err, errlen, "%s: n_group %d is more than 256", path, c->n_group);
        goto out;
    }
    if (c->moe_freq <= 0) c->moe_freq = 1;
    rc = 0;
out:
    cJSON_Delete(j);
    return rc;
}

/* ---- tensors ------------------------------------------------------------------ */

static int bind_w(eng_model_t *m, eng_w_t *w, int64_t rows, int64_t cols, char *err, size_t errlen,
                  const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const eng_st_tensor_t *t = eng_st_find(m->st, name);
    if (!t) {
        tg_errf(err, errlen, "tensor '%s' is missing from the checkpoint", name);
        return -1;
    }
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        tg_errf(err, errlen, "%s: tensor '%s': shape [%lld,%lld] (ndim %d), expected [%lld,%lld]", t->file, name,
               (long long)(t->ndim > 0 ? t->shape[0] : 0), (long long)(t->ndim > 1 ? t->shape[1] : 0), t->ndim,
               (long long)rows, (long long)cols);
        return -1;
    }
    if (t->dt != ENG_DT_F32 && t->dt != ENG_DT_BF16 && t->dt != ENG_DT_F16 && t->dt != ENG_DT_F8_E4M3) {
        tg_errf(err, errlen, "%s: tensor '%s': dtype %s is not supported (F32, BF16, F16, F8_E4M3)", t->file,
               name, t->dtype_name);
        return -1;
    }
    memset(w, 0, sizeof *w);
    w->dt = t->dt;
    w->rows = rows;
    w->cols = cols;
    w->data = t->data;
    w->name = t->name;
    if (t->dt == ENG_DT_F8_E4M3) {
        char sname[560];
        size_t L = strlen(name);
        if (L > 7 && !strcmp(name + L - 7, ".weight")) snprintf(sname, sizeof sname, "%s_scale_inv", name);
        else snprintf(sname, sizeof sname, "%s.weight_scale_inv", name);
        const eng_st_tensor_t *s = eng_st_find(m->st, sname);
        int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        if (!s) {
            tg_errf(err, errlen, "%s: tensor '%s' is F8_E4M3 but '%s' is missing", t->file, name, sname);
            return -1;
        }
        if (s->dt != ENG_DT_F32 || s->ndim != 2 || s->shape[0] != sr || s->shape[1] != sc) {
            tg_errf(err, errlen, "%s: tensor '%s': expected F32 [%lld,%lld] block scales", s->file, sname,
                   (long long)sr, (long long)sc);
            return -1;
        }
        w->scale = (const float *)s->data;
        w->scale_cols = sc;
    }
    return 0;
}

/* A small vector (norm weights, gate bias) converted to a malloc'd fp32 copy. */
static float *load_vec(eng_model_t *m, int64_t n, char *err, size_t errlen, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const eng_st_tensor_t *t = eng_st_find(m->st, name);
    if (!t) {
        tg_errf(err, errlen, "tensor '%s' is missing from the checkpoint", name);
        return NULL;
    }
    if (t->ndim != 1 || t->shape[0] != n) {
        tg_errf(err, errlen, "%s: tensor '%s': expected shape [%lld]", t->file, name, (long long)n);
        return NULL;
    }
    if (t->dt != ENG_DT_F32 && t->dt != ENG_DT_BF16 && t->dt != ENG_DT_F16) {
        tg_errf(err, errlen, "%s: tensor '%s': dtype %s is not supported here (F32, BF16, F16)", t->file, name,
               t->dtype_name);
        return NULL;
    }
    float *v = malloc(n * sizeof(float));
    if (!v) {
        tg_errf(err, errlen, "out of memory");
        return NULL;
    }
    eng_w_t w = {.dt = t->dt, .rows = 1, .cols = n, .data = t->data};
    eng_cpu_row_f32(&w, 0, v);
    return v;
}

/* Load-time int8: per 128-column block of each row, scale = amax / 127. */
static int quantize_w(eng_model_t *m, eng_w_t *w, char *err, size_t errlen) {
    if (!w->data || w->dt == ENG_DT_I8) return 0;
    int64_t R = w->rows, C = w->cols;
    int blk = C < 128 ? (int)C : 128;
    int64_t nb = (C + blk - 1) / blk;
    int8_t *q = malloc(R * C);
    float *sc = malloc(R * nb * sizeof(float));
    float *row = malloc(C * sizeof(float));
    void **nl = realloc(m->owned_list, (m->owned_n + 2) * sizeof *nl);
    if (!q || !sc || !row || !nl) {
        free(q);
        free(sc);
        free(row);
        if (nl) m->owned_list = nl;
        tg_errf(err, errlen, "out of memory quantizing '%s'", w->name);
        return -1;
    }
    m->owned_list = nl;
    m->owned_list[m->owned_n++] = q;
    m->owned_list[m->owned_n++] = sc;
    for (int64_t r = 0; r < R; r++) {
        eng_cpu_row_f32(w, r, row);
        for (int64_t b = 0; b < nb; b++) {
            int64_t c0 = b * blk, c1 = c0 + blk < C ? c0 + blk : C;
            float amax = 0;
            for (int64_t c = c0; c < c1; c++) amax = fmaxf(amax, fabsf(row[c]));
            float s = amax / 127.0f, inv = s > 0 ? 1.0f / s : 0;
            sc[r * nb + b] = s;
            for (int64_t c = c0; c < c1; c++) q[r * C + c] = (int8_t)lrintf(row[c] * inv);
        }
    }
    free(row);
    /* the source pages are no longer needed by this process: drop them from
     * its resident set (they stay clean page cache the kernel may reclaim) */
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), lo = ((uintptr_t)w->data + pg - 1) & ~(pg - 1);
    uintptr_t hi = ((uintptr_t)w->data + (uintptr_t)(R * C) * (w->dt == ENG_DT_F32 ? 4 : w->dt == ENG_DT_F8_E4M3 ? 1 : 2)) & ~(pg - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
    w->dt = ENG_DT_I8;
    w->data = q;
    w->scale = sc;
    w->scale_cols = nb;
    w->qblk = blk;
    return 0;
}

#define TRY(x)                                                                                     \
    do {                                                                                           \
        if ((x)) return -1;                                                                        \
    } while (0)

static int bind_mlp(eng_model_t *m, eng_w_t *g, eng_w_t *u, eng_w_t *d, int I, char *err, size_t errlen,
                    const char *prefix, const char *gn, const char *un, const char *dn) {
    int D = m->cfg.D;
    TRY(bind_w(m, g, I, D, err, errlen, "%s.%s.weight", prefix, gn));
    TRY(bind_w(m, u, I, D, err, errlen, "%s.%s.weight", prefix, un));
    TRY(bind_w(m, d, D, I, err, errlen, "%s.%s.weight", prefix, dn));
    return 0;
}

static int bind_layer(eng_model_t *m, int l, char *err, size_t errlen) {
    eng_cfg_t *c = &m->cfg;
    eng_layer_t *L = &m->layers[l];
    int D = c->D;
    char p[128];
    snprintf(p, sizeof p, "model.layers.%d", l);
    if (!(L->attn_norm = load_vec(m, D, err, errlen, "%s.input_layernorm.weight", p))) return -1;
    if (!(L->ffn_norm = load_vec(m, D, err, errlen, "%s.post_attention_layernorm.weight", p))) return -1;
    if (m->info.arch == ENG_ARCH_MIXTRAL) {
        TRY(bind_w(m, &L->wq, (int64_t)c->H * c->hd, D, err, errlen, "%s.self_attn.q_proj.weight", p));
        TRY(bind_w(m, &L->wk, (int64_t)c->kvh * c->hd, D, err, errlen, "%s.self_attn.k_proj.weight", p));
        TRY(bind_w(m, &L->wv, (int64_t)c->kvh * c->hd, D, err, errlen, "%s.self_attn.v_proj.weight", p));
        TRY(bind_w(m, &L->o_proj, D, (int64_t)c->H * c->hd, err, errlen, "%s.self_attn.o_proj.weight", p));
        L->moe = 1;
        TRY(bind_w(m, &L->router, c->E, D, err, errlen, "%s.block_sparse_moe.gate.weight", p));
        L->eg = calloc(c->E, sizeof(eng_w_t));
        L->eu = calloc(c->E, sizeof(eng_w_t));
        L->ed = calloc(c->E, sizeof(eng_w_t));
        if (!L->eg || !L->eu || !L->ed) return -1;
        for (int e = 0; e < c->E; e++) {
            char ep[192];
            snprintf(ep, sizeof ep, "%s.block_sparse_moe.experts.%d", p, e);
            TRY(bind_mlp(m, &L->eg[e], &L->eu[e], &L->ed[e], c->moe_inter, err, errlen, ep, "w1", "w3", "w2"));
        }
        return 0;
    }
    int64_t qdim = (int64_t)c->H * (c->dn + c->dr);
    if (c->q_lora > 0) {
        TRY(bind_w(m, &L->q_a, c->q_lora, D, err, errlen, "%s.self_attn.q_a_proj.weight", p));
        if (!(L->q_a_norm = load_vec(m, c->q_lora, err, errlen, "%s.self_attn.q_a_layernorm.weight", p))) return -1;
        TRY(bind_w(m, &L->q_b, qdim, c->q_lora, err, errlen, "%s.self_attn.q_b_proj.weight", p));
    } else {
        TRY(bind_w(m, &L->q_proj, qdim, D, err, errlen, "%s.self_attn.q_proj.weight", p));
    }
    TRY(bind_w(m, &L->kv_a, c->c + c->dr, D, err, errlen, "%s.self_attn.kv_a_proj_with_mqa.weight", p));
    if (!(L->kv_a_norm = load_vec(m, c->c, err, errlen, "%s.self_attn.kv_a_layernorm.weight", p))) return -1;
    TRY(bind_w(m, &L->kv_b, (int64_t)c->H * (c->dn + c->dv), c->c, err, errlen, "%s.self_attn.kv_b_proj.weight", p));
    TRY(bind_w(m, &L->o_proj, D, (int64_t)c->H * c->dv, err, errlen, "%s.self_attn.o_proj.weight", p));
    L->moe = c->E > 0 && l >= c->first_dense && l % c->moe_freq == 0;
    if (!L->moe) {
        char mp[160];
        snprintf(mp, sizeof mp, "%s.mlp", p);
        return bind_mlp(m, &L->gate, &L->up, &L->down, c->inter, err, errlen, mp, "gate_proj", "up_proj", "down_proj");
    }
    TRY(bind_w(m, &L->router, c->E, D, err, errlen, "%s.mlp.gate.weight", p));
    char bn[192];
    snprintf(bn, sizeof bn, "%s.mlp.gate.e_score_correction_bias", p);
    if (eng_st_find(m->st, bn) && !(L->router_bias = load_vec(m, c->E, err, errlen, "%s", bn))) return -1;
    L->eg = calloc(c->E, sizeof(eng_w_t));
    L->eu = calloc(c->E, sizeof(eng_w_t));
    L->ed = calloc(c->E, sizeof(eng_w_t));
    if (!L->eg || !L->eu || !L->ed) return -1;
    for (int e = 0; e < c->E; e++) {
        char ep[192];
        snprintf(ep, sizeof ep, "%s.mlp.experts.%d", p, e);
        TRY(bind_mlp(m, &L->eg[e], &L->eu[e], &L->ed[e], c->moe_inter, err, errlen, ep, "gate_proj", "up_proj",
                     "down_proj"));
    }
    if (c->n_shared > 0) {
        char sp[160];
        snprintf(sp, sizeof sp, "%s.mlp.shared_experts", p);
        L->has_shared = 1;
        TRY(bind_mlp(m, &L->sg, &L->su, &L->sd, c->n_shared * c->moe_inter, err, errlen, sp, "gate_proj",
                     "up_proj", "down_proj"));
    }
    return 0;
}

static int quantize_layer(eng_model_t *m, eng_layer_t *L, char *err, size_t errlen) {
    eng_w_t *ws[] = {&L->q_proj, &L->q_a, &L->q_b, &L->kv_a, &L->kv_b, &L->wq, &L->wk, &L->wv, &L->o_proj,
                     &L->gate, &L->up, &L->down, &L->sg, &L->su, &L->sd};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) TRY(quantize_w(m, ws[i], err, errlen));
    if (L->moe)
        for (int e = 0; e < m->cfg.E; e++) {
            TRY(quantize_w(m, &L->eg[e], err, errlen));
            TRY(quantize_w(m, &L->eu[e], err, errlen));
            TRY(quantize_w(m, &L->ed[e], err, errlen));
        }
    return 0;
}

/* ---- RoPE tables ---------------------------------------------------------------- */

static double yarn_get_mscale(double scale, double m) { return scale <= 1 || m == 0 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

static int build_rope(eng_model_t *m) {
    eng_cfg_t *c = &m->cfg;
    int rd = m->info.arch == ENG_ARCH_MIXTRAL ? c->hd : c->dr, half = rd / 2;
    int S = m->info.max_seq_len;
    double *f = malloc(half * sizeof(double));
    m->rope_cos = malloc((size_t)S * half * sizeof(float));
    m->rope_sin = malloc((size_t)S * half * sizeof(float));
    if (!f || !m->rope_cos || !m->rope_sin) {
        free(f);
        return -1;
    }
    for (int i = 0; i < half; i++) f[i] = pow((double)c->rope_theta, -2.0 * i / rd);
    double amp = 1.0;
    if (c->yarn) {
        double base = c->rope_theta, orig = c->orig_max_pos, fac = c->yarn_factor;
        double lo = floor(rd * log(orig / (c->beta_fast * 2 * M_PI)) / (2 * log(base)));
        double hi = ceil(rd * log(orig / (c->beta_slow * 2 * M_PI)) / (2 * log(base)));
        if (lo < 0) lo = 0;
        if (hi > rd - 1) hi = rd - 1;
        if (lo == hi) hi += 0.001;
        for (int i = 0; i < half; i++) {
            double ramp = (i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double smooth = 1 - ramp;
            f[i] = f[i] / fac * (1 - smooth) + f[i] * smooth;
        }
        amp = yarn_get_mscale(fac, c->yarn_mscale) / yarn_get_mscale(fac, c->yarn_mscale_all);
    }
    for (int p = 0; p < S; p++)
        for (int i = 0; i < half; i++) {
            double a = (double)p * f[i];
            m->rope_cos[(size_t)p * half + i] = (float)(cos(a) * amp);
            m->rope_sin[(size_t)p * half + i] = (float)(sin(a) * amp);
        }
    free(f);
    if (m->info.arch == ENG_ARCH_MIXTRAL) {
        m->attn_scale = (float)(1.0 / sqrt((double)c->hd));
    } else {
        double s = 1.0 / sqrt((double)(c->dn + c->dr));
        if (c->yarn) {
            double ms = yarn_get_mscale(c->yarn_factor, c->yarn_mscale_all);
            s *= ms * ms;
        }
        m->attn_scale = (float)s;
    }
    return 0;
}

/* ---- load / free ----------------------------------------------------------------- */

eng_model_t *eng_model_load(const char *dir, const eng_load_opts_t *opts, char *err, size_t errlen) {
    eng_load_opts_t o = {0};
    if (opts) o = *opts;
    if (o.device && *o.device && strcmp(o.device, "cpu")) {
        tg_errf(err, errlen, "device '%s' is not available in this build (cpu only)", o.device);
        return NULL;
    }
    eng_model_t *m = calloc(1, sizeof *m);
    if (!m) {
        tg_errf(err, errlen, "out of memory");
        return NULL;
    }
    if (parse_config(m, dir, err, errlen)) goto fail;
    eng_cfg_t *c = &m->cfg;
    m->info.vocab_size = c->vocab;
    m->info.n_layers = c->n_layers;
    m->info.max_seq_len = o.max_seq_len > 0 && o.max_seq_len < c->max_pos ? o.max_seq_len : c->max_pos;
    if (m->info.max_seq_len <= 0) m->info.max_seq_len = 4096;
    if (m->info.arch == ENG_ARCH_MIXTRAL)
        m->info.kv_bytes_per_token = (size_t)c->n_layers * 2 * c->kvh * c->hd * sizeof(float);
    else
        m->info.kv_bytes_per_token = (size_t)c->n_layers * (c->c + c->dr) * sizeof(float);
    if (!(m->st = eng_st_open_dir(dir, err, errlen))) goto fail;
    if (bind_w(m, &m->embed, c->vocab, c->D, err, errlen, "model.embed_tokens.weight")) goto fail;
    if (eng_st_find(m->st, "lm_head.weight")) {
        if (bind_w(m, &m->lm_head, c->vocab, c->D, err, errlen, "lm_head.weight")) goto fail;
    } else {
        m->lm_head = m->embed; /* tied */
    }
    if (!(m->final_norm = load_vec(m, c->D, err, errlen, "model.norm.weight"))) goto fail;
    if (!(m->layers = calloc(c->n_layers, sizeof *m->layers))) goto fail;
    for (int l = 0; l < c->n_layers; l++)
        if (bind_layer(m, l, err, errlen)) goto fail;
    if (o.quant_int8) {
        for (int l = 0; l < c->n_layers; l++)
            if (quantize_layer(m, &m->layers[l], err, errlen)) goto fail;
        int tied = m->lm_head.data == m->embed.data;
        if (quantize_w(m, &m->lm_head, err, errlen)) goto fail;
        if (!tied && quantize_w(m, &m->embed, err, errlen)) goto fail;
        if (tied) m->embed = m->lm_head;
    }
    if (build_rope(m)) {
        tg_errf(err, errlen, "out of memory");
        goto fail;
    }
    int nt = o.n_threads > 0 ? o.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nt < 1) nt = 1;
    if (!(m->be = eng_cpu_backend_new(nt, err, errlen))) goto fail;
    int gqa = m->info.arch == ENG_ARCH_MIXTRAL;
    if (!(m->kv = eng_kv_new(c->n_layers, gqa ? c->kvh * c->hd : c->c + c->dr, gqa,
                             o.kv_bytes ? o.kv_bytes : eng_kv_default_bytes(), err, errlen)))
        goto fail;
    return m;
fail:
    eng_model_free(m);
    return NULL;
}

void eng_model_free(eng_model_t *m) {
    if (!m) return;
    if (m->be) m->be->ops->free(m->be);
    eng_kv_free(m->kv);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            eng_layer_t *L = &m->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->q_a_norm);
            free(L->kv_a_norm);
            free(L->router_bias);
            free(L->eg);
            free(L->eu);
            free(L->ed);
        }
        free(m->layers);
    }
    for (size_t i = 0; i < m->owned_n; i++) free(m->owned_list[i]);
    free(m->owned_list);
    free(m->final_norm);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->trace);
    eng_st_free(m->st);
    free(m);
}

const eng_model_info_t *eng_model_info(const eng_model_t *m) { return &m->info; }

void eng_model_set_trace(eng_model_t *m, int on) { m->trace_on = on; }

const int32_t *eng_model_trace(const eng_model_t *m, int *n_tokens, int *topk) {
    if (n_tokens) *n_tokens = m->trace_T;
    if (topk) *topk = m->cfg.topk;
    return m->trace_on && m->trace && m->trace_T ? m->trace : NULL;
}

const char *eng_model_backend(const eng_model_t *m) {
    static char buf[64];
    extern const char *eng_cpu_isa(void);
    snprintf(buf, sizeof buf, "%s/%s", m->be->ops->name, eng_cpu_isa());
    return buf;
}

/* ---- KV pool accessors --------------------------------------------------------------- */

void eng_kv_stats(const eng_model_t *m, eng_kv_stats_t *out) { eng_kv_get_stats(m->kv, out); }
int eng_kv_available_blocks(const eng_model_t *m) { return eng_kv_available(m->kv); }
int eng_kv_total_blocks(const eng_model_t *m) { return eng_kv_blocks_total(m->kv); }

/* ---- scratch allocation ----------------------------------------------------------------- */

static size_t max_alloc(void) {
    static size_t lim = 1; /* 1: not read yet; 0: no limit */
    size_t l = __atomic_load_n(&lim, __ATOMIC_RELAXED);
    if (l == 1) {
        const char *e = getenv("TOLLGATE_ENGINE_MAX_ALLOC");
        l = e && *e ? (size_t)strtoull(e, NULL, 10) : 0;
        if (l == 1) l = 2;
        __atomic_store_n(&lim, l, __ATOMIC_RELAXED);
    }
    return l;
}

void *eng_alloc(size_t n) {
    size_t l = max_alloc();
    if (l && n > l) return NULL;
    return malloc(n ? n : 1);
}

/* ---- forward ---------------------------------------------------------------------- */

/* out = x * rsqrt(mean(x^2) + eps) * w */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

static void rope(float *x, const float *cs, const float *sn, int rd, int interleaved) {
    int half = rd / 2;
    for (int i = 0; i < half; i++) {
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        float x0 = x[a], x1 = x[b];
        x[a] = x0 * cs[i] - x1 * sn[i];
        x[b] = x0 * sn[i] + x1 * cs[i];
    }
}

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

typedef struct {
    float *buf;
    size_t cap;
} scratch_t;

/* y [T, D] = down( silu(gate x) * up x ) for x [T, D]; h1, h2 [T, I] scratch. */
static int mlp(eng_model_t *m, const eng_w_t *g, const eng_w_t *u, const eng_w_t *d, const float *x, int T,
               float *h1, float *h2, float *y) {
    const eng_backend_ops_t *ops = m->be->ops;
    eng_mm_t gu[2] = {{g, x, T, h1}, {u, x, T, h2}};
    if (ops->matmul_multi(m->be, gu, 2)) return -1;
    size_t n = (size_t)T * g->rows;
    for (size_t i = 0; i < n; i++) h1[i] = silu(h1[i]) * h2[i];
    return ops->matmul(m->be, d, h1, T, y);
}

/* Routing of one token: sel [k] expert ids, wt [k] weights. */
static void route(const eng_cfg_t *c, const float *logit, const float *bias, int32_t *sel, float *wt, float *s,
                  float *b) {
    int E = c->E, G = c->n_group, per = E / G;
    if (c->sigmoid) {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logit[e]));
    } else {
        float mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, logit[e]);
        for (int e = 0; e < E; e++) sum += (s[e] = expf(logit[e] - mx));
        for (int e = 0; e < E; e++) s[e] /= sum;
    }
    for (int e = 0; e < E; e++) b[e] = bias ? s[e] + bias[e] : s[e];
    if (G > 1 && c->topk_group < G) {
        float gs[256];
        int keep[256];
        for (int g = 0; g < G; g++) {
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (b[e] > m1) {
                    m2 = m1;
                    m1 = b[e];
                } else if (b[e] > m2) {
                    m2 = b[e];
                }
            }
            gs[g] = bias ? (per > 1 ? m1 + m2 : m1) : m1;
            keep[g] = 0;
        }
        for (int k = 0; k < c->topk_group; k++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!keep[g] && (best < 0 || gs[g] > gs[best])) best = g;
            keep[best] = 1;
        }
        for (int g = 0; g < G; g++)
            if (!keep[g])
                for (int e = g * per; e < (g + 1) * per; e++) b[e] = -INFINITY;
    }
    /* top-k by biased score, ties to the lower id; taken experts are marked NaN */
    for (int k = 0; k < c->topk; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!isnan(b[e]) && (best < 0 || b[e] > b[best])) best = e;
        if (best < 0) /* NaN scores (a broken checkpoint): take the lowest unused id, never crash */
            for (int e = 0; e < E && best < 0; e++) {
                int used = 0;
                for (int j = 0; j < k; j++) used |= sel[j] == e;
                if (!used) best = e;
            }
        sel[k] = best;
        b[best] = NAN;
        wt[k] = s[best];
    }
    float sum = 0;
    for (int k = 0; k < c->topk; k++) sum += wt[k];
    int normed = c->norm_topk && c->topk > 1;
    if (normed)
        for (int k = 0; k < c->topk; k++) wt[k] /= sum;
    if (c->scale_after_norm || !normed)
        for (int k = 0; k < c->topk; k++) wt[k] *= c->routed_scale;
}

typedef struct {
    float *x, *xn, *q, *qa, *kv, *att, *o, *h1, *h2, *s1, *s2, *y, *logit, *xg, *yslot, *wts, *sc1, *sc2;
    int32_t *sel, *tok_of, *pos_of, *cnt;
    eng_mm_t *jobs;
    eng_attn_seq_t *as;
    int32_t *pos;
} fwd_buf_t;

static void fwd_buf_free(fwd_buf_t *b) {
    free(b->x);
    free(b->xn);
    free(b->q);
    free(b->qa);
    free(b->kv);
    free(b->att);
    free(b->o);
    free(b->h1);
    free(b->h2);
    free(b->y);
    free(b->logit);
    free(b->xg);
    free(b->yslot);
    free(b->s1);
    free(b->s2);
    free(b->pos_of);
    free(b->jobs);
    free(b->wts);
    free(b->sc1);
    free(b->sc2);
    free(b->sel);
    free(b->tok_of);
    free(b->cnt);
    free(b->as);
    free(b->pos);
}

static int imax(int a, int b) { return a > b ? a : b; }

int eng_forward(eng_model_t *m, eng_seq_t **seqs, const int32_t *const *ids, const int *n, int nseq,
                float **logits, char *err, size_t errlen) {
    eng_cfg_t *c = &m->cfg;
    const eng_backend_ops_t *ops = m->be->ops;
    int T = 0, gqa = m->info.arch == ENG_ARCH_MIXTRAL;
    if (nseq <= 0) {
        tg_errf(err, errlen, "no sequences");
        return -1;
    }
    for (int i = 0; i < nseq; i++) {
        if (!seqs[i] || seqs[i]->m != m) {
            tg_errf(err, errlen, "sequence %d does not belong to this model", i);
            return -1;
        }
        if (n[i] < 0 || (n[i] == 0 && logits && logits[i])) {
            tg_errf(err, errlen, "sequence %d: no new tokens", i);
            return -1;
        }
        if (n[i] > seqs[i]->max_len - seqs[i]->len) {
            tg_errf(err, errlen, "sequence %d: %d + %d tokens exceed the context of %d", i, seqs[i]->len, n[i],
                   seqs[i]->max_len);
            return -1;
        }
        for (int k = 0; k < n[i]; k++)
            if (ids[i][k] < 0 || ids[i][k] >= c->vocab) {
                tg_errf(err, errlen, "sequence %d: token id %d out of range [0,%d)", i, ids[i][k], c->vocab);
                return -1;
            }
        for (int k = 0; k < i; k++)
            if (seqs[k] == seqs[i]) {
                tg_errf(err, errlen, "sequence %d appears twice in one batch", i);
                return -1;
            }
        T += n[i];
    }
    int need = 0;
    for (int i = 0; i < nseq; i++) need += eng_seq_blocks_needed(seqs[i], seqs[i]->len + n[i]);
    if (need > eng_kv_available(m->kv)) {
        tg_errf(err, errlen, "the KV cache is full (%d blocks needed, %d free or evictable)", need,
               eng_kv_available(m->kv));
        return ENG_KV_FULL;
    }
    for (int i = 0; i < nseq; i++)
        if (eng_seq_reserve(seqs[i], seqs[i]->len + n[i])) { /* cannot happen: counted above */
            tg_errf(err, errlen, "the KV cache is full");
            return ENG_KV_FULL;
        }
    if (T == 0) return 0;
    int D = c->D, H = c->H, qdim = gqa ? H * c->hd : H * (c->dn + c->dr), adim = gqa ? H * c->hd : H * c->dv;
    int kvdim = gqa ? 2 * c->kvh * c->hd : c->c + c->dr;
    int K = c->E > 0 ? c->topk : 1;
    fwd_buf_t b = {0};
    size_t fT = (size_t)T;
    b.x = eng_alloc(fT * D * sizeof(float));
    b.xn = eng_alloc(fT * D * sizeof(float));
    b.q = eng_alloc(fT * qdim * sizeof(float));
    b.qa = eng_alloc(fT * imax(c->q_lora, 1) * sizeof(float));
    b.kv = eng_alloc(fT * kvdim * sizeof(float));
    b.att = eng_alloc(fT * adim * sizeof(float));
    b.o = eng_alloc(fT * D * sizeof(float));
    size_t hn = fT * imax(imax(c->inter, K * c->moe_inter), 1);
    b.h1 = eng_alloc(hn * sizeof(float));
    b.h2 = eng_alloc(hn * sizeof(float));
    b.s1 = eng_alloc(fT * imax(c->n_shared * c->moe_inter, 1) * sizeof(float));
    b.s2 = eng_alloc(fT * imax(c->n_shared * c->moe_inter, 1) * sizeof(float));
    b.pos_of = eng_alloc(fT * K * sizeof(int32_t));
    b.jobs = eng_alloc((2 * imax(c->E, 1) + 2) * sizeof(eng_mm_t));
    b.y = eng_alloc(fT * D * sizeof(float));
    b.logit = eng_alloc(fT * imax(c->E, 1) * sizeof(float));
    b.xg = eng_alloc(fT * K * D * sizeof(float));
    b.yslot = eng_alloc(fT * K * D * sizeof(float));
    b.wts = eng_alloc(fT * K * sizeof(float));
    b.sc1 = eng_alloc(imax(c->E, 1) * sizeof(float));
    b.sc2 = eng_alloc(imax(c->E, 1) * sizeof(float));
    b.sel = eng_alloc(fT * K * sizeof(int32_t));
    b.tok_of = eng_alloc(fT * K * sizeof(int32_t));
    b.cnt = eng_alloc((imax(c->E, 1) + 1) * sizeof(int32_t));
    b.as = eng_alloc(nseq * sizeof *b.as);
    b.pos = eng_alloc(fT * sizeof(int32_t));
    if (!b.x || !b.xn || !b.q || !b.qa || !b.kv || !b.att || !b.o || !b.h1 || !b.h2 || !b.y || !b.logit ||
        !b.xg || !b.yslot || !b.s1 || !b.s2 || !b.pos_of || !b.jobs || !b.wts || !b.sc1 || !b.sc2 || !b.sel || !b.tok_of || !b.cnt || !b.as || !b.pos) {
        fwd_buf_free(&b);
        tg_errf(err, errlen, "out of memory for a batch of %d tokens", T);
        return -1;
    }
    if (m->trace_on) {
        int32_t *tr = realloc(m->trace, (size_t)c->n_layers * T * K * sizeof(int32_t));
        if (tr) {
            m->trace = tr;
            m->trace_T = T;
        } else {
            m->trace_T = 0;
        }
    }
    /* embed; the ids go into their blocks (for the prefix keys) */
    int B = eng_kv_block_tokens(m->kv), row = gqa ? c->kvh * c->hd : c->c + c->dr;
    size_t stride = eng_kv_block_floats(m->kv);
    const float *kvmem = eng_kv_mem(m->kv);
    for (int i = 0, t = 0; i < nseq; i++) {
        b.as[i].tok0 = t;
        b.as[i].n = n[i];
        b.as[i].pos0 = seqs[i]->len;
        b.as[i].blocks = seqs[i]->blocks;
        b.as[i].B = B;
        b.as[i].stride = stride;
        for (int k = 0; k < n[i]; k++, t++) {
            b.pos[t] = seqs[i]->len + k;
            *eng_seq_tok_slot(seqs[i], b.pos[t]) = ids[i][k];
            eng_cpu_row_f32(&m->embed, ids[i][k], b.x + (size_t)t * D);
        }
    }
    int rd = gqa ? c->hd : c->dr, half = rd / 2;
    for (int l = 0; l < c->n_layers; l++) {
        eng_layer_t *L = &m->layers[l];
        for (int i = 0; i < nseq; i++) {
            b.as[i].k = kvmem + (size_t)l * B * row;
            b.as[i].v = gqa ? kvmem + (size_t)(c->n_layers + l) * B * row : NULL;
        }
        for (int t = 0; t < T; t++) rmsnorm(b.xn + (size_t)t * D, b.x + (size_t)t * D, L->attn_norm, D, c->eps);
        if (gqa) {
            int kvw = c->kvh * c->hd;
            eng_mm_t qkv[3] = {{&L->wq, b.xn, T, b.q}, {&L->wk, b.xn, T, b.kv}, {&L->wv, b.xn, T, b.kv + fT * kvw}};
            if (ops->matmul_multi(m->be, qkv, 3)) goto oom;
            for (int i = 0; i < nseq; i++) {
                for (int k = 0; k < n[i]; k++) {
                    int t = b.as[i].tok0 + k, p = b.pos[t];
                    const float *cs = m->rope_cos + (size_t)p * half, *sn = m->rope_sin + (size_t)p * half;
                    for (int h = 0; h < H; h++) rope(b.q + (size_t)t * qdim + h * c->hd, cs, sn, rd, 0);
                    float *kk = b.kv + (size_t)t * kvw;
                    for (int h = 0; h < c->kvh; h++) rope(kk + h * c->hd, cs, sn, rd, 0);
                    memcpy(eng_seq_row(seqs[i], l, p, 0), kk, kvw * sizeof(float));
                    memcpy(eng_seq_row(seqs[i], l, p, 1), b.kv + fT * kvw + (size_t)t * kvw, kvw * sizeof(float));
                }
            }
            if (ops->attn_gqa(m->be, H, c->kvh, c->hd, m->attn_scale, b.q, b.as, nseq, b.att)) goto oom;
        } else {
            eng_mm_t qkv[2] = {{c->q_lora > 0 ? &L->q_a : &L->q_proj, b.xn, T, c->q_lora > 0 ? b.qa : b.q},
                               {&L->kv_a, b.xn, T, b.kv}};
            if (ops->matmul_multi(m->be, qkv, 2)) goto oom;
            if (c->q_lora > 0) {
                for (int t = 0; t < T; t++)
                    rmsnorm(b.qa + (size_t)t * c->q_lora, b.qa + (size_t)t * c->q_lora, L->q_a_norm, c->q_lora, c->eps);
                if (ops->matmul(m->be, &L->q_b, b.qa, T, b.q)) goto oom;
            }
            for (int i = 0; i < nseq; i++) {
                for (int k = 0; k < n[i]; k++) {
                    int t = b.as[i].tok0 + k, p = b.pos[t];
                    const float *cs = m->rope_cos + (size_t)p * half, *sn = m->rope_sin + (size_t)p * half;
                    for (int h = 0; h < H; h++) rope(b.q + (size_t)t * qdim + h * (c->dn + c->dr) + c->dn, cs, sn, rd, 1);
                    float *kv = b.kv + (size_t)t * kvdim, *dst = eng_seq_row(seqs[i], l, p, 0);
                    rmsnorm(dst, kv, L->kv_a_norm, c->c, c->eps);
                    memcpy(dst + c->c, kv + c->c, c->dr * sizeof(float));
                    rope(dst + c->c, cs, sn, rd, 1);
                }
            }
            if (ops->attn_mla(m->be, &L->kv_b, H, c->dn, c->dr, c->dv, c->c, m->attn_scale, b.q, b.as, nseq, b.att))
                goto oom;
        }
        if (ops->matmul(m->be, &L->o_proj, b.att, T, b.o)) goto oom;
        for (size_t i = 0; i < fT * D; i++) b.x[i] += b.o[i];
        for (int t = 0; t < T; t++) rmsnorm(b.xn + (size_t)t * D, b.x + (size_t)t * D, L->ffn_norm, D, c->eps);
        int32_t *tr = m->trace_on && m->trace_T == T ? m->trace + (size_t)l * T * K : NULL;
        if (!L->moe) {
            if (mlp(m, &L->gate, &L->up, &L->down, b.xn, T, b.h1, b.h2, b.y)) goto oom;
            for (size_t i = 0; i < fT * D; i++) b.x[i] += b.y[i];
            if (tr)
                for (size_t i = 0; i < fT * K; i++) tr[i] = -1;
            continue;
        }
        if (ops->matmul(m->be, &L->router, b.xn, T, b.logit)) goto oom;
        for (int t = 0; t < T; t++)
            route(c, b.logit + (size_t)t * c->E, L->router_bias, b.sel + (size_t)t * K, b.wts + (size_t)t * K, b.sc1,
                  b.sc2);
        if (tr) memcpy(tr, b.sel, fT * K * sizeof(int32_t));
        /* group the (token, slot) pairs by expert, in token order */
        memset(b.cnt, 0, (c->E + 1) * sizeof(int32_t));
        for (size_t i = 0; i < fT * K; i++) b.cnt[b.sel[i] + 1]++;
        for (int e = 0; e < c->E; e++) b.cnt[e + 1] += b.cnt[e];
        for (size_t i = 0; i < fT * K; i++) b.tok_of[b.cnt[b.sel[i]]++] = (int32_t)i;
        /* cnt[e] is now the end of expert e's run; its start is cnt[e-1].
         * Gather each expert's tokens, then run every active expert's gate and
         * up (and the shared expert's) as one parallel step, and the downs as
         * another. */
        int NK = T * K, Im = c->moe_inter, Is = c->n_shared * c->moe_inter, nj = 0;
        for (int i = 0; i < NK; i++) {
            memcpy(b.xg + (size_t)i * D, b.xn + (size_t)(b.tok_of[i] / K) * D, D * sizeof(float));
            b.pos_of[b.tok_of[i]] = i;
        }
        for (int e = 0, start = 0; e < c->E; e++) {
            int ne = b.cnt[e] - start;
            if (ne > 0) {
                b.jobs[nj++] = (eng_mm_t){&L->eg[e], b.xg + (size_t)start * D, ne, b.h1 + (size_t)start * Im};
                b.jobs[nj++] = (eng_mm_t){&L->eu[e], b.xg + (size_t)start * D, ne, b.h2 + (size_t)start * Im};
            }
            start = b.cnt[e];
        }
        if (L->has_shared) {
            b.jobs[nj++] = (eng_mm_t){&L->sg, b.xn, T, b.s1};
            b.jobs[nj++] = (eng_mm_t){&L->su, b.xn, T, b.s2};
        }
        if (ops->matmul_multi(m->be, b.jobs, nj)) goto oom;
        for (size_t i = 0; i < (size_t)NK * Im; i++) b.h1[i] = silu(b.h1[i]) * b.h2[i];
        if (L->has_shared)
            for (size_t i = 0; i < fT * Is; i++) b.s1[i] = silu(b.s1[i]) * b.s2[i];
        nj = 0;
        for (int e = 0, start = 0; e < c->E; e++) {
            int ne = b.cnt[e] - start;
            if (ne > 0) b.jobs[nj++] = (eng_mm_t){&L->ed[e], b.h1 + (size_t)start * Im, ne, b.yslot + (size_t)start * D};
            start = b.cnt[e];
        }
        if (L->has_shared) b.jobs[nj++] = (eng_mm_t){&L->sd, b.s1, T, b.y};
        if (ops->matmul_multi(m->be, b.jobs, nj)) goto oom;
        for (int t = 0; t < T; t++) {
            float *xt = b.x + (size_t)t * D;
            float *acc = b.o + (size_t)t * D;
            memset(acc, 0, D * sizeof(float));
            for (int k = 0; k < K; k++) {
                float w = b.wts[(size_t)t * K + k];
                const float *ys = b.yslot + (size_t)b.pos_of[(size_t)t * K + k] * D;
                for (int d = 0; d < D; d++) acc[d] += w * ys[d];
            }
            if (L->has_shared)
                for (int d = 0; d < D; d++) acc[d] += b.y[(size_t)t * D + d];
            for (int d = 0; d < D; d++) xt[d] += acc[d];
        }
    }
    /* logits of the last new token of each sequence that asked for them */
    int NL = 0;
    for (int i = 0; i < nseq; i++)
        if (logits && logits[i]) {
            int t = b.as[i].tok0 + n[i] - 1;
            rmsnorm(b.xn + (size_t)NL * D, b.x + (size_t)t * D, m->final_norm, D, c->eps);
            NL++;
        }
    if (NL) {
        float *out = eng_alloc((size_t)NL * c->vocab * sizeof(float));
        if (!out || ops->matmul(m->be, &m->lm_head, b.xn, NL, out)) {
            free(out);
            goto oom;
        }
        for (int i = 0, r = 0; i < nseq; i++)
            if (logits[i]) memcpy(logits[i], out + (size_t)r++ * c->vocab, c->vocab * sizeof(float));
        free(out);
    }
    for (int i = 0; i < nseq; i++) {
        seqs[i]->len += n[i];
        eng_seq_commit(seqs[i]);
    }
    fwd_buf_free(&b);
    return 0;
oom:
    fwd_buf_free(&b);
    tg_errf(err, errlen, "out of memory for the scratch of a batch of %d tokens", T);
    return -1;
}
