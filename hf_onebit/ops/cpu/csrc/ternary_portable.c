/* Portable C row kernels for ternary codes (any CPU; the 64-wide inner loops are written for auto-vectorisation).
 * Activations arrive in the ternary order (ternary.h): code j of weight byte 64 b + k meets position 256 b + 64 j + k. */
#include "kernels_common.h"
#include "ternary.h"

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    float acc[ONEBIT_MR][8] = {{0}};
    for (int64_t b = 0; b * ONEBIT_TERNARY_BLOCK_BYTES < kbytes; ++b) {
        const uint8_t *w = row + b * ONEBIT_TERNARY_BLOCK_BYTES;
        const int64_t left = kbytes - b * ONEBIT_TERNARY_BLOCK_BYTES;
        const int nbytes = left < ONEBIT_TERNARY_BLOCK_BYTES ? (int)left : ONEBIT_TERNARY_BLOCK_BYTES;
        for (int j = 0; j < 4; ++j)
            for (int m = 0; m < mr; ++m) {
                const float *xm = x + m * ldx + b * ONEBIT_TERNARY_BLOCK + 64 * j;
                for (int k = 0; k < nbytes; ++k) acc[m][k % 8] += xm[k] * (float)((w[k] >> (2 * j)) & 3u);
            }
    }
    for (int m = 0; m < mr; ++m) {
        float total = 0.0f;
        for (int i = 0; i < 8; ++i) total += acc[m][i];
        out[m * ldo] = total;
    }
}

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    int32_t acc[ONEBIT_MR][8] = {{0}};
    for (int64_t b = 0; b * ONEBIT_TERNARY_BLOCK_BYTES < kbytes; ++b) {
        const uint8_t *w = row + b * ONEBIT_TERNARY_BLOCK_BYTES;
        const int64_t left = kbytes - b * ONEBIT_TERNARY_BLOCK_BYTES;
        const int nbytes = left < ONEBIT_TERNARY_BLOCK_BYTES ? (int)left : ONEBIT_TERNARY_BLOCK_BYTES;
        for (int j = 0; j < 4; ++j)
            for (int m = 0; m < mr; ++m) {
                const int8_t *qm = q + m * ldq + b * ONEBIT_TERNARY_BLOCK + 64 * j;
                for (int k = 0; k < nbytes; ++k) acc[m][k % 8] += (int32_t)((w[k] >> (2 * j)) & 3u) * qm[k];
            }
    }
    for (int m = 0; m < mr; ++m) {
        int32_t total = 0;
        for (int i = 0; i < 8; ++i) total += acc[m][i];
        out[m * ldo] = total;
    }
}

ONEBIT_DEFINE_ROWS(rows_f32, row_f32, float, float)
ONEBIT_DEFINE_ROWS(rows_i8, row_i8, int8_t, int32_t)

void onebit_ternary_kernels_portable(onebit_ternary_kernels *t) {
    t->rows_f32 = rows_f32;
    t->rows_i8 = rows_i8;
    t->order_row = onebit_ternary_order_row;
    t->amx_unpack_i8 = NULL;
    t->amx_unpack_bf16 = NULL;
}
