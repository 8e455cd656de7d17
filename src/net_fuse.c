/* net_fuse.c — finding fusable BatchNorm -> Scale (-> Eltwise SUM) (-> ReLU)
 * chains in a net, and running them on the fast CPU backend (see net_fuse.h
 * for the patterns and the math).
 *
 * Why: unfused, a BN -> Scale -> ReLU chain makes about eight passes over
 * memory in forward (BN reads x and writes y and x_norm; Scale copies its
 * in-place input, reads and writes; ReLU reads and writes) and as many in
 * backward; the residual end adds the Eltwise's read-read-write and its two
 * gradient copies. Fused, forward is the BN statistics (per channel, in
 * cache) and one pass writing x_norm and y; backward is one per-channel
 * reduction pass and one pass writing dx (and the shortcut's gradient).
 *
 * Exactness. Forward makes the unfused fast backend's float operations in
 * the same order (the statistics loops are batchnorm_fast.c's), so its
 * values are bit-identical to the unfused fast path. Backward differs only
 * in its reductions: BatchNorm's sums of dy_bn = float(dz*gamma) and of
 * dy_bn*x_norm become gamma * (sum dz) and gamma * (sum dz*x_norm) in double
 * (one rounding of a product per element fewer), so mean(dy) and
 * mean(dy*x_norm) can differ from the unfused ones by an ulp or so of the
 * sums' magnitudes; every other operation is the same.
 *
 * Split sharing. The plan also marks the net's Split layers whose tops may
 * share their bottom's data (Caffe's ShareData): net_fuse_split_share()
 * points the tops' data at the bottom's before the Split's forward, which
 * then copies nothing (split_fast.c). A top is shared unless some layer
 * computes in place on it (it would overwrite its siblings' values).
 *
 * Strided 1x1 convolutions sharing one subsampled input: net_fuse_sub.c.
 */
#include "net_fuse.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layers/batchnorm_priv.h"
#include "layers/eltwise_priv.h"
#include "layers/fast.h"
#include "layers/scale_priv.h"
#include "util.h"

/* ---- planning --------------------------------------------------------------------- */

static bool is_type(const Layer *l, const char *name) { return strcmp(l->type->name, name) == 0; }

static bool references(const Layer *l, const Blob *b) {
  for (int j = 0; j < l->n_bottom; j++)
    if (l->bottom[j] == b) return true;
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t] == b) return true;
  return false;
}

/* The first layer index >= from that reads or writes b; -1 when none. */
static int next_ref(const Net *net, const Blob *b, int from) {
  for (int i = from; i < net->n_layers; i++)
    if (references(net->layers[i], b)) return i;
  return -1;
}

/* The last layer index < before that reads or writes b; -1 when none. */
static int prev_ref(const Net *net, const Blob *b, int before) {
  for (int i = before - 1; i >= 0; i--)
    if (references(net->layers[i], b)) return i;
  return -1;
}

static bool in_place_on(const Layer *l, const Blob *b) {
  return l->n_bottom == 1 && l->n_top == 1 && l->bottom[0] == b && l->top[0] == b;
}

/* No loss weight, no explicit propagate_down (the backward flags then follow
 * Caffe's rules, which the consistency check below relies on). */
static bool plain_layer(const Layer *l) {
  for (int t = 0; t < l->n_top; t++)
    if (l->loss_weight[t] != 0.0f) return false;
  return l->param->n_propagate_down == 0;
}

static float relu_slope(const Layer *l) {
  return l->param->relu_param ? l->param->relu_param->negative_slope : 0.0f;
}

/* An Eltwise SUM of two distinct blobs, coefficients 1, that x feeds. */
static bool eltwise_candidate(const Layer *e, const Blob *x) {
  if (!is_type(e, "Eltwise") || e->n_bottom != 2 || e->n_top != 1) return false;
  const EltwisePriv *ep = e->priv;
  if (ep->op != CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM) return false;
  if (ep->coeff[0] != 1.0f || ep->coeff[1] != 1.0f) return false;
  if (e->bottom[0] == e->bottom[1]) return false;
  if (e->bottom[0] != x && e->bottom[1] != x) return false;
  const Blob *y = e->top[0];
  return y != e->bottom[0] && y != e->bottom[1] && y->count == x->count;
}

/* The backward flags of a chain from its layers' (Caffe's rules), or false
 * when they are not the consistent pattern those rules give. */
static bool decide_chain_backward(const Net *net, FusedChain *c) {
  const bool *need = net->layer_need_backward;
  const Layer *bn = net->layers[c->bn], *sc = net->layers[c->scale];
  const Layer *relu = c->relu >= 0 ? net->layers[c->relu] : NULL;
  const Layer *elt = c->eltwise >= 0 ? net->layers[c->eltwise] : NULL;
  const bool relu_run = relu && need[c->relu] && relu->propagate_down[0];
  const bool elt_need = elt && need[c->eltwise];
  const bool elt_branch = elt_need && elt->propagate_down[c->x_bottom];
  const bool elt_short = elt_need && elt->propagate_down[1 - c->x_bottom];
  const bool scale_run = need[c->scale];
  const bool scale_pd = scale_run && sc->propagate_down[0];
  const bool bn_run = need[c->bn] && bn->propagate_down[0];
  /* A stage that runs reads the diff the stage above wrote: the stages
   * above must run (and pass the diff down). */
  const bool reaches_scale = (!relu || relu_run) && (!elt || elt_branch);
  if (scale_run && !reaches_scale) return false;
  if (elt_need && relu && !relu_run) return false;
  /* BN runs exactly when the Scale passes its diff down (otherwise the
   * blob's final diff would be the Scale's, which the fused chain does not
   * write). */
  if (bn_run != scale_pd) return false;
  const int bias_idx = ((const ScalePriv *)sc->priv)->bias_idx;
  c->relu_bw = relu_run;
  c->want_dgamma = scale_run && layer_param_needs_grad(sc, 0);
  c->want_dbeta = scale_run && bias_idx >= 0 && layer_param_needs_grad(sc, bias_idx);
  c->bn_bw = bn_run;
  c->shortcut_bw = elt_short;
  /* Without BN's backward, x's diff ends as the last stage that ran left
   * it: the ReLU's masked dy (BN_SCALE) or the Eltwise's copy. */
  c->x_diff_dz = !bn_run && (elt ? elt_branch : relu_run);
  c->need_backward =
      c->want_dgamma || c->want_dbeta || c->bn_bw || c->shortcut_bw || c->x_diff_dz;
  c->keep_xhat = c->want_dgamma || (c->bn_bw && !c->use_global_stats);
  c->stream = fast_avx512_supported();
  return true;
}

/* Try the chain that starts at BatchNorm layer i; true (and *c filled) when
 * it fuses. `taken` marks layers already in a chain. */
static bool find_chain(const Net *net, int i, const bool *taken, FusedChain *c) {
  Layer *bn = net->layers[i];
  if (!is_type(bn, "BatchNorm") || taken[i] || !in_place_on(bn, bn->bottom[0]) || !plain_layer(bn))
    return false;
  Blob *x = bn->bottom[0];
  const int j = next_ref(net, x, i + 1);
  if (j < 0 || taken[j]) return false;
  Layer *sc = net->layers[j];
  if (!is_type(sc, "Scale") || !in_place_on(sc, x) || !plain_layer(sc) || sc->n_params < 1)
    return false;
  memset(c, 0, sizeof *c);
  c->kind = FUSED_BN_SCALE;
  c->bn = i;
  c->scale = j;
  c->eltwise = c->relu = -1;
  c->x = c->y = x;
  const int k = next_ref(net, x, j + 1);
  if (k >= 0 && !taken[k] && is_type(net->layers[k], "ReLU") && in_place_on(net->layers[k], x) &&
      plain_layer(net->layers[k])) {
    c->relu = k;
  } else if (k >= 0 && !taken[k] && eltwise_candidate(net->layers[k], x) &&
             plain_layer(net->layers[k]) && next_ref(net, x, k + 1) < 0) {
    Layer *e = net->layers[k];
    const int xb = e->bottom[0] == x ? 0 : 1;
    Blob *r = e->bottom[1 - xb], *y = e->top[0];
    /* When the shortcut is itself a Scale's output made after this one,
     * the Eltwise goes to that chain (the residual branch, whose Scale
     * comes last in Kaiming's nets). */
    const int rp = prev_ref(net, r, k);
    const bool r_later_scale = rp > j && is_type(net->layers[rp], "Scale");
    if (!r_later_scale) {
      c->kind = FUSED_BN_SCALE_ELTWISE;
      c->eltwise = k;
      c->x_bottom = xb;
      c->shortcut = r;
      c->y = y;
      const int q = next_ref(net, y, k + 1);
      if (q >= 0 && !taken[q] && is_type(net->layers[q], "ReLU") &&
          in_place_on(net->layers[q], y) && plain_layer(net->layers[q]))
        c->relu = q;
    }
  }
  const int last = c->relu >= 0 ? c->relu : c->eltwise >= 0 ? c->eltwise : c->scale;
  c->fwd_at = c->kind == FUSED_BN_SCALE_ELTWISE ? c->eltwise : c->bn;
  c->bwd_at = last;
  /* The shortcut: nobody else touches it while the chain's backward, which
   * runs later than the Eltwise's would, has not yet written its diff. */
  if (c->shortcut) {
    const int rn = next_ref(net, c->shortcut, c->eltwise + 1);
    if (rn >= 0 && rn <= last) return false;
  }
  /* Geometry: BatchNorm's (N, C, S) and a per-channel Scale. */
  const BatchNormPriv *bp = bn->priv;
  const ScalePriv *sp = sc->priv;
  c->num = bp->num;
  c->channels = (size_t)bp->channels;
  c->spatial = bp->spatial;
  if (sc->n_bottom != 1 || sp->outer != c->num || sp->scale_dim != c->channels ||
      sp->inner != c->spatial || sc->params[0]->count != c->channels)
    return false;
  c->gamma = sc->params[0];
  c->beta = NULL;
  if (sp->bias_idx >= 0) {
    if (sp->b_outer != c->num || sp->b_dim != c->channels || sp->b_inner != c->spatial)
      return false;
    c->beta = sc->params[sp->bias_idx];
  }
  if (x->count != c->num * c->channels * c->spatial) return false;
  c->has_relu = c->relu >= 0;
  c->slope = c->has_relu ? relu_slope(net->layers[c->relu]) : 0.0f;
  c->use_global_stats = bp->use_global_stats;
  return decide_chain_backward(net, c);
}

void net_fuse_free(Net *net) {
  NetFusePlan *p = net->fuse;
  if (!p) return;
  free(p->chains);
  free(p->chain_of);
  free(p->split_share);
  free(p->split_into);
  for (int k = 0; k < p->n_subs; k++) free(p->subs[k].buf);
  free(p->subs);
  free(p->sub_of);
  free(p);
  net->fuse = NULL;
}

/* MOKA_FUSE=0 (or "off", "no") turns net-level fusion off. */
static bool fuse_env_on(void) {
  const char *e = getenv("MOKA_FUSE");
  if (!e || !*e) return true;
  return !(strcmp(e, "0") == 0 || strcmp(e, "off") == 0 || strcmp(e, "no") == 0);
}

/* May Split layer s's tops share its bottom's data? Not when some layer
 * writes a top in place (it would change its siblings' values too). */
static bool split_may_share(const Net *net, const Layer *s) {
  for (int t = 0; t < s->n_top; t++) {
    if (s->top[t] == s->bottom[0]) return false;
    for (int i = 0; i < net->n_layers; i++) {
      const Layer *l = net->layers[i];
      if (l == s) continue;
      for (int q = 0; q < l->n_top; q++)
        if (l->top[q] == s->top[t]) return false;
    }
  }
  return true;
}

bool net_fuse_split_may_share(const Net *net, int i) {
  const Layer *s = net->layers[i];
  return is_type(s, "Split") && s->n_bottom == 1 && split_may_share(net, s);
}

/* The Split whose backward chain c can do: right after the chain's last
 * layer (so no other layer's backward runs between the two), its only
 * bottom y, two tops, a plain layer, backward wanted exactly when the
 * chain's (the Split's sum is then the chain's dy, and y's diff, which the
 * chain would read, has no other reader: nothing after the Split touches
 * y). -1 when there is none. */
static int split_after_chain(const Net *net, const FusedChain *c) {
  const int s = c->bwd_at + 1;
  if (!c->need_backward || s >= net->n_layers) return -1;
  const Layer *l = net->layers[s];
  if (!is_type(l, "Split") || l->n_bottom != 1 || l->bottom[0] != c->y || l->n_top != 2 ||
      !plain_layer(l) || l->top[0] == c->y || l->top[1] == c->y)
    return -1;
  if (!net->layer_need_backward[s] || !l->propagate_down[0]) return -1;
  if (next_ref(net, c->y, s + 1) >= 0) return -1;
  return s;
}

int net_fuse_plan(Net *net, bool quiet) {
  net_fuse_free(net);
  bool fast = net->backend == MOKA_BACKEND_CPU_FAST;
#if MOKA_FUSE_CUDA_READY
  fast = fast || net->backend == MOKA_BACKEND_CUDA;
#endif
  if (!fast || !fuse_env_on() || net->n_layers == 0) return 0;
  NetFusePlan *p = moka_calloc(1, sizeof *p);
  if (!p) return -1;
  p->backend = net->backend;
  p->chain_of = moka_calloc((size_t)net->n_layers, sizeof *p->chain_of);
  p->split_share = moka_calloc((size_t)net->n_layers, sizeof *p->split_share);
  p->split_into = moka_calloc((size_t)net->n_layers, sizeof *p->split_into);
  bool *taken = moka_calloc((size_t)net->n_layers, sizeof *taken);
  p->chains = moka_calloc((size_t)net->n_layers, sizeof *p->chains);
  if (!p->chain_of || !p->split_share || !p->split_into || !taken || !p->chains) {
    free(taken);
    net->fuse = p;
    net_fuse_free(net);
    return -1;
  }
  for (int i = 0; i < net->n_layers; i++) p->chain_of[i] = p->split_into[i] = -1;
  p->forward_end = net->n_layers - 1;
  int n_elt = 0, n_split = 0;
  for (int i = 0; i < net->n_layers; i++) {
    FusedChain c;
    if (!find_chain(net, i, taken, &c)) continue;
    const int idx = p->n_chains++;
    p->chains[idx] = c;
    const int members[4] = {c.bn, c.scale, c.eltwise, c.relu};
    for (int m = 0; m < 4; m++)
      if (members[m] >= 0) {
        taken[members[m]] = true;
        p->chain_of[members[m]] = idx;
      }
    n_elt += c.kind == FUSED_BN_SCALE_ELTWISE;
  }
  free(taken);
  /* Split sharing, and Splits summed by the chain before them, are CPU
   * (host memory) matters. */
  if (net->backend == MOKA_BACKEND_CPU_FAST) {
    for (int i = 0; i < net->n_layers; i++)
      if (is_type(net->layers[i], "Split") && split_may_share(net, net->layers[i])) {
        p->split_share[i] = true;
        n_split++;
      }
    for (int k = 0; k < p->n_chains; k++) {
      FusedChain *c = &p->chains[k];
      c->split = -1;
      const int s = split_after_chain(net, c);
      if (s >= 0) {
        c->split = s;
        p->split_into[s] = k;
      }
    }
    if (net_fuse_plan_subs(net, p)) {
      net->fuse = p;
      net_fuse_free(net);
      return -1;
    }
  } else {
    /* CUDA: the Split after a chain summed by the chain's backward too (the device
     * memory plan reads the Split's top diffs at the chain's step, net_memplan.c);
     * MOKA_FUSE_SPLIT=0 leaves those Splits their own backward. */
    const char *e = getenv("MOKA_FUSE_SPLIT");
    const bool on = net->backend == MOKA_BACKEND_CUDA && !(e && e[0] == '0');
    for (int k = 0; k < p->n_chains; k++) {
      FusedChain *c = &p->chains[k];
      c->split = -1;
      const int s = on ? split_after_chain(net, c) : -1;
      if (s >= 0) {
        c->split = s;
        p->split_into[s] = k;
      }
    }
  }
  int n_split_bw = 0;
  for (int k = 0; k < p->n_chains; k++) n_split_bw += p->chains[k].split >= 0;
  int n_sub = 0;
  for (int i = 0; p->sub_of && i < net->n_layers; i++) n_sub += p->sub_of[i] >= 0;
  if (!quiet && (p->n_chains || n_split || n_sub))
    LOG_INFO("%s: %d fused BatchNorm->Scale(->ReLU) chains (%d through Eltwise SUM, %d summing "
             "the Split after them in backward), %d Splits sharing their input, %d strided 1x1 "
             "convolutions reading %d inputs subsampled once (MOKA_FUSE=0: off); `moka time` "
             "shows a chain's forward under its BatchNorm (or its Eltwise), its backward under "
             "its last layer",
             backend_name(net->backend), p->n_chains, n_elt, n_split_bw, n_split, n_sub,
             p->n_subs);
  net->fuse = p;
  return 0;
}

/* ---- roles at run time ------------------------------------------------------------- */

FuseRole net_fuse_forward_role(Net *net, int i, FusedChain **chain) {
  NetFusePlan *p = net->fuse;
  if (!p || p->backend != net->backend || p->chain_of[i] < 0) return FUSE_NONE;
  FusedChain *c = &p->chains[p->chain_of[i]];
  /* The chain's first layer decides for this pass: fused unless debug_info
   * asks for Caffe's per-layer values. */
  if (i == c->bn) c->ran_fused = !net->debug_info && c->fwd_at <= p->forward_end;
  if (!c->ran_fused) return FUSE_NONE;
  *chain = c;
  return i == c->fwd_at ? FUSE_RUN : FUSE_SKIP;
}

FuseRole net_fuse_backward_role(Net *net, int i, FusedChain **chain) {
  NetFusePlan *p = net->fuse;
  if (!p || p->backend != net->backend) return FUSE_NONE;
  if (p->split_into && p->split_into[i] >= 0) { /* a Split the chain before it sums */
    FusedChain *c = &p->chains[p->split_into[i]];
    if (!c->ran_fused) return FUSE_NONE;
    *chain = c;
    return FUSE_SKIP;
  }
  if (p->chain_of[i] < 0) return FUSE_NONE;
  FusedChain *c = &p->chains[p->chain_of[i]];
  if (!c->ran_fused) return FUSE_NONE;
  *chain = c;
  return i == c->bwd_at ? FUSE_RUN : FUSE_SKIP;
}

void net_fuse_split_share(Net *net, int i) {
  NetFusePlan *p = net->fuse;
  if (!p || p->backend != net->backend || !p->split_share || !p->split_share[i]) return;
  Layer *s = net->layers[i];
  for (int t = 0; t < s->n_top; t++) blob_share_data(s->top[t], s->bottom[0]);
}

/* ---- the fast CPU chain ------------------------------------------------------------ */

/* Caffe's ReLU expression (relu.c): max(v,0) + slope*min(v,0). */
static inline float relu_f(float v, float slope) {
  float mx = v < 0.0f ? 0.0f : v;
  float mn = 0.0f < v ? 0.0f : v;
  return mx + slope * mn;
}

/* The element loops come in variants specialised on compile-time flags
 * (always inlined with constant arguments): a test inside the loop, even a
 * loop-invariant one, keeps GCC from vectorising it, and these passes must
 * run at memory speed. */
#define FUSE_INLINE static inline __attribute__((always_inline))

/* Channels per task, forward and backward. A task makes its channels'
 * statistics (forward: channel by channel; backward: the gradient's sums
 * image by image, each channel's planes still added in image order), then
 * writes their planes image by image; the block's planes of one image are
 * one run in memory, so both passes stream. About FUSE_BLOCK_BYTES of each
 * array per task (at batch 8: five channels of 56x56, twenty of 28x28),
 * and at least four tasks per thread. Measured, ResNet-50 b8, the chains'
 * forward + backward per step (the layers named in docs/performance.md):
 * 81.9 ms before (one channel per task from 1024 values a plane, else a
 * second pass over the whole blob in memory order, reading every array
 * from memory twice), 32 KiB blocks 82, 64 KiB 73.7, 128 KiB 71.7,
 * 512 KiB 62-65, 1-2 MiB alike; then the backward sums image by image: 55. */
#define FUSE_BLOCK_BYTES (512 * 1024)
#define FUSE_BLOCK_MAX 256 /* channels per task at most (planes of 64 values or fewer) */

static size_t block_channels(size_t N, size_t C, size_t S) {
  const size_t per = N * S * sizeof(float);
  size_t cb = per >= FUSE_BLOCK_BYTES ? 1 : FUSE_BLOCK_BYTES / per;
  const size_t most = C / (4 * (size_t)fast_threads()); /* tasks >= 4 per thread */
  if (cb > most) cb = most;
  if (cb > FUSE_BLOCK_MAX) cb = FUSE_BLOCK_MAX;
  return cb < 1 ? 1 : cb;
}

/* One (n, c) plane of S values, forward. x (S) in, xn (S) x_norm out (KEEP),
 * out (S) the chain's in-place blob: z, or relu(z) for BN_SCALE (RELU).
 * ELT: r (S) the shortcut, y (S) the Eltwise(/ReLU) output; XFIRST: x is
 * the Eltwise's bottom 0. */
FUSE_INLINE void fwd_plane(const float *x, float *xn, float *out, const float *r, float *y,
                           size_t S, float mu, float sd, float g, float b, float slope,
                           const bool KEEP, const bool BIAS, const bool RELU, const bool ELT,
                           const bool XFIRST) {
#pragma omp simd
  for (size_t s = 0; s < S; s++) {
    const float v = (x[s] - mu) / sd;
    if (KEEP) xn[s] = v;
    float z = v * g;
    if (BIAS) z = z + b;
    if (!ELT) {
      out[s] = RELU ? relu_f(z, slope) : z;
    } else {
      out[s] = z;
      /* The Eltwise's ((0 + 1*b0) + 1*b1) in its bottoms' order. */
      const float sum = XFIRST ? (0.0f + z) + r[s] : (0.0f + r[s]) + z;
      y[s] = RELU ? relu_f(sum, slope) : sum;
    }
  }
}

/* x_norm with non-temporal stores. x_norm is read again only in backward,
 * long after the whole forward has gone through the caches: ordinary
 * stores first read every line of it from memory (write-allocate), a third
 * of the chain's traffic for nothing. Streaming stores write it straight
 * out (ResNet-50 b8 forward, with no x_norm store at all: 175 -> 167 ms).
 * The values are fwd_plane's, by the same float operations in the same
 * order (-std=c11: no contraction): the 16-value body below mirrors the
 * loop, and the unaligned head and the tail run the loop itself. */
#define FUSE_NT_MIN 128 /* planes of fewer values: fwd_plane */

#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

/* relu_f on 16 lanes: (v < 0 ? 0 : v) + slope * (0 < v ? 0 : v). */
FUSE_INLINE __m512 relu_v(__m512 v, __m512 slope) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 mx = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
  const __m512 mn = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(zero, v, _CMP_LT_OQ), v, zero);
  return _mm512_add_ps(mx, _mm512_mul_ps(slope, mn));
}

FUSE_INLINE void fwd_plane_nt(const float *x, float *xn, float *out, const float *r, float *y,
                              size_t S, float mu, float sd, float g, float b, float slope,
                              const bool BIAS, const bool RELU, const bool ELT,
                              const bool XFIRST) {
  size_t h = (size_t)((-(uintptr_t)xn) & 63) / sizeof(float); /* to xn's next 64-byte line */
  if (h > S) h = S;
  fwd_plane(x, xn, out, r, y, h, mu, sd, g, b, slope, true, BIAS, RELU, ELT, XFIRST);
  const __m512 vmu = _mm512_set1_ps(mu), vsd = _mm512_set1_ps(sd), vg = _mm512_set1_ps(g);
  const __m512 vb = _mm512_set1_ps(b), vsl = _mm512_set1_ps(slope), zero = _mm512_setzero_ps();
  size_t s = h;
  for (; s + 16 <= S; s += 16) {
    const __m512 v = _mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + s), vmu), vsd);
    _mm512_stream_ps(xn + s, v);
    __m512 z = _mm512_mul_ps(v, vg);
    if (BIAS) z = _mm512_add_ps(z, vb);
    if (!ELT) {
      _mm512_storeu_ps(out + s, RELU ? relu_v(z, vsl) : z);
    } else {
      _mm512_storeu_ps(out + s, z);
      const __m512 rs = _mm512_loadu_ps(r + s);
      const __m512 sum = XFIRST ? _mm512_add_ps(_mm512_add_ps(zero, z), rs)
                                : _mm512_add_ps(_mm512_add_ps(zero, rs), z);
      _mm512_storeu_ps(y + s, RELU ? relu_v(sum, vsl) : sum);
    }
  }
  if (s < S)
    fwd_plane(x + s, xn + s, out + s, ELT ? r + s : NULL, ELT ? y + s : NULL, S - s, mu, sd, g, b,
              slope, true, BIAS, RELU, ELT, XFIRST);
  _mm_sfence(); /* the streamed lines out before anything after this plane */
}

/* forward_plane's variants that keep x_norm (K = 1), streaming it. */
static void forward_plane_nt(const FusedChain *c, const float *x, float *xn, float *out,
                             const float *r, float *y, size_t S, float mu, float sd, float g,
                             float b) {
  const float sl = c->slope;
  const int v = (c->beta != NULL) << 3 | c->has_relu << 2 |
                (c->kind == FUSED_BN_SCALE_ELTWISE) << 1 | (c->x_bottom == 0);
#define FWD(B, R, E, F) \
  case (B << 3 | R << 2 | E << 1 | F): \
    fwd_plane_nt(x, xn, out, r, y, S, mu, sd, g, b, sl, B, R, E, F); \
    return;
#define FWD_B(B) FWD(B, 0, 0, 0) FWD(B, 0, 0, 1) FWD(B, 1, 0, 0) FWD(B, 1, 0, 1) \
  FWD(B, 0, 1, 0) FWD(B, 0, 1, 1) FWD(B, 1, 1, 0) FWD(B, 1, 1, 1)
  switch (v) {
    FWD_B(0)
    FWD_B(1)
    default: return;
  }
#undef FWD_B
#undef FWD
}

#pragma GCC pop_options

/* Dispatch to the variant for chain c. */
static void forward_plane(const FusedChain *c, const float *x, float *xn, float *out,
                          const float *r, float *y, size_t S, float mu, float sd, float g,
                          float b) {
  if (xn && S >= FUSE_NT_MIN && c->stream) {
    forward_plane_nt(c, x, xn, out, r, y, S, mu, sd, g, b);
    return;
  }
  const float sl = c->slope;
  const int v = (xn != NULL) << 4 | (c->beta != NULL) << 3 | c->has_relu << 2 |
                (c->kind == FUSED_BN_SCALE_ELTWISE) << 1 | (c->x_bottom == 0);
#define FWD(K, B, R, E, F) \
  case (K << 4 | B << 3 | R << 2 | E << 1 | F): \
    fwd_plane(x, xn, out, r, y, S, mu, sd, g, b, sl, K, B, R, E, F); \
    return;
#define FWD_KB(K, B) FWD(K, B, 0, 0, 0) FWD(K, B, 0, 0, 1) FWD(K, B, 1, 0, 0) FWD(K, B, 1, 0, 1) \
  FWD(K, B, 0, 1, 0) FWD(K, B, 0, 1, 1) FWD(K, B, 1, 1, 0) FWD(K, B, 1, 1, 1)
  switch (v) {
    FWD_KB(0, 0)
    FWD_KB(0, 1)
    FWD_KB(1, 0)
    FWD_KB(1, 1)
    default: return;
  }
#undef FWD_KB
#undef FWD
}

int net_fuse_cpu_forward(Net *net, const FusedChain *c) {
  if (c->x->host_bf16 || c->y->host_bf16) return net_fuse_cpu_forward_bf16(net, c);
  Layer *bn = net->layers[c->bn];
  BatchNormPriv *p = bn->priv;
  const size_t N = p->num, C = (size_t)p->channels, S = p->spatial;
  if (N != c->num || C != c->channels || S != c->spatial)
    return moka_errorf("internal error: fused chain at layer '%s' planned for (%zu,%zu,%zu), "
                       "now (%zu,%zu,%zu): re-plan after reshaping",
                       bn->name, c->num, c->channels, c->spatial, N, C, S);
  const float *x = c->x->data;  /* (N,C,S) BN's input */
  float *xz = c->x->data;       /* (N,C,S) in place: relu(z) (BN_SCALE) or z (ELTWISE) */
  float *xn = c->keep_xhat ? p->x_norm : NULL; /* (N,C,S) x_norm for backward */
  const float *r = c->shortcut ? c->shortcut->data : NULL; /* (N,C,S) */
  float *y = c->kind == FUSED_BN_SCALE_ELTWISE ? c->y->data : NULL; /* (N,C,S) */
  const float *g = c->gamma->data;                     /* (C) */
  const float *be = c->beta ? c->beta->data : NULL;    /* (C) */
  float *b0 = bn->params[0]->data, *b1 = bn->params[1]->data, *b2 = bn->params[2]->data;
  const size_t count = N * C * S;
  (void)count; /* read only by the OpenMP if clause */

  if (c->use_global_stats) {
    const float f = b2[0] == 0 ? 0.0f : 1.0f / b2[0];
    for (size_t ch = 0; ch < C; ch++) {
      p->mean[ch] = f * b0[ch];
      p->var[ch] = f * b1[ch];
      p->std[ch] = sqrtf(p->var[ch] + p->eps);
    }
#pragma omp parallel for collapse(2) schedule(static) if (count >= FAST_GRAIN)
    for (size_t n = 0; n < N; n++)
      for (size_t ch = 0; ch < C; ch++) {
        const size_t o = (n * C + ch) * S;
        forward_plane(c, x + o, xn ? xn + o : NULL, xz + o, r ? r + o : NULL, y ? y + o : NULL,
                      S, p->mean[ch], p->std[ch], g[ch], be ? be[ch] : 0.0f);
      }
    return 0;
  }

  /* Batch statistics: bn_fast_channel_stats, as batchnorm_fast.c (the same
   * sums, so the same mean and variance), channel by channel (its loads
   * prefetch across a channel's planes; image by image over the block, the
   * same sums, measured no faster), then the block's planes image by image
   * while still in cache (block_channels). */
  const size_t m = N * S;
  const size_t cb = block_channels(N, C, S), n_blocks = (C + cb - 1) / cb;
#pragma omp parallel for schedule(dynamic, 1) if (count >= FAST_GRAIN)
  for (size_t bk = 0; bk < n_blocks; bk++) {
    const size_t c0 = bk * cb, c1 = c0 + cb < C ? c0 + cb : C;
    for (size_t ch = c0; ch < c1; ch++)
      bn_fast_channel_stats(x, N, C, S, ch, p->eps, &p->mean[ch], &p->var[ch], &p->std[ch]);
    for (size_t n = 0; n < N; n++)
      for (size_t ch = c0; ch < c1; ch++) {
        const size_t o = (n * C + ch) * S;
        forward_plane(c, x + o, xn ? xn + o : NULL, xz + o, r ? r + o : NULL, y ? y + o : NULL,
                      S, p->mean[ch], p->std[ch], g[ch], be ? be[ch] : 0.0f);
      }
  }
  /* Running statistics, as BatchNorm. */
  const float bias_correction = m > 1 ? (float)m / (float)(m - 1) : 1.0f;
  b2[0] = b2[0] * p->maf + 1.0f;
  for (size_t ch = 0; ch < C; ch++) {
    b0[ch] = p->maf * b0[ch] + p->mean[ch];
    b1[ch] = p->maf * b1[ch] + bias_correction * p->var[ch];
  }
  return 0;
}

/* dz = dy * ReLU's factor of y (MASK) or dy. */
FUSE_INLINE float relu_grad(float dy, float y, float f_pos, float f_neg, float f_nan,
                            const bool MASK) {
  if (!MASK) return dy;
  const float f = y > 0 ? f_pos : f_nan;
  return dy * (y <= 0 ? f_neg : f);
}

/* The chain output's gradient at s: dy, or (TWO) the Split's sum of its
 * two tops' diffs, dy + dy1 as split_fast.c adds them. */
FUSE_INLINE float dy_at(const float *dy, const float *dy1, size_t s, const bool TWO) {
  return TWO ? dy[s] + dy1[s] : dy[s];
}

/* Backward pass 1 over one plane: the channel's sums of dz and dz*x_norm. */
FUSE_INLINE void bwd_sums(const float *dy, const float *dy1, const float *y, const float *xn,
                          size_t S, float f_pos, float f_neg, float f_nan, double *sdz_out,
                          double *sdzx_out, const bool MASK, const bool TWO) {
  double sdz = 0, sdzx = 0;
#pragma omp simd reduction(+ : sdz, sdzx)
  for (size_t s = 0; s < S; s++) {
    const float dz = relu_grad(dy_at(dy, dy1, s, TWO), y[s], f_pos, f_neg, f_nan, MASK);
    sdz += dz;
    sdzx += (double)dz * (double)xn[s];
  }
  *sdz_out += sdz;
  *sdzx_out += sdzx;
}

/* Backward pass 2 over one plane: dr = dz (DR); dx by XMODE: 0 none, 1 dz
 * itself, 2 BatchNorm TRAIN, 3 BatchNorm global statistics. dx may be dy. */
FUSE_INLINE void bwd_write(const float *dy, const float *dy1, const float *y, const float *xn,
                           float *dr, float *dx, size_t S, float f_pos, float f_neg, float f_nan,
                           float gc, float sd, float mean_a, float mean_b, const bool MASK,
                           const bool DR, const int XMODE, const bool TWO) {
#pragma omp simd
  for (size_t s = 0; s < S; s++) {
    const float dz = relu_grad(dy_at(dy, dy1, s, TWO), y[s], f_pos, f_neg, f_nan, MASK);
    if (DR) dr[s] = dz;
    if (XMODE == 1) dx[s] = dz;
    if (XMODE == 2) dx[s] = (dz * gc - mean_a - mean_b * xn[s]) / sd;
    if (XMODE == 3) dx[s] = (dz * gc) / sd;
  }
}

/* The shortcut's gradient dr with non-temporal stores: it is read next by
 * the backward of the layer before the shortcut, after a whole branch's
 * backward (three convolutions) has gone through the caches (ResNet-50 b8,
 * with no dr store at all: backward -6 ms). The body mirrors bwd_write's
 * float operations in order; head and tail run bwd_write. */
#pragma GCC push_options
#pragma GCC target("avx512f")

FUSE_INLINE void bwd_write_nt(const float *dy, const float *dy1, const float *y, const float *xn,
                              float *dr, float *dx, size_t S, float f_pos, float f_neg,
                              float f_nan, float gc, float sd, float mean_a, float mean_b,
                              const bool MASK, const int XMODE, const bool TWO) {
  size_t h = (size_t)((-(uintptr_t)dr) & 63) / sizeof(float); /* to dr's next 64-byte line */
  if (h > S) h = S;
  bwd_write(dy, dy1, y, xn, dr, dx, h, f_pos, f_neg, f_nan, gc, sd, mean_a, mean_b, MASK, true,
            XMODE, TWO);
  const __m512 zero = _mm512_setzero_ps(), vpos = _mm512_set1_ps(f_pos);
  const __m512 vneg = _mm512_set1_ps(f_neg), vnan = _mm512_set1_ps(f_nan);
  const __m512 vgc = _mm512_set1_ps(gc), vsd = _mm512_set1_ps(sd);
  const __m512 va = _mm512_set1_ps(mean_a), vb = _mm512_set1_ps(mean_b);
  size_t s = h;
  for (; s + 16 <= S; s += 16) {
    __m512 dz = _mm512_loadu_ps(dy + s);
    if (TWO) dz = _mm512_add_ps(dz, _mm512_loadu_ps(dy1 + s));
    if (MASK) { /* relu_grad: dy * (y <= 0 ? f_neg : y > 0 ? f_pos : f_nan) */
      const __m512 yv = _mm512_loadu_ps(y + s);
      const __m512 f = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(yv, zero, _CMP_GT_OQ), vnan, vpos);
      dz = _mm512_mul_ps(dz, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(yv, zero, _CMP_LE_OQ), f, vneg));
    }
    _mm512_stream_ps(dr + s, dz);
    if (XMODE == 1) _mm512_storeu_ps(dx + s, dz);
    if (XMODE == 2)
      _mm512_storeu_ps(dx + s, _mm512_div_ps(_mm512_sub_ps(_mm512_sub_ps(_mm512_mul_ps(dz, vgc), va),
                                                           _mm512_mul_ps(vb, _mm512_loadu_ps(xn + s))),
                                             vsd));
    if (XMODE == 3) _mm512_storeu_ps(dx + s, _mm512_div_ps(_mm512_mul_ps(dz, vgc), vsd));
  }
  if (s < S)
    bwd_write(dy + s, TWO ? dy1 + s : NULL, MASK ? y + s : NULL, XMODE == 2 ? xn + s : NULL,
              dr + s, XMODE ? dx + s : NULL, S - s, f_pos, f_neg, f_nan, gc, sd, mean_a, mean_b,
              MASK, true, XMODE, TWO);
  _mm_sfence(); /* the streamed lines out before anything after this plane */
}

/* backward_write's variants with a shortcut gradient (D = 1), streaming it. */
static void backward_write_nt(const float *dy, const float *dy1, const float *y, const float *xn,
                              float *dr, float *dx, size_t S, float f_pos, float f_neg,
                              float f_nan, float gc, float sd, float mean_a, float mean_b,
                              bool mask, int xmode) {
#define BW(T, M, X) \
  case (T << 3 | M << 2 | X): \
    bwd_write_nt(dy, dy1, y, xn, dr, dx, S, f_pos, f_neg, f_nan, gc, sd, mean_a, mean_b, M, X, T); \
    return;
#define BW_TM(T, M) BW(T, M, 0) BW(T, M, 1) BW(T, M, 2) BW(T, M, 3)
  switch ((dy1 != NULL) << 3 | mask << 2 | xmode) {
    BW_TM(0, 0)
    BW_TM(0, 1)
    BW_TM(1, 0)
    BW_TM(1, 1)
    default: return;
  }
#undef BW_TM
#undef BW
}

#pragma GCC pop_options

static void backward_write(const float *dy, const float *dy1, const float *y, const float *xn,
                           float *dr, float *dx, size_t S, float f_pos, float f_neg, float f_nan,
                           float gc, float sd, float mean_a, float mean_b, bool mask, int xmode,
                           bool stream) {
  if (stream && dr && S >= FUSE_NT_MIN) {
    backward_write_nt(dy, dy1, y, xn, dr, dx, S, f_pos, f_neg, f_nan, gc, sd, mean_a, mean_b, mask,
                      xmode);
    return;
  }
#define BW(T, M, D, X) \
  case (T << 4 | M << 3 | D << 2 | X): \
    bwd_write(dy, dy1, y, xn, dr, dx, S, f_pos, f_neg, f_nan, gc, sd, mean_a, mean_b, M, D, X, \
              T); \
    return;
#define BW_MD(T, M, D) BW(T, M, D, 0) BW(T, M, D, 1) BW(T, M, D, 2) BW(T, M, D, 3)
  switch ((dy1 != NULL) << 4 | mask << 3 | (dr != NULL) << 2 | xmode) {
    BW_MD(0, 0, 0)
    BW_MD(0, 0, 1)
    BW_MD(0, 1, 0)
    BW_MD(0, 1, 1)
    BW_MD(1, 0, 0)
    BW_MD(1, 0, 1)
    BW_MD(1, 1, 0)
    BW_MD(1, 1, 1)
    default: return;
  }
#undef BW_MD
#undef BW
}

int net_fuse_cpu_backward(Net *net, const FusedChain *c) {
  if (!c->need_backward) return 0;
  if (c->x->host_bf16 || c->y->host_bf16) return net_fuse_cpu_backward_bf16(net, c);
  Layer *bn = net->layers[c->bn];
  BatchNormPriv *p = bn->priv;
  const size_t N = c->num, C = c->channels, S = c->spatial;
  /* (N,C,S) the chain output's gradient: y's diff, or the sum of the diffs
   * of the Split's two tops (dy + dy1) when the chain does its backward. */
  const Layer *split = c->split >= 0 ? net->layers[c->split] : NULL;
  const float *dy = split ? split->top[0]->diff : c->y->diff;
  const float *dy1 = split ? split->top[1]->diff : NULL;
  const float *yv = c->y->data;  /* (N,C,S) the chain output (the ReLU mask) */
  const float *xn = p->x_norm;   /* (N,C,S) */
  /* x's diff: BN's dx (bn_bw), or dz itself (x_diff_dz), or nothing. */
  float *dx = c->bn_bw || c->x_diff_dz ? c->x->diff : NULL; /* (N,C,S), may be dy */
  const int xmode = c->x_diff_dz ? 1 : !c->bn_bw ? 0 : c->use_global_stats ? 3 : 2;
  float *dr = c->shortcut_bw ? c->shortcut->diff : NULL;   /* (N,C,S) */
  const float *g = c->gamma->data;                         /* (C) */
  float *dg = c->want_dgamma ? c->gamma->diff : NULL;      /* (C) */
  float *db = c->want_dbeta ? c->beta->diff : NULL;        /* (C) */
  const bool masked = c->relu_bw;
  /* ReLU's factor for y > 0, y <= 0 and NaN, with relu_fast.c's float
   * operations (the reference's (y > 0) + slope*(y <= 0)). */
  const float slope = c->slope;
  const float f_pos = 1.0f + slope * 0.0f, f_neg = 0.0f + slope * 1.0f,
              f_nan = 0.0f + slope * 0.0f;
  const bool sums = dg || db || xmode == 2;
  const double inv_m = 1.0 / (double)(N * S);
  const size_t count = N * C * S;
  (void)count; /* read only by the OpenMP if clause */
  /* Per block of channels (block_channels): the sums channel by channel,
   * then the planes image by image while still in cache. */
  const size_t cb = block_channels(N, C, S), n_blocks = (C + cb - 1) / cb;
#pragma omp parallel for schedule(dynamic, 1) if (count >= FAST_GRAIN)
  for (size_t bk = 0; bk < n_blocks; bk++) {
    const size_t c0 = bk * cb, c1 = c0 + cb < C ? c0 + cb : C;
    const size_t nb = c1 - c0;
    /* The sums in image order, the block's planes of an image one run; each
     * channel's planes still add up in the order n = 0, 1, ... */
    double sdz[FUSE_BLOCK_MAX] = {0}, sdzx[FUSE_BLOCK_MAX] = {0};
    if (sums)
      for (size_t n = 0; n < N; n++)
        for (size_t k = 0; k < nb; k++) {
          const size_t o = (n * C + c0 + k) * S;
          const float *d1 = dy1 ? dy1 + o : NULL;
          double *a = &sdz[k], *b = &sdzx[k];
          if (dy1 && masked)
            bwd_sums(dy + o, d1, yv + o, xn + o, S, f_pos, f_neg, f_nan, a, b, true, true);
          else if (dy1)
            bwd_sums(dy + o, d1, yv + o, xn + o, S, f_pos, f_neg, f_nan, a, b, false, true);
          else if (masked)
            bwd_sums(dy + o, d1, yv + o, xn + o, S, f_pos, f_neg, f_nan, a, b, true, false);
          else
            bwd_sums(dy + o, d1, yv + o, xn + o, S, f_pos, f_neg, f_nan, a, b, false, false);
        }
    float terms[2 * FUSE_BLOCK_MAX]; /* mean_a | mean_b of the block's channels */
    for (size_t k = 0; k < nb; k++) {
      const size_t ch = c0 + k;
      if (dg) dg[ch] += (float)sdzx[k];
      if (db) db[ch] += (float)sdz[k];
      const float gc = g[ch];
      terms[k] = (float)((double)gc * sdz[k] * inv_m);
      terms[FUSE_BLOCK_MAX + k] = (float)((double)gc * sdzx[k] * inv_m);
    }
    if (!dx && !dr) continue;
    /* Each element reads dy[i] before dx[i] (possibly the same memory) is
     * written. */
    for (size_t n = 0; n < N; n++)
      for (size_t ch = c0; ch < c1; ch++) {
        const size_t o = (n * C + ch) * S;
        backward_write(dy + o, dy1 ? dy1 + o : NULL, yv + o, xn + o, dr ? dr + o : NULL,
                       dx ? dx + o : NULL, S, f_pos, f_neg, f_nan, g[ch], p->std[ch],
                       terms[ch - c0], terms[FUSE_BLOCK_MAX + ch - c0], masked, xmode, c->stream);
      }
  }
  return 0;
}
