/* eltwise.cu — the pieces of Caffe's Eltwise layer (and Split's gradient
 * sum), one pass each, in the CPU reference's order and rounding
 * (src/layers/eltwise.c; __fmul_rn/__fadd_rn: no FMA), so bit-identical:
 *   sum:    y = (first ? 0 : y) + coeff * x
 *   mul:    y = a * b;   div: y = a / b;   scal: y = coeff == 1 ? x : coeff * x
 *   max2:   y = a > b ? a : b, arg = a > b ? 0 : 1      (a tie goes to bottom 1)
 *   maxacc: where x > y: y = x, arg = k                 (a later tie keeps the earlier)
 *   maxbwd: dx = arg == k ? dy : 0
 */
#include "cuda_internal.h"

__global__ void eltwise_sum_kernel(float *y, const float *x, float coeff, bool first, size_t n) {
  MOKA_GRID_LOOP(i, n) y[i] = __fadd_rn(first ? 0.0f : y[i], __fmul_rn(coeff, x[i]));
}
__global__ void mul_kernel(const float *a, const float *b, float *y, size_t n) {
  MOKA_GRID_LOOP(i, n) y[i] = __fmul_rn(a[i], b[i]);
}
__global__ void div_kernel(const float *a, const float *b, float *y, size_t n) {
  MOKA_GRID_LOOP(i, n) y[i] = __fdiv_rn(a[i], b[i]);
}
__global__ void scal_kernel(const float *x, float coeff, float *y, size_t n) {
  MOKA_GRID_LOOP(i, n) y[i] = coeff == 1.0f ? x[i] : __fmul_rn(coeff, x[i]);
}
__global__ void max2_kernel(const float *a, const float *b, float *y, int *arg, size_t n) {
  MOKA_GRID_LOOP(i, n) {
    if (a[i] > b[i]) {
      y[i] = a[i];
      arg[i] = 0;
    } else {
      y[i] = b[i];
      arg[i] = 1;
    }
  }
}
__global__ void maxacc_kernel(const float *x, float *y, int *arg, int k, size_t n) {
  MOKA_GRID_LOOP(i, n) {
    if (x[i] > y[i]) {
      y[i] = x[i];
      arg[i] = k;
    }
  }
}
__global__ void maxbwd_kernel(const float *dy, const int *arg, int k, float *dx, size_t n) {
  MOKA_GRID_LOOP(i, n) dx[i] = arg[i] == k ? dy[i] : 0.0f;
}

/* Split (moka_cuda.h): one read of x for both copies; one pass for the gradient sum
 * (0 + dy0 is dy0 exactly, and 1 * dy1 is dy1: the reference's copy-then-sum). */
__global__ void split_copy2_kernel(const float *x, float *y0, float *y1, size_t n) {
  MOKA_GRID_LOOP(i, n) {
    const float v = x[i];
    if (y0) y0[i] = v;
    if (y1) y1[i] = v;
  }
}
__global__ void split_copy2_vec_kernel(const float4 *x, float4 *y0, float4 *y1, size_t n4) {
  MOKA_GRID_LOOP(i, n4) {
    const float4 v = x[i];
    if (y0) y0[i] = v;
    if (y1) y1[i] = v;
  }
}
__global__ void split_sum2_kernel(const float *a, const float *b, float *y, size_t n) {
  MOKA_GRID_LOOP(i, n) y[i] = __fadd_rn(a[i], b[i]);
}
__global__ void split_sum2_vec_kernel(const float4 *a, const float4 *b, float4 *y, size_t n4) {
  MOKA_GRID_LOOP(i, n4) {
    const float4 u = a[i], v = b[i];
    y[i] = make_float4(__fadd_rn(u.x, v.x), __fadd_rn(u.y, v.y), __fadd_rn(u.z, v.z),
                       __fadd_rn(u.w, v.w));
  }
}

int moka_cuda_split_copy2(cudaStream_t s, const float *x, float *y0, float *y1, size_t n) {
  if (!n || (!y0 && !y1)) return 0;
  if (n % 4 == 0 && moka_aligned16(x) && moka_aligned16(y0) && moka_aligned16(y1)) {
    split_copy2_vec_kernel<<<moka_blocks(n / 4), MOKA_THREADS, 0, s>>>(
        (const float4 *)x, (float4 *)y0, (float4 *)y1, n / 4);
    return moka_cuda_launched(s, "split_copy2_vec_kernel", __FILE__, __LINE__);
  }
  split_copy2_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(x, y0, y1, n);
  return moka_cuda_launched(s, "split_copy2_kernel", __FILE__, __LINE__);
}

int moka_cuda_split_sum2(cudaStream_t s, const float *dy0, const float *dy1, float *dx, size_t n) {
  if (!n) return 0;
  if (n % 4 == 0 && moka_aligned16(dy0) && moka_aligned16(dy1) && moka_aligned16(dx)) {
    split_sum2_vec_kernel<<<moka_blocks(n / 4), MOKA_THREADS, 0, s>>>(
        (const float4 *)dy0, (const float4 *)dy1, (float4 *)dx, n / 4);
    return moka_cuda_launched(s, "split_sum2_vec_kernel", __FILE__, __LINE__);
  }
  split_sum2_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(dy0, dy1, dx, n);
  return moka_cuda_launched(s, "split_sum2_kernel", __FILE__, __LINE__);
}

#define LAUNCH(kernel, n, ...)                                               \
  do {                                                                       \
    if (!(n)) return 0;                                                      \
    kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(__VA_ARGS__);             \
    return moka_cuda_launched(s, #kernel, __FILE__, __LINE__);               \
  } while (0)

int moka_cuda_eltwise_sum(cudaStream_t s, float *y, const float *x, float coeff, bool first,
                          size_t n) {
  LAUNCH(eltwise_sum_kernel, n, y, x, coeff, first, n);
}
int moka_cuda_mul(cudaStream_t s, const float *a, const float *b, float *y, size_t n) {
  LAUNCH(mul_kernel, n, a, b, y, n);
}
int moka_cuda_div(cudaStream_t s, const float *a, const float *b, float *y, size_t n) {
  LAUNCH(div_kernel, n, a, b, y, n);
}
int moka_cuda_scal(cudaStream_t s, const float *x, float coeff, float *y, size_t n) {
  LAUNCH(scal_kernel, n, x, coeff, y, n);
}
int moka_cuda_eltwise_max2(cudaStream_t s, const float *a, const float *b, float *y, int *arg,
                           size_t n) {
  LAUNCH(max2_kernel, n, a, b, y, arg, n);
}
int moka_cuda_eltwise_maxacc(cudaStream_t s, const float *x, float *y, int *arg, int k, size_t n) {
  LAUNCH(maxacc_kernel, n, x, y, arg, k, n);
}
int moka_cuda_eltwise_maxbwd(cudaStream_t s, const float *dy, const int *arg, int k, float *dx,
                             size_t n) {
  LAUNCH(maxbwd_kernel, n, dy, arg, k, dx, n);
}
