/* AVX2 + FMA row kernels of the float linear at decode sizes (gemv.h).
 *
 * bf16 weights: per block of 32 inputs two 256-bit loads of 16 weights; a 16-bit left shift of each 32-bit lane gives
 * its even weight as a float, masking its low half the odd one, and each meets its half of the pair-ordered
 * activations in one multiply-add. Even and odd products go to separate accumulators (two independent chains per
 * activation row).
 *
 * int8 weights: a sign-extending load turns 8 weights into 32-bit lanes, a conversion into floats, one multiply-add
 * meets them with 8 activations in order; 32 weights a step, into four accumulators per activation row for one or two
 * rows (independent chains), two for more. */
#include <immintrin.h>

#include "avx2_reduce.h"
#include "gemv.h"
#include "kernels_common.h"

ONEBIT_INLINE void bf16_row(const int mr, const float *xp, int64_t ldx, const uint16_t *row, int64_t K, float *out,
                             int64_t ldo) {
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    const int64_t kfull = K - K % ONEBIT_GEMV_BLOCK;
    __m256 even[ONEBIT_GEMV_MAX_M], odd[ONEBIT_GEMV_MAX_M];
    for (int m = 0; m < mr; ++m) even[m] = odd[m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kfull; k += ONEBIT_GEMV_BLOCK) {
        onebit_gemv_prefetch(row + k);
        for (int h = 0; h < 2; ++h) { /* weights k + 16 h .. k + 16 h + 15 */
            const __m256i pairs = _mm256_loadu_si256((const __m256i *)(row + k + 16 * h));
            const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
            const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(pairs, high));
            for (int m = 0; m < mr; ++m) {
                const float *x = xp + m * ldx + k;
                even[m] = _mm256_fmadd_ps(we, _mm256_loadu_ps(x + 8 * h), even[m]);
                odd[m] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x + 16 + 8 * h), odd[m]);
            }
        }
    }
    for (int m = 0; m < mr; ++m) {
        float acc = hsum256_ps(_mm256_add_ps(even[m], odd[m]));
        for (int64_t k = kfull; k < K; ++k) acc += onebit_bf16_value(row[k]) * xp[m * ldx + k];
        out[m * ldo] = acc;
    }
}

ONEBIT_INLINE __m256 int8_8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

ONEBIT_INLINE void int8_row(const int mr, const float *xp, int64_t ldx, const int8_t *row, int64_t K, float *out,
                            int64_t ldo) {
    const int chains = mr <= 2 ? 4 : 2; /* a compile-time constant: independent sums per activation row */
    __m256 acc[4][ONEBIT_GEMV_MAX_M];
    for (int c = 0; c < 4; ++c)
        for (int m = 0; m < mr; ++m) acc[c][m] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        onebit_gemv_prefetch(row + k);
        for (int c = 0; c < 4; ++c) {
            const __m256 w = int8_8(row + k + 8 * c);
            for (int m = 0; m < mr; ++m)
                acc[c % chains][m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp + m * ldx + k + 8 * c), acc[c % chains][m]);
        }
    }
    for (; k + 8 <= K; k += 8) {
        const __m256 w = int8_8(row + k);
        for (int m = 0; m < mr; ++m) acc[0][m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp + m * ldx + k), acc[0][m]);
    }
    for (int m = 0; m < mr; ++m) {
        __m256 total = acc[0][m];
        for (int c = 1; c < chains; ++c) total = _mm256_add_ps(total, acc[c][m]);
        float sum = hsum256_ps(total);
        for (int64_t t = k; t < K; ++t) sum += (float)row[t] * xp[m * ldx + t];
        out[m * ldo] = sum;
    }
}

ONEBIT_GEMV_DEFINE_ROWS(onebit_bf16_gemv_rows_avx2, bf16_row, uint16_t)
ONEBIT_GEMV_DEFINE_ROWS(onebit_int8_gemv_rows_avx2, int8_row, int8_t)
