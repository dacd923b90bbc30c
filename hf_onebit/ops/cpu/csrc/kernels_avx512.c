/* AVX-512 row kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only when the CPU reports
 * all four). Each 64-bit weight word drives 64 inputs:
 *   float: four 16-lane masked adds (acc += x where the bit is set) -- exact float32 B x;
 *   int8:  one zero-masked byte move turns the word into 64 bytes in {0,1}, then vpdpbusd(bits u8, q s8). */
#include <immintrin.h>

#include "kernels_common.h"
#include "prepare.h"

ONEBIT_INLINE uint64_t load_word(const uint8_t *row, int64_t wi, int64_t full, int64_t kbytes) {
    uint64_t bits;
    if (wi < full)
        memcpy(&bits, row + wi * 8, 8);
    else
        bits = onebit_tail_u64(row, wi * 8, kbytes - wi * 8);
    return bits;
}

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m512 acc[ONEBIT_MR][4];
    for (int m = 0; m < mr; ++m)
        for (int a = 0; a < nacc; ++a) acc[m][a] = _mm512_setzero_ps();
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    for (int64_t wi = 0; wi < nwords; ++wi) {
        const uint64_t bits = load_word(row, wi, full, kbytes);
        for (int s = 0; s < 4; ++s) {
            const __mmask16 mask = (__mmask16)(bits >> (16 * s));
            const int a = s % nacc;
            for (int m = 0; m < mr; ++m) {
                const __m512 xv = _mm512_loadu_ps(x + m * ldx + wi * 64 + 16 * s);
                acc[m][a] = _mm512_mask_add_ps(acc[m][a], mask, acc[m][a], xv);
            }
        }
    }
    for (int m = 0; m < mr; ++m) {
        __m512 total = acc[m][0];
        for (int a = 1; a < nacc; ++a) total = _mm512_add_ps(total, acc[m][a]);
        out[m * ldo] = _mm512_reduce_add_ps(total);
    }
}

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i acc[ONEBIT_MR][4];
    for (int m = 0; m < mr; ++m)
        for (int a = 0; a < nacc; ++a) acc[m][a] = _mm512_setzero_si512();
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    for (int64_t wi = 0; wi < nwords; wi += nacc) {
        for (int a = 0; a < nacc && wi + a < nwords; ++a) {
            const __m512i wb = _mm512_maskz_mov_epi8(_cvtu64_mask64(load_word(row, wi + a, full, kbytes)), ones);
            for (int m = 0; m < mr; ++m) {
                const __m512i qv = _mm512_loadu_si512((const void *)(q + m * ldq + (wi + a) * 64));
                acc[m][a] = _mm512_dpbusd_epi32(acc[m][a], wb, qv);
            }
        }
    }
    for (int m = 0; m < mr; ++m) {
        __m512i total = acc[m][0];
        for (int a = 1; a < nacc; ++a) total = _mm512_add_epi32(total, acc[m][a]);
        out[m * ldo] = _mm512_reduce_add_epi32(total);
    }
}

ONEBIT_DEFINE_ROWS(rows_f32, row_f32, float, float)
ONEBIT_DEFINE_ROWS(rows_i8, row_i8, int8_t, int32_t)

void onebit_kernels_avx512(onebit_kernels *k) {
    k->rows_f32 = rows_f32;
    k->rows_i8 = rows_i8;
    ONEBIT_SET_PREPARE(k);
}
