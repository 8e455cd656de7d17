/* conv_winograd.c — Winograd convolution F(m x m, 3 x 3) for the fast CPU
 * backend's 3x3, stride-1, dilation-1, group-1 convolutions in fp32 (all of
 * ResNet-50's 3x3 convolutions). Not a reference: convolution.c is the
 * oracle, and tests/unit/test_winograd.c compares the two.
 *
 * Why: im2col + GEMM already runs near the GEMM's peak; Winograd computes an
 * m x m block of outputs of one (output, input) channel pair with a^2
 * multiplications (a = m + 2) instead of 9 m^2: 2.25x fewer with
 * F(2x2,3x3) (a = 4), 4x fewer with F(4x4,3x3) (a = 6), paid for by
 * transforms that are memory-bound passes and by a larger rounding error.
 *
 * The algorithm (Lavin & Gray 2015), for an input (N,Cin,H,W) cut into
 * overlapping a x a tiles d at stride m (tile (t,u) reads rows t*m - pad_h
 * .., columns u*m - pad_w .., zero outside the image):
 *
 *   U (a*a, Cin, Cout)  = G g G^T          per 3x3 kernel g   (weights, once per call)
 *   V (a*a, Cin, P)     = B^T d B          per tile and input channel
 *   M (a*a, Cout, P)    = U[xi]^T x V[xi]  one GEMM per xi < a*a (position in the tile)
 *   y (m x m)           = A^T M A          per tile and output channel, + bias
 *
 * P is the number of tiles in a chunk: the tiles of whole tile rows (tile
 * row r = image r / TH, row r % TH of its tiles; TH x TW tiles per image),
 * tiles of a row consecutive, so the transforms read and write contiguous
 * runs of P. The GEMMs are fast_gemm's (moka's AVX-512 kernel or OpenBLAS).
 *
 * Backward data: the data gradient of a 3x3 stride-1 convolution with pad
 * p is the 3x3 convolution of dy with pad 2-p by the kernels rotated by 180
 * degrees with input and output channels swapped, W'(c,oc,kh,kw) =
 * W(oc,c,2-kh,2-kw): the same machinery.
 *
 * Backward weights (when the data gradient went through Winograd or is not
 * wanted): the transpose of the forward, dW = G^T [(A dy A^T) (.) V] G
 * summed over tiles, with one GEMM per xi over the tiles (in
 * conv_winograd_wgrad.c; conv_winograd_priv.h is what the two files share).
 *
 * Threads, as convolution_fast.c: when there are at least as many chunks as
 * threads and U is small beside them (wino_plan), each chunk runs on one
 * thread (transform, GEMMs, inverse transform, nothing shared but U);
 * otherwise the chunks run one after another and each step is split over
 * the pool (channels for the transforms, the a*a GEMMs between the
 * threads), which keeps U read once per chunk for the deep layers with few
 * tiles. The weight gradient: in the
 * first case thread t takes chunks t, t+T, ... into its own transformed
 * gradient, added in thread order afterwards (the same sums on every run).
 *
 * Layouts: U[xi] is stored transposed (Cin, Cout) so that the GEMM packs it
 * with plain copies; the input and output tile rows are held deinterleaved
 * by column phase (column j*m + ph at [ph][j]) so that the horizontal
 * transforms, like the vertical ones, run over contiguous vectors (the
 * deinterleaving, wino_fill_phases, with AVX-512 permutes where the CPU has
 * them). The a*a planes of V and M lie one cache line more than a multiple
 * of 4 KiB apart (plane_stride): a tile row's transform touches all a*a of
 * them at once, and at exact multiples they shared one L1 set (ResNet-50's
 * 56x56 and 28x28 layers ran 27-31% slower).
 *
 * Which convolutions (conv_winograd_tile): MOKA_WINOGRAD=0 turns this file
 * off (the GEMM path runs everything: A/B and an escape hatch); 2 or 4
 * forces F(2x2,3x3) or F(4x4,3x3) on every eligible convolution (tests,
 * benchmarks); unset (or 1) chooses per shape with a cost model fitted to
 * measurements on this machine (wino_cost). On ResNet-50 at batch 8 that
 * gives F(4x4) at 56x56 and 28x28, F(2x2) at 14x14 (F(4x4)'s 4x4 tiles
 * cover 16x16 there, and its transforms cost more), and the GEMM path at
 * 7x7 (512x512 kernels: the transformed weights, 16-36 x 1 MiB, cost more
 * than 16 tiles per image save). Only in fp32: bf16 keeps its GEMM path.
 *
 * Accuracy: not the reference's sums. The transforms' constants amplify
 * rounding. Normalised errors max|y - ref| / max|ref| on ResNet-50's 3x3
 * shapes, batch 4 and 8, N(0,1) data, for forward / data gradient / weight
 * gradient: the GEMM path up to 5.6e-7 / 2.8e-7 / 4.2e-7; F(2x2) up to
 * 8.8e-7 / 7.6e-7 / 7.5e-7; F(4x4) up to 1.4e-5 / 1.8e-5 / 1.0e-5 (rms
 * 1.7e-6 to 3e-6). The golden mini ResNet and mini_train runs stay within
 * the golden README's tolerances with either tile forced
 * (tests/unit/test_winograd.c).
 */
#include "conv_winograd.h"
#include "conv_winograd_priv.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fast.h"
#include "util.h"


/* The target number of floats of a chunk's V + M (a*a*(cin+cout)*P): 8 MiB.
 * Every chunk packs all of U again for its GEMMs, so chunks are large; the
 * transforms stream V and M anyway, and the GEMM blocks itself for the
 * cache. Measured on ResNet-50's layers (one thread): 1 Mi floats and 4 Mi
 * within noise of this (+-15% on a shared machine), 256 Ki floats
 * up to 1.8x slower on the deep layers. */
#define WINO_CHUNK_FLOATS (2048 * 1024)

/* ---- which convolutions --------------------------------------------------------------- */

/* MOKA_WINOGRAD: 0 off, 2 / 4 forced tile, anything else (unset, 1) auto. */
static int wino_env(void) {
  const char *e = getenv("MOKA_WINOGRAD");
  if (!e || !*e) return 1;
  if (!strcmp(e, "0")) return 0;
  if (!strcmp(e, "2")) return 2;
  if (!strcmp(e, "4")) return 4;
  return 1;
}

/* The estimated cost of F(m x m, 3 x 3) on n images, in units of one
 * multiply-add of the GEMM path (whose cost is 9 n oh ow cin cout):
 *
 *   a^2 P cin cout          the transform-domain GEMMs (P tiles)
 *   Ku (a^2 + 9) cin cout   the weight transform and the packing of U; Ku = 8
 *                           while U fits in 4 MiB (cache), 64 beyond (memory)
 *   Kt a^2 P (cin + cout)   the input and output transforms, memory-bound
 *                           passes; Kt = 30 for F(2x2), 45 for F(4x4)
 *
 * (Re-checked after the plane_stride change made the transforms cheaper:
 * forcing F(2x2) or F(4x4) everywhere in ResNet-50 at batch 8 is still
 * slower at every stage than these choices; the timings below are from
 * before it.)
 * The constants come from one-thread timings (CPU time) of ResNet-50's 3x3
 * layers at batch 1, 8 and 16 on this machine (AMD Zen 5, 2 vCPUs, AVX-512,
 * moka's fp32 GEMM; a shared machine), and reproduce which of GEMM, F(2x2)
 * and F(4x4) was fastest on each. Batch 8, ms, three runs (GEMM path /
 * F(2x2) / F(4x4); the weight gradient with the forward's tile):
 *
 *                 forward                data gradient          weight gradient
 *   56x56,  64:   10.6-11.0 / 7.5-8.4 /  8.8-8.9 / 7.4-7.9 /    12.4-13.2 / 8.8-9.9 /
 *                 6.2-7.2                6.4-6.8                8.7-9.4
 *   28x28, 128:   9.1-9.4 / 5.5-5.8 /    8.1-8.2 / 5.5-5.9 /    9.9-10.1 / 6.7-6.8 /
 *                 5.0-5.4                4.9-5.1                6.5-6.8
 *   14x14, 256:   9.7-10.4 / 5.8-6.6 /   8.2 / 5.6-6.0 /        9.7-10.5 / 7.0-7.6 /
 *                 7.9-8.5                7.6-7.7                9.4-11.2
 *    7x7,  512:   10.4-10.9 / 10.1-10.8 / 8.8-8.9 / 10.2-10.5 / 12.1-12.9 / 14.0-15.6 /
 *                 13.0-13.6              12.7-13.1              23.8-24.9
 *
 * (weight gradient: full backward minus data-only backward, separate runs).
 */
static double wino_cost(int m, int n, int cin, int cout, int oh, int ow) {
  const double a2 = (double)(m + 2) * (m + 2), cc = (double)cin * cout;
  const double P = (double)n * ((oh + m - 1) / m) * ((ow + m - 1) / m);
  const double ku = a2 * cc * sizeof(float) <= 4.0 * 1024 * 1024 ? 8.0 : 64.0;
  const double kt = m == 2 ? 30.0 : 45.0;
  return a2 * P * cc + ku * (a2 + 9.0) * cc + kt * a2 * P * (cin + cout);
}

/* The tile size m (2 or 4) for a convolution of n images with these
 * channels and output plane, or 0 for the GEMM path: the cheapest by
 * wino_cost, Winograd only when it saves at least 15% (F(4x4) only when it
 * saves 10% over F(2x2), whose rounding error is smaller). */
static int wino_choose(int n, int cin, int cout, int oh, int ow) {
  const int env = wino_env();
  if (env == 0) return 0;
  if (env == 2 || env == 4) return env;
  /* Few channels: the transforms cost more than the GEMM saves. */
  if (cin < 16 || cout < 16) return 0;
  const double gemm = 9.0 * n * oh * ow * cin * cout;
  const double c2 = wino_cost(2, n, cin, cout, oh, ow), c4 = wino_cost(4, n, cin, cout, oh, ow);
  const int m = c4 < 0.9 * c2 ? 4 : 2;
  return (m == 4 ? c4 : c2) < 0.85 * gemm ? m : 0;
}

static bool eligible(const ConvPriv *p) {
  return p->kernel_h == 3 && p->kernel_w == 3 && p->stride_h == 1 && p->stride_w == 1 &&
         p->dilation_h == 1 && p->dilation_w == 1 && p->group == 1 && p->pad_h >= 0 &&
         p->pad_h <= 2 && p->pad_w >= 0 && p->pad_w <= 2 && fast_precision() == FAST_FP32;
}

int conv_winograd_tile(const ConvPriv *p, bool backward) {
  if (!eligible(p) || p->num <= 0 || p->out_h <= 0 || p->out_w <= 0) return 0;
  return backward ? wino_choose(p->num, p->num_output, p->channels, p->height, p->width)
                  : wino_choose(p->num, p->channels, p->num_output, p->out_h, p->out_w);
}

bool conv_winograd_applies(const ConvPriv *p, bool backward) {
  return conv_winograd_tile(p, backward) != 0;
}

void wino_init(Wino *z, int m, int n, int cin, int cout, int h, int w, int pad_h,
                      int pad_w) {
  z->m = m;
  z->a = m + 2;
  z->n = n;
  z->cin = cin;
  z->cout = cout;
  z->h = h;
  z->w = w;
  z->pad_h = pad_h;
  z->pad_w = pad_w;
  z->oh = h + 2 * pad_h - 2;
  z->ow = w + 2 * pad_w - 2;
  z->th = (z->oh + m - 1) / m;
  z->tw = (z->ow + m - 1) / m;
}

/* ---- the transforms ------------------------------------------------------------------- */

/* G (a x 3) of F(2x2,3x3) and F(4x4,3x3) (interpolation points 0, +-1, inf
 * and 0, +-1, +-2, inf). */
const float wino_G2[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
const float wino_G4[6][3] = {{1.0f / 4, 0, 0},
                               {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                               {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                               {1.0f / 24, 1.0f / 12, 1.0f / 6},
                               {1.0f / 24, -1.0f / 12, 1.0f / 6},
                               {0, 0, 1}};

/* The 1-D transforms on scalars (macros, so that the loops around them
 * vectorise): B^T d (a values from a), A^T s (m values from a). */
/* clang-format off */
#define BT2(d0, d1, d2, d3, v0, v1, v2, v3) \
  do {                                      \
    v0 = (d0) - (d2);                       \
    v1 = (d1) + (d2);                       \
    v2 = (d2) - (d1);                       \
    v3 = (d1) - (d3);                       \
  } while (0)
#define BT4(d0, d1, d2, d3, d4, d5, v0, v1, v2, v3, v4, v5)              \
  do {                                                                   \
    const float t1_ = (d4) - 4.0f * (d2), t2_ = (d3) - 4.0f * (d1);      \
    const float t3_ = (d4) - (d2), t4_ = 2.0f * ((d3) - (d1));           \
    v0 = 4.0f * (d0) - 5.0f * (d2) + (d4);                               \
    v1 = t1_ + t2_;                                                      \
    v2 = t1_ - t2_;                                                      \
    v3 = t3_ + t4_;                                                      \
    v4 = t3_ - t4_;                                                      \
    v5 = 4.0f * (d1) - 5.0f * (d3) + (d5);                               \
  } while (0)
#define AT2(s0, s1, s2, s3, y0, y1) \
  do {                              \
    y0 = (s0) + (s1) + (s2);        \
    y1 = (s1) - (s2) - (s3);        \
  } while (0)
#define AT4(s0, s1, s2, s3, s4, s5, y0, y1, y2, y3)                               \
  do {                                                                            \
    const float p1_ = (s1) + (s2), m1_ = (s1) - (s2), p2_ = (s3) + (s4),          \
                m2_ = (s3) - (s4);                                                \
    y0 = (s0) + p1_ + p2_;                                                        \
    y1 = m1_ + 2.0f * m2_;                                                        \
    y2 = p1_ + 4.0f * p2_;                                                        \
    y3 = m1_ + 8.0f * m2_ + (s5);                                                 \
  } while (0)

/* clang-format on */

/* U (a*a, cin, cout) from the layer's weights (OC, C, 3, 3), each U[xi]
 * stored transposed (cin, cout) so that the GEMM's packing of it is a plain
 * copy: forward, cout = OC, cin = C, g = W(oc, c); backward, cout = C, cin =
 * OC, g = W(oc, c) rotated by 180 degrees. gk (9, cin, cout) is scratch: the
 * kernels tap-major, so the transform runs over contiguous cout, 16 at a
 * time. */
static void transform_weights(const Wino *z, const float *weight, bool backward, float *U,
                              float *gk) {
  const int a = z->a, co_n = z->cout, ci_n = z->cin;
  const size_t plane = (size_t)co_n * ci_n;
  const float(*G)[3] = z->m == 2 ? wino_G2 : wino_G4;
  /* gk[k][ci][co]: forward W(co, ci) tap k, backward W(ci, co) tap 8-k. */
  if (backward) {
    /* Along W's rows: 9 consecutive taps per kernel to 9 rows of gk. */
#pragma omp parallel for schedule(static) if (plane * 9 >= FAST_GRAIN)
    for (int ci = 0; ci < ci_n; ci++)
      for (int co = 0; co < co_n; co++) {
        const float *g = weight + ((size_t)ci * co_n + co) * 9;
        float *dst = gk + (size_t)ci * co_n + co;
        for (int k = 0; k < 9; k++) dst[k * plane] = g[8 - k];
      }
  } else {
    /* A transpose of W (co, ci*9) in 16 x 16 blocks, its row ci*9 + k going
     * to gk's row k*cin + ci. */
    const int R = ci_n * 9;
#pragma omp parallel for collapse(2) schedule(static) if (plane * 9 >= FAST_GRAIN)
    for (int r0 = 0; r0 < R; r0 += 16)
      for (int c0 = 0; c0 < co_n; c0 += 16) {
        const int nr = R - r0 < 16 ? R - r0 : 16, nc = co_n - c0 < 16 ? co_n - c0 : 16;
        for (int rr = 0; rr < nr; rr++) {
          const int r = r0 + rr;
          float *dst = gk + ((size_t)(r % 9) * ci_n + r / 9) * co_n + c0;
          for (int cc = 0; cc < nc; cc++) dst[cc] = weight[(size_t)(c0 + cc) * R + r];
        }
      }
  }
  enum { V = 16 };
  const int blocks = (co_n + V - 1) / V;
#pragma omp parallel for schedule(static) if (plane * a * a >= FAST_GRAIN)
  for (int b = 0; b < ci_n * blocks; b++) {
    const int ci = b / blocks, co0 = b % blocks * V, nv = co_n - co0 < V ? co_n - co0 : V;
    const float *g0 = gk + (size_t)ci * co_n + co0; /* tap k of (ci, co0+v): g0[k*plane + v] */
    float *u0 = U + (size_t)ci * co_n + co0;        /* U[xi][ci][co0+v] = u0[xi*plane + v] */
    float g[9][V], t[6][3][V];
    for (int k = 0; k < 9; k++) {
      for (int v = 0; v < nv; v++) g[k][v] = g0[k * plane + v];
      for (int v = nv; v < V; v++) g[k][v] = 0.0f;
    }
    for (int i = 0; i < a; i++)
      for (int j = 0; j < 3; j++) {
        const float c0 = G[i][0], c1 = G[i][1], c2 = G[i][2];
#pragma omp simd
        for (int v = 0; v < V; v++) t[i][j][v] = c0 * g[j][v] + c1 * g[3 + j][v] + c2 * g[6 + j][v];
      }
    for (int i = 0; i < a; i++)
      for (int i2 = 0; i2 < a; i2++) {
        const float c0 = G[i2][0], c1 = G[i2][1], c2 = G[i2][2];
        float *u = u0 + (size_t)(i * a + i2) * plane;
        if (nv == V) {
#pragma omp simd
          for (int v = 0; v < V; v++) u[v] = t[i][0][v] * c0 + t[i][1][v] * c1 + t[i][2][v] * c2;
        } else {
          for (int v = 0; v < nv; v++) u[v] = t[i][0][v] * c0 + t[i][1][v] * c1 + t[i][2][v] * c2;
        }
      }
  }
}


/* One input row (W) into the m phases of a strip row (m, ld): [ph][idx] =
 * src[idx*m + ph - pad_w], zero outside the row and for idx in [L, L+8).
 * Plain C (any x86-64); fill_phases_avx512 below does the same. */
static void fill_phases_c(const float *src, int w, int pad_w, int m, int L, int ld, float *row) {
  /* idx whose m columns all lie inside the row: [lo, hi) */
  int lo = (pad_w + m - 1) / m, hi = (w - m + pad_w) >= 0 ? (w - m + pad_w) / m + 1 : 0;
  if (hi > L) hi = L;
  if (lo > hi) lo = hi;
  for (int idx = 0; idx < L; idx++) {
    if (idx == lo) idx = hi; /* the middle below */
    if (idx >= L) break;
    for (int ph = 0; ph < m; ph++) {
      const int iw = idx * m + ph - pad_w;
      row[ph * ld + idx] = iw >= 0 && iw < w ? src[iw] : 0.0f;
    }
  }
  /* Zeros past L for the padded tiles' reads (tiles_padded: at most 8). */
  const int end = L + 8 < ld ? L + 8 : ld;
  for (int ph = 0; ph < m; ph++)
    for (int idx = L; idx < end; idx++) row[ph * ld + idx] = 0.0f;
  const float *s = src - pad_w;
  if (m == 2) {
    float *restrict e = row, *restrict o = row + ld;
#pragma omp simd
    for (int idx = lo; idx < hi; idx++) {
      e[idx] = s[2 * idx];
      o[idx] = s[2 * idx + 1];
    }
  } else {
    float *restrict p0 = row, *restrict p1 = row + ld, *restrict p2 = row + 2 * ld,
                    *restrict p3 = row + 3 * ld;
#pragma omp simd
    for (int idx = lo; idx < hi; idx++) {
      p0[idx] = s[4 * idx];
      p1[idx] = s[4 * idx + 1];
      p2[idx] = s[4 * idx + 2];
      p3[idx] = s[4 * idx + 3];
    }
  }
}

#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

/* Input rows prefetched ahead of the one being filled (ResNet-50's 56x56
 * layer: the fill 16% -> 10% of its time; 2, 4 and 8 rows alike). */
enum { PF_ROWS = 4 };

/* wino_fill_phases with AVX-512 (m = 2 or 4): 16 values of idx at a time
 * from m masked loads (zeros outside the row: no scalar edges, nothing read
 * outside it), deinterleaved by permutes; idx >= L set to zero. Writes
 * [ph][0, ceil(min(L+8, ld) / 16) * 16), within the row's ld (a multiple
 * of 16). The same values as fill_phases_c: copies only. */
static void fill_phases_avx512(const float *src, int w, int pad_w, int m, int L, int ld,
                               float *row) {
  const int end = L + 8 < ld ? L + 8 : ld;
  /* The callers fill a plane's rows in order: row PF_ROWS on, into L1 (a
   * hint: it never faults; addresses as integers, past the plane too). */
  const uintptr_t base = (uintptr_t)src;
  for (int k = 0; k < w; k += 16)
    _mm_prefetch((const char *)(base + ((uintptr_t)PF_ROWS * w + k) * sizeof(float)),
                 _MM_HINT_T0);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int i0 = 0; i0 < end; i0 += 16) {
    /* idx lanes i0 + l < L keep their values */
    const __mmask16 keep = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(i0)),
                                                   _mm512_set1_epi32(L));
    __m512 v[4];
    for (int k = 0; k < m; k++) {
      /* source columns p0 + l, l < 16, of this piece: inside [0, w) only */
      const int p0 = i0 * m - pad_w + 16 * k;
      const __m512i col = _mm512_add_epi32(lane, _mm512_set1_epi32(p0));
      const __mmask16 in = _mm512_cmpge_epi32_mask(col, _mm512_setzero_si512()) &
                           _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32(w));
      /* lanes outside the row are masked off (not read); the address of
       * column p0, which may lie before the row, formed as an integer */
      const float *at =
          (const float *)(base + (uintptr_t)((intptr_t)p0 * (intptr_t)sizeof(float)));
      v[k] = in ? _mm512_maskz_loadu_ps(in, at) : _mm512_setzero_ps();
    }
    if (m == 2) {
      const __m512i ev =
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
      _mm512_storeu_ps(row + i0,
                       _mm512_maskz_mov_ps(keep, _mm512_permutex2var_ps(v[0], ev, v[1])));
      _mm512_storeu_ps(row + ld + i0,
                       _mm512_maskz_mov_ps(keep, _mm512_permutex2var_ps(v[0], od, v[1])));
    } else {
      /* phase ph: lanes 0-7 from v0:v1 (ph, ph+4, .., ph+28), 8-15 from v2:v3 */
      const __m512i q = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
      for (int ph = 0; ph < 4; ph++) {
        const __m512i idx = _mm512_add_epi32(q, _mm512_set1_epi32(ph));
        const __m512 lo = _mm512_permutex2var_ps(v[0], idx, v[1]);
        const __m512 hi = _mm512_permutex2var_ps(v[2], idx, v[3]);
        const __m512 out = _mm512_shuffle_f32x4(lo, hi, 0x44); /* lo's lanes 0-7, hi's 0-7 */
        _mm512_storeu_ps(row + ph * ld + i0, _mm512_maskz_mov_ps(keep, out));
      }
    }
  }
}

#pragma GCC pop_options

void wino_fill_phases(const float *src, int w, int pad_w, int m, int L, int ld, float *row) {
  if (fast_avx512_supported() && (m == 2 || m == 4) && ld % 16 == 0)
    fill_phases_avx512(src, w, pad_w, m, L, ld, row);
  else
    fill_phases_c(src, w, pad_w, m, L, ld, row);
}

/* V (a*a, cin, P), columns [0, (r1-r0)*tw), channel c: the input tiles of
 * tile rows [r0, r1) of x (N,cin,H,W); P is the padded row stride
 * (chunk_stride). Each input row a tile row needs is deinterleaved once per
 * image (adjacent tile rows share a - m of their a rows). scratch:
 * (a + 1 + H) x (m, ld): the vertical transform, a zero row, the plane's
 * rows by phase. */
static void input_rows(const Wino *z, const float *x, int c, int r0, int r1, float *V, size_t P,
                       float *scratch) {
  const int a = z->a, m = z->m, tw = z->tw, L = tw + 1;
  const int twp = tiles_padded(tw), ld = row_ld(tw), cols = m * ld;
  float *tv = scratch;                      /* (a, m, ld): B^T applied down the columns */
  float *zero = tv + (size_t)a * cols;      /* (m, ld): a row outside the image */
  float *rows = zero + cols;                /* (H, m, ld): input row ih at rows + ih*cols */
  const size_t xs = plane_stride(z->cin, P); /* from V[xi][c] to V[xi+1][c] */
  memset(zero, 0, (size_t)cols * sizeof(float));
  int cur_n = -1;
  for (int r = r0; r < r1; r++) {
    const int n = r / z->th, t = r % z->th;
    if (n != cur_n) { /* this image's rows for its tile rows t .. t_end of the range */
      const float *plane = x + ((size_t)n * z->cin + c) * z->h * z->w; /* (H,W) */
      const int t_end = n == (r1 - 1) / z->th ? (r1 - 1) % z->th : z->th - 1;
      int lo = t * m - z->pad_h, hi = t_end * m - z->pad_h + a;
      if (lo < 0) lo = 0;
      if (hi > z->h) hi = z->h;
      for (int ih = lo; ih < hi; ih++)
        wino_fill_phases(plane + (size_t)ih * z->w, z->w, z->pad_w, m, L, ld,
                         rows + (size_t)ih * cols);
      cur_n = n;
    }
    const float *in[6]; /* the tile row's a input rows, (m, ld) each */
    for (int i = 0; i < a; i++) {
      const int ih = t * m - z->pad_h + i;
      in[i] = ih < 0 || ih >= z->h ? zero : rows + (size_t)ih * cols;
    }
    float *out = V + (size_t)c * P + (size_t)(r - r0) * tw; /* V[0][c][tiles of row r] */
    if (a == 4) {
      const float *s0 = in[0], *s1 = in[1], *s2 = in[2], *s3 = in[3];
      float *restrict t0 = tv, *restrict t1 = t0 + cols, *restrict t2 = t1 + cols,
                      *restrict t3 = t2 + cols;
#pragma omp simd
      for (int xx = 0; xx < cols; xx++)
        BT2(s0[xx], s1[xx], s2[xx], s3[xx], t0[xx], t1[xx], t2[xx], t3[xx]);
      for (int i = 0; i < 4; i++) {
        const float *p0 = tv + i * cols, *p1 = p0 + ld;
        float *restrict o0 = out + (size_t)(i * 4) * xs, *restrict o1 = o0 + xs,
                        *restrict o2 = o1 + xs, *restrict o3 = o2 + xs;
#pragma omp simd
        for (int j = 0; j < twp; j++)
          BT2(p0[j], p1[j], p0[j + 1], p1[j + 1], o0[j], o1[j], o2[j], o3[j]);
      }
    } else {
      const float *s0 = in[0], *s1 = in[1], *s2 = in[2], *s3 = in[3], *s4 = in[4], *s5 = in[5];
      float *restrict t0 = tv, *restrict t1 = t0 + cols, *restrict t2 = t1 + cols,
                      *restrict t3 = t2 + cols, *restrict t4 = t3 + cols, *restrict t5 = t4 + cols;
#pragma omp simd
      for (int xx = 0; xx < cols; xx++)
        BT4(s0[xx], s1[xx], s2[xx], s3[xx], s4[xx], s5[xx], t0[xx], t1[xx], t2[xx], t3[xx], t4[xx],
            t5[xx]);
      for (int i = 0; i < 6; i++) {
        const float *p0 = tv + i * cols, *p1 = p0 + ld, *p2 = p1 + ld, *p3 = p2 + ld;
        float *restrict o0 = out + (size_t)(i * 6) * xs, *restrict o1 = o0 + xs,
                        *restrict o2 = o1 + xs, *restrict o3 = o2 + xs, *restrict o4 = o3 + xs,
                        *restrict o5 = o4 + xs;
#pragma omp simd
        for (int j = 0; j < twp; j++)
          BT4(p0[j], p1[j], p2[j], p3[j], p0[j + 1], p1[j + 1], o0[j], o1[j], o2[j], o3[j], o4[j],
              o5[j]);
      }
    }
  }
}

/* Output channel oc of tile rows [r0, r1) into y (N,cout,OH,OW), + bias,
 * from M (a*a, cout, P), P the padded row stride. scratch: (m, a, ld) then
 * (m, m, ld). */
static void output_rows(const Wino *z, const float *M, int oc, int r0, int r1, size_t P, float bias,
                        float *y, float *scratch) {
  const int a = z->a, m = z->m, tw = z->tw;
  const int twp = tiles_padded(tw), ld = row_ld(tw);
  float *s = scratch;                         /* (m, a, ld): A^T applied down the columns */
  float *ybuf = scratch + (size_t)m * a * ld; /* (m, m, ld): row q, column phase q2, tile j */
  const size_t xs = plane_stride(z->cout, P); /* from M[xi][oc] to M[xi+1][oc] */
  for (int r = r0; r < r1; r++) {
    const int n = r / z->th, t = r % z->th;
    const float *in = M + (size_t)oc * P + (size_t)(r - r0) * tw; /* M[0][oc][row r] */
    if (a == 4) {
      for (int k = 0; k < 4; k++) {
        const float *i0 = in + (size_t)k * xs, *i1 = i0 + 4 * xs, *i2 = i1 + 4 * xs,
                    *i3 = i2 + 4 * xs;
        float *restrict q0 = s + (size_t)k * ld, *restrict q1 = q0 + (size_t)4 * ld;
#pragma omp simd
        for (int j = 0; j < twp; j++) AT2(i0[j], i1[j], i2[j], i3[j], q0[j], q1[j]);
      }
      for (int q = 0; q < 2; q++) {
        const float *k0 = s + (size_t)q * 4 * ld, *k1 = k0 + ld, *k2 = k1 + ld, *k3 = k2 + ld;
        float *restrict y0 = ybuf + (size_t)q * 2 * ld, *restrict y1 = y0 + ld;
#pragma omp simd
        for (int j = 0; j < twp; j++) {
          AT2(k0[j], k1[j], k2[j], k3[j], y0[j], y1[j]);
          y0[j] += bias;
          y1[j] += bias;
        }
      }
    } else {
      for (int k = 0; k < 6; k++) {
        const float *i0 = in + (size_t)k * xs, *i1 = i0 + 6 * xs, *i2 = i1 + 6 * xs,
                    *i3 = i2 + 6 * xs, *i4 = i3 + 6 * xs, *i5 = i4 + 6 * xs;
        float *restrict q0 = s + (size_t)k * ld, *restrict q1 = q0 + (size_t)6 * ld,
                        *restrict q2 = q1 + (size_t)6 * ld, *restrict q3 = q2 + (size_t)6 * ld;
#pragma omp simd
        for (int j = 0; j < twp; j++)
          AT4(i0[j], i1[j], i2[j], i3[j], i4[j], i5[j], q0[j], q1[j], q2[j], q3[j]);
      }
      for (int q = 0; q < 4; q++) {
        const float *k0 = s + (size_t)q * 6 * ld, *k1 = k0 + ld, *k2 = k1 + ld, *k3 = k2 + ld,
                    *k4 = k3 + ld, *k5 = k4 + ld;
        float *restrict y0 = ybuf + (size_t)q * 4 * ld, *restrict y1 = y0 + ld,
                        *restrict y2 = y1 + ld, *restrict y3 = y2 + ld;
#pragma omp simd
        for (int j = 0; j < twp; j++) {
          AT4(k0[j], k1[j], k2[j], k3[j], k4[j], k5[j], y0[j], y1[j], y2[j], y3[j]);
          y0[j] += bias;
          y1[j] += bias;
          y2[j] += bias;
          y3[j] += bias;
        }
      }
    }
    /* Interleave the phases into the output rows: column j*m + q2. */
    float *dst = y + ((size_t)n * z->cout + oc) * z->oh * z->ow; /* (OH,OW) */
    const int full = z->ow / m;                                  /* tiles with m columns inside */
    for (int q = 0; q < m && t * m + q < z->oh; q++) {
      float *restrict row = dst + (size_t)(t * m + q) * z->ow;
      const float *yq = ybuf + (size_t)q * m * ld; /* (m, ld) */
      if (m == 2) {
        const float *e = yq, *o = yq + ld;
#pragma omp simd
        for (int j = 0; j < full; j++) {
          row[2 * j] = e[j];
          row[2 * j + 1] = o[j];
        }
      } else {
        const float *p0 = yq, *p1 = yq + ld, *p2 = p1 + ld, *p3 = p2 + ld;
#pragma omp simd
        for (int j = 0; j < full; j++) {
          row[4 * j] = p0[j];
          row[4 * j + 1] = p1[j];
          row[4 * j + 2] = p2[j];
          row[4 * j + 3] = p3[j];
        }
      }
      for (int xx = full * m; xx < z->ow; xx++) row[xx] = yq[(xx % m) * ld + xx / m];
    }
  }
}

/* The scratch of one thread's transforms: (a + 1 + H) x (m, ld) in, (m,
 * a, ld) + (m, m, ld) out, (m + a) x (m, ld) for grad_rows (ld =
 * row_ld(tw)). */
size_t wino_scratch_floats(const Wino *z) {
  const size_t ld = (size_t)row_ld(z->tw);
  const size_t in = ((size_t)z->a + 1 + (size_t)z->h + z->m) * z->m * ld;
  const size_t out = (size_t)z->m * (z->a + z->m) * ld;
  return in > out ? in : out;
}

/* V (a*a, cin, rows Pp apart): the input tiles of tile rows [r0, r1) of x
 * (N,cin,H,W), channels in parallel when par. 0 / -1. */
static int input_tiles(const Wino *z, const float *x, int r0, int r1, float *V, size_t Pp,
                       bool par) {
  const size_t P = (size_t)(r1 - r0) * z->tw, scr = wino_scratch_floats(z);
  (void)P; /* read only by the OpenMP if clause */
  int rc = 0;
#pragma omp parallel for schedule(static) \
    reduction(|                           \
              : rc) if (par && z->a * z->a * z->cin * P >= FAST_GRAIN)
  for (int c = 0; c < z->cin; c++) {
    float *s = fast_workspace(FAST_WS_AUX, scr, "Winograd transform scratch");
    if (s)
      input_rows(z, x, c, r0, r1, V, Pp, s);
    else
      rc |= 1;
  }
  return rc ? -1 : 0;
}

int wino_chunk_tiles(const Wino *z, const float *x, int r0, int r1, bool par, const char *what,
                     float **V, float **M) {
  const size_t aa = (size_t)z->a * z->a, Pp = chunk_stride((size_t)(r1 - r0) * z->tw);
  *V = fast_workspace(FAST_WS_COL, aa * plane_stride(z->cin, Pp), "Winograd input tiles");
  *M = *V ? fast_workspace(FAST_WS_OUT, aa * plane_stride(z->cout, Pp), what) : NULL;
  if (!*M) return -1;
  return input_tiles(z, x, r0, r1, *V, Pp, par);
}

/* y (N,cout,OH,OW) for tile rows [r0, r1), from x (N,cin,H,W) and U, or
 * Upk: U[xi]^T packed by fast_gemm_f32_pack, xi after xi (frozen weights).
 * par: split each step over the pool (false inside a parallel region). */
static int run_chunk(const Wino *z, const float *U, const float *Upk, const float *bias,
                     const float *x, float *y, int r0, int r1, bool par) {
  const int aa = z->a * z->a;
  const size_t P = (size_t)(r1 - r0) * z->tw, Pp = chunk_stride(P);
  float *V, *M;
  if (wino_chunk_tiles(z, x, r0, r1, par, "Winograd products", &V, &M)) return -1;
  const size_t scr = wino_scratch_floats(z);
  int rc = 0;
  /* M[xi] (cout, P) = U[xi]^T (cout, cin) x V[xi] (cin, P), rows Pp apart */
  const size_t pk = Upk ? fast_gemm_f32_packed_size(z->cout, z->cin) : 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : rc) if (par)
  for (int xi = 0; xi < aa; xi++)
    rc |= Upk ? fast_gemm_f32_prepacked(z->cout, (int)P, z->cin, Upk + (size_t)xi * pk,
                                        V + xi * plane_stride(z->cin, Pp), (int)Pp,
                                        M + xi * plane_stride(z->cout, Pp), (int)Pp)
              : fast_gemm(true, false, z->cout, (int)P, z->cin, 1.0f,
                          U + (size_t)xi * z->cout * z->cin, z->cout,
                          V + xi * plane_stride(z->cin, Pp), (int)Pp, 0.0f,
                          M + xi * plane_stride(z->cout, Pp), (int)Pp);
  if (rc) return -1;
#pragma omp parallel for schedule(static) \
    reduction(|                           \
              : rc) if (par && aa * z->cout * P >= FAST_GRAIN)
  for (int oc = 0; oc < z->cout; oc++) {
    float *s = fast_workspace(FAST_WS_AUX, scr, "Winograd transform scratch");
    if (!s) {
      rc |= 1;
      continue;
    }
    output_rows(z, M, oc, r0, r1, Pp, bias ? bias[oc] : 0.0f, y, s);
  }
  return rc ? -1 : 0;
}


WinoPlan wino_plan(const Wino *z) {
  WinoPlan pl = {z->n * z->th, 0, 0, false, fast_threads()};
  const size_t per_tile = (size_t)z->a * z->a * (z->cin + z->cout);
  size_t tiles = WINO_CHUNK_FLOATS / per_tile;
  if (tiles < (size_t)z->tw) tiles = z->tw;
  pl.chunk = (int)(tiles / z->tw);
  if (pl.chunk > pl.rows) pl.chunk = pl.rows;
  pl.n_chunks = (pl.rows + pl.chunk - 1) / pl.chunk;
  const int T = pl.threads;
  /* Chunks per thread only when U (a*a cin cout) is small beside the tiles
   * (a*a (cin + cout) per tile): each thread packs all of U for its GEMMs
   * and, for the weight gradient, keeps and adds its own dU. On ResNet-50
   * at batch 8 that leaves the 56x56 layers by chunk and runs the 28x28 and
   * 14x14 ones step by step over the pool (measured: their forward 3-5%,
   * backward 6-10% faster). */
  const double tiles_all = (double)pl.rows * z->tw;
  if (T > 1 && pl.n_chunks >= T && 8.0 * z->cin * z->cout < tiles_all * (z->cin + z->cout)) {
    int n = (pl.n_chunks + T - 1) / T * T; /* a multiple of the pool */
    if (n > pl.rows) n = pl.rows;
    pl.chunk = (pl.rows + n - 1) / n;
    pl.n_chunks = (pl.rows + pl.chunk - 1) / pl.chunk;
    pl.by_chunk = true;
  }
  return pl;
}

/* The whole convolution of x (N,cin,H,W) into y (N,cout,OH,OW), U (or Upk,
 * see run_chunk) given. */
static int wino_run(const Wino *z, const float *U, const float *Upk, const float *bias,
                    const float *x, float *y) {
  const WinoPlan pl = wino_plan(z);
  int rc = 0;
  if (pl.by_chunk) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(pl.threads) reduction(| : rc)
    for (int k = 0; k < pl.n_chunks; k++) {
      const int r0 = k * pl.chunk, r1 = r0 + pl.chunk < pl.rows ? r0 + pl.chunk : pl.rows;
      rc |= run_chunk(z, U, Upk, bias, x, y, r0, r1, false);
    }
    return rc ? -1 : 0;
  }
  for (int r0 = 0; r0 < pl.rows && !rc; r0 += pl.chunk)
    rc = run_chunk(z, U, Upk, bias, x, y, r0, r0 + pl.chunk < pl.rows ? r0 + pl.chunk : pl.rows,
                   true);
  return rc ? -1 : 0;
}

/* U (and its scratch) for z from the layer's weights. */
static float *make_weights(const Wino *z, const float *weight, bool backward) {
  const size_t n = (size_t)z->a * z->a * z->cout * z->cin, gk = (size_t)9 * z->cout * z->cin;
  float *U = fast_workspace(FAST_WS_WINO, n + gk, "Winograd weights");
  if (U) transform_weights(z, weight, backward, U, U + n);
  return U;
}

/* ---- the layer ------------------------------------------------------------------------ */

int conv_winograd_forward(Layer *l) {
  ConvPriv *p = l->priv;
  const float *weight = l->params[0]->data;                     /* (OC, C, 3, 3) */
  const float *bias = p->bias_term ? l->params[1]->data : NULL; /* (OC) */
  const int m = conv_winograd_tile(p, false);
  if (!m)
    return moka_errorf("layer %s: internal: Winograd called on a convolution it does not apply to",
                       l->name);
  Wino z;
  wino_init(&z, m, p->num, p->channels, p->num_output, p->height, p->width, p->pad_h, p->pad_w);
  const float *Upk = NULL;
  if (l->weights_frozen && fast_prepacked_allowed()) {
    /* Frozen weights (inference): U transformed and packed for moka's GEMM
     * once, on the first forward (or again if the tile changes). */
    if (!p->wino_pack || p->wino_m != m) {
      const float *U = make_weights(&z, weight, false);
      if (!U) return moka_error_prefix("layer %s", l->name);
      const size_t pk = fast_gemm_f32_packed_size(z.cout, z.cin), aa = (size_t)z.a * z.a;
      free(p->wino_pack);
      if (!(p->wino_pack = moka_malloc(aa * pk * sizeof(float))))
        return moka_error_prefix("layer %s: packed Winograd weights", l->name);
      for (size_t xi = 0; xi < aa; xi++)
        fast_gemm_f32_pack(true, z.cout, z.cin, U + xi * z.cout * z.cin, z.cout,
                           p->wino_pack + xi * pk);
      p->wino_m = m;
    }
    Upk = p->wino_pack;
  }
  const float *U = Upk ? NULL : make_weights(&z, weight, false);
  if (!Upk && !U) return moka_error_prefix("layer %s", l->name);
  for (int i = 0; i < l->n_bottom; i++)
    if (wino_run(&z, U, Upk, bias, l->bottom[i]->data, l->top[i]->data))
      return moka_error_prefix("layer %s", l->name);
  return 0;
}

int conv_winograd_backward_data(const ConvPriv *p, const float *weight, const float *dy,
                                float *dx) {
  const int m = conv_winograd_tile(p, true);
  if (!m) return moka_errorf("internal: Winograd called on a convolution it does not apply to");
  Wino z;
  wino_init(&z, m, p->num, p->num_output, p->channels, p->out_h, p->out_w, 2 - p->pad_h,
            2 - p->pad_w);
  const float *U = make_weights(&z, weight, true);
  if (!U) return -1;
  return wino_run(&z, U, NULL, NULL, dy, dx);
}
