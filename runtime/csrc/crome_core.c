/* crome_core.c - library identity and status text (the kernels live in preprocess.c, gproj.c, sampler.c). */
#include "crome_core.h"
#include "vecmath.h"

#define STR_(x) #x
#define STR(x) STR_(x)

#if defined(__AVX512F__)
#define SIMD "AVX-512"
#elif defined(__AVX2__)
#define SIMD "AVX2"
#elif defined(__AVX__)
#define SIMD "AVX"
#elif defined(__ARM_NEON)
#define SIMD "NEON"
#elif defined(__SSE2__)
#define SIMD "SSE2"
#else
#define SIMD "scalar"
#endif

#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "unknown compiler"
#endif

int crome_abi_version(void) { return CROME_ABI_VERSION; }

const char *crome_build_info(void) { return COMPILER ", " SIMD ", " STR(CROME_VW) " floats per vector"; }

const char *crome_status_str(int status) {
    switch (status) {
    case CROME_OK: return "ok";
    case CROME_ERR_NULL: return "a required pointer is NULL";
    case CROME_ERR_SHAPE: return "a size is out of range";
    case CROME_ERR_STRIDE: return "a row stride is smaller than its row";
    case CROME_ERR_FORMAT: return "unknown pixel format";
    case CROME_ERR_PARAM: return "a parameter is out of range";
    case CROME_ERR_VALUE: return "the data is unusable (NaN/+inf logits, all logits -inf, or id out of range)";
    case CROME_ERR_NOMEM: return "out of memory";
    default: return "unknown status";
    }
}
