/* data_cuda.c — the CUDA forward of the Data and ImageData layers: uint8
 * batches from pinned memory, copied on a stream of their own and
 * transformed on the device (see data_cuda.h; the kernel is
 * kernels/transform.cu, the host half src/data/prefetch.c's raw mode).
 *
 * Per forward k (buffer j = k % 2 of the two device copies raw[0..1]):
 *
 *   stage(k)     take batch k from the pipeline (waiting if needed); on the
 *                copy stream: wait consumed[j] (the transform of batch k-2,
 *                which read raw[j], is done), cudaMemcpyAsync pinned ->
 *                raw[j], record copied[j]
 *   transform    on the net's stream: wait copied[j], transform kernel
 *                raw[j] -> data top (and the label top, from the items),
 *                record consumed[j]
 *   stage(k+1)   if batch k+1 is already decoded, send it up now: its copy
 *                runs while the net computes iteration k
 *
 * A taken slot is handed back to the decode threads (prefetch_raw_release)
 * only when copied[] of its copy has completed: with threads, as soon as an
 * event query says so, at the latest before its buffer is staged again;
 * without threads (one slot) before the next batch is taken.
 */
#ifdef MOKA_WITH_CUDA

#include "data/data_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "layers/cuda_layer.h"
#include "moka_cuda.h"
#include "net_cuda.h"
#include "util.h"

enum { MODE_HOST = 1, MODE_DEVICE = 2 };

struct DataCuda {
  int mode;
  int device;
  cudaStream_t copy;         /* the H2D copies of the raw batches */
  cudaEvent_t copied[2];     /* copy into raw[j] done */
  cudaEvent_t consumed[2];   /* transform that read raw[j] done */
  DevBuf raw[2];             /* device copies of raw batches */
  PrefetchRawBatch batch[2]; /* the batch in raw[j] */
  int held[2];               /* batch[j]'s pipeline slot is not yet handed back */
  int staged;                /* batch k is in (or on its way to) raw[k % 2] */
  uint64_t k;                /* batches transformed */
  float *mean;               /* (C,H,W) mean file on the device, or NULL */
  float *mean_values;        /* [n] on the device, or NULL */
  char what[320];
};

int data_cuda_on_device(const DataCuda *dc) { return dc && dc->mode == MODE_DEVICE; }

/* ---- pinned memory for the pipeline's slots ------------------------------------------------- */

static void *pinned_alloc(void *ctx, size_t bytes) {
  DataCuda *dc = ctx;
  void *p = NULL;
  /* the decode threads call this too: bind them to the net's device, or the
   * runtime would make a context on device 0 */
  cudaError_t e = cudaSetDevice(dc->device);
  if (e == cudaSuccess) e = cudaHostAlloc(&p, bytes ? bytes : 64, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    moka_errorf("%s: cannot allocate %zu bytes of page-locked host memory for a raw batch: %s",
                dc->what, bytes, cudaGetErrorString(e));
    return NULL;
  }
  return p;
}

static void pinned_free(void *ctx, void *p) {
  (void)ctx;
  if (p) cudaFreeHost(p);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int want_device_transform(void) {
  const char *e = getenv("MOKA_DEVICE_TRANSFORM");
  return !(e && !strcmp(e, "0"));
}

static int setup_device(DataCuda *dc, Layer *l, Prefetcher *pf, const Transformer *tf,
                        size_t hint) {
  MOKA_CUDA_CHECK(cudaStreamCreateWithFlags(&dc->copy, cudaStreamNonBlocking));
  for (int j = 0; j < 2; j++) {
    MOKA_CUDA_CHECK(cudaEventCreateWithFlags(&dc->copied[j], cudaEventDisableTiming));
    MOKA_CUDA_CHECK(cudaEventCreateWithFlags(&dc->consumed[j], cudaEventDisableTiming));
  }
  if (tf->mean) {
    const size_t n = (size_t)tf->mean_c * tf->mean_h * tf->mean_w;
    if (moka_dev_alloc((void **)&dc->mean, n * sizeof(float), "the transform's mean file") ||
        moka_h2d(l->cuda->stream, dc->mean, tf->mean, n * sizeof(float)))
      return -1;
  }
  if (tf->n_mean_values) {
    const size_t n = (size_t)tf->n_mean_values;
    if (moka_dev_alloc((void **)&dc->mean_values, n * sizeof(float),
                       "the transform's mean_value") ||
        moka_h2d(l->cuda->stream, dc->mean_values, tf->mean_values, n * sizeof(float)))
      return -1;
  }
  /* the uploads above read host memory that stays; wait anyway so that a
   * fault is reported here */
  MOKA_CUDA_CHECK(cudaStreamSynchronize(l->cuda->stream));
  PrefetchRawAlloc a = {pinned_alloc, pinned_free, dc, hint};
  if (prefetch_set_raw(pf, &a) != 0) return -1;
  LOG_INFO(
      "%s: transforms on the device: uint8 batches from page-locked memory, copied on their "
      "own stream (MOKA_DEVICE_TRANSFORM=0 transforms on the host)",
      dc->what);
  return 0;
}

static int data_cuda_create(DataCuda **out, Layer *l, Prefetcher *pf, const Transformer *tf,
                            size_t hint, int raw_ok) {
  DataCuda *dc = moka_calloc(1, sizeof *dc);
  if (!dc) return -1;
  *out = dc;
  dc->device = l->cuda->device;
  snprintf(dc->what, sizeof dc->what, "layer '%s' (%s)", l->name, l->type->name);
  if (!want_device_transform()) {
    dc->mode = MODE_HOST;
    LOG_INFO("%s: MOKA_DEVICE_TRANSFORM=0: transforms on the host", dc->what);
    return 0;
  }
  if (!raw_ok) {
    dc->mode = MODE_HOST;
    LOG_INFO("%s: the records hold float_data: transforms on the host", dc->what);
    return 0;
  }
  if (setup_device(dc, l, pf, tf, hint) != 0) return moka_error_prefix("%s", dc->what);
  dc->mode = MODE_DEVICE; /* (a failed setup leaves 0: every forward then fails) */
  return 0;
}

/* ---- the copy of a batch ----------------------------------------------------------------------
 */

/* Hand held slots back: buffer `must` (and every buffer when the pipeline
 * has one slot) after waiting for its copy; the other when its copy is done. */
static int release_slots(DataCuda *dc, Prefetcher *pf, int must) {
  for (int b = 0; b < 2; b++) {
    if (!dc->held[b]) continue;
    if (b == must || must < 0 || prefetch_threads(pf) == 0) {
      MOKA_CUDA_CHECK(cudaEventSynchronize(dc->copied[b]));
    } else {
      cudaError_t e = cudaEventQuery(dc->copied[b]);
      if (e == cudaErrorNotReady) continue;
      if (e != cudaSuccess) return moka_cuda_fail((int)e, "cudaEventQuery", __FILE__, __LINE__);
    }
    prefetch_raw_release(pf, &dc->batch[b]);
    dc->held[b] = 0;
  }
  return 0;
}

/* Send batch k up into raw[k % 2]. 0: staged; 1: not ready (wait == 0); -1. */
static int stage(DataCuda *dc, Prefetcher *pf, int wait) {
  if (dc->staged) return 0;
  const int j = (int)(dc->k % 2);
  if (release_slots(dc, pf, j) != 0) return -1;
  PrefetchRawBatch b;
  int rc = prefetch_raw_take(pf, wait, &b);
  if (rc != 0) return rc;
  dc->batch[j] = b;
  dc->held[j] = 1;
  if (b.n_bytes > dc->raw[j].bytes) {
    /* grow (rare: a larger batch than any before); the old buffer may still
     * be read by the transform of batch k-2 */
    MOKA_CUDA_CHECK(cudaEventSynchronize(dc->consumed[j]));
    if (moka_devbuf_reserve(&dc->raw[j], b.n_bytes + b.n_bytes / 4, "a raw data batch")) return -1;
  }
  MOKA_CUDA_CHECK(cudaStreamWaitEvent(dc->copy, dc->consumed[j], 0));
  MOKA_CUDA_CHECK(
      cudaMemcpyAsync(dc->raw[j].ptr, b.bytes, b.n_bytes, cudaMemcpyHostToDevice, dc->copy));
  MOKA_CUDA_CHECK(cudaEventRecord(dc->copied[j], dc->copy));
  dc->staged = 1;
  return 0;
}

/* ---- the forward ---------------------------------------------------------------------------- */

/* Device memory for b's `count` floats: its own buffer grows when needed;
 * a view the net's memory plan made is kept while the count does not grow. */
static int ensure_device(Blob *b, size_t old_count, const char *what) {
  if (b->dev_data && b->count <= (b->dev_capacity ? b->dev_capacity : old_count)) return 0;
  return blob_alloc_device(b, b->dev_diff != NULL, what);
}

/* Shape b to (n, c, h, w) (or (n) when c < 0) with device memory for it. */
static int shape_top(Blob *b, int n, int c, int h, int w, const char *what) {
  const size_t old = b->count;
  int rc;
  if (c < 0) {
    int shape[1] = {n};
    rc = blob_reshape(b, 1, shape);
  } else {
    rc = blob_reshape4(b, n, c, h, w);
  }
  if (rc) return -1;
  return ensure_device(b, old, what);
}

static int forward_host(DataCuda *dc, Layer *l, Prefetcher *pf) {
  Blob *label = l->n_top > 1 ? l->top[1] : NULL;
  size_t old[2] = {l->top[0]->count, label ? label->count : 0};
  if (prefetch_next(pf, l->top[0], label) != 0) return -1;
  for (int t = 0; t < l->n_top && t < 2; t++) {
    if (ensure_device(l->top[t], old[t], dc->what) || blob_to_device(l->cuda, l->top[t])) return -1;
  }
  return 0;
}

static int forward_device(DataCuda *dc, Layer *l, Prefetcher *pf, const Transformer *tf) {
  cudaStream_t s = l->cuda->stream;
  if (stage(dc, pf, 1) != 0) return -1;
  const int j = (int)(dc->k % 2);
  const PrefetchRawBatch *b = &dc->batch[j];
  Blob *top = l->top[0];
  if (shape_top(top, b->batch, b->c, b->h, b->w, dc->what)) return -1;
  MokaTransformParams p = {.num = b->batch,
                           .channels = b->c,
                           .out_h = b->h,
                           .out_w = b->w,
                           .scale = tf->scale,
                           .mean = dc->mean,
                           .mean_h = tf->mean_h,
                           .mean_w = tf->mean_w,
                           .mean_values = dc->mean_values,
                           .n_mean_values = tf->n_mean_values};
  Blob *label = l->n_top > 1 ? l->top[1] : NULL;
  if (label && shape_top(label, b->batch, -1, 0, 0, dc->what)) return -1;
  MOKA_CUDA_CHECK(cudaStreamWaitEvent(s, dc->copied[j], 0));
  if (moka_cuda_transform(s, &p, dc->raw[j].ptr, top->dev_data, label ? label->dev_data : NULL))
    return -1;
  MOKA_CUDA_CHECK(cudaEventRecord(dc->consumed[j], s));
  /* the labels went up inside the batch (items[i].label); the host copy too */
  if (label) memcpy(label->data, b->labels, (size_t)b->batch * sizeof(float));
  dc->k++;
  dc->staged = 0;
  /* overlap: send the next batch up now if it is decoded; an error in it is
   * reported by the next forward, which takes it again */
  if (stage(dc, pf, 0) < 0) moka_error_clear();
  return 0;
}

int data_cuda_forward(DataCuda **dcp, Layer *l, Prefetcher *pf, const Transformer *tf,
                      size_t item_bytes_hint, int raw_ok) {
  if (layer_cuda_ready(l, false)) return -1;
  if (!*dcp && data_cuda_create(dcp, l, pf, tf, item_bytes_hint, raw_ok) != 0) return -1;
  DataCuda *dc = *dcp;
  if (!dc->mode) return moka_errorf("%s: the device transforms failed to set up", dc->what);
  return dc->mode == MODE_DEVICE ? forward_device(dc, l, pf, tf) : forward_host(dc, l, pf);
}

/* ---- seek and teardown ---------------------------------------------------------------------- */

int data_cuda_drop(DataCuda *dc, Prefetcher *pf) {
  if (!dc || dc->mode != MODE_DEVICE) return 0;
  MOKA_CUDA_CHECK(cudaStreamSynchronize(dc->copy));
  if (release_slots(dc, pf, -1) != 0) return -1;
  dc->staged = 0;
  return 0;
}

void data_cuda_quiesce(DataCuda *dc) {
  if (!dc) return;
  if (dc->copy) cudaStreamSynchronize(dc->copy);
  for (int j = 0; j < 2; j++)
    if (dc->consumed[j]) cudaEventSynchronize(dc->consumed[j]);
}

void data_cuda_free(DataCuda *dc) {
  if (!dc) return;
  data_cuda_quiesce(dc);
  for (int j = 0; j < 2; j++) {
    if (dc->copied[j]) cudaEventDestroy(dc->copied[j]);
    if (dc->consumed[j]) cudaEventDestroy(dc->consumed[j]);
    moka_devbuf_free(&dc->raw[j]);
  }
  if (dc->copy) cudaStreamDestroy(dc->copy);
  moka_dev_free(dc->mean);
  moka_dev_free(dc->mean_values);
  free(dc);
}

#endif /* MOKA_WITH_CUDA */
