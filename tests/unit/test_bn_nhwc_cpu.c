/* test_bn_nhwc_cpu.c — the CPU channels-last bf16 BatchNorm -> Scale [-> Eltwise SUM]
 * [-> ReLU] chain (src/layers/bn_nhwc_cpu.c) against two references computed here from
 * the same bf16 inputs:
 *
 *  - the definitions in double (src/net_fuse.h): statistics with a two-pass variance,
 *    every elementwise value exact but for double rounding. The chain computes in fp32 and
 *    rounds each output to bf16 once, so an output may differ from the double value v by
 *    the fp32 error e of its computation plus half a bf16 ulp of the fp32 value:
 *      |got - v| <= half_ulp_bf16(|v| + e) + e   (+ 2^-125: a denormal result flushes)
 *    with e = 16 u (sum of the magnitudes of the terms that make it), u = 2^-24: each fp32
 *    operation and the float statistics add at most a few u of those magnitudes (the bounds
 *    are written next to each check). That is half a bf16 ulp plus about 2^-20 of the
 *    terms: a wrong formula, a missing term or a wrong mask moves values by far more.
 *    Statistics and the running statistics within 1e-6 of their magnitudes; dgamma, dbeta
 *    within 1e-6 of the sum of |terms| (plus the accumulated base value);
 *  - bn_nhwc.cu's fp32 operations in their order (the "model"): the statistics from double
 *    sums in the chain's documented order (chunks of BN_NHWC_CPU_CHUNK pixels, added in
 *    order), the elementwise values as bnh_forward1 / bnh_dz / bnh_dx1 compute them, rounded
 *    with a scalar round-to-nearest-even (denormals to zero). Bit-identical expected: this is
 *    what catches an operation order or a rounding changed by one fp32 ulp, which the first
 *    reference's bound allows.
 *
 * Cases: random shapes (N 1..3, C in {8, 24, 64, 200, 256}, S in {1, 7, 49, 196, 144}), a
 * few larger ones that run on several threads (C 120, 128, 136, 520, 1024, 2048: both kinds
 * of kernels, with masked tails), and every flag combination once; modes at random:
 * residual none / bottom 0 / bottom 1, ReLU none / slope 0 / slope 0.1, batch or global
 * statistics (b2 = 0 among them), beta NULL, x_norm not kept, dy1, xz in place on x, dx in
 * place on dy, each backward output NULL or not; NaNs and signed zeros in the mask y; in a
 * third of the cases values over 2^-20 .. 2^12 (double sums that depend on their order).
 * Each case runs with 1, 2 and 3 OpenMP threads: every output bit-identical across them.
 * Outputs live in buffers with a guard of sentinels (never written); inputs that are not
 * also outputs stay unchanged. test_sum_order pins the sums' order itself (one channel
 * whose total is 0.5 in the documented order and 0 in any other), on 1, 2 and 3 threads.
 * Channel counts not multiples of 8, and missing buffers, are refused.
 *
 * `test_bn_nhwc_cpu bench`: ResNet-50's chain shapes at batch 8, forward and backward ms
 * (median of 9 after a warm-up) of this chain (batch statistics; xz in place on x; the
 * residual chains' backward with dy1, as under a Split), and of the fp32 NCHW fused chain
 * (net_fuse.c) on the fast backend: a net Input -> BatchNorm -> Scale [-> Eltwise] -> ReLU
 * [-> two readers, so a Split the chain sums], its chain's forward and backward timed
 * alone (net_forward_layer / net_backward_layer). Both restore their inputs between runs,
 * untimed. GB/s: the bf16 chain's bytes read and written (inputs counted twice) per time.
 *
 * SKIP on a CPU without AVX-512 BF16. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "layers/bn_nhwc_cpu.h"
#include "layers/fast.h"
#include "net.h"
#include "net_fuse.h"
#include "prototxt.h"
#include "resnet_nets.h"
#include "rng.h"
#include "../gpu/bf16_host.h"
#include "testlib.h"
#include "util.h"

#define U 5.9604644775390625e-8 /* 2^-24 */
#define GUARD 24                /* sentinel elements after every output */
#define SENT 0xBEEF

static Rng g_rng;
static long g_compared; /* values compared against the references */

/* ---- bf16 ---------------------------------------------------------------------------- */

/* Half a bf16 ulp at magnitude v (8 significant bits). */
static double half_ulp(double v) {
  if (v < 0x1p-126) return 0x1p-134;
  int ex;
  frexp(v, &ex); /* v = f 2^ex, f in [0.5, 1) */
  return ldexp(1.0, ex - 9);
}

/* got (bf16) against the double value want, e the fp32 error bound. */
static bool near_bf16(uint16_t got, double want, double e) {
  const double g = bf16_value(got);
  return fabs(g - want) <= half_ulp(fabs(want) + e) + e + 0x1p-125;
}

/* ---- a case ---------------------------------------------------------------------------- */

typedef struct Mode {
  size_t N, C, S;
  int residual;      /* -1, 0, 1 */
  bool relu;         /* forward ReLU and backward mask */
  float slope;
  bool global, beta, keep_xn, dy1, xz_inplace, dx_inplace;
  bool want_dx, want_dr, want_dg, want_db;
  float b2;
  bool spread; /* values over a wide range of magnitudes: double sums that depend on their order */
} Mode;

/* The inputs of a case (bf16 activations, fp32 parameters and statistics). */
typedef struct Inputs {
  size_t P, C, n;
  uint16_t *x, *r, *dy, *dy1;
  float *gamma, *beta, *b0, *b1, b2, *dg0, *db0;
} Inputs;

/* One run's outputs (activation buffers with GUARD sentinels). */
typedef struct Outs {
  float *stats, *b0, *b1, b2;
  uint16_t *xn, *xz, *y;     /* forward */
  uint16_t *dx, *dr;         /* backward */
  float *dg, *db;
} Outs;

static uint16_t *bf16_alloc(size_t n) {
  uint16_t *p = malloc(2 * (n + GUARD));
  for (size_t i = 0; i < n + GUARD; i++) p[i] = SENT;
  return p;
}

static bool guard_ok(const uint16_t *p, size_t n) {
  if (!p) return true;
  for (size_t i = n; i < n + GUARD; i++)
    if (p[i] != SENT) return false;
  return true;
}

static uint16_t gauss_bf16(float mu, float sigma) {
  return bf16_bits_cpu(rng_gaussian(&g_rng, mu, sigma));
}

static Inputs make_inputs(const Mode *m) {
  Inputs in = {.P = m->N * m->S, .C = m->C};
  const size_t C = m->C, n = in.P * C;
  in.n = n;
  in.x = malloc(2 * n), in.r = malloc(2 * n), in.dy = malloc(2 * n), in.dy1 = malloc(2 * n);
  const float off = 0.5f * rng_gaussian(&g_rng, 0.0f, 1.0f); /* means away from 0 */
  for (size_t i = 0; i < n; i++) {
    const size_t c = i % C;
    in.x[i] = gauss_bf16(off + 0.1f * (float)(c % 5), 1.0f + 0.5f * (float)(c % 3));
    in.r[i] = gauss_bf16(0.0f, 1.0f);
    in.dy[i] = gauss_bf16(0.0f, 0.01f);
    in.dy1[i] = gauss_bf16(0.0f, 0.01f);
  }
  for (size_t i = 0; i < n; i += 37) in.x[i] = 0; /* zeros among the values */
  if (m->spread) /* 2^-20 .. 2^12 apart: no longer exact sums in double */
    for (size_t i = 0; i < n; i++) {
      const float sx = i % 13 == 1 ? 0x1p-18f : i % 29 == 2 ? 64.0f : 1.0f;
      const float sd = i % 17 == 3 ? 1024.0f : i % 23 == 4 ? 0x1p-14f : 1.0f;
      in.x[i] = bf16_bits_cpu(bf16_value(in.x[i]) * sx);
      in.dy[i] = bf16_bits_cpu(bf16_value(in.dy[i]) * sd);
    }
  if (C > 8)
    for (size_t p = 0; p < in.P; p++) in.x[p * C + 3] = bf16_bits_cpu(0.375f); /* var 0 */
  in.gamma = malloc(4 * C), in.beta = malloc(4 * C), in.b0 = malloc(4 * C);
  in.b1 = malloc(4 * C), in.dg0 = malloc(4 * C), in.db0 = malloc(4 * C);
  for (size_t c = 0; c < C; c++) {
    in.gamma[c] = rng_gaussian(&g_rng, 1.0f, 0.3f);
    in.beta[c] = rng_gaussian(&g_rng, 0.0f, 0.3f);
    in.b0[c] = rng_gaussian(&g_rng, 0.0f, 2.0f);
    in.b1[c] = rng_uniform(&g_rng, 0.5f, 6.0f);
    in.dg0[c] = rng_gaussian(&g_rng, 0.0f, 0.1f);
    in.db0[c] = rng_gaussian(&g_rng, 0.0f, 0.1f);
  }
  in.b2 = m->b2;
  return in;
}

static void free_inputs(Inputs *in) {
  free(in->x), free(in->r), free(in->dy), free(in->dy1), free(in->gamma), free(in->beta);
  free(in->b0), free(in->b1), free(in->dg0), free(in->db0);
}

static void free_outs(Outs *o) {
  free(o->stats), free(o->b0), free(o->b1), free(o->xn), free(o->xz), free(o->y);
  free(o->dx), free(o->dr), free(o->dg), free(o->db);
  memset(o, 0, sizeof *o);
}

static BnNhwcGeom geom_of(const Mode *m) {
  const size_t P = m->N * m->S;
  BnNhwcGeom g = {m->N, m->C, m->S, 1e-5f, 0.999f, P > 1 ? (float)P / (float)(P - 1) : 1.0f,
                  m->global, m->relu, m->relu, m->slope, m->residual};
  return g;
}

static float *fdup(const float *p, size_t n) {
  float *q = malloc(4 * (n ? n : 1));
  memcpy(q, p, 4 * n);
  return q;
}

/* The forward on `threads` threads; the outputs into o. */
static void run_forward(const Mode *m, const Inputs *in, int threads, Outs *o) {
  const BnNhwcGeom g = geom_of(m);
  const size_t n = in->n, C = in->C;
  o->stats = malloc(4 * 3 * C);
  for (size_t i = 0; i < 3 * C; i++) o->stats[i] = NAN;
  o->b0 = fdup(in->b0, C), o->b1 = fdup(in->b1, C), o->b2 = in->b2;
  o->xz = bf16_alloc(n);
  o->xn = m->keep_xn ? bf16_alloc(n) : NULL;
  o->y = m->residual >= 0 ? bf16_alloc(n) : NULL;
  uint16_t *xin = malloc(2 * n), *rin = malloc(2 * n);
  memcpy(xin, in->x, 2 * n), memcpy(rin, in->r, 2 * n);
  const uint16_t *x = xin;
  if (m->xz_inplace) memcpy(o->xz, in->x, 2 * n), x = o->xz;
  omp_set_num_threads(threads);
  CHECK(bn_nhwc_cpu_forward(&g, x, o->xz, o->y, m->residual >= 0 ? rin : NULL, o->xn, o->stats,
                            o->b0, o->b1, &o->b2, in->gamma, m->beta ? in->beta : NULL) == 0);
  CHECK(guard_ok(o->xz, n) && guard_ok(o->xn, n) && guard_ok(o->y, n));
  CHECK(memcmp(xin, in->x, 2 * n) == 0 && memcmp(rin, in->r, 2 * n) == 0); /* inputs kept */
  free(xin), free(rin);
}

/* The backward's inputs besides Inputs: the chain output y (the mask, with NaNs and signed
 * zeros put in), x_norm and stats, from the one-thread forward. */
typedef struct BwIn {
  uint16_t *y;
  const uint16_t *xn;
  const float *stats;
} BwIn;

static void run_backward(const Mode *m, const Inputs *in, const BwIn *bw, int threads, Outs *o) {
  const BnNhwcGeom g = geom_of(m);
  const size_t n = in->n, C = in->C;
  uint16_t *dy = bf16_alloc(n), *dy1 = malloc(2 * n), *y = malloc(2 * n);
  memcpy(dy, in->dy, 2 * n), memcpy(dy1, in->dy1, 2 * n), memcpy(y, bw->y, 2 * n);
  o->dx = m->want_dx ? (m->dx_inplace ? dy : bf16_alloc(n)) : NULL;
  o->dr = m->want_dr ? bf16_alloc(n) : NULL;
  o->dg = m->want_dg ? fdup(in->dg0, C) : NULL;
  o->db = m->want_db ? fdup(in->db0, C) : NULL;
  omp_set_num_threads(threads);
  CHECK(bn_nhwc_cpu_backward(&g, dy, m->dy1 ? dy1 : NULL, m->relu ? y : NULL, bw->xn, bw->stats,
                             in->gamma, o->dx, o->dr, o->dg, o->db) == 0);
  CHECK(guard_ok(dy, n) && guard_ok(o->dx, n) && guard_ok(o->dr, n));
  CHECK(memcmp(dy1, in->dy1, 2 * n) == 0 && memcmp(y, bw->y, 2 * n) == 0);
  if (!(m->want_dx && m->dx_inplace)) {
    CHECK(memcmp(dy, in->dy, 2 * n) == 0);
    free(dy);
  }
  free(dy1), free(y);
}

static bool same_bf16(const uint16_t *a, const uint16_t *b, size_t n) {
  return (!a && !b) || (a && b && memcmp(a, b, 2 * n) == 0);
}
static bool same_f32(const float *a, const float *b, size_t n) {
  return (!a && !b) || (a && b && memcmp(a, b, 4 * n) == 0);
}

/* ---- the references ------------------------------------------------------------------- */

/* The chain's order of the per-channel double sums (bn_nhwc_cpu.h): per chunk of
 * BN_NHWC_CPU_CHUNK pixels in pixel order from 0, then the chunks in order from 0. v1, v2
 * (P, C) -> s1, s2 (C). */
static void chunked_sums(const double *v1, const double *v2, size_t P, size_t C, double *s1,
                         double *s2) {
  for (size_t c = 0; c < C; c++) {
    s1[c] = s2[c] = 0;
    for (size_t p0 = 0; p0 < P; p0 += BN_NHWC_CPU_CHUNK) {
      double a = 0, b = 0;
      for (size_t p = p0; p < P && p < p0 + BN_NHWC_CPU_CHUNK; p++)
        a += v1[p * C + c], b += v2[p * C + c];
      s1[c] += a, s2[c] += b;
    }
  }
}

static double relu_d(double v, double slope) { return v > 0 ? v : slope * v; }

/* bnh_relu: (v < 0 ? 0 : v) + slope * (0 < v ? 0 : v), in float. */
static float relu_f(float v, float slope) {
  const float mx = v < 0.0f ? 0.0f : v, mn = 0.0f < v ? 0.0f : v;
  return mx + slope * mn;
}

static const char *mode_str(const Mode *m) {
  static char s[256];
  snprintf(s, sizeof s,
           "N %zu C %zu S %zu residual %d relu %d slope %g %s beta %d xn %d dy1 %d xz-in-place %d "
           "dx-in-place %d dx %d dr %d dg %d db %d b2 %g spread %d",
           m->N, m->C, m->S, m->residual, m->relu, (double)m->slope,
           m->global ? "global" : "batch", m->beta, m->keep_xn, m->dy1, m->xz_inplace,
           m->dx_inplace, m->want_dx, m->want_dr, m->want_dg, m->want_db, (double)m->b2, m->spread);
  return s;
}

/* Counts of values outside the double reference's bounds (ref) and unequal to the fp32
 * model (model), per array, first few printed. */
typedef struct Tally {
  int ref, model;
} Tally;

static void report(Tally *t, bool model, const char *what, size_t i, double got, double want,
                   const Mode *m) {
  if (t->ref + t->model < 6)
    fprintf(stderr, "    %s %s[%zu]: got %.9g, want %.9g (%s)\n",
            model ? "model" : "reference", what, i, got, want, mode_str(m));
  if (model)
    t->model++;
  else
    t->ref++;
}

static void check_forward(const Mode *m, const Inputs *in, const Outs *o, Tally *t) {
  const size_t P = in->P, C = in->C, n = in->n;
  const BnNhwcGeom g = geom_of(m);
  const double slope = m->slope;
  double *mean = calloc(C, 8), *var = calloc(C, 8), *sd = calloc(C, 8), *s = calloc(C, 8),
         *q = calloc(C, 8), *v1 = malloc(8 * n), *v2 = malloc(8 * n);
  for (size_t i = 0; i < n; i++) v1[i] = bf16_value(in->x[i]), v2[i] = v1[i] * v1[i];
  chunked_sums(v1, v2, P, C, s, q); /* the model's sums */
  for (size_t c = 0; c < C; c++) {
    char what[64];
    if (m->global) {
      const double f = in->b2 == 0 ? 0 : 1.0 / in->b2;
      mean[c] = f * in->b0[c], var[c] = f * in->b1[c];
      /* model: bnf_global_stats_kernel */
      const float ff = in->b2 == 0.0f ? 0.0f : 1.0f / in->b2;
      const float fm = ff * in->b0[c], fv = ff * in->b1[c];
      const float fs = sqrtf(fv + g.eps);
      if (o->stats[c] != fm || o->stats[C + c] != fv || o->stats[2 * C + c] != fs)
        report(t, true, "global stats", c, o->stats[c], fm, m);
      if (o->b0[c] != in->b0[c] || o->b1[c] != in->b1[c])
        report(t, true, "running stats (unchanged)", c, o->b0[c], in->b0[c], m);
    } else {
      double s0 = 0, d2 = 0;
      for (size_t p = 0; p < P; p++) s0 += bf16_value(in->x[p * C + c]);
      mean[c] = s0 / (double)P;
      for (size_t p = 0; p < P; p++) {
        const double d = bf16_value(in->x[p * C + c]) - mean[c];
        d2 += d * d;
      }
      var[c] = d2 / (double)P;
      /* model: bnh_stats_channel */
      const double mu = s[c] / (double)P;
      double v = q[c] / (double)P - mu * mu;
      if (v < 0) v = 0;
      const float fm = (float)mu, fv = (float)v, fs = sqrtf(fv + g.eps);
      const float rb0 = g.maf * in->b0[c] + fm, rb1 = g.maf * in->b1[c] + g.bias_correction * fv;
      snprintf(what, sizeof what, "mean|var|std|b0|b1 (channel %zu)", c);
      if (o->stats[c] != fm || o->stats[C + c] != fv || o->stats[2 * C + c] != fs ||
          o->b0[c] != rb0 || o->b1[c] != rb1)
        report(t, true, what, c, o->stats[C + c], fv, m);
      /* reference: the running statistics as Caffe */
      const double wb0 = (double)g.maf * in->b0[c] + mean[c];
      const double wb1 = (double)g.maf * in->b1[c] + (double)g.bias_correction * var[c];
      if (fabs(o->b0[c] - wb0) > 1e-6 * (fabs(g.maf * in->b0[c]) + fabs(mean[c])) + 1e-30)
        report(t, false, "running mean", c, o->b0[c], wb0, m);
      if (fabs(o->b1[c] - wb1) > 1e-6 * (fabs(g.maf * in->b1[c]) + fabs(g.bias_correction * var[c])))
        report(t, false, "running var", c, o->b1[c], wb1, m);
    }
    sd[c] = sqrt(var[c] + (double)g.eps);
    const double ex2 = var[c] + mean[c] * mean[c];
    if (fabs(o->stats[c] - mean[c]) > 1e-6 * (fabs(mean[c]) + sd[c]))
      report(t, false, "mean", c, o->stats[c], mean[c], m);
    if (fabs(o->stats[C + c] - var[c]) > 1e-6 * var[c] + 1e-12 * ex2)
      report(t, false, "var", c, o->stats[C + c], var[c], m);
    if (fabs(o->stats[2 * C + c] - sd[c]) > 1e-6 * sd[c])
      report(t, false, "std", c, o->stats[2 * C + c], sd[c], m);
    g_compared += 3;
  }
  if (!m->global) {
    const float rb2 = in->b2 * g.maf + 1.0f;
    if (o->b2 != rb2) report(t, true, "running count", 0, o->b2, rb2, m);
    if (fabs(o->b2 - ((double)in->b2 * g.maf + 1.0)) > 1e-6 * (in->b2 + 1.0))
      report(t, false, "running count", 0, o->b2, (double)in->b2 * g.maf + 1.0, m);
  } else if (o->b2 != in->b2) {
    report(t, true, "running count (unchanged)", 0, o->b2, in->b2, m);
  }

  for (size_t i = 0; i < n; i++) {
    const size_t c = i % C;
    const double x = bf16_value(in->x[i]), r = bf16_value(in->r[i]);
    const double gm = in->gamma[c], b = m->beta ? in->beta[c] : 0.0;
    /* reference */
    const double xh = (x - mean[c]) / sd[c], z = xh * gm + b;
    const double tx = (fabs(x) + fabs(mean[c])) / sd[c], tz = fabs(gm) * tx + fabs(b);
    const double ex = 16 * U * tx, ez = 16 * U * tz, ey = 16 * U * (tz + fabs(r));
    double want_xz, want_y = 0;
    if (m->residual < 0) {
      want_xz = m->relu ? relu_d(z, slope) : z;
    } else {
      want_xz = z;
      want_y = m->relu ? relu_d(z + r, slope) : z + r;
    }
    if (o->xn && !near_bf16(o->xn[i], xh, ex)) report(t, false, "x_norm", i, bf16_value(o->xn[i]), xh, m);
    if (!near_bf16(o->xz[i], want_xz, ez)) report(t, false, "xz", i, bf16_value(o->xz[i]), want_xz, m);
    if (o->y && !near_bf16(o->y[i], want_y, ey)) report(t, false, "y", i, bf16_value(o->y[i]), want_y, m);
    /* model: bnh_forward1 with the chain's own statistics */
    const float fx = bf16_value(in->x[i]), fr = bf16_value(in->r[i]);
    const float fv = (fx - o->stats[c]) / o->stats[2 * C + c];
    const float fz = fv * in->gamma[c] + (m->beta ? in->beta[c] : 0.0f);
    float mxz, my = 0;
    if (m->residual < 0) {
      mxz = m->relu ? relu_f(fz, m->slope) : fz;
    } else {
      mxz = fz;
      const float sum = m->residual == 0 ? fz + fr : fr + fz;
      my = m->relu ? relu_f(sum, m->slope) : sum;
    }
    if (o->xn && o->xn[i] != bf16_bits_cpu(fv)) report(t, true, "x_norm", i, bf16_value(o->xn[i]), fv, m);
    if (o->xz[i] != bf16_bits_cpu(mxz)) report(t, true, "xz", i, bf16_value(o->xz[i]), mxz, m);
    if (o->y && o->y[i] != bf16_bits_cpu(my)) report(t, true, "y", i, bf16_value(o->y[i]), my, m);
    g_compared += 1 + (o->xn != NULL) + (o->y != NULL);
  }
  free(mean), free(var), free(sd), free(s), free(q), free(v1), free(v2);
}

static void check_backward(const Mode *m, const Inputs *in, const BwIn *bw, const Outs *o, Tally *t) {
  const size_t P = in->P, C = in->C, n = in->n;
  const double slope = m->slope;
  const float fsl = m->slope;
  double *sdz = calloc(C, 8), *sdzx = calloc(C, 8), *adzx = calloc(C, 8), *adz = calloc(C, 8);
  double *ad = calloc(C, 8), *adx = calloc(C, 8);  /* sums of |dy| + |dy1|, times |xhat| */
  double *msz = calloc(C, 8), *mszx = calloc(C, 8); /* the model's sums (of fp32 dz) */
  double *dz = malloc(8 * n), *v1 = malloc(8 * n), *v2 = malloc(8 * n);
  float *fdz = malloc(4 * n);
  for (size_t i = 0; i < n; i++) {
    const size_t c = i % C;
    const double d = (double)bf16_value(in->dy[i]) + (m->dy1 ? bf16_value(in->dy1[i]) : 0.0);
    const double yv = bf16_value(bw->y[i]);
    const double f = !m->relu ? 1.0 : yv > 0 ? 1.0 : yv <= 0 ? slope : 0.0; /* NaN: 0 */
    const double xh = bw->xn ? bf16_value(bw->xn[i]) : 0.0;
    dz[i] = d * f;
    sdz[c] += dz[i], sdzx[c] += dz[i] * xh;
    adz[c] += fabs(dz[i]), adzx[c] += fabs(dz[i] * xh);
    const double ab = fabs(bf16_value(in->dy[i])) + (m->dy1 ? fabs(bf16_value(in->dy1[i])) : 0.0);
    ad[c] += ab, adx[c] += ab * fabs(xh);
    /* model: bnh_dz in float */
    const float fy = bf16_value(bw->y[i]);
    float fd = bf16_value(in->dy[i]);
    if (m->dy1) fd = fd + bf16_value(in->dy1[i]);
    fdz[i] = m->relu ? fd * ((float)(fy > 0.0f) + fsl * (float)(fy <= 0.0f)) : fd;
    v1[i] = fdz[i], v2[i] = (double)fdz[i] * (bw->xn ? bf16_value(bw->xn[i]) : 0.0f);
  }
  chunked_sums(v1, v2, P, C, msz, mszx);
  for (size_t c = 0; c < C; c++) {
    if (o->dg) {
      const double want = in->dg0[c] + sdzx[c];
      if (fabs(o->dg[c] - want) > 1e-6 * (adzx[c] + fabs(in->dg0[c])))
        report(t, false, "dgamma", c, o->dg[c], want, m);
      const float mw = in->dg0[c] + (float)mszx[c];
      if (o->dg[c] != mw) report(t, true, "dgamma", c, o->dg[c], mw, m);
      g_compared++;
    }
    if (o->db) {
      const double want = in->db0[c] + sdz[c];
      if (fabs(o->db[c] - want) > 1e-6 * (adz[c] + fabs(in->db0[c])))
        report(t, false, "dbeta", c, o->db[c], want, m);
      const float mw = in->db0[c] + (float)msz[c];
      if (o->db[c] != mw) report(t, true, "dbeta", c, o->db[c], mw, m);
      g_compared++;
    }
  }
  for (size_t i = 0; i < n; i++) {
    const size_t c = i % C;
    const double ab = fabs(bf16_value(in->dy[i])) + (m->dy1 ? fabs(bf16_value(in->dy1[i])) : 0.0);
    if (o->dr) {
      if (!near_bf16(o->dr[i], dz[i], 2 * U * ab + U * fabs(dz[i])))
        report(t, false, "dr", i, bf16_value(o->dr[i]), dz[i], m);
      if (o->dr[i] != bf16_bits_cpu(fdz[i])) report(t, true, "dr", i, bf16_value(o->dr[i]), fdz[i], m);
      g_compared++;
    }
    if (!o->dx) continue;
    const double gm = in->gamma[c], sd = bw->stats[2 * C + c];
    double want, e;
    const float fg = in->gamma[c], fsd = bw->stats[2 * C + c];
    float mdx;
    if (m->global) {
      want = dz[i] * gm / sd;
      e = 16 * U * fabs(gm) * (ab + fabs(dz[i])) / sd;
      mdx = (fdz[i] * fg) / fsd;
    } else {
      const double xh = bf16_value(bw->xn[i]);
      const double wa = gm * sdz[c] / (double)P, wb = gm * sdzx[c] / (double)P;
      want = (dz[i] * gm - wa - wb * xh) / sd;
      /* the terms, and the fp32 dz errors summed into wa, wb */
      e = 16 * U *
          (fabs(dz[i] * gm) + fabs(wa) + fabs(wb * xh) + fabs(gm) * ab +
           fabs(gm) * (ad[c] + adx[c] * fabs(xh)) / (double)P) /
          sd;
      /* model: bnh_grad_channel, bnh_dx1 */
      const float fwa = (float)((double)fg * msz[c] / (double)P);
      const float fwb = (float)((double)fg * mszx[c] / (double)P);
      const float fxh = bf16_value(bw->xn[i]);
      mdx = (fdz[i] * fg - fwa - fwb * fxh) / fsd;
    }
    if (!near_bf16(o->dx[i], want, e)) report(t, false, "dx", i, bf16_value(o->dx[i]), want, m);
    if (o->dx[i] != bf16_bits_cpu(mdx)) report(t, true, "dx", i, bf16_value(o->dx[i]), mdx, m);
    g_compared++;
  }
  free(sdz), free(sdzx), free(adzx), free(adz), free(ad), free(adx), free(msz), free(mszx);
  free(dz), free(fdz), free(v1), free(v2);
}

/* ---- the cases ------------------------------------------------------------------------- */

static int g_cases, g_multi; /* cases run; of them, large enough for several threads */

static bool coin(int percent) { return (int)(rng_u32(&g_rng) % 100) < percent; }

static Mode random_mode(size_t N, size_t C, size_t S) {
  Mode m = {N, C, S};
  m.residual = (int)(rng_u32(&g_rng) % 3) - 1;
  const int relu = (int)(rng_u32(&g_rng) % 3); /* none, slope 0, slope 0.1 */
  m.relu = relu > 0;
  m.slope = relu == 2 ? 0.1f : 0.0f;
  m.global = coin(35);
  m.beta = coin(75);
  m.dy1 = coin(50);
  m.xz_inplace = coin(50);
  m.want_dx = coin(80);
  m.dx_inplace = m.want_dx && coin(50);
  m.want_dr = m.residual >= 0 && coin(80);
  m.want_dg = coin(75);
  m.want_db = m.beta && coin(75);
  /* x_norm not kept only when the backward makes no sums (global, no parameter gradients) */
  m.keep_xn = !(m.global && !m.want_dg && !m.want_db && coin(60));
  static const float b2s[] = {1.0f, 3.7f, 0.0f};
  m.b2 = b2s[rng_u32(&g_rng) % (m.global ? 3 : 2)];
  m.spread = coin(30);
  return m;
}

static void run_case(const Mode *m) {
  Inputs in = make_inputs(m);
  const size_t n = in.n, C = in.C;
  static const int threads[] = {1, 2, 3};
  Outs f[3] = {{0}}, b[3] = {{0}};
  Tally tf = {0, 0}, tb = {0, 0};
  for (int k = 0; k < 3; k++) run_forward(m, &in, threads[k], &f[k]);
  for (int k = 1; k < 3; k++)
    CHECK_MSG(same_f32(f[k].stats, f[0].stats, 3 * C) && same_f32(f[k].b0, f[0].b0, C) &&
                  same_f32(f[k].b1, f[0].b1, C) && f[k].b2 == f[0].b2 &&
                  same_bf16(f[k].xn, f[0].xn, n) && same_bf16(f[k].xz, f[0].xz, n) &&
                  same_bf16(f[k].y, f[0].y, n),
              "forward on %d threads differs from 1 thread (%s)", threads[k], mode_str(m));
  check_forward(m, &in, &f[0], &tf);
  CHECK_MSG(tf.ref == 0 && tf.model == 0, "forward: %d values off the double reference, %d off "
            "the fp32 model (%s)", tf.ref, tf.model, mode_str(m));

  /* backward inputs: the chain output with NaNs and signed zeros in the mask */
  BwIn bw = {malloc(2 * n), f[0].xn, f[0].stats};
  memcpy(bw.y, m->residual >= 0 ? f[0].y : f[0].xz, 2 * n);
  for (size_t i = 5; i < n; i += 53) bw.y[i] = 0x7FC0;      /* NaN */
  for (size_t i = 11; i < n; i += 61) bw.y[i] = 0x8000;     /* -0 */
  for (size_t i = 17; i < n; i += 67) bw.y[i] = 0x0000;     /* +0 */
  for (int k = 0; k < 3; k++) run_backward(m, &in, &bw, threads[k], &b[k]);
  for (int k = 1; k < 3; k++)
    CHECK_MSG(same_bf16(b[k].dx, b[0].dx, n) && same_bf16(b[k].dr, b[0].dr, n) &&
                  same_f32(b[k].dg, b[0].dg, C) && same_f32(b[k].db, b[0].db, C),
              "backward on %d threads differs from 1 thread (%s)", threads[k], mode_str(m));
  check_backward(m, &in, &bw, &b[0], &tb);
  CHECK_MSG(tb.ref == 0 && tb.model == 0, "backward: %d values off the double reference, %d "
            "off the fp32 model (%s)", tb.ref, tb.model, mode_str(m));
  for (int k = 0; k < 3; k++) free_outs(&f[k]), free_outs(&b[k]);
  free(bw.y);
  free_inputs(&in);
  g_cases++;
  g_multi += n >= FAST_GRAIN;
}

static void test_random_modes(void) {
  static const size_t Cs[] = {8, 24, 64, 200, 256}, Ss[] = {1, 7, 49, 196, 144};
  const int saved = omp_get_max_threads();
  for (int k = 0; k < 80; k++) {
    const size_t N = 1 + rng_u32(&g_rng) % 3, C = Cs[rng_u32(&g_rng) % 5],
                 S = Ss[rng_u32(&g_rng) % 5];
    const Mode m = random_mode(N, C, S);
    run_case(&m);
  }
  omp_set_num_threads(saved);
}

/* Shapes with P*C >= FAST_GRAIN (several threads), each in a few random modes: both kinds
 * of kernels (bn_nhwc_cpu.c: narrow up to 128 channels, in blocks of 64; wide, in ranges of
 * up to 512), with masked tails in each (120, 136, 520). */
static void test_large_shapes(void) {
  static const size_t shapes[][3] = {
      {2, 256, 196}, {3, 200, 144}, {1, 2048, 49}, {3, 64, 196}, {2, 24, 784}, {2, 64, 3136},
      {2, 1024, 49}, {3, 8, 2000}, {2, 128, 196}, {3, 120, 196}, {3, 136, 98}, {2, 520, 49}};
  const int saved = omp_get_max_threads();
  for (size_t s = 0; s < MOKA_ARRAY_LEN(shapes); s++)
    for (int k = 0; k < 4; k++) {
      const Mode m = random_mode(shapes[s][0], shapes[s][1], shapes[s][2]);
      run_case(&m);
    }
  omp_set_num_threads(saved);
  fprintf(stderr, "    %d cases so far (%d on several threads), %ld values compared\n", g_cases,
          g_multi, g_compared);
}

/* Every flag combination once at a small multi-threaded shape. */
static void test_all_modes(void) {
  const int saved = omp_get_max_threads();
  for (int bits = 0; bits < 3 * 3 * 2 * 2 * 2; bits++) {
    Mode m = random_mode(2, 200, 98); /* 39200 values: several threads; a 8-channel tail */
    int v = bits;
    m.residual = v % 3 - 1, v /= 3;
    const int relu = v % 3;
    v /= 3;
    m.relu = relu > 0, m.slope = relu == 2 ? 0.1f : 0.0f;
    m.global = v % 2, v /= 2;
    m.beta = v % 2, v /= 2;
    m.dy1 = v % 2;
    m.want_db = m.want_db && m.beta;
    m.keep_xn = m.keep_xn || !m.global || m.want_dg || m.want_db;
    m.want_dr = m.residual >= 0;
    run_case(&m);
  }
  omp_set_num_threads(saved);
}

/* The sums' order itself (bn_nhwc_cpu.h: chunks of BN_NHWC_CPU_CHUNK pixels, added in
 * order), which the random cases cannot see (their double sums round to the same floats in
 * any order): one channel holds 2^60, 1, -2^60, 0.5 at the first pixels of chunks 0..3,
 * zeros elsewhere. In that order the total is ((2^60 + 1) - 2^60) + 0.5 = 0.5; chunks
 * added in another order or grouped (per thread, say) give 0. x: the mean; dy with x_norm
 * 1: dbeta and dgamma. On 1, 2 and 3 threads. */
static void test_sum_order(void) {
  const size_t C = 64, P = 4 * BN_NHWC_CPU_CHUNK, n = P * C, ch = 5;
  Mode m = {1, C, P, -1, false, 0.0f};
  const BnNhwcGeom g = geom_of(&m);
  uint16_t *x = calloc(n, 2), *xz = malloc(2 * n), *dy = calloc(n, 2), *xn = malloc(2 * n);
  uint16_t *dx = malloc(2 * n);
  static const float seq[4] = {0x1p60f, 1.0f, -0x1p60f, 0.5f};
  for (int j = 0; j < 4; j++) {
    x[(size_t)j * BN_NHWC_CPU_CHUNK * C + ch] = bf16_bits_cpu(seq[j]);
    dy[(size_t)j * BN_NHWC_CPU_CHUNK * C + ch] = bf16_bits_cpu(seq[j]);
  }
  for (size_t i = 0; i < n; i++) xn[i] = bf16_bits_cpu(1.0f);
  float st[3 * 64], b0[64] = {0}, b1[64] = {0}, b2 = 0, gm[64], dg[64], db[64];
  for (size_t c = 0; c < C; c++) gm[c] = 1.0f;
  const int saved = omp_get_max_threads();
  for (int t = 1; t <= 3; t++) {
    omp_set_num_threads(t);
    CHECK(bn_nhwc_cpu_forward(&g, x, xz, NULL, NULL, NULL, st, b0, b1, &b2, gm, NULL) == 0);
    CHECK_MSG(st[ch] == (float)(0.5 / (double)P), "threads %d: mean %.9g, want %.9g", t,
              (double)st[ch], 0.5 / (double)P);
    memset(dg, 0, sizeof dg), memset(db, 0, sizeof db);
    CHECK(bn_nhwc_cpu_backward(&g, dy, NULL, NULL, xn, st, gm, dx, NULL, dg, db) == 0);
    CHECK_MSG(db[ch] == 0.5f && dg[ch] == 0.5f, "threads %d: dbeta %g dgamma %g, want 0.5", t,
              (double)db[ch], (double)dg[ch]);
  }
  omp_set_num_threads(saved);
  free(x), free(xz), free(dy), free(xn), free(dx);
}

static void test_refused(void) {
  uint16_t a[64] = {0}, o[64];
  float st[48], b0[16] = {0}, b1[16] = {0}, b2 = 1, gm[16] = {0};
  BnNhwcGeom g = {1, 12, 2, 1e-5f, 0.9f, 2.0f, false, false, false, 0.0f, -1};
  CHECK(bn_nhwc_cpu_forward(&g, a, o, NULL, NULL, NULL, st, b0, b1, &b2, gm, NULL) == -1);
  CHECK(strstr(moka_error(), "multiples of 8") != NULL);
  CHECK(bn_nhwc_cpu_backward(&g, a, NULL, NULL, a, st, gm, o, NULL, NULL, NULL) == -1);
  g.C = 4;
  CHECK(bn_nhwc_cpu_forward(&g, a, o, NULL, NULL, NULL, st, b0, b1, &b2, gm, NULL) == -1);
  g.C = 0;
  CHECK(bn_nhwc_cpu_forward(&g, a, o, NULL, NULL, NULL, st, b0, b1, &b2, gm, NULL) == -1);
  g.C = 8, g.residual = 0; /* a residual without y and r */
  CHECK(bn_nhwc_cpu_forward(&g, a, o, NULL, NULL, NULL, st, b0, b1, &b2, gm, NULL) == -1);
  g.residual = -1; /* batch dx without x_norm */
  CHECK(bn_nhwc_cpu_backward(&g, a, NULL, NULL, NULL, st, gm, o, NULL, NULL, NULL) == -1);
  g.N = 0; /* no pixels: nothing to do, nothing touched */
  b2 = 5.0f;
  CHECK(bn_nhwc_cpu_forward(&g, a, o, NULL, NULL, NULL, st, b0, b1, &b2, gm, NULL) == 0);
  CHECK(b2 == 5.0f);
}

/* ---- bench ----------------------------------------------------------------------------- */

typedef struct BenchShape {
  size_t C, HW;
  bool residual;
} BenchShape;

static const BenchShape kBench[] = {
    {64, 56, false}, {256, 56, true}, {128, 28, false}, {512, 28, true},
    {256, 14, false}, {1024, 14, true}, {512, 7, false}, {2048, 7, true}};

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median9(double *t) {
  qsort(t, 9, sizeof *t, cmp_double);
  return t[4];
}

/* The bf16 chain at batch N: forward (batch statistics, x_norm kept, xz in place on x) and
 * backward (dx, dgamma, dbeta; residual: dy + dy1, dr, dx separate; else dx in place on
 * dy), the inputs restored before each run (not timed). */
static void bench_bf16(const BenchShape *s, size_t N, double *fwd_ms, double *bwd_ms) {
  const size_t C = s->C, S = s->HW * s->HW, P = N * S, n = P * C;
  Mode m = {N, C, S, s->residual ? 1 : -1, true, 0.0f};
  const BnNhwcGeom g = geom_of(&m);
  uint16_t *x0 = malloc(2 * n), *x = malloc(2 * n), *r = malloc(2 * n), *y = malloc(2 * n);
  uint16_t *xn = malloc(2 * n), *dy0 = malloc(2 * n), *dy = malloc(2 * n), *dy1 = malloc(2 * n);
  uint16_t *dx = s->residual ? malloc(2 * n) : dy, *dr = s->residual ? malloc(2 * n) : NULL;
  float *st = malloc(12 * C), *b0 = calloc(C, 4), *b1 = calloc(C, 4), b2 = 0;
  float *gm = malloc(4 * C), *be = malloc(4 * C), *dg = calloc(C, 4), *db = calloc(C, 4);
  for (size_t i = 0; i < n; i++) {
    x0[i] = gauss_bf16(0.3f, 1.0f), r[i] = gauss_bf16(0.0f, 1.0f);
    dy0[i] = gauss_bf16(0.0f, 0.01f), dy1[i] = gauss_bf16(0.0f, 0.01f);
  }
  for (size_t c = 0; c < C; c++) gm[c] = rng_gaussian(&g_rng, 1, 0.2f), be[c] = 0.1f;
  double tf[9], tb[9];
  for (int it = -1; it < 9; it++) {
    memcpy(x, x0, 2 * n);
    double t0 = moka_now();
    if (bn_nhwc_cpu_forward(&g, x, x, s->residual ? y : NULL, s->residual ? r : NULL, xn, st, b0,
                            b1, &b2, gm, be))
      fprintf(stderr, "%s\n", moka_error());
    double t1 = moka_now();
    memcpy(dy, dy0, 2 * n);
    const uint16_t *yy = s->residual ? y : x;
    double t2 = moka_now();
    if (bn_nhwc_cpu_backward(&g, dy, s->residual ? dy1 : NULL, yy, xn, st, gm, dx, dr, dg, db))
      fprintf(stderr, "%s\n", moka_error());
    double t3 = moka_now();
    if (it >= 0) tf[it] = (t1 - t0) * 1e3, tb[it] = (t3 - t2) * 1e3;
  }
  *fwd_ms = median9(tf), *bwd_ms = median9(tb);
  free(x0), free(x), free(r), free(y), free(xn), free(dy0), free(dy), free(dy1);
  if (s->residual) free(dx), free(dr);
  free(st), free(b0), free(b1), free(gm), free(be), free(dg), free(db);
}

/* The fp32 NCHW fused chain (net_fuse.c) on the same shape: Input -> BatchNorm -> Scale
 * [-> Eltwise(x, r)] -> ReLU, force_backward; the chain's forward and backward layers
 * timed (net_forward_layer / net_backward_layer), x restored before each forward. 0, or -1
 * when the net did not build or did not fuse. */
static int bench_f32(const BenchShape *s, size_t N, double *fwd_ms, double *bwd_ms) {
  char text[4096];
  const int C = (int)s->C, H = (int)s->HW;
  snprintf(text, sizeof text,
           "name: \"chain\" force_backward: true\n"
           "layer { name: \"in\" type: \"Input\" top: \"x\" top: \"r\"\n"
           "  input_param { shape { dim: %zu dim: %d dim: %d dim: %d } "
           "shape { dim: %zu dim: %d dim: %d dim: %d } } }\n"
           "layer { name: \"bn\" type: \"BatchNorm\" bottom: \"x\" top: \"x\" }\n"
           "layer { name: \"sc\" type: \"Scale\" bottom: \"x\" top: \"x\" "
           "scale_param { bias_term: true } }\n"
           "%s"
           "layer { name: \"relu\" type: \"ReLU\" bottom: \"%s\" top: \"%s\" }\n%s",
           N, C, H, H, N, C, H, H,
           s->residual ? "layer { name: \"sum\" type: \"Eltwise\" bottom: \"r\" bottom: \"x\" "
                         "top: \"y\" }\n"
                       : "",
           s->residual ? "y" : "x", s->residual ? "y" : "x",
           s->residual ? "layer { name: \"next_a\" type: \"ReLU\" bottom: \"y\" top: \"a\" }\n"
                         "layer { name: \"next_b\" type: \"ReLU\" bottom: \"y\" top: \"b\" }\n"
                       : "");
  Net *net = net_from_text_on(text, MOKA_TRAIN, MOKA_BACKEND_CPU_FAST, 7, "fp32 chain");
  if (!net || !net->fuse || net->fuse->n_chains != 1 ||
      (s->residual && net->fuse->chains[0].split < 0)) {
    fprintf(stderr, "  fp32 chain: %s\n", net ? "not fused" : moka_error());
    net_free(net);
    return -1;
  }
  const FusedChain *ch = &net->fuse->chains[0];
  Blob *x = net_blob(net, "x"), *r = net_blob(net, "r");
  Blob *y = s->residual ? net_blob(net, "y") : x;
  float *x0 = malloc(sizeof(float) * x->count);
  for (size_t i = 0; i < x->count; i++) {
    x0[i] = rng_gaussian(&g_rng, 0.3f, 1.0f);
    r->data[i] = rng_gaussian(&g_rng, 0.0f, 1.0f);
  }
  float loss;
  memcpy(x->data, x0, sizeof(float) * x->count);
  int rc = net_forward(net, &loss);
  /* the chain's dy: y's diff, or (residual) the two Split tops' diffs it sums */
  const Layer *split = ch->split >= 0 ? net->layers[ch->split] : NULL;
  for (int k = 0; k < (split ? 2 : 1); k++) {
    Blob *d = split ? split->top[k] : y;
    for (size_t i = 0; i < d->count; i++) d->diff[i] = 0.01f * (float)((i * 7919 + k) % 97) - 0.48f;
  }
  double tf[9], tb[9];
  for (int it = -1; it < 9 && rc == 0; it++) {
    memcpy(x->data, x0, sizeof(float) * x->count);
    double t0 = moka_now();
    rc |= net_forward_layer(net, ch->fwd_at);
    double t1 = moka_now();
    if (!split) /* dx is written over dy (x and y are one blob) */
      for (size_t i = 0; i < y->count; i++) y->diff[i] = 0.01f * (float)((i * 7919) % 97) - 0.48f;
    double t2 = moka_now();
    rc |= net_backward_layer(net, ch->bwd_at);
    double t3 = moka_now();
    if (it >= 0) tf[it] = (t1 - t0) * 1e3, tb[it] = (t3 - t2) * 1e3;
  }
  if (rc) fprintf(stderr, "  fp32 chain: %s\n", moka_error());
  free(x0);
  net_free(net);
  if (rc) return -1;
  *fwd_ms = median9(tf), *bwd_ms = median9(tb);
  return 0;
}

static int bench(void) {
  const size_t N = 8;
  fast_init();
  printf("bn_nhwc_cpu bench: ResNet-50's BatchNorm chains at batch %zu, %d threads, "
         "median of 9 (ms)\n", N, fast_threads());
  printf("%-28s %10s %10s %10s %10s %12s %12s\n", "chain (C @ HxW)", "bf16 fwd", "bf16 bwd",
         "f32 fwd", "f32 bwd", "bf16 fwd GB/s", "bf16 bwd GB/s");
  for (size_t k = 0; k < MOKA_ARRAY_LEN(kBench); k++) {
    const BenchShape *s = &kBench[k];
    double bf, bb, ff = NAN, fb = NAN;
    bench_bf16(s, N, &bf, &bb);
    (void)bench_f32(s, N, &ff, &fb);
    /* bytes: forward reads x twice (+ r), writes xz, x_norm (+ y); backward reads dy (+ dy1),
     * y, x_norm twice, writes dx (+ dr) */
    const double v = 2.0 * N * s->HW * s->HW * s->C;
    const double bytes_f = v * (s->residual ? 6 : 4), bytes_b = v * (s->residual ? 10 : 7);
    char name[64];
    snprintf(name, sizeof name, "%zu @ %zux%zu%s", s->C, s->HW, s->HW,
             s->residual ? " residual" : "");
    printf("%-28s %10.3f %10.3f %10.3f %10.3f %12.1f %12.1f\n", name, bf, bb, ff, fb,
           bytes_f / bf * 1e-6, bytes_b / bb * 1e-6);
  }
  return 0;
}

int main(int argc, char **argv) {
  moka_set_log_level(1);
  if (!fast_bf16_supported()) {
    printf("SKIP test_bn_nhwc_cpu: this CPU has no AVX-512 BF16\n");
    return 0;
  }
  rng_seed(&g_rng, 4242);
  if (argc > 1 && strcmp(argv[1], "bench") == 0) return bench();
  RUN(test_refused);
  RUN(test_sum_order);
  RUN(test_random_modes);
  RUN(test_all_modes);
  RUN(test_large_shapes);
  return test_summary();
}
