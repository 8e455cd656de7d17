/* batchnorm_priv.h — the BatchNorm layer's state, shared by the reference (batchnorm.c)
 * and the fast CPU path (batchnorm_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_BATCHNORM_PRIV_H
#define MOKA_LAYERS_BATCHNORM_PRIV_H

#include <stdbool.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct BatchNormPriv {
  bool use_global_stats;
  float maf; /* moving_average_fraction */
  float eps;
  int channels;
  size_t num, spatial;  /* N, count/(N*C) */
  float *x_norm;        /* (N,C,spatial) normalised output, for backward */
  size_t x_norm_cap;
  float *mean, *var;    /* (C) statistics used by the last forward */
  float *std;           /* (C) sqrt(var + eps) of the last forward */
#ifdef MOKA_WITH_CUDA
  DevBuf dev_x_norm;    /* (N,C,S) on the device */
  DevBuf dev_stats;     /* (3C) mean | var | std on the device */
  DevBuf dev_work;      /* (2C) backward's mean(dy) | mean(dy*x_norm) */
#endif
} BatchNormPriv;

#endif
