/* The "lut" runtime layout of binary weights and its 4-input lookup kernel (AVX2 CPUs without AVX-512).
 *
 * Why. On 256-bit units the bit-plane kernel (kernels_avx2.c) spends a shift, an AND, a vpmaddubsw and an add per 32
 * weights and activation row. A lookup kernel instead takes 4 weight bits of one row as an index into a table of the
 * 16 subset sums of 4 int8 activations (T-MAC / bitnet.cpp TL1 style): vpshufb looks up 32 such indices at once when
 * every index byte of a 128-bit lane belongs to the same 4 inputs - so 16 rows go side by side. The sums reach
 * |4 * 127| = 508, more than a byte: each table is split into its low and high bytes (two vpshufb), which vpunpck
 * turns back into int16 sums (at most 2 x 32 x 508 per slab: no overflow), added to int32 once per slab. The results
 * are exact: the same int32 B q as every other int8 kernel.
 *
 * Layout (built from the packed bits of packing.py by onebit_binary_to_lut, never stored on disk). Rows go in blocks
 * of 16 (N padded to nblk = ceil(N / 16) blocks; padding rows are zero bytes); inputs in chunks of 16 (kc =
 * ceil(kbytes / 2) chunks per row) and the chunks in slabs of ONEBIT_LUT_SLAB = 32 (512 inputs; the last slab may
 * hold fewer, cs chunks). Chunk c of block b is 32 bytes at
 *     (c / 32) * nblk * 1024 + b * cs * 32 + (c % 32) * 32          (cs: the chunks of c's slab)
 * so a slab's row blocks lie one after another: a kernel walks the blocks of a slab with that slab's tables (4 KiB
 * per activation row) in L1, then the next slab. Within a chunk
 *     byte 16 h + r  =  byte 2 c + h of row 16 b + r   (h = 0, 1; r = 0..15; 0 past kbytes)
 * so lane h of a chunk holds the 16 rows' bits of inputs 16 c + 8 h .. 16 c + 8 h + 7: its low nibbles index the
 * group of inputs 16 c + 8 h .. + 3, its high nibbles the group 16 c + 8 h + 4 .. + 7.
 *
 * Tables (per activation row and call, built from the int8 row by the kernel unit): per chunk 128 bytes, four 32-byte
 * vectors A_lo, A_hi, B_lo, B_hi; lane h of A holds the table of group 16 c + 8 h (low nibbles), lane h of B that of
 * group 16 c + 8 h + 4 (high nibbles); _lo the low bytes of the 16 int16 sums, _hi their high bytes. Entry i of a
 * group's table is the sum of its inputs j (j = 0..3) whose bit j of i is set.
 */
#ifndef HF_ONEBIT_LUT_H
#define HF_ONEBIT_LUT_H

#include "onebit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Weight rows per block, bytes per chunk (16 inputs of 16 rows), table bytes per chunk and activation row. */
#define ONEBIT_LUT_ROWS 16
#define ONEBIT_LUT_CHUNK_BYTES 32
#define ONEBIT_LUT_TABLE_BYTES 128
/* Chunks per slab. */
#define ONEBIT_LUT_SLAB 32
/* Activation rows up to which an int8 call reads a lut copy (more rows: the bit-plane kernel, which shares its weight
 * work among them). */
#define ONEBIT_LUT_MAX_M ONEBIT_MR

/* Chunks per row block of a row of kbytes packed bytes. */
static inline int64_t onebit_lut_chunks(int64_t kbytes) { return (kbytes + 1) / 2; }

/* Rows [n0, n1) of out[m * ldo + n - n0] = sum_k B[n][k] q[m][k] for m < mr <= ONEBIT_LUT_MAX_M, from the lut copy
 * of an (N, kbytes) weight and the tables of the mr activation rows (ldt bytes apart); n0 a multiple of 16. */
typedef void (*onebit_lut_rows_fn)(const uint8_t *tables, int64_t ldt, int mr, const uint8_t *lut, int64_t N,
                                   int64_t kbytes, int64_t n0, int64_t n1, int32_t *out, int64_t ldo);

/* The kernel unit's entries: tables(q, chunks, t) writes the tables of one zero-padded int8 activation row (at least
 * 16 * chunks elements); rows computes with them. */
typedef struct {
    void (*tables)(const int8_t *q, int64_t chunks, uint8_t *t);
    onebit_lut_rows_fn rows;
} onebit_lut_kernels;

#ifdef ONEBIT_HAVE_AVX2
void onebit_lut_kernels_avx2(onebit_lut_kernels *l); /* lut_avx2.c */
#endif

/* ---- exported API ---- */

/* 1 when calls with this ISA read a lut copy (onebit_linear_lut): else a copy is never read. */
int onebit_binary_lut_supported(int isa);
/* Bytes of the lut copy of an (N, kbytes) weight: ceil(N / 16) * 16 * 2 * ceil(kbytes / 2). */
int64_t onebit_binary_lut_bytes(int64_t N, int64_t kbytes);
/* The lut copy of packed bits w (N, kbytes) into lut (onebit_binary_lut_bytes), on up to nthreads threads (lut.c).
 * Returns 0, or -1 for a bad argument. */
int onebit_binary_to_lut(const uint8_t *w, int64_t N, int64_t kbytes, uint8_t *lut, int nthreads);
/* onebit_linear with, besides w, a lut copy of it (NULL for none): int8 calls of up to ONEBIT_LUT_MAX_M rows read the
 * copy where the ISA has the lut kernel, every other call reads w. The results are identical. */
int onebit_linear_lut(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx, const float *g,
                      const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y, int y_bf16,
                      int64_t ldy, int act_bits, int nthreads, const uint8_t *lut);

#ifdef __cplusplus
}
#endif
#endif
