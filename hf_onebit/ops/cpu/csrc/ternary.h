/* hf_onebit CPU kernels for the ternary format: y = ((x * g) @ T.T) * h (+ bias), T in {-1, 0, +1}.
 *
 * Weight layout (hf_onebit/packing.py, ternary v1): uint8 (N, kbytes), kbytes = ceil(K / 4); bits 2j..2j+1 of byte k
 * of row n hold the code c = T + 1 in {0, 1, 2} of input 4k + j; padding codes are 1 (value 0).
 * With c the code matrix, T x = c x - sum(x): every row kernel computes only c x (unsigned codes times activations,
 * the operand order of vpmaddubsw / vpdpbusd), the driver's epilogue subtracts the row's sum.
 *
 * Activation order. The kernels never reorder weight bits. Instead the driver stores each activation row in the
 * "ternary order": inputs go by in blocks of 256 (K padded with zeros to kpad, a multiple of 256), and inside a block
 *     position 64 j + k  holds input 4 k + j        (j = 0..3, k = 0..63).
 * Then byte 64 b + k of a weight row, shifted right by 2 j and masked with 3, is the code of the activation at
 * position 256 b + 64 j + k: 64 weight bytes give four vectors of 64 codes, each lined up with 64 consecutive
 * activations (bitnet.cpp's I2_S idea, with the interleave moved from the weights to the per-call activations).
 * A row's last block may hold fewer than 64 weight bytes; kernels read only the row's bytes (positions past them hold
 * zero activations).
 *
 * Runtime layout "t5" (5 trits per byte, 1.6 bits per weight; built from the layout above by onebit_ternary_to_t5,
 * never stored on disk). A decode call reads every weight once, so its time is the bytes it reads; this layout reads
 * 20 % fewer than the 2-bit codes. Inputs go by in blocks of 320 (row bytes: 64 per block, tb = ceil(K / 320)
 * blocks, so every row is tb * 64 bytes and starts 64-byte aligned). Byte 64 b + j of a row holds the codes c_t of
 * inputs 320 b + 64 t + j, t = 0..4 (codes past K are 1, value 0), as v = sum_t c_t 3^t in [0, 242], stored folded:
 *     byte = v            when v <= 121,
 *     byte = 128 | (242 - v) otherwise        (242 - v has the codes 2 - c_t: the same weights negated).
 * So the low 7 bits index a 128-entry table (vpermi2b) and bit 7 negates: activations stay in natural order, and 64
 * bytes give five vectors of 64 codes lined up with five runs of 64 consecutive inputs.
 */
#ifndef HF_ONEBIT_TERNARY_H
#define HF_ONEBIT_TERNARY_H

#include "onebit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Inputs per block of the ternary activation order; weight bytes per block. */
#define ONEBIT_TERNARY_BLOCK 256
#define ONEBIT_TERNARY_BLOCK_BYTES 64
/* Bytes ahead of the current weight byte that the SIMD row kernels prefetch into L1 (and, AVX-512, into L2): with the
 * hardware prefetcher alone one thread streamed ~7.5 GB/s of codes from memory at M=1 (4096->11008: 1.5 ms, CPU time),
 * with L1 prefetch ~9.5 GB/s (1-2 KiB ahead did about as well), with L2 prefetch too 11-13 GB/s (1.0 ms), against
 * 14 GB/s for a one-thread torch.sum. Prefetches past the weights are harmless. */
#define ONEBIT_TERNARY_PREFETCH 2048
#define ONEBIT_TERNARY_PREFETCH_L2 16384

typedef void (*onebit_amx_unpack_i8_fn)(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles,
                                        int64_t c0, int64_t nch, uint8_t *apack);
typedef void (*onebit_amx_unpack_bf16_fn)(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles,
                                          int64_t c0, int64_t nch, uint16_t *apack);

typedef struct {
    /* Row kernels with the onebit_rows_*_fn contract (onebit.h), on codes: out = sum_k c[n][k] x'[k] with x' rows in
     * the ternary order (kpad elements each); kbytes = ceil(K / 4). */
    onebit_rows_f32_fn rows_f32;
    onebit_rows_i8_fn rows_i8;
    /* A zero-padded float row (kpad elements, natural order) into the ternary order. */
    void (*order_row)(const float *x, int64_t kpad, float *out);
    /* AMX A operand (the layout of onebit_amx_unpack_*, onebit.h) for inputs in the ternary order: int8 tiles hold the
     * codes {0, 1, 2} (TDPBUSD gives c q), bf16 tiles the values {-1, 0, +1} (TDPBF16PS gives T x). NULL where the
     * unit has no AMX support. */
    onebit_amx_unpack_i8_fn amx_unpack_i8;
    onebit_amx_unpack_bf16_fn amx_unpack_bf16;
} onebit_ternary_kernels;

/* The t5 layout (see above): inputs per block, bytes per block, activation rows up to which a call uses it. */
#define ONEBIT_T5_BLOCK 320
#define ONEBIT_T5_BLOCK_BYTES 64
#define ONEBIT_T5_MAX_M ONEBIT_MR

/* The t5 int8 row kernel (onebit_rows_i8_fn contract, codes c, activation rows in natural order zero padded to
 * tb * 320, kbytes = tb * 64, mr <= ONEBIT_T5_MAX_M); the driver uses it where this build and the CPU have AVX-512
 * VBMI. */
#ifdef ONEBIT_HAVE_AVX512_VBMI
onebit_rows_i8_fn onebit_ternary_t5_rows_i8_avx512vbmi(void); /* ternary5_avx512.c */
#endif

/* One per ISA translation unit (ternary_<isa>.c). */
void onebit_ternary_kernels_portable(onebit_ternary_kernels *t);
void onebit_ternary_kernels_avx2(onebit_ternary_kernels *t);
void onebit_ternary_kernels_avx512(onebit_ternary_kernels *t);
void onebit_ternary_kernels_neon(onebit_ternary_kernels *t);     /* kernels_neon.c */
void onebit_ternary_kernels_neon_dot(onebit_ternary_kernels *t); /* kernels_neon_dot.c */

/* The scalar order_row, shared by the units (each compiles it with its own flags). */
static inline void onebit_ternary_order_row(const float *x, int64_t kpad, float *out) {
    for (int64_t b = 0; b < kpad; b += ONEBIT_TERNARY_BLOCK)
        for (int j = 0; j < 4; ++j)
            for (int k = 0; k < 64; ++k) out[b + 64 * j + k] = x[b + 4 * k + j];
}

/* ---- exported API (onebit.c) ---- */

/* As onebit_linear (onebit.h) with ternary weights: w is (N, kbytes) with kbytes = ceil(K / 4) (packing.py ternary v1),
 * y[m, n] = ((x[m] * g) . T[n]) * h[n] + bias[n]. Same arguments, error codes, ISA ids and threading. */
int onebit_ternary_linear(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx,
                          const float *g, const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y,
                          int y_bf16, int64_t ldy, int act_bits, int nthreads);

/* 1 when calls with this ISA can use a t5 copy of the weights (onebit_ternary_linear_t5): else a copy is never read. */
int onebit_ternary_t5_supported(int isa);
/* Bytes per row of the t5 layout for K inputs (tb * 64). */
int64_t onebit_ternary_t5_row_bytes(int64_t K);
/* The t5 layout (N, onebit_ternary_t5_row_bytes(K)) of 2-bit codes w (N, ceil(K / 4)), on up to nthreads threads.
 * Returns 0; -1 for a bad argument, -2 when w holds a code 3 below K (not ternary: t5 is then unusable), -3 out of
 * memory. */
int onebit_ternary_to_t5(const uint8_t *w, int64_t N, int64_t K, uint8_t *t5, int nthreads);
/* onebit_ternary_linear with, besides w, a t5 copy of it (NULL for none): int8 calls of up to ONEBIT_T5_MAX_M rows
 * read the copy where the ISA has the t5 kernel, every other call reads w. The results are identical. */
int onebit_ternary_linear_t5(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx,
                             const float *g, const uint8_t *w, int64_t kbytes, const float *h, const float *bias,
                             void *y, int y_bf16, int64_t ldy, int act_bits, int nthreads, const uint8_t *t5);

#ifdef __cplusplus
}
#endif
#endif
