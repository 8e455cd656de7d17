/* fast_layers.h — the fast CPU backend's forward/backward functions, one
 * pair per layer type, each in src/layers/<layer>_fast.c; the layer tables
 * (src/layers/<layer>.c) put them in their MOKA_BACKEND_CPU_FAST slots.
 * Internal to src/layers. */
#ifndef MOKA_LAYERS_FAST_LAYERS_H
#define MOKA_LAYERS_FAST_LAYERS_H

#include "layer.h"

int conv_forward_fast(Layer *l);
int conv_backward_fast(Layer *l);
/* The Convolution layers whose input the net may subsample once for several
 * (ConvPriv.sub_x): 1x1, a stride, no pad, one bottom. */
bool conv_fast_subsample_applies(const Layer *l);
/* (N, IC, OH, OW) out = l's input x (N, IC, H, W) at stride: what the layer's
 * GEMMs read (on the pool). */
void conv_fast_subsample(const Layer *l, const float *x, float *out);
int bn_forward_fast(Layer *l);
int bn_backward_fast(Layer *l);
int scale_forward_fast(Layer *l);
int scale_backward_fast(Layer *l);
int relu_forward_fast(Layer *l);
int relu_backward_fast(Layer *l);
int pool_forward_fast(Layer *l);
int pool_backward_fast(Layer *l);
int eltwise_forward_fast(Layer *l);
int eltwise_backward_fast(Layer *l);
int split_forward_fast(Layer *l);
int split_backward_fast(Layer *l);
int ip_forward_fast(Layer *l);
int ip_backward_fast(Layer *l);
int softmax_forward_fast(Layer *l);
int softmax_backward_fast(Layer *l);
int concat_forward_fast(Layer *l);
int concat_backward_fast(Layer *l);
int dropout_forward_fast(Layer *l);
int dropout_backward_fast(Layer *l);

#endif
