/* test_cuda_winograd_tile.c — the CUDA Winograd convolution's arithmetic
 * (kernels/conv_winograd_tile.h: the same functions the kernels of
 * kernels/conv_winograd.cu call, one per thread) run on the CPU: filter, input and output
 * transforms with a host GEMM between them, forward and data gradient with F(2x2,3x3) and
 * F(4x4,3x3) (MOKA_CONV_WINOGRAD=4), weight gradient (F(3x3,2x2), added onto random
 * starting values), against a direct convolution in double. No GPU needed; the device run of test_cuda_layers checks the
 * kernels, the chunking and cuBLAS on top of this.
 *
 * Shapes: odd and even H/W, planes smaller than a tile (1x1, 2x9, 4x3), pad 0, 1 and 2,
 * batch 1-3, channels 1-16, with and without bias. Bound: max |got - ref| / max |ref|
 * below 5e-6 for F(2x2) (Winograd in fp32 measures 2e-8 to 4.6e-7 here), 5e-5 for F(4x4)
 * (its larger interpolation points); a transform or index error gives 1e-2 or more, as the
 * moved-tap case checks for both.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/conv_winograd_tile.h"
#include "rng.h"
#include "testlib.h"

#define TOL2 5e-6
#define TOL4 5e-5

static Rng g_rng;

static float *randn(size_t n) {
  float *p = malloc(n * sizeof *p);
  if (!p) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  for (size_t i = 0; i < n; i++) p[i] = rng_gaussian(&g_rng, 0.0f, 1.0f);
  return p;
}

/* Host Winograd pass: src (nb, g->C, H, W) -> dst (nb, g->K, OH, OW); w (OC, IC, 3, 3) of
 * the layer (A = g->K, B = g->C as wg_filter_tile takes them). */
static void wg_host(const WgGeom *g, int nb, const float *w, int flip, const float *bias,
                    const float *src, float *dst) {
  const size_t T = (size_t)nb * g->th * g->tw;
  const int a2 = g->a * g->a;
  float *U = malloc(a2 * (size_t)g->K * g->C * sizeof *U);
  float *V = malloc(a2 * (size_t)g->C * T * sizeof *V);
  float *M = malloc(a2 * (size_t)g->K * T * sizeof *M);
  REQUIRE(U && V && M);
  for (int a = 0; a < g->K; a++)
    for (int b = 0; b < g->C; b++) wg_filter_tile(w, a, b, g->K, g->C, flip, g->m, U);
  for (int c = 0; c < g->C; c++)
    for (size_t t = 0; t < T; t++) wg_input_tile(g, src, c, t, T, V);
  for (int xi = 0; xi < a2; xi++) /* M_xi = U_xi x V_xi, float sums as a GEMM would */
    for (int k = 0; k < g->K; k++)
      for (size_t t = 0; t < T; t++) {
        float acc = 0.0f;
        for (int c = 0; c < g->C; c++)
          acc += U[((size_t)xi * g->K + k) * g->C + c] * V[((size_t)xi * g->C + c) * T + t];
        M[((size_t)xi * g->K + k) * T + t] = acc;
      }
  for (int k = 0; k < g->K; k++)
    for (size_t t = 0; t < T; t++) wg_output_tile(g, M, k, t, T, bias, dst);
  free(U);
  free(V);
  free(M);
}

/* Host Winograd weight gradient: dw (K, C, 3, 3) += from x (nb, C, H, W) and dy (nb, K, OH,
 * OW) of the forward pass g. */
static void wg_host_wgrad(const WgGeom *g, int nb, const float *x, const float *dy, float *dw) {
  const size_t T = (size_t)nb * g->th * g->tw;
  float *V = malloc(16 * (size_t)g->C * T * sizeof *V);
  float *Z = malloc(16 * (size_t)g->K * T * sizeof *Z);
  float *S = malloc(16 * (size_t)g->K * g->C * sizeof *S);
  REQUIRE(V && Z && S);
  for (int c = 0; c < g->C; c++)
    for (size_t t = 0; t < T; t++) wg_input_tile(g, x, c, t, T, V);
  for (int k = 0; k < g->K; k++)
    for (size_t t = 0; t < T; t++) wg_dy_tile(g, dy, k, t, T, Z);
  for (int xi = 0; xi < 16; xi++) /* S_xi = Z_xi x V_xi^T */
    for (int k = 0; k < g->K; k++)
      for (int c = 0; c < g->C; c++) {
        float acc = 0.0f;
        for (size_t t = 0; t < T; t++)
          acc += Z[((size_t)xi * g->K + k) * T + t] * V[((size_t)xi * g->C + c) * T + t];
        S[((size_t)xi * g->K + k) * g->C + c] = acc;
      }
  for (int k = 0; k < g->K; k++)
    for (int c = 0; c < g->C; c++) wg_wgrad_tile(S, k, c, g->K, g->C, dw);
  free(V);
  free(Z);
  free(S);
}

static double rel_err(const float *got, const double *ref, size_t n) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = fabs((double)got[i] - ref[i]);
    if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
    if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
  }
  return scale > 0 ? worst / scale : worst;
}

typedef struct Shape {
  int nb, C, K, H, W, pad;
  bool bias;
} Shape;

/* m: the forward's and data gradient's tile (2 or 4); the weight gradient is F(3x3,2x2) */
static void check_shape(const Shape *s, bool moved_tap, int m) {
  const double TOL = m == 4 ? TOL4 : TOL2;
  const int OH = s->H + 2 * s->pad - 2, OW = s->W + 2 * s->pad - 2;
  const size_t nx = (size_t)s->nb * s->C * s->H * s->W, ny = (size_t)s->nb * s->K * OH * OW;
  float *x = randn(nx), *w = randn((size_t)s->K * s->C * 9), *b = randn((size_t)s->K);
  float *dy = randn(ny);
  const size_t nw = (size_t)s->K * s->C * 9;
  float *y = malloc(ny * sizeof *y), *dx = malloc(nx * sizeof *dx);
  float *dw = randn(nw), *dw0 = malloc(nw * sizeof *dw0); /* accumulated onto random values */
  double *ry = calloc(ny, sizeof *ry), *rdx = calloc(nx, sizeof *rdx);
  double *rdw = calloc(nw, sizeof *rdw);
  REQUIRE(y && dx && dw0 && ry && rdx && rdw);
  memcpy(dw0, dw, nw * sizeof *dw0);
  for (size_t i = 0; i < nw; i++) rdw[i] = dw0[i];
  /* direct convolution and its data gradient, in double */
  for (int n = 0; n < s->nb; n++)
    for (int k = 0; k < s->K; k++)
      for (int oh = 0; oh < OH; oh++)
        for (int ow = 0; ow < OW; ow++) {
          const size_t yi = (((size_t)n * s->K + k) * OH + oh) * OW + ow;
          double acc = s->bias ? b[k] : 0.0;
          for (int c = 0; c < s->C; c++)
            for (int i = 0; i < 3; i++)
              for (int j = 0; j < 3; j++) {
                const int h = oh + i - s->pad, ww = ow + j - s->pad;
                if (h < 0 || h >= s->H || ww < 0 || ww >= s->W) continue;
                const size_t xi = (((size_t)n * s->C + c) * s->H + h) * s->W + ww;
                const double wv = w[((size_t)k * s->C + c) * 9 + i * 3 + j];
                acc += (double)x[xi] * wv;
                rdx[xi] += (double)dy[yi] * wv;
                rdw[((size_t)k * s->C + c) * 9 + i * 3 + j] += (double)dy[yi] * x[xi];
              }
          ry[yi] = acc;
        }
  if (moved_tap) { /* the reference with one tap of one filter moved: must fail the bound */
    float t = w[4];
    w[4] = w[5];
    w[5] = t;
  }
  const WgGeom fg = wg_geom_m(s->C, s->K, s->H, s->W, s->pad, m);
  const WgGeom bg = wg_geom_m(s->K, s->C, OH, OW, 2 - s->pad, m);
  const WgGeom wg = wg_geom(s->C, s->K, s->H, s->W, s->pad);
  CHECK(fg.OH == OH && fg.OW == OW && bg.OH == s->H && bg.OW == s->W);
  wg_host(&fg, s->nb, w, 0, s->bias ? b : NULL, x, y);
  wg_host(&bg, s->nb, w, 1, NULL, dy, dx);
  if (moved_tap) { /* ... and the weight gradient with one input value moved */
    float t = x[3];
    x[3] = x[4];
    x[4] = t;
  }
  wg_host_wgrad(&wg, s->nb, x, dy, dw);
  const double ef = rel_err(y, ry, ny), eb = rel_err(dx, rdx, nx);
  /* the weight gradient's error against its own magnitude (the random start excluded) */
  double ew = 0, sw = 0;
  for (size_t i = 0; i < nw; i++) {
    const double d = fabs(((double)dw[i] - dw0[i]) - (rdw[i] - dw0[i]));
    if (d > ew || isnan(d)) ew = isnan(d) ? INFINITY : d;
    if (fabs(rdw[i] - dw0[i]) > sw) sw = fabs(rdw[i] - dw0[i]);
  }
  ew = sw > 0 ? ew / sw : ew;
  if (moved_tap) {
    CHECK_MSG(ef > 100 * TOL && eb > 100 * TOL && ew > 100 * TOL,
              "moved tap not caught: %.3g %.3g %.3g", ef, eb, ew);
  } else {
    CHECK_MSG(ew < TOL2, "(%d,%d,%d,%d,%d) pad %d weight gradient: error %.3g", s->nb, s->C,
              s->K, s->H, s->W, s->pad, ew);
    CHECK_MSG(ef < TOL, "(%d,%d,%d,%d,%d) pad %d F(%dx%d) forward: error %.3g", s->nb, s->C, s->K,
              s->H, s->W, s->pad, m, m, ef);
    CHECK_MSG(eb < TOL, "(%d,%d,%d,%d,%d) pad %d F(%dx%d) data gradient: error %.3g", s->nb, s->C,
              s->K, s->H, s->W, s->pad, m, m, eb);
    if (getenv("WG_TILE_VERBOSE"))
      printf("  F(%dx%d) (%d,%d,%d,%d,%d) pad %d: forward %.2g, data gradient %.2g\n", m, m,
             s->nb, s->C, s->K, s->H, s->W, s->pad, ef, eb);
  }
  free(x), free(w), free(b), free(dy), free(y), free(dx), free(ry), free(rdx);
  free(dw), free(dw0), free(rdw);
}

static void test_shapes(void) {
  static const Shape shapes[] = {
      {2, 3, 5, 13, 11, 1, true}, {1, 4, 2, 7, 7, 0, false}, {2, 2, 3, 5, 6, 2, true},
      {3, 1, 1, 1, 1, 1, true},   {1, 8, 8, 2, 9, 1, false}, {2, 16, 4, 14, 14, 1, true},
      {1, 3, 3, 4, 3, 0, false},  {1, 5, 7, 1, 4, 2, true},
  };
  for (int m = 2; m <= 4; m += 2)
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) check_shape(&shapes[i], false, m);
}

static void test_moved_tap(void) {
  const Shape s = {2, 3, 5, 13, 11, 1, true};
  check_shape(&s, true, 2);
  check_shape(&s, true, 4);
}

int main(void) {
  rng_seed(&g_rng, 77);
  RUN(test_shapes);
  RUN(test_moved_tap);
  return test_summary();
}
