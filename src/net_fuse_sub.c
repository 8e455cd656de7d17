/* net_fuse_sub.c — strided 1x1 convolutions reading one blob share one
 * subsampled copy of it (fast CPU backend; part of the net fusion plan,
 * src/net_fuse.h: SubShare).
 *
 * 1x1 convolutions with a stride and no pad read only every stride-th
 * pixel of their input, and each gathered those pixels twice a step (forward, weight gradient); ResNet's downsampling blocks have
 * two of them on one blob. The plan groups such layers by the blob their
 * data is (a shared Split's bottom) and stride; net_fuse_sub_enter makes
 * the group's subsampled copy before the first member's forward and points
 * each member at it (ConvPriv.sub_x) around its forward and backward, where
 * the layer runs as a 1x1 stride-1 convolution of the copy: the same values
 * into the same GEMMs, so the same results bit for bit. Not for a blob that
 * a later layer writes (Caffe's weight gradient would read the new values).
 */
#include <stdlib.h>
#include <string.h>

#include "layers/convolution_priv.h"
#include "layers/fast_layers.h"
#include "net_fuse.h"
#include "util.h"

/* MOKA_FUSE_SUB=0: every strided 1x1 gathers its own input (A/B). */
static bool sub_env_on(void) {
  const char *e = getenv("MOKA_FUSE_SUB");
  return !(e && strcmp(e, "0") == 0);
}

/* The blob whose data b holds: a shared Split top's bottom, else b. */
static const Blob *data_source(const Net *net, const NetFusePlan *p, const Blob *b) {
  for (int s = 0; s < net->n_layers; s++) {
    const Layer *sl = net->layers[s];
    if (!p->split_share[s]) continue;
    for (int t = 0; t < sl->n_top; t++)
      if (sl->top[t] == b) return sl->bottom[0];
  }
  return b;
}

/* Does a layer after `from` write into b's data (b itself, or a shared
 * Split top of it)? The copy would then go stale before a member's backward
 * (whose weight gradient Caffe takes from the bottom as it is then). */
static bool written_after(const Net *net, const NetFusePlan *p, const Blob *b, int from) {
  for (int j = from + 1; j < net->n_layers; j++) {
    const Layer *l = net->layers[j];
    for (int t = 0; t < l->n_top; t++)
      if (data_source(net, p, l->top[t]) == b) return true;
  }
  return false;
}

int net_fuse_plan_subs(Net *net, NetFusePlan *p) {
  if (!sub_env_on()) return 0;
  p->sub_of = moka_calloc((size_t)net->n_layers, sizeof *p->sub_of);
  p->subs = moka_calloc((size_t)net->n_layers, sizeof *p->subs);
  if (!p->sub_of || !p->subs) return -1;
  for (int i = 0; i < net->n_layers; i++) p->sub_of[i] = -1;
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (strcmp(l->type->name, "Convolution") != 0 || !conv_fast_subsample_applies(l)) continue;
    const ConvPriv *cp = l->priv;
    const Blob *src = data_source(net, p, l->bottom[0]);
    int k = 0;
    while (k < p->n_subs && !(p->subs[k].src == src && p->subs[k].stride_h == cp->stride_h &&
                              p->subs[k].stride_w == cp->stride_w))
      k++;
    if (k == p->n_subs) {
      if (written_after(net, p, src, i)) continue;
      SubShare *g = &p->subs[p->n_subs++];
      g->first = i, g->src = src, g->stride_h = cp->stride_h, g->stride_w = cp->stride_w;
    }
    p->sub_of[i] = k;
  }
  return 0;
}

int net_fuse_sub_enter(Net *net, int i, bool forward) {
  NetFusePlan *p = net->fuse;
  if (!p || p->backend != net->backend || !p->sub_of || p->sub_of[i] < 0) return 0;
  SubShare *g = &p->subs[p->sub_of[i]];
  Layer *l = net->layers[i];
  ConvPriv *cp = l->priv;
  if (l->bottom[0]->host_bf16) { /* MOKA_BF16_ACT: the channels-last layer subsamples itself */
    cp->sub_x = NULL;
    return 0;
  }
  const float *x = l->bottom[0]->data;
  if (forward && i == g->first) {
    const size_t n = (size_t)cp->num * cp->channels * cp->out_h * cp->out_w;
    g->from = NULL;
    if (n > g->cap) {
      float *nb = moka_realloc(g->buf, n * sizeof(float));
      if (!nb) return moka_error_prefix("layer %s: its input subsampled (%zu values)", l->name, n);
      g->buf = nb;
      g->cap = n;
    }
    conv_fast_subsample(l, x, g->buf);
    g->from = x;
  }
  cp->sub_x = g->from && g->from == x ? g->buf : NULL;
  return 0;
}

void net_fuse_sub_leave(Net *net, int i) {
  NetFusePlan *p = net->fuse;
  if (!p || p->backend != net->backend || !p->sub_of || p->sub_of[i] < 0) return;
  ((ConvPriv *)net->layers[i]->priv)->sub_x = NULL;
}
