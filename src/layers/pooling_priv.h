/* pooling_priv.h — the Pooling layer's state, shared by the reference (pooling.c)
 * and the fast CPU path (pooling_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_POOLING_PRIV_H
#define MOKA_LAYERS_POOLING_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct PoolPriv {
  int method; /* CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX or __AVE */
  bool global, round_floor;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  int num, channels, height, width, out_h, out_w;
  int *argmax;   /* (N,C,PH,PW) MAX only: index h*W+w of each output's maximum */
  size_t argmax_cap;
#ifdef MOKA_WITH_CUDA
  DevBuf dev_argmax; /* (N,C,PH,PW) the same, on the device */
#endif
} PoolPriv;

#endif
