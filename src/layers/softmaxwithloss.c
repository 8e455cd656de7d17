/* softmaxwithloss.c — Caffe's SoftmaxWithLoss layer, CPU reference.
 *
 * Bottoms: scores x viewed as (outer, C, inner) around softmax_param.axis
 * (default 1) and labels (outer*inner values, float, integer-valued).
 * Tops: the loss (a scalar) and optionally the probabilities (x's shape).
 *
 *   p = softmax(x) over C
 *   loss = -sum_{valid (n,i)} log(max(p[n, label, i], FLT_MIN)) / Z
 *   dx = (p - onehot(label)) * dloss / Z, zero at ignored positions
 *
 * A position is valid unless its label equals loss_param.ignore_label.
 * Z (loss_param.normalization, at least 1): VALID = number of valid
 * positions (the default), BATCH_SIZE = outer, FULL = outer*inner,
 * NONE = 1. The legacy `normalize` (when normalization is unset) picks
 * VALID (true) or BATCH_SIZE (false).
 * No gradient goes to the labels.
 */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_layer.h"
#include "layer.h"
#include "softmax.h"
#include "util.h"

typedef struct SoftmaxLossPriv {
  size_t outer, channels, inner; /* scores viewed as (outer, C, inner) */
  bool has_ignore;
  int ignore_label;
  Caffe__LossParameter__NormalizationMode norm;
  float *prob;                   /* (outer, C, inner) */
  size_t prob_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_prob;               /* (outer, C, inner) on the device */
  DevBuf dev_status;             /* (1) MokaLabelStatus of the last forward */
#endif
} SoftmaxLossPriv;

static int swl_setup(Layer *l) {
  SoftmaxLossPriv *p = l->priv;
  static const Caffe__LossParameter def = CAFFE__LOSS_PARAMETER__INIT;
  const Caffe__LossParameter *lp = l->param->loss_param ? l->param->loss_param : &def;
  p->has_ignore = lp->has_ignore_label;
  p->ignore_label = lp->ignore_label;
  if (!lp->has_normalization && lp->has_normalize)
    p->norm = lp->normalize ? CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__VALID
                            : CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__BATCH_SIZE;
  else
    p->norm = lp->normalization;
  switch (p->norm) {
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__FULL:
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__VALID:
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__BATCH_SIZE:
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__NONE: break;
    default: return moka_errorf("unknown loss_param.normalization %d", (int)p->norm);
  }
  return 0;
}

static int swl_reshape(Layer *l) {
  SoftmaxLossPriv *p = l->priv;
  const Blob *x = l->bottom[0], *label = l->bottom[1];
  int axis = blob_canonical_axis(x, l->param->softmax_param ? l->param->softmax_param->axis : 1);
  if (axis < 0) return moka_error_prefix("softmax_param.axis");
  if (x->num_axes < 1 || label->num_axes < 1 || x->shape[0] != label->shape[0]) {
    char a[256], b[256];
    return moka_errorf("scores '%s' (%s) and labels '%s' (%s) must have the same first "
                       "dimension",
                       x->name, blob_shape_string(x, a, sizeof a), label->name,
                       blob_shape_string(label, b, sizeof b));
  }
  p->outer = blob_count_range(x, 0, axis);
  p->channels = (size_t)x->shape[axis];
  p->inner = blob_count_range(x, axis + 1, x->num_axes);
  if (p->outer * p->inner != label->count) {
    char a[256];
    return moka_errorf("the number of labels (%zu in '%s') must match the number of "
                       "predictions: scores '%s' of shape %s with softmax axis %d need %zu "
                       "labels with integer values in [0, %zu)",
                       label->count, label->name, x->name, blob_shape_string(x, a, sizeof a),
                       axis, p->outer * p->inner, p->channels);
  }
  if (blob_reshape(l->top[0], 0, NULL)) return -1; /* scalar loss */
  if (l->n_top > 1 && blob_reshape_like(l->top[1], x)) return -1;
  if (x->count > p->prob_cap || !p->prob) {
    float *pr = moka_realloc(p->prob, x->count * sizeof(float));
    if (!pr) return -1;
    p->prob = pr;
    p->prob_cap = x->count;
  }
  return 0;
}

/* The label at position k as an int; *valid = false when it is ignored.
 * Out of range (or not a number) is an error naming the value (the caller,
 * layer_forward, adds the layer's name). */
static int read_label(const Layer *l, size_t k, int *value, bool *valid) {
  const SoftmaxLossPriv *p = l->priv;
  const float v = l->bottom[1]->data[k];
  if (!(v > -2147483648.0f && v < 2147483647.0f))
    return moka_errorf("label %g at position %zu is not a valid class index", (double)v, k);
  const int lab = (int)v;
  if (p->has_ignore && lab == p->ignore_label) {
    *valid = false;
    return 0;
  }
  if (lab < 0 || (size_t)lab >= p->channels)
    return moka_errorf("label value %d at position %zu is out of range [0, %zu)",
                       lab, k, p->channels);
  *value = lab;
  *valid = true;
  return 0;
}

static float normalizer(const SoftmaxLossPriv *p, size_t valid_count) {
  double z = 1;
  switch (p->norm) {
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__FULL: z = (double)(p->outer * p->inner); break;
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__VALID: z = (double)valid_count; break;
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__BATCH_SIZE: z = (double)p->outer; break;
    default: z = 1; break;
  }
  return (float)fmax(1.0, z);
}

static int swl_forward(Layer *l) {
  SoftmaxLossPriv *p = l->priv;
  const size_t C = p->channels, I = p->inner;
  softmax_ref_forward(l->bottom[0]->data, p->prob, p->outer, C, I);
  double loss = 0;
  size_t count = 0;
  for (size_t n = 0; n < p->outer; n++)
    for (size_t i = 0; i < I; i++) {
      int lab;
      bool valid;
      if (read_label(l, n * I + i, &lab, &valid)) return -1;
      if (!valid) continue;
      /* Caffe's std::max(p, FLT_MIN): a NaN probability stays NaN (fmaxf would
       * turn it into FLT_MIN and hide the fault behind a finite 87.3365). */
      const float pr = p->prob[(n * C + (size_t)lab) * I + i];
      loss -= log(pr < FLT_MIN ? FLT_MIN : pr);
      count++;
    }
  l->top[0]->data[0] = (float)(loss / normalizer(p, count));
  if (l->n_top > 1) memcpy(l->top[1]->data, p->prob, l->bottom[0]->count * sizeof(float));
  return 0;
}

static int swl_backward(Layer *l) {
  /* Labels get no gradient (propagate_down[1] is ignored). */
  if (!l->propagate_down[0]) return 0;
  const SoftmaxLossPriv *p = l->priv;
  const size_t C = p->channels, I = p->inner;
  float *dx = l->bottom[0]->diff; /* (outer, C, inner) */
  memcpy(dx, p->prob, l->bottom[0]->count * sizeof(float));
  size_t count = 0;
  for (size_t n = 0; n < p->outer; n++)
    for (size_t i = 0; i < I; i++) {
      int lab;
      bool valid;
      if (read_label(l, n * I + i, &lab, &valid)) return -1;
      if (!valid) {
        for (size_t c = 0; c < C; c++) dx[(n * C + c) * I + i] = 0;
        continue;
      }
      dx[(n * C + (size_t)lab) * I + i] -= 1;
      count++;
    }
  const float w = l->top[0]->diff[0] / normalizer(p, count);
  for (size_t k = 0; k < l->bottom[0]->count; k++) dx[k] *= w;
  return 0;
}

static void swl_destroy(Layer *l) {
  SoftmaxLossPriv *p = l->priv;
  free(p->prob);
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_prob);
  moka_devbuf_free(&p->dev_status);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/softmax.cu then kernels/softmax_loss.cu. The label check's
 * result (a few bytes) is copied back after the loss: a bad label is the
 * same error as on the CPU, never a silent garbage loss. */
static MokaLossGeom swl_geom(const SoftmaxLossPriv *p) {
  MokaLossGeom g = {p->outer, p->channels, p->inner, p->has_ignore, p->ignore_label,
                    MOKA_LOSS_NORM_VALID};
  switch (p->norm) {
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__FULL: g.norm = MOKA_LOSS_NORM_FULL; break;
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__BATCH_SIZE:
      g.norm = MOKA_LOSS_NORM_BATCH_SIZE;
      break;
    case CAFFE__LOSS_PARAMETER__NORMALIZATION_MODE__NONE: g.norm = MOKA_LOSS_NORM_NONE; break;
    default: g.norm = MOKA_LOSS_NORM_VALID; break;
  }
  return g;
}

static int swl_forward_cuda(Layer *l) {
  SoftmaxLossPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  cudaStream_t st = l->cuda->stream;
  const size_t bytes = l->bottom[0]->count * sizeof(float);
  if (moka_devbuf_reserve(&p->dev_prob, bytes, "SoftmaxWithLoss probabilities") ||
      moka_devbuf_reserve(&p->dev_status, sizeof(MokaLabelStatus), "SoftmaxWithLoss status"))
    return -1;
  const MokaLossGeom g = swl_geom(p);
  MokaLabelStatus status;
  if (moka_cuda_softmax_forward(st, l->bottom[0]->dev_data, p->dev_prob.ptr, p->outer,
                                p->channels, p->inner) ||
      moka_cuda_softmax_loss_forward(st, &g, p->dev_prob.ptr, l->bottom[1]->dev_data,
                                     l->top[0]->dev_data, p->dev_status.ptr) ||
      moka_d2h(st, &status, p->dev_status.ptr, sizeof status))
    return -1;
  if (status.bad_pos != INT_MAX) {
    const float v = status.bad_value;
    if (!(v > -2147483648.0f && v < 2147483647.0f))
      return moka_errorf("label %g at position %d is not a valid class index", (double)v,
                         status.bad_pos);
    return moka_errorf("label value %d at position %d is out of range [0, %zu)", (int)v,
                       status.bad_pos, p->channels);
  }
  if (l->n_top > 1) return moka_d2d(st, l->top[1]->dev_data, p->dev_prob.ptr, bytes);
  return 0;
}

static int swl_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0; /* labels get no gradient */
  SoftmaxLossPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  if (!p->dev_prob.ptr) return moka_errorf("backward before forward on the device");
  const MokaLossGeom g = swl_geom(p);
  return moka_cuda_softmax_loss_backward(l->cuda->stream, &g, p->dev_prob.ptr,
                                         l->bottom[1]->dev_data, l->top[0]->dev_diff,
                                         p->dev_status.ptr, l->bottom[0]->dev_diff);
}
#endif

const LayerType layer_type_softmaxwithloss = {
    .name = "SoftmaxWithLoss",
    .min_bottoms = 2,
    .max_bottoms = 2,
    .min_tops = 1,
    .max_tops = 2,
    .is_loss = true,
    .priv_size = sizeof(SoftmaxLossPriv),
    .setup = swl_setup,
    .reshape = swl_reshape,
    .forward = {[MOKA_BACKEND_CPU] = swl_forward, [MOKA_BACKEND_CPU_FAST] = swl_forward},
    .backward = {[MOKA_BACKEND_CPU] = swl_backward, [MOKA_BACKEND_CPU_FAST] = swl_backward},
    .destroy = swl_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = swl_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = swl_backward_cuda,
#endif
};
