/* net_bf16.c — which activations live as bf16 channels-last on the device (see
 * net_bf16.h). The decision is a union of blobs into groups that must share a format (a
 * fused chain's input, output and shortcut; a Split's bottom and tops), then every blob
 * that some user cannot take in bf16 (or that is not a 4-axis blob with a multiple of 8
 * channels) marks its whole group fp32.
 */
#include "net_bf16.h"

#include <stdlib.h>
#include <string.h>

#include "layers/fast.h"
#include "net_fuse.h"
#include "util.h"

int net_bf16_setting(void) {
  const char *e = getenv("MOKA_BF16_ACT");
  if (!e || !*e) return -1;
  return e[0] == '1' && e[1] == 0;
}

bool net_bf16_wanted(void) { return net_bf16_setting() == 1; }

static int blob_index(const Net *net, const Blob *b) {
  for (int k = 0; k < net->n_blobs; k++)
    if (net->blobs[k] == b) return k;
  return -1;
}

static int find(int *up, int a) {
  while (up[a] != a) a = up[a] = up[up[a]];
  return a;
}

static void join(int *up, int a, int b) {
  if (a < 0 || b < 0) return;
  a = find(up, a);
  b = find(up, b);
  if (a != b) up[a] = b;
}

static void mark(const Net *net, bool *bad, Blob *const *v, int n) {
  for (int k = 0; k < n; k++) {
    const int b = blob_index(net, v[k]);
    if (b >= 0) bad[b] = true;
  }
}

static bool is_type(const Layer *l, const char *name) { return strcmp(l->type->name, name) == 0; }

int net_bf16_decide(const Net *net, bool *bf16) {
  const int B = net->n_blobs;
  int *up = moka_calloc((size_t)B + 1, sizeof *up);
  bool *bad = moka_calloc((size_t)B + 1, sizeof *bad);
  if (!up || !bad) {
    free(up);
    free(bad);
    return -1;
  }
  for (int b = 0; b < B; b++) {
    const Blob *x = net->blobs[b];
    up[b] = b;
    bad[b] = x->num_axes != 4 || x->count == 0 || x->shape[1] % 8 != 0;
  }
  const NetFusePlan *fp = net->fuse;
  const bool cpu = net->backend == MOKA_BACKEND_CPU_FAST;
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    if (fp && fp->chain_of && fp->chain_of[i] >= 0) continue; /* the chain's groups, below */
    if (is_type(l, "Convolution")) {
      bool dgrad = false;
      for (int k = 0; k < l->n_bottom; k++)
        dgrad = dgrad || (net->layer_need_backward[i] && l->propagate_down[k]);
      if (cpu ? conv_cpu_bf16_nhwc_capable(l, dgrad) : conv_bf16_nhwc_capable(l, dgrad)) continue;
    }
    if (is_type(l, "Split") && l->n_bottom == 1) {
      /* on CUDA its backward must be a chain's (or not needed): the Split's own sum is fp32
       * there; the fast CPU backend's sums bf16 gradients too */
      const bool bw = net->layer_need_backward[i] && l->propagate_down[0];
      if (cpu || !bw || (fp && fp->split_into && fp->split_into[i] >= 0)) {
        const int x = blob_index(net, l->bottom[0]);
        for (int t = 0; t < l->n_top; t++) join(up, x, blob_index(net, l->top[t]));
        continue;
      }
    }
    if (is_type(l, "Pooling") &&
        (cpu ? pool_cpu_bf16_nhwc_capable(l) : pool_bf16_nhwc_capable(l))) {
      if (cpu && pool_cpu_bf16_nhwc_top(l)) /* MAX: bf16 in and out, or neither */
        join(up, blob_index(net, l->bottom[0]), blob_index(net, l->top[0]));
      else
        mark(net, bad, l->top, l->n_top); /* its bottom may be bf16, its output is fp32 */
      continue;
    }
    mark(net, bad, l->bottom, l->n_bottom);
    mark(net, bad, l->top, l->n_top);
  }
  for (int k = 0; fp && k < fp->n_chains; k++) {
    const FusedChain *c = &fp->chains[k];
    const int x = blob_index(net, c->x), y = blob_index(net, c->y);
    const int r = c->shortcut ? blob_index(net, c->shortcut) : -1;
    join(up, x, y);
    join(up, x, r);
    if (c->channels % 8 || c->channels > 2048 || x < 0) {
      if (x >= 0) bad[x] = true;
    }
  }
  /* a bad member makes its group bad */
  for (int b = 0; b < B; b++)
    if (bad[b]) bad[find(up, b)] = true;
  int n = 0;
  for (int b = 0; b < B; b++) {
    bf16[b] = !bad[find(up, b)];
    n += bf16[b];
  }
  free(up);
  free(bad);
  return n;
}

/* The flag the net's backend uses: host_bf16 on the fast CPU backend, else dev_bf16. */
static bool *flag_of(const Net *net, Blob *b) {
  return net->backend == MOKA_BACKEND_CPU_FAST ? &b->host_bf16 : &b->dev_bf16;
}

int net_bf16_count(const Net *net) {
  int n = 0;
  for (int b = 0; b < net->n_blobs; b++) n += *flag_of(net, net->blobs[b]);
  return n;
}

int net_bf16_plan(Net *net) {
  const int before = net_bf16_count(net);
  const bool cpu = net->backend == MOKA_BACKEND_CPU_FAST;
  for (int b = 0; b < net->n_blobs; b++) /* both: a net made on one backend may move */
    net->blobs[b]->host_bf16 = net->blobs[b]->dev_bf16 = false;
  /* On: MOKA_BF16_ACT=1; or, on the fast CPU backend, --precision=bf16 unless
   * MOKA_BF16_ACT=0 (measured there: docs/performance.md). */
  const int set = net_bf16_setting();
  if (set == 0 || (set < 0 && !(cpu && fast_precision() == FAST_BF16 && fast_bf16_supported())))
    return 0;
  if (fast_precision() != FAST_BF16)
    return moka_errorf("MOKA_BF16_ACT=1 stores activations in bf16: it needs --precision=bf16 "
                       "(or MOKA_PRECISION=bf16)");
  if (net->debug_info && set == 1)
    return moka_errorf("MOKA_BF16_ACT=1 needs the BatchNorm chains fused, and debug_info runs "
                       "them layer by layer: turn one of the two off (net '%s')",
                       net->name);
  if (net->debug_info) { /* the default: debug_info's per-layer values stay fp32 */
    LOG_INFO("Net '%s': debug_info runs every layer by itself: activations stay fp32", net->name);
    return 0;
  }
  if (cpu && !fast_bf16_supported())
    return moka_errorf("MOKA_BF16_ACT=1 on the CPU needs AVX-512 BF16 instructions (vdpbf16ps), "
                       "which this CPU does not have");
  if ((!cpu && net->backend != MOKA_BACKEND_CUDA) || !net->fuse || net->fuse->n_chains == 0 ||
      net->fuse->backend != net->backend) {
    if (set == 1)
      LOG_INFO("Net '%s': MOKA_BF16_ACT=1, but the net has no fused BatchNorm chains on this "
               "backend: every activation stays fp32",
               net->name);
    return 0;
  }
  bool *f = moka_calloc((size_t)net->n_blobs + 1, sizeof *f);
  if (!f) return -1;
  const int n = net_bf16_decide(net, f);
  if (n < 0) {
    free(f);
    return -1;
  }
  for (int b = 0; b < net->n_blobs; b++) *flag_of(net, net->blobs[b]) = f[b];
  free(f);
  if (n != before)
    LOG_INFO("Net '%s': %d of %d activation blobs as bf16 channels-last %s (%s)", net->name, n,
             net->n_blobs, cpu ? "in memory" : "on the device",
             set == 1 ? "MOKA_BF16_ACT=1" : "--precision=bf16; MOKA_BF16_ACT=0 keeps them fp32");
  return 0;
}

int net_bf16_layer_check(const Layer *l) {
  const char *tn = l->type->name;
  const bool takes = !strcmp(tn, "Convolution") || !strcmp(tn, "Pooling") || !strcmp(tn, "Split");
  if (takes) return 0;
  for (int pass = 0; pass < 2; pass++) {
    const int n = pass == 0 ? l->n_bottom : l->n_top;
    Blob *const *v = pass == 0 ? l->bottom : l->top;
    for (int i = 0; i < n; i++)
      if (v[i]->host_bf16 && v[i]->count)
        return moka_errorf("layer '%s': %s %d ('%s') is a bf16 channels-last blob "
                           "(--precision=bf16; MOKA_BF16_ACT=0 keeps activations fp32), "
                           "which a %s layer does not read (the BatchNorm chains must run "
                           "fused)",
                           l->name, pass == 0 ? "bottom" : "top", i, v[i]->name, tn);
  }
  return 0;
}
