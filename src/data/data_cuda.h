/* data_cuda.h — the CUDA forward of the Data and ImageData layers: device
 * transforms fed from pinned memory (src/data/data_cuda.c; CUDA builds only).
 *
 * On its first forward on a device the layer switches its prefetch pipeline
 * to raw batches (prefetch_set_raw: the CPU only decodes, to uint8, and draws
 * the crops and mirrors in Caffe's order) in page-locked buffers
 * (cudaHostAlloc). Each batch then goes up with ONE cudaMemcpyAsync on a copy
 * stream of its own, into one of two device buffers (double buffering), and
 * kernels/transform.cu turns it into the float top on the net's stream, which
 * waits for the copy's event. At the end of a forward the next batch, if the
 * decode threads have finished it, is already sent up, so that its copy
 * overlaps the rest of the iteration's compute. A pipeline slot goes back to
 * the decode threads only after its copy's event has completed, and a device
 * buffer is overwritten only after the transform that read it has completed
 * (events, no host-side waits on the compute stream).
 *
 * MOKA_DEVICE_TRANSFORM=0 keeps the host path (float batches transformed on
 * the CPU, both tops copied up after the forward): for A/B runs and
 * debugging. With device transforms the labels travel inside the batch (one
 * pinned copy; the kernel writes the label top); on the host path they go up
 * from the host top, as before.
 *
 * In device mode the data top's HOST copy is not written (bring it down with
 * blob_to_host to look at it); the label top's host copy is.
 */
#ifndef MOKA_DATA_CUDA_H
#define MOKA_DATA_CUDA_H

#ifdef MOKA_WITH_CUDA
#include "data/prefetch.h"
#include "data/transform.h"
#include "layer.h"

typedef struct DataCuda DataCuda;

/* The CUDA forward of a Data / ImageData layer: tops (data (N,C,H,W),
 * optional label (N)) on the device from the layer's pipeline. *dc is made
 * on the first call (and stays NULL-safe for the functions below).
 * item_bytes_hint: bytes of one decoded image (for the first buffers), 0 if
 * unknown; raw_ok: 0 when the source cannot give uint8 records (float_data
 * Datums): then the host path is used. */
int data_cuda_forward(DataCuda **dc, Layer *l, Prefetcher *pf, const Transformer *tf,
                      size_t item_bytes_hint, int raw_ok);
/* Before a seek of the pipeline: wait for the copies in flight and hand the
 * held batches back (the batch sent up ahead is dropped). */
int data_cuda_drop(DataCuda *dc, Prefetcher *pf);
/* Teardown, in this order: data_cuda_quiesce (the copies finish), then
 * prefetch_destroy (it frees the pinned buffers through dc's allocator), then
 * data_cuda_free. */
void data_cuda_quiesce(DataCuda *dc);
void data_cuda_free(DataCuda *dc);
/* 1 when the layer's transforms run on the device (after its first CUDA
 * forward), 0 when on the host. */
int data_cuda_on_device(const DataCuda *dc);

#endif
#endif
