/* Helpers shared by the per-ISA kernel files (each includes this and is compiled with its own flags). */
#ifndef HF_ONEBIT_KERNELS_COMMON_H
#define HF_ONEBIT_KERNELS_COMMON_H

#include <stdint.h>
#include <string.h>

#include "onebit.h"

#define ONEBIT_INLINE static inline __attribute__((always_inline))

/* Independent accumulator chains per activation row: enough in flight to hide the add latency for a single row,
 * few enough that ONEBIT_MR rows still fit the register file. */
#define ONEBIT_NACC(mr) ((mr) >= 5 ? 1 : ((mr) >= 3 ? 2 : 4))

/* Bytes [at, at + n) of a weight row as a little-endian word, n <= sizeof(word); the rest zero. Used for the tail of
 * a row so that no kernel reads past the row's last byte. */
ONEBIT_INLINE uint64_t onebit_tail_u64(const uint8_t *row, int64_t at, int64_t n) {
    uint64_t word = 0;
    memcpy(&word, row + at, (size_t)n);
    return word;
}
ONEBIT_INLINE uint32_t onebit_tail_u32(const uint8_t *row, int64_t at, int64_t n) {
    uint32_t word = 0;
    memcpy(&word, row + at, (size_t)n);
    return word;
}

/* Defines `static void NAME(...)` with the onebit_rows_*_fn signature from ROW(mr, x, ldx, row, kbytes, out, ldo),
 * an always-inline function computing one weight row for `mr` activation rows; the switch turns mr into a
 * compile-time constant so the accumulators stay in registers. */
#define ONEBIT_DEFINE_ROWS(NAME, ROW, XT, OT)                                                                       \
    static void NAME(const XT *x, int64_t ldx, int mr, const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1,     \
                     OT *out, int64_t ldo) {                                                                         \
        switch (mr) {                                                                                                \
        case 1: for (int64_t n = n0; n < n1; ++n) ROW(1, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        case 2: for (int64_t n = n0; n < n1; ++n) ROW(2, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        case 3: for (int64_t n = n0; n < n1; ++n) ROW(3, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        case 4: for (int64_t n = n0; n < n1; ++n) ROW(4, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        case 5: for (int64_t n = n0; n < n1; ++n) ROW(5, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        case 6: for (int64_t n = n0; n < n1; ++n) ROW(6, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        case 7: for (int64_t n = n0; n < n1; ++n) ROW(7, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        default: for (int64_t n = n0; n < n1; ++n) ROW(8, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo); break; \
        }                                                                                                            \
    }

#endif
