/* hf_onebit CPU kernels: y = ((x * g) @ sign(W).T) * h (+ bias) on packed sign bits.
 *
 * Weight layout (hf_onebit/packing.py, format v1): uint8 (N, kbytes), kbytes = ceil(K / 8), bit j (LSB first) of byte
 * k of row n is input 8k + j of output n; set bit = +1, clear bit = -1. With B the {0,1} bit matrix,
 * sign(W) x = 2 (B x) - sum(x): every kernel below computes only B x.
 *
 * The library does not link libtorch; Python calls onebit_linear() through ctypes with raw pointers.
 */
#ifndef HF_ONEBIT_H
#define HF_ONEBIT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    ONEBIT_ISA_PORTABLE = 0,
    ONEBIT_ISA_AVX2 = 1,   /* AVX2 + FMA */
    ONEBIT_ISA_AVX512 = 2, /* AVX-512 F/BW/VL + VNNI */
    ONEBIT_ISA_COUNT = 3
};

/* Activation rows handled by one row-kernel call (each unpacked weight chunk is reused across them). */
#define ONEBIT_MR 8

/* Row kernels. For weight rows n in [n0, n1) and activation rows m in [0, mr), mr <= ONEBIT_MR:
 *     out[m * ldo + (n - n0)] = sum_k B[n][k] * x[m * ldx + k]
 * Activation rows are zero padded to ceil(kbytes / 8) * 64 elements, so a kernel may read whole 64-bit weight words
 * (padding bits then multiply zeros). Kernels must not read weight bytes past kbytes in a row. */
typedef void (*onebit_rows_f32_fn)(const float *x, int64_t ldx, int mr, const uint8_t *w, int64_t kbytes, int64_t n0,
                                   int64_t n1, float *out, int64_t ldo);
typedef void (*onebit_rows_i8_fn)(const int8_t *q, int64_t ldq, int mr, const uint8_t *w, int64_t kbytes, int64_t n0,
                                  int64_t n1, int32_t *out, int64_t ldo);

typedef struct {
    onebit_rows_f32_fn rows_f32;
    onebit_rows_i8_fn rows_i8;
} onebit_kernels;

/* One per ISA translation unit (kernels_<isa>.c). */
void onebit_kernels_portable(onebit_kernels *k);
void onebit_kernels_avx2(onebit_kernels *k);
void onebit_kernels_avx512(onebit_kernels *k);

/* ---- exported API (onebit.c) ---- */

/* 1 when `isa` was compiled into this library and the running CPU supports it. */
int onebit_isa_supported(int isa);
/* The best supported ISA. */
int onebit_best_isa(void);
/* Number of ISA ids (for the Python side to check it matches). */
int onebit_isa_count(void);

/* y[m * ldy + n] = ((x[m] * g) . sign(W[n])) * h[n] + bias[n] for m < M, n < N.
 *   x: float32 rows with stride ldx (>= K); g: float32 (K,) or NULL for all ones (x already scaled);
 *   w: packed bits (N, kbytes) contiguous; h: float32 (N,); bias: float32 (N,) or NULL; y: float32, stride ldy.
 *   act_bits 0: exact float32 arithmetic; 8: per-row absmax int8 quantisation of x * g and integer dot products.
 * Returns 0, or a negative error: -1 bad argument, -2 ISA not available, -3 out of memory. */
int onebit_linear(int isa, int64_t M, int64_t K, int64_t N, const float *x, int64_t ldx, const float *g,
                  const uint8_t *w, int64_t kbytes, const float *h, const float *bias, float *y, int64_t ldy,
                  int act_bits, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
