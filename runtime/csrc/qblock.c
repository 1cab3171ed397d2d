/* qblock.c - GGUF Q4_1 / Q8_0 blocks x float32 vector (crome_qmatvec, crome_isa_*), one path per ISA.
 *
 * Every path computes the exact product of the float32 weights the GGUF dequantises to (d * q + m, d * q) with
 * float32 activations, accumulating in float32; the paths differ only in how the float32 roundings fall:
 *   - scalar rebuilds each weight as that float32 (d * q is exact, so a fused multiply-add rounds once, like the
 *     reference's separate add) and accumulates w * x;
 *   - AVX2, AVX-512 and NEON factor the block's scale and minimum out of its sum, the same value in exact arithmetic:
 *     Σ (d q_i + m) x_i = d · Σ q_i x_i + m · Σ x_i (Q4_1), Σ d q_i x_i = d · Σ q_i x_i (Q8_0), with Σ x_i of
 *     every block computed once per vector (crome_block_sums) and shared by every row. A weight then costs one
 *     int -> float conversion and one FMA instead of a conversion and two FMAs (one multiply for Q8_0).
 * The split form's rounding error scales with Σ (|d q_i| + |m|) |x_i| instead of Σ |w_i x_i|; for GGUF blocks (m the
 * block's minimum, d its range / 15) the two are within a small factor, and every path stays within 1e-6 Σ |w_i x_i|
 * of the exact product in the tests (tests/c/test_qdecode.c, tests/test_ccore_qblock.py).
 * The ISA is picked at run time (__builtin_cpu_supports), and the x86 paths are compiled with target
 * attributes, so a portable build (CROME_PORTABLE=1) has them too. crome_memread is the plain read loop the
 * kernels' speed is compared with (the memory-bandwidth bound).
 * Not here: threading policy beyond splitting rows (pool.c), the decode step (llm.c).
 */
#include "qblock.h"

#include "pool.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CROME_X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

/* ---- scalar (portable) ------------------------------------------------------------------------- */

/* IEEE half -> float, exact (subnormals, inf, NaN included). */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void q8_0_scalar(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum, float *y,
                        int64_t n_rows) {
    (void)xsum;
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        float acc[4] = {0, 0, 0, 0};
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * Q8_0_BYTES;
            const float d = half_to_float(load_u16(blk));
            const int8_t *q = (const int8_t *)(blk + 2);
            const float *xb = x + b * CROME_QK;
            for (int j = 0; j < CROME_QK; j++) acc[j & 3] += (d * (float)q[j]) * xb[j];
        }
        y[r] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

static void q4_1_scalar(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum, float *y,
                        int64_t n_rows) {
    (void)xsum;
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        float acc[4] = {0, 0, 0, 0};
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * Q4_1_BYTES;
            const float d = half_to_float(load_u16(blk)), m = half_to_float(load_u16(blk + 2));
            const uint8_t *qs = blk + 4;
            const float *xb = x + b * CROME_QK;
            for (int j = 0; j < CROME_QK / 2; j++) {
                acc[j & 3] += (d * (float)(qs[j] & 15) + m) * xb[j];
                acc[j & 3] += (d * (float)(qs[j] >> 4) + m) * xb[j + CROME_QK / 2];
            }
        }
        y[r] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

enum { PACK_CHUNK = 8 }; /* blocks per chunk of the decode step's repacked copy (crome_qpack, qblock.h) */
static inline int64_t round8(int64_t n) { return (n + 7) / 8 * 8; }

/* ---- AVX2 + FMA + F16C --------------------------------------------------------------------------- */
#if CROME_X86
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX2_TARGET static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Σ q_i x_i of one block as 8 float lanes (x in natural order). Q4_1: bytes 0..7 and 8..15 widened to 32-bit
 * lanes straight from memory; a byte's low nibble is weight j (0..15), its high nibble weight j + 16. */
AVX2_TARGET static inline __m256 q4_1_qx(const uint8_t *qs, const float *xb) {
    const __m256i low = _mm256_set1_epi32(15);
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, low)), _mm256_loadu_ps(xb));
    p = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, low)), _mm256_loadu_ps(xb + 8), p);
    p = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), _mm256_loadu_ps(xb + 16), p);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), _mm256_loadu_ps(xb + 24), p);
}

AVX2_TARGET static inline __m256 q8_0_qx(const int8_t *q, const float *xb) {
    __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))),
                             _mm256_loadu_ps(xb));
    for (int k = 8; k < CROME_QK; k += 8)
        p = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + k)))),
                            _mm256_loadu_ps(xb + k), p);
    return p;
}

/* One Q4_1 block of one row: acc += d · Σ q x (8 lanes), accm += (d, m, 0, 0) · Σ x, whose lane 1 is the row's
 * Σ m · Σ x (lane 0 is not used). d, m: one 4-byte load and one half -> float conversion of the pair (xmm),
 * then d broadcast: 1.1x over converting a broadcast pair in ymm and splitting it with moveldup. */
AVX2_TARGET static inline void q4_1_block256(const uint8_t *p, const float *xb, const float *s, __m256 *acc,
                                             __m128 *accm) {
    int32_t dm_bits;
    memcpy(&dm_bits, p, sizeof dm_bits);
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dm_bits)); /* d, m, 0, 0 */
    *acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), q4_1_qx(p + 4, xb), *acc);
    *accm = _mm_fmadd_ps(dm, _mm_broadcast_ss(s), *accm);
}

/* One row at a time, two blocks per iteration (two accumulator chains). Two rows sharing the x loads ran as fast
 * from cache and 1.3-9x slower streaming from memory (two interleaved row streams; the head 16.8 vs 1.8 ms),
 * measured on Zen 4 with this path forced. */
AVX2_TARGET static void q4_1_avx2(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum,
                                  float *y, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m128 m0 = _mm_setzero_ps(), m1 = _mm_setzero_ps();
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            q4_1_block256(row + b * Q4_1_BYTES, x + b * CROME_QK, xsum + b, &a0, &m0);
            q4_1_block256(row + (b + 1) * Q4_1_BYTES, x + (b + 1) * CROME_QK, xsum + b + 1, &a1, &m1);
        }
        if (b < nb) q4_1_block256(row + b * Q4_1_BYTES, x + b * CROME_QK, xsum + b, &a0, &m0);
        y[r] = hsum256(_mm256_add_ps(a0, a1)) + _mm_cvtss_f32(_mm_movehdup_ps(_mm_add_ps(m0, m1)));
    }
}

AVX2_TARGET static inline __m256 half_broadcast(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_set1_epi16((short)load_u16(p)));
}

AVX2_TARGET static void q8_0_avx2(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum,
                                  float *y, int64_t n_rows) {
    (void)xsum;
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *p = row + b * Q8_0_BYTES;
            a0 = _mm256_fmadd_ps(half_broadcast(p), q8_0_qx((const int8_t *)(p + 2), x + b * CROME_QK), a0);
        }
        y[r] = hsum256(a0);
    }
}

/* ---- AVX2 on the decode step's repacked copy (layout: crome_qpack) ---------------------------------- */

#ifndef CROME_PREFETCH
#define CROME_PREFETCH 2048
#endif
/* Asks for the cache lines CROME_PREFETCH bytes ahead of the `bytes` (64 or 128) about to be read: the decode step
 * streams its ~100 MB of blocks from memory every token, and with the hardware prefetcher alone the AVX2 step took
 * 1.1-1.2x the CPU time (Zen 4 VM, AVX2 forced, 1 thread; 1024-3072 bytes ahead within the noise, 2048 kept). The
 * Q8_0 head ran slower with it (1.8 vs 1.6 ms), so only the Q4_1 layers ask. */
AVX2_TARGET static inline void prefetch_ahead(const uint8_t *p, int bytes) {
    _mm_prefetch((const char *)(p + CROME_PREFETCH), _MM_HINT_T0);
    if (bytes > 64) _mm_prefetch((const char *)(p + CROME_PREFETCH + 64), _MM_HINT_T0);
}

/* Σ q x of two blocks of one row from their 32 packed bytes (crome_qpack): nibble t of 32-bit lane j is weight
 * 8 (t % 4) + j of the first block (t < 4) or the second. Masked in place, nibble t converts to k · 2^(4t), which
 * the prescaled input (x · 2^(-4t), crome_qpack_input) cancels exactly: the products are k · x, bit for bit, and a
 * weight costs an and, a conversion and an FMA (no widening, no shift but the top nibble's). */
AVX2_TARGET static inline __m256 q4_pos(__m256i v, int t) {
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15 << (4 * t))));
}

AVX2_TARGET static inline void q4_pair(const uint8_t *q, const float *xs, __m256 *qa, __m256 *qb) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    __m256 a = _mm256_mul_ps(q4_pos(v, 0), _mm256_loadu_ps(xs));
    a = _mm256_fmadd_ps(q4_pos(v, 1), _mm256_loadu_ps(xs + 8), a);
    a = _mm256_fmadd_ps(q4_pos(v, 2), _mm256_loadu_ps(xs + 16), a);
    *qa = _mm256_fmadd_ps(q4_pos(v, 3), _mm256_loadu_ps(xs + 24), a);
    __m256 b = _mm256_mul_ps(q4_pos(v, 4), _mm256_loadu_ps(xs + 32));
    b = _mm256_fmadd_ps(q4_pos(v, 5), _mm256_loadu_ps(xs + 40), b);
    b = _mm256_fmadd_ps(q4_pos(v, 6), _mm256_loadu_ps(xs + 48), b);
    *qb = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28)), _mm256_loadu_ps(xs + 56), b);
}

/* the first block alone (a row's odd last block, packed with nibbles 4..7 zero) */
AVX2_TARGET static inline __m256 q4_single(const uint8_t *q, const float *xs) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    __m256 a = _mm256_mul_ps(q4_pos(v, 0), _mm256_loadu_ps(xs));
    a = _mm256_fmadd_ps(q4_pos(v, 1), _mm256_loadu_ps(xs + 8), a);
    a = _mm256_fmadd_ps(q4_pos(v, 2), _mm256_loadu_ps(xs + 16), a);
    return _mm256_fmadd_ps(q4_pos(v, 3), _mm256_loadu_ps(xs + 24), a);
}

/* g rows (1 or 2) of one group; in: crome_qpack_input's sums then the prescaled x. d is a float32 broadcast from
 * memory (no conversion), a chunk's m · Σ x is one 8-lane FMA. */
AVX2_TARGET __attribute__((always_inline)) static inline void q4_1_group_avx2(const uint8_t *p, int g, int64_t nb,
                                                                             const float *in, float *y) {
    const float *xsum = in, *xs = in + round8(nb);
    __m256 a[2][2] = {{_mm256_setzero_ps(), _mm256_setzero_ps()}, {_mm256_setzero_ps(), _mm256_setzero_ps()}};
    float tail[2] = {0.0f, 0.0f};
    for (int64_t b0 = 0; b0 < nb; b0 += PACK_CHUNK) {
        const int64_t n = nb - b0 < PACK_CHUNK ? nb - b0 : PACK_CHUNK, pairs = (n + 1) / 2;
        const float *d = (const float *)(p + pairs * 32 * g);
        const uint8_t *mh = (const uint8_t *)(d + n * g);
        for (int64_t k = 0; k + 2 <= n; k += 2) {
            const float *xb = xs + (b0 + k) * CROME_QK;
            prefetch_ahead(p + k / 2 * g * 32, g * 64);
            for (int i = 0; i < g; i++) {
                __m256 qa, qb;
                q4_pair(p + (k / 2 * g + i) * 32, xb, &qa, &qb);
                a[i][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + k * g + i), qa, a[i][0]);
                a[i][1] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + (k + 1) * g + i), qb, a[i][1]);
            }
        }
        if (n & 1)
            for (int i = 0; i < g; i++)
                a[i][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + (n - 1) * g + i),
                                          q4_single(p + ((n - 1) / 2 * g + i) * 32, xs + (b0 + n - 1) * CROME_QK),
                                          a[i][0]);
        if (n == PACK_CHUNK) {
            const __m256 sums = _mm256_loadu_ps(xsum + b0);
            for (int i = 0; i < g; i++)
                a[i][1] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mh + 16 * i))), sums,
                                          a[i][1]);
        } else {
            for (int i = 0; i < g; i++)
                for (int64_t k = 0; k < n; k++) tail[i] += _cvtsh_ss(load_u16(mh + 2 * (i * n + k))) * xsum[b0 + k];
        }
        p += (pairs * 32 + n * 6) * g;
    }
    for (int i = 0; i < g; i++) y[i] = hsum256(_mm256_add_ps(a[i][0], a[i][1])) + tail[i];
}

/* Two rows (one group) at a time, so each block's x is loaded once for both rows; an odd count's last row alone. */
AVX2_TARGET static void q4_1_packed_avx2(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x,
                                         const float *in, float *y, int64_t n_rows) {
    (void)x;
    int64_t r = 0;
    for (; r + 2 <= n_rows; r += 2) q4_1_group_avx2(w + r * row_bytes, 2, nb, in, y + r);
    if (r < n_rows) q4_1_group_avx2(w + r * row_bytes, 1, nb, in, y + r);
}

/* ---- AVX-512 F + BW ------------------------------------------------------------------------------ */
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx2,fma,f16c")))

/* The split form, as AVX2, 16 lanes. Replaced (measured on Zen 4, in cache, 1 thread): the lookup-table kernel
 * (the block's 16 weights d k + m in a register, picked by vpermps; 1.12-1.15x slower) and d multiplied into every
 * Q8_0 product (1.14x slower). Zen 4 runs 512-bit operations as two 256-bit halves, so there AVX-512 and AVX2
 * reach the same ~19-21 Gweights/s; CPUs with full-width AVX-512 units gain more. */
/* Σ q x of a block in 16 lanes from one widening load, then d and m once per block. */
AVX512_TARGET static inline void q4_1_split512(const uint8_t *p, const float *xb, const float *s, __m512 *acc,
                                               __m128 *accm) {
    int32_t dm_bits;
    memcpy(&dm_bits, p, sizeof dm_bits);
    const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(dm_bits)); /* d, m, 0, 0 */
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 4))); /* (16) qs[j] */
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
    const __m512 qx = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
    *acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(dm), qx, *acc);
    *accm = _mm_fmadd_ps(dm, _mm_broadcast_ss(s), *accm);
}

AVX512_TARGET static void q4_1_avx512(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x,
                                       const float *xsum, float *y, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        __m128 m0 = _mm_setzero_ps(), m1 = _mm_setzero_ps();
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            q4_1_split512(row + b * Q4_1_BYTES, x + b * CROME_QK, xsum + b, &a0, &m0);
            q4_1_split512(row + (b + 1) * Q4_1_BYTES, x + (b + 1) * CROME_QK, xsum + b + 1, &a1, &m1);
        }
        if (b < nb) q4_1_split512(row + b * Q4_1_BYTES, x + b * CROME_QK, xsum + b, &a0, &m0);
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + _mm_cvtss_f32(_mm_movehdup_ps(_mm_add_ps(m0, m1)));
    }
}

AVX512_TARGET static inline __m512 q8_0_qx512(const uint8_t *q, const float *xb) {
    const __m512 p0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
    const __m512 p1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
    return _mm512_fmadd_ps(p1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(p0, _mm512_loadu_ps(xb)));
}

AVX512_TARGET static void q8_0_avx512(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x,
                                       const float *xsum, float *y, int64_t n_rows) {
    (void)xsum;
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            const uint8_t *p = row + b * Q8_0_BYTES;
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(load_u16(p))), q8_0_qx512(p + 2, x + b * CROME_QK), a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(load_u16(p + Q8_0_BYTES))),
                                 q8_0_qx512(p + Q8_0_BYTES + 2, x + (b + 1) * CROME_QK), a1);
        }
        if (b < nb) {
            const uint8_t *p = row + b * Q8_0_BYTES;
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(_cvtsh_ss(load_u16(p))), q8_0_qx512(p + 2, x + b * CROME_QK), a0);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}
#endif /* CROME_X86 */

/* ---- NEON (aarch64) ------------------------------------------------------------------------------ */
#if defined(__aarch64__)
static inline float32x4_t u8x4_lo(uint8x8_t v) { return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(v)))); }
static inline float32x4_t u8x4_hi(uint8x8_t v) { return vcvtq_f32_u32(vmovl_u16(vget_high_u16(vmovl_u8(v)))); }
static inline float32x4_t s8x4_lo(int8x8_t v) { return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(v)))); }
static inline float32x4_t s8x4_hi(int8x8_t v) { return vcvtq_f32_s32(vmovl_s16(vget_high_s16(vmovl_s8(v)))); }

static inline float half_neon(const uint8_t *p) {
    __fp16 h;
    memcpy(&h, p, sizeof h);
    return (float)h;
}

/* Σ q_i x_i of one block as 4 float lanes, in two chains (p0: weights 0..7 and 16..23, p1: 8..15 and 24..31). */
static inline float32x4_t q4_1_qx_neon(const uint8_t *qs, const float *xb) {
    const uint8x16_t v = vld1q_u8(qs);
    const uint8x16_t lo = vandq_u8(v, vdupq_n_u8(15)), hi = vshrq_n_u8(v, 4);
    const uint8x8_t parts[4] = {vget_low_u8(lo), vget_high_u8(lo), vget_low_u8(hi), vget_high_u8(hi)};
    float32x4_t p0 = vmulq_f32(u8x4_lo(parts[0]), vld1q_f32(xb)), p1 = vmulq_f32(u8x4_lo(parts[1]), vld1q_f32(xb + 8));
    p0 = vfmaq_f32(p0, u8x4_hi(parts[0]), vld1q_f32(xb + 4));
    p1 = vfmaq_f32(p1, u8x4_hi(parts[1]), vld1q_f32(xb + 12));
    p0 = vfmaq_f32(p0, u8x4_lo(parts[2]), vld1q_f32(xb + 16));
    p1 = vfmaq_f32(p1, u8x4_lo(parts[3]), vld1q_f32(xb + 24));
    p0 = vfmaq_f32(p0, u8x4_hi(parts[2]), vld1q_f32(xb + 20));
    p1 = vfmaq_f32(p1, u8x4_hi(parts[3]), vld1q_f32(xb + 28));
    return vaddq_f32(p0, p1);
}

static inline float32x4_t q8_0_qx_neon(const int8_t *q, const float *xb) {
    float32x4_t p0 = vdupq_n_f32(0), p1 = vdupq_n_f32(0);
    for (int h = 0; h < 4; h++) {
        const int8x8_t v = vld1_s8(q + 8 * h);
        p0 = vfmaq_f32(p0, s8x4_lo(v), vld1q_f32(xb + 8 * h));
        p1 = vfmaq_f32(p1, s8x4_hi(v), vld1q_f32(xb + 8 * h + 4));
    }
    return vaddq_f32(p0, p1);
}

static void q8_0_neon(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum, float *y,
                      int64_t n_rows) {
    (void)xsum;
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        float32x4_t acc = vdupq_n_f32(0);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * Q8_0_BYTES;
            acc = vfmaq_n_f32(acc, q8_0_qx_neon((const int8_t *)(blk + 2), x + b * CROME_QK), half_neon(blk));
        }
        y[r] = vaddvq_f32(acc);
    }
}

static void q4_1_neon(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum, float *y,
                      int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * row_bytes;
        float32x4_t acc = vdupq_n_f32(0);
        float accm = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * Q4_1_BYTES;
            acc = vfmaq_n_f32(acc, q4_1_qx_neon(blk + 4, x + b * CROME_QK), half_neon(blk));
            accm += half_neon(blk + 2) * xsum[b];
        }
        y[r] = vaddvq_f32(acc) + accm;
    }
}
#endif /* __aarch64__ */

/* ---- dispatch ------------------------------------------------------------------------------------ */

int crome_isa_supported(int32_t isa) {
    switch (isa) {
    case CROME_ISA_AUTO:
    case CROME_ISA_SCALAR: return 1;
#if CROME_X86
    case CROME_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case CROME_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               crome_isa_supported(CROME_ISA_AVX2);
#endif
#if defined(__aarch64__)
    case CROME_ISA_NEON: return 1;
#endif
    default: return 0;
    }
}

int32_t crome_isa_best(void) {
    const int32_t order[] = {CROME_ISA_AVX512, CROME_ISA_AVX2, CROME_ISA_NEON};
    for (unsigned i = 0; i < sizeof order / sizeof order[0]; i++)
        if (crome_isa_supported(order[i])) return order[i];
    return CROME_ISA_SCALAR;
}

crome_qrows_fn crome_qrows_kernel(int32_t isa, int32_t qtype) {
    if (isa == CROME_ISA_AUTO) isa = crome_isa_best();
    if (!crome_isa_supported(isa) || (qtype != CROME_QTYPE_Q4_1 && qtype != CROME_QTYPE_Q8_0)) return NULL;
    const int q8 = qtype == CROME_QTYPE_Q8_0;
    switch (isa) {
    case CROME_ISA_SCALAR: return q8 ? q8_0_scalar : q4_1_scalar;
#if CROME_X86
    case CROME_ISA_AVX2: return q8 ? q8_0_avx2 : q4_1_avx2;
    case CROME_ISA_AVX512: return q8 ? q8_0_avx512 : q4_1_avx512;
#endif
#if defined(__aarch64__)
    case CROME_ISA_NEON: return q8 ? q8_0_neon : q4_1_neon;
#endif
    default: return NULL;
    }
}

int64_t crome_qrow_bytes(int32_t qtype, int64_t cols) {
    if (cols < CROME_QK || cols % CROME_QK) return -1;
    switch (qtype) {
    case CROME_QTYPE_Q4_1: return cols / CROME_QK * Q4_1_BYTES;
    case CROME_QTYPE_Q8_0: return cols / CROME_QK * Q8_0_BYTES;
    default: return -1;
    }
}

/* ---- the decode step's repacked copy ------------------------------------------------------------- */

/* Which copies are repacked: AVX2's Q4_1 matrices (the layers: ~80 % of a step). Q8_0 (the head) keeps the GGUF
 * layout on every path: repacked (float32 d, rows alone or in pairs) it ran 0.8-1.0x, streaming its 30 MB. */
static int packs(int32_t isa, int32_t qtype) {
    if (isa == CROME_ISA_AUTO) isa = crome_isa_best();
    return isa == CROME_ISA_AVX2 && qtype == CROME_QTYPE_Q4_1;
}

int64_t crome_qpack_row_bytes(int32_t isa, int32_t qtype, int64_t cols) {
    const int64_t gguf = crome_qrow_bytes(qtype, cols);
    if (gguf < 0 || !packs(isa, qtype)) return gguf;
    /* d as float32 (+2 bytes a block), an odd last block padded to 32 bytes, rows to 16 so that a pair's 32-byte
     * loads never straddle cache lines */
    const int64_t nb = cols / CROME_QK;
    return (nb * 22 + (nb & 1) * 16 + 15) / 16 * 16;
}

crome_qrows_fn crome_qpack_kernel(int32_t isa, int32_t qtype) {
#if CROME_X86
    if (packs(isa, qtype) && crome_isa_supported(CROME_ISA_AVX2)) return q4_1_packed_avx2;
#endif
    return crome_qrows_kernel(isa, qtype);
}

int64_t crome_qpack_input_floats(int32_t isa, int64_t nb) {
    return packs(isa, CROME_QTYPE_Q4_1) ? round8(nb) + nb * CROME_QK : nb;
}

void crome_qpack_input(int32_t isa, const float *x, int64_t nb, float *out) {
    crome_block_sums(x, nb, out);
    if (!packs(isa, CROME_QTYPE_Q4_1)) return;
    float *xs = out + round8(nb);
    /* nibble t of a packed pair's 32-bit lane converts to k · 2^(4t) (t < 7; the top one is shifted down) */
    static const float scale[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f, 1.0f};
    for (int64_t b = 0; b < nb; b++)
        for (int j = 0; j < CROME_QK; j++) xs[b * CROME_QK + j] = x[b * CROME_QK + j] * scale[4 * (b & 1) + j / 8];
}

/* nibble j (0..31) of a GGUF Q4_1 block's 16 bytes: weight j */
static inline unsigned q4_nibble(const uint8_t *qs, int j) { return j < 16 ? qs[j] & 15u : (unsigned)qs[j - 16] >> 4; }

/* the 32 packed bytes of blocks A and B (NULL: zero) of one row: nibble t of lane j = weight 8 (t % 4) + j */
static void pack_q4_pair(const uint8_t *qa, const uint8_t *qb, uint8_t *dst) {
    for (int j = 0; j < 8; j++) {
        uint32_t lane = 0;
        for (int t = 0; t < 8; t++) {
            const uint8_t *q = t < 4 ? qa : qb;
            if (q) lane |= (uint32_t)q4_nibble(q, 8 * (t % 4) + j) << (4 * t);
        }
        memcpy(dst + 4 * j, &lane, 4);
    }
}

/* g rows (1 or 2) of GGUF Q4_1 blocks, src_row_bytes apart, into one group of the repacked layout at dst. */
static void pack_group(const uint8_t *src, int64_t src_row_bytes, int g, int64_t nb, uint8_t *dst) {
    for (int64_t b0 = 0; b0 < nb; b0 += PACK_CHUNK) {
        const int64_t n = nb - b0 < PACK_CHUNK ? nb - b0 : PACK_CHUNK, pairs = (n + 1) / 2;
        uint8_t *d = dst + pairs * 32 * g, *mh = d + n * g * 4;
        for (int64_t k = 0; k < n; k++) {
            for (int i = 0; i < g; i++) {
                const uint8_t *blk = src + i * src_row_bytes + (b0 + k) * Q4_1_BYTES;
                const float dv = half_to_float(load_u16(blk));
                memcpy(d + (k * g + i) * 4, &dv, 4);
                memcpy(mh + (i * n + k) * 2, blk + 2, 2);
                if (k % 2 == 0)
                    pack_q4_pair(blk + 4, k + 1 < n ? blk + Q4_1_BYTES + 4 : NULL, dst + (k / 2 * g + i) * 32);
            }
        }
        dst += (pairs * 32 + n * 6) * g;
    }
}

void crome_qpack(int32_t isa, int32_t qtype, const uint8_t *src, int64_t rows, int64_t cols, uint8_t *dst) {
    const int64_t src_rb = crome_qrow_bytes(qtype, cols), rb = crome_qpack_row_bytes(isa, qtype, cols);
    if (!packs(isa, qtype)) {
        memcpy(dst, src, (size_t)(rows * src_rb));
        return;
    }
    memset(dst, 0, (size_t)(rows * rb)); /* the padding too */
    for (int64_t r = 0; r < rows; r += 2)
        pack_group(src + r * src_rb, src_rb, rows - r >= 2 ? 2 : 1, cols / CROME_QK, dst + r * rb);
}

void crome_block_sums(const float *x, int64_t nb, float *xsum) {
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * CROME_QK;
        float s[4] = {0, 0, 0, 0};
        for (int j = 0; j < CROME_QK; j++) s[j & 3] += xb[j];
        xsum[b] = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

typedef struct matvec_job {
    crome_qrows_fn kernel;
    const uint8_t *w;
    int64_t row_bytes, nb, rows;
    const float *x, *xsum;
    float *y;
} matvec_job;

enum { ROW_GRAIN = 16 }; /* rows per unit of work: whole cache lines of y per thread */

static void matvec_part(void *ctx, int thread, int n_threads) {
    const matvec_job *j = ctx;
    int64_t r0, r1;
    crome_split(j->rows, ROW_GRAIN, thread, n_threads, &r0, &r1);
    if (r1 > r0) j->kernel(j->w + r0 * j->row_bytes, j->row_bytes, j->nb, j->x, j->xsum, j->y + r0, r1 - r0);
}

crome_status crome_qmatvec(crome_pool *pool, int32_t isa, int32_t qtype, const void *w, int64_t rows, int64_t cols,
                           const float *x, float *y) {
    if (!w || !x || !y) return CROME_ERR_NULL;
    const int64_t row_bytes = crome_qrow_bytes(qtype, cols);
    if (qtype != CROME_QTYPE_Q4_1 && qtype != CROME_QTYPE_Q8_0) return CROME_ERR_PARAM;
    if (row_bytes < 0 || cols > ((int64_t)1 << 20) || rows < 1 || rows > ((int64_t)1 << 31)) return CROME_ERR_SHAPE;
    crome_qrows_fn kernel = crome_qrows_kernel(isa, qtype);
    if (!kernel) return CROME_ERR_PARAM;
    const int64_t nb = cols / CROME_QK;
    float *xsum = malloc(sizeof(float) * (size_t)nb);
    if (!xsum) return CROME_ERR_NOMEM;
    crome_block_sums(x, nb, xsum);
    matvec_job job = {kernel, w, row_bytes, nb, rows, x, xsum, y};
    crome_pool_run(pool, matvec_part, &job);
    free(xsum);
    return CROME_OK;
}


/* ---- read bandwidth probe ------------------------------------------------------------------------ */

typedef struct memread_job {
    const uint64_t *words;
    int64_t n_words;
    uint64_t partial[256]; /* one per thread (a pool has at most 256) */
} memread_job;

enum { READ_GRAIN = 512 }; /* words per unit of work: 4 KiB pages */

static void memread_part(void *ctx, int thread, int n_threads) {
    memread_job *j = ctx;
    int64_t a, b;
    crome_split(j->n_words, READ_GRAIN, thread, n_threads, &a, &b);
    uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0, x4 = 0, x5 = 0, x6 = 0, x7 = 0; /* 8 chains: the loop vectorises */
    int64_t i = a;
    for (; i + 8 <= b; i += 8) {
        const uint64_t *p = j->words + i;
        x0 ^= p[0], x1 ^= p[1], x2 ^= p[2], x3 ^= p[3], x4 ^= p[4], x5 ^= p[5], x6 ^= p[6], x7 ^= p[7];
    }
    for (; i < b; i++) x0 ^= j->words[i];
    j->partial[thread] = ((x0 ^ x1) ^ (x2 ^ x3)) ^ ((x4 ^ x5) ^ (x6 ^ x7));
}

crome_status crome_memread(crome_pool *pool, const void *data, int64_t n_bytes, uint64_t *checksum) {
    if (!data || !checksum) return CROME_ERR_NULL;
    if (n_bytes < 0) return CROME_ERR_SHAPE;
    if ((uintptr_t)data & 7) return CROME_ERR_PARAM;
    memread_job job;
    memset(&job, 0, sizeof job);
    job.words = data;
    job.n_words = n_bytes / 8;
    crome_pool_run(pool, memread_part, &job);
    uint64_t sum = 0;
    for (int t = 0; t < 256; t++) sum ^= job.partial[t];
    const uint8_t *tail = (const uint8_t *)data + job.n_words * 8;
    for (int64_t k = 0; k < n_bytes % 8; k++) sum ^= (uint64_t)tail[k] << (8 * k);
    *checksum = sum;
    return CROME_OK;
}
