/* AVX-512F row kernels of the decode attention (attention.h): 16 elements of a key or value row per step, bf16
 * widened to float32 by a zero extension and a 16-bit left shift. */
#include <immintrin.h>
#include <math.h>

#include "attention.h"
#include "kernels_common.h"

ONEBIT_INLINE __m512 load16(const void *row, int64_t d, int bf16) {
    if (bf16) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)row + d);
}

ONEBIT_INLINE float tail_value(const void *row, int64_t d, int bf16) {
    return bf16 ? onebit_bf16_value(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

static void scores(const float *q, const void *k, int64_t ld, int64_t L, int64_t D, int bf16, const uint8_t *keep,
                   float *s) {
    const size_t size = bf16 ? 2 : 4;
    const int64_t dfull = D - D % 16;
    for (int64_t j = 0; j < L; ++j) {
        if (keep && !keep[j]) {
            s[j] = -INFINITY;
            continue;
        }
        const char *row = (const char *)k + j * ld * size;
        __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
        int64_t d = 0;
        for (; d + 32 <= dfull; d += 32) {
            a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(row, d, bf16), a);
            b = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16), load16(row, d + 16, bf16), b);
        }
        if (d < dfull) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(row, d, bf16), a);
        float acc = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        for (d = dfull; d < D; ++d) acc += q[d] * tail_value(row, d, bf16);
        s[j] = acc;
    }
}

static void weighted(const float *p, const void *v, int64_t ld, int64_t L, int64_t D, int bf16, float *acc) {
    const size_t size = bf16 ? 2 : 4;
    const int64_t dfull = D - D % 16;
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
        if (p[j] == 0.0f) continue;
        const char *row = (const char *)v + j * ld * size;
        const __m512 pj = _mm512_set1_ps(p[j]);
        for (int64_t d = 0; d < dfull; d += 16)
            _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(pj, load16(row, d, bf16), _mm512_loadu_ps(acc + d)));
        for (int64_t d = dfull; d < D; ++d) acc[d] += p[j] * tail_value(row, d, bf16);
    }
}

void onebit_attention_kernels_avx512(onebit_attention_kernels *a) {
    a->scores = scores;
    a->weighted = weighted;
}
