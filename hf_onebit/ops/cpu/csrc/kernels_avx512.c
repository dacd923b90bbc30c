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

/* Masks are loaded straight from the weight bytes (kmov k, m: a load uop) rather than moved from a general register
 * (kmov k, r: port 5, which the adds and byte moves need). `word` points at 8 readable bytes. */
ONEBIT_INLINE void step_f32(const int mr, const float *x, int64_t ldx, const uint8_t *word, int64_t wi, const int nacc,
                            __m512 (*acc)[ONEBIT_MR]) {
    for (int s = 0; s < 4; ++s) {
        __mmask16 mask;
        /* compilers tend to route _load_mask16 through a general register; ask for the memory form */
        __asm__("kmovw %1, %0" : "=k"(mask) : "m"(*(const uint16_t *)(word + 2 * s)));
        __m512 *a = acc[s % nacc];
        for (int m = 0; m < mr; ++m)
            a[m] = _mm512_mask_add_ps(a[m], mask, a[m], _mm512_loadu_ps(x + m * ldx + wi * 64 + 16 * s));
    }
}

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    /* a single row has only 4 chains per word (one per 16-bit mask): alternate two sets by word to cover the add
     * latency; more rows bring their own chains */
    const int nacc = ONEBIT_NACC(mr), sets = mr == 1 ? 2 : 1;
    __m512 acc[2][4][ONEBIT_MR];
    for (int t = 0; t < sets; ++t)
        for (int a = 0; a < nacc; ++a)
            for (int m = 0; m < mr; ++m) acc[t][a][m] = _mm512_setzero_ps();
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    int64_t wi = 0;
    for (; wi + sets <= full; wi += sets) /* whole words, no bounds checks */
        for (int t = 0; t < sets; ++t) step_f32(mr, x, ldx, row + (wi + t) * 8, wi + t, nacc, acc[t]);
    for (; wi < nwords; ++wi) {
        const uint64_t tail = load_word(row, wi, full, kbytes);
        step_f32(mr, x, ldx, (const uint8_t *)&tail, wi, nacc, acc[0]);
    }
    for (int m = 0; m < mr; ++m) {
        __m512 total = acc[0][0][m];
        for (int a = 1; a < nacc; ++a) total = _mm512_add_ps(total, acc[0][a][m]);
        for (int t = 1; t < sets; ++t)
            for (int a = 0; a < nacc; ++a) total = _mm512_add_ps(total, acc[t][a][m]);
        out[m * ldo] = _mm512_reduce_add_ps(total);
    }
}

ONEBIT_INLINE void step_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *word, int64_t wi, __m512i *acc) {
    const __m512i wb = _mm512_maskz_mov_epi8(_load_mask64((__mmask64 *)word), _mm512_set1_epi8(1));
    for (int m = 0; m < mr; ++m)
        acc[m] = _mm512_dpbusd_epi32(acc[m], wb, _mm512_loadu_si512((const void *)(q + m * ldq + wi * 64)));
}

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m512i acc[4][ONEBIT_MR];
    for (int a = 0; a < nacc; ++a)
        for (int m = 0; m < mr; ++m) acc[a][m] = _mm512_setzero_si512();
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    int64_t wi = 0;
    for (; wi + nacc <= full; wi += nacc) /* whole words, no bounds checks */
        for (int a = 0; a < nacc; ++a) step_i8(mr, q, ldq, row + (wi + a) * 8, wi + a, acc[a]);
    for (; wi < nwords; ++wi) {
        const uint64_t tail = load_word(row, wi, full, kbytes);
        step_i8(mr, q, ldq, (const uint8_t *)&tail, wi, acc[0]);
    }
    for (int m = 0; m < mr; ++m) {
        __m512i total = acc[0][m];
        for (int a = 1; a < nacc; ++a) total = _mm512_add_epi32(total, acc[a][m]);
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
