/* The t5 runtime layout of ternary weights (ternary.h): conversion from the 2-bit codes of packing.py, in plain C
 * (compiled in the baseline unit; it runs once per weight tensor, on the driver's threads). */
#include <stdatomic.h>
#include <stdlib.h>

#include "pool.h"
#include "ternary.h"

int64_t onebit_ternary_t5_row_bytes(int64_t K) {
    return (K + ONEBIT_T5_BLOCK - 1) / ONEBIT_T5_BLOCK * ONEBIT_T5_BLOCK_BYTES;
}

/* tables[t][byte]: the four codes c_q of a 2-bit byte times 3^t, in byte q of a word. A t5 byte's value is the sum
 * over t of one such byte from each of 5 source bytes: at most 2 * 121 = 242, so four of them add up in one word
 * without carries (codes 3 are caught separately). */
typedef uint32_t t5_tables[5][256];

typedef struct {
    const uint8_t *w;
    int64_t N, K, kbytes, tbytes;
    uint8_t *t5;
    t5_tables tables;
    uint8_t fold[256]; /* v -> stored byte */
    atomic_llong next_row;
    atomic_int invalid; /* a code 3 was met (not a ternary code): the caller must not use the result */
} convert_t;

/* Rows per unit of work handed out. */
#define CONVERT_ROWS 64

static const uint32_t pow3[5] = {1, 3, 9, 27, 81};

static void make_tables(convert_t *c) {
    for (int t = 0; t < 5; ++t)
        for (int byte = 0; byte < 256; ++byte) {
            uint32_t word = 0;
            for (int q = 0; q < 4; ++q) word |= (((uint32_t)byte >> (2 * q)) & 3u) * pow3[t] << (8 * q);
            c->tables[t][byte] = word;
        }
    for (int v = 0; v < 256; ++v) /* fold: v > 121 is stored as the negation of 242 - v, with bit 7 set */
        c->fold[v] = v <= 121 ? (uint8_t)v : (uint8_t)(v <= 242 ? 128 | (242 - v) : 0);
}

/* Block b of a row whose 320 inputs all lie below K: 5 runs of 16 source bytes (64 codes each) -> 64 bytes. */
static unsigned full_block(const convert_t *c, const uint8_t *src, int64_t b, uint8_t *dst) {
    const uint8_t *s = src + b * (ONEBIT_T5_BLOCK / 4);
    unsigned bad = 0;
    for (int i = 0; i < 16; ++i) {
        const uint8_t s0 = s[i], s1 = s[16 + i], s2 = s[32 + i], s3 = s[48 + i], s4 = s[64 + i];
        bad |= (s0 & (s0 >> 1)) | (s1 & (s1 >> 1)) | (s2 & (s2 >> 1)) | (s3 & (s3 >> 1)) | (s4 & (s4 >> 1));
        const uint32_t v = c->tables[0][s0] + c->tables[1][s1] + c->tables[2][s2] + c->tables[3][s3] + c->tables[4][s4];
        uint8_t *d = dst + b * ONEBIT_T5_BLOCK_BYTES + 4 * i;
        d[0] = c->fold[v & 255], d[1] = c->fold[(v >> 8) & 255];
        d[2] = c->fold[(v >> 16) & 255], d[3] = c->fold[v >> 24];
    }
    return bad & 0x55; /* a set low bit of a pair whose high bit is set too: code 3 */
}

/* A block reaching past K, code by code (codes past K are 1). */
static unsigned last_block(const convert_t *c, const uint8_t *src, int64_t b, uint8_t *dst) {
    uint16_t v[ONEBIT_T5_BLOCK_BYTES] = {0};
    unsigned bad = 0;
    for (int t = 0; t < 5; ++t)
        for (int j = 0; j < 64; ++j) {
            const int64_t i = b * ONEBIT_T5_BLOCK + 64 * t + j;
            const unsigned code = i < c->K ? (src[i >> 2] >> (2 * (i & 3))) & 3u : 1u;
            bad |= code == 3;
            v[j] += (uint16_t)(code * pow3[t]);
        }
    for (int j = 0; j < 64; ++j) dst[b * ONEBIT_T5_BLOCK_BYTES + j] = c->fold[v[j] <= 242 ? v[j] : 255];
    return bad;
}

static void convert_row(const convert_t *c, int64_t n, int *invalid) {
    const uint8_t *src = c->w + n * c->kbytes;
    uint8_t *dst = c->t5 + n * c->tbytes;
    const int64_t blocks = c->tbytes / ONEBIT_T5_BLOCK_BYTES, full = c->K / ONEBIT_T5_BLOCK;
    unsigned bad = 0;
    for (int64_t b = 0; b < full; ++b) bad |= full_block(c, src, b, dst);
    for (int64_t b = full; b < blocks; ++b) bad |= last_block(c, src, b, dst);
    *invalid |= bad != 0;
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
    convert_t *c = malloc(sizeof *c);
    if (!c) return -3;
    c->w = w, c->N = N, c->K = K, c->kbytes = (K + 3) / 4, c->tbytes = onebit_ternary_t5_row_bytes(K), c->t5 = t5;
    make_tables(c);
    atomic_init(&c->next_row, 0);
    atomic_init(&c->invalid, 0);
    onebit_parallel(nthreads < 1 ? 1 : nthreads, convert_task, c);
    const int invalid = atomic_load(&c->invalid);
    free(c);
    return invalid ? -2 : 0;
}
