/* test_qdecode.c - C-level tests of the block-quantised kernels, the thread pool and the decode step
 * (crome_qmatvec, crome_pool_*, crome_llm_*, crome_memread): results against a double-precision dequantise-then-dot
 * reference on odd sizes, every ISA path this CPU runs, thread counts, and every error return.
 *
 * Built by tests/test_ccore_qdecode_c.py under -fsanitize=address,undefined with the runtime/csrc sources;
 * buffers are allocated at their exact size, so a read past a row or a cache is a sanitizer error. The
 * parity of the decode step with PyTorch is in tests/test_cdecoder.py.
 */
#include "crome_core.h"
#include "qblock.h" /* the decode step's repacked copy (internal) */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_SEED 777u
#include "check.h"

/* A random normal fp16 in [2^-10, 2^-6) with a random sign (scales d and minima m). */
static uint16_t rnd_half(int allow_negative) {
    const uint16_t exp = (uint16_t)(5 + rnd() % 4), mant = (uint16_t)(rnd() & 0x3ff);
    const uint16_t sign = allow_negative && (rnd() & 1) ? 0x8000 : 0;
    return (uint16_t)(sign | (exp << 10) | mant);
}

static double half_value(uint16_t h) { /* normal halves only (what rnd_half makes) */
    const int exp = (h >> 10) & 0x1f;
    const double v = ldexp(1.0 + (h & 0x3ff) / 1024.0, exp - 15);
    return h & 0x8000 ? -v : v;
}

static int offset_minima; /* set: Q4_1 minima |m| in [2^-3, 2), far above d * 15 <= 2^-2 (weights m + small) */

/* rows x cols random blocks of `qtype`, written with exact sizes */
static uint8_t *random_matrix(int32_t qtype, int64_t rows, int64_t cols) {
    const int64_t row_bytes = crome_qrow_bytes(qtype, cols), bpb = qtype == CROME_QTYPE_Q8_0 ? 34 : 20;
    uint8_t *w = malloc((size_t)(rows * row_bytes));
    for (int64_t i = 0; i < rows * row_bytes; i += bpb) {
        for (int64_t j = 0; j < bpb; j++) w[i + j] = (uint8_t)rnd();
        const uint16_t d = rnd_half(0), m = (uint16_t)(rnd_half(1) + (offset_minima ? 7 << 10 : 0));
        memcpy(w + i, &d, 2);
        if (qtype == CROME_QTYPE_Q4_1) memcpy(w + i + 2, &m, 2);
    }
    return w;
}

static double weight(int32_t qtype, const uint8_t *w, int64_t row_bytes, int64_t r, int64_t c) {
    const int64_t bpb = qtype == CROME_QTYPE_Q8_0 ? 34 : 20;
    const uint8_t *blk = w + r * row_bytes + (c / 32) * bpb;
    uint16_t d, m;
    memcpy(&d, blk, 2);
    const int j = (int)(c % 32);
    if (qtype == CROME_QTYPE_Q8_0) return half_value(d) * (int8_t)blk[2 + j];
    memcpy(&m, blk + 2, 2);
    const int q = j < 16 ? blk[4 + j] & 15 : blk[4 + j - 16] >> 4;
    return half_value(d) * q + half_value(m);
}

/* ref[r] = the row's exact product with x (in double), mag[r] = the sum of its terms' magnitudes (the error scale) */
static void exact_products(int32_t qtype, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t cols,
                           const float *x, double *ref, double *mag) {
    for (int64_t r = 0; r < rows; r++) {
        ref[r] = mag[r] = 0;
        for (int64_t c = 0; c < cols; c++) {
            const double wv = weight(qtype, w, row_bytes, r, c);
            ref[r] += wv * x[c];
            mag[r] += fabs(wv * x[c]);
        }
    }
}

static const int32_t ISAS[] = {CROME_ISA_SCALAR, CROME_ISA_AVX2, CROME_ISA_AVX512, CROME_ISA_NEON, CROME_ISA_AUTO};
enum { N_ISAS = sizeof ISAS / sizeof ISAS[0] };

static void test_qmatvec_case(int32_t qtype, int64_t rows, int64_t cols, crome_pool *pool) {
    uint8_t *w = random_matrix(qtype, rows, cols);
    float *x = malloc(sizeof(float) * (size_t)cols), *y = malloc(sizeof(float) * (size_t)rows);
    double *ref = malloc(sizeof(double) * (size_t)rows), *mag = malloc(sizeof(double) * (size_t)rows);
    for (int64_t c = 0; c < cols; c++) x[c] = rndf();
    const int64_t row_bytes = crome_qrow_bytes(qtype, cols);
    exact_products(qtype, w, row_bytes, rows, cols, x, ref, mag);
    for (int i = 0; i < N_ISAS; i++) {
        if (!crome_isa_supported(ISAS[i])) {
            CHECK(crome_qmatvec(pool, ISAS[i], qtype, w, rows, cols, x, y) == CROME_ERR_PARAM);
            continue;
        }
        CHECK(crome_qmatvec(pool, ISAS[i], qtype, w, rows, cols, x, y) == CROME_OK);
        for (int64_t r = 0; r < rows; r++) {
            const double err = fabs(y[r] - ref[r]), bound = 1e-6 * mag[r] + 1e-30; /* float32 summation */
            if (!(err <= bound)) {
                fprintf(stderr, "qmatvec isa %d qtype %d %lldx%lld row %lld: %g vs %g\n", ISAS[i], qtype,
                        (long long)rows, (long long)cols, (long long)r, y[r], ref[r]);
                failures++;
                break;
            }
        }
    }
    free(w), free(x), free(y), free(ref), free(mag);
}

/* The decode step's copy (crome_qpack) read by its kernel, for every ISA: the whole matrix and calls that start at
 * an even row (as the step splits rows), odd row counts, odd block counts and partial chunks of 8 blocks. */
static void test_qpack_case(int32_t qtype, int64_t rows, int64_t cols) {
    uint8_t *w = random_matrix(qtype, rows, cols);
    const int64_t nb = cols / 32, row_bytes = crome_qrow_bytes(qtype, cols);
    float *x = malloc(sizeof(float) * (size_t)cols), *y = malloc(sizeof(float) * (size_t)rows);
    double *ref = malloc(sizeof(double) * (size_t)rows), *mag = malloc(sizeof(double) * (size_t)rows);
    for (int64_t c = 0; c < cols; c++) x[c] = rndf();
    exact_products(qtype, w, row_bytes, rows, cols, x, ref, mag);
    for (int i = 0; i < N_ISAS; i++) {
        if (!crome_isa_supported(ISAS[i])) continue;
        const int64_t rb = crome_qpack_row_bytes(ISAS[i], qtype, cols);
        CHECK(rb >= row_bytes && rb <= row_bytes + row_bytes / 5 + 32); /* ~10 % more than the GGUF rows, + padding */
        uint8_t *packed = malloc((size_t)(rows * rb));
        float *in = malloc(sizeof(float) * (size_t)crome_qpack_input_floats(ISAS[i], nb));
        crome_qpack(ISAS[i], qtype, w, rows, cols, packed);
        crome_qpack_input(ISAS[i], x, nb, in);
        crome_qrows_fn kernel = crome_qpack_kernel(ISAS[i], qtype);
        CHECK(kernel != NULL);
        for (int64_t split = 0; split < rows && kernel; split += 2) { /* rows [0, split) then [split, rows) */
            for (int64_t r = 0; r < rows; r++) y[r] = NAN;
            if (split) kernel(packed, rb, nb, x, in, y, split);
            kernel(packed + split * rb, rb, nb, x, in, y + split, rows - split);
            for (int64_t r = 0; r < rows; r++) {
                const double err = fabs(y[r] - ref[r]), bound = 1e-6 * mag[r] + 1e-30;
                if (!(err <= bound)) {
                    fprintf(stderr, "qpack isa %d qtype %d %lldx%lld split %lld row %lld: %g vs %g\n", ISAS[i], qtype,
                            (long long)rows, (long long)cols, (long long)split, (long long)r, y[r], ref[r]);
                    failures++;
                    split = rows;
                    break;
                }
            }
        }
        free(packed), free(in);
    }
    free(w), free(x), free(y), free(ref), free(mag);
}

static void test_qpack(void) {
    /* nb = 1, 3 (odd, one partial chunk), 8, 9 (odd), 18 (chunks 8 + 8 + 2: the smol gate), 48 */
    const int64_t shapes[][2] = {{1, 32}, {2, 96}, {7, 256}, {5, 288}, {37, 576}, {6, 1536}, {3, 32}};
    for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        test_qpack_case(CROME_QTYPE_Q4_1, shapes[s][0], shapes[s][1]);
        test_qpack_case(CROME_QTYPE_Q8_0, shapes[s][0], shapes[s][1]);
    }
    offset_minima = 1;
    test_qpack_case(CROME_QTYPE_Q4_1, 9, 288);
    test_qpack_case(CROME_QTYPE_Q4_1, 4, 1536);
    offset_minima = 0;
    /* AVX2's Q4_1 copy: float32 d (+2 bytes a block), rows padded to 16 bytes; others: the GGUF rows */
    CHECK(crome_qpack_row_bytes(CROME_ISA_AVX2, CROME_QTYPE_Q4_1, 576) == 400);
    CHECK(crome_qpack_row_bytes(CROME_ISA_AVX2, CROME_QTYPE_Q4_1, 1536) == 1056);
    CHECK(crome_qpack_row_bytes(CROME_ISA_AVX2, CROME_QTYPE_Q4_1, 96) == 96); /* 3 blocks: 66 + 16, padded */
    CHECK(crome_qpack_row_bytes(CROME_ISA_AVX2, CROME_QTYPE_Q8_0, 576) == 612);
    CHECK(crome_qpack_row_bytes(CROME_ISA_SCALAR, CROME_QTYPE_Q4_1, 576) == 360);
    CHECK(crome_qpack_row_bytes(CROME_ISA_AVX2, CROME_QTYPE_Q4_1, 48) == -1);
    CHECK(crome_qpack_input_floats(CROME_ISA_SCALAR, 18) == 18 && crome_qpack_input_floats(CROME_ISA_AVX2, 18) == 600);
}

static void test_qmatvec(void) {
    const int64_t shapes[][2] = {{1, 32}, {37, 224}, {3, 64}, {17, 96}, {129, 576}, {5, 1536}};
    const int32_t threads[] = {1, 2, 3};
    for (int t = 0; t < 3; t++) {
        crome_pool *pool = NULL;
        CHECK(crome_pool_init(threads[t], &pool) == CROME_OK && pool);
        CHECK(crome_pool_threads(pool) == threads[t]);
        for (unsigned s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            test_qmatvec_case(CROME_QTYPE_Q4_1, shapes[s][0], shapes[s][1], pool);
            test_qmatvec_case(CROME_QTYPE_Q8_0, shapes[s][0], shapes[s][1], pool);
        }
        crome_pool_free(pool);
    }
    test_qmatvec_case(CROME_QTYPE_Q4_1, 7, 64, NULL); /* no pool: the calling thread */
    offset_minima = 1; /* the split form (m · Σ x added to d · Σ q x) on blocks whose weights sit far from 0 */
    test_qmatvec_case(CROME_QTYPE_Q4_1, 37, 224, NULL);
    test_qmatvec_case(CROME_QTYPE_Q4_1, 5, 1536, NULL);
    offset_minima = 0;

    uint8_t w[34] = {0};
    float x[32] = {0}, y[1];
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_Q8_0, NULL, 1, 32, x, y) == CROME_ERR_NULL);
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_Q8_0, w, 1, 32, NULL, y) == CROME_ERR_NULL);
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_Q8_0, w, 1, 32, x, NULL) == CROME_ERR_NULL);
    CHECK(crome_qmatvec(NULL, 0, 7, w, 1, 32, x, y) == CROME_ERR_PARAM);
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_F32, w, 1, 32, x, y) == CROME_ERR_PARAM);
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_Q8_0, w, 1, 33, x, y) == CROME_ERR_SHAPE);
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_Q8_0, w, 0, 32, x, y) == CROME_ERR_SHAPE);
    CHECK(crome_qmatvec(NULL, 0, CROME_QTYPE_Q8_0, w, 1, 0, x, y) == CROME_ERR_SHAPE);
    CHECK(crome_qmatvec(NULL, 99, CROME_QTYPE_Q8_0, w, 1, 32, x, y) == CROME_ERR_PARAM);
    CHECK(crome_qrow_bytes(CROME_QTYPE_Q4_1, 64) == 40 && crome_qrow_bytes(CROME_QTYPE_Q8_0, 64) == 68);
    CHECK(crome_qrow_bytes(CROME_QTYPE_Q4_1, 48) == -1 && crome_qrow_bytes(5, 64) == -1);
    crome_pool *pool = (crome_pool *)1;
    CHECK(crome_pool_init(0, &pool) == CROME_ERR_PARAM && pool == NULL);
    CHECK(crome_pool_init(257, &pool) == CROME_ERR_PARAM);
    CHECK(crome_pool_init(2, NULL) == CROME_ERR_NULL);
    crome_pool_free(NULL);
    CHECK(crome_isa_supported(CROME_ISA_SCALAR) && crome_isa_supported(crome_isa_best()) && !crome_isa_supported(42));
}

/* ---- decode step ----------------------------------------------------------------------------------- */

typedef struct tiny_model {
    crome_llm_params p;
    crome_llm_layer layers[2];
    crome_llm_weights w;
    uint8_t *mats[2 * 7 + 1];
    float *norms[2 * 2 + 1];
} tiny_model;

static void tiny_init(tiny_model *t, int32_t threads, int32_t isa) {
    memset(t, 0, sizeof *t);
    const uint32_t saved = rng_state;
    rng_state = 4242u; /* the same weights on every call */
    crome_llm_params p = {.n_layers = 2, .d_model = 64, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .d_ff = 96,
                          .vocab = 37, .rms_eps = 1e-5f, .rope_theta = 10000.0f, .n_threads = threads, .isa = isa};
    t->p = p;
    const int64_t d = 64, qd = 64, kvd = 32, ff = 96;
    int mi = 0, ni = 0;
    for (int l = 0; l < 2; l++) {
        crome_llm_layer *L = &t->layers[l];
        const int64_t shape[7][2] = {{qd, d}, {kvd, d}, {kvd, d}, {d, qd}, {ff, d}, {ff, d}, {d, ff}};
        crome_qtensor *dst[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (int j = 0; j < 7; j++) {
            const int32_t qtype = (j + l) % 2 ? CROME_QTYPE_Q8_0 : CROME_QTYPE_Q4_1; /* both formats in one model */
            t->mats[mi] = random_matrix(qtype, shape[j][0], shape[j][1]);
            dst[j]->data = t->mats[mi++], dst[j]->qtype = qtype;
        }
        for (int j = 0; j < 2; j++) {
            float *n = t->norms[ni++] = malloc(sizeof(float) * (size_t)d);
            for (int64_t i = 0; i < d; i++) n[i] = 1.0f + 0.1f * rndf();
        }
        L->attn_norm = t->norms[ni - 2], L->ffn_norm = t->norms[ni - 1];
    }
    t->mats[mi] = random_matrix(CROME_QTYPE_Q8_0, 37, d);
    float *fn = t->norms[ni] = malloc(sizeof(float) * (size_t)d);
    for (int64_t i = 0; i < d; i++) fn[i] = 1.0f;
    t->w.layers = t->layers, t->w.final_norm = fn;
    t->w.head.data = t->mats[mi], t->w.head.qtype = CROME_QTYPE_Q8_0;
    rng_state = saved;
}

static void tiny_free(tiny_model *t) {
    for (unsigned i = 0; i < sizeof t->mats / sizeof t->mats[0]; i++) free(t->mats[i]);
    for (unsigned i = 0; i < sizeof t->norms / sizeof t->norms[0]; i++) free(t->norms[i]);
}

enum { STEPS = 9 };

/* logits (STEPS, 37) of STEPS tokens decoded one by one; the cache grows mid-way (reserve keeps it) */
static void run_steps(int32_t threads, int32_t isa, const float *x, float *logits) {
    tiny_model t;
    tiny_init(&t, threads, isa);
    crome_llm *m = NULL;
    CHECK(crome_llm_init(&t.p, &t.w, &m) == CROME_OK && m);
    tiny_free(&t); /* the handle holds copies */
    if (!m) return;
    CHECK(crome_llm_capacity(m) >= 1 && crome_llm_length(m) == 0);
    CHECK(crome_llm_reserve(m, 4) == CROME_OK);
    for (int s = 0; s < STEPS; s++) {
        if (s == 4) {
            CHECK(crome_llm_step(m, x + s * 64, logits + s * 37) == CROME_ERR_SHAPE); /* full */
            CHECK(crome_llm_reserve(m, STEPS) == CROME_OK);
        }
        CHECK(crome_llm_step(m, x + s * 64, logits + s * 37) == CROME_OK);
        CHECK(crome_llm_length(m) == s + 1);
    }
    crome_llm_free(m);
}

static void test_llm(void) {
    float x[STEPS * 64], ref[STEPS * 37], got[STEPS * 37];
    for (int i = 0; i < STEPS * 64; i++) x[i] = rndf();
    run_steps(1, CROME_ISA_SCALAR, x, ref);
    for (int i = 0; i < STEPS * 37; i++) CHECK(isfinite(ref[i]));
    /* the row split never changes a row's summation order: any thread count gives the same bits */
    run_steps(3, CROME_ISA_SCALAR, x, got);
    CHECK(memcmp(ref, got, sizeof ref) == 0);
    for (int i = 0; i < N_ISAS; i++) {
        if (!crome_isa_supported(ISAS[i])) continue;
        run_steps(2, ISAS[i], x, got);
        double worst = 0, top = 0; /* float32 summation order only: within 1e-5 of the largest logit */
        for (int j = 0; j < STEPS * 37; j++) worst = fmax(worst, fabs(got[j] - ref[j])), top = fmax(top, fabs(ref[j]));
        if (!(worst <= 1e-5 * top)) fprintf(stderr, "isa %d: max diff %g, max logit %g\n", ISAS[i], worst, top);
        CHECK(worst <= 1e-5 * top);
    }

    /* a cache loaded from outside (set_kv) continues exactly like the one the steps wrote */
    tiny_model t;
    tiny_init(&t, 2, CROME_ISA_AUTO);
    crome_llm *a = NULL, *b = NULL;
    CHECK(crome_llm_init(&t.p, &t.w, &a) == CROME_OK && crome_llm_init(&t.p, &t.w, &b) == CROME_OK);
    CHECK(crome_llm_reserve(a, 8) == CROME_OK && crome_llm_reserve(b, 8) == CROME_OK);
    float la[37], lb[37];
    for (int s = 0; s < 3; s++) CHECK(crome_llm_step(a, x + s * 64, la) == CROME_OK);
    /* copy a's cache through the public API: decode 3 tokens in b, then overwrite b's cache with zeros and
     * check the next logits change; restore by replaying into b (set_length 0) */
    float *zeros = calloc(2 * 3 * 16, sizeof(float));
    for (int s = 0; s < 3; s++) CHECK(crome_llm_step(b, x + s * 64, lb) == CROME_OK);
    CHECK(memcmp(la, lb, sizeof la) == 0);
    CHECK(crome_llm_step(a, x + 3 * 64, la) == CROME_OK);
    for (int l = 0; l < 2; l++) CHECK(crome_llm_set_kv(b, l, zeros, zeros, 3) == CROME_OK);
    CHECK(crome_llm_step(b, x + 3 * 64, lb) == CROME_OK);
    CHECK(memcmp(la, lb, sizeof la) != 0);
    CHECK(crome_llm_set_length(b, 0) == CROME_OK && crome_llm_length(b) == 0);
    for (int s = 0; s < 4; s++) CHECK(crome_llm_step(b, x + s * 64, lb) == CROME_OK);
    CHECK(memcmp(la, lb, sizeof la) == 0);
    /* error returns */
    CHECK(crome_llm_set_kv(b, 2, zeros, zeros, 3) == CROME_ERR_SHAPE);
    CHECK(crome_llm_set_kv(b, -1, zeros, zeros, 3) == CROME_ERR_SHAPE);
    CHECK(crome_llm_set_kv(b, 0, zeros, zeros, 9) == CROME_ERR_SHAPE);
    CHECK(crome_llm_set_kv(b, 0, NULL, zeros, 3) == CROME_ERR_NULL);
    CHECK(crome_llm_set_length(b, 9) == CROME_ERR_SHAPE && crome_llm_set_length(b, -1) == CROME_ERR_SHAPE);
    CHECK(crome_llm_reserve(b, 0) == CROME_ERR_SHAPE && crome_llm_reserve(NULL, 4) == CROME_ERR_NULL);
    CHECK(crome_llm_step(b, NULL, lb) == CROME_ERR_NULL && crome_llm_step(NULL, x, lb) == CROME_ERR_NULL);
    free(zeros);
    crome_llm_free(a);
    crome_llm_free(b);
    crome_llm_free(NULL);

    crome_llm *m = (crome_llm *)1;
    crome_llm_params bad = t.p;
    bad.d_model = 48;
    CHECK(crome_llm_init(&bad, &t.w, &m) == CROME_ERR_SHAPE && m == NULL);
    bad = t.p, bad.n_heads = 3;
    CHECK(crome_llm_init(&bad, &t.w, &m) == CROME_ERR_SHAPE);
    bad = t.p, bad.rms_eps = 0;
    CHECK(crome_llm_init(&bad, &t.w, &m) == CROME_ERR_PARAM);
    bad = t.p, bad.n_threads = 0;
    CHECK(crome_llm_init(&bad, &t.w, &m) == CROME_ERR_PARAM);
    bad = t.p, bad.isa = 42;
    CHECK(crome_llm_init(&bad, &t.w, &m) == CROME_ERR_PARAM);
    CHECK(crome_llm_init(&t.p, NULL, &m) == CROME_ERR_NULL && crome_llm_init(&t.p, &t.w, NULL) == CROME_ERR_NULL);
    t.layers[1].down.qtype = CROME_QTYPE_F32;
    CHECK(crome_llm_init(&t.p, &t.w, &m) == CROME_ERR_PARAM && m == NULL); /* fails late: frees what it copied */
    t.layers[1].down.qtype = CROME_QTYPE_Q8_0;
    t.layers[1].ffn_norm = NULL;
    CHECK(crome_llm_init(&t.p, &t.w, &m) == CROME_ERR_NULL && m == NULL);
    tiny_free(&t);
    crome_llm_params def = crome_llm_params_default();
    CHECK(def.d_model == 576 && def.n_layers == 30 && def.n_threads == 1 && def.isa == CROME_ISA_AUTO);
}

/* crome_memread: the XOR of every 64-bit word plus the byte tail, for sizes around the split grain and threads. */
static void test_memread(void) {
    const int64_t sizes[] = {0, 7, 8, 4095, 4096 * 8 + 13, 100003};
    for (unsigned k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        const int64_t n = sizes[k];
        uint64_t *buf = malloc((size_t)(n / 8 + 1) * 8); /* exact words + one for the tail bytes */
        uint8_t *bytes = (uint8_t *)buf;
        for (int64_t i = 0; i < n; i++) bytes[i] = (uint8_t)rnd();
        uint64_t want = 0;
        for (int64_t i = 0; i < n / 8; i++) want ^= buf[i];
        for (int64_t i = n / 8 * 8; i < n; i++) want ^= (uint64_t)bytes[i] << (8 * (i % 8));
        for (int32_t threads = 1; threads <= 3; threads++) {
            crome_pool *pool = NULL;
            CHECK(crome_pool_init(threads, &pool) == CROME_OK);
            uint64_t got = 1;
            CHECK(crome_memread(pool, buf, n, &got) == CROME_OK && got == want);
            crome_pool_free(pool);
        }
        free(buf);
    }
    uint64_t word = 0, sum;
    CHECK(crome_memread(NULL, NULL, 8, &sum) == CROME_ERR_NULL);
    CHECK(crome_memread(NULL, &word, 8, NULL) == CROME_ERR_NULL);
    CHECK(crome_memread(NULL, &word, -1, &sum) == CROME_ERR_SHAPE);
    CHECK(crome_memread(NULL, (uint8_t *)&word + 1, 1, &sum) == CROME_ERR_PARAM);
}

int main(void) {
    test_qmatvec();
    test_qpack();
    test_memread();
    test_llm();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all qdecode checks passed\n");
    return 0;
}
