/* AVX-512F row kernel of the bf16-weight float linear (bf16_gemv.h): one 512-bit load holds a block of 32 weights; a
 * 16-bit left shift of each 32-bit lane gives its even weight as a float, masking its low half the odd one, and each
 * meets its half of the pair-ordered activations in one multiply-add. Even and odd products go to separate
 * accumulators (two independent chains per activation row). No AVX512-BF16 instruction is needed. */
#include <immintrin.h>

#include "bf16_gemv.h"
#include "kernels_common.h"

ONEBIT_INLINE void gemv_row(const int mr, const float *xp, int64_t ldx, const uint16_t *row, int64_t K, float *out,
                             int64_t ldo) {
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    const int64_t kfull = K - K % ONEBIT_GEMV_BLOCK;
    __m512 even[ONEBIT_GEMV_MAX_M], odd[ONEBIT_GEMV_MAX_M];
    for (int m = 0; m < mr; ++m) even[m] = odd[m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kfull; k += ONEBIT_GEMV_BLOCK) {
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

ONEBIT_GEMV_DEFINE_ROWS(onebit_bf16_gemv_rows_avx512, gemv_row)
