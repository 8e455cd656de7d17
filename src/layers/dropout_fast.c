/* dropout_fast.c — Dropout on the fast CPU backend. The Bernoulli draws stay
 * sequential, on the net's single random stream and in C order, exactly as
 * the reference (dropout.c) draws them, so the masks are Caffe's; only the
 * multiplications (the reference's float operations) run in parallel.
 */
#include <string.h>

#include "dropout_priv.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

int dropout_forward_fast(Layer *l) {
  DropoutPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (any) */
  float *y = l->top[0]->data;          /* (any), may be x */
  const size_t n = l->bottom[0]->count;
  if (l->phase != MOKA_TRAIN) {
    if (y != x) memcpy(y, x, n * sizeof(float));
    return 0;
  }
  const double keep = 1.0 - (double)p->ratio;
  unsigned int *mask = p->mask; /* (count) */
  for (size_t i = 0; i < n; i++) mask[i] = (unsigned int)rng_bernoulli(l->rng, keep);
  const float scale = p->scale;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
  for (size_t i = 0; i < n; i++) y[i] = x[i] * (float)mask[i] * scale;
  return 0;
}

int dropout_backward_fast(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const DropoutPriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (any) */
  float *dx = l->bottom[0]->diff;    /* (any), may be dy */
  const size_t n = l->bottom[0]->count;
  if (l->phase != MOKA_TRAIN) {
    if (dx != dy) memcpy(dx, dy, n * sizeof(float));
    return 0;
  }
  const unsigned int *mask = p->mask;
  const float scale = p->scale;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (float)mask[i] * scale;
  return 0;
}
