/* prefetch.h — the data layers' prefetch pipeline: one reader thread and N
 * decode/transform threads fill a bounded queue of batches while the net
 * computes, so that a forward only copies a finished batch out.
 *
 *   reader thread   walks the source in order (an LMDB cursor, a list of
 *                   files), hands each record to the workers, and takes the
 *                   record's random numbers for the transform
 *   N workers       decode + transform one record each into its place in
 *                   the batch buffer
 *   forward (main)  waits for the oldest batch, copies it into the tops,
 *                   hands the buffer back to the reader
 *
 * Results are IDENTICAL to the synchronous path (src/data/reader.c, the
 * reference), whatever N and the timing: records in the same order, the
 * same crops and mirrors. Randomness: the transform's draws are the ONE
 * sequential stream Caffe has (the DataTransformer's mt19937, seeded at
 * setup as Caffe seeds it): the reader thread takes each record's draws
 * (mirror coin, h_off, w_off — transform_draws_per_record, a count that does
 * not depend on the image) from that stream in record order and passes them
 * with the record; workers never touch the stream. Caffe's draw order is
 * thus kept exactly; it also makes seeking (prefetch_seek) exact: record r's
 * draws are draws r*k .. r*k+k-1 of the stream.
 *
 * Memory is bounded: `depth` batch buffers (batch x C x H x W floats each)
 * that are reused (a buffer grows only when a batch is larger than any
 * before it), plus one decode buffer per worker; nothing depends on the
 * dataset's size. Batch buffers are allocated through data_alloc_host /
 * data_free_host, which the CUDA backend can point at cudaHostAlloc /
 * cudaFreeHost (pinned memory for asynchronous copies).
 *
 * Errors in a worker or in the reader (an undecodable record, a record
 * whose size differs from its batch's first one, ...) are reported by the
 * forward that reaches that batch, on the main thread, naming the record;
 * the error is then sticky (every later forward repeats it) and nothing
 * ever waits forever. prefetch_destroy stops and joins every thread.
 *
 * Threads: MOKA_DATA_THREADS=N (0 = no threads: the forward runs the same
 * steps itself), default min(4, number of CPUs).
 *
 * Raw mode (prefetch_set_raw; the CUDA Data/ImageData forward,
 * src/data/data_cuda.c): the workers decode each record to uint8 (C,H,W)
 * and do NOT transform it; each slot is one buffer from the caller's
 * allocator (pinned memory), laid out as src/data/raw_batch.h says: the
 * per-image parameters (size, crop offset, mirror flag — taken from the same
 * draws, so the same crops and mirrors as the float path) and the images.
 * A batch is taken (prefetch_raw_take) and handed back (prefetch_raw_release)
 * separately, so that its slot is not refilled while an asynchronous copy
 * still reads it.
 */
#ifndef MOKA_PREFETCH_H
#define MOKA_PREFETCH_H

#include <stddef.h>
#include <stdint.h>

#include "blob.h"
#include "data/datum.h"
#include "data/transform.h"
#include "rng.h"

/* Pinned-memory hooks: every batch buffer is allocated and freed through
 * these (default: 64-byte aligned host memory). Replace both, before any
 * data layer is set up, to use page-locked memory. */
extern void *(*data_alloc_host)(size_t bytes);
extern void (*data_free_host)(void *p);

/* One record as the reader hands it to a worker. */
typedef struct PrefetchItem {
  const void *key;   /* for messages: the LMDB key / the listed path */
  size_t key_len;
  const void *val;   /* LMDB: the Datum's bytes (valid while the source is open) */
  size_t val_len;
  int line;          /* list files: the 1-based line */
  float label;       /* list files: from the list; LMDB: set by decode */
  uint32_t draws[TRANSFORM_MAX_DRAWS]; /* the transform's random numbers */
} PrefetchItem;

/* What a data layer plugs into the pipeline. */
typedef struct PrefetchSource {
  void *ctx;
  /* Reader thread: fill `it` with the next record and move on (wrapping
   * around at the end). */
  int (*next)(void *ctx, PrefetchItem *it);
  /* Worker threads (several at once): decode `it` into px (C,H,W floats,
   * reused between calls) and set it->label when the record holds it. */
  int (*decode)(void *ctx, PrefetchItem *it, DatumPixels *px);
  /* "LMDB 'x', record 'k'": names a record in messages. */
  void (*describe)(void *ctx, const PrefetchItem *it, char *buf, size_t len);
  /* Main thread, no other thread running: position the source so that the
   * next record is the one `record_index` records after its start. */
  int (*seek)(void *ctx, uint64_t record_index);
  /* Raw mode only (may be NULL: then the source has no raw mode): like
   * decode, to uint8 (C,H,W) pixels. */
  int (*decode_u8)(void *ctx, PrefetchItem *it, DatumBytes *px);
} PrefetchSource;

typedef struct PrefetchConfig {
  const char *what;       /* "layer 'data'" for messages */
  int batch_size;
  int depth;              /* batches in the queue (data_param.prefetch, >= 1) */
  int threads;            /* decode threads; 0 = synchronous */
  const Transformer *tf;  /* shared read-only by the workers */
  const Rng *rng;         /* the transform's stream as set up; NULL when it
                             draws nothing */
} PrefetchConfig;

typedef struct Prefetcher Prefetcher;

/* MOKA_DATA_THREADS when set (0..64), else min(4, online CPUs). */
int prefetch_default_threads(void);

/* Start the pipeline (its threads start filling at once). The source must
 * stay valid until prefetch_destroy. */
int prefetch_create(const PrefetchConfig *cfg, const PrefetchSource *src, Prefetcher **out);
/* The next batch: data is reshaped to (batch, C, H, W) from the batch's
 * first record, as Caffe does; label (may be NULL) to (batch). */
int prefetch_next(Prefetcher *p, Blob *data, Blob *label);
/* Stop, reposition source and random stream at `record_index` records after
 * the start, restart. The next batch is exactly the one an uninterrupted run
 * would give at that record. */
int prefetch_seek(Prefetcher *p, uint64_t record_index);
/* Records handed out by prefetch_next since the start (or the last seek
 * position, counted from the start). */
uint64_t prefetch_position(const Prefetcher *p);
/* Seconds prefetch_next spent waiting for batches not yet ready (the time
 * the net waited on data), since creation. */
double prefetch_wait_seconds(const Prefetcher *p);
int prefetch_threads(const Prefetcher *p);
/* ---- raw mode ------------------------------------------------------------------------- */

/* Where raw batch buffers come from (pinned memory: cudaHostAlloc). alloc
 * may be called from the decode threads; ctx must outlive the prefetcher. */
typedef struct PrefetchRawAlloc {
  void *(*alloc)(void *ctx, size_t bytes); /* NULL + moka_errorf on failure */
  void (*free)(void *ctx, void *p);
  void *ctx;
  size_t item_bytes_hint; /* bytes of one decoded image (first buffer size), 0 = unknown */
} PrefetchRawAlloc;

/* Switch the pipeline to raw batches from the next batch on: stops the
 * threads, drops the batches made ahead, and restarts at the same position
 * (prefetch_position) with the same random stream, so the batches that
 * follow are the ones the float path would have given, as raw batches.
 * Errors: the source has no raw mode. */
int prefetch_set_raw(Prefetcher *p, const PrefetchRawAlloc *alloc);
int prefetch_is_raw(const Prefetcher *p);

/* One raw batch (raw_batch.h). Valid until prefetch_raw_release. */
typedef struct PrefetchRawBatch {
  const uint8_t *bytes;           /* the slot's buffer: items at 0, then the images */
  size_t n_bytes;                 /* bytes in use (what to copy) */
  const TransformRawItem *items;  /* [batch] (= bytes) */
  const float *labels;            /* [batch] */
  int batch, c, h, w;             /* the top: (batch, c, h, w) after the transform */
  int slot;                       /* for prefetch_raw_release */
} PrefetchRawBatch;

/* The next raw batch: 0 and *out; with wait == 0, 1 when it is not ready
 * yet (nothing taken; never in synchronous mode: there wait == 0 always
 * gives 1); -1 on an error (a record that failed: sticky, as for
 * prefetch_next). Several batches may be held at once with threads (the
 * reader waits while every slot is held); one in synchronous mode, where it
 * must be released before the next take. */
int prefetch_raw_take(Prefetcher *p, int wait, PrefetchRawBatch *out);
/* Hand a taken batch's slot back to the reader (its buffer may then be
 * overwritten). */
void prefetch_raw_release(Prefetcher *p, const PrefetchRawBatch *b);

/* Stop and join every thread, free everything. NULL is a no-op. */
void prefetch_destroy(Prefetcher *p);

#endif
