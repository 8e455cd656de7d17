/* pooling.c — Caffe's "Pooling" layer (MAX and AVE), CPU reference.
 *
 * Input (N,C,H,W), output (N,C,PH,PW). Caffe's output size (CEIL, default):
 *   PH = ceil((H + 2*pad_h - kernel_h) / stride_h) + 1        (FLOOR: floor)
 *   if (pad_h || pad_w) and (PH-1)*stride_h >= H + pad_h: PH--   (likewise PW)
 * so the last window may hang over the bottom/right edge, but never starts
 * inside the padding only.
 *
 * Window of output (ph, pw): rows hstart = ph*stride_h - pad_h .. hstart+kernel_h.
 *   MAX: the maximum over the window clipped to the image (padding never
 *        wins); the first maximum in row-major order is recorded (argmax, an
 *        index h*W+w inside the channel plane) for backward; an optional
 *        second top receives those indices as floats, as in Caffe.
 *   AVE: the sum over the window clipped to the image, divided by the window
 *        size clipped to H+pad / W+pad (so padding counts in the divisor,
 *        but the part past the padded edge does not).
 * global_pooling: the kernel is the whole H x W plane.
 * STOCHASTIC pooling is not supported.
 *
 * This is the reference (the oracle other backends must agree with).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "net_bf16.h"
#include "pooling_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "pool_geom.h" /* pool_window(), shared with the CUDA kernels */
#include "util.h"

/* PoolPriv (the layer's state) is in pooling_priv.h, shared with the fast path. */

static int pool_setup(Layer *l) {
  PoolPriv *p = l->priv;
  const Caffe__PoolingParameter *pp = l->param->pooling_param;
  Caffe__PoolingParameter defaults;
  if (!pp) {
    caffe__pooling_parameter__init(&defaults);
    pp = &defaults;
  }
  if (pp->pool == CAFFE__POOLING_PARAMETER__POOL_METHOD__STOCHASTIC)
    return moka_errorf("pooling_param.pool STOCHASTIC is not supported (use MAX or AVE)");
  if (pp->pool != CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX &&
      pp->pool != CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE)
    return moka_errorf("pooling_param.pool %d is not a known method", (int)pp->pool);
  p->method = (int)pp->pool;
  if (l->n_top > 1 && p->method != CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX)
    return moka_errorf("only MAX pooling has a second top (the argmax mask); AVE takes 1 top, "
                       "got %d", l->n_top);
  p->global = pp->global_pooling;
  p->round_floor = pp->round_mode == CAFFE__POOLING_PARAMETER__ROUND_MODE__FLOOR;
  if (p->global) {
    if (pp->has_kernel_size || pp->has_kernel_h || pp->has_kernel_w)
      return moka_errorf("pooling_param: with global_pooling: true, kernel_size / kernel_h / "
                         "kernel_w cannot be given");
  } else {
    if (pp->has_kernel_size && (pp->has_kernel_h || pp->has_kernel_w))
      return moka_errorf("pooling_param: give kernel_size or kernel_h and kernel_w, not both");
    if (!pp->has_kernel_size && !(pp->has_kernel_h && pp->has_kernel_w))
      return moka_errorf("pooling_param: kernel_size (or both kernel_h and kernel_w) is "
                         "required unless global_pooling is set");
    p->kernel_h = (int)(pp->has_kernel_size ? pp->kernel_size : pp->kernel_h);
    p->kernel_w = (int)(pp->has_kernel_size ? pp->kernel_size : pp->kernel_w);
    if (p->kernel_h <= 0 || p->kernel_w <= 0)
      return moka_errorf("pooling_param: kernel %dx%d must be positive", p->kernel_h,
                         p->kernel_w);
  }
  if (pp->has_pad && (pp->has_pad_h || pp->has_pad_w))
    return moka_errorf("pooling_param: give pad or pad_h and pad_w, not both");
  if (pp->has_pad_h != pp->has_pad_w)
    return moka_errorf("pooling_param: pad_h and pad_w must be given together");
  if (pp->has_stride && (pp->has_stride_h || pp->has_stride_w))
    return moka_errorf("pooling_param: give stride or stride_h and stride_w, not both");
  if (pp->has_stride_h != pp->has_stride_w)
    return moka_errorf("pooling_param: stride_h and stride_w must be given together");
  p->pad_h = (int)(pp->has_pad_h ? pp->pad_h : pp->pad);
  p->pad_w = (int)(pp->has_pad_w ? pp->pad_w : pp->pad);
  p->stride_h = (int)(pp->has_stride_h ? pp->stride_h : pp->stride);
  p->stride_w = (int)(pp->has_stride_w ? pp->stride_w : pp->stride);
  if (p->stride_h <= 0 || p->stride_w <= 0 || p->pad_h < 0 || p->pad_w < 0)
    return moka_errorf("pooling_param: stride %dx%d must be positive and pad %dx%d >= 0",
                       p->stride_h, p->stride_w, p->pad_h, p->pad_w);
  if (p->global && (p->pad_h || p->pad_w || p->stride_h != 1 || p->stride_w != 1))
    return moka_errorf("pooling_param: with global_pooling: true, only pad 0 and stride 1 are "
                       "allowed (got pad %dx%d, stride %dx%d)",
                       p->pad_h, p->pad_w, p->stride_h, p->stride_w);
  if (!p->global && (p->pad_h >= p->kernel_h || p->pad_w >= p->kernel_w))
    return moka_errorf("pooling_param: pad %dx%d must be smaller than the kernel %dx%d",
                       p->pad_h, p->pad_w, p->kernel_h, p->kernel_w);
  return 0;
}

/* Caffe's output size along one axis (before the padding correction). */
static int pooled_size(int in, int pad, int kernel, int stride, bool floor_mode) {
  double q = (double)(in + 2 * pad - kernel) / stride;
  return (int)(floor_mode ? floor(q) : ceil(q)) + 1;
}

static int pool_reshape(Layer *l) {
  PoolPriv *p = l->priv;
  const Blob *b = l->bottom[0];
  char buf[256];
  if (b->num_axes != 4)
    return moka_errorf("bottom '%s' has shape %s; pooling needs 4 axes (N,C,H,W)", b->name,
                       blob_shape_string(b, buf, sizeof buf));
  p->num = b->shape[0];
  p->channels = b->shape[1];
  p->height = b->shape[2];
  p->width = b->shape[3];
  if (p->global) {
    p->kernel_h = p->height;
    p->kernel_w = p->width;
  }
  p->out_h = pooled_size(p->height, p->pad_h, p->kernel_h, p->stride_h, p->round_floor);
  p->out_w = pooled_size(p->width, p->pad_w, p->kernel_w, p->stride_w, p->round_floor);
  if (p->pad_h || p->pad_w) {
    if ((p->out_h - 1) * p->stride_h >= p->height + p->pad_h) p->out_h--;
    if ((p->out_w - 1) * p->stride_w >= p->width + p->pad_w) p->out_w--;
  }
  if (p->out_h <= 0 || p->out_w <= 0)
    return moka_errorf("kernel %dx%d (stride %dx%d) does not fit the padded input %dx%d "
                       "(input %dx%d, pad %dx%d): the output would be %dx%d",
                       p->kernel_h, p->kernel_w, p->stride_h, p->stride_w,
                       p->height + 2 * p->pad_h, p->width + 2 * p->pad_w, p->height, p->width,
                       p->pad_h, p->pad_w, p->out_h, p->out_w);
  for (int t = 0; t < l->n_top; t++)
    if (blob_reshape4(l->top[t], p->num, p->channels, p->out_h, p->out_w)) return -1;
  if (p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX) {
    size_t n = l->top[0]->count;
    if (n > p->argmax_cap || !p->argmax) {
      int *a = moka_realloc(p->argmax, n * sizeof(int));
      if (!a) return -1;
      p->argmax = a;
      p->argmax_cap = n;
    }
  }
  return 0;
}

static int pool_forward_cpu(Layer *l) {
  PoolPriv *p = l->priv;
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  const bool is_max = p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  float *mask_top = l->n_top > 1 ? l->top[1]->data : NULL; /* (N,C,PH,PW) argmax as float */
  for (int nc = 0; nc < p->num * p->channels; nc++) {
    const float *x = l->bottom[0]->data + (size_t)nc * H * W; /* (H,W) */
    float *y = l->top[0]->data + (size_t)nc * PH * PW;        /* (PH,PW) */
    for (int ph = 0; ph < PH; ph++) {
      int h0, h1, w0, w1;
      int eh = pool_window(ph, p->stride_h, p->pad_h, p->kernel_h, H, &h0, &h1);
      for (int pw = 0; pw < PW; pw++) {
        int ew = pool_window(pw, p->stride_w, p->pad_w, p->kernel_w, W, &w0, &w1);
        size_t o = (size_t)ph * PW + pw;
        if (is_max) {
          float m = -FLT_MAX;
          int arg = -1;
          for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++)
              if (x[h * W + w] > m) {
                m = x[h * W + w];
                arg = h * W + w;
              }
          y[o] = m;
          p->argmax[(size_t)nc * PH * PW + o] = arg;
          if (mask_top) mask_top[(size_t)nc * PH * PW + o] = (float)arg;
        } else {
          double s = 0.0;
          for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++) s += x[h * W + w];
          y[o] = (float)(s / ((double)eh * ew));
        }
      }
    }
  }
  return 0;
}

static int pool_backward_cpu(Layer *l) {
  PoolPriv *p = l->priv;
  if (!l->propagate_down[0]) return 0;
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  blob_zero_diff(l->bottom[0]);
  for (int nc = 0; nc < p->num * p->channels; nc++)
    pool_backward_plane(p, nc, l->top[0]->diff + (size_t)nc * PH * PW, /* (PH,PW) */
                        l->bottom[0]->diff + (size_t)nc * H * W);  /* (H,W) */
  return 0;
}

static void pool_destroy(Layer *l) {
  PoolPriv *p = l->priv;
  free(p->argmax);
  p->argmax = NULL;
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_argmax);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/pooling.cu, with pool_window() from pool_geom.h and the
 * output size computed above (reshape). Bit-identical to the reference. */
static MokaPoolGeom pool_geom_of(const PoolPriv *p) {
  MokaPoolGeom g = {p->num, p->channels, p->height, p->width, p->out_h, p->out_w,
                    p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w};
  return g;
}

static int pool_forward_cuda(Layer *l) {
  PoolPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  if (l->bottom[0]->dev_bf16) {
    if (!pool_is_global_ave(p) || l->top[0]->dev_bf16)
      return moka_errorf("internal error: pooling '%s' has a bf16 channels-last bottom but is "
                         "not a global AVE pooling into fp32", l->name);
    return moka_cuda_pool_ave_global_nhwc_forward(l->cuda->stream, (size_t)p->num,
                                                  (size_t)p->channels,
                                                  (size_t)p->height * p->width,
                                                  (const moka_bf16 *)l->bottom[0]->dev_data,
                                                  l->top[0]->dev_data);
  }
  const bool is_max = p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  if (is_max &&
      moka_devbuf_reserve(&p->dev_argmax, l->top[0]->count * sizeof(int), "pooling argmax"))
    return -1;
  const MokaPoolGeom g = pool_geom_of(p);
  return moka_cuda_pool_forward(l->cuda->stream, &g, is_max, l->bottom[0]->dev_data,
                                l->top[0]->dev_data, is_max ? p->dev_argmax.ptr : NULL,
                                l->n_top > 1 ? l->top[1]->dev_data : NULL);
}

static int pool_backward_cuda(Layer *l) {
  PoolPriv *p = l->priv;
  if (!l->propagate_down[0]) return 0;
  if (layer_cuda_ready(l, true)) return -1;
  if (l->bottom[0]->dev_bf16)
    return moka_cuda_pool_ave_global_nhwc_backward(l->cuda->stream, (size_t)p->num,
                                                   (size_t)p->channels,
                                                   (size_t)p->height * p->width,
                                                   l->top[0]->dev_diff,
                                                   (moka_bf16 *)l->bottom[0]->dev_diff);
  const bool is_max = p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  if (is_max && !p->dev_argmax.ptr) return moka_errorf("backward before forward on the device");
  const MokaPoolGeom g = pool_geom_of(p);
  return moka_cuda_pool_backward(l->cuda->stream, &g, is_max, l->top[0]->dev_diff,
                                 p->dev_argmax.ptr, l->bottom[0]->dev_diff);
}
#endif

bool pool_bf16_nhwc_capable(const Layer *l) {
  const PoolPriv *p = l->priv;
  return l->n_top == 1 && pool_is_global_ave(p) && p->channels % 8 == 0;
}

const LayerType layer_type_pooling = {
    .name = "Pooling",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 2, /* MAX only: top 1 = argmax mask */
    .priv_size = sizeof(PoolPriv),
    .setup = pool_setup,
    .reshape = pool_reshape,
    .forward = {[MOKA_BACKEND_CPU] = pool_forward_cpu,
                [MOKA_BACKEND_CPU_FAST] = pool_forward_fast /* pooling_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = pool_backward_cpu,
                 [MOKA_BACKEND_CPU_FAST] = pool_backward_fast},
    .destroy = pool_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = pool_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = pool_backward_cuda,
#endif
};
