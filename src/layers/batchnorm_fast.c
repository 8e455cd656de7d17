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

/* ---- batch statistics ----------------------------------------------------------------
 *
 * Per channel: sum (double) -> mean (float), then the sum of squared float
 * deviations d = x - mean, squared in double. These passes convert every
 * value to double, which limits them (not memory): with AVX-512, eight
 * doubles a vector and four independent sums; otherwise what the compiler
 * makes of the plain loops. The two give the same mean and variance up to
 * the order of double additions. */
static void channel_stats_plain(const float *x, size_t N, size_t C, size_t S, size_t ch,
                                double *sum_out, float *mu_out, double *sq_out) {
  const size_t m = N * S;
  double sum = 0;
  for (size_t n = 0; n < N; n++) {
    const float *xc = x + (n * C + ch) * S;
#pragma omp simd reduction(+ : sum)
    for (size_t s = 0; s < S; s++) sum += xc[s];
  }
  const float mu = (float)(sum / (double)m);
  double sq = 0;
  for (size_t n = 0; n < N; n++) {
    const float *xc = x + (n * C + ch) * S;
#pragma omp simd reduction(+ : sq)
    for (size_t s = 0; s < S; s++) {
      float d = xc[s] - mu;
      sq += (double)d * (double)d;
    }
  }
  *sum_out = sum;
  *mu_out = mu;
  *sq_out = sq;
}

/* The first pass prefetches PFD floats ahead, across into the channel's
 * next plane (measured, ResNet-50 training at batch 8: the fused chains'
 * forward 32.4 -> 30.3 ms; 256 floats less, 2048-4096 alike). */
enum { PFD = 1024 };

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl")
#include <immintrin.h>

static void channel_stats_avx512(const float *x, size_t N, size_t C, size_t S, size_t ch,
                                 double *sum_out, float *mu_out, double *sq_out) {
  const size_t m = N * S;
  __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t n = 0; n < N; n++) {
    const float *xc = x + (n * C + ch) * S;
    /* the next plane of the channel (or the next channel's first); a
     * prefetch never faults, so one past the blob's end is harmless */
    const float *xnext = n + 1 < N ? xc + C * S : x + ch * S + S;
    size_t s = 0;
    for (; s + 32 <= S; s += 32) {
      const float *pf = s + PFD < S ? xc + s + PFD : xnext + (s + PFD - S);
      _mm_prefetch((const char *)pf, _MM_HINT_T0);
      _mm_prefetch((const char *)(pf + 16), _MM_HINT_T0);
      a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(xc + s)));
      a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_loadu_ps(xc + s + 8)));
      a2 = _mm512_add_pd(a2, _mm512_cvtps_pd(_mm256_loadu_ps(xc + s + 16)));
      a3 = _mm512_add_pd(a3, _mm512_cvtps_pd(_mm256_loadu_ps(xc + s + 24)));
    }
    for (; s + 8 <= S; s += 8) a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(xc + s)));
    if (s < S) {
      const __mmask8 k = (__mmask8)((1u << (S - s)) - 1);
      a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(k, xc + s)));
    }
  }
  const double sum = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)));
  const float mu = (float)(sum / (double)m);
  const __m256 vm = _mm256_set1_ps(mu);
  a0 = a1 = a2 = a3 = _mm512_setzero_pd();
  for (size_t n = 0; n < N; n++) {
    const float *xc = x + (n * C + ch) * S;
    size_t s = 0;
    for (; s + 32 <= S; s += 32) {
      const __m512d d0 = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(xc + s), vm));
      const __m512d d1 = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(xc + s + 8), vm));
      const __m512d d2 = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(xc + s + 16), vm));
      const __m512d d3 = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(xc + s + 24), vm));
      a0 = _mm512_fmadd_pd(d0, d0, a0);
      a1 = _mm512_fmadd_pd(d1, d1, a1);
      a2 = _mm512_fmadd_pd(d2, d2, a2);
      a3 = _mm512_fmadd_pd(d3, d3, a3);
    }
    for (; s + 8 <= S; s += 8) {
      const __m512d d = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(xc + s), vm));
      a0 = _mm512_fmadd_pd(d, d, a0);
    }
    if (s < S) { /* masked-off lanes: 0 - mu, zeroed before the square */
      const __mmask8 k = (__mmask8)((1u << (S - s)) - 1);
      const __m512d d = _mm512_maskz_mov_pd(
          k, _mm512_cvtps_pd(_mm256_sub_ps(_mm256_maskz_loadu_ps(k, xc + s), vm)));
      a1 = _mm512_fmadd_pd(d, d, a1);
    }
  }
  *sum_out = sum;
  *mu_out = mu;
  *sq_out = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)));
}

#pragma GCC pop_options

void bn_fast_channel_stats_with(bool avx512, const float *x, size_t N, size_t C, size_t S,
                                size_t ch, float eps, float *mean, float *var, float *sd) {
  double sum, sq;
  float mu;
  if (avx512 && fast_avx512_supported())
    channel_stats_avx512(x, N, C, S, ch, &sum, &mu, &sq);
  else
    channel_stats_plain(x, N, C, S, ch, &sum, &mu, &sq);
  *mean = mu;
  *var = (float)(sq / (double)(N * S));
  *sd = sqrtf(*var + eps);
}

void bn_fast_channel_stats(const float *x, size_t N, size_t C, size_t S, size_t ch, float eps,
                           float *mean, float *var, float *sd) {
  bn_fast_channel_stats_with(true, x, N, C, S, ch, eps, mean, var, sd);
}

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
  (void)count; /* read only by the OpenMP if clause */

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
  (void)count; /* read only by the OpenMP if clause */

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
