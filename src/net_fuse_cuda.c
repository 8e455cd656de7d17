/* net_fuse_cuda.c — the CUDA backend's fused BatchNorm -> Scale [-> Eltwise SUM]
 * [-> ReLU] chains (src/net_fuse.h has the detection and the math): one call of
 * kernels/bn_fused.cu per chain and direction, on the blobs' device memory and the
 * BatchNorm layer's device buffers (BatchNormPriv: dev_x_norm for backward, dev_stats =
 * mean | var | std), so that an unfused backward after a fused forward (or the other way
 * round) finds what it expects. Scratch (the per-block partial sums) comes from the
 * context's shared workspace. Compiled only in CUDA builds.
 */
#ifdef MOKA_WITH_CUDA

#include "net_fuse.h"

#include "layers/batchnorm_priv.h"
#include "moka_cuda.h"
#include "util.h"

/* The chain's blobs must be on the device; the BatchNorm priv's geometry must be the
 * one the chain was planned for. */
static int chain_ready(const Net *net, const FusedChain *c, bool diffs) {
  if (!net->cuda) return moka_errorf("the net is not on a CUDA device (net_to_device)");
  const Layer *bn = net->layers[c->bn];
  const BatchNormPriv *p = bn->priv;
  if (p->num != c->num || (size_t)p->channels != c->channels || p->spatial != c->spatial)
    return moka_errorf("internal error: fused chain at layer '%s' planned for (%zu,%zu,%zu), "
                       "now (%zu,%d,%zu): re-plan after reshaping",
                       bn->name, c->num, c->channels, c->spatial, p->num, p->channels,
                       p->spatial);
  const Blob *blobs[3] = {c->x, c->y, c->shortcut};
  for (int k = 0; k < 3; k++) {
    const Blob *b = blobs[k];
    if (!b || !b->count) continue;
    if (!b->dev_data || (diffs && !b->dev_diff))
      return moka_errorf("blob '%s' has no device %s", b->name, b->dev_data ? "diff" : "data");
  }
  if (!c->gamma->dev_data || (c->beta && !c->beta->dev_data))
    return moka_errorf("the Scale's parameters are not on the device");
  return 0;
}

static MokaBnFusedGeom geom_of(const Net *net, const FusedChain *c) {
  const BatchNormPriv *p = net->layers[c->bn]->priv;
  const size_t m = c->num * c->spatial;
  MokaBnFusedGeom g = {
      .N = c->num,
      .C = c->channels,
      .S = c->spatial,
      .eps = p->eps,
      .maf = p->maf,
      .bias_correction = m > 1 ? (float)m / (float)(m - 1) : 1.0f, /* as batchnorm.c */
      .use_global = c->use_global_stats,
      .has_relu = c->has_relu,
      .relu_bw = c->relu_bw,
      .slope = c->slope,
      .residual = c->kind == FUSED_BN_SCALE_ELTWISE ? c->x_bottom : -1,
  };
  return g;
}

/* MOKA_BF16_ACT (src/net_bf16.h): the chain's blobs are bf16 channels-last together, or
 * none is; kernels/bn_nhwc.cu then runs it. */
static int chain_bf16(const FusedChain *c, bool *on) {
  const bool x = c->x->dev_bf16, y = c->y->dev_bf16, r = c->shortcut && c->shortcut->dev_bf16;
  *on = x;
  if (x != y || (c->shortcut && r != x))
    return moka_errorf("internal error: the fused chain on '%s' has blobs in two formats "
                       "(bf16 channels-last and fp32)",
                       c->x->name);
  return 0;
}

int net_fuse_cuda_forward(Net *net, const FusedChain *c) {
  if (chain_ready(net, c, false)) return -1;
  Layer *bn = net->layers[c->bn];
  BatchNormPriv *p = bn->priv;
  const MokaBnFusedGeom g = geom_of(net, c);
  const size_t count = c->x->count;
  bool half;
  if (chain_bf16(c, &half)) return -1;
  if (half) {
    const bool elt = c->kind == FUSED_BN_SCALE_ELTWISE;
    void *ws = NULL;
    if (moka_devbuf_reserve(&p->dev_stats, 3 * g.C * sizeof(float), "BatchNorm statistics") ||
        (c->keep_xhat && moka_devbuf_reserve(&p->dev_x_norm, count * sizeof(moka_bf16),
                                             "BatchNorm normalised output (bf16)")) ||
        moka_cuda_workspace(net->cuda, moka_cuda_bn_nhwc_scratch_bytes(&g),
                            "fused BatchNorm partial sums", &ws))
      return -1;
    return moka_cuda_bn_nhwc_forward(
        net->cuda->stream, &g, (const moka_bf16 *)c->x->dev_data, (moka_bf16 *)c->x->dev_data,
        elt ? (moka_bf16 *)c->y->dev_data : NULL,
        elt ? (const moka_bf16 *)c->shortcut->dev_data : NULL,
        c->keep_xhat ? (moka_bf16 *)p->dev_x_norm.ptr : NULL, p->dev_stats.ptr,
        bn->params[0]->dev_data, bn->params[1]->dev_data, bn->params[2]->dev_data,
        c->gamma->dev_data, c->beta ? c->beta->dev_data : NULL, ws);
  }
  if (moka_devbuf_reserve(&p->dev_stats, 3 * g.C * sizeof(float), "BatchNorm statistics") ||
      (c->keep_xhat && moka_devbuf_reserve(&p->dev_x_norm, count * sizeof(float),
                                           "BatchNorm normalised output")))
    return -1;
  void *ws = NULL;
  if (moka_cuda_workspace(net->cuda, moka_cuda_bn_fused_scratch_bytes(&g),
                          "fused BatchNorm partial sums", &ws))
    return -1;
  const bool elt = c->kind == FUSED_BN_SCALE_ELTWISE;
  return moka_cuda_bn_fused_forward(
      net->cuda->stream, &g, c->x->dev_data /* (N,C,S) */, c->x->dev_data /* in place */,
      elt ? c->y->dev_data : NULL, elt ? c->shortcut->dev_data : NULL,
      c->keep_xhat ? p->dev_x_norm.ptr : NULL, p->dev_stats.ptr, bn->params[0]->dev_data,
      bn->params[1]->dev_data, bn->params[2]->dev_data, c->gamma->dev_data,
      c->beta ? c->beta->dev_data : NULL, ws);
}

int net_fuse_cuda_backward(Net *net, const FusedChain *c) {
  if (!c->need_backward) return 0;
  if (chain_ready(net, c, true)) return -1;
  BatchNormPriv *p = net->layers[c->bn]->priv;
  const MokaBnFusedGeom g = geom_of(net, c);
  const bool sums = c->want_dgamma || c->want_dbeta || (c->bn_bw && !c->use_global_stats);
  if (sums && !c->keep_xhat)
    return moka_errorf("internal error: fused chain needs x_norm in backward but did not keep it");
  if ((sums || c->bn_bw) && !p->dev_stats.ptr)
    return moka_errorf("backward before forward on the device");
  if (c->keep_xhat && !p->dev_x_norm.ptr)
    return moka_errorf("backward before forward on the device");
  bool half;
  if (chain_bf16(c, &half)) return -1;
  void *ws = NULL;
  if (moka_cuda_workspace(net->cuda,
                          half ? moka_cuda_bn_nhwc_scratch_bytes(&g)
                               : moka_cuda_bn_fused_scratch_bytes(&g),
                          "fused BatchNorm partial sums", &ws))
    return -1;
  /* dy: y's diff, or the sum of the diffs of the Split's two tops when the chain does the
   * Split's backward (c->split) */
  const Layer *split = c->split >= 0 ? net->layers[c->split] : NULL;
  const float *dy = split ? split->top[0]->dev_diff : c->y->dev_diff; /* (N,C,S) */
  const float *dy1 = split ? split->top[1]->dev_diff : NULL;
  if (split && (!dy || !dy1))
    return moka_errorf("the Split after the chain at layer '%s' has no device diffs",
                       net->layers[c->bn]->name);
  if (half) {
    if (split && (!split->top[0]->dev_bf16 || !split->top[1]->dev_bf16))
      return moka_errorf("internal error: the Split after the bf16 chain at layer '%s' is not "
                         "bf16 channels-last",
                         net->layers[c->bn]->name);
    return moka_cuda_bn_nhwc_backward(
        net->cuda->stream, &g, (const moka_bf16 *)dy, (const moka_bf16 *)dy1,
        (const moka_bf16 *)c->y->dev_data,
        c->keep_xhat ? (const moka_bf16 *)p->dev_x_norm.ptr : NULL, p->dev_stats.ptr,
        c->gamma->dev_data, c->bn_bw ? (moka_bf16 *)c->x->dev_diff : NULL,
        c->shortcut_bw ? (moka_bf16 *)c->shortcut->dev_diff : NULL,
        c->want_dgamma ? c->gamma->dev_diff : NULL, c->want_dbeta ? c->beta->dev_diff : NULL, ws);
  }
  return moka_cuda_bn_fused_backward(
      net->cuda->stream, &g, dy, dy1, c->y->dev_data /* the mask */,
      c->keep_xhat ? p->dev_x_norm.ptr : NULL, p->dev_stats.ptr, c->gamma->dev_data,
      c->bn_bw ? c->x->dev_diff : NULL, c->shortcut_bw ? c->shortcut->dev_diff : NULL,
      c->want_dgamma ? c->gamma->dev_diff : NULL, c->want_dbeta ? c->beta->dev_diff : NULL, ws);
}

#endif /* MOKA_WITH_CUDA */
