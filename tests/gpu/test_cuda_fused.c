/* test_cuda_fused.c — the fused BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] op
 * (kernels/bn_fused.cu, src/net_fuse_cuda.c) and the device memory plan
 * (src/net_memplan.h in src/net_cuda.c), on a GPU. Without one (or in a build
 * without CUDA) it prints "SKIP: no CUDA device (<reason>)" and exits 0.
 *
 * 1. The op against the CPU reference layers chained (layer_create +
 *    layer_forward/backward on MOKA_BACKEND_CPU: BatchNorm, Scale with bias,
 *    Eltwise SUM, ReLU, in place as Kaiming's prototxts write them), TRAIN
 *    (batch statistics, running statistics updated) and TEST (global
 *    statistics), with and without ReLU (slope 0 and 0.1), with and without
 *    the residual (in both bottom orders), on awkward shapes: batch 1, odd
 *    H/W, C not a multiple of 32, 1x1, 7x7, 56x56 and 112x112 planes (the
 *    last ones split each channel's sums over several blocks), planes of whole
 *    float4s (the vector path, on by default; run.sh runs this test again
 *    with MOKA_BNF_VEC=0 for the scalar one) including 257 images. Compared:
 *    the in-place blob (z or relu(z)), the Eltwise/ReLU output, x_norm, the
 *    running statistics, dx (aliasing dy when in place), the shortcut's
 *    gradient, dgamma and dbeta (accumulated onto random initial values).
 *    Bound (NMSE, as test_cuda_layers): forward 1e-10 (the reference's float
 *    operations in its order; the statistics' double sums in another order);
 *    backward 1e-8 (the fused op sums dz and dz*xhat once and multiplies by
 *    gamma after, where the layers sum the rounded dz*gamma: a host port of
 *    the kernels gives NMSE < 1e-13 on every shape except m = N*H*W = 2,
 *    where BatchNorm's dx is cancellation noise (~1e-4 of dy) and the NMSE
 *    is up to 3.5e-9, deterministic; a wrong index or a missing gamma gives
 *    0.01 to 1).
 * 2. Whole nets: a small two-block ResNet made for the CUDA backend (so its
 *    chains fuse) against the same net on the CPU reference, same weights and
 *    inputs: TRAIN forward+backward (loss, every parameter gradient, the BN
 *    statistics, a blob kept by name with memplan_keep) and TEST forward,
 *    with the memory plan on and off; the chains must really have run fused.
 * 3. Against real Caffe with the memory plan and fusion on: the mini ResNet's
 *    `prob` (its one output) and mini_train's first iteration (loss,
 *    parameter gradients, BN statistics), as test_cuda_layers checks them
 *    with every blob kept.
 */
#include <math.h>
#include <stdbool.h>
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
#include "layers/batchnorm_priv.h"
#include "layers/fast.h"
#include "manifest.h"
#include "gputest.h"
#include "resnet_nets.h"
#include "moka_cuda.h"
#include "net.h"
#include "net_cuda.h"
#include "net_fuse.h"
#include "prototxt.h"
#include "util.h"

#define B_FWD 1e-10
#define B_BWD 1e-8

static MokaCuda *ctx;

/* ---- helpers ------------------------------------------------------------------------------ */

static double nmse(const float *a, const float *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * (double)b[i];
  }
  return den > 0 ? num / den : num;
}

static bool close_to(const char *what, const float *got, const float *want, size_t n,
                     double bound) {
  const double e = nmse(got, want, n);
  if (!(e <= bound)) {
    size_t wi = 0;
    double wd = -1;
    for (size_t i = 0; i < n; i++) {
      const double d = fabs((double)got[i] - (double)want[i]);
      if (d > wd || isnan(d)) {
        wd = d;
        wi = i;
      }
    }
    CHECK_MSG(false, "%s: NMSE %.3g > %.1g (worst at %zu: got %.9g want %.9g)", what, e, bound,
              wi, n ? (double)got[wi] : 0.0, n ? (double)want[wi] : 0.0);
    return false;
  }
  return true;
}

static float *dup_f(const float *p, size_t n) {
  float *q = malloc((n ? n : 1) * sizeof(float));
  if (n) memcpy(q, p, n * sizeof(float));
  return q;
}

static void fill(Rng *r, float *p, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) p[i] = rng_uniform(r, lo, hi);
}

static Caffe__LayerParameter *layer_param(const char *text) {
  ProtobufCMessage *m = NULL;
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  return (Caffe__LayerParameter *)m;
}

/* A device copy of n floats (NULL src: zeros); NULL on failure. */
static float *dev_from(const float *src, size_t n) {
  void *d = NULL;
  if (moka_dev_calloc(&d, (n ? n : 1) * sizeof(float), "test_cuda_fused")) return NULL;
  if (src && n && moka_h2d(ctx->stream, d, src, n * sizeof(float))) return NULL;
  return d;
}

static bool dev_to(float *dst, const float *dev, size_t n) {
  return moka_d2h(ctx->stream, dst, dev, n * sizeof(float)) == 0;
}

/* ---- 1. the op against the reference layers ----------------------------------------------- */

typedef struct Case {
  int N, C, H, W;
  bool train;     /* batch statistics (else global) */
  bool relu;
  float slope;
  int residual;   /* -1 none; 0: the branch is the Eltwise's bottom 0; 1: bottom 1 */
  bool split2;    /* the chain sums the Split after it: dy = dy0 + dy1 (two device diffs) */
} Case;

static void run_case(const Case *k) {
  char name[160];
  snprintf(name, sizeof name, "(%d,%d,%d,%d) %s%s%s%s%s", k->N, k->C, k->H, k->W,
           k->train ? "TRAIN" : "TEST", k->relu ? " relu" : "",
           k->relu && k->slope != 0 ? "(0.1)" : "",
           k->residual < 0 ? "" : k->residual == 0 ? " +res(0)" : " +res(1)",
           k->split2 ? " dy0+dy1" : "");
  const Phase ph = k->train ? MOKA_TRAIN : MOKA_TEST;
  Rng drng, lrng;
  rng_seed(&drng, 4321u + (unsigned)(k->N * 131 + k->C * 17 + k->H * 3 + k->W));
  rng_seed(&lrng, 5);
  char relu_text[128];
  snprintf(relu_text, sizeof relu_text, "name: 'relu' type: 'ReLU' relu_param { negative_slope: %g }",
           (double)k->slope);
  Caffe__LayerParameter *bn_lp = layer_param("name: 'bn' type: 'BatchNorm'");
  Caffe__LayerParameter *sc_lp = layer_param("name: 'sc' type: 'Scale' scale_param { bias_term: true }");
  Caffe__LayerParameter *el_lp = layer_param("name: 'el' type: 'Eltwise' eltwise_param { operation: SUM }");
  Caffe__LayerParameter *re_lp = layer_param(relu_text);
  REQUIRE(bn_lp && sc_lp && el_lp && re_lp);

  const bool res = k->residual >= 0;
  Blob *x = blob_new("x"), *r = blob_new("r"), *yb = res ? blob_new("y") : x;
  REQUIRE(blob_reshape4(x, k->N, k->C, k->H, k->W) == 0 &&
          blob_reshape4(r, k->N, k->C, k->H, k->W) == 0);
  const size_t n = x->count, C = (size_t)k->C;
  /* x with a per-channel offset and spread, so mean and variance matter */
  for (size_t i = 0; i < n; i++) {
    const size_t c = (i / (size_t)(k->H * k->W)) % C;
    x->data[i] = 0.3f * (float)(c % 5) - 0.5f + (1.0f + 0.1f * (float)(c % 7)) *
                                                   rng_uniform(&drng, -1.0f, 1.0f);
  }
  fill(&drng, r->data, n, -1.0f, 1.0f);
  Layer *bn = layer_create(bn_lp, ph, &lrng, &x, 1, &x, 1);
  Layer *sc = layer_create(sc_lp, ph, &lrng, &x, 1, &x, 1);
  Blob *el_bot[2] = {k->residual == 0 ? x : r, k->residual == 0 ? r : x};
  Layer *el = res ? layer_create(el_lp, ph, &lrng, el_bot, 2, &yb, 1) : NULL;
  Layer *re = k->relu ? layer_create(re_lp, ph, &lrng, &yb, 1, &yb, 1) : NULL;
  REQUIRE(bn && sc && (!res || el) && (!k->relu || re));
  /* statistics with scale factor 0.73 (as the golden files), random gamma
   * (both signs), beta, and initial parameter gradients */
  for (size_t c = 0; c < C; c++) {
    bn->params[0]->data[c] = 0.73f * rng_uniform(&drng, -0.5f, 0.5f);
    bn->params[1]->data[c] = 0.73f * rng_uniform(&drng, 0.5f, 1.5f);
  }
  bn->params[2]->data[0] = 0.73f;
  fill(&drng, sc->params[0]->data, C, -1.5f, 1.5f);
  fill(&drng, sc->params[1]->data, C, -0.5f, 0.5f);
  fill(&drng, sc->params[0]->diff, C, -1.0f, 1.0f);
  fill(&drng, sc->params[1]->diff, C, -1.0f, 1.0f);
  float *x0 = dup_f(x->data, n), *r0 = dup_f(r->data, n);
  float *b00 = dup_f(bn->params[0]->data, C), *b10 = dup_f(bn->params[1]->data, C);
  const float b20 = bn->params[2]->data[0];
  float *g0 = dup_f(sc->params[0]->data, C), *be0 = dup_f(sc->params[1]->data, C);
  float *dg0 = dup_f(sc->params[0]->diff, C), *db0 = dup_f(sc->params[1]->diff, C);

  /* CPU reference, layer by layer. */
  REQUIRE(layer_forward(bn, MOKA_BACKEND_CPU) == 0 && layer_forward(sc, MOKA_BACKEND_CPU) == 0);
  if (el) REQUIRE(layer_forward(el, MOKA_BACKEND_CPU) == 0);
  if (re) REQUIRE(layer_forward(re, MOKA_BACKEND_CPU) == 0);
  float *ref_xz = dup_f(x->data, n), *ref_y = res ? dup_f(yb->data, n) : NULL;
  float *ref_xn = dup_f(((BatchNormPriv *)bn->priv)->x_norm, n);
  float *ref_b0 = dup_f(bn->params[0]->data, C), *ref_b1 = dup_f(bn->params[1]->data, C);
  const float ref_b2 = bn->params[2]->data[0];
  float *dy = malloc(n * sizeof(float)), *dy1 = k->split2 ? malloc(n * sizeof(float)) : NULL;
  REQUIRE(dy && (!k->split2 || dy1));
  fill(&drng, dy, n, -1.0f, 1.0f);
  memcpy(yb->diff, dy, n * sizeof(float));
  if (dy1) { /* the reference takes the Split's sum as its dy */
    fill(&drng, dy1, n, -1.0f, 1.0f);
    for (size_t i = 0; i < n; i++) yb->diff[i] = dy[i] + dy1[i];
  }
  if (re) REQUIRE(layer_backward(re, MOKA_BACKEND_CPU) == 0);
  if (el) REQUIRE(layer_backward(el, MOKA_BACKEND_CPU) == 0);
  REQUIRE(layer_backward(sc, MOKA_BACKEND_CPU) == 0 && layer_backward(bn, MOKA_BACKEND_CPU) == 0);
  float *ref_dx = dup_f(x->diff, n), *ref_dr = res ? dup_f(r->diff, n) : NULL;
  float *ref_dg = dup_f(sc->params[0]->diff, C), *ref_db = dup_f(sc->params[1]->diff, C);

  /* The fused op on the device, from the same starting state. */
  MokaBnFusedGeom g = {.N = (size_t)k->N, .C = C, .S = (size_t)(k->H * k->W),
                       .eps = ((BatchNormPriv *)bn->priv)->eps,
                       .maf = ((BatchNormPriv *)bn->priv)->maf,
                       .use_global = !k->train, .has_relu = k->relu, .relu_bw = k->relu,
                       .slope = k->slope, .residual = k->residual};
  const size_t m = g.N * g.S;
  g.bias_correction = m > 1 ? (float)m / (float)(m - 1) : 1.0f;
  float *d_x = dev_from(x0, n), *d_r = dev_from(r0, n), *d_y = dev_from(NULL, n);
  float *d_xn = dev_from(NULL, n), *d_st = dev_from(NULL, 3 * C);
  float *d_b0 = dev_from(b00, C), *d_b1 = dev_from(b10, C), *d_b2 = dev_from(&b20, 1);
  float *d_g = dev_from(g0, C), *d_be = dev_from(be0, C);
  float *d_dg = dev_from(dg0, C), *d_db = dev_from(db0, C);
  float *d_dy = dev_from(dy, n), *d_dr = dev_from(NULL, n);
  float *d_dy1 = dy1 ? dev_from(dy1, n) : NULL;
  float *d_dx = res ? dev_from(NULL, n) : d_dy; /* in place: dx overwrites dy */
  void *scratch = NULL;
  REQUIRE(moka_dev_calloc(&scratch, moka_cuda_bn_fused_scratch_bytes(&g), "scratch") == 0);
  REQUIRE(d_x && d_r && d_y && d_xn && d_st && d_b0 && d_b1 && d_b2 && d_g && d_be && d_dg &&
          d_db && d_dy && d_dr && d_dx);
  bool ok = moka_cuda_bn_fused_forward(ctx->stream, &g, d_x, d_x, res ? d_y : NULL,
                                       res ? d_r : NULL, d_xn, d_st, d_b0, d_b1, d_b2, d_g, d_be,
                                       scratch) == 0;
  CHECK_MSG(ok, "%s: forward: %s", name, moka_error());
  float *got = malloc(n * sizeof(float)), *got_c = malloc((C + 1) * sizeof(float));
  char what[256];
  if (ok) {
    snprintf(what, sizeof what, "%s: in-place blob", name);
    ok = dev_to(got, d_x, n) && close_to(what, got, ref_xz, n, B_FWD);
  }
  if (ok && res) {
    snprintf(what, sizeof what, "%s: Eltwise/ReLU output", name);
    ok = dev_to(got, d_y, n) && close_to(what, got, ref_y, n, B_FWD);
  }
  if (ok) {
    snprintf(what, sizeof what, "%s: x_norm", name);
    ok = dev_to(got, d_xn, n) && close_to(what, got, ref_xn, n, B_FWD);
  }
  if (ok) {
    snprintf(what, sizeof what, "%s: running mean sum", name);
    ok = dev_to(got_c, d_b0, C) && close_to(what, got_c, ref_b0, C, B_FWD);
    snprintf(what, sizeof what, "%s: running variance sum", name);
    ok = ok && dev_to(got_c, d_b1, C) && close_to(what, got_c, ref_b1, C, B_FWD);
    float b2 = 0;
    ok = ok && dev_to(&b2, d_b2, 1);
    CHECK_MSG(ok && b2 == ref_b2, "%s: scale factor %g, want %g", name, (double)b2, (double)ref_b2);
  }
  if (ok)
    ok = moka_cuda_bn_fused_backward(ctx->stream, &g, d_dy, d_dy1, res ? d_y : d_x, d_xn, d_st,
                                     d_g, d_dx, res ? d_dr : NULL, d_dg, d_db, scratch) == 0;
  CHECK_MSG(ok, "%s: backward: %s", name, moka_error());
  if (ok) {
    snprintf(what, sizeof what, "%s: dx", name);
    ok = dev_to(got, d_dx, n) && close_to(what, got, ref_dx, n, B_BWD);
  }
  if (ok && res) {
    snprintf(what, sizeof what, "%s: shortcut gradient", name);
    ok = dev_to(got, d_dr, n) && close_to(what, got, ref_dr, n, B_BWD);
  }
  if (ok) {
    snprintf(what, sizeof what, "%s: dgamma", name);
    ok = dev_to(got_c, d_dg, C) && close_to(what, got_c, ref_dg, C, B_BWD);
    snprintf(what, sizeof what, "%s: dbeta", name);
    ok = ok && dev_to(got_c, d_db, C) && close_to(what, got_c, ref_db, C, B_BWD);
  }
  CHECK_MSG(ok, "%s: failed", name);
  if (ok) fprintf(stderr, "    %s ok\n", name);

  float *devs[] = {d_x, d_r, d_y, d_xn, d_st, d_b0, d_b1, d_b2, d_g, d_be, d_dg, d_db, d_dy, d_dr};
  for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) moka_dev_free(devs[i]);
  if (res) moka_dev_free(d_dx);
  moka_dev_free(d_dy1);
  free(dy1);
  moka_dev_free(scratch);
  free(got);
  free(got_c);
  float *hosts[] = {x0, r0, b00, b10, g0, be0, dg0, db0, ref_xz, ref_y, ref_xn, ref_b0, ref_b1,
                    dy, ref_dx, ref_dr, ref_dg, ref_db};
  for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++) free(hosts[i]);
  if (re) layer_free(re);
  if (el) layer_free(el);
  layer_free(sc);
  layer_free(bn);
  if (res) blob_free(yb);
  blob_free(x);
  blob_free(r);
  protobuf_c_message_free_unpacked(&bn_lp->base, NULL);
  protobuf_c_message_free_unpacked(&sc_lp->base, NULL);
  protobuf_c_message_free_unpacked(&el_lp->base, NULL);
  protobuf_c_message_free_unpacked(&re_lp->base, NULL);
}

static void test_op_shapes(void) {
  static const int shapes[][4] = {
      {1, 3, 7, 7},   {2, 37, 5, 3},   {3, 33, 13, 11}, {8, 67, 7, 7}, {1, 5, 1, 1},
      {2, 16, 1, 1},  {4, 64, 56, 56}, {2, 32, 112, 112},
      /* planes of whole float4s (kernels/bn_fused.cu's vector path): small planes, several
       * planes per block, and more images than blocks per channel (257 > 256: two planes
       * per block, the last block one) */
      {3, 6, 4, 6},   {5, 7, 2, 2},    {257, 2, 64, 128},
  };
  /* relu, slope, residual */
  static const struct { bool relu; float slope; int residual; } variants[] = {
      {false, 0, -1}, {true, 0, -1}, {true, 0.1f, -1}, {true, 0, 0}, {false, 0, 1}, {true, 0.1f, 1},
  };
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (int train = 0; train < 2; train++)
      for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
        const bool big = shapes[s][2] >= 56;
        if (big && v != 1 && v != 3) continue; /* the large planes: the two ResNet patterns */
        Case k = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], train != 0,
                  variants[v].relu, variants[v].slope, variants[v].residual, false};
        run_case(&k);
      }
  /* The chain summing the Split after it (dy = dy0 + dy1): scalar and vector paths, with
   * and without the residual, in place (no residual: dx over dy0). */
  static const int split_shapes[][4] = {{3, 33, 13, 11}, {3, 6, 4, 6}, {4, 64, 56, 56}};
  for (size_t s = 0; s < sizeof split_shapes / sizeof *split_shapes; s++)
    for (int v = 0; v < 2; v++) {
      Case k = {split_shapes[s][0], split_shapes[s][1], split_shapes[s][2], split_shapes[s][3],
                true, true, 0.0f, v == 0 ? -1 : 0, true};
      run_case(&k);
    }
}

/* ---- 2. whole nets: fused CUDA vs the CPU reference --------------------------------------- */


/* The tiny ResNet (resnet_nets.h), narrow or wide. */
static Net *tiny_net_text(Phase ph, Backend be, bool wide) {
  char *text = tiny_resnet_text(wide);
  if (!text) return NULL;
  Net *net = net_from_text_on(text, ph, be, 3, "tiny");
  free(text);
  return net;
}

static Net *tiny_net(Phase ph, Backend be) { return tiny_net_text(ph, be, false); }

static int count_fused_runs(const Net *net) {
  int k = 0;
  for (int i = 0; net->fuse && i < net->fuse->n_chains; i++) k += net->fuse->chains[i].ran_fused;
  return k;
}

static void tiny_vs_cpu(Phase ph, bool plan) {
  const char *pname = ph == MOKA_TRAIN ? "TRAIN" : "TEST";
  Net *cpu = tiny_net(ph, MOKA_BACKEND_CPU), *gpu = tiny_net(ph, MOKA_BACKEND_CUDA);
  REQUIRE(cpu && gpu);
  CHECK_MSG(gpu->fuse && gpu->fuse->n_chains == 4, "%s: %d fused chains, want 4 (2 BN_SCALE, 2 "
            "ending in Eltwise)", pname, gpu->fuse ? gpu->fuse->n_chains : 0);
  Rng r;
  rng_seed(&r, 77);
  tiny_randomise(cpu, gpu, &r);
  gpu->plan_device_memory = plan;
  static const char *const keep[] = {"pool"}; /* a blob the test reads: kept by name */
  gpu->memplan_keep = keep;
  gpu->n_memplan_keep = 1;
  setenv("MOKA_CUDA_MEMPLAN", plan ? "1" : "0", 1);
  const int rc = net_to_device(gpu, 0);
  unsetenv("MOKA_CUDA_MEMPLAN");
  CHECK_MSG(rc == 0, "net_to_device: %s", moka_error());
  if (rc) goto done;
  float lc = 0, lg = 0;
  net_clear_param_diffs(cpu);
  net_clear_param_diffs(gpu);
  REQUIRE(net_forward(cpu, &lc) == 0);
  CHECK_MSG(net_forward(gpu, &lg) == 0, "%s forward: %s", pname, moka_error());
  CHECK_MSG(count_fused_runs(gpu) == 4, "%s: %d chains ran fused", pname, count_fused_runs(gpu));
  CHECK_MSG(fabs((double)lc - (double)lg) <= 1e-5 * (1 + fabs((double)lc)),
            "%s (plan %s): loss %.9g on the GPU, %.9g on the CPU", pname, plan ? "on" : "off",
            (double)lg, (double)lc);
  REQUIRE(net_params_to_host(gpu) == 0);
  char what[128];
  snprintf(what, sizeof what, "%s plan %s: parameters and BN statistics after forward", pname,
           plan ? "on" : "off");
  /* 1e-8: the statistics come from convolution outputs (GEMM sums in
   * another order), as test_cuda_layers' whole-net bound */
  CHECK(close_to(what, gpu->param_data, cpu->param_data, cpu->param_count, B_BWD));
  { /* the classifier's input: every blob kept (plan off), or kept by name (plan on) */
    Blob *pc = net_blob(cpu, "pool"), *pg = net_blob(gpu, "pool");
    REQUIRE(blob_to_host(gpu->cuda, pg) == 0);
    snprintf(what, sizeof what, "%s plan %s: blob 'pool'", pname, plan ? "on" : "off");
    CHECK(close_to(what, pg->data, pc->data, pc->count, B_BWD));
  }
  if (ph == MOKA_TRAIN) {
    REQUIRE(net_backward(cpu) == 0);
    CHECK_MSG(net_backward(gpu) == 0, "backward: %s", moka_error());
    REQUIRE(net_param_diffs_to_host(gpu) == 0);
    snprintf(what, sizeof what, "TRAIN plan %s: every parameter gradient", plan ? "on" : "off");
    CHECK(close_to(what, gpu->param_diff, cpu->param_diff, cpu->param_count, B_BWD));
    /* a second pass on the same device memory gives the same answer */
    float lg2 = 0;
    net_clear_param_diffs(gpu);
    memcpy(gpu->param_data, cpu->param_data, cpu->param_count * sizeof(float));
    REQUIRE(net_params_to_device(gpu) == 0);
    REQUIRE(net_forward(gpu, &lg2) == 0 && net_backward(gpu) == 0);
    CHECK_MSG(fabs((double)lg2 - (double)lc) <= 1e-5 * (1 + fabs((double)lc)),
              "second pass: loss %.9g, want %.9g", (double)lg2, (double)lc);
  }
  if (plan) {
    size_t now = 0, peak = 0;
    CHECK(net_cuda_memory(gpu, &now, &peak, true) == 0);
  }
done:
  net_free(cpu);
  net_free(gpu);
}

/* Each parameter blob of each layer (the nets share one layout), data (the BatchNorm layers'
 * statistics: the others are unchanged by a forward) or diff, by NMSE: a layer's own error
 * is not hidden by the larger values of others. */
static void per_blob(const char *what, const Net *cpu, const Net *gpu, bool diff, double bound) {
  for (int i = 0; i < cpu->n_layers; i++) {
    const Layer *l = cpu->layers[i];
    if (!diff && strcmp(l->type->name, "BatchNorm")) continue;
    for (int k = 0; k < l->n_params; k++) {
      const size_t off = (size_t)(l->params[k]->data - cpu->param_data), n = l->params[k]->count;
      const float *a = (diff ? gpu->param_diff : gpu->param_data) + off;
      const float *b = (diff ? cpu->param_diff : cpu->param_data) + off;
      char w[200];
      snprintf(w, sizeof w, "%s: layer '%s' param %d %s", what, l->name, k, diff ? "diff" : "data");
      close_to(w, a, b, n, bound);
    }
  }
}

/* MOKA_BF16_ACT=1 (src/net_bf16.h) with --precision=bf16: the wide tiny ResNet with its
 * activations as bf16 channels-last on the device (every convolution's output, the chains,
 * the blocks' outputs; the Input, the pooling's output and the classifier stay fp32)
 * against the fp32 CPU reference. bf16 rounds each stored activation and each convolution
 * input to 8 bits of mantissa: loss within 2% relative, each BatchNorm's statistics NMSE <=
 * 1e-3, each parameter blob's gradient NMSE <= 1e-2 (a wrong layout or channel gives ~1). */
static void tiny_bf16_vs_cpu(bool plan) {
  REQUIRE(fast_set_precision("bf16") == 0);
  setenv("MOKA_BF16_ACT", "1", 1);
  Net *cpu = tiny_net_text(MOKA_TRAIN, MOKA_BACKEND_CPU, true);
  Net *gpu = tiny_net_text(MOKA_TRAIN, MOKA_BACKEND_CUDA, true);
  REQUIRE(cpu && gpu);
  Rng r;
  rng_seed(&r, 78);
  tiny_randomise(cpu, gpu, &r);
  gpu->plan_device_memory = plan;
  setenv("MOKA_CUDA_MEMPLAN", plan ? "1" : "0", 1);
  const int rc = net_to_device(gpu, 0);
  unsetenv("MOKA_CUDA_MEMPLAN");
  CHECK_MSG(rc == 0, "net_to_device: %s", moka_error());
  if (rc) goto done;
  int nb = 0;
  for (int b = 0; b < gpu->n_blobs; b++) nb += gpu->blobs[b]->dev_bf16;
  CHECK_MSG(nb >= 5, "%d blobs bf16 channels-last, want at least 5 (c1, c2a, c2b, r2, c3a, r3)",
            nb);
  CHECK(!net_blob(gpu, "data")->dev_bf16 && !net_blob(gpu, "pool")->dev_bf16);
  float lc = 0, lg = 0;
  net_clear_param_diffs(cpu);
  net_clear_param_diffs(gpu);
  REQUIRE(net_forward(cpu, &lc) == 0);
  CHECK_MSG(net_forward(gpu, &lg) == 0, "bf16 forward: %s", moka_error());
  CHECK_MSG(fabs((double)lc - (double)lg) <= 2e-2 * (1 + fabs((double)lc)),
            "bf16 activations (plan %s): loss %.9g on the GPU, %.9g on the CPU",
            plan ? "on" : "off", (double)lg, (double)lc);
  REQUIRE(net_params_to_host(gpu) == 0);
  char what[128];
  snprintf(what, sizeof what, "bf16 activations (plan %s): BN statistics after forward",
           plan ? "on" : "off");
  per_blob(what, cpu, gpu, false, 1e-3);
  { /* a bf16 blob read back through the explicit (converting) copy */
    Blob *c = net_blob(cpu, "r3"), *g = net_blob(gpu, "r3");
    CHECK(g->dev_bf16);
    REQUIRE(blob_to_host(gpu->cuda, g) == 0);
    CHECK(close_to("bf16 activations: blob 'r3' read back", g->data, c->data, c->count, 1e-3));
  }
  REQUIRE(net_backward(cpu) == 0);
  CHECK_MSG(net_backward(gpu) == 0, "bf16 backward: %s", moka_error());
  REQUIRE(net_param_diffs_to_host(gpu) == 0);
  snprintf(what, sizeof what, "bf16 activations (plan %s): gradient", plan ? "on" : "off");
  per_blob(what, cpu, gpu, true, 1e-2);
done:
  net_free(cpu);
  net_free(gpu);
  unsetenv("MOKA_BF16_ACT");
  REQUIRE(fast_set_precision("fp32") == 0);
}

static void test_tiny_bf16(void) {
  tiny_bf16_vs_cpu(true);
  tiny_bf16_vs_cpu(false);
}

static void test_tiny_train_plan(void) { tiny_vs_cpu(MOKA_TRAIN, true); }
static void test_tiny_train_noplan(void) { tiny_vs_cpu(MOKA_TRAIN, false); }
static void test_tiny_test_plan(void) { tiny_vs_cpu(MOKA_TEST, true); }
static void test_tiny_test_noplan(void) { tiny_vs_cpu(MOKA_TEST, false); }

/* ---- 3. real Caffe, with the memory plan and fusion on ------------------------------------ */

static Net *load_cuda(const char *proto, const char *weights, Phase ph) {
  NetOptions o;
  net_options_default(&o);
  o.phase = ph;
  o.backend = MOKA_BACKEND_CUDA; /* fused chains */
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1;
  Net *net = net_create_from_file(shared_path(proto), &o);
  if (!net) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  net->plan_device_memory = true;
  if (net_copy_from_file(net, shared_path(weights)) || net_to_device(net, 0)) {
    fprintf(stderr, "    %s\n", moka_error());
    net_free(net);
    return NULL;
  }
  return net;
}

static int set_input(Net *net, const char *blob, const char *file) {
  Blob *b = net_blob(net, blob);
  size_t n;
  float *v = read_f32(shared_path(file), &n);
  if (!b || !v || n != b->count) {
    fprintf(stderr, "    input %s from %s: missing or wrong size\n", blob, file);
    free(v);
    return -1;
  }
  memcpy(b->data, v, n * sizeof(float));
  free(v);
  return 0;
}

static void test_mini_resnet_plan(void) {
  Net *net = load_cuda("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/weights.caffemodel",
                       MOKA_TEST);
  REQUIRE(net);
  CHECK(net->fuse && net->fuse->n_chains > 0);
  REQUIRE(set_input(net, "data", "golden/mini_resnet/input.bin") == 0);
  float loss;
  REQUIRE(net_forward(net, &loss) == 0);
  Blob *prob = net_blob(net, "prob");
  REQUIRE(prob && blob_to_host(net->cuda, prob) == 0);
  size_t n;
  float *want = read_f32(shared_path("golden/mini_resnet/out64_prob.f32"), &n);
  REQUIRE(want && n == prob->count);
  CHECK(compare_f32("prob (plan + fusion)", prob->data, want, n, 1e-4, 1e-5));
  free(want);
  CHECK(net_cuda_memory(net, NULL, NULL, true) == 0);
  net_free(net);
}

/* "grad0/diff/conv1.0" -> layer conv1, blob 0. */
static Blob *param_of(Net *net, const char *spec) {
  char lname[256];
  const char *dot = strrchr(spec, '.');
  if (!dot || (size_t)(dot - spec) >= sizeof lname) return NULL;
  memcpy(lname, spec, (size_t)(dot - spec));
  lname[dot - spec] = 0;
  Layer *l = net_layer(net, lname);
  int k = atoi(dot + 1);
  return l && k < l->n_params ? l->params[k] : NULL;
}

static void test_mini_train_plan(void) {
  Net *net = load_cuda("golden/mini_train/train.prototxt", "golden/mini_train/init.caffemodel",
                       MOKA_TRAIN);
  REQUIRE(net);
  CHECK(net->fuse && net->fuse->n_chains > 0);
  REQUIRE(set_input(net, "data", "golden/mini_train/batches/batch0_data.f32") == 0 &&
          set_input(net, "label", "golden/mini_train/batches/batch0_label.f32") == 0);
  net_clear_param_diffs(net);
  float loss;
  REQUIRE(net_forward(net, &loss) == 0);
  REQUIRE(net_backward(net) == 0);
  REQUIRE(net_params_to_host(net) == 0 && net_param_diffs_to_host(net) == 0);
  ManifestEntry *e;
  int n, checked = 0;
  REQUIRE(manifest_read(shared_path("golden/mini_train/manifest.txt"), &e, &n) == 0);
  for (int i = 0; i < n; i++) {
    const char *name = e[i].name;
    if (strncmp(name, "grad0/", 6) || !strncmp(name, "grad0/blob/", 11)) continue;
    size_t cnt;
    float *want = read_f32(e[i].file, &cnt);
    if (!want) continue;
    if (!strcmp(name, "grad0/loss")) {
      CHECK_MSG(fabs(loss - want[0]) <= 1e-4, "loss %.8g, Caffe %.8g", loss, want[0]);
      checked++;
    } else if (!strncmp(name, "grad0/diff/", 11) || !strncmp(name, "grad0/bnstat/", 13)) {
      const bool diff = name[6] == 'd';
      Blob *b = param_of(net, name + (diff ? 11 : 13));
      CHECK_MSG(b && b->count == cnt, "%s", name);
      if (b && b->count == cnt) {
        const bool noise = !strcmp(name, "grad0/diff/conv1.1");
        CHECK(compare_f32(name, diff ? b->diff : b->data, want, cnt,
                          noise ? 0 : diff ? 1e-3 : 1e-4, noise ? 1e-6 : 0));
        checked++;
      }
    }
    free(want);
  }
  manifest_free(e, n);
  CHECK_MSG(checked >= 20, "only %d golden arrays compared", checked);
  CHECK(net_cuda_memory(net, NULL, NULL, true) == 0);
  net_free(net);
}

int main(void) {
  const int g = gpu_test_open(&ctx);
  if (g) return g > 0 ? test_summary() : 1;
  RUN(test_op_shapes);
  RUN(test_tiny_train_plan);
  RUN(test_tiny_bf16);
  RUN(test_tiny_train_noplan);
  RUN(test_tiny_test_plan);
  RUN(test_tiny_test_noplan);
  RUN(test_mini_resnet_plan);
  RUN(test_mini_train_plan);
  moka_cuda_destroy(ctx);
  return test_summary();
}

#endif /* MOKA_WITH_CUDA */
