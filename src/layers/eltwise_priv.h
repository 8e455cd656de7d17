/* eltwise_priv.h — the Eltwise layer's state, shared by the reference (eltwise.c)
 * and the fast CPU path (eltwise_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_ELTWISE_PRIV_H
#define MOKA_LAYERS_ELTWISE_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct EltwisePriv {
  Caffe__EltwiseParameter__EltwiseOp op;
  float *coeff;       /* (n_bottom) */
  bool stable_prod_grad;
  int *argmax;        /* (count) winning bottom per element (MAX) */
  size_t argmax_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_argmax;  /* (count) the same, on the device */
#endif
} EltwisePriv;

#endif
