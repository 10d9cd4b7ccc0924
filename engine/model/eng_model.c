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
    /* transformers >= 5 writes rope_theta and the scaling inside rope_parameters */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(j, "rope_parameters");
    if (!cJSON_IsObject(rp)) rp = NULL;
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
        c->rope_theta = (float)jnum(j, "rope_theta", jnum(rp, "rope_theta", 1e6));
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
        c->rope_theta = (float)jnum(j, "rope_theta", jnum(rp, "rope_theta", 10000));
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
        if (!cJSON_IsObject(rs)) rs = rp; /* newer transformers write rope_parameters instead */
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
            } else if (*ty && strcmp(ty, "default")) {
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

/* The tensor named by fmt (its name written into name), or NULL with err
 * saying it is missing from the checkpoint. */
static const eng_st_tensor_t *find_tensor(eng_model_t *m, char name[512], char *err, size_t errlen,
                                          const char *fmt, va_list ap) {
    vsnprintf(name, 512, fmt, ap);
    const eng_st_tensor_t *t = eng_st_find(m->st, name);
    if (!t) tg_errf(err, errlen, "tensor '%s' is missing from the checkpoint", name);
    return t;
}

static int bind_w(eng_model_t *m, eng_w_t *w, int64_t rows, int64_t cols, char *err, size_t errlen,
                  const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    const eng_st_tensor_t *t = find_tensor(m, name, err, errlen, fmt, ap);
    va_end(ap);
    if (!t) return -1;
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

/* Keep a host vector the model owns (freed with the model); -1 on out of memory. */
static int own_vec(eng_model_t *m, float *v) {
    if (m->n_vecs == m->cap_vecs) {
        int cap = m->cap_vecs ? 2 * m->cap_vecs : 64;
        float **nv = realloc(m->vecs, cap * sizeof *nv);
        if (!nv) return -1;
        m->vecs = nv;
        m->cap_vecs = cap;
    }
    m->vecs[m->n_vecs++] = v;
    return 0;
}

/* A small vector (norm weights, gate bias) converted to an fp32 copy the model owns. */
static float *load_vec(eng_model_t *m, int64_t n, char *err, size_t errlen, const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    const eng_st_tensor_t *t = find_tensor(m, name, err, errlen, fmt, ap);
    va_end(ap);
    if (!t) return NULL;
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
    if (!v || own_vec(m, v)) {
        free(v);
        tg_errf(err, errlen, "out of memory");
        return NULL;
    }
    eng_w_t w = {.dt = t->dt, .rows = 1, .cols = n, .data = t->data};
    eng_w_row_f32(&w, 0, v);
    return v;
}

/* The mapped source of w is no longer needed by this process (a copy
 * replaces it): drop its whole pages from the resident set.  They stay clean
 * page cache the kernel may reclaim; touching them again would only re-read
 * the file (the mapping is private and read-only). */
static void drop_source(const eng_w_t *w) {
    size_t es = w->dt == ENG_DT_F32 ? 4 : w->dt == ENG_DT_F8_E4M3 || w->dt == ENG_DT_I8 ? 1 : 2;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), lo = ((uintptr_t)w->data + pg - 1) & ~(pg - 1);
    uintptr_t hi = ((uintptr_t)w->data + (uintptr_t)(w->rows * w->cols) * es) & ~(pg - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
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
        eng_w_row_f32(w, r, row);
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
    drop_source(w);
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
    float *rc = malloc((size_t)S * half * sizeof(float)), *rs = malloc((size_t)S * half * sizeof(float));
    if (!f || !rc || own_vec(m, rc)) {
        free(f);
        free(rc);
        free(rs);
        return -1;
    }
    if (!rs || own_vec(m, rs)) {
        free(f);
        free(rs);
        return -1;
    }
    m->rope_cos = rc;
    m->rope_sin = rs;
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
            rc[(size_t)p * half + i] = (float)(cos(a) * amp);
            rs[(size_t)p * half + i] = (float)(sin(a) * amp);
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

/* ---- upload to the backend ----------------------------------------------------------- */

/* Every weight and vector to the backend, once (the CPU uses them in place, or
 * re-lays bf16 weights into AMX tiles; a weight the backend copied has its
 * source pages dropped, so the process holds one copy). */
static int upload_model(eng_model_t *m, char *err, size_t errlen) {
    eng_backend_t *be = m->be;
    const eng_backend_ops_t *ops = be->ops;
#define UPW(w)                                                                                          \
    do {                                                                                                \
        eng_w_t src_ = *(w);                                                                            \
        if ((w)->data && ops->upload_w(be, (w))) {                                                      \
            tg_errf(err, errlen, "%s: cannot upload tensor '%s'", ops->name, (w)->name ? (w)->name : "?"); \
            return -1;                                                                                  \
        }                                                                                               \
        if ((w)->data != src_.data && src_.dt != ENG_DT_I8) drop_source(&src_); /* one copy */          \
    } while (0)
#define UPV(v, n)                                                                                       \
    do {                                                                                                \
        if ((v) && !((v) = ops->upload(be, (v), (n)))) {                                                \
            tg_errf(err, errlen, "%s: cannot upload a vector of %zu floats", ops->name, (size_t)(n));     \
            return -1;                                                                                  \
        }                                                                                               \
    } while (0)
    eng_cfg_t *c = &m->cfg;
    int tied = m->lm_head.data == m->embed.data;
    UPW(&m->embed);
    if (tied) m->lm_head = m->embed;
    else UPW(&m->lm_head);
    UPV(m->final_norm, c->D);
    int rd = m->info.arch == ENG_ARCH_MIXTRAL ? c->hd : c->dr;
    UPV(m->rope_cos, (size_t)m->info.max_seq_len * (rd / 2));
    UPV(m->rope_sin, (size_t)m->info.max_seq_len * (rd / 2));
    for (int l = 0; l < c->n_layers; l++) {
        eng_layer_t *L = &m->layers[l];
        eng_w_t *ws[] = {&L->q_proj, &L->q_a, &L->q_b, &L->kv_a, &L->kv_b, &L->wq, &L->wk, &L->wv, &L->o_proj,
                         &L->gate, &L->up, &L->down, &L->router, &L->sg, &L->su, &L->sd};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) UPW(ws[i]);
        for (int e = 0; L->moe && e < c->E; e++) {
            UPW(&L->eg[e]);
            UPW(&L->eu[e]);
            UPW(&L->ed[e]);
        }
        UPV(L->attn_norm, c->D);
        UPV(L->ffn_norm, c->D);
        UPV(L->q_a_norm, c->q_lora);
        UPV(L->kv_a_norm, c->c);
        UPV(L->router_bias, c->E);
    }
#undef UPW
#undef UPV
    return 0;
}

/* ---- load / free ----------------------------------------------------------------- */

eng_model_t *eng_model_load(const char *dir, const eng_load_opts_t *opts, char *err, size_t errlen) {
    eng_load_opts_t o = {0};
    if (opts) o = *opts;
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
    if (!(m->be = eng_backend_open(o.device, nt, err, errlen))) goto fail;
    if (upload_model(m, err, errlen)) goto fail;
    int gqa = m->info.arch == ENG_ARCH_MIXTRAL;
    if (!(m->kv = eng_kv_new(m->be, c->n_layers, gqa ? c->kvh * c->hd : c->c + c->dr, gqa,
                             o.kv_bytes ? o.kv_bytes : eng_kv_default_bytes(), err, errlen)))
        goto fail;
    return m;
fail:
    eng_model_free(m);
    return NULL;
}

void eng_model_free(eng_model_t *m) {
    if (!m) return;
    eng_kv_free(m->kv); /* its memory is the backend's: before the backend */
    if (m->be) m->be->ops->free(m->be);
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            eng_layer_t *L = &m->layers[l];
            free(L->eg);
            free(L->eu);
            free(L->ed);
        }
        free(m->layers);
    }
    for (size_t i = 0; i < m->owned_n; i++) free(m->owned_list[i]);
    free(m->owned_list);
    for (int i = 0; i < m->n_vecs; i++) free(m->vecs[i]);
    free(m->vecs);
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
    return m->be->ops->describe(m->be);
}

/* ---- KV pool accessors --------------------------------------------------------------- */

void eng_kv_stats(const eng_model_t *m, eng_kv_stats_t *out) { eng_kv_get_stats(m->kv, out); }
int eng_kv_available_blocks(const eng_model_t *m) { return eng_kv_available(m->kv); }
int eng_kv_total_blocks(const eng_model_t *m) { return eng_kv_blocks_total(m->kv); }

/* ---- scratch allocation ----------------------------------------------------------------- */

/* ---- forward ----------------------------------------------------------------------
 * Every step below is one backend op over the whole batch; the host only
 * builds the batch's index arrays (positions, cache offsets, rows) and, when
 * tracing, reads back the routed ids. */

typedef struct {
    /* backend memory */
    float *x, *xn, *q, *qa, *kv, *att, *o, *h1, *h2, *y, *logit, *wts, *out;
    int32_t *sel, *pos;
    int64_t *dst;
    /* host */
    int32_t *ids_h, *pos_h, *rows_h;
    int64_t *dst_h;
    eng_attn_seq_t *as;
} fwd_buf_t;

static void fwd_buf_free(eng_backend_t *be, fwd_buf_t *b) {
    void *dev[] = {b->x, b->xn, b->q, b->qa, b->kv, b->att, b->o, b->h1, b->h2, b->y, b->logit, b->wts, b->out,
                   b->sel, b->pos, b->dst};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) be->ops->release(be, dev[i]);
    free(b->ids_h);
    free(b->pos_h);
    free(b->rows_h);
    free(b->dst_h);
    free(b->as);
}

static int imax(int a, int b) { return a > b ? a : b; }

/* y [T, D] = down( silu(gate x) * up x ) for x [T, D]; h1, h2 [T, I] scratch. */
static int mlp(eng_model_t *m, const eng_w_t *g, const eng_w_t *u, const eng_w_t *d, const float *x, int T,
               float *h1, float *h2, float *y) {
    eng_backend_t *be = m->be;
    eng_mm_t gu[2] = {{g, x, T, h1}, {u, x, T, h2}};
    if (be->ops->matmul_multi(be, gu, 2)) return -1;
    if (be->ops->swiglu(be, h1, h2, (size_t)T * g->rows)) return -1;
    return be->ops->matmul(be, d, h1, T, y);
}

int eng_model_can_sample(const eng_model_t *m) { return m->be->ops->sample != NULL; }

int eng_forward(eng_model_t *m, eng_seq_t **seqs, const int32_t *const *ids, const int *n, int nseq,
                float **logits, char *err, size_t errlen) {
    return eng_forward_sample(m, seqs, ids, n, nseq, logits, NULL, err, errlen);
}

int eng_forward_sample(eng_model_t *m, eng_seq_t **seqs, const int32_t *const *ids, const int *n, int nseq,
                       float **logits, eng_sample_req_t **sample, char *err, size_t errlen) {
    eng_cfg_t *c = &m->cfg;
    eng_backend_t *be = m->be;
    const eng_backend_ops_t *ops = be->ops;
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
        int wants = (logits && logits[i]) || (sample && sample[i]);
        if (sample && sample[i] && ((logits && logits[i]) || !ops->sample)) {
            tg_errf(err, errlen, "sequence %d: %s", i,
                    ops->sample ? "both logits and a sampled token asked for" : "this backend cannot sample");
            return -1;
        }
        if (n[i] < 0 || (n[i] == 0 && wants)) {
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
    int K = c->E > 0 ? c->topk : 1, NL = 0;
    int NS = 0; /* rows sampled on the backend: after the NL logits rows */
    for (int i = 0; i < nseq; i++) NL += logits && logits[i] ? 1 : 0;
    for (int i = 0; i < nseq; i++) NS += sample && sample[i] ? 1 : 0;
    fwd_buf_t b = {0};
    size_t fT = (size_t)T, F = sizeof(float);
    b.x = ops->alloc(be, fT * D * F);
    b.xn = ops->alloc(be, fT * D * F);
    b.q = ops->alloc(be, fT * qdim * F);
    b.qa = ops->alloc(be, fT * imax(c->q_lora, 1) * F);
    b.kv = ops->alloc(be, fT * kvdim * F);
    b.att = ops->alloc(be, fT * adim * F);
    b.o = ops->alloc(be, fT * D * F);
    b.h1 = ops->alloc(be, fT * imax(c->inter, 1) * F);
    b.h2 = ops->alloc(be, fT * imax(c->inter, 1) * F);
    b.y = ops->alloc(be, fT * D * F);
    b.logit = ops->alloc(be, fT * imax(c->E, 1) * F);
    b.wts = ops->alloc(be, fT * K * F);
    b.sel = ops->alloc(be, fT * K * sizeof(int32_t));
    b.pos = ops->alloc(be, fT * sizeof(int32_t));
    b.dst = ops->alloc(be, fT * sizeof(int64_t));
    b.out = NL + NS ? ops->alloc(be, (size_t)(NL + NS) * c->vocab * F) : NULL;
    b.ids_h = eng_alloc(fT * sizeof(int32_t));
    b.pos_h = eng_alloc(fT * sizeof(int32_t));
    b.dst_h = eng_alloc(fT * sizeof(int64_t));
    b.rows_h = eng_alloc((size_t)imax(NL + NS, 1) * sizeof(int32_t));
    b.as = eng_alloc(nseq * sizeof *b.as);
    if (!b.x || !b.xn || !b.q || !b.qa || !b.kv || !b.att || !b.o || !b.h1 || !b.h2 || !b.y || !b.logit ||
        !b.wts || !b.sel || !b.pos || !b.dst || (NL + NS && !b.out) || !b.ids_h || !b.pos_h || !b.dst_h ||
        !b.rows_h || !b.as) {
        fwd_buf_free(be, &b);
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
    /* the batch's index arrays; the ids go into their blocks (for the prefix keys) */
    int B = eng_kv_block_tokens(m->kv), row = gqa ? c->kvh * c->hd : c->c + c->dr;
    size_t stride = eng_kv_block_floats(m->kv);
    float *kvmem = eng_kv_mem(m->kv);
    for (int i = 0, t = 0; i < nseq; i++) {
        b.as[i].tok0 = t;
        b.as[i].n = n[i];
        b.as[i].pos0 = seqs[i]->len;
        b.as[i].blocks = seqs[i]->blocks;
        b.as[i].B = B;
        b.as[i].stride = stride;
        for (int k = 0; k < n[i]; k++, t++) {
            int p = seqs[i]->len + k;
            b.pos_h[t] = p;
            b.ids_h[t] = ids[i][k];
            b.dst_h[t] = (int64_t)seqs[i]->blocks[p / B] * (int64_t)stride + (int64_t)(p % B) * row;
            *eng_seq_tok_slot(seqs[i], p) = ids[i][k];
        }
    }
    if (ops->set(be, b.pos, b.pos_h, fT * sizeof(int32_t)) || ops->set(be, b.dst, b.dst_h, fT * sizeof(int64_t)) ||
        ops->embed(be, &m->embed, b.ids_h, T, b.x))
        goto fail;
    int rd = gqa ? c->hd : c->dr;
    eng_route_t rt = {.E = c->E, .topk = c->topk, .n_group = c->n_group, .topk_group = c->topk_group,
                      .sigmoid = c->sigmoid, .norm_topk = c->norm_topk, .routed_scale = c->routed_scale,
                      .scale_after_norm = c->scale_after_norm};
    for (int l = 0; l < c->n_layers; l++) {
        eng_layer_t *L = &m->layers[l];
        float *kbase = kvmem + (size_t)l * B * row, *vbase = gqa ? kvmem + (size_t)(c->n_layers + l) * B * row : NULL;
        for (int i = 0; i < nseq; i++) {
            b.as[i].k = kbase;
            b.as[i].v = vbase;
        }
        /* the attention norm of layer 0; later layers got theirs fused with the previous residual add */
        if (l == 0 && ops->rmsnorm(be, b.xn, D, b.x, D, L->attn_norm, T, D, c->eps)) goto fail;
        const float *next_norm = l + 1 < c->n_layers ? m->layers[l + 1].attn_norm : NULL;
        if (gqa) {
            int kvw = c->kvh * c->hd;
            float *kk = b.kv, *vv = b.kv + fT * kvw;
            eng_mm_t qkv[3] = {{&L->wq, b.xn, T, b.q}, {&L->wk, b.xn, T, kk}, {&L->wv, b.xn, T, vv}};
            if (ops->matmul_multi(be, qkv, 3) ||
                ops->rope(be, b.q, T, qdim, H, c->hd, 0, rd, 0, b.pos, m->rope_cos, m->rope_sin) ||
                ops->rope(be, kk, T, kvw, c->kvh, c->hd, 0, rd, 0, b.pos, m->rope_cos, m->rope_sin) ||
                ops->kv_store(be, kbase, b.dst, kk, kvw, kvw, T) || ops->kv_store(be, vbase, b.dst, vv, kvw, kvw, T) ||
                ops->attn_gqa(be, H, c->kvh, c->hd, m->attn_scale, b.q, b.as, nseq, b.att))
                goto fail;
        } else {
            eng_mm_t qkv[2] = {{c->q_lora > 0 ? &L->q_a : &L->q_proj, b.xn, T, c->q_lora > 0 ? b.qa : b.q},
                               {&L->kv_a, b.xn, T, b.kv}};
            if (ops->matmul_multi(be, qkv, 2)) goto fail;
            if (c->q_lora > 0 && (ops->rmsnorm(be, b.qa, c->q_lora, b.qa, c->q_lora, L->q_a_norm, T, c->q_lora, c->eps) ||
                                  ops->matmul(be, &L->q_b, b.qa, T, b.q)))
                goto fail;
            /* q_pe of every head and the shared k_pe roped; the latent normed; ckv|k_pe into the cache */
            if (ops->rope(be, b.q, T, qdim, H, c->dn + c->dr, c->dn, rd, 1, b.pos, m->rope_cos, m->rope_sin) ||
                ops->rmsnorm(be, b.kv, kvdim, b.kv, kvdim, L->kv_a_norm, T, c->c, c->eps) ||
                ops->rope(be, b.kv, T, kvdim, 1, kvdim, c->c, rd, 1, b.pos, m->rope_cos, m->rope_sin) ||
                ops->kv_store(be, kbase, b.dst, b.kv, kvdim, kvdim, T) ||
                ops->attn_mla(be, &L->kv_b, H, c->dn, c->dr, c->dv, c->c, m->attn_scale, b.q, b.as, nseq, b.att))
                goto fail;
        }
        if (ops->matmul(be, &L->o_proj, b.att, T, b.o) || ops->add_rmsnorm(be, b.x, b.o, L->ffn_norm, b.xn, T, D, c->eps))
            goto fail;
        int32_t *tr = m->trace_on && m->trace_T == T ? m->trace + (size_t)l * T * K : NULL;
        if (!L->moe) {
            if (mlp(m, &L->gate, &L->up, &L->down, b.xn, T, b.h1, b.h2, b.y) ||
                (next_norm ? ops->add_rmsnorm(be, b.x, b.y, next_norm, b.xn, T, D, c->eps) : ops->add(be, b.x, b.y, fT * D)))
                goto fail;
            if (tr)
                for (size_t i = 0; i < fT * K; i++) tr[i] = -1;
            continue;
        }
        rt.bias = L->router_bias;
        eng_moe_t mo = {.E = c->E, .D = D, .inter = c->moe_inter, .eg = L->eg, .eu = L->eu, .ed = L->ed,
                        .has_shared = L->has_shared, .shared_inter = c->n_shared * c->moe_inter,
                        .sg = &L->sg, .su = &L->su, .sd = &L->sd};
        if (ops->matmul(be, &L->router, b.xn, T, b.logit) || ops->route(be, &rt, b.logit, T, b.sel, b.wts) ||
            (tr && ops->get(be, tr, b.sel, fT * K * sizeof(int32_t))) ||
            ops->moe(be, &mo, b.xn, T, K, b.sel, b.wts, b.y) ||
            (next_norm ? ops->add_rmsnorm(be, b.x, b.y, next_norm, b.xn, T, D, c->eps) : ops->add(be, b.x, b.y, fT * D)))
            goto fail;
    }
    /* logits of the last new token of each sequence that asked for them */
    if (NL + NS) {
        int r = 0;
        for (int i = 0; i < nseq; i++)
            if (logits && logits[i]) b.rows_h[r++] = b.as[i].tok0 + n[i] - 1;
        for (int i = 0; i < nseq; i++)
            if (sample && sample[i]) b.rows_h[r++] = b.as[i].tok0 + n[i] - 1;
        if (ops->gather(be, b.o, b.x, b.rows_h, NL + NS, D) ||
            ops->rmsnorm(be, b.xn, D, b.o, D, m->final_norm, NL + NS, D, c->eps) ||
            ops->matmul(be, &m->lm_head, b.xn, NL + NS, b.out))
            goto fail;
    }
    if (NS) {
        eng_sample_req_t *rq = eng_alloc((size_t)NS * sizeof *rq);
        if (!rq) goto fail;
        for (int i = 0, r = 0; i < nseq; i++)
            if (sample[i]) rq[r++] = *sample[i];
        if (ops->sample(be, b.out + (size_t)NL * c->vocab, NS, c->vocab, rq)) {
            free(rq);
            goto fail;
        }
        for (int i = 0, r = 0; i < nseq; i++)
            if (sample[i]) *sample[i] = rq[r++];
        free(rq);
    }
    if (NL) {
        /* one copy to the host for all rows (a device backend waits once) */
        float *host = NL == 1 ? NULL : eng_alloc((size_t)NL * c->vocab * F);
        if (NL > 1 && !host) goto fail;
        for (int i = 0; i < nseq && NL == 1; i++)
            if (logits[i] && ops->get(be, logits[i], b.out, c->vocab * F)) goto fail;
        if (host) {
            if (ops->get(be, host, b.out, (size_t)NL * c->vocab * F)) {
                free(host);
                goto fail;
            }
            for (int i = 0, r = 0; i < nseq; i++)
                if (logits[i]) memcpy(logits[i], host + (size_t)r++ * c->vocab, c->vocab * F);
            free(host);
        }
    }
    for (int i = 0; i < nseq; i++) {
        seqs[i]->len += n[i];
        eng_seq_commit(seqs[i]);
    }
    fwd_buf_free(be, &b);
    return 0;
fail:
    fwd_buf_free(be, &b);
    tg_errf(err, errlen, "%s: out of memory (or a device error) in a batch of %d tokens", ops->name, T);
    return -1;
}
