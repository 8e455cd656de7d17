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

#include "dropout_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* DropoutPriv (the layer's state) is in dropout_priv.h, shared with the fast path. */

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
  if (x->count > p->mask_cap || !p->mask) {
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
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_mask);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: the mask is drawn on the HOST, from the net's random stream, by the
 * same loop as the CPU reference, and copied to the device: CPU and GPU
 * training drop exactly the same units (and the same as Caffe for the same
 * seed). The multiply is kernels/dropout.cu. */
static int dropout_forward_cuda(Layer *l) {
  DropoutPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  cudaStream_t st = l->cuda->stream;
  const float *x = l->bottom[0]->dev_data; /* (any) */
  float *y = l->top[0]->dev_data;          /* (any), may be x */
  const size_t n = l->bottom[0]->count;
  if (l->phase != MOKA_TRAIN) return y == x ? 0 : moka_d2d(st, y, x, n * sizeof(float));
  const double keep = 1.0 - (double)p->ratio;
  for (size_t i = 0; i < n; i++) p->mask[i] = (unsigned int)rng_bernoulli(l->rng, keep);
  if (moka_devbuf_reserve(&p->dev_mask, n * sizeof(unsigned int), "Dropout mask") ||
      moka_h2d(st, p->dev_mask.ptr, p->mask, n * sizeof(unsigned int)))
    return -1;
  return moka_cuda_dropout(st, x, p->dev_mask.ptr, p->scale, y, n);
}

static int dropout_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  DropoutPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  cudaStream_t st = l->cuda->stream;
  const float *dy = l->top[0]->dev_diff; /* (any) */
  float *dx = l->bottom[0]->dev_diff;    /* (any), may be dy */
  const size_t n = l->bottom[0]->count;
  if (l->phase != MOKA_TRAIN) return dx == dy ? 0 : moka_d2d(st, dx, dy, n * sizeof(float));
  if (!p->dev_mask.ptr) return moka_errorf("backward before forward on the device");
  return moka_cuda_dropout(st, dy, p->dev_mask.ptr, p->scale, dx, n);
}
#endif

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
    .forward = {[MOKA_BACKEND_CPU] = dropout_forward,
                [MOKA_BACKEND_CPU_FAST] = dropout_forward_fast /* dropout_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = dropout_backward,
                 [MOKA_BACKEND_CPU_FAST] = dropout_backward_fast},
    .destroy = dropout_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = dropout_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = dropout_backward_cuda,
#endif
};
