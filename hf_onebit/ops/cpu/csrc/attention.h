/* Attention of one query position against a key/value cache (decode): the step that follows a decoded token's
 * linear layers in every attention layer.
 *
 * Why. At one query row attention reads the cache once and does ~2 multiply-adds per cached element; torch's fused
 * CPU kernel (scaled_dot_product_attention) spent ~0.25-0.3 ms a layer on a 4096-wide, 64-token bf16 cache on a
 * 2-core Zen 4 - as long as a 4096 x 4096 packed layer - and the unfused matmuls as long. These kernels stream each
 * key and value row once per query head with the query in registers.
 *
 * Numbers: the query is scaled and converted to float32 once; scores, softmax (max-subtracted, float32 exp) and the
 * weighted sum of values in float32; the output rounded once to the inputs' type (bf16) - what torch's fused kernel
 * computes, up to the order of the float32 sums. Keys a mask excludes take no part; a query whose keys are all
 * excluded gets zeros, as torch's kernels give it.
 *
 * Grouped-query attention: query head h reads key/value head h / (H / Hkv). */
#ifndef HF_ONEBIT_ATTENTION_H
#define HF_ONEBIT_ATTENTION_H

#include <stdint.h>

#include "onebit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element d of a key, value or query row as a float (bf16: widened). */
static inline float onebit_attention_element(const void *row, int64_t d, int bf16) {
    return bf16 ? onebit_bf16_value(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

/* One query head against the L cached rows of its key/value head (rows ld elements apart, D contiguous elements
 * each; bf16 when bf16, else float32): scores s[j] = q . k_j for the rows keep[j] admits (every row when keep is
 * NULL; -inf for the others, whose row is not read); weighted acc[d] = sum_j p[j] v_j[d] over the rows whose p[j] is
 * not 0 (acc is overwritten). q and acc hold D floats. */
typedef struct {
    void (*scores)(const float *q, const void *k, int64_t ld, int64_t L, int64_t D, int bf16, const uint8_t *keep,
                   float *s);
    void (*weighted)(const float *p, const void *v, int64_t ld, int64_t L, int64_t D, int bf16, float *acc);
} onebit_attention_kernels;

#ifdef ONEBIT_HAVE_AVX2
void onebit_attention_kernels_avx2(onebit_attention_kernels *a); /* attention_avx2.c */
#endif
#ifdef ONEBIT_HAVE_AVX512
void onebit_attention_kernels_avx512(onebit_attention_kernels *a); /* attention_avx512.c */
#endif

/* ---- exported API ---- */

/* out[b, h] = softmax_j(scale * q[b, h] . k[b, h / (H / Hkv), j] ; keys with mask[b, j] == 0 excluded) v[b, h / ...]
 * for B batch rows, H query heads, Hkv key/value heads (H a multiple), L cached positions, head size D. Strides in
 * elements: q, out (batch, head); k, v (batch, head, position); the D elements of a row contiguous. mask: NULL (every
 * key) or one byte per (batch, position), msb bytes between batch rows (0: one row for all). bf16: q, k, v and out
 * bfloat16, else float32. On up to nthreads threads (attention.c). Returns 0, -1 for a bad argument, -2 for an ISA
 * this CPU or build lacks, -3 when out of memory. */
int onebit_decode_attention(int isa, int64_t B, int64_t H, int64_t Hkv, int64_t L, int64_t D, const void *q,
                            int64_t qsb, int64_t qsh, const void *k, int64_t ksb, int64_t ksh, int64_t ksl,
                            const void *v, int64_t vsb, int64_t vsh, int64_t vsl, const uint8_t *mask, int64_t msb,
                            float scale, int bf16, void *out, int64_t osb, int64_t osh, int nthreads);

#ifdef __cplusplus
}
#endif

#endif
