/* math.c — GEMM (OpenBLAS and a naive oracle) and 2-D im2col/col2im. See math.h. */
#include "moka_math.h"

#include <cblas.h>
#include <string.h>

void moka_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
               const float *B, float beta, float *C) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) { /* BLAS would do this too; spelled out for the empty case */
    for (long i = 0; i < (long)M * N; i++) C[i] = beta == 0.0f ? 0.0f : beta * C[i];
    return;
  }
  int lda = trans_a ? M : K;
  int ldb = trans_b ? K : N;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
}

void moka_gemm_naive(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, const float *B, float beta, float *C) {
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) {
      double acc = 0.0;
      for (int k = 0; k < K; k++) {
        double a = trans_a ? A[(long)k * M + i] : A[(long)i * K + k]; /* A (K,M) or (M,K) */
        double b = trans_b ? B[(long)j * K + k] : B[(long)k * N + j]; /* B (N,K) or (K,N) */
        acc += a * b;
      }
      float *c = &C[(long)i * N + j];
      *c = beta == 0.0f ? (float)(alpha * acc) : (float)(alpha * acc + (double)beta * *c);
    }
  }
}

int im2col_out_h(const Im2colGeom *g) {
  int ext = g->dilation_h * (g->kernel_h - 1) + 1;
  int span = g->height + 2 * g->pad_h - ext;
  return span < 0 ? 0 : span / g->stride_h + 1;
}

int im2col_out_w(const Im2colGeom *g) {
  int ext = g->dilation_w * (g->kernel_w - 1) + 1;
  int span = g->width + 2 * g->pad_w - ext;
  return span < 0 ? 0 : span / g->stride_w + 1;
}

void moka_im2col(const float *im, const Im2colGeom *g, float *col) {
  const int H = g->height, W = g->width;
  const int OH = im2col_out_h(g), OW = im2col_out_w(g);
  for (int c = 0; c < g->channels; c++) {
    const float *plane = im + (long)c * H * W; /* (H,W) */
    for (int kh = 0; kh < g->kernel_h; kh++) {
      for (int kw = 0; kw < g->kernel_w; kw++) {
        for (int oh = 0; oh < OH; oh++) {
          int ih = oh * g->stride_h - g->pad_h + kh * g->dilation_h;
          float *row = col + (long)oh * OW; /* this output row of the col row */
          if (ih < 0 || ih >= H) {
            memset(row, 0, (size_t)OW * sizeof(float));
            continue;
          }
          for (int ow = 0; ow < OW; ow++) {
            int iw = ow * g->stride_w - g->pad_w + kw * g->dilation_w;
            row[ow] = (iw >= 0 && iw < W) ? plane[(long)ih * W + iw] : 0.0f;
          }
        }
        col += (long)OH * OW;
      }
    }
  }
}

void moka_col2im(const float *col, const Im2colGeom *g, float *im) {
  const int H = g->height, W = g->width;
  const int OH = im2col_out_h(g), OW = im2col_out_w(g);
  memset(im, 0, (size_t)g->channels * H * W * sizeof(float));
  for (int c = 0; c < g->channels; c++) {
    float *plane = im + (long)c * H * W; /* (H,W) */
    for (int kh = 0; kh < g->kernel_h; kh++) {
      for (int kw = 0; kw < g->kernel_w; kw++) {
        for (int oh = 0; oh < OH; oh++) {
          int ih = oh * g->stride_h - g->pad_h + kh * g->dilation_h;
          const float *row = col + (long)oh * OW;
          if (ih < 0 || ih >= H) continue;
          for (int ow = 0; ow < OW; ow++) {
            int iw = ow * g->stride_w - g->pad_w + kw * g->dilation_w;
            if (iw >= 0 && iw < W) plane[(long)ih * W + iw] += row[ow];
          }
        }
        col += (long)OH * OW;
      }
    }
  }
}
