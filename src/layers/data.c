/* data.c — Caffe's Data layer (reference): batches of Datums from an LMDB.
 *
 * data_param: source (an LMDB folder, relative to the working directory as
 * in Caffe), batch_size, backend (LMDB; LEVELDB — Caffe's default — is not
 * supported), prefetch (queue depth in batches, default 4). transform_param:
 * scale, mirror, crop_size, mean_file / mean_value, force_color / force_gray
 * (src/data/transform.h).
 *
 * Tops: data (batch, C, crop or H, crop or W) and, optionally, label
 * (batch). Their shapes come from the first record at setup; like Caffe,
 * every batch is reshaped from its own first record. Records are read in key
 * order and the cursor wraps around after the last one.
 *
 * Batches come from the prefetch pipeline (src/data/prefetch.h): a reader
 * thread walks the LMDB cursor, worker threads decode and transform, the
 * forward copies a finished batch out. The output is identical to the
 * synchronous reference (src/data/reader.c, Caffe's DataLayer::load_batch),
 * which the tests compare it with. Random numbers: at setup the layer takes
 * from the net's stream (l->rng) the draws Caffe 1.0's takes from its global
 * stream (data_layer.h); the transform then draws, per record, the mirror
 * coin and the crop offsets from its own stream, in record order.
 *
 * CUDA forward (src/data/data_cuda.h): the pipeline switches to raw batches
 * (uint8 records in page-locked memory, crops and mirrors drawn on the host
 * from the same stream) and the transform runs on the device, bit-identical
 * to the host's; MOKA_DEVICE_TRANSFORM=0 keeps the host transform.
 */
#include <stdlib.h>
#include <string.h>

#include "data/data_cuda.h"
#include "data/data_layer.h"
#include "data/db.h"
#include "layer.h"
#include "util.h"

typedef struct DataPriv {
  Prefetcher *pf; /* first two members: DataLayerHead (data_layer.h) */
  struct DataCuda *dc;
  DbReader *db;
  Transformer tf;
  int tf_init;
  int channels; /* what encoded Datums are decoded to (transform_decode_channels) */
  int raw_ok;   /* the first record has uint8 pixels (not float_data): device transforms */
  size_t item_bytes; /* bytes of the first record's decoded image */
  char what[300];
} DataPriv;

/* ---- the LMDB source of the pipeline ------------------------------------- */

static int lmdb_next(void *ctx, PrefetchItem *it) {
  DataPriv *p = ctx;
  db_reader_current(p->db, &it->key, &it->key_len, &it->val, &it->val_len);
  return db_reader_next(p->db, NULL);
}

static void lmdb_describe(void *ctx, const PrefetchItem *it, char *buf, size_t len) {
  DataPriv *p = ctx;
  char key[256];
  size_t n = it->key_len < sizeof key - 1 ? it->key_len : sizeof key - 1;
  const unsigned char *k = it->key;
  for (size_t i = 0; i < n; i++) key[i] = (k[i] >= 32 && k[i] < 127) ? (char)k[i] : '?';
  key[n] = 0;
  snprintf(buf, len, "LMDB '%s', record '%s'", db_reader_path(p->db), key);
}

static int lmdb_decode(void *ctx, PrefetchItem *it, DatumPixels *px) {
  DataPriv *p = ctx;
  Caffe__Datum *d;
  /* (the caller names the record in the message) */
  if (datum_unpack(it->val, it->val_len, "the value", &d) != 0) return -1;
  int rc = datum_decode(d, p->channels, "the Datum", px);
  it->label = (float)d->label;
  caffe__datum__free_unpacked(d, NULL);
  return rc;
}

static int lmdb_decode_u8(void *ctx, PrefetchItem *it, DatumBytes *px) {
  DataPriv *p = ctx;
  Caffe__Datum *d;
  if (datum_unpack(it->val, it->val_len, "the value", &d) != 0) return -1;
  int rc = datum_decode_u8(d, p->channels, "the Datum", px);
  it->label = (float)d->label;
  caffe__datum__free_unpacked(d, NULL);
  return rc;
}

static int lmdb_seek(void *ctx, uint64_t record_index) {
  DataPriv *p = ctx;
  return db_reader_seek_index(p->db, (size_t)(record_index % db_reader_count(p->db)));
}

/* ---- shared by Data and ImageData ------------------------------------------- */

void data_setup_draws_before(const Transformer *t, Rng *global, Rng *own) {
  if (global) transform_seed(t, global, own);
}

void data_setup_draws_after(const Transformer *t, Rng *global, Rng *own) {
  if (!global) return;
  transform_seed(t, global, own);
  /* Caffe's StartInternalThread draws the prefetch thread's seed after the
   * transformer's InitRand draws: take it too, so that the layers set up
   * after this one (fillers) see Caffe's stream. */
  (void)rng_u32(global);
}

Prefetcher *data_layer_prefetcher(Layer *l) {
  if (!l || !l->type || !l->priv) return NULL;
  if (strcmp(l->type->name, "Data") != 0 && strcmp(l->type->name, "ImageData") != 0) return NULL;
  return ((DataLayerHead *)l->priv)->pf; /* both privs start with DataLayerHead */
}

int data_layer_seek(Layer *l, uint64_t record_index) {
  Prefetcher *pf = data_layer_prefetcher(l);
  if (!pf)
    return moka_errorf("data_layer_seek: layer '%s' (%s) is not a set-up Data or ImageData layer",
                       l && l->name ? l->name : "?", l && l->type ? l->type->name : "?");
#ifdef MOKA_WITH_CUDA
  /* the copies in flight finish and the held batches go back first */
  if (data_cuda_drop(((DataLayerHead *)l->priv)->dc, pf) != 0)
    return moka_error_prefix("layer '%s'", l->name);
#endif
  return prefetch_seek(pf, record_index);
}

/* ---- the layer ------------------------------------------------------------------ */

static int data_setup(Layer *l) {
  DataPriv *p = l->priv;
  const Caffe__DataParameter *dp = l->param->data_param;
  snprintf(p->what, sizeof p->what, "layer '%s'", l->name);
  if (!dp || !dp->source || !dp->source[0])
    return moka_errorf("data_param.source is required (the LMDB folder to read)");
  if (dp->backend != CAFFE__DATA_PARAMETER__DB__LMDB)
    return moka_errorf("data_param.backend is LEVELDB%s: LevelDB is not supported; convert the "
                       "data with convert_imageset --backend=lmdb and set backend: LMDB",
                       dp->has_backend ? "" : " (Caffe's default when backend is not set)");
  if (!dp->has_batch_size || dp->batch_size == 0 || dp->batch_size > 1u << 20)
    return moka_errorf("data_param.batch_size must be set to a positive number (got %u)",
                       dp->batch_size);
  if (dp->has_rand_skip && dp->rand_skip)
    LOG_WARN("layer '%s': data_param.rand_skip is deprecated and ignored (Caffe 1.0 ignores it "
             "too)",
             l->name);
  if (dp->has_scale || dp->mean_file || dp->has_crop_size || dp->has_mirror)
    LOG_WARN("layer '%s': data_param.scale/mean_file/crop_size/mirror are deprecated and ignored; "
             "use transform_param",
             l->name);
  if (transform_init(&p->tf, l->param->transform_param, l->phase == MOKA_TRAIN, p->what) != 0)
    return -1;
  p->tf_init = 1;
  p->channels = transform_decode_channels(&p->tf);
  if (db_reader_open(dp->source, &p->db) != 0)
    return moka_error_prefix("%s: data_param.source", p->what);
  Rng own;
  memset(&own, 0, sizeof own);
  if (transform_needs_rand(&p->tf) && !l->rng)
    return moka_errorf("%s: the transform is random but no random stream was given", p->what);
  data_setup_draws_before(&p->tf, l->rng, &own);
  data_setup_draws_after(&p->tf, l->rng, &own);
  /* the top's shape, from the first record (Caffe's InferBlobShape) */
  PrefetchItem first = {0};
  DatumPixels px = {0};
  char rec[600];
  db_reader_current(p->db, &first.key, &first.key_len, &first.val, &first.val_len);
  lmdb_describe(p, &first, rec, sizeof rec);
  int c, h, w;
  int rc = lmdb_decode(p, &first, &px);
  if (rc == 0) rc = transform_out_shape(&p->tf, px.c, px.h, px.w, &c, &h, &w);
  if (rc == 0) {
    Caffe__Datum *d;
    rc = datum_unpack(first.val, first.val_len, "the value", &d);
    if (rc == 0) {
      p->raw_ok = d->encoded || (d->has_data && d->data.len > 0);
      caffe__datum__free_unpacked(d, NULL);
    }
    p->item_bytes = (size_t)px.c * px.h * px.w;
  }
  datum_pixels_free(&px);
  if (rc != 0) return moka_error_prefix("%s: %s", p->what, rec);
  if (blob_reshape4(l->top[0], (int)dp->batch_size, c, h, w) != 0) return -1;
  if (l->n_top > 1) {
    int shape[1] = {(int)dp->batch_size};
    if (blob_reshape(l->top[1], 1, shape) != 0) return -1;
  }
  LOG_INFO("output data size: %u,%d,%d,%d", dp->batch_size, c, h, w);
  PrefetchConfig cfg = {.what = p->what,
                        .batch_size = (int)dp->batch_size,
                        .depth = dp->prefetch ? (int)MOKA_MIN(dp->prefetch, 64u) : 1,
                        .threads = prefetch_default_threads(),
                        .tf = &p->tf,
                        .rng = transform_needs_rand(&p->tf) ? &own : NULL};
  PrefetchSource src = {p, lmdb_next, lmdb_decode, lmdb_describe, lmdb_seek, lmdb_decode_u8};
  return prefetch_create(&cfg, &src, &p->pf);
}

static int data_forward(Layer *l) {
  DataPriv *p = l->priv;
  if (prefetch_next(p->pf, l->top[0], l->n_top > 1 ? l->top[1] : NULL) != 0)
    return moka_error_prefix("layer '%s' (Data)", l->name);
  return 0;
}

static int data_backward(Layer *l) { return 0; }

#ifdef MOKA_WITH_CUDA
static int data_forward_cuda(Layer *l) {
  DataPriv *p = l->priv;
  if (data_cuda_forward(&p->dc, l, p->pf, &p->tf, p->item_bytes, p->raw_ok) != 0)
    return moka_error_prefix("layer '%s' (Data)", l->name);
  return 0;
}
#endif

static void data_destroy(Layer *l) {
  DataPriv *p = l->priv;
#ifdef MOKA_WITH_CUDA
  data_cuda_quiesce(p->dc); /* no copy reads the pinned buffers any more */
#endif
  prefetch_destroy(p->pf); /* joins the threads before the cursor goes */
  p->pf = NULL;
#ifdef MOKA_WITH_CUDA
  data_cuda_free(p->dc);
  p->dc = NULL;
#endif
  db_reader_close(p->db);
  p->db = NULL;
  if (p->tf_init) transform_free(&p->tf);
  p->tf_init = 0;
}

const LayerType layer_type_data = {
    .name = "Data",
    .min_bottoms = 0,
    .max_bottoms = 0,
    .min_tops = 1,
    .max_tops = 2,
    .priv_size = sizeof(DataPriv),
    .setup = data_setup,
    .reshape = NULL,
    .forward = {[MOKA_BACKEND_CPU] = data_forward, [MOKA_BACKEND_CPU_FAST] = data_forward},
    .backward = {[MOKA_BACKEND_CPU] = data_backward, [MOKA_BACKEND_CPU_FAST] = data_backward},
#ifdef MOKA_WITH_CUDA
    .forward[MOKA_BACKEND_CUDA] = data_forward_cuda,
    .backward[MOKA_BACKEND_CUDA] = data_backward,
#endif
    .destroy = data_destroy,
};
