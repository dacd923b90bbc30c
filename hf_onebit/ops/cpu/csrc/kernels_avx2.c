/* AVX2 + FMA row kernels (compiled with -mavx2 -mfma; called only when the CPU reports both).
 * float: a 256-entry table turns a weight byte into an 8-lane mask that selects x (B x by and + add).
 * int8: by bit planes (rows_i8_planes below) for every call without a lut copy of the weights (decode calls with one:
 * the lookup kernel of lut_avx2.c); a row's inputs after its last whole 512-block: 32 weight
 * bits become 32 bytes in {0,1}, maddubs(u8 bits, s8 q) + madd(., 1) gives 8 int32 partial sums. */
#include <immintrin.h>

#include "avx2_reduce.h"
#include "kernels_common.h"
#include "prepare.h"
#include "progressive.h"

static uint32_t byte_masks[256][8] __attribute__((aligned(32)));
static volatile int byte_masks_ready;

static void init_byte_masks(void) {
    if (byte_masks_ready) return;
    for (int b = 0; b < 256; ++b)
        for (int j = 0; j < 8; ++j) byte_masks[b][j] = ((b >> j) & 1) ? 0xFFFFFFFFu : 0u;
    byte_masks_ready = 1;
}

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m256 acc[ONEBIT_MR][4];
    for (int m = 0; m < mr; ++m)
        for (int a = 0; a < nacc; ++a) acc[m][a] = _mm256_setzero_ps();
    int64_t kb = 0;
    for (; kb + nacc <= kbytes; kb += nacc) {
        for (int a = 0; a < nacc; ++a) {
            const __m256 mask = _mm256_load_ps((const float *)byte_masks[row[kb + a]]);
            for (int m = 0; m < mr; ++m) {
                const __m256 xv = _mm256_loadu_ps(x + m * ldx + (kb + a) * 8);
                acc[m][a] = _mm256_add_ps(acc[m][a], _mm256_and_ps(mask, xv));
            }
        }
    }
    for (; kb < kbytes; ++kb) {
        const __m256 mask = _mm256_load_ps((const float *)byte_masks[row[kb]]);
        for (int m = 0; m < mr; ++m)
            acc[m][0] = _mm256_add_ps(acc[m][0], _mm256_and_ps(mask, _mm256_loadu_ps(x + m * ldx + kb * 8)));
    }
    for (int m = 0; m < mr; ++m) {
        __m256 s = acc[m][0];
        for (int a = 1; a < nacc; ++a) s = _mm256_add_ps(s, acc[m][a]);
        out[m * ldo] = hsum256_ps(s);
    }
}

/* 32 weight bits -> 32 bytes in {0, 1}, byte i = bit i. */
ONEBIT_INLINE __m256i expand_bits32(uint32_t bits) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, /* lane 1: */
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i select = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, select), select);
    return _mm256_and_si256(v, _mm256_set1_epi8(1));
}

/* Adds B q over the 32 inputs of weight word wi (row bytes 4 wi .. 4 wi + 3; past the row's end zero) to acc[m] of the
 * mr activation rows, in natural order. */
ONEBIT_INLINE void word_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes, int64_t wi,
                           __m256i *acc) {
    const int64_t at = wi * 4;
    uint32_t bits;
    if (at + 4 <= kbytes)
        memcpy(&bits, row + at, 4);
    else
        bits = onebit_tail_u32(row, at, kbytes - at);
    const __m256i wb = expand_bits32(bits), ones16 = _mm256_set1_epi16(1);
    for (int m = 0; m < mr; ++m) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(q + m * ldq + at * 8));
        acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(_mm256_maddubs_epi16(wb, qv), ones16));
    }
}

/* ---- int8 path by bit planes (every int8 call with binary weights but decode calls on a lut copy, lut.h) ----
 * Each 64-byte block of a row (512 inputs) is used as it is: the two 32-byte halves, shifted right by s and ANDed
 * with 1, hold bit s of each byte in {0, 1}; the driver stores such activation rows in plane order
 * (onebit_order_planes: position 64 s + i of a block holds input 8 i + s), so each result meets its 32 activations in
 * one maddubs. The maddubs pairs (|pair| <= 2 * 127) add up in int16 over a block (16 of them: |sum| <= 4064) and go
 * to int32 once per block. Per 32 weights and activation row: shift and AND (shared by the rows), maddubs, add -
 * against broadcast, shuffle, AND, compare, AND, maddubs, madd and add in the word path above. Bytes after the row's
 * last whole block (K % 512 inputs) stay in natural order and take the word path. */
#define PLANE_PREFETCH 4096

ONEBIT_INLINE void planes_row(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                              int32_t *out, int64_t ldo) {
    const __m256i one8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    const int chains = mr <= 2 ? 2 : 1; /* int16 sums per row: two hide the add latency when few rows */
    __m256i acc[ONEBIT_MR];
    for (int m = 0; m < mr; ++m) acc[m] = _mm256_setzero_si256();
    const int64_t blocks = kbytes / 64;
    for (int64_t b = 0; b < blocks; ++b) {
        _mm_prefetch((const char *)row + b * 64 + PLANE_PREFETCH, _MM_HINT_T0);
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(row + b * 64));
        const __m256i hi = _mm256_loadu_si256((const __m256i *)(row + b * 64 + 32));
        __m256i s16[ONEBIT_MR][2];
        for (int m = 0; m < mr; ++m) s16[m][0] = s16[m][1] = _mm256_setzero_si256();
        for (int s = 0; s < 8; ++s) {
            const __m256i cl = _mm256_and_si256(s ? _mm256_srli_epi16(lo, s) : lo, one8);
            const __m256i ch = _mm256_and_si256(s ? _mm256_srli_epi16(hi, s) : hi, one8);
            for (int m = 0; m < mr; ++m) {
                const int8_t *x = q + m * ldq + b * 512 + 64 * s;
                s16[m][0] = _mm256_add_epi16(s16[m][0], _mm256_maddubs_epi16(cl, _mm256_loadu_si256((const __m256i *)x)));
                s16[m][chains - 1] = _mm256_add_epi16(s16[m][chains - 1],
                                             _mm256_maddubs_epi16(ch, _mm256_loadu_si256((const __m256i *)(x + 32))));
            }
        }
        for (int m = 0; m < mr; ++m)
            acc[m] = _mm256_add_epi32(
                acc[m], _mm256_madd_epi16(chains == 2 ? _mm256_add_epi16(s16[m][0], s16[m][1]) : s16[m][0], ones16));
    }
    /* natural order after the last whole block */
    for (int64_t wi = blocks * 16; wi < (kbytes + 3) / 4; ++wi) word_i8(mr, q, ldq, row, kbytes, wi, acc);
    for (int m = 0; m < mr; ++m) out[m * ldo] = hsum256_epi32(acc[m]);
}

ONEBIT_DEFINE_ROWS(rows_i8_planes, planes_row, int8_t, int32_t)
ONEBIT_DEFINE_ROWS(rows_f32, row_f32, float, float)

void onebit_kernels_avx2(onebit_kernels *k) {
    init_byte_masks();
    k->rows_f32 = rows_f32;
    k->rows_i8 = NULL; /* every binary int8 call on the packed bits takes the bit planes */
    k->rows_i8_planes = rows_i8_planes;
    k->planes_max_m = INT64_MAX;
    ONEBIT_SET_PREPARE(k);
    ONEBIT_SET_PROGRESSIVE(k);
}
