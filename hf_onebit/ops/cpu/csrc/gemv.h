/* Float linear layers at decode sizes from bfloat16 or int8 weights: y = x W^T (+ bias) for up to ONEBIT_GEMV_MAX_M
 * activation rows, e.g. a model's output head, which stays float in a 1-bit model and at 32000 x 4096 bf16 (262 MB)
 * is the largest single read of a 7B-shaped decode step; its int8 copy (one float scale per row) halves that read.
 *
 * Why. At one activation row a linear layer is a read of its weights; torch's bf16 matrix-vector product reached
 * ~19 GB/s on a 2-core Zen 4 whose plain reads run at ~35 GB/s. These kernels stream each weight row once, with
 * every activation row beside it in L1, and need no bf16 arithmetic: a 32-bit lane holding two bf16 weights gives
 * the even one as a float by a 16-bit left shift and the odd one by masking the low half, so a multiply-add per half
 * lane-width of weights does the work on any AVX2 or AVX-512F CPU.
 *
 * Numbers: products and sums in float32 with fused multiply-adds, bias added in float32, one rounding to bf16 at the
 * end when the output is bf16 - what torch's bf16 linear computes, up to the order of the float32 sums.
 *
 * The activations are first written as float32 (x_bf16: from bf16); for bf16 weights in the "pair" order of the
 * kernels: each whole block of ONEBIT_GEMV_BLOCK = 32 inputs becomes its 16 even inputs then its 16 odd ones; the
 * inputs after the last whole block stay in order. For int8 weights they stay in order: a sign-extending load turns
 * 16 (AVX-512) or 8 (AVX2) int8 weights into 32-bit lanes, a conversion into floats, and one multiply-add meets them
 * with their activations; the sum of a row is multiplied by the row's scale before the bias. */
#ifndef HF_ONEBIT_GEMV_H
#define HF_ONEBIT_GEMV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ONEBIT_GEMV_BLOCK 32
#define ONEBIT_GEMV_MAX_M 8




/* Rows [n0, n1) of out[m * ldo + n - n0] = sum_k W[n][k] x[m][k] for m < mr <= ONEBIT_GEMV_MAX_M: xp the activation
 * rows in pair order (ldx floats apart), w bf16 rows ldw elements apart, K inputs. */
/* Bytes ahead of the kernels' reads that each weight row's stream is prefetched into L1 and into L2: with the
 * hardware prefetchers alone one core streamed an int8 head at ~8 GB/s, under a third of its bf16 rate in bytes. */
#define ONEBIT_GEMV_PREFETCH 4096
#define ONEBIT_GEMV_PREFETCH_L2 32768

/* Prefetches the lines of a row stream ahead of p (called once per 64 bytes read). For the kernel units. */
#define onebit_gemv_prefetch(p)                                                                                     \
    do {                                                                                                            \
        _mm_prefetch((const char *)(p) + ONEBIT_GEMV_PREFETCH, _MM_HINT_T0);                                        \
        _mm_prefetch((const char *)(p) + ONEBIT_GEMV_PREFETCH_L2, _MM_HINT_T1);                                     \
    } while (0)

/* w points to bf16 (uint16_t) or int8 weights, as the kernel's name says. */
typedef void (*onebit_gemv_rows_fn)(const float *xp, int64_t ldx, int mr, const void *w, int64_t ldw, int64_t K,
                                    int64_t n0, int64_t n1, float *out, int64_t ldo);

/* Defines the onebit_gemv_rows_fn NAME from ROW(mr, xp, ldx, row, K, out, ldo), an always-inline function that
 * computes one weight row (elements of type WTYPE) for mr activation rows; the switch makes mr a compile-time
 * constant (the accumulators stay in registers). For the kernel units. */
#define ONEBIT_GEMV_DEFINE_ROWS(NAME, ROW, WTYPE)                                                                   \
    void NAME(const float *xp, int64_t ldx, int mr, const void *wv, int64_t ldw, int64_t K, int64_t n0,             \
              int64_t n1, float *out, int64_t ldo) {                                                                \
        const WTYPE *w = (const WTYPE *)wv;                                                                         \
        switch (mr) {                                                                                               \
        case 1: for (int64_t n = n0; n < n1; ++n) ROW(1, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        case 2: for (int64_t n = n0; n < n1; ++n) ROW(2, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        case 3: for (int64_t n = n0; n < n1; ++n) ROW(3, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        case 4: for (int64_t n = n0; n < n1; ++n) ROW(4, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        case 5: for (int64_t n = n0; n < n1; ++n) ROW(5, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        case 6: for (int64_t n = n0; n < n1; ++n) ROW(6, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        case 7: for (int64_t n = n0; n < n1; ++n) ROW(7, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;     \
        default: for (int64_t n = n0; n < n1; ++n) ROW(8, xp, ldx, w + n * ldw, K, out + (n - n0), ldo); break;    \
        }                                                                                                           \
    }

/* The row kernels of the SIMD units (the type onebit_gemv_rows_fn). */
#define ONEBIT_GEMV_ROWS_DECLARE(NAME)                                                                              \
    void NAME(const float *xp, int64_t ldx, int mr, const void *w, int64_t ldw, int64_t K, int64_t n0, int64_t n1,  \
              float *out, int64_t ldo)
#ifdef ONEBIT_HAVE_AVX2
ONEBIT_GEMV_ROWS_DECLARE(onebit_bf16_gemv_rows_avx2); /* gemv_avx2.c */
ONEBIT_GEMV_ROWS_DECLARE(onebit_int8_gemv_rows_avx2);
#endif
#ifdef ONEBIT_HAVE_AVX512
ONEBIT_GEMV_ROWS_DECLARE(onebit_bf16_gemv_rows_avx512); /* gemv_avx512.c */
ONEBIT_GEMV_ROWS_DECLARE(onebit_int8_gemv_rows_avx512);
#endif

/* ---- exported API ---- */

/* y[m, n] = sum_k x[m, k] W[n, k] (+ bias[n]) for m < M <= ONEBIT_GEMV_MAX_M: x float32 or (x_bf16) bfloat16 with
 * rows ldx elements apart, W (N, K) bfloat16 with rows ldw elements apart, bias float32 or NULL, y float32 or
 * (y_bf16) bfloat16 with rows ldy elements apart; on up to nthreads threads (gemv.c). Returns 0, -1 for a bad
 * argument, -2 for an ISA this CPU or build lacks, -3 when out of memory. */
int onebit_bf16_gemv(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_bf16, int64_t ldx,
                     const uint16_t *w, int64_t ldw, const float *bias, void *y, int y_bf16, int64_t ldy,
                     int nthreads);

/* The same with int8 weights: y[m, n] = scale[n] * sum_k x[m, k] W[n, k] (+ bias[n]), scale float32 (N). */
int onebit_int8_gemv(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_bf16, int64_t ldx,
                     const int8_t *w, int64_t ldw, const float *scale, const float *bias, void *y, int y_bf16,
                     int64_t ldy, int nthreads);

#ifdef __cplusplus
}
#endif

#endif
