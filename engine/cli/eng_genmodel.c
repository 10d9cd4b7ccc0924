/* eng_genmodel.c — `tollgate-engine gen-model`: write a Hugging Face style
 * model folder with seeded random weights (config.json, model.safetensors or
 * shards + model.safetensors.index.json, tokenizer files).
 *
 * Every tensor's values come from its own generator, seeded by (seed, tensor
 * name), so the bytes are the same on every machine and do not depend on the
 * order tensors are written.  Matmul weights are uniform in +-1/sqrt(in),
 * norms 1 + small noise, so activations stay O(1) through the layers.  With
 * --dtype fp8 the attention, MLP and expert projections are stored as
 * F8_E4M3 with 128x128 block weight_scale_inv (as DeepSeek ships V3); the
 * embedding, lm_head, norms and router stay BF16, the gate bias F32. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_cmd.h"
#include "eng_model_int.h"

typedef enum { K_MAT, K_EMBED, K_HEAD, K_NORM, K_GATE, K_BIAS, K_SCALE } gm_kind_t;

typedef struct {
    char name[160];
    gm_kind_t kind;
    int64_t rows, cols;   /* cols == 0: a vector of rows */
    eng_dtype_t dt;       /* stored dtype */
    int shard;
    uint64_t begin, end;
} gm_tensor_t;

typedef struct {
    const char *arch; /* deepseek_v3 | deepseek_v2 | mixtral */
    int D, layers, vocab, H;
    int q_lora, c, dn, dr, dv;
    int kvh, hd;
    int inter, moe_inter, E, topk, n_group, topk_group, n_shared, first_dense;
    int max_pos;
    double routed_scale, bias_range;
    int yarn;
    double yarn_factor, mscale, mscale_all;
    int orig_max_pos;
    const char *topk_method;
    int norm_topk;
} gm_preset_t;

typedef struct {
    gm_tensor_t *t;
    int n, cap;
} gm_list_t;

static int add(gm_list_t *L, gm_kind_t kind, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int add(gm_list_t *L, gm_kind_t kind, int64_t rows, int64_t cols, const char *fmt, ...) {
    if (L->n == L->cap) {
        int cap = L->cap ? L->cap * 2 : 256;
        gm_tensor_t *t = realloc(L->t, cap * sizeof *t);
        if (!t) return -1;
        L->t = t;
        L->cap = cap;
    }
    gm_tensor_t *t = &L->t[L->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->kind = kind;
    t->rows = rows;
    t->cols = cols;
    return 0;
}

/* ---- presets ------------------------------------------------------------------ */

static int preset(const char *arch, const char *name, gm_preset_t *p) {
    memset(p, 0, sizeof *p);
    p->arch = arch;
    if (!strcmp(arch, "deepseek_v3")) {
        p->yarn = 1;
        p->yarn_factor = 40;
        p->mscale = p->mscale_all = 1.0;
        p->orig_max_pos = 4096;
        p->topk_method = "noaux_tc";
        p->norm_topk = 1;
        p->routed_scale = 2.5;
        if (!strcmp(name, "demo")) {
            p->D = 256, p->layers = 4, p->vocab = 129280, p->H = 4;
            p->q_lora = 128, p->c = 64, p->dn = 32, p->dr = 16, p->dv = 32;
            p->inter = 512, p->moe_inter = 128, p->E = 16, p->topk = 4, p->n_group = 4, p->topk_group = 2;
            p->n_shared = 1, p->first_dense = 1, p->max_pos = 16384, p->bias_range = 0.05;
            return 0;
        }
        if (!strcmp(name, "tiny") || !strcmp(name, "tiny8k")) { /* tiny8k: the same with an 8192-token context */
            p->D = 64, p->layers = 3, p->vocab = 512, p->H = 4;
            p->q_lora = 48, p->c = 32, p->dn = 16, p->dr = 8, p->dv = 16;
            p->inter = 160, p->moe_inter = 32, p->E = 16, p->topk = 4, p->n_group = 4, p->topk_group = 2;
            p->n_shared = 1, p->first_dense = 1, p->max_pos = name[4] ? 8192 : 1024, p->bias_range = 0.15;
            return 0;
        }
        if (!strcmp(name, "bench")) { /* about 1.3 GB of bf16 weights read per token */
            p->D = 2048, p->layers = 8, p->vocab = 32000, p->H = 16;
            p->q_lora = 512, p->c = 256, p->dn = 64, p->dr = 32, p->dv = 64;
            p->inter = 8192, p->moe_inter = 1024, p->E = 32, p->topk = 8, p->n_group = 4, p->topk_group = 4;
            p->n_shared = 1, p->first_dense = 1, p->max_pos = 163840, p->bias_range = 0.05;
            return 0;
        }
    } else if (!strcmp(arch, "deepseek_v2")) {
        p->yarn = 1;
        p->yarn_factor = 40;
        p->mscale = p->mscale_all = 0.707;
        p->orig_max_pos = 4096;
        p->topk_method = "group_limited_greedy";
        p->norm_topk = 0;
        p->routed_scale = 1.5;
        if (!strcmp(name, "tiny")) {
            p->D = 64, p->layers = 3, p->vocab = 512, p->H = 4;
            p->q_lora = 0, p->c = 32, p->dn = 16, p->dr = 8, p->dv = 16;
            p->inter = 160, p->moe_inter = 32, p->E = 16, p->topk = 3, p->n_group = 4, p->topk_group = 2;
            p->n_shared = 2, p->first_dense = 1, p->max_pos = 1024;
            return 0;
        }
        if (!strcmp(name, "lite")) { /* DeepSeek-V2-Lite's shape: 16B total, 2.4B active */
            p->D = 2048, p->layers = 27, p->vocab = 102400, p->H = 16;
            p->q_lora = 0, p->c = 512, p->dn = 128, p->dr = 64, p->dv = 128;
            p->inter = 10944, p->moe_inter = 1408, p->E = 64, p->topk = 6, p->n_group = 1, p->topk_group = 1;
            p->n_shared = 2, p->first_dense = 1, p->max_pos = 163840;
            p->topk_method = "greedy";
            p->routed_scale = 1.0;
            return 0;
        }
    } else if (!strcmp(arch, "mixtral")) {
        if (!strcmp(name, "tiny")) {
            p->D = 64, p->layers = 2, p->vocab = 512, p->H = 4, p->kvh = 2, p->hd = 16;
            p->inter = 96, p->moe_inter = 96, p->E = 4, p->topk = 2, p->max_pos = 1024;
            return 0;
        }
    }
    return -1;
}

static int build_list(const gm_preset_t *p, gm_list_t *L) {
    int mix = !strcmp(p->arch, "mixtral");
    int D = p->D;
    if (add(L, K_EMBED, p->vocab, D, "model.embed_tokens.weight") || add(L, K_NORM, D, 0, "model.norm.weight") ||
        add(L, K_HEAD, p->vocab, D, "lm_head.weight"))
        return -1;
    for (int l = 0; l < p->layers; l++) {
        char pre[64];
        snprintf(pre, sizeof pre, "model.layers.%d", l);
        if (add(L, K_NORM, D, 0, "%s.input_layernorm.weight", pre) ||
            add(L, K_NORM, D, 0, "%s.post_attention_layernorm.weight", pre))
            return -1;
        if (mix) {
            if (add(L, K_MAT, p->H * p->hd, D, "%s.self_attn.q_proj.weight", pre) ||
                add(L, K_MAT, p->kvh * p->hd, D, "%s.self_attn.k_proj.weight", pre) ||
                add(L, K_MAT, p->kvh * p->hd, D, "%s.self_attn.v_proj.weight", pre) ||
                add(L, K_MAT, D, p->H * p->hd, "%s.self_attn.o_proj.weight", pre) ||
                add(L, K_GATE, p->E, D, "%s.block_sparse_moe.gate.weight", pre))
                return -1;
            for (int e = 0; e < p->E; e++)
                if (add(L, K_MAT, p->inter, D, "%s.block_sparse_moe.experts.%d.w1.weight", pre, e) ||
                    add(L, K_MAT, D, p->inter, "%s.block_sparse_moe.experts.%d.w2.weight", pre, e) ||
                    add(L, K_MAT, p->inter, D, "%s.block_sparse_moe.experts.%d.w3.weight", pre, e))
                    return -1;
            continue;
        }
        int qd = p->H * (p->dn + p->dr);
        if (p->q_lora) {
            if (add(L, K_MAT, p->q_lora, D, "%s.self_attn.q_a_proj.weight", pre) ||
                add(L, K_NORM, p->q_lora, 0, "%s.self_attn.q_a_layernorm.weight", pre) ||
                add(L, K_MAT, qd, p->q_lora, "%s.self_attn.q_b_proj.weight", pre))
                return -1;
        } else if (add(L, K_MAT, qd, D, "%s.self_attn.q_proj.weight", pre)) {
            return -1;
        }
        if (add(L, K_MAT, p->c + p->dr, D, "%s.self_attn.kv_a_proj_with_mqa.weight", pre) ||
            add(L, K_NORM, p->c, 0, "%s.self_attn.kv_a_layernorm.weight", pre) ||
            add(L, K_MAT, p->H * (p->dn + p->dv), p->c, "%s.self_attn.kv_b_proj.weight", pre) ||
            add(L, K_MAT, D, p->H * p->dv, "%s.self_attn.o_proj.weight", pre))
            return -1;
        if (l < p->first_dense) {
            if (add(L, K_MAT, p->inter, D, "%s.mlp.gate_proj.weight", pre) ||
                add(L, K_MAT, p->inter, D, "%s.mlp.up_proj.weight", pre) ||
                add(L, K_MAT, D, p->inter, "%s.mlp.down_proj.weight", pre))
                return -1;
            continue;
        }
        if (add(L, K_GATE, p->E, D, "%s.mlp.gate.weight", pre)) return -1;
        if (!strcmp(p->arch, "deepseek_v3") && add(L, K_BIAS, p->E, 0, "%s.mlp.gate.e_score_correction_bias", pre))
            return -1;
        for (int e = 0; e < p->E; e++)
            if (add(L, K_MAT, p->moe_inter, D, "%s.mlp.experts.%d.gate_proj.weight", pre, e) ||
                add(L, K_MAT, p->moe_inter, D, "%s.mlp.experts.%d.up_proj.weight", pre, e) ||
                add(L, K_MAT, D, p->moe_inter, "%s.mlp.experts.%d.down_proj.weight", pre, e))
                return -1;
        if (p->n_shared) {
            int Is = p->n_shared * p->moe_inter;
            if (add(L, K_MAT, Is, D, "%s.mlp.shared_experts.gate_proj.weight", pre) ||
                add(L, K_MAT, Is, D, "%s.mlp.shared_experts.up_proj.weight", pre) ||
                add(L, K_MAT, D, Is, "%s.mlp.shared_experts.down_proj.weight", pre))
                return -1;
        }
    }
    return 0;
}

/* ---- values ---------------------------------------------------------------------- */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) with 24 bits */
static float rng_unif(rng_t *r) { return (float)((int64_t)(rng_next(r) >> 40) - (1 << 23)) / (float)(1 << 23); }

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull ^ seed * 0x9e3779b97f4a7c15ull;
    while (*name) h = (h ^ (uint8_t)*name++) * 1099511628211ull;
    return h;
}

/* The fp32 values of tensor t (before storage rounding). */
static void gen_values(const gm_tensor_t *t, uint64_t seed, float *v) {
    rng_t r = {name_seed(seed, t->name)};
    int64_t n = t->rows * (t->cols ? t->cols : 1);
    float a = 1.0f;
    switch (t->kind) {
    case K_MAT:
    case K_HEAD: a = 1.0f / sqrtf((float)t->cols); break;
    case K_GATE: a = 2.0f / sqrtf((float)t->cols); break;
    case K_EMBED: a = 1.0f; break;
    default: break;
    }
    for (int64_t i = 0; i < n; i++) {
        float u = rng_unif(&r);
        if (t->kind == K_NORM) v[i] = 1.0f + 0.1f * u;
        else if (t->kind == K_BIAS) v[i] = u;   /* scaled by the preset's bias_range by the caller */
        else v[i] = a * u;
    }
}

static size_t dt_size(eng_dtype_t dt) { return dt == ENG_DT_F32 ? 4 : dt == ENG_DT_F8_E4M3 ? 1 : 2; }
static const char *dt_name(eng_dtype_t dt) {
    return dt == ENG_DT_F32 ? "F32" : dt == ENG_DT_BF16 ? "BF16" : dt == ENG_DT_F16 ? "F16" : "F8_E4M3";
}

/* ---- writing ---------------------------------------------------------------------- */

static int write_tensor(FILE *fp, const gm_tensor_t *t, const gm_tensor_t *mat_of_scale, uint64_t seed,
                        double bias_range) {
    const gm_tensor_t *src = t->kind == K_SCALE ? mat_of_scale : t;
    int64_t R = src->rows, C = src->cols ? src->cols : 1;
    float *v = malloc((size_t)R * C * sizeof(float));
    if (!v) return -1;
    gen_values(src, seed, v);
    if (src->kind == K_BIAS)
        for (int64_t i = 0; i < R; i++) v[i] *= (float)bias_range;
    int rc = 0;
    if (t->kind == K_SCALE || t->dt == ENG_DT_F8_E4M3) {
        int64_t sr = (R + 127) / 128, sc = (C + 127) / 128;
        float *scale = malloc(sr * sc * sizeof(float));
        if (!scale) {
            free(v);
            return -1;
        }
        for (int64_t br = 0; br < sr; br++)
            for (int64_t bc = 0; bc < sc; bc++) {
                float amax = 0;
                for (int64_t r = br * 128; r < R && r < br * 128 + 128; r++)
                    for (int64_t c = bc * 128; c < C && c < bc * 128 + 128; c++) amax = fmaxf(amax, fabsf(v[r * C + c]));
                scale[br * sc + bc] = amax > 0 ? amax / 448.0f : 1.0f;
            }
        if (t->kind == K_SCALE) {
            rc = fwrite(scale, sizeof(float), sr * sc, fp) == (size_t)(sr * sc) ? 0 : -1;
        } else {
            uint8_t *q = malloc(R * C);
            if (!q) rc = -1;
            for (int64_t r = 0; q && r < R; r++)
                for (int64_t c = 0; c < C; c++) q[r * C + c] = eng_f32_to_f8e4m3(v[r * C + c] / scale[(r / 128) * sc + c / 128]);
            if (q && fwrite(q, 1, R * C, fp) != (size_t)(R * C)) rc = -1;
            free(q);
        }
        free(scale);
    } else if (t->dt == ENG_DT_F32) {
        rc = fwrite(v, sizeof(float), R * C, fp) == (size_t)(R * C) ? 0 : -1;
    } else {
        uint16_t *h = malloc(R * C * sizeof(uint16_t));
        if (!h) rc = -1;
        for (int64_t i = 0; h && i < R * C; i++) h[i] = t->dt == ENG_DT_BF16 ? eng_f32_to_bf16(v[i]) : eng_f32_to_f16(v[i]);
        if (h && fwrite(h, 2, R * C, fp) != (size_t)(R * C)) rc = -1;
        free(h);
    }
    free(v);
    return rc;
}

static int write_shard(const char *path, gm_list_t *L, int shard, uint64_t seed, double bias_range) {
    /* header */
    size_t hcap = 1 << 16, hlen = 0;
    char *h = malloc(hcap);
    if (!h) return -1;
    uint64_t off = 0;
    hlen += snprintf(h + hlen, hcap - hlen, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < L->n; i++) {
        gm_tensor_t *t = &L->t[i];
        if (t->shard != shard) continue;
        int64_t R = t->rows, C = t->cols;
        if (t->kind == K_SCALE) {
            R = (L->t[i - 1].rows + 127) / 128;
            C = (L->t[i - 1].cols + 127) / 128;
        }
        uint64_t nb = (uint64_t)R * (C ? C : 1) * dt_size(t->dt);
        t->begin = off;
        t->end = off + nb;
        off += nb;
        if (hcap - hlen < 512) {
            hcap *= 2;
            char *h2 = realloc(h, hcap);
            if (!h2) {
                free(h);
                return -1;
            }
            h = h2;
        }
        if (C)
            hlen += snprintf(h + hlen, hcap - hlen, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                             t->name, dt_name(t->dt), (long long)R, (long long)C, (unsigned long long)t->begin,
                             (unsigned long long)t->end);
        else
            hlen += snprintf(h + hlen, hcap - hlen, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                             t->name, dt_name(t->dt), (long long)R, (unsigned long long)t->begin,
                             (unsigned long long)t->end);
    }
    hlen += snprintf(h + hlen, hcap - hlen, "}");
    while (hlen % 8) h[hlen++] = ' ';
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(h);
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    int rc = fwrite(len8, 1, 8, fp) == 8 && fwrite(h, 1, hlen, fp) == hlen ? 0 : -1;
    free(h);
    for (int i = 0; !rc && i < L->n; i++)
        if (L->t[i].shard == shard) rc = write_tensor(fp, &L->t[i], i ? &L->t[i - 1] : NULL, seed, bias_range);
    if (fclose(fp)) rc = -1;
    if (!rc && rename(tmp, path)) rc = -1;
    if (rc) unlink(tmp);
    return rc;
}

static int copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return -1;
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return -1;
    }
    char buf[1 << 16];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    if (ferror(in)) rc = -1;
    fclose(in);
    if (fclose(out)) rc = -1;
    return rc;
}

static int write_config(const char *dir, const gm_preset_t *p, const char *dtype_word, int has_fp8) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    if (!fp) return -1;
    int mix = !strcmp(p->arch, "mixtral");
    const char *archname = mix ? "MixtralForCausalLM" : !strcmp(p->arch, "deepseek_v3") ? "DeepseekV3ForCausalLM"
                                                                                            : "DeepseekV2ForCausalLM";
    fprintf(fp, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n", archname, p->arch);
    fprintf(fp, "  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n  \"vocab_size\": %d,\n", p->D, p->layers, p->vocab);
    fprintf(fp, "  \"num_attention_heads\": %d,\n  \"intermediate_size\": %d,\n", p->H, p->inter);
    fprintf(fp, "  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": 1e-06,\n", p->max_pos);
    fprintf(fp, "  \"bos_token_id\": 0,\n  \"eos_token_id\": 1,\n  \"tie_word_embeddings\": false,\n");
    fprintf(fp, "  \"torch_dtype\": \"%s\",\n", dtype_word);
    if (mix) {
        fprintf(fp, "  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n  \"num_local_experts\": %d,\n", p->kvh, p->hd, p->E);
        fprintf(fp, "  \"num_experts_per_tok\": %d,\n  \"rope_theta\": 1000000.0,\n  \"sliding_window\": null\n}\n", p->topk);
    } else {
        if (p->q_lora) fprintf(fp, "  \"q_lora_rank\": %d,\n", p->q_lora);
        else fprintf(fp, "  \"q_lora_rank\": null,\n");
        fprintf(fp, "  \"kv_lora_rank\": %d,\n  \"qk_nope_head_dim\": %d,\n  \"qk_rope_head_dim\": %d,\n", p->c, p->dn, p->dr);
        fprintf(fp, "  \"v_head_dim\": %d,\n  \"num_key_value_heads\": %d,\n", p->dv, p->H);
        fprintf(fp, "  \"moe_intermediate_size\": %d,\n  \"n_routed_experts\": %d,\n  \"num_experts_per_tok\": %d,\n",
                p->moe_inter, p->E, p->topk);
        fprintf(fp, "  \"n_shared_experts\": %d,\n  \"first_k_dense_replace\": %d,\n  \"moe_layer_freq\": 1,\n", p->n_shared,
                p->first_dense);
        fprintf(fp, "  \"n_group\": %d,\n  \"topk_group\": %d,\n  \"topk_method\": \"%s\",\n", p->n_group, p->topk_group,
                p->topk_method);
        fprintf(fp, "  \"scoring_func\": \"%s\",\n  \"norm_topk_prob\": %s,\n  \"routed_scaling_factor\": %g,\n",
                !strcmp(p->arch, "deepseek_v3") ? "sigmoid" : "softmax", p->norm_topk ? "true" : "false", p->routed_scale);
        fprintf(fp, "  \"rope_theta\": 10000,\n");
        fprintf(fp, "  \"rope_scaling\": {\"type\": \"yarn\", \"factor\": %g, \"original_max_position_embeddings\": %d, "
                    "\"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": %g, \"mscale_all_dim\": %g},\n",
                p->yarn_factor, p->orig_max_pos, p->mscale, p->mscale_all);
        if (has_fp8)
            fprintf(fp, "  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", "
                        "\"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]},\n");
        fprintf(fp, "  \"num_nextn_predict_layers\": 0,\n  \"attention_bias\": false\n}\n");
    }
    return fclose(fp) ? -1 : 0;
}

/* mkdir -p */
static int mkdir_p(const char *dir) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

static int gm_usage(void) {
    fprintf(stderr, "usage: tollgate-engine gen-model --arch deepseek_v3|deepseek_v2|mixtral --preset demo|tiny|bench|lite\n"
                    "         (or the architecture: DeepseekV3ForCausalLM, DeepseekV2ForCausalLM, MixtralForCausalLM)\n"
                    "         --out DIR [--seed N] [--dtype f32|bf16|f16|fp8] [--shards N] [--tokenizer DIR|none]\n"
                    "         [--layers N]   (the preset's layer shapes, N layers: a smaller model of the same per-token shape)\n");
    return 2;
}

/* --arch: the model_type (deepseek_v3, as config.json writes it), or the
 * architecture's name as Hugging Face and DESIGN.md write it
 * (DeepseekV3ForCausalLM), any case, '-' for '_' (deepseek-v3). */
static const char *gm_arch(const char *a) {
    static const char *const names[][2] = {{"deepseek_v3", "deepseekv3forcausallm"},
                                           {"deepseek_v2", "deepseekv2forcausallm"},
                                           {"mixtral", "mixtralforcausallm"}};
    char low[64];
    size_t n = strlen(a);
    if (n >= sizeof low) return a;
    for (size_t i = 0; i <= n; i++) low[i] = a[i] == '-' ? '_' : (char)tolower((unsigned char)a[i]);
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (!strcmp(low, names[k][0]) || !strcmp(low, names[k][1])) return names[k][0];
    return a;
}

int eng_cmd_gen_model(int argc, char **argv) {
    const char *arch = NULL, *pname = NULL, *out = NULL, *dtype = NULL, *tokdir = NULL;
    uint64_t seed = 1;
    int shards = 1, layers = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return gm_usage();
        if (!strcmp(a, "--arch")) arch = gm_arch(v);
        else if (!strcmp(a, "--preset")) pname = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--dtype")) dtype = v;
        else if (!strcmp(a, "--tokenizer")) tokdir = v;
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--shards")) shards = atoi(v);
        else if (!strcmp(a, "--layers")) layers = atoi(v);
        else return gm_usage();
        i++;
    }
    if (!arch || !pname || !out || shards < 1 || shards > 64) return gm_usage();
    gm_preset_t p;
    if (preset(arch, pname, &p)) {
        fprintf(stderr, "gen-model: no preset '%s' for arch '%s' (deepseek_v3: demo tiny tiny8k bench; deepseek_v2: tiny lite; "
                        "mixtral: tiny)\n", pname, arch);
        return 2;
    }
    if (layers < 0 || layers > 4096) return gm_usage();
    if (layers) p.layers = layers;
    int is_demo = !strcmp(pname, "demo");
    if (!dtype) dtype = is_demo || !strcmp(pname, "bench") || !strcmp(pname, "lite") ? "bf16" : "f32";
    eng_dtype_t mat_dt, other_dt;
    if (!strcmp(dtype, "f32")) mat_dt = other_dt = ENG_DT_F32;
    else if (!strcmp(dtype, "bf16")) mat_dt = other_dt = ENG_DT_BF16;
    else if (!strcmp(dtype, "f16")) mat_dt = other_dt = ENG_DT_F16;
    else if (!strcmp(dtype, "fp8")) mat_dt = ENG_DT_F8_E4M3, other_dt = ENG_DT_BF16;
    else return gm_usage();
    if (!tokdir) tokdir = is_demo ? "build/data/deepseek-v3-tokenizer" : "none";
    gm_list_t L = {0};
    if (build_list(&p, &L)) {
        fprintf(stderr, "gen-model: out of memory\n");
        free(L.t);
        return 1;
    }
    /* fp8: a weight_scale_inv after every matmul weight */
    if (mat_dt == ENG_DT_F8_E4M3) {
        gm_list_t L2 = {0};
        for (int i = 0; i < L.n; i++) {
            if (add(&L2, L.t[i].kind, L.t[i].rows, L.t[i].cols, "%s", L.t[i].name)) return 1;
            if (L.t[i].kind == K_MAT) {
                char sname[200];
                snprintf(sname, sizeof sname, "%s_scale_inv", L.t[i].name);
                if (add(&L2, K_SCALE, 0, 0, "%s", sname)) return 1;
            }
        }
        free(L.t);
        L = L2;
    }
    uint64_t total = 0;
    for (int i = 0; i < L.n; i++) {
        gm_tensor_t *t = &L.t[i];
        t->dt = t->kind == K_MAT ? mat_dt : t->kind == K_BIAS || t->kind == K_SCALE ? ENG_DT_F32 : other_dt;
        if (t->kind == K_SCALE) continue;
        total += (uint64_t)t->rows * (t->cols ? t->cols : 1) * dt_size(t->dt);
    }
    /* shards of about equal bytes, a scale always with its weight */
    uint64_t acc = 0;
    for (int i = 0; i < L.n; i++) {
        gm_tensor_t *t = &L.t[i];
        if (t->kind == K_SCALE) {
            t->shard = L.t[i - 1].shard;
            continue;
        }
        t->shard = (int)(acc * shards / (total ? total : 1));
        if (t->shard >= shards) t->shard = shards - 1;
        acc += (uint64_t)t->rows * (t->cols ? t->cols : 1) * dt_size(t->dt);
    }
    if (mkdir_p(out)) {
        fprintf(stderr, "gen-model: %s: %s\n", out, strerror(errno));
        free(L.t);
        return 1;
    }
    char path[4200];
    int rc = 0;
    for (int s = 0; s < shards && !rc; s++) {
        if (shards == 1) snprintf(path, sizeof path, "%s/model.safetensors", out);
        else snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", out, s + 1, shards);
        if (write_shard(path, &L, s, seed, p.bias_range)) {
            fprintf(stderr, "gen-model: cannot write %s: %s\n", path, strerror(errno));
            rc = 1;
        }
    }
    if (!rc && shards > 1) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
        FILE *fp = fopen(path, "w");
        if (!fp) rc = 1;
        else {
            fprintf(fp, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {", (unsigned long long)total);
            for (int i = 0; i < L.n; i++)
                fprintf(fp, "%s\n    \"%s\": \"model-%05d-of-%05d.safetensors\"", i ? "," : "", L.t[i].name,
                        L.t[i].shard + 1, shards);
            fprintf(fp, "\n  }\n}\n");
            if (fclose(fp)) rc = 1;
        }
    } else if (!rc) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
        unlink(path);
    }
    if (!rc && write_config(out, &p, !strcmp(dtype, "f32") ? "float32" : !strcmp(dtype, "f16") ? "float16" : "bfloat16",
                            mat_dt == ENG_DT_F8_E4M3)) {
        fprintf(stderr, "gen-model: cannot write %s/config.json\n", out);
        rc = 1;
    }
    if (!rc && strcmp(tokdir, "none")) {
        static const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
        for (int i = 0; i < 2 && !rc; i++) {
            char src[4200], dst[4200];
            snprintf(src, sizeof src, "%s/%s", tokdir, files[i]);
            snprintf(dst, sizeof dst, "%s/%s", out, files[i]);
            if (copy_file(src, dst)) {
                fprintf(stderr, "gen-model: cannot copy %s to %s (run `make tokenizer-data`, or pass "
                                "--tokenizer none)\n", src, dst);
                rc = 1;
            }
        }
    }
    free(L.t);
    if (!rc)
        fprintf(stderr, "gen-model: %s %s (%s, seed %llu) -> %s, %.1f MB of weights\n", arch, pname, dtype,
                (unsigned long long)seed, out, total / 1e6);
    return rc;
}
