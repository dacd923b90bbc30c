/* Portable C row kernels (any CPU; the compiler may auto-vectorise the 8-wide inner loops). */
#include "kernels_common.h"
#include "prepare.h"
#include "progressive.h"

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    float acc[ONEBIT_MR][8] = {{0}};
    for (int64_t kb = 0; kb < kbytes; ++kb) {
        const unsigned b = row[kb];
        for (int m = 0; m < mr; ++m) {
            const float *xm = x + m * ldx + kb * 8;
            for (int j = 0; j < 8; ++j) acc[m][j] += ((b >> j) & 1u) ? xm[j] : 0.0f;
        }
    }
    for (int m = 0; m < mr; ++m) {
        float total = 0.0f;
        for (int j = 0; j < 8; ++j) total += acc[m][j];
        out[m * ldo] = total;
    }
}

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    int32_t acc[ONEBIT_MR][8] = {{0}};
    for (int64_t kb = 0; kb < kbytes; ++kb) {
        const unsigned b = row[kb];
        for (int m = 0; m < mr; ++m) {
            const int8_t *qm = q + m * ldq + kb * 8;
            for (int j = 0; j < 8; ++j) acc[m][j] += -(int32_t)((b >> j) & 1u) & (int32_t)qm[j];
        }
    }
    for (int m = 0; m < mr; ++m) {
        int32_t total = 0;
        for (int j = 0; j < 8; ++j) total += acc[m][j];
        out[m * ldo] = total;
    }
}

ONEBIT_DEFINE_ROWS(rows_f32, row_f32, float, float)
ONEBIT_DEFINE_ROWS(rows_i8, row_i8, int8_t, int32_t)

void onebit_kernels_portable(onebit_kernels *k) {
    k->rows_f32 = rows_f32;
    k->rows_i8 = rows_i8;
    ONEBIT_SET_PREPARE(k);
    ONEBIT_SET_PROGRESSIVE(k);
}
