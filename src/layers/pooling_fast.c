/* pooling_fast.c — Pooling (MAX, AVE) on the fast CPU backend: the
 * reference's window loops (pooling.c, pool_window from pool_geom.h), run in
 * parallel over the (n, c) planes. Each plane is computed exactly as the
 * reference computes it (same comparisons, same double sums in the same
 * order), so the results, the argmax and the gradients are identical.
 */
#include <float.h>
#include <string.h>

#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "pool_geom.h"
#include "pooling_priv.h"
#include "util.h"

int pool_forward_fast(Layer *l) {
  PoolPriv *p = l->priv;
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  const bool is_max = p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  float *mask_top = l->n_top > 1 ? l->top[1]->data : NULL; /* (N,C,PH,PW) argmax as float */
  const int planes = p->num * p->channels;
  const size_t work = (size_t)planes * PH * PW * p->kernel_h * p->kernel_w;
#pragma omp parallel for schedule(static) if (work >= FAST_GRAIN)
  for (int nc = 0; nc < planes; nc++) {
    const float *x = l->bottom[0]->data + (size_t)nc * H * W; /* (H,W) */
    float *y = l->top[0]->data + (size_t)nc * PH * PW;        /* (PH,PW) */
    int *am = is_max ? p->argmax + (size_t)nc * PH * PW : NULL; /* (PH,PW) */
    for (int ph = 0; ph < PH; ph++) {
      int h0, h1, w0, w1;
      int eh = pool_window(ph, p->stride_h, p->pad_h, p->kernel_h, H, &h0, &h1);
      for (int pw = 0; pw < PW; pw++) {
        int ew = pool_window(pw, p->stride_w, p->pad_w, p->kernel_w, W, &w0, &w1);
        const int o = ph * PW + pw;
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
          am[o] = arg;
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

int pool_backward_fast(Layer *l) {
  PoolPriv *p = l->priv;
  if (!l->propagate_down[0]) return 0;
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  const int planes = p->num * p->channels;
  const size_t work = (size_t)planes * H * W;
#pragma omp parallel for schedule(static) if (work >= FAST_GRAIN)
  for (int nc = 0; nc < planes; nc++) {
    float *dx = l->bottom[0]->diff + (size_t)nc * H * W; /* (H,W) */
    memset(dx, 0, (size_t)H * W * sizeof(float));
    pool_backward_plane(p, nc, l->top[0]->diff + (size_t)nc * PH * PW, dx); /* dy (PH,PW) */
  }
  return 0;
}
