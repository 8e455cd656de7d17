/* test_layers_c.c — the reference layers Input, ReLU, Eltwise, Softmax,
 * Flatten, Concat, Split, Dropout, SoftmaxWithLoss and Accuracy, and the
 * fillers: against Caffe's golden files (shared/golden: Dropout masks,
 * SoftmaxWithLoss, the Dropout backward pass), against formulas computed
 * here in double, finite-difference gradient checks, and the errors that
 * bad parameters must give. (BatchNorm and Scale: test_layers_b.c.)
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
  RUN(test_golden_dropout_masks);
  RUN(test_golden_softmax_loss);
  RUN(test_golden_dropout_backward);
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
