/* moka_math.h — the shared dense math of the CPU layers: GEMM and im2col/col2im.
 *
 * All matrices are row-major (C order), as in Caffe's caffe_cpu_gemm:
 *   C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C (M,N)
 * where op(A) is A, stored (M,K), or A^T with A stored (K,M); likewise B.
 * With beta == 0, C is only written, never read (BLAS semantics).
 *
 * moka_gemm runs OpenBLAS's cblas_sgemm (what Caffe itself calls).
 * moka_gemm_naive is a plain triple loop with a double accumulator: the test
 * oracle for moka_gemm and everything built on it.
 *
 * im2col/col2im are Caffe's 2-D versions with pad, stride and dilation.
 * The column buffer is (C*KH*KW, OH*OW): row (c*KH + kh)*KW + kw holds, for
 * each output pixel (oh, ow), the input pixel
 *   (c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW), or 0 when that lies in the
 * padding. OH = (H + 2*PH - (DH*(KH-1)+1)) / SH + 1, likewise OW.
 */
#ifndef MOKA_MATH_H
#define MOKA_MATH_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

void moka_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
               const float *B, float beta, float *C);
void moka_gemm_naive(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, const float *B, float beta, float *C);

/* Geometry of one 2-D im2col: input (C,H,W), kernel KH x KW. */
typedef struct Im2colGeom {
  int channels, height, width;
  int kernel_h, kernel_w;
  int pad_h, pad_w;
  int stride_h, stride_w;
  int dilation_h, dilation_w;
} Im2colGeom;

/* Output spatial size of a convolution with this geometry (rounds down);
 * may be <= 0 when the kernel does not fit the padded input. */
int im2col_out_h(const Im2colGeom *g);
int im2col_out_w(const Im2colGeom *g);

/* im (C,H,W) -> col (C*KH*KW, OH*OW). */
void moka_im2col(const float *im, const Im2colGeom *g, float *col);
/* col (C*KH*KW, OH*OW) -> im (C,H,W): im is overwritten with the sum of
 * every column entry that maps onto each pixel (padding entries dropped). */
void moka_col2im(const float *col, const Im2colGeom *g, float *im);

#ifdef __cplusplus
}
#endif

#endif
