/* hf_onebit CPU kernels: y = ((x * g) @ sign(W).T) * h (+ bias) on packed sign bits.
 *
 * Weight layout (hf_onebit/packing.py, format v1): uint8 (N, kbytes), kbytes = ceil(K / 8), bit j (LSB first) of byte
 * k of row n is input 8k + j of output n; set bit = +1, clear bit = -1. With B the {0,1} bit matrix,
 * sign(W) x = 2 (B x) - sum(x): every kernel below computes only B x.
 *
 * The library does not link libtorch; Python calls onebit_linear() through ctypes with raw pointers.
 */
#ifndef HF_ONEBIT_H
#define HF_ONEBIT_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    ONEBIT_ISA_PORTABLE = 0,
    ONEBIT_ISA_AVX2 = 1,   /* AVX2 + FMA */
    ONEBIT_ISA_AVX512 = 2, /* AVX-512 F/BW/VL + VNNI */
    ONEBIT_ISA_AMX = 3,    /* AVX-512 row kernels for few rows, AMX int8/bf16 tiles for many */
    ONEBIT_ISA_NEON = 4,   /* AArch64 Advanced SIMD (every AArch64 CPU) */
    ONEBIT_ISA_NEON_DOT = 5, /* AArch64 Advanced SIMD with the ARMv8.2 dot product (SDOT) */
    ONEBIT_ISA_COUNT = 6
};

/* What x is. The AMX float path also splits each value into as many bf16 parts as make it exact (1, 2 or 3). */
enum {
    ONEBIT_X_F32 = 0,  /* float32 */
    ONEBIT_X_BF16 = 1, /* bfloat16; x * g is rounded to bfloat16 like torch's bf16 product (g must be bf16 values) */
    ONEBIT_X_F16 = 2   /* float32 holding float16 values (the caller applied g in float16) */
};

/* bfloat16 <-> float32, rounding to nearest even (NaN stays NaN, overflow becomes inf), as torch does. */
static inline uint16_t onebit_bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float onebit_bf16_value(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Activation rows handled by one row-kernel call (each unpacked weight chunk is reused across them). */
#define ONEBIT_MR 8

/* Row kernels. For weight rows n in [n0, n1) and activation rows m in [0, mr), mr <= ONEBIT_MR:
 *     out[m * ldo + (n - n0)] = sum_k B[n][k] * x[m * ldx + k]
 * Activation rows are zero padded to ceil(kbytes / 8) * 64 elements, so a kernel may read whole 64-bit weight words
 * (padding bits then multiply zeros). Kernels must not read weight bytes past kbytes in a row. */
typedef void (*onebit_rows_f32_fn)(const float *x, int64_t ldx, int mr, const uint8_t *w, int64_t kbytes, int64_t n0,
                                   int64_t n1, float *out, int64_t ldo);
typedef void (*onebit_rows_i8_fn)(const int8_t *q, int64_t ldq, int mr, const uint8_t *w, int64_t kbytes, int64_t n0,
                                  int64_t n1, int32_t *out, int64_t ldo);

/* Activation rows up to which the AVX-512 int8 calls use their rows_i8_planes (kernels_avx512.c). */
#define ONEBIT_PLANES_MAX_M 4

typedef struct {
    onebit_rows_f32_fn rows_f32;
    onebit_rows_i8_fn rows_i8; /* NULL where rows_i8_planes serves every int8 call (planes_max_m = INT64_MAX) */
    /* Optional (NULL where the ISA has none): rows_i8 on activation rows in plane order (onebit_order_planes), used by
     * int8 calls of at most planes_max_m activation rows (mr <= min(planes_max_m, ONEBIT_MR) per call). */
    onebit_rows_i8_fn rows_i8_planes;
    int64_t planes_max_m;
    /* activation preparation (prepare.h, compiled per ISA) */
    /* x * g as float32, zero padded; x is float32 or (bf16 != 0) bfloat16 */
    void (*scale_row)(const void *x, int bf16, const float *g, int64_t K, int64_t kpad, float *out);
    void (*quantize_row)(const float *xs, int64_t K, int64_t kpad, int8_t *q, float *scale, int64_t *qsum);
    double (*row_sum)(const float *xs, int64_t kpad);
    void (*split_bf16)(float *x, int64_t kpad, int parts, uint16_t *out, int64_t stride);
    /* training: the progressive sign of rows [n0, n1) of a float32 (N, K) latent weight (progressive.h) */
    void (*progressive_fwd_rows)(const float *w, int64_t K, int64_t n0, int64_t n1, float t, float tanh_t,
                                 const float *g, const float *h, void *out, int out_bf16, float *row_scale);
    void (*progressive_bwd_rows)(const float *w, const float *row_scale, int64_t K, int64_t n0, int64_t n1, float t,
                                 float tanh_t, float slope, const float *g, const float *h, const void *grad,
                                 int grad_bf16, float *grad_w, float *grad_g, float *grad_h);
    /* training: the smooth ternary step of rows [n0, n1) with dual scaling (progressive.h) */
    void (*progressive_ternary_fwd_rows)(const float *w, int64_t K, int64_t n0, int64_t n1, float t, float inv_norm,
                                         const float *g, const float *h, void *out, int out_bf16, float *scratch,
                                         float *row_scales);
    void (*progressive_ternary_bwd_rows)(const float *w, const float *row_scales, int64_t K, int64_t n0, int64_t n1,
                                         float t, float inv_norm, const float *g, const float *h, const void *grad,
                                         int grad_bf16, float *grad_w, float *grad_g, float *grad_h);
} onebit_kernels;

/* Plane order of an int8 activation row (in place; scratch: 512 bytes): within each of the row's `blocks` whole
 * blocks of 512 inputs, position 64 t + i holds input 8 i + t, so that bit t of weight byte i of the block meets it
 * at the same position; the inputs after the last whole block keep their order. */
void onebit_order_planes(int8_t *q, int64_t blocks, int8_t *scratch);

/* One per ISA translation unit (kernels_<isa>.c). */
void onebit_kernels_portable(onebit_kernels *k);
void onebit_kernels_avx2(onebit_kernels *k);
void onebit_kernels_avx512(onebit_kernels *k);
void onebit_kernels_neon(onebit_kernels *k);     /* kernels_neon.c */
void onebit_kernels_neon_dot(onebit_kernels *k); /* kernels_neon_dot.c */

/* AMX prefill kernels (kernels_amx.c). The driver relays activations into VNNI tiles:
 *   int8: qt[m_tile][chunk of 64 inputs][16 rows = groups of 4 inputs][16 activation rows][4]
 *   bf16: xt[m_tile][chunk of 32 inputs][part][16 rows = pairs of inputs][16 activation rows][2]
 * unpack_* writes the chunks [c0, c0 + nch) (a K-slab) of weight rows [n0, n1) as ntiles (even) A tiles per chunk;
 * tiles_* accumulates two m-tiles (32 activation rows) x the block over that slab into `park` (ntiles / 2 x 4 KiB,
 * kept across the slabs of a block: zeroed when `first`) and, when `last`, writes out[m * ldo + n - n0]
 * (int32 B q, or float32 sign(W) x). */
int onebit_amx_enable(void);
void onebit_amx_unpack_i8(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                          int64_t nch, uint8_t *apack);
void onebit_amx_unpack_bf16(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                            int64_t nch, uint16_t *apack);
void onebit_amx_tiles_i8(const int8_t *qt, int64_t kchunks, int64_t c0, int64_t nch, const uint8_t *apack,
                         int64_t ntiles, int32_t *park, int first, int last, int mvalid, int64_t nvalid, int32_t *out,
                         int64_t ldo);
void onebit_amx_tiles_bf16(const uint16_t *xt, int64_t kchunks, int parts, int64_t c0, int64_t nch,
                           const uint16_t *apack, int64_t ntiles, int32_t *park, int first, int last, int mvalid,
                           int64_t nvalid, float *out, int64_t ldo);

/* ---- exported API (onebit.c) ---- */

/* 1 when `isa` was compiled into this library and the running CPU supports it. */
int onebit_isa_supported(int isa);
/* The best supported ISA. */
int onebit_best_isa(void);
/* Number of ISA ids (for the Python side to check it matches). */
int onebit_isa_count(void);

/* y[m * ldy + n] = ((x[m] * g) . sign(W[n])) * h[n] + bias[n] for m < M, n < N.
 *   x: rows of x_kind (ONEBIT_X_*) with stride ldx elements (>= K); g: float32 (K,) or NULL for all ones;
 *   w: packed bits (N, kbytes) contiguous; h: float32 (N,); bias: float32 (N,) or NULL;
 *   y: float32 (y_bf16 = 0) or bfloat16 (y_bf16 = 1, rounded to nearest even), stride ldy elements.
 *   act_bits 0: exact float32 arithmetic; 8: per-row absmax int8 quantisation of x * g and integer dot products.
 * Returns 0, or a negative error: -1 bad argument, -2 ISA not available, -3 out of memory. */
int onebit_linear(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx, const float *g,
                  const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y, int y_bf16, int64_t ldy,
                  int act_bits, int nthreads);

/* Training (progressive.h, train.c): the latent weight of a progressive layer with its scales folded in,
 * out = h[:, None] * b * g[None, :], b = s * tanh(W t / s) / tanh(t), s = the row's mean |W| (at least 1e-8), for a
 * float32 (N, K) latent weight W, g (K,) and h (N,) float32 or NULL (ones).
 *   forward: out (N, K) float32 or (out_bf16 = 1) bfloat16; row_scale (N,) float32 receives s.
 *   backward: grad = d loss / d out (N, K), float32 or (grad_bf16 = 1) bfloat16; writes grad_w (N, K), grad_g (K,)
 *   when g and grad_h (N,) when h, all float32 (s held constant).
 * Returns 0, or -1 bad argument, -2 ISA not available, -3 out of memory. */
int onebit_progressive_sign_forward(int isa, int64_t N, int64_t K, const float *w, float t, float tanh_t,
                                    const float *g, const float *h, void *out, int out_bf16, float *row_scale,
                                    int nthreads);
int onebit_progressive_sign_backward(int isa, int64_t N, int64_t K, const float *w, const float *row_scale, float t,
                                     float tanh_t, const float *g, const float *h, const void *grad, int grad_bf16,
                                     float *grad_w, float *grad_g, float *grad_h, int nthreads);

/* The same for a ternary layer (progressive_ternary with dual scaling, binarizers.py): out = h[:, None] * (c G) *
 * g[None, :], G = (tanh(t (W / s - 1/2)) + tanh(t (W / s + 1/2))) * inv_norm, inv_norm = 1 / (tanh(t / 2) +
 * tanh(3 t / 2)), s the row's mean |W|, c = <W, G> / <G, G> per row (each at least 1e-8).
 *   forward: out (N, K) float32 or (out_bf16 = 1) bfloat16; row_scales (N, 2) receives s, c.
 *   backward: grad (N, K) = d loss / d out, float32 or (grad_bf16 = 1) bfloat16; writes grad_w (N, K), grad_g (K,)
 *   when g, grad_h (N,) when h, all float32 (s and c held constant). */
int onebit_progressive_ternary_forward(int isa, int64_t N, int64_t K, const float *w, float t, float inv_norm,
                                       const float *g, const float *h, void *out, int out_bf16, float *row_scales,
                                       int nthreads);
int onebit_progressive_ternary_backward(int isa, int64_t N, int64_t K, const float *w, const float *row_scales,
                                        float t, float inv_norm, const float *g, const float *h, const void *grad,
                                        int grad_bf16, float *grad_w, float *grad_g, float *grad_h, int nthreads);

/* Denormal floats flushed to zero (on = 1) or computed (on = 0) on the calling thread and every thread of the
 * kernels' pool, nthreads of them (fpenv.c). Returns how many threads it set: 0 where the architecture has no such
 * switch (neither x86 nor AArch64). */
int onebit_set_flush_denormal(int on, int nthreads);

/* The row kernels of a supported ISA (0), or -2 (onebit.c; for the other driver files). */
int onebit_get_kernels(int isa, onebit_kernels *k);

#ifdef __cplusplus
}
#endif
#endif
