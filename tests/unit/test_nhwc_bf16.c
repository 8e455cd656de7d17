/* test_nhwc_bf16.c — the channels-last bf16 1x1 convolution kernels
 * (src/layers/conv_nhwc_bf16.c) against sums in double of the same bf16
 * operands.
 *
 * Each case draws x (P, C), dy (P, OC) and w (OC, C), rounds x and dy with
 * nhwc_bf16_round (checked first against a scalar round-to-nearest-even,
 * denormals-to-zero), and computes in double, from the bf16 values (w
 * rounded the same way):
 *   forward        y[p][o]  = sum_c x[p][c] w[o][c]
 *   data gradient  dx[p][c] = sum_o dy[p][o] w[o][c]
 *   weight grad.   dw[o][c] = dw0[o][c] + sum_p dy[p][o] x[p][c]
 * The kernels multiply the same bf16 values exactly and sum in fp32, so the
 * error of each output is within fp32 summation rounding of the sum of
 * |terms|: |got - want| <= TOL * (sum |terms| + |dw0|). Shapes: pixel counts
 * not a multiple of the 12-row tile, channel counts not a multiple of the
 * 32-column panel or of 16, an odd number of pairs, ResNet-50's widest
 * 1x1 shapes at small P, weight gradients in chunks side by side (P large)
 * and one chunk with the GEMM split (P small), an odd pixel count in a
 * chunk; with 1, 2 and 3 threads. Rows past P and columns past N must stay
 * untouched (the outputs live in larger buffers with a sentinel). The bf16
 * outputs are the fp32 ones rounded, bit for bit.
 * SKIP on a CPU without AVX-512 BF16. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "layers/conv_nhwc_bf16.h"
#include "layers/fast.h"
#include "rng.h"
#include "../gpu/bf16_host.h"
#include "bf16_kernel_sets.h"
#include "testlib.h"
#include "util.h"

#define TOL 1e-6 /* fp32 sums of exact products; seen up to 1.8e-7 (K 2048) */
#define SENTINEL 12345.0f

static Rng g_rng;

static void fill(float *v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = rng_gaussian(&g_rng, 0.0f, scale);
}

static void test_round(void) {
  enum { N = 1000 };
  float v[N];
  uint16_t got[N + 1];
  fill(v, N, 1.0f);
  v[0] = 1e-40f, v[1] = -1e-40f, v[2] = 0.0f, v[3] = -0.0f, v[4] = 1.0f + 1.0f / 256.0f;
  v[5] = 1.0f + 3.0f / 256.0f, v[6] = 3.4e38f, v[7] = -INFINITY, v[8] = NAN;
  v[9] = 1.17549435e-38f; /* the smallest normal */
  got[N] = 0xBEEF;
  nhwc_bf16_round(v, N - 3, got); /* a tail of 13 */
  nhwc_bf16_round(v + N - 3, 3, got + N - 3);
  int bad = 0;
  for (int i = 0; i < N; i++)
    if (got[i] != bf16_bits_cpu(v[i]) && bad++ < 5)
      fprintf(stderr, "  value %d (%g): 0x%04x, want 0x%04x\n", i, (double)v[i], got[i],
              bf16_bits_cpu(v[i]));
  CHECK(bad == 0);
  CHECK(got[N] == 0xBEEF);
}

typedef struct Case {
  int P, C, OC;
} Case;

/* The larger of two errors, NaN once either is (a NaN result fails every tolerance). */
static double worse(double e, double cand) { return cand > e || isnan(cand) ? cand : e; }

/* max over outputs of |got - want| / (sum |terms| + |base|), and sentinels. */
typedef struct Err {
  double worst;
  int untouched_bad;
} Err;

static void run_case(const Case *k, int threads) {
  const int P = k->P, C = k->C, OC = k->OC;
  float *x = malloc(sizeof(float) * P * C), *dy = malloc(sizeof(float) * P * OC);
  float *w = malloc(sizeof(float) * OC * C);
  uint16_t *x16 = malloc(2 * (size_t)P * C), *dy16 = malloc(2 * (size_t)P * OC);
  uint16_t *w16 = malloc(2 * (size_t)OC * C);
  /* Outputs with one spare column and one spare row of sentinels. */
  const size_t ldy = OC + 1, ldx = C + 1;
  float *y = malloc(sizeof(float) * (P + 1) * ldy), *dx = malloc(sizeof(float) * (P + 1) * ldx);
  float *dw = malloc(sizeof(float) * OC * C), *dw0 = malloc(sizeof(float) * OC * C);
  int32_t *bf = malloc(4 * nhwc_bf16_packed_b_size(C, OC));
  int32_t *bd = malloc(4 * nhwc_bf16_packed_b_size(OC, C));
  fill(x, (size_t)P * C, 1.0f);
  fill(dy, (size_t)P * OC, 0.01f);
  fill(w, (size_t)OC * C, 0.1f);
  fill(dw0, (size_t)OC * C, 0.05f);
  for (size_t i = 0; i < (size_t)P * C; i += 97) x[i] = 0.0f; /* ReLU outputs have zeros */
  nhwc_bf16_round(x, (size_t)P * C, x16);
  nhwc_bf16_round(dy, (size_t)P * OC, dy16);
  for (size_t i = 0; i < (size_t)OC * C; i++) w16[i] = bf16_bits_cpu(w[i]);
  for (size_t i = 0; i < (P + 1) * ldy; i++) y[i] = SENTINEL;
  for (size_t i = 0; i < (P + 1) * ldx; i++) dx[i] = SENTINEL;
  memcpy(dw, dw0, sizeof(float) * OC * C);

  omp_set_num_threads(threads);
  nhwc_bf16_pack_fwd(w, OC, C, bf);
  nhwc_bf16_pack_dgrad(w, OC, C, bd);
  CHECK(nhwc_bf16_gemm(x16, C, P, C, bf, OC, y, NULL, ldy) == 0);
  CHECK(nhwc_bf16_gemm(dy16, OC, P, OC, bd, C, dx, NULL, ldx) == 0);
  CHECK(nhwc_bf16_wgrad(dy16, x16, P, OC, C, dw) == 0);
  { /* bf16 outputs: the fp32 ones rounded, bit for bit */
    uint16_t *y16 = malloc(2 * (size_t)P * OC), *yr = malloc(2 * (size_t)P * OC);
    CHECK(nhwc_bf16_gemm(x16, C, P, C, bf, OC, NULL, y16, OC) == 0);
    int bad = 0;
    for (int p = 0; p < P; p++) {
      nhwc_bf16_round(y + (size_t)p * ldy, OC, yr + (size_t)p * OC);
      bad += memcmp(yr + (size_t)p * OC, y16 + (size_t)p * OC, 2 * (size_t)OC) != 0;
    }
    CHECK_MSG(bad == 0, "P %d C %d OC %d: %d bf16 output rows differ", P, C, OC, bad);
    free(y16), free(yr);
  }

  Err ey = {0, 0}, ex = {0, 0}, ew = {0, 0};
  for (int p = 0; p <= P; p++) {
    for (int o = 0; o <= OC; o++) {
      const float got = y[(size_t)p * ldy + o];
      if (p == P || o == OC) {
        ey.untouched_bad += got != SENTINEL;
        continue;
      }
      double s = 0, a = 0;
      for (int c = 0; c < C; c++) {
        const double t = bf16_value(x16[(size_t)p * C + c]) * bf16_value(w16[(size_t)o * C + c]);
        s += t, a += fabs(t);
      }
      const double e = fabs(got - s) / (a + 1e-30);
      ey.worst = worse(ey.worst, e);
    }
    for (int c = 0; c <= C; c++) {
      const float got = dx[(size_t)p * ldx + c];
      if (p == P || c == C) {
        ex.untouched_bad += got != SENTINEL;
        continue;
      }
      double s = 0, a = 0;
      for (int o = 0; o < OC; o++) {
        const double t = bf16_value(dy16[(size_t)p * OC + o]) * bf16_value(w16[(size_t)o * C + c]);
        s += t, a += fabs(t);
      }
      const double e = fabs(got - s) / (a + 1e-30);
      ex.worst = worse(ex.worst, e);
    }
  }
  for (int o = 0; o < OC; o++)
    for (int c = 0; c < C; c++) {
      double s = dw0[(size_t)o * C + c], a = fabs(s);
      for (int p = 0; p < P; p++) {
        const double t = bf16_value(dy16[(size_t)p * OC + o]) * bf16_value(x16[(size_t)p * C + c]);
        s += t, a += fabs(t);
      }
      const double e = fabs(dw[(size_t)o * C + c] - s) / (a + 1e-30);
      ew.worst = worse(ew.worst, e);
    }
  /* The bf16 products are really used: the fp32 operands would give other values. */
  double fp32_diff = 0;
  {
    double s = 0;
    for (int c = 0; c < C; c++) s += (double)x[c] * w[c];
    fp32_diff = fabs(s - y[0]);
  }
  CHECK_MSG(ey.worst <= TOL && ex.worst <= TOL && ew.worst <= TOL,
            "P %d C %d OC %d threads %d: errors forward %.2e, data gradient %.2e, weight "
            "gradient %.2e (tolerance %.0e)",
            P, C, OC, threads, ey.worst, ex.worst, ew.worst, TOL);
  CHECK_MSG(ey.untouched_bad == 0 && ex.untouched_bad == 0,
            "P %d C %d OC %d: %d / %d values written outside the outputs", P, C, OC,
            ey.untouched_bad, ex.untouched_bad);
  CHECK_MSG(fp32_diff > 1e-6, "P %d C %d OC %d: y[0] equals the fp32 sum (%g)", P, C, OC,
            fp32_diff);
  free(x), free(dy), free(w), free(x16), free(dy16), free(w16), free(y), free(dx), free(dw);
  free(dw0), free(bf), free(bd);
}

static void test_shapes(void) {
  static const Case cases[] = {
      {1, 2, 2},       /* the smallest */
      {13, 6, 34},     /* a tile and one row; a panel and two columns */
      {25, 34, 18},    /* 17 pairs */
      {100, 64, 256},  /* ResNet's 2c shape */
      {97, 256, 64},   /* 2a, odd pixel count */
      {49, 2048, 512}, /* 5x_2a: wide K, one 7x7 image */
      {40, 512, 2048}, /* 5x_2c */
      {3001, 64, 48},  /* weight gradient in chunks side by side, an odd chunk */
      {5000, 18, 10},  /* several chunks, short rows */
      {70, 96, 32},    /* AMX: whole 32-row blocks read in place and a staged last one */
  };
  const int saved = omp_get_max_threads();
  static const int threads[] = {1, 2, 3};
  for (size_t t = 0; t < MOKA_ARRAY_LEN(threads); t++)
    for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++) run_case(&cases[i], threads[t]);
  omp_set_num_threads(saved);
}

/* Convolutions of any kernel size (nhwc_bf16_conv_*): the same checks with
 * x (N,H,W,C), dy (N,OH,OW,OC), w (OC,C,KH,KW) and the sums over the taps
 * inside the image; the data gradient (stride 1 only) through
 * nhwc_bf16_dgrad_geom as the flipped kernel's convolution of dy. */
/* Every (output pixel, tap) pair of g whose input pixel lies inside the image, in order:
 * the reference sums' terms. */
typedef struct WinTap {
  size_t po, pi; /* the output pixel, the input pixel (n, ih, iw) as an index */
  int n, ih, iw, tap;
} WinTap;

static WinTap *window_taps(const NhwcGeom *g, size_t *count) {
  WinTap *v = malloc(sizeof *v * (size_t)g->N * g->OH * g->OW * g->KH * g->KW + 1);
  size_t k = 0;
  for (int n = 0; v && n < g->N; n++)
    for (int oh = 0; oh < g->OH; oh++)
      for (int ow = 0; ow < g->OW; ow++)
        for (int kh = 0; kh < g->KH; kh++)
          for (int kw = 0; kw < g->KW; kw++) {
            const int ih = oh * g->SH - g->PH + kh, iw = ow * g->SW - g->PW + kw;
            if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
            v[k++] = (WinTap){((size_t)n * g->OH + oh) * g->OW + ow,
                              ((size_t)n * g->H + ih) * g->W + iw, n, ih, iw, kh * g->KW + kw};
          }
  *count = k;
  return v;
}

/* max over i < n of |got[i] - base[i] - s[i]| / (a[i] + |base[i]|) (base NULL: 0). */
static double max_rel(const float *got, const float *base, const double *s, const double *a,
                      size_t n) {
  double e = 0;
  for (size_t i = 0; i < n; i++) {
    const double b = base ? base[i] : 0.0;
    e = worse(e, fabs(got[i] - b - s[i]) / (a[i] + fabs(b) + 1e-30));
  }
  return e;
}

typedef struct ConvCase {
  int N, H, W, C, OC, KH, KW, SH, SW, PH, PW;
} ConvCase;

static void run_conv_case(const ConvCase *k, int threads) {
  NhwcGeom g = {k->N, k->H, k->W, k->C, k->OC, k->KH, k->KW, k->SH, k->SW, k->PH, k->PW, 0, 0};
  nhwc_geom_finish(&g);
  const int T = g.KH * g.KW, C = g.C, OC = g.OC;
  const size_t nx = (size_t)g.N * g.H * g.W * C, P = (size_t)g.N * g.OH * g.OW, ny = P * OC;
  const size_t nw = (size_t)OC * C * T;
  float *x = malloc(4 * nx), *dy = malloc(4 * ny), *w = malloc(4 * nw), *y = malloc(4 * ny);
  float *dx = malloc(4 * nx), *dw = malloc(4 * nw), *dw0 = malloc(4 * nw);
  uint16_t *x16 = malloc(2 * nx), *dy16 = malloc(2 * ny), *w16 = malloc(2 * nw);
  NhwcGeom d;
  const bool s1 = g.SH == 1 && g.SW == 1;
  CHECK(nhwc_bf16_dgrad_geom(&g, &d) == (s1 ? 0 : -1));
  int32_t *bf = malloc(4 * nhwc_bf16_conv_packed_size(&g));
  int32_t *bd = s1 ? malloc(4 * nhwc_bf16_conv_packed_size(&d)) : NULL;
  fill(x, nx, 1.0f), fill(dy, ny, 0.01f), fill(w, nw, 0.1f), fill(dw0, nw, 0.05f);
  nhwc_bf16_round(x, nx, x16);
  nhwc_bf16_round(dy, ny, dy16);
  for (size_t i = 0; i < nw; i++) w16[i] = bf16_bits_cpu(w[i]);
  memcpy(dw, dw0, 4 * nw);
  omp_set_num_threads(threads);
  CHECK(nhwc_bf16_pack_conv_fwd(&g, w, bf) == 0);
  CHECK(nhwc_bf16_conv_fwd(&g, x16, bf, y, NULL) == 0);
  if (s1) {
    CHECK(d.H == g.OH && d.W == g.OW && d.OH == g.H && d.OW == g.W && d.C == OC && d.OC == C);
    CHECK(nhwc_bf16_pack_conv_dgrad(&g, w, bd) == 0);
    CHECK(nhwc_bf16_conv_fwd(&d, dy16, bd, dx, NULL) == 0);
  }
  CHECK(nhwc_bf16_conv_wgrad(&g, dy16, x16, dw) == 0);
  { /* bf16 outputs: the fp32 ones rounded, bit for bit */
    uint16_t *y16 = malloc(2 * ny), *yr = malloc(2 * ny);
    CHECK(nhwc_bf16_conv_fwd(&g, x16, bf, NULL, y16) == 0);
    nhwc_bf16_round(y, ny, yr);
    CHECK(memcmp(y16, yr, 2 * ny) == 0);
    free(y16), free(yr);
  }
  /* Reference sums: every (output pixel, tap) pair inside the image. */
  double *sy = calloc(ny, 8), *ay = calloc(ny, 8), *sx = calloc(nx, 8), *ax = calloc(nx, 8);
  double *sw = calloc(nw, 8), *aw = calloc(nw, 8);
  size_t nt;
  WinTap *wt = window_taps(&g, &nt);
  for (size_t k = 0; k < nt; k++) {
    const size_t po = wt[k].po, pi = wt[k].pi;
    for (int o = 0; o < OC; o++)
      for (int c = 0; c < C; c++) {
        const size_t wi = ((size_t)o * C + c) * T + wt[k].tap;
        const double xv = bf16_value(x16[pi * C + c]), dv = bf16_value(dy16[po * OC + o]);
        const double wv = bf16_value(w16[wi]);
        sy[po * OC + o] += xv * wv, ay[po * OC + o] += fabs(xv * wv);
        sx[pi * C + c] += dv * wv, ax[pi * C + c] += fabs(dv * wv);
        sw[wi] += dv * xv, aw[wi] += fabs(dv * xv);
      }
  }
  free(wt);
  const double ey = max_rel(y, NULL, sy, ay, ny), ex = s1 ? max_rel(dx, NULL, sx, ax, nx) : 0;
  const double ew = max_rel(dw, dw0, sw, aw, nw);
  CHECK_MSG(ey <= TOL && ex <= TOL && ew <= TOL,
            "%dx%dx%dx%d -> %d, %dx%d stride %dx%d pad %dx%d, threads %d: errors forward %.2e, "
            "data gradient %.2e, weight gradient %.2e",
            g.N, g.H, g.W, C, OC, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, threads, ey, ex, ew);
  free(x), free(dy), free(w), free(y), free(dx), free(dw), free(dw0), free(x16), free(dy16);
  free(w16), free(bf), free(bd), free(sy), free(ay), free(sx), free(ax), free(sw), free(aw);
}

static void test_conv_shapes(void) {
  static const ConvCase cases[] = {
      {2, 7, 5, 6, 34, 3, 3, 1, 1, 1, 1},     /* ResNet's 3x3, odd sizes, images across tiles */
      {1, 9, 9, 64, 64, 3, 3, 1, 1, 1, 1},    /* res2's channels */
      {3, 6, 7, 4, 10, 3, 3, 1, 1, 0, 0},     /* no pad */
      {2, 9, 8, 8, 12, 3, 3, 2, 2, 1, 1},     /* stride 2: forward and weight gradient */
      {2, 5, 6, 10, 6, 1, 3, 1, 1, 0, 1},     /* 1x3 */
      {1, 4, 4, 2, 2, 1, 1, 1, 1, 0, 0},      /* 1x1 through the convolution path */
      {1, 23, 23, 16, 40, 3, 3, 1, 1, 1, 1},  /* weight gradient in chunks (529 pixels) */
      {2, 7, 7, 512, 64, 3, 3, 1, 1, 1, 1},   /* res5's K, the weight pack in one group */
      /* whole AMX steps (C a multiple of 32): stride 2, a partial panel, 3 steps a tap,
       * blocks of 32 rows across images and a partial last block */
      {2, 9, 8, 32, 40, 3, 3, 2, 2, 1, 1},
      {3, 5, 7, 96, 34, 3, 3, 1, 1, 1, 1},
  };
  const int saved = omp_get_max_threads();
  static const int threads[] = {1, 2, 3};
  for (size_t t = 0; t < MOKA_ARRAY_LEN(threads); t++)
    for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++) run_conv_case(&cases[i], threads[t]);
  omp_set_num_threads(saved);
}

/* The stem (few input channels, nhwc_bf16_stem_*): the padded input against index loops
 * (bit for bit, zeros in the padding and past C_x); the forward with a bias, the weight
 * gradient (dw with C_x channels) and the bias gradient against double sums of the same bf16
 * operands; bf16 outputs the fp32 ones rounded. */
typedef struct StemCase {
  int N, H, W, C_x, OC, KH, KW, SH, SW, PH, PW;
} StemCase;

static void run_stem_case(const StemCase *k, int threads) {
  NhwcGeom g = {k->N, k->H, k->W, k->C_x + k->C_x % 2, k->OC, k->KH, k->KW, k->SH, k->SW, k->PH,
                k->PW, 0, 0};
  nhwc_geom_finish(&g);
  CHECK(nhwc_bf16_stem_fits(&g));
  const int T = g.KH * g.KW, C = g.C, Cx = k->C_x, OC = g.OC, Hp = g.H + 2 * g.PH,
            Wp = g.W + 2 * g.PW;
  const size_t nx = (size_t)g.N * Cx * g.H * g.W, P = (size_t)g.N * g.OH * g.OW, ny = P * OC;
  const size_t nw = (size_t)OC * Cx * T, nwp = (size_t)OC * C * T;
  const size_t nxp = nhwc_bf16_stem_input_size(&g);
  float *x = malloc(4 * nx), *dy = malloc(4 * ny), *w = malloc(4 * nw), *wp = calloc(nwp, 4);
  float *y = malloc(4 * ny), *b = malloc(4 * OC), *dw = malloc(4 * nw), *dw0 = malloc(4 * nw);
  float *db = malloc(4 * OC), *db0 = malloc(4 * OC);
  uint16_t *xp = malloc(2 * nxp), *dy16 = malloc(2 * ny);
  int32_t *bf = malloc(4 * nhwc_bf16_conv_packed_size(&g));
  fill(x, nx, 1.0f), fill(dy, ny, 0.01f), fill(w, nw, 0.1f), fill(b, OC, 0.5f);
  fill(dw0, nw, 0.05f), fill(db0, OC, 0.05f);
  nhwc_bf16_round(dy, ny, dy16);
  for (int o = 0; o < OC; o++) /* the weights with the zero channel, as the layer pads them */
    for (int c = 0; c < Cx; c++)
      memcpy(wp + ((size_t)o * C + c) * T, w + ((size_t)o * Cx + c) * T, 4 * (size_t)T);
  memcpy(dw, dw0, 4 * nw), memcpy(db, db0, 4 * OC);
  omp_set_num_threads(threads);
  memset(xp, 0xAB, 2 * nxp); /* every value written */
  nhwc_bf16_stem_input(x, Cx, &g, xp);
  int bad = 0;
  for (int n = 0; n < g.N; n++)
    for (int h = 0; h < Hp; h++)
      for (int ww = 0; ww < Wp; ww++)
        for (int c = 0; c < C; c++) {
          const int ih = h - g.PH, iw = ww - g.PW;
          const bool in = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W && c < Cx;
          const float v = in ? x[(((size_t)n * Cx + c) * g.H + ih) * g.W + iw] : 0.0f;
          const uint16_t want = in ? bf16_bits_cpu(v) : 0;
          bad += xp[(((size_t)n * Hp + h) * Wp + ww) * C + c] != want;
        }
  CHECK_MSG(bad == 0, "stem input %dx%d, %d of %d channels: %d values wrong", g.H, g.W, Cx, C, bad);
  CHECK(nhwc_bf16_pack_conv_fwd(&g, wp, bf) == 0);
  CHECK(nhwc_bf16_stem_fwd(&g, xp, bf, b, y, NULL) == 0);
  CHECK(nhwc_bf16_stem_wgrad(&g, dy16, xp, Cx, dw) == 0);
  CHECK(nhwc_bf16_bias_grad(dy16, (long)P, OC, db) == 0);
  { /* bf16 outputs: the fp32 ones rounded, bit for bit */
    uint16_t *y16 = malloc(2 * ny), *yr = malloc(2 * ny);
    CHECK(nhwc_bf16_stem_fwd(&g, xp, bf, b, NULL, y16) == 0);
    nhwc_bf16_round(y, ny, yr);
    CHECK(memcmp(y16, yr, 2 * ny) == 0);
    free(y16), free(yr);
  }
  double *sy = calloc(ny, 8), *ay = calloc(ny, 8), *sw = calloc(nw, 8), *aw = calloc(nw, 8);
  double *sb = calloc(OC, 8), *ab = calloc(OC, 8);
  for (size_t i = 0; i < ny; i++) sy[i] = b[i % OC], ay[i] = fabs(b[i % OC]);
  for (size_t i = 0; i < ny; i++) sb[i % OC] += bf16_value(dy16[i]), ab[i % OC] += fabs(bf16_value(dy16[i]));
  size_t nt;
  WinTap *wt = window_taps(&g, &nt);
  for (size_t k = 0; k < nt; k++) {
    const size_t po = wt[k].po;
    for (int o = 0; o < OC; o++)
      for (int c = 0; c < Cx; c++) {
        const size_t wi = ((size_t)o * Cx + c) * T + wt[k].tap;
        const float xf = x[(((size_t)wt[k].n * Cx + c) * g.H + wt[k].ih) * g.W + wt[k].iw];
        const double xv = bf16_value(bf16_bits_cpu(xf));
        const double dv = bf16_value(dy16[po * OC + o]), wv = bf16_value(bf16_bits_cpu(w[wi]));
        sy[po * OC + o] += xv * wv, ay[po * OC + o] += fabs(xv * wv);
        sw[wi] += dv * xv, aw[wi] += fabs(dv * xv);
      }
  }
  free(wt);
  const double ey = max_rel(y, NULL, sy, ay, ny), ew = max_rel(dw, dw0, sw, aw, nw);
  const double eb = max_rel(db, db0, sb, ab, (size_t)OC);
  CHECK_MSG(ey <= TOL && ew <= TOL && eb <= TOL,
            "stem %dx%dx%dx%d (%d stored) -> %d, %dx%d stride %dx%d pad %dx%d, threads %d: errors "
            "forward %.2e, weight gradient %.2e, bias gradient %.2e",
            g.N, g.H, g.W, Cx, C, OC, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW, threads, ey, ew, eb);
  free(x), free(dy), free(w), free(wp), free(y), free(b), free(dw), free(dw0), free(db), free(db0);
  free(xp), free(dy16), free(bf), free(sy), free(ay), free(sw), free(aw), free(sb), free(ab);
}

static void test_stem(void) {
  static const StemCase cases[] = {
      {2, 17, 15, 3, 40, 7, 7, 2, 2, 3, 3}, /* ResNet's conv1 on odd sizes */
      {4, 40, 36, 3, 64, 7, 7, 2, 2, 3, 3}, /* its 64 outputs, the weight gradient in chunks */
      {1, 9, 8, 1, 34, 3, 3, 1, 1, 1, 1},   /* one channel (2 stored) */
      {3, 10, 11, 5, 12, 5, 3, 2, 1, 2, 1}, /* 5 channels (6 stored): not the 4-channel path */
      {2, 6, 7, 4, 10, 3, 3, 1, 1, 0, 0},   /* even, no pad */
  };
  const int saved = omp_get_max_threads();
  static const int threads[] = {1, 2, 3};
  for (size_t t = 0; t < MOKA_ARRAY_LEN(threads); t++)
    for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++) run_stem_case(&cases[i], threads[t]);
  omp_set_num_threads(saved);
}

/* The layout changes against index loops: NCHW fp32 -> NHWC bf16 (rounded as
 * bf16_bits_cpu), NHWC fp32 and bf16 -> NCHW fp32 (exact), the subsampling and the strided
 * spreading (zeros between), on sizes that are not multiples of 16. */
static void test_layouts(void) {
  const size_t N = 2, C = 20, H = 7, W = 5, S = H * W;
  float *x = malloc(4 * N * C * S), *back = malloc(4 * N * C * S), *f = malloc(4 * N * C * S);
  uint16_t *h = malloc(2 * N * C * S);
  fill(x, N * C * S, 1.0f);
  nhwc_bf16_from_nchw(x, N, C, S, h);
  int bad = 0;
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++)
      for (size_t q = 0; q < S; q++)
        bad += h[(n * S + q) * C + c] != bf16_bits_cpu(x[(n * C + c) * S + q]);
  CHECK_MSG(bad == 0, "from_nchw: %d values wrong", bad);
  nhwc_to_nchw(NULL, h, N, C, S, back);
  bad = 0;
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++)
      for (size_t q = 0; q < S; q++)
        bad += back[(n * C + c) * S + q] != (float)bf16_value(h[(n * S + q) * C + c]);
  CHECK_MSG(bad == 0, "to_nchw (bf16): %d values wrong", bad);
  for (size_t i = 0; i < N * C * S; i++) f[i] = x[(i * 7) % (N * C * S)];
  nhwc_to_nchw(f, NULL, N, C, S, back);
  bad = 0;
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++)
      for (size_t q = 0; q < S; q++) bad += back[(n * C + c) * S + q] != f[(n * S + q) * C + c];
  CHECK_MSG(bad == 0, "to_nchw (fp32): %d values wrong", bad);
  /* stride 2x3 over 7x5: 4x2 outputs */
  NhwcGeom g = {(int)N, (int)H, (int)W, (int)C, 4, 1, 1, 2, 3, 0, 0, 0, 0};
  nhwc_geom_finish(&g);
  CHECK(g.OH == 4 && g.OW == 2);
  const size_t P = N * g.OH * g.OW;
  uint16_t *sub = malloc(2 * P * C), *sp16 = malloc(2 * N * S * C);
  nhwc_bf16_subsample(h, &g, sub);
  bad = 0;
  for (size_t n = 0; n < N; n++)
    for (int oh = 0; oh < g.OH; oh++)
      for (int ow = 0; ow < g.OW; ow++)
        for (size_t c = 0; c < C; c++)
          bad += sub[((n * g.OH + oh) * g.OW + ow) * C + c] !=
                 h[((n * H + oh * 2) * W + ow * 3) * C + c];
  CHECK_MSG(bad == 0, "subsample: %d values wrong", bad);
  float *d = malloc(4 * P * C);
  for (size_t i = 0; i < P * C; i++) d[i] = (float)bf16_value(sub[i]);
  for (int k = 0; k < 3; k++) { /* bf16 from bf16, bf16 from fp32, fp32 NCHW from bf16 */
    memset(sp16, 0xFF, 2 * N * S * C);
    for (size_t i = 0; i < N * C * S; i++) back[i] = 99.0f;
    nhwc_spread_strided(k == 1 ? d : NULL, k == 1 ? NULL : sub, &g, k < 2 ? sp16 : NULL,
                        k < 2 ? NULL : back);
    bad = 0;
    for (size_t n = 0; n < N; n++)
      for (size_t ih = 0; ih < H; ih++)
        for (size_t iw = 0; iw < W; iw++)
          for (size_t c = 0; c < C; c++) {
            const bool on = ih % 2 == 0 && iw % 3 == 0 && ih / 2 < (size_t)g.OH &&
                            iw / 3 < (size_t)g.OW;
            const double want =
                on ? bf16_value(sub[((n * g.OH + ih / 2) * g.OW + iw / 3) * C + c]) : 0.0;
            const double got = k < 2 ? bf16_value(sp16[((n * H + ih) * W + iw) * C + c])
                                     : back[(n * C + c) * S + ih * W + iw];
            bad += got != want;
          }
    CHECK_MSG(bad == 0, "spread (case %d): %d values wrong", k, bad);
  }
  free(x), free(back), free(f), free(h), free(sub), free(sp16), free(d);
}

/* An odd reduction (or row stride) cannot be read in pairs: refused. */
static void test_odd_refused(void) {
  uint16_t a[6] = {0};
  int32_t b[64] = {0};
  float y[8];
  CHECK(nhwc_bf16_gemm(a, 3, 2, 3, b, 1, y, NULL, 1) == -1);
  CHECK(nhwc_bf16_gemm(a, 3, 2, 2, b, 1, y, NULL, 1) == -1);
  CHECK(strstr(moka_error(), "even") != NULL);
  NhwcGeom g = {1, 3, 3, 3, 2, 3, 3, 1, 1, 1, 1, 0, 0};
  nhwc_geom_finish(&g);
  CHECK(nhwc_bf16_conv_fwd(&g, a, b, y, NULL) == -1);
}

/* The suite, run with each kernel set (bf16_kernel_sets). */
static void suite(void) {
  rng_seed(&g_rng, 777);
  RUN(test_round);
  RUN(test_shapes);
  RUN(test_conv_shapes);
  RUN(test_stem);
  RUN(test_layouts);
  RUN(test_odd_refused);
}

int main(void) {
  moka_set_log_level(1);
  if (!fast_bf16_supported()) {
    fprintf(stderr, "SKIP test_nhwc_bf16: this CPU has no AVX-512 BF16\n");
    return 0;
  }
  bf16_kernel_sets(suite);
  return test_summary();
}
