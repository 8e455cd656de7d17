/* dropout.cu — Dropout's multiply: y = x * mask * scale (and dx = dy * mask
 * * scale), rounded as the CPU reference: (x * (float)mask) * scale.
 * The mask itself is drawn on the host from the net's random stream and
 * copied here (src/layers/dropout.c), so CPU and GPU training drop exactly the
 * same units, and the same as Caffe for the same seed.
 */
#include "cuda_internal.h"

__global__ void dropout_kernel(const float *x, const unsigned int *mask, float scale, float *y,
                               size_t n) {
  MOKA_GRID_LOOP(i, n) y[i] = __fmul_rn(__fmul_rn(x[i], (float)mask[i]), scale);
}

int moka_cuda_dropout(cudaStream_t s, const float *x, const unsigned int *mask, float scale,
                      float *y, size_t n) {
  if (!n) return 0;
  dropout_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, mask, scale, y, n);
  return moka_cuda_launched(s, "dropout_kernel", __FILE__, __LINE__);
}
