/* test_bf16_conv.c — the bf16 convolution without an fp32 column buffer
 * (src/layers/convolution_bf16.c: weights packed once per call, im2col
 * written straight into the bf16 GEMM panels) on awkward shapes.
 *
 * Each case builds the layer three times with the same weights and inputs:
 *   ref   the fp32 reference backend;
 *   old   the fast backend in bf16 through the older path (fp32 column
 *         buffer, operands rounded by fast_gemm_bf16: test_fast.c checks it);
 *   new   the fast backend in bf16 through convolution_bf16.c.
 * new must agree with old to fp32 summation-order rounding (the same bf16
 * products: normalised error TOL_SAME), and with ref within bf16 rounding
 * (TOL_BF16, the bound test_fast.c uses) while visibly not being fp32 — for
 * the top, the bottom diff and the weight and bias diffs (which must ADD into
 * the existing diffs). Every case runs with 2 and 3 OpenMP threads and 1:
 * chunks of images side by side (uneven splits) where the layer has enough
 * columns per thread, else (and with a batch of 1) chunk after chunk with
 * the GEMMs split over the pool; with 1 thread, neither.
 * SKIP lines on a CPU without AVX-512 BF16.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "layers/convolution_bf16.h"
#include "layers/convolution_priv.h"
#include "layers/fast.h"
#include "prototxt.h"
#include "proto_io.h"
#include "testlib.h"
#include "util.h"

#define TOL_SAME 3e-5 /* new vs old bf16 path: the same products, summed in another order */
#define TOL_BF16 2e-2 /* bf16 vs the fp32 reference: as test_fast.c */

static Rng g_rng;

static void fill_random(float *v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = rng_gaussian(&g_rng, 0.0f, scale);
}

enum { REF, OLD, NEW, KINDS };
static const char *const kind_name[KINDS] = {"reference", "old bf16", "new bf16"};

typedef struct Case {
  const char *name;
  int n, c, h, w;
  const char *param;  /* convolution_param body */
  bool frozen;        /* lr_mult 0: no weight gradient */
  bool no_dx;         /* propagate_down false: no bottom diff */
} Case;

typedef struct Built {
  Layer *l;
  Blob *bottom, *top;
  Rng rng;
} Built;

static int build(Built *b, const Caffe__LayerParameter *lp, const int shape[4]) {
  memset(b, 0, sizeof *b);
  b->bottom = blob_new("bottom");
  b->top = blob_new("top");
  if (!b->bottom || !b->top || blob_reshape(b->bottom, 4, shape)) return -1;
  rng_seed(&b->rng, 5);
  b->l = layer_create(lp, MOKA_TRAIN, &b->rng, &b->bottom, 1, &b->top, 1);
  return b->l ? 0 : -1;
}

static void built_free(Built *b) {
  layer_free(b->l);
  blob_free(b->bottom);
  blob_free(b->top);
}

/* One pass of `b` on its backend and path; 0 or -1. */
static int run(Built *b, int kind) {
  const Backend be = kind == REF ? MOKA_BACKEND_CPU : MOKA_BACKEND_CPU_FAST;
  if (fast_set_precision(kind == REF ? "fp32" : "bf16")) return -1;
  conv_bf16_set_direct(kind == NEW);
  int rc = layer_forward(b->l, be);
  if (!rc) rc = layer_backward(b->l, be);
  conv_bf16_set_direct(true);
  (void)fast_set_precision("fp32");
  return rc;
}

static int compare(const char *name, const char *what, const float *ref, const float *old,
                   const float *nw, size_t n) {
  const double e_same = norm_err(nw, old, n), e_ref = norm_err(nw, ref, n);
  const double e_old_ref = norm_err(old, ref, n);
  int ok = 1;
  if (!(e_same <= TOL_SAME)) {
    fprintf(stderr, "    %s %s: new vs old bf16 path: normalised error %.3g > %.3g\n", name, what,
            e_same, TOL_SAME);
    ok = 0;
  }
  if (!(e_ref <= TOL_BF16)) {
    fprintf(stderr, "    %s %s: new bf16 vs fp32 reference: %.3g > %.3g\n", name, what, e_ref,
            TOL_BF16);
    ok = 0;
  }
  /* bf16 really ran (the old path does differ from fp32 here). */
  if (e_old_ref > 1e-5 && !(e_ref > 1e-5)) {
    fprintf(stderr, "    %s %s: new bf16 equals fp32 (%.3g): bf16 did not run\n", name, what,
            e_ref);
    ok = 0;
  }
  return ok;
}

static int check_case(const Case *c) {
  char text[640];
  snprintf(text, sizeof text,
           "name: 'conv' type: 'Convolution' %s convolution_param { %s "
           "weight_filler { type: 'gaussian' std: 0.1 } }",
           c->frozen ? "param { lr_mult: 0 } param { lr_mult: 0 }" : "", c->param);
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s: %s\n", c->name, moka_error());
    return 0;
  }
  const int shape[4] = {c->n, c->c, c->h, c->w};
  Built b[KINDS];
  int ok = 1;
  for (int k = 0; k < KINDS; k++)
    if (build(&b[k], (Caffe__LayerParameter *)m, shape)) {
      fprintf(stderr, "    %s: build: %s\n", c->name, moka_error());
      ok = 0;
    }
  if (ok) {
    Layer *r = b[REF].l;
    fill_random(b[REF].bottom->data, b[REF].bottom->count, 1.0f);
    for (int p = 0; p < r->n_params; p++) {
      fill_random(r->params[p]->data, r->params[p]->count, 0.5f);
      fill_random(r->params[p]->diff, r->params[p]->count, 0.1f); /* gradients add to these */
    }
    if (layer_forward(r, MOKA_BACKEND_CPU)) ok = 0; /* to shape the top */
    if (ok) fill_random(b[REF].top->diff, b[REF].top->count, 1.0f);
    for (int k = 1; ok && k < KINDS; k++) {
      Layer *l = b[k].l;
      memcpy(b[k].bottom->data, b[REF].bottom->data, b[REF].bottom->count * sizeof(float));
      for (int p = 0; p < r->n_params; p++) {
        memcpy(l->params[p]->data, r->params[p]->data, r->params[p]->count * sizeof(float));
        memcpy(l->params[p]->diff, r->params[p]->diff, r->params[p]->count * sizeof(float));
      }
      if (layer_forward(l, MOKA_BACKEND_CPU_FAST)) ok = 0; /* to shape the top */
      else memcpy(b[k].top->diff, b[REF].top->diff, b[REF].top->count * sizeof(float));
    }
    /* The bottom diff starts as garbage: it must be written, not added to. */
    for (int k = 0; ok && k < KINDS; k++) {
      fill_random(b[k].bottom->diff, b[k].bottom->count, 9.0f);
      b[k].l->propagate_down[0] = !c->no_dx;
      if (run(&b[k], k)) {
        fprintf(stderr, "    %s %s: %s\n", c->name, kind_name[k], moka_error());
        ok = 0;
      }
    }
    if (ok) {
      ok &= compare(c->name, "top", b[REF].top->data, b[OLD].top->data, b[NEW].top->data,
                    b[REF].top->count);
      if (!c->no_dx)
        ok &= compare(c->name, "bottom diff", b[REF].bottom->diff, b[OLD].bottom->diff,
                      b[NEW].bottom->diff, b[REF].bottom->count);
      for (int p = 0; p < r->n_params; p++) {
        const float *d = b[NEW].l->params[p]->diff;
        if (c->frozen) { /* untouched */
          ok &= memcmp(d, r->params[p]->diff, r->params[p]->count * sizeof(float)) == 0;
          continue;
        }
        ok &= compare(c->name, p ? "bias diff" : "weight diff", r->params[p]->diff,
                      b[OLD].l->params[p]->diff, d, r->params[p]->count);
      }
    }
  }
  for (int k = 0; k < KINDS; k++) built_free(&b[k]);
  caffe__layer_parameter__free_unpacked((Caffe__LayerParameter *)m, NULL);
  return ok;
}

static const Case cases[] = {
    {"3x3 pad 1, odd 11x9, odd K (27)", 2, 3, 11, 9, "num_output: 5 kernel_size: 3 pad: 1"},
    {"3x3 stride 2 pad 1, 13x10", 3, 20, 13, 10, "num_output: 33 kernel_size: 3 stride: 2 pad: 1"},
    {"1x1 gathered (chunk of images), odd C 33", 3, 33, 7, 5,
     "num_output: 12 kernel_size: 1 bias_term: false"},
    {"1x1 direct (one image per GEMM), 48x48 > NC columns", 2, 17, 48, 48,
     "num_output: 21 kernel_size: 1"},
    {"1x1 stride 2", 2, 6, 9, 9, "num_output: 5 kernel_size: 1 stride: 2"},
    {"1x1 stride 2, 40x38 (compact columns)", 2, 5, 40, 38,
     "num_output: 6 kernel_size: 1 stride: 2"},
    {"3x3 stride 2 pad 1, 37x36 (strided loads and edges)", 2, 3, 37, 36,
     "num_output: 4 kernel_size: 3 stride: 2 pad: 1"},
    {"3x3 pad 1, 34x20 (loads across output rows)", 2, 3, 20, 34,
     "num_output: 4 kernel_size: 3 pad: 1"},
    {"7x7/2 stem with bias", 2, 3, 23, 21, "num_output: 8 kernel_size: 7 stride: 2 pad: 3"},
    {"dilation 2", 2, 3, 12, 12, "num_output: 4 kernel_size: 3 pad: 2 dilation: 2"},
    {"group 2", 3, 4, 9, 7, "num_output: 6 kernel_size: 3 pad: 1 group: 2"},
    {"group 2, 1x1, 40 channels", 2, 40, 6, 6, "num_output: 50 kernel_size: 1 group: 2"},
    {"group 3, 3x2 kernel, stride 2x1", 2, 6, 8, 7,
     "num_output: 9 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 3"},
    {"batch 1 (GEMM split by the pool)", 1, 5, 9, 7, "num_output: 7 kernel_size: 3 pad: 1"},
    {"batch 1, 7x7, K = 40*9 > one K block, OC 150 > MC", 1, 40, 7, 7,
     "num_output: 150 kernel_size: 3 pad: 1"},
    {"13 images in uneven chunks, 14x14", 13, 3, 14, 14, "num_output: 4 kernel_size: 3 pad: 1"},
    {"7x7 late layer, 3x3, K 288 (two K blocks)", 5, 32, 7, 7,
     "num_output: 24 kernel_size: 3 pad: 1"},
    {"7x7 late layer, 1x1, 300 channels", 5, 300, 7, 7, "num_output: 40 kernel_size: 1"},
    {"kernel larger than stride, pad 2 stride 3", 2, 3, 10, 11,
     "num_output: 5 kernel_size: 5 stride: 3 pad: 2"},
    {"chunks side by side (enough columns per thread), 3x3 group 2", 3, 6, 30, 40,
     "num_output: 10 kernel_size: 3 pad: 1 group: 2"},
    {"chunks side by side, 1x1 gathered, 24x24", 5, 20, 24, 24, "num_output: 9 kernel_size: 1"},
    {"frozen weights (lr_mult 0)", 3, 4, 9, 8, "num_output: 5 kernel_size: 3 pad: 1", true,
     false},
    {"no bottom diff (propagate_down false)", 3, 4, 9, 8, "num_output: 5 kernel_size: 3 pad: 1",
     false, true},
    /* Stride 1 with pads other than (K-1)/2 (the input larger than the
     * output, or smaller), rectangular kernels with dilation, ResNet's 56x56
     * shape with chunks side by side, groups of 2 channels, frozen weights
     * with a bottom diff. */
    {"3x3 pad 0 (dx larger than dY)", 2, 5, 9, 10, "num_output: 6 kernel_size: 3"},
    {"5x5 pad 1", 3, 4, 11, 9, "num_output: 7 kernel_size: 5 pad: 1"},
    {"3x3 pad 3 (walk pad -1)", 2, 3, 6, 7, "num_output: 4 kernel_size: 3 pad: 3"},
    {"3x2 kernel, pad 1x0, dilation 2x1", 2, 4, 10, 9,
     "num_output: 5 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 dilation: 2 dilation: 1"},
    {"56x56 chunks side by side, 64 -> 64", 3, 64, 56, 56, "num_output: 64 kernel_size: 3 pad: 1"},
    {"group 4, 3x3 pad 1, 13x11", 3, 8, 13, 11, "num_output: 12 kernel_size: 3 pad: 1 group: 4"},
    {"frozen weights, 3x3 pad 1, chunks side by side", 4, 6, 30, 30,
     "num_output: 5 kernel_size: 3 pad: 1", true, false},
};

static void test_bf16_conv(void) {
  if (!fast_bf16_supported()) {
    fprintf(stderr, "  SKIP %s: this CPU has no AVX-512 BF16\n", t_cur_name);
    return;
  }
  const int saved = omp_get_max_threads();
  static const int threads[] = {2, 3, 1};
  for (size_t t = 0; t < MOKA_ARRAY_LEN(threads); t++) {
    omp_set_num_threads(threads[t]);
    for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++)
      CHECK_MSG(check_case(&cases[i]), "%s, %d threads", cases[i].name, threads[t]);
  }
  omp_set_num_threads(saved);
}

/* Layer.weights_frozen (inference): the forward's packed bf16 weights are
 * made on the first call and kept (ConvPriv.bf16_wpack). The frozen layer's
 * top must equal the unfrozen one's bit for bit (the same packing), on the
 * call that packs and on the next that reuses. */
static void test_frozen_forward(void) {
  if (!fast_bf16_supported()) {
    fprintf(stderr, "  SKIP %s: this CPU has no AVX-512 BF16\n", t_cur_name);
    return;
  }
  static const int picks[] = {0, 2, 10, 13}; /* 3x3, 1x1 gathered, group 2, batch 1 */
  for (size_t i = 0; i < MOKA_ARRAY_LEN(picks); i++) {
    const Case *c = &cases[picks[i]];
    char text[640];
    snprintf(text, sizeof text,
             "name: 'conv' type: 'Convolution' convolution_param { %s "
             "weight_filler { type: 'gaussian' std: 0.1 } }",
             c->param);
    ProtobufCMessage *m;
    REQUIRE(prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test", &m) ==
            0);
    const int shape[4] = {c->n, c->c, c->h, c->w};
    Built plain, frozen;
    REQUIRE(build(&plain, (Caffe__LayerParameter *)m, shape) == 0);
    REQUIRE(build(&frozen, (Caffe__LayerParameter *)m, shape) == 0);
    fill_random(plain.bottom->data, plain.bottom->count, 1.0f);
    memcpy(frozen.bottom->data, plain.bottom->data, plain.bottom->count * sizeof(float));
    for (int p = 0; p < plain.l->n_params; p++)
      memcpy(frozen.l->params[p]->data, plain.l->params[p]->data,
             plain.l->params[p]->count * sizeof(float));
    frozen.l->weights_frozen = true;
    REQUIRE(fast_set_precision("bf16") == 0);
    CHECK(layer_forward(plain.l, MOKA_BACKEND_CPU_FAST) == 0);
    for (int pass = 0; pass < 2; pass++) {
      CHECK(layer_forward(frozen.l, MOKA_BACKEND_CPU_FAST) == 0);
      CHECK_MSG(memcmp(frozen.top->data, plain.top->data, plain.top->count * sizeof(float)) == 0,
                "%s, pass %d", c->name, pass);
    }
    (void)fast_set_precision("fp32");
    CHECK_MSG(((const ConvPriv *)frozen.l->priv)->bf16_wpack != NULL, "%s: no kept copy",
              c->name);
    built_free(&plain);
    built_free(&frozen);
    caffe__layer_parameter__free_unpacked((Caffe__LayerParameter *)m, NULL);
  }
}

int main(void) {
  rng_seed(&g_rng, 1234);
  fast_init();
  RUN(test_bf16_conv);
  RUN(test_frozen_forward);
  return test_summary();
}
