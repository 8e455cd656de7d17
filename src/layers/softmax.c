/* softmax.c — Caffe's Softmax layer, CPU reference.
 *
 * x viewed as (outer, C, inner) around `axis` (softmax_param.axis, default 1):
 *   y[n,c,i] = exp(x[n,c,i] - max_c x[n,.,i]) / sum_c exp(...)
 *   dx[n,c,i] = (dy[n,c,i] - sum_c' dy[n,c',i] * y[n,c',i]) * y[n,c,i]
 * In place allowed.
 */
#include <math.h>

#include "softmax_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "softmax.h"
#include "util.h"

/* SoftmaxPriv (the layer's state) is in softmax_priv.h, shared with the fast path. */

void softmax_ref_forward(const float *x, float *y, size_t outer, size_t channels,
                         size_t inner) {
  const size_t C = channels, I = inner;
  if (C == 0) return; /* an empty softmax axis: nothing to read or write */
  for (size_t n = 0; n < outer; n++)
    for (size_t i = 0; i < I; i++) {
      const float *xi = x + n * C * I + i; /* stride I */
      float *yi = y + n * C * I + i;
      float mx = xi[0];
      for (size_t c = 1; c < C; c++) mx = fmaxf(mx, xi[c * I]);
      double sum = 0;
      for (size_t c = 0; c < C; c++) {
        yi[c * I] = expf(xi[c * I] - mx);
        sum += yi[c * I];
      }
      const float s = (float)sum;
      for (size_t c = 0; c < C; c++) yi[c * I] /= s;
    }
}

static int softmax_reshape(Layer *l) {
  SoftmaxPriv *p = l->priv;
  const Blob *x = l->bottom[0];
  int axis = blob_canonical_axis(x, l->param->softmax_param ? l->param->softmax_param->axis : 1);
  if (axis < 0) return moka_error_prefix("softmax_param.axis");
  p->outer = blob_count_range(x, 0, axis);
  p->channels = (size_t)x->shape[axis];
  p->inner = blob_count_range(x, axis + 1, x->num_axes);
  if (l->top[0] != x) return blob_reshape_like(l->top[0], x);
  return 0;
}

static int softmax_forward(Layer *l) {
  const SoftmaxPriv *p = l->priv;
  softmax_ref_forward(l->bottom[0]->data, l->top[0]->data, p->outer, p->channels, p->inner);
  return 0;
}

static int softmax_backward(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const SoftmaxPriv *p = l->priv;
  const float *y = l->top[0]->data;  /* (outer, C, inner) */
  const float *dy = l->top[0]->diff; /* (outer, C, inner) */
  float *dx = l->bottom[0]->diff;    /* (outer, C, inner), may be dy */
  const size_t C = p->channels, I = p->inner;
  for (size_t n = 0; n < p->outer; n++)
    for (size_t i = 0; i < I; i++) {
      const size_t base = n * C * I + i;
      double dot = 0;
      for (size_t c = 0; c < C; c++) dot += (double)dy[base + c * I] * (double)y[base + c * I];
      const float d = (float)dot;
      for (size_t c = 0; c < C; c++) dx[base + c * I] = (dy[base + c * I] - d) * y[base + c * I];
    }
  return 0;
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/softmax.cu, the reference's algorithm (double sums). */
static int softmax_forward_cuda(Layer *l) {
  const SoftmaxPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  return moka_cuda_softmax_forward(l->cuda->stream, l->bottom[0]->dev_data, l->top[0]->dev_data,
                                   p->outer, p->channels, p->inner);
}

static int softmax_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const SoftmaxPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  return moka_cuda_softmax_backward(l->cuda->stream, l->top[0]->dev_data, l->top[0]->dev_diff,
                                    l->bottom[0]->dev_diff, p->outer, p->channels, p->inner);
}
#endif

const LayerType layer_type_softmax = {
    .name = "Softmax",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .in_place_ok = true,
    .priv_size = sizeof(SoftmaxPriv),
    .reshape = softmax_reshape,
    .forward = {[MOKA_BACKEND_CPU] = softmax_forward,
                [MOKA_BACKEND_CPU_FAST] = softmax_forward_fast /* softmax_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = softmax_backward,
                 [MOKA_BACKEND_CPU_FAST] = softmax_backward_fast},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = softmax_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = softmax_backward_cuda,
#endif
};
