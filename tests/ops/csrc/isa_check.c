/* Compares every ISA variant of the CPU kernel library that this build and CPU support against the portable one, on
 * random shapes: binary and ternary weights, float32 and bfloat16 activations (strided), act_bits 0 and 8, with and
 * without bias, one and three threads (binary int8 also from a lut copy of the weights, lut.h, where the ISA reads
 * one), and the progressive sign of training. Linked against the library; used by
 * tests/ops/test_cpu_isa_cross.py to check the AArch64 (NEON) kernels under qemu-user, where torch does not run.
 *
 *   isa_check ISA...   ISA ids to check (onebit.h), each must be supported; prints one line per failure and a summary,
 *                      exits 0 when every result agrees: int8 results bit for bit (integer dot products, the same
 *                      quantisation), float results within 2e-5 of the sum of |terms| (the order of the float sums
 *                      differs between kernels). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lut.h"
#include "onebit.h"
#include "ternary.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float uniform(void) { return (float)(next_u32() & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f; }
static float bf16_of(float f) { return onebit_bf16_value(onebit_bf16_round(f)); }

static int failures, cases;

static void fail(const char *what, int isa, int ternary, int64_t M, int64_t K, int64_t N, int kind, int act_bits,
                 int threads, int64_t m, int64_t n, double got, double want, double tol) {
    if (failures++ < 20)
        printf("FAIL %s isa=%d %s M=%lld K=%lld N=%lld x_kind=%d act_bits=%d threads=%d at (%lld, %lld): %.9g vs "
               "portable %.9g (tolerance %.3g)\n",
               what, isa, ternary ? "ternary" : "binary", (long long)M, (long long)K, (long long)N, kind, act_bits,
               threads, (long long)m, (long long)n, got, want, tol);
}

/* One linear call of `isa` against the portable variant on the same random inputs. */
/* y against ref (the portable variant's result): int8 bit for bit, float within the rounding of the row's terms. */
static void compare(const char *what, int isa, int ternary, int64_t M, int64_t K, int64_t N, int kind, int64_t ldx,
                    const float *xf, const uint16_t *xb, const float *g, const float *h, int act_bits, int threads,
                    const float *y, const float *ref, int64_t ldy, int rc, int rc_ref) {
    ++cases;
    if (rc_ref != 0 || rc != 0) {
        fail(what, isa, ternary, M, K, N, kind, act_bits, threads, -1, -1, rc, rc_ref, 0);
        return;
    }
    for (int64_t m = 0; m < M; ++m) {
        double mass = 0; /* sum of |x g| over the row: the scale of the float rounding */
        for (int64_t k = 0; k < K; ++k)
            mass += fabs((double)(kind == ONEBIT_X_BF16 ? onebit_bf16_value(xb[m * ldx + k]) : xf[m * ldx + k]) * g[k]);
        for (int64_t n = 0; n < N; ++n) {
            const double got = y[m * ldy + n], want = ref[m * ldy + n];
            const double tol = act_bits == 8 ? 0.0 : 2e-5 * mass * fabs(h[n]) + 1e-6;
            if (!(fabs(got - want) <= tol)) fail(what, isa, ternary, M, K, N, kind, act_bits, threads, m, n, got, want, tol);
        }
    }
}

static void check_linear(int isa, int ternary, int64_t M, int64_t K, int64_t N, int kind, int act_bits, int bias_on,
                         int threads, int extreme) {
    const int64_t kbytes = ternary ? (K + 3) / 4 : (K + 7) / 8, ldx = K + 5, ldy = N + 3;
    uint8_t *w = malloc((size_t)(N * kbytes));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t b = 0; b < kbytes; ++b) {
            uint8_t byte = 0;
            if (ternary) {
                for (int j = 0; j < 4; ++j)
                    byte |= (uint8_t)((4 * b + j < K ? (extreme ? 2 : next_u32() % 3) : 1) << (2 * j));
            } else {
                byte = extreme ? 0xFF : (uint8_t)next_u32();
            }
            w[n * kbytes + b] = byte;
        }
    float *xf = malloc((size_t)(M * ldx) * sizeof(float)), *g = malloc((size_t)K * sizeof(float));
    uint16_t *xb = malloc((size_t)(M * ldx) * sizeof(uint16_t));
    float *h = malloc((size_t)N * sizeof(float)), *bias = malloc((size_t)N * sizeof(float));
    for (int64_t i = 0; i < M * ldx; ++i) {
        /* a few large activations, as in LLMs; extreme: all equal (int8 127 everywhere: the largest integer sums) */
        xf[i] = extreme ? 3.0f : uniform() * (next_u32() % 16 == 0 ? 30.0f : 1.0f);
        xb[i] = onebit_bf16_round(xf[i]);
    }
    for (int64_t k = 0; k < K; ++k) g[k] = extreme ? 1.0f : bf16_of(0.5f + 0.5f * uniform());
    for (int64_t n = 0; n < N; ++n) h[n] = 0.1f + uniform() * 0.05f, bias[n] = uniform();
    float *y = malloc((size_t)(M * ldy) * sizeof(float)), *ref = malloc((size_t)(M * ldy) * sizeof(float));
    const void *x = kind == ONEBIT_X_BF16 ? (const void *)xb : (const void *)xf;
    const float *b = bias_on ? bias : NULL;
    int rc_ref, rc;
    if (ternary) {
        rc_ref = onebit_ternary_linear(ONEBIT_ISA_PORTABLE, M, K, N, x, kind, ldx, g, w, kbytes, h, b, ref, 0, ldy,
                                       act_bits, 1);
        rc = onebit_ternary_linear(isa, M, K, N, x, kind, ldx, g, w, kbytes, h, b, y, 0, ldy, act_bits, threads);
    } else {
        rc_ref = onebit_linear(ONEBIT_ISA_PORTABLE, M, K, N, x, kind, ldx, g, w, kbytes, h, b, ref, 0, ldy, act_bits, 1);
        rc = onebit_linear(isa, M, K, N, x, kind, ldx, g, w, kbytes, h, b, y, 0, ldy, act_bits, threads);
    }
    compare("linear", isa, ternary, M, K, N, kind, ldx, xf, xb, g, h, act_bits, threads, y, ref, ldy, rc, rc_ref);
    if (!ternary && act_bits == 8 && onebit_binary_lut_supported(isa)) {
        uint8_t *lut = malloc((size_t)onebit_binary_lut_bytes(N, kbytes));
        rc = onebit_binary_to_lut(w, N, kbytes, lut, threads);
        if (rc == 0)
            rc = onebit_linear_lut(isa, M, K, N, x, kind, ldx, g, w, kbytes, h, b, y, 0, ldy, act_bits, threads, lut);
        compare("linear lut", isa, ternary, M, K, N, kind, ldx, xf, xb, g, h, act_bits, threads, y, ref, ldy, rc,
                rc_ref);
        free(lut);
    }
    free(w), free(xf), free(xb), free(g), free(h), free(bias), free(y), free(ref);
}

/* The progressive sign's forward and backward (train.c) of `isa` against the portable variant. */
static void check_progressive(int isa, int64_t N, int64_t K, float t) {
    float *w = malloc((size_t)(N * K) * sizeof(float)), *grad = malloc((size_t)(N * K) * sizeof(float));
    float *g = malloc((size_t)K * sizeof(float)), *h = malloc((size_t)N * sizeof(float));
    for (int64_t i = 0; i < N * K; ++i) w[i] = 0.05f * uniform(), grad[i] = uniform();
    for (int64_t k = 0; k < K; ++k) g[k] = 1.0f + 0.2f * uniform();
    for (int64_t n = 0; n < N; ++n) h[n] = 1.0f + 0.2f * uniform();
    const float tanh_t = tanhf(t);
    float *out[2], *scale[2], *gw[2], *gg[2], *gh[2];
    for (int v = 0; v < 2; ++v) {
        out[v] = malloc((size_t)(N * K) * sizeof(float)), gw[v] = malloc((size_t)(N * K) * sizeof(float));
        scale[v] = malloc((size_t)N * sizeof(float)), gh[v] = malloc((size_t)N * sizeof(float));
        gg[v] = malloc((size_t)K * sizeof(float));
        const int use = v ? isa : ONEBIT_ISA_PORTABLE;
        if (onebit_progressive_sign_forward(use, N, K, w, t, tanh_t, g, h, out[v], 0, scale[v], 1) != 0 ||
            onebit_progressive_sign_backward(use, N, K, w, scale[v], t, tanh_t, g, h, grad, 0, gw[v], gg[v], gh[v], 1))
            fail("progressive return code", isa, 0, N, K, 0, 0, 0, 1, -1, -1, 1, 0, 0);
    }
    ++cases;
    for (int64_t i = 0; i < N * K; ++i) {
        if (!(fabsf(out[1][i] - out[0][i]) <= 1e-6f * (fabsf(out[0][i]) + 1e-3f)))
            fail("progressive forward", isa, 0, N, K, 0, 0, 0, 1, i / K, i % K, out[1][i], out[0][i], 0);
        if (!(fabsf(gw[1][i] - gw[0][i]) <= 1e-5f * (fabsf(gw[0][i]) + 1e-2f)))
            fail("progressive backward", isa, 0, N, K, 0, 0, 0, 1, i / K, i % K, gw[1][i], gw[0][i], 0);
    }
    for (int v = 0; v < 2; ++v) free(out[v]), free(scale[v]), free(gw[v]), free(gg[v]), free(gh[v]);
    free(w), free(grad), free(g), free(h);
}

/* onebit_set_flush_denormal on this architecture: it reports both threads, and the calling thread's product of two
 * normal floats whose result is denormal comes out zero while flushing, nonzero after. */
static void check_flush_denormal(void) {
    volatile float a = 1e-30f, b = 1e-10f; /* a * b = 1e-40, a float32 denormal */
    ++cases;
    const int set_on = onebit_set_flush_denormal(1, 2);
    const float flushed = a * b;
    const int set_off = onebit_set_flush_denormal(0, 2);
    const float kept = a * b;
    if (set_on != 2 || set_off != 2 || flushed != 0.0f || kept == 0.0f) {
        ++failures;
        printf("FAIL flush_denormal: set %d / %d threads, product %g while flushing, %g after\n", set_on, set_off,
               (double)flushed, (double)kept);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: isa_check ISA...\n");
        return 2;
    }
    static const int64_t Ks[] = {1, 7, 64, 65, 200, 511, 512, 513, 1000, 1536, 2100};
    static const int64_t Ms[] = {1, 2, 3, 5, 8, 9, 17};
    static const int64_t Ns[] = {1, 3, 17, 40};
    for (int a = 1; a < argc; ++a) {
        const int isa = atoi(argv[a]);
        if (!onebit_isa_supported(isa)) {
            printf("FAIL isa %d is not supported by this build and CPU\n", isa);
            return 1;
        }
        for (int ternary = 0; ternary < 2; ++ternary)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ++ki)
                for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; ++mi) {
                    const int64_t N = Ns[(ki + mi) % (sizeof Ns / sizeof *Ns)];
                    for (int kind = 0; kind < 2; ++kind)
                        for (int act_bits = 0; act_bits <= 8; act_bits += 8)
                            check_linear(isa, ternary, Ms[mi], Ks[ki], N, kind, act_bits, (int)((ki + mi) % 2),
                                         mi % 3 == 2 ? 3 : 1, 0);
                }
        for (int ternary = 0; ternary < 2; ++ternary)
            for (int act_bits = 0; act_bits <= 8; act_bits += 8) check_linear(isa, ternary, 3, 4100, 9, 0, act_bits, 0, 1, 1);
        check_progressive(isa, 5, 300, 0.7f);
        check_progressive(isa, 3, 1030, 40.0f);
    }
    check_flush_denormal();
    printf("isa_check: %d cases, %d failures\n", cases, failures);
    return failures ? 1 : 0;
}
