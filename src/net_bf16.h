/* net_bf16.h — bf16 channels-last activations, on the fast CPU backend (the default with
 * --precision=bf16; MOKA_BF16_ACT=0 turns it off; measured: docs/performance.md, "bf16
 * channels-last on the CPU") and on the CUDA backend (MOKA_BF16_ACT=1 with --precision=bf16;
 * the plan in docs/cuda.md, "bf16 channels-last end to end"; written without a GPU run, off
 * until make gpu-check has measured it).
 *
 * When on, the net decides once (the CPU: at creation and after a reshape,
 * Blob.host_bf16; CUDA: in net_to_device before any device buffer is made, Blob.dev_bf16)
 * which activation blobs hold bf16 (N, H, W, C) values: those whose every user can read and
 * write that format --
 *   - Convolutions the channels-last kernels take in all their directions (CPU:
 *     src/layers/convolution_nhwc.c; CUDA: kernels/conv_nhwc.cu; group 1, no bias, the data
 *     gradient's stride rule), which read and write either format;
 *   - fused BatchNorm -> Scale (-> Eltwise) (-> ReLU) chains (CPU: src/layers/bn_nhwc_cpu.c;
 *     CUDA: kernels/bn_nhwc.cu), whose input, output and shortcut go together;
 *   - Splits whose backward a chain does (or that need none), with their bottom;
 *   - a global AVE Pooling reading it (its output stays fp32).
 * Every other blob stays fp32 NCHW; a layer that meets a bf16 blob it cannot read stops with
 * an internal error (CPU: net_bf16_layer_check; CUDA: src/layers/cuda_layer.h), never a
 * silent conversion. Readers of such blobs outside the layers convert (CPU: blob_host_f32;
 * CUDA: the explicit host copies). */
#ifndef MOKA_NET_BF16_H
#define MOKA_NET_BF16_H

#include <stdbool.h>

#include "net.h"

/* MOKA_BF16_ACT as set: 1 (=1), 0 (any other value), -1 (unset or empty: the default, which
 * is on for the fast CPU backend with --precision=bf16, off on CUDA). */
int net_bf16_setting(void);
/* Whether MOKA_BF16_ACT=1 asks for it. */
bool net_bf16_wanted(void);
/* The decision for `net` (its fused-chain plan made): bf16[b] for each of its n_blobs
 * blobs; returns how many are bf16. Pure: reads the net and the layers' capability
 * predicates below, touches nothing (tests call it on the host). */
int net_bf16_decide(const Net *net, bool *bf16);
/* The decision's step (CPU: net_create and net_reshape; CUDA: net_to_device and
 * net_cuda_reshape: a geometry may stop being one the kernels take): when wanted (and the
 * precision is bf16, the backend the fast CPU or CUDA), decide and set every blob's flag
 * (host_bf16 or dev_bf16), logging how many when that changes; else clear them. 0 / -1
 * (MOKA_BF16_ACT=1 without --precision=bf16, or on a net with debug_info, whose per-layer
 * lines need the chains run layer by layer, is an error; the CPU default just stays fp32
 * with debug_info). */
int net_bf16_plan(Net *net);
/* How many of the net's blobs are bf16 channels-last (on the device, or in memory on the
 * fast CPU backend). */
int net_bf16_count(const Net *net);
/* Fast CPU backend: -1 with moka_errorf when layer l, which cannot read them, has a bf16
 * channels-last bottom or top (net_forward_layer / net_backward_layer ask before running
 * it: never a silent misreading); else 0. */
int net_bf16_layer_check(const Layer *l);

/* The layers' side (src/layers/convolution.c, pooling.c): whether the layer, as set up
 * (and, for a convolution, with its engine), reads and writes bf16 channels-last blobs. */
/* dgrad: whether the convolution's data gradient runs (its geometry must suit it then). */
bool conv_bf16_nhwc_capable(const Layer *l, bool dgrad);
bool pool_bf16_nhwc_capable(const Layer *l);
/* The same on the fast CPU backend (src/layers/convolution_nhwc.c, pooling_fast.c,
 * split_fast.c). A capable pooling's output is bf16 too when pool_cpu_bf16_nhwc_top (MAX),
 * else fp32 (global AVE). A Split sums its tops' bf16 gradients itself. */
bool conv_cpu_bf16_nhwc_capable(const Layer *l, bool dgrad);
bool pool_cpu_bf16_nhwc_capable(const Layer *l);
bool pool_cpu_bf16_nhwc_top(const Layer *l);

#endif
