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

/* One per ISA translation unit (ternary_<isa>.c). */
void onebit_ternary_kernels_portable(onebit_ternary_kernels *t);
void onebit_ternary_kernels_avx2(onebit_ternary_kernels *t);
void onebit_ternary_kernels_avx512(onebit_ternary_kernels *t);

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

#ifdef __cplusplus
}
#endif
#endif
