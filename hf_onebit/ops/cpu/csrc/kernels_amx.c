/* AMX tile kernels for prefill (many activation rows), compiled with -mamx-tile -mamx-int8 -mamx-bf16 plus AVX-512.
 *
 * The product is computed transposed, Y^T = W x^T, so that the weights are the row-major A operand (unpacking the
 * sign bits of one row gives one tile row directly) and the activations, relaid once per call by the driver, are the
 * VNNI-layout B operand:
 *   int8:  A = bits as u8 {0,1} (16 rows x 64 inputs), B = int8 q; TDPBUSD gives B q in int32 (exact);
 *   float: A = signs as bf16 {-1,+1} (16 x 32), B = x split into 1-3 bf16 parts whose sum is exactly the float32 (or
 *          fp16/bf16) value; TDPBF16PS multiplies exactly and accumulates in float32.
 * Each call computes 32 activation rows (two m-tiles) x a block of weight rows (pairs of n-tiles): 4 accumulator tiles,
 * 2 A tiles, 2 B tiles. */
#include <immintrin.h>

#include "kernels_common.h"
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int onebit_amx_enable(void) {
    static int state = -1;
    if (state < 0) {
#ifdef __linux__
        state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
        state = 0;
#endif
    }
    return state;
}

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tile_config;

static void configure_tiles(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

void onebit_amx_unpack_i8(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                          int64_t nch, uint8_t *apack) {
    const __m512i ones = _mm512_set1_epi8(1);
    const int64_t full = kbytes / 8;
    for (int64_t t = 0; t < ntiles; ++t)
        for (int r = 0; r < 16; ++r) {
            const int64_t n = n0 + t * 16 + r;
            const uint8_t *row = w + n * kbytes;
            for (int64_t c = c0; c < c0 + nch; ++c) {
                uint64_t bits = 0;
                if (n < n1) bits = onebit_tail_u64(row, c * 8, c < full ? 8 : kbytes - c * 8);
                _mm512_store_si512(apack + ((t * nch + c - c0) * 16 + r) * 64, _mm512_maskz_mov_epi8(bits, ones));
            }
        }
}

void onebit_amx_unpack_bf16(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                            int64_t nch, uint16_t *apack) {
    const __m512i plus = _mm512_set1_epi16(0x3F80), minus = _mm512_set1_epi16((short)0xBF80);
    const int64_t full = kbytes / 4;
    for (int64_t t = 0; t < ntiles; ++t)
        for (int r = 0; r < 16; ++r) {
            const int64_t n = n0 + t * 16 + r;
            const uint8_t *row = w + n * kbytes;
            for (int64_t c = c0; c < c0 + nch; ++c) {
                __m512i v = _mm512_setzero_si512();
                if (n < n1 && c * 4 < kbytes) { /* chunks past the row's bytes are padding: any sign times x = 0 */
                    uint32_t bits = onebit_tail_u32(row, c * 4, c < full ? 4 : kbytes - c * 4);
                    v = _mm512_mask_blend_epi16(bits, minus, plus);
                }
                _mm512_store_si512(apack + ((t * nch + c - c0) * 16 + r) * 32, v);
            }
        }
}

/* One call covers two m-tiles (32 activation rows) x all ntiles weight tiles of a block, for the chunks [c0, c0 + nch)
 * of one K-slab (the unpacked slab is `apack`). Accumulators live in `park` (ntiles / 2 pairs x 4 tiles of 16 x 16)
 * across slabs: zeroed on the first slab, written transposed to `out` after the last. Inside, the chunks go by in
 * blocks of kc so the activation tiles of a block (2 m-tiles x kc chunks, <= 32 KiB) stay in L1 while every pair's
 * weight tiles stream from L2. */
static void transpose_out(const int32_t tmp[4][16][16], int64_t t, int mvalid, int64_t nvalid, void *out, int64_t ldo) {
    int32_t *o = out;
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            for (int m = 0; m < 16 && j * 16 + m < mvalid; ++m)
                for (int n = 0; n < 16; ++n) {
                    const int64_t col = (t + i) * 16 + n;
                    if (col < nvalid) o[(j * 16 + m) * ldo + col] = tmp[i * 2 + j][n][m];
                }
}

/* The weight tiles of the next chunk (2 x 1 KiB) into L1 while the current one computes. */
static inline __attribute__((always_inline)) void prefetch_tiles(const void *a0, const void *a1) {
    for (int line = 0; line < 16; ++line) {
        _mm_prefetch((const char *)a0 + 64 * line, _MM_HINT_T0);
        _mm_prefetch((const char *)a1 + 64 * line, _MM_HINT_T0);
    }
}

#define TILE_KERNEL(NAME, AT, BT, DP, A_STEP, B_STEP)                                                                  \
    static void NAME(const BT *bt, int64_t kchunks, int parts, int64_t c0, int64_t nch, const AT *apack,             \
                     int64_t ntiles, int32_t *park, int first, int last, int mvalid, int64_t nvalid, void *out,       \
                     int64_t ldo) {                                                                                    \
        const int64_t kc = 16 / parts > 0 ? 16 / parts : 1;                                                           \
        const BT *b0 = bt + c0 * parts * B_STEP, *b1 = bt + (kchunks + c0) * parts * B_STEP;                          \
        configure_tiles();                                                                                             \
        for (int64_t k0 = 0; k0 < nch; k0 += kc) {                                                                     \
            const int64_t k1 = k0 + kc < nch ? k0 + kc : nch;                                                         \
            for (int64_t t = 0; t < ntiles; t += 2) {                                                                  \
                int32_t *acc = park + (t / 2) * 1024;                                                                  \
                const AT *a0 = apack + t * nch * A_STEP, *a1 = a0 + nch * A_STEP;                                      \
                if (first && k0 == 0) {                                                                                \
                    _tile_zero(0);                                                                                     \
                    _tile_zero(1);                                                                                     \
                    _tile_zero(2);                                                                                     \
                    _tile_zero(3);                                                                                     \
                } else {                                                                                               \
                    _tile_loadd(0, acc, 64);                                                                           \
                    _tile_loadd(1, acc + 256, 64);                                                                     \
                    _tile_loadd(2, acc + 512, 64);                                                                     \
                    _tile_loadd(3, acc + 768, 64);                                                                     \
                }                                                                                                      \
                for (int64_t c = k0; c < k1; ++c) {                                                                    \
                    prefetch_tiles(a0 + (c + 1) * A_STEP, a1 + (c + 1) * A_STEP);                                      \
                    _tile_loadd(4, a0 + c * A_STEP, 64);                                                               \
                    _tile_loadd(5, a1 + c * A_STEP, 64);                                                               \
                    for (int p = 0; p < parts; ++p) {                                                                  \
                        _tile_loadd(6, b0 + (c * parts + p) * B_STEP, 64);                                             \
                        _tile_loadd(7, b1 + (c * parts + p) * B_STEP, 64);                                             \
                        DP(0, 4, 6);                                                                                   \
                        DP(1, 4, 7);                                                                                   \
                        DP(2, 5, 6);                                                                                   \
                        DP(3, 5, 7);                                                                                   \
                    }                                                                                                  \
                }                                                                                                      \
                _tile_stored(0, acc, 64);                                                                              \
                _tile_stored(1, acc + 256, 64);                                                                        \
                _tile_stored(2, acc + 512, 64);                                                                        \
                _tile_stored(3, acc + 768, 64);                                                                        \
            }                                                                                                          \
        }                                                                                                              \
        _tile_release();                                                                                               \
        if (last)                                                                                                      \
            for (int64_t t = 0; t < ntiles; t += 2)                                                                    \
                transpose_out((const int32_t(*)[16][16])(park + (t / 2) * 1024), t, mvalid, nvalid, out, ldo);         \
    }

/* int8: A = u8 bits {0,1} (1 KiB per tile), B = s8 q (1 KiB); bf16: A = +-1 (512 values), B = x parts (512). */
TILE_KERNEL(tiles_i8, uint8_t, int8_t, _tile_dpbusd, 1024, 1024)
TILE_KERNEL(tiles_bf16, uint16_t, uint16_t, _tile_dpbf16ps, 512, 512)

void onebit_amx_tiles_i8(const int8_t *qt, int64_t kchunks, int64_t c0, int64_t nch, const uint8_t *apack,
                         int64_t ntiles, int32_t *park, int first, int last, int mvalid, int64_t nvalid, int32_t *out,
                         int64_t ldo) {
    tiles_i8(qt, kchunks, 1, c0, nch, apack, ntiles, park, first, last, mvalid, nvalid, out, ldo);
}

void onebit_amx_tiles_bf16(const uint16_t *xt, int64_t kchunks, int parts, int64_t c0, int64_t nch,
                           const uint16_t *apack, int64_t ntiles, int32_t *park, int first, int last, int mvalid,
                           int64_t nvalid, float *out, int64_t ldo) {
    tiles_bf16(xt, kchunks, parts, c0, nch, apack, ntiles, park, first, last, mvalid, nvalid, out, ldo);
}
