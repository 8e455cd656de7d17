/* gemm.cu — row-major SGEMM on cuBLAS (fp32, TF32 off: the handle is in
 * CUBLAS_DEFAULT_MATH, see cuda_common.cu), the GPU twin of moka_gemm.
 *
 * cuBLAS is column-major. A row-major C (M,N) is, read column-major, C^T
 * (N,M); so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T, i.e.
 * cublasSgemm(opB, opA, N, M, K, B, ldb, A, lda, C, N) with the leading
 * dimensions of the row-major storage: lda = trans_a ? M : K,
 * ldb = trans_b ? K : N (as Caffe's caffe_gpu_gemm).
 */
#include <cublas_v2.h>

#include "cuda_internal.h"

static int check_dims(int M, int N, int K) {
  if (M < 0 || N < 0 || K < 0)
    return moka_errorf("internal error: moka_cuda_gemm with negative dimensions %d x %d x %d", M,
                       N, K);
  return 0;
}

int moka_cuda_gemm(MokaCuda *c, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                   const float *A, const float *B, float beta, float *C) {
  if (check_dims(M, N, K)) return -1;
  if (M == 0 || N == 0) return 0;
  const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
  MOKA_CUBLAS_CHECK(cublasSgemm(c->cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                ldb > 0 ? ldb : 1, A, lda > 0 ? lda : 1, &beta, C, N));
  return moka_cuda_launched(c->stream, "cublasSgemm", __FILE__, __LINE__);
}

int moka_cuda_gemm_strided(MokaCuda *c, bool trans_a, bool trans_b, int M, int N, int K,
                           float alpha, const float *A, long long stride_a, const float *B,
                           long long stride_b, float beta, float *C, long long stride_c,
                           int batch) {
  if (check_dims(M, N, K)) return -1;
  if (M == 0 || N == 0 || batch <= 0) return 0;
  const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
  MOKA_CUBLAS_CHECK(cublasSgemmStridedBatched(
      c->cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
      K, &alpha, B, ldb > 0 ? ldb : 1, stride_b, A, lda > 0 ? lda : 1, stride_a, &beta, C, N,
      stride_c, batch));
  return moka_cuda_launched(c->stream, "cublasSgemmStridedBatched", __FILE__, __LINE__);
}

int moka_cuda_gemm_strided_ld(MokaCuda *c, bool trans_a, bool trans_b, int M, int N, int K,
                              float alpha, const float *A, int lda, long long stride_a,
                              const float *B, int ldb, long long stride_b, float beta, float *C,
                              int ldc, long long stride_c, int batch) {
  if (check_dims(M, N, K)) return -1;
  if (M == 0 || N == 0 || batch <= 0) return 0;
  MOKA_CUBLAS_CHECK(cublasSgemmStridedBatched(
      c->cublas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
      K, &alpha, B, ldb > 0 ? ldb : 1, stride_b, A, lda > 0 ? lda : 1, stride_a, &beta, C,
      ldc > 0 ? ldc : 1, stride_c, batch));
  return moka_cuda_launched(c->stream, "cublasSgemmStridedBatched", __FILE__, __LINE__);
}
