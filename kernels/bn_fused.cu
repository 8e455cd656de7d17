/* bn_fused.cu — BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] as one op, forward and
 * backward, for the fused chains of src/net_fuse.h (the math is written out there and in
 * moka_cuda.h). The float operations are the unfused layers' (batchnorm.cu, scale.cu,
 * eltwise.cu, relu.cu), each rounding explicit (__fmul_rn, __fadd_rn, ...: no FMA
 * contraction), so the forward matches the layer-by-layer result; the backward sums dz and
 * dz*xhat once per channel (Scale's and BatchNorm's sums together), which rounds
 * differently from the unfused layers by fp32 reduction order only.
 *
 * Buffers: x, xz, y, r, x_norm, dy, dx, dr (N,C,S); stats (3C) = mean | var | std;
 * b0, b1 (C), b2 (1) BatchNorm's statistics blobs; gamma, beta, dgamma, dbeta (C).
 * Scratch (`partials`): (2 * C * chunks) doubles, the per-block partial sums, then (2C)
 * floats, backward's mean_a | mean_b.
 *
 * Passes. Forward, batch statistics: sum(x) per (channel, chunk) -> mean (one thread per
 * channel adds the chunks in order) -> sum((x-mean)^2) per (channel, chunk) -> var, std,
 * running statistics -> one elementwise pass writing x_norm, xz and y. Backward: one
 * partial-sum pass (sdz, sdzx) -> per-channel gradients and constants -> one elementwise
 * pass writing dx and dr. The sums are split over `chunks` blocks per channel so that a
 * layer with few channels and large planes (ResNet's 64-channel 112x112 stem) still fills
 * the GPU; the chunk count depends only on the shape, so results are deterministic.
 */
#include "cuda_internal.h"

/* Elements per block of the partial sums (a multiple of MOKA_REDUCE_THREADS). */
#define BNF_CHUNK 4096
#define BNF_MAX_CHUNKS 256

static size_t bnf_chunks(size_t m) {
  size_t k = (m + BNF_CHUNK - 1) / BNF_CHUNK;
  if (k < 1) k = 1;
  if (k > BNF_MAX_CHUNKS) k = BNF_MAX_CHUNKS;
  return k;
}

/* Channel of flat index i in (N,C,S), and (n, s) of flat index e in (N,S): 32-bit
 * divisions when the tensor has fewer than 2^32 values (`small`, uniform over the grid;
 * 64-bit division is several times slower on the GPU). */
__device__ static inline size_t bnf_channel(size_t i, size_t S, size_t C, bool small) {
  if (small) return (size_t)(((unsigned)i / (unsigned)S) % (unsigned)C);
  return (i / S) % C;
}
__device__ static inline size_t bnf_plane(size_t e, size_t S, bool small) {
  return small ? (size_t)((unsigned)e / (unsigned)S) : e / S;
}

/* Caffe's ReLU expression, max(v,0) + slope*min(v,0), rounded as relu.cu. */
__device__ static inline float bnf_relu(float v, float slope) {
  const float mx = v < 0.0f ? 0.0f : v;
  const float mn = 0.0f < v ? 0.0f : v;
  return __fadd_rn(mx, __fmul_rn(slope, mn));
}

/* ReLU backward's factor on dy: (y > 0) + slope*(y <= 0). */
__device__ static inline float bnf_dz(float dy, float y, bool masked, float slope) {
  if (!masked) return dy;
  return __fmul_rn(dy, __fadd_rn((float)(y > 0.0f), __fmul_rn(slope, (float)(y <= 0.0f))));
}

/* ---- forward ------------------------------------------------------------------------------- */

/* Block b = (c, j): partial sum over elements [j*len, (j+1)*len) of channel c of x (sq:
 * of (x - mean)^2, the difference rounded to float as the reference does). */
__global__ void bnf_stat_partial_kernel(const float *x, const float *stats, double *part,
                                        size_t C, size_t S, size_t m, size_t len, size_t chunks,
                                        bool sq, bool small) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const size_t c = blockIdx.x / chunks, j = blockIdx.x % chunks;
  const size_t e0 = j * len, e1 = e0 + len < m ? e0 + len : m;
  const float mean = sq ? stats[c] : 0.0f;
  double acc = 0;
  for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    const size_t n = bnf_plane(e, S, small), s = e - n * S;
    const float v = x[(n * C + c) * S + s];
    if (sq) {
      const float d = __fsub_rn(v, mean);
      acc += (double)d * (double)d;
    } else {
      acc += v;
    }
  }
  acc = moka_block_sum(acc, sh);
  if (threadIdx.x == 0) part[c * chunks + j] = acc;
}

/* mean = (float)(sum/m) into stats[c]. */
__global__ void bnf_mean_kernel(const double *part, float *stats, size_t C, size_t m,
                                size_t chunks) {
  MOKA_GRID_LOOP(c, C) {
    double sum = 0;
    for (size_t j = 0; j < chunks; j++) sum += part[c * chunks + j];
    stats[c] = (float)(sum / (double)m);
  }
}

/* var, std and the running statistics, as bn_batch_stats_kernel. */
__global__ void bnf_var_kernel(const double *part, float *stats, float *b0, float *b1, float *b2,
                               size_t C, size_t m, size_t chunks, float eps, float maf,
                               float bias_correction) {
  MOKA_GRID_LOOP(c, C) {
    double sq = 0;
    for (size_t j = 0; j < chunks; j++) sq += part[c * chunks + j];
    const float var = (float)(sq / (double)m);
    const float mean = stats[c];
    stats[C + c] = var;
    stats[2 * C + c] = __fsqrt_rn(__fadd_rn(var, eps));
    b0[c] = __fadd_rn(__fmul_rn(maf, b0[c]), mean);
    b1[c] = __fadd_rn(__fmul_rn(maf, b1[c]), __fmul_rn(bias_correction, var));
    if (c == 0) b2[0] = __fadd_rn(__fmul_rn(b2[0], maf), 1.0f);
  }
}

__global__ void bnf_global_stats_kernel(const float *b0, const float *b1, const float *b2,
                                        float *stats, size_t C, float eps) {
  MOKA_GRID_LOOP(c, C) {
    const float f = b2[0] == 0.0f ? 0.0f : __fdiv_rn(1.0f, b2[0]);
    const float mean = __fmul_rn(f, b0[c]), var = __fmul_rn(f, b1[c]);
    stats[c] = mean;
    stats[C + c] = var;
    stats[2 * C + c] = __fsqrt_rn(__fadd_rn(var, eps));
  }
}

/* One thread per element: xhat, z, and the chain's outputs. */
__global__ void bnf_apply_kernel(const float *x, float *xz, float *y, const float *r,
                                 float *x_norm, const float *stats, const float *gamma,
                                 const float *beta, size_t n, size_t C, size_t S, bool relu,
                                 float slope, int residual, bool small) {
  MOKA_GRID_LOOP(i, n) {
    const size_t c = bnf_channel(i, S, C, small);
    const float v = __fdiv_rn(__fsub_rn(x[i], stats[c]), stats[2 * C + c]);
    if (x_norm) x_norm[i] = v;
    float z = __fmul_rn(v, gamma[c]);
    if (beta) z = __fadd_rn(z, beta[c]);
    if (residual < 0) {
      xz[i] = relu ? bnf_relu(z, slope) : z;
    } else {
      const float ri = r[i];
      xz[i] = z;
      /* The Eltwise's (0 + 1*b0) + 1*b1 in its bottoms' order. */
      const float sum = residual == 0 ? __fadd_rn(__fadd_rn(0.0f, z), ri)
                                      : __fadd_rn(__fadd_rn(0.0f, ri), z);
      y[i] = relu ? bnf_relu(sum, slope) : sum;
    }
  }
}

/* ---- backward ------------------------------------------------------------------------------ */

/* Block (c, j): partial sdz and sdzx; part[(c*chunks + j)*2 + {0,1}]. */
__global__ void bnf_grad_partial_kernel(const float *dy, const float *y, const float *x_norm,
                                        double *part, size_t C, size_t S, size_t m, size_t len,
                                        size_t chunks, bool masked, float slope, bool small) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const size_t c = blockIdx.x / chunks, j = blockIdx.x % chunks;
  const size_t e0 = j * len, e1 = e0 + len < m ? e0 + len : m;
  double sdz = 0, sdzx = 0;
  for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    const size_t n = bnf_plane(e, S, small), s = e - n * S, i = (n * C + c) * S + s;
    const float dz = bnf_dz(dy[i], masked ? y[i] : 0.0f, masked, slope);
    sdz += dz;
    sdzx += (double)dz * (double)x_norm[i];
  }
  sdz = moka_block_sum(sdz, sh);
  sdzx = moka_block_sum(sdzx, sh);
  if (threadIdx.x == 0) {
    part[(c * chunks + j) * 2] = sdz;
    part[(c * chunks + j) * 2 + 1] = sdzx;
  }
}

/* Per channel: the parameter gradients (accumulated) and mean_a | mean_b into work. */
__global__ void bnf_grad_finish_kernel(const double *part, const float *gamma, float *dgamma,
                                       float *dbeta, float *work, size_t C, size_t m,
                                       size_t chunks) {
  MOKA_GRID_LOOP(c, C) {
    double sdz = 0, sdzx = 0;
    for (size_t j = 0; j < chunks; j++) {
      sdz += part[(c * chunks + j) * 2];
      sdzx += part[(c * chunks + j) * 2 + 1];
    }
    if (dgamma) dgamma[c] = __fadd_rn(dgamma[c], (float)sdzx);
    if (dbeta) dbeta[c] = __fadd_rn(dbeta[c], (float)sdz);
    const double inv_m = 1.0 / (double)m, g = (double)gamma[c];
    work[c] = (float)(__dmul_rn(__dmul_rn(g, sdz), inv_m));
    work[C + c] = (float)(__dmul_rn(__dmul_rn(g, sdzx), inv_m));
  }
}

/* One thread per element: dr = dz; dx from dz (batch: with the channel constants). */
__global__ void bnf_grad_apply_kernel(const float *dy, const float *y, const float *x_norm,
                                      const float *stats, const float *gamma, const float *work,
                                      float *dx, float *dr, size_t n, size_t C, size_t S,
                                      bool masked, float slope, bool global, bool small) {
  MOKA_GRID_LOOP(i, n) {
    const size_t c = bnf_channel(i, S, C, small);
    /* dy[i] and y[i] are read before dx[i] (possibly the same memory) is written. */
    const float dz = bnf_dz(dy[i], masked ? y[i] : 0.0f, masked, slope);
    if (dr) dr[i] = dz;
    if (dx) {
      const float dbn = __fmul_rn(dz, gamma[c]); /* the Scale's dx */
      const float sd = stats[2 * C + c];
      dx[i] = global ? __fdiv_rn(dbn, sd)
                     : __fdiv_rn(__fsub_rn(__fsub_rn(dbn, work[c]), __fmul_rn(work[C + c], x_norm[i])),
                                 sd);
    }
  }
}

/* ---- launchers ----------------------------------------------------------------------------- */

size_t moka_cuda_bn_fused_scratch_bytes(const MokaBnFusedGeom *g) {
  const size_t chunks = bnf_chunks(g->N * g->S);
  return 2 * g->C * chunks * sizeof(double) + 2 * g->C * sizeof(float);
}

int moka_cuda_bn_fused_forward(cudaStream_t s, const MokaBnFusedGeom *g, const float *x,
                               float *xz, float *y, const float *r, float *x_norm, float *stats,
                               float *b0, float *b1, float *b2, const float *gamma,
                               const float *beta, void *partials) {
  const size_t N = g->N, C = g->C, S = g->S, m = N * S, n = N * C * S;
  const bool small = n <= 0xffffffffu;
  if (C == 0) return 0;
  if (g->residual >= 0 && (!y || !r))
    return moka_errorf("internal error: fused BatchNorm with a residual needs y and r");
  if (g->use_global) {
    bnf_global_stats_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(b0, b1, b2, stats, C,
                                                                    g->eps);
    MOKA_CUDA_LAUNCHED(s, "bnf_global_stats_kernel");
  } else {
    if (m == 0) return 0;
    const size_t chunks = bnf_chunks(m), len = (m + chunks - 1) / chunks;
    if (C * chunks > 0x7fffffffu)
      return moka_errorf("fused BatchNorm: %zu channels x %zu chunks is too many blocks", C,
                         chunks);
    double *part = (double *)partials;
    const unsigned blocks = (unsigned)(C * chunks);
    bnf_stat_partial_kernel<<<blocks, MOKA_REDUCE_THREADS, 0, s>>>(x, stats, part, C, S, m, len,
                                                                   chunks, false, small);
    MOKA_CUDA_LAUNCHED(s, "bnf_stat_partial_kernel (sum)");
    bnf_mean_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, stats, C, m, chunks);
    MOKA_CUDA_LAUNCHED(s, "bnf_mean_kernel");
    bnf_stat_partial_kernel<<<blocks, MOKA_REDUCE_THREADS, 0, s>>>(x, stats, part, C, S, m, len,
                                                                   chunks, true, small);
    MOKA_CUDA_LAUNCHED(s, "bnf_stat_partial_kernel (squares)");
    bnf_var_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, stats, b0, b1, b2, C, m, chunks,
                                                           g->eps, g->maf, g->bias_correction);
    MOKA_CUDA_LAUNCHED(s, "bnf_var_kernel");
  }
  if (!n) return 0;
  bnf_apply_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, xz, y, r, x_norm, stats, gamma,
                                                           beta, n, C, S, g->has_relu, g->slope,
                                                           g->residual, small);
  MOKA_CUDA_LAUNCHED(s, "bnf_apply_kernel");
  return 0;
}

int moka_cuda_bn_fused_backward(cudaStream_t s, const MokaBnFusedGeom *g, const float *dy,
                                const float *y, const float *x_norm, const float *stats,
                                const float *gamma, float *dx, float *dr, float *dgamma,
                                float *dbeta, void *partials) {
  const size_t N = g->N, C = g->C, S = g->S, m = N * S, n = N * C * S;
  const bool small = n <= 0xffffffffu;
  if (!n) return 0;
  const bool sums = dgamma || dbeta || (dx && !g->use_global);
  const size_t chunks = bnf_chunks(m), len = (m + chunks - 1) / chunks;
  double *part = (double *)partials;
  float *work = (float *)(part + 2 * C * chunks); /* (2C) mean_a | mean_b */
  if (sums) {
    if (C * chunks > 0x7fffffffu)
      return moka_errorf("fused BatchNorm: %zu channels x %zu chunks is too many blocks", C,
                         chunks);
    bnf_grad_partial_kernel<<<(unsigned)(C * chunks), MOKA_REDUCE_THREADS, 0, s>>>(
        dy, y, x_norm, part, C, S, m, len, chunks, g->relu_bw, g->slope, small);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_partial_kernel");
    bnf_grad_finish_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, gamma, dgamma, dbeta,
                                                                   work, C, m, chunks);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_finish_kernel");
  }
  if (!dx && !dr) return 0;
  bnf_grad_apply_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(
      dy, y, x_norm, stats, gamma, work, dx, dr, n, C, S, g->relu_bw, g->slope, g->use_global,
      small);
  MOKA_CUDA_LAUNCHED(s, "bnf_grad_apply_kernel");
  return 0;
}
