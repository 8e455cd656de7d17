/* scale.cu — per-channel scale and bias, x viewed as (outer, D, inner)
 * (Caffe's Scale layer and the bias of Convolution/InnerProduct):
 *   y = x * scale[d] (+ bias[d])
 * rounded as the CPU reference does it in two passes (y = x*s, then
 * y += b): __fmul_rn then __fadd_rn, no FMA, so bit-identical.
 * The scale gradient of the layer is dx = dy * scale[d]: the same kernel.
 */
#include "cuda_internal.h"

__global__ void scale_kernel(const float *x, const float *scale, const float *bias, float *y,
                             size_t n, size_t D, size_t inner) {
  MOKA_GRID_LOOP(i, n) {
    const size_t d = (i / inner) % D;
    float v = __fmul_rn(x[i], scale[d]);
    if (bias) v = __fadd_rn(v, bias[d]);
    y[i] = v;
  }
}

__global__ void bias_add_kernel(float *y, const float *bias, size_t n, size_t D, size_t inner) {
  MOKA_GRID_LOOP(i, n) {
    const size_t d = (i / inner) % D;
    y[i] = __fadd_rn(y[i], bias[d]);
  }
}

int moka_cuda_scale_forward(cudaStream_t s, const float *x, const float *scale, const float *bias,
                            float *y, size_t outer, size_t D, size_t inner) {
  const size_t n = outer * D * inner;
  if (!n) return 0;
  scale_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, scale, bias, y, n, D, inner);
  return moka_cuda_launched(s, "scale_kernel", __FILE__, __LINE__);
}

int moka_cuda_bias_add(cudaStream_t s, float *y, const float *bias, size_t outer, size_t D,
                       size_t inner) {
  const size_t n = outer * D * inner;
  if (!n) return 0;
  bias_add_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(y, bias, n, D, inner);
  return moka_cuda_launched(s, "bias_add_kernel", __FILE__, __LINE__);
}
