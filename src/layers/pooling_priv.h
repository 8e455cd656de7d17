/* pooling_priv.h — the Pooling layer's state, shared by the reference (pooling.c)
 * and the fast CPU path (pooling_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_POOLING_PRIV_H
#define MOKA_LAYERS_POOLING_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"
#include "pool_geom.h"

typedef struct PoolPriv {
  int method; /* CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX or __AVE */
  bool global, round_floor;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int num, channels, height, width, out_h, out_w;
  int *argmax;   /* (N,C,PH,PW) MAX only: index h*W+w of each output's maximum */
  size_t argmax_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_argmax; /* (N,C,PH,PW) the same, on the device */
#endif
} PoolPriv;

/* Backward of plane nc (one image's channel): dx (H,W), zeroed by the
 * caller, gets the gradient of dy (PH,PW) -- MAX through the argmax of the
 * last forward, AVE spread evenly over each window (Caffe's rounding). The
 * reference runs it plane after plane, the fast path in parallel. */
static inline void pool_backward_plane(const PoolPriv *p, int nc, const float *dy, float *dx) {
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  if (p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX) {
    const int *arg = p->argmax + (size_t)nc * PH * PW; /* (PH,PW) */
    for (int o = 0; o < PH * PW; o++)
      if (arg[o] >= 0) dx[arg[o]] += dy[o];
    return;
  }
  for (int ph = 0; ph < PH; ph++) {
    int h0, h1, w0, w1;
    int eh = pool_window(ph, p->stride_h, p->pad_h, p->kernel_h, H, &h0, &h1);
    for (int pw = 0; pw < PW; pw++) {
      int ew = pool_window(pw, p->stride_w, p->pad_w, p->kernel_w, W, &w0, &w1);
      float g = dy[ph * PW + pw] / (float)(eh * ew);
      for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) dx[h * W + w] += g;
    }
  }
}

/* A global AVE pooling (one output pixel over the whole plane, no padding): the one that
 * reads bf16 channels-last blobs (MOKA_BF16_ACT, src/net_bf16.h; ResNet's pool5). */
static inline bool pool_is_global_ave(const PoolPriv *p) {
  return p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__AVE && p->out_h == 1 &&
         p->out_w == 1 && p->kernel_h >= p->height && p->kernel_w >= p->width &&
         p->pad_h == 0 && p->pad_w == 0;
}

#endif
