/* innerproduct_fast.c — InnerProduct on the fast CPU backend: the
 * reference's GEMMs (innerproduct.c) on fast_gemm (the OpenMP pool, OpenBLAS
 * single-threaded per block: see fast.h) and the bias steps threaded. The
 * GEMMs sum in another blocking order than the reference's multi-threaded
 * OpenBLAS call, so results agree to float rounding; the bias is exact.
 */
#include "fast.h"
#include "fast_layers.h"
#include "innerproduct_priv.h"
#include "layer.h"
#include "util.h"

int ip_forward_fast(Layer *l) {
  IpPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (M,K) */
  const float *w = l->params[0]->data; /* (N,K), or (K,N) transposed */
  float *y = l->top[0]->data;          /* (M,N) */
  const int M = p->M, N = p->num_output, K = p->K;
  if (fast_gemm(false, !p->transpose, M, N, K, 1.0f, x, K, w, p->transpose ? N : K, 0.0f, y, N))
    return -1;
  if (p->bias_term) {
    const float *bias = l->params[1]->data; /* (N) */
#pragma omp parallel for schedule(static) if ((size_t)M * N >= FAST_GRAIN)
    for (int m = 0; m < M; m++) {
      float *row = y + (size_t)m * N;
#pragma omp simd
      for (int n = 0; n < N; n++) row[n] += bias[n];
    }
  }
  return 0;
}

int ip_backward_fast(Layer *l) {
  IpPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (M,K) */
  const float *dy = l->top[0]->diff;   /* (M,N) */
  const float *w = l->params[0]->data; /* (N,K), or (K,N) transposed */
  float *dw = l->params[0]->diff;      /* like w, accumulated */
  const int M = p->M, N = p->num_output, K = p->K;
  if (layer_param_needs_grad(l, 0)) {
    /* dW (K,N) += x^T dy (transpose), dW (N,K) += dy^T x */
    if (p->transpose ? fast_gemm(true, false, K, N, M, 1.0f, x, K, dy, N, 1.0f, dw, N)
                     : fast_gemm(true, false, N, K, M, 1.0f, dy, N, x, K, 1.0f, dw, K))
      return -1;
  }
  if (p->bias_term && layer_param_needs_grad(l, 1)) {
    float *db = l->params[1]->diff; /* (N), accumulated */
#pragma omp parallel for schedule(static) if ((size_t)M * N >= FAST_GRAIN)
    for (int n = 0; n < N; n++) {
      double s = 0.0;
      for (int m = 0; m < M; m++) s += dy[(size_t)m * N + n];
      db[n] += (float)s;
    }
  }
  if (l->propagate_down[0] && /* dx (M,K) = dy (M,N) x W (N,K) */
      fast_gemm(false, p->transpose, M, K, N, 1.0f, dy, N, w, p->transpose ? N : K, 0.0f,
                l->bottom[0]->diff, K))
    return -1;
  return 0;
}
