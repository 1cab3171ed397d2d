/* llm.c - one LLaMA-family decode step on GGUF-block weights (crome_llm_*), semantics in crome_core.h.
 *
 * A step is one pool job: every thread walks the layers, computing its share of each matrix (rows, or
 * whole heads for q/k/v so that it can apply RoPE to what it produced) with barriers where the next
 * stage reads everything the last one wrote (5 per layer). RMSNorm and a matrix's input as the kernels read it
 * (block sums the split-form kernels share across rows, and for AVX2 a prescaled copy: crome_qpack_input) are cheap
 * (d values) and are computed by every thread into its own scratch instead of paying a barrier. The weights are a
 * copy made at init in the layout the kernel reads (crome_qpack: AVX2 repacks, others copy). The KV cache is float32
 * [layer][kv_head][position][head_dim], owned by the handle. Not here: prefill (the caller's ONNX decoder
 * fills the cache through crome_llm_set_kv), sampling (sampler.c), the kernels (qblock.c).
 */
#include "crome_core.h"
#include "pool.h"
#include "qblock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

enum { ALIGN = 64, ROW_GRAIN = 16, MAX_LAYERS = 1024 };
static const int64_t MAX_CONTEXT = (int64_t)1 << 24;

typedef struct qmat {
    uint8_t *data;
    crome_qrows_fn kernel;
    int64_t rows, row_bytes, nb;
} qmat;

typedef struct layer {
    qmat q, k, v, o, gate, up, down;
    float *attn_norm, *ffn_norm;
} layer;

struct crome_llm {
    crome_llm_params p;
    crome_pool *pool;
    layer *layers;
    float *final_norm;
    qmat head;
    int64_t capacity, length;
    float *k_cache, *v_cache; /* (layers, kv, capacity, hd) each */
    float *inv_freq;          /* (hd / 2) */
    float *rope_cos, *rope_sin; /* (hd / 2): this step's angles */
    float *h, *q, *att, *act, *tmp; /* (d), (heads * hd), (heads * hd), (d_ff), (max(d, d_ff) * 2) */
    float *scratch;           /* per thread: xn (d) + xsum (xn, att or act prepared: crome_qpack_input) + scores */
    int64_t scratch_stride;
    /* the step in flight */
    const float *x;
    float *logits;
};

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* floats of a thread's xsum scratch: the widest input (d, heads * hd or d_ff) as the kernels read it */
static int64_t sums_room(const crome_llm_params *p) {
    int64_t widest = p->d_model > p->d_ff ? p->d_model : p->d_ff;
    if ((int64_t)p->n_heads * p->head_dim > widest) widest = (int64_t)p->n_heads * p->head_dim;
    return round_up(crome_qpack_input_floats(p->isa, widest / CROME_QK), ALIGN / 4);
}

static void *alloc_aligned(size_t bytes) {
    return aligned_alloc(ALIGN, (size_t)round_up((int64_t)(bytes ? bytes : 1), ALIGN));
}

crome_llm_params crome_llm_params_default(void) {
    crome_llm_params p = {.n_layers = 30, .d_model = 576, .n_heads = 9, .n_kv_heads = 3, .head_dim = 64,
                          .d_ff = 1536, .vocab = 49152, .rms_eps = 1e-5f, .rope_theta = 100000.0f,
                          .n_threads = 1, .isa = CROME_ISA_AUTO};
    return p;
}

static crome_status check_params(const crome_llm_params *p) {
    if (p->n_layers < 1 || p->n_layers > MAX_LAYERS || p->d_model < CROME_QK || p->d_model > (1 << 20) ||
        p->d_model % CROME_QK || p->n_heads < 1 || p->n_kv_heads < 1 || p->n_heads % p->n_kv_heads ||
        p->head_dim < 2 || p->head_dim % 2 || p->head_dim > 4096 || p->n_heads > 4096 ||
        ((int64_t)p->n_heads * p->head_dim) % CROME_QK || p->d_ff < CROME_QK || p->d_ff > (1 << 20) ||
        p->d_ff % CROME_QK || p->vocab < 1 || p->vocab > (1 << 24))
        return CROME_ERR_SHAPE;
    if (!(p->rms_eps > 0) || !(p->rope_theta > 0) || !isfinite(p->rms_eps) || !isfinite(p->rope_theta) ||
        p->n_threads < 1 || p->n_threads > 256 || !crome_isa_supported(p->isa))
        return CROME_ERR_PARAM;
    return CROME_OK;
}

static crome_status copy_qmat(const crome_qtensor *t, int64_t rows, int64_t cols, int32_t isa, qmat *out) {
    if (!t->data) return CROME_ERR_NULL;
    const int64_t row_bytes = crome_qpack_row_bytes(isa, t->qtype, cols);
    if (t->qtype != CROME_QTYPE_Q4_1 && t->qtype != CROME_QTYPE_Q8_0) return CROME_ERR_PARAM;
    if (row_bytes < 0) return CROME_ERR_SHAPE;
    out->kernel = crome_qpack_kernel(isa, t->qtype);
    if (!out->kernel) return CROME_ERR_PARAM;
    out->data = alloc_aligned((size_t)(rows * row_bytes));
    if (!out->data) return CROME_ERR_NOMEM;
    crome_qpack(isa, t->qtype, t->data, rows, cols, out->data); /* the layout its kernel reads (qblock.h) */
    out->rows = rows, out->row_bytes = row_bytes, out->nb = cols / CROME_QK;
    return CROME_OK;
}

static float *copy_floats(const float *src, int64_t n) {
    float *dst = alloc_aligned(sizeof(float) * (size_t)n);
    if (dst) memcpy(dst, src, sizeof(float) * (size_t)n);
    return dst;
}

void crome_llm_free(crome_llm *m) {
    if (!m) return;
    crome_pool_free(m->pool);
    if (m->layers) {
        for (int i = 0; i < m->p.n_layers; i++) {
            layer *L = &m->layers[i];
            qmat *mats[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
            for (unsigned j = 0; j < sizeof mats / sizeof mats[0]; j++) free(mats[j]->data);
            free(L->attn_norm);
            free(L->ffn_norm);
        }
        free(m->layers);
    }
    free(m->final_norm);
    free(m->head.data);
    free(m->k_cache);
    free(m->v_cache);
    free(m->inv_freq); /* owns the step buffers' block (alloc_step_buffers) */
    free(m->scratch);
    free(m);
}

static crome_status alloc_step_buffers(crome_llm *m) {
    const crome_llm_params *p = &m->p;
    const int64_t d = p->d_model, qd = (int64_t)p->n_heads * p->head_dim, ff = p->d_ff, half = p->head_dim / 2;
    const int64_t big = d > ff ? d : ff;
    /* one block: inv_freq, cos, sin (hd/2 each); h (d); q, att (qd each); act (ff); tmp (2 * big) */
    const int64_t sizes[] = {half, half, half, d, qd, qd, ff, 2 * big};
    int64_t total = 0;
    for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += round_up(sizes[i], ALIGN / 4);
    float *block = alloc_aligned(sizeof(float) * (size_t)total);
    if (!block) return CROME_ERR_NOMEM;
    memset(block, 0, sizeof(float) * (size_t)total);
    float **dst[] = {&m->inv_freq, &m->rope_cos, &m->rope_sin, &m->h, &m->q, &m->att, &m->act, &m->tmp};
    for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *dst[i] = block;
        block += round_up(sizes[i], ALIGN / 4);
    }
    for (int64_t i = 0; i < half; i++)
        m->inv_freq[i] = 1.0f / powf(p->rope_theta, (float)(2 * i) / (float)p->head_dim); /* as HF, float32 */
    return CROME_OK;
}

crome_status crome_llm_init(const crome_llm_params *params, const crome_llm_weights *w, crome_llm **out) {
    if (!out) return CROME_ERR_NULL;
    *out = NULL;
    if (!params || !w || !w->layers || !w->final_norm) return CROME_ERR_NULL;
    crome_status s = check_params(params);
    if (s != CROME_OK) return s;
    crome_llm *m = calloc(1, sizeof *m);
    if (!m) return CROME_ERR_NOMEM;
    m->p = *params;
    const crome_llm_params *p = &m->p;
    const int64_t d = p->d_model, qd = (int64_t)p->n_heads * p->head_dim, kvd = (int64_t)p->n_kv_heads * p->head_dim;
    m->layers = calloc((size_t)p->n_layers, sizeof *m->layers);
    if (!m->layers) {
        crome_llm_free(m);
        return CROME_ERR_NOMEM;
    }
    for (int i = 0; i < p->n_layers && s == CROME_OK; i++) {
        const crome_llm_layer *src = &w->layers[i];
        layer *L = &m->layers[i];
        if (!src->attn_norm || !src->ffn_norm) s = CROME_ERR_NULL;
        if (s == CROME_OK) s = copy_qmat(&src->q, qd, d, p->isa, &L->q);
        if (s == CROME_OK) s = copy_qmat(&src->k, kvd, d, p->isa, &L->k);
        if (s == CROME_OK) s = copy_qmat(&src->v, kvd, d, p->isa, &L->v);
        if (s == CROME_OK) s = copy_qmat(&src->o, d, qd, p->isa, &L->o);
        if (s == CROME_OK) s = copy_qmat(&src->gate, p->d_ff, d, p->isa, &L->gate);
        if (s == CROME_OK) s = copy_qmat(&src->up, p->d_ff, d, p->isa, &L->up);
        if (s == CROME_OK) s = copy_qmat(&src->down, d, p->d_ff, p->isa, &L->down);
        if (s == CROME_OK && (!(L->attn_norm = copy_floats(src->attn_norm, d)) ||
                              !(L->ffn_norm = copy_floats(src->ffn_norm, d))))
            s = CROME_ERR_NOMEM;
    }
    if (s == CROME_OK) s = copy_qmat(&w->head, p->vocab, d, p->isa, &m->head);
    if (s == CROME_OK && !(m->final_norm = copy_floats(w->final_norm, d))) s = CROME_ERR_NOMEM;
    if (s == CROME_OK) s = alloc_step_buffers(m);
    if (s == CROME_OK) s = crome_llm_reserve(m, 1);
    if (s == CROME_OK) s = crome_pool_init(p->n_threads, &m->pool);
    if (s != CROME_OK) {
        crome_llm_free(m);
        return s;
    }
    *out = m;
    return CROME_OK;
}

crome_status crome_llm_reserve(crome_llm *m, int64_t n_tokens) {
    if (!m) return CROME_ERR_NULL;
    if (n_tokens < 1 || n_tokens > MAX_CONTEXT) return CROME_ERR_SHAPE;
    if (n_tokens <= m->capacity) return CROME_OK;
    const crome_llm_params *p = &m->p;
    const int64_t cap = n_tokens, hd = p->head_dim, slots = (int64_t)p->n_layers * p->n_kv_heads;
    const int64_t stride = p->d_model + sums_room(p) + cap; /* per-thread scratch: xn, xsum, scores */
    float *k = alloc_aligned(sizeof(float) * (size_t)(slots * cap * hd));
    float *v = alloc_aligned(sizeof(float) * (size_t)(slots * cap * hd));
    float *scratch = alloc_aligned(sizeof(float) * (size_t)(round_up(stride, ALIGN / 4) * p->n_threads));
    if (!k || !v || !scratch) {
        free(k);
        free(v);
        free(scratch);
        return CROME_ERR_NOMEM;
    }
    for (int64_t s = 0; s < slots && m->length; s++) {
        memcpy(k + s * cap * hd, m->k_cache + s * m->capacity * hd, sizeof(float) * (size_t)(m->length * hd));
        memcpy(v + s * cap * hd, m->v_cache + s * m->capacity * hd, sizeof(float) * (size_t)(m->length * hd));
    }
    free(m->k_cache);
    free(m->v_cache);
    free(m->scratch);
    m->k_cache = k, m->v_cache = v, m->scratch = scratch;
    m->scratch_stride = round_up(stride, ALIGN / 4);
    m->capacity = cap;
    return CROME_OK;
}

int64_t crome_llm_capacity(const crome_llm *m) { return m ? m->capacity : 0; }
int64_t crome_llm_length(const crome_llm *m) { return m ? m->length : 0; }

crome_status crome_llm_set_length(crome_llm *m, int64_t n_tokens) {
    if (!m) return CROME_ERR_NULL;
    if (n_tokens < 0 || n_tokens > m->capacity) return CROME_ERR_SHAPE;
    m->length = n_tokens;
    return CROME_OK;
}

crome_status crome_llm_set_kv(crome_llm *m, int32_t layer_index, const float *k, const float *v, int64_t n_tokens) {
    if (!m || !k || !v) return CROME_ERR_NULL;
    if (layer_index < 0 || layer_index >= m->p.n_layers || n_tokens < 0 || n_tokens > m->capacity)
        return CROME_ERR_SHAPE;
    const int64_t hd = m->p.head_dim, cap = m->capacity;
    for (int64_t h = 0; h < m->p.n_kv_heads; h++) {
        const int64_t slot = (int64_t)layer_index * m->p.n_kv_heads + h;
        memcpy(m->k_cache + slot * cap * hd, k + h * n_tokens * hd, sizeof(float) * (size_t)(n_tokens * hd));
        memcpy(m->v_cache + slot * cap * hd, v + h * n_tokens * hd, sizeof(float) * (size_t)(n_tokens * hd));
    }
    return CROME_OK;
}

/* ---- the step ------------------------------------------------------------------------------------- */

static void rmsnorm(const float *x, const float *w, float *out, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * scale);
}

/* Σ a_i b_i in eight interleaved partial sums (the compiler keeps them in one vector register): a query-key dot
 * as one dependent FMA chain cost ~4 cycles a term (3% of a step's CPU time at 32-96 tokens of context on Zen 4,
 * growing with the context). */
static float dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    for (; i < n; i++) acc[0] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* rotate-half RoPE on one head: (x_i, x_{i+half}) -> (x_i c - x_{i+half} s, x_{i+half} c + x_i s) */
static void rope(float *x, const float *c, const float *s, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i] + a * s[i];
    }
}

/* y[0 .. r1 - r0) = rows [r0, r1) of w times x (r0 even: qblock.h); xsum: x as crome_qpack_input prepared it */
static void rows(const qmat *w, int64_t r0, int64_t r1, const float *x, const float *xsum, float *y) {
    if (r1 > r0) w->kernel(w->data + r0 * w->row_bytes, w->row_bytes, w->nb, x, xsum, y, r1 - r0);
}

static void step_part(void *ctx, int t, int nt) {
    crome_llm *m = ctx;
    const crome_llm_params *p = &m->p;
    const int64_t d = p->d_model, hd = p->head_dim, half = hd / 2, H = p->n_heads, KV = p->n_kv_heads;
    const int64_t group = H / KV, pos = m->length, cap = m->capacity, ff = p->d_ff;
    float *xn = m->scratch + t * m->scratch_stride, *xsum = xn + d, *scores = xsum + sums_room(p);
    float *h = m->h, *tmp = m->tmp;
    const float scale = 1.0f / sqrtf((float)hd);
    int64_t a, b;
    for (int l = 0; l < p->n_layers; l++) {
        const layer *L = &m->layers[l];
        float *kc = m->k_cache + (int64_t)l * KV * cap * hd, *vc = m->v_cache + (int64_t)l * KV * cap * hd;
        rmsnorm(h, L->attn_norm, xn, d, p->rms_eps);
        crome_qpack_input(p->isa, xn, d / CROME_QK, xsum);
        crome_split(H + 2 * KV, 1, t, nt, &a, &b); /* whole heads of q, then k, then v */
        for (int64_t u = a; u < b; u++) {
            if (u < H) {
                rows(&L->q, u * hd, (u + 1) * hd, xn, xsum, m->q + u * hd);
                rope(m->q + u * hd, m->rope_cos, m->rope_sin, half);
            } else if (u < H + KV) {
                float *dst = kc + ((u - H) * cap + pos) * hd;
                rows(&L->k, (u - H) * hd, (u - H + 1) * hd, xn, xsum, dst);
                rope(dst, m->rope_cos, m->rope_sin, half);
            } else {
                float *dst = vc + ((u - H - KV) * cap + pos) * hd;
                rows(&L->v, (u - H - KV) * hd, (u - H - KV + 1) * hd, xn, xsum, dst);
            }
        }
        crome_pool_barrier(m->pool);
        crome_split(H, 1, t, nt, &a, &b); /* attention, by query head */
        for (int64_t qh = a; qh < b; qh++) {
            const float *qv = m->q + qh * hd, *K = kc + (qh / group) * cap * hd, *V = vc + (qh / group) * cap * hd;
            float mx = -INFINITY;
            for (int64_t j = 0; j <= pos; j++) {
                scores[j] = dot(qv, K + j * hd, hd) * scale;
                mx = scores[j] > mx ? scores[j] : mx;
            }
            float sum = 0.0f;
            for (int64_t j = 0; j <= pos; j++) sum += (scores[j] = expf(scores[j] - mx));
            const float inv = 1.0f / sum;
            float *o = m->att + qh * hd;
            for (int64_t i = 0; i < hd; i++) o[i] = 0.0f;
            for (int64_t j = 0; j <= pos; j++) {
                const float pj = scores[j] * inv;
                for (int64_t i = 0; i < hd; i++) o[i] += pj * V[j * hd + i];
            }
        }
        crome_pool_barrier(m->pool);
        crome_split(d, ROW_GRAIN, t, nt, &a, &b); /* h += att . Wo^T */
        if (b > a) crome_qpack_input(p->isa, m->att, H * hd / CROME_QK, xsum); /* each thread its own: no barrier */
        rows(&L->o, a, b, m->att, xsum, tmp + a);
        for (int64_t r = a; r < b; r++) h[r] += tmp[r];
        crome_pool_barrier(m->pool);
        rmsnorm(h, L->ffn_norm, xn, d, p->rms_eps);
        crome_qpack_input(p->isa, xn, d / CROME_QK, xsum);
        crome_split(ff, ROW_GRAIN, t, nt, &a, &b); /* act = SiLU(gate) * up */
        rows(&L->gate, a, b, xn, xsum, tmp + a);
        rows(&L->up, a, b, xn, xsum, tmp + ff + a);
        for (int64_t r = a; r < b; r++) {
            const float g = tmp[r];
            m->act[r] = g / (1.0f + expf(-g)) * tmp[ff + r];
        }
        crome_pool_barrier(m->pool);
        crome_split(d, ROW_GRAIN, t, nt, &a, &b); /* h += act . Wd^T */
        if (b > a) crome_qpack_input(p->isa, m->act, ff / CROME_QK, xsum);
        rows(&L->down, a, b, m->act, xsum, tmp + a);
        for (int64_t r = a; r < b; r++) h[r] += tmp[r];
        crome_pool_barrier(m->pool);
    }
    rmsnorm(h, m->final_norm, xn, d, p->rms_eps);
    crome_qpack_input(p->isa, xn, d / CROME_QK, xsum);
    crome_split(p->vocab, ROW_GRAIN, t, nt, &a, &b);
    rows(&m->head, a, b, xn, xsum, m->logits + a);
}

crome_status crome_llm_step(crome_llm *m, const float *x, float *logits) {
    if (!m || !x || !logits) return CROME_ERR_NULL;
    if (m->length >= m->capacity) return CROME_ERR_SHAPE;
    const int64_t half = m->p.head_dim / 2;
    for (int64_t i = 0; i < half; i++) { /* angle in float32 as HF computes it, cos/sin rounded once */
        const float angle = (float)m->length * m->inv_freq[i];
        m->rope_cos[i] = (float)cos((double)angle);
        m->rope_sin[i] = (float)sin((double)angle);
    }
    memcpy(m->h, x, sizeof(float) * (size_t)m->p.d_model);
    m->logits = logits;
    crome_pool_run(m->pool, step_part, m);
    m->length++;
    return CROME_OK;
}
