/* batchnorm.c — Caffe's BatchNorm layer, CPU reference (plain loops, double
 * accumulators for the per-channel sums; element-wise steps in float in
 * Caffe's order).
 *
 * Blobs (statistics, never learned): b0 (C) = sum of means, b1 (C) = sum of
 * variances, b2 (1) = scale factor s; the stored statistics are b0/s, b1/s.
 *
 * Global statistics (use_global_stats; default: phase == TEST):
 *   f = (b2 == 0) ? 0 : 1/b2,  mean = f*b0,  var = f*b1
 *   y = (x - mean) / sqrt(var + eps)
 *   backward: dx = dy / sqrt(var + eps)
 * Batch statistics (TRAIN), per channel over m = N*H*W values:
 *   mean = sum(x)/m,  var = sum((x-mean)^2)/m   (biased)
 *   y = (x - mean) / sqrt(var + eps)
 *   b2 = maf*b2 + 1,  b0 = maf*b0 + mean,  b1 = maf*b1 + m/(m-1)*var
 *   backward: dx = (dy - mean(dy) - mean(dy*y)*y) / sqrt(var + eps)
 *
 * Works on (N,C) and (N,C,spatial...) blobs; in place allowed (the
 * normalised output is kept in priv for backward).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "batchnorm_priv.h"
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* BatchNormPriv (the layer's state) is in batchnorm_priv.h, shared with the fast path. */

static const Caffe__BatchNormParameter *bn_param(const Layer *l) {
  static const Caffe__BatchNormParameter def = CAFFE__BATCH_NORM_PARAMETER__INIT;
  return l->param->batch_norm_param ? l->param->batch_norm_param : &def;
}

static int bn_setup(Layer *l) {
  BatchNormPriv *p = l->priv;
  const Caffe__BatchNormParameter *bp = bn_param(l);
  const Blob *x = l->bottom[0];
  p->use_global_stats = bp->has_use_global_stats ? bp->use_global_stats : l->phase == MOKA_TEST;
  p->maf = bp->moving_average_fraction;
  p->eps = bp->eps;
  if (x->num_axes < 1)
    return moka_errorf("bottom '%s' has no axes; BatchNorm needs (N,C,...)", x->name);
  p->channels = x->num_axes == 1 ? 1 : x->shape[1];
  int c = p->channels, one = 1;
  /* Three zero-initialised blobs: (C), (C), (1). */
  if (!layer_add_param(l, 1, &c, NULL) || !layer_add_param(l, 1, &c, NULL) ||
      !layer_add_param(l, 1, &one, NULL))
    return -1;
  /* mean | var | std in one block (3C): the channels-last bf16 chain
   * (net_fuse_bf16.c) reads and writes them as one array */
  p->mean = moka_calloc(3 * (size_t)c + 1, sizeof(float));
  if (!p->mean) return -1;
  p->var = p->mean + c;
  p->std = p->var + c;
  return 0;
}

static int bn_reshape(Layer *l) {
  BatchNormPriv *p = l->priv;
  Blob *x = l->bottom[0];
  int c = x->num_axes == 1 ? 1 : (x->num_axes >= 2 ? x->shape[1] : -1);
  if (c != p->channels) {
    char s[256];
    return moka_errorf("bottom '%s' has shape %s, but the layer was set up for %d channels",
                       x->name, blob_shape_string(x, s, sizeof s), p->channels);
  }
  for (int i = 0; i < 3; i++) {
    size_t want = i < 2 ? (size_t)c : 1;
    if (l->params[i]->count != want)
      return moka_errorf("statistics blob %d has %zu values, expected %zu", i,
                         l->params[i]->count, want);
  }
  if (l->top[0] != x && blob_reshape_like(l->top[0], x)) return -1;
  p->num = (size_t)x->shape[0];
  p->spatial = p->num && c ? x->count / (p->num * (size_t)c) : 0;
  if (x->count > p->x_norm_cap || !p->x_norm) {
    /* Rewritten by every forward before it is read: nothing to keep. */
    float *n = moka_alloc_big(x->count * sizeof(float)); /* huge pages from 2 MiB on */
    if (!n) return -1;
    moka_free_big(p->x_norm, p->x_norm_cap * sizeof(float));
    p->x_norm = n;
    p->x_norm_cap = x->count;
  }
  return 0;
}

static int bn_forward(Layer *l) {
  BatchNormPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (N,C,S) */
  float *y = l->top[0]->data;          /* (N,C,S), may be x */
  const size_t N = p->num, C = (size_t)p->channels, S = p->spatial;
  float *b0 = l->params[0]->data, *b1 = l->params[1]->data, *b2 = l->params[2]->data;

  if (p->use_global_stats) {
    const float f = b2[0] == 0 ? 0.0f : 1.0f / b2[0];
    for (size_t c = 0; c < C; c++) {
      p->mean[c] = f * b0[c];
      p->var[c] = f * b1[c];
    }
  } else {
    const size_t m = N * S;
    for (size_t c = 0; c < C; c++) {
      double sum = 0;
      for (size_t n = 0; n < N; n++)
        for (size_t s = 0; s < S; s++) sum += x[(n * C + c) * S + s];
      p->mean[c] = (float)(sum / (double)m);
      double sq = 0;
      for (size_t n = 0; n < N; n++)
        for (size_t s = 0; s < S; s++) {
          float d = x[(n * C + c) * S + s] - p->mean[c];
          sq += (double)d * (double)d;
        }
      p->var[c] = (float)(sq / (double)m);
    }
    /* Running statistics (weighted sums). */
    const float bias_correction = m > 1 ? (float)m / (float)(m - 1) : 1.0f;
    b2[0] = b2[0] * p->maf + 1.0f;
    for (size_t c = 0; c < C; c++) {
      b0[c] = p->maf * b0[c] + p->mean[c];
      b1[c] = p->maf * b1[c] + bias_correction * p->var[c];
    }
  }
  for (size_t c = 0; c < C; c++) p->std[c] = sqrtf(p->var[c] + p->eps);
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++) {
      const float mu = p->mean[c], sd = p->std[c];
      for (size_t s = 0; s < S; s++) {
        size_t i = (n * C + c) * S + s;
        float v = (x[i] - mu) / sd;
        y[i] = v;
        p->x_norm[i] = v;
      }
    }
  return 0;
}

static int bn_backward(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  BatchNormPriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (N,C,S) */
  float *dx = l->bottom[0]->diff;    /* (N,C,S), may be dy */
  const float *yn = p->x_norm;       /* (N,C,S) */
  const size_t N = p->num, C = (size_t)p->channels, S = p->spatial;

  if (p->use_global_stats) {
    for (size_t n = 0; n < N; n++)
      for (size_t c = 0; c < C; c++)
        for (size_t s = 0; s < S; s++) {
          size_t i = (n * C + c) * S + s;
          dx[i] = dy[i] / p->std[c];
        }
    return 0;
  }
  const double inv_m = 1.0 / (double)(N * S);
  for (size_t c = 0; c < C; c++) {
    double sum_dy = 0, sum_dyy = 0;
    for (size_t n = 0; n < N; n++)
      for (size_t s = 0; s < S; s++) {
        size_t i = (n * C + c) * S + s;
        sum_dy += dy[i];
        sum_dyy += (double)dy[i] * (double)yn[i];
      }
    const float mean_dy = (float)(sum_dy * inv_m), mean_dyy = (float)(sum_dyy * inv_m);
    /* Each dx[i] reads only dy[i] and the channel sums: safe in place. */
    for (size_t n = 0; n < N; n++)
      for (size_t s = 0; s < S; s++) {
        size_t i = (n * C + c) * S + s;
        dx[i] = (dy[i] - mean_dy - mean_dyy * yn[i]) / p->std[c];
      }
  }
  return 0;
}

static void bn_destroy(Layer *l) {
  BatchNormPriv *p = l->priv;
  moka_free_big(p->x_norm, p->x_norm_cap * sizeof(float));
  free(p->mean); /* var and std live in the same block */
#ifdef MOKA_WITH_CUDA
  moka_devbuf_free(&p->dev_x_norm);
  moka_devbuf_free(&p->dev_stats);
  moka_devbuf_free(&p->dev_work);
#endif
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/batchnorm.cu, the same formulas, rounding and statistics
 * update; the per-channel sums in double. */
static int bn_forward_cuda(Layer *l) {
  BatchNormPriv *p = l->priv;
  if (layer_cuda_ready(l, false)) return -1;
  const size_t N = p->num, C = (size_t)p->channels, S = p->spatial, m = N * S;
  if (moka_devbuf_reserve(&p->dev_x_norm, l->bottom[0]->count * sizeof(float),
                          "BatchNorm normalised output") ||
      moka_devbuf_reserve(&p->dev_stats, 3 * C * sizeof(float), "BatchNorm statistics"))
    return -1;
  const float bias_correction = m > 1 ? (float)m / (float)(m - 1) : 1.0f;
  return moka_cuda_bn_forward(l->cuda->stream, l->bottom[0]->dev_data, l->top[0]->dev_data,
                              p->dev_x_norm.ptr, p->dev_stats.ptr, l->params[0]->dev_data,
                              l->params[1]->dev_data, l->params[2]->dev_data, N, C, S, p->eps,
                              p->maf, bias_correction, p->use_global_stats);
}

static int bn_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  BatchNormPriv *p = l->priv;
  if (layer_cuda_ready(l, true)) return -1;
  const size_t C = (size_t)p->channels;
  if (!p->dev_x_norm.ptr) return moka_errorf("backward before forward on the device");
  if (moka_devbuf_reserve(&p->dev_work, 2 * C * sizeof(float), "BatchNorm backward sums"))
    return -1;
  return moka_cuda_bn_backward(l->cuda->stream, l->top[0]->dev_diff, p->dev_x_norm.ptr,
                               p->dev_stats.ptr, l->bottom[0]->dev_diff, p->dev_work.ptr, p->num,
                               C, p->spatial, p->use_global_stats);
}
#endif

const LayerType layer_type_batchnorm = {
    .name = "BatchNorm",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .in_place_ok = true,
    .params_frozen = true,
    .priv_size = sizeof(BatchNormPriv),
    .setup = bn_setup,
    .reshape = bn_reshape,
    .forward = {[MOKA_BACKEND_CPU] = bn_forward,
                [MOKA_BACKEND_CPU_FAST] = bn_forward_fast /* batchnorm_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = bn_backward, [MOKA_BACKEND_CPU_FAST] = bn_backward_fast},
    .destroy = bn_destroy,
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = bn_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = bn_backward_cuda,
#endif
};
