/* conv_cudnn.cu — the cuDNN convolution engine (Caffe's `engine: CUDNN`, or
 * MOKA_CONV_ENGINE=cudnn for every layer): the measured alternative and a
 * second cross-check of moka's own kernels (conv_gemm.cu).
 *
 * fp32 tensors and compute, NCHW. Math type CUDNN_FMA_MATH: cuDNN's
 * CUDNN_DEFAULT_MATH *permits* TF32 tensor cores on Ampere and later, which
 * would break the comparison with Caffe; FMA_MATH restricts cuDNN to kernels
 * that use FMA instructions only. The algorithms are the first ones of the
 * cudnnGet*_v7 heuristics that succeed in FMA math within a 1 GiB workspace
 * (no timing search: fast set-up, reproducible choice). The plan
 * (descriptors + algorithms) is made for one geometry and remade when the
 * input shape changes. Bias add and bias gradient use moka's own kernels.
 */
#include <cudnn.h>
#include <string.h>

#include "cuda_internal.h"

#define MOKA_CUDNN_WS_LIMIT ((size_t)1 << 30)

struct MokaCudnnConv {
  MokaConvGeom g;
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  size_t ws_fwd, ws_bwd_data, ws_bwd_filter;
};

void moka_cudnn_conv_free(MokaCudnnConv *p) {
  if (!p) return;
  if (p->x) cudnnDestroyTensorDescriptor(p->x);
  if (p->y) cudnnDestroyTensorDescriptor(p->y);
  if (p->w) cudnnDestroyFilterDescriptor(p->w);
  if (p->conv) cudnnDestroyConvolutionDescriptor(p->conv);
  free(p);
}

/* Accept an algorithm the heuristics rate as working in FMA math. */
static bool acceptable(cudnnStatus_t st, cudnnMathType_t m, size_t mem) {
  return st == CUDNN_STATUS_SUCCESS && (m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH) &&
         mem <= MOKA_CUDNN_WS_LIMIT;
}

static int make_plan(MokaCuda *c, const MokaConvGeom *g, MokaCudnnConv *p) {
  cudnnHandle_t h = c->cudnn;
  p->g = *g;
  MOKA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
  MOKA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
  MOKA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  MOKA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
  MOKA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->num,
                                              g->channels, g->height, g->width));
  MOKA_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                              g->num_output, g->channels / g->group, g->kernel_h,
                                              g->kernel_w));
  MOKA_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, g->pad_h, g->pad_w, g->stride_h,
                                                   g->stride_w, g->dilation_h, g->dilation_w,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  MOKA_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->conv, g->group));
  MOKA_CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, CUDNN_FMA_MATH));
  int n, oc, oh, ow;
  MOKA_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &n, &oc, &oh, &ow));
  if (n != g->num || oc != g->num_output || oh != g->out_h || ow != g->out_w)
    return moka_errorf("cuDNN computes a %dx%dx%dx%d output, the layer %dx%dx%dx%d", n, oc, oh,
                       ow, g->num, g->num_output, g->out_h, g->out_w);
  MOKA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, oc,
                                              oh, ow));

  cudnnConvolutionFwdAlgoPerf_t fp[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int got = 0, k;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
      h, p->x, p->w, p->conv, p->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, fp));
  for (k = 0; k < got && !acceptable(fp[k].status, fp[k].mathType, fp[k].memory); k++) {
  }
  if (k == got) return moka_errorf("cuDNN offers no fp32 (FMA) forward algorithm for this shape");
  p->fwd = fp[k].algo;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->w, p->conv, p->y, p->fwd,
                                                           &p->ws_fwd));

  cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
      h, p->w, p->y, p->conv, p->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, dp));
  for (k = 0; k < got && !acceptable(dp[k].status, dp[k].mathType, dp[k].memory); k++) {
  }
  if (k == got)
    return moka_errorf("cuDNN offers no fp32 (FMA) backward-data algorithm for this shape");
  p->bwd_data = dp[k].algo;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->w, p->y, p->conv, p->x,
                                                                p->bwd_data, &p->ws_bwd_data));

  cudnnConvolutionBwdFilterAlgoPerf_t wp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      h, p->x, p->y, p->conv, p->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, wp));
  for (k = 0; k < got && !acceptable(wp[k].status, wp[k].mathType, wp[k].memory); k++) {
  }
  if (k == got)
    return moka_errorf("cuDNN offers no fp32 (FMA) backward-filter algorithm for this shape");
  p->bwd_filter = wp[k].algo;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
      h, p->x, p->y, p->conv, p->w, p->bwd_filter, &p->ws_bwd_filter));
  /* The heuristics may report DEFAULT math; execution stays in FMA math. */
  MOKA_CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, CUDNN_FMA_MATH));
  return 0;
}

static int get_plan(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g) {
  if (*plan && memcmp(&(*plan)->g, g, sizeof *g) == 0) return 0;
  moka_cudnn_conv_free(*plan);
  *plan = NULL;
  if (moka_cuda_cudnn(c)) return -1;
  MokaCudnnConv *p = (MokaCudnnConv *)moka_calloc(1, sizeof *p);
  if (!p) return -1;
  if (make_plan(c, g, p)) {
    moka_cudnn_conv_free(p);
    return moka_error_prefix("cuDNN convolution %dx%dx%dx%d, %d outputs, kernel %dx%d, stride "
                             "%dx%d, pad %dx%d, group %d",
                             g->num, g->channels, g->height, g->width, g->num_output,
                             g->kernel_h, g->kernel_w, g->stride_h, g->stride_w, g->pad_h,
                             g->pad_w, g->group);
  }
  *plan = p;
  return 0;
}

int moka_cudnn_conv_forward(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                            const float *x, const float *w, const float *bias, float *y) {
  if (g->num == 0) return 0;
  if (get_plan(c, plan, g)) return -1;
  MokaCudnnConv *p = *plan;
  void *ws = NULL;
  if (p->ws_fwd && moka_cuda_workspace(c, p->ws_fwd, "cuDNN forward workspace", &ws)) return -1;
  const float one = 1.0f, zero = 0.0f;
  MOKA_CUDNN_CHECK(cudnnConvolutionForward(c->cudnn, &one, p->x, x, p->w, w, p->conv, p->fwd, ws,
                                           p->ws_fwd, &zero, p->y, y));
  if (moka_cuda_launched(c->stream, "cudnnConvolutionForward", __FILE__, __LINE__)) return -1;
  if (bias)
    return moka_cuda_bias_add(c->stream, y, bias, (size_t)g->num, (size_t)g->num_output,
                              (size_t)g->out_h * g->out_w);
  return 0;
}

int moka_cudnn_conv_backward(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                             const float *x, const float *w, const float *dy, float *dx,
                             float *dw, float *db) {
  if (g->num == 0) return 0;
  if (get_plan(c, plan, g)) return -1;
  MokaCudnnConv *p = *plan;
  const float one = 1.0f, zero = 0.0f;
  if (db && moka_cuda_channel_sum(c->stream, dy, NULL, db, (size_t)g->num, (size_t)g->num_output,
                                  (size_t)g->out_h * g->out_w, true))
    return -1;
  void *ws = NULL;
  if (p->ws_bwd_filter &&
      moka_cuda_workspace(c, p->ws_bwd_filter, "cuDNN backward-filter workspace", &ws))
    return -1;
  /* beta = 1: the weight gradient accumulates (iter_size), as in the reference */
  MOKA_CUDNN_CHECK(cudnnConvolutionBackwardFilter(c->cudnn, &one, p->x, x, p->y, dy, p->conv,
                                                  p->bwd_filter, ws, p->ws_bwd_filter, &one, p->w,
                                                  dw));
  if (moka_cuda_launched(c->stream, "cudnnConvolutionBackwardFilter", __FILE__, __LINE__))
    return -1;
  if (!dx) return 0;
  ws = NULL;
  if (p->ws_bwd_data &&
      moka_cuda_workspace(c, p->ws_bwd_data, "cuDNN backward-data workspace", &ws))
    return -1;
  MOKA_CUDNN_CHECK(cudnnConvolutionBackwardData(c->cudnn, &one, p->w, w, p->y, dy, p->conv,
                                                p->bwd_data, ws, p->ws_bwd_data, &zero, p->x, dx));
  return moka_cuda_launched(c->stream, "cudnnConvolutionBackwardData", __FILE__, __LINE__);
}
