/* test_layers_b.c — the reference layers BatchNorm and Scale, and the
 * layer registry: against Caffe's golden files (shared/golden: the
 * mini_resnet stem, Softmax, Eltwise, TRAIN-phase BatchNorm statistics),
 * against formulas computed here in double, finite-difference gradient
 * checks and in-place use. test_layers_c.c tests the other layers of this
 * group (Input, ReLU, Eltwise, Softmax, Flatten, Dropout, Concat, Split,
 * SoftmaxWithLoss, Accuracy), the fillers and the errors.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "layer.h"
#include "layertest.h"
#include "rng.h"
#include "testlib.h"
#include "util.h"

static const char *MR = "golden/mini_resnet";

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


int main(void) {
  moka_set_log_level(1);
  RUN(test_registry);
  RUN(test_golden_stem);
  RUN(test_golden_softmax);
  RUN(test_golden_eltwise);
  RUN(test_golden_bn_train_stats);
  RUN(test_bn_train_formula);
  RUN(test_bn_2d);
  RUN(test_bn_gradcheck);
  RUN(test_in_place);
  RUN(test_scale);
  return test_summary();
}
