/* Training kernels: the progressive sign (binary) or smooth ternary step (ternary) of a latent weight with its scales
 * folded in, and their gradients (progressive.h). Rows are split evenly over the threads (every row costs the same);
 * the input-scale gradient, a sum over rows, is summed per thread and then over the threads. */
#include <math.h>
#include <stdlib.h>

#include "onebit.h"
#include "pool.h"

typedef struct {
    const onebit_kernels *kern;
    int backward;
    int ternary;          /* the ternary step: row_scale (N, 2) holds s and c */
    int64_t N, K;
    const float *w, *g, *h;
    float t, tanh_t, slope;
    float inv_norm;       /* ternary: 1 / (tanh(t / 2) + tanh(3 t / 2)) */
    void *out;            /* forward output */
    int out_bf16;
    float *row_scale;     /* forward: written; backward: read */
    const void *grad;     /* backward */
    int grad_bf16;
    float *grad_w, *grad_h;
    float *partial_g;     /* backward with g: one zeroed (K,) row per thread */
    float *scratch;       /* ternary forward to bfloat16: one (K,) float32 row per thread */
} progressive_job;

static void progressive_task(void *arg, int tid, int used) {
    const progressive_job *j = arg;
    const int64_t n0 = j->N * tid / used, n1 = j->N * (tid + 1) / used;
    if (n0 >= n1) return;
    float *partial_g = j->partial_g ? j->partial_g + (int64_t)tid * j->K : NULL;
    if (j->ternary && j->backward)
        j->kern->progressive_ternary_bwd_rows(j->w, j->row_scale, j->K, n0, n1, j->t, j->inv_norm, j->g, j->h,
                                              j->grad, j->grad_bf16, j->grad_w, partial_g, j->grad_h);
    else if (j->ternary)
        j->kern->progressive_ternary_fwd_rows(j->w, j->K, n0, n1, j->t, j->inv_norm, j->g, j->h, j->out, j->out_bf16,
                                              j->scratch ? j->scratch + (int64_t)tid * j->K : NULL, j->row_scale);
    else if (j->backward)
        j->kern->progressive_bwd_rows(j->w, j->row_scale, j->K, n0, n1, j->t, j->tanh_t, j->slope, j->g, j->h,
                                      j->grad, j->grad_bf16, j->grad_w, partial_g, j->grad_h);
    else
        j->kern->progressive_fwd_rows(j->w, j->K, n0, n1, j->t, j->tanh_t, j->g, j->h, j->out, j->out_bf16,
                                      j->row_scale);
}

/* t_norm: tanh(t) for the sign, inv_norm for the ternary step - both > 0 for a valid t */
static int valid(int64_t N, int64_t K, const float *w, float t, float t_norm, int nthreads) {
    return N > 0 && K > 0 && w != NULL && t > 0.0f && isfinite(t) && t_norm > 0.0f && nthreads > 0;
}

int onebit_progressive_sign_forward(int isa, int64_t N, int64_t K, const float *w, float t, float tanh_t,
                                    const float *g, const float *h, void *out, int out_bf16, float *row_scale,
                                    int nthreads) {
    if (!valid(N, K, w, t, tanh_t, nthreads) || out == NULL || row_scale == NULL) return -1;
    onebit_kernels kern;
    if (onebit_get_kernels(isa, &kern) != 0) return -2;
    progressive_job job = {.kern = &kern, .backward = 0, .N = N, .K = K, .w = w, .g = g, .h = h, .t = t,
                           .tanh_t = tanh_t, .out = out, .out_bf16 = out_bf16 != 0, .row_scale = row_scale};
    onebit_parallel(nthreads, progressive_task, &job);
    return 0;
}

/* Runs a backward job (job->partial_g set here when g is given) and sums the threads' input-scale gradients. */
static int run_backward(progressive_job *job, float *grad_g, int nthreads) {
    float *partial = NULL;
    if (job->g != NULL) {
        partial = calloc((size_t)nthreads * (size_t)job->K, sizeof(float));
        if (partial == NULL) return -3;
    }
    job->partial_g = partial;
    const int used = onebit_parallel(nthreads, progressive_task, job);
    if (partial != NULL) {
        for (int64_t k = 0; k < job->K; ++k) {
            float total = 0.0f;
            for (int i = 0; i < used; ++i) total += partial[(int64_t)i * job->K + k];
            grad_g[k] = total;
        }
        free(partial);
    }
    return 0;
}

static int valid_backward(const float *row_scale, const void *grad, const float *grad_w, const float *g,
                          const float *grad_g, const float *h, const float *grad_h) {
    return row_scale != NULL && grad != NULL && grad_w != NULL && (g == NULL || grad_g != NULL) &&
           (h == NULL || grad_h != NULL);
}

int onebit_progressive_sign_backward(int isa, int64_t N, int64_t K, const float *w, const float *row_scale, float t,
                                     float tanh_t, const float *g, const float *h, const void *grad, int grad_bf16,
                                     float *grad_w, float *grad_g, float *grad_h, int nthreads) {
    if (!valid(N, K, w, t, tanh_t, nthreads) || !valid_backward(row_scale, grad, grad_w, g, grad_g, h, grad_h))
        return -1;
    onebit_kernels kern;
    if (onebit_get_kernels(isa, &kern) != 0) return -2;
    progressive_job job = {.kern = &kern, .backward = 1, .N = N, .K = K, .w = w, .g = g, .h = h, .t = t,
                           .tanh_t = tanh_t, .slope = (float)((double)t / (double)tanh_t),
                           .row_scale = (float *)row_scale, .grad = grad, .grad_bf16 = grad_bf16 != 0,
                           .grad_w = grad_w, .grad_h = grad_h};
    return run_backward(&job, grad_g, nthreads);
}

int onebit_progressive_ternary_forward(int isa, int64_t N, int64_t K, const float *w, float t, float inv_norm,
                                       const float *g, const float *h, void *out, int out_bf16, float *row_scales,
                                       int nthreads) {
    if (!valid(N, K, w, t, inv_norm, nthreads) || out == NULL || row_scales == NULL) return -1;
    onebit_kernels kern;
    if (onebit_get_kernels(isa, &kern) != 0) return -2;
    float *scratch = NULL;
    if (out_bf16) {
        scratch = malloc((size_t)nthreads * (size_t)K * sizeof(float));
        if (scratch == NULL) return -3;
    }
    progressive_job job = {.kern = &kern, .ternary = 1, .N = N, .K = K, .w = w, .g = g, .h = h, .t = t,
                           .inv_norm = inv_norm, .out = out, .out_bf16 = out_bf16 != 0, .scratch = scratch,
                           .row_scale = row_scales};
    onebit_parallel(nthreads, progressive_task, &job);
    free(scratch);
    return 0;
}

int onebit_progressive_ternary_backward(int isa, int64_t N, int64_t K, const float *w, const float *row_scales,
                                        float t, float inv_norm, const float *g, const float *h, const void *grad,
                                        int grad_bf16, float *grad_w, float *grad_g, float *grad_h, int nthreads) {
    if (!valid(N, K, w, t, inv_norm, nthreads) || !valid_backward(row_scales, grad, grad_w, g, grad_g, h, grad_h))
        return -1;
    onebit_kernels kern;
    if (onebit_get_kernels(isa, &kern) != 0) return -2;
    progressive_job job = {.kern = &kern, .backward = 1, .ternary = 1, .N = N, .K = K, .w = w, .g = g, .h = h,
                           .t = t, .inv_norm = inv_norm, .row_scale = (float *)row_scales, .grad = grad,
                           .grad_bf16 = grad_bf16 != 0, .grad_w = grad_w, .grad_h = grad_h};
    return run_backward(&job, grad_g, nthreads);
}
