/* prefetch.c — the data layers' prefetch pipeline (see prefetch.h).
 *
 * Randomness (the choice prefetch.h describes): the reader thread takes
 * each record's transform draws from the single Caffe stream, in record
 * order, and passes them along with the record. Caffe's draw order on that
 * stream is unchanged, so the output is identical to Caffe's synchronous
 * DataLayer::load_batch for any number of threads.
 *
 * Synchronisation: one mutex and four condition variables.
 *   slots[depth]     batch buffers, used in order: batch b lives in slot
 *                    b % depth. States FREE -> FILLING (the reader has handed
 *                    out its records) -> READY (every record done) -> FREE
 *                    (the forward copied it out).
 *   work items       record i of batch b is item b * batch + i; the reader
 *                    publishes items (published), workers claim them in
 *                    order (claimed). The per-item descriptors live in the
 *                    slot (items[batch]).
 *   shape            a batch's shape is its first record's (as in Caffe):
 *                    the worker of item 0 grows the buffer if needed and
 *                    publishes the shape; workers of the other items decode
 *                    in parallel and wait only for that before writing.
 *                    Item 0 is always claimed before the others of its
 *                    batch, so that wait always ends.
 *   raw mode         (prefetch_set_raw) a slot holds one buffer from the
 *                    caller's allocator: the items' parameters at its start,
 *                    then the images, each appended under the slot's raw_mu
 *                    by the worker that decoded it (the buffer grows there,
 *                    under the same lock, so no thread ever writes into a
 *                    buffer being replaced). A taken slot is TAKEN until
 *                    prefetch_raw_release: the reader waits for FREE.
 */
#include "data/prefetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

/* ---- pinned-memory hooks ------------------------------------------------ */

static void *default_alloc_host(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) {
    moka_errorf("out of memory allocating a %zu-byte batch buffer", bytes);
    return NULL;
  }
  return p;
}

static void default_free_host(void *p) { free(p); }

void *(*data_alloc_host)(size_t bytes) = default_alloc_host;
void (*data_free_host)(void *p) = default_free_host;

/* ---- state --------------------------------------------------------------- */

enum { SLOT_FREE = 0, SLOT_FILLING, SLOT_READY, SLOT_TAKEN };
enum { ERR_LEN = 2048 };

typedef struct Slot {
  int state;
  PrefetchItem *items; /* [batch] */
  float *data;         /* (batch, C, H, W), `cap` floats, via data_alloc_host */
  size_t cap;
  float *labels;       /* (batch), via data_alloc_host */
  int c, h, w;         /* shape of one item (the batch's first record's) */
  int shape_state;     /* 0 unknown, 1 published, -1 item 0 failed */
  int done;            /* items finished (or given up) */
  int err_item;        /* lowest failing item, -1 = none */
  char err[ERR_LEN];
  /* raw mode: items[B] (TransformRawItem) at 0, then the images (raw_batch.h) */
  uint8_t *raw;        /* raw_cap bytes, via the raw allocator */
  size_t raw_cap, raw_used, raw_hdr;
  pthread_mutex_t raw_mu; /* guards raw, raw_cap, raw_used */
} Slot;

typedef struct Worker {
  Prefetcher *p;
  pthread_t tid;
  DatumPixels px; /* (C,H,W) decode buffer, reused */
  DatumBytes bx;  /* (C,H,W) uint8 decode buffer (raw mode), reused */
} Worker;

struct Prefetcher {
  char *what;
  int B, depth, n_threads, n_draws;
  const Transformer *tf;
  PrefetchSource src;
  Rng rng0, rng;      /* the transform's stream: as set up / the reader's */
  Slot *slots;        /* [depth] */
  Worker *workers;    /* [n_threads]; workers[0].px is used in synchronous mode */
  pthread_t reader;
  int reader_started, workers_started;

  pthread_mutex_t mu;
  pthread_cond_t work_cv, ready_cv, free_cv, shape_cv;
  int stop;
  uint64_t fill_batch;    /* next batch the reader fills */
  uint64_t consume_batch; /* next batch the forward takes */
  uint64_t published, claimed; /* work items */
  int reader_done;        /* the reader stopped after an error */

  uint64_t start_record;  /* record index of batch 0 (after a seek) */
  int failed;             /* sticky error */
  char fail_msg[ERR_LEN + 256];
  double wait_s;
  int raw;                /* raw mode (prefetch_set_raw) */
  PrefetchRawAlloc raw_alloc;
};

int prefetch_default_threads(void) {
  const char *e = getenv("MOKA_DATA_THREADS");
  if (e && *e) {
    char *end;
    long v = strtol(e, &end, 10);
    if (!*end && v >= 0 && v <= 64) return (int)v;
    LOG_WARN("MOKA_DATA_THREADS='%s' is not a number of threads from 0 to 64; using the default",
             e);
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n < 4 ? (int)n : 4;
}

int prefetch_threads(const Prefetcher *p) { return p->n_threads; }
double prefetch_wait_seconds(const Prefetcher *p) { return p->wait_s; }
uint64_t prefetch_position(const Prefetcher *p) {
  return p->start_record + p->consume_batch * (uint64_t)p->B;
}

/* ---- one record ------------------------------------------------------------ */

/* Record item i's error (the lowest failing item of a batch wins, which is
 * the one the synchronous path would stop at). Caller holds no lock. */
static void item_fail(Prefetcher *p, Slot *s, int i, const PrefetchItem *it, const char *msg) {
  char rec[600];
  p->src.describe(p->src.ctx, it, rec, sizeof rec);
  pthread_mutex_lock(&p->mu);
  if (s->err_item < 0 || i < s->err_item) {
    snprintf(s->err, sizeof s->err, "%s: %s: %s", p->what, rec, msg);
    s->err_item = i;
  }
  if (i == 0) {
    s->shape_state = -1;
    pthread_cond_broadcast(&p->shape_cv);
  }
  pthread_mutex_unlock(&p->mu);
}

/* Item 0 publishes the batch's output shape; the others wait for it and must
 * match it (as the float path). 0: go on; 1: stopping; 2: the item is done
 * (failed, or item 0 failed). */
static int agree_shape(Prefetcher *p, Slot *s, int i, const PrefetchItem *it, int c, int h,
                       int w) {
  pthread_mutex_lock(&p->mu);
  if (i == 0) {
    s->c = c, s->h = h, s->w = w;
    s->shape_state = 1;
    pthread_cond_broadcast(&p->shape_cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
  }
  while (s->shape_state == 0 && !p->stop) pthread_cond_wait(&p->shape_cv, &p->mu);
  int st = s->shape_state, stop = p->stop && st == 0;
  pthread_mutex_unlock(&p->mu);
  if (stop) return 1;
  if (st < 0) return 2; /* item 0 failed: its error is the batch's */
  if (c != s->c || h != s->h || w != s->w) {
    char msg[400];
    snprintf(msg, sizeof msg,
             "gives %dx%dx%d (CxHxW) items but the batch's first record gives %dx%dx%d: "
             "images of different sizes need crop_size or batch_size 1",
             c, h, w, s->c, s->h, s->w);
    item_fail(p, s, i, it, msg);
    return 2;
  }
  return 0;
}

/* Decode and transform item i of slot s into its place. Returns 0 when the
 * item is finished (well or with a recorded error), 1 when it was abandoned
 * because the pipeline is stopping. */
static int process_item_raw(Prefetcher *p, Slot *s, int i, DatumBytes *bx);

static int process_item(Prefetcher *p, Slot *s, int i, Worker *wk) {
  if (p->raw) return process_item_raw(p, s, i, &wk->bx);
  DatumPixels *px = &wk->px;
  PrefetchItem *it = &s->items[i];
  int c, h, w;
  if (p->src.decode(p->src.ctx, it, px) != 0 ||
      transform_out_shape(p->tf, px->c, px->h, px->w, &c, &h, &w) != 0) {
    char msg[ERR_LEN];
    snprintf(msg, sizeof msg, "%s", moka_error());
    item_fail(p, s, i, it, msg);
    return 0;
  }
  const size_t item = (size_t)c * h * w;
  if (i == 0) {
    size_t need;
    if (!moka_mul_size(item, (size_t)p->B, &need) || need > (size_t)MOKA_MAX_BLOB_COUNT) {
      item_fail(p, s, i, it, "the batch would be too large");
      return 0;
    }
    if (need > s->cap) { /* grows only past every earlier batch: no malloc per batch */
      data_free_host(s->data);
      s->cap = 0;
      s->data = data_alloc_host(need * sizeof(float));
      if (!s->data) {
        item_fail(p, s, i, it, moka_error());
        return 0;
      }
      s->cap = need;
    }
  }
  const int rc = agree_shape(p, s, i, it, c, h, w);
  if (rc != 0) return rc == 1 ? 1 : 0;
  char rec[600];
  p->src.describe(p->src.ctx, it, rec, sizeof rec);
  if (transform_apply_draws(p->tf, px, it->draws, s->data + (size_t)i * item, rec) != 0) {
    char msg[ERR_LEN];
    snprintf(msg, sizeof msg, "%s", moka_error());
    item_fail(p, s, i, it, msg);
    return 0;
  }
  s->labels[i] = it->label;
  return 0;
}

/* Raw mode: make room for `bytes` more in s->raw (caller holds raw_mu). */
static int raw_reserve(Prefetcher *p, Slot *s, size_t bytes) {
  const size_t need = s->raw_used + bytes;
  if (need < s->raw_used || need > ((size_t)1 << 40))
    return moka_errorf("the raw batch would be too large");
  if (need <= s->raw_cap) return 0;
  size_t cap = s->raw_cap + s->raw_cap / 2;
  if (cap < need) cap = need;
  uint8_t *n = p->raw_alloc.alloc(p->raw_alloc.ctx, cap);
  if (!n) return -1;
  if (s->raw_used) memcpy(n, s->raw, s->raw_used);
  if (s->raw) p->raw_alloc.free(p->raw_alloc.ctx, s->raw);
  s->raw = n;
  s->raw_cap = cap;
  return 0;
}

/* Raw mode: decode item i to uint8, take its crop offset and mirror flag from
 * its draws, append it to the slot's buffer. Same checks, same messages and
 * the same return values as process_item. */
static int process_item_raw(Prefetcher *p, Slot *s, int i, DatumBytes *bx) {
  PrefetchItem *it = &s->items[i];
  int c, h, w;
  if (p->src.decode_u8(p->src.ctx, it, bx) != 0 ||
      transform_out_shape(p->tf, bx->c, bx->h, bx->w, &c, &h, &w) != 0) {
    char msg[ERR_LEN];
    snprintf(msg, sizeof msg, "%s", moka_error());
    item_fail(p, s, i, it, msg);
    return 0;
  }
  int rc = agree_shape(p, s, i, it, c, h, w);
  if (rc == 1) return 1;
  if (rc == 2) return 0;
  TransformRawItem ri;
  transform_raw_params(p->tf, bx->c, bx->h, bx->w, it->draws, &ri);
  const size_t bytes = (size_t)bx->c * bx->h * bx->w;
  pthread_mutex_lock(&s->raw_mu);
  if (raw_reserve(p, s, (bytes + 63) & ~(size_t)63) != 0) {
    pthread_mutex_unlock(&s->raw_mu);
    char msg[ERR_LEN];
    snprintf(msg, sizeof msg, "%s", moka_error());
    item_fail(p, s, i, it, msg);
    return 0;
  }
  ri.label = it->label;
  ri.pad_ = 0;
  ri.offset = s->raw_used;
  memcpy(s->raw + s->raw_used, bx->data, bytes);
  s->raw_used += (bytes + 63) & ~(size_t)63;
  memcpy(s->raw + (size_t)i * sizeof ri, &ri, sizeof ri); /* items[i] */
  pthread_mutex_unlock(&s->raw_mu);
  s->labels[i] = it->label;
  return 0;
}

/* Mark n items of s finished; the last one makes the slot READY. Caller
 * holds the lock. */
static void slot_items_done(Prefetcher *p, Slot *s, int n) {
  s->done += n;
  if (s->done == p->B) {
    s->state = SLOT_READY;
    pthread_cond_broadcast(&p->ready_cv);
  }
}

/* ---- reader ------------------------------------------------------------------ */

/* Hand out the records of the batch in slot s: returns how many were read
 * (B, or fewer after a source error, which is recorded in the slot). */
static int fill_items(Prefetcher *p, Slot *s) {
  for (int i = 0; i < p->B; i++) {
    PrefetchItem *it = &s->items[i];
    memset(it, 0, sizeof *it);
    if (p->src.next(p->src.ctx, it) != 0) {
      snprintf(s->err, sizeof s->err, "%s: %s", p->what, moka_error());
      if (s->err_item < 0 || i < s->err_item) s->err_item = i;
      return i;
    }
    for (int k = 0; k < p->n_draws; k++) it->draws[k] = rng_u32(&p->rng);
  }
  return p->B;
}

static void slot_reset(Slot *s) {
  s->state = SLOT_FREE;
  s->shape_state = 0;
  s->done = 0;
  s->err_item = -1;
  s->err[0] = 0;
  s->raw_used = s->raw_hdr;
}

static void *reader_main(void *arg) {
  Prefetcher *p = arg;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    Slot *s = &p->slots[p->fill_batch % (uint64_t)p->depth];
    while (!p->stop && s->state != SLOT_FREE) pthread_cond_wait(&p->free_cv, &p->mu);
    if (p->stop) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    slot_reset(s);
    s->state = SLOT_FILLING;
    pthread_mutex_unlock(&p->mu);

    int n = fill_items(p, s);

    pthread_mutex_lock(&p->mu);
    p->published += (uint64_t)n;
    p->fill_batch++;
    if (n < p->B) {
      /* a source error: the batch completes with it; the reader stops */
      p->reader_done = 1;
      slot_items_done(p, s, p->B - n);
    }
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    if (n < p->B) break;
  }
  return NULL;
}

/* ---- workers ----------------------------------------------------------------- */

static void *worker_main(void *arg) {
  Worker *wk = arg;
  Prefetcher *p = wk->p;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->stop && p->claimed == p->published) pthread_cond_wait(&p->work_cv, &p->mu);
    if (p->stop) {
      pthread_mutex_unlock(&p->mu);
      break;
    }
    uint64_t seq = p->claimed++;
    pthread_mutex_unlock(&p->mu);
    Slot *s = &p->slots[(seq / (uint64_t)p->B) % (uint64_t)p->depth];
    int i = (int)(seq % (uint64_t)p->B);
    if (process_item(p, s, i, wk) != 0) break; /* stopping */
    pthread_mutex_lock(&p->mu);
    slot_items_done(p, s, 1);
    pthread_mutex_unlock(&p->mu);
  }
  return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void stop_threads(Prefetcher *p) {
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->work_cv);
  pthread_cond_broadcast(&p->ready_cv);
  pthread_cond_broadcast(&p->free_cv);
  pthread_cond_broadcast(&p->shape_cv);
  pthread_mutex_unlock(&p->mu);
  if (p->reader_started) pthread_join(p->reader, NULL);
  for (int i = 0; i < p->workers_started; i++) pthread_join(p->workers[i].tid, NULL);
  p->reader_started = 0;
  p->workers_started = 0;
}

static void reset_queue(Prefetcher *p) {
  for (int k = 0; k < p->depth; k++) slot_reset(&p->slots[k]);
  p->stop = 0;
  p->fill_batch = p->consume_batch = 0;
  p->published = p->claimed = 0;
  p->reader_done = 0;
  p->failed = 0;
  p->fail_msg[0] = 0;
}

static int start_threads(Prefetcher *p) {
  if (p->n_threads == 0) return 0;
  for (int i = 0; i < p->n_threads; i++) {
    int rc = pthread_create(&p->workers[i].tid, NULL, worker_main, &p->workers[i]);
    if (rc != 0) {
      stop_threads(p);
      return moka_errorf("%s: cannot start a data thread: %s", p->what, strerror(rc));
    }
    p->workers_started++;
  }
  int rc = pthread_create(&p->reader, NULL, reader_main, p);
  if (rc != 0) {
    stop_threads(p);
    return moka_errorf("%s: cannot start the data reader thread: %s", p->what, strerror(rc));
  }
  p->reader_started = 1;
  return 0;
}

void prefetch_destroy(Prefetcher *p) {
  if (!p) return;
  stop_threads(p);
  for (int k = 0; p->slots && k < p->depth; k++) {
    free(p->slots[k].items);
    data_free_host(p->slots[k].data);
    data_free_host(p->slots[k].labels);
    if (p->slots[k].raw) p->raw_alloc.free(p->raw_alloc.ctx, p->slots[k].raw);
    pthread_mutex_destroy(&p->slots[k].raw_mu);
  }
  free(p->slots);
  int nw = p->n_threads ? p->n_threads : 1;
  for (int i = 0; p->workers && i < nw; i++) {
    datum_pixels_free(&p->workers[i].px);
    datum_bytes_free(&p->workers[i].bx);
  }
  free(p->workers);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->work_cv);
  pthread_cond_destroy(&p->ready_cv);
  pthread_cond_destroy(&p->free_cv);
  pthread_cond_destroy(&p->shape_cv);
  free(p->what);
  free(p);
}

int prefetch_create(const PrefetchConfig *cfg, const PrefetchSource *src, Prefetcher **out) {
  *out = NULL;
  if (cfg->batch_size <= 0) return moka_errorf("%s: batch_size must be positive", cfg->what);
  Prefetcher *p = moka_calloc(1, sizeof *p);
  if (!p) return -1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work_cv, NULL);
  pthread_cond_init(&p->ready_cv, NULL);
  pthread_cond_init(&p->free_cv, NULL);
  pthread_cond_init(&p->shape_cv, NULL);
  p->what = moka_strdup(cfg->what);
  p->B = cfg->batch_size;
  p->n_threads = cfg->threads < 0 ? 0 : cfg->threads;
  /* synchronous mode needs one slot; threads want at least two so the
   * reader runs ahead of the forward */
  p->depth = p->n_threads == 0 ? 1 : (cfg->depth < 2 ? 2 : cfg->depth);
  p->tf = cfg->tf;
  p->src = *src;
  p->n_draws = transform_draws_per_record(cfg->tf);
  if (p->n_draws && !cfg->rng) {
    moka_errorf("%s: the transform is random but no random stream was given", cfg->what);
    goto fail;
  }
  if (cfg->rng) p->rng0 = p->rng = *cfg->rng;
  p->slots = moka_calloc((size_t)p->depth, sizeof *p->slots);
  int nw = p->n_threads ? p->n_threads : 1;
  p->workers = moka_calloc((size_t)nw, sizeof *p->workers);
  if (!p->what || !p->slots || !p->workers) goto fail;
  for (int i = 0; i < nw; i++) p->workers[i].p = p;
  for (int k = 0; k < p->depth; k++) {
    Slot *s = &p->slots[k];
    pthread_mutex_init(&s->raw_mu, NULL);
    s->items = moka_calloc((size_t)p->B, sizeof *s->items);
    s->labels = data_alloc_host((size_t)p->B * sizeof(float));
    if (!s->items || !s->labels) goto fail;
    slot_reset(s);
  }
  reset_queue(p);
  if (start_threads(p) != 0) goto fail;
  *out = p;
  return 0;
fail:
  prefetch_destroy(p);
  return -1;
}

int prefetch_seek(Prefetcher *p, uint64_t record_index) {
  stop_threads(p);
  reset_queue(p);
  p->rng = p->rng0;
  for (uint64_t k = 0, n = record_index * (uint64_t)p->n_draws; k < n; k++) (void)rng_u32(&p->rng);
  if (p->src.seek(p->src.ctx, record_index) != 0) {
    p->failed = 1;
    snprintf(p->fail_msg, sizeof p->fail_msg, "%s: cannot seek to record %llu: %s", p->what,
             (unsigned long long)record_index, moka_error());
    return moka_errorf("%s", p->fail_msg);
  }
  p->start_record = record_index;
  if (start_threads(p) != 0) {
    p->failed = 1;
    snprintf(p->fail_msg, sizeof p->fail_msg, "%s", moka_error());
    return -1;
  }
  return 0;
}

/* Synchronous mode: the forward reads and processes the batch itself, with
 * exactly the steps the threads take. */
static void fill_sync(Prefetcher *p, Slot *s) {
  slot_reset(s);
  s->state = SLOT_FILLING;
  int n = fill_items(p, s);
  for (int i = 0; i < n; i++) {
    process_item(p, s, i, &p->workers[0]);
    s->done++;
  }
  s->done += p->B - n;
  s->state = SLOT_READY;
}

int prefetch_next(Prefetcher *p, Blob *data, Blob *label) {
  if (p->failed) return moka_errorf("%s", p->fail_msg);
  if (p->raw)
    return moka_errorf("%s: internal error: the pipeline makes raw batches (prefetch_raw_take)",
                       p->what);
  Slot *s = &p->slots[p->consume_batch % (uint64_t)p->depth];
  if (p->n_threads == 0) {
    fill_sync(p, s);
  } else {
    pthread_mutex_lock(&p->mu);
    if (s->state != SLOT_READY) {
      double t0 = moka_now();
      while (s->state != SLOT_READY) pthread_cond_wait(&p->ready_cv, &p->mu);
      p->wait_s += moka_now() - t0;
    }
    pthread_mutex_unlock(&p->mu);
  }
  /* the slot is READY: no thread touches it until it is FREE again */
  int rc = 0;
  if (s->err_item >= 0) {
    p->failed = 1;
    snprintf(p->fail_msg, sizeof p->fail_msg, "%s", s->err);
    rc = moka_errorf("%s", p->fail_msg);
  } else {
    if (blob_reshape4(data, p->B, s->c, s->h, s->w) != 0) return -1;
    memcpy(data->data, s->data, data->count * sizeof(float));
    if (label) {
      int shape[1] = {p->B};
      if (blob_reshape(label, 1, shape) != 0) return -1;
      memcpy(label->data, s->labels, (size_t)p->B * sizeof(float));
    }
  }
  if (rc == 0) {
    pthread_mutex_lock(&p->mu);
    s->state = SLOT_FREE;
    p->consume_batch++;
    pthread_cond_broadcast(&p->free_cv);
    pthread_mutex_unlock(&p->mu);
  }
  return rc;
}

/* ---- raw mode ---------------------------------------------------------------------------- */

int prefetch_is_raw(const Prefetcher *p) { return p->raw; }

int prefetch_set_raw(Prefetcher *p, const PrefetchRawAlloc *alloc) {
  if (p->raw) return 0;
  if (!p->src.decode_u8)
    return moka_errorf("%s: internal error: this data source has no raw (uint8) mode", p->what);
  if (!alloc || !alloc->alloc || !alloc->free)
    return moka_errorf("%s: internal error: no allocator for raw batches", p->what);
  const uint64_t pos = prefetch_position(p);
  stop_threads(p);
  p->raw = 1;
  p->raw_alloc = *alloc;
  const size_t hdr = (size_t)transform_raw_header_bytes(p->B);
  size_t per = alloc->item_bytes_hint ? (alloc->item_bytes_hint + 63) & ~(size_t)63 : 0;
  size_t first;
  if (!per || !moka_mul_size(per, (size_t)p->B, &first) || first > ((size_t)1 << 34)) first = 0;
  for (int k = 0; k < p->depth; k++) {
    Slot *s = &p->slots[k];
    data_free_host(s->data); /* the float batches are not used any more */
    s->data = NULL;
    s->cap = 0;
    s->raw_hdr = hdr;
    s->raw_used = hdr;
    s->raw_cap = 0;
    s->raw = alloc->alloc(alloc->ctx, hdr + first);
    if (!s->raw) {
      p->failed = 1;
      snprintf(p->fail_msg, sizeof p->fail_msg, "%s: raw batch buffer: %s", p->what, moka_error());
      return moka_errorf("%s", p->fail_msg);
    }
    s->raw_cap = hdr + first;
  }
  return prefetch_seek(p, pos);
}

int prefetch_raw_take(Prefetcher *p, int wait, PrefetchRawBatch *out) {
  memset(out, 0, sizeof *out);
  if (p->failed) return moka_errorf("%s", p->fail_msg);
  if (!p->raw)
    return moka_errorf("%s: internal error: the pipeline makes float batches (prefetch_next)",
                       p->what);
  const int k = (int)(p->consume_batch % (uint64_t)p->depth);
  Slot *s = &p->slots[k];
  if (p->n_threads == 0) {
    if (!wait) return 1;
    if (s->state == SLOT_TAKEN)
      return moka_errorf("%s: internal error: a raw batch is still held (prefetch_raw_release)",
                         p->what);
    fill_sync(p, s);
  } else {
    pthread_mutex_lock(&p->mu);
    if (s->state != SLOT_READY) {
      if (!wait) {
        pthread_mutex_unlock(&p->mu);
        return 1;
      }
      double t0 = moka_now();
      while (s->state != SLOT_READY) pthread_cond_wait(&p->ready_cv, &p->mu);
      p->wait_s += moka_now() - t0;
    }
    pthread_mutex_unlock(&p->mu);
  }
  if (s->err_item >= 0) {
    p->failed = 1;
    snprintf(p->fail_msg, sizeof p->fail_msg, "%s", s->err);
    return moka_errorf("%s", p->fail_msg);
  }
  out->bytes = s->raw;
  out->n_bytes = s->raw_used;
  out->items = (const TransformRawItem *)s->raw;
  out->labels = s->labels;
  out->batch = p->B;
  out->c = s->c, out->h = s->h, out->w = s->w;
  out->slot = k;
  pthread_mutex_lock(&p->mu);
  s->state = SLOT_TAKEN;
  p->consume_batch++;
  pthread_mutex_unlock(&p->mu);
  return 0;
}

void prefetch_raw_release(Prefetcher *p, const PrefetchRawBatch *b) {
  if (!b->bytes || b->slot < 0 || b->slot >= p->depth) return;
  Slot *s = &p->slots[b->slot];
  pthread_mutex_lock(&p->mu);
  if (s->state == SLOT_TAKEN) {
    s->state = SLOT_FREE;
    pthread_cond_broadcast(&p->free_cv);
  }
  pthread_mutex_unlock(&p->mu);
}
