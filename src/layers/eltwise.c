/* eltwise.c — Caffe's Eltwise layer, CPU reference. Two or more bottoms of
 * one shape, one top:
 *
 *   SUM  (default)  y = sum_k coeff[k] * x_k        (coeff default 1 each)
 *                   dx_k = coeff[k] * dy
 *   PROD            y = prod_k x_k
 *                   dx_k = dy * prod_{j != k} x_j   (stable_prod_grad, default)
 *                        = dy * y / x_k             (stable_prod_grad: false)
 *   MAX             y = max_k x_k; a tie between bottoms 0 and 1 goes to 1,
 *                   any later tie to the earlier bottom (Caffe's loop);
 *                   dx_k = dy where bottom k won, else 0
 */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "eltwise_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* EltwisePriv (the layer's state) is in eltwise_priv.h, shared with the fast path. */

static int eltwise_setup(Layer *l) {
  EltwisePriv *p = l->priv;
  static const Caffe__EltwiseParameter def = CAFFE__ELTWISE_PARAMETER__INIT;
  const Caffe__EltwiseParameter *ep = l->param->eltwise_param ? l->param->eltwise_param : &def;
  p->op = ep->operation;
  if (p->op != CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM &&
      p->op != CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD &&
      p->op != CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX)
    return moka_errorf("unknown eltwise_param.operation %d", (int)p->op);
  if (ep->n_coeff && (int)ep->n_coeff != l->n_bottom)
    return moka_errorf("eltwise_param has %zu coeff values for %d bottom blobs; give one per "
                       "bottom or none",
                       ep->n_coeff, l->n_bottom);
  if (ep->n_coeff && p->op != CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM)
    return moka_errorf("eltwise_param.coeff is only allowed with operation SUM");
  p->coeff = moka_calloc((size_t)l->n_bottom, sizeof(float));
  if (!p->coeff) return -1;
  for (int k = 0; k < l->n_bottom; k++) p->coeff[k] = ep->n_coeff ? ep->coeff[k] : 1.0f;
  p->stable_prod_grad = ep->stable_prod_grad;
  return 0;
}

static int eltwise_reshape(Layer *l) {
  EltwisePriv *p = l->priv;
  const Blob *x0 = l->bottom[0];
  for (int k = 1; k < l->n_bottom; k++)
    if (!blob_same_shape(l->bottom[k], x0)) {
      char a[256], b[256];
      return moka_errorf("bottom %d '%s' has shape %s but bottom 0 '%s' has shape %s; Eltwise "
                         "needs equal shapes",
                         k, l->bottom[k]->name, blob_shape_string(l->bottom[k], a, sizeof a),
                         x0->name, blob_shape_string(x0, b, sizeof b));
    }
  if (blob_reshape_like(l->top[0], x0)) return -1;
  if (p->op == CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX &&
      (x0->count > p->argmax_cap || !p->argmax)) {
    int *a = moka_realloc(p->argmax, x0->count * sizeof(int));
    if (!a) return -1;
    p->argmax = a;
    p->argmax_cap = x0->count;
  }
  return 0;
}

static int eltwise_forward(Layer *l) {
  EltwisePriv *p = l->priv;
  const size_t n = l->top[0]->count;
  float *y = l->top[0]->data; /* (shape) */
  const int K = l->n_bottom;
  switch (p->op) {
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD: {
      const float *a = l->bottom[0]->data, *b = l->bottom[1]->data;
      for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
      for (int k = 2; k < K; k++) {
        const float *x = l->bottom[k]->data;
        for (size_t i = 0; i < n; i++) y[i] *= x[i];
      }
      break;
    }
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM:
      memset(y, 0, n * sizeof(float));
      for (int k = 0; k < K; k++) {
        const float *x = l->bottom[k]->data;
        const float c = p->coeff[k];
        for (size_t i = 0; i < n; i++) y[i] += c * x[i];
      }
      break;
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX: {
      const float *a = l->bottom[0]->data, *b = l->bottom[1]->data;
      for (size_t i = 0; i < n; i++) {
        if (a[i] > b[i]) {
          y[i] = a[i];
          p->argmax[i] = 0;
        } else {
          y[i] = b[i];
          p->argmax[i] = 1;
        }
      }
      for (int k = 2; k < K; k++) {
        const float *x = l->bottom[k]->data;
        for (size_t i = 0; i < n; i++)
          if (x[i] > y[i]) {
            y[i] = x[i];
            p->argmax[i] = k;
          }
      }
      break;
    }
    default: return moka_errorf("unknown eltwise operation %d", (int)p->op);
  }
  return 0;
}

static int eltwise_backward(Layer *l) {
  EltwisePriv *p = l->priv;
  const size_t n = l->top[0]->count;
  const float *y = l->top[0]->data;  /* (shape) */
  const float *dy = l->top[0]->diff; /* (shape) */
  const int K = l->n_bottom;
  for (int k = 0; k < K; k++) {
    if (!l->propagate_down[k]) continue;
    const float *xk = l->bottom[k]->data;
    float *dx = l->bottom[k]->diff; /* (shape) */
    switch (p->op) {
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD:
        if (p->stable_prod_grad) {
          bool initialized = false;
          for (int j = 0; j < K; j++) {
            if (j == k) continue;
            const float *xj = l->bottom[j]->data;
            if (!initialized) {
              memcpy(dx, xj, n * sizeof(float));
              initialized = true;
            } else {
              for (size_t i = 0; i < n; i++) dx[i] *= xj[i];
            }
          }
        } else {
          for (size_t i = 0; i < n; i++) dx[i] = y[i] / xk[i];
        }
        for (size_t i = 0; i < n; i++) dx[i] *= dy[i];
        break;
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM:
        for (size_t i = 0; i < n; i++) dx[i] = p->coeff[k] == 1.0f ? dy[i] : p->coeff[k] * dy[i];
        break;
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX:
        for (size_t i = 0; i < n; i++) dx[i] = p->argmax[i] == k ? dy[i] : 0.0f;
        break;
      default: return moka_errorf("unknown eltwise operation %d", (int)p->op);
    }
  }
  return 0;
}

static void eltwise_destroy(Layer *l) {
  EltwisePriv *p = l->priv;
  free(p->coeff);
  free(p->argmax);
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_argmax);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/eltwise.cu, one pass per bottom in the reference's order and
 * rounding (bit-identical). */
static int eltwise_forward_cuda(Layer *l) {
  EltwisePriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  cudaStream_t st = l->cuda->stream;
  const size_t n = l->top[0]->count;
  float *y = l->top[0]->dev_data; /* (shape) */
  const int K = l->n_bottom;
  switch (p->op) {
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD:
      if (moka_cuda_mul(st, l->bottom[0]->dev_data, l->bottom[1]->dev_data, y, n)) return -1;
      for (int k = 2; k < K; k++)
        if (moka_cuda_mul(st, y, l->bottom[k]->dev_data, y, n)) return -1;
      return 0;
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM:
      for (int k = 0; k < K; k++)
        if (moka_cuda_eltwise_sum(st, y, l->bottom[k]->dev_data, p->coeff[k], k == 0, n))
          return -1;
      return 0;
    case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX:
      if (moka_devbuf_reserve(&p->dev_argmax, n * sizeof(int), "Eltwise MAX argmax") ||
          moka_cuda_eltwise_max2(st, l->bottom[0]->dev_data, l->bottom[1]->dev_data, y,
                                 p->dev_argmax.ptr, n))
        return -1;
      for (int k = 2; k < K; k++)
        if (moka_cuda_eltwise_maxacc(st, l->bottom[k]->dev_data, y, p->dev_argmax.ptr, k, n))
          return -1;
      return 0;
    default: return moka_errorf("unknown eltwise operation %d", (int)p->op);
  }
}

static int eltwise_backward_cuda(Layer *l) {
  EltwisePriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  cudaStream_t st = l->cuda->stream;
  const size_t n = l->top[0]->count;
  const float *y = l->top[0]->dev_data, *dy = l->top[0]->dev_diff; /* (shape) */
  const int K = l->n_bottom;
  for (int k = 0; k < K; k++) {
    if (!l->propagate_down[k]) continue;
    float *dx = l->bottom[k]->dev_diff; /* (shape) */
    int rc = 0;
    switch (p->op) {
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__PROD:
        if (p->stable_prod_grad) {
          bool initialized = false;
          for (int j = 0; j < K && !rc; j++) {
            if (j == k) continue;
            rc = initialized ? moka_cuda_mul(st, dx, l->bottom[j]->dev_data, dx, n)
                             : moka_d2d(st, dx, l->bottom[j]->dev_data, n * sizeof(float));
            initialized = true;
          }
        } else {
          rc = moka_cuda_div(st, y, l->bottom[k]->dev_data, dx, n);
        }
        if (!rc) rc = moka_cuda_mul(st, dx, dy, dx, n);
        break;
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__SUM:
        rc = moka_cuda_scal(st, dy, p->coeff[k], dx, n);
        break;
      case CAFFE__ELTWISE_PARAMETER__ELTWISE_OP__MAX:
        if (!p->dev_argmax.ptr) return moka_errorf("backward before forward on the device");
        rc = moka_cuda_eltwise_maxbwd(st, dy, p->dev_argmax.ptr, k, dx, n);
        break;
      default: return moka_errorf("unknown eltwise operation %d", (int)p->op);
    }
    if (rc) return -1;
  }
  return 0;
}
#endif

const LayerType layer_type_eltwise = {
    .name = "Eltwise",
    .min_bottoms = 2,
    .max_bottoms = -1,
    .min_tops = 1,
    .max_tops = 1,
    .priv_size = sizeof(EltwisePriv),
    .setup = eltwise_setup,
    .reshape = eltwise_reshape,
    .forward = {[MOKA_BACKEND_CPU] = eltwise_forward,
                [MOKA_BACKEND_CPU_FAST] = eltwise_forward_fast /* eltwise_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = eltwise_backward,
                 [MOKA_BACKEND_CPU_FAST] = eltwise_backward_fast},
    .destroy = eltwise_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = eltwise_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = eltwise_backward_cuda,
#endif
};
