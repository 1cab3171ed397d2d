/* preprocess.c - one-pass camera frame -> normalised CHW float (crome_preprocess).
 *
 * Reproduces OpenCV bit-exactly on uint8: cv2.cvtColor (BT.601 fixed point) and cv2.resize INTER_LINEAR
 * (11-bit fixed-point coefficients; x clamped at the borders, y rows clipped; vertical pass as in OpenCV's
 * VResizeLinearVec_32s8u). Each source row the output needs is converted (YUV: a whole row to planar RGB,
 * in loops that vectorise) and resampled horizontally once (two rows cached), so a frame is never
 * converted or stored whole.
 */
#include "crome_core.h"

#include <math.h>
#include <stdlib.h>

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

/* One pixel pair (Y0, Y1 sharing U, V) -> R, G, B exactly as OpenCV's YUV422 / YUV420sp to RGB
 * (BT.601 limited range), into planar rows at x, x + 1. */
static inline void yuv_pair(int32_t y0, int32_t y1, int32_t u, int32_t v, uint8_t *restrict r,
                            uint8_t *restrict g, uint8_t *restrict b, int64_t x) {
    u -= 128, v -= 128;
    const int32_t ruv = YUV_HALF + YUV_CVR * v, guv = YUV_HALF + YUV_CVG * v + YUV_CUG * u;
    const int32_t buv = YUV_HALF + YUV_CUB * u;
    const int32_t yy[2] = {(y0 > 16 ? y0 - 16 : 0) * YUV_CY, (y1 > 16 ? y1 - 16 : 0) * YUV_CY};
    for (int k = 0; k < 2; k++) {
        r[x + k] = (uint8_t)clamp_u8((yy[k] + ruv) >> YUV_SHIFT);
        g[x + k] = (uint8_t)clamp_u8((yy[k] + guv) >> YUV_SHIFT);
        b[x + k] = (uint8_t)clamp_u8((yy[k] + buv) >> YUV_SHIFT);
    }
}

/* Source row sy of a YUV frame as planar R, G, B rows of width bytes (contiguous loops that vectorise). */
static void yuv_row_to_planar(const crome_image *im, int32_t sy, uint8_t *restrict r, uint8_t *restrict g,
                              uint8_t *restrict b) {
    const uint8_t *restrict row = im->data + (int64_t)sy * im->stride;
    const int64_t pairs = im->width / 2;
    if (im->format == CROME_PIXFMT_YUYV) {
        for (int64_t p = 0; p < pairs; p++) yuv_pair(row[4 * p], row[4 * p + 2], row[4 * p + 1], row[4 * p + 3], r, g, b, 2 * p);
    } else { /* NV12 */
        const uint8_t *restrict uv = im->uv + (int64_t)(sy >> 1) * im->uv_stride;
        for (int64_t p = 0; p < pairs; p++) yuv_pair(row[2 * p], row[2 * p + 1], uv[2 * p], uv[2 * p + 1], r, g, b, 2 * p);
    }
}

/* Horizontal pass over one source row: out (3, dw) int32 RGB planes, scale COEF_ONE.
 * x0/x1: left/right source pixel of each output column (x1 = min(x0 + 1, w - 1)); a: their weights.
 * planar: scratch for YUV frames, 3 rows of width bytes. */
static void hresize_row(const crome_image *im, int32_t sy, const int32_t *x0, const int32_t *x1,
                        const int16_t *a, int32_t dw, uint8_t *const planar[3], int32_t *out) {
    if (im->format == CROME_PIXFMT_BGR24 || im->format == CROME_PIXFMT_RGB24) {
        const uint8_t *row = im->data + (int64_t)sy * im->stride;
        const int r = im->format == CROME_PIXFMT_BGR24 ? 2 : 0; /* byte offset of R within a pixel */
        for (int32_t dx = 0; dx < dw; dx++) {
            const uint8_t *p0 = row + 3 * (int64_t)x0[dx], *p1 = row + 3 * (int64_t)x1[dx];
            const int32_t a0 = a[2 * dx], a1 = a[2 * dx + 1];
            out[dx] = p0[r] * a0 + p1[r] * a1;
            out[dw + dx] = p0[1] * a0 + p1[1] * a1;
            out[2 * dw + dx] = p0[2 - r] * a0 + p1[2 - r] * a1;
        }
        return;
    }
    yuv_row_to_planar(im, sy, planar[0], planar[1], planar[2]);
    for (int c = 0; c < 3; c++) {
        const uint8_t *p = planar[c];
        int32_t *o = out + (int64_t)c * dw;
        for (int32_t dx = 0; dx < dw; dx++) o[dx] = p[x0[dx]] * a[2 * dx] + p[x1[dx]] * a[2 * dx + 1];
    }
}

/* OpenCV's source coordinate for output index d: (d + 0.5) * scale - 0.5, in double then float. */
static inline float src_coord(int32_t d, double scale) { return (float)((d + 0.5) * scale - 0.5); }

static inline int16_t coef(float w) { return (int16_t)lrintf(w * (float)COEF_ONE); }

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

    /* workspace: x0, x1 (dw int32 each), two cached rows (3 * dw int32 each), a (2 * dw int16),
     * planar RGB of one source row for YUV frames (3 * sw bytes) */
    const int yuv = im->format == CROME_PIXFMT_YUYV || im->format == CROME_PIXFMT_NV12;
    char *ws = malloc((size_t)dw * (8 * sizeof(int32_t) + 2 * sizeof(int16_t)) + (yuv ? 3 * (size_t)sw : 0));
    if (!ws) return CROME_ERR_NOMEM;
    int32_t *x0 = (int32_t *)ws, *x1 = x0 + dw, *rows[2] = {x1 + dw, x1 + 4 * (int64_t)dw};
    int16_t *xa = (int16_t *)(rows[1] + 3 * (int64_t)dw);
    uint8_t *const rgb_row = (uint8_t *)(xa + 2 * (int64_t)dw);
    uint8_t *planar[3] = {rgb_row, rgb_row + sw, rgb_row + 2 * (int64_t)sw};
    int32_t row_of[2] = {-1, -1}; /* source row held by rows[k] */

    const double scale_x = 1.0 / ((double)dw / sw), scale_y = 1.0 / ((double)dh / sh);
    for (int32_t dx = 0; dx < dw; dx++) { /* x: clamped at both borders, as OpenCV does */
        float fx = src_coord(dx, scale_x);
        int32_t sx = (int32_t)floorf(fx);
        fx -= (float)sx;
        if (sx < 0) fx = 0.0f, sx = 0;
        if (sx >= sw - 1) fx = 0.0f, sx = sw - 1;
        x0[dx] = sx;
        x1[dx] = sx + 1 < sw ? sx + 1 : sw - 1;
        xa[2 * dx] = coef(1.0f - fx);
        xa[2 * dx + 1] = coef(fx);
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
        if (row_of[0] != want[0]) hresize_row(im, row_of[0] = want[0], x0, x1, xa, dw, planar, rows[0]);
        if (row_of[1] != want[1]) hresize_row(im, row_of[1] = want[1], x0, x1, xa, dw, planar, rows[1]);

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
