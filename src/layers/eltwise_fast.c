/* eltwise_fast.c — Eltwise (SUM, PROD, MAX) on the fast CPU backend.
 *
 * SUM, the residual connections of ResNet, is one threaded, vectorised pass
 *   y = ((0 + c0*x0) + c1*x1) + ...
 * which is the reference's sequence of float operations element by element
 * (eltwise.c zeroes y and adds each bottom in turn), so identical results.
 * Its backward is dx_k = dy (coefficient 1) or c_k*dy, threaded; two
 * bottoms with coefficient 1 get both copies from one pass over dy.
 * PROD and MAX run the reference's loops, threaded over elements.
 */
#include <string.h>

#include "eltwise_priv.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

int eltwise_forward_fast(Layer *l) {
  EltwisePriv *p = l->priv;
  const size_t n = l->top[0]->count;
  float *y = l->top[0]->data; /* (shape) */
  const int K = l->n_bottom;
  switch (p->op) {
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM: {
      const float *x0 = l->bottom[0]->data, *x1 = l->bottom[1]->data;
      const float c0 = p->coeff[0], c1 = p->coeff[1];
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
      for (size_t i = 0; i < n; i++) y[i] = (0.0f + c0 * x0[i]) + c1 * x1[i];
      for (int k = 2; k < K; k++) {
        const float *x = l->bottom[k]->data;
        const float c = p->coeff[k];
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
        for (size_t i = 0; i < n; i++) y[i] += c * x[i];
      }
      return 0;
    }
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD: {
      const float *a = l->bottom[0]->data, *b = l->bottom[1]->data;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
      for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
      for (int k = 2; k < K; k++) {
        const float *x = l->bottom[k]->data;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
        for (size_t i = 0; i < n; i++) y[i] *= x[i];
      }
      return 0;
    }
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX: {
      const float *a = l->bottom[0]->data, *b = l->bottom[1]->data;
      int *am = p->argmax; /* (shape) */
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
      for (size_t i = 0; i < n; i++) {
        const bool first = a[i] > b[i];
        y[i] = first ? a[i] : b[i];
        am[i] = first ? 0 : 1;
      }
      for (int k = 2; k < K; k++) {
        const float *x = l->bottom[k]->data;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
        for (size_t i = 0; i < n; i++) {
          const bool win = x[i] > y[i];
          y[i] = win ? x[i] : y[i];
          am[i] = win ? k : am[i];
        }
      }
      return 0;
    }
    default: return moka_errorf("unknown eltwise operation %d", (int)p->op);
  }
}

int eltwise_backward_fast(Layer *l) {
  EltwisePriv *p = l->priv;
  const size_t n = l->top[0]->count;
  const float *y = l->top[0]->data;  /* (shape) */
  const float *dy = l->top[0]->diff; /* (shape) */
  const int K = l->n_bottom;
  /* SUM of two bottoms, coefficients 1, both wanting their gradient (a
   * residual connection the net did not fuse): one pass reads dy once and
   * writes both copies, instead of one memcpy per bottom. (Fused residual
   * chains, src/net_fuse.c, make no copy at all.) The same blob twice, or a
   * bottom that is the top, falls through to the general loop. */
  if (p->op == CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM && K == 2 && p->coeff[0] == 1.0f &&
      p->coeff[1] == 1.0f && l->propagate_down[0] && l->propagate_down[1]) {
    float *d0 = l->bottom[0]->diff, *d1 = l->bottom[1]->diff; /* (shape) */
    if (d0 != dy && d1 != dy && d0 != d1) {
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
      for (size_t i = 0; i < n; i++) {
        d0[i] = dy[i];
        d1[i] = dy[i];
      }
      return 0;
    }
  }
  for (int k = 0; k < K; k++) {
    if (!l->propagate_down[k]) continue;
    const float *xk = l->bottom[k]->data;
    float *dx = l->bottom[k]->diff; /* (shape) */
    switch (p->op) {
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM: {
        const float c = p->coeff[k];
        if (c == 1.0f) {
          if (dx != dy) {
#pragma omp parallel for schedule(static) if (n >= FAST_GRAIN)
            for (size_t b = 0; b < (n + 65535) / 65536; b++) {
              size_t lo = b * 65536, len = n - lo < 65536 ? n - lo : 65536;
              memcpy(dx + lo, dy + lo, len * sizeof(float));
            }
          }
        } else {
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
          for (size_t i = 0; i < n; i++) dx[i] = c * dy[i];
        }
        break;
      }
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD:
        if (p->stable_prod_grad) {
          bool initialized = false;
          for (int j = 0; j < K; j++) {
            if (j == k) continue;
            const float *xj = l->bottom[j]->data;
            if (!initialized) {
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
              for (size_t i = 0; i < n; i++) dx[i] = xj[i];
              initialized = true;
            } else {
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
              for (size_t i = 0; i < n; i++) dx[i] *= xj[i];
            }
          }
        } else {
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
          for (size_t i = 0; i < n; i++) dx[i] = y[i] / xk[i];
        }
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
        for (size_t i = 0; i < n; i++) dx[i] *= dy[i];
        break;
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX: {
        const int *am = p->argmax;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
        for (size_t i = 0; i < n; i++) dx[i] = am[i] == k ? dy[i] : 0.0f;
        break;
      }
      default: return moka_errorf("unknown eltwise operation %d", (int)p->op);
    }
  }
  return 0;
}
