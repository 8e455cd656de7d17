/* pooling.cu — Caffe's MAX and AVE pooling, forward and backward, with the
 * window of src/pool_geom.h (the same function the CPU reference uses) and
 * the output size computed by the layer on the host (Caffe's ceil rounding).
 *
 * Forward: one thread per output (N,C,PH,PW). MAX keeps the first maximum in
 * row-major order (index h*W+w inside the plane, -1 for an empty window) and
 * can write it as floats into the mask top; AVE sums in double and divides
 * by the divisor extent, as the reference does.
 * Backward: one thread per input value (N,C,H,W), gathering from the outputs
 * whose window contains it in increasing output order — the order in which
 * the reference scatters — so no atomics and bit-identical sums.
 */
#include <float.h>

#include "cuda_internal.h"
#include "pool_geom.h"

__global__ void pool_forward_kernel(MokaPoolGeom g, bool is_max, const float *x, float *y,
                                    int *argmax, float *mask) {
  const size_t n_out = (size_t)g.num * g.channels * g.out_h * g.out_w;
  const int PH = g.out_h, PW = g.out_w, H = g.height, W = g.width;
  MOKA_GRID_LOOP(i, n_out) {
    const size_t nc = i / ((size_t)PH * PW);
    const int o = (int)(i - nc * PH * PW), ph = o / PW, pw = o - ph * PW;
    const float *xp = x + nc * H * W; /* (H,W) */
    int h0, h1, w0, w1;
    const int eh = pool_window(ph, g.stride_h, g.pad_h, g.kernel_h, H, &h0, &h1);
    const int ew = pool_window(pw, g.stride_w, g.pad_w, g.kernel_w, W, &w0, &w1);
    if (is_max) {
      float m = -FLT_MAX;
      int arg = -1;
      for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++)
          if (xp[h * W + w] > m) {
            m = xp[h * W + w];
            arg = h * W + w;
          }
      y[i] = m;
      argmax[i] = arg;
      if (mask) mask[i] = (float)arg;
    } else {
      double s = 0.0;
      for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) s += xp[h * W + w];
      y[i] = (float)(s / ((double)eh * ew));
    }
  }
}

__global__ void pool_backward_kernel(MokaPoolGeom g, bool is_max, const float *dy,
                                     const int *argmax, float *dx) {
  const size_t n_in = (size_t)g.num * g.channels * g.height * g.width;
  const int PH = g.out_h, PW = g.out_w, H = g.height, W = g.width;
  MOKA_GRID_LOOP(i, n_in) {
    const size_t nc = i / ((size_t)H * W);
    const int q = (int)(i - nc * H * W), h = q / W, w = q - h * W;
    const float *dyp = dy + nc * PH * PW; /* (PH,PW) */
    int ph0, ph1, pw0, pw1;
    pool_outputs_of(h, g.stride_h, g.pad_h, g.kernel_h, PH, &ph0, &ph1);
    pool_outputs_of(w, g.stride_w, g.pad_w, g.kernel_w, PW, &pw0, &pw1);
    float acc = 0.0f;
    if (is_max) {
      const int *ap = argmax + nc * PH * PW;
      for (int ph = ph0; ph < ph1; ph++)
        for (int pw = pw0; pw < pw1; pw++)
          if (ap[ph * PW + pw] == q) acc = __fadd_rn(acc, dyp[ph * PW + pw]);
    } else {
      for (int ph = ph0; ph < ph1; ph++) {
        int a, b;
        const int eh = pool_window(ph, g.stride_h, g.pad_h, g.kernel_h, H, &a, &b);
        for (int pw = pw0; pw < pw1; pw++) {
          const int ew = pool_window(pw, g.stride_w, g.pad_w, g.kernel_w, W, &a, &b);
          acc = __fadd_rn(acc, __fdiv_rn(dyp[ph * PW + pw], (float)(eh * ew)));
        }
      }
    }
    dx[i] = acc;
  }
}

int moka_cuda_pool_forward(cudaStream_t s, const MokaPoolGeom *g, bool is_max, const float *x,
                           float *y, int *argmax, float *mask) {
  const size_t n = (size_t)g->num * g->channels * g->out_h * g->out_w;
  if (!n) return 0;
  if (is_max && !argmax) return moka_errorf("internal error: MAX pooling without argmax buffer");
  pool_forward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(*g, is_max, x, y, argmax, mask);
  return moka_cuda_launched(s, "pool_forward_kernel", __FILE__, __LINE__);
}

int moka_cuda_pool_backward(cudaStream_t s, const MokaPoolGeom *g, bool is_max, const float *dy,
                            const int *argmax, float *dx) {
  const size_t n = (size_t)g->num * g->channels * g->height * g->width;
  if (!n) return 0;
  pool_backward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(*g, is_max, dy, argmax, dx);
  return moka_cuda_launched(s, "pool_backward_kernel", __FILE__, __LINE__);
}
