/* AVX2 4-input lookup kernel on the lut runtime layout of binary weights (lut.h). Compiled in the AVX2 unit
 * (-mavx2 -mfma); the driver calls it only when the CPU reports both.
 * Per chunk (16 rows x 16 inputs, 32 weight bytes) and activation row: the two index vectors (low and high nibbles:
 * an AND, a shift and an AND, shared by the rows), four vpshufb on the row's tables, four vpunpck to int16 and four
 * adds - against 8 x (shift, AND, vpmaddubsw, add) for the same 256 weights in the bit-plane kernel. */
#include <immintrin.h>

#include "kernels_common.h"
#include "lut.h"

/* Blocks ahead (in the order a call reads them: a slab's blocks, then the next slab's) whose weights are prefetched. */
#define LUT_PREFETCH_BLOCKS 4
/* Activation rows per pass over a block. */
#define LUT_PASS_M 4

/* Entry i of a group's table (4 bytes): bit j of i in byte j, for i = 0..15. */
#define LUT_ENTRY(i) ((i) & 1), ((i) >> 1 & 1), ((i) >> 2 & 1), ((i) >> 3 & 1)
static const uint8_t entry_bits[64] = {LUT_ENTRY(0),  LUT_ENTRY(1),  LUT_ENTRY(2),  LUT_ENTRY(3),  LUT_ENTRY(4),
                                       LUT_ENTRY(5),  LUT_ENTRY(6),  LUT_ENTRY(7),  LUT_ENTRY(8),  LUT_ENTRY(9),
                                       LUT_ENTRY(10), LUT_ENTRY(11), LUT_ENTRY(12), LUT_ENTRY(13), LUT_ENTRY(14),
                                       LUT_ENTRY(15)};

/* The tables of one int8 row (lut.h): per group of 4 inputs, vpmaddubsw of the 16 entries' bit patterns with the 4
 * activations and vpmaddwd with ones give the 16 sums as int32; vpackssdw, an in-lane byte shuffle and a dword
 * permutation put their low bytes in the lower 16 bytes and their high bytes in the upper 16. */
static void lut_tables(const int8_t *q, int64_t chunks, uint8_t *t) {
    const __m256i bits[2] = {_mm256_loadu_si256((const __m256i *)entry_bits),
                             _mm256_loadu_si256((const __m256i *)(entry_bits + 32))};
    const __m256i ones16 = _mm256_set1_epi16(1);
    /* after vpackssdw, lane 0 holds entries 0-3, 8-11 and lane 1 entries 4-7, 12-15 as int16: low bytes to dwords
     * 0, 1 and high bytes to dwords 2, 3 of each lane, then dwords in the order 0 4 1 5 | 2 6 3 7 */
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t c = 0; c < chunks; ++c) {
        uint8_t *tc = t + c * ONEBIT_LUT_TABLE_BYTES;
        for (int j = 0; j < 4; ++j) {
            int32_t four;
            memcpy(&four, q + 16 * c + 4 * j, 4);
            const __m256i x = _mm256_set1_epi32(four);
            const __m256i s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(bits[0], x), ones16);
            const __m256i s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(bits[1], x), ones16);
            const __m256i e16 = _mm256_shuffle_epi8(_mm256_packs_epi32(s0, s1), split);
            const __m256i e = _mm256_permutevar8x32_epi32(e16, order);
            /* group j of the chunk: low nibbles of lane 0 (j = 0) or 1 (j = 2): A; high nibbles (j = 1, 3): B */
            uint8_t *at = tc + (j & 1) * 64 + (j >> 1) * 16;
            _mm_storeu_si128((__m128i *)at, _mm256_castsi256_si128(e));
            _mm_storeu_si128((__m128i *)(at + 32), _mm256_extracti128_si256(e, 1));
        }
    }
}

/* Adds B q over the cs chunks of one slab of one 16-row block (blk) to res[m][0..15] (rows 0-7 and 8-15 as int32),
 * for mr activation rows with tables t (that slab's, ldt bytes apart). The int16 sums hold at most 2 x 32 x 508. */
ONEBIT_INLINE void slab_block(const int mr, const uint8_t *t, int64_t ldt, const uint8_t *blk, int64_t cs,
                              const uint8_t *ahead, int32_t *res, int64_t ldr) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i s[LUT_PASS_M][2];
    for (int m = 0; m < mr; ++m) s[m][0] = s[m][1] = _mm256_setzero_si256();
    for (int64_t c = 0; c < cs; ++c) {
        _mm_prefetch((const char *)ahead + c * ONEBIT_LUT_CHUNK_BYTES, _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + c * ONEBIT_LUT_CHUNK_BYTES));
        const __m256i low = _mm256_and_si256(v, nibble);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        for (int m = 0; m < mr; ++m) {
            const __m256i *tc = (const __m256i *)(t + m * ldt + c * ONEBIT_LUT_TABLE_BYTES);
            __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256(tc), low);
            __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256(tc + 1), low);
            s[m][0] = _mm256_add_epi16(s[m][0], _mm256_unpacklo_epi8(a, b));
            s[m][1] = _mm256_add_epi16(s[m][1], _mm256_unpackhi_epi8(a, b));
            a = _mm256_shuffle_epi8(_mm256_loadu_si256(tc + 2), high);
            b = _mm256_shuffle_epi8(_mm256_loadu_si256(tc + 3), high);
            s[m][0] = _mm256_add_epi16(s[m][0], _mm256_unpacklo_epi8(a, b));
            s[m][1] = _mm256_add_epi16(s[m][1], _mm256_unpackhi_epi8(a, b));
        }
    }
    /* lane 0 and lane 1 of an int16 sum hold different inputs of the same 8 rows */
    for (int m = 0; m < mr; ++m)
        for (int i = 0; i < 2; ++i) {
            const __m256i low = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s[m][i]));
            const __m256i high = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s[m][i], 1));
            __m256i *r = (__m256i *)(res + m * ldr + 8 * i);
            _mm256_storeu_si256(r, _mm256_add_epi32(_mm256_loadu_si256(r), _mm256_add_epi32(low, high)));
        }
}

/* Slab by slab (its tables stay in L1), block by block. Whole blocks add into out itself; a last block reaching past
 * n1 (its padding rows) into a local one. More than LUT_PASS_M activation rows go in two passes over each block (the
 * int16 sums of all rows would not fit the 16 registers). */
ONEBIT_INLINE void lut_rows(const int mr, const uint8_t *tables, int64_t ldt, const uint8_t *lut, int64_t N,
                            int64_t kbytes, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    const int ma = mr > LUT_PASS_M ? LUT_PASS_M : mr, mb = mr - ma;
    const int64_t chunks = onebit_lut_chunks(kbytes), nblk = (N + ONEBIT_LUT_ROWS - 1) / ONEBIT_LUT_ROWS;
    const int64_t whole = (n1 - n0) / ONEBIT_LUT_ROWS, b0 = n0 / ONEBIT_LUT_ROWS;
    const int64_t tail = (n1 - n0) % ONEBIT_LUT_ROWS;
    int32_t last[ONEBIT_LUT_MAX_M][ONEBIT_LUT_ROWS] = {{0}};
    for (int m = 0; m < mr; ++m) memset(out + m * ldo, 0, (size_t)(n1 - n0) * sizeof(int32_t));
    const int64_t blocks = whole + (tail != 0);
    for (int64_t c0 = 0; c0 < chunks; c0 += ONEBIT_LUT_SLAB) {
        const int64_t cs = chunks - c0 < ONEBIT_LUT_SLAB ? chunks - c0 : ONEBIT_LUT_SLAB;
        const uint8_t *slab = lut + c0 * nblk * ONEBIT_LUT_CHUNK_BYTES, *t = tables + c0 * ONEBIT_LUT_TABLE_BYTES;
        /* the next slab's blocks of this call (the last slab: past them, harmless) */
        const uint8_t *next = slab + nblk * cs * ONEBIT_LUT_CHUNK_BYTES;
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t a = b + LUT_PREFETCH_BLOCKS;
            const uint8_t *ahead = a < blocks ? slab + (b0 + a) * cs * ONEBIT_LUT_CHUNK_BYTES
                                              : next + (b0 + a - blocks) * cs * ONEBIT_LUT_CHUNK_BYTES;
            const uint8_t *blk = slab + (b0 + b) * cs * ONEBIT_LUT_CHUNK_BYTES;
            int32_t *res = b < whole ? out + b * ONEBIT_LUT_ROWS : &last[0][0];
            const int64_t ldr = b < whole ? ldo : ONEBIT_LUT_ROWS;
            slab_block(ma, t, ldt, blk, cs, ahead, res, ldr);
            if (mb) slab_block(mb, t + ma * ldt, ldt, blk, cs, ahead, res + ma * ldr, ldr); /* weights now in L1 */
        }
    }
    for (int m = 0; m < mr && tail; ++m)
        memcpy(out + m * ldo + whole * ONEBIT_LUT_ROWS, last[m], (size_t)tail * sizeof(int32_t));
}

static void rows_lut(const uint8_t *tables, int64_t ldt, int mr, const uint8_t *lut, int64_t N, int64_t kbytes,
                     int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    switch (mr) {
    case 1: lut_rows(1, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    case 2: lut_rows(2, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    case 3: lut_rows(3, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    case 4: lut_rows(4, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    case 5: lut_rows(5, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    case 6: lut_rows(6, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    case 7: lut_rows(7, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    default: lut_rows(8, tables, ldt, lut, N, kbytes, n0, n1, out, ldo); break;
    }
}

void onebit_lut_kernels_avx2(onebit_lut_kernels *l) {
    l->tables = lut_tables;
    l->rows = rows_lut;
}
