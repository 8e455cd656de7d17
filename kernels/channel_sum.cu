/* channel_sum.cu — per-channel sums: out[d] (+)= sum_{n,i} a[n,d,i] (* b[n,d,i]),
 * x viewed as (outer, D, inner), accumulated in double like the CPU
 * reference's long sums. Used for conv/fc bias gradients, the Scale and bias
 * gradients and BatchNorm's statistics sums.
 *
 * One block per channel d; the block's threads stride over the outer*inner
 * values of that channel and reduce in a fixed tree (deterministic).
 * TODO(speed): for few channels with many values (BatchNorm of early ResNet
 * layers: 64 channels x 200k values) split each channel over several blocks
 * and reduce the partial sums in a second pass.
 */
#include "cuda_internal.h"

__global__ void channel_sum_kernel(const float *__restrict__ a, const float *__restrict__ b,
                                   float *__restrict__ out, size_t outer, size_t D, size_t inner,
                                   bool accumulate) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  const size_t d = blockIdx.x;
  const size_t m = outer * inner;
  double acc = 0;
  for (size_t e = threadIdx.x; e < m; e += blockDim.x) {
    const size_t n = e / inner, i = e - n * inner;
    const size_t k = (n * D + d) * inner + i;
    acc += b ? (double)a[k] * (double)b[k] : (double)a[k];
  }
  acc = moka_block_sum(acc, sh);
  if (threadIdx.x == 0) out[d] = accumulate ? __fadd_rn(out[d], (float)acc) : (float)acc;
}

int moka_cuda_channel_sum(cudaStream_t s, const float *a, const float *b, float *out,
                          size_t outer, size_t D, size_t inner, bool accumulate) {
  if (D == 0) return 0;
  if (D > 2147483647u) return moka_errorf("internal error: channel_sum over %zu channels", D);
  channel_sum_kernel<<<(unsigned)D, MOKA_REDUCE_THREADS, 0, s>>>(a, b, out, outer, D, inner,
                                                                  accumulate);
  return moka_cuda_launched(s, "channel_sum_kernel", __FILE__, __LINE__);
}
