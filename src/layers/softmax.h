/* softmax.h — the reference softmax kernels, shared by the Softmax and
 * SoftmaxWithLoss layers (src/layers/softmax.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_SOFTMAX_H
#define MOKA_LAYERS_SOFTMAX_H

#include <stddef.h>

/* y = softmax over the middle axis of x viewed as (outer, channels, inner):
 * max subtracted, exp, divided by the (double-accumulated) sum.
 * y may equal x. */
void softmax_ref_forward(const float *x, float *y, size_t outer, size_t channels,
                         size_t inner);

#endif
