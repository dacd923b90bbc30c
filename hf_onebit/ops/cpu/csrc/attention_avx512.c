/* AVX-512F row kernels of the decode attention (attention.h, written in attention_rows.h): 16 elements of a key or
 * value row per vector, bf16 widened to float32 by a zero extension and a 16-bit left shift. */
#include <immintrin.h>

#include "kernels_common.h"

#define ATT_W 16
typedef __m512 att_vec;
#define att_zero() _mm512_setzero_ps()
#define att_load(p) _mm512_loadu_ps(p)
#define att_store(p, v) _mm512_storeu_ps((p), (v))
#define att_set1(x) _mm512_set1_ps(x)
#define att_fmadd(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define att_add(a, b) _mm512_add_ps((a), (b))
#define att_sum(v) _mm512_reduce_add_ps(v)

ONEBIT_INLINE __m512 att_load_row(const void *row, int64_t d, int bf16) {
    if (bf16) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)row + d);
}

#include "attention_rows.h"

void onebit_attention_kernels_avx512(onebit_attention_kernels *a) {
    a->scores = scores;
    a->weighted = weighted;
}
