/* softmax_loss.cu — SoftmaxWithLoss's loss and gradient, given the
 * probabilities (softmax.cu), as the CPU reference (src/layers/softmaxwithloss.c):
 *
 *   loss = -sum_{valid (n,i)} log(max(p[n, label, i], FLT_MIN)) / Z
 *   dx   = (p - onehot(label)) * dloss / Z, zero at ignored positions
 *
 * Z (normalization): VALID = valid positions, BATCH_SIZE = outer,
 * FULL = outer*inner, NONE = 1; at least 1. Labels are checked as the CPU
 * does; the first bad position is written to the status, which the layer
 * copies back and reports.
 * The loss is one block (the positions of a batch are few: N, or N*H*W for
 * segmentation-style nets), reducing in double.
 */
#include <float.h>
#include <limits.h>

#include "cuda_internal.h"

/* The label at k: -1 = ignored, -2 = invalid, else the class. */
__device__ static int read_label(const float *label, size_t k, size_t C, bool has_ignore,
                                 int ignore_label) {
  const float v = label[k];
  if (!(v > -2147483648.0f && v < 2147483647.0f)) return -2;
  const int lab = (int)v;
  if (has_ignore && lab == ignore_label) return -1;
  if (lab < 0 || (size_t)lab >= C) return -2;
  return lab;
}

__global__ void softmax_loss_forward_kernel(MokaLossGeom g, const float *prob, const float *label,
                                            float *loss, MokaLabelStatus *status) {
  __shared__ double sh[MOKA_REDUCE_THREADS];
  __shared__ int bad;
  if (threadIdx.x == 0) bad = INT_MAX;
  __syncthreads();
  const size_t C = g.channels, I = g.inner, npos = g.outer * I;
  double l = 0, cnt = 0;
  for (size_t k = threadIdx.x; k < npos; k += blockDim.x) {
    const int lab = read_label(label, k, C, g.has_ignore, g.ignore_label);
    if (lab == -2) {
      atomicMin(&bad, k < (size_t)INT_MAX ? (int)k : INT_MAX - 1);
      continue;
    }
    if (lab < 0) continue;
    const size_t n = k / I, i = k - n * I;
    const float pr = prob[(n * C + (size_t)lab) * I + i]; /* std::max: NaN stays NaN */
    l -= log((double)(pr < FLT_MIN ? FLT_MIN : pr));
    cnt += 1;
  }
  l = moka_block_sum(l, sh);
  cnt = moka_block_sum(cnt, sh);
  if (threadIdx.x == 0) {
    double z = 1;
    switch (g.norm) {
      case MOKA_LOSS_NORM_FULL: z = (double)npos; break;
      case MOKA_LOSS_NORM_VALID: z = cnt; break;
      case MOKA_LOSS_NORM_BATCH_SIZE: z = (double)g.outer; break;
      default: z = 1; break;
    }
    const float zf = (float)fmax(1.0, z);
    loss[0] = (float)(l / (double)zf);
    status->bad_pos = bad;
    status->bad_value = bad < INT_MAX ? label[bad] : 0.0f;
    status->valid = (int)cnt;
    status->normalizer = zf;
  }
}

__global__ void softmax_loss_backward_kernel(MokaLossGeom g, const float *prob, const float *label,
                                             const float *dloss, const MokaLabelStatus *status,
                                             float *dx) {
  const size_t C = g.channels, I = g.inner, n_all = g.outer * C * I;
  MOKA_GRID_LOOP(e, n_all) {
    const size_t n = e / (C * I), r = e - n * C * I, c = r / I, i = r - c * I;
    const int lab = read_label(label, n * I + i, C, g.has_ignore, g.ignore_label);
    float v = 0.0f;
    if (lab >= 0) {
      v = prob[e];
      if ((size_t)lab == c) v = __fsub_rn(v, 1.0f);
    }
    const float w = __fdiv_rn(dloss[0], status->normalizer);
    dx[e] = __fmul_rn(v, w);
  }
}

int moka_cuda_softmax_loss_forward(cudaStream_t s, const MokaLossGeom *g, const float *prob,
                                   const float *label, float *loss, MokaLabelStatus *status) {
  softmax_loss_forward_kernel<<<1, MOKA_REDUCE_THREADS, 0, s>>>(*g, prob, label, loss, status);
  return moka_cuda_launched(s, "softmax_loss_forward_kernel", __FILE__, __LINE__);
}

int moka_cuda_softmax_loss_backward(cudaStream_t s, const MokaLossGeom *g, const float *prob,
                                    const float *label, const float *dloss,
                                    const MokaLabelStatus *status, float *dx) {
  const size_t n = g->outer * g->channels * g->inner;
  if (!n) return 0;
  softmax_loss_backward_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(*g, prob, label, dloss,
                                                                       status, dx);
  return moka_cuda_launched(s, "softmax_loss_backward_kernel", __FILE__, __LINE__);
}
