/* net_bf16.h — bf16 channels-last activations on the CUDA backend (MOKA_BF16_ACT=1 with
 * --precision=bf16; the plan in docs/cuda.md, "bf16 channels-last end to end").
 *
 * Off by default: written without a GPU run; make gpu-check measures it beside the
 * defaults. When on, net_to_device decides once, before any device buffer is made, which
 * activation blobs keep their device copies as bf16 (N, H, W, C) (Blob.dev_bf16): those
 * whose every user can read and write that format --
 *   - Convolutions that kernels/conv_nhwc.cu takes in all three directions (group 1,
 *     channel counts multiples of 8, the data gradient's stride rule; moka's engine, no
 *     bias), which read and write either format;
 *   - fused BatchNorm -> Scale (-> Eltwise) (-> ReLU) chains (kernels/bn_nhwc.cu), whose
 *     input, output and shortcut go together;
 *   - Splits whose backward a chain does (or that need none), with their bottom;
 *   - a global AVE Pooling reading it (its output stays fp32).
 * Every other blob stays fp32 NCHW; a layer that meets a bf16 blob it cannot read stops with
 * an internal error (src/layers/cuda_layer.h), never a silent conversion. Host copies of
 * such blobs (inputs, the loss, diagnostics) convert on the way. */
#ifndef MOKA_NET_BF16_H
#define MOKA_NET_BF16_H

#include <stdbool.h>

#include "net.h"

/* Whether MOKA_BF16_ACT=1 asks for it. */
bool net_bf16_wanted(void);
/* The decision for `net` (its fused-chain plan made): bf16[b] for each of its n_blobs
 * blobs; returns how many are bf16. Pure: reads the net and the layers' capability
 * predicates below, touches nothing (tests call it on the host). */
int net_bf16_decide(const Net *net, bool *bf16);
/* net_to_device's step, and again after a reshape (net_cuda_reshape: a geometry may stop
 * being one the kernels take): when wanted (and the precision is bf16, the backend CUDA),
 * decide and set every blob's dev_bf16, logging how many when that changes; else clear
 * them. 0 / -1 (MOKA_BF16_ACT=1 without --precision=bf16, or on a net with debug_info,
 * whose per-layer lines need the chains run layer by layer, is an error). */
int net_bf16_plan(Net *net);
/* How many of the net's blobs are bf16 channels-last on the device. */
int net_bf16_count(const Net *net);

/* The layers' side (src/layers/convolution.c, pooling.c): whether the layer, as set up
 * (and, for a convolution, with its engine), reads and writes bf16 channels-last blobs. */
/* dgrad: whether the convolution's data gradient runs (its geometry must suit it then). */
bool conv_bf16_nhwc_capable(const Layer *l, bool dgrad);
bool pool_bf16_nhwc_capable(const Layer *l);

#endif
