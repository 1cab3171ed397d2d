/* qblock.h - internal side of the block-quantised kernels (qblock.c): per-ISA row kernels that the decode
 * step (llm.c) calls directly inside its own parallel region. Not part of the public ABI. */
#ifndef CROME_QBLOCK_H
#define CROME_QBLOCK_H

#include "crome_core.h"

enum { Q8_0_BYTES = 34, Q4_1_BYTES = 20 };

/* y[i] = dot(row i, x) for i in [0, n_rows): rows of nb blocks, row i at w + i * row_bytes. */
typedef void (*crome_qrows_fn)(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, float *y,
                               int64_t n_rows);

/* The kernel for (isa, qtype), or NULL when this CPU / build cannot run that ISA or the type is unknown.
 * isa CROME_ISA_AUTO resolves to crome_isa_best(). */
crome_qrows_fn crome_qrows_kernel(int32_t isa, int32_t qtype);

#endif /* CROME_QBLOCK_H */
