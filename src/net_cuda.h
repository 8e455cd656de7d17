/* net_cuda.h — a Net on a CUDA device (src/net_cuda.c; CUDA builds only).
 *
 * net_to_device gives every blob device memory (dev_data/dev_diff; in-place
 * blobs are one Blob and so share it): its own buffers, or views into one
 * arena laid out by the memory plan (src/net_memplan.h; net.h's
 * plan_device_memory says which), puts all parameters, gradients and
 * SGD momentum in one flat device buffer each (net->dev_param_data,
 * dev_param_diff, dev_history; the parameter blobs' dev pointers are views
 * into them), copies the parameters up, and points every layer at the
 * net's MokaCuda context. From then on net_forward/net_backward run the
 * layers' CUDA implementations.
 *
 * Copies between host and device are explicit calls below. The only ones
 * the net makes by itself, both documented in net.h: the tops of source
 * layers (no bottoms: Input, Data, DummyData, ImageData), which run on the
 * host, go up after their forward; and loss tops (scalars) come down after
 * their forward so that net_forward can return the loss (their top diff,
 * the loss weight, goes up before backward).
 */
#ifndef MOKA_NET_CUDA_H
#define MOKA_NET_CUDA_H

#include <stdbool.h>

#include "net.h"

/* The memory plan for every net put on a device from now on whose
 * plan_device_memory is not set (net.h; default off, so that API users can
 * read every blob as in Caffe). The CLI's time/train/test turn it on. In
 * every build (a no-op without CUDA). */
void net_cuda_plan_memory_by_default(bool on);

#ifdef MOKA_WITH_CUDA
#include "moka_cuda.h"

/* Move the net to CUDA device `device` (see above) and set its backend to
 * MOKA_BACKEND_CUDA. Logs the device memory it took. 0 / -1. */
int net_to_device(Net *net, int device);
/* Free everything net_to_device allocated (net_free calls it before freeing
 * the layers, which free their own device scratch); the net is then a CPU
 * net again, except for its backend field. */
void net_cuda_free(Net *net);

/* Parameters (the flat buffer) host -> device / device -> host. */
int net_params_to_device(Net *net);
int net_params_to_host(Net *net);
/* Parameter gradients device -> host (for tests, snapshots of diffs) and
 * host -> device (the solver's host update path). */
int net_param_diffs_to_host(Net *net);
int net_param_diffs_to_device(Net *net);
/* SGD momentum (param_count floats) device <-> host (solverstates). */
int net_history_to_host(Net *net, float *dst);
int net_history_to_device(Net *net, const float *src);
/* The tops of every source layer (no bottoms) host -> device. */
int net_inputs_to_device(Net *net);

/* One blob's data / diff between host and device (the blob must have
 * device memory). */
int blob_to_device(MokaCuda *c, Blob *b);
int blob_to_host(MokaCuda *c, Blob *b);
int blob_diff_to_device(MokaCuda *c, Blob *b);
int blob_diff_to_host(MokaCuda *c, Blob *b);
/* Give a blob its own device memory for count floats of data (and of diff
 * when with_diff), kept in dev_capacity; grows, never shrinks. `what` names
 * the blob's user in an out-of-memory message. */
int blob_alloc_device(Blob *b, bool with_diff, const char *what);
void blob_free_device(Blob *b);

/* What net.c's net_forward_layer / net_backward_layer do on CUDA. */
int net_cuda_forward_layer(Net *net, int i);
int net_cuda_backward_layer(Net *net, int i);
/* After net_reshape: grow the device blobs that no longer fit. */
int net_cuda_reshape(Net *net);
/* Zero the device gradients. */
int net_cuda_clear_param_diffs(Net *net);
/* Caffe's SGD update on the device over the flat buffers (kernels/sgd.cu):
 * per parameter blob i, local_rate = rate * lr_mult[i], local_decay =
 * weight_decay * decay_mult[i]. l1: L1 regularisation (else L2). */
int net_cuda_sgd_update(Net *net, float rate, float momentum, float weight_decay, bool l1,
                        int iter_size);
/* Caffe's NesterovSolver update, the same way (kernels/nesterov.cu). */
int net_cuda_nesterov_update(Net *net, float rate, float momentum, float weight_decay, bool l1,
                             int iter_size);
/* Device memory taken since the context was made (cudaMemGetInfo), now and
 * the largest seen by any call; logs both when `log` is set. */
int net_cuda_memory(Net *net, size_t *now_bytes, size_t *peak_bytes, bool log);

#endif /* MOKA_WITH_CUDA */
#endif
