/* test_layers_a.c — Convolution, InnerProduct, Pooling and LRN (CPU reference)
 * and the shared math (GEMM, im2col/col2im).
 *
 *  1. golden forward, layer by layer, against real Caffe's outputs in
 *     shared/golden/mini_resnet and shared/golden/mini_alexnet;
 *  2. the im2col+GEMM convolution against a naive direct convolution (double
 *     accumulation) on awkward shapes, and moka_gemm against moka_gemm_naive;
 *  3. finite-difference gradient checks of every layer on tiny awkward shapes;
 *  4. hand-computed pooling cases (padding, ceil rounding, the mask top) and
 *     error cases (layer_create returns NULL with a message naming the layer).
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "gradcheck.h"
#include "layer.h"
#include "moka_math.h"
#include "testlib.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* A LayerParameter with storage for the sub-parameters it points at. */
typedef struct LP {
  Caffe__LayerParameter lp;
  Caffe__ConvolutionParameter conv;
  Caffe__PoolingParameter pool;
  Caffe__LRNParameter lrn;
  Caffe__InnerProductParameter ip;
  uint32_t kernel[2], stride[2], pad[2], dil[2];
} LP;

typedef struct ConvSpec {
  int n, c, h, w;         /* input */
  int oc, kh, kw, sh, sw, ph, pw, dh, dw, group;
  bool bias;
} ConvSpec;

static void lp_base(LP *p, const char *name, const char *type) {
  memset(p, 0, sizeof *p);
  caffe__layer_parameter__init(&p->lp);
  p->lp.name = (char *)name;
  p->lp.type = (char *)type;
}

/* Square kernels use the repeated fields; non-square ones the _h/_w fields
 * (and two dilation values), so both spellings are exercised. */
static void lp_conv(LP *p, const char *name, const ConvSpec *s) {
  lp_base(p, name, "Convolution");
  caffe__convolution_parameter__init(&p->conv);
  p->lp.convolution_param = &p->conv;
  p->conv.has_num_output = 1;
  p->conv.num_output = (uint32_t)s->oc;
  p->conv.has_bias_term = 1;
  p->conv.bias_term = s->bias;
  p->conv.has_group = 1;
  p->conv.group = (uint32_t)s->group;
  if (s->kh == s->kw && s->sh == s->sw && s->ph == s->pw) {
    p->kernel[0] = (uint32_t)s->kh;
    p->stride[0] = (uint32_t)s->sh;
    p->pad[0] = (uint32_t)s->ph;
    p->conv.n_kernel_size = 1;
    p->conv.kernel_size = p->kernel;
    if (s->sh != 1) {
      p->conv.n_stride = 1;
      p->conv.stride = p->stride;
    }
    if (s->ph != 0) {
      p->conv.n_pad = 1;
      p->conv.pad = p->pad;
    }
  } else {
    p->conv.has_kernel_h = p->conv.has_kernel_w = 1;
    p->conv.kernel_h = (uint32_t)s->kh;
    p->conv.kernel_w = (uint32_t)s->kw;
    p->conv.has_stride_h = p->conv.has_stride_w = 1;
    p->conv.stride_h = (uint32_t)s->sh;
    p->conv.stride_w = (uint32_t)s->sw;
    p->conv.has_pad_h = p->conv.has_pad_w = 1;
    p->conv.pad_h = (uint32_t)s->ph;
    p->conv.pad_w = (uint32_t)s->pw;
  }
  if (s->dh != 1 || s->dw != 1) {
    p->dil[0] = (uint32_t)s->dh;
    p->dil[1] = (uint32_t)s->dw;
    p->conv.n_dilation = s->dh == s->dw ? 1 : 2;
    p->conv.dilation = p->dil;
  }
}

static void lp_pool(LP *p, const char *name, int method, int kernel, int stride, int pad,
                    bool global) {
  lp_base(p, name, "Pooling");
  caffe__pooling_parameter__init(&p->pool);
  p->lp.pooling_param = &p->pool;
  p->pool.has_pool = 1;
  p->pool.pool = (Caffe__PoolingParameter__PoolMethod)method;
  if (global) {
    p->pool.has_global_pooling = 1;
    p->pool.global_pooling = 1;
  } else {
    p->pool.has_kernel_size = 1;
    p->pool.kernel_size = (uint32_t)kernel;
  }
  if (stride != 1) {
    p->pool.has_stride = 1;
    p->pool.stride = (uint32_t)stride;
  }
  if (pad) {
    p->pool.has_pad = 1;
    p->pool.pad = (uint32_t)pad;
  }
}

static void lp_lrn(LP *p, const char *name, bool within, int size, float alpha, float beta,
                   float k) {
  lp_base(p, name, "LRN");
  caffe__lrnparameter__init(&p->lrn);
  p->lp.lrn_param = &p->lrn;
  p->lrn.has_local_size = 1;
  p->lrn.local_size = (uint32_t)size;
  p->lrn.has_alpha = 1;
  p->lrn.alpha = alpha;
  p->lrn.has_beta = 1;
  p->lrn.beta = beta;
  p->lrn.has_k = 1;
  p->lrn.k = k;
  if (within) {
    p->lrn.has_norm_region = 1;
    p->lrn.norm_region = CAFFE__LRNPARAMETER__NORM_REGION__WITHIN_CHANNEL;
  }
}

static void lp_ip(LP *p, const char *name, int num_output, bool bias, int axis, bool transpose) {
  lp_base(p, name, "InnerProduct");
  caffe__inner_product_parameter__init(&p->ip);
  p->lp.inner_product_param = &p->ip;
  p->ip.has_num_output = 1;
  p->ip.num_output = (uint32_t)num_output;
  p->ip.has_bias_term = 1;
  p->ip.bias_term = bias;
  p->ip.has_axis = 1;
  p->ip.axis = axis;
  p->ip.has_transpose = 1;
  p->ip.transpose = transpose;
}

static Blob *new_blob(const char *name, int num_axes, const int *shape) {
  Blob *b = blob_new(name);
  if (b && blob_reshape(b, num_axes, shape) != 0) {
    blob_free(b);
    return NULL;
  }
  return b;
}

static Blob *new_blob4(const char *name, int n, int c, int h, int w) {
  int s[4] = {n, c, h, w};
  return new_blob(name, 4, s);
}

/* Deterministic uniform values in [-1, 1). */
static void fill_uniform(float *x, size_t n, uint32_t *state) {
  for (size_t i = 0; i < n; i++) {
    *state = *state * 1664525u + 1013904223u;
    x[i] = (float)((*state >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
  }
}

/* Read a golden float32 file of exactly `count` values into dst. */
static int load_golden(const char *rel, float *dst, size_t count) {
  size_t n = 0;
  float *p = read_f32(shared_path(rel), &n);
  if (!p) return 0;
  if (n != count) {
    fprintf(stderr, "    %s: %zu values, expected %zu\n", rel, n, count);
    free(p);
    return 0;
  }
  memcpy(dst, p, count * sizeof(float));
  free(p);
  return 1;
}

static Rng g_rng;

/* The registry in layer.c refers to layer types through weak symbols, and a
 * weak reference does not pull an object out of a static library: name the
 * types under test here so that libmoka.a's members are linked in. */
extern const LayerType layer_type_convolution, layer_type_innerproduct, layer_type_pooling,
    layer_type_lrn;
static const LayerType *const g_types_under_test[] = {
    &layer_type_convolution, &layer_type_innerproduct, &layer_type_pooling, &layer_type_lrn};

/* One layer on one bottom read from a golden file; parameters from
 * <dir>/params/<pname>.<i>.f32; its top compared with <dir>/<want>
 * (after a ReLU when relu is set). */
static void golden_layer(const LP *p, const char *dir, const char *in_file, int n, int c, int h,
                         int w, const char *pname, const char *want_file, bool relu,
                         double rtol) {
  char rel[512];
  Blob *bot = new_blob4("bottom", n, c, h, w);
  Blob *top = blob_new("top");
  REQUIRE(bot && top);
  snprintf(rel, sizeof rel, "%s/%s", dir, in_file);
  int ok = load_golden(rel, bot->data, bot->count);
  CHECK_MSG(ok, "input %s", rel);
  Layer *l = ok ? layer_create(&p->lp, MOKA_TEST, &g_rng, &bot, 1, &top, 1) : NULL;
  CHECK_MSG(!ok || l, "layer_create %s: %s", p->lp.name, moka_error());
  for (int i = 0; l && i < l->n_params; i++) {
    snprintf(rel, sizeof rel, "%s/params/%s.%d.f32", dir, pname, i);
    if (!load_golden(rel, l->params[i]->data, l->params[i]->count)) {
      CHECK_MSG(0, "parameter %s", rel);
      layer_free(l);
      l = NULL;
    }
  }
  if (l) {
    CHECK(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    if (relu)
      for (size_t i = 0; i < top->count; i++) top->data[i] = fmaxf(top->data[i], 0.0f);
    float *want = malloc(top->count * sizeof(float));
    snprintf(rel, sizeof rel, "%s/%s", dir, want_file);
    CHECK_MSG(load_golden(rel, want, top->count), "golden %s (top has %zu values)", rel,
              top->count);
    CHECK_MSG(compare_f32(p->lp.name, top->data, want, top->count, rtol, 0.0), "%s vs %s",
              p->lp.name, rel);
    free(want);
    layer_free(l);
  }
  blob_free(bot);
  blob_free(top);
}

/* Direct 7-loop convolution in double: x (N,C,H,W), w (OC,C/G,KH,KW), b (OC) or NULL. */
static void conv_naive(const ConvSpec *s, const float *x, const float *wt, const float *b,
                       float *y, int OH, int OW) {
  const int Cg = s->c / s->group, OCg = s->oc / s->group;
  for (int n = 0; n < s->n; n++)
    for (int oc = 0; oc < s->oc; oc++) {
      int g = oc / OCg;
      for (int oh = 0; oh < OH; oh++)
        for (int ow = 0; ow < OW; ow++) {
          double acc = b ? b[oc] : 0.0;
          for (int icg = 0; icg < Cg; icg++) {
            int ic = g * Cg + icg;
            for (int kh = 0; kh < s->kh; kh++) {
              int ih = oh * s->sh - s->ph + kh * s->dh;
              if (ih < 0 || ih >= s->h) continue;
              for (int kw = 0; kw < s->kw; kw++) {
                int iw = ow * s->sw - s->pw + kw * s->dw;
                if (iw < 0 || iw >= s->w) continue;
                acc += (double)x[(((size_t)n * s->c + ic) * s->h + ih) * s->w + iw] *
                       wt[(((size_t)oc * Cg + icg) * s->kh + kh) * s->kw + kw];
              }
            }
          }
          y[(((size_t)n * s->oc + oc) * OH + oh) * OW + ow] = (float)acc;
        }
    }
}

/* Runs the layer on `x` (or random data when NULL) with random (or given)
 * weights and compares it with conv_naive. */
static void conv_vs_naive(const char *name, const ConvSpec *s, const float *x_in,
                          const float *w_in) {
  LP p;
  lp_conv(&p, name, s);
  Blob *bot = new_blob4("x", s->n, s->c, s->h, s->w);
  Blob *top = blob_new("y");
  REQUIRE(bot && top);
  uint32_t st = 12345u + (uint32_t)s->c * 7u + (uint32_t)s->h;
  if (x_in)
    memcpy(bot->data, x_in, bot->count * sizeof(float));
  else
    fill_uniform(bot->data, bot->count, &st);
  Layer *l = layer_create(&p.lp, MOKA_TEST, &g_rng, &bot, 1, &top, 1);
  CHECK_MSG(l, "%s: %s", name, moka_error());
  if (l) {
    if (w_in)
      memcpy(l->params[0]->data, w_in, l->params[0]->count * sizeof(float));
    else
      fill_uniform(l->params[0]->data, l->params[0]->count, &st);
    if (s->bias) fill_uniform(l->params[1]->data, l->params[1]->count, &st);
    int OH = (s->h + 2 * s->ph - (s->dh * (s->kh - 1) + 1)) / s->sh + 1;
    int OW = (s->w + 2 * s->pw - (s->dw * (s->kw - 1) + 1)) / s->sw + 1;
    CHECK_MSG(top->num_axes == 4 && top->shape[0] == s->n && top->shape[1] == s->oc &&
                  top->shape[2] == OH && top->shape[3] == OW,
              "%s: top shape %d %d %d %d, want %d %d %d %d", name, top->shape[0], top->shape[1],
              top->shape[2], top->shape[3], s->n, s->oc, OH, OW);
    CHECK(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    float *want = malloc(top->count * sizeof(float));
    conv_naive(s, bot->data, l->params[0]->data, s->bias ? l->params[1]->data : NULL, want, OH,
               OW);
    CHECK_MSG(compare_f32(name, top->data, want, top->count, 1e-5, 0.0), "%s", name);
    /* the fast path (convolution_fast.c: batched GEMMs) sums in another order:
     * it must agree to float rounding (tests/unit/test_fast.c tests it fully) */
    float *again = malloc(top->count * sizeof(float));
    memcpy(again, top->data, top->count * sizeof(float));
    CHECK(layer_forward(l, MOKA_BACKEND_CPU_FAST) == 0);
    CHECK_MSG(compare_f32(name, top->data, again, top->count, 1e-5, 0.0), "%s fast path", name);
    free(again);
    free(want);
    layer_free(l);
  }
  blob_free(bot);
  blob_free(top);
}

/* ---- 1. golden forward ---------------------------------------------------------------------- */

#define RES "golden/mini_resnet"
#define ALEX "golden/mini_alexnet"

static void test_golden_resnet_conv1(void) {
  LP p;
  ConvSpec s = {2, 3, 64, 64, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1, true};
  lp_conv(&p, "conv1", &s);
  golden_layer(&p, RES, "input.bin", 2, 3, 64, 64, "conv1", "stem_conv1_after_conv1.f32", false,
               1e-4);
}

static void test_golden_resnet_pool1(void) {
  LP p;
  lp_pool(&p, "pool1", CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX, 3, 2, 0, false);
  golden_layer(&p, RES, "out64_conv1.f32", 2, 8, 32, 32, NULL, "out64_pool1.f32", false, 1e-4);
  /* 34x31 -> 17x15 only with Caffe's ceil rounding */
  golden_layer(&p, RES, "out67x61_conv1.f32", 2, 8, 34, 31, NULL, "out67x61_pool1.f32", false,
               1e-4);
}

/* The stride-2 1x1 projections have no conv-only golden (BN follows in place):
 * check them on the real activations and weights against the direct convolution. */
static void test_resnet_stride2_convs_vs_naive(void) {
  static const char *names[2] = {"res3a_branch1", "res3a_branch2a"};
  static const int ocs[2] = {64, 16};
  static const char *inputs[2] = {"out64_res2b.f32", "out67x61_res2b.f32"};
  static const int hs[2] = {16, 17}, ws[2] = {16, 15};
  for (int k = 0; k < 2; k++)
    for (int v = 0; v < 2; v++) {
      ConvSpec s = {2, 32, hs[v], ws[v], ocs[k], 1, 1, 2, 2, 0, 0, 1, 1, 1, false};
      char rel[256];
      float *x = malloc((size_t)2 * 32 * hs[v] * ws[v] * sizeof(float));
      float *w = malloc((size_t)ocs[k] * 32 * sizeof(float));
      snprintf(rel, sizeof rel, RES "/%s", inputs[v]);
      int ok = load_golden(rel, x, (size_t)2 * 32 * hs[v] * ws[v]);
      snprintf(rel, sizeof rel, RES "/params/%s.0.f32", names[k]);
      ok = ok && load_golden(rel, w, (size_t)ocs[k] * 32);
      CHECK_MSG(ok, "%s inputs", names[k]);
      if (ok) conv_vs_naive(names[k], &s, x, w);
      free(x);
      free(w);
    }
}

static void test_golden_resnet_pool5_fc(void) {
  LP p;
  lp_pool(&p, "pool5", CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE, 8, 1, 0, false);
  golden_layer(&p, RES, "out64_res3a.f32", 2, 64, 8, 8, NULL, "out64_pool5.f32", false, 1e-4);
  lp_pool(&p, "pool5", CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE, 0, 1, 0, true);
  golden_layer(&p, RES, "out67x61_res3a.f32", 2, 64, 9, 8, NULL, "out67x61_pool5.f32", false,
               1e-4);
  LP f;
  lp_ip(&f, "fc", 10, true, 1, false);
  golden_layer(&f, RES, "out64_pool5.f32", 2, 64, 1, 1, "fc", "out64_fc.f32", false, 1e-4);
  golden_layer(&f, RES, "out67x61_pool5.f32", 2, 64, 1, 1, "fc", "out67x61_fc.f32", false, 1e-4);
}

static void test_golden_alexnet_convs(void) {
  LP p;
  ConvSpec c1 = {2, 3, 67, 67, 16, 5, 5, 2, 2, 0, 0, 1, 1, 1, true};
  lp_conv(&p, "conv1", &c1); /* out_conv1 is after relu1 */
  golden_layer(&p, ALEX, "input.bin", 2, 3, 67, 67, "conv1", "out_conv1.f32", true, 1e-4);
  ConvSpec c2 = {2, 16, 16, 16, 32, 5, 5, 1, 1, 2, 2, 1, 1, 2, true};
  lp_conv(&p, "conv2", &c2);
  golden_layer(&p, ALEX, "out_pool1.f32", 2, 16, 16, 16, "conv2", "stage_conv2_after_conv2.f32",
               false, 1e-4);
  ConvSpec c3 = {2, 32, 8, 8, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, true};
  lp_conv(&p, "conv3", &c3);
  golden_layer(&p, ALEX, "out_pool2.f32", 2, 32, 8, 8, "conv3", "out_conv3.f32", true, 1e-4);
  ConvSpec c4 = {2, 48, 8, 8, 48, 3, 3, 1, 1, 1, 1, 1, 1, 2, true};
  lp_conv(&p, "conv4", &c4);
  golden_layer(&p, ALEX, "out_norm3.f32", 2, 48, 8, 8, "conv4", "stage_conv4_after_conv4.f32",
               false, 1e-4);
  ConvSpec c5 = {2, 48, 8, 8, 32, 3, 3, 1, 1, 1, 1, 1, 1, 2, true};
  lp_conv(&p, "conv5", &c5);
  golden_layer(&p, ALEX, "out_conv4.f32", 2, 48, 8, 8, "conv5", "stage_conv5_after_conv5.f32",
               false, 1e-4);
  ConvSpec i5 = {2, 4, 4, 4, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1, true}; /* 5x5 pad 2 on 4x4 */
  lp_conv(&p, "inception_3a/5x5", &i5);
  golden_layer(&p, ALEX, "out_inception_3a_5x5_reduce.f32", 2, 4, 4, 4, "inception_3a_5x5",
               "out_inception_3a_5x5.f32", true, 1e-4);
}

/* Max ulp distance between two float arrays (same-sign values). */
static long max_ulp(const float *a, const float *b, size_t n) {
  long worst = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t ia, ib;
    memcpy(&ia, &a[i], 4);
    memcpy(&ib, &b[i], 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    long d = labs((long)ia - (long)ib);
    if (d > worst) worst = d;
  }
  return worst;
}

static void golden_lrn(const LP *p, const char *in_file, int c, int h, const char *want_file) {
  Blob *bot = new_blob4("bottom", 2, c, h, h);
  Blob *top = blob_new("top");
  REQUIRE(bot && top);
  char rel[256];
  snprintf(rel, sizeof rel, ALEX "/%s", in_file);
  REQUIRE(load_golden(rel, bot->data, bot->count));
  Layer *l = layer_create(&p->lp, MOKA_TEST, &g_rng, &bot, 1, &top, 1);
  CHECK_MSG(l, "%s: %s", p->lp.name, moka_error());
  if (l) {
    CHECK(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    float *want = malloc(top->count * sizeof(float));
    snprintf(rel, sizeof rel, ALEX "/%s", want_file);
    CHECK(load_golden(rel, want, top->count));
    CHECK(compare_f32(p->lp.name, top->data, want, top->count, 1e-4, 0.0));
    /* The float operation order is Caffe's, which the golden README says
     * reproduces Caffe bit for bit (powf is glibc's on both sides). */
    long ulp = max_ulp(top->data, want, top->count);
    CHECK_MSG(ulp == 0, "%s: max %ld ulp from Caffe (expected bit-exact)", p->lp.name, ulp);
    free(want);
    layer_free(l);
  }
  blob_free(bot);
  blob_free(top);
}

static void test_golden_alexnet_lrn(void) {
  LP p;
  lp_lrn(&p, "norm1", false, 5, 1e-4f, 0.75f, 1.0f);
  golden_lrn(&p, "out_conv1.f32", 16, 32, "out_norm1.f32");
  lp_lrn(&p, "norm2", false, 5, 1e-4f, 0.75f, 1.0f);
  golden_lrn(&p, "out_conv2.f32", 32, 16, "out_norm2.f32");
  lp_lrn(&p, "norm3", true, 3, 2e-4f, 0.75f, 1.0f);
  golden_lrn(&p, "out_conv3.f32", 48, 8, "out_norm3.f32");
  /* k is ignored WITHIN_CHANNEL */
  lp_lrn(&p, "norm3", true, 3, 2e-4f, 0.75f, 2.5f);
  golden_lrn(&p, "out_conv3.f32", 48, 8, "out_norm3.f32");
}

static void test_golden_alexnet_pools_fc6(void) {
  LP p;
  const int MAX = CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  lp_pool(&p, "pool1", MAX, 3, 2, 0, false);
  golden_layer(&p, ALEX, "out_norm1.f32", 2, 16, 32, 32, NULL, "out_pool1.f32", false, 1e-4);
  lp_pool(&p, "pool2", MAX, 3, 2, 0, false);
  golden_layer(&p, ALEX, "out_norm2.f32", 2, 32, 16, 16, NULL, "out_pool2.f32", false, 1e-4);
  lp_pool(&p, "pool5", MAX, 3, 2, 0, false);
  golden_layer(&p, ALEX, "out_conv5.f32", 2, 32, 8, 8, NULL, "out_pool5.f32", false, 1e-4);
  lp_pool(&p, "inception_3a/pool", MAX, 3, 1, 1, false);
  golden_layer(&p, ALEX, "out_pool5.f32", 2, 32, 4, 4, NULL, "out_inception_3a_pool.f32", false,
               1e-4);
  LP f;
  lp_ip(&f, "fc6", 64, true, 1, false);
  golden_layer(&f, ALEX, "out_inception_3a_output.f32", 2, 32, 4, 4, "fc6", "stage_fc6_after_fc6.f32", false,
               1e-4);
}

/* ---- 2. GEMM and convolution against naive oracles ---------------------------------------- */

static void test_gemm_vs_naive(void) {
  uint32_t st = 7;
  const int M = 13, N = 17, K = 29;
  float *A = malloc(M * K * sizeof(float)), *B = malloc(K * N * sizeof(float));
  float *C0 = malloc(M * N * sizeof(float)), *C1 = malloc(M * N * sizeof(float));
  fill_uniform(A, (size_t)M * K, &st);
  fill_uniform(B, (size_t)K * N, &st);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (int bi = 0; bi < 2; bi++) {
        float beta = bi ? 0.5f : 0.0f;
        fill_uniform(C0, (size_t)M * N, &st);
        memcpy(C1, C0, (size_t)M * N * sizeof(float));
        if (!bi) /* beta 0: C is not read, NaN must not leak through */
          for (int i = 0; i < M * N; i++) C0[i] = C1[i] = NAN;
        moka_gemm(ta, tb, M, N, K, 1.5f, A, B, beta, C0);
        moka_gemm_naive(ta, tb, M, N, K, 1.5f, A, B, beta, C1);
        CHECK_MSG(compare_f32("gemm", C0, C1, (size_t)M * N, 1e-5, 0.0), "ta %d tb %d beta %g",
                  ta, tb, beta);
      }
  /* a known product: [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50] */
  float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8}, c[4];
  moka_gemm_naive(false, false, 2, 2, 2, 1.0f, a, b, 0.0f, c);
  CHECK(c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50);
  moka_gemm(false, false, 2, 2, 2, 1.0f, a, b, 0.0f, c);
  CHECK(c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50);
  free(A);
  free(B);
  free(C0);
  free(C1);
}

/* col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>. */
static void test_im2col_adjoint(void) {
  Im2colGeom g = {3, 7, 6, 3, 2, 1, 2, 2, 1, 2, 1};
  int OH = im2col_out_h(&g), OW = im2col_out_w(&g);
  CHECK(OH == (7 + 2 - 5) / 2 + 1 && OW == (6 + 4 - 2) / 1 + 1);
  size_t ni = 3 * 7 * 6, nc = (size_t)3 * 3 * 2 * OH * OW;
  float *x = malloc(ni * sizeof(float)), *col = malloc(nc * sizeof(float));
  float *c = malloc(nc * sizeof(float)), *xc = malloc(ni * sizeof(float));
  uint32_t st = 99;
  fill_uniform(x, ni, &st);
  fill_uniform(c, nc, &st);
  moka_im2col(x, &g, col);
  moka_col2im(c, &g, xc);
  double l = 0, r = 0;
  for (size_t i = 0; i < nc; i++) l += (double)col[i] * c[i];
  for (size_t i = 0; i < ni; i++) r += (double)x[i] * xc[i];
  CHECK_MSG(fabs(l - r) <= 1e-5 * fmax(1.0, fabs(l)), "%g vs %g", l, r);
  free(x);
  free(col);
  free(c);
  free(xc);
}

static void test_conv_vs_naive_awkward(void) {
  /* n c h w | oc kh kw sh sw ph pw dh dw group bias */
  static const ConvSpec specs[] = {
      {2, 3, 11, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, true},    /* odd H/W, pad 1 */
      {1, 5, 13, 10, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1, false},  /* stride 2, batch 1 */
      {2, 7, 9, 7, 6, 1, 1, 1, 1, 0, 0, 1, 1, 1, true},     /* 1x1 (no im2col) */
      {2, 6, 9, 8, 10, 1, 1, 2, 2, 0, 0, 1, 1, 1, false},   /* 1x1 stride 2 */
      {1, 3, 23, 21, 4, 7, 7, 2, 2, 3, 3, 1, 1, 1, true},   /* the 7x7/2 pad 3 stem */
      {2, 3, 12, 11, 5, 3, 3, 1, 1, 2, 2, 2, 2, 1, true},   /* dilation 2 */
      {1, 4, 10, 12, 3, 3, 2, 1, 2, 1, 0, 2, 3, 1, false},  /* non-square everything */
      {2, 9, 8, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3, true},     /* group 3 */
      {1, 6, 7, 9, 9, 3, 3, 2, 2, 1, 1, 1, 1, 3, false},    /* group 3, stride 2 */
      {3, 5, 5, 5, 11, 5, 5, 1, 1, 0, 0, 1, 1, 1, true},    /* kernel = input */
  };
  for (size_t i = 0; i < MOKA_ARRAY_LEN(specs); i++) {
    char name[32];
    snprintf(name, sizeof name, "conv_case%zu", i);
    conv_vs_naive(name, &specs[i], NULL, NULL);
  }
}

/* Two bottoms share the weights: top i == the layer run on bottom i alone. */
static void test_conv_two_bottoms(void) {
  ConvSpec s = {2, 4, 6, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2, true};
  LP p;
  lp_conv(&p, "conv_shared", &s);
  Blob *b[2] = {new_blob4("x0", 2, 4, 6, 5), new_blob4("x1", 2, 4, 6, 5)};
  Blob *t[2] = {blob_new("y0"), blob_new("y1")};
  uint32_t st = 5;
  fill_uniform(b[0]->data, b[0]->count, &st);
  fill_uniform(b[1]->data, b[1]->count, &st);
  Layer *l = layer_create(&p.lp, MOKA_TEST, &g_rng, b, 2, t, 2);
  REQUIRE(l);
  fill_uniform(l->params[0]->data, l->params[0]->count, &st);
  fill_uniform(l->params[1]->data, l->params[1]->count, &st);
  CHECK(layer_forward(l, MOKA_BACKEND_CPU) == 0);
  float *want = malloc(t[1]->count * sizeof(float));
  conv_naive(&s, b[1]->data, l->params[0]->data, l->params[1]->data, want, 6, 5);
  CHECK(compare_f32("top1", t[1]->data, want, t[1]->count, 1e-5, 0.0));
  conv_naive(&s, b[0]->data, l->params[0]->data, l->params[1]->data, want, 6, 5);
  CHECK(compare_f32("top0", t[0]->data, want, t[0]->count, 1e-5, 0.0));
  free(want);
  /* tops != bottoms is an error */
  Layer *bad = layer_create(&p.lp, MOKA_TEST, &g_rng, b, 2, t, 1);
  CHECK(bad == NULL && strstr(moka_error(), "conv_shared"));
  layer_free(bad);
  /* bottoms of different shapes are an error */
  blob_reshape4(b[1], 2, 4, 6, 6);
  bad = layer_create(&p.lp, MOKA_TEST, &g_rng, b, 2, t, 2);
  CHECK(bad == NULL && strstr(moka_error(), "same shape"));
  layer_free(bad);
  layer_free(l);
  for (int i = 0; i < 2; i++) {
    blob_free(b[i]);
    blob_free(t[i]);
  }
}

/* ---- 3. gradient checks --------------------------------------------------------------------- */

/* Creates the layer on random bottoms (shape each), random parameters, and
 * runs gradcheck_layer. */
static void gradcheck_case(const LP *p, int n_bottom, int n_top, const int *shape, int num_axes,
                           double step, double threshold, uint32_t seed) {
  Blob *b[4], *t[4];
  uint32_t st = seed;
  for (int i = 0; i < n_bottom; i++) {
    b[i] = new_blob("x", num_axes, shape);
    fill_uniform(b[i]->data, b[i]->count, &st);
  }
  for (int i = 0; i < n_top; i++) t[i] = blob_new("y");
  Layer *l = layer_create(&p->lp, MOKA_TRAIN, &g_rng, b, n_bottom, t, n_top);
  CHECK_MSG(l, "%s: %s", p->lp.name, moka_error());
  if (l) {
    for (int i = 0; i < l->n_params; i++) fill_uniform(l->params[i]->data, l->params[i]->count, &st);
    GradCheckOpts o = {step, threshold, -1, 1, seed};
    int bad = gradcheck_layer(l, MOKA_BACKEND_CPU, &o);
    CHECK_MSG(bad == 0, "%s: %d gradient mismatches", p->lp.name, bad);
    layer_free(l);
  }
  for (int i = 0; i < n_bottom; i++) blob_free(b[i]);
  for (int i = 0; i < n_top; i++) blob_free(t[i]);
}

static void test_gradcheck_conv(void) {
  LP p;
  int shape[4] = {2, 4, 5, 6};
  ConvSpec s = {2, 4, 5, 6, 4, 3, 3, 2, 2, 1, 1, 1, 1, 2, true}; /* group 2, stride 2, pad 1 */
  lp_conv(&p, "gc_conv", &s);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 11);
  ConvSpec s2 = {1, 3, 5, 6, 2, 3, 2, 1, 2, 0, 1, 2, 1, 1, false}; /* dilation, non-square */
  int shape2[4] = {1, 3, 5, 6};
  lp_conv(&p, "gc_conv_dil", &s2);
  gradcheck_case(&p, 1, 1, shape2, 4, 1e-2, 1e-2, 12);
  ConvSpec s3 = {2, 3, 3, 4, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1, true}; /* 1x1, two bottoms */
  int shape3[4] = {2, 3, 3, 4};
  lp_conv(&p, "gc_conv_1x1_shared", &s3);
  gradcheck_case(&p, 2, 2, shape3, 4, 1e-2, 1e-2, 13);
}

static void test_gradcheck_ip(void) {
  LP p;
  int shape[4] = {2, 3, 2, 2};
  lp_ip(&p, "gc_ip", 5, true, 1, false);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 21);
  lp_ip(&p, "gc_ip_transpose", 4, true, 1, true);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 22);
  int shape3[3] = {2, 3, 4}; /* axis 2: M = 6 rows of K = 4 */
  lp_ip(&p, "gc_ip_axis2_transpose_nobias", 3, false, 2, true);
  gradcheck_case(&p, 1, 1, shape3, 3, 1e-2, 1e-2, 23);
}

static void test_gradcheck_pool(void) {
  LP p;
  const int MAX = CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  const int AVE = CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE;
  int shape[4] = {2, 2, 5, 6}; /* k3 s2 p1: ceil rounding, clipped last windows */
  lp_pool(&p, "gc_maxpool", MAX, 3, 2, 1, false);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 31);
  lp_pool(&p, "gc_maxpool_mask", MAX, 3, 2, 0, false);
  gradcheck_case(&p, 1, 2, shape, 4, 1e-2, 1e-2, 32);
  lp_pool(&p, "gc_avepool", AVE, 3, 2, 1, false);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 33);
  lp_pool(&p, "gc_avepool_global", AVE, 0, 1, 0, true);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 34);
}

static void test_gradcheck_lrn(void) {
  LP p;
  /* alpha 1 (not AlexNet's 1e-4) so the cross terms of the gradient matter */
  int shape[4] = {2, 7, 3, 3};
  lp_lrn(&p, "gc_lrn_across", false, 5, 1.0f, 0.75f, 2.0f);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 41);
  lp_lrn(&p, "gc_lrn_across_3", false, 3, 1.5f, 0.6f, 1.0f);
  gradcheck_case(&p, 1, 1, shape, 4, 1e-2, 1e-2, 42);
  int shape2[4] = {2, 2, 5, 4};
  lp_lrn(&p, "gc_lrn_within", true, 3, 1.0f, 0.75f, 2.5f);
  gradcheck_case(&p, 1, 1, shape2, 4, 1e-2, 1e-2, 43);
}

/* Backward ADDS into parameter diffs and leaves a bottom with
 * propagate_down = false untouched. */
static void test_backward_accumulates(void) {
  ConvSpec s = {2, 3, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, true};
  LP p;
  lp_conv(&p, "acc_conv", &s);
  Blob *b = new_blob4("x", 2, 3, 5, 5), *t = blob_new("y");
  uint32_t st = 77;
  fill_uniform(b->data, b->count, &st);
  Layer *l = layer_create(&p.lp, MOKA_TRAIN, &g_rng, &b, 1, &t, 1);
  REQUIRE(l);
  fill_uniform(l->params[0]->data, l->params[0]->count, &st);
  CHECK(layer_forward(l, MOKA_BACKEND_CPU) == 0);
  fill_uniform(t->diff, t->count, &st);
  blob_zero_diff(l->params[0]);
  blob_zero_diff(l->params[1]);
  CHECK(layer_backward(l, MOKA_BACKEND_CPU) == 0);
  size_t nw = l->params[0]->count;
  float *once = malloc(nw * sizeof(float));
  memcpy(once, l->params[0]->diff, nw * sizeof(float));
  float bias0 = l->params[1]->diff[0];
  for (size_t i = 0; i < b->count; i++) b->diff[i] = 42.0f;
  l->propagate_down[0] = false;
  CHECK(layer_backward(l, MOKA_BACKEND_CPU) == 0);
  int ok = 1;
  for (size_t i = 0; i < nw; i++) ok &= fabsf(l->params[0]->diff[i] - 2 * once[i]) <= 1e-5f;
  CHECK(ok);
  CHECK(fabsf(l->params[1]->diff[0] - 2 * bias0) <= 1e-5f && bias0 != 0.0f);
  ok = 1;
  for (size_t i = 0; i < b->count; i++) ok &= b->diff[i] == 42.0f;
  CHECK(ok);
  free(once);
  layer_free(l);
  blob_free(b);
  blob_free(t);
}

/* ---- 4. pooling by hand and error cases ----------------------------------------------------- */

static Layer *pool_on(LP *p, Blob *b, Blob **t, int n_top) {
  Layer *l = layer_create(&p->lp, MOKA_TEST, &g_rng, &b, 1, t, n_top);
  if (l && layer_forward(l, MOKA_BACKEND_CPU) != 0) {
    layer_free(l);
    return NULL;
  }
  return l;
}

static void test_pool_by_hand(void) {
  LP p;
  const int MAX = CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  const int AVE = CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE;
  Blob *b = new_blob4("x", 1, 1, 4, 4), *t[2] = {blob_new("y"), blob_new("mask")};
  for (int i = 0; i < 16; i++) b->data[i] = (float)(i + 1); /* 1..16 row-major */
  /* AVE k3 s2 p1 on 4x4: out 3x3; the divisor counts padding but stops at H+pad */
  lp_pool(&p, "ave_pad", AVE, 3, 2, 1, false);
  Layer *l = pool_on(&p, b, t, 1);
  REQUIRE(l);
  CHECK(t[0]->shape[2] == 3 && t[0]->shape[3] == 3);
  CHECK(fabsf(t[0]->data[0] - 14.0f / 9.0f) < 1e-6f);              /* (1+2+5+6)/9 */
  CHECK(fabsf(t[0]->data[1] - (2 + 3 + 4 + 6 + 7 + 8) / 9.0f) < 1e-6f); /* cols 1..3, rows 0..1 */
  CHECK(fabsf(t[0]->data[2] - (4 + 8) / 6.0f) < 1e-6f);             /* rows -1..1, cols 3..4 */
  CHECK(fabsf(t[0]->data[8] - 16.0f / 4.0f) < 1e-6f);               /* window 2x2 past the image */
  layer_free(l);
  /* MAX with padding on negative values: padding never wins; mask top */
  for (int i = 0; i < 16; i++) b->data[i] = -(float)(i + 1);
  lp_pool(&p, "max_pad", MAX, 3, 2, 1, false);
  l = pool_on(&p, b, t, 2);
  REQUIRE(l);
  CHECK(t[0]->data[0] == -1.0f && t[1]->data[0] == 0.0f);
  CHECK(t[0]->data[4] == -6.0f && t[1]->data[4] == 5.0f);  /* rows 1..3, cols 1..3 */
  CHECK(t[0]->data[8] == -16.0f && t[1]->data[8] == 15.0f);
  /* backward routes each top diff to its argmax */
  for (size_t i = 0; i < t[0]->count; i++) t[0]->diff[i] = (float)(i + 1);
  CHECK(layer_backward(l, MOKA_BACKEND_CPU) == 0);
  CHECK(b->diff[0] == 1.0f && b->diff[5] == 5.0f && b->diff[15] == 9.0f && b->diff[1] == 2.0f);
  layer_free(l);
  /* ties: the first maximum in row-major order wins, as in Caffe */
  for (int i = 0; i < 16; i++) b->data[i] = 3.0f;
  l = pool_on(&p, b, t, 2);
  REQUIRE(l);
  CHECK(t[1]->data[0] == 0.0f && t[1]->data[4] == 5.0f && t[1]->data[8] == 15.0f);
  CHECK(t[1]->data[1] == 1.0f && t[1]->data[2] == 3.0f);
  layer_free(l);
  /* Caffe's rounding: ceil, then drop a window starting in the padding */
  blob_reshape4(b, 1, 1, 4, 4);
  lp_pool(&p, "drop_last", MAX, 3, 3, 2, false); /* ceil(5/3)+1 = 3, (3-1)*3 >= 4+2 -> 2 */
  l = pool_on(&p, b, t, 1);
  CHECK(l && t[0]->shape[2] == 2 && t[0]->shape[3] == 2);
  layer_free(l);
  Blob *b7 = new_blob4("x7", 1, 1, 7, 5);
  lp_pool(&p, "ceil_only", MAX, 3, 2, 0, false); /* 7 -> ceil(2)+1 = 3; 5 -> 2 */
  l = pool_on(&p, b7, t, 1);
  CHECK(l && t[0]->shape[2] == 3 && t[0]->shape[3] == 2);
  layer_free(l);
  blob_reshape4(b7, 1, 1, 8, 6); /* 8 -> ceil(2.5)+1 = 4 (floor would give 3) */
  l = pool_on(&p, b7, t, 1);
  CHECK(l && t[0]->shape[2] == 4 && t[0]->shape[3] == 3);
  layer_free(l);
  blob_free(b7);
  blob_free(b);
  blob_free(t[0]);
  blob_free(t[1]);
}

/* layer_create must fail with a message that names the layer (and says why). */
static void expect_create_error(const LP *p, int num_axes, const int *shape, int n_top,
                                const char *why) {
  Blob *b = new_blob("x", num_axes, shape);
  Blob *t[2] = {blob_new("y"), blob_new("y2")};
  moka_error_clear();
  Layer *l = layer_create(&p->lp, MOKA_TEST, &g_rng, &b, 1, t, n_top);
  CHECK_MSG(l == NULL, "%s: layer_create succeeded", p->lp.name);
  CHECK_MSG(strstr(moka_error(), p->lp.name) != NULL, "message does not name layer '%s': %s",
            p->lp.name, moka_error());
  CHECK_MSG(strstr(moka_error(), why) != NULL, "message lacks '%s': %s", why, moka_error());
  layer_free(l);
  blob_free(b);
  blob_free(t[0]);
  blob_free(t[1]);
}

static void test_errors(void) {
  LP p;
  int s4[4] = {1, 4, 3, 3};
  ConvSpec big = {1, 4, 3, 3, 2, 7, 7, 1, 1, 1, 1, 1, 1, 1, true};
  lp_conv(&p, "conv_too_big", &big);
  expect_create_error(&p, 4, s4, 1, "larger than the padded input");
  ConvSpec grp = {1, 4, 3, 3, 6, 1, 1, 1, 1, 0, 0, 1, 1, 3, true};
  lp_conv(&p, "conv_bad_group", &grp);
  expect_create_error(&p, 4, s4, 1, "does not divide the 4 input channels");
  ConvSpec grp2 = {1, 4, 3, 3, 5, 1, 1, 1, 1, 0, 0, 1, 1, 2, true};
  lp_conv(&p, "conv_bad_group_out", &grp2);
  expect_create_error(&p, 4, s4, 1, "does not divide num_output 5");
  int s5[5] = {1, 2, 3, 4, 5};
  ConvSpec nd = {1, 2, 3, 4, 2, 1, 1, 1, 1, 0, 0, 1, 1, 1, true};
  lp_conv(&p, "conv_3d", &nd);
  expect_create_error(&p, 5, s5, 1, "only 2-D convolution");
  lp_conv(&p, "conv_axis2", &nd);
  p.conv.has_axis = 1;
  p.conv.axis = 2;
  expect_create_error(&p, 4, s4, 1, "axis 2");
  lp_conv(&p, "conv_no_kernel", &nd);
  p.conv.n_kernel_size = 0;
  expect_create_error(&p, 4, s4, 1, "kernel_size");
  lp_lrn(&p, "lrn_even", false, 4, 1.0f, 0.75f, 1.0f);
  expect_create_error(&p, 4, s4, 1, "odd");
  lp_pool(&p, "pool_stochastic", CAFFE__POOLING_PARAMETER__POOL_METHOD__STOCHASTIC, 2, 2, 0,
          false);
  expect_create_error(&p, 4, s4, 1, "not supported");
  lp_pool(&p, "pool_ave_mask", CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE, 2, 2, 0, false);
  expect_create_error(&p, 4, s4, 2, "second top");
  lp_pool(&p, "pool_too_big", CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX, 5, 1, 0, false);
  expect_create_error(&p, 4, s4, 1, "does not fit");
  lp_pool(&p, "pool_global_kernel", CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE, 0, 1, 0, true);
  p.pool.has_kernel_size = 1;
  p.pool.kernel_size = 2;
  expect_create_error(&p, 4, s4, 1, "global_pooling");
  lp_ip(&p, "ip_no_output", 0, true, 1, false);
  expect_create_error(&p, 4, s4, 1, "num_output");
}

int main(void) {
  rng_seed(&g_rng, 1701);
  for (size_t i = 0; i < MOKA_ARRAY_LEN(g_types_under_test); i++)
    if (layer_type_find(g_types_under_test[i]->name) != g_types_under_test[i]) {
      fprintf(stderr, "layer type %s is not registered\n", g_types_under_test[i]->name);
      return 1;
    }
  moka_set_log_level(1);
  RUN(test_golden_resnet_conv1);
  RUN(test_golden_resnet_pool1);
  RUN(test_resnet_stride2_convs_vs_naive);
  RUN(test_golden_resnet_pool5_fc);
  RUN(test_golden_alexnet_convs);
  RUN(test_golden_alexnet_lrn);
  RUN(test_golden_alexnet_pools_fc6);
  RUN(test_gemm_vs_naive);
  RUN(test_im2col_adjoint);
  RUN(test_conv_vs_naive_awkward);
  RUN(test_conv_two_bottoms);
  RUN(test_gradcheck_conv);
  RUN(test_gradcheck_ip);
  RUN(test_gradcheck_pool);
  RUN(test_gradcheck_lrn);
  RUN(test_backward_accumulates);
  RUN(test_pool_by_hand);
  RUN(test_errors);
  return test_summary();
}
