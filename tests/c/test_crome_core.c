/* test_crome_core.c - C-level tests of every crome_core.h function, edge cases and error returns.
 *
 * Built by tests/test_ccore_c.py with -fsanitize=address,undefined together with the runtime/csrc sources, so every
 * buffer here is allocated at its exact size: a read or write past it is a sanitizer error. Checks the
 * kernels against properties and naive loops (the bit-exact OpenCV / numpy comparisons are in Python).
 * Prints one line per failed check and exits non-zero if any failed.
 */
#include "crome_core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static uint8_t *random_bytes(size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd();
    return p;
}

/* ---------------------------------------------------------------------------------------------------- */

static void test_status(void) {
    CHECK(crome_abi_version() == CROME_ABI_VERSION);
    CHECK(strlen(crome_build_info()) > 0);
    for (int s = CROME_OK; s <= CROME_ERR_NOMEM; s++) CHECK(crome_status_str(s) && strlen(crome_status_str(s)) > 0);
    CHECK(strcmp(crome_status_str(-1), "unknown status") == 0);
    CHECK(strcmp(crome_status_str(99), "unknown status") == 0);
}

static crome_image bgr_image(const uint8_t *data, int32_t w, int32_t h, int64_t stride) {
    crome_image im = {.data = data, .stride = stride, .width = w, .height = h, .format = CROME_PIXFMT_BGR24};
    return im;
}

static float norm(int q, const crome_preprocess_params *p, int c) {
    return ((float)q / 255.0f - p->mean[c]) / p->std[c];
}

static void test_preprocess(void) {
    crome_preprocess_params p = crome_preprocess_params_default();
    CHECK(p.out_width == 224 && p.out_height == 224 && p.std[0] > 0.0f);

    /* 1x1 source, upscaled: every output pixel is the source pixel */
    const uint8_t px[3] = {10, 20, 30}; /* B, G, R */
    p.out_width = 5, p.out_height = 3;
    float *out = malloc(sizeof(float) * 3 * 15);
    crome_image im = bgr_image(px, 1, 1, 3);
    CHECK(crome_preprocess(&im, &p, out) == CROME_OK);
    for (int i = 0; i < 15; i++)
        CHECK(out[i] == norm(30, &p, 0) && out[15 + i] == norm(20, &p, 1) && out[30 + i] == norm(10, &p, 2));
    free(out);

    /* same size: identity resize; RGB24 of the swapped bytes gives the same planes */
    const int w = 7, h = 13;
    uint8_t *bgr = random_bytes(3 * w * h), *rgb = malloc(3 * w * h);
    for (int i = 0; i < 3 * w * h; i++) rgb[i] = bgr[i - i % 3 + 2 - i % 3]; /* swap bytes 0 and 2 of each pixel */
    p.out_width = w, p.out_height = h;
    float *a = malloc(sizeof(float) * 3 * w * h), *b = malloc(sizeof(float) * 3 * w * h);
    im = bgr_image(bgr, w, h, 3 * w);
    CHECK(crome_preprocess(&im, &p, a) == CROME_OK);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) CHECK(a[(c * h + y) * w + x] == norm(bgr[(y * w + x) * 3 + 2 - c], &p, c));
    crome_image im_rgb = im;
    im_rgb.data = rgb, im_rgb.format = CROME_PIXFMT_RGB24;
    CHECK(crome_preprocess(&im_rgb, &p, b) == CROME_OK);
    CHECK(memcmp(a, b, sizeof(float) * 3 * w * h) == 0);

    /* negative stride: the bottom-up view of the same frame is the vertically flipped output */
    crome_image flipped = bgr_image(bgr + 3 * w * (h - 1), w, h, -3 * w);
    CHECK(crome_preprocess(&flipped, &p, b) == CROME_OK);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            CHECK(memcmp(a + (c * h + y) * w, b + (c * h + h - 1 - y) * w, sizeof(float) * w) == 0);
    free(a), free(b), free(rgb);

    /* exact 2x downscale = rounded 2x2 mean (OpenCV's INTER_LINEAR at scale 1/2) */
    p.out_width = 3, p.out_height = 6; /* from w = 7 would not be exact: use a 6 x 12 crop, stride 3 * 7 */
    float *half = malloc(sizeof(float) * 3 * 18);
    crome_image crop = bgr_image(bgr, 6, 12, 3 * w);
    CHECK(crome_preprocess(&crop, &p, half) == CROME_OK);
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 3; x++) {
            const uint8_t *s = bgr + (2 * y * w + 2 * x) * 3 + 2; /* R */
            const int q = (s[0] + s[3] + s[3 * w] + s[3 * w + 3] + 2) >> 2;
            CHECK(half[y * 3 + x] == norm(q, &p, 0));
        }
    free(half);

    /* YUYV with neutral chroma is grey; NV12 of the same samples gives the same output */
    const int yw = 6, yh = 4;
    uint8_t *yuyv = malloc(2 * yw * yh), *nv12y = malloc(yw * yh), *nv12uv = malloc(yw * yh / 2);
    for (int i = 0; i < yw * yh; i++) {
        yuyv[2 * i] = nv12y[i] = (uint8_t)(16 + i * 9);
        yuyv[2 * i + 1] = 128;
    }
    memset(nv12uv, 128, yw * yh / 2);
    p.out_width = yw, p.out_height = yh;
    float *g1 = malloc(sizeof(float) * 3 * yw * yh), *g2 = malloc(sizeof(float) * 3 * yw * yh);
    crome_image iy = {.data = yuyv, .stride = 2 * yw, .width = yw, .height = yh, .format = CROME_PIXFMT_YUYV};
    crome_image in = {.data = nv12y, .uv = nv12uv, .stride = yw, .uv_stride = yw, .width = yw, .height = yh,
                      .format = CROME_PIXFMT_NV12};
    CHECK(crome_preprocess(&iy, &p, g1) == CROME_OK);
    CHECK(crome_preprocess(&in, &p, g2) == CROME_OK);
    CHECK(memcmp(g1, g2, sizeof(float) * 3 * yw * yh) == 0);
    for (int i = 0; i < yw * yh; i++) {
        int grey = ((nv12y[i] - 16) * 1220542 + (1 << 19)) >> 20;
        grey = grey > 255 ? 255 : grey;
        for (int c = 0; c < 3; c++) CHECK(g1[c * yw * yh + i] == norm(grey, &p, c));
    }
    free(g1), free(g2), free(yuyv), free(nv12y), free(nv12uv);

    /* a downscale of a large odd-sized frame, rows padded: runs clean under the sanitizers */
    const int bw = 641, bh = 479;
    uint8_t *big = random_bytes((size_t)(3 * bw + 5) * bh);
    crome_image ib = bgr_image(big, bw, bh, 3 * bw + 5);
    p.out_width = 224, p.out_height = 224;
    float *o = malloc(sizeof(float) * 3 * 224 * 224);
    CHECK(crome_preprocess(&ib, &p, o) == CROME_OK);
    for (int i = 0; i < 3 * 224 * 224; i++) CHECK(isfinite(o[i]));

    /* errors: nothing is written */
    o[0] = 42.0f;
    crome_image bad = ib;
    CHECK(crome_preprocess(NULL, &p, o) == CROME_ERR_NULL);
    CHECK(crome_preprocess(&ib, NULL, o) == CROME_ERR_NULL);
    CHECK(crome_preprocess(&ib, &p, NULL) == CROME_ERR_NULL);
    bad.data = NULL;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_NULL);
    bad = ib, bad.width = 0;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_SHAPE);
    bad = ib, bad.height = 40000;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_SHAPE);
    bad = ib, bad.stride = 3 * bw - 1;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_STRIDE);
    bad = ib, bad.stride = -(3 * bw - 1);
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_STRIDE);
    bad = ib, bad.format = 7;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_FORMAT);
    bad = iy, bad.width = 5;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_SHAPE);
    bad = in, bad.uv = NULL;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_NULL);
    bad = in, bad.height = 3;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_SHAPE);
    bad = in, bad.uv_stride = yw - 1;
    CHECK(crome_preprocess(&bad, &p, o) == CROME_ERR_STRIDE);
    crome_preprocess_params bp = p;
    bp.out_width = 0;
    CHECK(crome_preprocess(&ib, &bp, o) == CROME_ERR_SHAPE);
    bp = p, bp.out_height = 8193;
    CHECK(crome_preprocess(&ib, &bp, o) == CROME_ERR_SHAPE);
    bp = p, bp.std[1] = 0.0f;
    CHECK(crome_preprocess(&ib, &bp, o) == CROME_ERR_PARAM);
    bp = p, bp.mean[2] = NAN;
    CHECK(crome_preprocess(&ib, &bp, o) == CROME_ERR_PARAM);
    bp = p, bp.std[0] = INFINITY;
    CHECK(crome_preprocess(&ib, &bp, o) == CROME_ERR_PARAM);
    CHECK(o[0] == 42.0f);
    free(o), free(big), free(bgr);
}

/* ---------------------------------------------------------------------------------------------------- */

/* y = x + (SiLU(x Wg) * (x Wd)) Wu in double, from float weights w1 (d, 2r) and wu (r, d) */
static void gproj_naive(const float *x, int64_t n, int d, int r, const float *w1, const float *wu, double *y) {
    double *z = malloc(sizeof(double) * r);
    for (int64_t t = 0; t < n; t++) {
        for (int j = 0; j < r; j++) {
            double hd = 0, hg = 0;
            for (int k = 0; k < d; k++) {
                hd += (double)x[t * d + k] * w1[k * 2 * r + j];
                hg += (double)x[t * d + k] * w1[k * 2 * r + r + j];
            }
            z[j] = hg / (1 + exp(-hg)) * hd;
        }
        for (int k = 0; k < d; k++) {
            double s = x[t * d + k];
            for (int j = 0; j < r; j++) s += z[j] * wu[j * d + k];
            y[t * d + k] = s;
        }
    }
    free(z);
}

static int close_to(const float *y, const double *ref, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(fabs(y[i] - ref[i]) <= 1e-4 * (1 + fabs(ref[i])))) return 0;
    return 1;
}

static void test_gproj_case(int d, int r, int64_t n) {
    float *w1 = malloc(sizeof(float) * d * 2 * r), *wu = malloc(sizeof(float) * r * d);
    for (int i = 0; i < d * 2 * r; i++) w1[i] = 0.3f * rndf();
    for (int i = 0; i < r * d; i++) wu[i] = 0.3f * rndf();
    float *x = malloc(sizeof(float) * n * d), *y = malloc(sizeof(float) * n * d);
    for (int64_t i = 0; i < n * d; i++) x[i] = rndf();
    double *ref = malloc(sizeof(double) * n * d);

    crome_gproj_params p = crome_gproj_params_default();
    p.d_model = d, p.rank = r;
    crome_gproj_weights w = {.w1 = w1, .wu = wu};
    crome_gproj *g = NULL;
    CHECK(crome_gproj_init(&p, &w, &g) == CROME_OK && g);
    gproj_naive(x, n, d, r, w1, wu, ref);
    CHECK(crome_gproj_apply(g, x, d, y, d, n) == CROME_OK);
    CHECK(close_to(y, ref, n * d));
    memcpy(y, x, sizeof(float) * n * d); /* in place */
    CHECK(crome_gproj_apply(g, y, d, y, d, n) == CROME_OK);
    CHECK(close_to(y, ref, n * d));
    crome_gproj_free(g);
    free(w1), free(wu), free(x), free(y), free(ref);
}

static void test_gproj(void) {
    const int shapes[][3] = {{576, 64, 8}, {576, 64, 32}, {1, 1, 1}, {37, 5, 19}, {64, 17, 9}, {5, 40, 3}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        test_gproj_case(shapes[i][0], shapes[i][1], shapes[i][2]);

    /* strided rows: x rows 3 floats apart beyond d */
    const int d = 9, r = 2, n = 4, ld = d + 3;
    float w1[9 * 4], wu[2 * 9], xs[4 * 12], ys[4 * 12], x[4 * 9], y[4 * 9];
    for (int i = 0; i < d * 2 * r; i++) w1[i] = rndf();
    for (int i = 0; i < r * d; i++) wu[i] = rndf();
    for (int i = 0; i < n * ld; i++) xs[i] = rndf();
    for (int t = 0; t < n; t++) memcpy(x + t * d, xs + t * ld, sizeof(float) * d);
    crome_gproj_params p = {.d_model = d, .rank = r};
    crome_gproj_weights w = {.w1 = w1, .wu = wu};
    crome_gproj *g = NULL;
    CHECK(crome_gproj_init(&p, &w, &g) == CROME_OK);
    CHECK(crome_gproj_apply(g, x, d, y, d, n) == CROME_OK);
    CHECK(crome_gproj_apply(g, xs, ld, ys, ld, n) == CROME_OK);
    for (int t = 0; t < n; t++) CHECK(memcmp(y + t * d, ys + t * ld, sizeof(float) * d) == 0);

    /* errors */
    y[0] = 42.0f;
    CHECK(crome_gproj_apply(NULL, x, d, y, d, n) == CROME_ERR_NULL);
    CHECK(crome_gproj_apply(g, NULL, d, y, d, n) == CROME_ERR_NULL);
    CHECK(crome_gproj_apply(g, x, d, NULL, d, n) == CROME_ERR_NULL);
    CHECK(crome_gproj_apply(g, x, d, y, d, 0) == CROME_ERR_SHAPE);
    CHECK(crome_gproj_apply(g, x, d, y, d, -1) == CROME_ERR_SHAPE);
    CHECK(crome_gproj_apply(g, x, d - 1, y, d, n) == CROME_ERR_STRIDE);
    CHECK(crome_gproj_apply(g, x, d, y, 0, n) == CROME_ERR_STRIDE);
    CHECK(y[0] == 42.0f);
    crome_gproj_free(g);
    crome_gproj_free(NULL);

    crome_gproj *out = (crome_gproj *)&p; /* must be reset to NULL on error */
    CHECK(crome_gproj_init(&p, &w, NULL) == CROME_ERR_NULL);
    CHECK(crome_gproj_init(NULL, &w, &out) == CROME_ERR_NULL && out == NULL);
    crome_gproj_weights nw = {.w1 = w1};
    CHECK(crome_gproj_init(&p, &nw, &out) == CROME_ERR_NULL && out == NULL);
    crome_gproj_params bp = p;
    bp.d_model = 0;
    CHECK(crome_gproj_init(&bp, &w, &out) == CROME_ERR_SHAPE && out == NULL);
    bp = p, bp.rank = 8193;
    CHECK(crome_gproj_init(&bp, &w, &out) == CROME_ERR_SHAPE && out == NULL);
}

/* ---------------------------------------------------------------------------------------------------- */

static crome_sampler_params sp(double t, int k, double top_p, float pen) {
    crome_sampler_params p = crome_sampler_params_default();
    p.temperature = t, p.top_k = k, p.top_p = top_p, p.repetition_penalty = pen;
    return p;
}

static void test_sampler(void) {
    crome_sampler_params d = crome_sampler_params_default();
    CHECK(d.temperature == 0.0 && d.top_k == 0 && d.top_p == 1.0 && d.repetition_penalty == 1.0f);
    int32_t tok = -1;

    /* greedy: first maximum; -0.0 == 0.0 */
    const float ties[5] = {-1.0f, 3.0f, 0.5f, 3.0f, -INFINITY};
    CHECK(crome_sample(ties, 5, NULL, 0, &d, 0.0, &tok) == CROME_OK && tok == 1);
    const float zeros[3] = {-0.0f, 0.0f, -1.0f};
    CHECK(crome_sample(zeros, 3, NULL, 0, &d, 0.0, &tok) == CROME_OK && tok == 0);
    crome_sampler_params k1 = sp(2.0, 1, 1.0, 1.0f);
    CHECK(crome_sample(ties, 5, NULL, 0, &k1, 0.99, &tok) == CROME_OK && tok == 1);
    const float one = 1.0f;
    crome_sampler_params t1 = sp(1.0, 0, 0.5, 1.0f);
    CHECK(crome_sample(&one, 1, NULL, 0, &t1, 0.7, &tok) == CROME_OK && tok == 0);

    /* repetition penalty: 3.0 / 3 = 1.0 < 2.0 ; duplicates count once; negative logits multiply */
    const float z[4] = {2.0f, 3.0f, -1.0f, 1.0f};
    const int64_t recent[3] = {1, 1, 1};
    crome_sampler_params pen = sp(0.0, 0, 1.0, 3.0f);
    CHECK(crome_sample(z, 4, recent, 3, &pen, 0.0, &tok) == CROME_OK && tok == 0);
    const float neg[2] = {-0.75f, -1.0f};
    const int64_t r1 = 1;
    crome_sampler_params half = sp(0.0, 0, 1.0, 0.5f);
    CHECK(crome_sample(neg, 2, &r1, 1, &half, 0.0, &tok) == CROME_OK && tok == 1);

    /* temperature: u = 0 picks the first id with weight, u -> 1 the last; -inf is never picked */
    const float masked[4] = {-INFINITY, 0.0f, 0.0f, -INFINITY};
    crome_sampler_params t = sp(1.0, 0, 1.0, 1.0f);
    CHECK(crome_sample(masked, 4, NULL, 0, &t, 0.0, &tok) == CROME_OK && tok == 1);
    CHECK(crome_sample(masked, 4, NULL, 0, &t, 0.9999999, &tok) == CROME_OK && tok == 2);

    /* a large vocabulary through every path: heap top-k, radix top-k, top-p (short and long prefix) */
    const int64_t n = 49152;
    float *big = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) big[i] = 2.5f * rndf();
    big[777] = 40.0f;
    const crome_sampler_params cases[] = {sp(0.7, 50, 1.0, 1.0f), sp(0.7, 20000, 1.0, 1.0f), sp(1.0, 0, 0.9, 1.0f),
                                          sp(0.7, 0, 1.0, 1.2f), sp(0.7, 50, 0.9, 1.3f), sp(1e-6, 0, 1.0, 1.0f)};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int i = 0; i < 20; i++) {
            CHECK(crome_sample(big, n, recent, 3, &cases[c], i / 20.0, &tok) == CROME_OK);
            CHECK(tok >= 0 && tok < n);
        }
    big[777] = 0.0f; /* flat: the top-p nucleus is thousands of tokens (radix path) */
    crome_sampler_params flat = sp(1.0, 0, 0.95, 1.0f);
    CHECK(crome_sample(big, n, NULL, 0, &flat, 0.5, &tok) == CROME_OK && tok >= 0 && tok < n);
    crome_sampler_params top5 = sp(5.0, 5, 1.0, 1.0f);
    for (int i = 0; i < 50; i++) {
        CHECK(crome_sample(big, n, NULL, 0, &top5, i / 50.0, &tok) == CROME_OK);
        int above = 0; /* at most 4 logits beat a top-5 token */
        for (int64_t j = 0; j < n; j++) above += big[j] > big[tok];
        CHECK(above <= 4);
    }

    /* errors: *token untouched */
    tok = -7;
    const float nan2[2] = {0.0f, NAN}, inf2[2] = {0.0f, INFINITY}, ninf2[2] = {-INFINITY, -INFINITY};
    CHECK(crome_sample(nan2, 2, NULL, 0, &t, 0.5, &tok) == CROME_ERR_VALUE);
    CHECK(crome_sample(inf2, 2, NULL, 0, &t, 0.5, &tok) == CROME_ERR_VALUE);
    CHECK(crome_sample(ninf2, 2, NULL, 0, &t, 0.5, &tok) == CROME_ERR_VALUE);
    const int64_t bad_ids[2] = {0, 4};
    CHECK(crome_sample(z, 4, bad_ids, 2, &t, 0.5, &tok) == CROME_ERR_VALUE);
    const int64_t neg_id = -1;
    CHECK(crome_sample(z, 4, &neg_id, 1, &t, 0.5, &tok) == CROME_ERR_VALUE);
    CHECK(crome_sample(NULL, 4, NULL, 0, &t, 0.5, &tok) == CROME_ERR_NULL);
    CHECK(crome_sample(z, 4, NULL, 1, &t, 0.5, &tok) == CROME_ERR_NULL);
    CHECK(crome_sample(z, 4, NULL, 0, NULL, 0.5, &tok) == CROME_ERR_NULL);
    CHECK(crome_sample(z, 4, NULL, 0, &t, 0.5, NULL) == CROME_ERR_NULL);
    CHECK(crome_sample(z, 0, NULL, 0, &t, 0.5, &tok) == CROME_ERR_SHAPE);
    CHECK(crome_sample(z, 4, recent, -1, &t, 0.5, &tok) == CROME_ERR_SHAPE);
    const crome_sampler_params bad[] = {sp(-1.0, 0, 1.0, 1.0f), sp(1e-9, 0, 1.0, 1.0f), sp(INFINITY, 0, 1.0, 1.0f),
                                        sp(1.0, -1, 1.0, 1.0f), sp(1.0, 0, 0.0, 1.0f), sp(1.0, 0, 1.5, 1.0f),
                                        sp(1.0, 0, NAN, 1.0f), sp(1.0, 0, 1.0, 0.0f), sp(1.0, 0, 1.0, NAN)};
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++)
        CHECK(crome_sample(z, 4, NULL, 0, &bad[c], 0.5, &tok) == CROME_ERR_PARAM);
    CHECK(crome_sample(z, 4, NULL, 0, &t, 1.0, &tok) == CROME_ERR_PARAM);
    CHECK(crome_sample(z, 4, NULL, 0, &t, -0.1, &tok) == CROME_ERR_PARAM);
    CHECK(tok == -7);
    free(big);
}

int main(void) {
    test_status();
    test_preprocess();
    test_gproj();
    test_sampler();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all C core checks passed\n");
    return 0;
}
