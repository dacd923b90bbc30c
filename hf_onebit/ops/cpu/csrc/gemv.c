/* The driver of the float kernels at decode sizes (gemv.h) and their portable row kernels: the activations are
 * written as float32 once per call (in pair order for bf16 weights), then the weight rows are split evenly over the
 * threads (every row costs the same), each thread computing chunks of GEMV_CHUNK rows into a small float32 buffer that
 * the epilogue (int8 weights' row scale, bias, bf16 rounding) turns into y. */
#include <stdlib.h>
#include <string.h>

#include "gemv.h"
#include "onebit.h"
#include "pool.h"

#define GEMV_CHUNK 64

static void bf16_rows_portable(const float *xp, int64_t ldx, int mr, const void *wv, int64_t ldw, int64_t K,
                               int64_t n0, int64_t n1, float *out, int64_t ldo) {
    const uint16_t *w = wv;
    const int64_t kfull = K - K % ONEBIT_GEMV_BLOCK;
    const int half = ONEBIT_GEMV_BLOCK / 2;
    for (int64_t n = n0; n < n1; ++n) {
        const uint16_t *row = w + n * ldw;
        for (int m = 0; m < mr; ++m) {
            const float *x = xp + m * ldx;
            float acc = 0.0f;
            for (int64_t k0 = 0; k0 < kfull; k0 += ONEBIT_GEMV_BLOCK)
                for (int i = 0; i < half; ++i)
                    acc += onebit_bf16_value(row[k0 + 2 * i]) * x[k0 + i] +
                           onebit_bf16_value(row[k0 + 2 * i + 1]) * x[k0 + half + i];
            for (int64_t k = kfull; k < K; ++k) acc += onebit_bf16_value(row[k]) * x[k];
            out[m * ldo + (n - n0)] = acc;
        }
    }
}

static void int8_rows_portable(const float *xp, int64_t ldx, int mr, const void *wv, int64_t ldw, int64_t K,
                               int64_t n0, int64_t n1, float *out, int64_t ldo) {
    const int8_t *w = wv;
    for (int64_t n = n0; n < n1; ++n) {
        const int8_t *row = w + n * ldw;
        for (int m = 0; m < mr; ++m) {
            const float *x = xp + m * ldx;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += (float)row[k] * x[k];
            out[m * ldo + (n - n0)] = acc;
        }
    }
}

static onebit_gemv_rows_fn gemv_kernel(int isa, int int8) {
    switch (isa) {
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        return int8 ? onebit_int8_gemv_rows_avx2 : onebit_bf16_gemv_rows_avx2;
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
    case ONEBIT_ISA_AMX:
        return int8 ? onebit_int8_gemv_rows_avx512 : onebit_bf16_gemv_rows_avx512;
#endif
    default:
        return int8 ? int8_rows_portable : bf16_rows_portable;
    }
}

/* Row m of x as float32, in pair order (gemv.h) when pair is set, else in order. */
static void float_row(const void *x, int x_bf16, int64_t K, int pair, float *out) {
    const int64_t kfull = K - K % ONEBIT_GEMV_BLOCK;
    const int half = ONEBIT_GEMV_BLOCK / 2;
    const float *xf = x;
    const uint16_t *xb = x;
    for (int64_t k = 0; k < K; ++k) {
        const float v = x_bf16 ? onebit_bf16_value(xb[k]) : xf[k];
        int64_t at = k;
        if (pair && k < kfull) {
            const int64_t i = k % ONEBIT_GEMV_BLOCK;
            at = k - i + (i % 2) * half + i / 2;
        }
        out[at] = v;
    }
}

typedef struct {
    onebit_gemv_rows_fn rows;
    int64_t M, K, N, ldx, ldw, ldy;
    const float *xp;
    const void *w;
    const float *scale; /* int8 weights' row scales; NULL for bf16 weights */
    const float *bias;
    void *y;
    int y_bf16;
} gemv_job;

static void gemv_task(void *arg, int tid, int used) {
    const gemv_job *j = arg;
    const int64_t n0 = j->N * tid / used, n1 = j->N * (tid + 1) / used;
    float buf[ONEBIT_GEMV_MAX_M * GEMV_CHUNK];
    for (int64_t c0 = n0; c0 < n1; c0 += GEMV_CHUNK) {
        const int64_t c1 = c0 + GEMV_CHUNK < n1 ? c0 + GEMV_CHUNK : n1;
        j->rows(j->xp, j->ldx, (int)j->M, j->w, j->ldw, j->K, c0, c1, buf, GEMV_CHUNK);
        for (int64_t m = 0; m < j->M; ++m)
            for (int64_t n = c0; n < c1; ++n) {
                float v = buf[m * GEMV_CHUNK + (n - c0)];
                if (j->scale) v *= j->scale[n];
                if (j->bias) v += j->bias[n];
                if (j->y_bf16)
                    ((uint16_t *)j->y)[m * j->ldy + n] = onebit_bf16_round(v);
                else
                    ((float *)j->y)[m * j->ldy + n] = v;
            }
    }
}

static int gemv(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_bf16, int64_t ldx, const void *w,
                int64_t ldw, const float *scale, const float *bias, void *y, int y_bf16, int64_t ldy, int nthreads) {
    if (M < 1 || M > ONEBIT_GEMV_MAX_M || K < 1 || N < 1 || x == NULL || w == NULL || y == NULL || ldx < K ||
        ldw < K || ldy < N || nthreads < 1)
        return -1;
    if (!onebit_isa_supported(isa)) return -2;
    const int64_t ld = (K + 15) / 16 * 16; /* 64-byte rows */
    float *xp = NULL;
    if (posix_memalign((void **)&xp, 64, (size_t)(M * ld) * sizeof(float)) != 0) return -3;
    const size_t xsize = x_bf16 ? 2 : 4;
    const int int8 = scale != NULL;
    for (int64_t m = 0; m < M; ++m) float_row((const char *)x + m * ldx * xsize, x_bf16, K, !int8, xp + m * ld);
    gemv_job job = {.rows = gemv_kernel(isa, int8), .M = M, .K = K, .N = N, .ldx = ld, .ldw = ldw, .ldy = ldy,
                    .xp = xp, .w = w, .scale = scale, .bias = bias, .y = y, .y_bf16 = y_bf16 != 0};
    onebit_parallel(nthreads, gemv_task, &job);
    free(xp);
    return 0;
}

int onebit_bf16_gemv(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_bf16, int64_t ldx,
                     const uint16_t *w, int64_t ldw, const float *bias, void *y, int y_bf16, int64_t ldy,
                     int nthreads) {
    return gemv(isa, M, K, N, x, x_bf16, ldx, w, ldw, NULL, bias, y, y_bf16, ldy, nthreads);
}

int onebit_int8_gemv(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_bf16, int64_t ldx,
                     const int8_t *w, int64_t ldw, const float *scale, const float *bias, void *y, int y_bf16,
                     int64_t ldy, int nthreads) {
    if (scale == NULL) return -1;
    return gemv(isa, M, K, N, x, x_bf16, ldx, w, ldw, scale, bias, y, y_bf16, ldy, nthreads);
}
