/* dropout.c — Caffe's Dropout layer, CPU reference.
 *
 * TEST: y = x (no scaling). TRAIN: one Bernoulli draw per element, in C
 * order, from the net's random stream (boost's bernoulli_distribution:
 * keep iff u <= (1 - (double)(float)ratio) * (2^32 - 1)), a new mask at every
 * forward; y = x * mask * scale with scale = (float)(1 / (1 - ratio)),
 * dx = dy * mask * scale. dropout_ratio default 0.5. In place allowed.
 * This replays Caffe's masks exactly for the same seed and sequence of draws
 * (shared/golden/README.md section 6, item 7).
 */
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "util.h"

typedef struct DropoutPriv {
  float ratio;          /* threshold_ */
  float scale;          /* 1 / (1 - ratio), in float */
  unsigned int *mask;   /* (count) 1 = kept, from the last TRAIN forward */
  size_t mask_cap;
} DropoutPriv;

static int dropout_setup(Layer *l) {
  DropoutPriv *p = l->priv;
  p->ratio = l->param->dropout_param ? l->param->dropout_param->dropout_ratio : 0.5f;
  if (!(p->ratio >= 0.0f && p->ratio < 1.0f))
    return moka_errorf("dropout_param.dropout_ratio must be in [0, 1), got %g", (double)p->ratio);
  p->scale = (float)(1.0 / (1.0 - (double)p->ratio));
  if (l->phase == MOKA_TRAIN && !l->rng)
    return moka_errorf("a TRAIN-phase Dropout layer needs the net's random stream");
  return 0;
}

static int dropout_reshape(Layer *l) {
  DropoutPriv *p = l->priv;
  const Blob *x = l->bottom[0];
  if (l->top[0] != x && blob_reshape_like(l->top[0], x)) return -1;
  if (x->count > p->mask_cap) {
    unsigned int *m = moka_realloc(p->mask, x->count * sizeof *m);
    if (!m) return -1;
    p->mask = m;
    p->mask_cap = x->count;
  }
  return 0;
}

static int dropout_forward(Layer *l) {
  DropoutPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (any) */
  float *y = l->top[0]->data;          /* (any), may be x */
  const size_t n = l->bottom[0]->count;
  if (l->phase != MOKA_TRAIN) {
    if (y != x) memcpy(y, x, n * sizeof(float));
    return 0;
  }
  const double keep = 1.0 - (double)p->ratio;
  for (size_t i = 0; i < n; i++) p->mask[i] = (unsigned int)rng_bernoulli(l->rng, keep);
  for (size_t i = 0; i < n; i++) y[i] = x[i] * (float)p->mask[i] * p->scale;
  return 0;
}

static int dropout_backward(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const DropoutPriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (any) */
  float *dx = l->bottom[0]->diff;    /* (any), may be dy */
  const size_t n = l->bottom[0]->count;
  if (l->phase != MOKA_TRAIN) {
    if (dx != dy) memcpy(dx, dy, n * sizeof(float));
    return 0;
  }
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (float)p->mask[i] * p->scale;
  return 0;
}

static void dropout_destroy(Layer *l) {
  DropoutPriv *p = l->priv;
  free(p->mask);
}

const LayerType layer_type_dropout = {
    .name = "Dropout",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .in_place_ok = true,
    .priv_size = sizeof(DropoutPriv),
    .setup = dropout_setup,
    .reshape = dropout_reshape,
    .forward = {[MOKA_BACKEND_CPU] = dropout_forward, [MOKA_BACKEND_CPU_FAST] = dropout_forward},
    .backward = {[MOKA_BACKEND_CPU] = dropout_backward,
                 [MOKA_BACKEND_CPU_FAST] = dropout_backward},
    .destroy = dropout_destroy,
};
