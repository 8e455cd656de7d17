/* batchnorm_fast.c — BatchNorm on the fast CPU backend.
 *
 * The reference's formulas and float operations (batchnorm.c), threaded over
 * channels and vectorised:
 *   TRAIN (batch statistics): one parallel loop over channels; each channel
 *     sums its N*S values (double), then the squared deviations (double),
 *     then normalises them while they are still in cache. The running
 *     statistics are updated as in the reference.
 *   global statistics: y = (x - mean) / std over (n, c) planes in parallel.
 * Backward likewise, per channel: the two double sums, then
 *   dx = (dy - mean(dy) - mean(dy*y) * y) / std.
 * Only the order of the double sums differs from the reference (vector
 * lanes), so the statistics agree to double rounding and the element-wise
 * results are the reference's float operations.
 */
#include <math.h>

#include "batchnorm_priv.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* y[i] = (x[i] - mu) / sd, also into xn (the kept normalised output). */
static inline void normalize(const float *x, float *y, float *xn, size_t S, float mu, float sd) {
#pragma omp simd
  for (size_t s = 0; s < S; s++) {
    float v = (x[s] - mu) / sd;
    y[s] = v;
    xn[s] = v;
  }
}

int bn_forward_fast(Layer *l) {
  BatchNormPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (N,C,S) */
  float *y = l->top[0]->data;          /* (N,C,S), may be x */
  float *xn = p->x_norm;               /* (N,C,S) */
  const size_t N = p->num, C = (size_t)p->channels, S = p->spatial;
  float *b0 = l->params[0]->data, *b1 = l->params[1]->data, *b2 = l->params[2]->data;
  const size_t count = N * C * S;

  if (p->use_global_stats) {
    const float f = b2[0] == 0 ? 0.0f : 1.0f / b2[0];
    for (size_t c = 0; c < C; c++) {
      p->mean[c] = f * b0[c];
      p->var[c] = f * b1[c];
      p->std[c] = sqrtf(p->var[c] + p->eps);
    }
#pragma omp parallel for collapse(2) schedule(static) if (count >= FAST_GRAIN)
    for (size_t n = 0; n < N; n++)
      for (size_t c = 0; c < C; c++) {
        const size_t o = (n * C + c) * S;
        normalize(x + o, y + o, xn + o, S, p->mean[c], p->std[c]);
      }
    return 0;
  }

  const size_t m = N * S;
#pragma omp parallel for schedule(dynamic, 1) if (count >= FAST_GRAIN)
  for (size_t c = 0; c < C; c++) {
    bn_fast_channel_stats(x, N, C, S, c, p->eps, &p->mean[c], &p->var[c], &p->std[c]);
    for (size_t n = 0; n < N; n++) {
      const size_t o = (n * C + c) * S;
      normalize(x + o, y + o, xn + o, S, p->mean[c], p->std[c]);
    }
  }
  /* Running statistics (weighted sums), as the reference. */
  const float bias_correction = m > 1 ? (float)m / (float)(m - 1) : 1.0f;
  b2[0] = b2[0] * p->maf + 1.0f;
  for (size_t c = 0; c < C; c++) {
    b0[c] = p->maf * b0[c] + p->mean[c];
    b1[c] = p->maf * b1[c] + bias_correction * p->var[c];
  }
  return 0;
}

int bn_backward_fast(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  BatchNormPriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (N,C,S) */
  float *dx = l->bottom[0]->diff;    /* (N,C,S), may be dy */
  const float *yn = p->x_norm;       /* (N,C,S) */
  const size_t N = p->num, C = (size_t)p->channels, S = p->spatial;
  const size_t count = N * C * S;

  if (p->use_global_stats) {
#pragma omp parallel for collapse(2) schedule(static) if (count >= FAST_GRAIN)
    for (size_t n = 0; n < N; n++)
      for (size_t c = 0; c < C; c++) {
        const size_t o = (n * C + c) * S;
        const float sd = p->std[c];
#pragma omp simd
        for (size_t s = 0; s < S; s++) dx[o + s] = dy[o + s] / sd;
      }
    return 0;
  }
  const double inv_m = 1.0 / (double)(N * S);
#pragma omp parallel for schedule(dynamic, 1) if (count >= FAST_GRAIN)
  for (size_t c = 0; c < C; c++) {
    double sum_dy = 0, sum_dyy = 0;
    for (size_t n = 0; n < N; n++) {
      const size_t o = (n * C + c) * S;
#pragma omp simd reduction(+ : sum_dy, sum_dyy)
      for (size_t s = 0; s < S; s++) {
        sum_dy += dy[o + s];
        sum_dyy += (double)dy[o + s] * (double)yn[o + s];
      }
    }
    const float mean_dy = (float)(sum_dy * inv_m), mean_dyy = (float)(sum_dyy * inv_m);
    const float sd = p->std[c];
    /* Each dx[i] reads only dy[i] and the channel sums: safe in place. */
    for (size_t n = 0; n < N; n++) {
      const size_t o = (n * C + c) * S;
#pragma omp simd
      for (size_t s = 0; s < S; s++) dx[o + s] = (dy[o + s] - mean_dy - mean_dyy * yn[o + s]) / sd;
    }
  }
  return 0;
}
