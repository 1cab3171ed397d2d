/* gproj.c - the CROME adapter's fused gated projection, y = x + (SiLU(x.Wg) * (x.Wd)) . Wu (crome_gproj_*).
 *
 * Weights are repacked at init into column panels of PANEL values, zero-padded, so the register-blocked
 * micro-kernel streams one contiguous (K, PANEL) panel per TILE tokens with TILE x PANEL accumulators
 * in vector registers (GCC/clang vector extensions, sized to the target's vector unit). int8 weights
 * are widened in the kernel and their per-column scale is applied to the accumulated sums.
 */
#include "crome_core.h"
#include "vecmath.h"

#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Contraction to FMA is wanted here (the build is ISO C, where GCC and clang default it off). */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

/* NV vectors per panel row, TILE tokens: TILE * NV accumulators, sized to the register file. */
#if defined(__AVX512F__)
enum { NV = 2, TILE = 8 };
#elif defined(__AVX__)
enum { NV = 2, TILE = 4 };
#elif defined(__aarch64__)
enum { NV = 4, TILE = 4 };
#else
enum { NV = 2, TILE = 4 };
#endif
enum { VW = CROME_VW, PANEL = VW * NV, ALIGN = 64 };

struct crome_gproj {
    int32_t d, r, type;
    int64_t d_pad, r2_pad; /* d and 2r rounded up to PANEL */
    void *w1;              /* (2r_pad / PANEL) panels of (d, PANEL), float or int8 */
    void *wu;              /* (d_pad / PANEL) panels of (r, PANEL) */
    float *w1_scale;       /* (2r_pad,) I8 only, zero-padded */
    float *wu_scale;       /* (d_pad,)  I8 only */
};

crome_gproj_params crome_gproj_params_default(void) {
    crome_gproj_params p = {.d_model = 576, .rank = 64, .weight_type = CROME_F32};
    return p;
}

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

static void *alloc_aligned(size_t bytes) { return aligned_alloc(ALIGN, (size_t)round_up((int64_t)bytes, ALIGN)); }

/* (rows, cols) row-major -> panels of (rows, PANEL), zero-padded to cols_pad columns; elem bytes each. */
static void pack(const void *src, int64_t rows, int64_t cols, int64_t cols_pad, size_t elem, void *dst) {
    char *d = dst;
    const char *s = src;
    memset(dst, 0, (size_t)(rows * cols_pad) * elem);
    for (int64_t p = 0; p < cols; p += PANEL) {
        const int64_t n = cols - p < PANEL ? cols - p : PANEL;
        for (int64_t k = 0; k < rows; k++)
            memcpy(d + (size_t)(p * rows + k * PANEL) * elem, s + (size_t)(k * cols + p) * elem, (size_t)n * elem);
    }
}

void crome_gproj_free(crome_gproj *g) {
    if (!g) return;
    free(g->w1);
    free(g->wu);
    free(g->w1_scale);
    free(g->wu_scale);
    free(g);
}

crome_status crome_gproj_init(const crome_gproj_params *p, const crome_gproj_weights *w, crome_gproj **out) {
    if (!out) return CROME_ERR_NULL;
    *out = NULL;
    if (!p || !w || !w->w1 || !w->wu) return CROME_ERR_NULL;
    if (p->d_model < 1 || p->d_model > 65536 || p->rank < 1 || p->rank > 8192) return CROME_ERR_SHAPE;
    if (p->weight_type != CROME_F32 && p->weight_type != CROME_I8) return CROME_ERR_FORMAT;
    const int i8 = p->weight_type == CROME_I8;
    if (i8 && (!w->w1_scale || !w->wu_scale)) return CROME_ERR_NULL;

    crome_gproj *g = calloc(1, sizeof *g);
    if (!g) return CROME_ERR_NOMEM;
    g->d = p->d_model, g->r = p->rank, g->type = p->weight_type;
    g->d_pad = round_up(g->d, PANEL), g->r2_pad = round_up(2 * (int64_t)g->r, PANEL);
    const size_t elem = i8 ? sizeof(int8_t) : sizeof(float);
    g->w1 = alloc_aligned((size_t)(g->d * g->r2_pad) * elem);
    g->wu = alloc_aligned((size_t)(g->r * g->d_pad) * elem);
    if (i8) {
        g->w1_scale = calloc((size_t)g->r2_pad, sizeof(float));
        g->wu_scale = calloc((size_t)g->d_pad, sizeof(float));
    }
    if (!g->w1 || !g->wu || (i8 && (!g->w1_scale || !g->wu_scale))) {
        crome_gproj_free(g);
        return CROME_ERR_NOMEM;
    }
    pack(w->w1, g->d, 2 * (int64_t)g->r, g->r2_pad, elem, g->w1);
    pack(w->wu, g->r, g->d, g->d_pad, elem, g->wu);
    if (i8) {
        memcpy(g->w1_scale, w->w1_scale, 2 * (size_t)g->r * sizeof(float));
        memcpy(g->wu_scale, w->wu_scale, (size_t)g->d * sizeof(float));
    }
    *out = g;
    return CROME_OK;
}

/* One panel row of weights as NV float vectors. */
static inline void load_f32(const float *row, vf w[NV]) {
    for (int v = 0; v < NV; v++) memcpy(&w[v], row + v * VW, sizeof(vf));
}

static inline void load_i8(const int8_t *row, vf w[NV]) {
#if defined(__AVX512F__)
    for (int v = 0; v < NV; v++) {
        const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(row + v * VW))));
        memcpy(&w[v], &f, sizeof(vf));
    }
#elif defined(__AVX2__)
    for (int v = 0; v < NV; v++) {
        const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(row + v * VW))));
        memcpy(&w[v], &f, sizeof(vf));
    }
#else
    float f[PANEL];
    for (int j = 0; j < PANEL; j++) f[j] = (float)row[j];
    memcpy(w, f, sizeof f);
#endif
}

/* out(TILE, PANEL; row stride ldo) = a(TILE, K; row stride lda) . panel(K, PANEL) [* scale(PANEL)] */
static void kernel(const crome_gproj *g, const float *restrict a, int64_t lda, int which, int64_t p,
                   float *restrict out, int64_t ldo) {
    const int64_t K = which == 0 ? g->d : g->r;
    vf acc[TILE][NV];
    for (int t = 0; t < TILE; t++)
        for (int v = 0; v < NV; v++) acc[t][v] = (vf){0};
    if (g->type == CROME_F32) {
        const float *panel = (const float *)(which == 0 ? g->w1 : g->wu) + p * K;
        for (int64_t k = 0; k < K; k++) {
            vf w[NV];
            load_f32(panel + k * PANEL, w);
            for (int t = 0; t < TILE; t++)
                for (int v = 0; v < NV; v++) acc[t][v] += a[t * lda + k] * w[v];
        }
    } else {
        const int8_t *panel = (const int8_t *)(which == 0 ? g->w1 : g->wu) + p * K;
        for (int64_t k = 0; k < K; k++) {
            vf w[NV];
            load_i8(panel + k * PANEL, w);
            for (int t = 0; t < TILE; t++)
                for (int v = 0; v < NV; v++) acc[t][v] += a[t * lda + k] * w[v];
        }
        vf s[NV];
        load_f32((which == 0 ? g->w1_scale : g->wu_scale) + p, s);
        for (int t = 0; t < TILE; t++)
            for (int v = 0; v < NV; v++) acc[t][v] *= s[v];
    }
    for (int t = 0; t < TILE; t++) memcpy(out + t * ldo, acc[t], sizeof acc[t]);
}

crome_status crome_gproj_apply(const crome_gproj *g, const float *x, int64_t x_stride, float *y, int64_t y_stride,
                               int64_t n_tokens) {
    if (!g || !x || !y) return CROME_ERR_NULL;
    if (n_tokens < 1 || n_tokens > ((int64_t)1 << 31)) return CROME_ERR_SHAPE;
    if (x_stride < g->d || y_stride < g->d) return CROME_ERR_STRIDE;
    const int64_t d = g->d, r = g->r, d_pad = g->d_pad, r2_pad = g->r2_pad;
    /* workspace: xt (TILE, d) tile of x, zero rows past n_tokens; h (TILE, 2r_pad); z (TILE, r); o (TILE, d_pad) */
    float *xt = malloc(sizeof(float) * (size_t)(TILE * (d + r2_pad + r + d_pad)));
    if (!xt) return CROME_ERR_NOMEM;
    float *h = xt + TILE * d, *z = h + TILE * r2_pad, *o = z + TILE * r;

    for (int64_t n0 = 0; n0 < n_tokens; n0 += TILE) {
        const int nt = n_tokens - n0 < TILE ? (int)(n_tokens - n0) : TILE;
        for (int t = 0; t < TILE; t++) {
            if (t < nt) memcpy(xt + t * d, x + (n0 + t) * x_stride, sizeof(float) * (size_t)d);
            else memset(xt + t * d, 0, sizeof(float) * (size_t)d);
        }
        for (int64_t p = 0; p < r2_pad; p += PANEL) kernel(g, xt, d, 0, p, h + p, r2_pad); /* h = x.[Wd|Wg] */
        for (int t = 0; t < TILE; t++) { /* z = SiLU(h_g) * h_d   (TILE, r) */
            const float *hd = h + t * r2_pad, *hg = hd + r;
            for (int64_t j = 0; j < r; j++) z[t * r + j] = hg[j] / (1.0f + exp_f32(-hg[j])) * hd[j];
        }
        for (int64_t p = 0; p < d_pad; p += PANEL) kernel(g, z, r, 1, p, o + p, d_pad); /* o = z.Wu */
        for (int t = 0; t < nt; t++) { /* y = x + o; x was copied to xt, so y may be x */
            float *yr = y + (n0 + t) * y_stride;
            const float *xr = xt + t * d, *or = o + t * d_pad;
            for (int64_t j = 0; j < d; j++) yr[j] = xr[j] + or[j];
        }
    }
    free(xt);
    return CROME_OK;
}
