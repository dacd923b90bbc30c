/* Driver: ISA dispatch, activation preparation (scale, int8 quantisation), blocking, threading and the epilogue.
 * Compiled with baseline flags only; the SIMD row kernels live in kernels_<isa>.c, each compiled with its own flags. */
#include "onebit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ONEBIT_ALIGN 64
/* Bytes of packed weights per block kept hot in L2 while every activation row streams past it. */
#define ONEBIT_BLOCK_BYTES (384 * 1024)

static void *aligned_buffer(size_t bytes) {
    size_t rounded = (bytes + ONEBIT_ALIGN - 1) / ONEBIT_ALIGN * ONEBIT_ALIGN;
    return aligned_alloc(ONEBIT_ALIGN, rounded ? rounded : ONEBIT_ALIGN);
}

int onebit_isa_count(void) { return ONEBIT_ISA_COUNT; }

int onebit_isa_supported(int isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
#endif
    switch (isa) {
    case ONEBIT_ISA_PORTABLE:
        return 1;
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    default:
        return 0;
    }
}

int onebit_best_isa(void) {
    for (int isa = ONEBIT_ISA_COUNT - 1; isa > 0; --isa)
        if (onebit_isa_supported(isa)) return isa;
    return ONEBIT_ISA_PORTABLE;
}

static int get_kernels(int isa, onebit_kernels *k) {
    if (!onebit_isa_supported(isa)) return -2;
    switch (isa) {
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        onebit_kernels_avx2(k);
        return 0;
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
        onebit_kernels_avx512(k);
        return 0;
#endif
    default:
        onebit_kernels_portable(k);
        return 0;
    }
}

/* Rows of W per block: decode (one pass over the activations) only balances the threads; prefill also keeps the block
 * in L2 so it is read from memory once and reused by every group of ONEBIT_MR activation rows. */
static int64_t block_rows(int64_t M, int64_t N, int64_t kbytes, int nthreads) {
    int64_t nblocks = nthreads;
    if (M > ONEBIT_MR) {
        int64_t cap = ONEBIT_BLOCK_BYTES / kbytes;
        if (cap < 16) cap = 16;
        nblocks = (N + cap - 1) / cap;
        nblocks = (nblocks + nthreads - 1) / nthreads * nthreads;
    }
    int64_t nb = (N + nblocks - 1) / nblocks;
    nb = (nb + 15) / 16 * 16;
    return nb < N ? nb : N;
}

typedef struct {
    int64_t M, K, N, kbytes, kpad;
    const uint8_t *w;
    const float *h, *bias;
    float *y;
    int64_t ldy;
    int act_bits;
    /* prepared activations */
    float *xs;      /* act_bits 0: (M, kpad) x * g, zero padded */
    double *xsum;   /* act_bits 0: sum_k xs */
    int8_t *q;      /* act_bits 8: (M, kpad) int8, zero padded */
    float *qscale;  /* act_bits 8: per-row scale */
    int64_t *qsum;  /* act_bits 8: sum_k q */
} job_t;

/* x * g for one row, zero padded; the same float32 products as the reference (x * scale_in). */
static void prepare_row_f32(const float *x, const float *g, int64_t K, int64_t kpad, float *out) {
    if (g)
        for (int64_t k = 0; k < K; ++k) out[k] = x[k] * g[k];
    else
        memcpy(out, x, (size_t)K * sizeof(float));
    memset(out + K, 0, (size_t)(kpad - K) * sizeof(float));
}

/* Per-row absmax int8, bit for bit the reference's quantize_activations_int8: scale = absmax / 127 (1 for an
 * all-zero row), q = clamp(round_half_even(xs / scale), -127, 127). */
static void quantize_row(const float *xs, int64_t K, int64_t kpad, int8_t *q, float *scale, int64_t *qsum) {
    float absmax = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
        float a = fabsf(xs[k]);
        absmax = a > absmax ? a : absmax;
    }
    float s = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    int64_t total = 0;
    for (int64_t k = 0; k < K; ++k) {
        float v = rintf(xs[k] / s);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[k] = (int8_t)v;
        total += q[k];
    }
    memset(q + K, 0, (size_t)(kpad - K));
    *scale = s;
    *qsum = total;
}

static void epilogue_f32(const job_t *j, int64_t m0, int mr, int64_t n0, int64_t n1, const float *acc, int64_t ldo) {
    for (int r = 0; r < mr; ++r) {
        float *yr = j->y + (m0 + r) * j->ldy;
        float total = (float)j->xsum[m0 + r];
        const float *a = acc + r * ldo - n0;
        for (int64_t n = n0; n < n1; ++n) {
            float v = (2.0f * a[n] - total) * j->h[n];
            yr[n] = j->bias ? v + j->bias[n] : v;
        }
    }
}

static void epilogue_i8(const job_t *j, int64_t m0, int mr, int64_t n0, int64_t n1, const int32_t *acc, int64_t ldo) {
    for (int r = 0; r < mr; ++r) {
        float *yr = j->y + (m0 + r) * j->ldy;
        int64_t total = j->qsum[m0 + r];
        float s = j->qscale[m0 + r];
        const int32_t *a = acc + r * ldo - n0;
        for (int64_t n = n0; n < n1; ++n) {
            float v = (float)(2 * (int64_t)a[n] - total) * s * j->h[n];
            yr[n] = j->bias ? v + j->bias[n] : v;
        }
    }
}

int onebit_linear(int isa, int64_t M, int64_t K, int64_t N, const float *x, int64_t ldx, const float *g,
                  const uint8_t *w, int64_t kbytes, const float *h, const float *bias, float *y, int64_t ldy,
                  int act_bits, int nthreads) {
    if (M < 0 || K < 1 || N < 1 || kbytes != (K + 7) / 8 || ldx < K || ldy < N || !x || !w || !h || !y) return -1;
    if (act_bits != 0 && act_bits != 8) return -1;
    if (M == 0) return 0;
    onebit_kernels kern;
    if (get_kernels(isa, &kern) != 0) return -2;
    if (nthreads < 1) nthreads = 1;

    job_t j = {0};
    j.M = M, j.K = K, j.N = N, j.kbytes = kbytes, j.kpad = (kbytes + 7) / 8 * 64;
    j.w = w, j.h = h, j.bias = bias, j.y = y, j.ldy = ldy, j.act_bits = act_bits;
    const int64_t nb = block_rows(M, N, kbytes, nthreads);
    const int64_t nblocks = (N + nb - 1) / nb;
    const int64_t mchunks = (M + ONEBIT_MR - 1) / ONEBIT_MR;
    /* Too few weight blocks for the threads (small N, large M): also split the activation rows. */
    int64_t mparts = 1;
    if (nblocks < nthreads) {
        mparts = (2 * nthreads + nblocks - 1) / nblocks;
        if (mparts > mchunks) mparts = mchunks;
    }
    if (nthreads > nblocks * mparts) nthreads = (int)(nblocks * mparts);

    int failed = 0;
    if (act_bits == 0) {
        j.xs = aligned_buffer((size_t)(M * j.kpad) * sizeof(float));
        j.xsum = malloc((size_t)M * sizeof(double));
        failed = !j.xs || !j.xsum;
    } else {
        j.q = aligned_buffer((size_t)(M * j.kpad));
        j.qscale = malloc((size_t)M * sizeof(float));
        j.qsum = malloc((size_t)M * sizeof(int64_t));
        failed = !j.q || !j.qscale || !j.qsum;
    }
    if (failed) goto done;

#pragma omp parallel num_threads(nthreads)
    {
        float *row = NULL;
        void *scratch = aligned_buffer((size_t)(ONEBIT_MR * nb) * 4);
        if (act_bits == 8) row = aligned_buffer((size_t)j.kpad * sizeof(float));
        if (!scratch || (act_bits == 8 && !row)) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
            const float *xm = x + m * ldx;
            if (act_bits == 0) {
                float *xs = j.xs + m * j.kpad;
                prepare_row_f32(xm, g, K, j.kpad, xs);
                double total = 0.0;
                for (int64_t k = 0; k < K; ++k) total += xs[k];
                j.xsum[m] = total;
            } else if (row) {
                prepare_row_f32(xm, g, K, j.kpad, row);
                quantize_row(row, K, j.kpad, j.q + m * j.kpad, &j.qscale[m], &j.qsum[m]);
            }
        }
        /* implicit barrier: every activation row is ready */
        if (!failed) {
#pragma omp for collapse(2) schedule(static)
            for (int64_t b = 0; b < nblocks; ++b) {
                for (int64_t p = 0; p < mparts; ++p) {
                    const int64_t n0 = b * nb, n1 = n0 + nb < N ? n0 + nb : N;
                    const int64_t c0 = mchunks * p / mparts, c1 = mchunks * (p + 1) / mparts;
                    for (int64_t c = c0; c < c1; ++c) {
                        const int64_t m0 = c * ONEBIT_MR;
                        const int mr = (int)(M - m0 < ONEBIT_MR ? M - m0 : ONEBIT_MR);
                        if (act_bits == 0) {
                            kern.rows_f32(j.xs + m0 * j.kpad, j.kpad, mr, w, kbytes, n0, n1, scratch, nb);
                            epilogue_f32(&j, m0, mr, n0, n1, scratch, nb);
                        } else {
                            kern.rows_i8(j.q + m0 * j.kpad, j.kpad, mr, w, kbytes, n0, n1, scratch, nb);
                            epilogue_i8(&j, m0, mr, n0, n1, scratch, nb);
                        }
                    }
                }
            }
        }
        free(scratch);
        free(row);
    }

done:
    free(j.xs);
    free(j.xsum);
    free(j.q);
    free(j.qscale);
    free(j.qsum);
    return failed ? -3 : 0;
}
