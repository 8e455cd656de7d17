/* dropout_priv.h — the Dropout layer's state, shared by the reference (dropout.c)
 * and the fast CPU path (dropout_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_DROPOUT_PRIV_H
#define MOKA_LAYERS_DROPOUT_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct DropoutPriv {
  float ratio;          /* threshold_ */
  float scale;          /* 1 / (1 - ratio), in float */
  unsigned int *mask;   /* (count) 1 = kept, from the last TRAIN forward */
  size_t mask_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_mask;      /* (count) the same mask, copied to the device */
#endif
} DropoutPriv;

#endif
