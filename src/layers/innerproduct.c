/* innerproduct.c — Caffe's "InnerProduct" (fully connected) layer, CPU reference.
 *
 * The bottom is flattened at `axis` (default 1): M = product of the axes
 * before it, K = product of the axes from it on. Top shape = bottom shape up
 * to axis, then N = num_output.
 * Weights (N, K), or (K, N) with transpose: true; bias (N).
 *   top (M,N) = bottom (M,K) x W^T (K,N) + bias
 *
 * This is the reference (the oracle other backends must agree with); the GEMM
 * itself is OpenBLAS, checked in tests against a naive GEMM.
 */
#include <stdlib.h>

#include "innerproduct_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "moka_math.h"
#include "util.h"

/* IpPriv (the layer's state) is in innerproduct_priv.h, shared with the fast path. */

static int ip_setup(Layer *l) {
  IpPriv *p = l->priv;
  const Caffe__InnerProductParameter *ip = l->param->inner_product_param;
  if (!ip || !ip->has_num_output || ip->num_output == 0)
    return moka_errorf("inner_product_param.num_output must be given and > 0");
  if (ip->num_output > (uint32_t)MOKA_MAX_BLOB_COUNT)
    return moka_errorf("inner_product_param.num_output %u is too large", ip->num_output);
  p->num_output = (int)ip->num_output;
  p->bias_term = ip->bias_term;
  p->transpose = ip->transpose;
  const Blob *b = l->bottom[0];
  p->axis = blob_canonical_axis(b, ip->axis);
  if (p->axis < 0)
    return moka_error_prefix("inner_product_param.axis %d on bottom '%s'", ip->axis, b->name);
  size_t K = blob_count_range(b, p->axis, b->num_axes);
  if (K == 0 || K > (size_t)MOKA_MAX_BLOB_COUNT)
    return moka_errorf("bottom '%s' flattens to %zu inputs per row", b->name, K);
  p->K = (int)K;
  int wshape[2] = {p->transpose ? p->K : p->num_output, p->transpose ? p->num_output : p->K};
  if (!layer_add_param(l, 2, wshape, ip->weight_filler)) return -1;
  if (p->bias_term) {
    int bshape[1] = {p->num_output};
    if (!layer_add_param(l, 1, bshape, ip->bias_filler)) return -1;
  }
  return 0;
}

static int ip_reshape(Layer *l) {
  IpPriv *p = l->priv;
  const Blob *b = l->bottom[0];
  char buf[256];
  if (p->axis >= b->num_axes)
    return moka_errorf("bottom '%s' has shape %s, too few axes for inner_product_param.axis %d",
                       b->name, blob_shape_string(b, buf, sizeof buf), p->axis);
  size_t K = blob_count_range(b, p->axis, b->num_axes);
  if (K != (size_t)p->K)
    return moka_errorf("bottom '%s' has shape %s: %zu inputs per row, but the weights were made "
                       "for %d",
                       b->name, blob_shape_string(b, buf, sizeof buf), K, p->K);
  p->M = (int)blob_count_range(b, 0, p->axis);
  int shape[MOKA_MAX_AXES];
  for (int i = 0; i < p->axis; i++) shape[i] = b->shape[i];
  shape[p->axis] = p->num_output;
  return blob_reshape(l->top[0], p->axis + 1, shape);
}

static int ip_forward_cpu(Layer *l) {
  IpPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (M,K) */
  const float *w = l->params[0]->data; /* (N,K), or (K,N) transposed */
  float *y = l->top[0]->data;          /* (M,N) */
  const int M = p->M, N = p->num_output, K = p->K;
  moka_gemm(false, !p->transpose, M, N, K, 1.0f, x, w, 0.0f, y);
  if (p->bias_term) {
    const float *bias = l->params[1]->data; /* (N) */
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) y[(size_t)m * N + n] += bias[n];
  }
  return 0;
}

static int ip_backward_cpu(Layer *l) {
  IpPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (M,K) */
  const float *dy = l->top[0]->diff;   /* (M,N) */
  const float *w = l->params[0]->data; /* (N,K), or (K,N) transposed */
  float *dw = l->params[0]->diff;      /* like w, accumulated */
  const int M = p->M, N = p->num_output, K = p->K;
  if (layer_param_needs_grad(l, 0)) { /* skipped when lr_mult is 0 */
    if (p->transpose)
      moka_gemm(true, false, K, N, M, 1.0f, x, dy, 1.0f, dw);  /* dW (K,N) += x^T dy */
    else
      moka_gemm(true, false, N, K, M, 1.0f, dy, x, 1.0f, dw);  /* dW (N,K) += dy^T x */
  }
  if (p->bias_term && layer_param_needs_grad(l, 1)) {
    float *db = l->params[1]->diff; /* (N), accumulated */
    for (int n = 0; n < N; n++) {
      double s = 0.0;
      for (int m = 0; m < M; m++) s += dy[(size_t)m * N + n];
      db[n] += (float)s;
    }
  }
  if (l->propagate_down[0]) /* dx (M,K) = dy (M,N) x W (N,K) */
    moka_gemm(false, p->transpose, M, K, N, 1.0f, dy, w, 0.0f, l->bottom[0]->diff);
  return 0;
}

#ifdef MOKA_WITH_CUDA
#include "fast.h"

/* CUDA: the same GEMMs on cuBLAS (kernels/gemm.cu; fp32, TF32 off), the bias
 * added in a second pass as the reference does, its gradient summed in
 * double (kernels/channel_sum.cu). With --precision=bf16|tf32 the three GEMMs
 * run in that precision (kernels/gemm_lowp.cu: bf16-rounded inputs or TF32,
 * fp32 accumulation and outputs); weights and gradients stay fp32. */
static MokaConvPrec ip_cuda_prec(void) {
  const FastPrecision p = fast_precision();
  return p == FAST_BF16 ? MOKA_CONV_BF16 : p == FAST_TF32 ? MOKA_CONV_TF32 : MOKA_CONV_FP32;
}

static int ip_forward_cuda(Layer *l) {
  IpPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  MokaCuda *c = l->cuda;
  const int M = p->M, N = p->num_output, K = p->K;
  float *y = l->top[0]->dev_data; /* (M,N) */
  if (moka_cuda_gemm_prec(c, ip_cuda_prec(), false, !p->transpose, M, N, K, 1.0f,
                          l->bottom[0]->dev_data, l->params[0]->dev_data, 0.0f, y))
    return -1;
  if (p->bias_term) return moka_cuda_bias_add(c->stream, y, l->params[1]->dev_data, M, N, 1);
  return 0;
}

static int ip_backward_cuda(Layer *l) {
  IpPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  MokaCuda *c = l->cuda;
  const int M = p->M, N = p->num_output, K = p->K;
  const float *x = l->bottom[0]->dev_data; /* (M,K) */
  const float *dy = l->top[0]->dev_diff;   /* (M,N) */
  float *dw = l->params[0]->dev_diff;      /* (N,K) or (K,N), accumulated */
  const MokaConvPrec prec = ip_cuda_prec();
  if (p->transpose ? moka_cuda_gemm_prec(c, prec, true, false, K, N, M, 1.0f, x, dy, 1.0f, dw)
                   : moka_cuda_gemm_prec(c, prec, true, false, N, K, M, 1.0f, dy, x, 1.0f, dw))
    return -1;
  if (p->bias_term &&
      moka_cuda_channel_sum(c->stream, dy, NULL, l->params[1]->dev_diff, M, N, 1, true))
    return -1;
  if (l->propagate_down[0])
    return moka_cuda_gemm_prec(c, prec, false, p->transpose, M, K, N, 1.0f, dy,
                               l->params[0]->dev_data, 0.0f, l->bottom[0]->dev_diff);
  return 0;
}
#endif

const LayerType layer_type_innerproduct = {
    .name = "InnerProduct",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .priv_size = sizeof(IpPriv),
    .setup = ip_setup,
    .reshape = ip_reshape,
    .forward = {[MOKA_BACKEND_CPU] = ip_forward_cpu,
                [MOKA_BACKEND_CPU_FAST] = ip_forward_fast /* innerproduct_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = ip_backward_cpu,
                 [MOKA_BACKEND_CPU_FAST] = ip_backward_fast},
    .destroy = NULL,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = ip_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = ip_backward_cuda,
#endif
};
