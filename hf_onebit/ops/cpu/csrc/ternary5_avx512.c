/* AVX-512 VBMI + VNNI int8 row kernel on the t5 runtime layout (ternary.h): 64 weight bytes hold 320 codes.
 * Per block: vpermi2b looks the low 7 bits of each byte up in two 128-entry tables (codes c0..c3 as 2-bit fields of
 * one byte; code c4), a masked subtract negates the bytes with bit 7 set (0xAA - fields: every field 2 - c; 2 - c4),
 * and field t, masked in place (value 4^t c_t), meets activations 64 t .. 64 t + 63 of the block in one vpdpbusd.
 * Every term of accumulator t is a multiple of 4^t, so acc_t >> 2 t is exact: the sum equals c q of the 2-bit kernels.
 * Compiled with the AVX-512 unit's flags plus -mavx512vbmi; called only when the CPU reports VBMI too. */
#include <immintrin.h>

#include "kernels_common.h"
#include "ternary.h"

/* Bytes ahead of the current weight byte prefetched into L2 (as the binary plane kernel: L2 only, 8 KiB). */
#define T5_PREFETCH_L2 8192

/* table_fields[v]: codes c0..c3 of v = sum_t c_t 3^t (v <= 121) in bits 2t..2t+1; table_c4[v]: code c4. Entries past
 * 121 never occur in a valid layout (they read as codes 1, value 0). */
static const uint8_t table_fields[128] __attribute__((aligned(64))) = {
    0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x10, 0x11, 0x12, 0x14, 0x15, 0x16, 0x18,
    0x19, 0x1a, 0x20, 0x21, 0x22, 0x24, 0x25, 0x26, 0x28, 0x29, 0x2a, 0x40, 0x41, 0x42, 0x44, 0x45,
    0x46, 0x48, 0x49, 0x4a, 0x50, 0x51, 0x52, 0x54, 0x55, 0x56, 0x58, 0x59, 0x5a, 0x60, 0x61, 0x62,
    0x64, 0x65, 0x66, 0x68, 0x69, 0x6a, 0x80, 0x81, 0x82, 0x84, 0x85, 0x86, 0x88, 0x89, 0x8a, 0x90,
    0x91, 0x92, 0x94, 0x95, 0x96, 0x98, 0x99, 0x9a, 0xa0, 0xa1, 0xa2, 0xa4, 0xa5, 0xa6, 0xa8, 0xa9,
    0xaa, 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x10, 0x11, 0x12, 0x14, 0x15, 0x16,
    0x18, 0x19, 0x1a, 0x20, 0x21, 0x22, 0x24, 0x25, 0x26, 0x28, 0x29, 0x2a, 0x40, 0x41, 0x42, 0x44,
    0x45, 0x46, 0x48, 0x49, 0x4a, 0x50, 0x51, 0x52, 0x54, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55,
};
static const uint8_t table_c4[128] __attribute__((aligned(64))) = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
};

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    const __m512i fields_lo = _mm512_load_si512(table_fields), fields_hi = _mm512_load_si512(table_fields + 64);
    const __m512i c4_lo = _mm512_load_si512(table_c4), c4_hi = _mm512_load_si512(table_c4 + 64);
    const __m512i negate_fields = _mm512_set1_epi8((char)0xAA), two = _mm512_set1_epi8(2);
    const __m512i mask[4] = {_mm512_set1_epi8(0x03), _mm512_set1_epi8(0x0C), _mm512_set1_epi8(0x30),
                             _mm512_set1_epi8((char)0xC0)};
    /* one row: five accumulators (one per field, fields masked in place: 1 op each) hide the vpdpbusd latency; more
     * rows: the fields shifted down to {0, 1, 2} (2 ops each, once for all rows) share 2 accumulators per row
     * (1 from 5 rows on), so that the accumulators of all rows still fit the register file */
    const int nacc = mr == 1 ? 5 : (mr >= 5 ? 1 : 2);
    __m512i acc[ONEBIT_T5_MAX_M][5];
    for (int m = 0; m < mr; ++m)
        for (int t = 0; t < nacc; ++t) acc[m][t] = _mm512_setzero_si512();
    const int64_t blocks = kbytes / ONEBIT_T5_BLOCK_BYTES;
    for (int64_t b = 0; b < blocks; ++b) {
        _mm_prefetch((const char *)(row + b * 64 + T5_PREFETCH_L2), _MM_HINT_T1);
        const __m512i w = _mm512_load_si512((const void *)(row + b * 64));
        const __mmask64 negative = _mm512_movepi8_mask(w);
        __m512i f = _mm512_permutex2var_epi8(fields_lo, w, fields_hi);
        __m512i c4 = _mm512_permutex2var_epi8(c4_lo, w, c4_hi);
        f = _mm512_mask_sub_epi8(f, negative, negate_fields, f);
        c4 = _mm512_mask_sub_epi8(c4, negative, two, c4);
        __m512i c[5];
        for (int t = 0; t < 4; ++t)
            c[t] = mr == 1 ? _mm512_and_si512(f, mask[t])
                           : _mm512_and_si512(t ? _mm512_srli_epi16(f, 2 * t) : f, mask[0]);
        c[4] = c4;
        for (int m = 0; m < mr; ++m) {
            const int8_t *qb = q + m * ldq + b * ONEBIT_T5_BLOCK;
            for (int t = 0; t < 5; ++t) {
                const __m512i x = _mm512_loadu_si512((const void *)(qb + 64 * t));
                acc[m][t % nacc] = _mm512_dpbusd_epi32(acc[m][t % nacc], c[t], x);
            }
        }
    }
    for (int m = 0; m < mr; ++m) {
        __m512i total;
        if (mr == 1) { /* field t counted 4^t times */
            const __m512i low = _mm512_add_epi32(acc[m][0], _mm512_srai_epi32(acc[m][1], 2));
            const __m512i high = _mm512_add_epi32(_mm512_srai_epi32(acc[m][2], 4), _mm512_srai_epi32(acc[m][3], 6));
            total = _mm512_add_epi32(_mm512_add_epi32(low, high), acc[m][4]);
        } else {
            total = acc[m][0];
            for (int a = 1; a < nacc; ++a) total = _mm512_add_epi32(total, acc[m][a]);
        }
        out[m * ldo] = _mm512_reduce_add_epi32(total);
    }
}

/* mr <= ONEBIT_T5_MAX_M = ONEBIT_MR (the driver's rule) */
ONEBIT_DEFINE_ROWS(rows_i8, row_i8, int8_t, int32_t)

onebit_rows_i8_fn onebit_ternary_t5_rows_i8_avx512vbmi(void) { return rows_i8; }
