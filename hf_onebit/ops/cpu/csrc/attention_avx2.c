/* AVX2 + FMA row kernels of the decode attention (attention.h): 8 elements of a key or value row per step, bf16
 * widened to float32 by a zero extension and a 16-bit left shift. */
#include <immintrin.h>
#include <math.h>

#include "attention.h"
#include "avx2_reduce.h"
#include "kernels_common.h"

ONEBIT_INLINE __m256 load8(const void *row, int64_t d, int bf16) {
    if (bf16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + d));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)row + d);
}

ONEBIT_INLINE float tail_value(const void *row, int64_t d, int bf16) {
    return bf16 ? onebit_bf16_value(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

static void scores(const float *q, const void *k, int64_t ld, int64_t L, int64_t D, int bf16, const uint8_t *keep,
                   float *s) {
    const size_t size = bf16 ? 2 : 4;
    const int64_t dfull = D - D % 8;
    for (int64_t j = 0; j < L; ++j) {
        if (keep && !keep[j]) {
            s[j] = -INFINITY;
            continue;
        }
        const char *row = (const char *)k + j * ld * size;
        __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d + 16 <= dfull; d += 16) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(row, d, bf16), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load8(row, d + 8, bf16), b);
        }
        if (d < dfull) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(row, d, bf16), a);
        float acc = hsum256_ps(_mm256_add_ps(a, b));
        for (d = dfull; d < D; ++d) acc += q[d] * tail_value(row, d, bf16);
        s[j] = acc;
    }
}

static void weighted(const float *p, const void *v, int64_t ld, int64_t L, int64_t D, int bf16, float *acc) {
    const size_t size = bf16 ? 2 : 4;
    const int64_t dfull = D - D % 8;
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
        if (p[j] == 0.0f) continue;
        const char *row = (const char *)v + j * ld * size;
        const __m256 pj = _mm256_set1_ps(p[j]);
        for (int64_t d = 0; d < dfull; d += 8)
            _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(pj, load8(row, d, bf16), _mm256_loadu_ps(acc + d)));
        for (int64_t d = dfull; d < D; ++d) acc[d] += p[j] * tail_value(row, d, bf16);
    }
}

void onebit_attention_kernels_avx2(onebit_attention_kernels *a) {
    a->scores = scores;
    a->weighted = weighted;
}
