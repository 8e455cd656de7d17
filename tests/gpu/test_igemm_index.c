/* test_igemm_index.c — the index math of the implicit-GEMM convolution
 * (kernels/conv_igemm_index.h, the same functions the CUDA kernels in
 * kernels/conv_igemm.cu call) checked on the CPU: needs no GPU and runs in
 * `make test`.
 *
 * For many awkward geometries (odd H/W, 1x1, the 7x7/2 stem, stride 2 and 3,
 * pad 0..3, dilation 2 and 3, groups 2 and 3, batch 1..3, kernels larger
 * than the input when padded):
 *   1. every (k, n) of the forward GEMM's implicit col matrix against a naive
 *      im2col written the way Caffe writes it (which x element, or padding);
 *   2. every (k, n) of the data gradient's gather against col2im's scatter
 *      (which dy element a pixel receives through a tap, or none);
 *   3. the three convolutions computed on the host as implicit GEMMs with
 *      these functions (plain loops over m, n, k, double sums) against a
 *      direct convolution and its direct backward (double): the composed
 *      offsets (weights, outputs, group offsets) are right, not only the
 *      per-element gathers. Exact in double up to summation order: 1e-12.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "../../kernels/conv_igemm_index.h"

static unsigned long long g_lcg = 12345;
static int rnd(int n) { /* [0, n) */
  g_lcg = g_lcg * 6364136223846793005ULL + 1442695040888963407ULL;
  return (int)((g_lcg >> 33) % (unsigned long long)n);
}
static double rndf(void) { return rnd(2001) / 1000.0 - 1.0; }

typedef struct Case {
  int num, C, H, W, OC, G, KH, KW, PH, PW, SH, SW, DH, DW;
} Case;

/* Caffe's output size; 0 when the kernel does not fit. */
static int out_size(int in, int k, int p, int s, int d) {
  const int ext = d * (k - 1) + 1;
  if (in + 2 * p < ext) return 0;
  return (in + 2 * p - ext) / s + 1;
}

static bool make_geom(const Case *c, IgemmGeom *g) {
  const int OH = out_size(c->H, c->KH, c->PH, c->SH, c->DH);
  const int OW = out_size(c->W, c->KW, c->PW, c->SW, c->DW);
  if (OH <= 0 || OW <= 0) return false;
  *g = igemm_geom(c->num, c->C, c->H, c->W, c->OC, c->G, OH, OW, c->KH, c->KW, c->PH, c->PW,
                  c->SH, c->SW, c->DH, c->DW);
  return true;
}

/* 1. the forward gather against Caffe's im2col indexing. */
static int check_fwd_gather(const IgemmGeom *g) {
  int bad = 0;
  for (int grp = 0; grp < g->G; grp++)
    for (int img = 0; img < g->num; img++)
      for (int c = 0; c < g->Cg; c++)
        for (int kh = 0; kh < g->KH; kh++)
          for (int kw = 0; kw < g->KW; kw++)
            for (int oh = 0; oh < g->OH; oh++)
              for (int ow = 0; ow < g->OW; ow++) {
                const int h = oh * g->SH - g->PH + kh * g->DH;
                const int w = ow * g->SW - g->PW + kw * g->DW;
                long long want = -1;
                if (h >= 0 && h < g->H && w >= 0 && w < g->W)
                  want = (((long long)img * g->C + grp * g->Cg + c) * g->H + h) * g->W + w;
                const int k = (c * g->KH + kh) * g->KW + kw;
                const int n = (img * g->OH + oh) * g->OW + ow;
                const long long got =
                    igemm_fwd_src(g, igemm_out_pix(g, grp, n), igemm_fwd_tap(g, k));
                if (got != want && bad++ < 3)
                  fprintf(stderr, "fwd gather: grp %d k %d n %d: got %lld want %lld\n", grp, k, n,
                          got, want);
              }
  return bad;
}

/* 2. the data-gradient gather against col2im's scatter: pixel (h,w) gets
 * dy(oh,ow) through tap (kh,kw) iff the forward reads (h,w) at (oh,ow,kh,kw). */
static int check_dgrad_gather(const IgemmGeom *g) {
  const size_t taps = (size_t)g->KHW * g->HW;
  long long *src = malloc(taps * sizeof *src); /* (KH,KW,H,W): oh*OW+ow or -1 */
  int bad = 0;
  for (size_t i = 0; i < taps; i++) src[i] = -1;
  for (int kh = 0; kh < g->KH; kh++)
    for (int kw = 0; kw < g->KW; kw++)
      for (int oh = 0; oh < g->OH; oh++)
        for (int ow = 0; ow < g->OW; ow++) {
          const int h = oh * g->SH - g->PH + kh * g->DH;
          const int w = ow * g->SW - g->PW + kw * g->DW;
          if (h < 0 || h >= g->H || w < 0 || w >= g->W) continue;
          long long *s = &src[((size_t)(kh * g->KW + kw) * g->H + h) * g->W + w];
          if (*s != -1) bad++; /* the scatter is injective for a fixed tap */
          *s = (long long)oh * g->OW + ow;
        }
  for (int grp = 0; grp < g->G; grp++)
    for (int img = 0; img < g->num; img++)
      for (int oc = 0; oc < g->OCg; oc++)
        for (int kh = 0; kh < g->KH; kh++)
          for (int kw = 0; kw < g->KW; kw++)
            for (int h = 0; h < g->H; h++)
              for (int w = 0; w < g->W; w++) {
                const long long s = src[((size_t)(kh * g->KW + kw) * g->H + h) * g->W + w];
                const long long want =
                    s < 0 ? -1 : ((long long)img * g->OC + grp * g->OCg + oc) * g->OHW + s;
                const int k = (oc * g->KH + kh) * g->KW + kw;
                const int n = (img * g->H + h) * g->W + w;
                const long long got =
                    igemm_dgrad_src(g, igemm_in_pix(g, grp, n), igemm_dgrad_tap(g, k));
                if (got != want && bad++ < 3)
                  fprintf(stderr, "dgrad gather: grp %d k %d n %d: got %lld want %lld\n", grp, k,
                          n, got, want);
              }
  free(src);
  return bad;
}

/* 3. implicit GEMMs on the host against the direct convolution. */
static double max_rel(const double *a, const double *b, size_t n) {
  double m = 0, s = 0;
  for (size_t i = 0; i < n; i++) s = fmax(s, fabs(b[i]));
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]));
  return s > 0 ? m / s : m;
}

static bool check_gemms(const IgemmGeom *g) {
  const size_t nx = (size_t)g->num * g->C * g->HW, ny = (size_t)g->num * g->OC * g->OHW;
  const size_t nw = (size_t)g->OC * g->Cg * g->KHW;
  double *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w), *dy = malloc(ny * sizeof *dy);
  double *y0 = calloc(ny, sizeof *y0), *y1 = calloc(ny, sizeof *y1);
  double *dx0 = calloc(nx, sizeof *dx0), *dx1 = calloc(nx, sizeof *dx1);
  double *dw0 = calloc(nw, sizeof *dw0), *dw1 = calloc(nw, sizeof *dw1);
  for (size_t i = 0; i < nx; i++) x[i] = rndf();
  for (size_t i = 0; i < nw; i++) w[i] = rndf();
  for (size_t i = 0; i < ny; i++) dy[i] = rndf();
  /* direct: y, and the backward scatter into dx and dw */
  for (int img = 0; img < g->num; img++)
    for (int oc = 0; oc < g->OC; oc++) {
      const int grp = oc / g->OCg;
      for (int oh = 0; oh < g->OH; oh++)
        for (int ow = 0; ow < g->OW; ow++) {
          const size_t yi = (((size_t)img * g->OC + oc) * g->OH + oh) * g->OW + ow;
          for (int c = 0; c < g->Cg; c++)
            for (int kh = 0; kh < g->KH; kh++)
              for (int kw = 0; kw < g->KW; kw++) {
                const int h = oh * g->SH - g->PH + kh * g->DH;
                const int ww = ow * g->SW - g->PW + kw * g->DW;
                if (h < 0 || h >= g->H || ww < 0 || ww >= g->W) continue;
                const size_t xi = (((size_t)img * g->C + grp * g->Cg + c) * g->H + h) * g->W + ww;
                const size_t wi = (((size_t)oc * g->Cg + c) * g->KH + kh) * g->KW + kw;
                y0[yi] += w[wi] * x[xi];
                dx0[xi] += w[wi] * dy[yi];
                dw0[wi] += dy[yi] * x[xi];
              }
        }
    }
  /* implicit GEMMs, as the kernels compose them */
  const int Kf = g->Cg * g->KHW, Nf = g->num * g->OHW;
  const int Kd = g->OCg * g->KHW, Nd = g->num * g->HW;
  for (int grp = 0; grp < g->G; grp++) {
    for (int m = 0; m < g->OCg; m++) /* forward: M = OCg, N = num*OHW, K = Cg*KHW */
      for (int n = 0; n < Nf; n++) {
        const IgemmPix p = igemm_out_pix(g, grp, n);
        double s = 0;
        for (int k = 0; k < Kf; k++) {
          const long long xi = igemm_fwd_src(g, p, igemm_fwd_tap(g, k));
          if (xi >= 0) s += w[igemm_fwd_w(g, grp, m, k)] * x[xi];
        }
        y1[igemm_fwd_dst(g, grp, m, n)] = s;
      }
    for (int m = 0; m < g->Cg; m++) /* data gradient: M = Cg, N = num*HW, K = OCg*KHW */
      for (int n = 0; n < Nd; n++) {
        const IgemmPix p = igemm_in_pix(g, grp, n);
        double s = 0;
        for (int k = 0; k < Kd; k++) {
          const IgemmTap t = igemm_dgrad_tap(g, k);
          const long long di = igemm_dgrad_src(g, p, t);
          if (di >= 0) s += w[igemm_dgrad_w(g, grp, m, t)] * dy[di];
        }
        dx1[igemm_dgrad_dst(g, grp, m, n)] = s;
      }
    for (int m = 0; m < g->OCg; m++) /* weight gradient: M = OCg, N = Cg*KHW, K = num*OHW */
      for (int n = 0; n < Kf; n++) {
        const IgemmTap t = igemm_fwd_tap(g, n);
        double s = 0;
        for (int k = 0; k < Nf; k++) {
          const long long xi = igemm_fwd_src(g, igemm_out_pix(g, grp, k), t);
          if (xi >= 0) s += dy[igemm_wgrad_dy(g, grp, m, k)] * x[xi];
        }
        dw1[igemm_fwd_w(g, grp, m, n)] = s;
      }
  }
  const double ef = max_rel(y1, y0, ny), ed = max_rel(dx1, dx0, nx), ew = max_rel(dw1, dw0, nw);
  const bool ok = ef < 1e-12 && ed < 1e-12 && ew < 1e-12;
  if (!ok)
    fprintf(stderr, "implicit GEMM vs direct: fwd %.3g dgrad %.3g wgrad %.3g\n", ef, ed, ew);
  free(x), free(w), free(dy), free(y0), free(y1), free(dx0), free(dx1), free(dw0), free(dw1);
  return ok;
}

static void run_case(const Case *c, int *n_run) {
  IgemmGeom g;
  if (!make_geom(c, &g)) return;
  (*n_run)++;
  const int bf = check_fwd_gather(&g), bd = check_dgrad_gather(&g);
  const bool gm = check_gemms(&g);
  CHECK_MSG(bf == 0 && bd == 0 && gm,
            "geometry N%d C%d %dx%d OC%d G%d k%dx%d p%dx%d s%dx%d d%dx%d: %d forward, %d dgrad "
            "index errors%s",
            c->num, c->C, c->H, c->W, c->OC, c->G, c->KH, c->KW, c->PH, c->PW, c->SH, c->SW,
            c->DH, c->DW, bf, bd, gm ? "" : ", GEMM mismatch");
}

static void test_named_geometries(void) {
  static const Case cases[] = {
      /* num C H W OC G KH KW PH PW SH SW DH DW */
      {1, 3, 23, 21, 4, 1, 7, 7, 3, 3, 2, 2, 1, 1},  /* the 7x7/2 stem, odd input */
      {2, 5, 7, 9, 6, 1, 1, 1, 0, 0, 1, 1, 1, 1},    /* 1x1 */
      {2, 5, 7, 9, 6, 1, 1, 1, 0, 0, 2, 2, 1, 1},    /* 1x1 stride 2 (ResNet's branch1) */
      {1, 6, 9, 7, 4, 2, 3, 3, 1, 1, 1, 1, 1, 1},    /* groups 2 */
      {2, 9, 8, 8, 6, 3, 3, 3, 1, 1, 2, 2, 1, 1},    /* groups 3, stride 2 */
      {1, 3, 11, 10, 5, 1, 3, 3, 2, 2, 1, 1, 2, 2},  /* dilation 2 */
      {1, 3, 11, 13, 5, 1, 3, 3, 0, 3, 3, 2, 3, 1},  /* anisotropic everything */
      {3, 7, 5, 5, 9, 1, 5, 5, 0, 0, 1, 1, 1, 1},    /* kernel as large as the input */
      {1, 2, 2, 3, 3, 1, 5, 3, 3, 1, 2, 1, 1, 1},    /* kernel larger than the input, padded */
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1},    /* 1x1x1 */
      {2, 4, 6, 6, 4, 2, 2, 2, 1, 0, 2, 3, 1, 2},    /* even kernel */
  };
  int n_run = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], &n_run);
  CHECK(n_run == (int)(sizeof cases / sizeof cases[0]));
}

static void test_random_geometries(void) {
  int n_run = 0;
  for (int it = 0; it < 400; it++) {
    Case c;
    c.G = 1 + rnd(3);
    c.num = 1 + rnd(3);
    c.C = c.G * (1 + rnd(3));
    c.OC = c.G * (1 + rnd(3));
    c.H = 1 + rnd(9);
    c.W = 1 + rnd(9);
    c.KH = 1 + rnd(4);
    c.KW = 1 + rnd(4);
    c.PH = rnd(4);
    c.PW = rnd(4);
    c.SH = 1 + rnd(3);
    c.SW = 1 + rnd(3);
    c.DH = 1 + rnd(3);
    c.DW = 1 + rnd(3);
    run_case(&c, &n_run);
  }
  CHECK_MSG(n_run > 150, "only %d random geometries were valid", n_run);
}

int main(void) {
  RUN(test_named_geometries);
  RUN(test_random_geometries);
  return test_summary();
}
