/* The driver of the decode attention kernels (attention.h) and their portable row kernels: one task per (batch row,
 * query head), handed out through an atomic counter; each converts its query to float32, scores every cached key,
 * takes the softmax in place and sums the values. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "attention.h"
#include "onebit.h"
#include "pool.h"

static void scores_portable(const float *q, const void *k, int64_t ld, int64_t L, int64_t D, int bf16,
                            const uint8_t *keep, float *s) {
    const size_t size = bf16 ? 2 : 4;
    for (int64_t j = 0; j < L; ++j) {
        if (keep && !keep[j]) {
            s[j] = -INFINITY;
            continue;
        }
        const char *row = (const char *)k + j * ld * size;
        float acc = 0.0f;
        for (int64_t d = 0; d < D; ++d) acc += q[d] * onebit_attention_element(row, d, bf16);
        s[j] = acc;
    }
}

static void weighted_portable(const float *p, const void *v, int64_t ld, int64_t L, int64_t D, int bf16,
                              float *acc) {
    const size_t size = bf16 ? 2 : 4;
    for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
        if (p[j] == 0.0f) continue;
        const char *row = (const char *)v + j * ld * size;
        for (int64_t d = 0; d < D; ++d) acc[d] += p[j] * onebit_attention_element(row, d, bf16);
    }
}

static void attention_kernels(int isa, onebit_attention_kernels *a) {
    a->scores = scores_portable;
    a->weighted = weighted_portable;
    switch (isa) {
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        onebit_attention_kernels_avx2(a);
        break;
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
    case ONEBIT_ISA_AMX:
        onebit_attention_kernels_avx512(a);
        break;
#endif
    default:
        break;
    }
}

typedef struct {
    onebit_attention_kernels kern;
    int64_t B, H, rep, L, D, qsb, qsh, ksb, ksh, ksl, vsb, vsh, vsl, msb, osb, osh;
    const char *q, *k, *v;
    const uint8_t *mask;
    char *out;
    float scale;
    int bf16;
    atomic_llong next;
    atomic_int failed;
} attention_job;

/* Softmax of s[0..L) in place (excluded keys hold -inf and get 0); 0 when every key is excluded. */
static int softmax(float *s, int64_t L) {
    float top = -INFINITY;
    for (int64_t j = 0; j < L; ++j)
        if (s[j] > top) top = s[j];
    if (top == -INFINITY) return 0;
    float sum = 0.0f;
    for (int64_t j = 0; j < L; ++j) {
        const float e = s[j] == -INFINITY ? 0.0f : expf(s[j] - top);
        s[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < L; ++j) s[j] *= inv;
    return 1;
}

static void attention_task(void *arg, int tid, int used) {
    (void)tid, (void)used;
    attention_job *j = arg;
    const size_t size = j->bf16 ? 2 : 4;
    float *buf = malloc((size_t)(j->L + 2 * j->D) * sizeof(float));
    if (!buf) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *s = buf, *q = buf + j->L, *acc = q + j->D;
    for (;;) {
        const int64_t t = atomic_fetch_add(&j->next, 1);
        if (t >= j->B * j->H) break;
        const int64_t b = t / j->H, h = t % j->H, g = h / j->rep;
        const char *qrow = j->q + (b * j->qsb + h * j->qsh) * size;
        for (int64_t d = 0; d < j->D; ++d) q[d] = onebit_attention_element(qrow, d, j->bf16) * j->scale;
        const char *k = j->k + (b * j->ksb + g * j->ksh) * size, *v = j->v + (b * j->vsb + g * j->vsh) * size;
        const uint8_t *keep = j->mask ? j->mask + b * j->msb : NULL;
        j->kern.scores(q, k, j->ksl, j->L, j->D, j->bf16, keep, s);
        char *orow = j->out + (b * j->osb + h * j->osh) * size;
        if (softmax(s, j->L))
            j->kern.weighted(s, v, j->vsl, j->L, j->D, j->bf16, acc);
        else
            for (int64_t d = 0; d < j->D; ++d) acc[d] = 0.0f; /* every key excluded: zeros, as torch's kernels */
        for (int64_t d = 0; d < j->D; ++d) {
            if (j->bf16)
                ((uint16_t *)orow)[d] = onebit_bf16_round(acc[d]);
            else
                ((float *)orow)[d] = acc[d];
        }
    }
    free(buf);
}

int onebit_decode_attention(int isa, int64_t B, int64_t H, int64_t Hkv, int64_t L, int64_t D, const void *q,
                            int64_t qsb, int64_t qsh, const void *k, int64_t ksb, int64_t ksh, int64_t ksl,
                            const void *v, int64_t vsb, int64_t vsh, int64_t vsl, const uint8_t *mask, int64_t msb,
                            float scale, int bf16, void *out, int64_t osb, int64_t osh, int nthreads) {
    if (B < 1 || H < 1 || Hkv < 1 || H % Hkv != 0 || L < 1 || D < 1 || !q || !k || !v || !out || ksl < D ||
        vsl < D || nthreads < 1 || !isfinite(scale))
        return -1;
    if (!onebit_isa_supported(isa)) return -2;
    attention_job job = {.B = B, .H = H, .rep = H / Hkv, .L = L, .D = D, .qsb = qsb, .qsh = qsh, .ksb = ksb,
                         .ksh = ksh, .ksl = ksl, .vsb = vsb, .vsh = vsh, .vsl = vsl, .msb = msb, .osb = osb,
                         .osh = osh, .q = q, .k = k, .v = v, .mask = mask, .out = out, .scale = scale,
                         .bf16 = bf16 != 0};
    attention_kernels(isa, &job.kern);
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    /* a task is ~4 L D bytes of reads: small caches are not worth waking a second thread for */
    const int64_t tasks = B * H;
    int threads = nthreads < tasks ? nthreads : (int)tasks;
    if (tasks * L * D < 16384) threads = 1;
    onebit_parallel(threads, attention_task, &job);
    return atomic_load(&job.failed) ? -3 : 0;
}
