/* Activation preparation shared by every ISA unit: each includes this file and so compiles it with its own flags.
 * Only IEEE-exact operations (products, division, max, the rounding below) are used and fp contraction is off, so
 * every ISA variant produces the same bits as the reference's float32 ops. */
#ifndef HF_ONEBIT_PREPARE_H
#define HF_ONEBIT_PREPARE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* x * g for one row, zero padded: the same products as the reference's x * scale_in (for bfloat16 x: the float32
 * product rounded to bfloat16, which is what torch's bfloat16 multiply returns). */
static void scale_row(const void *x, int bf16, const float *g, int64_t K, int64_t kpad, float *out) {
    if (bf16) {
        const uint16_t *xb = x;
        if (g)
            for (int64_t k = 0; k < K; ++k) out[k] = onebit_bf16_value(onebit_bf16_round(onebit_bf16_value(xb[k]) * g[k]));
        else
            for (int64_t k = 0; k < K; ++k) out[k] = onebit_bf16_value(xb[k]);
    } else {
        const float *xf = x;
        if (g)
            for (int64_t k = 0; k < K; ++k) out[k] = xf[k] * g[k];
        else
            memcpy(out, xf, (size_t)K * sizeof(float));
    }
    memset(out + K, 0, (size_t)(kpad - K) * sizeof(float));
}

/* Per-row absmax int8, bit for bit the reference's quantize_activations_int8: scale = absmax / 127 (1 for an
 * all-zero row), q = clamp(round_half_even(xs / scale), -127, 127). Written as 8-lane loops with independent
 * partial results so that compilers vectorise them at the baseline ISA (max and the rounding are exact in any order). */
static void quantize_row(const float *xs, int64_t K, int64_t kpad, int8_t *q, float *scale, int64_t *qsum) {
    float part[8] = {0};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8)
        for (int i = 0; i < 8; ++i) {
            const float a = fabsf(xs[k + i]);
            part[i] = a > part[i] ? a : part[i];
        }
    for (; k < K; ++k) {
        const float a = fabsf(xs[k]);
        part[0] = a > part[0] ? a : part[0];
    }
    float absmax = 0.0f;
    for (int i = 0; i < 8; ++i) absmax = part[i] > absmax ? part[i] : absmax;
    const float s = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    /* |xs / s| <= 127 (+ rounding), where adding and removing 1.5 * 2^23 rounds half to even like torch.round. */
    const float magic = 12582912.0f;
    for (k = 0; k < K; ++k) {
        float v = (xs[k] / s + magic) - magic;
        v = v < -127.0f ? -127.0f : v;
        v = v > 127.0f ? 127.0f : v;
        q[k] = (int8_t)(int32_t)v;
    }
    memset(q + K, 0, (size_t)(kpad - K));
    int32_t total[8] = {0};
    for (k = 0; k < kpad; k += 8)
        for (int i = 0; i < 8; ++i) total[i] += q[k + i];
    *scale = s;
    *qsum = (int64_t)total[0] + total[1] + total[2] + total[3] + total[4] + total[5] + total[6] + total[7];
}

/* sum of a zero-padded row (kpad is a multiple of 64) in double, 8 independent lanes. */
static double row_sum(const float *xs, int64_t kpad) {
    double part[8] = {0};
    for (int64_t k = 0; k < kpad; k += 8)
        for (int i = 0; i < 8; ++i) part[i] += (double)xs[k + i];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/* x = part 0 + part 1 + ... exactly (each part the bf16 rounding of what the earlier parts left); part p goes to
 * out[p * stride + k]. Consumes x (it ends up holding the remainder). */
static void split_bf16(float *x, int64_t kpad, int parts, uint16_t *out, int64_t stride) {
    for (int p = 0; p < parts; ++p) {
        uint16_t *o = out + p * stride;
        for (int64_t k = 0; k < kpad; ++k) {
            o[k] = onebit_bf16_round(x[k]);
            x[k] -= onebit_bf16_value(o[k]);
        }
    }
}

#define ONEBIT_SET_PREPARE(k)                                                                                     \
    do {                                                                                                           \
        (k)->scale_row = scale_row;                                                                                \
        (k)->quantize_row = quantize_row;                                                                          \
        (k)->row_sum = row_sum;                                                                                    \
        (k)->split_bf16 = split_bf16;                                                                              \
    } while (0)

#endif
