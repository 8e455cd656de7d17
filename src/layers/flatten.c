/* flatten.c — Caffe's Flatten layer, CPU reference: axes [axis, end_axis]
 * (flatten_param, default 1 and -1) become one axis. Forward copies the data,
 * backward copies the diff (Caffe shares the memory; the values are the
 * same). Not in place, as in Caffe.
 */
#include <string.h>

#include "cuda_layer.h"
#include "layer.h"
#include "util.h"

static int flatten_reshape(Layer *l) {
  const Blob *x = l->bottom[0];
  static const Caffe__FlattenParameter def = CAFFE__FLATTEN_PARAMETER__INIT;
  const Caffe__FlattenParameter *fp = l->param->flatten_param ? l->param->flatten_param : &def;
  int start = blob_canonical_axis(x, fp->axis);
  if (start < 0) return moka_error_prefix("flatten_param.axis");
  int end = blob_canonical_axis(x, fp->end_axis);
  if (end < 0) return moka_error_prefix("flatten_param.end_axis");
  if (end + 1 < start)
    return moka_errorf("flatten_param.end_axis %d (axis %d) comes before axis %d (axis %d)",
                       fp->end_axis, end, fp->axis, start);
  int shape[MOKA_MAX_AXES], k = 0;
  for (int i = 0; i < start; i++) shape[k++] = x->shape[i];
  size_t flat = blob_count_range(x, start, end + 1);
  if (flat > (size_t)MOKA_MAX_BLOB_COUNT)
    return moka_errorf("flattened axis of %zu values is too large", flat);
  shape[k++] = (int)flat;
  for (int i = end + 1; i < x->num_axes; i++) shape[k++] = x->shape[i];
  return blob_reshape(l->top[0], k, shape);
}

static int flatten_forward(Layer *l) {
  memcpy(l->top[0]->data, l->bottom[0]->data, l->bottom[0]->count * sizeof(float));
  return 0;
}

static int flatten_backward(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  memcpy(l->bottom[0]->diff, l->top[0]->diff, l->bottom[0]->count * sizeof(float));
  return 0;
}

#ifdef MOKA_WITH_CUDA
static int flatten_forward_cuda(Layer *l) {
  if (layer_cuda_ready(l, false)) return -1;
  return moka_d2d(l->cuda->stream, l->top[0]->dev_data, l->bottom[0]->dev_data,
                  l->bottom[0]->count * sizeof(float));
}

static int flatten_backward_cuda(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  if (layer_cuda_ready(l, true)) return -1;
  return moka_d2d(l->cuda->stream, l->bottom[0]->dev_diff, l->top[0]->dev_diff,
                  l->bottom[0]->count * sizeof(float));
}
#endif

const LayerType layer_type_flatten = {
    .name = "Flatten",
    .min_bottoms = 1,
    .max_bottoms = 1,
    .min_tops = 1,
    .max_tops = 1,
    .reshape = flatten_reshape,
    .forward = {[MOKA_BACKEND_CPU] = flatten_forward, [MOKA_BACKEND_CPU_FAST] = flatten_forward},
    .backward = {[MOKA_BACKEND_CPU] = flatten_backward,
                 [MOKA_BACKEND_CPU_FAST] = flatten_backward},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = flatten_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = flatten_backward_cuda,
#endif
};
