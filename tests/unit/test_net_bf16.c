/* test_net_bf16.c — the bf16 channels-last activation plan (src/net_bf16.c, MOKA_BF16_ACT)
 * on the host: which blobs of ResNet-50's training net it puts in bf16, checked against
 * what each layer can read (an independent walk over the layers), and the memory plan's
 * sizes for them. No GPU: the nets are built for the CUDA backend (so their chains fuse as
 * on the device) and never moved there.
 *
 * Checks: every Convolution top but conv1's (3 input channels) is bf16, and every chain's
 * blobs and Splits between them; the data, conv1 and its chain, pool1, pool5, fc1000 and
 * the loss stay fp32; every bf16 blob is read and written only by Convolutions that
 * conv_nhwc.cu takes, fused chains, Splits whose gradient a chain sums, and the global AVE
 * pooling; the chains and Splits are all-or-nothing; with --precision fp32, with
 * MOKA_CONV_ENGINE=cudnn or auto, nothing is bf16; the memory plan gives bf16 blobs half
 * the bytes and a smaller arena.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/fast.h"
#include "net.h"
#include "net_bf16.h"
#include "net_fuse.h"
#include "net_memplan.h"
#include "resnet_nets.h"
#include "testlib.h"

static int index_of(const Net *net, const Blob *b) {
  for (int k = 0; k < net->n_blobs; k++)
    if (net->blobs[k] == b) return k;
  return -1;
}

static bool is(const Layer *l, const char *t) { return !strcmp(l->type->name, t); }

static Net *train_net(void) {
  build_backend = MOKA_BACKEND_CUDA;
  Net *net = resnet50_train(4);
  build_backend = MOKA_BACKEND_CPU;
  return net;
}

static void test_resnet50_plan(void) {
  REQUIRE(fast_set_precision("bf16") == 0);
  Net *net = train_net();
  REQUIRE(net);
  REQUIRE(net->fuse && net->fuse->n_chains == 53);
  bool *f = calloc((size_t)net->n_blobs, sizeof *f);
  REQUIRE(f);
  const int n = net_bf16_decide(net, f);
  printf("    ResNet-50 train: %d of %d blobs bf16 channels-last\n", n, net->n_blobs);
  CHECK(n >= 90); /* all but data, label, conv1, pool1 (and its Split), pool5, fc1000, loss */
  const NetFusePlan *fp = net->fuse;
  /* the convolutions' tops */
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    if (!is(l, "Convolution")) continue;
    const bool want = strcmp(l->name, "conv1") != 0;
    CHECK_MSG(f[index_of(net, l->top[0])] == want, "convolution '%s': top bf16 %d, want %d",
              l->name, f[index_of(net, l->top[0])], want);
  }
  static const char *const fp32[] = {"data", "label", "conv1", "pool1", "pool5", "fc1000",
                                     "loss"};
  for (size_t k = 0; k < sizeof fp32 / sizeof fp32[0]; k++) {
    const Blob *b = net_blob(net, fp32[k]);
    REQUIRE(b);
    CHECK_MSG(!f[index_of(net, b)], "blob '%s' should stay fp32", fp32[k]);
  }
  /* chains all-or-nothing */
  for (int k = 0; k < fp->n_chains; k++) {
    const FusedChain *c = &fp->chains[k];
    const bool x = f[index_of(net, c->x)];
    CHECK(f[index_of(net, c->y)] == x);
    if (c->shortcut) CHECK(f[index_of(net, c->shortcut)] == x);
  }
  /* every layer touching a bf16 blob can (the independent walk) */
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    const bool chained = fp->chain_of[i] >= 0;
    for (int pass = 0; pass < 2; pass++) {
      const int m = pass ? l->n_top : l->n_bottom;
      Blob *const *v = pass ? l->top : l->bottom;
      for (int k = 0; k < m; k++) {
        if (!f[index_of(net, v[k])]) continue;
        bool ok = chained || (is(l, "Convolution") && strcmp(l->name, "conv1") != 0);
        if (is(l, "Split")) {
          ok = fp->split_into[i] >= 0;
          for (int t = 0; t < l->n_top; t++)
            ok = ok && f[index_of(net, l->top[t])] == f[index_of(net, l->bottom[0])];
        }
        if (is(l, "Pooling")) ok = pass == 0 && !strcmp(l->name, "pool5");
        CHECK_MSG(ok, "layer '%s' (%s) %s %d '%s' is bf16", l->name, l->type->name,
                  pass ? "top" : "bottom", k, v[k]->name);
      }
    }
  }
  /* the memory plan: half the bytes for bf16 blobs, a smaller arena */
  MemPlan p32, p16;
  REQUIRE(memplan_net(net, NULL, true, &p32) == 0);
  for (int b = 0; b < net->n_blobs; b++) net->blobs[b]->dev_bf16 = f[b];
  REQUIRE(memplan_net(net, NULL, true, &p16) == 0);
  for (int b = 0; b < net->n_blobs; b++) {
    const size_t want = net->blobs[b]->count * (f[b] ? 2 : 4);
    CHECK_MSG(p16.data[b].bytes == want && p16.diff[b].bytes == want,
              "blob '%s': planned %zu / %zu bytes, want %zu", net->blobs[b]->name,
              p16.data[b].bytes, p16.diff[b].bytes, want);
  }
  printf("    arena: %.1f MiB fp32, %.1f MiB with the bf16 blobs\n", p32.arena_bytes / 1048576.0,
         p16.arena_bytes / 1048576.0);
  CHECK(p16.arena_bytes < p32.arena_bytes * 3 / 4);
  for (int b = 0; b < net->n_blobs; b++) net->blobs[b]->dev_bf16 = false;
  memplan_free(&p32);
  memplan_free(&p16);
  free(f);
  net_free(net);
  REQUIRE(fast_set_precision("fp32") == 0);
}

/* The tiny two-block ResNet that test_cuda_fused runs with MOKA_BF16_ACT on the GPU: wide
 * (8 and 16 channels), every activation but the inputs, the pooling's output, the classifier
 * and the loss is bf16 (its first convolution reads the fp32 Input), the Splits a chain sums
 * with it; narrow (5 and 12 channels), nothing. */
static void test_tiny(void) {
  REQUIRE(fast_set_precision("bf16") == 0);
  for (int wide = 0; wide < 2; wide++) {
    char *t = tiny_resnet_text(wide);
    REQUIRE(t);
    build_backend = MOKA_BACKEND_CUDA;
    Net *net = net_from_text(t, MOKA_TRAIN, "tiny");
    build_backend = MOKA_BACKEND_CPU;
    free(t);
    REQUIRE(net);
    REQUIRE(net->fuse && net->fuse->n_chains == 4);
    bool *f = calloc((size_t)net->n_blobs, sizeof *f);
    REQUIRE(f);
    const int n = net_bf16_decide(net, f);
    static const char *const fp32[] = {"data", "label", "pool", "fc", "loss"};
    CHECK_MSG(n == (wide ? net->n_blobs - 5 : 0), "tiny (%s): %d of %d blobs bf16",
              wide ? "wide" : "narrow", n, net->n_blobs);
    for (size_t k = 0; wide && k < sizeof fp32 / sizeof fp32[0]; k++)
      CHECK_MSG(!f[index_of(net, net_blob(net, fp32[k]))], "tiny: '%s' should stay fp32",
                fp32[k]);
    free(f);
    net_free(net);
  }
  REQUIRE(fast_set_precision("fp32") == 0);
}

/* nothing bf16 when the precision is fp32, or the convolutions go to cuDNN / auto */
static void test_nothing_without(void) {
  static const char *const engines[] = {NULL, "cudnn", "auto"};
  for (int k = 0; k < 3; k++) {
    REQUIRE(fast_set_precision(k == 0 ? "fp32" : "bf16") == 0);
    if (engines[k]) setenv("MOKA_CONV_ENGINE", engines[k], 1);
    Net *net = train_net();
    REQUIRE(net);
    bool *f = calloc((size_t)net->n_blobs, sizeof *f);
    REQUIRE(f);
    const int n = net_bf16_decide(net, f);
    CHECK_MSG(n == 0, "%s: %d blobs bf16, want none", engines[k] ? engines[k] : "fp32", n);
    free(f);
    net_free(net);
    unsetenv("MOKA_CONV_ENGINE");
  }
  REQUIRE(fast_set_precision("fp32") == 0);
}

int main(void) {
  RUN(test_resnet50_plan);
  RUN(test_tiny);
  RUN(test_nothing_without);
  return test_summary();
}
