/* bn_fused.cu — BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] as one op, forward and
 * backward, for the fused chains of src/net_fuse.h (the math is written out there and in
 * moka_cuda.h). The float operations are the unfused layers' (batchnorm.cu, scale.cu,
 * eltwise.cu, relu.cu), each rounding explicit (__fmul_rn, __fadd_rn, ...: no FMA
 * contraction), so the forward matches the layer-by-layer result; the backward sums dz and
 * dz*xhat once per channel (Scale's and BatchNorm's sums together), which rounds
 * differently from the unfused layers by fp32 reduction order only.
 *
 * Buffers: x, xz, y, r, x_norm, dy, dx, dr (N,C,S), and dy1 (N,C,S) when the chain sums the
 * Split after it (the chain's dy is then dy + dy1); stats (3C) = mean | var | std;
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
 *
 * Vector path (the default where S % 4 == 0 and every buffer is 16-byte aligned: all of
 * ResNet-50's chains but the 7x7 ones; MOKA_BNF_VEC=0 turns it off): the same passes and
 * the same per-element float operations, with float4 loads and stores, the channel found
 * once per four values, and the partial sums over whole planes (block (c, j): planes
 * j*pp .. of channel c), so that a block reads long contiguous runs. Only the grouping of
 * the double partial sums differs from the scalar path.
 */
#include <stdlib.h>

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

__device__ static inline float4 bnf_relu4(float4 v, float slope) {
  return make_float4(bnf_relu(v.x, slope), bnf_relu(v.y, slope), bnf_relu(v.z, slope),
                     bnf_relu(v.w, slope));
}

/* ReLU backward's factor on dy: (y > 0) + slope*(y <= 0). */
__device__ static inline float bnf_dz(float dy, float y, bool masked, float slope) {
  if (!masked) return dy;
  return __fmul_rn(dy, __fadd_rn((float)(y > 0.0f), __fmul_rn(slope, (float)(y <= 0.0f))));
}

/* The chain output's gradient: dy, or dy + dy1 when the chain sums the Split after it (the
 * Split's copy-then-sum, moka_cuda_split_sum2: one rounding). */
__device__ static inline float bnf_dy(const float *dy, const float *dy1, size_t i) {
  return dy1 ? __fadd_rn(dy[i], dy1[i]) : dy[i];
}
__device__ static inline float4 bnf_dy4(const float4 *dy, const float4 *dy1, size_t i) {
  const float4 a = dy[i];
  if (!dy1) return a;
  const float4 b = dy1[i];
  return make_float4(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y), __fadd_rn(a.z, b.z),
                     __fadd_rn(a.w, b.w));
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

extern "C" int moka_cuda_bn_global_stats(cudaStream_t s, const float *b0, const float *b1,
                                         const float *b2, float *stats, size_t C, float eps) {
  bnf_global_stats_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(b0, b1, b2, stats, C, eps);
  return moka_cuda_launched(s, "bnf_global_stats_kernel", __FILE__, __LINE__);
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
__global__ void bnf_grad_partial_kernel(const float *dy, const float *dy1, const float *y,
                                        const float *x_norm, double *part, size_t C, size_t S,
                                        size_t m, size_t len, size_t chunks, bool masked,
                                        float slope, bool small) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const size_t c = blockIdx.x / chunks, j = blockIdx.x % chunks;
  const size_t e0 = j * len, e1 = e0 + len < m ? e0 + len : m;
  double sdz = 0, sdzx = 0;
  for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    const size_t n = bnf_plane(e, S, small), s = e - n * S, i = (n * C + c) * S + s;
    const float dz = bnf_dz(bnf_dy(dy, dy1, i), masked ? y[i] : 0.0f, masked, slope);
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
__global__ void bnf_grad_apply_kernel(const float *dy, const float *dy1, const float *y,
                                      const float *x_norm, const float *stats,
                                      const float *gamma, const float *work, float *dx, float *dr,
                                      size_t n, size_t C, size_t S, bool masked, float slope,
                                      bool global, bool small) {
  MOKA_GRID_LOOP(i, n) {
    const size_t c = bnf_channel(i, S, C, small);
    /* dy[i] and y[i] are read before dx[i] (possibly the same memory) is written. */
    const float dz = bnf_dz(bnf_dy(dy, dy1, i), masked ? y[i] : 0.0f, masked, slope);
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

/* ---- the vector path (S % 4 == 0, 16-byte aligned buffers) --------------------------------- */

/* Planes per block of the vector path's partial sums, and the blocks per channel. */
#define BNF_VEC_ELEMS 8192
static void bnf_vec_chunks(size_t N, size_t S, size_t *pp, size_t *chunks) {
  size_t p = S >= BNF_VEC_ELEMS ? 1 : BNF_VEC_ELEMS / S;
  size_t k = (N + p - 1) / p;
  if (k > BNF_MAX_CHUNKS) k = BNF_MAX_CHUNKS;
  if (k < 1) k = 1;
  *pp = (N + k - 1) / k;
  *chunks = (N + *pp - 1) / *pp;
}

static bool bnf_vec_on(void) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("MOKA_BNF_VEC");
    on = !(e && e[0] == '0');
  }
  return on != 0;
}

/* Block (c, j): planes [j*pp, min(N, (j+1)*pp)) of channel c; (S4 = S/4 float4 per plane). */
__global__ void bnf_stat_partial_vec_kernel(const float4 *x, const float *stats, double *part,
                                            unsigned C, unsigned N, unsigned S4, unsigned pp,
                                            unsigned chunks, bool sq) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const unsigned c = blockIdx.x / chunks, j = blockIdx.x % chunks;
  const unsigned n0 = j * pp, n1 = n0 + pp < N ? n0 + pp : N;
  const size_t total = (size_t)(n1 - n0) * S4;
  const float mean = sq ? stats[c] : 0.0f;
  double acc = 0;
  for (size_t q = threadIdx.x; q < total; q += blockDim.x) {
    const size_t n = n0 + q / S4, s4 = q % S4;
    const float4 v = x[(n * C + c) * S4 + s4];
    if (sq) {
      const float d0 = __fsub_rn(v.x, mean), d1 = __fsub_rn(v.y, mean);
      const float d2 = __fsub_rn(v.z, mean), d3 = __fsub_rn(v.w, mean);
      acc += (double)d0 * (double)d0 + (double)d1 * (double)d1 + (double)d2 * (double)d2 +
             (double)d3 * (double)d3;
    } else {
      acc += (double)v.x + (double)v.y + (double)v.z + (double)v.w;
    }
  }
  acc = moka_block_sum(acc, sh);
  if (threadIdx.x == 0) part[(size_t)c * chunks + j] = acc;
}

/* One thread per four values (one channel: S % 4 == 0); bnf_apply_kernel's operations. */
__global__ void bnf_apply_vec_kernel(const float4 *x, float4 *xz, float4 *y, const float4 *r,
                                     float4 *x_norm, const float *stats, const float *gamma,
                                     const float *beta, size_t n4, size_t C, size_t S, bool relu,
                                     float slope, int residual, bool small) {
  MOKA_GRID_LOOP(i, n4) {
    const size_t c = bnf_channel(i * 4, S, C, small);
    const float mean = stats[c], sd = stats[2 * C + c], g = gamma[c];
    const float b = beta ? beta[c] : 0.0f;
    const float4 xv = x[i];
    float4 v, z;
    v.x = __fdiv_rn(__fsub_rn(xv.x, mean), sd);
    v.y = __fdiv_rn(__fsub_rn(xv.y, mean), sd);
    v.z = __fdiv_rn(__fsub_rn(xv.z, mean), sd);
    v.w = __fdiv_rn(__fsub_rn(xv.w, mean), sd);
    if (x_norm) x_norm[i] = v;
    z.x = __fmul_rn(v.x, g);
    z.y = __fmul_rn(v.y, g);
    z.z = __fmul_rn(v.z, g);
    z.w = __fmul_rn(v.w, g);
    if (beta) {
      z.x = __fadd_rn(z.x, b);
      z.y = __fadd_rn(z.y, b);
      z.z = __fadd_rn(z.z, b);
      z.w = __fadd_rn(z.w, b);
    }
    if (residual < 0) {
      if (relu) z = bnf_relu4(z, slope);
      xz[i] = z;
    } else {
      const float4 rv = r[i];
      xz[i] = z;
      float4 o;
      /* The Eltwise's (0 + 1*b0) + 1*b1 in its bottoms' order. */
      if (residual == 0) {
        o.x = __fadd_rn(__fadd_rn(0.0f, z.x), rv.x);
        o.y = __fadd_rn(__fadd_rn(0.0f, z.y), rv.y);
        o.z = __fadd_rn(__fadd_rn(0.0f, z.z), rv.z);
        o.w = __fadd_rn(__fadd_rn(0.0f, z.w), rv.w);
      } else {
        o.x = __fadd_rn(__fadd_rn(0.0f, rv.x), z.x);
        o.y = __fadd_rn(__fadd_rn(0.0f, rv.y), z.y);
        o.z = __fadd_rn(__fadd_rn(0.0f, rv.z), z.z);
        o.w = __fadd_rn(__fadd_rn(0.0f, rv.w), z.w);
      }
      if (relu) o = bnf_relu4(o, slope);
      y[i] = o;
    }
  }
}

/* Block (c, j) over whole planes, as bnf_stat_partial_vec_kernel: partial sdz and sdzx. */
__global__ void bnf_grad_partial_vec_kernel(const float4 *dy, const float4 *dy1,
                                            const float4 *y, const float4 *x_norm, double *part,
                                            unsigned C, unsigned N, unsigned S4, unsigned pp,
                                            unsigned chunks, bool masked, float slope) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const unsigned c = blockIdx.x / chunks, j = blockIdx.x % chunks;
  const unsigned n0 = j * pp, n1 = n0 + pp < N ? n0 + pp : N;
  const size_t total = (size_t)(n1 - n0) * S4;
  double sdz = 0, sdzx = 0;
  for (size_t q = threadIdx.x; q < total; q += blockDim.x) {
    const size_t n = n0 + q / S4, s4 = q % S4, i = (n * C + c) * S4 + s4;
    const float4 d = bnf_dy4(dy, dy1, i), xn = x_norm[i];
    float4 yv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (masked) yv = y[i];
    const float z0 = bnf_dz(d.x, yv.x, masked, slope), z1 = bnf_dz(d.y, yv.y, masked, slope);
    const float z2 = bnf_dz(d.z, yv.z, masked, slope), z3 = bnf_dz(d.w, yv.w, masked, slope);
    sdz += (double)z0 + (double)z1 + (double)z2 + (double)z3;
    sdzx += (double)z0 * (double)xn.x + (double)z1 * (double)xn.y + (double)z2 * (double)xn.z +
            (double)z3 * (double)xn.w;
  }
  sdz = moka_block_sum(sdz, sh);
  sdzx = moka_block_sum(sdzx, sh);
  if (threadIdx.x == 0) {
    part[((size_t)c * chunks + j) * 2] = sdz;
    part[((size_t)c * chunks + j) * 2 + 1] = sdzx;
  }
}

__device__ static inline float bnf_dx_one(float dz, float g, float sd, float wa, float wb,
                                          float xn, bool global) {
  const float dbn = __fmul_rn(dz, g); /* the Scale's dx */
  if (global) return __fdiv_rn(dbn, sd);
  return __fdiv_rn(__fsub_rn(__fsub_rn(dbn, wa), __fmul_rn(wb, xn)), sd);
}

/* One thread per four values: bnf_grad_apply_kernel's operations. */
__global__ void bnf_grad_apply_vec_kernel(const float4 *dy, const float4 *dy1, const float4 *y,
                                          const float4 *x_norm, const float *stats,
                                          const float *gamma, const float *work, float4 *dx,
                                          float4 *dr, size_t n4, size_t C, size_t S, bool masked,
                                          float slope, bool global, bool small) {
  MOKA_GRID_LOOP(i, n4) {
    const size_t c = bnf_channel(i * 4, S, C, small);
    const float4 d = bnf_dy4(dy, dy1, i);
    float4 yv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (masked) yv = y[i];
    float4 z;
    z.x = bnf_dz(d.x, yv.x, masked, slope);
    z.y = bnf_dz(d.y, yv.y, masked, slope);
    z.z = bnf_dz(d.z, yv.z, masked, slope);
    z.w = bnf_dz(d.w, yv.w, masked, slope);
    if (dx) {
      const float g = gamma[c], sd = stats[2 * C + c];
      const float wa = global ? 0.0f : work[c], wb = global ? 0.0f : work[C + c];
      float4 xn = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (!global) xn = x_norm[i];
      float4 o;
      o.x = bnf_dx_one(z.x, g, sd, wa, wb, xn.x, global);
      o.y = bnf_dx_one(z.y, g, sd, wa, wb, xn.y, global);
      o.z = bnf_dx_one(z.z, g, sd, wa, wb, xn.z, global);
      o.w = bnf_dx_one(z.w, g, sd, wa, wb, xn.w, global);
      if (dr) dr[i] = z; /* dy (possibly dx's memory) was read above */
      dx[i] = o;
    } else if (dr) {
      dr[i] = z;
    }
  }
}

/* ---- launchers ----------------------------------------------------------------------------- */

size_t moka_cuda_bn_fused_scratch_bytes(const MokaBnFusedGeom *g) {
  size_t chunks = bnf_chunks(g->N * g->S), pp, vchunks = 0;
  if (g->S % 4 == 0 && g->N) bnf_vec_chunks(g->N, g->S, &pp, &vchunks);
  if (vchunks > chunks) chunks = vchunks;
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
  if (g->use_global && moka_cuda_bn_global_stats(s, b0, b1, b2, stats, C, g->eps)) return -1;
  /* The vector path: planes of whole float4s, every buffer 16-byte aligned, 32-bit grid
   * arithmetic (N*C*S/4 float4s and C*chunks blocks fit easily in it then). */
  const bool vec = bnf_vec_on() && S % 4 == 0 && n / 4 <= 0xffffffffu && moka_aligned16(x) &&
                   moka_aligned16(xz) && moka_aligned16(y) && moka_aligned16(r) &&
                   moka_aligned16(x_norm);
  if (!g->use_global && vec && m) {
    size_t pp, chunks;
    bnf_vec_chunks(N, S, &pp, &chunks);
    double *part = (double *)partials;
    const unsigned blocks = (unsigned)(C * chunks);
    bnf_stat_partial_vec_kernel<<<blocks, MOKA_REDUCE_THREADS, 0, s>>>(
        (const float4 *)x, stats, part, (unsigned)C, (unsigned)N, (unsigned)(S / 4),
        (unsigned)pp, (unsigned)chunks, false);
    MOKA_CUDA_LAUNCHED(s, "bnf_stat_partial_vec_kernel (sum)");
    bnf_mean_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, stats, C, m, chunks);
    MOKA_CUDA_LAUNCHED(s, "bnf_mean_kernel");
    bnf_stat_partial_vec_kernel<<<blocks, MOKA_REDUCE_THREADS, 0, s>>>(
        (const float4 *)x, stats, part, (unsigned)C, (unsigned)N, (unsigned)(S / 4),
        (unsigned)pp, (unsigned)chunks, true);
    MOKA_CUDA_LAUNCHED(s, "bnf_stat_partial_vec_kernel (squares)");
    bnf_var_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, stats, b0, b1, b2, C, m, chunks,
                                                           g->eps, g->maf, g->bias_correction);
    MOKA_CUDA_LAUNCHED(s, "bnf_var_kernel");
  } else if (!g->use_global) {
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
  if (vec) {
    bnf_apply_vec_kernel<<<moka_blocks(n / 4), MOKA_THREADS, 0, s>>>(
        (const float4 *)x, (float4 *)xz, (float4 *)y, (const float4 *)r, (float4 *)x_norm, stats,
        gamma, beta, n / 4, C, S, g->has_relu, g->slope, g->residual, small);
    MOKA_CUDA_LAUNCHED(s, "bnf_apply_vec_kernel");
    return 0;
  }
  bnf_apply_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, xz, y, r, x_norm, stats, gamma,
                                                           beta, n, C, S, g->has_relu, g->slope,
                                                           g->residual, small);
  MOKA_CUDA_LAUNCHED(s, "bnf_apply_kernel");
  return 0;
}

int moka_cuda_bn_fused_backward(cudaStream_t s, const MokaBnFusedGeom *g, const float *dy,
                                const float *dy1, const float *y, const float *x_norm,
                                const float *stats, const float *gamma, float *dx, float *dr,
                                float *dgamma, float *dbeta, void *partials) {
  const size_t N = g->N, C = g->C, S = g->S, m = N * S, n = N * C * S;
  const bool small = n <= 0xffffffffu;
  if (!n) return 0;
  const bool sums = dgamma || dbeta || (dx && !g->use_global);
  const bool vec = bnf_vec_on() && S % 4 == 0 && n / 4 <= 0xffffffffu && moka_aligned16(dy) &&
                   moka_aligned16(dy1) && moka_aligned16(y) && moka_aligned16(x_norm) &&
                   moka_aligned16(dx) && moka_aligned16(dr);
  size_t chunks = bnf_chunks(m), len = (m + chunks - 1) / chunks, pp = 0;
  if (vec) bnf_vec_chunks(N, S, &pp, &chunks);
  double *part = (double *)partials;
  float *work = (float *)(part + 2 * C * chunks); /* (2C) mean_a | mean_b */
  if (sums && vec) {
    bnf_grad_partial_vec_kernel<<<(unsigned)(C * chunks), MOKA_REDUCE_THREADS, 0, s>>>(
        (const float4 *)dy, (const float4 *)dy1, (const float4 *)y, (const float4 *)x_norm, part,
        (unsigned)C, (unsigned)N, (unsigned)(S / 4), (unsigned)pp, (unsigned)chunks, g->relu_bw,
        g->slope);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_partial_vec_kernel");
    bnf_grad_finish_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, gamma, dgamma, dbeta,
                                                                   work, C, m, chunks);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_finish_kernel");
  } else if (sums) {
    if (C * chunks > 0x7fffffffu)
      return moka_errorf("fused BatchNorm: %zu channels x %zu chunks is too many blocks", C,
                         chunks);
    bnf_grad_partial_kernel<<<(unsigned)(C * chunks), MOKA_REDUCE_THREADS, 0, s>>>(
        dy, dy1, y, x_norm, part, C, S, m, len, chunks, g->relu_bw, g->slope, small);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_partial_kernel");
    bnf_grad_finish_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, gamma, dgamma, dbeta,
                                                                   work, C, m, chunks);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_finish_kernel");
  }
  if (!dx && !dr) return 0;
  if (vec) {
    bnf_grad_apply_vec_kernel<<<moka_blocks(n / 4), MOKA_THREADS, 0, s>>>(
        (const float4 *)dy, (const float4 *)dy1, (const float4 *)y, (const float4 *)x_norm, stats,
        gamma, work, (float4 *)dx, (float4 *)dr, n / 4, C, S, g->relu_bw, g->slope, g->use_global,
        small);
    MOKA_CUDA_LAUNCHED(s, "bnf_grad_apply_vec_kernel");
    return 0;
  }
  bnf_grad_apply_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(
      dy, dy1, y, x_norm, stats, gamma, work, dx, dr, n, C, S, g->relu_bw, g->slope,
      g->use_global, small);
  MOKA_CUDA_LAUNCHED(s, "bnf_grad_apply_kernel");
  return 0;
}
