/* concat.c — Caffe's Concat layer, CPU reference: the bottoms stacked along
 * `axis` (concat_param.axis, default 1; the legacy concat_dim also works,
 * not both), in bottom order. All other axes must agree. Backward hands each
 * bottom its slice of the top diff.
 */
#include <string.h>

#include "concat_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* ConcatPriv (the layer's state) is in concat_priv.h, shared with the fast path. */

static int concat_setup(Layer *l) {
  const Caffe__ConcatParameter *cp = l->param->concat_param;
  if (cp && cp->has_axis && cp->has_concat_dim)
    return moka_errorf("concat_param: give either axis or concat_dim, not both");
  return 0;
}

static int concat_reshape(Layer *l) {
  ConcatPriv *p = l->priv;
  const Caffe__ConcatParameter *cp = l->param->concat_param;
  const Blob *x0 = l->bottom[0];
  if (cp && cp->has_concat_dim) {
    if (cp->concat_dim >= (uint32_t)x0->num_axes)
      return moka_errorf("concat_param.concat_dim %u is out of range for bottom '%s' with %d axes",
                         cp->concat_dim, x0->name, x0->num_axes);
    p->axis = (int)cp->concat_dim;
  } else {
    p->axis = blob_canonical_axis(x0, cp ? cp->axis : 1);
    if (p->axis < 0) return moka_error_prefix("concat_param.axis");
  }
  int shape[MOKA_MAX_AXES];
  memcpy(shape, x0->shape, sizeof shape);
  for (int k = 1; k < l->n_bottom; k++) {
    const Blob *x = l->bottom[k];
    char a[256], b[256];
    if (x->num_axes != x0->num_axes)
      return moka_errorf("bottom %d '%s' has %d axes but bottom 0 '%s' has %d; all inputs must "
                         "have the same number of axes",
                         k, x->name, x->num_axes, x0->name, x0->num_axes);
    for (int j = 0; j < x0->num_axes; j++) {
      if (j == p->axis) continue;
      if (x->shape[j] != x0->shape[j])
        return moka_errorf("bottom %d '%s' has shape %s but bottom 0 '%s' has shape %s; all "
                           "inputs must have the same shape except at the concat axis %d",
                           k, x->name, blob_shape_string(x, a, sizeof a), x0->name,
                           blob_shape_string(x0, b, sizeof b), p->axis);
    }
    long long s = (long long)shape[p->axis] + x->shape[p->axis];
    if (s > 2147483647LL) return moka_errorf("the concatenated axis is too large");
    shape[p->axis] = (int)s;
  }
  p->num_concats = blob_count_range(x0, 0, p->axis);
  p->inner = blob_count_range(x0, p->axis + 1, x0->num_axes);
  return blob_reshape(l->top[0], x0->num_axes, shape);
}

static int concat_forward(Layer *l) {
  const ConcatPriv *p = l->priv;
  float *y = l->top[0]->data; /* (outer, sum_k C_k, inner) */
  const size_t top_axis = (size_t)l->top[0]->shape[p->axis];
  size_t offset = 0;
  for (int k = 0; k < l->n_bottom; k++) {
    const float *x = l->bottom[k]->data; /* (outer, C_k, inner) */
    const size_t ck = (size_t)l->bottom[k]->shape[p->axis], len = ck * p->inner;
    for (size_t n = 0; n < p->num_concats; n++)
      memcpy(y + (n * top_axis + offset) * p->inner, x + n * len, len * sizeof(float));
    offset += ck;
  }
  return 0;
}

static int concat_backward(Layer *l) {
  const ConcatPriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (outer, sum_k C_k, inner) */
  const size_t top_axis = (size_t)l->top[0]->shape[p->axis];
  size_t offset = 0;
  for (int k = 0; k < l->n_bottom; k++) {
    const size_t ck = (size_t)l->bottom[k]->shape[p->axis], len = ck * p->inner;
    if (l->propagate_down[k]) {
      float *dx = l->bottom[k]->diff; /* (outer, C_k, inner) */
      for (size_t n = 0; n < p->num_concats; n++)
        memcpy(dx + n * len, dy + (n * top_axis + offset) * p->inner, len * sizeof(float));
    }
    offset += ck;
  }
  return 0;
}

#ifdef MOKA_WITH_CUDA
/* CUDA: one 2-D device copy per bottom (num_concats rows of C_k*inner). */
static int concat_forward_cuda(Layer *l) {
  const ConcatPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  const size_t top_axis = (size_t)l->top[0]->shape[p->axis], F = sizeof(float);
  size_t offset = 0;
  for (int k = 0; k < l->n_bottom; k++) {
    const size_t len = (size_t)l->bottom[k]->shape[p->axis] * p->inner;
    if (moka_d2d_2d(l->cuda->stream, l->top[0]->dev_data + offset * p->inner,
                    top_axis * p->inner * F, l->bottom[k]->dev_data, len * F, len * F,
                    p->num_concats))
      return -1;
    offset += (size_t)l->bottom[k]->shape[p->axis];
  }
  return 0;
}

static int concat_backward_cuda(Layer *l) {
  const ConcatPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  const size_t top_axis = (size_t)l->top[0]->shape[p->axis], F = sizeof(float);
  size_t offset = 0;
  for (int k = 0; k < l->n_bottom; k++) {
    const size_t len = (size_t)l->bottom[k]->shape[p->axis] * p->inner;
    if (l->propagate_down[k] &&
        moka_d2d_2d(l->cuda->stream, l->bottom[k]->dev_diff, len * F,
                    l->top[0]->dev_diff + offset * p->inner, top_axis * p->inner * F, len * F,
                    p->num_concats))
      return -1;
    offset += (size_t)l->bottom[k]->shape[p->axis];
  }
  return 0;
}
#endif

const LayerType layer_type_concat = {
    .name = "Concat",
    .min_bottoms = 1,
    .max_bottoms = -1,
    .min_tops = 1,
    .max_tops = 1,
    .priv_size = sizeof(ConcatPriv),
    .setup = concat_setup,
    .reshape = concat_reshape,
    .forward = {[MOKA_BACKEND_CPU] = concat_forward,
                [MOKA_BACKEND_CPU_FAST] = concat_forward_fast /* concat_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = concat_backward,
                 [MOKA_BACKEND_CPU_FAST] = concat_backward_fast},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = concat_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = concat_backward_cuda,
#endif
};
