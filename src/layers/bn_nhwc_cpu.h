/* bn_nhwc_cpu.h — the fused BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] chain on
 * channels-last bf16 activations, on the CPU (AVX-512 BF16): the fast CPU backend's piece of
 * the bf16 channels-last training path (conv_nhwc_bf16.h is the convolutions'), the CPU
 * twin of kernels/bn_nhwc.cu. Checked and timed by tests/unit/test_bn_nhwc_cpu.c (`bench`).
 *
 * The math is src/net_fuse.h's (the chain's definition) with bn_nhwc.cu's choices, value
 * for value: bf16 values widened exactly, fp32 arithmetic per element in bn_nhwc.cu's
 * order (no FMA contraction), one rounding to bf16 per store (nearest even, denormals to
 * zero: VCVTNEPS2BF16). Per channel c, m = N*S:
 *   batch statistics in one pass: sums of x and x^2 in double, mean = s/m,
 *     var = max(q/m - mean^2, 0) in double, then mean, var to float, std = sqrtf(var + eps);
 *     the running statistics b0 = maf*b0 + mean, b1 = maf*b1 + bias_correction*var,
 *     b2 = b2*maf + 1 (Caffe's BatchNorm);
 *   global statistics: f = b2 == 0 ? 0 : 1/b2, mean = f*b0, var = f*b1, std as above;
 *   xhat = (x - mean) / std (-> x_norm, bf16); z = xhat*gamma + beta (beta 0 when NULL);
 *   no residual: xz = relu(z) (or z); residual: xz = z, y = relu(z + r) (bottom 0: z + r;
 *     bottom 1: r + z); relu(v) = (v < 0 ? 0 : v) + slope*(0 < v ? 0 : v);
 *   backward: d = dy (+ dy1), dz = d * ((y > 0) + slope*(y <= 0)) when relu_bw (else d);
 *     dr = dz; sdz = sum dz, sdzx = sum dz*xhat (double, xhat the bf16 x_norm);
 *     dbeta += (float)sdz, dgamma += (float)sdzx;
 *     dx = (dz*gamma - wa - wb*xhat) / std, wa = (float)(gamma*sdz/m),
 *     wb = (float)(gamma*sdzx/m) (batch), or dx = (dz*gamma) / std (global).
 * Where bn_nhwc.cu and the fp32 chain (net_fuse.c) differ, this follows bn_nhwc.cu: without
 * beta, + 0 is still added, and the Eltwise is z + r, not (0 + z) + r; only the sign of a
 * zero result can differ (-0 + 0 = +0).
 *
 * Deterministic: the per-channel sums are made per chunk of pixels (a fixed length; the
 * chunks depend on the shape only), each chunk's partial sums in double, then the chunks
 * added in index order: the same statistics and parameter gradients for any number of
 * threads, bit for bit, and so the same outputs.
 *
 * Layout: every activation buffer is (N*S, C) bf16 (uint16_t bits), channels fastest, no
 * alignment needed; C a multiple of 8 (other values are refused). The partial sums use
 * the calling thread's FAST_WS_AUX workspace (fast.h): a caller must not hold that slot's
 * buffer across these calls. On the OpenMP pool (fast_threads()); one thread below
 * FAST_GRAIN values. Callers check fast_bf16_supported() first. Internal to src/layers. */
#ifndef MOKA_LAYERS_BN_NHWC_CPU_H
#define MOKA_LAYERS_BN_NHWC_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Pixels per chunk of the per-channel sums: chunk j is pixels [j*128, (j+1)*128); its partial
 * sums add its pixels in order (from 0), and the totals add the chunks in order (from 0). */
#define BN_NHWC_CPU_CHUNK 128

typedef struct BnNhwcGeom {
  size_t N, C, S;                  /* images, channels, pixels per image; buffers are (N*S, C) bf16, channels fastest */
  float eps, maf, bias_correction; /* bias_correction = m/(m-1) in float, computed by the caller (m = N*S) */
  bool use_global;                 /* use_global_stats: statistics from b0..b2, no running update */
  bool has_relu;                   /* forward applies the ReLU */
  bool relu_bw;                    /* backward applies the ReLU mask to dy */
  float slope;                     /* ReLU negative_slope */
  int residual;                    /* -1 none; 0: z is the Eltwise's bottom 0; 1: z is its bottom 1 */
} BnNhwcGeom;

/* x in; xz out (may be x: in place); y, r the Eltwise/ReLU output and the shortcut (residual only, else NULL);
   x_norm kept in bf16 (NULL: not kept); stats (3C) fp32 = mean | var | std; b0, b1 (C), b2 (1) BatchNorm's blobs
   (running statistics updated in TRAIN as Caffe: b2 = b2*maf + 1; b0 = maf*b0 + mean; b1 = maf*b1 + bias_correction*var);
   gamma (C), beta (C) or NULL. Returns 0, or -1 with moka_errorf. */
int bn_nhwc_cpu_forward(const BnNhwcGeom *g, const uint16_t *x, uint16_t *xz, uint16_t *y, const uint16_t *r,
                        uint16_t *x_norm, float *stats, float *b0, float *b1, float *b2,
                        const float *gamma, const float *beta);

/* dy (and dy1: NULL, or a second diff summed into dy: the two tops of the Split after the chain), y the chain
   output's data (the ReLU mask), x_norm and stats from the forward, gamma. Outputs, each NULL when not wanted:
   dx (may be dy: in place), dr (residual), dgamma, dbeta (C, ACCUMULATED: +=). Returns 0 or -1.
   x_norm is needed when there are sums to make (dgamma, dbeta, or dx with batch statistics);
   y when relu_bw. */
int bn_nhwc_cpu_backward(const BnNhwcGeom *g, const uint16_t *dy, const uint16_t *dy1, const uint16_t *y,
                         const uint16_t *x_norm, const float *stats, const float *gamma,
                         uint16_t *dx, uint16_t *dr, float *dgamma, float *dbeta);

#endif
