/* scale.c — Caffe's Scale layer (with its built-in Bias), CPU reference.
 *
 *   y[n,d,i] = x[n,d,i] * scale[d]  (+ bias[d'] when bias_term)
 *
 * x is viewed as (outer, scale_dim, inner) around axes [axis, axis+k) where
 * the scale has k axes. The scale is either a learned parameter (one bottom:
 * shape bottom.shape[axis : axis+num_axes], num_axes -1 = to the end; filler
 * default constant 1) or bottom 1 (two bottoms). With bias_term a bias
 * parameter is added after the scale (Caffe's BiasLayer on the output: shape
 * bottom.shape[axis : axis+num_axes], filler bias_filler, default constant 0).
 *
 * Backward: dx = dy * scale; dscale[d] += sum_{n,i} dy * x (parameter: added
 * into the diff; bottom 1: overwritten); dbias[d] += sum_{n,i} dy.
 * In place: the input is overwritten by the output, so forward keeps a copy
 * of it for the scale gradient, as Caffe does.
 */
#include <stdlib.h>
#include <string.h>

#include "scale_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* ScalePriv (the layer's state) is in scale_priv.h, shared with the fast path. */

static const Caffe__ScaleParameter *scale_param(const Layer *l) {
  static const Caffe__ScaleParameter def = CAFFE__SCALE_PARAMETER__INIT;
  return l->param->scale_param ? l->param->scale_param : &def;
}

/* Shape x.shape[axis : axis+num_axes] (num_axes -1: to the end) for a new
 * parameter, checked against x. */
static int param_shape(const Blob *x, int axis_param, int num_axes, int *axes, int *shape) {
  int axis = blob_canonical_axis(x, axis_param);
  if (axis < 0) return -1;
  if (num_axes < -1) return moka_errorf("scale_param.num_axes must be >= -1, got %d", num_axes);
  if (num_axes >= 0 && x->num_axes < axis + num_axes)
    return moka_errorf("scale blob's axes [%d, %d) do not fit in bottom '%s' with %d axes",
                       axis, axis + num_axes, x->name, x->num_axes);
  int end = num_axes == -1 ? x->num_axes : axis + num_axes;
  *axes = end - axis;
  for (int i = axis; i < end; i++) shape[i - axis] = x->shape[i];
  return 0;
}

static int scale_setup(Layer *l) {
  ScalePriv *p = l->priv;
  const Caffe__ScaleParameter *sp = scale_param(l);
  const Blob *x = l->bottom[0];
  int axes, shape[MOKA_MAX_AXES];
  p->bias_idx = -1;
  if (l->n_bottom == 1) {
    Caffe__FillerParameter one = CAFFE__FILLER_PARAMETER__INIT;
    one.has_value = 1;
    one.value = 1.0f;
    if (param_shape(x, sp->axis, sp->num_axes, &axes, shape)) return -1;
    if (!layer_add_param(l, axes, shape, sp->filler ? sp->filler : &one)) return -1;
  }
  if (sp->bias_term) {
    Caffe__FillerParameter zero = CAFFE__FILLER_PARAMETER__INIT;
    if (param_shape(x, sp->axis, sp->num_axes, &axes, shape)) return -1;
    p->bias_idx = l->n_params;
    if (!layer_add_param(l, axes, shape, sp->bias_filler ? sp->bias_filler : &zero)) return -1;
  }
  return 0;
}

/* Fit `s` (k axes) into x at axis_param: x = (outer, s.count, inner). */
static int fit(const Blob *x, const Blob *s, int axis_param, const char *what, size_t *outer,
               size_t *dim, size_t *inner) {
  int axis = s->num_axes == 0 ? 0 : blob_canonical_axis(x, axis_param);
  if (axis < 0) return -1;
  char a[256], b[256];
  if (x->num_axes < axis + s->num_axes)
    return moka_errorf("%s of shape %s does not fit bottom '%s' of shape %s at axis %d", what,
                       blob_shape_string(s, a, sizeof a), x->name,
                       blob_shape_string(x, b, sizeof b), axis);
  for (int i = 0; i < s->num_axes; i++)
    if (x->shape[axis + i] != s->shape[i])
      return moka_errorf("%s of shape %s does not match bottom '%s' of shape %s at axis %d",
                         what, blob_shape_string(s, a, sizeof a), x->name,
                         blob_shape_string(x, b, sizeof b), axis + i);
  *outer = blob_count_range(x, 0, axis);
  *dim = s->count;
  *inner = blob_count_range(x, axis + s->num_axes, x->num_axes);
  return 0;
}

static int scale_reshape(Layer *l) {
  ScalePriv *p = l->priv;
  const Caffe__ScaleParameter *sp = scale_param(l);
  Blob *x = l->bottom[0];
  const Blob *s = l->n_bottom > 1 ? l->bottom[1] : l->params[0];
  if (fit(x, s, sp->axis, "the scale", &p->outer, &p->scale_dim, &p->inner)) return -1;
  if (p->bias_idx >= 0 &&
      fit(x, l->params[p->bias_idx], sp->axis, "the bias", &p->b_outer, &p->b_dim, &p->b_inner))
    return -1;
  if (l->top[0] != x) {
    if (blob_reshape_like(l->top[0], x)) return -1;
  } else if (x->count > p->x_copy_cap || !p->x_copy) {
    float *c = moka_realloc(p->x_copy, x->count * sizeof(float));
    if (!c) return -1;
    p->x_copy = c;
    p->x_copy_cap = x->count;
  }
  return 0;
}

static int scale_forward(Layer *l) {
  ScalePriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (outer, D, inner) */
  float *y = l->top[0]->data;          /* (outer, D, inner), may be x */
  const float *s = (l->n_bottom > 1 ? l->bottom[1] : l->params[0])->data; /* (D) */
  if (y == x) memcpy(p->x_copy, x, l->bottom[0]->count * sizeof(float));
  const size_t D = p->scale_dim, I = p->inner;
  for (size_t n = 0; n < p->outer; n++)
    for (size_t d = 0; d < D; d++)
      for (size_t i = 0; i < I; i++) y[(n * D + d) * I + i] = x[(n * D + d) * I + i] * s[d];
  if (p->bias_idx >= 0) {
    const float *b = l->params[p->bias_idx]->data; /* (BD) */
    const size_t BD = p->b_dim, BI = p->b_inner;
    for (size_t n = 0; n < p->b_outer; n++)
      for (size_t d = 0; d < BD; d++)
        for (size_t i = 0; i < BI; i++) y[(n * BD + d) * BI + i] += b[d];
  }
  return 0;
}

static int scale_backward(Layer *l) {
  ScalePriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (outer, D, inner) */
  const bool in_place = l->top[0] == l->bottom[0];
  /* Bias gradient (reads dy only; before dx may overwrite it in place). */
  if (p->bias_idx >= 0 && layer_param_needs_grad(l, p->bias_idx)) { /* skipped at lr_mult 0 */
    float *db = l->params[p->bias_idx]->diff; /* (BD) */
    const size_t BD = p->b_dim, BI = p->b_inner;
    for (size_t d = 0; d < BD; d++) {
      double acc = 0;
      for (size_t n = 0; n < p->b_outer; n++)
        for (size_t i = 0; i < BI; i++) acc += dy[(n * BD + d) * BI + i];
      db[d] += (float)acc;
    }
  }
  const size_t D = p->scale_dim, I = p->inner;
  /* Scale gradient. */
  const bool scale_is_param = l->n_bottom == 1;
  if (scale_is_param ? layer_param_needs_grad(l, 0) : l->propagate_down[1]) {
    const float *x = in_place ? p->x_copy : l->bottom[0]->data; /* (outer, D, inner) */
    float *ds = scale_is_param ? l->params[0]->diff : l->bottom[1]->diff; /* (D) */
    for (size_t d = 0; d < D; d++) {
      double acc = 0;
      for (size_t n = 0; n < p->outer; n++)
        for (size_t i = 0; i < I; i++) {
          size_t k = (n * D + d) * I + i;
          acc += (double)dy[k] * (double)x[k];
        }
      if (scale_is_param)
        ds[d] += (float)acc;
      else
        ds[d] = (float)acc;
    }
  }
  if (l->propagate_down[0]) {
    const float *s = (l->n_bottom > 1 ? l->bottom[1] : l->params[0])->data; /* (D) */
    float *dx = l->bottom[0]->diff; /* (outer, D, inner), may be dy */
    for (size_t n = 0; n < p->outer; n++)
      for (size_t d = 0; d < D; d++)
        for (size_t i = 0; i < I; i++) dx[(n * D + d) * I + i] = dy[(n * D + d) * I + i] * s[d];
  }
  return 0;
}

static void scale_destroy(Layer *l) {
  ScalePriv *p = l->priv;
  free(p->x_copy);
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_x_copy);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/scale.cu (y = x*s (+ b), rounded as the two CPU passes) and
 * kernels/channel_sum.cu for the gradients (double sums, as the reference). */
static int scale_forward_cuda(Layer *l) {
  ScalePriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  cudaStream_t st = l->cuda->stream;
  const float *x = l->bottom[0]->dev_data;                                    /* (outer, D, inner) */
  float *y = l->top[0]->dev_data;                                             /* may be x */
  const float *s = (l->n_bottom > 1 ? l->bottom[1] : l->params[0])->dev_data; /* (D) */
  const size_t bytes = l->bottom[0]->count * sizeof(float);
  if (y == x && (moka_devbuf_reserve(&p->dev_x_copy, bytes, "Scale input copy") ||
                 moka_d2d(st, p->dev_x_copy.ptr, x, bytes)))
    return -1;
  const float *b = p->bias_idx >= 0 ? l->params[p->bias_idx]->dev_data : NULL; /* (BD) */
  const bool fused = b && p->b_outer == p->outer && p->b_dim == p->scale_dim &&
                     p->b_inner == p->inner;
  if (moka_cuda_scale_forward(st, x, s, fused ? b : NULL, y, p->outer, p->scale_dim, p->inner))
    return -1;
  if (b && !fused) return moka_cuda_bias_add(st, y, b, p->b_outer, p->b_dim, p->b_inner);
  return 0;
}

static int scale_backward_cuda(Layer *l) {
  ScalePriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  cudaStream_t st = l->cuda->stream;
  const float *dy = l->top[0]->dev_diff; /* (outer, D, inner) */
  const bool in_place = l->top[0] == l->bottom[0];
  if (p->bias_idx >= 0 && moka_cuda_channel_sum(st, dy, NULL, l->params[p->bias_idx]->dev_diff,
                                                p->b_outer, p->b_dim, p->b_inner, true))
    return -1;
  const bool scale_is_param = l->n_bottom == 1;
  if (scale_is_param ? layer_param_needs_grad(l, 0) : l->propagate_down[1]) {
    const float *x = in_place ? p->dev_x_copy.ptr : l->bottom[0]->dev_data;
    float *ds = scale_is_param ? l->params[0]->dev_diff : l->bottom[1]->dev_diff; /* (D) */
    if (!x) return moka_errorf("backward before forward on the device");
    if (moka_cuda_channel_sum(st, dy, x, ds, p->outer, p->scale_dim, p->inner, scale_is_param))
      return -1;
  }
  if (l->propagate_down[0]) {
    const float *s = (l->n_bottom > 1 ? l->bottom[1] : l->params[0])->dev_data; /* (D) */
    return moka_cuda_scale_forward(st, dy, s, NULL, l->bottom[0]->dev_diff, p->outer,
                                   p->scale_dim, p->inner);
  }
  return 0;
}
#endif

const LayerType layer_type_scale = {
    .name = "Scale",
    .min_bottoms = 1,
    .max_bottoms = 2,
    .min_tops = 1,
    .max_tops = 1,
    .in_place_ok = true,
    .priv_size = sizeof(ScalePriv),
    .setup = scale_setup,
    .reshape = scale_reshape,
    .forward = {[MOKA_BACKEND_CPU] = scale_forward,
                [MOKA_BACKEND_CPU_FAST] = scale_forward_fast /* scale_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = scale_backward,
                 [MOKA_BACKEND_CPU_FAST] = scale_backward_fast},
    .destroy = scale_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = scale_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = scale_backward_cuda,
#endif
};
