/* test_fast.c — the fast CPU backend (MOKA_BACKEND_CPU_FAST) against the
 * reference (MOKA_BACKEND_CPU), and against real Caffe's golden runs.
 *
 *  1. Every layer with a fast path, forward and backward (bottom diffs and
 *     parameter gradients, which must ADD into the existing diffs), on
 *     awkward shapes: odd H/W, stride 2, 1x1 (gathered and direct), the 7x7/2
 *     stem, dilation, groups 2 and 3, batch 1, a batch that the image chunks
 *     do not divide, channels that are not a multiple of 8, in place.
 *     GEMM-based layers (Convolution, InnerProduct) and reductions
 *     (BatchNorm/Scale statistics and gradients) must agree to a normalised
 *     error max|fast - ref| / max|ref|; element-wise layers whose float
 *     operations are the reference's must be bit-identical.
 *  2. Whole nets: the mini ResNet golden forward (TEST, both input sizes,
 *     rtol 1e-4) and the golden mini_train run (6 SGD iterations: losses to
 *     1e-4 absolute, weights to rtol 1e-4) with the fast backend.
 *  3. bf16 (where the CPU has AVX-512 BF16; SKIP lines otherwise): the bf16
 *     GEMM against a double-precision GEMM of the same bf16-rounded inputs
 *     (every transpose, edges of every blocking level, alpha/beta), and the
 *     convolution and inner product in bf16 against the fp32 reference
 *     (within bf16 rounding, and visibly not fp32).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16_kernel_sets.h"
#include "goldentest.h"
#include "layers/batchnorm_priv.h"
#include "layers/fast.h"
#include "net.h"
#include "prototxt.h"
#include "solver.h"
#include "testlib.h"
#include "util.h"

/* Normalised error bounds. The GEMM-based layers sum the same products in
 * another order; their inputs here are O(1) with sums of up to ~300 terms. */
#define TOL_GEMM 2e-6
#define TOL_REDUCE 1e-6

static Rng g_rng;

/* ---- comparing ------------------------------------------------------------------------ */

/* tol < 0: bit-identical values (NaN equal to NaN); else normalised error. */
static int same(const char *what, const char *name, const float *fast, const float *ref,
                size_t n, double tol) {
  if (tol < 0) {
    for (size_t i = 0; i < n; i++)
      if (memcmp(&fast[i], &ref[i], sizeof(float)) != 0 && !(fast[i] == ref[i]) &&
          !(isnan(fast[i]) && isnan(ref[i]))) {
        fprintf(stderr, "    %s %s: element %zu: fast %.9g, reference %.9g (must be identical)\n",
                name, what, i, (double)fast[i], (double)ref[i]);
        return 0;
      }
    return 1;
  }
  double e = norm_err(fast, ref, n);
  if (!(e <= tol)) {
    fprintf(stderr, "    %s %s: normalised error %.3g > %.3g\n", name, what, e, tol);
    return 0;
  }
  return 1;
}

/* ---- a layer built twice: reference and fast ------------------------------------------ */

#define MAXB 4

typedef struct Twin {
  Caffe__LayerParameter *lp;
  Layer *ref, *fast;
  Blob *rb[MAXB], *rt[MAXB], *fb[MAXB], *ft[MAXB];
  int nb, nt;
  Rng rr, rf;
} Twin;

static void fill_random(float *v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = rng_gaussian(&g_rng, 0.0f, scale);
}

static void twin_free(Twin *t) {
  layer_free(t->ref);
  layer_free(t->fast);
  for (int i = 0; i < MAXB; i++) {
    blob_free(t->rb[i]);
    blob_free(t->fb[i]);
    if (t->rt[i] != t->rb[i]) blob_free(t->rt[i]);
    if (t->ft[i] != t->fb[i]) blob_free(t->ft[i]);
  }
  if (t->lp) caffe__layer_parameter__free_unpacked(t->lp, NULL);
  memset(t, 0, sizeof *t);
}

/* Build the layer in `text` twice (same filler draws), with nb bottoms of
 * the given shapes (filled with the same N(0,1) values) and nt tops; with
 * in_place, top i is bottom i. */
static int twin_make(Twin *t, const char *text, Phase ph, int nb, const int (*shape)[4],
                     const int *axes, int nt, bool in_place) {
  memset(t, 0, sizeof *t);
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return -1;
  }
  t->lp = (Caffe__LayerParameter *)m;
  t->nb = nb;
  t->nt = nt;
  for (int i = 0; i < nb; i++) {
    t->rb[i] = blob_new("bottom");
    t->fb[i] = blob_new("bottom");
    int na = axes ? axes[i] : 4;
    if (!t->rb[i] || !t->fb[i] || blob_reshape(t->rb[i], na, shape[i]) ||
        blob_reshape(t->fb[i], na, shape[i]))
      return -1;
    fill_random(t->rb[i]->data, t->rb[i]->count, 1.0f);
    memcpy(t->fb[i]->data, t->rb[i]->data, t->rb[i]->count * sizeof(float));
  }
  for (int i = 0; i < nt; i++) {
    t->rt[i] = in_place ? t->rb[i] : blob_new("top");
    t->ft[i] = in_place ? t->fb[i] : blob_new("top");
    if (!t->rt[i] || !t->ft[i]) return -1;
  }
  rng_seed(&t->rr, 77);
  rng_seed(&t->rf, 77);
  t->ref = layer_create(t->lp, ph, &t->rr, t->rb, nb, t->rt, nt);
  t->fast = layer_create(t->lp, ph, &t->rf, t->fb, nb, t->ft, nt);
  if (!t->ref || !t->fast) {
    fprintf(stderr, "    layer_create: %s\n", moka_error());
    return -1;
  }
  /* Parameters: random values (fillers may be constant), the same in both. */
  for (int k = 0; k < t->ref->n_params; k++) {
    Blob *a = t->ref->params[k], *b = t->fast->params[k];
    fill_random(a->data, a->count, 0.5f);
    memcpy(b->data, a->data, a->count * sizeof(float));
  }
  return 0;
}

/* Forward both, compare tops (and parameters, which BatchNorm updates);
 * then the same random top diffs and the same non-zero parameter diffs (the
 * gradients must add into them), backward both, compare bottom and
 * parameter diffs. tol_fwd/tol_bwd/tol_param as in same(). */
static int twin_check(Twin *t, const char *name, double tol_fwd, double tol_bwd,
                      double tol_param) {
  int ok = 1;
  if (layer_forward(t->ref, MOKA_BACKEND_CPU) || layer_forward(t->fast, MOKA_BACKEND_CPU_FAST)) {
    fprintf(stderr, "    %s forward: %s\n", name, moka_error());
    return 0;
  }
  for (int i = 0; i < t->nt; i++)
    ok &= same("forward top", name, t->ft[i]->data, t->rt[i]->data, t->rt[i]->count, tol_fwd);
  for (int k = 0; k < t->ref->n_params; k++)
    ok &= same("parameter after forward", name, t->fast->params[k]->data,
               t->ref->params[k]->data, t->ref->params[k]->count, tol_param);
  for (int i = 0; i < t->nt; i++) {
    fill_random(t->rt[i]->diff, t->rt[i]->count, 1.0f);
    memcpy(t->ft[i]->diff, t->rt[i]->diff, t->rt[i]->count * sizeof(float));
  }
  for (int k = 0; k < t->ref->n_params; k++) {
    fill_random(t->ref->params[k]->diff, t->ref->params[k]->count, 0.1f);
    memcpy(t->fast->params[k]->diff, t->ref->params[k]->diff,
           t->ref->params[k]->count * sizeof(float));
  }
  for (int i = 0; i < t->nb; i++) {
    t->ref->propagate_down[i] = true;
    t->fast->propagate_down[i] = true;
  }
  if (layer_backward(t->ref, MOKA_BACKEND_CPU) ||
      layer_backward(t->fast, MOKA_BACKEND_CPU_FAST)) {
    fprintf(stderr, "    %s backward: %s\n", name, moka_error());
    return 0;
  }
  for (int i = 0; i < t->nb; i++)
    ok &= same("bottom diff", name, t->fb[i]->diff, t->rb[i]->diff, t->rb[i]->count, tol_bwd);
  for (int k = 0; k < t->ref->n_params; k++)
    ok &= same("parameter diff", name, t->fast->params[k]->diff, t->ref->params[k]->diff,
               t->ref->params[k]->count, tol_param < 0 ? TOL_REDUCE : tol_param);
  return ok;
}

/* One layer, one shape set: build, check, free. */
static int check_layer(const char *name, const char *text, Phase ph, int nb,
                       const int (*shape)[4], const int *axes, int nt, bool in_place,
                       double tol_fwd, double tol_bwd, double tol_param) {
  Twin t;
  int ok = twin_make(&t, text, ph, nb, shape, axes, nt, in_place) == 0;
  if (ok) ok = twin_check(&t, name, tol_fwd, tol_bwd, tol_param);
  else fprintf(stderr, "    %s: could not build\n", name);
  twin_free(&t);
  return ok;
}

/* ---- layer tests ---------------------------------------------------------------------- */

typedef struct ConvCase {
  const char *name;
  int n, c, h, w;
  const char *param; /* convolution_param body */
} ConvCase;

/* A Convolution layer's text for case c into text (size n): gaussian
 * weights, plus the given fillers. */
static void conv_text(const ConvCase *c, const char *fillers, char *text, size_t n) {
  snprintf(text, n,
           "name: 'conv' type: 'Convolution' convolution_param { %s "
           "weight_filler { type: 'gaussian' std: 0.1 } %s }",
           c->param, fillers);
}

/* Case c, forward and every gradient, fast against the reference. */
static int check_conv_case(const ConvCase *c, const char *text) {
  const int shape[1][4] = {{c->n, c->c, c->h, c->w}};
  return check_layer(c->name, text, MOKA_TRAIN, 1, shape, NULL, 1, false, TOL_GEMM, TOL_GEMM,
                     TOL_GEMM);
}

static void test_convolution(void) {
  static const ConvCase cases[] = {
      {"3x3 pad 1, odd 11x9", 2, 3, 11, 9, "num_output: 5 kernel_size: 3 pad: 1 bias_term: false"},
      {"3x3 stride 2, 13x10", 3, 4, 13, 10, "num_output: 6 kernel_size: 3 stride: 2 pad: 1"},
      {"1x1 gathered (chunk of images)", 2, 8, 7, 5, "num_output: 12 kernel_size: 1 bias_term: false"},
      {"1x1 direct (one image per GEMM)", 2, 3, 48, 48, "num_output: 4 kernel_size: 1"},
      {"1x1 stride 2", 2, 6, 9, 9, "num_output: 5 kernel_size: 1 stride: 2"},
      {"1x1 stride 2, even 10x40 (rows of several vectors)", 2, 5, 10, 40,
       "num_output: 3 kernel_size: 1 stride: 2"},
      {"1x1 stride 2, 7x33", 1, 4, 7, 33, "num_output: 3 kernel_size: 1 stride: 2 bias_term: false"},
      {"7x7/2 stem with bias", 2, 3, 23, 21,
       "num_output: 8 kernel_size: 7 stride: 2 pad: 3"},
      {"dilation 2", 2, 3, 12, 12, "num_output: 4 kernel_size: 3 pad: 2 dilation: 2"},
      {"group 2", 2, 4, 9, 7, "num_output: 6 kernel_size: 3 pad: 1 group: 2"},
      {"group 3, 3x2 kernel, stride 2x1", 2, 6, 8, 7,
       "num_output: 9 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 "
       "group: 3"},
      {"batch 1", 1, 5, 9, 7, "num_output: 7 kernel_size: 3 pad: 1"},
      {"3x3 direct (one image per GEMM)", 2, 2, 50, 50, "num_output: 3 kernel_size: 3 pad: 1"},
      {"13 images in chunks of 11, 14x14", 13, 3, 14, 14,
       "num_output: 4 kernel_size: 3 pad: 1"},
      {"7x7 late layer, 1x1", 5, 16, 7, 7, "num_output: 24 kernel_size: 1"},
      {"kernel larger than stride, pad 2 stride 3", 2, 3, 10, 11,
       "num_output: 5 kernel_size: 5 stride: 3 pad: 2"},
      /* Stride 1 with output rows as wide as the input's: im2col and col2im
       * by shifted masked loads (convolution_fast.c, shift_prepare). */
      {"shifts: 5x5 pad 2, 6x5", 3, 4, 6, 5, "num_output: 5 kernel_size: 5 pad: 2"},
      {"shifts: 1x3 pad 0x1, 5x13", 2, 3, 5, 13,
       "num_output: 4 kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 1"},
      {"shifts: 3x3 pad 0x1 (fewer output rows), 7x7", 2, 3, 7, 7,
       "num_output: 4 kernel_size: 3 pad_h: 0 pad_w: 1"},
      {"shifts: 4x4 planes (16 values), 3x7 kernel wider than the plane", 2, 3, 4, 4,
       "num_output: 3 kernel_h: 3 kernel_w: 7 pad_h: 1 pad_w: 3"},
      {"shifts: 8x8 planes, 3x3 pad 1, 12 in / 20 out", 3, 12, 8, 8,
       "num_output: 20 kernel_size: 3 pad: 1"},
  };
  for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++) {
    char text[512];
    conv_text(&cases[i], "", text, sizeof text);
    CHECK_MSG(check_conv_case(&cases[i], text), "convolution: %s", cases[i].name);
  }
  const int sf[1][4] = {{3, 4, 9, 8}};
  CHECK(check_layer("frozen weights (lr_mult 0)", "name: 'conv' type: 'Convolution' param { "
                    "lr_mult: 0 } param { lr_mult: 0 } convolution_param { num_output: 5 "
                    "kernel_size: 3 pad: 1 }", MOKA_TRAIN, 1, sf, NULL, 1, false, TOL_GEMM,
                    TOL_GEMM, -1));
  /* Two bottoms sharing the weights (bottom i -> top i). */
  const int shape2[2][4] = {{3, 4, 9, 8}, {3, 4, 9, 8}};
  CHECK(check_layer("two bottoms", "name: 'conv' type: 'Convolution' convolution_param { "
                    "num_output: 5 kernel_size: 3 pad: 1 }",
                    MOKA_TRAIN, 2, shape2, NULL, 2, false, TOL_GEMM, TOL_GEMM, TOL_GEMM));
}

/* One large image goes through in blocks of output rows (convolution_fast.c,
 * block_rows: its column matrix over 512 KiB), and stride-2 rows of im2col
 * use the vector gather on AVX-512 CPUs: forward, both gradients, a
 * parameter gradient with no data gradient (a net's first layer), groups,
 * and frozen weights. */
static void test_conv_row_blocks(void) {
  static const ConvCase cases[] = {
      /* 147 x (39 x 38) columns, 23 rows a block: 2 blocks */
      {"7x7/2 stem, 77x75, in row blocks", 2, 3, 77, 75,
       "num_output: 8 kernel_size: 7 stride: 2 pad: 3"},
      /* 72 x (45 x 45) columns: blocks of 40 rows and 5 */
      {"group 2, 3x3/2, 90x90, in row blocks", 1, 8, 90, 90,
       "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2"},
      /* stride-2 rows of every length from 1 to 40 */
      {"3x3/2 rows of 1..40", 1, 2, 3, 80, "num_output: 3 kernel_size: 3 stride: 2 pad: 1"},
      {"1x1/2 short rows", 2, 5, 31, 3, "num_output: 4 kernel_size: 1 stride: 2"},
  };
  for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++) {
    const ConvCase *c = &cases[i];
    char text[512];
    conv_text(c, "bias_filler { type: 'gaussian' std: 1 }", text, sizeof text);
    CHECK_MSG(check_conv_case(c, text), "convolution: %s", c->name);
    const int shape[1][4] = {{c->n, c->c, c->h, c->w}};
    /* The weight gradient alone (propagate_down false), and the frozen
     * forward (packed weights), twice. */
    Twin t;
    REQUIRE(twin_make(&t, text, MOKA_TRAIN, 1, shape, NULL, 1, false) == 0);
    CHECK(layer_forward(t.ref, MOKA_BACKEND_CPU) == 0 &&
          layer_forward(t.fast, MOKA_BACKEND_CPU_FAST) == 0);
    fill_random(t.rt[0]->diff, t.rt[0]->count, 1.0f);
    memcpy(t.ft[0]->diff, t.rt[0]->diff, t.rt[0]->count * sizeof(float));
    for (int k = 0; k < t.ref->n_params; k++) {
      memset(t.ref->params[k]->diff, 0, t.ref->params[k]->count * sizeof(float));
      memset(t.fast->params[k]->diff, 0, t.ref->params[k]->count * sizeof(float));
    }
    t.ref->propagate_down[0] = t.fast->propagate_down[0] = false;
    CHECK(layer_backward(t.ref, MOKA_BACKEND_CPU) == 0 &&
          layer_backward(t.fast, MOKA_BACKEND_CPU_FAST) == 0);
    for (int k = 0; k < t.ref->n_params; k++)
      CHECK(same("parameter diff, no data gradient", c->name, t.fast->params[k]->diff,
                 t.ref->params[k]->diff, t.ref->params[k]->count, TOL_REDUCE));
    t.fast->weights_frozen = true;
    for (int pass = 0; pass < 2; pass++) {
      CHECK(layer_forward(t.fast, MOKA_BACKEND_CPU_FAST) == 0);
      CHECK(same("frozen forward", c->name, t.ft[0]->data, t.rt[0]->data, t.rt[0]->count,
                 TOL_GEMM));
    }
    twin_free(&t);
  }
}

static void test_inner_product(void) {
  const int s4[1][4] = {{5, 3, 4, 3}};
  CHECK(check_layer("ip", "name: 'ip' type: 'InnerProduct' inner_product_param { "
                    "num_output: 11 }", MOKA_TRAIN, 1, s4, NULL, 1, false,
                    TOL_GEMM, TOL_GEMM, TOL_GEMM));
  CHECK(check_layer("ip transpose", "name: 'ip' type: 'InnerProduct' inner_product_param { "
                    "num_output: 7 transpose: true }", MOKA_TRAIN, 1, s4, NULL, 1, false,
                    TOL_GEMM, TOL_GEMM, TOL_GEMM));
  const int s2[1][4] = {{1, 300}};
  const int a2[1] = {2};
  CHECK(check_layer("ip batch 1, wide", "name: 'ip' type: 'InnerProduct' inner_product_param { "
                    "num_output: 1000 }", MOKA_TRAIN, 1, s2, a2, 1, false,
                    TOL_GEMM, TOL_GEMM, TOL_GEMM));
}

static void test_batchnorm(void) {
  const int s[1][4] = {{3, 5, 7, 9}};
  const int big[1][4] = {{2, 13, 33, 31}}; /* above the threading threshold */
  const int s2[1][4] = {{6, 11}};
  const int a2[1] = {2};
  for (int in_place = 0; in_place < 2; in_place++) {
    CHECK(check_layer("bn train", "name: 'bn' type: 'BatchNorm'", MOKA_TRAIN, 1, s, NULL, 1,
                      in_place, TOL_REDUCE, TOL_REDUCE, TOL_REDUCE));
    CHECK(check_layer("bn train big", "name: 'bn' type: 'BatchNorm'", MOKA_TRAIN, 1, big, NULL,
                      1, in_place, TOL_REDUCE, TOL_REDUCE, TOL_REDUCE));
  }
  CHECK(check_layer("bn train 2-D", "name: 'bn' type: 'BatchNorm'", MOKA_TRAIN, 1, s2, a2, 1,
                    true, TOL_REDUCE, TOL_REDUCE, TOL_REDUCE));
  /* Global statistics: the same float operations, bit-identical. The
   * statistics blobs are random: make the variances positive. */
  Twin t;
  REQUIRE(twin_make(&t, "name: 'bn' type: 'BatchNorm' batch_norm_param { eps: 0.001 }",
                    MOKA_TEST, 1, big, NULL, 1, true) == 0);
  for (size_t k = 0; k < t.ref->params[1]->count; k++) {
    t.ref->params[1]->data[k] = fabsf(t.ref->params[1]->data[k]) + 0.1f;
    t.fast->params[1]->data[k] = t.ref->params[1]->data[k];
  }
  t.ref->params[2]->data[0] = t.fast->params[2]->data[0] = 0.73f;
  CHECK(twin_check(&t, "bn global stats", -1, -1, -1));
  twin_free(&t);
}

/* The statistics' two loops (AVX-512, plain) against sums in long double,
 * on plane sizes around their vector steps (tails of 1-31 values). */
static void test_batchnorm_stats(void) {
  const size_t sizes[] = {1, 7, 8, 9, 16, 31, 33, 49, 196, 1027};
  Rng r;
  rng_seed(&r, 77);
  for (size_t q = 0; q < sizeof sizes / sizeof sizes[0]; q++) {
    const size_t N = 3, C = 2, S = sizes[q];
    float *x = malloc(N * C * S * sizeof(float));
    REQUIRE(x);
    for (size_t i = 0; i < N * C * S; i++) x[i] = rng_gaussian(&r, 3.0f, 2.0f);
    for (size_t ch = 0; ch < C; ch++) {
      long double sum = 0, sq = 0;
      for (size_t n = 0; n < N; n++)
        for (size_t s = 0; s < S; s++) sum += x[(n * C + ch) * S + s];
      const float mu_want = (float)(sum / (long double)(N * S));
      for (size_t n = 0; n < N; n++)
        for (size_t s = 0; s < S; s++) {
          const float d = x[(n * C + ch) * S + s] - mu_want;
          sq += (long double)d * d;
        }
      const double var_want = (double)(sq / (long double)(N * S));
      for (int v = 0; v < 2; v++) {
        float mu, var, sd;
        bn_fast_channel_stats_with(v == 1, x, N, C, S, ch, 1e-5f, &mu, &var, &sd);
        CHECK_MSG(fabsf(mu - mu_want) <= 1e-6f * fabsf(mu_want) &&
                      fabs((double)var - var_want) <= 1e-6 * var_want &&
                      sd == sqrtf(var + 1e-5f),
                  "S %zu channel %zu %s: mean %.9g var %.9g, want %.9g %.9g", S, ch,
                  v ? "avx512" : "plain", (double)mu, (double)var, (double)mu_want, var_want);
      }
    }
    free(x);
  }
}

static void test_scale(void) {
  const int s[1][4] = {{3, 5, 7, 9}};
  const int big[1][4] = {{2, 13, 33, 31}};
  for (int in_place = 0; in_place < 2; in_place++) {
    CHECK(check_layer("scale+bias", "name: 's' type: 'Scale' scale_param { bias_term: true }",
                      MOKA_TRAIN, 1, big, NULL, 1, in_place, -1, -1, TOL_REDUCE));
    CHECK(check_layer("scale", "name: 's' type: 'Scale'", MOKA_TRAIN, 1, s, NULL, 1, in_place,
                      -1, -1, TOL_REDUCE));
  }
  /* lr_mult 0 (a frozen layer): no parameter gradient, as in the reference. */
  CHECK(check_layer("scale frozen", "name: 's' type: 'Scale' param { lr_mult: 0 } "
                    "param { lr_mult: 0 } scale_param { bias_term: true }", MOKA_TRAIN, 1, big,
                    NULL, 1, true, -1, -1, -1));
  CHECK(check_layer("scale axis 1 num_axes 2", "name: 's' type: 'Scale' scale_param { "
                    "num_axes: 2 bias_term: true }", MOKA_TRAIN, 1, big, NULL, 1, true, -1, -1,
                    TOL_REDUCE));
  /* The scale from a second bottom (C,H) and a bias of shape (C): the bias
   * has another geometry than the scale. */
  const int s2[2][4] = {{2, 13, 33, 31}, {13, 33}};
  const int a2[2] = {4, 2};
  CHECK(check_layer("scale from bottom 1, bias (C)", "name: 's' type: 'Scale' scale_param { "
                    "bias_term: true }", MOKA_TRAIN, 2, s2, a2, 1, false, -1, TOL_REDUCE,
                    TOL_REDUCE));
}

static void test_relu(void) {
  const int s[1][4] = {{2, 7, 33, 35}};
  for (int in_place = 0; in_place < 2; in_place++) {
    CHECK(check_layer("relu", "name: 'r' type: 'ReLU'", MOKA_TRAIN, 1, s, NULL, 1, in_place, -1,
                      -1, -1));
    CHECK(check_layer("leaky relu", "name: 'r' type: 'ReLU' relu_param { negative_slope: 0.1 }",
                      MOKA_TRAIN, 1, s, NULL, 1, in_place, -1, -1, -1));
  }
  /* Zeros, signed zeros, infinities and NaN take the reference's path. */
  Twin t;
  const int tiny[1][4] = {{1, 1, 1, 8}};
  REQUIRE(twin_make(&t, "name: 'r' type: 'ReLU' relu_param { negative_slope: 0.25 }", MOKA_TRAIN,
                    1, tiny, NULL, 1, false) == 0);
  const float special[8] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 3.0f};
  memcpy(t.rb[0]->data, special, sizeof special);
  memcpy(t.fb[0]->data, special, sizeof special);
  CHECK(twin_check(&t, "relu special values", -1, -1, -1));
  twin_free(&t);
}

static void test_pooling(void) {
  const int s[1][4] = {{2, 5, 17, 15}};
  CHECK(check_layer("max 3/2 ceil", "name: 'p' type: 'Pooling' pooling_param { pool: MAX "
                    "kernel_size: 3 stride: 2 }", MOKA_TRAIN, 1, s, NULL, 1, false, -1, -1, -1));
  CHECK(check_layer("max 3/2 pad 1, mask top", "name: 'p' type: 'Pooling' pooling_param { "
                    "pool: MAX kernel_size: 3 stride: 2 pad: 1 }", MOKA_TRAIN, 1, s, NULL, 2,
                    false, -1, -1, -1));
  CHECK(check_layer("ave 3/2 pad 1", "name: 'p' type: 'Pooling' pooling_param { pool: AVE "
                    "kernel_size: 3 stride: 2 pad: 1 }", MOKA_TRAIN, 1, s, NULL, 1, false, -1,
                    -1, -1));
  CHECK(check_layer("global ave", "name: 'p' type: 'Pooling' pooling_param { pool: AVE "
                    "global_pooling: true }", MOKA_TRAIN, 1, s, NULL, 1, false, -1, -1, -1));
  /* Ties (values in {-1, 0, 1}): the first maximum wins, as in the reference. */
  Twin t;
  REQUIRE(twin_make(&t, "name: 'p' type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 "
                    "stride: 2 pad: 1 }", MOKA_TRAIN, 1, s, NULL, 2, false) == 0);
  for (size_t k = 0; k < t.rb[0]->count; k++)
    t.rb[0]->data[k] = t.fb[0]->data[k] = roundf(t.rb[0]->data[k]);
  CHECK(twin_check(&t, "max with ties", -1, -1, -1));
  twin_free(&t);
  const int big[1][4] = {{4, 16, 30, 30}};
  CHECK(check_layer("max 2/2 big", "name: 'p' type: 'Pooling' pooling_param { pool: MAX "
                    "kernel_size: 2 stride: 2 }", MOKA_TRAIN, 1, big, NULL, 1, false, -1, -1,
                    -1));
  /* Wide rows: the outputs inside the image 16 at a time on AVX-512 CPUs
   * (pooling_fast.c, max_row16), strides 1 and 2, pads 0-2, tails; with
   * ties and NaNs, bit for bit (argmax and gradient included). */
  static const char *const wide[] = {
      "kernel_size: 3 stride: 2", "kernel_size: 3 stride: 2 pad: 1",
      "kernel_size: 3 stride: 1 pad: 1", "kernel_size: 2 stride: 2",
      "kernel_h: 2 kernel_w: 5 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 2",
      "kernel_size: 4 stride: 3 pad: 1"};
  const int ws[1][4] = {{2, 3, 7, 77}};
  for (size_t i = 0; i < MOKA_ARRAY_LEN(wide); i++) {
    char text[256], name[160];
    snprintf(text, sizeof text, "name: 'p' type: 'Pooling' pooling_param { pool: MAX %s }",
             wide[i]);
    for (int v = 0; v < 2; v++) {
      snprintf(name, sizeof name, "max %s, 77 wide%s", wide[i], v ? ", ties and NaN" : "");
      Twin w;
      REQUIRE(twin_make(&w, text, MOKA_TRAIN, 1, ws, NULL, 2, false) == 0);
      if (v)
        for (size_t k = 0; k < w.rb[0]->count; k++) {
          const float q = k % 13 == 5 ? NAN : roundf(w.rb[0]->data[k]);
          w.rb[0]->data[k] = w.fb[0]->data[k] = q;
        }
      CHECK_MSG(twin_check(&w, name, -1, -1, -1), "%s", name);
      twin_free(&w);
    }
  }
}

static void test_eltwise_split(void) {
  const int s3[3][4] = {{2, 9, 33, 35}, {2, 9, 33, 35}, {2, 9, 33, 35}};
  CHECK(check_layer("sum", "name: 'e' type: 'Eltwise'", MOKA_TRAIN, 2, s3, NULL, 1, false, -1,
                    -1, -1));
  CHECK(check_layer("sum coeff, 3 bottoms", "name: 'e' type: 'Eltwise' eltwise_param { "
                    "coeff: 1 coeff: -0.5 coeff: 2 }", MOKA_TRAIN, 3, s3, NULL, 1, false, -1,
                    -1, -1));
  CHECK(check_layer("prod", "name: 'e' type: 'Eltwise' eltwise_param { operation: PROD }",
                    MOKA_TRAIN, 3, s3, NULL, 1, false, -1, -1, -1));
  CHECK(check_layer("prod unstable", "name: 'e' type: 'Eltwise' eltwise_param { "
                    "operation: PROD stable_prod_grad: false }", MOKA_TRAIN, 2, s3, NULL, 1,
                    false, -1, -1, -1));
  CHECK(check_layer("max", "name: 'e' type: 'Eltwise' eltwise_param { operation: MAX }",
                    MOKA_TRAIN, 3, s3, NULL, 1, false, -1, -1, -1));
  CHECK(check_layer("split 3", "name: 's' type: 'Split'", MOKA_TRAIN, 1, s3, NULL, 3, false, -1,
                    -1, -1));
  CHECK(check_layer("split 2", "name: 's' type: 'Split'", MOKA_TRAIN, 1, s3, NULL, 2, false, -1,
                    -1, -1));
}

static void test_softmax_concat_dropout(void) {
  const int s[1][4] = {{5, 1000, 1, 1}};
  CHECK(check_layer("softmax", "name: 's' type: 'Softmax'", MOKA_TRAIN, 1, s, NULL, 1, false, -1,
                    -1, -1));
  const int s2[1][4] = {{3, 7, 33, 35}};
  CHECK(check_layer("softmax spatial, in place", "name: 's' type: 'Softmax'", MOKA_TRAIN, 1, s2,
                    NULL, 1, true, -1, -1, -1));
  const int c3[3][4] = {{4, 5, 30, 31}, {4, 2, 30, 31}, {4, 9, 30, 31}};
  CHECK(check_layer("concat", "name: 'c' type: 'Concat'", MOKA_TRAIN, 3, c3, NULL, 1, false, -1,
                    -1, -1));
  const int d[1][4] = {{4, 9, 30, 31}};
  for (int ph = 0; ph < 2; ph++)
    CHECK(check_layer(ph ? "dropout TEST" : "dropout TRAIN (same masks: same stream)",
                      "name: 'd' type: 'Dropout' dropout_param { dropout_ratio: 0.3 }",
                      ph ? MOKA_TEST : MOKA_TRAIN, 1, d, NULL, 1, ph, -1, -1, -1));
}

/* ---- bf16 ----------------------------------------------------------------------------- */

/* fp32 -> bf16 -> fp32 as VCVTNE2PS2BF16 rounds: nearest even, denormal
 * inputs to zero, NaN kept quiet. */
static float bf16_round(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) == 0) {
    u &= 0x80000000u;
  } else if ((u & 0x7fffffffu) > 0x7f800000u) {
    u = (u | 0x00400000u) & 0xffff0000u;
  } else {
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  }
  memcpy(&x, &u, sizeof x);
  return x;
}

static bool bf16_available(void) {
  if (fast_bf16_supported()) return true;
  fprintf(stderr, "  SKIP %s: this CPU has no AVX-512 BF16\n", t_cur_name);
  return false;
}

/* moka's own GEMMs (bf16: gemm_bf16.c; fp32: gemm_f32.c) against a double
 * GEMM of the same inputs (bf16: rounded as the hardware rounds them): every
 * transpose, edges of every blocking level, leading dimensions, alpha/beta. */
static void check_own_gemm(bool bf16) {
  static const int shapes[][3] = {{1, 1, 1},        {13, 37, 29}, {12, 32, 256},  {25, 70, 513},
                                  {150, 1100, 300}, {5, 2000, 64}, {3000, 20, 40}, {7, 3, 2},
                                  /* M = 64 (8-row micro-panels), short N */
                                  {64, 49, 130},    {200, 196, 70}, {40, 9, 300},
                                  /* K in three blocks */
                                  {30, 45, 1100},
                                  /* AMX: 32-row blocks whole and partial, 16-row tail */
                                  {80, 64, 512}, {48, 33, 97}};
  for (size_t si = 0; si < MOKA_ARRAY_LEN(shapes); si++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        const int pad = 3; /* leading dimensions larger than the rows */
        const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
        const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
        float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
        float *C = malloc((size_t)M * ldc * sizeof(float));
        float *want = malloc((size_t)M * N * sizeof(float)), *got = malloc((size_t)M * N * sizeof(float));
        REQUIRE(A && B && C && want && got);
        fill_random(A, na, 1.0f);
        fill_random(B, nb, 1.0f);
        fill_random(C, (size_t)M * ldc, 1.0f);
        const float alpha = si % 2 ? 0.5f : 1.0f, beta = ta ? 1.0f : 0.0f;
        for (int i = 0; i < M; i++)
          for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < K; k++) {
              float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
              float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
              acc += bf16 ? (double)bf16_round(a) * (double)bf16_round(b) : (double)a * b;
            }
            want[(size_t)i * N + j] = (float)(alpha * acc + beta * C[(size_t)i * ldc + j]);
          }
        const float guard = C[(size_t)(M - 1) * ldc + N]; /* past the last row's N values */
        int rc = bf16 ? fast_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
                      : fast_gemm_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        CHECK(rc == 0);
        CHECK(C[(size_t)(M - 1) * ldc + N] == guard);
        for (int i = 0; i < M; i++) memcpy(got + (size_t)i * N, C + (size_t)i * ldc, N * sizeof(float));
        char name[96];
        snprintf(name, sizeof name, "%s GEMM %dx%dx%d ta %d tb %d", bf16 ? "bf16" : "fp32", M, N, K,
                 ta, tb);
        CHECK_MSG(same("C", name, got, want, (size_t)M * N, 2e-5), "%s", name);
        free(A), free(B), free(C), free(want), free(got);
      }
}

static void check_own_gemm_bf16(void) { check_own_gemm(true); }

/* With every kernel set this CPU has (AMX where it has it, AVX-512 BF16). */
static void test_gemm_bf16(void) {
  if (bf16_available()) bf16_kernel_sets(check_own_gemm_bf16);
}

static void test_gemm_f32(void) {
  if (!fast_avx512_supported()) {
    fprintf(stderr, "  SKIP %s: this CPU has no AVX-512\n", t_cur_name);
    return;
  }
  check_own_gemm(false);
}

/* A C of 1 MiB or more, 64-byte aligned with whole-line rows: with beta 0 its last writes go
 * past the caches (streamed; beta 1 adds to C: ordinary stores); the same sums as the double
 * GEMM, for K in one block and in two (the first block's writes not streamed, the second's
 * streamed after reading them), a partial last panel (ordinary stores), and the row past M
 * untouched. */
static void test_gemm_f32_streamed(void) {
  if (!fast_avx512_supported()) {
    fprintf(stderr, "  SKIP %s: this CPU has no AVX-512\n", t_cur_name);
    return;
  }
  static const int shapes[][3] = {{512, 1040, 64}, {600, 1024, 300}}; /* a thread: >= 1 MiB */
  for (size_t si = 0; si < MOKA_ARRAY_LEN(shapes); si++)
    for (int beta = 0; beta < 2; beta++) {
      const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], ldc = N;
      float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N);
      float *C = aligned_alloc(64, sizeof(float) * (size_t)(M + 1) * ldc);
      float *want = malloc(sizeof(float) * (size_t)M * N);
      REQUIRE(A && B && C && want);
      fill_random(A, (size_t)M * K, 1.0f);
      fill_random(B, (size_t)K * N, 1.0f);
      fill_random(C, (size_t)(M + 1) * ldc, 1.0f);
      const float guard = C[(size_t)M * ldc];
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double acc = 0;
          for (int k = 0; k < K; k++) acc += (double)A[(size_t)i * K + k] * B[(size_t)k * N + j];
          want[(size_t)i * N + j] = (float)(acc + (beta ? C[(size_t)i * ldc + j] : 0.0));
        }
      CHECK(fast_gemm_f32(false, false, M, N, K, 1.0f, A, K, B, N, (float)beta, C, ldc) == 0);
      CHECK(C[(size_t)M * ldc] == guard);
      char name[64];
      snprintf(name, sizeof name, "streamed fp32 GEMM %dx%dx%d beta %d", M, N, K, beta);
      CHECK_MSG(same("C", name, C, want, (size_t)M * N, 2e-5), "%s", name);
      free(A), free(B), free(C), free(want);
    }
}

/* op(A) transposed read in place (the default) or every panel packed
 * first: the same values bit for bit (the
 * same FMAs), for all four transposes, row and column counts with and
 * without a partial last panel (8- and 12-row panels), leading dimensions
 * larger than the rows, K in several blocks, row and column splits over the
 * pool. */
static void test_gemm_f32_in_place(void) {
  if (!fast_avx512_supported()) {
    fprintf(stderr, "  SKIP %s: this CPU has no AVX-512\n", t_cur_name);
    return;
  }
  static const int shapes[][3] = {{64, 3136, 256}, {256, 784, 64}, {13, 70, 1100},
                                  {200, 96, 30},   {7, 33, 5},     {512, 49, 600},
                                  {4608, 49, 512}, {150, 40, 70}};
  for (size_t si = 0; si < MOKA_ARRAY_LEN(shapes); si++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        const int lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 5, ldc = N + 3;
        const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
        const size_t nc = (size_t)M * ldc;
        float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
        float *packed = calloc(nc, sizeof(float)), *here = calloc(nc, sizeof(float));
        REQUIRE(A && B && packed && here);
        fill_random(A, na, 1.0f);
        fill_random(B, nb, 1.0f);
        fill_random(packed, nc, 1.0f);
        memcpy(here, packed, nc * sizeof(float));
        fast_gemm_f32_set_in_place(false);
        CHECK(fast_gemm_f32(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, packed, ldc) == 0);
        fast_gemm_f32_set_in_place(true);
        CHECK(fast_gemm_f32(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, here, ldc) == 0);
        CHECK_MSG(memcmp(here, packed, nc * sizeof(float)) == 0, "in place %dx%dx%d ta %d tb %d",
                  M, N, K, ta, tb);
        free(A), free(B), free(packed), free(here);
      }
}

/* op(A) packed once (fast_gemm_f32_pack) then fast_gemm_f32_prepacked: the
 * very values of fast_gemm_f32 (the same panels, kernel and order), for
 * 8- and 12-row panels, several K blocks, row and column splits. */
static void test_gemm_f32_prepacked(void) {
  if (!fast_avx512_supported()) {
    fprintf(stderr, "  SKIP %s: this CPU has no AVX-512\n", t_cur_name);
    return;
  }
  static const int shapes[][3] = {{64, 49, 600},   {256, 196, 300}, {2048, 49, 70},
                                  {13, 1000, 17},  {300, 40, 513},  {1, 1, 1},
                                  {40, 70, 1300}}; /* K in several blocks */
  for (size_t si = 0; si < MOKA_ARRAY_LEN(shapes); si++)
    for (int ta = 0; ta < 2; ta++) {
      const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
      const int lda = (ta ? M : K) + 1, ldb = N + 2, ldc = N + 3;
      const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)K * ldb, nc = (size_t)M * ldc;
      float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
      float *want = calloc(nc, sizeof(float)), *got = calloc(nc, sizeof(float));
      float *Ap = malloc(fast_gemm_f32_packed_size(M, K) * sizeof(float));
      REQUIRE(A && B && want && got && Ap);
      fill_random(A, na, 1.0f);
      fill_random(B, nb, 1.0f);
      CHECK(fast_gemm_f32(ta, false, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, want, ldc) == 0);
      fast_gemm_f32_pack(ta, M, K, A, lda, Ap);
      CHECK(fast_gemm_f32_prepacked(M, N, K, Ap, B, ldb, got, ldc) == 0);
      CHECK_MSG(memcmp(got, want, nc * sizeof(float)) == 0, "prepacked %dx%dx%d ta %d", M, N, K,
                ta);
      free(A), free(B), free(want), free(got), free(Ap);
    }
}

/* Convolution and inner product with the bf16 GEMMs: within bf16 rounding of
 * the fp32 reference, and not equal to it (so bf16 really ran). */
static void test_layers_bf16(void) {
  if (!bf16_available()) return;
  REQUIRE(fast_set_precision("bf16") == 0);
  CHECK(fast_precision() == FAST_BF16);
  const int s[1][4] = {{3, 16, 14, 14}};
  Twin t;
  if (twin_make(&t, "name: 'conv' type: 'Convolution' convolution_param { num_output: 24 "
                "kernel_size: 3 pad: 1 }", MOKA_TRAIN, 1, s, NULL, 1, false) == 0) {
    CHECK(twin_check(&t, "conv bf16", 2e-2, 2e-2, 2e-2));
    CHECK(norm_err(t.ft[0]->data, t.rt[0]->data, t.rt[0]->count) > 1e-5);
  } else {
    CHECK(0);
  }
  twin_free(&t);
  const int s2[1][4] = {{4, 64, 3, 3}};
  CHECK(check_layer("conv 1x1 bf16", "name: 'conv' type: 'Convolution' convolution_param { "
                    "num_output: 40 kernel_size: 1 }", MOKA_TRAIN, 1, s2, NULL, 1, false, 2e-2,
                    2e-2, 2e-2));
  CHECK(check_layer("ip bf16", "name: 'ip' type: 'InnerProduct' inner_product_param { "
                    "num_output: 50 }", MOKA_TRAIN, 1, s2, NULL, 1, false, 2e-2, 2e-2, 2e-2));
  CHECK(fast_set_precision("fp32") == 0);
  CHECK(fast_set_precision("fp16") != 0 && strstr(moka_error(), "fp16"));
  CHECK(fast_precision() == FAST_FP32);
}

/* ---- whole nets ----------------------------------------------------------------------- */

static void test_mini_resnet_golden(void) {
  CHECK(golden_forward("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/input.bin", "",
                       19));
  CHECK(golden_forward("golden/mini_resnet/deploy_67x61.prototxt",
                       "golden/mini_resnet/input_67x61.bin", "odd/", 19));
}

static void test_mini_train_golden(void) {
  moka_set_log_level(1);
  Feed f;
  Solver *s = golden_mini_train_start(MOKA_BACKEND_CPU_FAST, &f);
  REQUIRE(s);
  CHECK(s->net->backend == MOKA_BACKEND_CPU_FAST);
  golden_mini_train_check(s, &f, "");
  solver_free(s);
  feed_free(&f);
  moka_set_log_level(0);
}

int main(void) {
  rng_seed(&g_rng, 20240611);
  RUN(test_convolution);
  RUN(test_conv_row_blocks);
  RUN(test_inner_product);
  RUN(test_batchnorm);
  RUN(test_batchnorm_stats);
  RUN(test_scale);
  RUN(test_relu);
  RUN(test_pooling);
  RUN(test_eltwise_split);
  RUN(test_softmax_concat_dropout);
  RUN(test_gemm_bf16);
  RUN(test_gemm_f32);
  RUN(test_gemm_f32_streamed);
  RUN(test_gemm_f32_prepacked);
  RUN(test_gemm_f32_in_place);
  RUN(test_layers_bf16);
  RUN(test_mini_resnet_golden);
  RUN(test_mini_train_golden);
  return test_summary();
}
