/* scale_priv.h — the Scale layer's state, shared by the reference (scale.c)
 * and the fast CPU path (scale_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_SCALE_PRIV_H
#define MOKA_LAYERS_SCALE_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct ScalePriv {
  int bias_idx;                      /* index of the bias in l->params, -1 = none */
  size_t outer, scale_dim, inner;    /* x viewed as (outer, scale_dim, inner) */
  size_t b_outer, b_dim, b_inner;    /* x viewed for the bias */
  float *x_copy;                     /* (x shape) input kept when in place */
  size_t x_copy_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_x_copy;                 /* (x shape) the same, on the device */
#endif
} ScalePriv;

#endif
