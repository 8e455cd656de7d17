/* test_net_bf16_cpu.c — bf16 channels-last activations on the fast CPU backend
 * (--precision=bf16, unless MOKA_BF16_ACT=0; src/net_bf16.h): which blobs the net keeps in
 * bf16, and a training step of small ResNets with them against the fp32 reference backend.
 *
 * Nets: the wide tiny ResNet of resnet_nets.h (every convolution 16 channels, a 3x3 first
 * layer reading the fp32 input, two residual blocks, global AVE pooling); a downsampling
 * block built here: an AVE pooling (which stays fp32) feeding, through a Split, a strided 1x1
 * shortcut and a bottleneck whose first 1x1 is strided too, so the channels-last layers read
 * an fp32 NCHW bottom and write its gradient back into fp32 NCHW, including the strided
 * spreading; and ResNet's stem on a small image: a 7x7 stride-2 convolution with a bias on
 * the 3-channel fp32 input (the stem kernels), a 3x3 stride-2 MAX pooling with a partial
 * window and a Split, all bf16 channels-last from the stem's output on. bf16 rounds every
 * stored activation and every convolution operand to 8 bits of mantissa. Bounds: loss
 * within 2% relative; each BatchNorm's running statistics NMSE <= 1e-3 of the reference's;
 * all parameter gradients together NMSE <= 2e-2 and each parameter blob's <= 0.5. Measured
 * on 16 seeds (fillers and data), two iterations each: all gradients together at most
 * 1.8e-3 (tiny), 7.0e-3 (downsampling; the old bf16 mode, fp32 activations with the same
 * bf16 operands, 5.3e-3) and 1.75e-2 (stem, 4 images of 31x29: its pooled blocks see 224
 * pixels per channel; old mode 9.0e-3; with 2 images of 19x17 both modes passed 2e-2 on some
 * seeds); single blobs up to 0.10 (old mode 0.13): in a BatchNorm net many parameter
 * gradients are sums that nearly cancel (a 1x1 convolution's input gradient under a
 * BatchNorm has channel means near 0), so their relative error is large in any bf16 mode; a
 * wrong layout, channel or stride gives about 1. A convolution bias under a BatchNorm (the
 * stem's) has a gradient that cancels to about 0 by construction: bounded absolutely
 * instead (check_bias_before_bn). The MAX pooling and its Split are checked exactly
 * (test_max_pool_exact).
 * The global pooling is checked exactly (forward and backward values bit for bit). Two
 * iterations: the second on the running statistics the first updated. SKIP on a CPU without
 * AVX-512 BF16. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers/fast.h"
#include "net.h"
#include "net_bf16.h"
#include "prototxt.h"
#include "resnet_nets.h"
#include "rng.h"
#include "../gpu/bf16_host.h"
#include "bf16_kernel_sets.h"
#include "testlib.h"
#include "util.h"

/* Both nets' end: the residual sum's ReLU, global AVE pooling, a classifier and its loss. */
#define NETS_TAIL                                                                                  \
  "layer { name: 'relu_r' type: 'ReLU' bottom: 'r' top: 'r' }\n"                                  \
  "layer { name: 'pool' type: 'Pooling' bottom: 'r' top: 'pool' pooling_param { pool: AVE "       \
  "global_pooling: true } }\n"                                                                    \
  "layer { name: 'fc' type: 'InnerProduct' bottom: 'pool' top: 'fc' inner_product_param { "       \
  "num_output: 4 weight_filler { type: 'gaussian' std: 0.3 } } }\n"                               \
  "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc' bottom: 'label' top: 'loss' }\n"

static const char *const DOWN_TEXT =
    "name: 'down'\n"
    "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 8 dim: 10 "
    "dim: 10 } } }\n"
    "layer { name: 'label' type: 'Input' top: 'label' input_param { shape { dim: 2 } } }\n"
    "layer { name: 'conv0' type: 'Convolution' bottom: 'data' top: 'c0' convolution_param { "
    "num_output: 16 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.2 } } }\n"
    "layer { name: 'bn0' type: 'BatchNorm' bottom: 'c0' top: 'c0' }\n"
    "layer { name: 'sc0' type: 'Scale' bottom: 'c0' top: 'c0' scale_param { bias_term: true } }\n"
    "layer { name: 'relu0' type: 'ReLU' bottom: 'c0' top: 'c0' }\n"
    "layer { name: 'pool0' type: 'Pooling' bottom: 'c0' top: 'p0' pooling_param { pool: AVE "
    "kernel_size: 2 stride: 1 } }\n"
    "layer { name: 'convA' type: 'Convolution' bottom: 'p0' top: 'cA' convolution_param { "
    "num_output: 32 kernel_size: 1 stride: 2 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.3 } } }\n"
    "layer { name: 'bnA' type: 'BatchNorm' bottom: 'cA' top: 'cA' }\n"
    "layer { name: 'scA' type: 'Scale' bottom: 'cA' top: 'cA' scale_param { bias_term: true } }\n"
    "layer { name: 'convB' type: 'Convolution' bottom: 'p0' top: 'cB' convolution_param { "
    "num_output: 16 kernel_size: 1 stride: 2 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.3 } } }\n"
    "layer { name: 'bnB' type: 'BatchNorm' bottom: 'cB' top: 'cB' }\n"
    "layer { name: 'scB' type: 'Scale' bottom: 'cB' top: 'cB' scale_param { bias_term: true } }\n"
    "layer { name: 'reluB' type: 'ReLU' bottom: 'cB' top: 'cB' }\n"
    "layer { name: 'convC' type: 'Convolution' bottom: 'cB' top: 'cC' convolution_param { "
    "num_output: 16 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.2 } } }\n"
    "layer { name: 'bnC' type: 'BatchNorm' bottom: 'cC' top: 'cC' }\n"
    "layer { name: 'scC' type: 'Scale' bottom: 'cC' top: 'cC' scale_param { bias_term: true } }\n"
    "layer { name: 'reluC' type: 'ReLU' bottom: 'cC' top: 'cC' }\n"
    "layer { name: 'convD' type: 'Convolution' bottom: 'cC' top: 'cD' convolution_param { "
    "num_output: 32 kernel_size: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.3 } } }\n"
    "layer { name: 'bnD' type: 'BatchNorm' bottom: 'cD' top: 'cD' }\n"
    "layer { name: 'scD' type: 'Scale' bottom: 'cD' top: 'cD' scale_param { bias_term: true } }\n"
    "layer { name: 'res' type: 'Eltwise' bottom: 'cA' bottom: 'cD' top: 'r' }\n"
    NETS_TAIL;

/* ResNet's stem on a small image: a 7x7 stride-2 convolution with a bias reading the 3-channel
 * fp32 input (the stem kernels: channels-last bf16 from its output on), its chain, a 3x3
 * stride-2 MAX pooling with a partial last window (Caffe's ceil), whose output a Split sends
 * to a 1x1 shortcut and a bottleneck. */
static const char *const STEM_TEXT =
    "name: 'stem'\n"
    "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 3 dim: 31 "
    "dim: 29 } } }\n"
    "layer { name: 'label' type: 'Input' top: 'label' input_param { shape { dim: 4 } } }\n"
    "layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'c1' convolution_param { "
    "num_output: 16 kernel_size: 7 stride: 2 pad: 3 weight_filler { type: 'gaussian' "
    "std: 0.1 } bias_filler { type: 'gaussian' std: 0.5 } } }\n"
    "layer { name: 'bn1' type: 'BatchNorm' bottom: 'c1' top: 'c1' }\n"
    "layer { name: 'sc1' type: 'Scale' bottom: 'c1' top: 'c1' scale_param { bias_term: true } }\n"
    "layer { name: 'relu1' type: 'ReLU' bottom: 'c1' top: 'c1' }\n"
    "layer { name: 'pool1' type: 'Pooling' bottom: 'c1' top: 'p1' pooling_param { pool: MAX "
    "kernel_size: 3 stride: 2 } }\n"
    "layer { name: 'convA' type: 'Convolution' bottom: 'p1' top: 'cA' convolution_param { "
    "num_output: 32 kernel_size: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.3 } } }\n"
    "layer { name: 'bnA' type: 'BatchNorm' bottom: 'cA' top: 'cA' }\n"
    "layer { name: 'scA' type: 'Scale' bottom: 'cA' top: 'cA' scale_param { bias_term: true } }\n"
    "layer { name: 'convB' type: 'Convolution' bottom: 'p1' top: 'cB' convolution_param { "
    "num_output: 16 kernel_size: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.3 } } }\n"
    "layer { name: 'bnB' type: 'BatchNorm' bottom: 'cB' top: 'cB' }\n"
    "layer { name: 'scB' type: 'Scale' bottom: 'cB' top: 'cB' scale_param { bias_term: true } }\n"
    "layer { name: 'reluB' type: 'ReLU' bottom: 'cB' top: 'cB' }\n"
    "layer { name: 'convC' type: 'Convolution' bottom: 'cB' top: 'cC' convolution_param { "
    "num_output: 32 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'gaussian' "
    "std: 0.2 } } }\n"
    "layer { name: 'bnC' type: 'BatchNorm' bottom: 'cC' top: 'cC' }\n"
    "layer { name: 'scC' type: 'Scale' bottom: 'cC' top: 'cC' scale_param { bias_term: true } }\n"
    "layer { name: 'res' type: 'Eltwise' bottom: 'cA' bottom: 'cC' top: 'r' }\n"
    NETS_TAIL;

/* Seeded (the fillers' weights the same on every run: the bounds below were measured on
 * 16 seeds, but a test must not depend on the clock). */
static Net *net_of_phase(const char *text, Backend be, Phase ph) {
  return net_from_text_on(text, ph, be, 3, "net");
}

static Net *net_of(const char *text, Backend be) { return net_of_phase(text, be, MOKA_TRAIN); }

static double nmse(const float *got, const float *want, size_t n) {
  double e = 0, s = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)got[i] - (double)want[i];
    e += d * d;
    s += (double)want[i] * want[i];
  }
  return s > 0 ? e / s : e;
}

/* A convolution's bias under a BatchNorm (the stem's): its gradient, the sum of a
 * BatchNorm's input gradient, cancels to about 0 by construction, so its NMSE against the
 * reference's measures rounding, not the layer. check_bias_before_bn bounds it instead. */
static bool is_bias_before_bn(const Net *net, int i, int k) {
  const Layer *l = net->layers[i];
  if (k != 1 || k >= l->n_params || strcmp(l->type->name, "Convolution") || i + 1 >= net->n_layers)
    return false;
  const Layer *n = net->layers[i + 1];
  return !strcmp(n->type->name, "BatchNorm") && n->bottom[0] == l->top[0];
}

/* Such a bias's gradient against the reference's, absolutely: each channel within 2e-2 of
 * the sum of |its top's gradient| in the reference (bf16 rounds each of those terms by at
 * most 2^-9 of itself, and the gradients above differ by bf16's error; a wrong channel or
 * layout is off by about the whole sum). */
static void check_bias_before_bn(const char *what, const Net *ref, const Net *got) {
  for (int i = 0; i < ref->n_layers; i++) {
    if (!is_bias_before_bn(ref, i, 1)) continue;
    const Layer *l = ref->layers[i];
    const Blob *t = l->top[0]; /* fp32 NCHW in the reference */
    const size_t off = (size_t)(l->params[1]->data - ref->param_data);
    const int N = t->shape[0], C = t->shape[1];
    const size_t S = t->count / ((size_t)N * C);
    int bad = 0;
    for (int c = 0; c < C; c++) {
      double a = 0;
      for (int n = 0; n < N; n++)
        for (size_t q = 0; q < S; q++) a += fabs(t->diff[((size_t)n * C + c) * S + q]);
      bad += fabs((double)got->param_diff[off + c] - ref->param_diff[off + c]) > 2e-2 * a;
    }
    CHECK_MSG(bad == 0, "%s: layer '%s' bias gradient: %d of %d channels off", what, l->name,
              bad, C);
  }
}

/* Every layer's parameters (diff: gradients, else values) within NMSE bound of the
 * reference's. */
static void per_param(const char *what, const Net *ref, const Net *got, bool diff, bool bn_only,
                      double bound) {
  for (int i = 0; i < ref->n_layers; i++) {
    const Layer *l = ref->layers[i];
    if (bn_only && strcmp(l->type->name, "BatchNorm")) continue;
    for (int k = 0; k < l->n_params; k++) {
      if (diff && is_bias_before_bn(ref, i, k)) continue; /* check_bias_before_bn */
      const size_t off = (size_t)(l->params[k]->data - ref->param_data), n = l->params[k]->count;
      const double e = nmse((diff ? got->param_diff : got->param_data) + off,
                            (diff ? ref->param_diff : ref->param_data) + off, n);
      CHECK_MSG(e <= bound, "%s: layer '%s' param %d %s NMSE %.3g > %.2g", what, l->name, k,
                diff ? "gradient" : "value", e, bound);
    }
  }
}

/* The global AVE pooling on a bf16 blob, exactly: forward the fp32 sum of the bf16 values
 * in pixel order over S, backward bf16(dy / S) at every pixel. */
static void check_pool(const char *what, const Net *net, const char *in, const char *out) {
  const Blob *x = net_blob(net, in), *y = net_blob(net, out);
  REQUIRE(x->host_bf16 && !y->host_bf16);
  const size_t N = (size_t)x->shape[0], C = (size_t)x->shape[1], S = x->count / (N * C);
  const uint16_t *xd = (const uint16_t *)x->data, *xg = (const uint16_t *)x->diff;
  int bad_f = 0, bad_b = 0;
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++) {
      float sum = 0.0f;
      for (size_t q = 0; q < S; q++) sum += bf16_value(xd[(n * S + q) * C + c]);
      bad_f += memcmp(&(float){sum / (float)S}, &y->data[n * C + c], sizeof(float)) != 0;
      const uint16_t g = bf16_bits_cpu(y->diff[n * C + c] / (float)S);
      for (size_t q = 0; q < S; q++) bad_b += xg[(n * S + q) * C + c] != g;
    }
  CHECK_MSG(bad_f == 0 && bad_b == 0, "%s: pooling '%s' -> '%s': %d forward, %d backward values "
            "differ", what, in, out, bad_f, bad_b);
}

static void step_vs_reference(const char *name, const char *text, const char *pool_in,
                              const char *const *want_bf16, const char *const *want_f32) {
  REQUIRE(fast_set_precision("bf16") == 0);
  setenv("MOKA_BF16_ACT", "0", 1);
  Net *ref = net_of(text, MOKA_BACKEND_CPU), *base = net_of(text, MOKA_BACKEND_CPU_FAST);
  unsetenv("MOKA_BF16_ACT"); /* the fast CPU backend's default with --precision=bf16 */
  Net *net = net_of(text, MOKA_BACKEND_CPU_FAST);
  REQUIRE(ref && base && net);
  int nb = 0;
  for (int b = 0; b < net->n_blobs; b++) nb += net->blobs[b]->host_bf16;
  CHECK_MSG(nb == net_bf16_count(net) && nb > 0, "%s: %d bf16 blobs", name, nb);
  for (int k = 0; want_bf16[k]; k++)
    CHECK_MSG(net_blob(net, want_bf16[k])->host_bf16, "%s: '%s' should be bf16", name,
              want_bf16[k]);
  for (int k = 0; want_f32[k]; k++)
    CHECK_MSG(!net_blob(net, want_f32[k])->host_bf16, "%s: '%s' should stay fp32", name,
              want_f32[k]);
  CHECK(net_bf16_count(ref) == 0 && net_bf16_count(base) == 0);
  Rng r;
  rng_seed(&r, 78);
  tiny_randomise(ref, net, &r);
  memcpy(base->param_data, ref->param_data, ref->param_count * sizeof(float));
  memcpy(net_blob(base, "data")->data, net_blob(ref, "data")->data,
         net_blob(ref, "data")->count * sizeof(float));
  memcpy(net_blob(base, "label")->data, net_blob(ref, "label")->data,
         net_blob(ref, "label")->count * sizeof(float));
  for (int it = 0; it < 2; it++) {
    float lr = 0, ln = 0, lb = 0;
    net_clear_param_diffs(ref);
    net_clear_param_diffs(base);
    net_clear_param_diffs(net);
    REQUIRE(net_forward(ref, &lr) == 0 && net_forward(base, &lb) == 0);
    CHECK_MSG(net_forward(net, &ln) == 0, "%s: forward: %s", name, moka_error());
    CHECK_MSG(fabs((double)lr - (double)ln) <= 2e-2 * (1 + fabs((double)lr)),
              "%s it %d: loss %.9g with bf16 activations, %.9g reference", name, it, (double)ln,
              (double)lr);
    per_param(name, ref, net, false, true, 1e-3); /* the running statistics */
    { /* a bf16 blob read through blob_host_f32 */
      const char *bn = want_bf16[0];
      Blob *a = net_blob(ref, bn), *b = net_blob(net, bn);
      float *v = malloc(b->count * sizeof(float));
      blob_host_f32(b, false, v);
      const double e = nmse(v, a->data, a->count);
      CHECK_MSG(e <= 1e-3, "%s: blob '%s' read back: NMSE %.3g", name, bn, e);
      free(v);
    }
    REQUIRE(net_backward(ref) == 0 && net_backward(base) == 0);
    CHECK_MSG(net_backward(net) == 0, "%s: backward: %s", name, moka_error());
    per_param(name, ref, net, true, false, 0.5);
    check_bias_before_bn(name, ref, net);
    const double all = nmse(net->param_diff, ref->param_diff, ref->param_count);
    const double all_base = nmse(base->param_diff, ref->param_diff, ref->param_count);
    CHECK_MSG(all <= 2e-2, "%s it %d: all gradients NMSE %.3g (fp32 activations: %.3g)", name, it,
              all, all_base);
    check_pool(name, net, pool_in, "pool");
  }
  net_free(ref);
  net_free(base);
  net_free(net);
  REQUIRE(fast_set_precision("fp32") == 0);
}

static void test_tiny(void) {
  char *text = tiny_resnet_text(true);
  REQUIRE(text);
  static const char *const bf[] = {"c1", "c2a", "c2b", "r2", "c3a", "r3", NULL};
  static const char *const f32[] = {"data", "pool", "fc", "loss", NULL};
  step_vs_reference("tiny ResNet", text, "r3", bf, f32);
  free(text);
}

static void test_downsampling(void) {
  static const char *const bf[] = {"cA", "cB", "cC", "cD", "r", NULL};
  static const char *const f32[] = {"data", "c0", "p0", "pool", NULL};
  step_vs_reference("downsampling block", DOWN_TEXT, "r", bf, f32);
}

static void test_stem(void) {
  static const char *const bf[] = {"c1", "p1", "cA", "cB", "cC", "r", NULL};
  static const char *const f32[] = {"data", "pool", "fc", NULL};
  step_vs_reference("stem", STEM_TEXT, "r", bf, f32);
}

/* The bf16 MAX pooling and the Split after it, exactly: forward each window's first maximum
 * (scanned in (h, w) order, strictly greater), bit for bit; backward, layer by layer down to
 * the pooling: the Split's gradient bf16(fp32 sum of its tops'), and the pooling's dx at each
 * pixel bf16 of the fp32 sum, in output order, of the dy of the outputs whose maximum it is. */
static void max_pool_exact(const char *text, int K, int S, int pad, int want_ph, int want_pw) {
  REQUIRE(fast_set_precision("bf16") == 0);
  Net *net = net_of(text, MOKA_BACKEND_CPU_FAST);
  REQUIRE(net);
  const Blob *x = net_blob(net, "c1"), *y = net_blob(net, "p1");
  REQUIRE(x->host_bf16 && y->host_bf16);
  Rng r;
  rng_seed(&r, 5);
  Blob *data = net_blob(net, "data"), *label = net_blob(net, "label");
  for (size_t i = 0; i < data->count; i++) data->data[i] = rng_gaussian(&r, 0.0f, 1.0f);
  for (size_t i = 0; i < label->count; i++) label->data[i] = (float)(i % 4);
  float loss = 0;
  REQUIRE(net_forward(net, &loss) == 0);
  const int N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int PH = y->shape[2], PW = y->shape[3];
  CHECK_MSG(PH == want_ph && PW == want_pw, "pooled %dx%d, want %dx%d", PH, PW, want_ph, want_pw);
  const uint16_t *xd = (const uint16_t *)x->data, *yd = (const uint16_t *)y->data;
  int *arg = malloc(sizeof(int) * (size_t)N * PH * PW * C);
  int bad_f = 0;
  for (int n = 0; n < N; n++)
    for (int ph = 0; ph < PH; ph++)
      for (int pw = 0; pw < PW; pw++)
        for (int c = 0; c < C; c++) {
          float m = -FLT_MAX;
          int a = -1;
          for (int h = ph * S - pad; h < ph * S - pad + K && h < H; h++)
            for (int w = pw * S - pad; w < pw * S - pad + K && w < W; w++) {
              if (h < 0 || w < 0) continue;
              const float v = (float)bf16_value(xd[(((size_t)n * H + h) * W + w) * C + c]);
              if (v > m) m = v, a = h * W + w;
            }
          const size_t o = (((size_t)n * PH + ph) * PW + pw) * C + c;
          arg[o] = a;
          bad_f += yd[o] != bf16_bits_cpu(m);
        }
  CHECK_MSG(bad_f == 0, "max pooling forward: %d values differ", bad_f);
  /* backward down to the pooling */
  const int ip = net_layer_index(net, "pool1");
  REQUIRE(ip >= 0);
  for (int i = net->n_layers - 1; i >= ip; i--) REQUIRE(net_backward_layer(net, i) == 0);
  const Layer *split = NULL;
  for (int i = ip + 1; i < net->n_layers && !split; i++)
    if (!strcmp(net->layers[i]->type->name, "Split") && net->layers[i]->bottom[0] == y)
      split = net->layers[i];
  REQUIRE(split && split->n_top == 2);
  const uint16_t *t0 = (const uint16_t *)split->top[0]->diff;
  const uint16_t *t1 = (const uint16_t *)split->top[1]->diff;
  const uint16_t *dy = (const uint16_t *)y->diff, *dx = (const uint16_t *)x->diff;
  int bad_s = 0;
  for (size_t i = 0; i < y->count; i++)
    bad_s += dy[i] != bf16_bits_cpu((float)bf16_value(t0[i]) + (float)bf16_value(t1[i]));
  CHECK_MSG(bad_s == 0, "Split backward: %d of %zu values differ", bad_s, y->count);
  float *sum = calloc(x->count, sizeof(float));
  for (int n = 0; n < N; n++)
    for (int ph = 0; ph < PH; ph++)
      for (int pw = 0; pw < PW; pw++)
        for (int c = 0; c < C; c++) {
          const size_t o = (((size_t)n * PH + ph) * PW + pw) * C + c;
          if (arg[o] >= 0) sum[((size_t)n * H * W + arg[o]) * C + c] += (float)bf16_value(dy[o]);
        }
  int bad_b = 0, hits = 0;
  for (size_t i = 0; i < x->count; i++) {
    bad_b += dx[i] != bf16_bits_cpu(sum[i]);
    hits += sum[i] != 0.0f;
  }
  CHECK_MSG(bad_b == 0 && hits > 0, "max pooling backward: %d of %zu values differ (%d nonzero)",
            bad_b, x->count, hits);
  free(arg);
  free(sum);
  net_free(net);
  REQUIRE(fast_set_precision("fp32") == 0);
}

static void test_max_pool_exact(void) {
  /* the stem's: 16x15 -> (16 - 3) / 2 and (15 - 3) / 2 rounded up, plus 1 */
  max_pool_exact(STEM_TEXT, 3, 2, 0, 8, 7);
  /* padded, stride 1, 2x2: windows clipped at the top and left, overlapping by one */
  char *t = moka_strdup(STEM_TEXT);
  REQUIRE(t);
  t = replace1(t, "pool: MAX kernel_size: 3 stride: 2 }",
               "pool: MAX kernel_size: 2 stride: 1 pad: 1 }");
  REQUIRE(t);
  max_pool_exact(t, 2, 1, 1, 17, 16);
  free(t);
}

/* TEST phase (global statistics), weights frozen as the inference tools freeze them: the
 * channels-last layers keep their packed weights from the first forward, and every forward
 * gives the same bits as with the weights packed on each call. */
static void test_frozen_inference(void) {
  REQUIRE(fast_set_precision("bf16") == 0);
  setenv("MOKA_BF16_ACT", "1", 1);
  Net *a = net_of_phase(DOWN_TEXT, MOKA_BACKEND_CPU_FAST, MOKA_TEST);
  Net *b = net_of_phase(DOWN_TEXT, MOKA_BACKEND_CPU_FAST, MOKA_TEST);
  unsetenv("MOKA_BF16_ACT");
  REQUIRE(a && b);
  CHECK(net_blob(a, "cC")->host_bf16 && net_blob(b, "cC")->host_bf16);
  Rng r;
  rng_seed(&r, 5);
  tiny_randomise(a, b, &r);
  net_freeze_weights(b);
  Blob *pa = net_blob(a, "pool"), *pb = net_blob(b, "pool");
  for (int it = 0; it < 2; it++) {
    float la = 0, lb = 0;
    REQUIRE(net_forward(a, &la) == 0);
    CHECK_MSG(net_forward(b, &lb) == 0, "frozen forward: %s", moka_error());
    CHECK(memcmp(pa->data, pb->data, pa->count * sizeof(float)) == 0);
    CHECK(memcmp(&la, &lb, sizeof la) == 0);
  }
  net_free(a);
  net_free(b);
  REQUIRE(fast_set_precision("fp32") == 0);
}

/* The switch: on by default on the fast CPU backend with --precision=bf16 (not on the
 * reference backend, not in fp32, not with debug_info, whose per-layer values stay fp32),
 * off with MOKA_BF16_ACT=0; MOKA_BF16_ACT=1 without --precision=bf16, or with debug_info,
 * is an error stated before anything runs. */
static Net *with_setting(const char *text, const char *set, bool debug_info) {
  if (set) setenv("MOKA_BF16_ACT", set, 1);
  char *t = moka_strdup(text);
  if (debug_info) {
    char *d = malloc(strlen(text) + 32);
    snprintf(d, strlen(text) + 32, "debug_info: true\n%s", text);
    free(t);
    t = d;
  }
  Net *n = net_of(t, MOKA_BACKEND_CPU_FAST);
  free(t);
  unsetenv("MOKA_BF16_ACT");
  return n;
}

static void test_switches(void) {
  char *text = tiny_resnet_text(true);
  REQUIRE(text);
  REQUIRE(fast_set_precision("fp32") == 0);
  Net *n = with_setting(text, "1", false);
  CHECK(n == NULL);
  CHECK(strstr(moka_error(), "--precision=bf16") != NULL);
  net_free(n);
  n = with_setting(text, NULL, false); /* fp32: nothing bf16 */
  REQUIRE(n);
  CHECK(net_bf16_count(n) == 0);
  net_free(n);
  REQUIRE(fast_set_precision("bf16") == 0);
  n = with_setting(text, NULL, false);
  REQUIRE(n);
  CHECK(net_bf16_count(n) > 0); /* the default */
  net_free(n);
  n = with_setting(text, "0", false);
  REQUIRE(n);
  CHECK(net_bf16_count(n) == 0);
  net_free(n);
  n = with_setting(text, NULL, true); /* debug_info: fp32, no error */
  CHECK_MSG(n != NULL, "%s", moka_error());
  if (n) CHECK(net_bf16_count(n) == 0);
  net_free(n);
  n = with_setting(text, "1", true);
  CHECK(n == NULL);
  CHECK(strstr(moka_error(), "debug_info") != NULL);
  net_free(n);
  setenv("MOKA_BF16_ACT", "1", 1);
  Net *ref = net_of(text, MOKA_BACKEND_CPU); /* the reference backend never */
  unsetenv("MOKA_BF16_ACT");
  REQUIRE(ref);
  CHECK(net_bf16_count(ref) == 0);
  net_free(ref);
  REQUIRE(fast_set_precision("fp32") == 0);
  free(text);
}

/* The suite, run with each kernel set (bf16_kernel_sets). */
static void suite(void) {
  RUN(test_tiny);
  RUN(test_downsampling);
  RUN(test_stem);
  RUN(test_max_pool_exact);
  RUN(test_frozen_inference);
  RUN(test_switches);
}

int main(void) {
  moka_set_log_level(2);
  if (!fast_bf16_supported()) {
    fprintf(stderr, "SKIP test_net_bf16_cpu: this CPU has no AVX-512 BF16\n");
    return 0;
  }
  bf16_kernel_sets(suite);
  return test_summary();
}
