/* conv_nhwc_bf16.c — channels-last bf16 1x1 convolution kernels (see
 * conv_nhwc_bf16.h for the layout and why).
 *
 * Forward and data gradient: y (P, N) = a (P, K) x B with a read in place.
 * The micro-kernel is gemm_bf16.c's (12 x 32 tile of y in 24 accumulators,
 * per pair of K two B vectors and one broadcast dword per row), except that
 * row m's dword for pair kp is a[(p0+m)*lda + 2kp] itself: the tile's
 * twelve pixel rows are one contiguous run of memory. B, the packed
 * weights, is read in groups of panels of about B_GROUP_BYTES (L2), every
 * tile of a thread's rows running over a group before the next group. Rows
 * are split over the threads in whole tiles.
 *
 * Weight gradient: dw (OC, C) += sum over pixels of dy[p]^T x[p], a GEMM
 * with K = pixels: A = dy^T packed by bf16_pack_a_t16 (two pixel rows
 * interleaved), B = x packed a block at a time by pack_rows (the same), and
 * gemm_bf16.c's blocked GEMM. Chunks of pixels side by side on the threads
 * (fast_chunked_wgrad) when there are enough of them, else one chunk after
 * another with each GEMM split over the pool.
 */
#include "conv_nhwc_bf16.h"

#include <omp.h>
#include <string.h>

#include "fast.h"
#include "gemm_bf16.h"
#include "util.h"

enum {
  MR = BF16_MR,
  NR = BF16_NR,
  B_GROUP_BYTES = 512 * 1024, /* packed weights per pass over a thread's rows */
  WGRAD_PIXELS = 2048,        /* pixels per weight-gradient chunk, about */
  WGRAD_MIN_PIXELS = 512      /* fewer per thread: one chunk at a time, GEMMs split */
};

size_t nhwc_bf16_packed_b_size(int K, int N) {
  return (size_t)((N + NR - 1) / NR) * NR * (size_t)((K + 1) / 2);
}

void nhwc_bf16_pack_fwd(const float *w, int OC, int C, int32_t *out) {
  const Bf16Plain b = {w, C}; /* B = w^T: w stored (N = OC, K = C) */
  bf16_pack_b_plain_t(&b, 0, C, 0, OC, out);
}

void nhwc_bf16_pack_dgrad(const float *w, int OC, int C, int32_t *out) {
  const Bf16Plain b = {w, C}; /* B = w: (K = OC, N = C) row-major */
  bf16_pack_b_plain(&b, 0, OC, 0, C, out);
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "bf16_simd.h"

/* y tile (mr <= MR rows, nr <= NR columns) = a rows x B panel over kpt
 * pairs; a32: row 0's dwords, rows lda32 dwords apart. Rows past mr read
 * row 0 again (never stored). */
static void kernel_rows(int kpt, const int32_t *a32, size_t lda32, const int32_t *bp, float *y,
                        size_t ldy, int mr, int nr) {
  const int32_t *r[MR];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) r[m] = a32 + (m < mr ? (size_t)m * lda32 : 0);
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
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
  const __mmask16 k0 = bf16_mask16(nr), k1 = bf16_mask16(nr - 16);
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) {
    if (m >= mr) break;
    float *row = y + (size_t)m * ldy;
    _mm512_mask_storeu_ps(row, k0, c[m][0]);
    _mm512_mask_storeu_ps(row + 16, k1, c[m][1]);
  }
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
  for (int kp = 0; kp < kpt; kp++) {
    const uint16_t *r0 = b->x + (size_t)(p0 + 2 * kp) * b->ld + j0;
    const bool has1 = 2 * kp + 1 < kc;
    for (int n = 0; n < panels * NR; n += 16) {
      const __mmask16 mk = bf16_mask16(nc - n);
      const __m256i lo = _mm256_maskz_loadu_epi16(mk, r0 + n);
      const __m256i hi = has1 ? _mm256_maskz_loadu_epi16(mk, r0 + b->ld + n) : _mm256_setzero_si256();
      _mm512_storeu_si512(out + ((size_t)(n / NR) * kpt + kp) * NR + n % NR,
                          bf16_words_interleaved(lo, hi));
    }
  }
}

void nhwc_bf16_round(const float *src, size_t n, uint16_t *dst) {
  const size_t blocks = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= FAST_GRAIN)
  for (size_t b = 0; b < blocks; b++) {
    const size_t i1 = (b + 1) * 4096 < n ? (b + 1) * 4096 : n;
    for (size_t i = b * 4096; i < i1; i += 16) {
      const __mmask16 mk = bf16_mask16((int)(i1 - i < 16 ? i1 - i : 16));
      const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + i));
      _mm256_mask_storeu_epi16(dst + i, mk, v);
    }
  }
}

#pragma GCC pop_options

int nhwc_bf16_gemm(const uint16_t *a, size_t lda, int P, int K, const int32_t *bp, int N,
                   float *y, size_t ldy) {
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
                      y + (size_t)m0 * ldy + (size_t)jp * NR, ldy, mr,
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
  bool par; /* the GEMMs split over the pool (chunks one after another) */
} Wgrad;

static int wgrad_chunk(void *ctx, int k, float *wacc) {
  const Wgrad *w = ctx;
  const int p0 = k * w->chunk, np = w->P - p0 < w->chunk ? w->P - p0 : w->chunk;
  int32_t *ap = (int32_t *)fast_workspace(FAST_WS_PACK_A, bf16_packed_a_size(w->OC, np),
                                          "bf16 channels-last weight gradient (A)");
  if (!ap) return -1;
  bf16_pack_a_t16(w->dy + (size_t)p0 * w->OC, (size_t)w->OC, w->OC, np, ap);
  const Rows16 b = {w->x + (size_t)p0 * w->C, (size_t)w->C};
  const Bf16Gemm g = {w->OC, w->C, np, ap, pack_rows, &b, wacc, w->C, true, 1.0f};
  return bf16_gemm_packed(&g, w->par);
}

int nhwc_bf16_wgrad(const uint16_t *dy, const uint16_t *x, int P, int OC, int C, float *dw) {
  if (P <= 0 || OC <= 0 || C <= 0) return 0;
  const int T = omp_in_parallel() ? 1 : fast_threads();
  Wgrad w = {dy, x, P, OC, C, P, false};
  if (T > 1 && P >= T * WGRAD_MIN_PIXELS) {
    /* Chunks side by side: a multiple of T of them, about WGRAD_PIXELS each. */
    int n = (P + WGRAD_PIXELS - 1) / WGRAD_PIXELS;
    n = (n + T - 1) / T * T;
    w.chunk = (P + n - 1) / n;
    n = (P + w.chunk - 1) / w.chunk;
    return fast_chunked_wgrad(T, n, dw, (size_t)OC * C, wgrad_chunk, &w);
  }
  w.par = T > 1;
  w.chunk = WGRAD_PIXELS;
  const int n = (P + w.chunk - 1) / w.chunk;
  for (int k = 0; k < n; k++)
    if (wgrad_chunk(&w, k, dw)) return -1;
  return 0;
}
