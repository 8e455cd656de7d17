/* convolution_priv.h — the Convolution layer's state, shared by the reference
 * (convolution.c) and the fast CPU path (convolution_fast.c). Internal to
 * src/layers. */
#ifndef MOKA_LAYERS_CONVOLUTION_PRIV_H
#define MOKA_LAYERS_CONVOLUTION_PRIV_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "cuda_layer.h"
#include "layer.h"

typedef struct ConvPriv {
  int num_output, group;
  bool bias_term;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  /* From the bottom shape (set in reshape). */
  int num, channels, height, width, out_h, out_w;
  bool is_1x1;   /* 1x1 kernel, stride 1, no pad: the column buffer is the input */
  float *col;    /* (IC*KH*KW, OH*OW) one image's column buffer (reference only) */
  size_t col_cap;
  /* Fast backend, frozen weights (Layer.weights_frozen): the weights packed
   * for moka's fp32 GEMM, and Winograd's transformed weights packed per
   * position (m x m tile: wino_m), made by the first forward. */
  float *wpack;
  float *wino_pack;
  int wino_m;
  int32_t *bf16_wpack; /* the same for the bf16 GEMMs (convolution_bf16.c) */
  int32_t *nhwc_wpack; /* and for the channels-last forward (convolution_nhwc.c) */
  /* Fast backend, stride-1 layers whose output rows are as wide as the
   * input's (convolution_fast.c, shift_prepare): per kernel tap, which of
   * each 16 values of an im2col row (KK, ceil(OH*OW/16)) and of a col2im
   * plane (KK, ceil(H*W/16)) come from inside the image; for the geometry
   * shift_h x shift_w (0: none yet). */
  uint16_t *shift_masks;
  int shift_h, shift_w;
  /* Fast backend, a 1x1 convolution with a stride and no pad (ResNet's
   * downsampling 1x1s): its input already subsampled, (N, IC, OH, OW),
   * when the net keeps one copy for every such layer reading the same blob
   * (net_fuse.c: made once per forward, used by their forwards and weight
   * gradients); set by the net around this layer's forward and backward
   * only, NULL otherwise. Not owned. */
  const float *sub_x;
#ifdef MOKA_WITH_CUDA
  MokaCudnnConv *cudnn_plan; /* engine CUDNN: descriptors and algorithms */
  /* MOKA_CONV_ENGINE=auto (layers at engine DEFAULT): the engine each direction runs
   * (0 moka's, 1 cuDNN), timed at its first run for auto_geom and auto_prec and kept
   * while they stay the same (the zeroed priv's geometry matches none: not yet timed;
   * convolution.c, conv_auto_choose). */
  signed char auto_engine[2];           /* [0] forward, [1] backward */
  MokaConvGeom auto_geom[2];            /* the geometry each choice was made for */
  int auto_prec[2];                     /* and the precision */
#endif
} ConvPriv;

#endif
