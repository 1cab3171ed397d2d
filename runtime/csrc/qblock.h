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

/* The decode step's copy of a matrix (crome_llm_init), repacked once at load for the path that reads it.
 * AVX2, Q4_1: rows in pairs (an odd count's last row alone), each group's blocks in chunks of up to 8 (a row's last
 * chunk holds nb % 8):
 *   chunk of n blocks, g rows: nibbles [ceil(n/2)][g][32] | d [n][g] float32 | m [g][n] fp16
 *   32 bytes hold two blocks' nibbles: nibble t of 32-bit lane j is weight 8 (t % 4) + j of the pair's first block
 *   for t < 4, of its second for t >= 4 (an odd last block fills nibbles 0..3); rows padded to 16 bytes.
 * So x is loaded once per pair of rows, a weight needs an and, a conversion and an FMA, d needs no conversion and
 * a chunk's m · Σ x is one 8-lane FMA; ~22 bytes a block instead of 20. The weights are the same numbers (d and m
 * converted exactly). Everything else (Q8_0, other paths) keeps the GGUF layout (a plain copy).
 * Row r of the copy starts at r * crome_qpack_row_bytes(); a kernel call must start at an even row and may end at
 * an odd row only at the matrix's end (the decode step splits rows by 16 and by heads of an even size).
 * The kernels read the input as crome_qpack_input prepares it (in the xsum argument). */
int64_t crome_qpack_row_bytes(int32_t isa, int32_t qtype, int64_t cols); /* -1: cols / qtype not valid */
void crome_qpack(int32_t isa, int32_t qtype, const uint8_t *src, int64_t rows, int64_t cols, uint8_t *dst);
crome_qrows_fn crome_qpack_kernel(int32_t isa, int32_t qtype); /* NULL: as crome_qrows_kernel */
/* A vector of nb blocks as the kernels of `isa`'s copies read it: its block sums (crome_block_sums), and for AVX2
 * then x scaled per nibble position (x · 2^(-4t): the packed nibble t converts to k · 2^(4t), so the products are
 * k · x bit for bit); crome_qpack_input_floats(isa, nb) floats. */
int64_t crome_qpack_input_floats(int32_t isa, int64_t nb);
void crome_qpack_input(int32_t isa, const float *x, int64_t nb, float *out);

#endif /* CROME_QBLOCK_H */
