/* AVX2 + FMA row kernel of the bf16-weight float linear (bf16_gemv.h): per block of 32 inputs two 256-bit loads of 16
 * weights; a 16-bit left shift of each 32-bit lane gives its even weight as a float, masking its low half the odd one,
 * and each meets its half of the pair-ordered activations in one multiply-add. Even and odd products go to separate
 * accumulators (two independent chains per activation row). */
#include <immintrin.h>

#include "avx2_reduce.h"
#include "bf16_gemv.h"
#include "kernels_common.h"

ONEBIT_INLINE void gemv_row(const int mr, const float *xp, int64_t ldx, const uint16_t *row, int64_t K, float *out,
                             int64_t ldo) {
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    const int64_t kfull = K - K % ONEBIT_GEMV_BLOCK;
    __m256 even[ONEBIT_GEMV_MAX_M], odd[ONEBIT_GEMV_MAX_M];
    for (int m = 0; m < mr; ++m) even[m] = odd[m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kfull; k += ONEBIT_GEMV_BLOCK) {
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

ONEBIT_GEMV_DEFINE_ROWS(onebit_bf16_gemv_rows_avx2, gemv_row)
