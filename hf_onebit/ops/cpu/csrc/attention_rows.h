/* The row kernels of the decode attention (attention.h), written once for the SIMD units: the including unit defines
 * its vector type and operations, then includes this file, which defines static `scores` and `weighted`.
 *
 *   ATT_W                       floats per vector
 *   att_vec                     the vector type
 *   att_zero()                  a vector of zeros
 *   att_load(p)                 ATT_W floats from p
 *   att_load_row(row, d, bf16)  ATT_W elements d.. of a key/value row as floats (bf16: widened)
 *   att_store(p, v)             ATT_W floats to p
 *   att_set1(x), att_fmadd(a, b, c) = a * b + c, att_add(a, b), att_sum(v) (horizontal sum)
 *
 * A score is one query . key product over the row: two accumulator chains of whole vectors, the row's tail (D not a
 * multiple of ATT_W) in scalar code. */
#ifndef HF_ONEBIT_ATTENTION_ROWS_H
#define HF_ONEBIT_ATTENTION_ROWS_H

#include <math.h>

#include "attention.h"
#include "kernels_common.h"

static void scores(const float *q, const void *k, int64_t ld, int64_t L, int64_t D, int bf16, const uint8_t *keep,
                   float *s) {
    const size_t size = bf16 ? 2 : 4;
    const int64_t dfull = D - D % ATT_W;
    for (int64_t j = 0; j < L; ++j) {
        if (keep && !keep[j]) {
            s[j] = -INFINITY;
            continue;
        }
        const char *row = (const char *)k + j * ld * size;
        att_vec a = att_zero(), b = att_zero();
        int64_t d = 0;
        for (; d + 2 * ATT_W <= dfull; d += 2 * ATT_W) {
            a = att_fmadd(att_load(q + d), att_load_row(row, d, bf16), a);
            b = att_fmadd(att_load(q + d + ATT_W), att_load_row(row, d + ATT_W, bf16), b);
        }
        if (d < dfull) a = att_fmadd(att_load(q + d), att_load_row(row, d, bf16), a);
        float acc = att_sum(att_add(a, b));
        for (d = dfull; d < D; ++d) acc += q[d] * onebit_attention_element(row, d, bf16);
        s[j] = acc;
    }
}

static void weighted(const float *p, const void *v, int64_t ld, int64_t L, int64_t D, int bf16, float *acc) {
    const size_t size = bf16 ? 2 : 4;
    const int64_t dfull = D - D % ATT_W;
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
        if (p[j] == 0.0f) continue;
        const char *row = (const char *)v + j * ld * size;
        const att_vec pj = att_set1(p[j]);
        for (int64_t d = 0; d < dfull; d += ATT_W)
            att_store(acc + d, att_fmadd(pj, att_load_row(row, d, bf16), att_load(acc + d)));
        for (int64_t d = dfull; d < D; ++d) acc[d] += p[j] * onebit_attention_element(row, d, bf16);
    }
}

#endif
