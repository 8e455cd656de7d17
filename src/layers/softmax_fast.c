/* softmax_fast.c — Softmax on the fast CPU backend: the reference kernel
 * (softmax_ref_forward, softmax.c) run on blocks of the outer axis in
 * parallel, and the reference backward threaded the same way. Each position
 * is computed exactly as the reference computes it (scalar expf, the same
 * double sums), so the results are identical.
 */
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "softmax.h"
#include "softmax_priv.h"
#include "util.h"

int softmax_forward_fast(Layer *l) {
  const SoftmaxPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (outer, C, inner) */
  float *y = l->top[0]->data;          /* (outer, C, inner), may be x */
  const size_t CI = p->channels * p->inner;
#pragma omp parallel for schedule(static) if (l->bottom[0]->count >= FAST_GRAIN)
  for (size_t n = 0; n < p->outer; n++)
    softmax_ref_forward(x + n * CI, y + n * CI, 1, p->channels, p->inner);
  return 0;
}

int softmax_backward_fast(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const SoftmaxPriv *p = l->priv;
  const float *y = l->top[0]->data;  /* (outer, C, inner) */
  const float *dy = l->top[0]->diff; /* (outer, C, inner) */
  float *dx = l->bottom[0]->diff;    /* (outer, C, inner), may be dy */
  const size_t C = p->channels, I = p->inner;
#pragma omp parallel for schedule(static) if (l->top[0]->count >= FAST_GRAIN)
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
