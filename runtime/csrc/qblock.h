/* qblock.h - internal side of the block-quantised kernels (qblock.c): per-ISA row kernels that the decode
 * step (llm.c) calls directly inside its own parallel region. Not part of the public ABI. */
#ifndef CROME_QBLOCK_H
#define CROME_QBLOCK_H

#include "crome_core.h"

enum { Q8_0_BYTES = 34, Q4_1_BYTES = 20 };

/* y[i] = dot(row i, x) for i in [0, n_rows): rows of nb blocks, row i at w + i * row_bytes. xsum: the nb block
 * sums of x (crome_block_sums), which the Q4_1 kernels of the split form read (y = d·Σ q x + m·Σ x per block);
 * computed once per vector and shared by every row. */
typedef void (*crome_qrows_fn)(const uint8_t *w, int64_t row_bytes, int64_t nb, const float *x, const float *xsum,
                               float *y, int64_t n_rows);

/* xsum[b] = x[32 b] + ... + x[32 b + 31] for b in [0, nb), summed in float32 in a fixed order. */
void crome_block_sums(const float *x, int64_t nb, float *xsum);

/* The kernel for (isa, qtype), or NULL when this CPU / build cannot run that ISA or the type is unknown.
 * isa CROME_ISA_AUTO resolves to crome_isa_best(). */
crome_qrows_fn crome_qrows_kernel(int32_t isa, int32_t qtype);

#endif /* CROME_QBLOCK_H */
