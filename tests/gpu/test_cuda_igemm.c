/* test_cuda_igemm.c — moka's implicit-GEMM tensor-core convolutions
 * (kernels/conv_igemm.cu: WMMA, bf16 and TF32; kernels/conv_nhwc.cu: the
 * NHWC bf16 kernel of MOKA_CONV_NHWC=1, forced on or off here with
 * moka_cuda_nhwc_force whatever the environment says), cuDNN's bf16 engine
 * (moka_cudnn_conv_*_prec) and the bf16/TF32 GEMM of InnerProduct
 * (kernels/gemm_lowp.cu), against a direct convolution on the host. Needs a
 * GPU (sm_80+); without one it prints "SKIP: ..." and exits 0.
 *
 *   test_cuda_igemm              the checks below
 *   test_cuda_igemm quick        moka's kernels only (run under compute-sanitizer)
 *   test_cuda_igemm nhwc         the NHWC kernel only (compute-sanitizer racecheck)
 *   test_cuda_igemm bench [B] [I] per-layer benchmark: every distinct
 *                                ResNet-50 convolution shape at batch B (64),
 *                                I timed iterations (5): forward and backward
 *                                ms of moka bf16 (igemm), moka bf16 NHWC
 *                                (conv_nhwc.cu where it applies), cuDNN bf16, moka fp32
 *                                (im2col + SGEMM), cuDNN fp32, and moka bf16
 *                                with each tile shape forced (fwd_t128x64=...; the NHWC
 *                                kernel's: fwd_n128x64=...),
 *                                and the fp32<->bf16 conversions the cuDNN bf16
 *                                engine includes, timed alone (fwd_cvt, bwd_cvt),
 *                                one "igemm_bench ..." line per shape
 *                                (summarize.py reads them).
 *
 * Inputs. x, W and dy are drawn on the bf16 grid (uniform values rounded to
 * bf16), so rounding them to bf16 or to TF32 (which has more mantissa) is
 * exact: the kernels' products are the exact products, and the reference is
 * the exact sum (double) of the same terms. What is left is fp32
 * accumulation in some order (tensor cores may truncate instead of round),
 * bounded for every element by
 *     |got - ref| <= (K + 64) * 2^-23 * S,
 * S = sum |terms| (+ |bias| or |initial gradient| where added), K the number
 * of terms, +64 for the split-K partial sums and the bias/accumulate add.
 * A wrong index changes at least one whole term in most elements, so the
 * normalised mean squared error is checked too: NMSE <= 1e-8 (fp32
 * reordering gives ~1e-13; one wrong term in a K = 600 sum gives ~1e-5).
 * cuDNN's bf16 engine also rounds its outputs (y, dx, dW) to bf16 (2^-9 of
 * the sum, which S bounds; and its algorithm may be a Winograd or FFT one):
 * +2^-7 S per element, NMSE <= 1e-4 (a plumbing error gives NMSE ~1).
 * Non-grid inputs: one bf16 case checks that x and W are rounded (to nearest
 * even) as read: reference from rounded inputs.
 * The layers: Convolution (both engines) and InnerProduct built with
 * layer_create and run on CUDA with fast_set_precision("bf16"/"tf32")
 * against the fp32 CPU reference: NMSE within 1e-14 .. 1e-4 (bf16 rounding
 * gives ~1e-6; fp32 would give < 1e-14 on these sizes: the low precision
 * really ran).
 * Each direction also runs twice: the weight and data gradients must be
 * bitwise identical (deterministic split-K).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#ifndef MOKA_WITH_CUDA
int main(void) {
  printf("SKIP: no CUDA device (this moka was built without CUDA: CUDA=0 or no nvcc)\n");
  return test_summary();
}
#else

#include "layer.h"
#include "layers/fast.h"
#include "bf16_host.h"
#include "gputest.h"
#include "moka_cuda.h"
#include "net_cuda.h"
#include "prototxt.h"
#include "rng.h"
#include "util.h"

static MokaCuda *ctx;

/* ---- host helpers --------------------------------------------------------------------------- */


static void fill(Rng *r, float *p, size_t n, bool grid) {
  for (size_t i = 0; i < n; i++) {
    const float v = rng_uniform(r, -1.0f, 1.0f);
    p[i] = grid ? round_bf16(v) : v;
  }
}

static float *dev_upload(const float *h, size_t n) {
  void *d = NULL;
  if (moka_dev_alloc(&d, (n ? n : 1) * sizeof(float), "test buffer")) return NULL;
  if (n && moka_h2d(ctx->stream, d, h, n * sizeof(float))) return NULL;
  return d;
}

static float *download(const float *d, size_t n) {
  float *h = malloc((n ? n : 1) * sizeof(float));
  if (n && moka_d2h(ctx->stream, h, d, n * sizeof(float))) {
    free(h);
    return NULL;
  }
  return h;
}

typedef struct Shape {
  const char *name;
  int num, C, H, W, OC, G, KH, KW, PH, PW, SH, SW, DH, DW;
  bool bias;
} Shape;

static MokaConvGeom geom_of(const Shape *s) {
  MokaConvGeom g;
  g.num = s->num, g.channels = s->C, g.height = s->H, g.width = s->W;
  g.num_output = s->OC, g.group = s->G;
  g.kernel_h = s->KH, g.kernel_w = s->KW, g.pad_h = s->PH, g.pad_w = s->PW;
  g.stride_h = s->SH, g.stride_w = s->SW, g.dilation_h = s->DH, g.dilation_w = s->DW;
  g.out_h = (s->H + 2 * s->PH - (s->DH * (s->KH - 1) + 1)) / s->SH + 1;
  g.out_w = (s->W + 2 * s->PW - (s->DW * (s->KW - 1) + 1)) / s->SW + 1;
  return g;
}

/* The reference: direct convolution in double, with S = sum |terms| per
 * output element. dw and db start from dw0/db0 (they accumulate). */
typedef struct Ref {
  double *y, *sy, *dx, *sdx, *dw, *sdw, *db;
} Ref;

static void reference(const MokaConvGeom *g, const float *x, const float *w, const float *bias,
                      const float *dy, const float *dw0, const float *db0, Ref *r) {
  const int Cg = g->channels / g->group, OCg = g->num_output / g->group;
  const size_t nx = (size_t)g->num * g->channels * g->height * g->width;
  const size_t ny = (size_t)g->num * g->num_output * g->out_h * g->out_w;
  const size_t nw = (size_t)g->num_output * Cg * g->kernel_h * g->kernel_w;
  r->y = calloc(ny, sizeof(double)), r->sy = calloc(ny, sizeof(double));
  r->dx = calloc(nx, sizeof(double)), r->sdx = calloc(nx, sizeof(double));
  r->dw = calloc(nw, sizeof(double)), r->sdw = calloc(nw, sizeof(double));
  r->db = calloc((size_t)g->num_output, sizeof(double));
  for (size_t i = 0; i < nw; i++) r->dw[i] = dw0[i], r->sdw[i] = fabs(dw0[i]);
  for (int oc = 0; oc < g->num_output; oc++) r->db[oc] = db0[oc];
  for (int n = 0; n < g->num; n++)
    for (int oc = 0; oc < g->num_output; oc++) {
      const int grp = oc / OCg;
      for (int oh = 0; oh < g->out_h; oh++)
        for (int ow = 0; ow < g->out_w; ow++) {
          const size_t yi = (((size_t)n * g->num_output + oc) * g->out_h + oh) * g->out_w + ow;
          double s = bias ? bias[oc] : 0, a = bias ? fabs(bias[oc]) : 0;
          const double d = dy[yi];
          r->db[oc] += d;
          for (int c = 0; c < Cg; c++)
            for (int kh = 0; kh < g->kernel_h; kh++) {
              const int h = oh * g->stride_h - g->pad_h + kh * g->dilation_h;
              if (h < 0 || h >= g->height) continue;
              for (int kw = 0; kw < g->kernel_w; kw++) {
                const int ww = ow * g->stride_w - g->pad_w + kw * g->dilation_w;
                if (ww < 0 || ww >= g->width) continue;
                const size_t xi =
                    (((size_t)n * g->channels + grp * Cg + c) * g->height + h) * g->width + ww;
                const size_t wi = (((size_t)oc * Cg + c) * g->kernel_h + kh) * g->kernel_w + kw;
                const double t = (double)w[wi] * x[xi];
                s += t, a += fabs(t);
                r->dx[xi] += (double)w[wi] * d, r->sdx[xi] += fabs((double)w[wi] * d);
                r->dw[wi] += d * x[xi], r->sdw[wi] += fabs(d * x[xi]);
              }
            }
          r->y[yi] = s, r->sy[yi] = a;
        }
    }
}

static void ref_free(Ref *r) {
  free(r->y), free(r->sy), free(r->dx), free(r->sdx), free(r->dw), free(r->sdw), free(r->db);
}

/* Per-element bound ((K + 64) * 2^-23 + out_rel) * S and NMSE <= nmse_max. */
static bool check_arr(const char *what, const float *got, const double *ref, const double *S,
                      size_t n, long long K, double out_rel, double nmse_max) {
  double num = 0, den = 0;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)got[i] - ref[i];
    num += d * d, den += ref[i] * ref[i];
    const double bound = ((double)(K + 64) * ldexp(1.0, -23) + out_rel) * S[i] + 1e-30;
    if (!(fabs(d) <= bound)) {
      if (!bad) first = i;
      bad++;
    }
  }
  const double e = den > 0 ? num / den : num;
  CHECK_MSG(bad == 0 && e <= nmse_max,
            "%s: %zu of %zu elements out of bound (first %zu: got %.9g want %.9g, S %.3g, K %lld), "
            "NMSE %.3g (max %.1g)",
            what, bad, n, first, n ? (double)got[first] : 0.0, n ? ref[first] : 0.0,
            n ? S[first] : 0.0, K, e, nmse_max);
  return bad == 0 && e <= nmse_max;
}

/* ---- the shapes ------------------------------------------------------------------------------ */

static const Shape shapes[] = {
    /* name                 num C  H   W  OC  G KH KW PH PW SH SW DH DW bias */
    {"stem 7x7/2 3->64", 2, 3, 45, 45, 64, 1, 7, 7, 3, 3, 2, 2, 1, 1, true},
    {"3x3 odd 13x11 20->36", 2, 20, 13, 11, 36, 1, 3, 3, 1, 1, 1, 1, 1, 1, true},
    {"1x1 72->40 9x7", 3, 72, 9, 7, 40, 1, 1, 1, 0, 0, 1, 1, 1, 1, false},
    {"1x1/2 48->96 15x15", 2, 48, 15, 15, 96, 1, 1, 1, 0, 0, 2, 2, 1, 1, false},
    {"3x3/2 pad 1 batch 1", 1, 24, 17, 17, 24, 1, 3, 3, 1, 1, 2, 2, 1, 1, true},
    {"groups 2 18->22", 2, 18, 10, 10, 22, 2, 3, 3, 1, 1, 1, 1, 1, 1, true},
    {"dilation 2", 1, 12, 14, 13, 20, 1, 3, 3, 2, 2, 1, 1, 2, 2, false},
    {"5x5 pad 0 batch 1", 1, 7, 12, 12, 9, 1, 5, 5, 0, 0, 1, 1, 1, 1, true},
    {"several tiles 64->160", 2, 64, 28, 28, 160, 1, 3, 3, 1, 1, 1, 1, 1, 1, false},
    {"split-K 16->32 28x28", 4, 16, 28, 28, 32, 1, 3, 3, 1, 1, 1, 1, 1, 1, true},
    {"groups 2 1x3 s2x1", 2, 8, 11, 9, 6, 2, 1, 3, 0, 1, 2, 1, 1, 1, true},
    {"pad 3 3x3 dil 3 groups 3", 1, 9, 8, 10, 15, 3, 3, 3, 3, 3, 1, 2, 3, 2, false},
    /* channel counts that are multiples of 8: the NHWC kernel's shapes */
    {"3x3 dil 2 pad 2 16->24", 1, 16, 10, 9, 24, 1, 3, 3, 2, 2, 1, 1, 2, 2, true},
    {"1x1 256->64 7x7 batch 3", 3, 256, 7, 7, 64, 1, 1, 1, 0, 0, 1, 1, 1, 1, false},
    {"3x3 64->136 14x14 batch 8", 8, 64, 14, 14, 136, 1, 3, 3, 1, 1, 1, 1, 1, 1, true},
    {"1x1/2 128->256 14x14 batch 5", 5, 128, 14, 14, 256, 1, 1, 1, 0, 0, 2, 2, 1, 1, false},
};

typedef enum Engine { ENG_IGEMM, ENG_NHWC, ENG_CUDNN } Engine;
static const char *const eng_names[] = {"igemm", "nhwc", "cuDNN"};

/* One shape, one engine, one precision: forward + backward against the reference. */
static void run_shape(const Shape *s, Engine eng, MokaConvPrec prec) {
  const MokaConvGeom g = geom_of(s);
  const int Cg = s->C / s->G;
  const size_t nx = (size_t)g.num * g.channels * g.height * g.width;
  const size_t ny = (size_t)g.num * g.num_output * g.out_h * g.out_w;
  const size_t nw = (size_t)g.num_output * Cg * g.kernel_h * g.kernel_w;
  const size_t nb = (size_t)g.num_output;
  Rng r;
  rng_seed(&r, 1234);
  float *x = malloc(nx * 4), *w = malloc(nw * 4), *bias = malloc(nb * 4), *dy = malloc(ny * 4);
  float *dw0 = malloc(nw * 4), *db0 = malloc(nb * 4);
  fill(&r, x, nx, true), fill(&r, w, nw, true), fill(&r, dy, ny, true);
  fill(&r, bias, nb, false), fill(&r, dw0, nw, false), fill(&r, db0, nb, false);
  Ref ref;
  reference(&g, x, w, s->bias ? bias : NULL, dy, dw0, db0, &ref);
  float *d_x = dev_upload(x, nx), *d_w = dev_upload(w, nw), *d_b = dev_upload(bias, nb);
  float *d_dy = dev_upload(dy, ny);
  float *d_y = dev_upload(dy, ny);  /* (N,OC,OH,OW), garbage: overwritten */
  float *d_dx = dev_upload(x, nx);  /* (N,C,H,W), garbage: overwritten */
  float *d_dw = dev_upload(dw0, nw), *d_db = dev_upload(db0, nb);
  REQUIRE(d_x && d_w && d_b && d_dy && d_y && d_dx && d_dw && d_db);
  MokaCudnnConv *plan = NULL;
  char what[160];
  const bool cud = eng == ENG_CUDNN;
  const char *en = eng_names[eng];
  moka_cuda_nhwc_force(eng == ENG_NHWC); /* the WMMA kernel alone, or NHWC where it applies */
  const double out_rel = cud && prec == MOKA_CONV_BF16 ? ldexp(1.0, -7) : 0.0;
  const double nmse_max = cud && prec == MOKA_CONV_BF16 ? 1e-4 : 1e-8;
  int rc = cud ? moka_cudnn_conv_forward_prec(ctx, &plan, &g, prec, d_x, d_w,
                                              s->bias ? d_b : NULL, d_y)
               : moka_cuda_igemm_conv_forward(ctx, &g, prec, d_x, d_w, s->bias ? d_b : NULL, d_y);
  if (!rc) rc = moka_cuda_sync(ctx);
  CHECK_MSG(rc == 0, "%s %s %s forward: %s", s->name, en,
            moka_conv_prec_name(prec), moka_error());
  if (!rc) {
    float *y = download(d_y, ny);
    snprintf(what, sizeof what, "%s %s %s forward y", s->name, en,
             moka_conv_prec_name(prec));
    check_arr(what, y, ref.y, ref.sy, ny, (long long)Cg * s->KH * s->KW + 1, out_rel, nmse_max);
    free(y);
  }
  float *dx1 = NULL, *dw1 = NULL;
  for (int rep = 0; rep < 2; rep++) {
    if (moka_h2d(ctx->stream, d_dw, dw0, nw * 4) || moka_h2d(ctx->stream, d_db, db0, nb * 4))
      CHECK(false);
    rc = cud ? moka_cudnn_conv_backward_prec(ctx, &plan, &g, prec, d_x, d_w, d_dy, d_dx, d_dw,
                                             d_db)
             : moka_cuda_igemm_conv_backward(ctx, &g, prec, d_x, d_w, d_dy, d_dx, d_dw, d_db);
    if (!rc) rc = moka_cuda_sync(ctx);
    CHECK_MSG(rc == 0, "%s %s %s backward: %s", s->name, en,
              moka_conv_prec_name(prec), moka_error());
    if (rc) break;
    float *dx = download(d_dx, nx), *dw = download(d_dw, nw), *db = download(d_db, nb);
    if (rep == 0) {
      snprintf(what, sizeof what, "%s %s %s dx", s->name, en,
               moka_conv_prec_name(prec));
      check_arr(what, dx, ref.dx, ref.sdx, nx, (long long)(s->OC / s->G) * s->KH * s->KW,
                out_rel, nmse_max);
      snprintf(what, sizeof what, "%s %s %s dW", s->name, en,
               moka_conv_prec_name(prec));
      check_arr(what, dw, ref.dw, ref.sdw, nw, (long long)g.num * g.out_h * g.out_w + 1, out_rel,
                nmse_max);
      double maxd = 0, maxs = 0;
      for (size_t i = 0; i < nb; i++)
        maxd = fmax(maxd, fabs(db[i] - ref.db[i])), maxs = fmax(maxs, fabs(ref.db[i]));
      CHECK_MSG(maxd <= 1e-5 * (maxs + 1), "%s db: max error %.3g", s->name, maxd);
      dx1 = dx, dw1 = dw;
    } else {
      if (!cud) /* moka's kernels are deterministic; cuDNN's choice may not be */
        CHECK_MSG(!memcmp(dx, dx1, nx * 4) && !memcmp(dw, dw1, nw * 4),
                  "%s %s %s: the backward pass is not bitwise reproducible", s->name, en,
                  moka_conv_prec_name(prec));
      free(dx), free(dw);
    }
    free(db);
  }
  free(dx1), free(dw1);
  moka_cuda_nhwc_force(-1);
  moka_cudnn_conv_free(plan);
  moka_dev_free(d_x), moka_dev_free(d_w), moka_dev_free(d_b), moka_dev_free(d_dy);
  moka_dev_free(d_y), moka_dev_free(d_dx), moka_dev_free(d_dw), moka_dev_free(d_db);
  ref_free(&ref);
  free(x), free(w), free(bias), free(dy), free(dw0), free(db0);
}

static void test_igemm_bf16(void) {
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    run_shape(&shapes[i], ENG_IGEMM, MOKA_CONV_BF16);
}

static void test_igemm_tf32(void) {
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    run_shape(&shapes[i], ENG_IGEMM, MOKA_CONV_TF32);
}

/* `test_cuda_igemm nhwc` (under racecheck, which is slow): the small shapes only */
static bool g_small_only;

/* conv_nhwc.cu on every shape (the directions it does not take run on the WMMA kernel) */
static void test_nhwc_bf16(void) {
  int taken = 0;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const MokaConvGeom g = geom_of(&shapes[i]);
    if (g_small_only && (long long)g.num * g.num_output * g.out_h * g.out_w > 120000) continue;
    moka_cuda_nhwc_force(1);
    taken += moka_cuda_nhwc_applies(&g, MOKA_NHWC_FWD) + moka_cuda_nhwc_applies(&g, MOKA_NHWC_DGRAD) +
             moka_cuda_nhwc_applies(&g, MOKA_NHWC_WGRAD);
    moka_cuda_nhwc_force(-1);
    run_shape(&shapes[i], ENG_NHWC, MOKA_CONV_BF16);
  }
  CHECK_MSG(taken >= (g_small_only ? 8 : 20), "the NHWC kernel took only %d directions of the shapes",
            taken);
  /* and the switch is honoured: off means no shape goes there */
  moka_cuda_nhwc_force(0);
  const MokaConvGeom g0 = geom_of(&shapes[sizeof shapes / sizeof shapes[0] - 1]);
  CHECK(!moka_cuda_nhwc_applies(&g0, MOKA_NHWC_FWD));
  moka_cuda_nhwc_force(-1);
}

/* ---- the NHWC kernel with channels-last bf16 activations in and out (moka_cuda_nhwc_*_fmt) -- */

/* got is want rounded to bf16: within half an ulp (2^-9 relative; 2^-8 allowed) */
static void check_rounded(const char *what, const float *got, const float *want, size_t n) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; i++)
    if (!(fabsf(got[i] - want[i]) <= ldexpf(fabsf(want[i]), -8))) {
      if (!bad) first = i;
      bad++;
    }
  CHECK_MSG(bad == 0, "%s: %zu of %zu values are not the fp32 result rounded to bf16 (first %zu: "
            "%.9g vs %.9g)", what, bad, n, first, bad ? got[first] : 0.0f, bad ? want[first] : 0.0f);
}

/* One shape: the fp32-format calls as the reference, then x, dy as bf16 NHWC in and y, dx as
 * bf16 NHWC out: the same sums (same kernel, same bf16 inputs), so y and dx are the
 * reference rounded to bf16 and dw is bit for bit the same. */
static void nhwc_formats(const Shape *sp) {
  const MokaConvGeom g = geom_of(sp);
  const size_t N = g.num, C = g.channels, OC = g.num_output;
  const size_t HW = (size_t)g.height * g.width, OHW = (size_t)g.out_h * g.out_w;
  const size_t nx = N * C * HW, ny = N * OC * OHW, nw = OC * C * g.kernel_h * g.kernel_w;
  moka_cuda_nhwc_force(1);
  const bool ok_f = moka_cuda_nhwc_applies(&g, MOKA_NHWC_FWD);
  const bool ok_d = moka_cuda_nhwc_applies(&g, MOKA_NHWC_DGRAD);
  REQUIRE(ok_f && ok_d && moka_cuda_nhwc_applies(&g, MOKA_NHWC_WGRAD));
  Rng r;
  rng_seed(&r, 4321);
  float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4), *b = malloc(OC * 4);
  fill(&r, x, nx, true), fill(&r, w, nw, true), fill(&r, dy, ny, true), fill(&r, b, OC, false);
  float *zero = calloc(nw, 4);
  uint16_t *hx = nchw_to_nhwc_bf16(x, N, C, HW), *hdy = nchw_to_nhwc_bf16(dy, N, OC, OHW);
  float *d_x = dev_upload(x, nx), *d_w = dev_upload(w, nw), *d_dy = dev_upload(dy, ny);
  float *d_b = dev_upload(b, OC), *d_y = dev_upload(dy, ny), *d_dx = dev_upload(x, nx);
  float *d_dw = dev_upload(zero, nw), *d_dw2 = dev_upload(zero, nw), *d_dw3 = dev_upload(zero, nw);
  float *d_dx3 = dev_upload(x, nx);
  void *d_hx = NULL, *d_hdy = NULL, *d_hy = NULL, *d_hdx = NULL;
  REQUIRE(d_x && d_w && d_dy && d_b && d_y && d_dx && d_dw && d_dw2 && d_dw3 && d_dx3);
  REQUIRE(!moka_dev_alloc(&d_hx, nx * 2, "test") && !moka_dev_alloc(&d_hdy, ny * 2, "test") &&
          !moka_dev_alloc(&d_hy, ny * 2, "test") && !moka_dev_alloc(&d_hdx, nx * 2, "test"));
  int rc = moka_h2d(ctx->stream, d_hx, hx, nx * 2) || moka_h2d(ctx->stream, d_hdy, hdy, ny * 2);
  if (!rc) rc = moka_cuda_nhwc_conv_forward(ctx, &g, d_x, d_w, d_b, d_y);
  if (!rc) rc = moka_cuda_nhwc_conv_backward(ctx, &g, d_x, d_w, d_dy, d_dx, d_dw);
  if (!rc)
    rc = moka_cuda_nhwc_conv_forward_fmt(ctx, &g, d_hx, MOKA_ACT_BF16_NHWC, d_w, d_b, d_hy,
                                         MOKA_ACT_BF16_NHWC);
  if (!rc)
    rc = moka_cuda_nhwc_conv_backward_fmt(ctx, &g, d_hx, MOKA_ACT_BF16_NHWC, d_w, d_hdy,
                                          MOKA_ACT_BF16_NHWC, d_hdx, MOKA_ACT_BF16_NHWC, d_dw2);
  /* the mix the nets run where formats meet (ResNet's res2a convolutions read pool1's fp32
   * Split and write bf16): x and dx fp32, dy bf16 */
  if (!rc)
    rc = moka_cuda_nhwc_conv_backward_fmt(ctx, &g, d_x, MOKA_ACT_F32_NCHW, d_w, d_hdy,
                                          MOKA_ACT_BF16_NHWC, d_dx3, MOKA_ACT_F32_NCHW, d_dw3);
  if (!rc) rc = moka_cuda_sync(ctx);
  moka_cuda_nhwc_force(-1);
  CHECK_MSG(rc == 0, "%s: %s", sp->name, moka_error());
  if (!rc) {
    float *y = download(d_y, ny), *dx = download(d_dx, nx), *dw = download(d_dw, nw);
    float *dw2 = download(d_dw2, nw);
    uint16_t *hy = malloc(ny * 2), *hdx = malloc(nx * 2);
    REQUIRE(y && dx && dw && dw2 && hy && hdx);
    REQUIRE(!moka_d2h(ctx->stream, hy, d_hy, ny * 2) && !moka_d2h(ctx->stream, hdx, d_hdx, nx * 2));
    float *y2 = nhwc_bf16_to_nchw(hy, N, OC, OHW), *dx2 = nhwc_bf16_to_nchw(hdx, N, C, HW);
    char what[160];
    snprintf(what, sizeof what, "%s: y (bf16 NHWC in and out)", sp->name);
    check_rounded(what, y2, y, ny);
    snprintf(what, sizeof what, "%s: dx (bf16 NHWC)", sp->name);
    check_rounded(what, dx2, dx, nx);
    CHECK_MSG(!memcmp(dw, dw2, nw * 4), "%s: dW from bf16 NHWC inputs differs from dW from the "
              "fp32 ones (same bf16 values)", sp->name);
    float *dx3 = download(d_dx3, nx), *dw3 = download(d_dw3, nw);
    REQUIRE(dx3 && dw3);
    CHECK_MSG(!memcmp(dx, dx3, nx * 4) && !memcmp(dw, dw3, nw * 4),
              "%s: fp32 x, bf16 dy, fp32 dx: dx or dW differs from the all-fp32 call (same "
              "values)", sp->name);
    free(dx3), free(dw3);
    free(y), free(dx), free(dw), free(dw2), free(hy), free(hdx), free(y2), free(dx2);
  }
  void *dev[] = {d_x, d_w, d_dy, d_b, d_y, d_dx, d_dw, d_dw2, d_dw3, d_dx3, d_hx, d_hdy, d_hy, d_hdx};
  for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) moka_dev_free(dev[i]);
  free(x), free(w), free(dy), free(b), free(zero), free(hx), free(hdy);
}

static void test_nhwc_formats(void) {
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    const MokaConvGeom g = geom_of(&shapes[i]);
    moka_cuda_nhwc_force(1);
    const bool all = moka_cuda_nhwc_applies(&g, MOKA_NHWC_FWD) &&
                     moka_cuda_nhwc_applies(&g, MOKA_NHWC_DGRAD) &&
                     moka_cuda_nhwc_applies(&g, MOKA_NHWC_WGRAD);
    moka_cuda_nhwc_force(-1);
    if (all && (!g_small_only || (long long)g.num * g.num_output * g.out_h * g.out_w <= 120000))
      nhwc_formats(&shapes[i]);
  }
}

static void test_cudnn_bf16(void) {
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    run_shape(&shapes[i], ENG_CUDNN, MOKA_CONV_BF16);
}

/* Off-grid inputs: the kernel must round x and W to bf16 (nearest even). C channels in,
 * OC out, 9x9, 3x3 pad 1. */
static void rounds(Engine eng, int C, int OC) {
  const Shape s = {"rounding", 1, C, 9, 9, OC, 1, 3, 3, 1, 1, 1, 1, 1, 1, false};
  const MokaConvGeom g = geom_of(&s);
  const size_t nx = (size_t)C * 81, nw = (size_t)OC * C * 9, ny = (size_t)OC * g.out_h * g.out_w;
  Rng r;
  rng_seed(&r, 99);
  float *x = malloc(nx * 4), *w = malloc(nw * 4), *xr = malloc(nx * 4), *wr = malloc(nw * 4);
  fill(&r, x, nx, false), fill(&r, w, nw, false);
  for (size_t i = 0; i < nx; i++) xr[i] = round_bf16(x[i]);
  for (size_t i = 0; i < nw; i++) wr[i] = round_bf16(w[i]);
  float *zero_w = calloc(nw, 4), *zero_b = calloc(OC, 4), *dy = calloc(ny, 4);
  Ref ref;
  reference(&g, xr, wr, NULL, dy, zero_w, zero_b, &ref);
  float *d_x = dev_upload(x, nx), *d_w = dev_upload(w, nw), *d_y = dev_upload(dy, ny);
  REQUIRE(d_x && d_w && d_y);
  moka_cuda_nhwc_force(eng == ENG_NHWC);
  CHECK(eng != ENG_NHWC || moka_cuda_nhwc_applies(&g, MOKA_NHWC_FWD));
  int rc = moka_cuda_igemm_conv_forward(ctx, &g, MOKA_CONV_BF16, d_x, d_w, NULL, d_y);
  moka_cuda_nhwc_force(-1);
  if (!rc) rc = moka_cuda_sync(ctx);
  CHECK_MSG(rc == 0, "%s forward: %s", eng_names[eng], moka_error());
  if (!rc) {
    float *y = download(d_y, ny);
    char what[120];
    snprintf(what, sizeof what, "off-grid inputs, %s bf16 forward vs the bf16-rounded reference",
             eng_names[eng]);
    check_arr(what, y, ref.y, ref.sy, ny, (long long)C * 9, 0.0, 1e-8);
    free(y);
  }
  moka_dev_free(d_x), moka_dev_free(d_w), moka_dev_free(d_y);
  ref_free(&ref);
  free(x), free(w), free(xr), free(wr), free(zero_w), free(zero_b), free(dy);
}

static void test_igemm_rounds(void) { rounds(ENG_IGEMM, 10, 12); }
static void test_nhwc_rounds(void) { rounds(ENG_NHWC, 16, 24); }

/* InnerProduct's GEMM in bf16 and tf32, every transposition, beta = 1. */
static void test_gemm_prec(void) {
  const int M = 37, N = 53, K = 71;
  Rng r;
  rng_seed(&r, 7);
  float *A = malloc((size_t)M * K * 4), *B = malloc((size_t)K * N * 4);
  float *C0 = malloc((size_t)M * N * 4);
  fill(&r, A, (size_t)M * K, true), fill(&r, B, (size_t)K * N, true);
  fill(&r, C0, (size_t)M * N, false);
  double *ref = malloc((size_t)M * N * 8), *S = malloc((size_t)M * N * 8);
  float *dA = dev_upload(A, (size_t)M * K), *dB = dev_upload(B, (size_t)K * N);
  float *dC = dev_upload(C0, (size_t)M * N);
  REQUIRE(dA && dB && dC);
  for (int prec = MOKA_CONV_BF16; prec <= MOKA_CONV_TF32; prec++)
    for (int t = 0; t < 4; t++) {
      const bool ta = t & 1, tb = t & 2;
      /* A holds op(A) (M,K) stored as A (M,K) or A^T (K,M): the same numbers, read differently */
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double s = 0.5 * C0[(size_t)i * N + j], a = fabs(s);
          for (int k = 0; k < K; k++) {
            const double av = ta ? A[(size_t)k * M + i] : A[(size_t)i * K + k];
            const double bv = tb ? B[(size_t)j * K + k] : B[(size_t)k * N + j];
            s += 2.0 * av * bv, a += fabs(2.0 * av * bv);
          }
          ref[(size_t)i * N + j] = s, S[(size_t)i * N + j] = a;
        }
      if (moka_h2d(ctx->stream, dC, C0, (size_t)M * N * 4)) CHECK(false);
      int rc = moka_cuda_gemm_prec(ctx, (MokaConvPrec)prec, ta, tb, M, N, K, 2.0f, dA, dB, 0.5f,
                                   dC);
      if (!rc) rc = moka_cuda_sync(ctx);
      CHECK_MSG(rc == 0, "gemm %s: %s", moka_conv_prec_name((MokaConvPrec)prec), moka_error());
      if (rc) continue;
      float *c = download(dC, (size_t)M * N);
      char what[96];
      snprintf(what, sizeof what, "gemm %s trans_a %d trans_b %d",
               moka_conv_prec_name((MokaConvPrec)prec), ta, tb);
      check_arr(what, c, ref, S, (size_t)M * N, K + 2, 0.0, 1e-8);
      free(c);
    }
  moka_dev_free(dA), moka_dev_free(dB), moka_dev_free(dC);
  free(A), free(B), free(C0), free(ref), free(S);
}

/* ---- the layers with --precision (src/layers/convolution.c, innerproduct.c) ---------------- */

static double nmse(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)a[i] - b[i];
    num += d * d, den += (double)b[i] * b[i];
  }
  return den > 0 ? num / den : num;
}

/* One layer: fp32 CPU reference, then CUDA with the process precision `prec`:
 * every output within bf16/TF32 rounding of the reference (NMSE <= 1e-4) and
 * NOT equal to it (NMSE >= 1e-14: the low precision really ran). */
static void layer_case(const char *name, const char *proto, const int *shape, int na,
                       const char *prec) {
  char text[512];
  snprintf(text, sizeof text, "name: 'L' %s", proto);
  ProtobufCMessage *m = NULL;
  REQUIRE(prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), name, &m) == 0);
  Rng rng;
  rng_seed(&rng, 3);
  Blob *bot = blob_new("bottom"), *top = blob_new("top");
  REQUIRE(blob_reshape(bot, na, shape) == 0);
  fill(&rng, bot->data, bot->count, false);
  REQUIRE(fast_set_precision("fp32") == 0);
  Layer *l = layer_create((Caffe__LayerParameter *)m, MOKA_TRAIN, &rng, &bot, 1, &top, 1);
  REQUIRE(l);
  l->propagate_down[0] = true;
  for (int k = 0; k < l->n_params; k++) {
    fill(&rng, l->params[k]->data, l->params[k]->count, false);
    memset(l->params[k]->diff, 0, l->params[k]->count * sizeof(float));
  }
  REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
  fill(&rng, top->diff, top->count, false);
  float *dy = malloc(top->count * 4);
  memcpy(dy, top->diff, top->count * 4);
  REQUIRE(layer_backward(l, MOKA_BACKEND_CPU) == 0);
  float *ref_y = malloc(top->count * 4), *ref_dx = malloc(bot->count * 4);
  memcpy(ref_y, top->data, top->count * 4);
  memcpy(ref_dx, bot->diff, bot->count * 4);
  float *ref_dp[2] = {NULL, NULL};
  for (int k = 0; k < l->n_params && k < 2; k++) {
    ref_dp[k] = malloc(l->params[k]->count * 4);
    memcpy(ref_dp[k], l->params[k]->diff, l->params[k]->count * 4);
    memset(l->params[k]->diff, 0, l->params[k]->count * sizeof(float));
  }
  bool ok = blob_alloc_device(bot, true, name) == 0 && blob_to_device(ctx, bot) == 0 &&
            blob_alloc_device(top, true, name) == 0;
  for (int k = 0; k < l->n_params && ok; k++)
    ok = blob_alloc_device(l->params[k], true, name) == 0 &&
         blob_to_device(ctx, l->params[k]) == 0 && blob_diff_to_device(ctx, l->params[k]) == 0;
  l->cuda = ctx;
  REQUIRE(fast_set_precision(prec) == 0);
  if (ok) ok = layer_forward(l, MOKA_BACKEND_CUDA) == 0 && blob_to_host(ctx, top) == 0;
  if (ok) {
    memcpy(top->diff, dy, top->count * 4);
    ok = blob_diff_to_device(ctx, top) == 0 && layer_backward(l, MOKA_BACKEND_CUDA) == 0 &&
         blob_diff_to_host(ctx, bot) == 0;
  }
  for (int k = 0; k < l->n_params && ok; k++) ok = blob_diff_to_host(ctx, l->params[k]) == 0;
  CHECK_MSG(ok, "%s (%s): %s", name, prec, moka_error());
  if (ok) {
    const double e[4] = {nmse(top->data, ref_y, top->count), nmse(bot->diff, ref_dx, bot->count),
                         nmse(l->params[0]->diff, ref_dp[0], l->params[0]->count),
                         l->n_params > 1 ? nmse(l->params[1]->diff, ref_dp[1], l->params[1]->count)
                                         : 0.0};
    static const char *const what[4] = {"y", "dx", "dW", "db"};
    for (int i = 0; i < 3; i++) /* db is a plain fp32 sum: no rounding to see */
      CHECK_MSG(e[i] <= 1e-4 && e[i] >= 1e-14, "%s (%s) %s: NMSE %.3g vs the fp32 reference "
                "(want 1e-14 .. 1e-4)", name, prec, what[i], e[i]);
    CHECK_MSG(e[3] <= 1e-10, "%s (%s) db: NMSE %.3g", name, prec, e[3]);
    fprintf(stderr, "    %-30s %s: NMSE y %.2g dx %.2g dW %.2g db %.2g\n", name, prec, e[0], e[1],
            e[2], e[3]);
  }
  REQUIRE(fast_set_precision("fp32") == 0);
  free(dy), free(ref_y), free(ref_dx), free(ref_dp[0]), free(ref_dp[1]);
  for (int k = 0; k < l->n_params; k++) blob_free_device(l->params[k]);
  layer_free(l);
  blob_free_device(bot), blob_free_device(top);
  blob_free(bot), blob_free(top);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void test_layers_precision(void) {
  const int cs[4] = {2, 12, 15, 13}, is[2] = {3, 40};
  const char *conv = "type: 'Convolution' convolution_param { num_output: 20 kernel_size: 3 "
                     "stride: 2 pad: 1 }";
  const char *conv_cudnn = "type: 'Convolution' convolution_param { num_output: 20 "
                           "kernel_size: 3 stride: 2 pad: 1 engine: CUDNN }";
  const char *ip = "type: 'InnerProduct' inner_product_param { num_output: 17 }";
  layer_case("Convolution (moka)", conv, cs, 4, "bf16");
  layer_case("Convolution (moka)", conv, cs, 4, "tf32");
  layer_case("Convolution (cuDNN)", conv_cudnn, cs, 4, "bf16");
  layer_case("InnerProduct", ip, is, 2, "bf16");
}

/* ---- benchmark ------------------------------------------------------------------------------- */

typedef struct BenchShape {
  const char *name; /* the first ResNet-50 layer with this shape */
  int C, H, OC, K, S, P;
} BenchShape;

/* Every distinct convolution shape of ResNet-50 (Caffe's deploy: stride on branch2a). */
static const BenchShape bench_shapes[] = {
    {"conv1", 3, 224, 64, 7, 2, 3},
    {"res2a_branch2a", 64, 56, 64, 1, 1, 0},
    {"res2a_branch2b", 64, 56, 64, 3, 1, 1},
    {"res2a_branch2c", 64, 56, 256, 1, 1, 0},
    {"res2b_branch2a", 256, 56, 64, 1, 1, 0},
    {"res3a_branch1", 256, 56, 512, 1, 2, 0},
    {"res3a_branch2a", 256, 56, 128, 1, 2, 0},
    {"res3a_branch2b", 128, 28, 128, 3, 1, 1},
    {"res3a_branch2c", 128, 28, 512, 1, 1, 0},
    {"res3b_branch2a", 512, 28, 128, 1, 1, 0},
    {"res4a_branch1", 512, 28, 1024, 1, 2, 0},
    {"res4a_branch2a", 512, 28, 256, 1, 2, 0},
    {"res4a_branch2b", 256, 14, 256, 3, 1, 1},
    {"res4a_branch2c", 256, 14, 1024, 1, 1, 0},
    {"res4b_branch2a", 1024, 14, 256, 1, 1, 0},
    {"res5a_branch1", 1024, 14, 2048, 1, 2, 0},
    {"res5a_branch2a", 1024, 14, 512, 1, 2, 0},
    {"res5a_branch2b", 512, 7, 512, 3, 1, 1},
    {"res5a_branch2c", 512, 7, 2048, 1, 1, 0},
    {"res5b_branch2a", 2048, 7, 512, 1, 1, 0},
};

enum { B_MOKA_BF16, B_MOKA_NHWC, B_CUDNN_BF16, B_MOKA_FP32, B_CUDNN_FP32, B_ENGINES };
static const char *const bench_names[B_ENGINES] = {"moka_bf16", "moka_nhwc", "cudnn_bf16",
                                                   "moka_fp32", "cudnn_fp32"};

static int bench_pass(int e, bool fwd, MokaCudnnConv **plan, const MokaConvGeom *g,
                      const float *x, const float *w, const float *b, float *y, const float *dy,
                      float *dx, float *dw, float *db) {
  switch (e) {
  case B_MOKA_BF16:
  case B_MOKA_NHWC: {
    moka_cuda_nhwc_force(e == B_MOKA_NHWC);
    const int rc = fwd ? moka_cuda_igemm_conv_forward(ctx, g, MOKA_CONV_BF16, x, w, b, y)
                       : moka_cuda_igemm_conv_backward(ctx, g, MOKA_CONV_BF16, x, w, dy, dx, dw,
                                                       db);
    moka_cuda_nhwc_force(-1);
    return rc;
  }
  case B_CUDNN_BF16:
    return fwd ? moka_cudnn_conv_forward_prec(ctx, plan, g, MOKA_CONV_BF16, x, w, b, y)
               : moka_cudnn_conv_backward_prec(ctx, plan, g, MOKA_CONV_BF16, x, w, dy, dx, dw,
                                               db);
  case B_MOKA_FP32:
    return fwd ? moka_cuda_conv_forward(ctx, g, x, w, b, y)
               : moka_cuda_conv_backward(ctx, g, x, w, dy, dx, dw, db);
  default:
    return fwd ? moka_cudnn_conv_forward(ctx, plan, g, x, w, b, y)
               : moka_cudnn_conv_backward(ctx, plan, g, x, w, dy, dx, dw, db);
  }
}

static int bench(int batch, int iters) {
  size_t maxn = 0;
  MokaConvGeom geoms[sizeof bench_shapes / sizeof bench_shapes[0]];
  const int ns = (int)(sizeof bench_shapes / sizeof bench_shapes[0]);
  for (int i = 0; i < ns; i++) {
    const BenchShape *b = &bench_shapes[i];
    const Shape s = {b->name, batch, b->C, b->H, b->H, b->OC, 1, b->K, b->K, b->P, b->P, b->S,
                     b->S, 1, 1, false};
    geoms[i] = geom_of(&s);
    const MokaConvGeom *g = &geoms[i];
    size_t n = (size_t)batch * g->channels * g->height * g->width;
    const size_t ny = (size_t)batch * g->num_output * g->out_h * g->out_w;
    const size_t nw = (size_t)g->num_output * g->channels * g->kernel_h * g->kernel_w;
    if (ny > n) n = ny;
    if (nw > n) n = nw;
    if (n > maxn) maxn = n;
  }
  float *host = malloc(maxn * sizeof(float));
  Rng r;
  rng_seed(&r, 5);
  fill(&r, host, maxn, false);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  printf("per-layer convolution benchmark, batch %d, %d iterations, device %s; ms per pass\n",
         batch, iters, ctx->device_name);
  int failures = 0;
  for (int i = 0; i < ns; i++) {
    const MokaConvGeom *g = &geoms[i];
    const size_t nx = (size_t)batch * g->channels * g->height * g->width;
    const size_t ny = (size_t)batch * g->num_output * g->out_h * g->out_w;
    const size_t nw = (size_t)g->num_output * g->channels * g->kernel_h * g->kernel_w;
    float *x = dev_upload(host, nx), *w = dev_upload(host, nw);
    float *b = dev_upload(host, g->num_output);
    float *y = dev_upload(host, ny), *dy = dev_upload(host, ny), *dx = NULL;
    float *dw = dev_upload(host, nw), *db = dev_upload(host, g->num_output);
    const bool need_dx = i != 0; /* conv1: the data layer takes no gradient */
    if (need_dx) dx = dev_upload(host, nx);
    if (!x || !w || !b || !y || !dy || !dw || !db || (need_dx && !dx)) {
      printf("igemm_bench_error layer=%s: %s\n", bench_shapes[i].name, moka_error());
      failures++;
      break;
    }
    double ms[B_ENGINES][2];
    for (int e = 0; e < B_ENGINES; e++) {
      MokaCudnnConv *plan = NULL;
      for (int dir = 0; dir < 2; dir++) {
        const bool fwd = dir == 0;
        ms[e][dir] = -1;
        int rc = bench_pass(e, fwd, &plan, g, x, w, b, y, dy, dx, dw, db); /* warm-up */
        if (!rc) rc = moka_cuda_sync(ctx);
        cudaEventRecord(e0, ctx->stream);
        for (int it = 0; it < iters && !rc; it++)
          rc = bench_pass(e, fwd, &plan, g, x, w, b, y, dy, dx, dw, db);
        cudaEventRecord(e1, ctx->stream);
        if (!rc) rc = moka_cuda_sync(ctx);
        if (rc) {
          printf("igemm_bench_error layer=%s engine=%s %s: %s\n", bench_shapes[i].name,
                 bench_names[e], fwd ? "forward" : "backward", moka_error());
          failures++;
          continue;
        }
        float t = 0;
        cudaEventElapsedTime(&t, e0, e1);
        ms[e][dir] = t / iters;
      }
      moka_cudnn_conv_free(plan);
    }
    /* moka bf16 with each tile shape forced (data for tuning pick_tile), the WMMA kernel
     * (fwd_t128x64=...) and the NHWC one (fwd_n128x64=...) */
    static const int tiles[4][2] = {{128, 128}, {128, 64}, {64, 128}, {64, 64}};
    double tms[2][4][2];
    for (int kern = 0; kern < 2; kern++)
      for (int t = 0; t < 4; t++) {
        for (int dir = 0; dir < 2; dir++) {
          const bool fwd = dir == 0;
          const int e = kern ? B_MOKA_NHWC : B_MOKA_BF16;
          tms[kern][t][dir] = -1;
          int rc = kern ? moka_cuda_nhwc_force_tile(tiles[t][0], tiles[t][1])
                        : moka_cuda_igemm_force_tile(tiles[t][0], tiles[t][1]);
          if (!rc) rc = bench_pass(e, fwd, NULL, g, x, w, b, y, dy, dx, dw, db);
          if (!rc) rc = moka_cuda_sync(ctx);
          cudaEventRecord(e0, ctx->stream);
          for (int it = 0; it < iters && !rc; it++)
            rc = bench_pass(e, fwd, NULL, g, x, w, b, y, dy, dx, dw, db);
          cudaEventRecord(e1, ctx->stream);
          if (!rc) rc = moka_cuda_sync(ctx);
          if (rc) {
            printf("igemm_bench_error layer=%s %s tile %dx%d: %s\n", bench_shapes[i].name,
                   kern ? "nhwc" : "igemm", tiles[t][0], tiles[t][1], moka_error());
            failures++;
            continue;
          }
          float tt = 0;
          cudaEventElapsedTime(&tt, e0, e1);
          tms[kern][t][dir] = tt / iters;
        }
      }
    moka_cuda_nhwc_force_tile(0, 0);
    moka_cuda_igemm_force_tile(0, 0);
    /* the fp32 <-> bf16 conversions inside the cuDNN bf16 engine, timed alone: forward
     * x, w in and y out; backward x, w, dy in and dw, dx out */
    double cvt[2] = {-1, -1};
    void *scratch = NULL;
    size_t big = nx > ny ? nx : ny;
    if (nw > big) big = nw;
    if (moka_dev_alloc(&scratch, big * 2, "bf16 scratch") == 0) {
      for (int dir = 0; dir < 2; dir++) {
        int rc = 0;
        cudaEventRecord(e0, ctx->stream);
        for (int it = 0; it < iters && !rc; it++) {
          rc = moka_cuda_to_bf16(ctx->stream, x, scratch, nx) ||
               moka_cuda_to_bf16(ctx->stream, w, scratch, nw);
          if (dir == 0 && !rc) rc = moka_cuda_from_bf16(ctx->stream, scratch, y, ny);
          if (dir == 1 && !rc)
            rc = moka_cuda_to_bf16(ctx->stream, dy, scratch, ny) ||
                 moka_cuda_from_bf16(ctx->stream, scratch, dw, nw) ||
                 (dx && moka_cuda_from_bf16(ctx->stream, scratch, dx, nx));
        }
        cudaEventRecord(e1, ctx->stream);
        if (!rc) rc = moka_cuda_sync(ctx);
        float tt = 0;
        if (!rc && cudaEventElapsedTime(&tt, e0, e1) == cudaSuccess) cvt[dir] = tt / iters;
      }
      moka_dev_free(scratch);
    }
    printf("igemm_bench layer=%s shape=%dx%dx%dx%d->%dx%dx%d/k%d/s%d", bench_shapes[i].name,
           batch, g->channels, g->height, g->width, g->num_output, g->out_h, g->out_w,
           g->kernel_h, g->stride_h);
    for (int e = 0; e < B_ENGINES; e++)
      printf(" fwd_%s=%.4f bwd_%s=%.4f", bench_names[e], ms[e][0], bench_names[e], ms[e][1]);
    for (int kern = 0; kern < 2; kern++)
      for (int t = 0; t < 4; t++)
        printf(" fwd_%c%dx%d=%.4f bwd_%c%dx%d=%.4f", kern ? 'n' : 't', tiles[t][0], tiles[t][1],
               tms[kern][t][0], kern ? 'n' : 't', tiles[t][0], tiles[t][1], tms[kern][t][1]);
    printf(" fwd_cvt=%.4f bwd_cvt=%.4f", cvt[0], cvt[1]);
    moka_cuda_nhwc_force(1); /* which directions the NHWC kernel takes (the rest: WMMA) */
    printf(" nhwc_takes=%d%d%d", moka_cuda_nhwc_applies(g, MOKA_NHWC_FWD),
           moka_cuda_nhwc_applies(g, MOKA_NHWC_DGRAD), moka_cuda_nhwc_applies(g, MOKA_NHWC_WGRAD));
    moka_cuda_nhwc_force(-1);
    printf("\n");
    fflush(stdout);
    moka_dev_free(x), moka_dev_free(w), moka_dev_free(b), moka_dev_free(y), moka_dev_free(dy);
    moka_dev_free(dx), moka_dev_free(dw), moka_dev_free(db);
  }
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  free(host);
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  const int g = gpu_test_open(&ctx);
  if (g) return g > 0 ? test_summary() : 1;
  if (ctx->cc_major < 8) {
    printf("SKIP: the tensor-core convolution needs sm_80 or later; device 0 (%s) is sm_%d%d\n",
           ctx->device_name, ctx->cc_major, ctx->cc_minor);
    moka_cuda_destroy(ctx);
    return test_summary();
  }
  if (argc > 1 && !strcmp(argv[1], "bench")) {
    const int batch = argc > 2 ? atoi(argv[2]) : 64, iters = argc > 3 ? atoi(argv[3]) : 5;
    const int rc = bench(batch > 0 ? batch : 64, iters > 0 ? iters : 5);
    moka_cuda_destroy(ctx);
    return rc;
  }
  const bool quick = argc > 1 && !strcmp(argv[1], "quick"); /* moka's kernels only */
  if (argc > 1 && !strcmp(argv[1], "nhwc")) {
    g_small_only = true;
    RUN(test_nhwc_bf16);
    RUN(test_nhwc_formats);
    RUN(test_nhwc_rounds);
    moka_cuda_destroy(ctx);
    return test_summary();
  }
  RUN(test_igemm_bf16);
  RUN(test_nhwc_bf16);
  RUN(test_nhwc_formats);
  RUN(test_igemm_tf32);
  RUN(test_igemm_rounds);
  RUN(test_nhwc_rounds);
  if (!quick) {
    RUN(test_cudnn_bf16);
    RUN(test_gemm_prec);
    RUN(test_layers_precision);
  }
  moka_cuda_destroy(ctx);
  return test_summary();
}
#endif
