/* relu.cu — ReLU forward/backward, the same float operations as the CPU
 * reference (src/layers/relu.c), rounded the same way (no FMA contraction:
 * __fmul_rn/__fadd_rn), so the results are bit-identical.
 *   y  = max(x, 0) + slope * min(x, 0)
 *   dx = dy * ((x > 0) + slope * (x <= 0))
 */
#include "cuda_internal.h"

__global__ void relu_forward_kernel(const float *x, float *y, size_t n, float slope) {
  MOKA_GRID_LOOP(i, n) {
    const float v = x[i];
    const float mx = v < 0.0f ? 0.0f : v; /* std::max(v, 0): NaN passes */
    const float mn = 0.0f < v ? 0.0f : v;
    y[i] = __fadd_rn(mx, __fmul_rn(slope, mn));
  }
}

__global__ void relu_backward_kernel(const float *x, const float *dy, float *dx, size_t n,
                                     float slope) {
  MOKA_GRID_LOOP(i, n) {
    const float v = x[i];
    dx[i] = __fmul_rn(dy[i], __fadd_rn((float)(v > 0), __fmul_rn(slope, (float)(v <= 0))));
  }
}

int moka_cuda_relu_forward(cudaStream_t s, const float *x, float *y, size_t n, float slope) {
  if (!n) return 0;
  relu_forward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, y, n, slope);
  return moka_cuda_launched(s, "relu_forward_kernel", __FILE__, __LINE__);
}

int moka_cuda_relu_backward(cudaStream_t s, const float *x, const float *dy, float *dx, size_t n,
                            float slope) {
  if (!n) return 0;
  relu_backward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, dy, dx, n, slope);
  return moka_cuda_launched(s, "relu_backward_kernel", __FILE__, __LINE__);
}
