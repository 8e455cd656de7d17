/* net_fuse_bf16.c — the fused chains of the fast CPU backend on bf16 channels-last blobs
 * (--precision=bf16 unless MOKA_BF16_ACT=0, src/net_bf16.h): net_fuse_cpu_forward /
 * _backward hand a chain here when its blobs are bf16, and src/layers/bn_nhwc_cpu.c runs
 * it with the chain's math (src/net_fuse.h) on (N*S, C) bf16 buffers, as net_fuse_cuda.c
 * does on the device. The
 * BatchNorm layer's x_norm buffer (N*C*S floats) keeps x_norm in bf16 (its first half), its
 * mean | var | std block (3C floats) the statistics.
 */
#include "layers/batchnorm_priv.h"
#include "layers/bn_nhwc_cpu.h"
#include "net_fuse.h"
#include "util.h"

/* The chain's blobs are bf16 together, or none is. */
static int chain_formats(const FusedChain *c) {
  const bool x = c->x->host_bf16, y = c->y->host_bf16, r = c->shortcut && c->shortcut->host_bf16;
  if (x != y || (c->shortcut && r != x))
    return moka_errorf("internal error: the fused chain on '%s' has blobs in two formats "
                       "(bf16 channels-last and fp32)",
                       c->x->name);
  return 0;
}

static BnNhwcGeom geom_of(const Net *net, const FusedChain *c) {
  const BatchNormPriv *p = net->layers[c->bn]->priv;
  const size_t m = c->num * c->spatial;
  BnNhwcGeom g = {c->num,
                  c->channels,
                  c->spatial,
                  p->eps,
                  p->maf,
                  m > 1 ? (float)m / (float)(m - 1) : 1.0f,
                  c->use_global_stats,
                  c->has_relu,
                  c->relu_bw,
                  c->slope,
                  c->kind == FUSED_BN_SCALE_ELTWISE ? c->x_bottom : -1};
  return g;
}

int net_fuse_cpu_forward_bf16(Net *net, const FusedChain *c) {
  if (chain_formats(c)) return -1;
  Layer *bn = net->layers[c->bn];
  BatchNormPriv *p = bn->priv;
  const size_t count = c->num * c->channels * c->spatial;
  if (c->keep_xhat && (!p->x_norm || p->x_norm_cap < count))
    return moka_errorf("internal error: BatchNorm '%s' has no x_norm buffer", bn->name);
  float *st = p->mean; /* mean | var | std: one block (batchnorm_priv.h) */
  const BnNhwcGeom g = geom_of(net, c);
  const bool elt = c->kind == FUSED_BN_SCALE_ELTWISE;
  return bn_nhwc_cpu_forward(&g, (const uint16_t *)c->x->data, (uint16_t *)c->x->data,
                          elt ? (uint16_t *)c->y->data : NULL,
                          elt ? (const uint16_t *)c->shortcut->data : NULL,
                          c->keep_xhat ? (uint16_t *)p->x_norm : NULL, st, bn->params[0]->data,
                          bn->params[1]->data, bn->params[2]->data, c->gamma->data,
                          c->beta ? c->beta->data : NULL);
}

int net_fuse_cpu_backward_bf16(Net *net, const FusedChain *c) {
  if (chain_formats(c)) return -1;
  Layer *bn = net->layers[c->bn];
  BatchNormPriv *p = bn->priv;
  const Layer *split = c->split >= 0 ? net->layers[c->split] : NULL;
  if (split && (!split->top[0]->host_bf16 || !split->top[1]->host_bf16))
    return moka_errorf("internal error: the Split after the bf16 chain at layer '%s' is not "
                       "bf16 channels-last",
                       bn->name);
  const float *dy = split ? split->top[0]->diff : c->y->diff;
  const float *dy1 = split ? split->top[1]->diff : NULL;
  const float *st = p->mean; /* mean | var | std: one block (batchnorm_priv.h) */
  const BnNhwcGeom g = geom_of(net, c);
  /* x's diff: BN's dx; not dz where BN has no backward (x_diff_dz: as on the device, that
   * diff is left unwritten: no layer reads it) */
  return bn_nhwc_cpu_backward(
      &g, (const uint16_t *)dy, (const uint16_t *)dy1, (const uint16_t *)c->y->data,
      c->keep_xhat ? (const uint16_t *)p->x_norm : NULL, st, c->gamma->data,
      c->bn_bw ? (uint16_t *)c->x->diff : NULL,
      c->shortcut_bw ? (uint16_t *)c->shortcut->diff : NULL,
      c->want_dgamma ? c->gamma->diff : NULL, c->want_dbeta ? c->beta->diff : NULL);
}
