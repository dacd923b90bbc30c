/* Driver: ISA dispatch, activation preparation (scale, int8 quantisation, AMX relayout), blocking, threading and the
 * epilogue, for both weight formats (binary; ternary, see ternary.h). Compiled with baseline flags only; SIMD code lives
 * in kernels_<isa>.c and ternary_<isa>.c, each compiled with its own flags. */
#include "onebit.h"
#include "lut.h"
#include "pool.h"
#include "ternary.h"

#include <stdatomic.h>
#if defined(ONEBIT_HAVE_NEON_DOT) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#elif defined(ONEBIT_HAVE_NEON_DOT) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include <stdlib.h>
#include <string.h>

#define ONEBIT_ALIGN 64
/* Packed weight bytes per block for the row kernels: the block stays in L2 while all activation rows stream by. */
#define ONEBIT_BLOCK_BYTES (384 * 1024)
/* AMX: weight rows per block (each activation byte fetched is used by this many rows) and unpacked bytes of one
 * K-slab of a block (one per thread at a time, in a 2 MiB L2). */
#define ONEBIT_AMX_NB 256
#define ONEBIT_AMX_SLAB_BYTES (1024 * 1024)
/* Activation rows from which the AMX tile kernels (which pad to 32 rows) beat the AVX-512 row kernels, measured on a
 * 4096->11008 layer: the binary float path's lookup tables at 16 (bf16/fp16 x: one bf16 part per value) or 24 (fp32 x:
 * three parts), the ternary float path's FMAs (one per 16 inputs and row) at 6 or 8, VNNI int8 at 16. */
#define ONEBIT_AMX_MIN_M_TERNARY_BF16 6
#define ONEBIT_AMX_MIN_M_TERNARY_F32 8
#define ONEBIT_AMX_MIN_M_BINARY_BF16 16
#define ONEBIT_AMX_MIN_M_BINARY_F32 24
#define ONEBIT_AMX_MIN_M_I8 16
#define ONEBIT_AMX_MG 32
/* Packed weight bytes (per group of ONEBIT_MR activation rows) worth one more thread. */
#define ONEBIT_MIN_WORK (128 * 1024)
/* Activation elements (M * kpad) up to which the calling thread prepares them alone. */
#define ONEBIT_SERIAL_PREP (32 * 1024)

#ifndef ONEBIT_HAVE_AMX
/* Without the AMX unit the AMX mode is never chosen (onebit_isa_supported says no); these only satisfy the linker. */
int onebit_amx_enable(void) { return 0; }
void onebit_amx_unpack_i8(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                          int64_t nch, uint8_t *apack) {}
void onebit_amx_unpack_bf16(const uint8_t *w, int64_t kbytes, int64_t n0, int64_t n1, int64_t ntiles, int64_t c0,
                            int64_t nch, uint16_t *apack) {}
void onebit_amx_tiles_i8(const int8_t *qt, int64_t kchunks, int64_t c0, int64_t nch, const uint8_t *apack,
                         int64_t ntiles, int32_t *park, int first, int last, int mvalid, int64_t nvalid, int32_t *out,
                         int64_t ldo) {}
void onebit_amx_tiles_bf16(const uint16_t *xt, int64_t kchunks, int parts, int64_t c0, int64_t nch,
                           const uint16_t *apack, int64_t ntiles, int32_t *park, int first, int last, int mvalid,
                           int64_t nvalid, float *out, int64_t ldo) {}
#endif

static void *aligned_buffer(size_t bytes) {
    size_t rounded = (bytes + ONEBIT_ALIGN - 1) / ONEBIT_ALIGN * ONEBIT_ALIGN;
    return aligned_alloc(ONEBIT_ALIGN, rounded ? rounded : ONEBIT_ALIGN);
}

/* Per-thread reusable buffers: fresh large allocations are mmap'ed and page-faulted on every call, which costs more
 * than the kernel itself at prefill sizes. Each (thread, slot) keeps its largest buffer up to WORKSPACE_KEEP bytes;
 * larger requests are allocated per call (release_buffer frees only those). */
#define WORKSPACE_SLOTS 10
#define WORKSPACE_KEEP ((size_t)64 << 20)
static __thread void *workspace[WORKSPACE_SLOTS];
static __thread size_t workspace_bytes[WORKSPACE_SLOTS];

static void *slot_buffer(int slot, size_t bytes) {
    if (bytes > WORKSPACE_KEEP) return aligned_buffer(bytes);
    if (workspace_bytes[slot] < bytes) {
        free(workspace[slot]);
        workspace[slot] = aligned_buffer(bytes);
        workspace_bytes[slot] = workspace[slot] ? bytes : 0;
    }
    return workspace[slot];
}

static void release_buffer(void *p, size_t bytes) {
    if (bytes > WORKSPACE_KEEP) free(p);
}

enum { SLOT_XS, SLOT_Q, SLOT_TILES, SLOT_ROW, SLOT_BYTES, SLOT_SCRATCH, SLOT_APACK, SLOT_TMP, SLOT_PARK, SLOT_LUT };

int onebit_isa_count(void) { return ONEBIT_ISA_COUNT; }

#ifdef ONEBIT_HAVE_NEON_DOT
/* 1 when the CPU executes the ARMv8.2 dot-product instructions (Linux: the kernel's hwcaps; macOS: sysctl). */
static int cpu_has_dotprod(void) {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int value = 0;
    size_t size = sizeof(value);
    return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, NULL, 0) == 0 && value;
#else
    return 0;
#endif
}
#endif

int onebit_isa_supported(int isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
#endif
    switch (isa) {
    case ONEBIT_ISA_PORTABLE:
        return 1;
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
#if defined(ONEBIT_HAVE_AVX512) && defined(ONEBIT_HAVE_AMX)
    case ONEBIT_ISA_AMX:
        /* the OS must also grant the tile state to this process */
        return onebit_isa_supported(ONEBIT_ISA_AVX512) && __builtin_cpu_supports("amx-tile") &&
               __builtin_cpu_supports("amx-int8") && __builtin_cpu_supports("amx-bf16") && onebit_amx_enable();
#endif
#ifdef ONEBIT_HAVE_NEON
    case ONEBIT_ISA_NEON:
        return 1; /* Advanced SIMD is part of every AArch64 CPU */
#endif
#ifdef ONEBIT_HAVE_NEON_DOT
    case ONEBIT_ISA_NEON_DOT:
        return cpu_has_dotprod();
#endif
    default:
        return 0;
    }
}

int onebit_best_isa(void) {
    for (int isa = ONEBIT_ISA_COUNT - 1; isa > 0; --isa)
        if (onebit_isa_supported(isa)) return isa;
    return ONEBIT_ISA_PORTABLE;
}

int onebit_get_kernels(int isa, onebit_kernels *k) {
    if (!onebit_isa_supported(isa)) return -2;
    switch (isa) {
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        onebit_kernels_avx2(k);
        return 0;
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
    case ONEBIT_ISA_AMX:
        onebit_kernels_avx512(k);
        return 0;
#endif
#ifdef ONEBIT_HAVE_NEON
    case ONEBIT_ISA_NEON:
        onebit_kernels_neon(k);
        return 0;
#endif
#ifdef ONEBIT_HAVE_NEON_DOT
    case ONEBIT_ISA_NEON_DOT:
        onebit_kernels_neon_dot(k);
        return 0;
#endif
    default:
        onebit_kernels_portable(k);
        return 0;
    }
}

/* The t5 row kernel of a supported ISA, or NULL (ternary.h). */
static onebit_rows_i8_fn t5_kernel(int isa) {
#ifdef ONEBIT_HAVE_AVX512_VBMI
    if ((isa == ONEBIT_ISA_AVX512 || isa == ONEBIT_ISA_AMX) && __builtin_cpu_supports("avx512vbmi"))
        return onebit_ternary_t5_rows_i8_avx512vbmi();
#endif
    (void)isa;
    return NULL;
}

int onebit_ternary_t5_supported(int isa) { return onebit_isa_supported(isa) && t5_kernel(isa) != NULL; }

/* The lut kernels of an ISA (lut.h): 1, or 0 where it has none (every ISA but AVX2: AVX-512 has faster ones). */
static int lut_kernels(int isa, onebit_lut_kernels *l) {
#ifdef ONEBIT_HAVE_AVX2
    if (isa == ONEBIT_ISA_AVX2) {
        onebit_lut_kernels_avx2(l);
        return 1;
    }
#endif
    (void)isa, (void)l;
    return 0;
}

int onebit_binary_lut_supported(int isa) {
    onebit_lut_kernels l;
    return onebit_isa_supported(isa) && lut_kernels(isa, &l);
}

/* The ternary row kernels of an ISA (onebit_get_kernels has checked that the ISA is supported). */
static void get_ternary_kernels(int isa, onebit_ternary_kernels *t) {
    switch (isa) {
#ifdef ONEBIT_HAVE_AVX2
    case ONEBIT_ISA_AVX2:
        onebit_ternary_kernels_avx2(t);
        return;
#endif
#ifdef ONEBIT_HAVE_AVX512
    case ONEBIT_ISA_AVX512:
    case ONEBIT_ISA_AMX:
        onebit_ternary_kernels_avx512(t);
        return;
#endif
#ifdef ONEBIT_HAVE_NEON
    case ONEBIT_ISA_NEON:
        onebit_ternary_kernels_neon(t);
        return;
#endif
#ifdef ONEBIT_HAVE_NEON_DOT
    case ONEBIT_ISA_NEON_DOT:
        onebit_ternary_kernels_neon_dot(t);
        return;
#endif
    default:
        onebit_ternary_kernels_portable(t);
        return;
    }
}

typedef enum { MODE_ROWS_F32, MODE_ROWS_I8, MODE_AMX_BF16, MODE_AMX_I8 } kernel_mode;

typedef struct {
    const onebit_kernels *kern;
    kernel_mode mode;
    /* the weight format: binary (tern NULL) or ternary (activations in the ternary order, ternary.h) */
    const onebit_ternary_kernels *tern;
    int two;              /* epilogue of the rows / int8 paths: y = two * acc - sum (binary 2 B x, ternary c x) */
    int64_t kq;           /* leading elements of a prepared row that may be nonzero: K, or kpad in ternary order */
    int natural;          /* ternary weights in the t5 layout: activations in natural order (ternary.h) */
    onebit_rows_f32_fn rows_f32;
    onebit_rows_i8_fn rows_i8;
    int planes;           /* int8 rows kernel on activations in plane order (onebit_order_planes) */
    const onebit_lut_kernels *lut; /* binary int8 decode on a lut copy: the rows kernel reads tables, not q */
    uint8_t *tables;      /* lut: (M, tstride) lookup tables of the int8 rows */
    int64_t tstride;
    onebit_amx_unpack_i8_fn unpack_i8;
    onebit_amx_unpack_bf16_fn unpack_bf16;
    int64_t M, K, N, kbytes, kpad;
    int64_t kchunks;      /* AMX: inputs per chunk 64 (int8) or 32 (bf16) */
    int parts;            /* AMX bf16: bf16 parts per value */
    const char *x;        /* x_kind rows of ldx elements of xsize bytes */
    int64_t ldx, xsize;
    int x_bf16;
    const float *g, *h, *bias;
    void *y;
    int y_bf16;
    int64_t ldy;
    float *xs;            /* rows f32: (M, kpad) x * g, zero padded */
    double *xsum;         /* rows f32: sum_k xs */
    int8_t *q;            /* rows i8: (M, kpad) int8, zero padded */
    float *qscale;        /* i8: per-row scale */
    int64_t *qsum;        /* i8 (rows kernels, which compute B q): sum_k q */
    void *tiles;          /* AMX: activations relaid as B tiles (see onebit.h) */
} job_t;


/* One m-tile (16 activation rows) of the AMX B operand; `rows` is scratch for 16 x kpad floats, `bytes` for
 * 16 x kpad int8 or 3 x 16 x kpad bf16. Padding rows past M are zero.
 *   int8: dword d (inputs 4d..4d+3) of row i goes to tile word d * 16 + i (chunk d / 16, tile row d % 16);
 *   bf16: x = part0 + part1 + part2 exactly (each the bf16 rounding of what the previous parts left); the pair d of
 *         part p goes to chunk d / 16, part p, tile row d % 16, column i. */
static const void *x_row(const job_t *j, int64_t m) { return j->x + m * j->ldx * j->xsize; }

/* x * g of row m, zero padded to kpad, into out; ternary 2-bit codes: in the ternary order (scratch: kpad floats). */
static void scaled_row(const job_t *j, int64_t m, float *out, float *scratch) {
    if (!j->tern || j->natural) {
        j->kern->scale_row(x_row(j, m), j->x_bf16, j->g, j->K, j->kpad, out);
        return;
    }
    j->kern->scale_row(x_row(j, m), j->x_bf16, j->g, j->K, j->kpad, scratch);
    j->tern->order_row(scratch, j->kpad, out);
}

static void prepare_mtile(const job_t *j, int64_t mt, float *rows, void *bytes) {
    const int64_t kpad = j->kpad;
    for (int i = 0; i < 16; ++i) {
        const int64_t m = mt * 16 + i;
        if (m < j->M)
            scaled_row(j, m, rows + i * kpad, bytes); /* bytes is free until the rows are quantised / split */
        else
            memset(rows + i * kpad, 0, (size_t)kpad * sizeof(float));
    }
    if (j->mode == MODE_AMX_I8) {
        int8_t *q = bytes;
        for (int i = 0; i < 16; ++i) {
            const int64_t m = mt * 16 + i;
            if (m < j->M)
                j->kern->quantize_row(rows + i * kpad, j->kq, kpad, q + i * kpad, &j->qscale[m], &j->qsum[m]);
            else
                memset(q + i * kpad, 0, (size_t)kpad);
        }
        uint32_t *dst = (uint32_t *)j->tiles + mt * (kpad / 4) * 16;
        for (int64_t d = 0; d < kpad / 4; ++d)
            for (int i = 0; i < 16; ++i) memcpy(dst + d * 16 + i, q + i * kpad + 4 * d, 4);
        return;
    }
    const int parts = j->parts;
    uint16_t *split = bytes;
    for (int i = 0; i < 16; ++i) j->kern->split_bf16(rows + i * kpad, kpad, parts, split + i * kpad, 16 * kpad);
    uint32_t *dst = (uint32_t *)j->tiles + mt * (kpad / 2) * 16 * parts;
    for (int64_t d = 0; d < kpad / 2; ++d)
        for (int p = 0; p < parts; ++p) {
            uint32_t *line = dst + ((d / 16) * parts + p) * 256 + (d % 16) * 16;
            for (int i = 0; i < 16; ++i) memcpy(line + i, split + (p * 16 + i) * kpad + 2 * d, 4);
        }
}

/* One activation row for the row kernels. */
static void prepare_row(const job_t *j, int64_t m, float *row) {
    const int64_t kpad = j->kpad;
    if (j->mode == MODE_ROWS_F32) {
        float *xs = j->xs + m * kpad;
        scaled_row(j, m, xs, row);
        j->xsum[m] = j->kern->row_sum(xs, kpad);
    } else {
        scaled_row(j, m, row, row + kpad);
        j->kern->quantize_row(row, j->kq, kpad, j->q + m * kpad, &j->qscale[m], &j->qsum[m]);
        if (j->planes) onebit_order_planes(j->q + m * kpad, j->kbytes / 64, (int8_t *)row);
        if (j->lut) j->lut->tables(j->q + m * kpad, onebit_lut_chunks(j->kbytes), j->tables + m * j->tstride);
    }
}

void onebit_order_planes(int8_t *q, int64_t blocks, int8_t *scratch) {
    for (int64_t b = 0; b < blocks; ++b) {
        int8_t *block = q + b * 512;
        memcpy(scratch, block, 512);
        for (int t = 0; t < 8; ++t)
            for (int i = 0; i < 64; ++i) block[64 * t + i] = scratch[8 * i + t];
    }
}

/* y[m, n] = v * h[n] + bias[n] in the output dtype, v[n] = two * acc[n] - total (the float path: acc = B x with
 * total = sum x, two = 2; or acc = sign(W) x with two = 1, total = 0). */
static void store_f32(const job_t *j, int64_t m, int64_t n0, int64_t n1, const float *acc, float two, float total) {
    const float *a = acc - n0, *h = j->h, *bias = j->bias;
    if (j->y_bf16) {
        uint16_t *yr = (uint16_t *)j->y + m * j->ldy;
        for (int64_t n = n0; n < n1; ++n)
            yr[n] = onebit_bf16_round(bias ? (two * a[n] - total) * h[n] + bias[n] : (two * a[n] - total) * h[n]);
    } else {
        float *yr = (float *)j->y + m * j->ldy;
        for (int64_t n = n0; n < n1; ++n) yr[n] = bias ? (two * a[n] - total) * h[n] + bias[n] : (two * a[n] - total) * h[n];
    }
}

static void epilogue_f32(const job_t *j, int64_t m0, int mr, int64_t n0, int64_t n1, const float *acc, int64_t ldo,
                         int sign_sum) {
    for (int r = 0; r < mr; ++r)
        store_f32(j, m0 + r, n0, n1, acc + r * ldo, sign_sum ? 1.0f : (float)j->two, sign_sum ? 0.0f : (float)j->xsum[m0 + r]);
}

/* int8 path: y = (2 B q - sum q) * scale * h (+ bias) (ternary: c q - sum q). 2 B q and c q fit int32 for every K this
 * library accepts (K < 2^23);
 * its conversion to float32 is exact while 127 K < 2^24 (K < 132k), beyond that it rounds like any float sum. */
static void epilogue_i8(const job_t *j, int64_t m0, int mr, int64_t n0, int64_t n1, const int32_t *acc, int64_t ldo,
                        float *tmp) {
    for (int r = 0; r < mr; ++r) {
        const int32_t total = (int32_t)j->qsum[m0 + r];
        const float s = j->qscale[m0 + r];
        const int32_t *a = acc + r * ldo;
        for (int64_t n = 0; n < n1 - n0; ++n) tmp[n] = (float)(j->two * a[n] - total) * s;
        store_f32(j, m0 + r, n0, n1, tmp, 1.0f, 0.0f);
    }
}

/* Weight rows per block and activation rows per unit of work ("group"). */
static void choose_blocks(const job_t *j, int nthreads, int64_t *nb, int64_t *group) {
    const int amx = j->mode == MODE_AMX_I8 || j->mode == MODE_AMX_BF16;
    const int64_t align = amx ? 32 : 16;
    *group = amx ? ONEBIT_AMX_MG : ONEBIT_MR;
    /* decode: one pass over the activations; a few blocks per thread, handed out dynamically, so that a thread the OS
     * delays (a shared machine) does not hold up the call. The lut kernel walks each slab of its block's rows before
     * the next (lut.h), so larger blocks give it longer runs of consecutive bytes: 2 per thread (4096->4096 and
     * 11008->4096 at M = 1, 2 threads, AMD EPYC Zen 4: 1.22-1.38x the bit-plane kernel's speed, against 0.92-1.02x
     * with 4 per thread) */
    int64_t nblocks = nthreads > 1 ? (j->lut ? 2 : 4) * nthreads : 1;
    if (amx || j->M > ONEBIT_MR) {
        int64_t cap = amx ? ONEBIT_AMX_NB : ONEBIT_BLOCK_BYTES / j->kbytes;
        cap = cap / align * align;
        if (cap < align) cap = align;
        nblocks = (j->N + cap - 1) / cap;
        nblocks = (nblocks + nthreads - 1) / nthreads * nthreads;
    }
    int64_t rows = (j->N + nblocks - 1) / nblocks;
    rows = (rows + align - 1) / align * align;
    *nb = rows;
}

/* State shared by the threads of one call; work is handed out through atomic counters. */
typedef struct {
    job_t *j;
    const uint8_t *w;
    int64_t nb, group, nblocks, mparts, groups, ntiles, prep_units;
    int64_t slab;             /* AMX: chunks per K-slab */
    size_t apack_bytes, park_bytes;
    int amx;
    atomic_llong next_prep, next_item;
    atomic_int failed;
} run_t;

static void prepare_task(void *arg, int tid, int nthreads) {
    (void)tid, (void)nthreads;
    run_t *run = arg;
    const job_t *j = run->j;
    const size_t row_bytes = (size_t)(16 * j->kpad) * sizeof(float), bytes_bytes = (size_t)(3 * 16 * j->kpad) * 2;
    float *row = slot_buffer(SLOT_ROW, row_bytes);
    void *bytes = slot_buffer(SLOT_BYTES, bytes_bytes);
    if (!row || !bytes) {
        atomic_store(&run->failed, 1);
    } else {
        const int64_t step = run->amx ? 1 : ONEBIT_MR;
        for (;;) {
            const int64_t u0 = atomic_fetch_add(&run->next_prep, step);
            if (u0 >= run->prep_units) break;
            const int64_t u1 = u0 + step < run->prep_units ? u0 + step : run->prep_units;
            for (int64_t u = u0; u < u1; ++u) {
                if (run->amx)
                    prepare_mtile(j, u, row, bytes);
                else
                    prepare_row(j, u, row);
            }
        }
    }
    release_buffer(row, row_bytes);
    release_buffer(bytes, bytes_bytes);
}

static void compute_task(void *arg, int tid, int nthreads) {
    (void)tid, (void)nthreads;
    run_t *run = arg;
    const job_t *j = run->j;
    const int64_t nb = run->nb, group = run->group, M = j->M, N = j->N, kbytes = j->kbytes;
    const size_t scratch_bytes = (size_t)(group * nb) * 4, tmp_bytes = (size_t)nb * sizeof(float);
    void *scratch = slot_buffer(SLOT_SCRATCH, scratch_bytes);
    float *tmp = slot_buffer(SLOT_TMP, tmp_bytes);
    void *apack = run->amx ? slot_buffer(SLOT_APACK, run->apack_bytes) : NULL;
    int32_t *park = run->amx ? slot_buffer(SLOT_PARK, run->park_bytes) : NULL;
    if (!scratch || !tmp || (run->amx && (!apack || !park))) {
        atomic_store(&run->failed, 1);
        goto out;
    }
    for (;;) {
        const int64_t item = atomic_fetch_add(&run->next_item, 1);
        if (item >= run->nblocks * run->mparts) break;
        const int64_t b = item / run->mparts, p = item % run->mparts;
        const int64_t n0 = b * nb, n1 = n0 + nb < N ? n0 + nb : N;
        const int64_t c0 = run->groups * p / run->mparts, c1 = run->groups * (p + 1) / run->mparts;
        if (run->amx) {
            /* K-slabs outer: each slab of the block is unpacked once and used by every group of 32 rows */
            const int64_t park_stride = run->ntiles / 2 * 1024;
            for (int64_t k0 = 0; k0 < j->kchunks; k0 += run->slab) {
                const int64_t nch = k0 + run->slab < j->kchunks ? run->slab : j->kchunks - k0;
                const int first = k0 == 0, last = k0 + nch == j->kchunks;
                if (j->mode == MODE_AMX_I8)
                    j->unpack_i8(run->w, kbytes, n0, n1, run->ntiles, k0, nch, apack);
                else
                    j->unpack_bf16(run->w, kbytes, n0, n1, run->ntiles, k0, nch, apack);
                for (int64_t c = c0; c < c1; ++c) {
                    const int64_t m0 = c * group;
                    const int mr = (int)(M - m0 < group ? M - m0 : group);
                    int32_t *pk = park + (c - c0) * park_stride;
                    if (j->mode == MODE_AMX_I8) {
                        onebit_amx_tiles_i8((const int8_t *)j->tiles + m0 * j->kpad, j->kchunks, k0, nch, apack,
                                            run->ntiles, pk, first, last, mr, n1 - n0, scratch, nb);
                        if (last) epilogue_i8(j, m0, mr, n0, n1, scratch, nb, tmp);
                    } else {
                        onebit_amx_tiles_bf16((const uint16_t *)j->tiles + m0 * j->kpad * j->parts, j->kchunks,
                                              j->parts, k0, nch, apack, run->ntiles, pk, first, last, mr, n1 - n0,
                                              scratch, nb);
                        if (last) epilogue_f32(j, m0, mr, n0, n1, scratch, nb, 1);
                    }
                }
            }
            continue;
        }
        for (int64_t c = c0; c < c1; ++c) {
            const int64_t m0 = c * group;
            const int mr = (int)(M - m0 < group ? M - m0 : group);
            if (j->mode == MODE_ROWS_F32) {
                j->rows_f32(j->xs + m0 * j->kpad, j->kpad, mr, run->w, kbytes, n0, n1, scratch, nb);
                epilogue_f32(j, m0, mr, n0, n1, scratch, nb, 0);
            } else if (j->lut) {
                j->lut->rows(j->tables + m0 * j->tstride, j->tstride, mr, run->w, N, kbytes, n0, n1, scratch, nb);
                epilogue_i8(j, m0, mr, n0, n1, scratch, nb, tmp);
            } else {
                j->rows_i8(j->q + m0 * j->kpad, j->kpad, mr, run->w, kbytes, n0, n1, scratch, nb);
                epilogue_i8(j, m0, mr, n0, n1, scratch, nb, tmp);
            }
        }
    }
out:
    release_buffer(scratch, scratch_bytes);
    release_buffer(tmp, tmp_bytes);
    if (apack) release_buffer(apack, run->apack_bytes);
    if (park) release_buffer(park, run->park_bytes);
}

/* onebit_linear(_lut) (binary, ternary = 0; copy: the weights' lut copy or NULL) and onebit_ternary_linear(_t5)
 * (ternary = 1; copy: the weights' t5 copy or NULL). */
static int linear(int ternary, int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx,
                  const float *g, const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y,
                  int y_bf16, int64_t ldy, int act_bits, int nthreads, const uint8_t *copy) {
    const uint8_t *t5 = ternary ? copy : NULL, *lut = ternary ? NULL : copy;
    const int64_t expected_kbytes = ternary ? (K + 3) / 4 : (K + 7) / 8;
    if (M == 0 && K >= 1 && N >= 1) return 0;
    if (M < 0 || K < 1 || K >= (1 << 23) || N < 1 || kbytes != expected_kbytes || ldx < K || ldy < N || !x || !w || !h || !y) return -1;
    if ((act_bits != 0 && act_bits != 8) || x_kind < ONEBIT_X_F32 || x_kind > ONEBIT_X_F16) return -1;
    onebit_kernels kern;
    onebit_ternary_kernels tern;
    onebit_lut_kernels lutk;
    memset(&kern, 0, sizeof kern); /* optional entries stay NULL */
    if (onebit_get_kernels(isa, &kern) != 0) return -2;
    if (ternary) get_ternary_kernels(isa, &tern);
    if (nthreads < 1) nthreads = 1;
    /* Small calls run on one thread: waking a team costs more than it saves below ~ONEBIT_MIN_WORK bytes each. */
    const int64_t work = N * kbytes * ((M + ONEBIT_MR - 1) / ONEBIT_MR);
    if (work / ONEBIT_MIN_WORK < nthreads) nthreads = work / ONEBIT_MIN_WORK > 1 ? (int)(work / ONEBIT_MIN_WORK) : 1;

    job_t j;
    memset(&j, 0, sizeof j);
    j.kern = &kern;
    j.M = M, j.K = K, j.N = N, j.kbytes = kbytes, j.kpad = (kbytes + 7) / 8 * 64;
    j.two = 2, j.kq = K;
    j.rows_f32 = kern.rows_f32, j.rows_i8 = kern.rows_i8;
    j.unpack_i8 = onebit_amx_unpack_i8, j.unpack_bf16 = onebit_amx_unpack_bf16;
    if (ternary) {
        j.tern = &tern;
        j.kpad = j.kq = (K + ONEBIT_TERNARY_BLOCK - 1) / ONEBIT_TERNARY_BLOCK * ONEBIT_TERNARY_BLOCK;
        j.two = 1;
        j.rows_f32 = tern.rows_f32, j.rows_i8 = tern.rows_i8;
        j.unpack_i8 = tern.amx_unpack_i8, j.unpack_bf16 = tern.amx_unpack_bf16;
    }
    j.x = x, j.ldx = ldx, j.xsize = x_kind == ONEBIT_X_BF16 ? 2 : 4, j.x_bf16 = x_kind == ONEBIT_X_BF16;
    j.g = g, j.h = h, j.bias = bias, j.y = y, j.y_bf16 = y_bf16 != 0, j.ldy = ldy;
    const int64_t amx_min_f32 =
        x_kind == ONEBIT_X_F32 ? (ternary ? ONEBIT_AMX_MIN_M_TERNARY_F32 : ONEBIT_AMX_MIN_M_BINARY_F32)
                               : (ternary ? ONEBIT_AMX_MIN_M_TERNARY_BF16 : ONEBIT_AMX_MIN_M_BINARY_BF16);
    const int amx = isa == ONEBIT_ISA_AMX && M >= (act_bits == 8 ? ONEBIT_AMX_MIN_M_I8 : amx_min_f32) &&
                    (!ternary || (tern.amx_unpack_i8 && tern.amx_unpack_bf16));
    if (amx) {
        j.mode = act_bits == 8 ? MODE_AMX_I8 : MODE_AMX_BF16;
        j.kchunks = act_bits == 8 ? j.kpad / 64 : j.kpad / 32;
        j.parts = act_bits == 8 ? 1 : (x_kind == ONEBIT_X_BF16 ? 1 : (x_kind == ONEBIT_X_F16 ? 2 : 3));
    } else {
        j.mode = act_bits == 8 ? MODE_ROWS_I8 : MODE_ROWS_F32;
        /* binary weights, activation rows in plane order where the ISA's plane kernel serves this many rows */
        if (j.mode == MODE_ROWS_I8 && !ternary && M <= kern.planes_max_m && kern.rows_i8_planes) {
            j.planes = 1;
            j.rows_i8 = kern.rows_i8_planes;
        }
        /* decode on binary weights with a lut copy: read the copy, lookup tables of the activation rows */
        if (j.mode == MODE_ROWS_I8 && lut && M <= ONEBIT_LUT_MAX_M && lut_kernels(isa, &lutk)) {
            j.lut = &lutk, j.planes = 0, w = lut;
            j.tstride = onebit_lut_chunks(kbytes) * ONEBIT_LUT_TABLE_BYTES;
        }
        if (j.mode == MODE_ROWS_I8 && !j.rows_i8) return -2; /* an ISA table without a kernel for this call */
        /* decode on ternary weights with a t5 copy: read the copy (20 % fewer bytes), activations in natural order */
        onebit_rows_i8_fn rows_t5 = j.mode == MODE_ROWS_I8 && t5 && M <= ONEBIT_T5_MAX_M ? t5_kernel(isa) : NULL;
        if (rows_t5) {
            j.rows_i8 = rows_t5, j.natural = 1, w = t5;
            j.kbytes = kbytes = onebit_ternary_t5_row_bytes(K);
            j.kpad = kbytes / ONEBIT_T5_BLOCK_BYTES * ONEBIT_T5_BLOCK, j.kq = K;
        }
    }
    int64_t nb, group;
    choose_blocks(&j, nthreads, &nb, &group);
    if (nb > N && !amx) nb = N;
    const int64_t nblocks = (N + nb - 1) / nb;
    const int64_t groups = (M + group - 1) / group;
    const int64_t mrows = amx ? groups * group : M; /* rows prepared, AMX pads to whole pairs of m-tiles */
    /* Too few weight blocks for the threads (small N, large M): also split the activation rows. */
    int64_t mparts = 1;
    if (nblocks < nthreads) {
        mparts = (2 * nthreads + nblocks - 1) / nblocks;
        if (mparts > groups) mparts = groups;
    }
    if (nthreads > nblocks * mparts) nthreads = (int)(nblocks * mparts);
    const int64_t ntiles = nb / 16 + (nb / 16) % 2; /* AMX: A tiles per block, even */
    /* AMX: K-slab of chunks whose unpacked block fits ONEBIT_AMX_SLAB_BYTES; accumulators for every group of a part */
    int64_t slab = amx ? ONEBIT_AMX_SLAB_BYTES / (ntiles * 1024) : 0;
    if (amx && slab < 1) slab = 1;
    if (slab > j.kchunks) slab = j.kchunks;
    const size_t apack_bytes = amx ? (size_t)(ntiles * slab * 1024) : 0;
    const size_t park_bytes = amx ? (size_t)(((groups + mparts - 1) / mparts + 1) * (ntiles / 2) * 4096) : 0;

    int failed = 0;
    const size_t xs_bytes = j.mode == MODE_ROWS_F32 ? (size_t)(M * j.kpad) * sizeof(float) : 0;
    const size_t q_bytes = j.mode == MODE_ROWS_I8 ? (size_t)(M * j.kpad) : 0;
    const size_t tiles_bytes = j.mode == MODE_AMX_I8 ? (size_t)(mrows * j.kpad)
                               : j.mode == MODE_AMX_BF16 ? (size_t)(mrows * j.kpad * j.parts) * 2 : 0;
    if (xs_bytes) failed |= !(j.xs = slot_buffer(SLOT_XS, xs_bytes));
    if (q_bytes) failed |= !(j.q = slot_buffer(SLOT_Q, q_bytes));
    if (tiles_bytes) failed |= !(j.tiles = slot_buffer(SLOT_TILES, tiles_bytes));
    const size_t lut_bytes = j.lut ? (size_t)(M * j.tstride) : 0;
    if (lut_bytes) failed |= !(j.tables = slot_buffer(SLOT_LUT, lut_bytes));
    if (j.mode == MODE_ROWS_F32) failed |= !(j.xsum = malloc((size_t)M * sizeof(double)));
    if (j.mode == MODE_ROWS_I8 || j.mode == MODE_AMX_I8) {
        failed |= !(j.qscale = malloc((size_t)M * sizeof(float)));
        failed |= !(j.qsum = malloc((size_t)M * sizeof(int64_t)));
    }
    if (failed) goto done;

    run_t run;
    memset(&run, 0, sizeof run);
    run.j = &j, run.w = w, run.nb = nb, run.group = group, run.nblocks = nblocks, run.mparts = mparts;
    run.groups = groups, run.ntiles = ntiles, run.apack_bytes = apack_bytes, run.amx = amx;
    run.slab = slab, run.park_bytes = park_bytes;
    run.prep_units = amx ? mrows / 16 : M;
    /* every activation row is ready when this returns; a few rows (decode) are prepared by the calling thread alone,
     * which costs less than waking the team twice */
    if (!amx && M * j.kpad <= ONEBIT_SERIAL_PREP)
        prepare_task(&run, 0, 1);
    else
        onebit_parallel(nthreads, prepare_task, &run);
    if (!atomic_load(&run.failed)) onebit_parallel(nthreads, compute_task, &run);
    failed = atomic_load(&run.failed);

done:
    if (j.xs) release_buffer(j.xs, xs_bytes);
    if (j.q) release_buffer(j.q, q_bytes);
    if (j.tiles) release_buffer(j.tiles, tiles_bytes);
    if (j.tables) release_buffer(j.tables, lut_bytes);
    free(j.xsum);
    free(j.qscale);
    free(j.qsum);
    return failed ? -3 : 0;
}

int onebit_linear(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx, const float *g,
                  const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y, int y_bf16, int64_t ldy,
                  int act_bits, int nthreads) {
    return linear(0, isa, M, K, N, x, x_kind, ldx, g, w, kbytes, h, bias, y, y_bf16, ldy, act_bits, nthreads, NULL);
}

int onebit_linear_lut(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx, const float *g,
                      const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y, int y_bf16,
                      int64_t ldy, int act_bits, int nthreads, const uint8_t *lut) {
    return linear(0, isa, M, K, N, x, x_kind, ldx, g, w, kbytes, h, bias, y, y_bf16, ldy, act_bits, nthreads, lut);
}

int onebit_ternary_linear(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx,
                          const float *g, const uint8_t *w, int64_t kbytes, const float *h, const float *bias, void *y,
                          int y_bf16, int64_t ldy, int act_bits, int nthreads) {
    return linear(1, isa, M, K, N, x, x_kind, ldx, g, w, kbytes, h, bias, y, y_bf16, ldy, act_bits, nthreads, NULL);
}

int onebit_ternary_linear_t5(int isa, int64_t M, int64_t K, int64_t N, const void *x, int x_kind, int64_t ldx,
                             const float *g, const uint8_t *w, int64_t kbytes, const float *h, const float *bias,
                             void *y, int y_bf16, int64_t ldy, int act_bits, int nthreads, const uint8_t *t5) {
    return linear(1, isa, M, K, N, x, x_kind, ldx, g, w, kbytes, h, bias, y, y_bf16, ldy, act_bits, nthreads, t5);
}
