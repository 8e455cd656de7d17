/* softmax.cu — Softmax over the middle axis of x viewed as (outer, C, inner),
 * the CPU reference's algorithm (src/layers/softmax.c): max subtracted, expf,
 * sum in double, divided; backward dx = (dy - sum(dy*y)) * y with the dot in
 * double. One thread per (outer, inner) position, looping over C (stride
 * inner). expf may differ from glibc's by an ulp; everything else is the
 * reference's rounding.
 * TODO(speed): a warp per position for large C (the 1000-way classifier).
 */
#include "cuda_internal.h"

__global__ void softmax_forward_kernel(const float *x, float *y, size_t outer, size_t C,
                                       size_t inner) {
  MOKA_GRID_LOOP(pos, outer * inner) {
    const size_t n = pos / inner, i = pos - n * inner;
    const float *xi = x + n * C * inner + i; /* stride inner */
    float *yi = y + n * C * inner + i;
    float mx = xi[0];
    for (size_t c = 1; c < C; c++) mx = fmaxf(mx, xi[c * inner]);
    double sum = 0;
    for (size_t c = 0; c < C; c++) {
      const float e = expf(__fsub_rn(xi[c * inner], mx));
      yi[c * inner] = e;
      sum += e;
    }
    const float s = (float)sum;
    for (size_t c = 0; c < C; c++) yi[c * inner] = __fdiv_rn(yi[c * inner], s);
  }
}

__global__ void softmax_backward_kernel(const float *y, const float *dy, float *dx, size_t outer,
                                        size_t C, size_t inner) {
  MOKA_GRID_LOOP(pos, outer * inner) {
    const size_t n = pos / inner, i = pos - n * inner, base = n * C * inner + i;
    double dot = 0;
    for (size_t c = 0; c < C; c++)
      dot += (double)dy[base + c * inner] * (double)y[base + c * inner];
    const float d = (float)dot;
    for (size_t c = 0; c < C; c++)
      dx[base + c * inner] = __fmul_rn(__fsub_rn(dy[base + c * inner], d), y[base + c * inner]);
  }
}

int moka_cuda_softmax_forward(cudaStream_t s, const float *x, float *y, size_t outer, size_t C,
                              size_t inner) {
  const size_t n = outer * inner;
  if (!n || !C) return 0;
  softmax_forward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, y, outer, C, inner);
  return moka_cuda_launched(s, "softmax_forward_kernel", __FILE__, __LINE__);
}

int moka_cuda_softmax_backward(cudaStream_t s, const float *y, const float *dy, float *dx,
                               size_t outer, size_t C, size_t inner) {
  const size_t n = outer * inner;
  if (!n || !C) return 0;
  softmax_backward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(y, dy, dx, outer, C, inner);
  return moka_cuda_launched(s, "softmax_backward_kernel", __FILE__, __LINE__);
}
