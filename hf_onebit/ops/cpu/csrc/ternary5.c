/* The t5 runtime layout of ternary weights (ternary.h): conversion from the 2-bit codes of packing.py, in plain C
 * (compiled in the baseline unit; it runs once per weight tensor, on the driver's threads). */
#include <stdatomic.h>

#include "pool.h"
#include "ternary.h"

int64_t onebit_ternary_t5_row_bytes(int64_t K) {
    return (K + ONEBIT_T5_BLOCK - 1) / ONEBIT_T5_BLOCK * ONEBIT_T5_BLOCK_BYTES;
}

typedef struct {
    const uint8_t *w;
    int64_t N, K, kbytes, tbytes;
    uint8_t *t5;
    atomic_llong next_row;
    atomic_int invalid; /* a code 3 was met (not a ternary code): the caller must not use the result */
} convert_t;

/* Rows per unit of work handed out. */
#define CONVERT_ROWS 64

static void convert_row(const convert_t *c, int64_t n, int *invalid) {
    static const uint16_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t *src = c->w + n * c->kbytes;
    uint8_t *dst = c->t5 + n * c->tbytes;
    for (int64_t b = 0; b < c->tbytes / ONEBIT_T5_BLOCK_BYTES; ++b) {
        uint16_t v[ONEBIT_T5_BLOCK_BYTES] = {0};
        for (int t = 0; t < 5; ++t) {
            const int64_t i0 = b * ONEBIT_T5_BLOCK + 64 * t;
            for (int j = 0; j < 64; ++j) {
                const int64_t i = i0 + j;
                const unsigned code = i < c->K ? (src[i >> 2] >> (2 * (i & 3))) & 3u : 1u;
                *invalid |= code == 3;
                v[j] += (uint16_t)(code * pow3[t]);
            }
        }
        for (int j = 0; j < 64; ++j) /* fold: v > 121 is stored as the negation of 242 - v, with bit 7 set */
            dst[b * ONEBIT_T5_BLOCK_BYTES + j] = v[j] <= 121 ? (uint8_t)v[j] : (uint8_t)(128 | (242 - v[j]));
    }
}

static void convert_task(void *arg, int tid, int nthreads) {
    (void)tid, (void)nthreads;
    convert_t *c = arg;
    int invalid = 0;
    for (;;) {
        const int64_t n0 = atomic_fetch_add(&c->next_row, CONVERT_ROWS);
        if (n0 >= c->N) break;
        const int64_t n1 = n0 + CONVERT_ROWS < c->N ? n0 + CONVERT_ROWS : c->N;
        for (int64_t n = n0; n < n1; ++n) convert_row(c, n, &invalid);
    }
    if (invalid) atomic_store(&c->invalid, 1);
}

int onebit_ternary_to_t5(const uint8_t *w, int64_t N, int64_t K, uint8_t *t5, int nthreads) {
    if (!w || !t5 || N < 1 || K < 1 || K >= (1 << 23)) return -1;
    convert_t c = {.w = w, .N = N, .K = K, .kbytes = (K + 3) / 4, .tbytes = onebit_ternary_t5_row_bytes(K), .t5 = t5};
    atomic_init(&c.next_row, 0);
    atomic_init(&c.invalid, 0);
    onebit_parallel(nthreads < 1 ? 1 : nthreads, convert_task, &c);
    return atomic_load(&c.invalid) ? -2 : 0;
}
