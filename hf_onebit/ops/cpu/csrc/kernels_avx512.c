/* AVX-512 row kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only when the CPU reports
 * all four).
 *   int8:  each 64-bit weight word is one mask (kmov); a zero-masked byte move turns it into 64 bytes in {0,1}, then
 *          vpdpbusd(bits u8, q s8); 4 weight rows per step share each activation load.
 *   float: lookup tables (lut_group, below) for every 16 weight rows; four 16-lane masked adds per word (acc += x
 *          where the bit is set) for the rows left over. Both are exact float32 B x up to summation order.
 * Measured on the development machine (KVM guest of a Xeon with AMX): a write to a mask register (kmov from memory or
 * from a general register) issues once per cycle, 512-bit adds and byte moves twice, vpermps once, vpdpbusd ~1.35
 * times per cycle. So the int8 step costs ~1.5-1.9 cycles per word, masked adds >= 4, the tables ~2.4. */
#include <immintrin.h>
#include <stdlib.h>

#include "kernels_common.h"
#include "prepare.h"
#include "progressive.h"

/* Software prefetch distances along the weight stream, in bytes. The rows of a block are contiguous, so the bytes
 * ahead of the current word belong to rows a few groups ahead. Without prefetching one thread streams ~4 GB/s from
 * DRAM (the out-of-order window covers only ~1 KiB of weights); with it, about what a plain read loop reaches
 * (measured on a 4096->11008 layer: 1.07 -> 0.42 ms single-threaded for the int8 path). */
#define PREFETCH_L1 2048
#define PREFETCH_L2 16384

/* 8 (2) readable bytes at `p` as a mask, loaded straight from memory (kmov k, m) rather than through a general register
 * (compilers tend to emit a scalar load and kmov k, r: one more instruction). */
ONEBIT_INLINE __mmask64 mask64_at(const uint8_t *p) {
    __mmask64 k;
    __asm__("kmovq %1, %0" : "=k"(k) : "m"(*(const uint64_t *)p));
    return k;
}
ONEBIT_INLINE __mmask16 mask16_at(const uint8_t *p) {
    __mmask16 k;
    __asm__("kmovw %1, %0" : "=k"(k) : "m"(*(const uint16_t *)p));
    return k;
}

/* Sums of four vectors: lane i of the result is the sum of all lanes of v[i] (a transposed reduction: 13 shuffles and
 * adds for four rows instead of four separate reductions). */
ONEBIT_INLINE __m128i reduce4_epi32(__m512i a, __m512i b, __m512i c, __m512i d) {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    const __m512i abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
ONEBIT_INLINE __m128 reduce4_ps(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                                      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* Weight rows handled together (they share every activation load) and independent accumulator sets, by activation
 * rows: R * mr * sets accumulators stay within the 32 vector registers and give enough chains to hide the add
 * latency. */
#define GROUP_ROWS(mr) ((mr) <= 4 ? 4 : 2)
#define GROUP_SETS(rows, mr) ((rows) * (mr) >= 8 ? 1 : ((rows) * (mr) >= 4 ? 2 : 4))

/* The word `wi` (64 inputs) of a row: whole, or (the last word of a row) zero-padded in `tail`. */
ONEBIT_INLINE const uint8_t *word_at(const uint8_t *row, int64_t wi, int64_t full, int64_t kbytes, uint64_t *tail) {
    if (wi < full) return row + wi * 8;
    *tail = onebit_tail_u64(row, wi * 8, kbytes - wi * 8);
    return (const uint8_t *)tail;
}

/* Called once per cache line of each row: that line PREFETCH_L1 bytes ahead into L1, PREFETCH_L2 bytes ahead into L2. */
ONEBIT_INLINE void prefetch_rows(const int R, const uint8_t *rows, int64_t kbytes, int64_t at) {
    for (int r = 0; r < R; ++r) {
        _mm_prefetch((const char *)rows + r * kbytes + at + PREFETCH_L1, _MM_HINT_T0);
        _mm_prefetch((const char *)rows + r * kbytes + at + PREFETCH_L2, _MM_HINT_T1);
    }
}

/* One step of 64 inputs (word wi) for R rows whose words are at word[r]; accumulator set t. */
ONEBIT_INLINE void step_f32(const int R, const int mr, const float *x, int64_t ldx, const uint8_t *const *word,
                            int64_t wi, int t0, const int sets, __m512 (*acc)[4][ONEBIT_MR]) {
    for (int s = 0; s < 4; ++s) {
        const int t = (t0 + s) % sets;
        __mmask16 mask[4];
        for (int r = 0; r < R; ++r) mask[r] = mask16_at(word[r] + 2 * s);
        for (int m = 0; m < mr; ++m) {
            const __m512 xv = _mm512_loadu_ps(x + m * ldx + wi * 64 + 16 * s);
            for (int r = 0; r < R; ++r) acc[t][r][m] = _mm512_mask_add_ps(acc[t][r][m], mask[r], acc[t][r][m], xv);
        }
    }
}

/* out[m * ldo + r] = sum_k B[row r][k] x[m][k] for the R rows starting at `rows` (R in {1, 2, 4}). */
ONEBIT_INLINE void group_f32(const int R, const int mr, const float *x, int64_t ldx, const uint8_t *rows,
                             int64_t kbytes, float *out, int64_t ldo) {
    const int sets = GROUP_SETS(R, mr);
    __m512 acc[4][4][ONEBIT_MR];
    for (int t = 0; t < sets; ++t)
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < mr; ++m) acc[t][r][m] = _mm512_setzero_ps();
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    int64_t wi = 0;
    for (; wi + 8 <= full; wi += 8) { /* a cache line of each row */
        prefetch_rows(R, rows, kbytes, wi * 8);
        for (int u = 0; u < 8; ++u) {
            const uint8_t *word[4];
            for (int r = 0; r < R; ++r) word[r] = rows + r * kbytes + (wi + u) * 8;
            step_f32(R, mr, x, ldx, word, wi + u, 0, sets, acc);
        }
    }
    uint64_t tail[4];
    for (; wi < nwords; ++wi) {
        const uint8_t *word[4];
        for (int r = 0; r < R; ++r) word[r] = word_at(rows + r * kbytes, wi, full, kbytes, &tail[r]);
        step_f32(R, mr, x, ldx, word, wi, 0, sets, acc);
    }
    for (int m = 0; m < mr; ++m) {
        __m512 total[4];
        for (int r = 0; r < R; ++r) {
            total[r] = acc[0][r][m];
            for (int t = 1; t < sets; ++t) total[r] = _mm512_add_ps(total[r], acc[t][r][m]);
        }
        if (R == 4)
            _mm_storeu_ps(out + m * ldo, reduce4_ps(total[0], total[1], total[2], total[3]));
        else
            for (int r = 0; r < R; ++r) out[m * ldo + r] = _mm512_reduce_add_ps(total[r]);
    }
}

ONEBIT_INLINE void step_i8(const int R, const int mr, const int8_t *q, int64_t ldq, const uint8_t *const *word,
                           int64_t wi, const int t, __m512i (*acc)[4][ONEBIT_MR]) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i wb[4];
    for (int r = 0; r < R; ++r) wb[r] = _mm512_maskz_mov_epi8(mask64_at(word[r]), ones);
    for (int m = 0; m < mr; ++m) {
        const __m512i qv = _mm512_loadu_si512((const void *)(q + m * ldq + wi * 64));
        for (int r = 0; r < R; ++r) acc[t][r][m] = _mm512_dpbusd_epi32(acc[t][r][m], wb[r], qv);
    }
}

ONEBIT_INLINE void group_i8(const int R, const int mr, const int8_t *q, int64_t ldq, const uint8_t *rows,
                            int64_t kbytes, int32_t *out, int64_t ldo) {
    const int sets = GROUP_SETS(R, mr);
    __m512i acc[4][4][ONEBIT_MR];
    for (int t = 0; t < sets; ++t)
        for (int r = 0; r < R; ++r)
            for (int m = 0; m < mr; ++m) acc[t][r][m] = _mm512_setzero_si512();
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    int64_t wi = 0;
    for (; wi + 8 <= full; wi += 8) {
        prefetch_rows(R, rows, kbytes, wi * 8);
        for (int u = 0; u < 8; ++u) {
            const uint8_t *word[4];
            for (int r = 0; r < R; ++r) word[r] = rows + r * kbytes + (wi + u) * 8;
            step_i8(R, mr, q, ldq, word, wi + u, u % sets, acc);
        }
    }
    uint64_t tail[4];
    for (; wi < nwords; ++wi) {
        const uint8_t *word[4];
        for (int r = 0; r < R; ++r) word[r] = word_at(rows + r * kbytes, wi, full, kbytes, &tail[r]);
        step_i8(R, mr, q, ldq, word, wi, 0, acc);
    }
    for (int m = 0; m < mr; ++m) {
        __m512i total[4];
        for (int r = 0; r < R; ++r) {
            total[r] = acc[0][r][m];
            for (int t = 1; t < sets; ++t) total[r] = _mm512_add_epi32(total[r], acc[t][r][m]);
        }
        if (R == 4)
            _mm_storeu_si128((__m128i *)(out + m * ldo), reduce4_epi32(total[0], total[1], total[2], total[3]));
        else
            for (int r = 0; r < R; ++r) out[m * ldo + r] = _mm512_reduce_add_epi32(total[r]);
    }
}

/* ---- int8 path by bit planes, for few activation rows (M <= ONEBIT_PLANES_MAX_M) ----
 * The mask path above spends three instructions per 64 weights and activation row set (kmov, byte move, vpdpbusd;
 * the first two on the same port), which keeps a thread at ~17 GB/s of weights even when they are in L2: not enough
 * headroom over one thread's DRAM stream to overlap the two. Here each 64-byte block of a row (512 inputs) is used as
 * it is: ANDed with 1 << s it holds, in byte i, 2^s times bit s of that byte, and shifted right by 4 first, 2^s times
 * bit 4 + s. The driver stores such activation rows in plane order (onebit_order_planes: position 64 t + i of a
 * block holds input 8 i + t), so each AND result meets its 64 activations in one vpdpbusd. One AND and one vpdpbusd
 * per 64 weights (plus a shift per 512): ~1.1 instead of ~1.5 cycles. Plane s accumulates 2^s times its dot product
 * (four accumulators per row); sum_s acc_s >> s is exact. Bytes after the row's last whole block (K % 512 inputs)
 * stay in natural order and take the mask path. */
#define PLANE_ROWS(mr) ((mr) <= 2 ? 2 : 1)
/* This kernel prefetches into L2 only, 8 KiB ahead: measured on 4096->11008 with 2 threads (a C harness, weights
 * rotated through 640 MiB), 0.203 ms against 0.212-0.218 for L1 2 KiB + L2 16 KiB (the other kernels' distances), L2 4,
 * 12 or 16 KiB, with 2 MiB pages; equal (0.226-0.230) with 4 KiB pages; one thread 0.398 vs 0.426-0.438 ms. */
#define PLANE_PREFETCH_L2 8192

/* total[r][m] (16 lanes to be summed) = B q for the R rows at `rows` and activation rows m < mr. */
ONEBIT_INLINE void planes_group(const int R, const int mr, const int8_t *q, int64_t ldq, const uint8_t *rows,
                                int64_t kbytes, __m512i (*total)[ONEBIT_PLANES_MAX_M]) {
    __m512i acc[2][ONEBIT_PLANES_MAX_M][4];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < mr; ++m)
            for (int s = 0; s < 4; ++s) acc[r][m][s] = _mm512_setzero_si512();
    const int64_t blocks = kbytes / 64;
    /* The group's R rows are one contiguous stream of R * kbytes bytes: its cache lines PLANE_PREFETCH_L2 ahead are
     * prefetched in address order, R per block and the rest after the blocks, so that consecutive groups tile the
     * thread's rows line by line. (Offsets per row left out the lines of a row's last partial block when kbytes is not
     * a multiple of 64 - every row of a 4096 x 11008 down projection - and each of them cost a stall on memory.) */
    const uintptr_t ahead = (uintptr_t)rows + PLANE_PREFETCH_L2;
    uintptr_t line = ahead & ~(uintptr_t)63;
    const uintptr_t last = (ahead + (uintptr_t)(R * kbytes)) & ~(uintptr_t)63;
    for (int64_t b = 0; b < blocks; ++b) {
        for (int r = 0; r < R; ++r, line += 64) _mm_prefetch((const char *)line, _MM_HINT_T1);
        __m512i lo[2], hi[2];
        for (int r = 0; r < R; ++r) {
            lo[r] = _mm512_loadu_si512((const void *)(rows + r * kbytes + b * 64));
            hi[r] = _mm512_srli_epi16(lo[r], 4); /* bits of the next byte land in bits 4-7: masked off below */
        }
        for (int s = 0; s < 4; ++s) {
            const __m512i bit = _mm512_set1_epi8((char)(1 << s));
            for (int r = 0; r < R; ++r) {
                const __m512i wl = _mm512_and_si512(lo[r], bit), wh = _mm512_and_si512(hi[r], bit);
                for (int m = 0; m < mr; ++m) {
                    const int8_t *x = q + m * ldq + b * 512;
                    const __m512i xl = _mm512_loadu_si512((const void *)(x + 64 * s));
                    const __m512i xh = _mm512_loadu_si512((const void *)(x + 64 * (4 + s)));
                    acc[r][m][s] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r][m][s], wl, xl), wh, xh);
                }
            }
        }
    }
    for (; line < last; line += 64) _mm_prefetch((const char *)line, _MM_HINT_T1);
    const __m512i ones = _mm512_set1_epi8(1);
    const int64_t nwords = (kbytes + 7) / 8, full = kbytes / 8;
    uint64_t tail[2];
    for (int64_t wi = blocks * 8; wi < nwords; ++wi) { /* natural order after the last whole block */
        for (int r = 0; r < R; ++r) {
            const uint8_t *word = word_at(rows + r * kbytes, wi, full, kbytes, &tail[r]);
            const __m512i wb = _mm512_maskz_mov_epi8(mask64_at(word), ones);
            for (int m = 0; m < mr; ++m) {
                const __m512i qv = _mm512_loadu_si512((const void *)(q + m * ldq + wi * 64));
                acc[r][m][0] = _mm512_dpbusd_epi32(acc[r][m][0], wb, qv);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < mr; ++m) {
            __m512i t = _mm512_add_epi32(_mm512_srai_epi32(acc[r][m][3], 1), acc[r][m][2]);
            t = _mm512_add_epi32(_mm512_srai_epi32(t, 1), acc[r][m][1]);
            total[r][m] = _mm512_add_epi32(_mm512_srai_epi32(t, 1), acc[r][m][0]);
        }
}

/* Groups of 4 weight rows (PLANE_ROWS at a time, one transposed reduction per activation row), then single rows. */
ONEBIT_INLINE void planes_rows(const int mr, const int8_t *q, int64_t ldq, const uint8_t *w, int64_t kbytes,
                               int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    const int R = PLANE_ROWS(mr);
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        __m512i t[4][ONEBIT_PLANES_MAX_M];
        for (int r = 0; r < 4; r += R) planes_group(R, mr, q, ldq, w + (n + r) * kbytes, kbytes, t + r);
        for (int m = 0; m < mr; ++m)
            _mm_storeu_si128((__m128i *)(out + m * ldo + (n - n0)), reduce4_epi32(t[0][m], t[1][m], t[2][m], t[3][m]));
    }
    for (; n < n1; ++n) {
        __m512i t[1][ONEBIT_PLANES_MAX_M];
        planes_group(1, mr, q, ldq, w + n * kbytes, kbytes, t);
        for (int m = 0; m < mr; ++m) out[m * ldo + (n - n0)] = _mm512_reduce_add_epi32(t[0][m]);
    }
}

static void rows_i8_planes(const int8_t *q, int64_t ldq, int mr, const uint8_t *w, int64_t kbytes, int64_t n0,
                           int64_t n1, int32_t *out, int64_t ldo) {
    switch (mr) {
    case 1: planes_rows(1, q, ldq, w, kbytes, n0, n1, out, ldo); break;
    case 2: planes_rows(2, q, ldq, w, kbytes, n0, n1, out, ldo); break;
    case 3: planes_rows(3, q, ldq, w, kbytes, n0, n1, out, ldo); break;
    default: planes_rows(4, q, ldq, w, kbytes, n0, n1, out, ldo); break;
    }
}

/* rows_* for a compile-time mr: groups of GROUP_ROWS(mr) weight rows, then single rows. */
#define ROWS_FOR(GROUP, MR)                                                                                          \
    do {                                                                                                             \
        int64_t n = n0;                                                                                              \
        for (; n + GROUP_ROWS(MR) <= n1; n += GROUP_ROWS(MR))                                                        \
            GROUP(GROUP_ROWS(MR), MR, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo);                         \
        for (; n < n1; ++n) GROUP(1, MR, x, ldx, w + n * kbytes, kbytes, out + (n - n0), ldo);                       \
    } while (0)

#define DEFINE_ROWS(NAME, GROUP, XT, OT)                                                                             \
    static void NAME(const XT *x, int64_t ldx, int mr, const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1,     \
                     OT *out, int64_t ldo) {                                                                         \
        switch (mr) {                                                                                                \
        case 1: ROWS_FOR(GROUP, 1); break;                                                                           \
        case 2: ROWS_FOR(GROUP, 2); break;                                                                           \
        case 3: ROWS_FOR(GROUP, 3); break;                                                                           \
        case 4: ROWS_FOR(GROUP, 4); break;                                                                           \
        case 5: ROWS_FOR(GROUP, 5); break;                                                                           \
        case 6: ROWS_FOR(GROUP, 6); break;                                                                           \
        case 7: ROWS_FOR(GROUP, 7); break;                                                                           \
        default: ROWS_FOR(GROUP, 8); break;                                                                          \
        }                                                                                                            \
    }

DEFINE_ROWS(rows_f32_masked, group_f32, float, float)
DEFINE_ROWS(rows_i8, group_i8, int8_t, int32_t)


/* ---- float path by lookup tables (T-MAC style), for few activation rows ----
 * Masked adds cost one mask-register write per 16 inputs (kmov: one per cycle), four per 64 weights. Instead, per
 * call and activation row, each group of 4 inputs j gets a table T_j[v] = sum of the inputs 4j + i whose bit i is set
 * in v (16 floats, one register). 16 weight rows are transposed so that lane r of a register holds 32 bits of row r;
 * then vpermps(nibble, T_j) looks up the partial sums of 16 rows at once: one lookup and one add per 64 weights. */

#define LUT_ROWS 16
#define LUT_CHUNK_BYTES 64 /* bytes of each of the 16 rows transposed at a time: 512 inputs, 128 tables */

/* Tables of activation row m at tab + (m * ngroups + j) * 16, for groups j < ngroups (whole chunks; groups past kpad,
 * which the zero bits of a row's last partial chunk index, are zero). */
static void build_tables(const float *x, int64_t ldx, int mr, int64_t kpad, int64_t ngroups, float *tab) {
    const __mmask16 bit0 = 0xAAAA, bit1 = 0xCCCC, bit2 = 0xF0F0, bit3 = 0xFF00;
    for (int m = 0; m < mr; ++m) {
        const float *xm = x + m * ldx;
        float *t = tab + m * ngroups * 16;
        int64_t j = 0;
        for (; j < kpad / 4; ++j) {
            __m512 v = _mm512_maskz_mov_ps(bit0, _mm512_set1_ps(xm[4 * j]));
            v = _mm512_mask_add_ps(v, bit1, v, _mm512_set1_ps(xm[4 * j + 1]));
            v = _mm512_mask_add_ps(v, bit2, v, _mm512_set1_ps(xm[4 * j + 2]));
            v = _mm512_mask_add_ps(v, bit3, v, _mm512_set1_ps(xm[4 * j + 3]));
            _mm512_store_ps(t + j * 16, v);
        }
        for (; j < ngroups; ++j) _mm512_store_ps(t + j * 16, _mm512_setzero_ps());
    }
}

/* In-register transpose of 16 x 16 dwords: r[i] lane j <- r[j] lane i. */
ONEBIT_INLINE void transpose16(__m512i *r) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
    }
}

ONEBIT_INLINE void lut_group(const int mr, const float *tab, int64_t ngroups, const uint8_t *rows, int64_t kbytes,
                             float *out, int64_t ldo) {
    const int chains = mr == 1 ? 4 : (mr == 2 ? 2 : 1);
    __m512 acc[ONEBIT_MR][4];
    for (int m = 0; m < mr; ++m)
        for (int c = 0; c < chains; ++c) acc[m][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < kbytes; b += LUT_CHUNK_BYTES) {
        const int64_t left = kbytes - b;
        const __mmask64 valid = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        __m512i v[16];
        for (int r = 0; r < LUT_ROWS; ++r) {
            /* the same line of the next group (into L1) and of the group after the next but one (into L2) */
            _mm_prefetch((const char *)rows + 2 * LUT_ROWS * kbytes + b * LUT_ROWS + r * 64, _MM_HINT_T1);
            _mm_prefetch((const char *)rows + LUT_ROWS * kbytes + b * LUT_ROWS + r * 64, _MM_HINT_T0);
            v[r] = _mm512_maskz_loadu_epi8(valid, rows + r * kbytes + b);
        }
        transpose16(v); /* v[d] lane r: inputs 8 b + 32 d .. + 31 of row r */
        const int64_t g0 = b * 2; /* group of 4 inputs at byte b */
        for (int d = 0; d < 16; ++d) {
            __m512i idx = v[d];
            for (int s = 0; s < 8; ++s) {
                for (int m = 0; m < mr; ++m) {
                    const __m512 t = _mm512_load_ps(tab + (m * ngroups + g0 + d * 8 + s) * 16);
                    const int c = s % chains;
                    acc[m][c] = _mm512_add_ps(acc[m][c], _mm512_permutexvar_ps(idx, t));
                }
                if (s < 7) idx = _mm512_srli_epi32(idx, 4);
            }
        }
    }
    for (int m = 0; m < mr; ++m) {
        __m512 total = acc[m][0];
        for (int c = 1; c < chains; ++c) total = _mm512_add_ps(total, acc[m][c]);
        _mm512_storeu_ps(out + m * ldo, total);
    }
}

/* Table bytes per thread up to which the table kernel is used (mr * ceil(K / 512) * 8 KiB: 1.4 MiB for K = 11008 and
 * 8 rows); beyond, masked adds. */
#define LUT_MAX_BYTES ((size_t)8 << 20)

static __thread float *lut_tables;
static __thread size_t lut_bytes;

#define LUT_FOR(MR)                                                                                                  \
    do {                                                                                                             \
        for (; n + LUT_ROWS <= n1; n += LUT_ROWS) lut_group(MR, lut_tables, ngroups, w + n * kbytes, kbytes, out + (n - n0), ldo); \
    } while (0)

static void rows_f32(const float *x, int64_t ldx, int mr, const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1,
                     float *out, int64_t ldo) {
    int64_t n = n0;
    const int64_t kpad = (kbytes + 7) / 8 * 64, ngroups = (kbytes + LUT_CHUNK_BYTES - 1) / LUT_CHUNK_BYTES * 128;
    const size_t bytes = (size_t)mr * (size_t)ngroups * 64;
    if (bytes <= LUT_MAX_BYTES && n1 - n0 >= LUT_ROWS) {
        if (lut_bytes < bytes) {
            free(lut_tables);
            lut_tables = aligned_alloc(64, bytes);
            lut_bytes = lut_tables ? bytes : 0;
        }
        if (lut_tables) {
            build_tables(x, ldx, mr, kpad, ngroups, lut_tables);
            switch (mr) {
            case 1: LUT_FOR(1); break;
            case 2: LUT_FOR(2); break;
            case 3: LUT_FOR(3); break;
            case 4: LUT_FOR(4); break;
            case 5: LUT_FOR(5); break;
            case 6: LUT_FOR(6); break;
            case 7: LUT_FOR(7); break;
            default: LUT_FOR(8); break;
            }
        }
    }
    if (n < n1) rows_f32_masked(x, ldx, mr, w, kbytes, n, n1, out + (n - n0), ldo);
}

void onebit_kernels_avx512(onebit_kernels *k) {
    k->rows_f32 = rows_f32;
    k->rows_i8 = rows_i8;
    k->rows_i8_planes = rows_i8_planes;
    k->planes_max_m = ONEBIT_PLANES_MAX_M;
    ONEBIT_SET_PREPARE(k);
    ONEBIT_SET_PROGRESSIVE(k);
}
