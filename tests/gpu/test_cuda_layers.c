/* test_cuda_layers.c — the CUDA backend against the CPU reference and
 * against real Caffe (shared/golden). Needs a GPU; without one (or in a
 * build without CUDA) it prints "SKIP: no CUDA device (<reason>)" and exits 0,
 * so `make test` builds and runs it everywhere.
 *
 * 1. Every layer type with CUDA slots, built with layer_create on awkward
 *    shapes (odd H/W, stride 2, 1x1, the 7x7/2 stem, batch 1, channels not a
 *    multiple of 8, group 2, dilation, several GEMM chunks), random inputs,
 *    random parameters and random initial parameter gradients (to check that
 *    the gradients accumulate): CPU reference forward+backward, then the same
 *    state on the device, CUDA forward+backward, and every output compared
 *    (tops, updated statistics, bottom gradients, parameter gradients). Both
 *    convolution engines (moka's and cuDNN) and MOKA_CONV_ENGINE=auto; moka's
 *    3x3 stride-1 cases through Winograd (the default) and without it, with the
 *    Winograd weight gradient (MOKA_CONV_WINOGRAD_WGRAD=1), and the split weight
 *    gradient (MOKA_CONV_WGRAD_SPLIT=1).
 *    Bound: normalised mean squared error (ggml's NMSE, sum (a-b)^2 /
 *    sum b^2) per array:
 *      1e-10 for elementwise ops, pooling, BatchNorm, Scale, softmax and the
 *            losses: they do the reference's float operations in its order
 *            (NMSE 0 expected; expf/log ulps and double sums in another order
 *            stay near 1e-14);
 *      1e-8  for the GEMM-based ops (Convolution, InnerProduct): fp32 sums in
 *            another order, relative error ~ sqrt(K)*6e-8 per value, NMSE
 *            ~1e-13 for K in the thousands; 1e-8 leaves room without hiding
 *            a wrong index (which gives NMSE ~1). TF32 would give ~1e-6 and fail,
 *            which is the point.
 * 2. Whole nets against real Caffe: mini ResNet (TEST, both input sizes, both
 *    engines) at the golden README's rtol 1e-4; one TRAIN forward/backward of
 *    mini_train against grad_iter0 (loss, blobs, BN statistics at 1e-4,
 *    gradients at 1e-3); six SGD iterations on the device (net_cuda_sgd_update)
 *    against Caffe's losses and final weights (1e-4).
 * 3. A bad label on the device is the same error as on the CPU.
 */
#include <limits.h>
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
#include "manifest.h"
#include "gputest.h"
#include "moka_cuda.h"
#include "net.h"
#include "net_cuda.h"
#include "prototxt.h"
#include "util.h"

#define B_EXACT 1e-10 /* elementwise / reductions (see the header) */
#define B_GEMM 1e-8   /* GEMM-based */

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

/* CHECK an NMSE bound, with the worst element on failure. */
static bool check_close(const char *what, const float *got, const float *want, size_t n,
                        double bound, double *worst_nmse) {
  const double e = nmse(got, want, n);
  if (!(e <= bound)) { /* NaN fails too */
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
  if (e > *worst_nmse) *worst_nmse = e;
  return true;
}

static float *dup_f(const float *p, size_t n) {
  float *q = malloc((n ? n : 1) * sizeof(float));
  if (n) memcpy(q, p, n * sizeof(float));
  return q;
}

static void fill_uniform(Rng *r, float *p, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++) p[i] = rng_uniform(r, lo, hi);
}

/* "2,3,13,11" -> blob shape. */
static int parse_shape(const char *s, int *shape) {
  int n = 0;
  while (*s && n < MOKA_MAX_AXES) {
    shape[n++] = (int)strtol(s, (char **)&s, 10);
    if (*s == ',') s++;
  }
  return n;
}

/* ---- one layer: CPU reference vs CUDA ----------------------------------------------------- */

typedef struct Spec {
  const char *name;
  const char *proto;         /* LayerParameter text: type and *_param (no name/bottom/top) */
  Phase phase;
  const char *bottoms[5];    /* shapes, NULL-terminated */
  int n_top;
  bool in_place;             /* top 0 is bottom 0 */
  int label;                 /* bottom holding labels, -1 = none */
  int classes;               /* labels in [0, classes) */
  double bound;
  bool backward;
} Spec;

#define MAXB 5
#define MAXT 4

static void run_spec(const Spec *s) {
  char text[4096];
  snprintf(text, sizeof text, "name: 'L' %s", s->proto);
  ProtobufCMessage *m = NULL;
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), s->name, &m)) {
    CHECK_MSG(false, "%s: %s", s->name, moka_error());
    return;
  }
  Caffe__LayerParameter *lp = (Caffe__LayerParameter *)m;
  Rng data_rng, layer_rng, rng_snapshot;
  rng_seed(&data_rng, 1234);
  rng_seed(&layer_rng, 7);

  Blob *bot[MAXB] = {0}, *top[MAXT] = {0};
  int nb = 0;
  for (; nb < MAXB && s->bottoms[nb]; nb++) {
    int shape[MOKA_MAX_AXES], na = parse_shape(s->bottoms[nb], shape);
    char name[32];
    snprintf(name, sizeof name, "bottom%d", nb);
    bot[nb] = blob_new(name);
    blob_reshape(bot[nb], na, shape);
    if (nb == s->label)
      for (size_t i = 0; i < bot[nb]->count; i++)
        bot[nb]->data[i] = (float)(rng_u32(&data_rng) % (uint32_t)s->classes);
    else
      fill_uniform(&data_rng, bot[nb]->data, bot[nb]->count, -1.0f, 1.0f);
  }
  for (int t = 0; t < s->n_top; t++) {
    char name[32];
    snprintf(name, sizeof name, "top%d", t);
    top[t] = (t == 0 && s->in_place) ? bot[0] : blob_new(name);
  }
  Layer *l = layer_create(lp, s->phase, &layer_rng, bot, nb, top, s->n_top);
  if (!l) {
    CHECK_MSG(false, "%s: %s", s->name, moka_error());
    goto free_blobs;
  }
  /* Parameters: random values (BatchNorm: statistics with a scale factor
   * 0.73 as in the golden files), random initial gradients. */
  for (int k = 0; k < l->n_params; k++) {
    Blob *p = l->params[k];
    if (!strcmp(l->type->name, "BatchNorm")) {
      for (size_t i = 0; i < p->count; i++)
        p->data[i] = k == 0   ? 0.73f * rng_uniform(&data_rng, -0.5f, 0.5f)
                     : k == 1 ? 0.73f * rng_uniform(&data_rng, 0.5f, 1.5f)
                              : 0.73f;
    } else {
      fill_uniform(&data_rng, p->data, p->count, -0.5f, 0.5f);
    }
    fill_uniform(&data_rng, p->diff, p->count, -1.0f, 1.0f);
  }

  /* Snapshots of the inputs. */
  float *bot0[MAXB] = {0}, *par0[16] = {0}, *pdiff0[16] = {0};
  float *ref_top[MAXT] = {0}, *ref_par[16] = {0}, *ref_bdiff[MAXB] = {0}, *ref_pdiff[16] = {0};
  float *dy[MAXT] = {0};
  const int np = l->n_params < 16 ? l->n_params : 16;
  for (int b = 0; b < nb; b++) bot0[b] = dup_f(bot[b]->data, bot[b]->count);
  for (int k = 0; k < np; k++) {
    par0[k] = dup_f(l->params[k]->data, l->params[k]->count);
    pdiff0[k] = dup_f(l->params[k]->diff, l->params[k]->count);
  }
  rng_snapshot = layer_rng;

  /* CPU reference. */
  REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
  for (int t = 0; t < s->n_top; t++) ref_top[t] = dup_f(top[t]->data, top[t]->count);
  for (int k = 0; k < np; k++) ref_par[k] = dup_f(l->params[k]->data, l->params[k]->count);
  if (s->backward) {
    for (int t = 0; t < s->n_top; t++) {
      fill_uniform(&data_rng, top[t]->diff, top[t]->count, -1.0f, 1.0f);
      dy[t] = dup_f(top[t]->diff, top[t]->count);
    }
    for (int b = 0; b < nb; b++) /* a marker that a missing write would leave */
      if (!(b == 0 && s->in_place))
        for (size_t i = 0; i < bot[b]->count; i++) bot[b]->diff[i] = 12345.0f;
    REQUIRE(layer_backward(l, MOKA_BACKEND_CPU) == 0);
    for (int b = 0; b < nb; b++) ref_bdiff[b] = dup_f(bot[b]->diff, bot[b]->count);
    for (int k = 0; k < np; k++) ref_pdiff[k] = dup_f(l->params[k]->diff, l->params[k]->count);
  }

  /* The same starting state on the device. */
  for (int b = 0; b < nb; b++) memcpy(bot[b]->data, bot0[b], bot[b]->count * sizeof(float));
  for (int k = 0; k < np; k++) {
    memcpy(l->params[k]->data, par0[k], l->params[k]->count * sizeof(float));
    memcpy(l->params[k]->diff, pdiff0[k], l->params[k]->count * sizeof(float));
  }
  layer_rng = rng_snapshot;
  bool ok = true;
  for (int b = 0; b < nb && ok; b++)
    ok = blob_alloc_device(bot[b], true, s->name) == 0 && blob_to_device(ctx, bot[b]) == 0;
  for (int t = 0; t < s->n_top && ok; t++)
    ok = blob_alloc_device(top[t], true, s->name) == 0;
  for (int k = 0; k < l->n_params && ok; k++)
    ok = blob_alloc_device(l->params[k], true, s->name) == 0 &&
         blob_to_device(ctx, l->params[k]) == 0 && blob_diff_to_device(ctx, l->params[k]) == 0;
  CHECK_MSG(ok, "%s: device set-up: %s", s->name, moka_error());
  l->cuda = ctx;
  double worst_f = 0, worst_b = 0;
  char what[256];
  if (ok && layer_forward(l, MOKA_BACKEND_CUDA) != 0) {
    CHECK_MSG(false, "%s: CUDA forward: %s", s->name, moka_error());
    ok = false;
  }
  for (int t = 0; t < s->n_top && ok; t++) {
    ok = blob_to_host(ctx, top[t]) == 0;
    snprintf(what, sizeof what, "%s: top %d", s->name, t);
    if (ok) check_close(what, top[t]->data, ref_top[t], top[t]->count, s->bound, &worst_f);
  }
  for (int k = 0; k < np && ok; k++) { /* statistics updated by forward (BatchNorm) */
    ok = blob_to_host(ctx, l->params[k]) == 0;
    snprintf(what, sizeof what, "%s: parameter %d after forward", s->name, k);
    if (ok) check_close(what, l->params[k]->data, ref_par[k], l->params[k]->count, s->bound,
                        &worst_f);
  }
  if (ok && s->backward) {
    for (int t = 0; t < s->n_top && ok; t++) {
      memcpy(top[t]->diff, dy[t], top[t]->count * sizeof(float));
      ok = blob_diff_to_device(ctx, top[t]) == 0;
    }
    for (int b = 0; b < nb && ok; b++)
      if (!(b == 0 && s->in_place)) {
        for (size_t i = 0; i < bot[b]->count; i++) bot[b]->diff[i] = 12345.0f;
        ok = blob_diff_to_device(ctx, bot[b]) == 0;
      }
    if (ok && layer_backward(l, MOKA_BACKEND_CUDA) != 0) {
      CHECK_MSG(false, "%s: CUDA backward: %s", s->name, moka_error());
      ok = false;
    }
    for (int b = 0; b < nb && ok; b++) {
      if (b == s->label) continue;
      ok = blob_diff_to_host(ctx, bot[b]) == 0;
      snprintf(what, sizeof what, "%s: bottom %d diff", s->name, b);
      if (ok) check_close(what, bot[b]->diff, ref_bdiff[b], bot[b]->count, s->bound, &worst_b);
    }
    for (int k = 0; k < np && ok; k++) {
      ok = blob_diff_to_host(ctx, l->params[k]) == 0;
      snprintf(what, sizeof what, "%s: parameter %d diff", s->name, k);
      if (ok) check_close(what, l->params[k]->diff, ref_pdiff[k], l->params[k]->count, s->bound,
                          &worst_b);
    }
  }
  if (!ok && *moka_error()) fprintf(stderr, "    %s: %s\n", s->name, moka_error());
  CHECK_MSG(ok, "%s: device run failed", s->name);
  fprintf(stderr, "    %-44s forward NMSE %.2g%s, backward %.2g (bound %.0e)\n", s->name,
          worst_f, "", worst_b, s->bound);

  for (int b = 0; b < MAXB; b++) {
    free(bot0[b]);
    free(ref_bdiff[b]);
  }
  for (int t = 0; t < MAXT; t++) {
    free(ref_top[t]);
    free(dy[t]);
  }
  for (int k = 0; k < 16; k++) {
    free(par0[k]);
    free(pdiff0[k]);
    free(ref_par[k]);
    free(ref_pdiff[k]);
  }
  for (int k = 0; k < l->n_params; k++) blob_free_device(l->params[k]);
  layer_free(l);
free_blobs:
  for (int t = 0; t < s->n_top; t++)
    if (top[t] && !(t == 0 && s->in_place)) {
      blob_free_device(top[t]);
      blob_free(top[t]);
    }
  for (int b = 0; b < nb; b++) {
    blob_free_device(bot[b]);
    blob_free(bot[b]);
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- the layer cases ---------------------------------------------------------------------- */

static void run_specs(const Spec *v, size_t n) {
  for (size_t i = 0; i < n; i++) run_spec(&v[i]);
}

#define GW " weight_filler { type: 'gaussian' std: 0.1 } "
static const char *conv_params[][2] = {
    /* {convolution_param body, bottom shape} */
    {"num_output: 5 kernel_size: 3 pad: 1" GW, "2,3,13,11"},
    {"num_output: 8 kernel_size: 7 stride: 2 pad: 3" GW, "1,3,37,29"},         /* stem, batch 1 */
    {"num_output: 20 kernel_size: 1 bias_term: false" GW, "2,12,7,9"},         /* 1x1 plain GEMM */
    {"num_output: 6 kernel_size: 1 stride: 2 bias_term: false" GW, "2,12,9,7"}, /* 1x1 stride 2 */
    {"num_output: 7 kernel_size: 3 stride: 2 pad: 1" GW, "1,10,15,13"},
    {"num_output: 10 kernel_size: 3 pad: 1 group: 2" GW, "2,6,9,9"},
    {"num_output: 6 kernel_size: 1 group: 2" GW, "3,4,5,5"},                   /* 1x1, group 2 */
    {"num_output: 4 kernel_size: 3 pad: 2 dilation: 2" GW, "2,4,11,10"},
    {"num_output: 3 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1" GW,
     "2,5,8,6"},
    {"num_output: 64 kernel_size: 3 pad: 1 bias_term: false" GW, "2,64,14,14"}, /* K = 576 */
    /* 3x3 stride 1 with pad 0 and 2 (Winograd takes pads 0..2) */
    {"num_output: 6 kernel_size: 3 pad: 0" GW, "2,5,9,8"},
    {"num_output: 3 kernel_size: 3 pad: 2" GW, "1,7,6,5"},
    /* >= 4096 columns: with MOKA_CONV_WGRAD_SPLIT=1 the weight gradient split in parts
     * (conv_gemm.cu; test_convolution_split), 2 parts; 4 parts per group */
    {"num_output: 16 kernel_size: 3 pad: 1" GW, "6,8,33,31"},
    {"num_output: 12 kernel_size: 1 bias_term: false group: 2" GW, "8,8,32,32"},
};

static void test_convolution(void) {
  /* engine 0: CAFFE (moka's), 1: CUDNN, 2: DEFAULT with MOKA_CONV_ENGINE=auto (each direction
   * timed on both engines first; the parameter gradients must still be added once) */
  for (int engine = 0; engine < 3; engine++)
    for (size_t i = 0; i < MOKA_ARRAY_LEN(conv_params); i++) {
      char proto[1024], name[128];
      snprintf(proto, sizeof proto, "type: 'Convolution' convolution_param { %s%s%s }",
               conv_params[i][0], engine < 2 ? " engine: " : "",
               engine == 0 ? "CAFFE" : engine == 1 ? "CUDNN" : "");
      snprintf(name, sizeof name, "conv[%zu] %s %s", i, conv_params[i][1],
               engine == 0 ? "moka" : engine == 1 ? "cudnn" : "auto");
      ctx->conv_engine_auto = engine == 2;
      Spec s = {name, proto, MOKA_TRAIN, {conv_params[i][1]}, 1, false, -1, 0, B_GEMM, true};
      run_spec(&s);
      ctx->conv_engine_auto = false;
    }
}

/* conv_params[first..last) on moka's engine (engine: CAFFE), `what` added to their names. */
static void run_conv_cases(size_t first, size_t last, const char *what) {
  for (size_t i = first; i < last; i++) {
    char proto[1024], name[128];
    snprintf(proto, sizeof proto, "type: 'Convolution' convolution_param { %s engine: CAFFE }",
             conv_params[i][0]);
    snprintf(name, sizeof name, "conv[%zu] %s moka, %s", i, conv_params[i][1], what);
    Spec s = {name, proto, MOKA_TRAIN, {conv_params[i][1]}, 1, false, -1, 0, B_GEMM, true};
    run_spec(&s);
  }
}

/* MOKA_CONV_WINOGRAD=0: moka's engine with im2col + GEMM for the 3x3 stride-1 cases too
 * (by default they take Winograd F(2x2,3x3), kernels/conv_winograd.cu). */
static void test_convolution_no_winograd(void) {
  setenv("MOKA_CONV_WINOGRAD", "0", 1);
  run_conv_cases(0, MOKA_ARRAY_LEN(conv_params), "no Winograd");
  unsetenv("MOKA_CONV_WINOGRAD");
}

/* A switch (off by default) set to `value` for every case, then again with 1-image chunks
 * (MOKA_CONV_WS_BYTES=1: sums carried across chunks). */
static void run_conv_cases_switched(const char *var, const char *value, const char *what) {
  char w[128];
  setenv(var, value, 1);
  run_conv_cases(0, MOKA_ARRAY_LEN(conv_params), what);
  setenv("MOKA_CONV_WS_BYTES", "1", 1);
  snprintf(w, sizeof w, "%s, 1-image chunks", what);
  run_conv_cases(0, 1, w);
  unsetenv("MOKA_CONV_WS_BYTES");
  unsetenv(var);
}

/* MOKA_CONV_WINOGRAD=4: the 3x3 stride-1 cases' forward and data gradient by Winograd
 * F(4x4,3x3). */
static void test_convolution_winograd4(void) {
  run_conv_cases_switched("MOKA_CONV_WINOGRAD", "4", "Winograd F(4x4)");
}

/* MOKA_CONV_WINOGRAD_WGRAD=1: the 3x3 stride-1 cases' weight gradient by Winograd F(3x3,2x2)
 * too. */
static void test_convolution_winograd_wgrad(void) {
  run_conv_cases_switched("MOKA_CONV_WINOGRAD_WGRAD", "1", "Winograd weight gradient");
}

/* MOKA_CONV_WGRAD_SPLIT=1 (off by default): moka's engine on the cases with >= 4096
 * columns (the last two), the weight gradient in parts. */
static void test_convolution_split(void) {
  setenv("MOKA_CONV_WGRAD_SPLIT", "1", 1);
  run_conv_cases(MOKA_ARRAY_LEN(conv_params) - 2, MOKA_ARRAY_LEN(conv_params),
                 "split weight gradient");
  unsetenv("MOKA_CONV_WGRAD_SPLIT");
}

static void test_convolution_chunks(void) {
  /* A tiny workspace budget: one image per GEMM chunk. */
  setenv("MOKA_CONV_WS_BYTES", "1", 1);
  run_conv_cases(0, 3, "1-image chunks");
  /* batch 3 with 2 chunks of 2 and 1 */
  setenv("MOKA_CONV_WS_BYTES", "40000", 1);
  Spec s = {"conv 3x3 batch 3, uneven chunks",
            "type: 'Convolution' convolution_param { num_output: 4 kernel_size: 3 pad: 1" GW "}",
            MOKA_TRAIN, {"3,3,9,7"}, 1, false, -1, 0, B_GEMM, true};
  run_spec(&s);
  /* batch 7 in chunks of 4 and 3: the weight gradient in 2 parts, then in one (split on) */
  setenv("MOKA_CONV_WS_BYTES", "1126400", 1);
  setenv("MOKA_CONV_WGRAD_SPLIT", "1", 1);
  Spec s2 = {"conv 3x3 batch 7, chunks of 4 and 3, split weight gradient",
             "type: 'Convolution' convolution_param { num_output: 8 kernel_size: 3 pad: 1" GW "}",
             MOKA_TRAIN, {"7,4,40,40"}, 1, false, -1, 0, B_GEMM, true};
  run_spec(&s2);
  unsetenv("MOKA_CONV_WGRAD_SPLIT");
  unsetenv("MOKA_CONV_WS_BYTES");
}

static void test_batchnorm(void) {
  const Spec v[] = {
      {"BN train", "type: 'BatchNorm'", MOKA_TRAIN, {"2,5,7,9"}, 1, false, -1, 0, B_EXACT, true},
      {"BN train in place", "type: 'BatchNorm'", MOKA_TRAIN, {"2,5,7,9"}, 1, true, -1, 0, B_EXACT,
       true},
      {"BN train (N,C)", "type: 'BatchNorm'", MOKA_TRAIN, {"3,7"}, 1, false, -1, 0, B_EXACT, true},
      {"BN train batch 1, 1x1", "type: 'BatchNorm'", MOKA_TRAIN, {"1,3,1,1"}, 1, false, -1, 0,
       B_EXACT, true},
      {"BN global stats (TEST)", "type: 'BatchNorm'", MOKA_TEST, {"2,5,7,9"}, 1, true, -1, 0,
       B_EXACT, true},
      {"BN use_global_stats in TRAIN",
       "type: 'BatchNorm' batch_norm_param { use_global_stats: true eps: 1e-3 }", MOKA_TRAIN,
       {"1,9,3,5"}, 1, false, -1, 0, B_EXACT, true},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

static void test_scale_relu(void) {
  const Spec v[] = {
      {"Scale+bias in place", "type: 'Scale' scale_param { bias_term: true }", MOKA_TRAIN,
       {"2,5,7,9"}, 1, true, -1, 0, B_EXACT, true},
      {"Scale no bias", "type: 'Scale'", MOKA_TRAIN, {"2,5,7,9"}, 1, false, -1, 0, B_EXACT, true},
      {"Scale 2 axes + bias", "type: 'Scale' scale_param { axis: 1 num_axes: 2 bias_term: true }",
       MOKA_TRAIN, {"2,5,7,9"}, 1, false, -1, 0, B_EXACT, true},
      {"Scale from bottom 1 + bias", "type: 'Scale' scale_param { bias_term: true }", MOKA_TRAIN,
       {"2,5,7,9", "5"}, 1, false, -1, 0, B_EXACT, true},
      {"ReLU in place", "type: 'ReLU'", MOKA_TRAIN, {"2,3,5,7"}, 1, true, -1, 0, B_EXACT, true},
      {"ReLU leaky", "type: 'ReLU' relu_param { negative_slope: 0.1 }", MOKA_TRAIN, {"3,4,5"}, 1,
       false, -1, 0, B_EXACT, true},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

static void test_pooling(void) {
  const Spec v[] = {
      {"MAX 3/2 ceil + mask top",
       "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
       MOKA_TRAIN, {"2,3,13,11"}, 2, false, -1, 0, B_EXACT, true},
      {"MAX 3/2 pad 1",
       "type: 'Pooling' pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
       MOKA_TRAIN, {"1,5,14,15"}, 1, false, -1, 0, B_EXACT, true},
      {"MAX 2/2 floor",
       "type: 'Pooling' pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }",
       MOKA_TRAIN, {"1,3,7,9"}, 1, false, -1, 0, B_EXACT, true},
      {"AVE 3/2 pad 1",
       "type: 'Pooling' pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
       MOKA_TRAIN, {"2,3,9,8"}, 1, false, -1, 0, B_EXACT, true},
      {"AVE global 7x7", "type: 'Pooling' pooling_param { pool: AVE global_pooling: true }",
       MOKA_TRAIN, {"2,7,7,7"}, 1, false, -1, 0, B_EXACT, true},
      {"AVE 2/2 odd", "type: 'Pooling' pooling_param { pool: AVE kernel_size: 2 stride: 2 }",
       MOKA_TRAIN, {"1,2,5,7"}, 1, false, -1, 0, B_EXACT, true},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

static void test_eltwise(void) {
  const Spec v[] = {
      {"Eltwise SUM coeffs x3",
       "type: 'Eltwise' eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }",
       MOKA_TRAIN, {"2,3,4,5", "2,3,4,5", "2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
      {"Eltwise SUM x2", "type: 'Eltwise'", MOKA_TRAIN, {"2,32,7,7", "2,32,7,7"}, 1, false, -1, 0,
       B_EXACT, true},
      {"Eltwise PROD x3", "type: 'Eltwise' eltwise_param { operation: PROD }", MOKA_TRAIN,
       {"2,3,4,5", "2,3,4,5", "2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
      {"Eltwise PROD unstable grad",
       "type: 'Eltwise' eltwise_param { operation: PROD stable_prod_grad: false }", MOKA_TRAIN,
       {"2,3,4,5", "2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
      {"Eltwise MAX x3", "type: 'Eltwise' eltwise_param { operation: MAX }", MOKA_TRAIN,
       {"2,3,4,5", "2,3,4,5", "2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

static void test_innerproduct_softmax(void) {
  const Spec v[] = {
      {"InnerProduct 4-D bottom", "type: 'InnerProduct' inner_product_param { num_output: 7 }",
       MOKA_TRAIN, {"3,5,2,3"}, 1, false, -1, 0, B_GEMM, true},
      {"InnerProduct transpose",
       "type: 'InnerProduct' inner_product_param { num_output: 4 transpose: true }", MOKA_TRAIN,
       {"2,9"}, 1, false, -1, 0, B_GEMM, true},
      {"InnerProduct M=1 no bias",
       "type: 'InnerProduct' inner_product_param { num_output: 10 bias_term: false }",
       MOKA_TRAIN, {"1,33"}, 1, false, -1, 0, B_GEMM, true},
      {"InnerProduct 1000-way", "type: 'InnerProduct' inner_product_param { num_output: 1000 }",
       MOKA_TRAIN, {"4,2048"}, 1, false, -1, 0, B_GEMM, true},
      {"Softmax (N,C)", "type: 'Softmax'", MOKA_TRAIN, {"2,10"}, 1, false, -1, 0, B_EXACT, true},
      {"Softmax spatial", "type: 'Softmax'", MOKA_TRAIN, {"2,5,3,4"}, 1, false, -1, 0, B_EXACT,
       true},
      {"Softmax axis 2 in place", "type: 'Softmax' softmax_param { axis: 2 }", MOKA_TRAIN,
       {"2,3,4"}, 1, true, -1, 0, B_EXACT, true},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

static void test_losses(void) {
  const Spec v[] = {
      {"SoftmaxWithLoss", "type: 'SoftmaxWithLoss'", MOKA_TRAIN, {"3,10", "3"}, 1, false, 1, 10,
       B_EXACT, true},
      {"SoftmaxWithLoss 1000-way + prob top", "type: 'SoftmaxWithLoss'", MOKA_TRAIN,
       {"4,1000", "4"}, 2, false, 1, 1000, B_EXACT, true},
      {"SoftmaxWithLoss spatial", "type: 'SoftmaxWithLoss'", MOKA_TRAIN, {"2,4,3,3", "2,1,3,3"},
       1, false, 1, 4, B_EXACT, true},
      {"SoftmaxWithLoss ignore_label",
       "type: 'SoftmaxWithLoss' loss_param { ignore_label: 2 }", MOKA_TRAIN,
       {"2,4,3,3", "2,1,3,3"}, 1, false, 1, 4, B_EXACT, true},
      {"SoftmaxWithLoss BATCH_SIZE",
       "type: 'SoftmaxWithLoss' loss_param { normalization: BATCH_SIZE }", MOKA_TRAIN,
       {"2,4,3,3", "2,1,3,3"}, 1, false, 1, 4, B_EXACT, true},
      {"Accuracy top-1", "type: 'Accuracy'", MOKA_TEST, {"5,10", "5"}, 1, false, 1, 10, B_EXACT,
       false},
      {"Accuracy top-3 + per class", "type: 'Accuracy' accuracy_param { top_k: 3 }", MOKA_TEST,
       {"8,6", "8"}, 2, false, 1, 6, B_EXACT, false},
      {"Accuracy spatial ignore", "type: 'Accuracy' accuracy_param { ignore_label: 1 }",
       MOKA_TEST, {"2,4,3,3", "2,1,3,3"}, 1, false, 1, 4, B_EXACT, false},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

static void test_plumbing(void) {
  const Spec v[] = {
      {"Split x3", "type: 'Split'", MOKA_TRAIN, {"2,3,4,5"}, 3, false, -1, 0, B_EXACT, true},
      /* two tops: one pass each way, float4 (120 values) and scalar (45) */
      {"Split x2", "type: 'Split'", MOKA_TRAIN, {"2,3,4,5"}, 2, false, -1, 0, B_EXACT, true},
      {"Split x2 odd", "type: 'Split'", MOKA_TRAIN, {"1,3,5,3"}, 2, false, -1, 0, B_EXACT, true},
      {"Concat axis 1", "type: 'Concat'", MOKA_TRAIN, {"2,3,4,5", "2,2,4,5", "2,1,4,5"}, 1, false,
       -1, 0, B_EXACT, true},
      {"Concat axis 0", "type: 'Concat' concat_param { axis: 0 }", MOKA_TRAIN,
       {"1,3,2,2", "2,3,2,2"}, 1, false, -1, 0, B_EXACT, true},
      {"Flatten", "type: 'Flatten'", MOKA_TRAIN, {"2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
      {"Dropout TRAIN", "type: 'Dropout' dropout_param { dropout_ratio: 0.3 }", MOKA_TRAIN,
       {"2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
      {"Dropout TRAIN in place", "type: 'Dropout'", MOKA_TRAIN, {"3,7,5"}, 1, true, -1, 0,
       B_EXACT, true},
      {"Dropout TEST", "type: 'Dropout'", MOKA_TEST, {"2,3,4,5"}, 1, false, -1, 0, B_EXACT, true},
  };
  run_specs(v, MOKA_ARRAY_LEN(v));
}

/* A label out of range: the same error as on the CPU, from the device. */
static void test_bad_label(void) {
  const char *text = "name: 'loss' type: 'SoftmaxWithLoss'";
  ProtobufCMessage *m = NULL;
  REQUIRE(prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "t", &m) == 0);
  Blob *x = blob_new("x"), *lab = blob_new("label"), *loss = blob_new("loss");
  int xs[2] = {2, 5}, ls[1] = {2};
  blob_reshape(x, 2, xs);
  blob_reshape(lab, 1, ls);
  lab->data[0] = 1;
  lab->data[1] = 7; /* out of [0, 5) */
  Blob *b[2] = {x, lab};
  Rng r;
  rng_seed(&r, 1);
  Layer *l = layer_create((Caffe__LayerParameter *)m, MOKA_TRAIN, &r, b, 2, &loss, 1);
  REQUIRE(l);
  REQUIRE(blob_alloc_device(x, true, "t") == 0 && blob_alloc_device(lab, true, "t") == 0 &&
          blob_alloc_device(loss, true, "t") == 0);
  REQUIRE(blob_to_device(ctx, x) == 0 && blob_to_device(ctx, lab) == 0);
  l->cuda = ctx;
  CHECK(layer_forward(l, MOKA_BACKEND_CUDA) != 0);
  CHECK_MSG(strstr(moka_error(), "label value 7 at position 1 is out of range [0, 5)") != NULL,
            "message: %s", moka_error());
  CHECK(strstr(moka_error(), "'loss'") != NULL);
  layer_free(l);
  for (int i = 0; i < 3; i++) {
    Blob *q = i == 0 ? x : i == 1 ? lab : loss;
    blob_free_device(q);
    blob_free(q);
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- whole nets against real Caffe -------------------------------------------------------- */

static Net *load(const char *proto, const char *weights, Phase ph) {
  NetOptions o;
  net_options_default(&o);
  o.phase = ph;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1;
  Net *net = net_create_from_file(shared_path(proto), &o);
  if (!net) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  if (weights && net_copy_from_file(net, shared_path(weights))) {
    fprintf(stderr, "    %s\n", moka_error());
    net_free(net);
    return NULL;
  }
  if (net_to_device(net, 0)) {
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
  return 0; /* net_forward copies Input tops to the device */
}

/* Every manifest entry with the prefix whose name is a blob of the net. */
static int compare_manifest(Net *net, const char *manifest, const char *prefix, int *count) {
  ManifestEntry *e;
  int n, ok = 1;
  *count = 0;
  if (manifest_read(shared_path(manifest), &e, &n)) {
    fprintf(stderr, "    %s\n", moka_error());
    return 0;
  }
  for (int i = 0; i < n; i++) {
    const char *name = e[i].name;
    if (*prefix) {
      if (strncmp(name, prefix, strlen(prefix))) continue;
      name += strlen(prefix);
    }
    Blob *b = net_blob(net, name);
    if (!b || !strcmp(name, "input") || !strcmp(name, "data")) continue;
    if (blob_to_host(net->cuda, b)) {
      fprintf(stderr, "    %s\n", moka_error());
      ok = 0;
      continue;
    }
    size_t cnt;
    float *want = read_f32(e[i].file, &cnt);
    if (!want || cnt != b->count) {
      fprintf(stderr, "    %s: missing golden file or size mismatch\n", name);
      ok = 0;
    } else {
      ok &= compare_f32(name, b->data, want, cnt, 1e-4, !strcmp(name, "prob") ? 1e-5 : 0);
    }
    free(want);
    (*count)++;
  }
  manifest_free(e, n);
  return ok;
}

static void mini_resnet(const char *proto, const char *input, const char *prefix, bool cudnn) {
  if (cudnn) setenv("MOKA_CONV_ENGINE", "cudnn", 1);
  Net *net = load(proto, "golden/mini_resnet/weights.caffemodel", MOKA_TEST);
  unsetenv("MOKA_CONV_ENGINE");
  REQUIRE(net);
  REQUIRE(set_input(net, "data", input) == 0);
  float loss;
  REQUIRE(net_forward(net, &loss) == 0);
  int count;
  CHECK(compare_manifest(net, "golden/mini_resnet/manifest.txt", prefix, &count));
  CHECK(count >= 15);
  net_free(net);
}

static void test_mini_resnet_64(void) {
  mini_resnet("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/input.bin", "", false);
}
static void test_mini_resnet_odd(void) {
  mini_resnet("golden/mini_resnet/deploy_67x61.prototxt", "golden/mini_resnet/input_67x61.bin",
              "odd/", false);
}
static void test_mini_resnet_64_cudnn(void) {
  mini_resnet("golden/mini_resnet/deploy.prototxt", "golden/mini_resnet/input.bin", "", true);
}
static void test_mini_resnet_odd_cudnn(void) {
  mini_resnet("golden/mini_resnet/deploy_67x61.prototxt", "golden/mini_resnet/input_67x61.bin",
              "odd/", true);
}

static int set_batch(Net *net, int k) {
  char d[128], l[128];
  snprintf(d, sizeof d, "golden/mini_train/batches/batch%d_data.f32", k);
  snprintf(l, sizeof l, "golden/mini_train/batches/batch%d_label.f32", k);
  return set_input(net, "data", d) || set_input(net, "label", l) ? -1 : 0;
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

/* One TRAIN forward + backward from init.caffemodel on batch 0 (grad_iter0). */
static void test_mini_train_grad0(void) {
  Net *net = load("golden/mini_train/train.prototxt", "golden/mini_train/init.caffemodel",
                  MOKA_TRAIN);
  REQUIRE(net);
  REQUIRE(set_batch(net, 0) == 0);
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
    if (strncmp(name, "grad0/", 6)) continue;
    size_t cnt;
    float *want = read_f32(e[i].file, &cnt);
    CHECK_MSG(want != NULL, "%s", e[i].file);
    if (!want) continue;
    if (!strcmp(name, "grad0/loss")) {
      CHECK_MSG(fabs(loss - want[0]) <= 1e-4, "loss %.8g, Caffe %.8g", loss, want[0]);
      checked++;
    } else if (!strncmp(name, "grad0/blob/", 11)) {
      Blob *b = net_blob(net, name + 11);
      CHECK_MSG(b && b->count == cnt, "%s", name);
      if (b && b->count == cnt && blob_to_host(net->cuda, b) == 0) {
        CHECK(compare_f32(name, b->data, want, cnt, 1e-4, 0));
        checked++;
      }
    } else if (!strncmp(name, "grad0/diff/", 11) || !strncmp(name, "grad0/bnstat/", 13)) {
      const bool diff = name[6] == 'd';
      Blob *b = param_of(net, name + (diff ? 11 : 13));
      CHECK_MSG(b && b->count == cnt, "%s", name);
      if (b && b->count == cnt) {
        /* the conv1 bias gradient is rounding noise: absolute tolerance only */
        const bool noise = !strcmp(name, "grad0/diff/conv1.1");
        CHECK(compare_f32(name, diff ? b->diff : b->data, want, cnt, noise ? 0 : diff ? 1e-3 : 1e-4,
                          noise ? 1e-6 : 0));
        checked++;
      }
    }
    free(want);
  }
  manifest_free(e, n);
  CHECK_MSG(checked >= 40, "only %d golden arrays compared", checked);
  net_free(net);
}

/* The same TRAIN forward + backward on the CPU reference and on the device:
 * the loss, and every parameter gradient and BN statistic (NMSE over the
 * whole flat buffer, and per blob at rtol 1e-3 except the conv1 bias, whose
 * gradient is rounding noise around 0). */
static void test_mini_train_cpu_vs_cuda(void) {
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TRAIN;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1;
  Net *cpu = net_create_from_file(shared_path("golden/mini_train/train.prototxt"), &o);
  REQUIRE(cpu);
  REQUIRE(net_copy_from_file(cpu, shared_path("golden/mini_train/init.caffemodel")) == 0);
  Net *gpu = load("golden/mini_train/train.prototxt", "golden/mini_train/init.caffemodel",
                  MOKA_TRAIN);
  REQUIRE(gpu);
  float lc, lg;
  REQUIRE(set_batch(cpu, 1) == 0 && set_batch(gpu, 1) == 0);
  net_clear_param_diffs(cpu);
  net_clear_param_diffs(gpu);
  REQUIRE(net_forward(cpu, &lc) == 0 && net_backward(cpu) == 0);
  REQUIRE(net_forward(gpu, &lg) == 0 && net_backward(gpu) == 0);
  REQUIRE(net_params_to_host(gpu) == 0 && net_param_diffs_to_host(gpu) == 0);
  CHECK_MSG(fabs(lc - lg) <= 1e-5 * fmax(1.0, fabs(lc)), "loss: CPU %.8g, CUDA %.8g", lc, lg);
  REQUIRE(cpu->param_count == gpu->param_count);
  double worst = 0;
  check_close("all parameter gradients", gpu->param_diff, cpu->param_diff, cpu->param_count,
              B_GEMM, &worst);
  check_close("all parameters and BN statistics", gpu->param_data, cpu->param_data,
              cpu->param_count, B_GEMM, &worst);
  for (int p = 0; p < cpu->n_params; p++) {
    if (!strcmp(cpu->params[p]->name, "conv1.1")) continue;
    CHECK(compare_f32(cpu->params[p]->name, gpu->params[p]->diff, cpu->params[p]->diff,
                      cpu->params[p]->count, 1e-3, 0));
  }
  fprintf(stderr, "    mini_train CPU vs CUDA: loss %.8g vs %.8g, worst NMSE %.2g\n", lc, lg,
          worst);
  net_free(gpu);
  net_free(cpu);
}

/* Six SGD iterations on the device (batch k at iteration k, multistep lr
 * 0.01 / 0.1 at 2 and 4, momentum 0.9, weight decay 5e-4): Caffe's losses
 * and final weights. */
static void test_mini_train_sgd(void) {
  Net *net = load("golden/mini_train/train.prototxt", "golden/mini_train/init.caffemodel",
                  MOKA_TRAIN);
  REQUIRE(net);
  double want_loss[6] = {0};
  FILE *f = fopen(shared_path("golden/mini_train/train_log.txt"), "r");
  REQUIRE(f);
  char line[512];
  int got = 0;
  while (fgets(line, sizeof line, f) && got < 6) {
    int it;
    double lr, lo;
    if (line[0] == '#' || sscanf(line, "%d %lf %lf", &it, &lr, &lo) != 3) continue;
    if (it >= 0 && it < 6) want_loss[it] = lo, got++;
  }
  fclose(f);
  REQUIRE(got == 6);
  for (int k = 0; k < 6; k++) {
    REQUIRE(set_batch(net, k) == 0);
    net_clear_param_diffs(net);
    float loss;
    REQUIRE(net_forward(net, &loss) == 0);
    REQUIRE(net_backward(net) == 0);
    CHECK_MSG(fabs(loss - want_loss[k]) <= 1e-4, "iteration %d: loss %.8g, Caffe %.8g", k, loss,
              want_loss[k]);
    const float rate = k < 2 ? 0.01f : k < 4 ? 0.001f : 0.0001f;
    REQUIRE(net_cuda_sgd_update(net, rate, 0.9f, 0.0005f, false, 1) == 0);
  }
  REQUIRE(net_params_to_host(net) == 0);
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TRAIN;
  o.quiet = true;
  Net *ref = net_create_from_file(shared_path("golden/mini_train/train.prototxt"), &o);
  REQUIRE(ref);
  REQUIRE(net_copy_from_file(
              ref, shared_path("golden/mini_train/snapshots/mini_iter_6.caffemodel")) == 0);
  REQUIRE(ref->n_params == net->n_params);
  for (int p = 0; p < net->n_params; p++) {
    char what[256];
    snprintf(what, sizeof what, "parameter %d (%s) after 6 iterations", p, net->params[p]->name);
    CHECK(net->params[p]->count == ref->params[p]->count &&
          compare_f32(what, net->params[p]->data, ref->params[p]->data, net->params[p]->count,
                      1e-4, 0));
  }
  net_free(ref);
  net_free(net);
}

int main(void) {
  const int g = gpu_test_open(&ctx);
  if (g) return g > 0 ? test_summary() : 1;
  RUN(test_convolution);
  RUN(test_convolution_no_winograd);
  RUN(test_convolution_winograd_wgrad);
  RUN(test_convolution_winograd4);
  RUN(test_convolution_split);
  RUN(test_convolution_chunks);
  RUN(test_batchnorm);
  RUN(test_scale_relu);
  RUN(test_pooling);
  RUN(test_eltwise);
  RUN(test_innerproduct_softmax);
  RUN(test_losses);
  RUN(test_plumbing);
  RUN(test_bad_label);
  RUN(test_mini_resnet_64);
  RUN(test_mini_resnet_odd);
  RUN(test_mini_resnet_64_cudnn);
  RUN(test_mini_resnet_odd_cudnn);
  RUN(test_mini_train_grad0);
  RUN(test_mini_train_cpu_vs_cuda);
  RUN(test_mini_train_sgd);
  moka_cuda_destroy(ctx);
  return test_summary();
}
#endif
