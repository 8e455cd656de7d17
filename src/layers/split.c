/* split.c — Caffe's Split layer, CPU reference: one bottom, N tops holding
 * the same values. Backward SUMS the top diffs into the bottom diff (in
 * Caffe's order: top0 + top1, then + top2, ...): this is how the gradients
 * of a blob with several consumers add up (the net inserts Split layers).
 */
#include <string.h>

#include "cuda_layer.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

static int split_reshape(Layer *l) {
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t] != l->bottom[0] && blob_reshape_like(l->top[t], l->bottom[0])) return -1;
  return 0;
}

static int split_forward(Layer *l) {
  const Blob *x = l->bottom[0];
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t] != x) memcpy(l->top[t]->data, x->data, x->count * sizeof(float));
  return 0;
}

static int split_backward(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  Blob *x = l->bottom[0];
  float *dx = x->diff; /* (any) */
  const size_t n = x->count;
  if (l->top[0] != x) memcpy(dx, l->top[0]->diff, n * sizeof(float));
  for (int t = 1; t < l->n_top; t++) {
    const float *dy = l->top[t]->diff; /* (any) */
    for (size_t i = 0; i < n; i++) dx[i] += dy[i];
  }
  return 0;
}

#ifdef MOKA_WITH_CUDA
/* CUDA: device copies; backward sums in the reference's order (bit-identical). Two tops
 * (the net's own Splits): one pass each way (moka_cuda_split_copy2 / _sum2). */
static int split_forward_cuda(Layer *l) {
  if (layer_cuda_ready(l, false)) return -1;
  const Blob *x = l->bottom[0];
  /* A top whose device data is the bottom's (an in-place top, or the memory plan's
   * Split sharing, src/net_cuda.c) needs no copy. */
  if (x->dev_bf16) { /* MOKA_BF16_ACT: bytes as they are (the tops have the same format) */
    for (int t = 0; t < l->n_top; t++)
      if (l->top[t]->dev_data != x->dev_data &&
          moka_d2d(l->cuda->stream, l->top[t]->dev_data, x->dev_data, x->count * 2))
        return -1;
    return 0;
  }
  if (l->n_top == 2) {
    float *y0 = l->top[0]->dev_data, *y1 = l->top[1]->dev_data;
    return moka_cuda_split_copy2(l->cuda->stream, x->dev_data, y0 != x->dev_data ? y0 : NULL,
                                 y1 != x->dev_data ? y1 : NULL, x->count);
  }
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t]->dev_data != x->dev_data &&
        moka_d2d(l->cuda->stream, l->top[t]->dev_data, x->dev_data, x->count * sizeof(float)))
      return -1;
  return 0;
}

static int split_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  if (layer_cuda_ready(l, true)) return -1;
  cudaStream_t st = l->cuda->stream;
  Blob *x = l->bottom[0];
  const size_t n = x->count;
  if (x->dev_bf16)
    return moka_errorf("internal error: Split '%s' of a bf16 channels-last blob sums its "
                       "gradients itself (the chain before it should)", l->name);
  if (l->n_top == 2 && l->top[0] != x && l->top[1] != x)
    return moka_cuda_split_sum2(st, l->top[0]->dev_diff, l->top[1]->dev_diff, x->dev_diff, n);
  if (l->top[0] != x && moka_d2d(st, x->dev_diff, l->top[0]->dev_diff, n * sizeof(float)))
    return -1;
  for (int t = 1; t < l->n_top; t++)
    if (moka_cuda_eltwise_sum(st, x->dev_diff, l->top[t]->dev_diff, 1.0f, false, n)) return -1;
  return 0;
}
#endif

const LayerType layer_type_split = {
    .name = "Split",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = -1,
    .reshape = split_reshape,
    .forward = {[MOKA_BACKEND_CPU] = split_forward,
                [MOKA_BACKEND_CPU_FAST] = split_forward_fast /* split_fast.c */},
    .backward = {[MOKA_BACKEND_CPU] = split_backward,
                 [MOKA_BACKEND_CPU_FAST] = split_backward_fast},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = split_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = split_backward_cuda,
#endif
};
