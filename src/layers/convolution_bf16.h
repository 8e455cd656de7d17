/* convolution_bf16.h — the Convolution layer's bf16 path on the fast CPU
 * backend (convolution_bf16.c), called from convolution_fast.c when the
 * precision is bf16, and the helpers of convolution_fast.c it shares.
 * Internal to src/layers. */
#ifndef MOKA_LAYERS_CONVOLUTION_BF16_H
#define MOKA_LAYERS_CONVOLUTION_BF16_H

#include <stdbool.h>
#include <stddef.h>

#include "convolution_priv.h"
#include "layer.h"

/* The whole forward of the layer in bf16 (every bottom, bias added): 0, -1
 * with moka_errorf, or 1 when this path does not take the layer (no AVX-512
 * BF16, or a chunk of input too large for 32-bit offsets): the caller then
 * runs its own. */
int conv_forward_bf16(Layer *l);

/* Backward of one bottom, bias gradient excepted: wdiff (OC, IC/G, KH, KW)
 * accumulated (NULL: not wanted), dx (N,IC,H,W) written (NULL: not wanted).
 * 0, -1, or 1 (not taken) as conv_forward_bf16. */
int conv_backward_bf16(Layer *l, const float *x, const float *dy, float *dx, float *wdiff);

/* For tests: false makes both return 1, so that the layer runs the older
 * bf16 path (fp32 column buffer, operands rounded by fast_gemm_bf16). */
void conv_bf16_set_direct(bool on);

/* From convolution_fast.c: col (IC*KH*KW, nc*S) = im2col of images [n0,
 * n0+nc) of x (N,IC,H,W); dcol (IC*KH*KW, nc*S) back to images [n0, n0+nc)
 * of dx (col2im, or a copy for 1x1); (OC, nc*S) <-> (nc, OC, S) with bias
 * (may be NULL) added on the way out. par: use the pool. */
void conv_fast_fill_columns(const ConvPriv *p, const float *x, int n0, int nc, float *col,
                            bool par);
void conv_fast_scatter_columns(const ConvPriv *p, const float *dcol, int n0, int nc, float *dx,
                               bool par);
void conv_fast_to_nchw(const float *Y, const float *bias, int OC, size_t S, int nc, float *top,
                       bool par);
void conv_fast_from_nchw(const float *blob, int OC, size_t S, int nc, float *Y, bool par);

#endif
