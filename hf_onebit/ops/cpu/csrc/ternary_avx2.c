/* AVX2 + FMA ternary kernels (compiled with the flags of kernels_avx2.c; called only when the CPU reports both).
 * Activations arrive in the ternary order (ternary.h).
 *   int8:  32 weight bytes, shifted by 2 j and masked with 3, are 32 codes lined up with 32 consecutive activations:
 *          maddubs(codes u8, q s8) gives 16 int16 pair sums (|pair| <= 2 * 2 * 127: no saturation), added in int16
 *          over up to 8 half blocks (32 pairs: |sum| <= 16256) and widened to int32 with madd(., 1) once per 8;
 *   float: 8 weight bytes widened to dwords; vpermps with the table {0, 1, 2, 3, ...} reads the low 2 bits, shifts by
 *          2, 4, 6 give codes j = 1..3; FMA c * x (exact per term, fp32 accumulate). */
#include <immintrin.h>

#include "avx2_reduce.h"
#include "kernels_common.h"
#include "ternary.h"

/* 32 weight bytes: byte k is position 64 j + k of the activations passed in (already offset to the half block); adds
 * the int16 pair sums into s16. */
ONEBIT_INLINE void half_i8(const int mr, const int8_t *q, int64_t ldq, __m256i w, const int nacc,
                           __m256i (*s16)[ONEBIT_MR]) {
    const __m256i three = _mm256_set1_epi8(3);
    for (int j = 0; j < 4; ++j) {
        const __m256i c = _mm256_and_si256(j ? _mm256_srli_epi16(w, 2 * j) : w, three);
        __m256i *a = s16[j % nacc];
        for (int m = 0; m < mr; ++m) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + m * ldq + 64 * j));
            a[m] = _mm256_add_epi16(a[m], _mm256_maddubs_epi16(c, qv));
        }
    }
}

/* Half blocks whose int16 sums may pile up before they are widened (8 x 4 pairs of at most 508: 16256 < 2^15). */
#define HALVES_PER_FLUSH 8

ONEBIT_INLINE void flush_i8(const int mr, const int nacc, __m256i (*s16)[ONEBIT_MR], __m256i *acc) {
    const __m256i ones16 = _mm256_set1_epi16(1);
    for (int m = 0; m < mr; ++m) {
        __m256i t = s16[0][m];
        for (int a = 1; a < nacc; ++a) t = _mm256_add_epi16(t, s16[a][m]);
        acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(t, ones16));
        for (int a = 0; a < nacc; ++a) s16[a][m] = _mm256_setzero_si256();
    }
}

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m256i s16[4][ONEBIT_MR], acc[ONEBIT_MR];
    for (int m = 0; m < mr; ++m) {
        acc[m] = _mm256_setzero_si256();
        for (int a = 0; a < nacc; ++a) s16[a][m] = _mm256_setzero_si256();
    }
    const int64_t full = kbytes / 32;
    for (int64_t h = 0; h < full; ++h) { /* half block h: block h / 2, byte offset 32 (h % 2) */
        if (h % 2 == 0) _mm_prefetch((const char *)(row + h * 32 + ONEBIT_TERNARY_PREFETCH), _MM_HINT_T0);
        half_i8(mr, q + (h / 2) * 256 + (h % 2) * 32, ldq, _mm256_loadu_si256((const __m256i *)(row + h * 32)), nacc,
                s16);
        if (h % HALVES_PER_FLUSH == HALVES_PER_FLUSH - 1) flush_i8(mr, nacc, s16, acc);
    }
    if (kbytes > full * 32) { /* the row's last bytes into a zeroed register: nothing past the row is read */
        uint8_t tail[32] = {0};
        memcpy(tail, row + full * 32, (size_t)(kbytes - full * 32));
        half_i8(mr, q + (full / 2) * 256 + (full % 2) * 32, ldq, _mm256_loadu_si256((const __m256i *)tail), nacc, s16);
    }
    flush_i8(mr, nacc, s16, acc); /* at most HALVES_PER_FLUSH half blocks since the last flush */
    for (int m = 0; m < mr; ++m) out[m * ldo] = hsum256_epi32(acc[m]);
}

/* 8 weight bytes (given as an integer): positions 64 j + k .. + 8 of the activations passed in. */
ONEBIT_INLINE void eighth_f32(const int mr, const float *x, int64_t ldx, uint64_t w8, const int nacc,
                              __m256 (*acc)[ONEBIT_MR]) {
    const __m256 low2 = _mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3);
    const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)w8));
    for (int j = 0; j < 4; ++j) {
        const __m256 c = _mm256_permutevar8x32_ps(low2, j ? _mm256_srli_epi32(v, 2 * j) : v);
        __m256 *a = acc[j % nacc];
        for (int m = 0; m < mr; ++m) a[m] = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + m * ldx + 64 * j), a[m]);
    }
}

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m256 acc[4][ONEBIT_MR];
    for (int a = 0; a < nacc; ++a)
        for (int m = 0; m < mr; ++m) acc[a][m] = _mm256_setzero_ps();
    const int64_t steps = (kbytes + 7) / 8, full = kbytes / 8;
    for (int64_t s = 0; s < steps; ++s) { /* 8-byte step s: block s / 8, byte offset 8 (s % 8) */
        if (s % 8 == 0) _mm_prefetch((const char *)(row + s * 8 + ONEBIT_TERNARY_PREFETCH), _MM_HINT_T0);
        uint64_t w8;
        if (s < full)
            memcpy(&w8, row + s * 8, 8);
        else
            w8 = onebit_tail_u64(row, s * 8, kbytes - s * 8);
        eighth_f32(mr, x + (s / 8) * 256 + (s % 8) * 8, ldx, w8, nacc, acc);
    }
    for (int m = 0; m < mr; ++m) {
        __m256 s = acc[0][m];
        for (int a = 1; a < nacc; ++a) s = _mm256_add_ps(s, acc[a][m]);
        out[m * ldo] = hsum256_ps(s);
    }
}

ONEBIT_DEFINE_ROWS(rows_f32, row_f32, float, float)
ONEBIT_DEFINE_ROWS(rows_i8, row_i8, int8_t, int32_t)

void onebit_ternary_kernels_avx2(onebit_ternary_kernels *t) {
    t->rows_f32 = rows_f32;
    t->rows_i8 = rows_i8;
    t->order_row = onebit_ternary_order_row;
    t->amx_unpack_i8 = NULL;
    t->amx_unpack_bf16 = NULL;
}
