/* preprocess.c - one-pass camera frame -> normalised CHW float (crome_preprocess).
 *
 * Reproduces OpenCV bit-exactly on uint8: cv2.cvtColor (BT.601 fixed point) and cv2.resize INTER_LINEAR
 * (11-bit fixed-point coefficients; x clamped at the borders, y rows clipped; vertical pass as in OpenCV's
 * VResizeLinearVec_32s8u). Each source row the output needs is resampled horizontally once (two rows
 * cached), converting only the two source pixels of each output column: one wide load per column, the
 * conversion and blend in loops that vectorise. A frame is never converted or stored whole.
 */
#include "crome_core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "preprocess.c picks bytes out of wide loads assuming a little-endian target"
#endif

enum { MAX_SIDE = 32768, MAX_OUT_SIDE = 8192 };
enum { COEF_BITS = 11, COEF_ONE = 1 << COEF_BITS };

/* OpenCV's ITU-R BT.601 YUV -> RGB fixed-point coefficients (color_yuv.simd.hpp). */
enum { YUV_SHIFT = 20, YUV_HALF = 1 << (YUV_SHIFT - 1) };
enum { YUV_CY = 1220542, YUV_CUB = 2116026, YUV_CUG = -409993, YUV_CVG = -852492, YUV_CVR = 1673527 };

crome_preprocess_params crome_preprocess_params_default(void) {
    crome_preprocess_params p = {
        .out_width = 224,
        .out_height = 224,
        .mean = {0.48145466f, 0.4578275f, 0.40821073f},
        .std = {0.26862954f, 0.26130258f, 0.27577711f},
    };
    return p;
}

static inline int32_t clamp_u8(int32_t v) { return v < 0 ? 0 : v > 255 ? 255 : v; }

/* Y, U, V -> R, G, B exactly as OpenCV's YUV422 / YUV420sp to RGB (BT.601 limited range). */
static inline void yuv_to_rgb(int32_t y, int32_t u, int32_t v, int32_t rgb[3]) {
    const int32_t yy = (y > 16 ? y - 16 : 0) * YUV_CY + YUV_HALF;
    u -= 128, v -= 128;
    rgb[0] = clamp_u8((yy + YUV_CVR * v) >> YUV_SHIFT);
    rgb[1] = clamp_u8((yy + YUV_CVG * v + YUV_CUG * u) >> YUV_SHIFT);
    rgb[2] = clamp_u8((yy + YUV_CUB * u) >> YUV_SHIFT);
}

/* out(c, dx) = channel c of pixel x0 * a0 + of pixel x1 * a1 for YUV samples (y, u, v) of both pixels. */
static inline void blend_yuv(int32_t y0, int32_t u0, int32_t v0, int32_t y1, int32_t u1, int32_t v1, int32_t a0,
                             int32_t a1, int32_t *restrict const o[3], int32_t dx) {
    int32_t p0[3], p1[3];
    yuv_to_rgb(y0, u0, v0, p0);
    yuv_to_rgb(y1, u1, v1, p1);
    for (int c = 0; c < 3; c++) o[c][dx] = p0[c] * a0 + p1[c] * a1;
}

/* Horizontal sampling positions and weights, shared by every row: output column dx blends source pixels
 * x0[dx] and x1[dx] (= min(x0 + 1, w - 1)) with weights a0[dx] + a1[dx] = COEF_ONE (a1 = 0 where x1 = x0).
 * In the first `wide` columns one 8-byte load (at pixel x0 of a BGR24/RGB24 row, at the YUYV macropixel
 * holding x0, or, for NV12, 4 bytes at x0 and at x0's UV pair) covers both pixels and stays in the row. */
typedef struct xmap {
    int32_t *x0, *x1, *a0, *a1;
    int32_t dw, wide;
} xmap;

enum { BLK = 16 }; /* columns per block: their loads are scalar, the arithmetic on them vectorises */

/* BGR24/RGB24 row; r: byte offset of R in a pixel. */
static void hresize_packed(const uint8_t *restrict row, const xmap *m, int r, int32_t *restrict const o[3]) {
    const int shift[3] = {8 * r, 8, 8 * (2 - r)}; /* bit offset of R, G, B in a loaded pixel */
    int32_t dx = 0;
    for (; dx + BLK <= m->wide; dx += BLK) {
        uint64_t px[BLK]; /* bytes 0-2: pixel x0, bytes 3-5: pixel x0 + 1 */
        for (int k = 0; k < BLK; k++) memcpy(&px[k], row + 3 * (int64_t)m->x0[dx + k], sizeof px[k]);
        for (int c = 0; c < 3; c++)
            for (int k = 0; k < BLK; k++)
                o[c][dx + k] = (int32_t)((px[k] >> shift[c]) & 255) * m->a0[dx + k] +
                               (int32_t)((px[k] >> (shift[c] + 24)) & 255) * m->a1[dx + k];
    }
    for (; dx < m->dw; dx++) {
        const uint8_t *p0 = row + 3 * (int64_t)m->x0[dx], *p1 = row + 3 * (int64_t)m->x1[dx];
        for (int c = 0; c < 3; c++) o[c][dx] = p0[shift[c] / 8] * m->a0[dx] + p1[shift[c] / 8] * m->a1[dx];
    }
}

/* YUYV row: Y0 U Y1 V per pixel pair. */
static void hresize_yuyv(const uint8_t *restrict row, const xmap *m, int32_t *restrict const o[3]) {
    int32_t dx = 0;
    for (; dx + BLK <= m->wide; dx += BLK) {
        uint64_t px[BLK]; /* x0's macropixel and the next: Y U Y V Y U Y V */
        int32_t sh[BLK];  /* 16 when x0 is odd: x0 is then the macropixel's second Y, x0 + 1 starts the next */
        for (int k = 0; k < BLK; k++) {
            memcpy(&px[k], row + 4 * (int64_t)(m->x0[dx + k] >> 1), sizeof px[k]);
            sh[k] = 16 * (m->x0[dx + k] & 1);
        }
        for (int k = 0; k < BLK; k++) {
            const uint64_t p = px[k];
            blend_yuv((int32_t)((p >> sh[k]) & 255), (int32_t)((p >> 8) & 255), (int32_t)((p >> 24) & 255),
                      (int32_t)((p >> (sh[k] + 16)) & 255), (int32_t)((p >> (8 + 2 * sh[k])) & 255),
                      (int32_t)((p >> (24 + 2 * sh[k])) & 255), m->a0[dx + k], m->a1[dx + k], o, dx + k);
        }
    }
    for (; dx < m->dw; dx++) {
        const uint8_t *q0 = row + 4 * (int64_t)(m->x0[dx] >> 1), *q1 = row + 4 * (int64_t)(m->x1[dx] >> 1);
        blend_yuv(q0[2 * (m->x0[dx] & 1)], q0[1], q0[3], q1[2 * (m->x1[dx] & 1)], q1[1], q1[3], m->a0[dx], m->a1[dx], o,
                  dx);
    }
}

/* NV12 row: Y plane row and its UV row (U V per pixel pair). */
static void hresize_nv12(const uint8_t *restrict y, const uint8_t *restrict uv, const xmap *m,
                         int32_t *restrict const o[3]) {
    int32_t dx = 0;
    for (; dx + BLK <= m->wide; dx += BLK) {
        uint32_t py[BLK], puv[BLK]; /* Y of x0, x0 + 1; U V of x0's pair and the next */
        int32_t odd[BLK];
        for (int k = 0; k < BLK; k++) {
            const int64_t x = m->x0[dx + k];
            memcpy(&py[k], y + x, sizeof py[k]);
            memcpy(&puv[k], uv + (x & ~(int64_t)1), sizeof puv[k]);
            odd[k] = (int32_t)(x & 1);
        }
        for (int k = 0; k < BLK; k++) {
            const uint32_t next = puv[k] >> (16 * odd[k]); /* x0 + 1's U V */
            blend_yuv((int32_t)(py[k] & 255), (int32_t)(puv[k] & 255), (int32_t)((puv[k] >> 8) & 255),
                      (int32_t)((py[k] >> 8) & 255), (int32_t)(next & 255), (int32_t)((next >> 8) & 255), m->a0[dx + k],
                      m->a1[dx + k], o, dx + k);
        }
    }
    for (; dx < m->dw; dx++) {
        const int32_t s0 = m->x0[dx], s1 = m->x1[dx];
        blend_yuv(y[s0], uv[s0 & ~1], uv[(s0 & ~1) + 1], y[s1], uv[s1 & ~1], uv[(s1 & ~1) + 1], m->a0[dx], m->a1[dx], o,
                  dx);
    }
}

/* Horizontal pass over source row sy: out (3, dw) int32 RGB planes, scale COEF_ONE. */
static void hresize_row(const crome_image *im, int32_t sy, const xmap *m, int32_t *out) {
    int32_t *const o[3] = {out, out + m->dw, out + 2 * (int64_t)m->dw};
    const uint8_t *row = im->data + (int64_t)sy * im->stride;
    switch (im->format) {
    case CROME_PIXFMT_BGR24: hresize_packed(row, m, 2, o); break;
    case CROME_PIXFMT_RGB24: hresize_packed(row, m, 0, o); break;
    case CROME_PIXFMT_YUYV: hresize_yuyv(row, m, o); break;
    case CROME_PIXFMT_NV12: hresize_nv12(row, im->uv + (int64_t)(sy >> 1) * im->uv_stride, m, o); break;
    }
}

/* OpenCV's source coordinate for output index d: (d + 0.5) * scale - 0.5, in double then float. */
static inline float src_coord(int32_t d, double scale) { return (float)((d + 0.5) * scale - 0.5); }

static inline int32_t coef(float w) { return (int32_t)lrintf(w * (float)COEF_ONE); }

static crome_status check_image(const crome_image *im) {
    if (!im->data) return CROME_ERR_NULL;
    if (im->width < 1 || im->height < 1 || im->width > MAX_SIDE || im->height > MAX_SIDE) return CROME_ERR_SHAPE;
    const int64_t w = im->width, sabs = im->stride < 0 ? -im->stride : im->stride;
    switch (im->format) {
    case CROME_PIXFMT_BGR24:
    case CROME_PIXFMT_RGB24: return sabs >= 3 * w ? CROME_OK : CROME_ERR_STRIDE;
    case CROME_PIXFMT_YUYV:
        if (w % 2) return CROME_ERR_SHAPE;
        return sabs >= 2 * w ? CROME_OK : CROME_ERR_STRIDE;
    case CROME_PIXFMT_NV12: {
        if (!im->uv) return CROME_ERR_NULL;
        if (w % 2 || im->height % 2) return CROME_ERR_SHAPE;
        const int64_t uvabs = im->uv_stride < 0 ? -im->uv_stride : im->uv_stride;
        return sabs >= w && uvabs >= w ? CROME_OK : CROME_ERR_STRIDE;
    }
    default: return CROME_ERR_FORMAT;
    }
}

crome_status crome_preprocess(const crome_image *im, const crome_preprocess_params *p, float *dst) {
    if (!im || !p || !dst) return CROME_ERR_NULL;
    crome_status st = check_image(im);
    if (st != CROME_OK) return st;
    const int32_t sw = im->width, sh = im->height, dw = p->out_width, dh = p->out_height;
    if (dw < 1 || dh < 1 || dw > MAX_OUT_SIDE || dh > MAX_OUT_SIDE) return CROME_ERR_SHAPE;
    for (int c = 0; c < 3; c++)
        if (!isfinite(p->mean[c]) || !isfinite(p->std[c]) || !(p->std[c] > 0.0f)) return CROME_ERR_PARAM;

    /* workspace: x0, x1, a0, a1 (dw int32 each), two cached rows (3 * dw int32 each) */
    int32_t *ws = malloc(sizeof(int32_t) * 10 * (size_t)dw);
    if (!ws) return CROME_ERR_NOMEM;
    xmap m = {.x0 = ws, .x1 = ws + dw, .a0 = ws + 2 * (int64_t)dw, .a1 = ws + 3 * (int64_t)dw, .dw = dw};
    int32_t *rows[2] = {ws + 4 * (int64_t)dw, ws + 7 * (int64_t)dw};
    int32_t row_of[2] = {-1, -1}; /* source row held by rows[k] */
    /* bytes one wide load may reach past pixel x0 (rounded down to its pair for YUV), and the row size */
    const int64_t reach = im->format == CROME_PIXFMT_NV12 ? 4 : 8;
    const int64_t bytes_per_pixel = im->format == CROME_PIXFMT_YUYV ? 2 : im->format == CROME_PIXFMT_NV12 ? 1 : 3;
    const int64_t row_bytes = (int64_t)sw * bytes_per_pixel;

    const double scale_x = 1.0 / ((double)dw / sw), scale_y = 1.0 / ((double)dh / sh);
    for (int32_t dx = 0; dx < dw; dx++) { /* x: clamped at both borders, as OpenCV does */
        float fx = src_coord(dx, scale_x);
        int32_t sx = (int32_t)floorf(fx);
        fx -= (float)sx;
        if (sx < 0) fx = 0.0f, sx = 0;
        if (sx >= sw - 1) fx = 0.0f, sx = sw - 1;
        m.x0[dx] = sx;
        m.x1[dx] = sx + 1 < sw ? sx + 1 : sw - 1;
        m.a0[dx] = coef(1.0f - fx);
        m.a1[dx] = coef(fx);
        const int64_t start = im->format == CROME_PIXFMT_YUYV ? 4 * (int64_t)(sx >> 1)
                              : im->format == CROME_PIXFMT_NV12 ? sx & ~1 : 3 * (int64_t)sx;
        if (start + reach <= row_bytes) m.wide = dx + 1; /* x0 never decreases */
    }

    const int64_t plane = (int64_t)dw * dh;
    for (int32_t dy = 0; dy < dh; dy++) { /* y: weights kept, row indices clipped, as OpenCV does */
        float fy = src_coord(dy, scale_y);
        const int32_t sy = (int32_t)floorf(fy);
        fy -= (float)sy;
        const int32_t b0 = coef(1.0f - fy), b1 = coef(fy);
        const int32_t want[2] = {sy < 0 ? 0 : sy > sh - 1 ? sh - 1 : sy,
                                 sy + 1 < 0 ? 0 : sy + 1 > sh - 1 ? sh - 1 : sy + 1};
        if (row_of[0] != want[0] && row_of[1] == want[0]) { /* reuse the lower row as the new upper one */
            int32_t *t = rows[0]; rows[0] = rows[1]; rows[1] = t;
            row_of[0] = want[0];
            row_of[1] = -1;
        }
        if (row_of[0] != want[0]) hresize_row(im, row_of[0] = want[0], &m, rows[0]);
        if (row_of[1] != want[1]) hresize_row(im, row_of[1] = want[1], &m, rows[1]);

        for (int c = 0; c < 3; c++) {
            const int32_t *s0 = rows[0] + c * (int64_t)dw, *s1 = rows[1] + c * (int64_t)dw;
            const float mean = p->mean[c], sd = p->std[c];
            float *out = dst + c * plane + (int64_t)dy * dw;
            for (int32_t dx = 0; dx < dw; dx++) {
                const int32_t q = (((b0 * (s0[dx] >> 4)) >> 16) + ((b1 * (s1[dx] >> 4)) >> 16) + 2) >> 2;
                out[dx] = ((float)q / 255.0f - mean) / sd;
            }
        }
    }
    free(ws);
    return CROME_OK;
}
