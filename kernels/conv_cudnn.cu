/* conv_cudnn.cu — the cuDNN convolution engine (Caffe's `engine: CUDNN`, or
 * MOKA_CONV_ENGINE=cudnn for every layer): the measured alternative and a
 * second cross-check of moka's own kernels (conv_gemm.cu).
 *
 * fp32 tensors and compute, NCHW. Math type CUDNN_FMA_MATH: cuDNN's
 * CUDNN_DEFAULT_MATH *permits* TF32 tensor cores on Ampere and later, which
 * would break the comparison with Caffe; FMA_MATH restricts cuDNN to kernels
 * that use FMA instructions only. The algorithms are chosen by timing, as
 * with PyTorch's cudnn.benchmark: cudnnFind*Algorithm runs every candidate
 * once per layer shape (when the plan is made) and the fastest that succeeds
 * in FMA math within a 1 GiB workspace is kept; where a search fails or finds
 * nothing acceptable, that direction takes the first acceptable of the
 * cudnnGet*_v7 heuristics. Timings vary, so the choice - and with it the last
 * bits of the cuDNN engine's results - can differ from run to run.
 * MOKA_CUDNN_FIND=0 uses the heuristics only: no search at set-up and the
 * same choice on every run. The plan (descriptors + algorithms) is made for
 * one geometry and remade when the input shape or precision changes. Bias add
 * and bias gradient use moka's own kernels.
 *
 * Precision (moka_cudnn_conv_*_prec, --precision on CUDA): BF16 converts x,
 * w and dy to bf16 in the shared workspace (after cuDNN's own workspace),
 * runs CUDNN_DATA_BFLOAT16 tensors with CUDNN_DATA_FLOAT compute in
 * CUDNN_TENSOR_OP_MATH, and converts the bf16 outputs back to fp32 (cuDNN's
 * legacy API gives y, dx and dW in the tensors' type: the weight gradient
 * comes in bf16 and is added to the fp32 dw, as with PyTorch's AMP). TF32
 * keeps fp32 tensors and runs CUDNN_DEFAULT_MATH, which permits TF32. The
 * algorithms for BF16/TF32 are the fastest (or, with MOKA_CUDNN_FIND=0, the
 * heuristics' first) that succeed in any math type. The conversions are part
 * of what the bf16 engine costs here.
 */
#include <cuda_bf16.h>
#include <cudnn.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

#define MOKA_CUDNN_WS_LIMIT ((size_t)1 << 30)

struct MokaCudnnConv {
  MokaConvGeom g;
  MokaConvPrec prec;
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

/* Accept an algorithm the heuristics (or the search) rate as working: in FMA math for fp32, in
 * any math for bf16 / tf32. */
static bool acceptable(cudnnStatus_t st, cudnnMathType_t m, size_t mem, MokaConvPrec prec) {
  return st == CUDNN_STATUS_SUCCESS &&
         (prec != MOKA_CONV_FP32 || m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH) &&
         mem <= MOKA_CUDNN_WS_LIMIT;
}

static cudnnMathType_t prec_math(MokaConvPrec prec) {
  return prec == MOKA_CONV_BF16   ? CUDNN_TENSOR_OP_MATH
         : prec == MOKA_CONV_TF32 ? CUDNN_DEFAULT_MATH
                                  : CUDNN_FMA_MATH;
}

/* MOKA_CUDNN_FIND=0: pick algorithms by the heuristics only (reproducible, no search); anything
 * else, or unset, times them. A process-wide knob, read once. */
static bool use_find(void) {
  static int cached = -1;
  if (cached < 0) {
    const char *e = getenv("MOKA_CUDNN_FIND");
    cached = !(e && strcmp(e, "0") == 0);
  }
  return cached == 1;
}

/* After a search: the non-Ex Find calls cudaMalloc their own buffers, and an allocation that
 * fails inside them (reported in the results, or as the call's status) can stay the thread's
 * last CUDA error, which the next moka_cuda_launched would blame on an unrelated kernel. The
 * stream was synchronised and checked before the search, so no error of ours is lost here; a
 * sticky (context) error is not cleared by this and still shows on the next call. */
static void clear_search_error(void) { (void)cudaGetLastError(); }

static int make_plan(MokaCuda *c, const MokaConvGeom *g, MokaConvPrec prec, MokaCudnnConv *p) {
  cudnnHandle_t h = c->cudnn;
  const cudnnDataType_t dt = prec == MOKA_CONV_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
  p->g = *g;
  p->prec = prec;
  MOKA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
  MOKA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
  MOKA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  MOKA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
  MOKA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, dt, g->num,
                                              g->channels, g->height, g->width));
  MOKA_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, dt, CUDNN_TENSOR_NCHW,
                                              g->num_output, g->channels / g->group, g->kernel_h,
                                              g->kernel_w));
  MOKA_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, g->pad_h, g->pad_w, g->stride_h,
                                                   g->stride_w, g->dilation_h, g->dilation_w,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  MOKA_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->conv, g->group));
  MOKA_CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, prec_math(prec)));
  int n, oc, oh, ow;
  MOKA_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &n, &oc, &oh, &ow));
  if (n != g->num || oc != g->num_output || oh != g->out_h || ow != g->out_w)
    return moka_errorf("cuDNN computes a %dx%dx%dx%d output, the layer %dx%dx%dx%d", n, oc, oh,
                       ow, g->num, g->num_output, g->out_h, g->out_w);
  MOKA_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, dt, n, oc,
                                              oh, ow));

  /* The search times kernels on the handle's stream (c->stream): wait for the work already
   * queued there, so that it is neither timed with the candidates nor racing them. */
  const bool find = use_find();
  if (find && moka_cuda_sync(c)) return -1;

  /* Each direction: the fastest acceptable of the search (sorted by time, failures last), else
   * the first acceptable of the heuristics (`got` = 0 when the search failed). */
  cudnnConvolutionFwdAlgoPerf_t fp[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int got = 0, k = 0;
  if (find) {
    if (cudnnFindConvolutionForwardAlgorithm(h, p->x, p->w, p->conv, p->y,
                                             CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                             fp) != CUDNN_STATUS_SUCCESS)
      got = 0;
    clear_search_error();
    for (k = 0; k < got && !acceptable(fp[k].status, fp[k].mathType, fp[k].memory, prec); k++) {
    }
  }
  if (k == got) {
    MOKA_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
        h, p->x, p->w, p->conv, p->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, fp));
    for (k = 0; k < got && !acceptable(fp[k].status, fp[k].mathType, fp[k].memory, prec); k++) {
    }
  }
  if (k == got)
    return moka_errorf("cuDNN offers no %s forward algorithm for this shape",
                       moka_conv_prec_name(prec));
  p->fwd = fp[k].algo;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->w, p->conv, p->y, p->fwd,
                                                           &p->ws_fwd));

  cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  got = k = 0;
  if (find) {
    if (cudnnFindConvolutionBackwardDataAlgorithm(h, p->w, p->y, p->conv, p->x,
                                                  CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got,
                                                  dp) != CUDNN_STATUS_SUCCESS)
      got = 0;
    clear_search_error();
    for (k = 0; k < got && !acceptable(dp[k].status, dp[k].mathType, dp[k].memory, prec); k++) {
    }
  }
  if (k == got) {
    MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        h, p->w, p->y, p->conv, p->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, dp));
    for (k = 0; k < got && !acceptable(dp[k].status, dp[k].mathType, dp[k].memory, prec); k++) {
    }
  }
  if (k == got)
    return moka_errorf("cuDNN offers no %s backward-data algorithm for this shape",
                       moka_conv_prec_name(prec));
  p->bwd_data = dp[k].algo;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->w, p->y, p->conv, p->x,
                                                                p->bwd_data, &p->ws_bwd_data));

  cudnnConvolutionBwdFilterAlgoPerf_t wp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  got = k = 0;
  if (find) {
    if (cudnnFindConvolutionBackwardFilterAlgorithm(h, p->x, p->y, p->conv, p->w,
                                                    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                    &got, wp) != CUDNN_STATUS_SUCCESS)
      got = 0;
    clear_search_error();
    for (k = 0; k < got && !acceptable(wp[k].status, wp[k].mathType, wp[k].memory, prec); k++) {
    }
  }
  if (k == got) {
    MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        h, p->x, p->y, p->conv, p->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, wp));
    for (k = 0; k < got && !acceptable(wp[k].status, wp[k].mathType, wp[k].memory, prec); k++) {
    }
  }
  if (k == got)
    return moka_errorf("cuDNN offers no %s backward-filter algorithm for this shape",
                       moka_conv_prec_name(prec));
  p->bwd_filter = wp[k].algo;
  MOKA_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
      h, p->x, p->y, p->conv, p->w, p->bwd_filter, &p->ws_bwd_filter));
  /* The heuristics and the search may report DEFAULT math; fp32 execution stays in FMA math. */
  MOKA_CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, prec_math(prec)));
  return 0;
}

static int get_plan(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                    MokaConvPrec prec) {
  if (*plan && (*plan)->prec == prec && memcmp(&(*plan)->g, g, sizeof *g) == 0) return 0;
  moka_cudnn_conv_free(*plan);
  *plan = NULL;
  if (moka_cuda_cudnn(c)) return -1;
  MokaCudnnConv *p = (MokaCudnnConv *)moka_calloc(1, sizeof *p);
  if (!p) return -1;
  if (make_plan(c, g, prec, p)) {
    moka_cudnn_conv_free(p);
    return moka_error_prefix("cuDNN %s convolution %dx%dx%dx%d, %d outputs, kernel %dx%d, "
                             "stride %dx%d, pad %dx%d, group %d",
                             moka_conv_prec_name(prec), g->num, g->channels, g->height,
                             g->width, g->num_output, g->kernel_h, g->kernel_w, g->stride_h,
                             g->stride_w, g->pad_h, g->pad_w, g->group);
  }
  *plan = p;
  return 0;
}

/* ---- bf16 staging ---------------------------------------------------------------------------- */

__global__ void cudnn_to_bf16_kernel(const float *src, __nv_bfloat16 *dst, size_t n) {
  MOKA_GRID_LOOP(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

/* dst = (float) src, or dst += (float) src. */
__global__ void cudnn_from_bf16_kernel(const __nv_bfloat16 *src, float *dst, size_t n,
                                       bool accumulate) {
  MOKA_GRID_LOOP(i, n) {
    const float v = __bfloat162float(src[i]);
    dst[i] = accumulate ? dst[i] + v : v;
  }
}

static int to_bf16(MokaCuda *c, const float *src, void *dst, size_t n) {
  cudnn_to_bf16_kernel<<<moka_blocks(n), MOKA_THREADS, 0, c->stream>>>(
      src, (__nv_bfloat16 *)dst, n);
  return moka_cuda_launched(c->stream, "cudnn_to_bf16_kernel", __FILE__, __LINE__);
}

static int from_bf16(MokaCuda *c, const void *src, float *dst, size_t n, bool accumulate) {
  cudnn_from_bf16_kernel<<<moka_blocks(n), MOKA_THREADS, 0, c->stream>>>(
      (const __nv_bfloat16 *)src, dst, n, accumulate);
  return moka_cuda_launched(c->stream, "cudnn_from_bf16_kernel", __FILE__, __LINE__);
}

static size_t al256(size_t b) { return (b + 255) & ~(size_t)255; }

/* The shared workspace carved as: cuDNN's (ws_bytes) | x (N,C,H,W) | w
 * (OC,C/G,KH,KW) | dw like w | y or dy (N,OC,OH,OW), the last four in bf16
 * (only for BF16; the carve is stream-ordered, one convolution at a time). */
typedef struct Carve {
  void *cudnn_ws, *x, *w, *dw, *y;
  size_t nx, nw, ny;
} Carve;

static int carve(MokaCuda *c, const MokaCudnnConv *p, size_t ws_bytes, bool with_dw, Carve *cv) {
  const MokaConvGeom *g = &p->g;
  cv->nx = (size_t)g->num * g->channels * g->height * g->width;
  cv->nw = (size_t)g->num_output * (g->channels / g->group) * g->kernel_h * g->kernel_w;
  cv->ny = (size_t)g->num * g->num_output * g->out_h * g->out_w;
  const bool bf = p->prec == MOKA_CONV_BF16;
  const size_t e = sizeof(__nv_bfloat16);
  const size_t b0 = al256(ws_bytes), bx = bf ? al256(cv->nx * e) : 0;
  const size_t bw = bf ? al256(cv->nw * e) : 0;
  const size_t bdw = bf && with_dw ? bw : 0, by = bf ? al256(cv->ny * e) : 0;
  const size_t total = b0 + bx + bw + bdw + by;
  void *ws = NULL;
  if (total && moka_cuda_workspace(c, total, bf ? "cuDNN bf16 workspace" : "cuDNN workspace", &ws))
    return -1;
  char *b = (char *)ws;
  cv->cudnn_ws = ws_bytes ? b : NULL;
  cv->x = b + b0;
  cv->w = b + b0 + bx;
  cv->dw = b + b0 + bx + bw;
  cv->y = b + b0 + bx + bw + bdw;
  return 0;
}

int moka_cudnn_conv_forward_prec(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                                 MokaConvPrec prec, const float *x, const float *w,
                                 const float *bias, float *y) {
  if (g->num == 0) return 0;
  if (get_plan(c, plan, g, prec)) return -1;
  MokaCudnnConv *p = *plan;
  Carve cv;
  if (carve(c, p, p->ws_fwd, false, &cv)) return -1;
  const bool bf = prec == MOKA_CONV_BF16;
  if (bf && (to_bf16(c, x, cv.x, cv.nx) || to_bf16(c, w, cv.w, cv.nw))) return -1;
  const float one = 1.0f, zero = 0.0f;
  MOKA_CUDNN_CHECK(cudnnConvolutionForward(c->cudnn, &one, p->x, bf ? cv.x : x, p->w,
                                           bf ? cv.w : w, p->conv, p->fwd, cv.cudnn_ws,
                                           p->ws_fwd, &zero, p->y, bf ? cv.y : y));
  if (moka_cuda_launched(c->stream, "cudnnConvolutionForward", __FILE__, __LINE__)) return -1;
  if (bf && from_bf16(c, cv.y, y, cv.ny, false)) return -1;
  if (bias)
    return moka_cuda_bias_add(c->stream, y, bias, (size_t)g->num, (size_t)g->num_output,
                              (size_t)g->out_h * g->out_w);
  return 0;
}

int moka_cudnn_conv_backward_prec(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                                  MokaConvPrec prec, const float *x, const float *w,
                                  const float *dy, float *dx, float *dw, float *db) {
  if (g->num == 0) return 0;
  if (get_plan(c, plan, g, prec)) return -1;
  MokaCudnnConv *p = *plan;
  const float one = 1.0f, zero = 0.0f;
  const bool bf = prec == MOKA_CONV_BF16;
  if (db && moka_cuda_channel_sum(c->stream, dy, NULL, db, (size_t)g->num, (size_t)g->num_output,
                                  (size_t)g->out_h * g->out_w, true))
    return -1;
  const size_t ws_bytes = p->ws_bwd_filter > p->ws_bwd_data ? p->ws_bwd_filter : p->ws_bwd_data;
  Carve cv;
  if (carve(c, p, ws_bytes, true, &cv)) return -1;
  if (bf && (to_bf16(c, x, cv.x, cv.nx) || to_bf16(c, w, cv.w, cv.nw) ||
             to_bf16(c, dy, cv.y, cv.ny)))
    return -1;
  /* fp32: beta = 1, the weight gradient accumulates (iter_size), as in the
   * reference; bf16: into a bf16 buffer, then dw += it in fp32 */
  MOKA_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
      c->cudnn, &one, p->x, bf ? cv.x : x, p->y, bf ? cv.y : dy, p->conv, p->bwd_filter,
      cv.cudnn_ws, p->ws_bwd_filter, bf ? &zero : &one, p->w, bf ? cv.dw : dw));
  if (moka_cuda_launched(c->stream, "cudnnConvolutionBackwardFilter", __FILE__, __LINE__))
    return -1;
  if (bf && from_bf16(c, cv.dw, dw, cv.nw, true)) return -1;
  if (!dx) return 0;
  /* bf16: dx goes to the bf16 x buffer (x is no longer needed) */
  MOKA_CUDNN_CHECK(cudnnConvolutionBackwardData(c->cudnn, &one, p->w, bf ? cv.w : w, p->y,
                                                bf ? cv.y : dy, p->conv, p->bwd_data, cv.cudnn_ws,
                                                p->ws_bwd_data, &zero, p->x, bf ? cv.x : dx));
  if (moka_cuda_launched(c->stream, "cudnnConvolutionBackwardData", __FILE__, __LINE__))
    return -1;
  return bf ? from_bf16(c, cv.x, dx, cv.nx, false) : 0;
}

int moka_cudnn_conv_forward(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                            const float *x, const float *w, const float *bias, float *y) {
  return moka_cudnn_conv_forward_prec(c, plan, g, MOKA_CONV_FP32, x, w, bias, y);
}

int moka_cudnn_conv_backward(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                             const float *x, const float *w, const float *dy, float *dx,
                             float *dw, float *db) {
  return moka_cudnn_conv_backward_prec(c, plan, g, MOKA_CONV_FP32, x, w, dy, dx, dw, db);
}
