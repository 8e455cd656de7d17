/* datatest.h — what the data-layer tests test_data_pipeline.c and
 * test_transform_raw.c share: a data layer built from prototxt text with a
 * given seed and thread count, blob equality, and real Caffe 1.0's TRAIN
 * values for an ImageData and a Data layer. Header-only, like testlib.h:
 * each test_*.c is its own program.
 */
#ifndef MOKA_DATATEST_H
#define MOKA_DATATEST_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/transform.h"
#include "layer.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

typedef struct TLayer {
  Caffe__LayerParameter *lp;
  Blob *top[2]; /* data (N,C,H,W), label (N) */
  Rng rng;
  Layer *l;
  Transformer tf; /* the layer's transform (tlayer_init_transform), for transform_apply_raw_host */
  int tf_init;
} TLayer;

/* Build a layer from prototxt text (vprintf-style), with the net's stream
 * seeded with `seed`, in `phase`, and `threads` decode threads. */
static inline int tlayer_vmake(TLayer *t, int phase, uint32_t seed, int threads, const char *fmt,
                               va_list ap) {
  memset(t, 0, sizeof *t);
  char text[4096];
  vsnprintf(text, sizeof text, fmt, ap);
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test",
                     (ProtobufCMessage **)&t->lp) != 0)
    return -1;
  t->top[0] = blob_new("data");
  t->top[1] = blob_new("label");
  rng_seed(&t->rng, seed);
  char nt[16];
  snprintf(nt, sizeof nt, "%d", threads);
  setenv("MOKA_DATA_THREADS", nt, 1);
  t->l = layer_create(t->lp, phase, &t->rng, NULL, 0, t->top, 2);
  unsetenv("MOKA_DATA_THREADS");
  return t->l ? 0 : -1;
}

/* tlayer_vmake, printf-style. */
static inline int tlayer_make(TLayer *t, int phase, uint32_t seed, int threads, const char *fmt,
                              ...) __attribute__((format(printf, 5, 6)));
static inline int tlayer_make(TLayer *t, int phase, uint32_t seed, int threads, const char *fmt,
                              ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = tlayer_vmake(t, phase, seed, threads, fmt, ap);
  va_end(ap);
  return rc;
}

/* t->tf from the layer's transform_param, as the layer builds its own. */
static inline int tlayer_init_transform(TLayer *t, int phase) {
  if (transform_init(&t->tf, t->lp->transform_param, phase == MOKA_TRAIN, "test") != 0) return -1;
  t->tf_init = 1;
  return 0;
}

static inline void tlayer_free(TLayer *t) {
  layer_free(t->l);
  blob_free(t->top[0]);
  blob_free(t->top[1]);
  if (t->tf_init) transform_free(&t->tf);
  if (t->lp) protobuf_c_message_free_unpacked(&t->lp->base, NULL);
  memset(t, 0, sizeof *t);
}

static inline int blobs_equal(const Blob *a, const Blob *b) {
  return blob_same_shape(a, b) && memcmp(a->data, b->data, a->count * sizeof(float)) == 0;
}

static inline const char *golden(const char *rel) { return shared_path(rel); }

/* ---- TRAIN values of real Caffe -------------------------------------------------------- */

/* Caffe 1.0 (caffe-peer python3: caffe.set_random_seed(seed); Net(proto,
 * TRAIN); 6 forwards), per item: forward, item, label, sum of the values,
 * sum of value * (1-based flat index). Layers:
 *   ImageData: list "img<k>.jpg <k+10>" (k = 0..7), root_folder images/,
 *     batch_size 3, shuffle, rand_skip 5, new 32x32; transform mirror,
 *     crop_size 28, mean_value 104/117/123 (seed 1701; seed 5 in
 *     test_data_pipeline.c)
 *   Data: lmdb_raw32, batch_size 3; transform mirror, crop_size 20,
 *     mean_value 104 (seed 1701) */
/* The layers the tables below were measured with. CAFFE_IMAGEDATA_LAYER
 * takes the list file (write_image_list, labels from 10) and
 * golden("golden/lmdb/images"); CAFFE_DATA_LAYER golden("golden/lmdb/lmdb_raw32"). */
#define CAFFE_IMAGEDATA_LAYER                                                   \
  "name: 'data' type: 'ImageData' top: 'data' top: 'label' "                    \
  "image_data_param { source: '%s' root_folder: '%s/' batch_size: 3 "           \
  "shuffle: true rand_skip: 5 new_height: 32 new_width: 32 } "                  \
  "transform_param { mirror: true crop_size: 28 mean_value: 104 "               \
  "mean_value: 117 mean_value: 123 }"
#define CAFFE_DATA_LAYER                                                        \
  "name: 'data' type: 'Data' top: 'data' top: 'label' "                         \
  "data_param { source: '%s' batch_size: 3 backend: LMDB } "                    \
  "transform_param { mirror: true crop_size: 20 mean_value: 104 }"

/* Writes the image list "img<k>.jpg <k + label0>" (k = 0..7; the images of
 * golden/lmdb/images) to a new temporary file; `path` is a mkstemp template
 * ("...XXXXXX") and receives the name. 0 / -1. */
static inline int write_image_list(char *path, int label0) {
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  FILE *f = fdopen(fd, "w");
  if (!f) return -1;
  for (int i = 0; i < 8; i++) fprintf(f, "img%d.jpg %d\n", i, i + label0);
  return fclose(f) == 0 ? 0 : -1;
}

typedef struct CaffeItem {
  int f, i, label;
  double sum, wsum;
} CaffeItem;

static const CaffeItem CAFFE_IMAGEDATA_1701[18] = {
    {0, 0, 13, 15693.0, -9386333.0},  {0, 1, 17, 33674.0, 19555913.0},
    {0, 2, 14, -16541.0, -5647650.0}, {1, 0, 11, 16928.0, 13971023.0},
    {1, 1, 15, 13544.0, 15912071.0},  {1, 2, 10, 7819.0, -16709671.0},
    {2, 0, 12, 17847.0, 25630408.0},  {2, 1, 16, 1066.0, -22381433.0},
    {2, 2, 14, -4561.0, -6981274.0},  {3, 0, 13, 17154.0, -8535214.0},
    {3, 1, 10, 3771.0, -23460010.0},  {3, 2, 17, 33674.0, 19505897.0},
    {4, 0, 16, 4136.0, -20918186.0},  {4, 1, 12, 17749.0, 23113942.0},
    {4, 2, 15, 12681.0, 15179327.0},  {5, 0, 11, 14565.0, 12479593.0},
    {5, 1, 10, 1277.0, -26781899.0},  {5, 2, 15, 12681.0, 15179327.0},
};
static const CaffeItem CAFFE_DATA_1701[18] = {
    {0, 0, 0, 17932.0, 9041818.0},  {0, 1, 1, -284.0, 1542046.0},
    {0, 2, 2, 29281.0, 19671279.0}, {1, 0, 3, 17704.0, 6156307.0},
    {1, 1, 4, 5482.0, 2915218.0},   {1, 2, 0, 13102.0, 10872122.0},
    {2, 0, 1, -3941.0, 3513397.0},  {2, 1, 2, 29637.0, 13904148.0},
    {2, 2, 0, 4391.0, -5815290.0},  {3, 0, 1, 27290.0, 16706715.0},
    {3, 1, 2, 17404.0, 17770709.0}, {3, 2, 3, 15048.0, 2883321.0},
    {4, 0, 4, 2296.0, 4566888.0},   {4, 1, 0, 14012.0, 12492510.0},
    {4, 2, 1, 24473.0, 7592101.0},  {5, 0, 2, 26436.0, 12874355.0},
    {5, 1, 0, 14948.0, 4548683.0},  {5, 2, 1, 27310.0, 17327745.0},
};

/* Forward f of a batch of 3 items (data (3,C,H,W), label (3)) against
 * Caffe's items f*3 .. f*3+2 of `want`: adds the items that differ to *bad,
 * printing the first four. */
static inline void caffe_items_check(const char *name, int f, const Blob *data, const Blob *label,
                                     const CaffeItem *want, int *bad) {
  const size_t item = data->count / 3;
  for (int i = 0; i < 3; i++) {
    const CaffeItem *w = &want[f * 3 + i];
    double sum = 0, wsum = 0;
    for (size_t k = 0; k < item; k++) {
      double v = data->data[i * item + k];
      sum += v;
      wsum += v * (double)(k + 1);
    }
    int l = (int)label->data[i];
    if (l != w->label || sum != w->sum || wsum != w->wsum) {
      if ((*bad)++ < 4)
        fprintf(stderr, "    %s forward %d item %d: label %d sums %.1f %.1f, Caffe %d %.1f %.1f\n",
                name, f, i, l, sum, wsum, w->label, w->sum, w->wsum);
    }
  }
}

#endif
