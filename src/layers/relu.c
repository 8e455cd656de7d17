/* relu.c — Caffe's ReLU layer, CPU reference.
 *
 *   y = max(x, 0) + negative_slope * min(x, 0)
 *   dx = dy * ((x > 0) + negative_slope * (x <= 0))
 *
 * Backward reads the bottom data, as Caffe does; in place the bottom data is
 * the output, whose sign gives the same mask (slope >= 0).
 */
#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

typedef struct ReluPriv {
  float slope; /* negative_slope */
} ReluPriv;

static int relu_setup(Layer *l) {
  ReluPriv *p = l->priv;
  p->slope = l->param->relu_param ? l->param->relu_param->negative_slope : 0.0f;
  return 0;
}

static int relu_reshape(Layer *l) {
  if (l->top[0] == l->bottom[0]) return 0;
  return blob_reshape_like(l->top[0], l->bottom[0]);
}

static int relu_forward(Layer *l) {
  const ReluPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (any) */
  float *y = l->top[0]->data;          /* (any), may be x */
  const size_t n = l->bottom[0]->count;
  const float slope = p->slope;
  for (size_t i = 0; i < n; i++) {
    /* std::max(x, 0) and std::min(x, 0) as Caffe writes them (NaN passes). */
    float mx = x[i] < 0.0f ? 0.0f : x[i];
    float mn = 0.0f < x[i] ? 0.0f : x[i];
    y[i] = mx + slope * mn;
  }
  return 0;
}

static int relu_backward(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  const ReluPriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (any) */
  const float *dy = l->top[0]->diff;   /* (any) */
  float *dx = l->bottom[0]->diff;      /* (any), may be dy */
  const size_t n = l->bottom[0]->count;
  const float slope = p->slope;
  for (size_t i = 0; i < n; i++) dx[i] = dy[i] * ((float)(x[i] > 0) + slope * (float)(x[i] <= 0));
  return 0;
}

#ifdef MOKA_WITH_CUDA
/* CUDA: kernels/relu.cu, the same float operations (bit-identical). */
static int relu_forward_cuda(Layer *l) {
  if (layer_cuda_ready(l, false)) return -1;
  const ReluPriv *p = l->priv;
  return moka_cuda_relu_forward(l->cuda->stream, l->bottom[0]->dev_data, l->top[0]->dev_data,
                                l->bottom[0]->count, p->slope);
}

static int relu_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  if (layer_cuda_ready(l, true)) return -1;
  const ReluPriv *p = l->priv;
  return moka_cuda_relu_backward(l->cuda->stream, l->bottom[0]->dev_data, l->top[0]->dev_diff,
                                 l->bottom[0]->dev_diff, l->bottom[0]->count, p->slope);
}
#endif

const LayerType layer_type_relu = {
    .name = "ReLU",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .in_place_ok = true,
    .priv_size = sizeof(ReluPriv),
    .setup = relu_setup,
    .reshape = relu_reshape,
    .forward = {[MOKA_BACKEND_CPU] = relu_forward,
                [MOKA_BACKEND_CPU_FAST] = relu_forward_fast /* relu_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = relu_backward, [MOKA_BACKEND_CPU_FAST] = relu_backward_fast},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = relu_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = relu_backward_cuda,
#endif
};
