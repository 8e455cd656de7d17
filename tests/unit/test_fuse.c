/* test_fuse.c — the fast backend's fused BatchNorm -> Scale (-> Eltwise) (-> ReLU)
 * chains and shared Split tops (src/net_fuse.h) against the same nets run
 * layer by layer: on the reference backend (the oracle) and on the fast
 * backend with MOKA_FUSE=0.
 *
 * Tolerances.
 *  - fused vs unfused fast, forward: bit-identical (the fused forward makes
 *    the unfused fast layers' float operations in their order; Split tops
 *    share their bottom's values).
 *  - fused vs unfused fast, backward: the only change is BatchNorm's two
 *    per-channel sums, gamma*sum(dz) and gamma*sum(dz*x_norm) in double
 *    instead of sums of float(dz*gamma): a few float ulps of the sums, which
 *    then pass through the convolutions' backward. Checked at 2e-5 of each
 *    array's largest magnitude (the golden README's rule with rtol 2e-5).
 *  - fused vs reference: the fast convolutions add in another order than
 *    the reference's (about 1e-6 relative per layer), amplified by
 *    BatchNorm's backward on tiny batches (m = N*H*W down to 15 values,
 *    where mean(dy) and mean(dy*x_norm) cancel most of dy): rtol 1e-4
 *    forward and 1e-3 backward, as tests/unit/test_fast.c's layer checks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "layers/batchnorm_priv.h"
#include "layers/convolution_priv.h"
#include "layers/fast.h"
#include "net.h"
#include "net_fuse.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

typedef struct Cfg {
  const char *what;
  Phase phase;
  int n, h, w;
  float slope;           /* ReLU negative_slope */
  bool bias;             /* Scale bias_term */
  bool scale_lr0;        /* lr_mult 0 on scale_conv1's parameters */
  bool conv1_frozen;     /* lr_mult 0 on conv1: bn_conv1 gets no backward */
  bool global_stats;     /* use_global_stats: true on every BatchNorm */
  bool force_backward;
  int iterations;
  int channels;          /* the branches' channels (conv1: one more); 0: 5 */
} Cfg;

/* A residual stem like Kaiming's res2a + res2b:
 *   conv1 -> bn -> scale -> relu                         (BN_SCALE + ReLU)
 *   branch1: 1x1 conv -> bn -> scale                     (BN_SCALE, no ReLU)
 *   branch2a: 3x3 conv -> bn -> scale -> Eltwise(branch1, branch2a) -> relu
 *                                                        (BN_SCALE_ELTWISE, x second)
 *   b2: 1x1 conv -> bn -> scale -> Eltwise(b2, res) -> relu
 *                                                        (BN_SCALE_ELTWISE, x first)
 *   -> InnerProduct -> SoftmaxWithLoss
 * conv1 and res each feed two layers: two Split layers. */
static char *make_proto(const Cfg *c) {
  char bn[128], scale[512], scale1[640], relu[128], conv1_lr[64];
  snprintf(bn, sizeof bn, "batch_norm_param { %s }",
           c->global_stats ? "use_global_stats: true" : "moving_average_fraction: 0.9");
  const char *fillers = "filler { type: \"uniform\" min: 0.5 max: 1.5 } "
                        "bias_filler { type: \"uniform\" min: -0.5 max: 0.5 }";
  snprintf(scale, sizeof scale, "scale_param { bias_term: %s %s }", c->bias ? "true" : "false",
           fillers);
  snprintf(scale1, sizeof scale1, "%s %s", scale,
           c->scale_lr0 ? (c->bias ? "param { lr_mult: 0 } param { lr_mult: 0 }"
                                   : "param { lr_mult: 0 }")
                        : "");
  snprintf(relu, sizeof relu, "relu_param { negative_slope: %g }", (double)c->slope);
  snprintf(conv1_lr, sizeof conv1_lr, "%s", c->conv1_frozen ? "param { lr_mult: 0 }" : "");
  const char *conv = "bias_term: false weight_filler { type: \"msra\" }";
  const int ch = c->channels ? c->channels : 5;
  char *text = malloc(16384);
  snprintf(
      text, 16384,
      "name: \"fuse\" %s\n"
      "layer { name: \"data\" type: \"Input\" top: \"data\" top: \"label\"\n"
      "  input_param { shape { dim: %d dim: 3 dim: %d dim: %d } shape { dim: %d } } }\n"
      "layer { name: \"conv1\" type: \"Convolution\" bottom: \"data\" top: \"conv1\" %s\n"
      "  convolution_param { num_output: %d kernel_size: 3 pad: 1 %s } }\n"
      "layer { name: \"bn_conv1\" type: \"BatchNorm\" bottom: \"conv1\" top: \"conv1\" %s }\n"
      "layer { name: \"scale_conv1\" type: \"Scale\" bottom: \"conv1\" top: \"conv1\" %s }\n"
      "layer { name: \"conv1_relu\" type: \"ReLU\" bottom: \"conv1\" top: \"conv1\" %s }\n"
      "layer { name: \"branch1\" type: \"Convolution\" bottom: \"conv1\" top: \"branch1\"\n"
      "  convolution_param { num_output: %d kernel_size: 1 %s } }\n"
      "layer { name: \"bn_branch1\" type: \"BatchNorm\" bottom: \"branch1\" top: \"branch1\" %s }\n"
      "layer { name: \"scale_branch1\" type: \"Scale\" bottom: \"branch1\" top: \"branch1\" %s }\n"
      "layer { name: \"branch2a\" type: \"Convolution\" bottom: \"conv1\" top: \"branch2a\"\n"
      "  convolution_param { num_output: %d kernel_size: 3 pad: 1 %s } }\n"
      "layer { name: \"bn_branch2a\" type: \"BatchNorm\" bottom: \"branch2a\" top: \"branch2a\" %s }\n"
      "layer { name: \"scale_branch2a\" type: \"Scale\" bottom: \"branch2a\" top: \"branch2a\" %s }\n"
      "layer { name: \"res\" type: \"Eltwise\" bottom: \"branch1\" bottom: \"branch2a\" top: \"res\" }\n"
      "layer { name: \"res_relu\" type: \"ReLU\" bottom: \"res\" top: \"res\" %s }\n"
      "layer { name: \"b2\" type: \"Convolution\" bottom: \"res\" top: \"b2\"\n"
      "  convolution_param { num_output: %d kernel_size: 1 %s } }\n"
      "layer { name: \"bn_b2\" type: \"BatchNorm\" bottom: \"b2\" top: \"b2\" %s }\n"
      "layer { name: \"scale_b2\" type: \"Scale\" bottom: \"b2\" top: \"b2\" %s }\n"
      "layer { name: \"res2\" type: \"Eltwise\" bottom: \"b2\" bottom: \"res\" top: \"res2\"\n"
      "  eltwise_param { operation: SUM } }\n"
      "layer { name: \"res2_relu\" type: \"ReLU\" bottom: \"res2\" top: \"res2\" %s }\n"
      "layer { name: \"fc\" type: \"InnerProduct\" bottom: \"res2\" top: \"fc\"\n"
      "  inner_product_param { num_output: 4 weight_filler { type: \"msra\" } } }\n"
      "layer { name: \"loss\" type: \"SoftmaxWithLoss\" bottom: \"fc\" bottom: \"label\" top: \"loss\" }\n",
      c->force_backward ? "force_backward: true" : "", c->n, c->h, c->w, c->n, conv1_lr, ch + 1,
      conv, bn, scale1, relu, ch, conv, bn, scale, ch, conv, bn, scale, relu, ch, conv, bn, scale,
      relu);
  return text;
}

static Net *build(const char *text, Phase ph, Backend be, bool fuse) {
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), "fuse", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  NetOptions o;
  net_options_default(&o);
  o.phase = ph;
  o.backend = be;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1234;
  if (!fuse) setenv("MOKA_FUSE", "0", 1);
  Net *net = net_create((Caffe__NetParameter *)m, &o, "fuse");
  unsetenv("MOKA_FUSE");
  protobuf_c_message_free_unpacked(m, NULL);
  if (!net) fprintf(stderr, "    %s\n", moka_error());
  return net;
}

static Rng g_rng;

/* The same inputs into the three nets: data N(0,1), labels in [0,4). */
static void feed(Net **nets, int k) {
  Blob *d0 = net_blob(nets[0], "data"), *l0 = net_blob(nets[0], "label");
  for (size_t i = 0; i < d0->count; i++) d0->data[i] = rng_gaussian(&g_rng, 0.0f, 1.0f);
  for (size_t i = 0; i < l0->count; i++) l0->data[i] = (float)(rng_u32(&g_rng) % 4);
  for (int q = 1; q < k; q++) {
    memcpy(net_blob(nets[q], "data")->data, d0->data, d0->count * sizeof(float));
    memcpy(net_blob(nets[q], "label")->data, l0->data, l0->count * sizeof(float));
  }
}

/* Bitwise equality of two arrays (the first difference printed). */
static int same_bits(const char *what, const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], sizeof(float))) {
      fprintf(stderr, "    %s[%zu]: %.9g vs %.9g (not bit-identical)\n", what, i, (double)a[i],
              (double)b[i]);
      return 0;
    }
  return 1;
}

/* A chain-internal diff, which the fused chain does not write: the output
 * diff of an Eltwise chain with a ReLU (the ReLU's masked copy). */
static bool internal_diff(const Net *net, const Blob *b) {
  const NetFusePlan *p = net->fuse;
  for (int i = 0; p && i < p->n_chains; i++)
    if (p->chains[i].kind == FUSED_BN_SCALE_ELTWISE && p->chains[i].has_relu &&
        p->chains[i].y == b)
      return true;
  return false;
}

/* Compare every blob (data; diffs unless internal) and every parameter
 * (data and diff) of `got` against `want`. exact: bit-identical forward. */
static int compare_nets(const char *tag, Net *got, Net *want, bool exact, double rtol_f,
                        double rtol_b, bool diffs) {
  int ok = 1;
  char what[256];
  for (int b = 0; b < got->n_blobs; b++) {
    Blob *g = got->blobs[b], *w = net_blob(want, g->name);
    if (!w || w->count != g->count) {
      fprintf(stderr, "    %s: blob %s missing or resized\n", tag, g->name);
      ok = 0;
      continue;
    }
    snprintf(what, sizeof what, "%s %s data", tag, g->name);
    ok &= exact ? same_bits(what, g->data, w->data, g->count)
                : compare_f32(what, g->data, w->data, g->count, rtol_f, 0);
    if (diffs && !internal_diff(got, g) && strcmp(g->name, "label") != 0) {
      snprintf(what, sizeof what, "%s %s diff", tag, g->name);
      ok &= compare_f32(what, g->diff, w->diff, g->count, rtol_b, 0);
    }
  }
  for (int p = 0; p < got->n_params; p++) {
    const Layer *l = got->layers[got->param_layer[p]];
    snprintf(what, sizeof what, "%s %s param data", tag, l->name);
    ok &= exact ? same_bits(what, got->params[p]->data, want->params[p]->data,
                            got->params[p]->count)
                : compare_f32(what, got->params[p]->data, want->params[p]->data,
                              got->params[p]->count, rtol_f, 0);
    if (diffs) {
      snprintf(what, sizeof what, "%s %s param diff", tag, l->name);
      ok &= compare_f32(what, got->params[p]->diff, want->params[p]->diff, got->params[p]->count,
                        rtol_b, 0);
    }
  }
  return ok;
}

/* Random running statistics (mean N(0,0.5), variance in [0.5,1.5], scale
 * factor 0.8), the same in every net. */
static void random_stats(Net **nets, int k) {
  Net *n0 = nets[0];
  for (int i = 0; i < n0->n_layers; i++) {
    Layer *l = n0->layers[i];
    if (strcmp(l->type->name, "BatchNorm")) continue;
    for (size_t c = 0; c < l->params[0]->count; c++) {
      l->params[0]->data[c] = 0.8f * rng_gaussian(&g_rng, 0.0f, 0.5f);
      l->params[1]->data[c] = 0.8f * rng_uniform(&g_rng, 0.5f, 1.5f);
    }
    l->params[2]->data[0] = 0.8f;
  }
  for (int q = 1; q < k; q++)
    memcpy(nets[q]->param_data, n0->param_data, n0->param_count * sizeof(float));
}

/* Run cfg on three nets (reference, fast unfused, fast fused): iterations of
 * forward (+ backward in TRAIN) with an SGD-like step between them (the same
 * on all three, from the reference's gradients). */
static int run_cfg(const Cfg *c, int want_chains, int want_elt) {
  char *text = make_proto(c);
  Net *nets[3] = {build(text, c->phase, MOKA_BACKEND_CPU, true),
                  build(text, c->phase, MOKA_BACKEND_CPU_FAST, false),
                  build(text, c->phase, MOKA_BACKEND_CPU_FAST, true)};
  free(text);
  int ok = nets[0] && nets[1] && nets[2];
  if (!ok) goto done;
  Net *ref = nets[0], *unf = nets[1], *fus = nets[2];
  ok &= ref->fuse == NULL && unf->fuse == NULL && fus->fuse != NULL;
  if (!ok) {
    fprintf(stderr, "    %s: plans: ref %p, MOKA_FUSE=0 %p, fused %p\n", c->what,
            (void *)ref->fuse, (void *)unf->fuse, (void *)fus->fuse);
    goto done;
  }
  int n_elt = 0;
  for (int i = 0; i < fus->fuse->n_chains; i++)
    n_elt += fus->fuse->chains[i].kind == FUSED_BN_SCALE_ELTWISE;
  CHECK_MSG(fus->fuse->n_chains == want_chains && n_elt == want_elt,
            "%s: %d chains (%d Eltwise), want %d (%d)", c->what, fus->fuse->n_chains, n_elt,
            want_chains, want_elt);
  ok &= ref->param_count == fus->param_count && unf->param_count == fus->param_count;
  if (!ok) goto done;
  /* The same parameters everywhere (the fillers drew the same, but be sure). */
  memcpy(unf->param_data, ref->param_data, ref->param_count * sizeof(float));
  memcpy(fus->param_data, ref->param_data, ref->param_count * sizeof(float));
  if (c->global_stats || c->phase == MOKA_TEST) random_stats(nets, 3);
  const bool train = c->phase == MOKA_TRAIN;
  for (int it = 0; it < c->iterations && ok; it++) {
    feed(nets, 3);
    float loss[3];
    for (int q = 0; q < 3; q++) {
      net_clear_param_diffs(nets[q]);
      ok &= net_forward(nets[q], &loss[q]) == 0;
      if (train) ok &= net_backward(nets[q]) == 0;
    }
    if (!ok) {
      fprintf(stderr, "    %s: %s\n", c->what, moka_error());
      break;
    }
    char tag[128];
    snprintf(tag, sizeof tag, "%s it %d fused/unfused", c->what, it);
    ok &= compare_nets(tag, fus, unf, true, 0, 2e-5, train);
    snprintf(tag, sizeof tag, "%s it %d fused/reference", c->what, it);
    ok &= compare_nets(tag, fus, ref, false, 1e-4, 1e-3, train);
    CHECK_MSG(memcmp(&loss[1], &loss[2], sizeof(float)) == 0 &&
                  fabs((double)loss[2] - (double)loss[0]) <= 1e-4 * fabs((double)loss[0]) + 1e-6,
              "%s it %d: loss fused %.9g, unfused %.9g, reference %.9g", c->what, it,
              (double)loss[2], (double)loss[1], (double)loss[0]);
    /* The same step everywhere: w -= 0.05 * reference gradient, so the
     * next iteration starts from identical parameters (BatchNorm's running
     * statistics, which have no gradient, become the reference's: each
     * iteration's update of them is compared just above). */
    if (train)
      for (size_t k = 0; k < ref->param_count; k++) {
        const float nw = ref->param_data[k] - 0.05f * ref->param_diff[k];
        for (int q = 0; q < 3; q++) nets[q]->param_data[k] = nw;
      }
  }
done:
  for (int q = 0; q < 3; q++) net_free(nets[q]);
  return ok;
}

static void test_train_batch2(void) {
  Cfg c = {.what = "train b2", .phase = MOKA_TRAIN, .n = 2, .h = 7, .w = 5, .bias = true,
           .iterations = 3};
  CHECK(run_cfg(&c, 4, 2));
}

/* Planes of >= 1024 values take the in-cache path of net_fuse.c (smaller
 * ones the streamed one). */
static void test_train_large_planes(void) {
  Cfg c = {.what = "train 33x32", .phase = MOKA_TRAIN, .n = 2, .h = 33, .w = 32, .slope = 0.05f,
           .bias = true, .iterations = 2};
  CHECK(run_cfg(&c, 4, 2));
  Cfg t = {.what = "test 33x32", .phase = MOKA_TEST, .n = 1, .h = 32, .w = 33, .bias = false,
           .iterations = 1};
  CHECK(run_cfg(&t, 4, 2));
  Cfg f = {.what = "train 33x32 frozen", .phase = MOKA_TRAIN, .n = 1, .h = 32, .w = 33,
           .bias = true, .conv1_frozen = true, .iterations = 1};
  CHECK(run_cfg(&f, 4, 2));
  /* Planes of 128..1023 values stream x_norm too (net_fuse.c, FUSE_NT_MIN),
   * here from every offset within a cache line (195 values a plane): the
   * unaligned head, the 16-value body and the tail. */
  Cfg u = {.what = "train 15x13", .phase = MOKA_TRAIN, .n = 3, .h = 15, .w = 13, .slope = 0.05f,
           .bias = true, .iterations = 2};
  CHECK(run_cfg(&u, 4, 2));
  Cfg v = {.what = "train 15x13 no bias", .phase = MOKA_TRAIN, .n = 2, .h = 13, .w = 15,
           .bias = false, .iterations = 2};
  CHECK(run_cfg(&v, 4, 2));
}

/* Blocks of several channels per task (net_fuse.c, block_channels: at
 * least four tasks per thread), the last block shorter: 37 and 38 channels,
 * small and large planes. */
static void test_train_channel_blocks(void) {
  Cfg c = {.what = "train 37 channels 7x6", .phase = MOKA_TRAIN, .n = 3, .h = 7, .w = 6,
           .slope = 0.1f, .bias = true, .iterations = 2, .channels = 37};
  CHECK(run_cfg(&c, 4, 2));
  Cfg l = {.what = "train 37 channels 33x32", .phase = MOKA_TRAIN, .n = 2, .h = 33, .w = 32,
           .bias = false, .iterations = 1, .channels = 37};
  CHECK(run_cfg(&l, 4, 2));
  Cfg t = {.what = "test 37 channels 9x9", .phase = MOKA_TEST, .n = 2, .h = 9, .w = 9,
           .bias = true, .iterations = 1, .channels = 37};
  CHECK(run_cfg(&t, 4, 2));
}

static void test_train_batch1_slope_nobias(void) {
  Cfg c = {.what = "train b1 slope", .phase = MOKA_TRAIN, .n = 1, .h = 5, .w = 3, .slope = 0.1f,
           .bias = false, .iterations = 2};
  CHECK(run_cfg(&c, 4, 2));
}

static void test_train_lr0_frozen(void) {
  Cfg c = {.what = "train lr0", .phase = MOKA_TRAIN, .n = 3, .h = 6, .w = 4, .bias = true,
           .scale_lr0 = true, .iterations = 2};
  CHECK(run_cfg(&c, 4, 2));
  Cfg f = {.what = "train frozen conv1", .phase = MOKA_TRAIN, .n = 2, .h = 5, .w = 5,
           .bias = true, .conv1_frozen = true, .iterations = 2};
  CHECK(run_cfg(&f, 4, 2));
  Cfg fb = {.what = "train force_backward", .phase = MOKA_TRAIN, .n = 2, .h = 3, .w = 5,
            .bias = true, .conv1_frozen = true, .force_backward = true, .iterations = 2};
  CHECK(run_cfg(&fb, 4, 2));
}

static void test_global_stats(void) {
  Cfg t = {.what = "test", .phase = MOKA_TEST, .n = 2, .h = 7, .w = 5, .slope = 0.2f,
           .bias = true, .iterations = 2};
  CHECK(run_cfg(&t, 4, 2));
  Cfg g = {.what = "train global stats", .phase = MOKA_TRAIN, .n = 2, .h = 5, .w = 7,
           .bias = true, .global_stats = true, .iterations = 2};
  CHECK(run_cfg(&g, 4, 2));
}

/* A chain whose x_norm is not kept: TEST forward only must not need it. And
 * the plan's flags for the frozen conv1: no BN backward, Scale grads only. */
static void test_plan_flags(void) {
  Cfg f = {.what = "flags", .phase = MOKA_TRAIN, .n = 2, .h = 5, .w = 5, .bias = true,
           .conv1_frozen = true};
  char *text = make_proto(&f);
  Net *net = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU_FAST, true);
  REQUIRE(net && net->fuse);
  const NetFusePlan *p = net->fuse;
  int bn1 = net_layer_index(net, "bn_conv1");
  REQUIRE(bn1 >= 0 && p->chain_of[bn1] >= 0);
  const FusedChain *c = &p->chains[p->chain_of[bn1]];
  CHECK(c->kind == FUSED_BN_SCALE && c->has_relu && !c->bn_bw && c->want_dgamma &&
        c->want_dbeta && c->relu_bw && c->fwd_at == bn1 &&
        c->bwd_at == net_layer_index(net, "conv1_relu"));
  int bnb = net_layer_index(net, "bn_branch1");
  const FusedChain *b1 = &p->chains[p->chain_of[bnb]];
  CHECK(b1->kind == FUSED_BN_SCALE && !b1->has_relu && b1->bn_bw);
  int bn2 = net_layer_index(net, "bn_branch2a");
  const FusedChain *e = &p->chains[p->chain_of[bn2]];
  CHECK(e->kind == FUSED_BN_SCALE_ELTWISE && e->x_bottom == 1 &&
        e->shortcut == net_blob(net, "branch1") && e->fwd_at == net_layer_index(net, "res") &&
        e->bwd_at == net_layer_index(net, "res_relu") && e->shortcut_bw);
  int bnc = net_layer_index(net, "bn_b2");
  const FusedChain *e2 = &p->chains[p->chain_of[bnc]];
  CHECK(e2->kind == FUSED_BN_SCALE_ELTWISE && e2->x_bottom == 0);
  /* The Splits right after conv1's and res's chains are summed by those
   * chains' backward; the other chains have none. */
  const int s1 = c->bwd_at + 1, s2 = e->bwd_at + 1;
  CHECK(!strcmp(net->layers[s1]->type->name, "Split") && c->split == s1 &&
        p->split_into[s1] == p->chain_of[bn1]);
  CHECK(!strcmp(net->layers[s2]->type->name, "Split") && e->split == s2 &&
        p->split_into[s2] == p->chain_of[bn2]);
  CHECK(b1->split == -1 && e2->split == -1);
  int n_into = 0;
  for (int i = 0; i < net->n_layers; i++) n_into += p->split_into[i] >= 0;
  CHECK(n_into == 2);
  /* Split layers share their tops' data after a forward. */
  feed(&net, 1);
  float loss;
  CHECK(net_forward(net, &loss) == 0);
  int shared = 0;
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (strcmp(l->type->name, "Split")) continue;
    for (int t = 0; t < l->n_top; t++) {
      CHECK(l->top[t]->data == l->bottom[0]->data && blob_data_shared(l->top[t]));
      shared++;
    }
  }
  CHECK(shared == 4);
  /* debug_info: the pass runs layer by layer (ran_fused false everywhere). */
  net->debug_info = true;
  moka_set_log_level(2);
  CHECK(net_forward(net, &loss) == 0 && net_backward(net) == 0);
  moka_set_log_level(1);
  for (int i = 0; i < p->n_chains; i++) CHECK(!p->chains[i].ran_fused);
  net->debug_info = false;
  CHECK(net_forward(net, &loss) == 0);
  for (int i = 0; i < p->n_chains; i++) CHECK(p->chains[i].ran_fused);
  net_free(net);
  /* The reference backend never fuses, nor shares Split tops. */
  net = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU, true);
  REQUIRE(net);
  CHECK(net->fuse == NULL);
  feed(&net, 1);
  CHECK(net_forward(net, &loss) == 0);
  for (int i = 0; i < net->n_layers; i++)
    if (!strcmp(net->layers[i]->type->name, "Split"))
      CHECK(net->layers[i]->top[0]->data != net->layers[i]->bottom[0]->data);
  net_free(net);
  free(text);
}

/* Reshaping: a bigger batch after set-up, then forward + backward again,
 * fused against reference. */
static void test_reshape(void) {
  Cfg c = {.what = "reshape", .phase = MOKA_TRAIN, .n = 2, .h = 5, .w = 4, .bias = true};
  char *text = make_proto(&c);
  Net *nets[2] = {build(text, MOKA_TRAIN, MOKA_BACKEND_CPU, true),
                  build(text, MOKA_TRAIN, MOKA_BACKEND_CPU_FAST, true)};
  free(text);
  REQUIRE(nets[0] && nets[1]);
  memcpy(nets[1]->param_data, nets[0]->param_data, nets[0]->param_count * sizeof(float));
  float loss;
  feed(nets, 2);
  for (int q = 0; q < 2; q++) CHECK(net_forward(nets[q], &loss) == 0);
  for (int q = 0; q < 2; q++) {
    int s4[4] = {3, 3, 5, 4}, s1[1] = {3};
    CHECK(blob_reshape(net_blob(nets[q], "data"), 4, s4) == 0);
    CHECK(blob_reshape(net_blob(nets[q], "label"), 1, s1) == 0);
    CHECK_MSG(net_reshape(nets[q]) == 0, "%s", moka_error());
  }
  REQUIRE(nets[1]->fuse && nets[1]->fuse->n_chains == 4 && nets[1]->fuse->chains[0].num == 3);
  feed(nets, 2);
  for (int q = 0; q < 2; q++) {
    net_clear_param_diffs(nets[q]);
    CHECK(net_forward(nets[q], &loss) == 0 && net_backward(nets[q]) == 0);
  }
  CHECK(compare_nets("reshape", nets[1], nets[0], false, 1e-4, 1e-3, true));
  for (int q = 0; q < 2; q++) net_free(nets[q]);
}

/* The mini ResNet of the golden files (Kaiming's naming and layer pattern,
 * TEST phase): it fuses, and gives Caffe's blobs (test_fast.c compares every
 * golden blob on the fast backend, fused since net_fuse; here the chain
 * count, and fused against unfused bit for bit). */
static void test_mini_resnet(void) {
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TEST;
  o.backend = MOKA_BACKEND_CPU_FAST;
  o.quiet = true;
  Net *f = net_create_from_file(shared_path("golden/mini_resnet/deploy.prototxt"), &o);
  setenv("MOKA_FUSE", "0", 1);
  Net *u = net_create_from_file(shared_path("golden/mini_resnet/deploy.prototxt"), &o);
  unsetenv("MOKA_FUSE");
  REQUIRE(f && u);
  moka_set_log_level(1);
  int ok = net_copy_from_file(f, shared_path("golden/mini_resnet/weights.caffemodel")) == 0 &&
           net_copy_from_file(u, shared_path("golden/mini_resnet/weights.caffemodel")) == 0;
  REQUIRE(ok);
  REQUIRE(f->fuse && !u->fuse);
  int n_elt = 0;
  for (int i = 0; i < f->fuse->n_chains; i++)
    n_elt += f->fuse->chains[i].kind == FUSED_BN_SCALE_ELTWISE;
  /* conv1 + (res2a: branch1, 2a, 2b, 2c) + (res2b: 2a, 2b, 2c) + (res3a: 4) */
  CHECK_MSG(f->fuse->n_chains == 12 && n_elt == 3, "%d chains, %d Eltwise", f->fuse->n_chains,
            n_elt);
  Blob *in = net_blob(f, "data");
  size_t n;
  float *v = read_f32(shared_path("golden/mini_resnet/input.bin"), &n);
  REQUIRE(in && v && n == in->count);
  memcpy(in->data, v, n * sizeof(float));
  memcpy(net_blob(u, "data")->data, v, n * sizeof(float));
  free(v);
  float l1, l2;
  CHECK(net_forward(f, &l1) == 0 && net_forward(u, &l2) == 0);
  CHECK(compare_nets("mini_resnet", f, u, true, 0, 0, false));
  net_free(f);
  net_free(u);
}

/* DummyData's fast gaussian refill: the reference's values bit for bit,
 * and the random stream left in the same state (odd counts leave a spare
 * value; the next top or pass starts with it). */
static void test_dummydata_fast(void) {
  const char *text =
      "name: \"dd\" layer { name: \"d\" type: \"DummyData\" top: \"a\" top: \"b\" top: \"c\"\n"
      "  dummy_data_param { shape { dim: 3 dim: 5 dim: 7 } shape { dim: 2 dim: 40000 }\n"
      "    shape { dim: 4 }\n"
      "    data_filler { type: \"gaussian\" std: 50 mean: 3 }\n"
      "    data_filler { type: \"gaussian\" std: 0.5 }\n"
      "    data_filler { type: \"uniform\" min: -1 max: 1 } } }\n";
  Net *ref = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU, true);
  Net *fast = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU_FAST, true);
  REQUIRE(ref && fast);
  for (int it = 0; it < 3; it++) {
    float l;
    CHECK(net_forward(ref, &l) == 0 && net_forward(fast, &l) == 0);
    for (int b = 0; b < ref->n_blobs; b++)
      CHECK(same_bits(ref->blobs[b]->name, fast->blobs[b]->data, ref->blobs[b]->data,
                      ref->blobs[b]->count));
    CHECK(ref->rng.have_spare == fast->rng.have_spare && ref->rng.idx == fast->rng.idx &&
          memcmp(ref->rng.mt, fast->rng.mt, sizeof ref->rng.mt) == 0 &&
          (!ref->rng.have_spare || ref->rng.spare == fast->rng.spare));
  }
  /* Not a constant 0: the values are really drawn. */
  Blob *a = net_blob(fast, "a");
  double s2 = 0;
  for (size_t i = 0; i < a->count; i++) s2 += (a->data[i] - 3.0) * (a->data[i] - 3.0);
  CHECK(sqrt(s2 / (double)a->count) > 40 && sqrt(s2 / (double)a->count) < 60);
  net_free(ref);
  net_free(fast);
}

/* Strided 1x1 convolutions reading one blob (ResNet's downsampling pair,
 * here with a third at another stride and a bias, and the blob also feeding
 * a 3x3): the net subsamples the input once (NetFusePlan.subs) and the
 * layers' forwards and weight gradients read that copy. The same GEMMs on
 * the same values as each gathering its own: every blob and gradient bit
 * for bit equal to MOKA_FUSE_SUB=0's, in fp32 and bf16, and close to the
 * reference backend's (fp32). Odd sizes (the last column of a stride-2 row
 * is the row's last value), several images per GEMM chunk (7x6 outputs)
 * and one per chunk (22x21), batch 1. */
static char *sub_proto(int n, int h, int w) {
  char *text = malloc(4096);
  snprintf(text, 4096,
           "name: \"sub\"\n"
           "layer { name: \"data\" type: \"Input\" top: \"data\" top: \"label\"\n"
           "  input_param { shape { dim: %d dim: 3 dim: %d dim: %d } shape { dim: %d } } }\n"
           "layer { name: \"c0\" type: \"Convolution\" bottom: \"data\" top: \"c0\"\n"
           "  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"a\" type: \"Convolution\" bottom: \"c0\" top: \"a\"\n"
           "  convolution_param { num_output: 7 kernel_size: 1 stride: 2 bias_term: false\n"
           "    weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"b\" type: \"Convolution\" bottom: \"c0\" top: \"b\"\n"
           "  convolution_param { num_output: 7 kernel_size: 1 stride: 2\n"
           "    weight_filler { type: \"msra\" } bias_filler { type: \"uniform\" } } }\n"
           "layer { name: \"c\" type: \"Convolution\" bottom: \"c0\" top: \"c\"\n"
           "  convolution_param { num_output: 3 kernel_size: 1 stride_h: 2 stride_w: 3\n"
           "    weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"d\" type: \"Convolution\" bottom: \"c0\" top: \"d\"\n"
           "  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"ab\" type: \"Eltwise\" bottom: \"a\" bottom: \"b\" top: \"ab\" }\n"
           "layer { name: \"fc1\" type: \"InnerProduct\" bottom: \"ab\" top: \"fc1\"\n"
           "  inner_product_param { num_output: 4 weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"fc2\" type: \"InnerProduct\" bottom: \"c\" top: \"fc2\"\n"
           "  inner_product_param { num_output: 4 weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"fc3\" type: \"InnerProduct\" bottom: \"d\" top: \"fc3\"\n"
           "  inner_product_param { num_output: 4 weight_filler { type: \"msra\" } } }\n"
           "layer { name: \"s12\" type: \"Eltwise\" bottom: \"fc1\" bottom: \"fc2\" top: \"s12\" }\n"
           "layer { name: \"s\" type: \"Eltwise\" bottom: \"s12\" bottom: \"fc3\" top: \"s\" }\n"
           "layer { name: \"loss\" type: \"SoftmaxWithLoss\" bottom: \"s\" bottom: \"label\" top: \"loss\" }\n",
           n, h, w, n);
  return text;
}

static void test_subsampled_inputs(void) {
  static const int shapes[][3] = {{3, 13, 11}, {2, 43, 41}, {1, 9, 12}};
  for (int prec = 0; prec < 2; prec++) {
    if (prec == 1 && !fast_bf16_supported()) {
      fprintf(stderr, "  SKIP bf16 part: this CPU has no AVX-512 BF16\n");
      break;
    }
    for (size_t k = 0; k < MOKA_ARRAY_LEN(shapes); k++) {
      char *text = sub_proto(shapes[k][0], shapes[k][1], shapes[k][2]);
      Net *ref = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU, true);
      setenv("MOKA_FUSE_SUB", "0", 1);
      Net *own = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU_FAST, true);
      unsetenv("MOKA_FUSE_SUB");
      Net *sub = build(text, MOKA_TRAIN, MOKA_BACKEND_CPU_FAST, true);
      free(text);
      REQUIRE(ref && own && sub);
      /* a, b (stride 2) share one copy, c (stride 2x3) has its own. */
      REQUIRE(sub->fuse && own->fuse);
      CHECK_MSG(sub->fuse->n_subs == 2 && own->fuse->n_subs == 0, "%d / %d copies",
                sub->fuse->n_subs, own->fuse->n_subs);
      memcpy(own->param_data, ref->param_data, ref->param_count * sizeof(float));
      memcpy(sub->param_data, ref->param_data, ref->param_count * sizeof(float));
      Net *nets[3] = {ref, own, sub};
      REQUIRE(fast_set_precision(prec ? "bf16" : "fp32") == 0);
      for (int it = 0; it < 2; it++) {
        feed(nets, 3);
        float loss[3];
        for (int q = 0; q < 3; q++) {
          net_clear_param_diffs(nets[q]);
          CHECK(net_forward(nets[q], &loss[q]) == 0 && net_backward(nets[q]) == 0);
        }
        char tag[96];
        snprintf(tag, sizeof tag, "%s %dx%dx%d it %d", prec ? "bf16" : "fp32", shapes[k][0],
                 shapes[k][1], shapes[k][2], it);
        CHECK_MSG(memcmp(&loss[1], &loss[2], sizeof(float)) == 0, "%s loss", tag);
        /* Bit for bit: data (exact), then diffs (rtol 0). */
        CHECK_MSG(compare_nets(tag, sub, own, true, 0, 0, true), "%s shared/own", tag);
        if (!prec) CHECK_MSG(compare_nets(tag, sub, ref, false, 1e-4, 1e-3, true), "%s ref", tag);
        /* The copy is not kept pointed at once the net is done with a layer. */
        for (int i = 0; i < sub->n_layers; i++)
          if (!strcmp(sub->layers[i]->type->name, "Convolution"))
            CHECK(((const ConvPriv *)sub->layers[i]->priv)->sub_x == NULL);
      }
      (void)fast_set_precision("fp32");
      net_free(ref);
      net_free(own);
      net_free(sub);
    }
  }
}

int main(void) {
  moka_set_log_level(1);
  rng_seed(&g_rng, 4242);
  RUN(test_plan_flags);
  RUN(test_train_batch2);
  RUN(test_train_batch1_slope_nobias);
  RUN(test_train_large_planes);
  RUN(test_train_channel_blocks);
  RUN(test_train_lr0_frozen);
  RUN(test_global_stats);
  RUN(test_reshape);
  RUN(test_mini_resnet);
  RUN(test_dummydata_fast);
  RUN(test_subsampled_inputs);
  return test_summary();
}
