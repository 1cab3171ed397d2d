/* crome_core.c - library identity and status text (the kernels live in preprocess.c, gproj.c, sampler.c). */
#include "crome_core.h"

int crome_abi_version(void) { return CROME_ABI_VERSION; }

const char *crome_status_str(int status) {
    switch (status) {
    case CROME_OK: return "ok";
    case CROME_ERR_NULL: return "a required pointer is NULL";
    case CROME_ERR_SHAPE: return "a size is out of range";
    case CROME_ERR_STRIDE: return "a row stride is smaller than its row";
    case CROME_ERR_FORMAT: return "unknown pixel format or weight type";
    case CROME_ERR_PARAM: return "a parameter is out of range";
    case CROME_ERR_VALUE: return "the data is unusable (NaN/+inf logits, all logits -inf, or id out of range)";
    case CROME_ERR_NOMEM: return "out of memory";
    default: return "unknown status";
    }
}
