/* conv_nhwc_bf16.c — channels-last bf16 convolution kernels (see
 * conv_nhwc_bf16.h for the layout and why).
 *
 * 1x1 kernels below; kernels of any size (3x3) at the end, built the same
 * way: the forward's tile rows are, tap by tap, the input rows under the
 * kernel (kernel_taps: a zero row in the padding); the data gradient of
 * stride 1 is the flipped kernel's forward; the weight gradient is a GEMM
 * per tap over the chunk's pixels, dy packed once, x's shifted rows per tap
 * (pack_rows_tap); the weights are packed a panel at a time (pack_taps,
 * each weight row regrouped by tap through 16 x 16 transposes); a tile's
 * input rows are kept across groups of weight panels. The stem (few input
 * channels: ResNet's conv1) reads a zero-padded copy of its input, a kernel
 * row at a time, and its weight gradient is one GEMM over whole patches. The
 * layout changes around these kernels and the bias gradient are in
 * nhwc_layout.c.
 *
 * Forward and data gradient: y (P, N) = a (P, K) x B with a read in place.
 * The micro-kernel is gemm_bf16.c's (12 x 32 tile of y in 24 accumulators,
 * per pair of K two B vectors and one broadcast dword per row), except that
 * row m's dword for pair kp is a[(p0+m)*lda + 2kp] itself: the tile's
 * twelve pixel rows are one contiguous run of memory. B, the packed
 * weights, is read in groups of panels of about B_GROUP_BYTES (L2), every
 * tile of a thread's rows running over a group before the next group. Rows
 * are split over the threads in whole tiles. With AMX (amx.h) the forward and the data
 * gradient run conv_nhwc_amx.c's engine instead: blocks of 32 rows by 32-column panels in
 * tiles, the same packed weights.
 *
 * Weight gradient: dw (OC, C) += sum over pixels of dy[p]^T x[p], a GEMM
 * with K = pixels: A = dy^T packed by bf16_pack_a_t16 (two pixel rows
 * interleaved), B = x packed a block at a time by pack_rows (the same), and
 * gemm_bf16.c's blocked GEMM. Chunks of pixels side by side on the threads
 * (fast_chunked_wgrad_fresh: each thread's sums in a buffer of its own, added
 * to dw in one pass), the next chunk's dy and x prefetched into L2 by the
 * micro-kernels while they compute (Bf16Gemm.prefetch), when there are
 * enough chunks; else one chunk after another with each GEMM split over the
 * pool.
 */
#include "conv_nhwc_bf16.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amx.h"
#include "conv_nhwc_priv.h"
#include "fast.h"
#include "gemm_bf16.h"
#include "util.h"

enum {
  MR = BF16_MR,
  NR = BF16_NR,
  PACK_PAIRS = BF16_PACK_PAIRS,
  B_GROUP_BYTES = 512 * 1024, /* packed weights per pass over a thread's rows */
  WGRAD_PIXELS = 2048,        /* pixels per weight-gradient chunk, about */
  WGRAD_MIN_PIXELS = 512,     /* fewer per thread: one chunk at a time, GEMMs split */
  MAX_TAPS = NHWC_MAX_TAPS,   /* kernel taps at most (KH*KW) */
  PATCH_C = NHWC_PATCH_C,     /* fewer channels: the weight gradient over whole patches */
  MAX_RUN = 64,               /* the stem's KW*C at most (values per kernel row) */
  ROW_CACHE = 1 << 16         /* a thread's kept tile rows at most (pointers) */
};

size_t nhwc_bf16_packed_b_size(int K, int N) {
  return (size_t)((N + NR - 1) / NR) * NR * (size_t)((K + 1) / 2);
}

/* B (K, N) packed whole by fn, its panels split over the pool. */
static void pack_b_panels(Bf16PackB fn, const void *ctx, int K, int N, int32_t *out) {
  const int panels = (N + NR - 1) / NR;
  const size_t panel_dw = (size_t)((K + 1) / 2) * NR;
#pragma omp parallel for schedule(static) if (panels > 1 && (size_t)K * N >= FAST_GRAIN)
  for (int jp = 0; jp < panels; jp++)
    fn(ctx, 0, K, jp * NR, N - jp * NR < NR ? N - jp * NR : NR, out + (size_t)jp * panel_dw);
}

void nhwc_bf16_pack_fwd(const float *w, int OC, int C, int32_t *out) {
  const Bf16Plain b = {w, C}; /* B = w^T: w stored (N = OC, K = C) */
  pack_b_panels(bf16_pack_b_plain_t, &b, C, OC, out);
}

void nhwc_bf16_pack_dgrad(const float *w, int OC, int C, int32_t *out) {
  const Bf16Plain b = {w, C}; /* B = w: (K = OC, N = C) row-major */
  pack_b_panels(bf16_pack_b_plain, &b, OC, C, out);
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "avx512_transpose.h"
#include "bf16_simd.h"

/* The tile's mr rows and nr columns into y (fp32) or y16 (bf16, rounded as
 * nhwc_bf16_round), rows ldy values apart. */
static inline void store_tile(__m512 c[MR][2], float *y, uint16_t *y16, size_t ldy, int mr,
                              int nr) {
  const __mmask16 k0 = bf16_mask16(nr), k1 = bf16_mask16(nr - 16);
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) {
    if (m >= mr) break;
    if (y16) {
      uint16_t *row = y16 + (size_t)m * ldy;
      _mm256_mask_storeu_epi16(row, k0, (__m256i)_mm512_cvtneps_pbh(c[m][0]));
      _mm256_mask_storeu_epi16(row + 16, k1, (__m256i)_mm512_cvtneps_pbh(c[m][1]));
    } else {
      float *row = y + (size_t)m * ldy;
      _mm512_mask_storeu_ps(row, k0, c[m][0]);
      _mm512_mask_storeu_ps(row + 16, k1, c[m][1]);
    }
  }
}

/* c (MR x NR accumulators) += rows r[0..MR) x the B panel bp over kpt pairs: per pair two
 * B vectors and each row's dword r[m][p] broadcast. */
static inline __attribute__((always_inline)) void dot_rows(__m512 c[MR][2],
                                                           const int32_t *const r[MR],
                                                           const int32_t *bp, int kpt) {
  for (int p = 0; p < kpt; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + (size_t)p * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + (size_t)p * NR + 16);
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
      const __m512bh am = (__m512bh)_mm512_set1_epi32(r[m][p]);
      c[m][0] = _mm512_dpbf16_ps(c[m][0], am, b0);
      c[m][1] = _mm512_dpbf16_ps(c[m][1], am, b1);
    }
  }
}

/* y tile (mr <= MR rows, nr <= NR columns) = a rows x B panel over kpt
 * pairs; a32: row 0's dwords, rows lda32 dwords apart. Rows past mr read
 * row 0 again (never stored). */
static void kernel_rows(int kpt, const int32_t *a32, size_t lda32, const int32_t *bp, float *y,
                        uint16_t *y16, size_t ldy, int mr, int nr) {
  const int32_t *r[MR];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) r[m] = a32 + (m < mr ? (size_t)m * lda32 : 0);
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  dot_rows(c, r, bp, kpt);
  store_tile(c, y, y16, ldy, mr, nr);
}

/* Bf16PackB for the weight gradient's B = x (K = pixels, N = channels),
 * x (rows, ld) bf16: dword (kp, n) = (x[p0+2kp][n], x[p0+2kp+1][n]). */
typedef struct Rows16 {
  const uint16_t *x;
  size_t ld;
} Rows16;

static void pack_rows(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const Rows16 *b = ctx;
  const int kpt = (kc + 1) / 2, panels = (nc + NR - 1) / NR;
  for (int kq = 0; kq < kpt; kq += PACK_PAIRS) { /* as bf16_pack_a_t16: panel after panel */
    const int kn = kpt - kq < PACK_PAIRS ? kpt - kq : PACK_PAIRS;
    for (int n = 0; n < panels * NR; n += 16) {
      const __mmask16 mk = bf16_mask16(nc - n);
      int32_t *dst = out + ((size_t)(n / NR) * kpt + kq) * NR + n % NR;
      for (int j = 0; j < kn; j++) {
        const int kp = kq + j;
        const uint16_t *r0 = b->x + (size_t)(p0 + 2 * kp) * b->ld + j0 + n;
        const __m256i lo = _mm256_maskz_loadu_epi16(mk, r0);
        const __m256i hi =
            2 * kp + 1 < kc ? _mm256_maskz_loadu_epi16(mk, r0 + b->ld) : _mm256_setzero_si256();
        _mm512_storeu_si512(dst + (size_t)j * NR, bf16_words_interleaved(lo, hi));
      }
    }
  }
}

/* kernel_rows for a convolution: the taps one after another into the same
 * accumulators; rows[t*MR + m] is tile row m's input row for tap t (the
 * zero row where the tap falls into the padding), and tap t's pairs are
 * B's pairs [t*kpt, (t+1)*kpt). */
static void kernel_taps(int taps, int kpt, const int32_t *const *rows, const int32_t *bp,
                        const float *bias, float *y, uint16_t *y16, size_t ldy, int mr, int nr) {
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (int t = 0; t < taps; t++) {
    const int32_t *r[MR];
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) r[m] = rows[(size_t)t * MR + m];
    dot_rows(c, r, bp + (size_t)t * kpt * NR, kpt);
  }
  if (bias) { /* the panel's biases, added to the sums before the one rounding (Caffe's order) */
    const __m512 b0 = _mm512_maskz_loadu_ps(bf16_mask16(nr), bias);
    const __m512 b1 = _mm512_maskz_loadu_ps(bf16_mask16(nr - 16), bias + 16);
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
      c[m][0] = _mm512_add_ps(c[m][0], b0);
      c[m][1] = _mm512_add_ps(c[m][1], b1);
    }
  }
  store_tile(c, y, y16, ldy, mr, nr);
}

/* Bf16PackB for a tap of the convolution weight gradient: B (K = the
 * chunk's pixels, N = C), row q = x's pixel under tap (kh, kw) of output
 * pixel q, or zeros in the padding. */
typedef struct TapRows {
  const uint16_t *x;
  int H, W, C;
  int dh, dw;                    /* the tap's offsets kh, kw */
  const int32_t *ih, *iw, *base; /* per chunk pixel: oh*SH - PH, ow*SW - PW, n*H*W */
} TapRows;

static inline const uint16_t *tap_row(const TapRows *b, int q) {
  const int ih = b->ih[q] + b->dh, iw = b->iw[q] + b->dw;
  if ((unsigned)ih >= (unsigned)b->H || (unsigned)iw >= (unsigned)b->W) return NULL;
  return b->x + ((size_t)b->base[q] + (size_t)ih * b->W + iw) * b->C;
}

static void pack_rows_tap(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const TapRows *b = ctx;
  const int kpt = (kc + 1) / 2, panels = (nc + NR - 1) / NR;
  const uint16_t *rows[2 * PACK_PAIRS];
  for (int kq = 0; kq < kpt; kq += PACK_PAIRS) { /* as pack_rows */
    const int kn = kpt - kq < PACK_PAIRS ? kpt - kq : PACK_PAIRS;
    for (int j = 0; j < 2 * kn; j++)
      rows[j] = 2 * kq + j < kc ? tap_row(b, p0 + 2 * kq + j) : NULL;
    for (int n = 0; n < panels * NR; n += 16) {
      const __mmask16 mk = bf16_mask16(nc - n);
      int32_t *dst = out + ((size_t)(n / NR) * kpt + kq) * NR + n % NR;
      for (int j = 0; j < kn; j++) {
        const uint16_t *r0 = rows[2 * j], *r1 = rows[2 * j + 1];
        const __m256i lo = r0 ? _mm256_maskz_loadu_epi16(mk, r0 + j0 + n) : _mm256_setzero_si256();
        const __m256i hi = r1 ? _mm256_maskz_loadu_epi16(mk, r1 + j0 + n) : _mm256_setzero_si256();
        _mm512_storeu_si512(dst + (size_t)j * NR, bf16_words_interleaved(lo, hi));
      }
    }
  }
}

/* ---- the stem: few input channels (C < PATCH_C, ResNet's 3 padded to 4) --------------
 *
 * The input is converted once into a zero-padded buffer xp (N, H+2PH, W+2PW, C), so that a
 * kernel row (kh) of a window is one run of KW*C values: the forward's tile rows are those
 * runs (KH of them per pixel, KW*C/2 pairs each, where one row per tap would give 49 rows of
 * 2 pairs), and the weight gradient is one GEMM over whole patches (N = KH*KW*C columns,
 * where a GEMM per tap would fill C of a panel's 32 columns). The weights are packed as for
 * any kernel (pack_taps: (kh, kw, c) order, which is the runs' order). */

/* Bf16PackB for the stem's weight gradient: B (K = the chunk's pixels, N = KH*KW*C), row q
 * = output pixel q's patch: its KH runs of xp. */
typedef struct Patches {
  const uint16_t *xp;
  int Hp, Wp, C, KH, run; /* run = KW*C values */
  const int32_t *ih, *iw, *base; /* per chunk pixel: oh*SH, ow*SW (in xp), n*Hp */
} Patches;

/* Chunk pixel q's kernel row kh in xp. */
static inline const uint16_t *run_at(const Patches *b, int q, int kh) {
  return b->xp + (((size_t)b->base[q] + b->ih[q] + kh) * b->Wp + b->iw[q]) * b->C;
}

static void pack_patches(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const Patches *b = ctx;
  const int kpt = (kc + 1) / 2, panels = (nc + NR - 1) / NR, run = b->run;
  int32_t row[BF16_NC_MAX + 2 * MAX_RUN]; /* one pair's interleaved dwords, whole runs */
  const int r0 = j0 / run, r1 = (j0 + nc + run - 1) / run, off = j0 - r0 * run;
  for (int kp = 0; kp < kpt; kp++) {
    const int q = p0 + 2 * kp;
    const bool has1 = 2 * kp + 1 < kc;
    for (int kh = r0; kh < r1; kh++) {
      const uint16_t *a = run_at(b, q, kh), *z = has1 ? run_at(b, q + 1, kh) : NULL;
      int32_t *d = row + (kh - r0) * run;
      for (int c = 0; c < run; c += 16) {
        const __mmask16 mk = bf16_mask16(run - c);
        const __m256i lo = _mm256_maskz_loadu_epi16(mk, a + c);
        const __m256i hi = z ? _mm256_maskz_loadu_epi16(mk, z + c) : _mm256_setzero_si256();
        _mm512_mask_storeu_epi32(d + c, mk, bf16_words_interleaved(lo, hi));
      }
    }
    for (int n = 0; n < panels * NR; n += 16)
      _mm512_storeu_si512(out + ((size_t)(n / NR) * kpt + kp) * NR + n % NR,
                          _mm512_maskz_loadu_epi32(bf16_mask16(nc - n), row + off + n));
  }
}

/* dst[t'*blk + c] = src[c*T + t] for c < n, t < T (t' = t, or T-1-t when flip): one
 * weight row's (C, T) values regrouped by tap. T <= 16: 16 channels' T values loaded as 16
 * rows and turned by a 16 x 16 transpose in registers; more taps one by one. */
static void taps_apart(const float *src, int n, int T, float *dst, size_t blk, bool flip) {
  if (T > 16) {
    for (int c = 0; c < n; c++)
      for (int t = 0; t < T; t++)
        dst[(size_t)(flip ? T - 1 - t : t) * blk + c] = src[(size_t)c * T + t];
    return;
  }
  const __mmask16 kt = bf16_mask16(T);
  for (int c0 = 0; c0 < n; c0 += 16) {
    const int nc = n - c0 < 16 ? n - c0 : 16;
    __m512i r[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++) /* row j: channel c0+j's T values */
      r[j] = j < nc ? _mm512_castps_si512(_mm512_maskz_loadu_ps(kt, src + (size_t)(c0 + j) * T))
                    : _mm512_setzero_si512();
    transpose16(r); /* r[t]: tap t's 16 channels */
    for (int t = 0; t < T; t++)
      _mm512_mask_storeu_ps(dst + (size_t)(flip ? T - 1 - t : t) * blk + c0, bf16_mask16(nc),
                            _mm512_castsi512_ps(r[t]));
  }
}

void nhwc_stem_rows(const NhwcGeom *g, const int32_t *xp32, long m0, int mr, int unit,
                    const int32_t **rows) {
  const int Hp = g->H + 2 * g->PH, Wp = g->W + 2 * g->PW;
  for (int m = 0; m < unit; m++) {
    const long q = m0 + (m < mr ? m : 0);
    const int ow = (int)(q % g->OW), oh = (int)(q / g->OW % g->OH);
    const long n = q / ((long)g->OW * g->OH);
    for (int kh = 0; kh < g->KH; kh++)
      rows[(size_t)kh * unit + m] =
          xp32 + (((size_t)n * Hp + (size_t)oh * g->SH + kh) * Wp + (size_t)ow * g->SW) * g->C / 2;
  }
}

#pragma GCC pop_options

int nhwc_bf16_gemm(const uint16_t *a, size_t lda, int P, int K, const int32_t *bp, int N,
                   float *y, uint16_t *y16, size_t ldy) {
  if (K % 2 || lda % 2)
    return moka_errorf("internal: a bf16 channels-last GEMM needs an even reduction and row "
                       "stride (K %d, lda %zu)", K, lda);
  if (P <= 0 || N <= 0) return 0;
  const int kpt = K / 2, panels = (N + NR - 1) / NR, tiles = (P + MR - 1) / MR;
  const size_t panel_dw = (size_t)kpt * NR, lda32 = lda / 2;
  const int32_t *a32 = (const int32_t *)a;
  int group = (int)(B_GROUP_BYTES / (panel_dw * sizeof(int32_t) + 1));
  if (group < 1) group = 1;
  const int T = omp_in_parallel() ? 1 : fast_threads();
  (void)T; /* read only by the OpenMP clauses */
  if (fast_amx_active() && kpt % 16 == 0)
    return nhwc_amx_gemm(a32, lda32, P, kpt, bp, N, y, y16, ldy, T);
#pragma omp parallel num_threads(T) if (T > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int t0 = (int)((long)tiles * t / nt), t1 = (int)((long)tiles * (t + 1) / nt);
    for (int g0 = 0; g0 < panels; g0 += group) {
      const int g1 = g0 + group < panels ? g0 + group : panels;
      for (int ti = t0; ti < t1; ti++) {
        const int m0 = ti * MR, mr = P - m0 < MR ? P - m0 : MR;
        for (int jp = g0; jp < g1; jp++)
          kernel_rows(kpt, a32 + (size_t)m0 * lda32, lda32, bp + (size_t)jp * panel_dw,
                      y ? y + (size_t)m0 * ldy + (size_t)jp * NR : NULL,
                      y16 ? y16 + (size_t)m0 * ldy + (size_t)jp * NR : NULL, ldy, mr,
                      N - jp * NR < NR ? N - jp * NR : NR);
      }
    }
  }
  return 0;
}

/* ---- weight gradient ----------------------------------------------------------------- */

typedef struct Wgrad {
  const uint16_t *dy, *x;
  int P, OC, C, chunk;
  bool par;  /* the GEMMs split over the pool (chunks one after another) */
  int step;  /* this thread's next chunk is k + step (chunks side by side) */
} Wgrad;

static int wgrad_chunk(void *ctx, int k, float *wacc, bool fresh) {
  const Wgrad *w = ctx;
  const int p0 = k * w->chunk, np = w->P - p0 < w->chunk ? w->P - p0 : w->chunk;
  int32_t *ap = (int32_t *)fast_workspace(FAST_WS_PACK_A, bf16_packed_a_size(w->OC, np),
                                          "bf16 channels-last weight gradient (A)");
  if (!ap) return -1;
  bf16_pack_a_t16(w->dy + (size_t)p0 * w->OC, (size_t)w->OC, w->OC, np, ap);
  const Rows16 b = {w->x + (size_t)p0 * w->C, (size_t)w->C};
  Bf16Gemm g = {w->OC, w->C, np, ap, pack_rows, &b, wacc, w->C, !fresh, 1.0f};
  const long q0 = (long)(k + w->step) * w->chunk; /* the next chunk's dy and x stream in */
  if (w->step && q0 < w->P) {
    const size_t nq = (size_t)(w->P - q0 < w->chunk ? w->P - q0 : w->chunk);
    g.prefetch[0] = (const char *)(w->dy + (size_t)q0 * w->OC);
    g.prefetch_bytes[0] = nq * w->OC * 2;
    g.prefetch[1] = (const char *)(w->x + (size_t)q0 * w->C);
    g.prefetch_bytes[1] = nq * w->C * 2;
  }
  return bf16_gemm_packed(&g, w->par);
}

int nhwc_bf16_wgrad(const uint16_t *dy, const uint16_t *x, int P, int OC, int C, float *dw) {
  if (P <= 0 || OC <= 0 || C <= 0) return 0;
  const int T = omp_in_parallel() ? 1 : fast_threads();
  Wgrad w = {dy, x, P, OC, C, P, false, T};
  if (T > 1 && P >= T * WGRAD_MIN_PIXELS) {
    /* Chunks side by side: a multiple of T of them, about WGRAD_PIXELS each. */
    int n = (P + WGRAD_PIXELS - 1) / WGRAD_PIXELS;
    n = (n + T - 1) / T * T;
    w.chunk = (P + n - 1) / n;
    n = (P + w.chunk - 1) / w.chunk;
    /* Every thread's sums in a buffer of its own (dw itself would be the first thread's:
     * a net's parameter gradients, cleared by a memset that leaves them in memory, not in
     * the caches, made the micro-kernels wait on each tile of it), its first chunk's
     * written, not added (no buffer zeroed first), then added to dw in one streaming pass. */
    const size_t wcount = (size_t)OC * C;
    float *acc = fast_workspace(FAST_WS_OUT, wcount, "bf16 channels-last weight gradient");
    float *parts[64];
    if (!acc) return -1;
    if (fast_chunked_wgrad_fresh(T, n, acc, wcount, wgrad_chunk, &w, parts)) return -1;
#pragma omp parallel for schedule(static) if (wcount >= FAST_GRAIN)
    for (size_t i = 0; i < wcount; i++) {
      float v = parts[0][i];
      for (int t = 1; t < T; t++) v += parts[t][i];
      dw[i] += v;
    }
    return 0;
  }
  w.par = T > 1;
  w.step = 1;
  w.chunk = WGRAD_PIXELS;
  const int n = (P + w.chunk - 1) / w.chunk;
  for (int k = 0; k < n; k++)
    if (wgrad_chunk(&w, k, dw, false)) return -1;
  return 0;
}

/* ---- any kernel size, stride and pad ------------------------------------------------- */

void nhwc_geom_finish(NhwcGeom *g) {
  g->OH = (g->H + 2 * g->PH - g->KH) / g->SH + 1;
  g->OW = (g->W + 2 * g->PW - g->KW) / g->SW + 1;
}

size_t nhwc_bf16_conv_packed_size(const NhwcGeom *g) {
  return nhwc_bf16_packed_b_size(g->KH * g->KW * g->C, g->OC);
}

/* The packed weights of a KH x KW convolution from w (OC, C, T), T = KH*KW taps. B's pairs
 * [t*kb/2, (t+1)*kb/2) of a panel are tap t's block, a plain matrix:
 *   forward       B (K = (t, c), N = o): tap t's block is w[.][.][t]^T (rows o, C values);
 *   data gradient B (K = (t', o), N = c) of the flipped kernel: w[.][.][T-1-t'] (rows o).
 * One panel (32 columns) at a time, on the pool: the panel's slice of w (forward: its 32
 * rows o, each C*T floats in a run; data gradient: every row's 32 channels c, 32*T floats in
 * a run) regrouped by tap into a thread's buffer L[t] (rows o), which stays in L2, then each
 * tap's block packed from it: w is read once and the packed weights written once. */
static int pack_taps(const float *w, int OC, int C, int T, bool dgrad, int32_t *out) {
  const int N = dgrad ? C : OC, kb = dgrad ? OC : C; /* columns; K per tap */
  const int panels = (N + NR - 1) / NR;
  const size_t tap_dw = (size_t)((kb + 1) / 2) * NR, panel_dw = (size_t)T * tap_dw;
  /* L: T blocks of (rows o) x (ld columns): forward 32 x C, data gradient OC x 32 */
  const size_t ld = dgrad ? NR : (size_t)C, rows = dgrad ? (size_t)OC : NR;
  int rc = 0;
#pragma omp parallel for schedule(static) if ((size_t)T * OC * C >= FAST_GRAIN) reduction(| : rc)
  for (int jp = 0; jp < panels; jp++) {
    float *L = fast_workspace(FAST_WS_COL, (size_t)T * rows * ld, "bf16 channels-last weights");
    if (!L) {
      rc |= 1;
      continue;
    }
    const int j0 = jp * NR, nc = N - j0 < NR ? N - j0 : NR;
    const size_t blk = rows * ld;
    if (!dgrad) {
      for (int r = 0; r < nc; r++) /* row o = j0 + r: w[o] is (C, T) */
        taps_apart(w + (size_t)(j0 + r) * C * T, C, T, L + (size_t)r * ld, blk, false);
    } else {
      for (int o = 0; o < OC; o++) /* w[o][j0..j0+nc)[.]: nc*T floats in a run */
        taps_apart(w + ((size_t)o * C + j0) * T, nc, T, L + (size_t)o * ld, blk, true);
    }
    for (int t = 0; t < T; t++) {
      const Bf16Plain b = {L + t * blk, (int)ld};
      /* forward: B = L[t]^T (L's rows are the panel's columns 0..nc); data gradient: B =
       * L[t] (K = o), the panel's nc columns */
      (dgrad ? bf16_pack_b_plain : bf16_pack_b_plain_t)(&b, 0, kb, 0, nc,
                                                        out + jp * panel_dw + t * tap_dw);
    }
  }
  return rc ? -1 : 0;
}

int nhwc_bf16_pack_conv_fwd(const NhwcGeom *g, const float *w, int32_t *out) {
  return pack_taps(w, g->OC, g->C, g->KH * g->KW, false, out);
}

int nhwc_bf16_pack_conv_dgrad(const NhwcGeom *g, const float *w, int32_t *out) {
  return pack_taps(w, g->OC, g->C, g->KH * g->KW, true, out);
}

int nhwc_bf16_dgrad_geom(const NhwcGeom *g, NhwcGeom *d) {
  if (g->SH != 1 || g->SW != 1 || g->PH >= g->KH || g->PW >= g->KW)
    return moka_errorf("internal: a channels-last data gradient as a convolution needs stride 1 "
                       "and pad < kernel");
  *d = (NhwcGeom){g->N, g->OH, g->OW, g->OC, g->C, g->KH, g->KW, 1, 1,
                  g->KH - 1 - g->PH, g->KW - 1 - g->PW, 0, 0};
  nhwc_geom_finish(d);
  return 0;
}

/* (conv_nhwc_priv.h) The pixel (n, oh, ow) stepped along from the tile's first, no divisions
 * per row. */
void nhwc_tap_rows(const NhwcGeom *g, const int32_t *x32, const int32_t *zero, long m0, int mr,
                   int unit, const int32_t **rows) {
  const int kpt = g->C / 2;
  int ow = (int)(m0 % g->OW), oh = (int)(m0 / g->OW % g->OH);
  long n = m0 / ((long)g->OW * g->OH);
  for (int m = 0; m < unit; m++) {
    const int ih0 = oh * g->SH - g->PH, iw0 = ow * g->SW - g->PW;
    const int32_t *img = x32 + (size_t)n * g->H * g->W * kpt;
    for (int kh = 0; kh < g->KH; kh++) {
      const int ih = ih0 + kh;
      const bool row_in = m < mr && (unsigned)ih < (unsigned)g->H;
      for (int kw = 0; kw < g->KW; kw++) {
        const int iw = iw0 + kw;
        rows[(size_t)(kh * g->KW + kw) * unit + m] =
            row_in && (unsigned)iw < (unsigned)g->W ? img + ((size_t)ih * g->W + iw) * kpt : zero;
      }
    }
    if (++ow == g->OW) {
      ow = 0;
      if (++oh == g->OH) oh = 0, n++;
    }
  }
}

/* The forward of any kernel (stem: x is the stem's padded input, the rows its runs). */
static int conv_fwd(const NhwcGeom *g, const uint16_t *x, const int32_t *bp, const float *bias,
                    float *y, uint16_t *y16, bool stem) {
  const int T = g->KH * g->KW, C = g->C, OC = g->OC;
  if (C % 2 || T > MAX_TAPS || (stem && (g->KW * C > MAX_RUN || C >= PATCH_C)))
    return moka_errorf("internal: a bf16 channels-last convolution needs an even channel count "
                       "and at most %d taps (C %d, %dx%d%s)", MAX_TAPS, C, g->KH, g->KW,
                       stem ? ", the stem's" : "");
  const long P = (long)g->N * g->OH * g->OW;
  if (P <= 0 || OC <= 0) return 0;
  const int kpt = C / 2, panels = (OC + NR - 1) / NR;
  /* the kernel's rows: one per tap, or the stem's one run per kernel row */
  const int n_rows = stem ? g->KH : T, row_kpt = stem ? g->KW * kpt : kpt;
  const long tiles = (P + MR - 1) / MR;
  const size_t panel_dw = (size_t)T * kpt * NR;
  int32_t *zero = moka_calloc((size_t)kpt + 16, sizeof(int32_t));
  if (!zero) return moka_error_prefix("channels-last convolution");
  int group = (int)(B_GROUP_BYTES / (panel_dw * sizeof(int32_t) + 1));
  if (group < 1) group = 1;
  const int32_t *x32 = (const int32_t *)x;
  const int nth = omp_in_parallel() ? 1 : fast_threads();
  (void)nth; /* read only by the OpenMP clauses */
  if (fast_amx_active() && (stem || kpt % 16 == 0)) {
    const int rc = nhwc_amx_conv_fwd(g, x32, zero, bp, bias, y, y16, stem, nth);
    free(zero);
    return rc;
  }
#pragma omp parallel num_threads(nth) if (nth > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const long t0 = tiles * t / nt, t1 = tiles * (t + 1) / nt;
    const size_t per_tile = (size_t)n_rows * MR;
    /* Several groups of panels (large weights, few pixels): the thread's tiles' rows made
     * once and kept (at most ROW_CACHE pointers), not once per group. */
    const int32_t **cache = NULL;
    if (group < panels && (size_t)(t1 - t0) * per_tile <= ROW_CACHE)
      cache = moka_malloc((size_t)(t1 - t0) * per_tile * sizeof(*cache) + 1);
    const int32_t *own[MAX_TAPS * MR];
    for (int g0 = 0; g0 < panels; g0 += group) {
      const int g1 = g0 + group < panels ? g0 + group : panels;
      for (long ti = t0; ti < t1; ti++) {
        const long m0 = ti * MR;
        const int mr = P - m0 < MR ? (int)(P - m0) : MR;
        const int32_t **rows = cache ? cache + (size_t)(ti - t0) * per_tile : own;
        if (!cache || g0 == 0) {
          if (stem)
            nhwc_stem_rows(g, x32, m0, mr, MR, rows);
          else
            nhwc_tap_rows(g, x32, zero, m0, mr, MR, rows);
        }
        for (int jp = g0; jp < g1; jp++)
          kernel_taps(n_rows, row_kpt, rows, bp + (size_t)jp * panel_dw,
                      bias ? bias + (size_t)jp * NR : NULL,
                      y ? y + (size_t)m0 * OC + (size_t)jp * NR : NULL,
                      y16 ? y16 + (size_t)m0 * OC + (size_t)jp * NR : NULL, (size_t)OC, mr,
                      OC - jp * NR < NR ? OC - jp * NR : NR);
      }
    }
    free(cache);
  }
  free(zero);
  return 0;
}

int nhwc_bf16_conv_fwd(const NhwcGeom *g, const uint16_t *x, const int32_t *bp, float *y,
                       uint16_t *y16) {
  return conv_fwd(g, x, bp, NULL, y, y16, false);
}

int nhwc_bf16_conv_fwd_bias(const NhwcGeom *g, const uint16_t *x, const int32_t *bp,
                            const float *bias, float *y, uint16_t *y16) {
  return conv_fwd(g, x, bp, bias, y, y16, false);
}

bool nhwc_bf16_stem_fits(const NhwcGeom *g) {
  return g->C % 2 == 0 && g->C < PATCH_C && g->KW * g->C <= MAX_RUN &&
         g->KH * g->KW <= MAX_TAPS;
}

size_t nhwc_bf16_stem_input_size(const NhwcGeom *g) {
  return (size_t)g->N * (g->H + 2 * g->PH) * (g->W + 2 * g->PW) * g->C;
}

int nhwc_bf16_stem_fwd(const NhwcGeom *g, const uint16_t *xp, const int32_t *bp,
                       const float *bias, float *y, uint16_t *y16) {
  return conv_fwd(g, xp, bp, bias, y, y16, true);
}

typedef struct ConvWgrad {
  const NhwcGeom *g;
  const uint16_t *dy, *x;
  long P;
  int chunk;
  bool par;
  int step;     /* this thread's next chunk is k + step (chunks side by side) */
  bool stem;    /* x the stem's padded input: one GEMM over the patches (pack_patches) */
} ConvWgrad;

/* Chunk k's pixels into wacc (OC, T, C). */
static int conv_wgrad_chunk(void *ctx, int k, float *wacc, bool fresh) {
  const ConvWgrad *w = ctx;
  const NhwcGeom *g = w->g;
  const int T = g->KH * g->KW, OC = g->OC, C = g->C;
  const long p0 = (long)k * w->chunk;
  const int np = w->P - p0 < w->chunk ? (int)(w->P - p0) : w->chunk;
  int32_t *ap = (int32_t *)fast_workspace(FAST_WS_PACK_A, bf16_packed_a_size(OC, np),
                                          "bf16 channels-last weight gradient (A)");
  int32_t *tab = (int32_t *)fast_workspace(FAST_WS_COL, 3 * (size_t)np,
                                           "bf16 channels-last weight gradient (pixels)");
  if (!ap || !tab) return -1;
  bf16_pack_a_t16(w->dy + (size_t)p0 * OC, (size_t)OC, OC, np, ap);
  int32_t *ih = tab, *iw = tab + np, *base = tab + 2 * (size_t)np;
  const int Hp = g->H + 2 * g->PH, Wp = g->W + 2 * g->PW;
  for (int i = 0; i < np; i++) {
    const long q = p0 + i;
    /* the window's corner; in the stem's padded input, its image's first row */
    ih[i] = (int)(q / g->OW % g->OH) * g->SH - (w->stem ? 0 : g->PH);
    iw[i] = (int)(q % g->OW) * g->SW - (w->stem ? 0 : g->PW);
    base[i] = (int32_t)(q / ((long)g->OW * g->OH) * (w->stem ? Hp : g->H * g->W));
  }
  if (w->stem) {
    const Patches b = {w->x, Hp, Wp, C, g->KH, g->KW * C, ih, iw, base};
    const Bf16Gemm gm = {OC, T * C, np, ap, pack_patches, &b, wacc, T * C, !fresh, 1.0f};
    return bf16_gemm_packed(&gm, w->par);
  }
  /* The next chunk's dy, and x from the first row it reads, stream in over the taps. */
  const long q0 = p0 + (long)w->step * w->chunk;
  const size_t nq = q0 < w->P ? (size_t)(w->P - q0 < w->chunk ? w->P - q0 : w->chunk) : 0;
  const long img = q0 / ((long)g->OW * g->OH), top = q0 / g->OW % g->OH * g->SH - g->PH;
  const size_t x_at = ((size_t)img * g->H + (size_t)(top > 0 ? top : 0)) * g->W * C * 2;
  const size_t dy_bytes = nq * OC * 2, x_bytes = nq * C * 2 * g->SH * g->SW;
  const size_t x_end = (size_t)g->N * g->H * g->W * C * 2;
  for (int t = 0; t < T; t++) {
    const TapRows b = {w->x, g->H, g->W, C, t / g->KW, t % g->KW, ih, iw, base};
    Bf16Gemm gm = {OC, C, np, ap, pack_rows_tap, &b, wacc + (size_t)t * C, T * C, !fresh, 1.0f};
    if (w->step && nq) { /* tap t: its share of both */
      gm.prefetch[0] = (const char *)(w->dy + (size_t)q0 * OC) + dy_bytes * t / T;
      gm.prefetch_bytes[0] = dy_bytes * (t + 1) / T - dy_bytes * t / T;
      const size_t a = x_at + x_bytes * t / T, e = x_at + x_bytes * (t + 1) / T;
      gm.prefetch[1] = (const char *)w->x + a;
      gm.prefetch_bytes[1] = a < x_end ? (e < x_end ? e : x_end) - a : 0;
    }
    if (bf16_gemm_packed(&gm, w->par)) return -1;
  }
  return 0;
}

static int conv_wgrad(const NhwcGeom *g, const uint16_t *dy, const uint16_t *x, int dw_c,
                      float *dw, bool stem) {
  const int T = g->KH * g->KW, OC = g->OC, C = g->C;
  if (dw_c > C || dw_c < 1)
    return moka_errorf("internal: a channels-last weight gradient for %d of %d channels", dw_c, C);
  const long P = (long)g->N * g->OH * g->OW;
  if (P <= 0 || OC <= 0 || C <= 0) return 0;
  if ((long)g->N * g->H * g->W >= INT32_MAX)
    return moka_errorf("internal: a channels-last weight gradient over %ld pixels", P);
  const size_t wcount = (size_t)OC * T * C;
  float *acc = fast_workspace(FAST_WS_OUT, wcount, "bf16 channels-last weight gradient");
  if (!acc) return -1; /* not zeroed: each thread's first chunk writes its sums */
  const int nth = omp_in_parallel() ? 1 : fast_threads();
  if (stem && !nhwc_bf16_stem_fits(g))
    return moka_errorf("internal: not a stem convolution (C %d, %dx%d)", C, g->KH, g->KW);
  ConvWgrad w = {g, dy, x, P, WGRAD_PIXELS, false, nth, stem};
  float *parts[64] = {acc};
  int rc, n_parts = 1;
  if (nth > 1 && P >= (long)nth * WGRAD_MIN_PIXELS) {
    long n = (P + WGRAD_PIXELS - 1) / WGRAD_PIXELS;
    n = (n + nth - 1) / nth * nth;
    w.chunk = (int)((P + n - 1) / n);
    rc = fast_chunked_wgrad_fresh(nth, (int)((P + w.chunk - 1) / w.chunk), acc, wcount,
                                  conv_wgrad_chunk, &w, parts);
    n_parts = nth;
  } else {
    w.par = nth > 1;
    w.step = 1;
    rc = 0;
    for (long k = 0; k * w.chunk < P && !rc; k++) rc = conv_wgrad_chunk(&w, (int)k, acc, k == 0);
  }
  if (rc) return -1;
  /* (OC, T, C) -> Caffe's (OC, dw_c, KH, KW), the threads' sums added in thread order, then
   * to dw (x's zero channels past dw_c dropped): one pass, memory-bound. */
#pragma omp parallel for schedule(static) if (wcount >= FAST_GRAIN)
  for (int o = 0; o < OC; o++)
    for (int c = 0; c < dw_c; c++)
      for (int t = 0; t < T; t++) {
        const size_t i = ((size_t)o * T + t) * C + c;
        float v = parts[0][i];
        for (int q = 1; q < n_parts; q++) v += parts[q][i];
        dw[((size_t)o * dw_c + c) * T + t] += v;
      }
  return 0;
}

int nhwc_bf16_conv_wgrad(const NhwcGeom *g, const uint16_t *dy, const uint16_t *x, float *dw) {
  return conv_wgrad(g, dy, x, g->C, dw, false);
}

int nhwc_bf16_stem_wgrad(const NhwcGeom *g, const uint16_t *dy, const uint16_t *xp, int dw_c,
                         float *dw) {
  return conv_wgrad(g, dy, xp, dw_c, dw, true);
}
