/* concat_fast.c — Concat on the fast CPU backend: the reference's copies
 * (concat.c), one per (outer index, bottom), run in parallel. Identical
 * results.
 */
#include <string.h>

#include "concat_priv.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

int concat_forward_fast(Layer *l) {
  const ConcatPriv *p = l->priv;
  float *y = l->top[0]->data; /* (outer, sum_k C_k, inner) */
  const size_t top_axis = (size_t)l->top[0]->shape[p->axis];
  const int K = l->n_bottom;
  const long jobs = (long)p->num_concats * K;
#pragma omp parallel for schedule(dynamic, 1) if (l->top[0]->count >= FAST_GRAIN)
  for (long j = 0; j < jobs; j++) {
    const size_t n = (size_t)(j / K);
    const int k = (int)(j % K);
    size_t offset = 0; /* channels of the bottoms before k */
    for (int b = 0; b < k; b++) offset += (size_t)l->bottom[b]->shape[p->axis];
    const size_t len = (size_t)l->bottom[k]->shape[p->axis] * p->inner;
    memcpy(y + (n * top_axis + offset) * p->inner, l->bottom[k]->data + n * len,
           len * sizeof(float));
  }
  return 0;
}

int concat_backward_fast(Layer *l) {
  const ConcatPriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (outer, sum_k C_k, inner) */
  const size_t top_axis = (size_t)l->top[0]->shape[p->axis];
  const int K = l->n_bottom;
  const long jobs = (long)p->num_concats * K;
#pragma omp parallel for schedule(dynamic, 1) if (l->top[0]->count >= FAST_GRAIN)
  for (long j = 0; j < jobs; j++) {
    const size_t n = (size_t)(j / K);
    const int k = (int)(j % K);
    if (!l->propagate_down[k]) continue;
    size_t offset = 0;
    for (int b = 0; b < k; b++) offset += (size_t)l->bottom[b]->shape[p->axis];
    const size_t len = (size_t)l->bottom[k]->shape[p->axis] * p->inner;
    memcpy(l->bottom[k]->diff + n * len, dy + (n * top_axis + offset) * p->inner,
           len * sizeof(float));
  }
  return 0;
}
