/* The progressive sign of training (Tu et al. 2025, hf_onebit/training/binarizers.py), fused per weight row:
 *
 *   forward   s = mean_k |W[n][k]| (at least 1e-8),  b[n][k] = s * tanh(W[n][k] * (t / s)) / tanh(t),
 *             out[n][k] = (h[n] * b[n][k]) * g[k]
 *   backward  the gradients of W, g and h, with s held constant (the reference detaches it)
 *
 * g and h are the layer's input and output scales: folding them into the weight here spares the layer its two
 * activation-sized products (x * g before the matmul, y * h after it) and their backward passes. The reference
 * computes b in six to eight passes over the weights and keeps the tanh for the backward; here one pass reads a row and
 * writes its output (float32 or bfloat16, the dtype autocast would cast it to), and the backward recomputes the tanh
 * from W instead of storing it.
 *
 * Each ISA unit includes this file and compiles it with its own flags; the loops are written so that the compiler
 * vectorises them (independent lanes, no reductions across lanes, branch-free tanh). Operations keep the reference's
 * order (q = t / s as torch evaluates it, then W * q; s / tanh(t); (1 - y * y) * slope, then grad *), so that the
 * values differ from torch's by a few float32 ulp of the tanh (and the order of the sums of the scale gradients). */
#ifndef HF_ONEBIT_PROGRESSIVE_H
#define HF_ONEBIT_PROGRESSIVE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Rows are processed in chunks of this many values (lanes of the row sum, stack buffers of the row loops). */
#define PROG_CHUNK 64

/* a * b + c, fused where the unit is compiled with FMA (the portable unit has none: two roundings there) */
#ifdef __FMA__
#define PROG_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define PROG_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* tanh(x) in float32 without a branch, accurate to a few ulp, from one polynomial:
 *   tanh(|x|) = -m / (2 + m),  m = expm1(-2|x|)  (no cancellation for small |x|: m ~ -2|x|),
 * |x| clamped at 9 (tanh(9) rounds to 1 in float32; NaN is not clamped and stays NaN). expm1(z) for z in [-18, 0]:
 * z = n ln2 + r with n = round(z / ln2) (the 1.5 * 2^23 rounding trick; ln2 in two parts so n ln2 is exact),
 * expm1(r) = r + r^2 p(r) with p the Taylor series of (expm1(r) - r) / r^2 to r^6 (|r| <= 0.35: error below 3e-9),
 * evaluated in Estrin's order (a short dependency chain: the loop is latency-bound otherwise), and
 * expm1(z) = 2^n expm1(r) + (2^n - 1) with 2^n built in the exponent bits. */
static inline float prog_tanh(float x) {
    float a = fabsf(x);
    a = a > 9.0f ? 9.0f : a;
    const float z = -2.0f * a;
    const float n = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = PROG_FMA(-n, 1.42860682030941723212e-6f, PROG_FMA(-n, 0.693145751953125f, z));
    const float r2 = r * r, r4 = r2 * r2;
    const float p01 = PROG_FMA(r, 1.0f / 6.0f, 0.5f);
    const float p23 = PROG_FMA(r, 1.0f / 120.0f, 1.0f / 24.0f);
    const float p456 = PROG_FMA(r2, 1.0f / 40320.0f, PROG_FMA(r, 1.0f / 5040.0f, 1.0f / 720.0f));
    const float p = PROG_FMA(r4, p456, PROG_FMA(r2, p23, p01));
    const float m_r = PROG_FMA(r2, p, r);
    const float n_safe = n > -30.0f ? n : -30.0f; /* NaN: any n (the result is NaN through r), no UB in the cast */
    const uint32_t bits = (uint32_t)((int32_t)n_safe + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, 4);
    const float m = PROG_FMA(two_n, m_r, two_n - 1.0f);
    return copysignf(-m / (2.0f + m), x);
}

/* Row n's scale s = mean |W[n]| (float lanes over chunks, summed in double), at least 1e-8 like the reference. */
static inline float prog_row_absmean(const float *row, int64_t K) {
    float lanes[PROG_CHUNK] = {0};
    int64_t k = 0;
    for (; k + PROG_CHUNK <= K; k += PROG_CHUNK)
        for (int j = 0; j < PROG_CHUNK; ++j) lanes[j] += fabsf(row[k + j]);
    double total = 0.0;
    for (; k < K; ++k) total += fabsf(row[k]);
    for (int j = 0; j < PROG_CHUNK; ++j) total += lanes[j];
    const float s = (float)(total / (double)K);
    return s < 1e-8f ? 1e-8f : s; /* (a NaN stays NaN, as in torch.clamp_min) */
}

/* len values of the output gradient from element `at` on, float32 or (grad_bf16) bfloat16, into float32 gm. */
static inline void prog_load_grad(const void *grad, int grad_bf16, int64_t at, int64_t len, float *gm) {
    if (grad_bf16) {
        const uint16_t *gb = (const uint16_t *)grad + at;
        for (int64_t j = 0; j < len; ++j) gm[j] = onebit_bf16_value(gb[j]);
    } else {
        memcpy(gm, (const float *)grad + at, (size_t)len * sizeof(float));
    }
}

/* Forward for rows [n0, n1) of W (N, K): out[n][k] = (h[n] * b[n][k]) * g[k] with b the progressive sign (g, h: the
 * layer's input and output scales, NULL for ones), float32 or (out_bf16) bfloat16; row_scale[n] receives s. */
static void progressive_fwd_rows(const float *w, int64_t K, int64_t n0, int64_t n1, float t, float tanh_t,
                                 const float *g, const float *h, void *out, int out_bf16, float *row_scale) {
    float buf[PROG_CHUNK];
    for (int64_t n = n0; n < n1; ++n) {
        const float *row = w + n * K;
        const float s = prog_row_absmean(row, K);
        row_scale[n] = s;
        const float q = (1.0f / s) * t, c = s / tanh_t; /* torch evaluates the scalar t / s as s.reciprocal() * t */
        const float hn = h ? h[n] : 1.0f;
        for (int64_t k0 = 0; k0 < K; k0 += PROG_CHUNK) {
            const int64_t len = K - k0 < PROG_CHUNK ? K - k0 : PROG_CHUNK;
            for (int64_t j = 0; j < len; ++j) buf[j] = prog_tanh(row[k0 + j] * q) * c;
            if (h)
                for (int64_t j = 0; j < len; ++j) buf[j] = hn * buf[j];
            if (g)
                for (int64_t j = 0; j < len; ++j) buf[j] = buf[j] * g[k0 + j];
            if (out_bf16) {
                uint16_t *o = (uint16_t *)out + n * K + k0;
                for (int64_t j = 0; j < len; ++j) o[j] = onebit_bf16_round(buf[j]);
            } else {
                memcpy((float *)out + n * K + k0, buf, (size_t)len * sizeof(float));
            }
        }
    }
}

/* Backward for rows [n0, n1), from G = d loss / d out (float32 or (grad_bf16) bfloat16), in the order autograd takes
 * through out = (h * b) * g:
 *   grad_w[n][k] = ((G g[k]) h[n]) ((1 - y^2) slope),  slope = t / tanh(t), y = tanh(W q)
 *   grad_h[n]    = sum_k (G g[k]) b                      (when h; written)
 *   grad_g[k]   += sum_{n in [n0, n1)} G (h[n] b)        (when g; this thread's partial sums, accumulated into)
 */
static void progressive_bwd_rows(const float *w, const float *row_scale, int64_t K, int64_t n0, int64_t n1, float t,
                                 float tanh_t, float slope, const float *g, const float *h, const void *grad,
                                 int grad_bf16, float *grad_w, float *grad_g, float *grad_h) {
    float gm[PROG_CHUNK];
    for (int64_t n = n0; n < n1; ++n) {
        const float *row = w + n * K;
        const float s = row_scale[n];
        const float q = (1.0f / s) * t, c = s / tanh_t;
        const float hn = h ? h[n] : 1.0f;
        float lanes[PROG_CHUNK] = {0};
        double hsum = 0.0;
        for (int64_t k0 = 0; k0 < K; k0 += PROG_CHUNK) {
            const int64_t len = K - k0 < PROG_CHUNK ? K - k0 : PROG_CHUNK;
            prog_load_grad(grad, grad_bf16, n * K + k0, len, gm);
            float *o = grad_w + n * K + k0;
            if (g) {
                float *gg = grad_g + k0;
                for (int64_t j = 0; j < len; ++j) {
                    const float y = prog_tanh(row[k0 + j] * q);
                    const float b = y * c;
                    const float G = gm[j];
                    const float gb = G * g[k0 + j]; /* d loss / d (h b) */
                    gg[j] += G * (hn * b);
                    lanes[j] += gb * b;
                    o[j] = (gb * hn) * ((1.0f - y * y) * slope);
                }
            } else {
                for (int64_t j = 0; j < len; ++j) {
                    const float y = prog_tanh(row[k0 + j] * q);
                    const float G = gm[j];
                    lanes[j] += G * (y * c);
                    o[j] = (G * hn) * ((1.0f - y * y) * slope);
                }
            }
        }
        if (h) {
            for (int j = 0; j < PROG_CHUNK; ++j) hsum += lanes[j];
            grad_h[n] = (float)hsum;
        }
    }
}

/* The smooth ternary step of a ternary layer (progressive_ternary in binarizers.py) with dual scaling, fused per row:
 *
 *   s = mean_k |W[n][k]| (at least 1e-8), u = W / s, a = tanh(t (u - 1/2)), b = tanh(t (u + 1/2)),
 *   G = (a + b) inv_norm  (inv_norm = 1 / (tanh(t / 2) + tanh(3 t / 2))),
 *   c = <W[n], G> / <G, G> (the least-squares row scale, each at least 1e-8), out[n][k] = (h[n] (c G)) g[k]
 *
 * Two passes per row: G into a float32 row (the output row itself, or `scratch` (K floats) for a bfloat16 output)
 * with the sums of c, then the scales applied from it (the row is in L1/L2), written as float32 or (out_bf16)
 * bfloat16. row_scales[2n], [2n + 1] receive s, c. */
static void progressive_ternary_fwd_rows(const float *w, int64_t K, int64_t n0, int64_t n1, float t, float inv_norm,
                                         const float *g, const float *h, void *out, int out_bf16, float *scratch,
                                         float *row_scales) {
    for (int64_t n = n0; n < n1; ++n) {
        const float *row = w + n * K;
        float *o = out_bf16 ? scratch : (float *)out + n * K;
        const float s = prog_row_absmean(row, K);
        const float inv_s = 1.0f / s;
        float wg[PROG_CHUNK] = {0}, gg[PROG_CHUNK] = {0};
        for (int64_t k0 = 0; k0 < K; k0 += PROG_CHUNK) {
            const int64_t len = K - k0 < PROG_CHUNK ? K - k0 : PROG_CHUNK;
            for (int64_t j = 0; j < len; ++j) {
                const float u = row[k0 + j] * inv_s;
                const float G = (prog_tanh(t * (u - 0.5f)) + prog_tanh(t * (u + 0.5f))) * inv_norm;
                o[k0 + j] = G;
                wg[j] += row[k0 + j] * G;
                gg[j] += G * G;
            }
        }
        double swg = 0.0, sgg = 0.0;
        for (int j = 0; j < PROG_CHUNK; ++j) {
            swg += wg[j];
            sgg += gg[j];
        }
        if (sgg < 1e-8) sgg = 1e-8; /* (comparisons that keep a NaN, as torch.clamp_min does) */
        float c = (float)(swg / sgg);
        if (c < 1e-8f) c = 1e-8f;
        row_scales[2 * n] = s;
        row_scales[2 * n + 1] = c;
        const float hc = (h ? h[n] : 1.0f) * c;
        if (g)
            for (int64_t k = 0; k < K; ++k) o[k] = (hc * o[k]) * g[k];
        else
            for (int64_t k = 0; k < K; ++k) o[k] = hc * o[k];
        if (out_bf16) {
            uint16_t *ob = (uint16_t *)out + n * K;
            for (int64_t k = 0; k < K; ++k) ob[k] = onebit_bf16_round(o[k]);
        }
    }
}

/* Backward of the ternary forward for rows [n0, n1), from G_out = d loss / d out (float32 or (grad_bf16) bfloat16),
 * with s and c held constant (the reference detaches both):
 *   grad_w[n][k] = (((G_out g[k]) h[n]) c / s) ((2 - a^2 - b^2) slope),  slope = t inv_norm
 *   grad_h[n]    = sum_k (G_out g[k]) (c G)                     (when h)
 *   grad_g[k]   += sum_{n in [n0, n1)} G_out (h[n] (c G))       (when g; this thread's partial sums)
 */
static void progressive_ternary_bwd_rows(const float *w, const float *row_scales, int64_t K, int64_t n0, int64_t n1,
                                         float t, float inv_norm, const float *g, const float *h, const void *grad,
                                         int grad_bf16, float *grad_w, float *grad_g, float *grad_h) {
    const float slope = t * inv_norm;
    float gm[PROG_CHUNK];
    for (int64_t n = n0; n < n1; ++n) {
        const float *row = w + n * K;
        float *o = grad_w + n * K;
        const float s = row_scales[2 * n], c = row_scales[2 * n + 1];
        const float inv_s = 1.0f / s, c_s = c / s;
        const float hn = h ? h[n] : 1.0f;
        float lanes[PROG_CHUNK] = {0};
        for (int64_t k0 = 0; k0 < K; k0 += PROG_CHUNK) {
            const int64_t len = K - k0 < PROG_CHUNK ? K - k0 : PROG_CHUNK;
            prog_load_grad(grad, grad_bf16, n * K + k0, len, gm);
            for (int64_t j = 0; j < len; ++j) {
                const float u = row[k0 + j] * inv_s;
                const float a = prog_tanh(t * (u - 0.5f)), b = prog_tanh(t * (u + 0.5f));
                const float cG = c * ((a + b) * inv_norm);
                const float G = gm[j];
                const float gb = g ? G * g[k0 + j] : G; /* d loss / d (h c G) */
                if (g) grad_g[k0 + j] += G * (hn * cG);
                lanes[j] += gb * cG;
                o[k0 + j] = ((gb * hn) * c_s) * ((2.0f - a * a - b * b) * slope);
            }
        }
        if (h) {
            double hsum = 0.0;
            for (int j = 0; j < PROG_CHUNK; ++j) hsum += lanes[j];
            grad_h[n] = (float)hsum;
        }
    }
}

#define ONEBIT_SET_PROGRESSIVE(k)                                                                                  \
    do {                                                                                                           \
        (k)->progressive_fwd_rows = progressive_fwd_rows;                                                          \
        (k)->progressive_bwd_rows = progressive_bwd_rows;                                                          \
        (k)->progressive_ternary_fwd_rows = progressive_ternary_fwd_rows;                                          \
        (k)->progressive_ternary_bwd_rows = progressive_ternary_bwd_rows;                                          \
    } while (0)

#endif
