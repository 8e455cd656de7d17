/* concat_priv.h — the Concat layer's state, shared by the reference (concat.c)
 * and the fast CPU path (concat_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_CONCAT_PRIV_H
#define MOKA_LAYERS_CONCAT_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct ConcatPriv {
  int axis;
  size_t num_concats; /* count(0, axis) */
  size_t inner;       /* count(axis+1, end) */
} ConcatPriv;

#endif
