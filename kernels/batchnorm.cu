/* batchnorm.cu — Caffe's BatchNorm, forward and backward, both modes, with
 * the running statistics; the formulas and float rounding of the CPU
 * reference (src/layers/batchnorm.c), the long sums in double:
 *
 *   global statistics:  f = (b2 == 0) ? 0 : 1/b2,  mean = f*b0,  var = f*b1
 *   batch statistics:   mean = sum(x)/m,  var = sum((x-mean)^2)/m  (m = N*S, two passes)
 *                       b2 = b2*maf + 1,  b0 = maf*b0 + mean,  b1 = maf*b1 + bc*var
 *                       (bc = m/(m-1), computed by the caller in float)
 *   std = sqrt(var + eps);  y = x_norm = (x - mean) / std
 *   backward, global:   dx = dy / std
 *   backward, batch:    dx = (dy - mean(dy) - mean(dy*x_norm)*x_norm) / std
 *
 * Buffers: x, y, x_norm, dy, dx (N,C,S); stats (3C) = mean | var | std;
 * b0, b1 (C), b2 (1) the layer's statistics blobs; work (2C) = mean(dy) |
 * mean(dy*x_norm). One block per channel for the sums (deterministic tree);
 * the elementwise steps one thread per value.
 */
#include "cuda_internal.h"

__global__ void bn_global_stats_kernel(const float *b0, const float *b1, const float *b2,
                                       float *stats, size_t C, float eps) {
  MOKA_GRID_LOOP(c, C) {
    const float f = b2[0] == 0.0f ? 0.0f : __fdiv_rn(1.0f, b2[0]);
    const float mean = __fmul_rn(f, b0[c]), var = __fmul_rn(f, b1[c]);
    stats[c] = mean;
    stats[C + c] = var;
    stats[2 * C + c] = __fsqrt_rn(__fadd_rn(var, eps));
  }
}

__global__ void bn_batch_stats_kernel(const float *x, float *stats, float *b0, float *b1,
                                      float *b2, size_t N, size_t C, size_t S, float eps,
                                      float maf, float bias_correction) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const size_t c = blockIdx.x, m = N * S;
  double sum = 0;
  for (size_t e = threadIdx.x; e < m; e += blockDim.x) {
    const size_t n = e / S, s = e - n * S;
    sum += x[(n * C + c) * S + s];
  }
  sum = moka_block_sum(sum, sh);
  const float mean = (float)(sum / (double)m);
  double sq = 0;
  for (size_t e = threadIdx.x; e < m; e += blockDim.x) {
    const size_t n = e / S, s = e - n * S;
    const float d = __fsub_rn(x[(n * C + c) * S + s], mean);
    sq += (double)d * (double)d;
  }
  sq = moka_block_sum(sq, sh);
  if (threadIdx.x == 0) {
    const float var = (float)(sq / (double)m);
    stats[c] = mean;
    stats[C + c] = var;
    stats[2 * C + c] = __fsqrt_rn(__fadd_rn(var, eps));
    b0[c] = __fadd_rn(__fmul_rn(maf, b0[c]), mean);
    b1[c] = __fadd_rn(__fmul_rn(maf, b1[c]), __fmul_rn(bias_correction, var));
    if (c == 0) b2[0] = __fadd_rn(__fmul_rn(b2[0], maf), 1.0f);
  }
}

__global__ void bn_normalize_kernel(const float *x, float *y, float *x_norm, const float *stats,
                                    size_t n, size_t C, size_t S) {
  MOKA_GRID_LOOP(i, n) {
    const size_t c = (i / S) % C;
    const float v = __fdiv_rn(__fsub_rn(x[i], stats[c]), stats[2 * C + c]);
    y[i] = v;
    x_norm[i] = v;
  }
}

__global__ void bn_backward_global_kernel(const float *dy, const float *stats, float *dx,
                                          size_t n, size_t C, size_t S) {
  MOKA_GRID_LOOP(i, n) {
    const size_t c = (i / S) % C;
    dx[i] = __fdiv_rn(dy[i], stats[2 * C + c]);
  }
}

__global__ void bn_backward_sums_kernel(const float *dy, const float *x_norm, float *work,
                                        size_t N, size_t C, size_t S) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const size_t c = blockIdx.x, m = N * S;
  double sdy = 0, sdyy = 0;
  for (size_t e = threadIdx.x; e < m; e += blockDim.x) {
    const size_t n = e / S, s = e - n * S, i = (n * C + c) * S + s;
    sdy += dy[i];
    sdyy += (double)dy[i] * (double)x_norm[i];
  }
  sdy = moka_block_sum(sdy, sh);
  sdyy = moka_block_sum(sdyy, sh);
  if (threadIdx.x == 0) {
    const double inv_m = 1.0 / (double)m;
    work[c] = (float)(sdy * inv_m);
    work[C + c] = (float)(sdyy * inv_m);
  }
}

__global__ void bn_backward_batch_kernel(const float *dy, const float *x_norm,
                                         const float *stats, const float *work, float *dx,
                                         size_t n, size_t C, size_t S) {
  MOKA_GRID_LOOP(i, n) {
    const size_t c = (i / S) % C;
    const float t = __fsub_rn(__fsub_rn(dy[i], work[c]), __fmul_rn(work[C + c], x_norm[i]));
    dx[i] = __fdiv_rn(t, stats[2 * C + c]);
  }
}

int moka_cuda_bn_forward(cudaStream_t s, const float *x, float *y, float *x_norm, float *stats,
                         float *b0, float *b1, float *b2, size_t N, size_t C, size_t S, float eps,
                         float maf, float bias_correction, bool use_global) {
  if (C == 0) return 0;
  if (use_global) {
    bn_global_stats_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(b0, b1, b2, stats, C, eps);
    if (moka_cuda_launched(s, "bn_global_stats_kernel", __FILE__, __LINE__)) return -1;
  } else {
    if (N * S == 0) return 0;
    bn_batch_stats_kernel<<<(unsigned)C, MOKA_REDUCE_THREADS, 0, s>>>(
        x, stats, b0, b1, b2, N, C, S, eps, maf, bias_correction);
    if (moka_cuda_launched(s, "bn_batch_stats_kernel", __FILE__, __LINE__)) return -1;
  }
  const size_t n = N * C * S;
  if (!n) return 0;
  bn_normalize_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, y, x_norm, stats, n, C, S);
  return moka_cuda_launched(s, "bn_normalize_kernel", __FILE__, __LINE__);
}

int moka_cuda_bn_backward(cudaStream_t s, const float *dy, const float *x_norm,
                          const float *stats, float *dx, float *work, size_t N, size_t C,
                          size_t S, bool use_global) {
  const size_t n = N * C * S;
  if (!n) return 0;
  if (use_global) {
    bn_backward_global_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(dy, stats, dx, n, C, S);
    return moka_cuda_launched(s, "bn_backward_global_kernel", __FILE__, __LINE__);
  }
  bn_backward_sums_kernel<<<(unsigned)C, MOKA_REDUCE_THREADS, 0, s>>>(dy, x_norm, work, N, C, S);
  if (moka_cuda_launched(s, "bn_backward_sums_kernel", __FILE__, __LINE__)) return -1;
  bn_backward_batch_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(dy, x_norm, stats, work, dx,
                                                                   n, C, S);
  return moka_cuda_launched(s, "bn_backward_batch_kernel", __FILE__, __LINE__);
}
