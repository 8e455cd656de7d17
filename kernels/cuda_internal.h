/* cuda_internal.h — (C++ only, for nvcc) what the kernels/<op>.cu files share
 * and src/ never sees: grid sizing, a double block reduction, and the cuBLAS/cuDNN check macros.
 */
#ifndef MOKA_CUDA_INTERNAL_H
#define MOKA_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "moka_cuda.h"

extern "C" {
#include "util.h"
}

/* Threads per block of the elementwise kernels. */
#define MOKA_THREADS 256
/* Threads per block of the block reductions (a power of two). */
#define MOKA_REDUCE_THREADS 256

/* Blocks for n elements, one per thread, grid-stride loops beyond 2^20
 * blocks (every elementwise kernel loops, so any grid size is correct). */
static inline unsigned moka_blocks(size_t n) {
  size_t b = (n + MOKA_THREADS - 1) / MOKA_THREADS;
  if (b == 0) b = 1;
  if (b > (1u << 20)) b = 1u << 20;
  return (unsigned)b;
}

/* Float4 accesses need 16-byte aligned pointers (NULL counts as aligned: unused). */
static inline bool moka_aligned16(const void *p) { return ((size_t)p & 15u) == 0; }

/* The convolution engines' workspace budget for column / Winograd buffers (conv_gemm.cu,
 * conv_winograd.cu): 512 MiB, or MOKA_CONV_WS_BYTES (tests set it small for several chunks). */
size_t moka_cuda_conv_ws_budget(void);

/* The device's multiprocessor count (100 if the runtime cannot say): the implicit-GEMM
 * kernels size their grids and split-K by it. */
int moka_cuda_sm_count(MokaCuda *c);

/* dw[i] += p_0[i] + p_1[i] + ... + p_{splits-1}[i] for i < n, in that order (the
 * deterministic split-K reduction of the implicit-GEMM weight gradients; conv_igemm.cu). */
int moka_cuda_split_reduce(cudaStream_t s, const float *partial, int splits, size_t n, float *dw);

#define MOKA_GRID_LOOP(i, n)                                                        \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);   \
       i += (size_t)blockDim.x * gridDim.x)

/* The update kernels' segment of flat index e: the last of the n_seg
 * segments (sorted by offset, the first at 0) with offset <= e. */
__device__ static inline int moka_segment_of(const MokaSgdSegment *seg, int n_seg, size_t e) {
  int lo = 0, hi = n_seg - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (seg[mid].offset <= e) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/* Sum of v over the block (blockDim.x == MOKA_REDUCE_THREADS); the result is
 * valid in thread 0. `sh` is shared scratch of MOKA_REDUCE_THREADS doubles.
 * Fixed tree order: the same inputs give the same sum on every run. */
__device__ static inline double moka_block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = MOKA_REDUCE_THREADS / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

/* cuBLAS / cuDNN status checks (file:line, call, device), returning -1. */
int moka_cublas_fail(int status, const char *call, const char *file, int line);
int moka_cudnn_fail(int status, const char *msg, const char *call, const char *file, int line);

#define MOKA_CUBLAS_CHECK(call)                                                 \
  do {                                                                          \
    cublasStatus_t moka_s_ = (call);                                            \
    if (moka_s_ != CUBLAS_STATUS_SUCCESS)                                       \
      return moka_cublas_fail((int)moka_s_, #call, __FILE__, __LINE__);         \
  } while (0)

#define MOKA_CUDNN_CHECK(call)                                                  \
  do {                                                                          \
    cudnnStatus_t moka_s_ = (call);                                             \
    if (moka_s_ != CUDNN_STATUS_SUCCESS)                                        \
      return moka_cudnn_fail((int)moka_s_, cudnnGetErrorString(moka_s_), #call, \
                             __FILE__, __LINE__);                               \
  } while (0)

#endif
