/* accuracy.cu — Caffe's Accuracy (src/layers/accuracy.c): a position is
 * correct when fewer than top_k classes score >= the true class (itself
 * included: ties count against it); top[0] = correct / valid (0 when none);
 * per_class[c] = correct_c / seen_c (0 for classes never seen). Labels are
 * checked as on the CPU (first bad position into the status).
 * One block: the threads share the positions; integer counts.
 */
#include <limits.h>

#include "cuda_internal.h"

__global__ void accuracy_kernel(const float *x, const float *label, size_t outer, size_t C,
                                size_t I, unsigned top_k, bool has_ignore, int ignore_label,
                                float *top, float *per_class, int *counts,
                                MokaLabelStatus *status) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  __shared__ int bad;
  if (threadIdx.x == 0) bad = INT_MAX;
  __syncthreads();
  const size_t npos = outer * I;
  double correct = 0, count = 0;
  for (size_t k = threadIdx.x; k < npos; k += blockDim.x) {
    const float v = label[k];
    if (!(v > -2147483648.0f && v < 2147483647.0f)) {
      atomicMin(&bad, k < (size_t)INT_MAX ? (int)k : INT_MAX - 1);
      continue;
    }
    const int lab = (int)v;
    if (has_ignore && lab == ignore_label) continue;
    if (lab < 0 || (size_t)lab >= C) {
      atomicMin(&bad, k < (size_t)INT_MAX ? (int)k : INT_MAX - 1);
      continue;
    }
    if (per_class) atomicAdd(&counts[lab], 1);
    const size_t n = k / I, i = k - n * I;
    const float truth = x[(n * C + (size_t)lab) * I + i];
    long long better = -1; /* the true class scores >= itself */
    for (size_t c = 0; c < C && better < (long long)top_k; c++)
      better += x[(n * C + c) * I + i] >= truth;
    if (better < (long long)top_k) {
      correct += 1;
      if (per_class) atomicAdd(&counts[C + lab], 1);
    }
    count += 1;
  }
  correct = moka_block_sum(correct, sh);
  count = moka_block_sum(count, sh);
  if (threadIdx.x == 0) {
    top[0] = count == 0 ? 0.0f : (float)correct / (float)count;
    status->bad_pos = bad;
    status->bad_value = bad < INT_MAX ? label[bad] : 0.0f;
    status->valid = (int)count;
    status->normalizer = 0;
  }
  __syncthreads(); /* the per-class atomics above are visible to the block now */
  if (per_class)
    for (size_t c = threadIdx.x; c < C; c += blockDim.x)
      per_class[c] = counts[c] == 0 ? 0.0f : (float)counts[C + c] / (float)counts[c];
}

int moka_cuda_accuracy(cudaStream_t s, const float *x, const float *label, size_t outer,
                       size_t C, size_t inner, unsigned top_k, bool has_ignore, int ignore_label,
                       float *top, float *per_class, int *counts, MokaLabelStatus *status) {
  if (per_class && moka_dev_zero(s, counts, 2 * C * sizeof(int))) return -1;
  accuracy_kernel<<<1, MOKA_REDUCE_THREADS, 0, s>>>(x, label, outer, C, inner, top_k, has_ignore,
                                                    ignore_label, top, per_class, counts, status);
  return moka_cuda_launched(s, "accuracy_kernel", __FILE__, __LINE__);
}
