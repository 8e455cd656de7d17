/* softmax_priv.h — the Softmax layer's state, shared by the reference (softmax.c)
 * and the fast CPU path (softmax_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_SOFTMAX_PRIV_H
#define MOKA_LAYERS_SOFTMAX_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct SoftmaxPriv {
  size_t outer, channels, inner; /* x viewed as (outer, C, inner) */
} SoftmaxPriv;

#endif
