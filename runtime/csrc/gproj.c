/* gproj.c - the CROME adapter's fused gated projection, y = x + (SiLU(x.Wg) * (x.Wd)) . Wu (crome_gproj_*).
 *
 * Weights are repacked at init into column panels of PANEL floats, zero-padded, so the register-blocked
 * micro-kernel streams one contiguous (K, PANEL) panel per TILE tokens with TILE x PANEL accumulators
 * in vector registers (GCC/clang vector extensions, sized to the target's vector unit).
 */
#include "crome_core.h"
#include "vecmath.h"

#include <stdlib.h>
#include <string.h>

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
    int32_t d, r;
    int64_t d_pad, r2_pad; /* d and 2r rounded up to PANEL */
    float *w1;             /* (2r_pad / PANEL) panels of (d, PANEL) */
    float *wu;             /* (d_pad / PANEL) panels of (r, PANEL) */
};

crome_gproj_params crome_gproj_params_default(void) {
    crome_gproj_params p = {.d_model = 576, .rank = 64};
    return p;
}

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

static void *alloc_aligned(size_t bytes) { return aligned_alloc(ALIGN, (size_t)round_up((int64_t)bytes, ALIGN)); }

/* (rows, cols) row-major -> panels of (rows, PANEL), zero-padded to cols_pad columns. */
static void pack(const float *src, int64_t rows, int64_t cols, int64_t cols_pad, float *dst) {
    memset(dst, 0, sizeof(float) * (size_t)(rows * cols_pad));
    for (int64_t p = 0; p < cols; p += PANEL) {
        const int64_t n = cols - p < PANEL ? cols - p : PANEL;
        for (int64_t k = 0; k < rows; k++)
            memcpy(dst + p * rows + k * PANEL, src + k * cols + p, sizeof(float) * (size_t)n);
    }
}

void crome_gproj_free(crome_gproj *g) {
    if (!g) return;
    free(g->w1);
    free(g->wu);
    free(g);
}

crome_status crome_gproj_init(const crome_gproj_params *p, const crome_gproj_weights *w, crome_gproj **out) {
    if (!out) return CROME_ERR_NULL;
    *out = NULL;
    if (!p || !w || !w->w1 || !w->wu) return CROME_ERR_NULL;
    if (p->d_model < 1 || p->d_model > 65536 || p->rank < 1 || p->rank > 8192) return CROME_ERR_SHAPE;
    crome_gproj *g = calloc(1, sizeof *g);
    if (!g) return CROME_ERR_NOMEM;
    g->d = p->d_model, g->r = p->rank;
    g->d_pad = round_up(g->d, PANEL), g->r2_pad = round_up(2 * (int64_t)g->r, PANEL);
    g->w1 = alloc_aligned(sizeof(float) * (size_t)(g->d * g->r2_pad));
    g->wu = alloc_aligned(sizeof(float) * (size_t)(g->r * g->d_pad));
    if (!g->w1 || !g->wu) {
        crome_gproj_free(g);
        return CROME_ERR_NOMEM;
    }
    pack(w->w1, g->d, 2 * (int64_t)g->r, g->r2_pad, g->w1);
    pack(w->wu, g->r, g->d, g->d_pad, g->wu);
    *out = g;
    return CROME_OK;
}

/* out(TILE, PANEL; row stride ldo) = a(TILE, K; row stride lda) . panel(K, PANEL) */
static void kernel(const float *restrict a, int64_t lda, const float *restrict panel, int64_t K, float *restrict out,
                   int64_t ldo) {
    vf acc[TILE][NV];
    for (int t = 0; t < TILE; t++)
        for (int v = 0; v < NV; v++) acc[t][v] = (vf){0};
    for (int64_t k = 0; k < K; k++) {
        vf w[NV];
        for (int v = 0; v < NV; v++) memcpy(&w[v], panel + k * PANEL + v * VW, sizeof(vf));
        for (int t = 0; t < TILE; t++)
            for (int v = 0; v < NV; v++) acc[t][v] += a[t * lda + k] * w[v];
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
        for (int64_t p = 0; p < r2_pad; p += PANEL) kernel(xt, d, g->w1 + p * d, d, h + p, r2_pad); /* h = x.[Wd|Wg] */
        for (int t = 0; t < TILE; t++) { /* z = SiLU(h_g) * h_d   (TILE, r) */
            const float *hd = h + t * r2_pad, *hg = hd + r;
            for (int64_t j = 0; j < r; j++) z[t * r + j] = hg[j] / (1.0f + exp_f32(-hg[j])) * hd[j];
        }
        for (int64_t p = 0; p < d_pad; p += PANEL) kernel(z, r, g->wu + p * r, r, o + p, d_pad); /* o = z.Wu */
        for (int t = 0; t < nt; t++) { /* y = x + o; x was copied to xt, so y may be x */
            float *yr = y + (n0 + t) * y_stride;
            const float *xr = xt + t * d, *or = o + t * d_pad;
            for (int64_t j = 0; j < d; j++) yr[j] = xr[j] + or[j];
        }
    }
    free(xt);
    return CROME_OK;
}
