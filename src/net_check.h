/* net_check.h — numerical checks on a net: finiteness scans, locating the
 * first layer that produced a non-finite value, and Caffe's debug_info lines.
 *
 * Finiteness. The solver checks the loss of every forward pass (a scalar)
 * and the parameter gradients once per iteration (moka_all_finite over the
 * flat gradient buffer: one streaming pass, no allocation). Only when one of
 * them is not finite does it call the locators below, which run the pass
 * again layer by layer and look at every value each layer wrote:
 *
 *   net_locate_forward_fault: the tops of source layers (no bottoms: their
 *     values are still those of the failed pass, so a bad input is named
 *     and no new batch is read), then forward again from the first layer
 *     with bottoms, checking each layer's tops after its forward. In-place
 *     layers rewrite their bottom, so only this replay (not a scan of the
 *     blobs afterwards) says which layer of conv -> BatchNorm -> Scale ->
 *     ReLU (one blob) produced the value. Parameters (BatchNorm's running
 *     statistics move in TRAIN forward) are put back as they were. When
 *     every value is finite, a loss top whose weighted sum is not (a huge
 *     loss_weight) is named.
 *   net_locate_backward_fault: clears the parameter gradients and runs
 *     backward again from the loss, checking after each layer its parameter
 *     gradients, then its bottom diffs; the first layer found (going
 *     backward, so the one that produced the value) is named. The forward
 *     state is that of the last micro-batch (iter_size > 1: an earlier one
 *     may have caused it; then nothing is found).
 *
 * Both change blob values (and gradients) of the net: call them only when
 * the step has failed. CUDA nets: the values are copied down to be read.
 *
 * debug_info (Caffe's Net::ForwardDebugInfo / BackwardDebugInfo /
 * Backward's summary / UpdateDebugInfo), each value the mean absolute value
 * asum / count:
 *   [Forward] Layer conv1, top blob conv1 data: 0.123
 *   [Forward] Layer conv1, param blob 0 data: 0.0456
 *   [Backward] Layer conv1, bottom blob data diff: 1.2e-05
 *   [Backward] Layer conv1, param blob 0 diff: 3.4e-06
 *   [Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)
 *     (Caffe logs this one at ERROR level, moka at INFO)
 *   [Update] Layer conv1, param 0 data: 0.0456; diff: 1.7e-07
 * ("param blob 0" in [Forward] and "param 0" in [Update] use the ParamSpec's
 * name when it has one, as Caffe's param_display_names_; [Backward] always
 * uses the index.) net_forward / net_backward print them for a net whose
 * `debug_info` is set; the solver prints the [Update] lines.
 */
#ifndef MOKA_NET_CHECK_H
#define MOKA_NET_CHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "net.h"

/* true when none of x[0..n) is NaN or infinite (one pass, threaded for
 * large n, vectorised: sum of x - x, which is 0 for finite values). */
bool moka_all_finite(const float *x, size_t n);
/* Index of the first NaN or infinity in x[0..n), or n. */
size_t moka_first_nonfinite(const float *x, size_t n);

/* "%g" of v, but "nan" for every NaN (printf writes "-nan" for some). */
const char *moka_float_text(float v, char buf[32]);

/* Where a non-finite value was found. */
typedef enum NetFaultKind {
  NET_FAULT_NONE = 0,     /* not found */
  NET_FAULT_TOP_DATA,     /* forward: top `index` of `layer` */
  NET_FAULT_LOSS_WEIGHT,  /* forward: top `index` is finite, times its loss_weight it is not */
  NET_FAULT_PARAM_DIFF,   /* backward: gradient of param blob `index` */
  NET_FAULT_BOTTOM_DIFF   /* backward: diff of bottom `index` */
} NetFaultKind;

typedef struct NetFault {
  NetFaultKind kind;
  int layer;       /* layer index (-1 when not found) */
  int index;       /* top / param / bottom index in the layer */
  size_t at;       /* first non-finite element */
  size_t count;    /* elements of that blob */
  float value;     /* its value (nan, inf or -inf) */
} NetFault;

/* See above. 0 (f->kind NET_FAULT_NONE when nothing was found) or -1 when
 * the replay itself failed. */
int net_locate_forward_fault(Net *net, NetFault *f);
int net_locate_backward_fault(Net *net, NetFault *f);
/* One sentence naming the layer, its type, the blob and the value, e.g.
 * "the first layer whose output is not finite is 'conv1' (Convolution): its
 * top blob 'conv1' holds nan at element 17 of 2048". */
void net_fault_describe(const Net *net, const NetFault *f, char *buf, size_t n);

/* The first parameter blob (net order) whose data (diff when `diff`) holds a
 * non-finite value: its index in net->params, or -1. *at gets the element.
 * Reads the host copies. */
int net_first_nonfinite_param(const Net *net, bool diff, size_t *at);

/* debug_info lines for layer i after its forward / backward, the summary
 * after a whole backward pass, and the [Update] line of parameter p (its
 * diff being the update value about to be subtracted). */
void net_debug_forward(Net *net, int i);
void net_debug_backward(Net *net, int i);
void net_debug_backward_summary(Net *net);
void net_debug_update(const Net *net, int p);

#endif
