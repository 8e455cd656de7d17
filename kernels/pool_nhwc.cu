/* pool_nhwc.cu — global AVE pooling of a bf16 channels-last blob (MOKA_BF16_ACT,
 * src/net_bf16.h: ResNet's pool5 reading the last block's output): x (N*S, C) bf16 ->
 * y (N, C) fp32 = the mean over the S pixels (summed in fp32 in pixel order, divided by S as
 * Caffe's AVE pooling divides by its window), and back: dx (N*S, C) bf16 = dy / S. */
#include <cuda_bf16.h>

#include "cuda_internal.h"

/* One thread per (image, channel): adjacent threads read adjacent channels. */
__global__ void pool_ave_nhwc_fwd_kernel(const __nv_bfloat16 *x, float *y, size_t N, size_t C,
                                         size_t S) {
  MOKA_GRID_LOOP(i, N * C) {
    const size_t n = i / C, c = i - n * C;
    const __nv_bfloat16 *p = x + n * S * C + c;
    float s = 0.0f;
    for (size_t q = 0; q < S; q++) s += __bfloat162float(p[q * C]);
    y[i] = s / (float)S;
  }
}

__global__ void pool_ave_nhwc_bwd_kernel(const float *dy, __nv_bfloat16 *dx, size_t N, size_t C,
                                         size_t S) {
  MOKA_GRID_LOOP(i, N * S * C) {
    const size_t c = i % C, n = i / (S * C);
    dx[i] = __float2bfloat16_rn(dy[n * C + c] / (float)S);
  }
}

extern "C" int moka_cuda_pool_ave_global_nhwc_forward(cudaStream_t s, size_t N, size_t C,
                                                      size_t S, const moka_bf16 *x, float *y) {
  if (N * C == 0) return 0;
  pool_ave_nhwc_fwd_kernel<<<moka_blocks(N * C), MOKA_THREADS, 0, s>>>(
      (const __nv_bfloat16 *)x, y, N, C, S);
  return moka_cuda_launched(s, "pool_ave_nhwc_fwd_kernel", __FILE__, __LINE__);
}

extern "C" int moka_cuda_pool_ave_global_nhwc_backward(cudaStream_t s, size_t N, size_t C,
                                                       size_t S, const float *dy, moka_bf16 *dx) {
  if (N * C * S == 0) return 0;
  pool_ave_nhwc_bwd_kernel<<<moka_blocks(N * S * C), MOKA_THREADS, 0, s>>>(
      dy, (__nv_bfloat16 *)dx, N, C, S);
  return moka_cuda_launched(s, "pool_ave_nhwc_bwd_kernel", __FILE__, __LINE__);
}
