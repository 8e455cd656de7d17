/* reader.c — Caffe's DataLayer::load_batch (see reader.h). */
#include "data/reader.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

void data_reader_close(DataReader *r) {
  if (!r) return;
  db_reader_close(r->db);
  transform_free(&r->tf);
  datum_pixels_free(&r->px);
  free(r->what);
  memset(r, 0, sizeof *r);
}

int data_reader_open(DataReader *r, const char *what, const char *source, int batch_size,
                     const Caffe__TransformationParameter *tp, int train, Rng *global) {
  memset(r, 0, sizeof *r);
  r->what = moka_strdup(what);
  if (!r->what) return -1;
  r->batch_size = batch_size;
  if (batch_size <= 0) {
    moka_errorf("%s: data_param.batch_size must be positive (got %d)", what, batch_size);
    goto fail;
  }
  if (transform_init(&r->tf, tp, train, what) != 0) goto fail;
  if (db_reader_open(source, &r->db) != 0) {
    moka_error_prefix("%s: data_param.source", what);
    goto fail;
  }
  if (transform_needs_rand(&r->tf)) {
    if (!global) {
      moka_errorf("%s: the transform is random but no random stream was given", what);
      goto fail;
    }
    /* Caffe 1.0 calls InitRand twice at setup (BaseDataLayer::LayerSetUp,
     * then BasePrefetchingDataLayer::LayerSetUp): two draws, the second
     * seed is the one kept. */
    transform_seed(&r->tf, global, &r->rng);
    transform_seed(&r->tf, global, &r->rng);
  }
  return 0;
fail:
  data_reader_close(r);
  return -1;
}

/* Decode the record under the cursor into r->px. */
static int decode_current(DataReader *r, Caffe__Datum **datum) {
  const void *val;
  size_t len;
  db_reader_current(r->db, NULL, NULL, &val, &len);
  char what[512];
  snprintf(what, sizeof what, "%s: LMDB '%s', record '%s'", r->what, db_reader_path(r->db),
           db_reader_key_str(r->db));
  if (datum_unpack(val, len, what, datum) != 0) return -1;
  if (datum_decode(*datum, transform_decode_channels(&r->tf), what, &r->px) != 0) {
    caffe__datum__free_unpacked(*datum, NULL);
    *datum = NULL;
    return -1;
  }
  return 0;
}

int data_reader_peek_shape(DataReader *r, int *c, int *h, int *w) {
  Caffe__Datum *d = NULL;
  if (decode_current(r, &d) != 0) return -1;
  caffe__datum__free_unpacked(d, NULL);
  if (transform_out_shape(&r->tf, r->px.c, r->px.h, r->px.w, c, h, w) != 0)
    return moka_error_prefix("%s: LMDB '%s', record '%s'", r->what, db_reader_path(r->db),
                             db_reader_key_str(r->db));
  return 0;
}

int data_reader_load_batch(DataReader *r, Blob *data, Blob *label) {
  const int B = r->batch_size;
  int C = 0, H = 0, W = 0;
  if (label) {
    int shape[1] = {B};
    if (blob_reshape(label, 1, shape) != 0) return -1;
  }
  for (int i = 0; i < B; i++) {
    Caffe__Datum *d = NULL;
    if (decode_current(r, &d) != 0) return -1;
    int c, h, w;
    if (transform_out_shape(&r->tf, r->px.c, r->px.h, r->px.w, &c, &h, &w) != 0) {
      caffe__datum__free_unpacked(d, NULL);
      return moka_error_prefix("%s: LMDB '%s', record '%s'", r->what, db_reader_path(r->db),
                               db_reader_key_str(r->db));
    }
    if (i == 0) {
      /* Caffe reshapes each batch from its first record. */
      C = c, H = h, W = w;
      if (blob_reshape4(data, B, C, H, W) != 0) {
        caffe__datum__free_unpacked(d, NULL);
        return -1;
      }
    } else if (c != C || h != H || w != W) {
      moka_errorf("%s: LMDB '%s', record '%s' gives %dx%dx%d (CxHxW) items but the batch's "
                  "first record gives %dx%dx%d: images of different sizes need crop_size or "
                  "batch_size 1",
                  r->what, db_reader_path(r->db), db_reader_key_str(r->db), c, h, w, C, H, W);
      caffe__datum__free_unpacked(d, NULL);
      return -1;
    }
    char what[512];
    snprintf(what, sizeof what, "%s: record '%s'", r->what, db_reader_key_str(r->db));
    int rc = transform_apply(&r->tf, &r->px, &r->rng, data->data + (size_t)i * C * H * W, what);
    if (label) label->data[i] = (float)d->label;
    caffe__datum__free_unpacked(d, NULL);
    if (rc != 0) return -1;
    if (db_reader_next(r->db, NULL) != 0) return moka_error_prefix("%s", r->what);
  }
  return 0;
}
