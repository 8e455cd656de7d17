/* convolution_nhwc.h — the Convolution layer on bf16 channels-last blobs
 * (fast CPU backend, --precision=bf16; convolution_nhwc.c). Internal to
 * src/layers and the net's bf16 plan (src/net_bf16.c). */
#ifndef MOKA_LAYERS_CONVOLUTION_NHWC_H
#define MOKA_LAYERS_CONVOLUTION_NHWC_H

#include <stdbool.h>

#include "layer.h"

/* Whether the layer, as set up, can read and write bf16 channels-last blobs
 * on this CPU (dgrad: whether its data gradient runs). */
bool conv_cpu_bf16_nhwc_capable(const Layer *l, bool dgrad);
/* Whether its bottom or top is such a blob now (conv_forward_fast and
 * conv_backward_fast then run the two below). */
bool conv_nhwc_in_use(const Layer *l);
int conv_forward_nhwc(Layer *l);
int conv_backward_nhwc(Layer *l);

#endif
