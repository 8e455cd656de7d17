/* innerproduct_priv.h — the InnerProduct layer's state, shared by the reference (innerproduct.c)
 * and the fast CPU path (innerproduct_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_INNERPRODUCT_PRIV_H
#define MOKA_LAYERS_INNERPRODUCT_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct IpPriv {
  int num_output; /* N */
  bool bias_term, transpose;
  int axis;       /* canonical */
  int M, K;
} IpPriv;

#endif
