/*
 * crome_core.h - the C core of the crome-edge runtime (torch-free, loaded with ctypes).
 *
 * Kernels on the runtime's per-frame / per-token path, each kept only because it beats its
 * numpy / OpenCV / onnxruntime alternative on the benchmark (benchmarks/bench_ccore.py,
 * benchmarks/bench_decode.py, RESULTS.md):
 *
 *   crome_preprocess   camera frame (BGR/RGB/YUYV/NV12, any row stride) -> resized, normalised CHW float
 *   crome_gproj_*      the CROME adapter's fused gated projection (docs/architecture.md §2), float32 weights
 *   crome_sample       next-token sampler: greedy, temperature, top-k, top-p, repetition penalty
 *   crome_qmatvec      block-quantised (GGUF Q4_1 / Q8_0) matrix x float32 vector, threaded, per-ISA paths
 *   crome_llm_*        one LLaMA-family decode step over a KV cache the handle owns, on those blocks
 *
 * Conventions (all functions):
 *   - Every function that can fail returns a crome_status; on error it writes nothing to its outputs.
 *   - Buffers are caller-owned unless a function says otherwise; no function keeps a pointer it was passed.
 *   - Sizes and strides are int64_t; strides of image rows are in bytes and may be negative (bottom-up
 *     frames), strides of float rows are in elements.
 *   - No global state: every function is re-entrant. crome_gproj handles are immutable after init and
 *     may be used from several threads at once; crome_pool and crome_llm handles say otherwise below.
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
#define CROME_ABI_VERSION 5

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

/* ------------------------------------------------------------------------------------------------ */
/* Block-quantised weights (ggml's block layouts, byte for byte as a GGUF file stores them)           */
/* ------------------------------------------------------------------------------------------------ */

/* A quantised matrix (rows, cols) is rows x (cols / 32) blocks, row-major, rows packed (row r starts at
 * r * crome_qrow_bytes(qtype, cols)); cols must be a multiple of CROME_QK. Block b of a row holds
 * weights [32 b, 32 b + 32):
 *   Q8_0 (34 bytes): fp16 d, int8 q[32];            w[j] = d * q[j]
 *   Q4_1 (20 bytes): fp16 d, fp16 m, uint8 qs[16];  w[j] = d * (qs[j] & 15) + m        (j < 16)
 *                                                   w[j] = d * (qs[j - 16] >> 4) + m   (j >= 16)
 * d * q is exact in float32 (an fp16 significand times a <= 8-bit integer), so every path below uses the
 * float32 weight the GGUF dequantises to (gguf.quants: (d * q) + m) bit for bit; results differ from a
 * float32 matmul over the dequantised matrix only in the order the products are summed. */
#define CROME_QK 32

typedef enum crome_qtype {  /* ggml's type ids */
    CROME_QTYPE_F32 = 0,    /* plain float32 (norm weights only) */
    CROME_QTYPE_Q4_1 = 3,
    CROME_QTYPE_Q8_0 = 8,
} crome_qtype;

typedef enum crome_isa {    /* which kernel path runs; chosen at run time, not by the build flags */
    CROME_ISA_AUTO = 0,     /* the best path this CPU supports */
    CROME_ISA_SCALAR = 1,   /* portable C: every build, every CPU */
    CROME_ISA_AVX2 = 2,     /* x86-64 with AVX2 + FMA + F16C */
    CROME_ISA_AVX512 = 3,   /* x86-64 with AVX-512 F + BW */
    CROME_ISA_NEON = 4,     /* aarch64 (Jetson) */
} crome_isa;

CROME_API int crome_isa_supported(int32_t isa); /* 1 when this library on this CPU can run `isa`, else 0 */
CROME_API int32_t crome_isa_best(void);         /* what CROME_ISA_AUTO resolves to here */
CROME_API int64_t crome_qrow_bytes(int32_t qtype, int64_t cols); /* bytes per row; -1 for a bad type/size */

/* A pool of worker threads (n_threads - 1 of them: the calling thread is the first worker). Idle workers
 * spin briefly after each job (decode dispatches hundreds of jobs per token), then sleep. A pool runs one
 * job at a time: calls from several threads on one pool are serialised. */
typedef struct crome_pool crome_pool; /* opaque */

CROME_API crome_status crome_pool_init(int32_t n_threads, crome_pool **out); /* 1 .. 256; *out NULL on error */
CROME_API void crome_pool_free(crome_pool *pool);                           /* NULL is a no-op; joins workers */
CROME_API int32_t crome_pool_threads(const crome_pool *pool);

/* y[r] = sum_c W[r, c] * x[c] for r in [0, rows): W a (rows, cols) quantised matrix (layout above).
 *   pool: splits rows across its threads (NULL: the calling thread alone). isa: crome_isa
 *   (CROME_ERR_PARAM if this CPU cannot run it). rows 1 .. 2^31, cols a multiple of 32 in 32 .. 2^20.
 *   x: cols float32, y: rows float32; y must not overlap W or x. Allocates cols / 32 floats per call (x's block
 *   sums; CROME_ERR_NOMEM if that fails). */
CROME_API crome_status crome_qmatvec(crome_pool *pool, int32_t isa, int32_t qtype, const void *w, int64_t rows,
                                     int64_t cols, const float *x, float *y);

/* Reads bytes [0, n_bytes) of data once, split across the pool's threads like crome_qmatvec's rows, and
 * writes the XOR of its 64-bit words (a tail of n_bytes % 8 included byte-wise) to *checksum: the memory
 * read bound the kernels are measured against (benchmarks time this call). data 8-byte aligned. */
CROME_API crome_status crome_memread(crome_pool *pool, const void *data, int64_t n_bytes, uint64_t *checksum);

/* ------------------------------------------------------------------------------------------------ */
/* LLaMA-family decode step on quantised weights (RMSNorm, rotate-half RoPE, GQA attention, SwiGLU)   */
/* ------------------------------------------------------------------------------------------------ */

/* Hugging Face LlamaForCausalLM semantics, float32 activations throughout:
 *   h = x;  per layer:  a = RMSNorm(h) ;  q, k, v = a.Wq, a.Wk, a.Wv ;  q, k = RoPE(q, k, position)
 *           h += softmax(q . K^T / sqrt(head_dim)) . V . Wo    (query head i reads kv head i / (heads / kv_heads))
 *           b = RMSNorm(h) ;  h += (SiLU(b.Wg) * (b.Wu)) . Wd
 *   logits = RMSNorm(h) . Whead^T
 * RMSNorm(x) = w * (x / sqrt(mean(x^2) + eps)); RoPE pairs element i with i + head_dim / 2 of each head
 * (HF's rotate_half; a GGUF's q/k rows are stored interleaved and must be un-permuted, row by row, first)
 * with angle position * theta^(-2i / head_dim). */
typedef struct crome_llm_params {
    int32_t n_layers;   /* 1 .. 1024 */
    int32_t d_model;    /* multiple of 32 */
    int32_t n_heads;    /* a multiple of n_kv_heads */
    int32_t n_kv_heads;
    int32_t head_dim;   /* even; n_heads * head_dim a multiple of 32 */
    int32_t d_ff;       /* multiple of 32 */
    int32_t vocab;      /* 1 .. 2^24 */
    float rms_eps;      /* > 0 */
    float rope_theta;   /* > 0 */
    int32_t n_threads;  /* 1 .. 256: the handle's own pool */
    int32_t isa;        /* crome_isa */
} crome_llm_params;

/* One weight matrix: (out, in) rows of blocks as crome_qmatvec reads them, HF orientation (y = W x). */
typedef struct crome_qtensor {
    const void *data;
    int32_t qtype; /* CROME_QTYPE_Q4_1 or CROME_QTYPE_Q8_0 */
} crome_qtensor;

typedef struct crome_llm_layer {
    crome_qtensor q, k, v;    /* (heads*hd, d), (kv*hd, d), (kv*hd, d) */
    crome_qtensor o;          /* (d, heads*hd) */
    crome_qtensor gate, up;   /* (d_ff, d) */
    crome_qtensor down;       /* (d, d_ff) */
    const float *attn_norm;   /* (d) */
    const float *ffn_norm;    /* (d) */
} crome_llm_layer;

typedef struct crome_llm_weights {
    const crome_llm_layer *layers; /* n_layers */
    const float *final_norm;       /* (d) */
    crome_qtensor head;            /* (vocab, d); a tied head is the embedding table's blocks */
} crome_llm_weights;

/* Mutable (the KV cache): one thread at a time per handle. */
typedef struct crome_llm crome_llm; /* opaque */

CROME_API crome_llm_params crome_llm_params_default(void); /* SmolLM2-135M's dims, 1 thread, CROME_ISA_AUTO */

/* Copies every weight into the handle (the caller may free its buffers on return) and starts its pool.
 * The KV cache starts empty with room for 1 token (grow it with crome_llm_reserve). *out NULL on error. */
CROME_API crome_status crome_llm_init(const crome_llm_params *params, const crome_llm_weights *weights,
                                      crome_llm **out);
CROME_API void crome_llm_free(crome_llm *llm); /* NULL is a no-op */

/* Room for n_tokens positions (1 .. 2^24); keeps the cached tokens; only grows. */
CROME_API crome_status crome_llm_reserve(crome_llm *llm, int64_t n_tokens);
CROME_API int64_t crome_llm_capacity(const crome_llm *llm);
CROME_API int64_t crome_llm_length(const crome_llm *llm); /* tokens in the cache = the next step's position */

/* Sets the cached tokens to n_tokens (0 .. capacity): 0 empties the cache; a prefill computed elsewhere
 * loads its keys/values with crome_llm_set_kv for every layer and then sets the length. */
CROME_API crome_status crome_llm_set_length(crome_llm *llm, int64_t n_tokens);

/* Positions [0, n_tokens) of layer `layer`: k and v float32 (n_kv_heads, n_tokens, head_dim), contiguous,
 * keys after RoPE (what an HF / ONNX decoder returns as present key/value). n_tokens <= capacity. */
CROME_API crome_status crome_llm_set_kv(crome_llm *llm, int32_t layer, const float *k, const float *v,
                                        int64_t n_tokens);

/* One token at position length(): x (d) float32 input embedding -> logits (vocab) float32; appends the
 * token's keys/values to the cache. CROME_ERR_SHAPE when the cache is full (reserve first). */
CROME_API crome_status crome_llm_step(crome_llm *llm, const float *x, float *logits);

#ifdef __cplusplus
}
#endif

#endif /* CROME_CORE_H */
