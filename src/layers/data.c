/* data.c — Caffe's Data layer (reference): batches of Datums from an LMDB.
 *
 * data_param: source (an LMDB folder, relative to the working directory as
 * in Caffe), batch_size, backend (LMDB; LEVELDB — Caffe's default — is not
 * supported). transform_param: scale, mirror, crop_size, mean_file /
 * mean_value, force_color / force_gray (src/data/transform.h).
 *
 * Tops: data (batch, C, crop or H, crop or W) and, optionally, label
 * (batch). Their shapes come from the first record at setup; like Caffe,
 * every batch is reshaped from its own first record. Records are read in key
 * order and the cursor wraps around after the last one. Each forward reads
 * the next batch synchronously (src/data/reader.h holds the batch loader, so
 * that a prefetch thread can run it instead). Random numbers: at setup the
 * layer takes from the net's stream (l->rng) the draws Caffe 1.0's takes
 * from its global stream — InitRand twice when the transform is random (the
 * second draw seeds the transform's own mt19937), then the prefetch
 * thread's seed — and the transform then draws, per record, the mirror coin
 * and the crop offsets from its own stream (src/data/transform.h).
 */
#include <stdlib.h>
#include <string.h>

#include "data/reader.h"
#include "layer.h"
#include "util.h"

typedef struct DataPriv {
  DataReader reader;
  int open;
} DataPriv;

static int data_setup(Layer *l) {
  DataPriv *p = l->priv;
  const Caffe__DataParameter *dp = l->param->data_param;
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
  char what[300];
  snprintf(what, sizeof what, "layer '%s'", l->name);
  if (data_reader_open(&p->reader, what, dp->source, (int)dp->batch_size, l->param->transform_param,
                       l->phase == MOKA_TRAIN, l->rng) != 0)
    return -1;
  p->open = 1;
  /* Caffe's StartInternalThread draws the prefetch thread's seed from the
   * global stream after the transformer's InitRand draws: take that draw
   * too, so that the layers set up after this one (fillers) see Caffe's
   * stream. The Data layer thus takes 1 draw, or 3 when the transform is
   * random (mirror, or crop in TRAIN). */
  if (l->rng) (void)rng_u32(l->rng);
  int c, h, w;
  if (data_reader_peek_shape(&p->reader, &c, &h, &w) != 0) return -1;
  if (blob_reshape4(l->top[0], (int)dp->batch_size, c, h, w) != 0) return -1;
  if (l->n_top > 1) {
    int shape[1] = {(int)dp->batch_size};
    if (blob_reshape(l->top[1], 1, shape) != 0) return -1;
  }
  LOG_INFO("output data size: %u,%d,%d,%d", dp->batch_size, c, h, w);
  return 0;
}

static int data_forward(Layer *l) {
  DataPriv *p = l->priv;
  if (data_reader_load_batch(&p->reader, l->top[0], l->n_top > 1 ? l->top[1] : NULL) != 0)
    return moka_error_prefix("layer '%s' (Data)", l->name);
  return 0;
}

static int data_backward(Layer *l) { return 0; }

static void data_destroy(Layer *l) {
  DataPriv *p = l->priv;
  if (p->open) data_reader_close(&p->reader);
  p->open = 0;
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
    .destroy = data_destroy,
};
