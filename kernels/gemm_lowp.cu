/* gemm_lowp.cu — row-major GEMM in bf16 or TF32 on cuBLAS (the
 * InnerProduct layer's --precision=bf16|tf32 on CUDA); fp32 goes to
 * moka_cuda_gemm (gemm.cu, TF32 off).
 *
 *   BF16: A and B are rounded to bf16 (nearest even) into the shared
 *         workspace, then cublasGemmEx with CUDA_R_16BF inputs, an fp32 C
 *         and CUBLAS_COMPUTE_32F (fp32 accumulation on tensor cores).
 *   TF32: cublasGemmEx on the fp32 inputs with CUBLAS_COMPUTE_32F_FAST_TF32.
 * The row-major -> column-major mapping is gemm.cu's: C^T = op(B)^T op(A)^T.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include "cuda_internal.h"

/* dst[i] = bf16(src[i]). */
__global__ void f32_to_bf16_kernel(const float *src, __nv_bfloat16 *dst, size_t n) {
  MOKA_GRID_LOOP(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

static int to_bf16(cudaStream_t s, const float *src, __nv_bfloat16 *dst, size_t n) {
  if (n == 0) return 0;
  f32_to_bf16_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(src, dst, n);
  return moka_cuda_launched(s, "f32_to_bf16_kernel", __FILE__, __LINE__);
}

/* dst[i] = (float) src[i]. */
__global__ void bf16_to_f32_kernel(const __nv_bfloat16 *src, float *dst, size_t n) {
  MOKA_GRID_LOOP(i, n) dst[i] = __bfloat162float(src[i]);
}

extern "C" int moka_cuda_to_bf16(cudaStream_t s, const float *src, void *dst, size_t n) {
  return to_bf16(s, src, (__nv_bfloat16 *)dst, n);
}

extern "C" int moka_cuda_from_bf16(cudaStream_t s, const void *src, float *dst, size_t n) {
  if (n == 0) return 0;
  bf16_to_f32_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>((const __nv_bfloat16 *)src, dst, n);
  return moka_cuda_launched(s, "bf16_to_f32_kernel", __FILE__, __LINE__);
}

extern "C" int moka_cuda_gemm_prec(MokaCuda *c, MokaConvPrec prec, bool trans_a, bool trans_b,
                                   int M, int N, int K, float alpha, const float *A,
                                   const float *B, float beta, float *C) {
  if (prec == MOKA_CONV_FP32)
    return moka_cuda_gemm(c, trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
  if (M < 0 || N < 0 || K < 0)
    return moka_errorf("internal error: moka_cuda_gemm_prec with negative dimensions %d x %d x %d",
                       M, N, K);
  if (M == 0 || N == 0) return 0;
  const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
  const cublasOperation_t opa = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (prec == MOKA_CONV_TF32) {
    MOKA_CUBLAS_CHECK(cublasGemmEx(c->cublas, opb, opa, N, M, K, &alpha, B, CUDA_R_32F,
                                   ldb > 0 ? ldb : 1, A, CUDA_R_32F, lda > 0 ? lda : 1, &beta, C,
                                   CUDA_R_32F, N, CUBLAS_COMPUTE_32F_FAST_TF32,
                                   CUBLAS_GEMM_DEFAULT));
    return moka_cuda_launched(c->stream, "cublasGemmEx (tf32)", __FILE__, __LINE__);
  }
  const size_t na = (size_t)M * K, nb = (size_t)K * N;
  const size_t a_bytes = (na * sizeof(__nv_bfloat16) + 255) & ~(size_t)255;
  void *ws;
  if (moka_cuda_workspace(c, a_bytes + nb * sizeof(__nv_bfloat16) + 1, "bf16 GEMM inputs", &ws))
    return -1;
  __nv_bfloat16 *Ab = (__nv_bfloat16 *)ws, *Bb = (__nv_bfloat16 *)((char *)ws + a_bytes);
  if (to_bf16(c->stream, A, Ab, na) || to_bf16(c->stream, B, Bb, nb)) return -1;
  MOKA_CUBLAS_CHECK(cublasGemmEx(c->cublas, opb, opa, N, M, K, &alpha, Bb, CUDA_R_16BF,
                                 ldb > 0 ? ldb : 1, Ab, CUDA_R_16BF, lda > 0 ? lda : 1, &beta, C,
                                 CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return moka_cuda_launched(c->stream, "cublasGemmEx (bf16)", __FILE__, __LINE__);
}
