/* AVX-512 ternary kernels (compiled with the flags of kernels_avx512.c: F/BW/VL + VNNI; called only when the CPU
 * reports all four). Activations arrive in the ternary order (ternary.h).
 *   int8:  64 weight bytes, shifted by 2 j and masked with 3, are 64 codes lined up with 64 consecutive int8
 *          activations: vpdpbusd(codes u8, q s8) -- 256 inputs per 3 shifts, 4 ands and 4 dot products per row;
 *   float: 16 weight bytes widened to 16 dwords; vpermps with two 16-entry tables reads codes j = 0, 1 (and, after
 *          one shift by 4, j = 2, 3) straight out of the low 4 bits as floats {0, 1, 2}: FMA c * x is exact per
 *          term (fp32 accumulate).
 * The AMX A-operand unpackers for ternary codes live here too (they need only AVX-512 BW). */
#include <immintrin.h>

#include "kernels_common.h"
#include "ternary.h"

/* Mask of the first n (<= 64) bytes. */
ONEBIT_INLINE __mmask64 first_bytes(int64_t n) { return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1); }

ONEBIT_INLINE void block_i8(const int mr, const int8_t *q, int64_t ldq, __m512i w, const int nacc,
                            __m512i (*acc)[ONEBIT_MR]) {
    const __m512i three = _mm512_set1_epi8(3);
    for (int j = 0; j < 4; ++j) {
        const __m512i c = _mm512_and_si512(j ? _mm512_srli_epi16(w, 2 * j) : w, three);
        __m512i *a = acc[j % nacc];
        for (int m = 0; m < mr; ++m)
            a[m] = _mm512_dpbusd_epi32(a[m], c, _mm512_loadu_si512((const void *)(q + m * ldq + 64 * j)));
    }
}

ONEBIT_INLINE void row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                          int32_t *out, int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m512i acc[4][ONEBIT_MR];
    for (int a = 0; a < nacc; ++a)
        for (int m = 0; m < mr; ++m) acc[a][m] = _mm512_setzero_si512();
    const int64_t full = kbytes / 64;
    for (int64_t b = 0; b < full; ++b) {
        _mm_prefetch((const char *)(row + b * 64 + ONEBIT_TERNARY_PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(row + b * 64 + ONEBIT_TERNARY_PREFETCH_L2), _MM_HINT_T1);
        block_i8(mr, q + b * 256, ldq, _mm512_loadu_si512((const void *)(row + b * 64)), nacc, acc);
    }
    if (kbytes > full * 64) /* masked load: no byte past the row is read; missing codes are 0 (x there is 0 too) */
        block_i8(mr, q + full * 256, ldq, _mm512_maskz_loadu_epi8(first_bytes(kbytes - full * 64), row + full * 64),
                 nacc, acc);
    for (int m = 0; m < mr; ++m) {
        __m512i total = acc[0][m];
        for (int a = 1; a < nacc; ++a) total = _mm512_add_epi32(total, acc[a][m]);
        out[m * ldo] = _mm512_reduce_add_epi32(total);
    }
}

/* 16 weight bytes (64 inputs: positions 64 j + s .. + 16 of the block, j = 0..3) for every row. */
ONEBIT_INLINE void quarter_f32(const int mr, const float *x, int64_t ldx, __m128i w16, const int nacc,
                               __m512 (*acc)[ONEBIT_MR]) {
    /* index i (low 4 bits of a dword) = c0 + 4 c1: lo[i] = c0, hi[i] = c1 */
    const __m512 lo = _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    const __m512 hi = _mm512_setr_ps(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i v = _mm512_cvtepu8_epi32(w16), v2 = _mm512_srli_epi32(v, 4);
    const __m512 c[4] = {_mm512_permutexvar_ps(v, lo), _mm512_permutexvar_ps(v, hi), _mm512_permutexvar_ps(v2, lo),
                         _mm512_permutexvar_ps(v2, hi)};
    for (int j = 0; j < 4; ++j) {
        __m512 *a = acc[j % nacc];
        for (int m = 0; m < mr; ++m) a[m] = _mm512_fmadd_ps(c[j], _mm512_loadu_ps(x + m * ldx + 64 * j), a[m]);
    }
}

ONEBIT_INLINE void row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes, float *out,
                           int64_t ldo) {
    const int nacc = ONEBIT_NACC(mr);
    __m512 acc[4][ONEBIT_MR];
    for (int a = 0; a < nacc; ++a)
        for (int m = 0; m < mr; ++m) acc[a][m] = _mm512_setzero_ps();
    const int64_t full = kbytes / 16;
    for (int64_t s = 0; s < full; ++s) { /* 16-byte step s: block s / 4, positions 64 j + 16 (s % 4) */
        if (s % 4 == 0) {
            _mm_prefetch((const char *)(row + s * 16 + ONEBIT_TERNARY_PREFETCH), _MM_HINT_T0);
            _mm_prefetch((const char *)(row + s * 16 + ONEBIT_TERNARY_PREFETCH_L2), _MM_HINT_T1);
        }
        quarter_f32(mr, x + (s / 4) * 256 + (s % 4) * 16, ldx, _mm_loadu_si128((const __m128i *)(row + s * 16)), nacc,
                    acc);
    }
    if (kbytes > full * 16) {
        const __m128i w16 = _mm_maskz_loadu_epi8((__mmask16)((1u << (kbytes - full * 16)) - 1), row + full * 16);
        quarter_f32(mr, x + (full / 4) * 256 + (full % 4) * 16, ldx, w16, nacc, acc);
    }
    for (int m = 0; m < mr; ++m) {
        __m512 total = acc[0][m];
        for (int a = 1; a < nacc; ++a) total = _mm512_add_ps(total, acc[a][m]);
        out[m * ldo] = _mm512_reduce_add_ps(total);
    }
}

ONEBIT_DEFINE_ROWS(rows_f32, row_f32, float, float)
ONEBIT_DEFINE_ROWS(rows_i8, row_i8, int8_t, int32_t)

/* Natural order -> ternary order, one block of 256 at a time. Output vector (j, s) (positions 64 j + 16 s .. + 16)
 * takes elements j, j + 4, j + 8, j + 12 of input vectors 4 s .. 4 s + 3: two two-source permutes fill the low halves
 * of two registers, one 128-bit-lane shuffle joins them. */
static void order_row(const float *x, int64_t kpad, float *out) {
    for (int64_t b = 0; b < kpad; b += ONEBIT_TERNARY_BLOCK) {
        const float *xb = x + b;
        float *ob = out + b;
        for (int j = 0; j < 4; ++j) {
            const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
                                                 _mm512_set1_epi32(j));
            for (int s = 0; s < 4; ++s) {
                const float *xs = xb + 64 * s;
                const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(xs), idx, _mm512_loadu_ps(xs + 16));
                const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(xs + 32), idx, _mm512_loadu_ps(xs + 48));
                _mm512_storeu_ps(ob + 64 * j + 16 * s, _mm512_shuffle_f32x4(lo, hi, 0x44));
            }
        }
    }
}

/* AMX int8 A tiles: chunk c (64 positions of the ternary order) = block c / 4, j = c % 4: the row's 64 bytes of that
 * block shifted by 2 j, masked with 3. */
static void amx_unpack_i8(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                          int64_t nch, uint8_t *apack) {
    const __m512i three = _mm512_set1_epi8(3);
    for (int64_t t = 0; t < ntiles; ++t)
        for (int r = 0; r < 16; ++r) {
            const int64_t n = n0 + t * 16 + r;
            const uint8_t *row = w + n * kbytes;
            for (int64_t c = c0; c < c0 + nch; ++c) {
                const int64_t at = (c / 4) * 64, j = c % 4;
                __m512i v = _mm512_setzero_si512();
                if (n < n1 && at < kbytes)
                    v = _mm512_and_si512(_mm512_srl_epi16(_mm512_maskz_loadu_epi8(first_bytes(kbytes - at), row + at),
                                                          _mm_cvtsi64_si128(2 * j)),
                                         three);
                _mm512_store_si512(apack + ((t * nch + c - c0) * 16 + r) * 64, v);
            }
        }
}

/* AMX bf16 A tiles: chunk c (32 positions) = block c / 8, j = (c % 8) / 2, bytes 32 (c % 2) .. + 32 of the block; the
 * codes become the bf16 values -1, 0, +1 by a 32-entry word permute. */
static void amx_unpack_bf16(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                            int64_t nch, uint16_t *apack) {
    const __m512i values = _mm512_setr_epi32(0xBF80 /* words 0, 1: -1, 0 */, 0x3F80 /* word 2: +1 */, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0, 0, 0);
    const __m512i three = _mm512_set1_epi16(3);
    for (int64_t t = 0; t < ntiles; ++t)
        for (int r = 0; r < 16; ++r) {
            const int64_t n = n0 + t * 16 + r;
            const uint8_t *row = w + n * kbytes;
            for (int64_t c = c0; c < c0 + nch; ++c) {
                const int64_t at = (c / 8) * 64 + (c % 2) * 32, j = (c % 8) / 2;
                __m512i v = _mm512_setzero_si512();
                if (n < n1 && at < kbytes) {
                    const int64_t left = kbytes - at;
                    const __m256i bytes = _mm256_maskz_loadu_epi8(
                        left >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << left) - 1), row + at);
                    const __m512i codes = _mm512_and_si512(
                        _mm512_srl_epi16(_mm512_cvtepu8_epi16(bytes), _mm_cvtsi64_si128(2 * j)), three);
                    v = _mm512_permutexvar_epi16(codes, values);
                }
                _mm512_store_si512(apack + ((t * nch + c - c0) * 16 + r) * 32, v);
            }
        }
}

void onebit_ternary_kernels_avx512(onebit_ternary_kernels *t) {
    t->rows_f32 = rows_f32;
    t->rows_i8 = rows_i8;
    t->order_row = order_row;
    t->amx_unpack_i8 = amx_unpack_i8;
    t->amx_unpack_bf16 = amx_unpack_bf16;
}
