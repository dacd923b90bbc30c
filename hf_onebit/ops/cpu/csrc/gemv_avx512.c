/* AVX-512F row kernels of the float linear at decode sizes (gemv.h).
 *
 * bf16 weights: one 512-bit load holds a block of 32 weights; a 16-bit left shift of each 32-bit lane gives its even
 * weight as a float, masking its low half the odd one, and each meets its half of the pair-ordered activations in one
 * multiply-add. Even and odd products go to separate accumulators (two independent chains per activation row). No
 * AVX512-BF16 instruction is needed.
 *
 * int8 weights: a sign-extending load turns 16 weights into 32-bit lanes, a conversion into floats, one multiply-add
 * meets them with 16 activations in order; four accumulators per activation row (64 weights a step) keep four
 * independent chains. */
#include <immintrin.h>

#include "gemv.h"
#include "kernels_common.h"

ONEBIT_INLINE void bf16_row(const int mr, const float *xp, int64_t ldx, const uint16_t *row, int64_t K, float *out,
                             int64_t ldo) {
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    const int64_t kfull = K - K % ONEBIT_GEMV_BLOCK;
    __m512 even[ONEBIT_GEMV_MAX_M], odd[ONEBIT_GEMV_MAX_M];
    for (int m = 0; m < mr; ++m) even[m] = odd[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kfull; k += ONEBIT_GEMV_BLOCK) {
        onebit_gemv_prefetch(row + k);
        const __m512i pairs = _mm512_loadu_si512((const void *)(row + k));
        const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
        const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(pairs, high));
        for (int m = 0; m < mr; ++m) {
            const float *x = xp + m * ldx + k;
            even[m] = _mm512_fmadd_ps(we, _mm512_loadu_ps(x), even[m]);
            odd[m] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(x + 16), odd[m]);
        }
    }
    for (int m = 0; m < mr; ++m) {
        float acc = _mm512_reduce_add_ps(_mm512_add_ps(even[m], odd[m]));
        for (int64_t k = kfull; k < K; ++k) acc += onebit_bf16_value(row[k]) * xp[m * ldx + k];
        out[m * ldo] = acc;
    }
}

ONEBIT_INLINE __m512 int8_16(const int8_t *w) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w)));
}

ONEBIT_INLINE void int8_row(const int mr, const float *xp, int64_t ldx, const int8_t *row, int64_t K, float *out,
                            int64_t ldo) {
    __m512 acc[4][ONEBIT_GEMV_MAX_M];
    for (int c = 0; c < 4; ++c)
        for (int m = 0; m < mr; ++m) acc[c][m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        onebit_gemv_prefetch(row + k);
        for (int c = 0; c < 4; ++c) {
            const __m512 w = int8_16(row + k + 16 * c);
            for (int m = 0; m < mr; ++m)
                acc[c][m] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp + m * ldx + k + 16 * c), acc[c][m]);
        }
    }
    for (; k + 16 <= K; k += 16) {
        const __m512 w = int8_16(row + k);
        for (int m = 0; m < mr; ++m) acc[0][m] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp + m * ldx + k), acc[0][m]);
    }
    for (int m = 0; m < mr; ++m) {
        float sum = _mm512_reduce_add_ps(
            _mm512_add_ps(_mm512_add_ps(acc[0][m], acc[1][m]), _mm512_add_ps(acc[2][m], acc[3][m])));
        for (int64_t t = k; t < K; ++t) sum += (float)row[t] * xp[m * ldx + t];
        out[m * ldo] = sum;
    }
}

ONEBIT_GEMV_DEFINE_ROWS(onebit_bf16_gemv_rows_avx512, bf16_row, uint16_t)
ONEBIT_GEMV_DEFINE_ROWS(onebit_int8_gemv_rows_avx512, int8_row, int8_t)
