/* eng_st.c — safetensors reader: maps every shard of a Hugging Face model
 * folder read-only and indexes its tensors by name.
 *
 * File layout (all little-endian):
 *   bytes 0..8        u64 N, the length of the JSON header
 *   bytes 8..8+N      JSON object: name -> {"dtype","shape":[...],"data_offsets":[b,e]},
 *                     plus an optional "__metadata__" object of strings
 *   bytes 8+N..       the data section; a tensor's bytes are [8+N+b, 8+N+e)
 * Every header claim is checked against the file before a pointer is made:
 * offsets inside the data section, e - b == prod(shape) * element size, no
 * two tensors overlapping.  A bad file gives an error naming file and tensor. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tg_err.h"
#include "eng_model_int.h"

#define ST_MAX_HEADER (256u << 20)  /* V3's headers are ~10 MB per shard at most */


static const struct {
    const char *name;
    eng_dtype_t dt;
    int size;
} st_dtypes[] = {
    {"F32", ENG_DT_F32, 4},        {"BF16", ENG_DT_BF16, 2},      {"F16", ENG_DT_F16, 2},
    {"F8_E4M3", ENG_DT_F8_E4M3, 1}, {"F64", ENG_DT_OTHER, 8},      {"I64", ENG_DT_OTHER, 8},
    {"I32", ENG_DT_OTHER, 4},      {"I16", ENG_DT_OTHER, 2},      {"I8", ENG_DT_OTHER, 1},
    {"U8", ENG_DT_OTHER, 1},       {"BOOL", ENG_DT_OTHER, 1},     {"F8_E5M2", ENG_DT_OTHER, 1},
    {"U16", ENG_DT_OTHER, 2},      {"U32", ENG_DT_OTHER, 4},      {"U64", ENG_DT_OTHER, 8},
};

/* An exact non-negative integer from a cJSON number (doubles hold 2^53 exactly). */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return -1;
    *out = (uint64_t)d;
    return 0;
}

void eng_st_tensors_free(eng_st_tensor_t *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) free(t[i].name);
    free(t);
}

static int cmp_begin(const void *a, const void *b) {
    const eng_st_tensor_t *x = *(eng_st_tensor_t *const *)a, *y = *(eng_st_tensor_t *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

int eng_st_parse(const uint8_t *buf, size_t size, const char *fname, eng_st_tensor_t **out, int *n,
                 char *err, size_t errlen) {
    *out = NULL;
    *n = 0;
    if (size < 8) {
        tg_errf(err, errlen, "%s: truncated safetensors file (%zu bytes, no header length)", fname, size);
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > size - 8 || hlen > ST_MAX_HEADER) {
        tg_errf(err, errlen, "%s: header length %llu exceeds the file (%zu bytes)", fname,
               (unsigned long long)hlen, size);
        return -1;
    }
    const uint8_t *data = buf + 8 + hlen;
    uint64_t dsize = size - 8 - hlen;
    cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        tg_errf(err, errlen, "%s: safetensors header is not a JSON object", fname);
        cJSON_Delete(root);
        return -1;
    }
    int cap = cJSON_GetArraySize(root);
    eng_st_tensor_t *t = calloc(cap ? cap : 1, sizeof *t);
    eng_st_tensor_t **order = calloc(cap ? cap : 1, sizeof *order);
    int nt = 0;
    if (!t || !order) {
        tg_errf(err, errlen, "%s: out of memory", fname);
        goto fail;
    }
    for (cJSON *e = root->child; e; e = e->next) {
        const char *name = e->string ? e->string : "";
        if (!strcmp(name, "__metadata__")) {
            if (!cJSON_IsObject(e)) {
                tg_errf(err, errlen, "%s: __metadata__ is not an object", fname);
                goto fail;
            }
            continue;
        }
        if (!cJSON_IsObject(e)) {
            tg_errf(err, errlen, "%s: tensor '%s': entry is not an object", fname, name);
            goto fail;
        }
        eng_st_tensor_t *x = &t[nt];
        x->file = fname;
        if (!(x->name = strdup(name))) {
            tg_errf(err, errlen, "%s: out of memory", fname);
            goto fail;
        }
        nt++;
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt)) {
            tg_errf(err, errlen, "%s: tensor '%s': missing dtype", fname, name);
            goto fail;
        }
        int found = 0;
        for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
            if (!strcmp(dt->valuestring, st_dtypes[k].name)) {
                x->dt = st_dtypes[k].dt;
                x->elem_size = st_dtypes[k].size;
                snprintf(x->dtype_name, sizeof x->dtype_name, "%s", st_dtypes[k].name);
                found = 1;
            }
        if (!found) {
            tg_errf(err, errlen, "%s: tensor '%s': unknown dtype '%.20s'", fname, name, dt->valuestring);
            goto fail;
        }
        if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > ENG_ST_MAX_DIMS) {
            tg_errf(err, errlen, "%s: tensor '%s': bad shape", fname, name);
            goto fail;
        }
        uint64_t count = 1;
        int overflow = 0;
        for (const cJSON *d = sh->child; d; d = d->next) {
            uint64_t v;
            if (json_u64(d, &v)) {
                tg_errf(err, errlen, "%s: tensor '%s': shape entry is not a non-negative integer", fname, name);
                goto fail;
            }
            if (v && count > UINT64_MAX / v) overflow = 1;
            count *= v;
            x->shape[x->ndim++] = (int64_t)v;
        }
        if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || json_u64(of->child, &x->begin) ||
            json_u64(of->child->next, &x->end)) {
            tg_errf(err, errlen, "%s: tensor '%s': bad data_offsets", fname, name);
            goto fail;
        }
        if (overflow || count > UINT64_MAX / (uint64_t)x->elem_size || x->end < x->begin ||
            x->end - x->begin != count * (uint64_t)x->elem_size) {
            tg_errf(err, errlen, "%s: tensor '%s': data_offsets [%llu,%llu] do not match shape and dtype %s",
                   fname, name, (unsigned long long)x->begin, (unsigned long long)x->end, x->dtype_name);
            goto fail;
        }
        if (x->end > dsize) {
            tg_errf(err, errlen, "%s: tensor '%s': data [%llu,%llu) lies past the end of the file "
                   "(data section %llu bytes; truncated?)", fname, name, (unsigned long long)x->begin,
                   (unsigned long long)x->end, (unsigned long long)dsize);
            goto fail;
        }
        x->data = data + x->begin;
        order[nt - 1] = x;
    }
    qsort(order, nt, sizeof *order, cmp_begin);
    for (int i = 1; i < nt; i++)
        if (order[i]->begin < order[i - 1]->end && order[i]->begin != order[i]->end) {
            tg_errf(err, errlen, "%s: tensor '%s' overlaps tensor '%s'", fname, order[i]->name,
                   order[i - 1]->name);
            goto fail;
        }
    free(order);
    cJSON_Delete(root);
    *out = t;
    *n = nt;
    return 0;
fail:
    free(order);
    eng_st_tensors_free(t, nt);
    cJSON_Delete(root);
    return -1;
}

/* ---- a folder of shards ---------------------------------------------------- */

typedef struct {
    char *path;
    void *map;
    size_t size;
    eng_st_tensor_t *t;
    int nt;
} st_file_t;

struct eng_st {
    st_file_t *files;
    int nfiles;
    eng_st_tensor_t **slots;  /* open-addressing hash of every tensor by name */
    size_t nslots;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

/* Map the file at a 2 MB-aligned address and ask for huge pages: where the
 * page cache holds 2 MB folios of the file (the kernel reads it ahead in such
 * folios for a MADV_HUGEPAGE mapping), each is then mapped by one page-table
 * entry, and a decode that streams every weight once per token walks 512x
 * fewer TLB entries.  Falls back to a plain mapping. */
static void *map_file_2m(int fd, size_t size) {
    const size_t A = 2u << 20;
    if (getenv("TOLLGATE_ENGINE_NO_HUGEPAGES") || size < A) return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    uint8_t *res = mmap(NULL, size + A, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    uint8_t *al = (uint8_t *)(((uintptr_t)res + A - 1) & ~(uintptr_t)(A - 1));
    void *m = mmap(al, size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
    if (m == MAP_FAILED) {
        munmap(res, size + A);
        return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    }
    /* give back the reservation's slack before and after the mapping */
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), end = ((size_t)(al - res) + size + pg - 1) & ~(pg - 1);
    if (al > res) munmap(res, (size_t)(al - res));
    if (end < size + A) munmap(res + end, size + A - end);
#ifdef MADV_HUGEPAGE
    madvise(m, size, MADV_HUGEPAGE);
#endif
    return m;
}

static int st_add_file(eng_st_t *st, const char *path, char *err, size_t errlen) {
    for (int i = 0; i < st->nfiles; i++)
        if (!strcmp(st->files[i].path, path)) return 0;
    st_file_t *nf = realloc(st->files, (st->nfiles + 1) * sizeof *nf);
    if (!nf) {
        tg_errf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    st->files = nf;
    st_file_t *f = &st->files[st->nfiles];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return -1;
    st->nfiles++;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tg_errf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        tg_errf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    f->size = (size_t)sb.st_size;
    if (f->size) {
        f->map = map_file_2m(fd, f->size);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            tg_errf(err, errlen, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    return eng_st_parse(f->map, f->size, f->path, &f->t, &f->nt, err, errlen);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_small_file(const char *path, size_t max, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, fp) : 0;
    fclose(fp);
    if (!buf || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

eng_st_t *eng_st_open_dir(const char *dir, char *err, size_t errlen) {
    eng_st_t *st = calloc(1, sizeof *st);
    char path[4096];
    if (!st) return NULL;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    size_t len;
    char *idx = read_small_file(path, 64u << 20, &len);
    if (idx) {
        cJSON *root = cJSON_ParseWithLength(idx, len);
        free(idx);
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        if (!cJSON_IsObject(wm)) {
            tg_errf(err, errlen, "%s: no weight_map object", path);
            cJSON_Delete(root);
            goto fail;
        }
        for (const cJSON *e = wm->child; e; e = e->next) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
                tg_errf(err, errlen, "%s: weight_map entry '%s' is not a file name in the folder", path,
                       e->string ? e->string : "");
                cJSON_Delete(root);
                goto fail;
            }
            char fp[4096];
            snprintf(fp, sizeof fp, "%s/%s", dir, e->valuestring);
            if (st_add_file(st, fp, err, errlen)) {
                cJSON_Delete(root);
                goto fail;
            }
        }
        cJSON_Delete(root);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, R_OK) == 0) {
            if (st_add_file(st, path, err, errlen)) goto fail;
        } else {
            DIR *d = opendir(dir);
            if (!d) {
                tg_errf(err, errlen, "%s: %s", dir, strerror(errno));
                goto fail;
            }
            char **names = NULL;
            int nn = 0;
            struct dirent *de;
            while ((de = readdir(d)))
                if (ends_with(de->d_name, ".safetensors")) {
                    char **nn2 = realloc(names, (nn + 1) * sizeof *names);
                    if (!nn2) break;
                    names = nn2;
                    names[nn++] = strdup(de->d_name);
                }
            closedir(d);
            qsort(names, nn, sizeof *names, cmp_str);
            int bad = 0;
            for (int i = 0; i < nn; i++) {
                if (!bad && names[i]) {
                    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
                    bad = st_add_file(st, path, err, errlen);
                }
                free(names[i]);
            }
            free(names);
            if (bad) goto fail;
        }
    }
    if (!st->nfiles) {
        tg_errf(err, errlen, "%s: no *.safetensors files", dir);
        goto fail;
    }
    size_t total = 0;
    for (int i = 0; i < st->nfiles; i++) total += st->files[i].nt;
    st->nslots = 16;
    while (st->nslots < total * 2) st->nslots <<= 1;
    st->slots = calloc(st->nslots, sizeof *st->slots);
    if (!st->slots) goto fail;
    for (int i = 0; i < st->nfiles; i++)
        for (int j = 0; j < st->files[i].nt; j++) {
            eng_st_tensor_t *t = &st->files[i].t[j];
            size_t h = hash_str(t->name) & (st->nslots - 1);
            while (st->slots[h]) {
                if (!strcmp(st->slots[h]->name, t->name)) {
                    tg_errf(err, errlen, "%s: tensor '%s' also appears in %s", t->file, t->name,
                           st->slots[h]->file);
                    goto fail;
                }
                h = (h + 1) & (st->nslots - 1);
            }
            st->slots[h] = t;
        }
    return st;
fail:
    eng_st_free(st);
    return NULL;
}

const eng_st_tensor_t *eng_st_find(const eng_st_t *st, const char *name) {
    size_t h = hash_str(name) & (st->nslots - 1);
    while (st->slots[h]) {
        if (!strcmp(st->slots[h]->name, name)) return st->slots[h];
        h = (h + 1) & (st->nslots - 1);
    }
    return NULL;
}

void eng_st_free(eng_st_t *st) {
    if (!st) return;
    for (int i = 0; i < st->nfiles; i++) {
        st_file_t *f = &st->files[i];
        eng_st_tensors_free(f->t, f->nt);
        if (f->map) munmap(f->map, f->size);
        free(f->path);
    }
    free(st->files);
    free(st->slots);
    free(st);
}

/* ---- number formats ---------------------------------------------------------- */

float eng_bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t eng_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x40); /* quiet NaN */
    u += 0x7fffu + (u >> 16 & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float eng_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = h >> 10 & 0x1f, m = h & 0x3ff, u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else { /* subnormal */
            float f = ldexpf((float)m, -24);
            return s ? -f : f;
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | m << 13;
    } else {
        u = s | (e + 112) << 23 | m << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t eng_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t s = (uint16_t)(u >> 16 & 0x8000);
    float a = fabsf(f);
    if (isnan(f)) return s | 0x7e00;
    if (a >= 65520.0f) return s | 0x7c00;
    if (a < 6.103515625e-05f) { /* subnormal: units of 2^-24 */
        float q = nearbyintf(a * 16777216.0f);
        return s | (uint16_t)q;
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) */
    float q = nearbyintf(m * 2048.0f); /* 11 significant bits */
    if (q >= 2048.0f) {
        q /= 2;
        e++;
    }
    return s | (uint16_t)((e + 14) << 10) | ((uint16_t)q & 0x3ff);
}

float eng_f8e4m3_to_f32(uint8_t v) {
    int s = v >> 7, e = v >> 3 & 0xf, m = v & 7;
    float f;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) f = ldexpf((float)m, -9);       /* subnormal: m/8 * 2^-6 */
    else f = ldexpf(1.0f + m / 8.0f, e - 7);
    return s ? -f : f;
}

/* Round to nearest even, saturating at 448. */
uint8_t eng_f32_to_f8e4m3(float f) {
    uint8_t s = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (isnan(f)) return 0x7f;
    if (a >= 448.0f) return s | 0x7e;
    if (a < 0.015625f) { /* subnormal: units of 2^-9 */
        int q = (int)nearbyintf(a * 512.0f);
        return s | (uint8_t)q; /* q == 8 is the smallest normal, encoded the same way */
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) -> exponent e-1 */
    int q = (int)nearbyintf(m * 16.0f); /* 1.mmm scaled: 8..16 */
    if (q == 16) {
        q = 8;
        e++;
    }
    int be = e - 1 + 7;
    if (be > 15 || (be == 15 && (q - 8) == 7)) return s | 0x7e;
    return s | (uint8_t)(be << 3) | (uint8_t)(q - 8);
}
