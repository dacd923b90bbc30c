/* ARM NEON (AArch64 Advanced SIMD) row kernels, binary and ternary weights. Compiled twice (build.py):
 *   as itself with the baseline flags (every AArch64 CPU has these instructions)          -> onebit_*_neon
 *   through kernels_neon_dot.c with +dotprod (ARMv8.2 SDOT: 16 int8 products per op)     -> onebit_*_neon_dot
 * The driver picks the dotprod unit where the CPU reports it (onebit.c).
 *
 * Binary (activations as onebit.h says):
 *   float: a weight byte, duplicated into 4 lanes and tested against {1, 2, 4, 8} and {16, 32, 64, 128}, gives the
 *          lane masks that select x (B x by AND + add, as the AVX2 kernel does with its byte table);
 *   int8:  the bit-plane order of the driver (onebit_order_planes): for bit s, 16 weight bytes select 16 consecutive
 *          activations; baseline NEON: test bit s -> mask, AND, pairwise-add into int16 (at most 64 values of 127 per
 *          lane per block of 512 inputs, widened to int32 once per block); dotprod: (w >> s) & 1 in {0, 1} and SDOT.
 *          Bytes after the row's last whole block of 64 stay in natural order: two bytes -> 16 masks.
 * Ternary (activations in the ternary order, ternary.h): 16 weight bytes shifted by 2 j and masked with 3 are 16
 *   codes lined up with 16 consecutive activations;
 *   float: codes widened to float32 and one FMA per 4 inputs (c x is exact for c in {0, 1, 2});
 *   int8:  baseline: SMLAL (int8 x int8 -> int16, at most 32 products of 254 per lane per block, widened per block);
 *          dotprod: SDOT. */
#include <arm_neon.h>

#include "kernels_common.h"
#include "prepare.h"
#include "progressive.h"
#include "ternary.h"

#ifdef __ARM_FEATURE_DOTPROD
#define NEON_KERNELS onebit_kernels_neon_dot
#define NEON_TERNARY_KERNELS onebit_ternary_kernels_neon_dot
#else
#define NEON_KERNELS onebit_kernels_neon
#define NEON_TERNARY_KERNELS onebit_ternary_kernels_neon
#endif

/* ---- binary, float ---- */

ONEBIT_INLINE void bin_row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes,
                               float *out, int64_t ldo) {
    const uint32x4_t bits_lo = {1, 2, 4, 8}, bits_hi = {16, 32, 64, 128};
    float32x4_t acc[ONEBIT_MR][4];
    for (int m = 0; m < mr; ++m)
        for (int a = 0; a < 4; ++a) acc[m][a] = vdupq_n_f32(0.0f);
    for (int64_t kb = 0; kb < kbytes; ++kb) {
        const uint32x4_t b = vdupq_n_u32(row[kb]);
        const uint32x4_t lo = vtstq_u32(b, bits_lo), hi = vtstq_u32(b, bits_hi);
        const int a = (int)(kb & 1) * 2; /* two chains per half: the adds of consecutive bytes overlap */
        for (int m = 0; m < mr; ++m) {
            const float *xm = x + m * ldx + kb * 8;
            const uint32x4_t x0 = vreinterpretq_u32_f32(vld1q_f32(xm)), x1 = vreinterpretq_u32_f32(vld1q_f32(xm + 4));
            acc[m][a] = vaddq_f32(acc[m][a], vreinterpretq_f32_u32(vandq_u32(lo, x0)));
            acc[m][a + 1] = vaddq_f32(acc[m][a + 1], vreinterpretq_f32_u32(vandq_u32(hi, x1)));
        }
    }
    for (int m = 0; m < mr; ++m)
        out[m * ldo] = vaddvq_f32(vaddq_f32(vaddq_f32(acc[m][0], acc[m][1]), vaddq_f32(acc[m][2], acc[m][3])));
}

/* ---- binary, int8 ---- */

/* Two weight bytes (the second may be 0 past the row) -> 16 byte masks, lane i = bit i % 8 of byte i / 8. */
ONEBIT_INLINE uint8x16_t pair_masks(uint8_t b0, uint8_t b1) {
    const uint8x16_t bits = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    return vtstq_u8(vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1)), bits);
}

ONEBIT_INLINE void bin_planes_row(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                                  int32_t *out, int64_t ldo) {
    int32x4_t acc[ONEBIT_MR];
    for (int m = 0; m < mr; ++m) acc[m] = vdupq_n_s32(0);
    const int64_t blocks = kbytes / 64;
    for (int64_t b = 0; b < blocks; ++b) {
        uint8x16_t w[4];
        for (int v = 0; v < 4; ++v) w[v] = vld1q_u8(row + b * 64 + 16 * v);
#ifdef __ARM_FEATURE_DOTPROD
        const uint8x16_t one = vdupq_n_u8(1);
        for (int s = 0; s < 8; ++s) {
            const int8x16_t shift = vdupq_n_s8((int8_t)-s);
            for (int v = 0; v < 4; ++v) {
                const int8x16_t c = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(w[v], shift), one));
                for (int m = 0; m < mr; ++m)
                    acc[m] = vdotq_s32(acc[m], c, vld1q_s8(q + m * ldq + b * 512 + 64 * s + 16 * v));
            }
        }
#else
        int16x8_t s16[ONEBIT_MR];
        for (int m = 0; m < mr; ++m) s16[m] = vdupq_n_s16(0);
        for (int s = 0; s < 8; ++s) {
            const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << s));
            for (int v = 0; v < 4; ++v) {
                const int8x16_t mask = vreinterpretq_s8_u8(vtstq_u8(w[v], bit));
                for (int m = 0; m < mr; ++m)
                    s16[m] = vpadalq_s8(s16[m], vandq_s8(mask, vld1q_s8(q + m * ldq + b * 512 + 64 * s + 16 * v)));
            }
        }
        for (int m = 0; m < mr; ++m) acc[m] = vpadalq_s16(acc[m], s16[m]);
#endif
    }
    /* natural order after the last whole block, two bytes (16 inputs) at a time */
    for (int64_t at = blocks * 64; at < kbytes; at += 2) {
        const int8x16_t mask = vreinterpretq_s8_u8(pair_masks(row[at], at + 1 < kbytes ? row[at + 1] : 0));
        for (int m = 0; m < mr; ++m) {
            const int8x16_t sel = vandq_s8(mask, vld1q_s8(q + m * ldq + at * 8));
            acc[m] = vpadalq_s16(acc[m], vpaddlq_s8(sel));
        }
    }
    for (int m = 0; m < mr; ++m) out[m * ldo] = vaddvq_s32(acc[m]);
}

/* ---- ternary ---- */

/* The 16 codes of bits 2 j .. 2 j + 1 of 16 weight bytes. */
ONEBIT_INLINE uint8x16_t ternary_codes(uint8x16_t w, int j) {
    return vandq_u8(vshlq_u8(w, vdupq_n_s8((int8_t)(-2 * j))), vdupq_n_u8(3));
}

/* The weight bytes of block b of a row (64, or the row's last bytes followed by zeros: code 0 times a zero activation). */
ONEBIT_INLINE void ternary_block(const uint8_t *row, int64_t kbytes, int64_t b, uint8x16_t *w) {
    const int64_t at = b * ONEBIT_TERNARY_BLOCK_BYTES;
    if (at + ONEBIT_TERNARY_BLOCK_BYTES <= kbytes) {
        for (int v = 0; v < 4; ++v) w[v] = vld1q_u8(row + at + 16 * v);
    } else {
        uint8_t tail[ONEBIT_TERNARY_BLOCK_BYTES] = {0};
        memcpy(tail, row + at, (size_t)(kbytes - at));
        for (int v = 0; v < 4; ++v) w[v] = vld1q_u8(tail + 16 * v);
    }
}

ONEBIT_INLINE void ter_row_f32(const int mr, const float *x, int64_t ldx, const uint8_t *row, int64_t kbytes,
                               float *out, int64_t ldo) {
    float32x4_t acc[ONEBIT_MR][2];
    for (int m = 0; m < mr; ++m) acc[m][0] = acc[m][1] = vdupq_n_f32(0.0f);
    const int64_t blocks = (kbytes + ONEBIT_TERNARY_BLOCK_BYTES - 1) / ONEBIT_TERNARY_BLOCK_BYTES;
    for (int64_t b = 0; b < blocks; ++b) {
        uint8x16_t w[4];
        ternary_block(row, kbytes, b, w);
        for (int j = 0; j < 4; ++j)
            for (int v = 0; v < 4; ++v) {
                const uint8x16_t c = ternary_codes(w[v], j);
                const uint16x8_t c_lo = vmovl_u8(vget_low_u8(c)), c_hi = vmovl_high_u8(c);
                float32x4_t cf[4];
                cf[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(c_lo)));
                cf[1] = vcvtq_f32_u32(vmovl_high_u16(c_lo));
                cf[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(c_hi)));
                cf[3] = vcvtq_f32_u32(vmovl_high_u16(c_hi));
                for (int m = 0; m < mr; ++m) {
                    const float *xm = x + m * ldx + b * ONEBIT_TERNARY_BLOCK + 64 * j + 16 * v;
                    for (int i = 0; i < 4; ++i) acc[m][i & 1] = vfmaq_f32(acc[m][i & 1], cf[i], vld1q_f32(xm + 4 * i));
                }
            }
    }
    for (int m = 0; m < mr; ++m) out[m * ldo] = vaddvq_f32(vaddq_f32(acc[m][0], acc[m][1]));
}

ONEBIT_INLINE void ter_row_i8(const int mr, const int8_t *q, int64_t ldq, const uint8_t *row, int64_t kbytes,
                              int32_t *out, int64_t ldo) {
    int32x4_t acc[ONEBIT_MR];
    for (int m = 0; m < mr; ++m) acc[m] = vdupq_n_s32(0);
    const int64_t blocks = (kbytes + ONEBIT_TERNARY_BLOCK_BYTES - 1) / ONEBIT_TERNARY_BLOCK_BYTES;
    for (int64_t b = 0; b < blocks; ++b) {
        uint8x16_t w[4];
        ternary_block(row, kbytes, b, w);
#ifndef __ARM_FEATURE_DOTPROD
        int16x8_t s16[ONEBIT_MR];
        for (int m = 0; m < mr; ++m) s16[m] = vdupq_n_s16(0);
#endif
        for (int j = 0; j < 4; ++j)
            for (int v = 0; v < 4; ++v) {
                const int8x16_t c = vreinterpretq_s8_u8(ternary_codes(w[v], j));
                for (int m = 0; m < mr; ++m) {
                    const int8x16_t qv = vld1q_s8(q + m * ldq + b * ONEBIT_TERNARY_BLOCK + 64 * j + 16 * v);
#ifdef __ARM_FEATURE_DOTPROD
                    acc[m] = vdotq_s32(acc[m], c, qv);
#else
                    s16[m] = vmlal_s8(s16[m], vget_low_s8(c), vget_low_s8(qv));
                    s16[m] = vmlal_high_s8(s16[m], c, qv);
#endif
                }
            }
#ifndef __ARM_FEATURE_DOTPROD
        for (int m = 0; m < mr; ++m) acc[m] = vpadalq_s16(acc[m], s16[m]);
#endif
    }
    for (int m = 0; m < mr; ++m) out[m * ldo] = vaddvq_s32(acc[m]);
}

ONEBIT_DEFINE_ROWS(bin_rows_f32, bin_row_f32, float, float)
ONEBIT_DEFINE_ROWS(bin_rows_i8_planes, bin_planes_row, int8_t, int32_t)
ONEBIT_DEFINE_ROWS(ter_rows_f32, ter_row_f32, float, float)
ONEBIT_DEFINE_ROWS(ter_rows_i8, ter_row_i8, int8_t, int32_t)

void NEON_KERNELS(onebit_kernels *k) {
    k->rows_f32 = bin_rows_f32;
    k->rows_i8 = NULL; /* every binary int8 call takes the bit planes */
    k->rows_i8_planes = bin_rows_i8_planes;
    k->planes_max_m = INT64_MAX;
    ONEBIT_SET_PREPARE(k);
    ONEBIT_SET_PROGRESSIVE(k);
}

void NEON_TERNARY_KERNELS(onebit_ternary_kernels *t) {
    t->rows_f32 = ter_rows_f32;
    t->rows_i8 = ter_rows_i8;
    t->order_row = onebit_ternary_order_row;
    t->amx_unpack_i8 = NULL;
    t->amx_unpack_bf16 = NULL;
}
