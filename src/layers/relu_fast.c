/* relu_fast.c — ReLU on the fast CPU backend: the reference's expressions
 * (relu.c), vectorised (branch-free: the reference's scalar loop pays a
 * mispredicted branch on about every other element) and threaded. The
 * float operations are the reference's, so the results are identical.
 */
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

static float relu_slope(const Layer *l) {
  return l->param->relu_param ? l->param->relu_param->negative_slope : 0.0f;
}

int relu_forward_fast(Layer *l) {
  const float *x = l->bottom[0]->data; /* (any) */
  float *y = l->top[0]->data;          /* (any), may be x */
  const size_t n = l->bottom[0]->count;
  const float slope = relu_slope(l);
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
  for (size_t i = 0; i < n; i++) {
    float mx = x[i] < 0.0f ? 0.0f : x[i];
    float mn = 0.0f < x[i] ? 0.0f : x[i];
    y[i] = mx + slope * mn;
  }
  return 0;
}

int relu_backward_fast(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const float *x = l->bottom[0]->data; /* (any) */
  const float *dy = l->top[0]->diff;   /* (any) */
  float *dx = l->bottom[0]->diff;      /* (any), may be dy */
  const size_t n = l->bottom[0]->count;
  const float slope = relu_slope(l);
  /* The reference's factor (x > 0) + slope * (x <= 0), precomputed for the
   * three cases (x > 0, x <= 0, NaN) with the same float operations, then
   * chosen by a select: the loop vectorises (the comparisons as numbers
   * make GCC -O2 emit branches). */
  const float f_pos = 1.0f + slope * 0.0f, f_neg = 0.0f + slope * 1.0f,
              f_nan = 0.0f + slope * 0.0f;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
  for (size_t i = 0; i < n; i++) {
    const float f = x[i] > 0 ? f_pos : f_nan;
    dx[i] = dy[i] * (x[i] <= 0 ? f_neg : f);
  }
  return 0;
}
