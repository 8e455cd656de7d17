/* test_layers_b.c — fillers and the reference layers Input, BatchNorm, Scale,
 * ReLU, Eltwise, Softmax, Flatten, Dropout, Concat, Split, SoftmaxWithLoss and
 * Accuracy: against Caffe's golden files (shared/golden), against formulas
 * computed here in double, finite-difference gradient checks, and the
 * errors that bad parameters must give.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layer.h"
#include "rng.h"
#include "testlib.h"
#include "util.h"

/* The layer types under test, referenced directly so that their objects are
 * linked from libmoka.a (layer.c only holds weak references). */
extern const LayerType layer_type_input, layer_type_batchnorm, layer_type_scale, layer_type_relu,
    layer_type_eltwise, layer_type_softmax, layer_type_flatten, layer_type_dropout,
    layer_type_concat, layer_type_split, layer_type_softmaxwithloss, layer_type_accuracy;

#define LP(var, nm, ty)                                      \
  Caffe__LayerParameter var = CAFFE__LAYER_PARAMETER__INIT; \
  var.name = (char *)(nm);                                   \
  var.type = (char *)(ty)

static const Backend BE = MOKA_BACKEND_CPU;
static const char *MR = "golden/mini_resnet";

/* ---- helpers --------------------------------------------------------------------------- */

static Blob *mk(const char *name, int na, int s0, int s1, int s2, int s3) {
  int s[4] = {s0, s1, s2, s3};
  Blob *b = blob_new(name);
  if (b && blob_reshape(b, na, s) != 0) {
    blob_free(b);
    return NULL;
  }
  return b;
}

static unsigned g_seed = 12345;
static float frand(float lo, float hi) {
  g_seed = g_seed * 1664525u + 1013904223u;
  return lo + (hi - lo) * (float)((g_seed >> 8) & 0xffffff) / 16777216.0f;
}
static void fill_rand(Blob *b, float lo, float hi) {
  for (size_t i = 0; i < b->count; i++) b->data[i] = frand(lo, hi);
}
/* Values in [lo, hi] with a random sign. */
static void fill_rand_signed(Blob *b, float lo, float hi) {
  for (size_t i = 0; i < b->count; i++) b->data[i] = frand(lo, hi) * (frand(0, 1) < 0.5f ? -1 : 1);
}

/* Read golden float32 file `rel` (under shared/) into b's data, checking the
 * element count. */
static int load_into(Blob *b, const char *rel) {
  size_t n = 0;
  float *v = read_f32(shared_path(rel), &n);
  if (!v) return -1;
  if (n != b->count) {
    fprintf(stderr, "    %s: %zu values, expected %zu\n", rel, n, b->count);
    free(v);
    return -1;
  }
  memcpy(b->data, v, n * sizeof(float));
  free(v);
  return 0;
}

static Blob *golden(const char *rel, int na, int s0, int s1, int s2, int s3) {
  Blob *b = mk(rel, na, s0, s1, s2, s3);
  if (b && load_into(b, rel) != 0) {
    blob_free(b);
    return NULL;
  }
  return b;
}

static int load_params(Layer *l, const char *dir, const char *layer) {
  char rel[512];
  for (int i = 0; i < l->n_params; i++) {
    snprintf(rel, sizeof rel, "%s/params/%s.%d.f32", dir, layer, i);
    if (load_into(l->params[i], rel)) return -1;
  }
  return 0;
}

static uint8_t *read_u8(const char *path, size_t *n) {
  uint8_t *d = NULL;
  if (moka_read_file(path, &d, n) != 0) {
    fprintf(stderr, "    cannot read %s: %s\n", path, moka_error());
    return NULL;
  }
  return d;
}

static Blob *clone(const Blob *b) {
  Blob *c = blob_new(b->name);
  blob_reshape_like(c, b);
  memcpy(c->data, b->data, b->count * sizeof(float));
  memcpy(c->diff, b->diff, b->count * sizeof(float));
  return c;
}

static int error_mentions(const char *a, const char *b) {
  const char *e = moka_error();
  int ok = strstr(e, a) != NULL && (!b || strstr(e, b) != NULL);
  if (!ok) fprintf(stderr, "    error message was: %s\n", e);
  return ok;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
  return m;
}

/* ---- registry --------------------------------------------------------------------------- */

static void test_registry(void) {
  struct { const char *name; const LayerType *t; } want[] = {
      {"Input", &layer_type_input},     {"BatchNorm", &layer_type_batchnorm},
      {"Scale", &layer_type_scale},     {"ReLU", &layer_type_relu},
      {"Eltwise", &layer_type_eltwise}, {"Softmax", &layer_type_softmax},
      {"Flatten", &layer_type_flatten}, {"Dropout", &layer_type_dropout},
      {"Concat", &layer_type_concat},   {"Split", &layer_type_split},
      {"SoftmaxWithLoss", &layer_type_softmaxwithloss},
      {"Accuracy", &layer_type_accuracy}};
  for (size_t i = 0; i < MOKA_ARRAY_LEN(want); i++) {
    const LayerType *t = layer_type_find(want[i].name);
    CHECK_MSG(t == want[i].t, "%s", want[i].name);
    if (!t) continue;
    for (int b = MOKA_BACKEND_CPU; b <= MOKA_BACKEND_CPU_FAST; b++) {
      CHECK_MSG(t->forward[b] != NULL, "%s forward %d", want[i].name, b);
      CHECK_MSG(t->backward[b] != NULL, "%s backward %d", want[i].name, b);
    }
    /* Layers with a separate fast path (src/layers/<layer>_fast.c) are compared
     * with the reference in tests/unit/test_fast.c. */
  }
  CHECK(layer_type_batchnorm.params_frozen);
  CHECK(layer_type_softmaxwithloss.is_loss);
}

/* ---- golden: mini_resnet stem (BN / Scale / ReLU in TEST) ------------------------------- */

static void test_golden_stem(void) {
  char rel[256];
  snprintf(rel, sizeof rel, "%s/stem_conv1_after_conv1.f32", MR);
  Blob *conv = golden(rel, 4, 2, 8, 32, 32);
  snprintf(rel, sizeof rel, "%s/stem_conv1_after_bn_conv1.f32", MR);
  Blob *want_bn = golden(rel, 4, 2, 8, 32, 32);
  snprintf(rel, sizeof rel, "%s/stem_conv1_after_scale_conv1.f32", MR);
  Blob *want_sc = golden(rel, 4, 2, 8, 32, 32);
  snprintf(rel, sizeof rel, "%s/stem_conv1_after_conv1_relu.f32", MR);
  Blob *want_relu = golden(rel, 4, 2, 8, 32, 32);
  REQUIRE(conv && want_bn && want_sc && want_relu);

  /* Out of place, one layer at a time. BN: TEST phase, use_global_stats
   * unset (defaults to true in TEST). */
  LP(bnp, "bn_conv1", "BatchNorm");
  LP(scp, "scale_conv1", "Scale");
  Caffe__ScaleParameter sp = CAFFE__SCALE_PARAMETER__INIT;
  sp.has_bias_term = 1;
  sp.bias_term = 1;
  scp.scale_param = &sp;
  LP(rlp, "conv1_relu", "ReLU");
  Blob *y1 = blob_new("y1"), *y2 = blob_new("y2"), *y3 = blob_new("y3");
  Layer *bn = layer_create(&bnp, MOKA_TEST, NULL, &conv, 1, &y1, 1);
  Layer *sc = layer_create(&scp, MOKA_TEST, NULL, &y1, 1, &y2, 1);
  Layer *re = layer_create(&rlp, MOKA_TEST, NULL, &y2, 1, &y3, 1);
  REQUIRE(bn && sc && re);
  REQUIRE(bn->n_params == 3 && sc->n_params == 2);
  REQUIRE(load_params(bn, MR, "bn_conv1") == 0 && load_params(sc, MR, "scale_conv1") == 0);
  CHECK(fabsf(bn->params[2]->data[0] - 0.73f) < 1e-6f); /* the scale factor */
  CHECK(layer_forward(bn, BE) == 0);
  CHECK(compare_f32("bn_conv1", y1->data, want_bn->data, y1->count, 1e-4, 0));
  CHECK(layer_forward(sc, BE) == 0);
  CHECK(compare_f32("scale_conv1", y2->data, want_sc->data, y2->count, 1e-4, 0));
  CHECK(layer_forward(re, BE) == 0);
  CHECK(compare_f32("conv1_relu", y3->data, want_relu->data, y3->count, 1e-4, 0));
  /* The running statistics must not move in TEST. */
  CHECK(bn->params[2]->data[0] == 0.73f);

  /* In place, as the net runs them: one blob through BN, Scale, ReLU. */
  Blob *x = clone(conv);
  Layer *bn2 = layer_create(&bnp, MOKA_TEST, NULL, &x, 1, &x, 1);
  Layer *sc2 = layer_create(&scp, MOKA_TEST, NULL, &x, 1, &x, 1);
  Layer *re2 = layer_create(&rlp, MOKA_TEST, NULL, &x, 1, &x, 1);
  REQUIRE(bn2 && sc2 && re2);
  REQUIRE(load_params(bn2, MR, "bn_conv1") == 0 && load_params(sc2, MR, "scale_conv1") == 0);
  CHECK(layer_forward(bn2, BE) == 0 && layer_forward(sc2, BE) == 0 &&
        layer_forward(re2, BE) == 0);
  CHECK(compare_f32("in-place chain", x->data, want_relu->data, x->count, 1e-4, 0));
  /* ... and bit-identical to the out-of-place chain. */
  CHECK(max_abs_diff(x->data, y3->data, x->count) == 0);

  /* Ignoring the third blob (s = 0.73) must fail the comparison. */
  bn->params[2]->data[0] = 1.0f;
  CHECK(layer_forward(bn, BE) == 0);
  CHECK(max_abs_diff(y1->data, want_bn->data, y1->count) > 1e-2);

  layer_free(bn), layer_free(sc), layer_free(re);
  layer_free(bn2), layer_free(sc2), layer_free(re2);
  blob_free(conv), blob_free(want_bn), blob_free(want_sc), blob_free(want_relu);
  blob_free(y1), blob_free(y2), blob_free(y3), blob_free(x);
}

static void test_golden_softmax(void) {
  char rel[256];
  snprintf(rel, sizeof rel, "%s/out64_fc.f32", MR);
  Blob *fc = golden(rel, 2, 2, 10, 0, 0);
  snprintf(rel, sizeof rel, "%s/out64_prob.f32", MR);
  Blob *want = golden(rel, 2, 2, 10, 0, 0);
  REQUIRE(fc && want);
  LP(lp, "prob", "Softmax");
  Blob *y = blob_new("prob");
  Layer *l = layer_create(&lp, MOKA_TEST, NULL, &fc, 1, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  CHECK(compare_f32("prob", y->data, want->data, y->count, 1e-4, 0));
  CHECK(max_abs_diff(y->data, want->data, y->count) < 1e-5);
  layer_free(l);
  blob_free(fc), blob_free(want), blob_free(y);
}

/* res2a = relu(res2a_branch1 + res2a_branch2c), Eltwise SUM then ReLU in place. */
static void test_golden_eltwise(void) {
  char rel[256];
  snprintf(rel, sizeof rel, "%s/out64_res2a_branch1.f32", MR);
  Blob *a = golden(rel, 4, 2, 32, 16, 16);
  snprintf(rel, sizeof rel, "%s/out64_res2a_branch2c.f32", MR);
  Blob *b = golden(rel, 4, 2, 32, 16, 16);
  snprintf(rel, sizeof rel, "%s/out64_res2a.f32", MR);
  Blob *want = golden(rel, 4, 2, 32, 16, 16);
  REQUIRE(a && b && want);
  LP(ep, "res2a", "Eltwise");
  LP(rp, "res2a_relu", "ReLU");
  Blob *bot[2] = {a, b};
  Blob *y = blob_new("res2a");
  Layer *el = layer_create(&ep, MOKA_TEST, NULL, bot, 2, &y, 1);
  Layer *re = layer_create(&rp, MOKA_TEST, NULL, &y, 1, &y, 1);
  REQUIRE(el && re);
  CHECK(layer_forward(el, BE) == 0 && layer_forward(re, BE) == 0);
  CHECK(compare_f32("res2a", y->data, want->data, y->count, 1e-4, 0));
  layer_free(el), layer_free(re);
  blob_free(a), blob_free(b), blob_free(want), blob_free(y);
}

/* ---- golden: TRAIN-phase BatchNorm statistics (mini_train/grad_iter0) -------------------- */

/* bn2a_branch1's input is the 1x1 conv res2a_branch1 (32x8, no bias) of
 * pool1; pool1 is dumped in TRAIN. One TRAIN forward from the initial
 * statistics must give Caffe's running statistics. */
static void test_golden_bn_train_stats(void) {
  Blob *pool1 = golden("golden/mini_train/grad_iter0/blob_pool1.f32", 4, 2, 8, 16, 16);
  Blob *w = golden("golden/mini_resnet/params/res2a_branch1.0.f32", 4, 32, 8, 1, 1);
  REQUIRE(pool1 && w);
  Blob *x = mk("res2a_branch1", 4, 2, 32, 16, 16);
  const int HW = 256;
  for (int n = 0; n < 2; n++)
    for (int o = 0; o < 32; o++)
      for (int s = 0; s < HW; s++) {
        double acc = 0;
        for (int c = 0; c < 8; c++)
          acc += (double)w->data[o * 8 + c] * pool1->data[(n * 8 + c) * HW + s];
        x->data[(n * 32 + o) * HW + s] = (float)acc;
      }
  LP(lp, "bn2a_branch1", "BatchNorm");
  Caffe__ParamSpec ps[3] = {CAFFE__PARAM_SPEC__INIT, CAFFE__PARAM_SPEC__INIT,
                            CAFFE__PARAM_SPEC__INIT};
  Caffe__ParamSpec *pps[3] = {&ps[0], &ps[1], &ps[2]};
  for (int i = 0; i < 3; i++) ps[i].has_lr_mult = 1, ps[i].lr_mult = 0;
  lp.n_param = 3;
  lp.param = pps;
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &x, 1);
  REQUIRE(l);
  CHECK(l->lr_mult[0] == 0 && l->decay_mult[2] == 0);
  REQUIRE(load_params(l, MR, "bn2a_branch1") == 0);
  CHECK(layer_forward(l, BE) == 0);
  const char *names[3] = {"bnstat.0", "bnstat.1", "bnstat.2"};
  for (int i = 0; i < 3; i++) {
    char rel[256];
    snprintf(rel, sizeof rel, "golden/mini_train/grad_iter0/bnstat_bn2a_branch1.%d.f32", i);
    Blob *want = golden(rel, 1, i < 2 ? 32 : 1, 0, 0, 0);
    REQUIRE(want);
    CHECK(compare_f32(names[i], l->params[i]->data, want->data, want->count, 1e-4, 0));
    blob_free(want);
  }
  /* The output is batch-normalised: mean 0, variance 1 - eps-ish per channel. */
  for (int c = 0; c < 32; c++) {
    double m = 0, v = 0;
    for (int n = 0; n < 2; n++)
      for (int s = 0; s < HW; s++) m += x->data[(n * 32 + c) * HW + s];
    m /= 2 * HW;
    for (int n = 0; n < 2; n++)
      for (int s = 0; s < HW; s++) v += pow(x->data[(n * 32 + c) * HW + s] - m, 2);
    v /= 2 * HW;
    CHECK_MSG(fabs(m) < 1e-5 && fabs(v - 1) < 1e-3, "channel %d mean %g var %g", c, m, v);
  }
  layer_free(l);
  blob_free(pool1), blob_free(w), blob_free(x);
}

/* ---- BatchNorm against a double-precision model ------------------------------------------ */

static void test_bn_train_formula(void) {
  const int N = 3, C = 4, H = 2, W = 5, S = H * W, m = N * S;
  Blob *x = mk("x", 4, N, C, H, W), *y = blob_new("y");
  fill_rand(x, -2, 3);
  for (int c = 0; c < C; c++) /* per-channel offsets and scales */
    for (int n = 0; n < N; n++)
      for (int s = 0; s < S; s++) {
        float *v = &x->data[(n * C + c) * S + s];
        *v = *v * (c + 1) + 5 * c;
      }
  LP(lp, "bn", "BatchNorm");
  Caffe__BatchNormParameter bp = CAFFE__BATCH_NORM_PARAMETER__INIT;
  bp.has_moving_average_fraction = 1;
  bp.moving_average_fraction = 0.9f;
  bp.has_eps = 1;
  bp.eps = 1e-3f;
  lp.batch_norm_param = &bp;
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l);
  /* Zero-initialised statistics of shapes (C), (C), (1). */
  CHECK(l->params[0]->num_axes == 1 && l->params[0]->shape[0] == C);
  CHECK(l->params[2]->count == 1 && l->params[2]->data[0] == 0);
  double b0[4], b1[4], b2 = 0.73;
  for (int c = 0; c < C; c++) {
    b0[c] = l->params[0]->data[c] = 0.1f * c;
    b1[c] = l->params[1]->data[c] = 0.5f + c;
  }
  l->params[2]->data[0] = 0.73f;
  for (int rep = 0; rep < 2; rep++) {
    if (rep == 1) fill_rand(x, -1, 1);
    CHECK(layer_forward(l, BE) == 0);
    b2 = 0.9 * b2 + 1;
    for (int c = 0; c < C; c++) {
      double mean = 0, var = 0;
      for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) mean += x->data[(n * C + c) * S + s];
      mean /= m;
      for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) var += pow(x->data[(n * C + c) * S + s] - mean, 2);
      var /= m; /* biased */
      for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) {
          int i = (n * C + c) * S + s;
          double want = (x->data[i] - mean) / sqrt(var + 1e-3);
          CHECK_MSG(fabs(y->data[i] - want) < 2e-5 * fmax(1, fabs(want)), "y[%d] %g vs %g", i,
                    y->data[i], want);
        }
      b0[c] = 0.9 * b0[c] + mean;
      b1[c] = 0.9 * b1[c] + (double)m / (m - 1) * var;
      CHECK_MSG(fabs(l->params[0]->data[c] - b0[c]) < 1e-5 * fmax(1, fabs(b0[c])), "b0[%d]", c);
      CHECK_MSG(fabs(l->params[1]->data[c] - b1[c]) < 1e-5 * fmax(1, fabs(b1[c])), "b1[%d]", c);
    }
    CHECK(fabs(l->params[2]->data[0] - b2) < 1e-6);
  }
  layer_free(l);

  /* The same layer in TEST (use_global_stats defaults to true) uses b0/b2,
   * b1/b2 and leaves them alone. */
  Layer *t = layer_create(&lp, MOKA_TEST, NULL, &x, 1, &y, 1);
  REQUIRE(t);
  for (int c = 0; c < C; c++) {
    t->params[0]->data[c] = (float)b0[c];
    t->params[1]->data[c] = (float)b1[c];
  }
  t->params[2]->data[0] = (float)b2;
  CHECK(layer_forward(t, BE) == 0);
  for (int c = 0; c < C; c++)
    for (int n = 0; n < N; n++)
      for (int s = 0; s < S; s++) {
        int i = (n * C + c) * S + s;
        double want = (x->data[i] - b0[c] / b2) / sqrt(b1[c] / b2 + 1e-3);
        CHECK(fabs(y->data[i] - want) < 1e-5 * fmax(1, fabs(want)));
      }
  CHECK(fabs(t->params[2]->data[0] - b2) < 1e-6);
  /* Scale factor 0: mean = var = 0. */
  t->params[2]->data[0] = 0;
  CHECK(layer_forward(t, BE) == 0);
  for (size_t i = 0; i < x->count; i++)
    CHECK(fabs(y->data[i] - x->data[i] / sqrt(1e-3)) < 1e-5 * fmax(1, fabs(y->data[i])));
  layer_free(t);

  /* use_global_stats: true wins over the TRAIN phase: nothing updates. */
  bp.has_use_global_stats = 1;
  bp.use_global_stats = 1;
  Layer *f = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(f);
  f->params[2]->data[0] = 2;
  f->params[1]->data[0] = 8;
  CHECK(layer_forward(f, BE) == 0);
  CHECK(f->params[2]->data[0] == 2 && f->params[1]->data[0] == 8 && f->params[0]->data[1] == 0);
  CHECK(fabs(y->data[0] - x->data[0] / sqrt(4 + 1e-3)) < 1e-5);
  layer_free(f);
  /* use_global_stats: false in TEST updates (batch statistics). */
  bp.use_global_stats = 0;
  Layer *g = layer_create(&lp, MOKA_TEST, NULL, &x, 1, &y, 1);
  REQUIRE(g);
  CHECK(layer_forward(g, BE) == 0);
  CHECK(g->params[2]->data[0] == 1.0f);
  layer_free(g);
  blob_free(x), blob_free(y);
}

/* 2-D (N,C) BatchNorm with default eps and maf. */
static void test_bn_2d(void) {
  Blob *x = mk("x", 2, 5, 3, 0, 0), *y = blob_new("y");
  fill_rand(x, -1, 2);
  LP(lp, "bn2d", "BatchNorm");
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l);
  CHECK(l->params[0]->count == 3);
  CHECK(layer_forward(l, BE) == 0);
  for (int c = 0; c < 3; c++) {
    double mean = 0, var = 0;
    for (int n = 0; n < 5; n++) mean += x->data[n * 3 + c];
    mean /= 5;
    for (int n = 0; n < 5; n++) var += pow(x->data[n * 3 + c] - mean, 2);
    var /= 5;
    for (int n = 0; n < 5; n++)
      CHECK(fabs(y->data[n * 3 + c] - (x->data[n * 3 + c] - mean) / sqrt(var + 1e-5)) < 1e-5);
    CHECK(fabsf(l->params[0]->data[c] - (float)mean) < 1e-6);            /* maf*0 + mean */
    CHECK(fabsf(l->params[1]->data[c] - (float)(var * 5 / 4)) < 1e-5);    /* m/(m-1) */
  }
  CHECK(l->params[2]->data[0] == 1.0f);
  layer_free(l);
  blob_free(x), blob_free(y);
}

static void test_bn_gradcheck(void) {
  LP(lp, "bn", "BatchNorm");
  for (int mode = 0; mode < 3; mode++) {
    /* mode 0: TRAIN 4-D, 1: TRAIN 2-D, 2: TEST (global stats) 4-D */
    Blob *x = mode == 1 ? mk("x", 2, 6, 3, 0, 0) : mk("x", 4, 2, 3, 3, 2);
    Blob *y = blob_new("y");
    fill_rand(x, -2, 2);
    Layer *l = layer_create(&lp, mode == 2 ? MOKA_TEST : MOKA_TRAIN, NULL, &x, 1, &y, 1);
    REQUIRE(l);
    if (mode == 2) {
      for (int c = 0; c < 3; c++) {
        l->params[0]->data[c] = 0.3f * c - 0.2f;
        l->params[1]->data[c] = 0.5f + c;
      }
      l->params[2]->data[0] = 0.73f;
    }
    GradCheckOpts o = {1e-2, 1e-2, -1, 0, 7};
    CHECK_MSG(gradcheck_layer(l, BE, &o) == 0, "mode %d", mode);
    layer_free(l);
    blob_free(x), blob_free(y);
  }
}

/* In-place forward/backward must equal out-of-place, for a layer type. */
static void check_in_place(const Caffe__LayerParameter *lp, Phase phase, Blob *x0) {
  Rng r1, r2;
  rng_seed(&r1, 99);
  rng_seed(&r2, 99);
  Blob *xa = clone(x0), *ya = blob_new("ya"), *xb = clone(x0);
  Layer *a = layer_create(lp, phase, &r1, &xa, 1, &ya, 1);
  Layer *b = layer_create(lp, phase, &r2, &xb, 1, &xb, 1);
  REQUIRE(a && b);
  for (int i = 0; i < a->n_params; i++) {
    fill_rand(a->params[i], 0.5f, 1.5f);
    memcpy(b->params[i]->data, a->params[i]->data, a->params[i]->count * sizeof(float));
  }
  CHECK(layer_forward(a, BE) == 0 && layer_forward(b, BE) == 0);
  CHECK_MSG(max_abs_diff(ya->data, xb->data, ya->count) == 0, "%s forward", lp->type);
  for (size_t i = 0; i < ya->count; i++) ya->diff[i] = xb->diff[i] = frand(-1, 1);
  for (int i = 0; i < a->n_params; i++) blob_zero_diff(a->params[i]), blob_zero_diff(b->params[i]);
  CHECK(layer_backward(a, BE) == 0 && layer_backward(b, BE) == 0);
  CHECK_MSG(max_abs_diff(xa->diff, xb->diff, xa->count) == 0, "%s backward", lp->type);
  for (int i = 0; i < a->n_params; i++)
    CHECK_MSG(max_abs_diff(a->params[i]->diff, b->params[i]->diff, a->params[i]->count) == 0,
              "%s param %d grad", lp->type, i);
  layer_free(a), layer_free(b);
  blob_free(xa), blob_free(ya), blob_free(xb);
}

static void test_in_place(void) {
  Blob *x = mk("x", 4, 2, 3, 4, 5);
  fill_rand(x, -1, 1);
  LP(bn, "bn", "BatchNorm");
  check_in_place(&bn, MOKA_TRAIN, x);
  check_in_place(&bn, MOKA_TEST, x);
  LP(sc, "sc", "Scale");
  Caffe__ScaleParameter sp = CAFFE__SCALE_PARAMETER__INIT;
  sp.has_bias_term = 1;
  sp.bias_term = 1;
  sc.scale_param = &sp;
  check_in_place(&sc, MOKA_TRAIN, x);
  LP(re, "re", "ReLU");
  check_in_place(&re, MOKA_TRAIN, x);
  Caffe__ReLUParameter rp = CAFFE__RE_LUPARAMETER__INIT;
  rp.has_negative_slope = 1;
  rp.negative_slope = 0.1f;
  re.relu_param = &rp;
  check_in_place(&re, MOKA_TRAIN, x);
  LP(dr, "dr", "Dropout");
  check_in_place(&dr, MOKA_TRAIN, x);
  check_in_place(&dr, MOKA_TEST, x);
  LP(so, "so", "Softmax");
  check_in_place(&so, MOKA_TEST, x);
  blob_free(x);
}

/* ---- Scale --------------------------------------------------------------------------------- */

static void test_scale(void) {
  /* One bottom, default filler = constant 1, bias default 0. */
  Blob *x = mk("x", 4, 2, 3, 4, 5), *y = blob_new("y");
  fill_rand(x, -1, 1);
  LP(lp, "sc", "Scale");
  Caffe__ScaleParameter sp = CAFFE__SCALE_PARAMETER__INIT;
  sp.has_bias_term = 1;
  sp.bias_term = 1;
  lp.scale_param = &sp;
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l && l->n_params == 2);
  CHECK(l->params[0]->num_axes == 1 && l->params[0]->shape[0] == 3);
  CHECK(l->params[0]->data[0] == 1 && l->params[0]->data[2] == 1);
  CHECK(l->params[1]->data[0] == 0 && l->params[1]->count == 3);
  for (int c = 0; c < 3; c++) l->params[0]->data[c] = 1.5f + c, l->params[1]->data[c] = -0.5f * c;
  CHECK(layer_forward(l, BE) == 0);
  for (int n = 0; n < 2; n++)
    for (int c = 0; c < 3; c++)
      for (int s = 0; s < 20; s++) {
        int i = (n * 3 + c) * 20 + s;
        CHECK(y->data[i] == x->data[i] * (1.5f + c) + -0.5f * c);
      }
  GradCheckOpts o = {1e-2, 1e-2, -1, 1, 3};
  CHECK(gradcheck_layer(l, BE, &o) == 0);
  layer_free(l);

  /* axis 1, num_axes -1 (to the end), filler from scale_param, no bias. */
  Caffe__FillerParameter fp = CAFFE__FILLER_PARAMETER__INIT;
  fp.type = (char *)"uniform";
  sp.filler = &fp;
  sp.has_num_axes = 1;
  sp.num_axes = -1;
  sp.bias_term = 0;
  Rng r;
  rng_seed(&r, 5);
  Layer *m = layer_create(&lp, MOKA_TRAIN, &r, &x, 1, &y, 1);
  REQUIRE(m && m->n_params == 1);
  CHECK(m->params[0]->num_axes == 3 && m->params[0]->count == 60);
  CHECK(gradcheck_layer(m, BE, &o) == 0);
  layer_free(m);

  /* Two bottoms: scale (3,4) given as bottom 1 at axis 1, with a bias (3). */
  Blob *s = mk("s", 2, 3, 4, 0, 0);
  fill_rand(s, -2, 2);
  Blob *bot[2] = {x, s};
  sp.filler = NULL;
  sp.has_num_axes = 0;
  sp.num_axes = 1;
  sp.bias_term = 1;
  Layer *t = layer_create(&lp, MOKA_TRAIN, NULL, bot, 2, &y, 1);
  REQUIRE(t && t->n_params == 1);
  CHECK(t->params[0]->count == 3);
  fill_rand(t->params[0], -1, 1);
  CHECK(layer_forward(t, BE) == 0);
  CHECK(y->data[(1 * 3 + 2) * 20 + 7] ==
        x->data[(1 * 3 + 2) * 20 + 7] * s->data[2 * 4 + 1] + t->params[0]->data[2]);
  CHECK(gradcheck_layer(t, BE, &o) == 0);
  layer_free(t);

  /* Two bottoms, scalar scale (0 axes). */
  Blob *k = mk("k", 0, 0, 0, 0, 0);
  k->data[0] = 0.7f;
  Blob *bot2[2] = {x, k};
  sp.bias_term = 0;
  Layer *u = layer_create(&lp, MOKA_TRAIN, NULL, bot2, 2, &y, 1);
  REQUIRE(u);
  CHECK(gradcheck_layer(u, BE, &o) == 0);
  layer_free(u);

  /* Mismatched scale shape is an error. */
  Blob *bad = mk("bad", 1, 4, 0, 0, 0);
  Blob *bot3[2] = {x, bad};
  LP(lq, "scale_bad", "Scale");
  CHECK(layer_create(&lq, MOKA_TRAIN, NULL, bot3, 2, &y, 1) == NULL);
  CHECK(error_mentions("scale_bad", "does not match"));
  blob_free(bad), blob_free(k), blob_free(s), blob_free(x), blob_free(y);
}

/* ---- ReLU, Eltwise, Softmax, Flatten, Concat, Split ----------------------------------------- */

static void test_relu(void) {
  Blob *x = mk("x", 4, 2, 3, 2, 4), *y = blob_new("y");
  fill_rand_signed(x, 0.05f, 1.0f);
  LP(lp, "relu", "ReLU");
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  for (size_t i = 0; i < x->count; i++) CHECK(y->data[i] == (x->data[i] > 0 ? x->data[i] : 0));
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  Caffe__ReLUParameter rp = CAFFE__RE_LUPARAMETER__INIT;
  rp.has_negative_slope = 1;
  rp.negative_slope = 0.25f;
  lp.relu_param = &rp;
  l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  for (size_t i = 0; i < x->count; i++)
    CHECK(y->data[i] == (x->data[i] > 0 ? x->data[i] : 0.25f * x->data[i]));
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  /* At exactly 0 the derivative is the slope side (x <= 0). */
  x->data[0] = 0;
  y->diff[0] = 1;
  CHECK(layer_forward(l, BE) == 0 && layer_backward(l, BE) == 0);
  CHECK(x->diff[0] == 0.25f);
  layer_free(l);
  blob_free(x), blob_free(y);
}

static void test_eltwise(void) {
  Blob *a = mk("a", 3, 2, 3, 4, 0), *b = mk("b", 3, 2, 3, 4, 0), *c = mk("c", 3, 2, 3, 4, 0);
  Blob *y = blob_new("y"), *bot[3] = {a, b, c};
  GradCheckOpts o = {1e-2, 1e-2, -1, 1, 11};
  LP(lp, "elt", "Eltwise");
  Caffe__EltwiseParameter ep = CAFFE__ELTWISE_PARAMETER__INIT;
  lp.eltwise_param = &ep;
  /* SUM with coefficients. */
  float coeff[3] = {1.0f, -0.5f, 2.0f};
  ep.n_coeff = 3;
  ep.coeff = coeff;
  fill_rand(a, -1, 1), fill_rand(b, -1, 1), fill_rand(c, -1, 1);
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 3, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  for (size_t i = 0; i < y->count; i++)
    CHECK(fabsf(y->data[i] - (a->data[i] - 0.5f * b->data[i] + 2 * c->data[i])) < 1e-6f);
  CHECK(gradcheck_layer(l, BE, &o) == 0);
  layer_free(l);
  /* PROD, stable and not. */
  ep.n_coeff = 0;
  ep.has_operation = 1;
  ep.operation = CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD;
  fill_rand_signed(a, 0.5f, 1.5f), fill_rand_signed(b, 0.5f, 1.5f), fill_rand_signed(c, 0.5f, 1.5f);
  for (int stable = 0; stable < 2; stable++) {
    ep.has_stable_prod_grad = 1;
    ep.stable_prod_grad = stable;
    l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 3, &y, 1);
    REQUIRE(l);
    CHECK(layer_forward(l, BE) == 0);
    for (size_t i = 0; i < y->count; i++)
      CHECK(fabsf(y->data[i] - a->data[i] * b->data[i] * c->data[i]) < 1e-6f);
    CHECK_MSG(gradcheck_layer(l, BE, &o) == 0, "PROD stable=%d", stable);
    layer_free(l);
  }
  /* MAX with argmax. */
  ep.operation = CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX;
  fill_rand(a, -1, 1), fill_rand(b, -1, 1), fill_rand(c, -1, 1);
  l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 3, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  for (size_t i = 0; i < y->count; i++)
    CHECK(y->data[i] == fmaxf(a->data[i], fmaxf(b->data[i], c->data[i])));
  CHECK(gradcheck_layer(l, BE, &o) == 0);
  /* A tie between bottoms 0 and 1 goes to bottom 1 (Caffe). */
  a->data[0] = b->data[0] = 5;
  memset(y->diff, 0, y->count * sizeof(float));
  y->diff[0] = 1;
  CHECK(layer_forward(l, BE) == 0 && layer_backward(l, BE) == 0);
  CHECK(a->diff[0] == 0 && b->diff[0] == 1 && c->diff[0] == 0);
  layer_free(l);
  /* coeff with PROD is an error; coeff count must match. */
  ep.operation = CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD;
  ep.n_coeff = 3;
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, bot, 3, &y, 1) == NULL);
  CHECK(error_mentions("elt", "coeff"));
  ep.operation = CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM;
  ep.n_coeff = 2;
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, bot, 3, &y, 1) == NULL);
  CHECK(error_mentions("elt", "coeff"));
  blob_free(a), blob_free(b), blob_free(c), blob_free(y);
}

static void test_softmax(void) {
  Blob *x = mk("x", 3, 2, 5, 3, 0), *y = blob_new("y");
  fill_rand(x, -3, 3);
  x->data[0] = 80; /* large values: the max is subtracted */
  LP(lp, "sm", "Softmax");
  for (int ax = 0; ax < 2; ax++) {
    Caffe__SoftmaxParameter sp = CAFFE__SOFTMAX_PARAMETER__INIT;
    sp.has_axis = 1;
    sp.axis = ax ? -1 : 1;
    lp.softmax_param = &sp;
    Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
    REQUIRE(l);
    CHECK(layer_forward(l, BE) == 0);
    int C = ax ? 3 : 5, I = ax ? 1 : 3, O = ax ? 10 : 2;
    for (int n = 0; n < O; n++)
      for (int i = 0; i < I; i++) {
        double mx = -INFINITY, sum = 0;
        for (int c = 0; c < C; c++) mx = fmax(mx, x->data[(n * C + c) * I + i]);
        for (int c = 0; c < C; c++) sum += exp(x->data[(n * C + c) * I + i] - mx);
        for (int c = 0; c < C; c++) {
          int k = (n * C + c) * I + i;
          CHECK(fabs(y->data[k] - exp(x->data[k] - mx) / sum) < 1e-6);
        }
      }
    x->data[0] = 1.5f;
    CHECK_MSG(gradcheck_layer(l, BE, NULL) == 0, "axis %d", sp.axis);
    x->data[0] = 80;
    layer_free(l);
  }
  blob_free(x), blob_free(y);
}

static void test_flatten(void) {
  Blob *x = mk("x", 4, 2, 3, 4, 5), *y = blob_new("y");
  fill_rand(x, -1, 1);
  LP(lp, "fl", "Flatten");
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l);
  CHECK(y->num_axes == 2 && y->shape[0] == 2 && y->shape[1] == 60);
  CHECK(layer_forward(l, BE) == 0);
  CHECK(memcmp(x->data, y->data, x->count * sizeof(float)) == 0);
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  Caffe__FlattenParameter fp = CAFFE__FLATTEN_PARAMETER__INIT;
  fp.has_axis = fp.has_end_axis = 1;
  fp.axis = 1;
  fp.end_axis = 2;
  lp.flatten_param = &fp;
  l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1);
  REQUIRE(l);
  CHECK(y->num_axes == 3 && y->shape[0] == 2 && y->shape[1] == 12 && y->shape[2] == 5);
  layer_free(l);
  fp.axis = 3;
  fp.end_axis = 1;
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, &y, 1) == NULL);
  CHECK(error_mentions("fl", "end_axis"));
  blob_free(x), blob_free(y);
}

static void test_concat(void) {
  Blob *a = mk("a", 4, 2, 1, 3, 2), *b = mk("b", 4, 2, 3, 3, 2), *c = mk("c", 4, 2, 2, 3, 2);
  Blob *y = blob_new("y"), *bot[3] = {a, b, c};
  fill_rand(a, -1, 1), fill_rand(b, -1, 1), fill_rand(c, -1, 1);
  LP(lp, "cat", "Concat");
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 3, &y, 1);
  REQUIRE(l);
  CHECK(y->num_axes == 4 && y->shape[1] == 6 && y->shape[2] == 3);
  CHECK(layer_forward(l, BE) == 0);
  /* Channels 0, 1-3, 4-5 of each image come from a, b, c. */
  CHECK(y->data[(1 * 6 + 0) * 6 + 4] == a->data[(1 * 1 + 0) * 6 + 4]);
  CHECK(y->data[(1 * 6 + 2) * 6 + 5] == b->data[(1 * 3 + 1) * 6 + 5]);
  CHECK(y->data[(0 * 6 + 5) * 6 + 0] == c->data[(0 * 2 + 1) * 6 + 0]);
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  /* axis 0 through the legacy concat_dim. */
  Blob *d = mk("d", 4, 3, 1, 3, 2);
  fill_rand(d, -1, 1);
  Blob *bot2[2] = {a, d};
  Caffe__ConcatParameter cp = CAFFE__CONCAT_PARAMETER__INIT;
  cp.has_concat_dim = 1;
  cp.concat_dim = 0;
  lp.concat_param = &cp;
  l = layer_create(&lp, MOKA_TRAIN, NULL, bot2, 2, &y, 1);
  REQUIRE(l);
  CHECK(y->shape[0] == 5 && y->shape[1] == 1);
  CHECK(layer_forward(l, BE) == 0);
  CHECK(memcmp(y->data + a->count, d->data, d->count * sizeof(float)) == 0);
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  cp.has_axis = 1; /* both axis and concat_dim */
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, bot2, 2, &y, 1) == NULL);
  CHECK(error_mentions("cat", "concat_dim"));
  blob_free(a), blob_free(b), blob_free(c), blob_free(d), blob_free(y);
}

static void test_split(void) {
  Blob *x = mk("x", 2, 3, 4, 0, 0);
  Blob *t[3] = {blob_new("t0"), blob_new("t1"), blob_new("t2")};
  fill_rand(x, -1, 1);
  LP(lp, "split", "Split");
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, &x, 1, t, 3);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  for (int k = 0; k < 3; k++) CHECK(memcmp(t[k]->data, x->data, x->count * sizeof(float)) == 0);
  for (size_t i = 0; i < x->count; i++)
    t[0]->diff[i] = 1, t[1]->diff[i] = 2 * (float)i, t[2]->diff[i] = -0.5f;
  CHECK(layer_backward(l, BE) == 0);
  for (size_t i = 0; i < x->count; i++) CHECK(x->diff[i] == 1 + 2 * (float)i - 0.5f);
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  blob_free(x), blob_free(t[0]), blob_free(t[1]), blob_free(t[2]);
}

static void test_input(void) {
  LP(lp, "data", "Input");
  Caffe__InputParameter ip = CAFFE__INPUT_PARAMETER__INIT;
  int64_t d1[4] = {2, 3, 64, 64}, d2[1] = {2};
  Caffe__BlobShape s1 = CAFFE__BLOB_SHAPE__INIT, s2 = CAFFE__BLOB_SHAPE__INIT;
  s1.n_dim = 4, s1.dim = d1, s2.n_dim = 1, s2.dim = d2;
  Caffe__BlobShape *shapes[2] = {&s1, &s2};
  ip.n_shape = 2;
  ip.shape = shapes;
  lp.input_param = &ip;
  Blob *t[2] = {blob_new("data"), blob_new("label")};
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, NULL, 0, t, 2);
  REQUIRE(l);
  CHECK(t[0]->num_axes == 4 && t[0]->count == 2 * 3 * 64 * 64);
  CHECK(t[1]->num_axes == 1 && t[1]->shape[0] == 2);
  CHECK(layer_forward(l, BE) == 0 && layer_backward(l, BE) == 0);
  layer_free(l);
  ip.n_shape = 1; /* one shape for every top */
  l = layer_create(&lp, MOKA_TRAIN, NULL, NULL, 0, t, 2);
  REQUIRE(l);
  CHECK(t[1]->num_axes == 4 && t[1]->shape[3] == 64);
  layer_free(l);
  ip.n_shape = 2; /* two shapes for three tops */
  Blob *t3[3] = {t[0], t[1], blob_new("x")};
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, NULL, 0, t3, 3) == NULL);
  CHECK(error_mentions("data", "shape"));
  d2[0] = -1;
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, NULL, 0, t, 2) == NULL);
  CHECK(error_mentions("data", "-1"));
  blob_free(t[0]), blob_free(t[1]), blob_free(t3[2]);
}

/* ---- Dropout ------------------------------------------------------------------------------- */

static int compare_mask(const Blob *y, const char *rel, const char *what) {
  size_t n = 0;
  uint8_t *m = read_u8(shared_path(rel), &n);
  if (!m) return 0;
  int ok = n == y->count;
  size_t bad = 0;
  for (size_t i = 0; ok && i < n; i++) bad += (y->data[i] != 0) != (m[i] != 0);
  if (bad) fprintf(stderr, "    %s: %zu of %zu mask entries differ\n", what, bad, n);
  free(m);
  return ok && bad == 0;
}

/* Caffe's masks, replayed from the stream seeded with 1701: drop6 (0.5) then
 * drop7 (0.3), iteration after iteration. */
static void test_golden_dropout_masks(void) {
  Rng rng;
  rng_seed(&rng, 1701);
  Blob *x6 = mk("fc6", 2, 2, 64, 0, 0), *x7 = mk("fc7", 2, 2, 64, 0, 0);
  LP(p6, "drop6", "Dropout");
  LP(p7, "drop7", "Dropout");
  Caffe__DropoutParameter d7 = CAFFE__DROPOUT_PARAMETER__INIT;
  d7.has_dropout_ratio = 1;
  d7.dropout_ratio = 0.3f;
  p7.dropout_param = &d7;
  Layer *l6 = layer_create(&p6, MOKA_TRAIN, &rng, &x6, 1, &x6, 1);
  Layer *l7 = layer_create(&p7, MOKA_TRAIN, &rng, &x7, 1, &x7, 1);
  REQUIRE(l6 && l7);
  for (int it = 0; it < 5; it++) {
    char rel[256], what[64];
    for (size_t i = 0; i < 128; i++) x6->data[i] = x7->data[i] = 1;
    CHECK(layer_forward(l6, BE) == 0);
    snprintf(rel, sizeof rel, "golden/mini_alexnet/train/masks/iter%d_drop6.u8", it);
    snprintf(what, sizeof what, "iter%d drop6", it);
    CHECK(compare_mask(x6, rel, what));
    CHECK(layer_forward(l7, BE) == 0);
    snprintf(rel, sizeof rel, "golden/mini_alexnet/train/masks/iter%d_drop7.u8", it);
    snprintf(what, sizeof what, "iter%d drop7", it);
    CHECK(compare_mask(x7, rel, what));
    /* Kept values are scaled by float(1/(1-ratio)). */
    for (size_t i = 0; i < 128; i++) {
      CHECK(x6->data[i] == 0 || x6->data[i] == 2.0f);
      CHECK(x7->data[i] == 0 || x7->data[i] == 1.4285715f);
    }
  }
  layer_free(l6), layer_free(l7);
  blob_free(x6), blob_free(x7);
}

static void test_dropout(void) {
  Rng rng;
  rng_seed(&rng, 4);
  Blob *x = mk("x", 2, 100, 100, 0, 0), *y = blob_new("y");
  fill_rand_signed(x, 0.1f, 1);
  LP(lp, "drop", "Dropout");
  Caffe__DropoutParameter dp = CAFFE__DROPOUT_PARAMETER__INIT;
  dp.has_dropout_ratio = 1;
  dp.dropout_ratio = 0.3f;
  lp.dropout_param = &dp;
  Layer *l = layer_create(&lp, MOKA_TRAIN, &rng, &x, 1, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  const float scale = (float)(1.0 / (1.0 - (double)0.3f));
  size_t kept = 0;
  for (size_t i = 0; i < x->count; i++) {
    int k = y->data[i] != 0;
    kept += k;
    CHECK(y->data[i] == (k ? x->data[i] * scale : 0));
    y->diff[i] = frand(-1, 1);
  }
  CHECK(fabs((double)kept / x->count - 0.7) < 0.02);
  /* Backward against the mask of that forward. */
  CHECK(layer_backward(l, BE) == 0);
  for (size_t i = 0; i < x->count; i++)
    CHECK(x->diff[i] == (y->data[i] != 0 ? y->diff[i] * scale : 0));
  /* A new mask at every forward. */
  Blob *y1 = clone(y);
  CHECK(layer_forward(l, BE) == 0);
  CHECK(max_abs_diff(y1->data, y->data, y->count) > 0);
  blob_free(y1);
  layer_free(l);
  /* TEST: identity, gradient check. */
  Blob *xs = mk("xs", 2, 3, 5, 0, 0);
  fill_rand(xs, -1, 1);
  l = layer_create(&lp, MOKA_TEST, NULL, &xs, 1, &y, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  CHECK(memcmp(xs->data, y->data, xs->count * sizeof(float)) == 0);
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  /* TRAIN with ratio 0 keeps everything (deterministic): gradient check. */
  dp.dropout_ratio = 0;
  l = layer_create(&lp, MOKA_TRAIN, &rng, &xs, 1, &y, 1);
  REQUIRE(l);
  CHECK(gradcheck_layer(l, BE, NULL) == 0);
  layer_free(l);
  dp.dropout_ratio = 1;
  CHECK(layer_create(&lp, MOKA_TRAIN, &rng, &xs, 1, &y, 1) == NULL);
  CHECK(error_mentions("drop", "dropout_ratio"));
  blob_free(x), blob_free(xs), blob_free(y);
}

/* ---- SoftmaxWithLoss and Accuracy -------------------------------------------------------- */

/* The TRAIN loss of mini_train and mini_alexnet from their dumped logits, and
 * the loss gradient summed over the batch = the fc bias gradient. */
static void test_golden_softmax_loss(void) {
  struct { const char *logits, *labels, *loss, *bias_diff; } g[2] = {
      {"golden/mini_train/grad_iter0/blob_fc.f32", "golden/mini_train/batches/batch0_label.f32",
       "golden/mini_train/grad_iter0/loss.f32", "golden/mini_train/grad_iter0/diff_fc.1.f32"},
      {"golden/mini_alexnet/train/grad_iter0/blob_fc8.f32",
       "golden/mini_alexnet/train/batches/batch0_label.f32",
       "golden/mini_alexnet/train/grad_iter0/loss.f32",
       "golden/mini_alexnet/train/grad_iter0/diff_fc8.1.f32"}};
  for (int k = 0; k < 2; k++) {
    Blob *x = golden(g[k].logits, 2, 2, 10, 0, 0);
    Blob *lab = golden(g[k].labels, 1, 2, 0, 0, 0);
    Blob *want = golden(g[k].loss, 0, 0, 0, 0, 0);
    Blob *bd = golden(g[k].bias_diff, 1, 10, 0, 0, 0);
    REQUIRE(x && lab && want && bd);
    LP(lp, "loss", "SoftmaxWithLoss");
    Blob *bot[2] = {x, lab}, *loss = blob_new("loss");
    Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 2, &loss, 1);
    REQUIRE(l);
    CHECK(l->loss_weight[0] == 1.0f);
    CHECK(loss->num_axes == 0 && loss->count == 1);
    CHECK(layer_forward(l, BE) == 0);
    CHECK_MSG(fabs(loss->data[0] - want->data[0]) < 1e-6 * fabs(want->data[0]) + 1e-7,
              "%s: %.9g vs %.9g", g[k].loss, loss->data[0], want->data[0]);
    /* hand computation */
    double h = 0;
    for (int n = 0; n < 2; n++) {
      double mx = -INFINITY, s = 0;
      for (int c = 0; c < 10; c++) mx = fmax(mx, x->data[n * 10 + c]);
      for (int c = 0; c < 10; c++) s += exp(x->data[n * 10 + c] - mx);
      h -= x->data[n * 10 + (int)lab->data[n]] - mx - log(s);
    }
    CHECK(fabs(loss->data[0] - h / 2) < 1e-6);
    loss->diff[0] = 1;
    l->propagate_down[1] = false;
    CHECK(layer_backward(l, BE) == 0);
    float sum[10];
    for (int c = 0; c < 10; c++) sum[c] = x->diff[c] + x->diff[10 + c];
    CHECK(compare_f32(g[k].bias_diff, sum, bd->data, 10, 1e-4, 0));
    layer_free(l);
    blob_free(x), blob_free(lab), blob_free(want), blob_free(bd), blob_free(loss);
  }
}

/* fc7's bias gradient in mini_alexnet: the loss gradient through fc8's
 * weights, drop7 (Caffe's mask from the 1701 stream) and relu7, in place, as
 * in the net. */
static void test_golden_dropout_backward(void) {
  const char *D = "golden/mini_alexnet/train/grad_iter0";
  Blob *fc8 = golden("golden/mini_alexnet/train/grad_iter0/blob_fc8.f32", 2, 2, 10, 0, 0);
  Blob *lab = golden("golden/mini_alexnet/train/batches/batch0_label.f32", 1, 2, 0, 0, 0);
  Blob *fc7 = golden("golden/mini_alexnet/train/grad_iter0/blob_fc7.f32", 2, 2, 64, 0, 0);
  Blob *w8 = golden("golden/mini_alexnet/params/fc8.0.f32", 2, 10, 64, 0, 0);
  Blob *want = golden("golden/mini_alexnet/train/grad_iter0/diff_fc7.1.f32", 1, 64, 0, 0, 0);
  REQUIRE(fc8 && lab && fc7 && w8 && want);
  (void)D;
  Rng rng;
  rng_seed(&rng, 1701);
  Blob *fc6 = mk("fc6", 2, 2, 64, 0, 0), *loss = blob_new("loss");
  Blob *x7 = mk("x7", 2, 2, 64, 0, 0); /* fc7 before dropout: unknown, any non-zero */
  LP(p6, "drop6", "Dropout");
  LP(p7, "drop7", "Dropout");
  LP(pr, "relu7", "ReLU");
  LP(pl, "loss", "SoftmaxWithLoss");
  Caffe__DropoutParameter d7 = CAFFE__DROPOUT_PARAMETER__INIT;
  d7.has_dropout_ratio = 1;
  d7.dropout_ratio = 0.3f;
  p7.dropout_param = &d7;
  Blob *bot[2] = {fc8, lab};
  Layer *l6 = layer_create(&p6, MOKA_TRAIN, &rng, &fc6, 1, &fc6, 1);
  Layer *l7 = layer_create(&p7, MOKA_TRAIN, &rng, &x7, 1, &x7, 1);
  Layer *lr = layer_create(&pr, MOKA_TRAIN, &rng, &x7, 1, &x7, 1);
  Layer *ll = layer_create(&pl, MOKA_TRAIN, &rng, bot, 2, &loss, 1);
  REQUIRE(l6 && l7 && lr && ll);
  /* The stream's draws in net order: drop6's mask, then drop7's. */
  CHECK(layer_forward(l6, BE) == 0 && layer_forward(l7, BE) == 0);
  CHECK(layer_forward(ll, BE) == 0);
  loss->diff[0] = 1;
  ll->propagate_down[1] = false;
  CHECK(layer_backward(ll, BE) == 0);
  /* d(fc7 after relu/drop) = dfc8 . W8, into the shared blob's diff. */
  for (int n = 0; n < 2; n++)
    for (int j = 0; j < 64; j++) {
      double acc = 0;
      for (int o = 0; o < 10; o++) acc += (double)fc8->diff[n * 10 + o] * w8->data[o * 64 + j];
      x7->diff[n * 64 + j] = (float)acc;
    }
  CHECK(layer_backward(l7, BE) == 0);
  /* relu7 backward reads the blob's data: the dumped fc7 (after relu, drop). */
  memcpy(x7->data, fc7->data, fc7->count * sizeof(float));
  CHECK(layer_backward(lr, BE) == 0);
  float sum[64];
  for (int j = 0; j < 64; j++) sum[j] = x7->diff[j] + x7->diff[64 + j];
  CHECK(compare_f32("diff_fc7.1", sum, want->data, 64, 1e-3, 0));
  layer_free(l6), layer_free(l7), layer_free(lr), layer_free(ll);
  blob_free(fc8), blob_free(lab), blob_free(fc7), blob_free(w8), blob_free(want);
  blob_free(fc6), blob_free(loss), blob_free(x7);
}

static void test_softmax_loss(void) {
  /* (N=2, C=4, H=2, W=3) scores, labels (2,1,2,3) with two ignored. */
  Blob *x = mk("score", 4, 2, 4, 2, 3), *lab = mk("label", 4, 2, 1, 2, 3);
  Blob *loss = blob_new("loss"), *prob = blob_new("prob");
  fill_rand(x, -2, 2);
  const float labels[12] = {0, 3, 255, 1, 2, 2, 3, 0, 1, 255, 2, 1};
  memcpy(lab->data, labels, sizeof labels);
  const int C = 4, I = 6;
  double nll = 0;
  int valid = 0;
  for (int n = 0; n < 2; n++)
    for (int i = 0; i < I; i++) {
      int y = (int)labels[n * I + i];
      if (y == 255) continue;
      double mx = -INFINITY, s = 0;
      for (int c = 0; c < C; c++) mx = fmax(mx, x->data[(n * C + c) * I + i]);
      for (int c = 0; c < C; c++) s += exp(x->data[(n * C + c) * I + i] - mx);
      nll -= x->data[(n * C + y) * I + i] - mx - log(s);
      valid++;
    }
  struct { int mode; int legacy; double z; const char *name; } modes[] = {
      {CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__VALID, -1, 10, "VALID"},
      {CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__BATCH_SIZE, -1, 2, "BATCH_SIZE"},
      {CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__FULL, -1, 12, "FULL"},
      {CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__NONE, -1, 1, "NONE"},
      {-1, 1, 10, "normalize: true"},
      {-1, 0, 2, "normalize: false"},
      {-2, -1, 10, "default"}};
  CHECK(valid == 10);
  for (size_t k = 0; k < MOKA_ARRAY_LEN(modes); k++) {
    LP(lp, "loss", "SoftmaxWithLoss");
    Caffe__LossParameter lo = CAFFE__LOSS_PARAMETER__INIT;
    lo.has_ignore_label = 1;
    lo.ignore_label = 255;
    if (modes[k].mode >= 0) lo.has_normalization = 1, lo.normalization = modes[k].mode;
    if (modes[k].legacy >= 0) lo.has_normalize = 1, lo.normalize = modes[k].legacy;
    lp.loss_param = &lo;
    Blob *bot[2] = {x, lab}, *tops[2] = {loss, prob};
    if (modes[k].mode == -2) { /* with the optional second top: probabilities */
      Layer *l2 = layer_create(&lp, MOKA_TRAIN, NULL, bot, 2, tops, 2);
      REQUIRE(l2);
      CHECK(layer_forward(l2, BE) == 0);
      CHECK(blob_same_shape(prob, x));
      double s = 0;
      for (int c = 0; c < C; c++) s += prob->data[(1 * C + c) * I + 4];
      CHECK(fabs(s - 1) < 1e-6);
      CHECK(fabs(loss->data[0] - nll / modes[k].z) < 1e-5);
      layer_free(l2);
    }
    /* The loss alone for the gradient check (the prob top has no backward). */
    Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 2, tops, 1);
    REQUIRE(l);
    CHECK(layer_forward(l, BE) == 0);
    CHECK_MSG(fabs(loss->data[0] - nll / modes[k].z) < 1e-5, "%s: %g vs %g", modes[k].name,
              loss->data[0], nll / modes[k].z);
    /* The gradient is zero at ignored positions. */
    loss->diff[0] = 1;
    l->propagate_down[1] = false;
    CHECK(layer_backward(l, BE) == 0);
    for (int c = 0; c < C; c++) CHECK(x->diff[(0 * C + c) * I + 2] == 0);
    GradCheckOpts o = {1e-2, 1e-2, 1, 0, 5};
    CHECK_MSG(gradcheck_layer(l, BE, &o) == 0, "%s", modes[k].name);
    layer_free(l);
  }
  /* All labels ignored: VALID normaliser is at least 1, loss 0. */
  for (int i = 0; i < 12; i++) lab->data[i] = 255;
  LP(lp, "loss", "SoftmaxWithLoss");
  Caffe__LossParameter lo = CAFFE__LOSS_PARAMETER__INIT;
  lo.has_ignore_label = 1;
  lo.ignore_label = 255;
  lp.loss_param = &lo;
  Blob *bot[2] = {x, lab};
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, bot, 2, &loss, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0 && loss->data[0] == 0);
  layer_free(l);
  /* A certain wrong answer clamps at FLT_MIN: loss = -ln(FLT_MIN) = 87.3365. */
  Blob *s2 = mk("s2", 2, 1, 2, 0, 0), *l2 = mk("l2", 1, 1, 0, 0, 0);
  s2->data[0] = 0, s2->data[1] = 1000, l2->data[0] = 0;
  Blob *bot2[2] = {s2, l2};
  LP(lq, "loss", "SoftmaxWithLoss");
  l = layer_create(&lq, MOKA_TRAIN, NULL, bot2, 2, &loss, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) == 0);
  CHECK(fabs(loss->data[0] - 87.3365) < 1e-3);
  layer_free(l);
  blob_free(s2), blob_free(l2);
  blob_free(x), blob_free(lab), blob_free(loss), blob_free(prob);
}

static void test_accuracy(void) {
  Blob *x = mk("score", 2, 4, 5, 0, 0), *lab = mk("label", 1, 4, 0, 0, 0);
  Blob *acc = blob_new("acc"), *per = blob_new("per_class");
  const float s[20] = {0.1f, 0.5f, 0.2f, 0.1f, 0.1f,   /* best 1, second 2 */
                       0.3f, 0.1f, 0.1f, 0.4f, 0.1f,   /* best 3, second 0 */
                       0.2f, 0.2f, 0.2f, 0.2f, 0.2f,   /* all tied */
                       0.0f, 0.0f, 0.0f, 0.0f, 1.0f};  /* best 4 */
  const float l[4] = {1, 0, 2, 3};
  memcpy(x->data, s, sizeof s);
  memcpy(lab->data, l, sizeof l);
  LP(lp, "accuracy", "Accuracy");
  Blob *bot[2] = {x, lab}, *tops[2] = {acc, per};
  Layer *a = layer_create(&lp, MOKA_TEST, NULL, bot, 2, tops, 2);
  REQUIRE(a);
  CHECK(layer_forward(a, BE) == 0);
  CHECK(acc->data[0] == 0.25f); /* only sample 0; a tie counts against the truth */
  CHECK(per->count == 5 && per->data[1] == 1 && per->data[0] == 0 && per->data[4] == 0);
  CHECK(layer_backward(a, BE) == 0);
  layer_free(a);
  Caffe__AccuracyParameter ap = CAFFE__ACCURACY_PARAMETER__INIT;
  ap.has_top_k = 1;
  ap.top_k = 2;
  ap.has_ignore_label = 1;
  ap.ignore_label = 3;
  lp.accuracy_param = &ap;
  a = layer_create(&lp, MOKA_TEST, NULL, bot, 2, &acc, 1);
  REQUIRE(a);
  CHECK(layer_forward(a, BE) == 0);
  CHECK(fabsf(acc->data[0] - 2.0f / 3.0f) < 1e-7f); /* samples 0, 1 right; 3 ignored */
  layer_free(a);
  ap.top_k = 6;
  CHECK(layer_create(&lp, MOKA_TEST, NULL, bot, 2, &acc, 1) == NULL);
  CHECK(error_mentions("accuracy", "top_k"));
  ap.top_k = 1;
  lab->data[1] = 7;
  a = layer_create(&lp, MOKA_TEST, NULL, bot, 2, &acc, 1);
  REQUIRE(a);
  CHECK(layer_forward(a, BE) != 0);
  CHECK(error_mentions("accuracy", "7"));
  layer_free(a);
  blob_free(x), blob_free(lab), blob_free(acc), blob_free(per);
}

/* ---- fillers ------------------------------------------------------------------------------- */

static void moments(const Blob *b, double *mean, double *var) {
  double m = 0, v = 0;
  for (size_t i = 0; i < b->count; i++) m += b->data[i];
  m /= (double)b->count;
  for (size_t i = 0; i < b->count; i++) v += pow(b->data[i] - m, 2);
  *mean = m;
  *var = v / (double)b->count;
}

static void test_fillers(void) {
  Rng r;
  rng_seed(&r, 1234);
  Blob *b = mk("w", 4, 64, 32, 3, 3); /* fan_in 288, fan_out 576 */
  Caffe__FillerParameter f = CAFFE__FILLER_PARAMETER__INIT;
  double m, v;

  f.value = 0.25f;
  CHECK(filler_fill(b, &f, &r) == 0); /* default type: constant */
  for (size_t i = 0; i < b->count; i++) CHECK(b->data[i] == 0.25f);

  f.type = (char *)"uniform";
  f.min = -0.5f, f.max = 2.0f;
  CHECK(filler_fill(b, &f, &r) == 0);
  float lo = 10, hi = -10;
  for (size_t i = 0; i < b->count; i++) lo = fminf(lo, b->data[i]), hi = fmaxf(hi, b->data[i]);
  CHECK(lo >= -0.5f && hi <= 2.0f && lo < -0.49f && hi > 1.99f);
  moments(b, &m, &v);
  CHECK(fabs(m - 0.75) < 0.03 && fabs(v - 2.5 * 2.5 / 12) < 0.03);

  f.type = (char *)"gaussian";
  f.mean = 1.0f, f.std = 0.5f;
  CHECK(filler_fill(b, &f, &r) == 0);
  moments(b, &m, &v);
  CHECK_MSG(fabs(m - 1.0) < 0.02 && fabs(sqrt(v) - 0.5) < 0.02, "gaussian %g %g", m, sqrt(v));
  /* sparse: about sparse/shape[0] of the values survive */
  f.sparse = 16;
  CHECK(filler_fill(b, &f, &r) == 0);
  size_t nz = 0;
  for (size_t i = 0; i < b->count; i++) nz += b->data[i] != 0;
  CHECK_MSG(fabs((double)nz / b->count - 0.25) < 0.02, "sparse nz %zu", nz);
  f.sparse = -1;

  f.type = (char *)"xavier";
  CHECK(filler_fill(b, &f, &r) == 0);
  moments(b, &m, &v);
  CHECK_MSG(fabs(m) < 0.005 && fabs(v * 288 - 1) < 0.05, "xavier var*n %g", v * 288);
  /* Exactly Caffe's draws: U[-s, s] from the stream. */
  Rng r1, r2;
  rng_seed(&r1, 77), rng_seed(&r2, 77);
  CHECK(filler_fill(b, &f, &r1) == 0);
  float sc = sqrtf(3.0f / 288.0f);
  int same = 1;
  for (size_t i = 0; i < b->count; i++)
    same &= b->data[i] == rng_uniform(&r2, -sc, nextafterf(sc, FLT_MAX));
  CHECK(same);
  f.has_variance_norm = 1;
  f.variance_norm = CAFFE__FILLER_PARAMETER__VARIANCE_NORM__FAN_OUT;
  CHECK(filler_fill(b, &f, &r) == 0);
  moments(b, &m, &v);
  CHECK_MSG(fabs(v * 576 - 1) < 0.05, "xavier fan_out var*n %g", v * 576);

  f.type = (char *)"msra";
  f.variance_norm = CAFFE__FILLER_PARAMETER__VARIANCE_NORM__AVERAGE;
  CHECK(filler_fill(b, &f, &r) == 0);
  moments(b, &m, &v);
  CHECK_MSG(fabs(m) < 0.005 && fabs(v * 432 / 2 - 1) < 0.05, "msra avg var*n/2 %g", v * 216);
  f.variance_norm = CAFFE__FILLER_PARAMETER__VARIANCE_NORM__FAN_IN;
  CHECK(filler_fill(b, &f, &r) == 0);
  moments(b, &m, &v);
  CHECK_MSG(fabs(v * 288 / 2 - 1) < 0.05, "msra fan_in var*n/2 %g", v * 144);

  f.type = (char *)"positive_unitball";
  CHECK(filler_fill(b, &f, &r) == 0);
  for (int row = 0; row < 64; row++) {
    double s = 0;
    for (int j = 0; j < 288; j++) {
      CHECK(b->data[row * 288 + j] >= 0);
      s += b->data[row * 288 + j];
    }
    CHECK_MSG(fabs(s - 1) < 1e-5, "row %d sums to %g", row, s);
  }

  Blob *k = mk("k", 4, 1, 1, 4, 4);
  f.type = (char *)"bilinear";
  CHECK(filler_fill(k, &f, &r) == 0);
  const float w1[4] = {0.25f, 0.75f, 0.75f, 0.25f};
  for (int y = 0; y < 4; y++)
    for (int x = 0; x < 4; x++) CHECK(fabsf(k->data[y * 4 + x] - w1[y] * w1[x]) < 1e-7f);
  Blob *k3 = mk("k3", 4, 2, 1, 3, 3);
  CHECK(filler_fill(k3, &f, &r) == 0);
  CHECK(fabsf(k3->data[4] - 1.0f) < 1e-7f && fabsf(k3->data[0] - 0.25f) < 1e-7f);
  Blob *rect = mk("rect", 4, 1, 1, 3, 4);
  CHECK(filler_fill(rect, &f, &r) != 0);
  CHECK(error_mentions("bilinear", "square"));

  /* Errors: unknown type, sparse outside gaussian, bad std. */
  f.type = (char *)"gausian";
  CHECK(filler_fill(b, &f, &r) != 0);
  CHECK(error_mentions("gausian", "unknown filler"));
  f.type = (char *)"uniform";
  f.sparse = 3;
  CHECK(filler_fill(b, &f, &r) != 0);
  CHECK(error_mentions("sparse", NULL));
  f.sparse = -1;
  f.type = (char *)"gaussian";
  f.std = 0;
  CHECK(filler_fill(b, &f, &r) != 0);
  CHECK(error_mentions("std", NULL));

  /* Through layer_add_param, the error names the layer. */
  LP(lp, "scale_f", "Scale");
  Caffe__ScaleParameter sp = CAFFE__SCALE_PARAMETER__INIT;
  Caffe__FillerParameter bad = CAFFE__FILLER_PARAMETER__INIT;
  bad.type = (char *)"nope";
  sp.filler = &bad;
  lp.scale_param = &sp;
  Blob *x = mk("x", 2, 2, 3, 0, 0), *y = blob_new("y");
  CHECK(layer_create(&lp, MOKA_TRAIN, &r, &x, 1, &y, 1) == NULL);
  CHECK(error_mentions("scale_f", "nope"));
  blob_free(x), blob_free(y);
  blob_free(b), blob_free(k), blob_free(k3), blob_free(rect);
}

/* ---- errors -------------------------------------------------------------------------------- */

static void test_errors(void) {
  Blob *a = mk("a", 4, 2, 3, 4, 4), *b = mk("b", 4, 2, 3, 4, 5), *y = blob_new("y");
  Blob *bot[2] = {a, b};
  LP(ep, "res_bad", "Eltwise");
  CHECK(layer_create(&ep, MOKA_TRAIN, NULL, bot, 2, &y, 1) == NULL);
  CHECK(error_mentions("res_bad", "2 3 4 5"));

  LP(cp, "cat_bad", "Concat");
  CHECK(layer_create(&cp, MOKA_TRAIN, NULL, bot, 2, &y, 1) == NULL);
  CHECK(error_mentions("cat_bad", "concat axis"));
  Blob *c3 = mk("c3", 3, 2, 3, 4, 0), *bot3[2] = {a, c3};
  CHECK(layer_create(&cp, MOKA_TRAIN, NULL, bot3, 2, &y, 1) == NULL);
  CHECK(error_mentions("cat_bad", "axes"));

  /* SoftmaxWithLoss: label out of range, at forward. */
  Blob *s = mk("s", 2, 2, 10, 0, 0), *lab = mk("lab", 1, 2, 0, 0, 0), *loss = blob_new("loss");
  lab->data[0] = 3, lab->data[1] = 10;
  Blob *sb[2] = {s, lab};
  LP(lp, "loss_bad", "SoftmaxWithLoss");
  Layer *l = layer_create(&lp, MOKA_TRAIN, NULL, sb, 2, &loss, 1);
  REQUIRE(l);
  CHECK(layer_forward(l, BE) != 0);
  CHECK(error_mentions("loss_bad", "label value 10"));
  lab->data[1] = -1;
  CHECK(layer_forward(l, BE) != 0);
  CHECK(error_mentions("loss_bad", "-1"));
  layer_free(l);
  /* label count mismatch */
  Blob *lab3 = mk("lab3", 1, 3, 0, 0, 0), *sb3[2] = {s, lab3};
  CHECK(layer_create(&lp, MOKA_TRAIN, NULL, sb3, 2, &loss, 1) == NULL);
  CHECK(error_mentions("loss_bad", "first dimension"));

  /* BatchNorm with a learnable lr_mult. */
  LP(bp, "bn_lr", "BatchNorm");
  Caffe__ParamSpec ps = CAFFE__PARAM_SPEC__INIT, *pps[1] = {&ps};
  ps.has_lr_mult = 1;
  ps.lr_mult = 1;
  bp.n_param = 1;
  bp.param = pps;
  CHECK(layer_create(&bp, MOKA_TRAIN, NULL, &a, 1, &y, 1) == NULL);
  CHECK(error_mentions("bn_lr", "lr_mult"));
  /* Dropout in TRAIN without a random stream. */
  LP(dp, "drop_norng", "Dropout");
  CHECK(layer_create(&dp, MOKA_TRAIN, NULL, &a, 1, &y, 1) == NULL);
  CHECK(error_mentions("drop_norng", "random"));
  blob_free(a), blob_free(b), blob_free(c3), blob_free(y), blob_free(s), blob_free(lab),
      blob_free(lab3), blob_free(loss);
}

int main(void) {
  moka_set_log_level(1);
  RUN(test_registry);
  RUN(test_golden_stem);
  RUN(test_golden_softmax);
  RUN(test_golden_eltwise);
  RUN(test_golden_bn_train_stats);
  RUN(test_golden_dropout_masks);
  RUN(test_golden_softmax_loss);
  RUN(test_golden_dropout_backward);
  RUN(test_bn_train_formula);
  RUN(test_bn_2d);
  RUN(test_bn_gradcheck);
  RUN(test_in_place);
  RUN(test_scale);
  RUN(test_relu);
  RUN(test_eltwise);
  RUN(test_softmax);
  RUN(test_flatten);
  RUN(test_concat);
  RUN(test_split);
  RUN(test_input);
  RUN(test_dropout);
  RUN(test_softmax_loss);
  RUN(test_accuracy);
  RUN(test_fillers);
  RUN(test_errors);
  return test_summary();
}
