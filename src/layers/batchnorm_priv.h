/* batchnorm_priv.h — the BatchNorm layer's state, shared by the reference (batchnorm.c)
 * and the fast CPU path (batchnorm_fast.c). Internal to src/layers. */
#ifndef MOKA_LAYERS_BATCHNORM_PRIV_H
#define MOKA_LAYERS_BATCHNORM_PRIV_H

#include <math.h>
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
  float *std;           /* (C) sqrt(var + eps) of the last forward; mean | var | std are
                           one block of 3C floats (owned through mean) */
#ifdef MOKA_WITH_CUDA
  DevBuf dev_x_norm;    /* (N,C,S) on the device */
  DevBuf dev_stats;     /* (3C) mean | var | std on the device */
  DevBuf dev_work;      /* (2C) backward's mean(dy) | mean(dy*x_norm) */
#endif
} BatchNormPriv;

/* The fast path's batch statistics of channel ch of x (N,C,S): mean, then
 * the mean squared deviation from it, both summed in double (the fast
 * BatchNorm and the fused chain of src/net_fuse.c share these sums, so they
 * give the same mean and variance). batchnorm_fast.c. */
void bn_fast_channel_stats(const float *x, size_t N, size_t C, size_t S, size_t ch, float eps,
                           float *mean, float *var, float *sd);
/* The same with the AVX-512 loops allowed or not (tests compare the two). */
void bn_fast_channel_stats_with(bool avx512, const float *x, size_t N, size_t C, size_t S,
                                size_t ch, float eps, float *mean, float *var, float *sd);

#endif
