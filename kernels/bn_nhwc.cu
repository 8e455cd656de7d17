/* bn_nhwc.cu — the fused BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] chain of bn_fused.cu
 * on channels-last bf16 activations: the chains of nets with MOKA_BF16_ACT=1 (src/net_bf16.h;
 * the plan in docs/cuda.md, "bf16 channels-last end to end"). test_cuda_bn_nhwc checks it
 * against bn_fused.cu's fp32 NCHW chain and times the two on ResNet-50's chain shapes
 * (`test_cuda_bn_nhwc bench`, in make gpu-check).
 *
 * Buffers: x, xz, y, r, x_norm, dy, dy1, dx, dr are (P, C) bf16, P = N*S pixels, channels
 * fastest (NHWC), 16-byte aligned, C a multiple of 8 (at most 2048); stats (3C) fp32 = mean |
 * var | std; b0, b1 (C), b2 (1) BatchNorm's fp32 statistics blobs; gamma, beta, dgamma,
 * dbeta (C) fp32. Arithmetic in fp32 per element (bf16 read, fp32 math, one rounding to
 * bf16 on store), per-channel sums in double.
 *
 * Differences from bn_fused.cu, all for the bf16 mode's bandwidth: the batch statistics in
 * one pass (sum and sum of squares in double per channel: var = E[x^2] - mean^2, which double
 * keeps exact enough for bf16 inputs), x_norm stored in bf16 (as AMP keeps its bf16 input).
 * Same definitions otherwise: Caffe's BatchNorm with eps, moving average factor and bias
 * correction; Scale; the Eltwise's bottom order; the ReLU with its slope; the gradient of a
 * Split the chain sums (dy + dy1).
 *
 * Passes. Partial sums: block j takes pixels [j*len, (j+1)*len); thread t owns channels
 * 8*(t % C8) .. +7 (C8 = C/8) and every R-th pixel (R = 256/C8), eight double pairs in
 * registers, then the R rows are added in a fixed order through shared memory: one
 * partial per (chunk, channel); the chunk count depends only on the shape, so the sums are
 * deterministic. Then one thread per channel adds the chunks in order (statistics, or the
 * parameter gradients), and one elementwise pass of 8-value vectors writes the outputs.
 *
 * tests/gpu/bn_nhwc_emulate.cpp runs all of it on the CPU (the partial-sum kernel in an
 * emulated block, emu_cuda.h; the per-channel and per-vector functions the other kernels
 * are loops over) against a double reference.
 */
#ifndef MOKA_NHWC_EMULATE
#include <cuda_bf16.h>

#include "cuda_internal.h"

typedef __nv_bfloat16 nh_bf16;
#define BNH_HD __host__ __device__ static inline
#define BNH_D __device__ static inline

/* 8 bf16 values (16 bytes) <-> 8 floats */
__device__ static inline void bnh_ld8(const nh_bf16 *p, float f[8]) {
  const uint4 u = *reinterpret_cast<const uint4 *>(p);
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const float2 t = __bfloat1622float2(h[k]);
    f[2 * k] = t.x;
    f[2 * k + 1] = t.y;
  }
}
__device__ static inline void bnh_st8(nh_bf16 *p, const float f[8]) {
  uint4 u;
  __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
  for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
  *reinterpret_cast<uint4 *>(p) = u;
}
#endif

#define BNH_THREADS 256
#define BNH_MAX_C 2048
#define BNH_CHUNK_ELEMS 65536 /* values per block of the partial sums, about */
#define BNH_MAX_CHUNKS 1024

/* ---- per value and per channel (host and device) --------------------------------------------- */

/* Separately rounded multiply and add (no FMA contraction) where the result is kept. */
BNH_HD float bnh_mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
BNH_HD float bnh_add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

BNH_HD float bnh_relu(float v, float slope) {
  const float mx = v < 0.0f ? 0.0f : v, mn = 0.0f < v ? 0.0f : v;
  return mx + slope * mn;
}

/* The chain output's gradient through the ReLU: (dy [+ dy1]) * ((y > 0) + slope (y <= 0)). */
BNH_HD float bnh_dz(float dy, float y, bool masked, float slope) {
  if (!masked) return dy;
  return dy * ((float)(y > 0.0f) + slope * (float)(y <= 0.0f));
}

/* One value forward: xn = (x - mean) / sd; z = xn g + b; then, without a residual, xz =
 * relu(z) (or z); with one, xz = z and y = relu of the Eltwise's sum in its bottom order. */
BNH_HD void bnh_forward1(float x, float r, float mean, float sd, float g, float b, bool relu,
                         float slope, int residual, float *xn, float *xz, float *y) {
  const float v = (x - mean) / sd;
  *xn = v;
  const float z = v * g + b;
  if (residual < 0) {
    *xz = relu ? bnh_relu(z, slope) : z;
    *y = *xz;
  } else {
    *xz = z;
    const float sum = residual == 0 ? z + r : r + z;
    *y = relu ? bnh_relu(sum, slope) : sum;
  }
}

/* One value's input gradient from dz: global statistics dz g / sd; batch statistics
 * (dz g - wa - wb xn) / sd with wa = g mean(dz), wb = g mean(dz xn). */
BNH_HD float bnh_dx1(float dz, float xn, float g, float sd, float wa, float wb, bool global) {
  const float dbn = dz * g;
  return global ? dbn / sd : (dbn - wa - wb * xn) / sd;
}

/* Chunks of the partial sums for P pixels of C channels, and the pixels per chunk. */
BNH_HD void bnh_chunks(size_t P, size_t C, size_t *chunks, size_t *len) {
  if (P == 0) { /* nothing to sum: one empty chunk */
    *chunks = 1;
    *len = 0;
    return;
  }
  size_t k = (P * C + BNH_CHUNK_ELEMS - 1) / BNH_CHUNK_ELEMS;
  if (k > BNH_MAX_CHUNKS) k = BNH_MAX_CHUNKS;
  if (k > P) k = P;
  if (k < 1) k = 1;
  *len = (P + k - 1) / k;
  *chunks = (P + *len - 1) / *len;
}

/* Channel c's statistics from the partials part[(j*C + c)*2 + {0,1}] = (sum x, sum x^2),
 * j < chunks, and the running statistics' update (bn_fused.cu's formulas). */
BNH_HD void bnh_stats_channel(const double *part, size_t c, size_t C, size_t chunks, size_t m,
                              float eps, float maf, float bias_correction, float *stats,
                              float *b0, float *b1, float *b2) {
  double s = 0, q = 0;
  for (size_t j = 0; j < chunks; j++) {
    s += part[(j * C + c) * 2];
    q += part[(j * C + c) * 2 + 1];
  }
  const double mean = s / (double)m;
  double var = q / (double)m - mean * mean;
  if (var < 0) var = 0;
  const float fm = (float)mean, fv = (float)var;
  stats[c] = fm;
  stats[C + c] = fv;
  stats[2 * C + c] = sqrtf(fv + eps);
  /* the running statistics (kept in the model): bn_fused.cu's two roundings, no FMA */
  b0[c] = bnh_add(bnh_mul(maf, b0[c]), fm);
  b1[c] = bnh_add(bnh_mul(maf, b1[c]), bnh_mul(bias_correction, fv));
  if (c == 0) b2[0] = bnh_add(bnh_mul(b2[0], maf), 1.0f);
}

/* Channel c's parameter gradients (accumulated) and the two backward constants, from the
 * partials (sum dz, sum dz xn). */
BNH_HD void bnh_grad_channel(const double *part, size_t c, size_t C, size_t chunks, size_t m,
                             const float *gamma, float *dgamma, float *dbeta, float *work) {
  double sdz = 0, sdzx = 0;
  for (size_t j = 0; j < chunks; j++) {
    sdz += part[(j * C + c) * 2];
    sdzx += part[(j * C + c) * 2 + 1];
  }
  if (dgamma) dgamma[c] += (float)sdzx;
  if (dbeta) dbeta[c] += (float)sdz;
  const double g = (double)gamma[c];
  work[c] = (float)(g * sdz / (double)m);
  work[C + c] = (float)(g * sdzx / (double)m);
}

/* ---- per vector of 8 values (the elementwise kernels' bodies) -------------------------------- */

BNH_D void bnh_apply8(size_t i, const nh_bf16 *x, nh_bf16 *xz, nh_bf16 *y, const nh_bf16 *r,
                      nh_bf16 *x_norm, const float *stats, const float *gamma, const float *beta,
                      int C, bool relu, float slope, int residual) {
  const int c0 = (int)(i % (size_t)(C / 8)) * 8;
  float a[8], rr[8], xn[8], oz[8], oy[8];
  bnh_ld8(x + i * 8, a);
  if (residual >= 0) bnh_ld8(r + i * 8, rr);
  for (int e = 0; e < 8; e++) {
    const int c = c0 + e;
    bnh_forward1(a[e], residual >= 0 ? rr[e] : 0.0f, stats[c], stats[2 * C + c], gamma[c],
                 beta ? beta[c] : 0.0f, relu, slope, residual, &xn[e], &oz[e], &oy[e]);
  }
  if (x_norm) bnh_st8(x_norm + i * 8, xn);
  bnh_st8(xz + i * 8, oz);
  if (residual >= 0) bnh_st8(y + i * 8, oy);
}

BNH_D void bnh_grad_apply8(size_t i, const nh_bf16 *dy, const nh_bf16 *dy1, const nh_bf16 *y,
                           const nh_bf16 *x_norm, const float *stats, const float *gamma,
                           const float *work, nh_bf16 *dx, nh_bf16 *dr, int C, bool masked,
                           float slope, bool global) {
  const int c0 = (int)(i % (size_t)(C / 8)) * 8;
  float d[8], d1[8], yy[8], xn[8], dz[8], o[8];
  bnh_ld8(dy + i * 8, d);
  if (dy1) bnh_ld8(dy1 + i * 8, d1);
  if (masked) bnh_ld8(y + i * 8, yy);
  if (dx && !global) bnh_ld8(x_norm + i * 8, xn);
  for (int e = 0; e < 8; e++) {
    const float g = dy1 ? d[e] + d1[e] : d[e];
    dz[e] = bnh_dz(g, masked ? yy[e] : 0.0f, masked, slope);
  }
  /* every input of the pixel is read before dx (possibly dy's memory) is written */
  if (dr) bnh_st8(dr + i * 8, dz);
  if (dx) {
    for (int e = 0; e < 8; e++) {
      const int c = c0 + e;
      o[e] = bnh_dx1(dz[e], global ? 0.0f : xn[e], gamma[c], stats[2 * C + c],
                     global ? 0.0f : work[c], global ? 0.0f : work[C + c], global);
    }
    bnh_st8(dx + i * 8, o);
  }
}

/* ---- the partial sums (the one cooperative kernel) ------------------------------------------ */

/* Block j: forward (dy == NULL): sums of x and x^2 over its pixels, per channel; backward:
 * sums of dz and dz xn, dz from dy (+ dy1) through the ReLU mask of y when `masked`.
 * part[(j*C + c)*2 + {0,1}]. */
__global__ void __launch_bounds__(BNH_THREADS)
    bnh_partial_kernel(const nh_bf16 *x, const nh_bf16 *dy, const nh_bf16 *dy1,
                       const nh_bf16 *y, bool masked, float slope, size_t P, int C, size_t len,
                       double *part) {
  __shared__ double sh[BNH_THREADS][16];
  const int t = threadIdx.x, C8 = C / 8, R = BNH_THREADS / C8;
  const int cg = t % C8, r = t / C8;
  const bool active = r < R;
  const size_t j = blockIdx.x, p0 = j * len, p1 = p0 + len < P ? p0 + len : P;
  double s1[8], s2[8];
  for (int e = 0; e < 8; e++) s1[e] = s2[e] = 0;
  if (active)
    for (size_t p = p0 + r; p < p1; p += R) {
      const size_t o = p * C + cg * 8;
      float a[8];
      bnh_ld8(x + o, a); /* forward: x; backward: x_norm */
      if (!dy) {
        for (int e = 0; e < 8; e++) s1[e] += a[e], s2[e] += (double)a[e] * a[e];
      } else {
        float d[8], d1[8], yy[8];
        bnh_ld8(dy + o, d);
        if (dy1) {
          bnh_ld8(dy1 + o, d1);
          for (int e = 0; e < 8; e++) d[e] += d1[e];
        }
        if (masked) bnh_ld8(y + o, yy);
        for (int e = 0; e < 8; e++) {
          const float dz = bnh_dz(d[e], masked ? yy[e] : 0.0f, masked, slope);
          s1[e] += dz;
          s2[e] += (double)dz * a[e];
        }
      }
    }
  for (int e = 0; e < 8; e++) sh[t][e] = s1[e], sh[t][8 + e] = s2[e];
  __syncthreads();
  if (r == 0) { /* rows 1 .. R-1 added in order */
    for (int rr = 1; rr < R; rr++)
      for (int e = 0; e < 8; e++) s1[e] += sh[rr * C8 + cg][e], s2[e] += sh[rr * C8 + cg][8 + e];
    for (int e = 0; e < 8; e++) {
      part[(j * C + cg * 8 + e) * 2] = s1[e];
      part[(j * C + cg * 8 + e) * 2 + 1] = s2[e];
    }
  }
}

#ifndef MOKA_NHWC_EMULATE
/* ---- the per-channel and elementwise kernels ------------------------------------------------ */

__global__ void bnh_stats_kernel(const double *part, size_t C, size_t chunks, size_t m, float eps,
                                 float maf, float bias_correction, float *stats, float *b0,
                                 float *b1, float *b2) {
  MOKA_GRID_LOOP(c, C)
  bnh_stats_channel(part, c, C, chunks, m, eps, maf, bias_correction, stats, b0, b1, b2);
}

__global__ void bnh_grad_kernel(const double *part, size_t C, size_t chunks, size_t m,
                                const float *gamma, float *dgamma, float *dbeta, float *work) {
  MOKA_GRID_LOOP(c, C) bnh_grad_channel(part, c, C, chunks, m, gamma, dgamma, dbeta, work);
}

/* One thread per 8 values of one pixel (vector i: pixel i / C8, channels 8 (i % C8) ..). */
__global__ void bnh_apply_kernel(const nh_bf16 *x, nh_bf16 *xz, nh_bf16 *y, const nh_bf16 *r,
                                 nh_bf16 *x_norm, const float *stats, const float *gamma,
                                 const float *beta, size_t n8, int C, bool relu, float slope,
                                 int residual) {
  MOKA_GRID_LOOP(i, n8)
  bnh_apply8(i, x, xz, y, r, x_norm, stats, gamma, beta, C, relu, slope, residual);
}

__global__ void bnh_grad_apply_kernel(const nh_bf16 *dy, const nh_bf16 *dy1, const nh_bf16 *y,
                                      const nh_bf16 *x_norm, const float *stats,
                                      const float *gamma, const float *work, nh_bf16 *dx,
                                      nh_bf16 *dr, size_t n8, int C, bool masked, float slope,
                                      bool global) {
  MOKA_GRID_LOOP(i, n8)
  bnh_grad_apply8(i, dy, dy1, y, x_norm, stats, gamma, work, dx, dr, C, masked, slope, global);
}

/* ---- launchers ------------------------------------------------------------------------------ */

static bool bnh_ok(const MokaBnFusedGeom *g) {
  return g->C % 8 == 0 && g->C <= BNH_MAX_C && g->C > 0;
}

extern "C" size_t moka_cuda_bn_nhwc_scratch_bytes(const MokaBnFusedGeom *g) {
  size_t chunks, len;
  bnh_chunks(g->N * g->S, g->C, &chunks, &len);
  return 2 * g->C * chunks * sizeof(double) + 2 * g->C * sizeof(float) + 256;
}

static int bnh_check(const MokaBnFusedGeom *g, const void *const *ptrs, int n) {
  if (!bnh_ok(g))
    return moka_errorf("internal error: the NHWC bf16 chain takes channel counts that are "
                       "multiples of 8 up to %d, not %zu",
                       BNH_MAX_C, g->C);
  for (int i = 0; i < n; i++)
    if (!moka_aligned16(ptrs[i]))
      return moka_errorf("internal error: the NHWC bf16 chain needs 16-byte aligned buffers");
  return 0;
}

extern "C" int moka_cuda_bn_nhwc_forward(cudaStream_t s, const MokaBnFusedGeom *g,
                                         const moka_bf16 *x, moka_bf16 *xz, moka_bf16 *y,
                                         const moka_bf16 *r, moka_bf16 *x_norm, float *stats,
                                         float *b0, float *b1, float *b2, const float *gamma,
                                         const float *beta, void *partials) {
  const void *ptrs[] = {x, xz, y, r, x_norm};
  if (bnh_check(g, ptrs, 5)) return -1;
  if (g->residual >= 0 && (!y || !r))
    return moka_errorf("internal error: the NHWC bf16 chain with a residual needs y and r");
  const size_t P = g->N * g->S, C = g->C, m = P;
  if (P == 0) return 0;
  const nh_bf16 *bx = (const nh_bf16 *)x, *br = (const nh_bf16 *)r;
  size_t chunks, len;
  bnh_chunks(P, C, &chunks, &len);
  double *part = (double *)partials;
  if (g->use_global) {
    if (moka_cuda_bn_global_stats(s, b0, b1, b2, stats, C, g->eps)) return -1;
  } else {
    bnh_partial_kernel<<<(unsigned)chunks, BNH_THREADS, 0, s>>>(bx, NULL, NULL, NULL, false, 0.0f,
                                                                P, (int)C, len, part);
    if (moka_cuda_launched(s, "bnh_partial_kernel", __FILE__, __LINE__)) return -1;
    bnh_stats_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, C, chunks, m, g->eps, g->maf,
                                                            g->bias_correction, stats, b0, b1,
                                                            b2);
    if (moka_cuda_launched(s, "bnh_stats_kernel", __FILE__, __LINE__)) return -1;
  }
  const size_t n8 = P * C / 8;
  bnh_apply_kernel<<<moka_blocks(n8), MOKA_THREADS, 0, s>>>(
      bx, (nh_bf16 *)xz, (nh_bf16 *)y, br, (nh_bf16 *)x_norm, stats, gamma, beta, n8, (int)C,
      g->has_relu, g->slope, g->residual);
  return moka_cuda_launched(s, "bnh_apply_kernel", __FILE__, __LINE__);
}

extern "C" int moka_cuda_bn_nhwc_backward(cudaStream_t s, const MokaBnFusedGeom *g,
                                          const moka_bf16 *dy, const moka_bf16 *dy1,
                                          const moka_bf16 *y, const moka_bf16 *x_norm,
                                          const float *stats, const float *gamma, moka_bf16 *dx,
                                          moka_bf16 *dr, float *dgamma, float *dbeta,
                                          void *partials) {
  const void *ptrs[] = {dy, dy1, y, x_norm, dx, dr};
  if (bnh_check(g, ptrs, 6)) return -1;
  const size_t P = g->N * g->S, C = g->C, m = P;
  if (P == 0) return 0;
  const bool sums = dgamma || dbeta || (dx && !g->use_global);
  if (sums && !x_norm)
    return moka_errorf("internal error: the NHWC bf16 chain's backward needs x_norm");
  size_t chunks, len;
  bnh_chunks(P, C, &chunks, &len);
  double *part = (double *)partials;
  float *work = (float *)((char *)partials + 2 * C * chunks * sizeof(double));
  if (sums) {
    bnh_partial_kernel<<<(unsigned)chunks, BNH_THREADS, 0, s>>>(
        (const nh_bf16 *)x_norm, (const nh_bf16 *)dy, (const nh_bf16 *)dy1, (const nh_bf16 *)y,
        g->relu_bw, g->slope, P, (int)C, len, part);
    if (moka_cuda_launched(s, "bnh_partial_kernel", __FILE__, __LINE__)) return -1;
    bnh_grad_kernel<<<moka_blocks(C), MOKA_THREADS, 0, s>>>(part, C, chunks, m, gamma, dgamma,
                                                           dbeta, work);
    if (moka_cuda_launched(s, "bnh_grad_kernel", __FILE__, __LINE__)) return -1;
  }
  if (!dx && !dr) return 0;
  const size_t n8 = P * C / 8;
  bnh_grad_apply_kernel<<<moka_blocks(n8), MOKA_THREADS, 0, s>>>(
      (const nh_bf16 *)dy, (const nh_bf16 *)dy1, (const nh_bf16 *)y, (const nh_bf16 *)x_norm,
      stats, gamma, work, (nh_bf16 *)dx, (nh_bf16 *)dr, n8, (int)C, g->relu_bw, g->slope,
      g->use_global);
  return moka_cuda_launched(s, "bnh_grad_apply_kernel", __FILE__, __LINE__);
}
#endif /* MOKA_NHWC_EMULATE */
