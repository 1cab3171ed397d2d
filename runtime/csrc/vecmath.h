/* vecmath.h - internal helpers for vectorised loops: the target's vector width as GCC/clang vector
 * types, and branch-free exp() that compilers vectorise (libm's exp/expf calls do not vectorise without
 * -ffast-math). Not part of the public ABI. */
#ifndef CROME_VECMATH_H
#define CROME_VECMATH_H

#include <stdint.h>
#include <string.h>

/* Floats per vector register of the build target (a vector type wider than the hardware's is lowered
 * badly, so this follows the -march flags). */
#if defined(__AVX512F__)
#define CROME_VW 16
#elif defined(__AVX__)
#define CROME_VW 8
#else
#define CROME_VW 4 /* SSE2, NEON */
#endif
typedef float vf __attribute__((vector_size(CROME_VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(CROME_VW * sizeof(int32_t))));

/* exp(x) for x <= 0 in double, within 2 ulp of libm: round-to-nearest reduction by ln 2, degree-13
 * Taylor polynomial on |r| <= ln2 / 2, exponent built from the integer bits. 0 below -708 and for -inf. */
static inline double exp_nonpos(double x) {
    const double xc = x < -708.0 ? -708.0 : x;
    const double shifter = 0x1.8p52;
    const double t = xc * 0x1.71547652b82fep0 + shifter; /* n = round(xc / ln2), kept in t's low bits */
    const double n = t - shifter;
    const double r = (xc - n * 0x1.62e42fefa3800p-1) - n * 0x1.ef35793c76730p-45; /* xc - n ln2 (hi + lo) */
    double q = 1.0 / 6227020800.0;                                                /* 1/13! */
    q = q * r + 1.0 / 479001600.0;
    q = q * r + 1.0 / 39916800.0;
    q = q * r + 1.0 / 3628800.0;
    q = q * r + 1.0 / 362880.0;
    q = q * r + 1.0 / 40320.0;
    q = q * r + 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    q = q * r + 1.0;
    q = q * r + 1.0;
    int64_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&sb, &shifter, sizeof sb);
    const int64_t bits = (tb - sb + 1023) * ((int64_t)1 << 52); /* 2^n, n in [-1022, 0] */
    double s;
    memcpy(&s, &bits, sizeof s);
    return x < -708.0 ? 0.0 : q * s;
}

/* expf(x) within 2 ulp for x in [-87, 88]; x is clamped to that range (so +-inf give finite extremes). */
static inline float exp_f32(float x) {
    const float xc = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float shifter = 0x1.8p23f;
    const float t = xc * 0x1.715476p0f + shifter;
    const float n = t - shifter;
    const float r = (xc - n * 0x1.62e400p-1f) - n * 0x1.7f7d1cp-20f; /* xc - n ln2 (hi + lo) */
    float q = 1.0f / 5040.0f;                                       /* 1/7! */
    q = q * r + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    int32_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&sb, &shifter, sizeof sb);
    const int32_t bits = (tb - sb + 127) * (1 << 23); /* 2^n, n in [-126, 127] */
    float s;
    memcpy(&s, &bits, sizeof s);
    return q * s;
}

#endif /* CROME_VECMATH_H */
