/* convolution.c — Caffe's "Convolution" layer, CPU reference implementation.
 *
 * 2-D only, channel axis 1. Weights (OC, IC/G, KH, KW), bias (OC).
 * Output size rounds down: OH = (H + 2*PH - (DH*(KH-1)+1)) / SH + 1.
 * Like Caffe, forward is im2col + GEMM per image and per group:
 *   top_g (OC/G, OH*OW) = W_g (OC/G, IC/G*KH*KW) x col_g (IC/G*KH*KW, OH*OW)
 * Group g reads input channels [g*IC/G, (g+1)*IC/G) and writes output
 * channels [g*OC/G, (g+1)*OC/G). Several bottoms may share the weights:
 * bottom i -> top i, all bottoms of one shape.
 *
 * This is the reference (the oracle other backends must agree with); the GEMM
 * itself is OpenBLAS, checked in tests against a naive direct convolution.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "conv_nhwc_geom.h"
#include "convolution_priv.h"
#include "cuda_layer.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "moka_math.h"
#include "net_bf16.h"
#include "util.h"

/* ConvPriv (the layer's state) is in convolution_priv.h, shared with the fast path. */

/* One value from Caffe's "repeated field or _h/_w pair" convention.
 * Writes h and w; returns -1 with a message on a bad combination. */
static int read_hw(const char *field, size_t n_rep, const uint32_t *rep, bool has_h, uint32_t h,
                   bool has_w, uint32_t w, int def, int *out_h, int *out_w) {
  if (has_h || has_w) {
    if (n_rep)
      return moka_errorf("convolution_param: give either %s or %s_h/%s_w, not both", field,
                         field, field);
    if (!(has_h && has_w))
      return moka_errorf("convolution_param: %s_h and %s_w must be given together", field, field);
    *out_h = (int)h;
    *out_w = (int)w;
    return 0;
  }
  if (n_rep == 0) {
    *out_h = *out_w = def;
    return 0;
  }
  if (n_rep > 2)
    return moka_errorf("convolution_param: %s has %zu values; a 2-D convolution takes 1 or 2",
                       field, n_rep);
  *out_h = (int)rep[0];
  *out_w = (int)rep[n_rep == 2 ? 1 : 0];
  return 0;
}

static Im2colGeom conv_geom(const ConvPriv *p) {
  Im2colGeom g = {p->channels, p->height, p->width, p->kernel_h, p->kernel_w, p->pad_h,
                  p->pad_w, p->stride_h, p->stride_w, p->dilation_h, p->dilation_w};
  return g;
}

/* Shape checks on the bottoms (shared by setup and reshape). */
static int conv_check_bottoms(Layer *l) {
  char buf[256];
  const Blob *b0 = l->bottom[0];
  const Caffe__ConvolutionParameter *cp = l->param->convolution_param;
  int axis = cp && cp->has_axis ? cp->axis : 1;
  if (axis < -b0->num_axes || axis >= b0->num_axes)
    return moka_errorf("convolution_param.axis %d is out of range for bottom shape %s", axis,
                       blob_shape_string(b0, buf, sizeof buf));
  if (axis < 0) axis += b0->num_axes;
  if (axis != 1)
    return moka_errorf("convolution_param.axis %d is not supported (only the channel axis 1)",
                       cp->axis);
  if (b0->num_axes != 4)
    return moka_errorf("only 2-D convolution is supported: bottom '%s' has shape %s (%d spatial "
                       "axes; N-D convolution needs 4-D (N,C,H,W) input)",
                       b0->name, blob_shape_string(b0, buf, sizeof buf), b0->num_axes - 2);
  for (int i = 1; i < l->n_bottom; i++)
    if (!blob_same_shape(l->bottom[i], b0)) {
      char buf2[256];
      return moka_errorf("all bottoms must have the same shape: bottom 0 '%s' is %s, bottom %d "
                         "'%s' is %s",
                         b0->name, blob_shape_string(b0, buf, sizeof buf), i,
                         l->bottom[i]->name, blob_shape_string(l->bottom[i], buf2, sizeof buf2));
    }
  return 0;
}

static int conv_setup(Layer *l) {
  ConvPriv *p = l->priv;
  const Caffe__ConvolutionParameter *cp = l->param->convolution_param;
  if (!cp || !cp->has_num_output || cp->num_output == 0)
    return moka_errorf("convolution_param.num_output must be given and > 0");
  if (cp->num_output > INT_MAX || cp->group > INT_MAX)
    return moka_errorf("convolution_param.num_output %u / group %u is too large", cp->num_output,
                       cp->group);
  if (l->n_top != l->n_bottom)
    return moka_errorf("needs one top per bottom, got %d bottoms and %d tops", l->n_bottom,
                       l->n_top);
  if (conv_check_bottoms(l)) return -1;
  if (cp->n_dilation > 2)
    return moka_errorf("convolution_param: dilation has %zu values; a 2-D convolution takes 1 "
                       "or 2", cp->n_dilation);
  if (!cp->n_kernel_size && !cp->has_kernel_h && !cp->has_kernel_w)
    return moka_errorf("convolution_param: kernel_size (or kernel_h and kernel_w) is required");
  if (read_hw("kernel_size", cp->n_kernel_size, cp->kernel_size, cp->has_kernel_h, cp->kernel_h,
              cp->has_kernel_w, cp->kernel_w, 0, &p->kernel_h, &p->kernel_w) ||
      read_hw("stride", cp->n_stride, cp->stride, cp->has_stride_h, cp->stride_h,
              cp->has_stride_w, cp->stride_w, 1, &p->stride_h, &p->stride_w) ||
      read_hw("pad", cp->n_pad, cp->pad, cp->has_pad_h, cp->pad_h, cp->has_pad_w, cp->pad_w, 0,
              &p->pad_h, &p->pad_w) ||
      read_hw("dilation", cp->n_dilation, cp->dilation, false, 0, false, 0, 1, &p->dilation_h,
              &p->dilation_w))
    return -1;
  if (p->kernel_h <= 0 || p->kernel_w <= 0)
    return moka_errorf("convolution_param: kernel size %dx%d must be positive", p->kernel_h,
                       p->kernel_w);
  if (p->stride_h <= 0 || p->stride_w <= 0)
    return moka_errorf("convolution_param: stride %dx%d must be positive", p->stride_h,
                       p->stride_w);
  if (p->dilation_h <= 0 || p->dilation_w <= 0)
    return moka_errorf("convolution_param: dilation %dx%d must be positive", p->dilation_h,
                       p->dilation_w);
  if (p->pad_h < 0 || p->pad_w < 0 || p->kernel_h > 65535 || p->kernel_w > 65535 ||
      p->pad_h > 65535 || p->pad_w > 65535 || p->dilation_h > 65535 || p->dilation_w > 65535)
    return moka_errorf("convolution_param: kernel %dx%d / pad %dx%d / dilation %dx%d out of "
                       "range (0..65535)",
                       p->kernel_h, p->kernel_w, p->pad_h, p->pad_w, p->dilation_h,
                       p->dilation_w);
  p->num_output = (int)cp->num_output;
  p->group = (int)cp->group;
  p->bias_term = cp->bias_term;
  int channels = l->bottom[0]->shape[1];
  if (p->group <= 0) return moka_errorf("convolution_param.group must be > 0, got %d", p->group);
  if (channels % p->group != 0)
    return moka_errorf("convolution_param.group %d does not divide the %d input channels",
                       p->group, channels);
  if (p->num_output % p->group != 0)
    return moka_errorf("convolution_param.group %d does not divide num_output %d", p->group,
                       p->num_output);
  p->channels = channels;
  p->is_1x1 = p->kernel_h == 1 && p->kernel_w == 1 && p->stride_h == 1 && p->stride_w == 1 &&
              p->pad_h == 0 && p->pad_w == 0;

  int wshape[4] = {p->num_output, channels / p->group, p->kernel_h, p->kernel_w};
  if (!layer_add_param(l, 4, wshape, cp->weight_filler)) return -1;
  if (p->bias_term) {
    int bshape[1] = {p->num_output};
    if (!layer_add_param(l, 1, bshape, cp->bias_filler)) return -1;
  }
  return 0;
}

static int conv_reshape(Layer *l) {
  ConvPriv *p = l->priv;
  if (conv_check_bottoms(l)) return -1;
  const Blob *b0 = l->bottom[0];
  if (b0->shape[1] != p->channels)
    return moka_errorf("bottom '%s' has %d channels; the weights were made for %d", b0->name,
                       b0->shape[1], p->channels);
  p->num = b0->shape[0];
  p->height = b0->shape[2];
  p->width = b0->shape[3];
  Im2colGeom g = conv_geom(p);
  /* In 64 bits: dilation and kernel up to 65535 give extents up to 2^32. */
  const long long ext_h = (long long)p->dilation_h * (p->kernel_h - 1) + 1;
  const long long ext_w = (long long)p->dilation_w * (p->kernel_w - 1) + 1;
  const long long padded_h = (long long)p->height + 2LL * p->pad_h;
  const long long padded_w = (long long)p->width + 2LL * p->pad_w;
  if (padded_h > INT_MAX || padded_w > INT_MAX)
    return moka_errorf("padded input %lldx%lld is too large", padded_h, padded_w);
  if (ext_h > padded_h || ext_w > padded_w)
    return moka_errorf("kernel extent %lldx%lld (kernel %dx%d, dilation %dx%d) is larger than the "
                       "padded input %lldx%lld (input %dx%d, pad %dx%d)",
                       ext_h, ext_w, p->kernel_h, p->kernel_w, p->dilation_h, p->dilation_w,
                       padded_h, padded_w, p->height, p->width, p->pad_h, p->pad_w);
  p->out_h = im2col_out_h(&g);
  p->out_w = im2col_out_w(&g);
  for (int i = 0; i < l->n_top; i++)
    if (blob_reshape4(l->top[i], p->num, p->num_output, p->out_h, p->out_w)) return -1;
  size_t col = 0;
  if (!moka_mul_size((size_t)p->channels * p->kernel_h * p->kernel_w,
                     (size_t)p->out_h * p->out_w, &col))
    return moka_errorf("column buffer size overflows");
  if (!p->is_1x1 && col > (size_t)MOKA_MAX_BLOB_COUNT)
    return moka_errorf("the column buffer (%d x %d x %d, %d x %d) has more than %lld elements "
                       "(Caffe's limit for its col_buffer_ blob)",
                       p->channels, p->kernel_h, p->kernel_w, p->out_h, p->out_w,
                       (long long)MOKA_MAX_BLOB_COUNT);
  if (!p->is_1x1 && col > p->col_cap &&
      blob_memory_check(col * sizeof(float), "the column buffer"))
    return -1;
  if (!p->is_1x1 && col > p->col_cap) {
    float *c = moka_realloc(p->col, col * sizeof(float));
    if (!c) return -1;
    p->col = c;
    p->col_cap = col;
  }
  return 0;
}

static int conv_forward_cpu(Layer *l) {
  ConvPriv *p = l->priv;
  const Im2colGeom g = conv_geom(p);
  const int G = p->group, OCg = p->num_output / G;
  const int out_sp = p->out_h * p->out_w;
  const int kdim = p->channels / G * p->kernel_h * p->kernel_w;
  const float *weight = l->params[0]->data; /* (OC, IC/G, KH, KW) */
  const float *bias = p->bias_term ? l->params[1]->data : NULL; /* (OC) */
  const size_t in_img = (size_t)p->channels * p->height * p->width;
  const size_t out_img = (size_t)p->num_output * out_sp;
  for (int i = 0; i < l->n_bottom; i++) {
    for (int n = 0; n < p->num; n++) {
      const float *x = l->bottom[i]->data + n * in_img; /* (IC,H,W) */
      float *y = l->top[i]->data + n * out_img;         /* (OC,OH,OW) */
      const float *col = x;                             /* (IC*KH*KW, OH*OW) */
      if (!p->is_1x1) {
        moka_im2col(x, &g, p->col);
        col = p->col;
      }
      for (int gi = 0; gi < G; gi++)
        moka_gemm(false, false, OCg, out_sp, kdim, 1.0f, weight + (size_t)gi * OCg * kdim,
                  col + (size_t)gi * kdim * out_sp, 0.0f, y + (size_t)gi * OCg * out_sp);
      if (bias)
        for (int oc = 0; oc < p->num_output; oc++)
          for (int s = 0; s < out_sp; s++) y[(size_t)oc * out_sp + s] += bias[oc];
    }
  }
  return 0;
}

static int conv_backward_cpu(Layer *l) {
  ConvPriv *p = l->priv;
  const Im2colGeom g = conv_geom(p);
  const int G = p->group, OCg = p->num_output / G;
  const int out_sp = p->out_h * p->out_w;
  const int kdim = p->channels / G * p->kernel_h * p->kernel_w;
  const float *weight = l->params[0]->data; /* (OC, IC/G, KH, KW) */
  /* (OC, IC/G, KH, KW) and (OC), accumulated; NULL when lr_mult is 0 */
  float *wdiff = layer_param_needs_grad(l, 0) ? l->params[0]->diff : NULL;
  float *bdiff = p->bias_term && layer_param_needs_grad(l, 1) ? l->params[1]->diff : NULL;
  const size_t in_img = (size_t)p->channels * p->height * p->width;
  const size_t out_img = (size_t)p->num_output * out_sp;
  for (int i = 0; i < l->n_bottom; i++) {
    const Blob *top = l->top[i];
    Blob *bot = l->bottom[i];
    if (!wdiff && !bdiff && !l->propagate_down[i]) continue;
    for (int n = 0; n < p->num; n++) {
      const float *dy = top->diff + n * out_img; /* (OC, OH*OW) */
      if (bdiff)
        for (int oc = 0; oc < p->num_output; oc++) {
          double s = 0.0;
          for (int k = 0; k < out_sp; k++) s += dy[(size_t)oc * out_sp + k];
          bdiff[oc] += (float)s;
        }
      /* Weight gradient: dW_g += dy_g (OC/G, OH*OW) x col_g^T (OH*OW, kdim). */
      if (wdiff) {
        const float *x = bot->data + n * in_img;
        const float *col = x;
        if (!p->is_1x1) {
          moka_im2col(x, &g, p->col);
          col = p->col;
        }
        for (int gi = 0; gi < G; gi++)
          moka_gemm(false, true, OCg, kdim, out_sp, 1.0f, dy + (size_t)gi * OCg * out_sp,
                    col + (size_t)gi * kdim * out_sp, 1.0f, wdiff + (size_t)gi * OCg * kdim);
      }
      if (!l->propagate_down[i]) continue;
      /* Bottom gradient: dcol_g (kdim, OH*OW) = W_g^T (kdim, OC/G) x dy_g, then col2im. */
      float *dx = bot->diff + n * in_img; /* (IC,H,W) */
      float *dcol = p->is_1x1 ? dx : p->col;
      for (int gi = 0; gi < G; gi++)
        moka_gemm(true, false, kdim, out_sp, OCg, 1.0f, weight + (size_t)gi * OCg * kdim,
                  dy + (size_t)gi * OCg * out_sp, 0.0f, dcol + (size_t)gi * kdim * out_sp);
      if (!p->is_1x1) moka_col2im(p->col, &g, dx);
    }
  }
  return 0;
}

static void conv_destroy(Layer *l) {
  ConvPriv *p = l->priv;
  free(p->col);
  p->col = NULL;
  free(p->wpack);
  free(p->wino_pack);
  free(p->bf16_wpack);
  free(p->nhwc_wpack);
  free(p->shift_masks);
  p->wpack = p->wino_pack = NULL;
  p->bf16_wpack = p->nhwc_wpack = NULL;
  p->shift_masks = NULL;
#ifdef MOKA_WITH_CUDA
  moka_cudnn_conv_free(p->cudnn_plan);
  p->cudnn_plan = NULL;
#endif
}

/* The engine a layer runs on CUDA: engine CUDNN / CAFFE as written; else its context's
 * MOKA_CONV_ENGINE (as read when the context was made) or, before the layer is on a device,
 * the environment's. 1 cuDNN, -1 auto (decided by timing, conv_auto_choose), 0 moka. */
static int conv_engine_of(const Layer *l) {
  const Caffe__ConvolutionParameter *cp = l->param->convolution_param;
  if (cp->engine == CAFFE__CONVOLUTION_PARAMETER__ENGINE__CUDNN) return 1;
  if (cp->engine == CAFFE__CONVOLUTION_PARAMETER__ENGINE__CAFFE) return 0;
#ifdef MOKA_WITH_CUDA
  if (l->cuda) return l->cuda->conv_engine_cudnn ? 1 : l->cuda->conv_engine_auto ? -1 : 0;
#endif
  const char *e = getenv("MOKA_CONV_ENGINE");
  return e && !strcmp(e, "cudnn") ? 1 : e && !strcmp(e, "auto") ? -1 : 0;
}

#ifdef MOKA_WITH_CUDA
/* CUDA: moka's engine by default; cuDNN (kernels/conv_cudnn.cu) with
 * `engine: CUDNN`, or for every layer left at DEFAULT when
 * MOKA_CONV_ENGINE=cudnn. `engine: CAFFE` always means moka's own.
 * Precision (process-wide, fast_precision(): --precision, MOKA_PRECISION):
 *   fp32 (default)  moka: kernels/conv_gemm.cu (im2col + cuBLAS SGEMM, 1x1 as
 *                   a plain GEMM), Caffe-exact; cuDNN in FMA math. TF32 off.
 *   bf16, tf32      moka: kernels/conv_igemm.cu (implicit GEMM on tensor
 *                   cores, inputs rounded as read, fp32 accumulation);
 *                   cuDNN: moka_cudnn_conv_*_prec in the same precision.
 * Weights, biases and all gradients stay fp32 blobs (the fp32 master
 * weights the solver updates). */
static MokaConvPrec conv_cuda_prec(void) {
  const FastPrecision p = fast_precision();
  return p == FAST_BF16 ? MOKA_CONV_BF16 : p == FAST_TF32 ? MOKA_CONV_TF32 : MOKA_CONV_FP32;
}

static MokaConvGeom conv_cuda_geom(const ConvPriv *p) {
  MokaConvGeom g = {p->num,      p->channels, p->height,   p->width,    p->num_output,
                    p->group,    p->out_h,    p->out_w,    p->kernel_h, p->kernel_w,
                    p->pad_h,    p->pad_w,    p->stride_h, p->stride_w, p->dilation_h,
                    p->dilation_w};
  return g;
}


static int conv_forward_run(Layer *l, bool cudnn, const MokaConvGeom *gp, MokaConvPrec prec);
static int conv_backward_run(Layer *l, bool cudnn, const MokaConvGeom *gp, MokaConvPrec prec);

/* One run of a direction with an engine, timed on the host around two stream
 * synchronisations (the launches' cost counts too: it is part of what a pass pays). */
static int conv_auto_time(Layer *l, int dir, bool cudnn, const MokaConvGeom *g,
                          MokaConvPrec prec, double *ms) {
  if (moka_cuda_sync(l->cuda)) return -1;
  const double t0 = moka_now();
  const int rc =
      dir == 0 ? conv_forward_run(l, cudnn, g, prec) : conv_backward_run(l, cudnn, g, prec);
  if (rc || moka_cuda_sync(l->cuda)) return -1;
  *ms = (moka_now() - t0) * 1e3;
  return 0;
}

/* MOKA_CONV_ENGINE=auto: the engine for direction dir (0 forward, 1 backward) of this
 * geometry and precision, timed the first time: each engine runs once to warm up (cuDNN's
 * plan and algorithm search, cuBLAS's heuristics, the workspace's growth), then once timed;
 * the faster is kept for every later pass. The runs compute the layer's real outputs; in
 * backward the accumulated parameter gradients are saved first and restored before each
 * run, so they are added to exactly once (by the caller's run that follows). If cuDNN
 * cannot run the shape, moka's engine is chosen and the reason logged. One log line per
 * decision. */
static int conv_auto_choose(Layer *l, int dir, const MokaConvGeom *g, MokaConvPrec prec,
                            bool *cudnn) {
  ConvPriv *p = l->priv;
  if (p->auto_engine[dir] >= 0 && p->auto_prec[dir] == (int)prec &&
      memcmp(&p->auto_geom[dir], g, sizeof *g) == 0) {
    *cudnn = p->auto_engine[dir] == 1;
    return 0;
  }
  /* backward: save the accumulated gradients (weights, then bias) */
  float *grads[2] = {l->params[0]->dev_diff, p->bias_term ? l->params[1]->dev_diff : NULL};
  const size_t counts[2] = {l->params[0]->count, p->bias_term ? l->params[1]->count : 0};
  void *saved = NULL;
  const size_t save_bytes = (counts[0] + counts[1]) * sizeof(float);
  if (dir == 1 && moka_dev_alloc(&saved, save_bytes, "convolution engine choice (gradients)"))
    return -1;
  cudaStream_t st = l->cuda->stream;
#define RESTORE_GRADS()                                                                     \
  (dir == 1 &&                                                                              \
   (moka_d2d(st, grads[0], saved, counts[0] * sizeof(float)) ||                             \
    (grads[1] && moka_d2d(st, grads[1], (float *)saved + counts[0], counts[1] * sizeof(float)))))
  int rc = 0;
  if (dir == 1 && (moka_d2d(st, saved, grads[0], counts[0] * sizeof(float)) ||
                   (grads[1] && moka_d2d(st, (float *)saved + counts[0], grads[1],
                                         counts[1] * sizeof(float)))))
    rc = -1;
  double t_moka = -1, t_cudnn = -1, warm;
  bool cudnn_ok = true;
  if (!rc && (conv_auto_time(l, dir, false, g, prec, &warm) || RESTORE_GRADS() ||
              conv_auto_time(l, dir, false, g, prec, &t_moka) || RESTORE_GRADS()))
    rc = -1;
  char why[256] = "";
  if (!rc) {
    if (conv_auto_time(l, dir, true, g, prec, &warm) || RESTORE_GRADS() ||
        conv_auto_time(l, dir, true, g, prec, &t_cudnn) || RESTORE_GRADS()) {
      /* cuDNN could not run it (no algorithm for the shape, ...): moka's engine */
      snprintf(why, sizeof why, " (cuDNN: %s)", moka_error());
      cudnn_ok = false;
      if (moka_cuda_sync(l->cuda) || RESTORE_GRADS()) rc = -1;
    }
  }
#undef RESTORE_GRADS
  if (saved) {
    if (moka_cuda_sync(l->cuda)) rc = -1;
    moka_dev_free(saved);
  }
  if (rc) return moka_error_prefix("layer '%s': choosing the convolution engine", l->name);
  *cudnn = cudnn_ok && t_cudnn < t_moka;
  p->auto_engine[dir] = *cudnn ? 1 : 0;
  p->auto_geom[dir] = *g;
  p->auto_prec[dir] = (int)prec;
  if (cudnn_ok)
    LOG_INFO("Convolution '%s' %s (%dx%dx%dx%d -> %d, %dx%d/%d, %s): moka %.3f ms, cuDNN %.3f "
             "ms: %s",
             l->name, dir == 0 ? "forward" : "backward", g->num, g->channels, g->height,
             g->width, g->num_output, g->kernel_h, g->kernel_w, g->stride_h,
             moka_conv_prec_name(prec), t_moka, t_cudnn, *cudnn ? "cuDNN" : "moka");
  else
    LOG_INFO("Convolution '%s' %s: moka's engine%s", l->name, dir == 0 ? "forward" : "backward",
             why);
  return 0;
}

static int conv_engine_for(Layer *l, int dir, const MokaConvGeom *g, MokaConvPrec prec,
                           bool *cudnn) {
  const int e = conv_engine_of(l);
  if (e >= 0) {
    *cudnn = e == 1;
    return 0;
  }
  return conv_auto_choose(l, dir, g, prec, cudnn);
}

static int conv_forward_cuda(Layer *l) {
  ConvPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  const MokaConvGeom g = conv_cuda_geom(p);
  const MokaConvPrec prec = conv_cuda_prec();
  bool cudnn;
  if (conv_engine_for(l, 0, &g, prec, &cudnn)) return -1;
  return conv_forward_run(l, cudnn, &g, prec);
}

/* MOKA_BF16_ACT (src/net_bf16.h): when a bottom or top lives as bf16 channels-last, moka's
 * NHWC kernel runs the direction with each tensor in its own format. */
static bool conv_any_bf16(const Layer *l) {
  for (int i = 0; i < l->n_bottom; i++)
    if (l->bottom[i]->dev_bf16 || l->top[i]->dev_bf16) return true;
  return false;
}

static MokaActFmt act_fmt(const Blob *b) {
  return b->dev_bf16 ? MOKA_ACT_BF16_NHWC : MOKA_ACT_F32_NCHW;
}

static int conv_bf16_check(const Layer *l, bool cudnn, MokaConvPrec prec) {
  const bool bias = ((const ConvPriv *)l->priv)->bias_term;
  if (cudnn || prec != MOKA_CONV_BF16 || bias)
    return moka_errorf("internal error: convolution '%s' has bf16 channels-last blobs but runs "
                       "%s%s%s",
                       l->name, cudnn ? "cuDNN" : "moka's engine",
                       prec != MOKA_CONV_BF16 ? ", not bf16" : "", bias ? ", with a bias" : "");
  return 0;
}

static int conv_forward_run(Layer *l, bool cudnn, const MokaConvGeom *gp, MokaConvPrec prec) {
  ConvPriv *p = l->priv;
  const MokaConvGeom g = *gp;
  if (conv_any_bf16(l)) {
    if (conv_bf16_check(l, cudnn, prec)) return -1;
    for (int i = 0; i < l->n_bottom; i++)
      if (moka_cuda_nhwc_conv_forward_fmt(l->cuda, &g, l->bottom[i]->dev_data,
                                          act_fmt(l->bottom[i]), l->params[0]->dev_data, NULL,
                                          l->top[i]->dev_data, act_fmt(l->top[i])))
        return -1;
    return 0;
  }
  const float *w = l->params[0]->dev_data;                          /* (OC, IC/G, KH, KW) */
  const float *bias = p->bias_term ? l->params[1]->dev_data : NULL; /* (OC) */
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->dev_data; /* (N,IC,H,W) */
    float *y = l->top[i]->dev_data;          /* (N,OC,OH,OW) */
    const int rc =
        cudnn ? moka_cudnn_conv_forward_prec(l->cuda, &p->cudnn_plan, &g, prec, x, w, bias, y)
        : prec == MOKA_CONV_FP32 ? moka_cuda_conv_forward(l->cuda, &g, x, w, bias, y)
                                 : moka_cuda_igemm_conv_forward(l->cuda, &g, prec, x, w, bias, y);
    if (rc) return -1;
  }
  return 0;
}

static int conv_backward_cuda(Layer *l) {
  ConvPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  const MokaConvGeom g = conv_cuda_geom(p);
  const MokaConvPrec prec = conv_cuda_prec();
  bool cudnn;
  if (conv_engine_for(l, 1, &g, prec, &cudnn)) return -1;
  return conv_backward_run(l, cudnn, &g, prec);
}

static int conv_backward_run(Layer *l, bool cudnn, const MokaConvGeom *gp, MokaConvPrec prec) {
  ConvPriv *p = l->priv;
  const MokaConvGeom g = *gp;
  if (conv_any_bf16(l)) {
    if (conv_bf16_check(l, cudnn, prec)) return -1;
    for (int i = 0; i < l->n_bottom; i++) {
      Blob *x = l->bottom[i], *y = l->top[i];
      if (moka_cuda_nhwc_conv_backward_fmt(l->cuda, &g, x->dev_data, act_fmt(x),
                                           l->params[0]->dev_data, y->dev_diff, act_fmt(y),
                                           l->propagate_down[i] ? x->dev_diff : NULL, act_fmt(x),
                                           l->params[0]->dev_diff))
        return -1;
    }
    return 0;
  }
  const float *w = l->params[0]->dev_data;                     /* (OC, IC/G, KH, KW) */
  float *dw = l->params[0]->dev_diff;                          /* accumulated */
  float *db = p->bias_term ? l->params[1]->dev_diff : NULL;    /* (OC), accumulated */
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->dev_data;
    const float *dy = l->top[i]->dev_diff;
    float *dx = l->propagate_down[i] ? l->bottom[i]->dev_diff : NULL;
    const int rc =
        cudnn ? moka_cudnn_conv_backward_prec(l->cuda, &p->cudnn_plan, &g, prec, x, w, dy, dx,
                                              dw, db)
        : prec == MOKA_CONV_FP32
            ? moka_cuda_conv_backward(l->cuda, &g, x, w, dy, dx, dw, db)
            : moka_cuda_igemm_conv_backward(l->cuda, &g, prec, x, w, dy, dx, dw, db);
    if (rc) return -1;
  }
  return 0;
}
#endif

bool conv_bf16_nhwc_capable(const Layer *l, bool dgrad) {
  const ConvPriv *p = l->priv;
  if (p->bias_term || conv_engine_of(l) != 0 || fast_precision() != FAST_BF16) return false;
  for (int dir = 0; dir < 3; dir++) {
    if (dir == 1 && !dgrad) continue; /* the data gradient never runs */
    if (!nhwc_conv_geom_ok(p->group, p->num, p->channels, p->height, p->width, p->num_output,
                           p->out_h, p->out_w, p->kernel_h, p->kernel_w, p->stride_h,
                           p->stride_w, p->pad_h, p->pad_w, dir))
      return false;
  }
  return true;
}

const LayerType layer_type_convolution = {
    .name = "Convolution",
    .min_bottoms = 1,
    .max_bottoms = -1,
    .min_tops = 1,
    .max_tops = -1,
    .priv_size = sizeof(ConvPriv),
    .setup = conv_setup,
    .reshape = conv_reshape,
    .forward = {[MOKA_BACKEND_CPU] = conv_forward_cpu,
                [MOKA_BACKEND_CPU_FAST] = conv_forward_fast /* convolution_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = conv_backward_cpu,
                 [MOKA_BACKEND_CPU_FAST] = conv_backward_fast},
    .destroy = conv_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = conv_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = conv_backward_cuda,
#endif
};
