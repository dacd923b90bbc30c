/* AVX2 + FMA row kernels of the decode attention (attention.h, written in attention_rows.h): 8 elements of a key or
 * value row per vector, bf16 widened to float32 by a zero extension and a 16-bit left shift. */
#include <immintrin.h>

#include "avx2_reduce.h"
#include "kernels_common.h"

#define ATT_W 8
typedef __m256 att_vec;
#define att_zero() _mm256_setzero_ps()
#define att_load(p) _mm256_loadu_ps(p)
#define att_store(p, v) _mm256_storeu_ps((p), (v))
#define att_set1(x) _mm256_set1_ps(x)
#define att_fmadd(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define att_add(a, b) _mm256_add_ps((a), (b))
#define att_sum(v) hsum256_ps(v)

ONEBIT_INLINE __m256 att_load_row(const void *row, int64_t d, int bf16) {
    if (bf16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + d));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)row + d);
}

#include "attention_rows.h"

void onebit_attention_kernels_avx2(onebit_attention_kernels *a) {
    a->scores = scores;
    a->weighted = weighted;
}
