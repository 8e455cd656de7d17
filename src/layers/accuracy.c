/* accuracy.c — Caffe's Accuracy layer, CPU reference.
 *
 * Bottoms: scores viewed as (outer, C, inner) around accuracy_param.axis
 * (default 1) and labels (outer*inner values). A position counts as correct
 * when fewer than top_k (default 1) classes score >= the true class's score
 * (the true class itself included, so ties count against it).
 *   top 0: correct / valid positions (0 when none is valid)
 *   top 1 (optional): per-class accuracy (C), 0 for classes never seen
 * Positions whose label equals ignore_label are skipped. No backward: the
 * layer never propagates a gradient.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_layer.h"
#include "layer.h"
#include "util.h"

typedef struct AccuracyPriv {
  unsigned top_k;
  bool has_ignore;
  int ignore_label;
  size_t outer, channels, inner; /* scores viewed as (outer, C, inner) */
  unsigned *per_class_count;     /* (C) labels seen per class */
  size_t per_class_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_counts;             /* (2C) int: seen | correct per class */
  DevBuf dev_status;             /* (1) MokaLabelStatus */
#endif
} AccuracyPriv;

static int accuracy_setup(Layer *l) {
  AccuracyPriv *p = l->priv;
  static const Caffe__AccuracyParameter def = CAFFE__ACCURACY_PARAMETER__INIT;
  const Caffe__AccuracyParameter *ap = l->param->accuracy_param ? l->param->accuracy_param : &def;
  p->top_k = ap->top_k;
  p->has_ignore = ap->has_ignore_label;
  p->ignore_label = ap->ignore_label;
  return 0;
}

static int accuracy_reshape(Layer *l) {
  AccuracyPriv *p = l->priv;
  static const Caffe__AccuracyParameter def = CAFFE__ACCURACY_PARAMETER__INIT;
  const Caffe__AccuracyParameter *ap = l->param->accuracy_param ? l->param->accuracy_param : &def;
  const Blob *x = l->bottom[0], *label = l->bottom[1];
  if (label->count == 0 || p->top_k > x->count / label->count)
    return moka_errorf("accuracy_param.top_k (%u) must not exceed the number of classes (%zu)",
                       p->top_k, label->count ? x->count / label->count : 0);
  int axis = blob_canonical_axis(x, ap->axis);
  if (axis < 0) return moka_error_prefix("accuracy_param.axis");
  p->outer = blob_count_range(x, 0, axis);
  p->channels = (size_t)x->shape[axis];
  p->inner = blob_count_range(x, axis + 1, x->num_axes);
  if (p->outer * p->inner != label->count) {
    char a[256];
    return moka_errorf("the number of labels (%zu in '%s') must match the number of "
                       "predictions: scores '%s' of shape %s with axis %d need %zu labels",
                       label->count, label->name, x->name, blob_shape_string(x, a, sizeof a),
                       axis, p->outer * p->inner);
  }
  if (blob_reshape(l->top[0], 0, NULL)) return -1; /* scalar */
  if (l->n_top > 1) {
    int c = (int)p->channels;
    if (blob_reshape(l->top[1], 1, &c)) return -1;
  }
  if (p->channels > p->per_class_cap || !p->per_class_count) {
    unsigned *n = moka_realloc(p->per_class_count, p->channels * sizeof *n);
    if (!n) return -1;
    p->per_class_count = n;
    p->per_class_cap = p->channels;
  }
  return 0;
}

static int accuracy_forward(Layer *l) {
  AccuracyPriv *p = l->priv;
  const float *x = l->bottom[0]->data;     /* (outer, C, inner) */
  const float *label = l->bottom[1]->data; /* (outer*inner) */
  const size_t C = p->channels, I = p->inner;
  float *per_class = l->n_top > 1 ? l->top[1]->data : NULL; /* (C) */
  if (per_class) {
    memset(per_class, 0, C * sizeof(float));
    memset(p->per_class_count, 0, C * sizeof *p->per_class_count);
  }
  size_t correct = 0, count = 0;
  for (size_t n = 0; n < p->outer; n++)
    for (size_t i = 0; i < I; i++) {
      const float v = label[n * I + i];
      if (!(v > -2147483648.0f && v < 2147483647.0f))
        return moka_errorf("label %g at position %zu is not a valid class index", (double)v,
                           n * I + i);
      const int lab = (int)v;
      if (p->has_ignore && lab == p->ignore_label) continue;
      if (lab < 0 || (size_t)lab >= C)
        return moka_errorf("label value %d at position %zu is out of range [0, %zu)", lab,
                           n * I + i, C);
      if (per_class) p->per_class_count[lab]++;
      const float truth = x[(n * C + (size_t)lab) * I + i];
      /* The true class scores >= itself: start at -1. */
      long better = -1;
      for (size_t c = 0; c < C && better < (long)p->top_k; c++)
        better += x[(n * C + c) * I + i] >= truth;
      if (better < (long)p->top_k) {
        correct++;
        if (per_class) per_class[lab] += 1;
      }
      count++;
    }
  l->top[0]->data[0] = count == 0 ? 0.0f : (float)correct / (float)count;
  if (per_class)
    for (size_t c = 0; c < C; c++)
      per_class[c] = p->per_class_count[c] == 0 ? 0.0f
                                                : per_class[c] / (float)p->per_class_count[c];
  return 0;
}

/* Accuracy has no gradient; it never propagates one. */
static int accuracy_backward(Layer *l) { return 0; }

static void accuracy_destroy(Layer *l) {
  AccuracyPriv *p = l->priv;
  free(p->per_class_count);
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_counts);
  moka_devbuf_free(&p->dev_status);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/accuracy.cu; the label check comes back like the loss's. */
static int accuracy_forward_cuda(Layer *l) {
  AccuracyPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  cudaStream_t st = l->cuda->stream;
  if (moka_devbuf_reserve(&p->dev_counts, 2 * p->channels * sizeof(int), "Accuracy counts") ||
      moka_devbuf_reserve(&p->dev_status, sizeof(MokaLabelStatus), "Accuracy status"))
    return -1;
  MokaLabelStatus status;
  if (moka_cuda_accuracy(st, l->bottom[0]->dev_data, l->bottom[1]->dev_data, p->outer,
                         p->channels, p->inner, p->top_k, p->has_ignore, p->ignore_label,
                         l->top[0]->dev_data, l->n_top > 1 ? l->top[1]->dev_data : NULL,
                         p->dev_counts.ptr, p->dev_status.ptr) ||
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
  return 0;
}
#endif

const LayerType layer_type_accuracy = {
    .name = "Accuracy",
    .min_bottoms = 2,
    .max_bottoms = 2,
    .min_tops = 1,
    .max_tops = 2,
    .priv_size = sizeof(AccuracyPriv),
    .setup = accuracy_setup,
    .reshape = accuracy_reshape,
    .forward = {[MOKA_BACKEND_CPU] = accuracy_forward, [MOKA_BACKEND_CPU_FAST] = accuracy_forward},
    .backward = {[MOKA_BACKEND_CPU] = accuracy_backward,
                 [MOKA_BACKEND_CPU_FAST] = accuracy_backward},
    .destroy = accuracy_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = accuracy_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = accuracy_backward,
#endif
};
