/* conv_winograd.h — Winograd convolution for the fast CPU backend's 3x3,
 * stride-1 convolutions (conv_winograd.c). Internal to src/layers: called
 * from convolution_fast.c's dispatch points only. */
#ifndef MOKA_LAYERS_CONV_WINOGRAD_H
#define MOKA_LAYERS_CONV_WINOGRAD_H

#include <stdbool.h>

#include "convolution_priv.h"
#include "layer.h"

/* Does this layer run forward (backward == false) or its data gradient
 * (backward == true) through Winograd? 3x3, stride 1, dilation 1, group 1,
 * pad 0..2, fp32 precision, MOKA_WINOGRAD not 0, and a shape where it was
 * measured to win (see conv_winograd.c). */
bool conv_winograd_applies(const ConvPriv *p, bool backward);
/* The same as the tile size m of F(m x m, 3 x 3) it would use: 2 or 4, or
 * 0 for the GEMM path. */
int conv_winograd_tile(const ConvPriv *p, bool backward);

/* top (N,OC,OH,OW) of every bottom, bias added: the layer's whole forward. */
int conv_winograd_forward(Layer *l);

/* dx (N,C,H,W) = the data gradient of dy (N,OC,OH,OW) (written, not
 * accumulated, as the reference does). weight (OC,C,3,3). */
int conv_winograd_backward_data(const ConvPriv *p, const float *weight, const float *dy, float *dx);

/* wdiff (OC,C,3,3) += the weight gradient of x (N,C,H,W) and dy
 * (N,OC,OH,OW), with the forward's tile (conv_winograd_applies(p, false)). */
int conv_winograd_backward_weights(const ConvPriv *p, const float *x, const float *dy,
                                   float *wdiff);

#endif
