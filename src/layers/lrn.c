/* lrn.c — Caffe's "LRN" (local response normalisation) layer, CPU reference.
 *
 * ACROSS_CHANNELS (default), on (N,C,H,W), n = local_size (odd):
 *   scale[c] = k + alpha/n * sum_{j=c-(n-1)/2}^{c+(n-1)/2} x[j]^2   (j outside 0..C-1: 0)
 *   y[c]     = x[c] * scale[c]^-beta
 * WITHIN_CHANNEL:
 *   scale = 1 + alpha/n^2 * sum of x^2 over the n x n window centred on the
 *           pixel (zero padded; the divisor is n^2 at borders too; k is unused)
 *   y     = x * scale^-beta
 *
 * Forward follows Caffe's float32 operation order exactly (see
 * shared/golden/README.md, section 6, items 1-2), which reproduces Caffe bit
 * for bit. This relies on no FMA contraction: the Makefile compiles with
 * -std=c11, where GCC's default is -ffp-contract=off.
 *
 * Backward (both regions; m = n for ACROSS, n^2 for WITHIN):
 *   dx[q] = dy[q] * scale[q]^-beta
 *           - 2*alpha*beta/m * x[q] * sum_{p in window(q)} dy[p] * y[p] / scale[p]
 * (the windows are symmetric, so p is in window(q) iff q is in window(p)).
 * The window sums are accumulated in double.
 *
 * This is the reference (the oracle other backends must agree with).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "util.h"

typedef struct LrnPriv {
  bool within;
  int size;        /* local_size n (odd) */
  float alpha, beta, k;
  int num, channels, height, width;
  float *scale;    /* (N,C,H,W) the scale before ^-beta, kept for backward */
  float *padded;   /* ACROSS: (C+n-1, H, W) squares with zero channels around;
                      WITHIN: (H, W) one plane of squares */
  size_t scale_cap, padded_cap;
} LrnPriv;

static int lrn_setup(Layer *l) {
  LrnPriv *p = l->priv;
  const Caffe__LRNParameter *lp = l->param->lrn_param;
  Caffe__LRNParameter defaults;
  if (!lp) {
    caffe__lrnparameter__init(&defaults);
    lp = &defaults;
  }
  if (lp->local_size == 0 || lp->local_size % 2 == 0)
    return moka_errorf("lrn_param.local_size must be odd (LRN only supports odd values), got %u",
                       lp->local_size);
  if (lp->local_size > 4095)
    return moka_errorf("lrn_param.local_size %u is too large", lp->local_size);
  if (lp->norm_region != CAFFE__LRNPARAMETER__NORM_REGION__ACROSS_CHANNELS &&
      lp->norm_region != CAFFE__LRNPARAMETER__NORM_REGION__WITHIN_CHANNEL)
    return moka_errorf("lrn_param.norm_region %d is not a known region", (int)lp->norm_region);
  p->within = lp->norm_region == CAFFE__LRNPARAMETER__NORM_REGION__WITHIN_CHANNEL;
  p->size = (int)lp->local_size;
  p->alpha = lp->alpha;
  p->beta = lp->beta;
  p->k = lp->k;
  return 0;
}

static int lrn_reshape(Layer *l) {
  LrnPriv *p = l->priv;
  const Blob *b = l->bottom[0];
  char buf[256];
  if (b->num_axes != 4)
    return moka_errorf("bottom '%s' has shape %s; LRN needs 4 axes (N,C,H,W)", b->name,
                       blob_shape_string(b, buf, sizeof buf));
  p->num = b->shape[0];
  p->channels = b->shape[1];
  p->height = b->shape[2];
  p->width = b->shape[3];
  if (blob_reshape_like(l->top[0], b)) return -1;
  size_t plane = (size_t)p->height * p->width;
  size_t np = p->within ? plane : (size_t)(p->channels + p->size - 1) * plane;
  if (b->count > p->scale_cap || !p->scale) {
    float *s = moka_realloc(p->scale, b->count * sizeof(float));
    if (!s) return -1;
    p->scale = s;
    p->scale_cap = b->count;
  }
  if (np > p->padded_cap || !p->padded) {
    float *s = moka_realloc(p->padded, np * sizeof(float));
    if (!s) return -1;
    p->padded = s;
    p->padded_cap = np;
  }
  return 0;
}

/* Caffe's CrossChannelForward_cpu, operation for operation, in float. */
static void lrn_across_forward(LrnPriv *p, const float *bottom, float *top) {
  const int C = p->channels, n = p->size, pre = (n - 1) / 2;
  const size_t plane = (size_t)p->height * p->width;
  const float a = p->alpha / (float)n;
  float *padded = p->padded; /* (C+n-1, H, W) */
  for (size_t i = 0; i < (size_t)p->num * C * plane; i++) p->scale[i] = p->k;
  memset(padded, 0, (size_t)(C + n - 1) * plane * sizeof(float));
  for (int img = 0; img < p->num; img++) {
    const float *x = bottom + (size_t)img * C * plane; /* (C,H,W) */
    float *scale = p->scale + (size_t)img * C * plane; /* (C,H,W) */
    for (size_t i = 0; i < (size_t)C * plane; i++) padded[pre * plane + i] = x[i] * x[i];
    for (int c = 0; c < n; c++)
      for (size_t i = 0; i < plane; i++) scale[i] += a * padded[c * plane + i];
    for (int c = 1; c < C; c++) {
      float *s = scale + (size_t)c * plane;
      const float *prev = s - plane;
      const float *add = padded + (size_t)(c + n - 1) * plane;
      const float *sub = padded + (size_t)(c - 1) * plane;
      for (size_t i = 0; i < plane; i++) {
        float v = prev[i];
        v += a * add[i];
        v += -a * sub[i];
        s[i] = v;
      }
    }
  }
  for (size_t i = 0; i < (size_t)p->num * C * plane; i++)
    top[i] = powf(p->scale[i], -p->beta) * bottom[i];
}

/* Caffe's WithinChannelForward: Power (x^2) -> AVE pooling (n x n, stride 1,
 * pad (n-1)/2, divisor n^2) -> Power (1 + alpha*v)^-beta -> product with x,
 * each step in float as Caffe does it. */
static void lrn_within_forward(LrnPriv *p, const float *bottom, float *top) {
  const int H = p->height, W = p->width, n = p->size, pre = (n - 1) / 2;
  const size_t plane = (size_t)H * W;
  const float pool_size = (float)(n * n);
  float *sq = p->padded; /* (H,W) */
  for (int nc = 0; nc < p->num * p->channels; nc++) {
    const float *x = bottom + (size_t)nc * plane;
    float *scale = p->scale + (size_t)nc * plane;
    float *y = top + (size_t)nc * plane;
    for (size_t i = 0; i < plane; i++) sq[i] = x[i] * x[i];
    for (int h = 0; h < H; h++) {
      int h0 = MOKA_MAX(h - pre, 0), h1 = MOKA_MIN(h - pre + n, H);
      for (int w = 0; w < W; w++) {
        int w0 = MOKA_MAX(w - pre, 0), w1 = MOKA_MIN(w - pre + n, W);
        float s = 0.0f;
        for (int hh = h0; hh < h1; hh++)
          for (int ww = w0; ww < w1; ww++) s += sq[hh * W + ww];
        s /= pool_size;
        s = s * p->alpha;
        s = s + 1.0f;
        scale[h * W + w] = s;
      }
    }
    for (size_t i = 0; i < plane; i++) y[i] = x[i] * powf(scale[i], -p->beta);
  }
}

static int lrn_forward_cpu(Layer *l) {
  LrnPriv *p = l->priv;
  if (p->within)
    lrn_within_forward(p, l->bottom[0]->data, l->top[0]->data);
  else
    lrn_across_forward(p, l->bottom[0]->data, l->top[0]->data);
  return 0;
}

static int lrn_backward_cpu(Layer *l) {
  LrnPriv *p = l->priv;
  if (!l->propagate_down[0]) return 0;
  const int C = p->channels, H = p->height, W = p->width, n = p->size, pre = (n - 1) / 2;
  const size_t plane = (size_t)H * W;
  const float *x = l->bottom[0]->data; /* (N,C,H,W) */
  const float *y = l->top[0]->data;    /* (N,C,H,W) */
  const float *dy = l->top[0]->diff;   /* (N,C,H,W) */
  float *dx = l->bottom[0]->diff;      /* (N,C,H,W) */
  const float *scale = p->scale;       /* (N,C,H,W) */
  const double m = p->within ? (double)n * n : (double)n;
  const double coef = 2.0 * p->alpha * p->beta / m;
  for (int img = 0; img < p->num; img++) {
    for (int c = 0; c < C; c++) {
      for (int h = 0; h < H; h++) {
        for (int w = 0; w < W; w++) {
          size_t q = (((size_t)img * C + c) * H + h) * W + w;
          double acc = 0.0; /* sum over p in window(q) of dy[p] * y[p] / scale[p] */
          if (p->within) {
            size_t base = ((size_t)img * C + c) * plane;
            for (int hh = MOKA_MAX(h - pre, 0); hh <= MOKA_MIN(h + pre, H - 1); hh++)
              for (int ww = MOKA_MAX(w - pre, 0); ww <= MOKA_MIN(w + pre, W - 1); ww++) {
                size_t r = base + (size_t)hh * W + ww;
                acc += (double)dy[r] * y[r] / scale[r];
              }
          } else {
            for (int cc = MOKA_MAX(c - pre, 0); cc <= MOKA_MIN(c + pre, C - 1); cc++) {
              size_t r = (((size_t)img * C + cc) * H + h) * W + w;
              acc += (double)dy[r] * y[r] / scale[r];
            }
          }
          dx[q] = (float)((double)dy[q] * pow(scale[q], -(double)p->beta) -
                          coef * x[q] * acc);
        }
      }
    }
  }
  return 0;
}

static void lrn_destroy(Layer *l) {
  LrnPriv *p = l->priv;
  free(p->scale);
  free(p->padded);
  p->scale = p->padded = NULL;
}

const LayerType layer_type_lrn = {
    .name = "LRN",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .priv_size = sizeof(LrnPriv),
    .setup = lrn_setup,
    .reshape = lrn_reshape,
    .forward = {[MOKA_BACKEND_CPU] = lrn_forward_cpu,
                /* no separate fast CPU path yet: the reference is it */
                [MOKA_BACKEND_CPU_FAST] = lrn_forward_cpu},
    .backward = {[MOKA_BACKEND_CPU] = lrn_backward_cpu,
                 [MOKA_BACKEND_CPU_FAST] = lrn_backward_cpu},
    .destroy = lrn_destroy,
};
