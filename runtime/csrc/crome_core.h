/*
 * crome_core.h - the C core of the crome-edge runtime (torch-free, loaded with ctypes).
 *
 * Three kernels on the runtime's per-frame / per-token path, each kept only because it beats its
 * numpy / OpenCV / onnxruntime alternative on the benchmark (benchmarks/bench_ccore.py, RESULTS.md):
 *
 *   crome_preprocess   camera frame (BGR/RGB/YUYV/NV12, any row stride) -> resized, normalised CHW float
 *   crome_gproj_*      the CROME adapter's fused gated projection (DESIGN.md section 2), float32 weights
 *   crome_sample       next-token sampler: greedy, temperature, top-k, top-p, repetition penalty
 *
 * Conventions (all functions):
 *   - Every function that can fail returns a crome_status; on error it writes nothing to its outputs.
 *   - Buffers are caller-owned unless a function says otherwise; no function keeps a pointer it was passed.
 *   - Sizes and strides are int64_t; strides of image rows are in bytes and may be negative (bottom-up
 *     frames), strides of float rows are in elements.
 *   - No global state: every function is re-entrant. Handles (crome_gproj) are immutable after init and
 *     may be used from several threads at once.
 */
#ifndef CROME_CORE_H
#define CROME_CORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define CROME_API __declspec(dllexport)
#else
#define CROME_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a struct layout or a signature below changes; ccore.py refuses a mismatched library. */
#define CROME_ABI_VERSION 3

typedef enum crome_status {
    CROME_OK = 0,
    CROME_ERR_NULL = 1,   /* a required pointer is NULL */
    CROME_ERR_SHAPE = 2,  /* a size is out of range: zero, negative, too large, or odd where it must be even */
    CROME_ERR_STRIDE = 3, /* a row stride is smaller than its row (in absolute value) */
    CROME_ERR_FORMAT = 4, /* unknown pixel format */
    CROME_ERR_PARAM = 5,  /* a parameter is out of range (std <= 0, temperature < 0, top_p outside (0, 1], ...) */
    CROME_ERR_VALUE = 6,  /* the data is unusable: NaN or +inf logits, every logit -inf, token id out of range */
    CROME_ERR_NOMEM = 7,  /* an allocation failed */
} crome_status;

CROME_API int crome_abi_version(void);                   /* == CROME_ABI_VERSION of the built library */
CROME_API const char *crome_status_str(int status);      /* static text, never NULL (unknown codes too) */
CROME_API const char *crome_build_info(void);            /* static text: compiler, SIMD target, vector width */

/* ------------------------------------------------------------------------------------------------ */
/* Preprocessing: camera frame -> encoder input                                                       */
/* ------------------------------------------------------------------------------------------------ */

typedef enum crome_pixfmt {
    CROME_PIXFMT_BGR24 = 0, /* 3 bytes per pixel B, G, R (OpenCV's default) */
    CROME_PIXFMT_RGB24 = 1, /* 3 bytes per pixel R, G, B */
    CROME_PIXFMT_YUYV = 2,  /* YUY2 4:2:2, Y0 U Y1 V per pixel pair; width even */
    CROME_PIXFMT_NV12 = 3,  /* 4:2:0, Y plane + interleaved U V plane at half resolution; width, height even */
} crome_pixfmt;

/* A borrowed view of one frame; nothing is copied, kept or freed.
 *   row y of the (Y) plane starts at data + y * stride (bytes), |stride| >= width * bytes per pixel
 *   (3 for BGR24/RGB24, 2 for YUYV, 1 for NV12's Y plane).
 *   NV12 only: row j of the UV plane (height / 2 rows of width bytes) starts at uv + j * uv_stride;
 *   for a frame stored as one (height * 3 / 2, width) array: uv = data + height * stride, uv_stride = stride. */
typedef struct crome_image {
    const uint8_t *data;
    const uint8_t *uv;   /* NV12 only, else ignored */
    int64_t stride;
    int64_t uv_stride;   /* NV12 only, else ignored */
    int32_t width;       /* 1 .. 32768 */
    int32_t height;      /* 1 .. 32768 */
    int32_t format;      /* crome_pixfmt */
} crome_image;

typedef struct crome_preprocess_params {
    int32_t out_width;   /* 1 .. 8192; default 224 */
    int32_t out_height;  /* 1 .. 8192; default 224 */
    float mean[3];       /* per RGB channel, on the [0, 1] scale; default CLIP's (BLIP-2 / InstructBLIP) */
    float std[3];        /* per RGB channel, finite and > 0 */
} crome_preprocess_params;

CROME_API crome_preprocess_params crome_preprocess_params_default(void);

/* One pass: convert to RGB, resize, normalise, write planar.
 *   dst: float32 (3, out_height, out_width), contiguous, planes R, G, B; must not overlap the frame.
 *        dst[c][y][x] = (q[c][y][x] / 255 - mean[c]) / std[c]   (float32 arithmetic in that order)
 *   where q is the uint8 image that OpenCV produces for the same frame with cv2.cvtColor (BGR2RGB,
 *   YUV2RGB_YUYV, YUV2RGB_NV12: BT.601 limited range) followed by cv2.resize(..., INTER_LINEAR):
 *   bilinear with half-pixel centres and OpenCV's 11-bit fixed-point arithmetic, reproduced bit-exactly.
 * Allocates a workspace of O(out_width + width) bytes per call (CROME_ERR_NOMEM if that fails). */
CROME_API crome_status crome_preprocess(const crome_image *image, const crome_preprocess_params *params,
                                        float *dst);

/* ------------------------------------------------------------------------------------------------ */
/* Fused gated projection of the CROME adapter (one modality)                                        */
/*   y = x + (SiLU(x . Wg) * (x . Wd)) . Wu,   computed as  h = x . [Wd | Wg],  z = SiLU(h_g) * h_d   */
/* ------------------------------------------------------------------------------------------------ */

typedef struct crome_gproj_params {
    int32_t d_model; /* d: 1 .. 65536; default 576 (SmolLM2-135M) */
    int32_t rank;    /* r: 1 .. 8192;  default 64 */
} crome_gproj_params;

/* float32 weights in the adapter file's orientation, row-major and contiguous. (int8 weights: dequantise
 * at load and pass floats; an int8 kernel lost to that on the benchmark, see benchmarks/RESULTS.md.) */
typedef struct crome_gproj_weights {
    const float *w1; /* (d, 2r): columns [0, r) are Wd, columns [r, 2r) are Wg */
    const float *wu; /* (r, d) */
} crome_gproj_weights;

typedef struct crome_gproj crome_gproj; /* opaque */

CROME_API crome_gproj_params crome_gproj_params_default(void);

/* Copies the weights into the handle's own packed layout: the caller may free its buffers on return.
 * On success *out owns the handle (free it with crome_gproj_free); on error *out is set to NULL. */
CROME_API crome_status crome_gproj_init(const crome_gproj_params *params, const crome_gproj_weights *weights,
                                        crome_gproj **out);
CROME_API void crome_gproj_free(crome_gproj *gproj); /* NULL is a no-op */

/* y[n, :] = x[n, :] + (SiLU(x[n, :] . Wg) * (x[n, :] . Wd)) . Wu   for n in [0, n_tokens)
 *   x: float32 rows of d values, row n at x + n * x_stride (elements, >= d); likewise y with y_stride.
 *   y may be x itself with y_stride == x_stride (in place); any other overlap is undefined.
 *   n_tokens: 1 .. 2^31. Allocates a small per-call workspace. Thread-safe on a shared handle. */
CROME_API crome_status crome_gproj_apply(const crome_gproj *gproj, const float *x, int64_t x_stride, float *y,
                                         int64_t y_stride, int64_t n_tokens);

/* ------------------------------------------------------------------------------------------------ */
/* Next-token sampler                                                                                */
/* ------------------------------------------------------------------------------------------------ */

typedef struct crome_sampler_params {
    double temperature;       /* 0 = greedy (argmax, lowest id on ties), else finite >= 1e-6. default 0 */
    double top_p;             /* (0, 1]; 1 = off. default 1 */
    float repetition_penalty; /* > 0; 1 = off. default 1 */
    int32_t top_k;            /* >= 0; 0 or >= n_vocab = off. default 0 */
} crome_sampler_params;

CROME_API crome_sampler_params crome_sampler_params_default(void);

/* Picks the next token from one row of logits; the numpy reference is runtime/sampling.py.
 *   logits: n_vocab float32, finite or -inf (masked); never modified.
 *   recent: n_recent token ids in [0, n_vocab) (NULL when n_recent == 0); each distinct id's logit l
 *           becomes l / penalty if l > 0 else l * penalty (float32), duplicates count once.
 *   u:      a uniform draw in [0, 1) from the caller's seeded RNG (checked, but unused when greedy). The
 *           same u gives the same token, so the caller's RNG alone makes a run reproducible.
 * Order: penalty -> greedy if temperature == 0 or top_k == 1 -> x = logit / temperature (float64)
 *        -> top-k -> softmax -> top-p (smallest prefix, by descending logit then ascending id, whose
 *        mass >= top_p) -> inverse CDF at u over the kept tokens in that order (in id order when neither
 *        top-k nor top-p is on).
 * Allocates O(n_vocab) scratch per call. */
CROME_API crome_status crome_sample(const float *logits, int64_t n_vocab, const int64_t *recent, int64_t n_recent,
                                    const crome_sampler_params *params, double u, int32_t *token);

#ifdef __cplusplus
}
#endif

#endif /* CROME_CORE_H */
