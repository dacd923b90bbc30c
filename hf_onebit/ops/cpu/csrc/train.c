/* Training kernels: the progressive sign of a latent weight with its scales folded in, and its gradients
 * (progressive.h). Rows are split evenly over the threads (every row costs the same); the input-scale gradient, a sum
 * over rows, is summed per thread and then over the threads. */
#include <math.h>
#include <stdlib.h>

#include "onebit.h"
#include "pool.h"

typedef struct {
    const onebit_kernels *kern;
    int backward;
    int64_t N, K;
    const float *w, *g, *h;
    float t, tanh_t, slope;
    void *out;            /* forward output */
    int out_bf16;
    float *row_scale;     /* forward: written; backward: read */
    const void *grad;     /* backward */
    int grad_bf16;
    float *grad_w, *grad_h;
    float *partial_g;     /* backward with g: one zeroed (K,) row per thread */
} progressive_job;

static void progressive_task(void *arg, int tid, int used) {
    const progressive_job *j = arg;
    const int64_t n0 = j->N * tid / used, n1 = j->N * (tid + 1) / used;
    if (n0 >= n1) return;
    if (j->backward)
        j->kern->progressive_bwd_rows(j->w, j->row_scale, j->K, n0, n1, j->t, j->tanh_t, j->slope, j->g, j->h,
                                      j->grad, j->grad_bf16, j->grad_w,
                                      j->partial_g ? j->partial_g + (int64_t)tid * j->K : NULL, j->grad_h);
    else
        j->kern->progressive_fwd_rows(j->w, j->K, n0, n1, j->t, j->tanh_t, j->g, j->h, j->out, j->out_bf16,
                                      j->row_scale);
}

static int valid(int64_t N, int64_t K, const float *w, float t, float tanh_t, int nthreads) {
    return N > 0 && K > 0 && w != NULL && t > 0.0f && isfinite(t) && tanh_t > 0.0f && nthreads > 0;
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

int onebit_progressive_sign_backward(int isa, int64_t N, int64_t K, const float *w, const float *row_scale, float t,
                                     float tanh_t, const float *g, const float *h, const void *grad, int grad_bf16,
                                     float *grad_w, float *grad_g, float *grad_h, int nthreads) {
    if (!valid(N, K, w, t, tanh_t, nthreads) || row_scale == NULL || grad == NULL || grad_w == NULL ||
        (g != NULL && grad_g == NULL) || (h != NULL && grad_h == NULL))
        return -1;
    onebit_kernels kern;
    if (onebit_get_kernels(isa, &kern) != 0) return -2;
    float *partial = NULL;
    if (g != NULL) {
        partial = calloc((size_t)nthreads * (size_t)K, sizeof(float));
        if (partial == NULL) return -3;
    }
    progressive_job job = {.kern = &kern, .backward = 1, .N = N, .K = K, .w = w, .g = g, .h = h, .t = t,
                           .tanh_t = tanh_t, .slope = (float)((double)t / (double)tanh_t),
                           .row_scale = (float *)row_scale, .grad = grad, .grad_bf16 = grad_bf16 != 0,
                           .grad_w = grad_w, .grad_h = grad_h, .partial_g = partial};
    const int used = onebit_parallel(nthreads, progressive_task, &job);
    if (partial != NULL) {
        for (int64_t k = 0; k < K; ++k) {
            float total = 0.0f;
            for (int i = 0; i < used; ++i) total += partial[(int64_t)i * K + k];
            grad_g[k] = total;
        }
        free(partial);
    }
    return 0;
}
