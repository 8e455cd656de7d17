/* input.c — Caffe's Input layer (reference; there is nothing to compute).
 *
 * No bottoms; the tops are shaped once, at setup, from input_param.shape:
 * one shape for every top, one shape per top, or none (the caller shapes
 * them). As in Caffe, reshape() leaves the tops alone, so that whoever fills
 * the input blobs may reshape them and the net reshapes the layers above.
 * Forward and backward do nothing: the caller writes the data.
 */
#include <limits.h>

#include "layer.h"
#include "util.h"

static int input_setup(Layer *l) {
  const Caffe__InputParameter *p = l->param->input_param;
  int n_shape = p ? (int)p->n_shape : 0;
  if (n_shape != 0 && n_shape != 1 && n_shape != l->n_top)
    return moka_errorf("input_param must give 'shape' once, once per top blob, or not at all: "
                       "%d tops vs. %d shapes",
                       l->n_top, n_shape);
  if (n_shape == 0) return 0;
  for (int t = 0; t < l->n_top; t++) {
    const Caffe__BlobShape *s = p->shape[n_shape == 1 ? 0 : t];
    if (s->n_dim > MOKA_MAX_AXES)
      return moka_errorf("input_param.shape %d has %zu dims; at most %d are supported",
                         n_shape == 1 ? 0 : t, s->n_dim, MOKA_MAX_AXES);
    int dims[MOKA_MAX_AXES];
    for (size_t i = 0; i < s->n_dim; i++) {
      if (s->dim[i] < 0 || s->dim[i] > INT_MAX)
        return moka_errorf("input_param.shape %d: dim %zu = %lld is out of range",
                           n_shape == 1 ? 0 : t, i, (long long)s->dim[i]);
      dims[i] = (int)s->dim[i];
    }
    if (blob_reshape(l->top[t], (int)s->n_dim, dims)) return -1;
  }
  return 0;
}

static int input_nothing(Layer *l) { return 0; }

const LayerType layer_type_input = {
    .name = "Input",
    .min_bottoms = 0,
    .max_bottoms = 0,
    .min_tops = 1,
    .max_tops = -1,
    .setup = input_setup,
    .reshape = NULL,
    .forward = {[MOKA_BACKEND_CPU] = input_nothing, [MOKA_BACKEND_CPU_FAST] = input_nothing},
    .backward = {[MOKA_BACKEND_CPU] = input_nothing, [MOKA_BACKEND_CPU_FAST] = input_nothing},
};
