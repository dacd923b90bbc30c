/* The lut runtime layout of binary weights (lut.h): conversion from the packed bits of packing.py, in plain C
 * (compiled in the baseline unit; it runs once per weight tensor, on the driver's threads). */
#include <stdatomic.h>
#include <string.h>

#include "lut.h"
#include "pool.h"

int64_t onebit_binary_lut_bytes(int64_t N, int64_t kbytes) {
    return (N + ONEBIT_LUT_ROWS - 1) / ONEBIT_LUT_ROWS * ONEBIT_LUT_ROWS * 2 * onebit_lut_chunks(kbytes);
}

typedef struct {
    const uint8_t *w;
    int64_t N, kbytes, chunks, nblk;
    uint8_t *lut;
    atomic_llong next_block;
} convert_t;

/* Row block b: byte 16 h + r of chunk c (at its place in c's slab) = byte 2 c + h of row 16 b + r (zero past kbytes
 * and past N). */
static void convert_block(const convert_t *c, int64_t b) {
    for (int r = 0; r < ONEBIT_LUT_ROWS; ++r) {
        const int64_t n = b * ONEBIT_LUT_ROWS + r;
        const uint8_t *row = n < c->N ? c->w + n * c->kbytes : NULL;
        for (int64_t k = 0; k < 2 * c->chunks; ++k) {
            const int64_t chunk = k / 2, slab = chunk / ONEBIT_LUT_SLAB;
            const int64_t rest = c->chunks - slab * ONEBIT_LUT_SLAB;
            const int64_t cs = rest < ONEBIT_LUT_SLAB ? rest : ONEBIT_LUT_SLAB;
            uint8_t *dst = c->lut + slab * c->nblk * ONEBIT_LUT_SLAB * ONEBIT_LUT_CHUNK_BYTES +
                           (b * cs + chunk % ONEBIT_LUT_SLAB) * ONEBIT_LUT_CHUNK_BYTES;
            dst[(k % 2) * ONEBIT_LUT_ROWS + r] = row && k < c->kbytes ? row[k] : 0;
        }
    }
}

static void convert_task(void *arg, int tid, int nthreads) {
    (void)tid, (void)nthreads;
    convert_t *c = arg;
    for (;;) {
        const int64_t b = atomic_fetch_add(&c->next_block, 1);
        if (b >= c->nblk) break;
        convert_block(c, b);
    }
}

int onebit_binary_to_lut(const uint8_t *w, int64_t N, int64_t kbytes, uint8_t *lut, int nthreads) {
    if (!w || !lut || N < 1 || kbytes < 1) return -1;
    convert_t c;
    c.w = w, c.N = N, c.kbytes = kbytes, c.chunks = onebit_lut_chunks(kbytes), c.lut = lut;
    c.nblk = (N + ONEBIT_LUT_ROWS - 1) / ONEBIT_LUT_ROWS;
    atomic_init(&c.next_block, 0);
    onebit_parallel(nthreads < 1 ? 1 : nthreads, convert_task, &c);
    return 0;
}
