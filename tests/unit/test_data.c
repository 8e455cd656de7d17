/* test_data.c — Caffe's data path: LMDB reading/writing (src/data/db.c),
 * Datum decoding and building (datum.c), the DataTransformer (transform.c)
 * and the Data layer (layers/data.c), against ../shared/golden/lmdb (made by
 * Caffe's own convert_imageset / compute_image_mean and Data layer; see
 * section 3 of golden/README.md).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/convert.h"
#include "data/datum.h"
#include "data/db.h"
#include "data/reader.h"
#include "data/transform.h"
#include "image.h"
#include "imagetest.h"
#include "layer.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

static void test_db_reader_order_and_wrap(void) {
  DbReader *r;
  REQUIRE(db_reader_open(shared_path("golden/lmdb/lmdb_raw32"), &r) == 0);
  CHECK(db_reader_count(r) == 8);
  for (int pass = 0; pass < 2; pass++)
    for (int k = 0; k < 8; k++) {
      char want[64];
      snprintf(want, sizeof want, "%08d_img%d.jpg", k, k);
      const void *key;
      size_t klen;
      db_reader_current(r, &key, &klen, NULL, NULL);
      CHECK_MSG(klen == strlen(want) && memcmp(key, want, klen) == 0, "pass %d record %d: key %s",
                pass, k, db_reader_key_str(r));
      int wrapped;
      REQUIRE(db_reader_next(r, &wrapped) == 0);
      CHECK(wrapped == (k == 7));
    }
  db_reader_close(r);
  /* nothing may be written next to a read-only database */
  struct stat st;
  CHECK(stat(shared_path("golden/lmdb/lmdb_raw32/lock.mdb"), &st) != 0);
  /* errors name the path */
  CHECK(db_reader_open(shared_path("golden/lmdb/no_such_db"), &r) != 0);
  CHECK(strstr(moka_error(), "no_such_db") != NULL);
  CHECK(db_reader_open(shared_path("golden/lmdb/list.txt"), &r) != 0);
  CHECK(strstr(moka_error(), "not a folder") != NULL);
}

/* records.txt: db key label encoded channels height width data_bytes float_data_len */
static void test_records_match_caffe(void) {
  FILE *f = fopen(shared_path("golden/lmdb/records.txt"), "r");
  REQUIRE(f != NULL);
  char line[256], cur_db[64] = "";
  DbReader *r = NULL;
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#') continue;
    char db[64], key[100];
    int label, enc, c, h, w;
    size_t nbytes, nfloat;
    if (sscanf(line, "%63s %99s %d %d %d %d %d %zu %zu", db, key, &label, &enc, &c, &h, &w,
               &nbytes, &nfloat) != 9)
      continue;
    if (strcmp(db, cur_db) != 0) {
      db_reader_close(r);
      char rel[128];
      snprintf(rel, sizeof rel, "golden/lmdb/%s", db);
      REQUIRE(db_reader_open(shared_path(rel), &r) == 0);
      snprintf(cur_db, sizeof cur_db, "%s", db);
    }
    const void *k, *v;
    size_t kl, vl;
    db_reader_current(r, &k, &kl, &v, &vl);
    CHECK_MSG(kl == strlen(key) && memcmp(k, key, kl) == 0, "%s: key %s, want %s", db,
              db_reader_key_str(r), key);
    Caffe__Datum *d;
    REQUIRE(datum_unpack(v, vl, key, &d) == 0);
    CHECK(d->label == label && d->encoded == enc && d->channels == c && d->height == h &&
          d->width == w && d->data.len == nbytes && d->n_float_data == nfloat);
    if (strcmp(db, "lmdb_jpg") == 0) {
      /* no resize: the original file, byte for byte */
      char rel[128];
      snprintf(rel, sizeof rel, "golden/lmdb/images/%s", key + 9);
      size_t flen;
      uint8_t *file = read_all(shared_path(rel), &flen);
      REQUIRE(file != NULL);
      CHECK(flen == d->data.len && memcmp(file, d->data.data, flen) == 0);
      free(file);
    }
    if (strcmp(db, "lmdb_raw32") == 0) {
      char rel[128];
      snprintf(rel, sizeof rel, "golden/lmdb/datum_raw32_%d.u8", n);
      size_t ulen;
      uint8_t *u8 = read_all(shared_path(rel), &ulen);
      REQUIRE(u8 != NULL);
      CHECK(ulen == d->data.len && memcmp(u8, d->data.data, ulen) == 0);
      free(u8);
      /* datum_decode: the same bytes as floats, (C,H,W) */
      DatumPixels px = {0};
      REQUIRE(datum_decode(d, 0, key, &px) == 0);
      CHECK(px.c == 3 && px.h == 32 && px.w == 32);
      int same = 1;
      for (size_t i = 0; i < ulen; i++) same &= px.data[i] == (float)d->data.data[i];
      CHECK(same);
      datum_pixels_free(&px);
    }
    caffe__datum__free_unpacked(d, NULL);
    REQUIRE(db_reader_next(r, NULL) == 0);
    n = strcmp(db, "lmdb_raw32") == 0 ? n + 1 : n;
  }
  fclose(f);
  db_reader_close(r);
  CHECK(n == 8);
}

/* Datums built here serialise to the bytes Caffe stored: raw (decode, resize
 * to 32x32, CVMatToDatum) and encoded (ReadFileToDatum). */
static void test_datum_build_matches_caffe_bytes(void) {
  DbReader *raw, *jpg;
  REQUIRE(db_reader_open(shared_path("golden/lmdb/lmdb_raw32"), &raw) == 0);
  REQUIRE(db_reader_open(shared_path("golden/lmdb/lmdb_jpg"), &jpg) == 0);
  const int labels[8] = {0, 1, 2, 3, 4, 0, 1, 2};
  for (int k = 0; k < 8; k++) {
    char rel[128];
    snprintf(rel, sizeof rel, "golden/lmdb/images/img%d.jpg", k);
    Image im, rs;
    REQUIRE(image_read_file(shared_path(rel), 3, &im) == 0);
    REQUIRE(image_resize_bilinear(&im, 32, 32, &rs) == 0);
    Caffe__Datum d;
    REQUIRE(datum_from_image(&rs, labels[k], &d) == 0);
    uint8_t *buf;
    size_t len;
    REQUIRE(datum_pack(&d, &buf, &len) == 0);
    const void *v;
    size_t vl;
    db_reader_current(raw, NULL, NULL, &v, &vl);
    CHECK_MSG(vl == len && memcmp(v, buf, len) == 0, "raw record %d: %zu bytes vs Caffe's %zu", k,
              len, vl);
    free(buf);
    datum_clear(&d);
    size_t flen;
    uint8_t *file = read_all(shared_path(rel), &flen);
    REQUIRE(file != NULL);
    REQUIRE(datum_from_encoded(file, flen, labels[k], &d) == 0);
    REQUIRE(datum_pack(&d, &buf, &len) == 0);
    db_reader_current(jpg, NULL, NULL, &v, &vl);
    CHECK_MSG(vl == len && memcmp(v, buf, len) == 0, "encoded record %d: %zu bytes vs Caffe's %zu",
              k, len, vl);
    /* the encoded Datum decodes to the image, (C,H,W) */
    DatumPixels px = {0};
    REQUIRE(datum_decode(&d, 0, "encoded", &px) == 0);
    CHECK(px.c == 3 && px.h == im.h && px.w == im.w);
    int same = 1;
    for (int c = 0; c < 3; c++)
      for (int i = 0; i < im.h * im.w; i++)
        same &= px.data[(size_t)c * im.h * im.w + i] == (float)im.px[(size_t)i * 3 + c];
    CHECK(same);
    datum_pixels_free(&px);
    free(buf);
    free(file);
    datum_clear(&d);
    image_free(&im);
    image_free(&rs);
    REQUIRE(db_reader_next(raw, NULL) == 0);
    REQUIRE(db_reader_next(jpg, NULL) == 0);
  }
  db_reader_close(raw);
  db_reader_close(jpg);
}

static void test_datum_errors(void) {
  Caffe__Datum d = CAFFE__DATUM__INIT;
  DatumPixels px = {0};
  CHECK(datum_decode(&d, 0, "rec", &px) != 0); /* no size */
  uint8_t bytes[10] = {0};
  d.channels = 3, d.height = 2, d.width = 2;
  d.has_data = 1, d.data.data = bytes, d.data.len = 10; /* 12 expected */
  CHECK(datum_decode(&d, 0, "rec7", &px) != 0);
  CHECK(strstr(moka_error(), "rec7") && strstr(moka_error(), "10 bytes"));
  float fl[12] = {1.5f};
  d.has_data = 0, d.data.len = 0, d.n_float_data = 12, d.float_data = fl;
  REQUIRE(datum_decode(&d, 0, "rec", &px) == 0);
  CHECK(px.c == 3 && px.data[0] == 1.5f);
  Caffe__Datum e = CAFFE__DATUM__INIT;
  e.encoded = 1, e.has_data = 1, e.data.data = (uint8_t *)"GIF89a....", e.data.len = 10;
  CHECK(datum_decode(&e, 0, "rec9", &px) != 0);
  CHECK(strstr(moka_error(), "rec9") && strstr(moka_error(), "GIF"));
  Caffe__Datum *u;
  CHECK(datum_unpack("\xff\xff\xff", 3, "key1", &u) != 0);
  CHECK(strstr(moka_error(), "key1") != NULL);
  datum_pixels_free(&px);
}

/* ---- the Data layer against Caffe's outputs -------------------------------- */

typedef struct DataConfig {
  const char *name, *source;
  int batch, forwards, crop;
  const char *mean_file; /* relative to golden/lmdb */
  int n_mean;
  float scale;
} DataConfig;

/* The five configurations of golden/README.md section 3 (data_<name>.prototxt;
 * test_data_layer_golden parses those files, the other tests build
 * variations of them in C). */
static const DataConfig CONFIGS[] = {
    {"raw32_plain", "lmdb_raw32", 8, 1, 0, NULL, 0, 1.0f},
    {"raw32_crop28_meanfile", "lmdb_raw32", 5, 2, 28, "mean.binaryproto", 0, 1.0f},
    {"raw32_crop28_meanvalue_scale", "lmdb_raw32", 5, 2, 28, NULL, 3, 0.017f},
    {"jpg_crop28_meanvalue_scale", "lmdb_jpg", 4, 2, 28, NULL, 3, 0.017f},
    {"jpg32_crop28_meanfile", "lmdb_jpg32", 8, 1, 28, "mean.binaryproto", 0, 1.0f},
};

static float MEAN_VALUES[3] = {104, 117, 123};

/* Fill the LayerParameter a data_<name>.prototxt describes, with paths
 * pointing into ../shared/golden/lmdb (the prototxts' paths are relative to
 * that folder). */
static void make_layer_param(const DataConfig *cfg, Caffe__LayerParameter *lp,
                             Caffe__DataParameter *dp, Caffe__TransformationParameter *tp,
                             char *source, char *mean) {
  caffe__layer_parameter__init(lp);
  caffe__data_parameter__init(dp);
  caffe__transformation_parameter__init(tp);
  lp->name = "data";
  lp->type = "Data";
  char rel[256];
  snprintf(rel, sizeof rel, "golden/lmdb/%s", cfg->source);
  snprintf(source, 1024, "%s", shared_path(rel));
  dp->source = source;
  dp->has_batch_size = 1;
  dp->batch_size = (uint32_t)cfg->batch;
  dp->has_backend = 1;
  dp->backend = CAFFE__DATA_PARAMETER__DB__LMDB;
  if (cfg->crop) tp->has_crop_size = 1, tp->crop_size = (uint32_t)cfg->crop;
  if (cfg->mean_file) {
    snprintf(rel, sizeof rel, "golden/lmdb/%s", cfg->mean_file);
    snprintf(mean, 1024, "%s", shared_path(rel));
    tp->mean_file = mean;
  }
  if (cfg->n_mean) tp->n_mean_value = 3, tp->mean_value = MEAN_VALUES;
  tp->has_scale = 1;
  tp->scale = cfg->scale;
  tp->has_mirror = 1;
  tp->mirror = 0;
  lp->data_param = dp;
  lp->transform_param = tp;
}

/* Parse golden/lmdb/data_<name>.prototxt (Caffe's own file) and return its
 * Data layer with data_param.source and transform_param.mean_file made
 * relative to ../shared/golden/lmdb (in the file they are relative to that
 * folder, where Caffe ran). Free *net with protobuf_c_message_free_unpacked. */
static Caffe__LayerParameter *golden_data_layer(const char *name, Caffe__NetParameter **net) {
  char rel[256];
  snprintf(rel, sizeof rel, "golden/lmdb/data_%s.prototxt", name);
  *net = NULL;
  if (prototxt_read_file(&caffe__net_parameter__descriptor, shared_path(rel),
                         (ProtobufCMessage **)net) != 0)
    return NULL;
  if ((*net)->n_layer != 1 || !(*net)->layer[0]->data_param) {
    moka_errorf("%s: expected one Data layer", rel);
    return NULL;
  }
  Caffe__LayerParameter *lp = (*net)->layer[0];
  char **paths[2] = {&lp->data_param->source,
                     lp->transform_param ? &lp->transform_param->mean_file : NULL};
  for (int i = 0; i < 2; i++) {
    if (!paths[i] || !*paths[i] || !**paths[i]) continue;
    snprintf(rel, sizeof rel, "golden/lmdb/%s", *paths[i]);
    char *abs = moka_strdup(shared_path(rel));
    if (!abs) return NULL;
    free(*paths[i]); /* protobuf-c frees strings with free() */
    *paths[i] = abs;
  }
  return lp;
}

static void test_data_layer_golden(void) {
  for (size_t k = 0; k < MOKA_ARRAY_LEN(CONFIGS); k++) {
    const DataConfig *cfg = &CONFIGS[k];
    Caffe__NetParameter *net;
    Caffe__LayerParameter *lp = golden_data_layer(cfg->name, &net);
    if (!lp) {
      CHECK_MSG(0, "%s: %s", cfg->name, moka_error());
      if (net) protobuf_c_message_free_unpacked(&net->base, NULL);
      continue;
    }
    /* the prototxt says what README's table says */
    CHECK(lp->data_param->batch_size == (uint32_t)cfg->batch &&
          lp->data_param->backend == CAFFE__DATA_PARAMETER__DB__LMDB &&
          lp->transform_param->crop_size == (uint32_t)cfg->crop &&
          lp->transform_param->scale == cfg->scale &&
          (int)lp->transform_param->n_mean_value == cfg->n_mean &&
          !lp->transform_param->mirror);
    Blob *top[2] = {blob_new("data"), blob_new("label")};
    Rng rng;
    rng_seed(&rng, 1);
    Layer *l = layer_create(lp, MOKA_TEST, &rng, NULL, 0, top, 2);
    if (!l) {
      CHECK_MSG(0, "%s: %s", cfg->name, moka_error());
      blob_free(top[0]);
      blob_free(top[1]);
      protobuf_c_message_free_unpacked(&net->base, NULL);
      continue;
    }
    int hw = cfg->crop ? cfg->crop : 32;
    CHECK(top[0]->num_axes == 4 && top[0]->shape[0] == cfg->batch && top[0]->shape[1] == 3 &&
          top[0]->shape[2] == hw && top[0]->shape[3] == hw);
    CHECK(top[1]->num_axes == 1 && top[1]->shape[0] == cfg->batch);
    for (int fwd = 0; fwd < cfg->forwards; fwd++) {
      REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
      char rel[256];
      size_t n;
      snprintf(rel, sizeof rel, "golden/lmdb/data_%s_fwd%d.f32", cfg->name, fwd);
      float *want = read_f32(shared_path(rel), &n);
      REQUIRE(want != NULL);
      CHECK_MSG(n == top[0]->count, "%s fwd%d: %zu values, golden %zu", cfg->name, fwd,
                top[0]->count, n);
      size_t bad = 0;
      for (size_t i = 0; i < n && i < top[0]->count; i++) bad += top[0]->data[i] != want[i];
      CHECK_MSG(bad == 0, "%s fwd%d: %zu of %zu values differ from Caffe's", cfg->name, fwd, bad,
                n);
      free(want);
      snprintf(rel, sizeof rel, "golden/lmdb/label_%s_fwd%d.f32", cfg->name, fwd);
      want = read_f32(shared_path(rel), &n);
      REQUIRE(want != NULL);
      CHECK(n == (size_t)cfg->batch && memcmp(want, top[1]->data, n * sizeof(float)) == 0);
      free(want);
    }
    /* TEST without mirror: only the prefetch thread's seed is drawn from
     * the net's stream (Caffe's StartInternalThread) */
    Rng fresh;
    rng_seed(&fresh, 1);
    rng_u32(&fresh);
    CHECK(rng_u32(&rng) == rng_u32(&fresh));
    layer_free(l);
    blob_free(top[0]);
    blob_free(top[1]);
    protobuf_c_message_free_unpacked(&net->base, NULL);
  }
}

/* Only a data top (no label), and the cursor wrapping over several passes. */
static void test_data_layer_one_top_wraps(void) {
  Caffe__LayerParameter lp;
  Caffe__DataParameter dp;
  Caffe__TransformationParameter tp;
  char source[1024], mean[1024];
  make_layer_param(&CONFIGS[0], &lp, &dp, &tp, source, mean);
  dp.batch_size = 3;
  Blob *top = blob_new("data");
  Rng rng;
  rng_seed(&rng, 5);
  Layer *l = layer_create(&lp, MOKA_TEST, &rng, NULL, 0, &top, 1);
  REQUIRE(l != NULL);
  size_t n;
  float *all = read_f32(shared_path("golden/lmdb/data_raw32_plain_fwd0.f32"), &n); /* 8 records */
  REQUIRE(all != NULL && n == 8 * 3072);
  int ok = 1;
  for (int fwd = 0; fwd < 6; fwd++) { /* 18 records: 2 passes and a bit */
    REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    for (int i = 0; i < 3; i++) {
      int rec = (fwd * 3 + i) % 8;
      ok &= memcmp(top->data + i * 3072, all + rec * 3072, 3072 * sizeof(float)) == 0;
    }
  }
  CHECK(ok);
  free(all);
  layer_free(l);
  blob_free(top);
}

/* TRAIN: Caffe's draw order (mirror coin, then h_off, then w_off, per
 * record) from the transformer's own mt19937 seeded by one draw of the net's
 * stream. */
static void test_train_random_crop_and_mirror(void) {
  Caffe__LayerParameter lp;
  Caffe__DataParameter dp;
  Caffe__TransformationParameter tp;
  char source[1024], mean[1024];
  make_layer_param(&CONFIGS[0], &lp, &dp, &tp, source, mean);
  dp.batch_size = 8;
  tp.has_crop_size = 1, tp.crop_size = 20;
  tp.mirror = 1;
  tp.has_scale = 1, tp.scale = 0.5f;
  tp.n_mean_value = 1, tp.mean_value = MEAN_VALUES;
  Blob *top[2] = {blob_new("data"), blob_new("label")};
  Rng net_rng;
  rng_seed(&net_rng, 1701);
  Layer *l = layer_create(&lp, MOKA_TRAIN, &net_rng, NULL, 0, top, 2);
  REQUIRE(l != NULL);
  /* expected streams: Caffe's setup takes 3 draws from the global stream
   * (InitRand, InitRand again: its draw seeds the transformer, thread seed) */
  Rng g, own;
  rng_seed(&g, 1701);
  rng_u32(&g);
  rng_seed(&own, rng_u32(&g));
  rng_u32(&g);
  CHECK(rng_u32(&net_rng) == rng_u32(&g)); /* the layer took exactly three draws */
  int mirrored = 0, offsets_seen = 0;
  for (int fwd = 0; fwd < 2; fwd++) {
    REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
    for (int i = 0; i < 8; i++) {
      char rel[128];
      snprintf(rel, sizeof rel, "golden/lmdb/datum_raw32_%d.u8", i);
      size_t len;
      uint8_t *u8 = read_all(shared_path(rel), &len); /* (3,32,32) */
      REQUIRE(u8 != NULL);
      int mir = rng_u32(&own) % 2;
      int h_off = (int)(rng_u32(&own) % 13), w_off = (int)(rng_u32(&own) % 13);
      mirrored += mir;
      offsets_seen |= 1 << (h_off % 8);
      int ok = 1;
      for (int c = 0; c < 3; c++)
        for (int h = 0; h < 20; h++)
          for (int w = 0; w < 20; w++) {
            float x = u8[(c * 32 + h_off + h) * 32 + w_off + w];
            float want = (x - 104.0f) * 0.5f;
            float got = top[0]->data[((i * 3 + c) * 20 + h) * 20 + (mir ? 19 - w : w)];
            ok &= got == want;
          }
      CHECK_MSG(ok, "fwd %d item %d: crop (%d,%d) mirror %d does not match", fwd, i, h_off, w_off,
                mir);
      free(u8);
    }
  }
  CHECK(mirrored > 2 && mirrored < 14 && offsets_seen != 1); /* the draws really vary */
  layer_free(l);
  blob_free(top[0]);
  blob_free(top[1]);
}

/* force_gray on encoded records: the Y channel, 1 channel out. */
static void test_force_gray_encoded(void) {
  Caffe__LayerParameter lp;
  Caffe__DataParameter dp;
  Caffe__TransformationParameter tp;
  char source[1024], mean[1024];
  make_layer_param(&CONFIGS[3], &lp, &dp, &tp, source, mean);
  tp.n_mean_value = 0;
  tp.has_force_gray = 1, tp.force_gray = 1;
  tp.scale = 1.0f;
  dp.batch_size = 2;
  Blob *top = blob_new("data");
  Layer *l = layer_create(&lp, MOKA_TEST, NULL, NULL, 0, &top, 1);
  REQUIRE(l != NULL);
  CHECK(top->shape[1] == 1 && top->shape[2] == 28);
  REQUIRE(layer_forward(l, MOKA_BACKEND_CPU) == 0);
  Image im;
  REQUIRE(image_read_file(shared_path("golden/lmdb/images/img1.jpg"), 1, &im) == 0); /* 32x40 */
  int ok = 1, h_off = (im.h - 28) / 2, w_off = (im.w - 28) / 2;
  for (int h = 0; h < 28; h++)
    for (int w = 0; w < 28; w++)
      ok &= top->data[784 + h * 28 + w] == (float)im.px[(h_off + h) * im.w + w_off + w];
  CHECK(ok);
  image_free(&im);
  layer_free(l);
  blob_free(top);
}

static void expect_setup_error(Caffe__LayerParameter *lp, const char *needle) {
  Blob *top[2] = {blob_new("data"), blob_new("label")};
  Rng rng;
  rng_seed(&rng, 3);
  Layer *l = layer_create(lp, MOKA_TEST, &rng, NULL, 0, top, 2);
  CHECK_MSG(l == NULL && strstr(moka_error(), needle) != NULL && strstr(moka_error(), "data"),
            "expected an error containing '%s', got '%s'", needle, l ? "(none)" : moka_error());
  layer_free(l);
  blob_free(top[0]);
  blob_free(top[1]);
}

static void test_data_layer_errors(void) {
  Caffe__LayerParameter lp;
  Caffe__DataParameter dp;
  Caffe__TransformationParameter tp;
  char source[1024], mean[1024];
  make_layer_param(&CONFIGS[1], &lp, &dp, &tp, source, mean);
  dp.has_backend = 0, dp.backend = CAFFE__DATA_PARAMETER__DB__LEVELDB;
  expect_setup_error(&lp, "LevelDB is not supported");
  dp.has_backend = 1, dp.backend = CAFFE__DATA_PARAMETER__DB__LMDB;
  dp.has_batch_size = 0, dp.batch_size = 0;
  expect_setup_error(&lp, "batch_size");
  dp.has_batch_size = 1, dp.batch_size = 5;
  tp.crop_size = 33;
  expect_setup_error(&lp, "smaller than crop_size 33");
  tp.crop_size = 28;
  tp.n_mean_value = 3, tp.mean_value = MEAN_VALUES;
  expect_setup_error(&lp, "both mean_file and mean_value");
  tp.mean_file = NULL, tp.n_mean_value = 2;
  expect_setup_error(&lp, "2 mean_value entries for 3-channel");
  tp.n_mean_value = 0;
  char badmean[1024];
  snprintf(badmean, sizeof badmean, "%s", shared_path("golden/lmdb/no_mean.binaryproto"));
  tp.mean_file = badmean;
  expect_setup_error(&lp, "no_mean.binaryproto");
  /* the golden mean is 32x32: with lmdb_jpg (images of other sizes) it does not fit */
  make_layer_param(&CONFIGS[1], &lp, &dp, &tp, source, mean);
  snprintf(source, sizeof source, "%s", shared_path("golden/lmdb/lmdb_jpg"));
  expect_setup_error(&lp, "mean_file is 3x32x32");
  make_layer_param(&CONFIGS[0], &lp, &dp, &tp, source, mean);
  snprintf(source, sizeof source, "%s", shared_path("golden/lmdb/nothing_here"));
  expect_setup_error(&lp, "nothing_here");
  lp.data_param = NULL;
  expect_setup_error(&lp, "data_param.source");
}

/* ---- writer ----------------------------------------------------------------- */

/* Remove a database folder (and the DB.skipped.txt convert_imageset writes
 * beside it). */
static void rm_tree(const char *dir) {
  char rep[1100];
  snprintf(rep, sizeof rep, "%s.skipped.txt", dir);
  unlink(rep);
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char p[1024];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* 2500 records of 6 KB (15 MB): crosses LMDB's default 10 MB map, so the
 * writer must grow it and replay the batch; 3 commits of up to 1000. */
static void test_db_writer(void) {
  char dir[] = "/tmp/moka_test_db_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char path[1100];
  snprintf(path, sizeof path, "%s/db", dir);
  DbWriter *w;
  REQUIRE(db_writer_open(path, &w) == 0);
  DbWriter *w2;
  CHECK(db_writer_open(path, &w2) != 0 && strstr(moka_error(), "already exists"));
  enum { N = 2500, VLEN = 6000 };
  uint8_t *val = malloc(VLEN);
  REQUIRE(val != NULL);
  int ok = 1;
  for (int i = N - 1; i >= 0; i--) { /* written out of order: the reader sorts by key */
    char key[32];
    int kl = snprintf(key, sizeof key, "%08d_k", i);
    memset(val, i & 255, VLEN);
    ok &= db_writer_put(w, key, (size_t)kl, val, VLEN) == 0;
  }
  CHECK_MSG(ok, "%s", moka_error());
  CHECK(db_writer_close(w) == 0);
  /* the map (and so the file) had to grow past LMDB's default 10 MiB */
  char datafile[1200];
  snprintf(datafile, sizeof datafile, "%s/data.mdb", path);
  struct stat st;
  CHECK(stat(datafile, &st) == 0 && st.st_size > 10485760);
  DbReader *r;
  REQUIRE(db_reader_open(path, &r) == 0);
  CHECK(db_reader_count(r) == N);
  ok = 1;
  for (int i = 0; i < N; i++) {
    char key[32];
    int kl = snprintf(key, sizeof key, "%08d_k", i);
    const void *k, *v;
    size_t klen, vlen;
    db_reader_current(r, &k, &klen, &v, &vlen);
    ok &= klen == (size_t)kl && memcmp(k, key, klen) == 0 && vlen == VLEN &&
          ((const uint8_t *)v)[VLEN - 1] == (i & 255);
    int wrapped;
    ok &= db_reader_next(r, &wrapped) == 0 && wrapped == (i == N - 1);
  }
  CHECK(ok);
  db_reader_close(r);
  free(val);
  rm_tree(path);
  rmdir(dir);
}


/* ---- convert_imageset / compute_image_mean ---------------------------------- */

/* Compare every record of `mine` with Caffe's `golden` LMDB: same keys, and
 * identical values; raw pixels may differ by 1 (resize rounding). Returns
 * the number of records whose bytes are identical. */
static int compare_dbs(const char *mine, const char *golden, int *n_records) {
  DbReader *a, *b;
  *n_records = 0;
  if (db_reader_open(mine, &a) != 0) {
    CHECK_MSG(0, "%s", moka_error());
    return 0;
  }
  if (db_reader_open(golden, &b) != 0) {
    CHECK_MSG(0, "%s", moka_error());
    db_reader_close(a);
    return 0;
  }
  CHECK(db_reader_count(a) == db_reader_count(b));
  int identical = 0;
  for (size_t k = 0; k < db_reader_count(b) && k < db_reader_count(a); k++) {
    const void *ka, *va, *kb, *vb;
    size_t kal, val, kbl, vbl;
    db_reader_current(a, &ka, &kal, &va, &val);
    db_reader_current(b, &kb, &kbl, &vb, &vbl);
    CHECK_MSG(kal == kbl && memcmp(ka, kb, kal) == 0, "key %s vs %s", db_reader_key_str(a),
              db_reader_key_str(b));
    if (val == vbl && memcmp(va, vb, val) == 0) {
      identical++;
    } else {
      Caffe__Datum *da, *dbm;
      if (datum_unpack(va, val, "mine", &da) == 0 && datum_unpack(vb, vbl, "golden", &dbm) == 0) {
        CHECK(da->label == dbm->label && da->encoded == dbm->encoded);
        DatumPixels pa = {0}, pb = {0};
        int drc = datum_decode(da, 0, "mine", &pa) | datum_decode(dbm, 0, "golden", &pb);
        CHECK_MSG(drc == 0, "%s", moka_error());
        if (drc == 0) {
          CHECK(pa.c == pb.c && pa.h == pb.h && pa.w == pb.w);
          float maxd = 0;
          for (size_t i = 0; pa.c == pb.c && pa.h == pb.h && pa.w == pb.w &&
                             i < (size_t)pa.c * pa.h * pa.w;
               i++)
            maxd = fmaxf(maxd, fabsf(pa.data[i] - pb.data[i]));
          CHECK_MSG(maxd <= 1.0f, "%s record %zu: pixels differ by up to %g", mine, k, maxd);
        }
        datum_pixels_free(&pa);
        datum_pixels_free(&pb);
        caffe__datum__free_unpacked(da, NULL);
        caffe__datum__free_unpacked(dbm, NULL);
      }
    }
    db_reader_next(a, NULL);
    db_reader_next(b, NULL);
    (*n_records)++;
  }
  db_reader_close(a);
  db_reader_close(b);
  return identical;
}

static void test_convert_imageset_golden(void) {
  char dir[] = "/tmp/moka_test_conv_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char root[1024], list[1024];
  snprintf(root, sizeof root, "%s/", shared_path("golden/lmdb/images"));
  snprintf(list, sizeof list, "%s", shared_path("golden/lmdb/list.txt"));
  struct {
    const char *name;
    int resize, encoded;
  } runs[] = {{"lmdb_raw32", 32, 0}, {"lmdb_jpg", 0, 1}, {"lmdb_jpg32", 32, 1}};
  for (size_t r = 0; r < MOKA_ARRAY_LEN(runs); r++) {
    char out[1200], rel[128];
    snprintf(out, sizeof out, "%s/%s", dir, runs[r].name);
    ConvertOptions o = {0};
    o.root = root;
    o.list = list;
    o.db = out;
    o.resize_height = o.resize_width = runs[r].resize;
    o.encoded = runs[r].encoded;
    o.encode_type = runs[r].encoded ? "jpg" : "";
    ConvertStats st;
    REQUIRE(convert_imageset(&o, &st) == 0);
    CHECK(st.lines == 8 && st.written == 8 && st.skipped == 0);
    snprintf(rel, sizeof rel, "golden/lmdb/%s", runs[r].name);
    int n, identical = compare_dbs(out, shared_path(rel), &n);
    CHECK(n == 8);
    /* measured: all 8 records of each database are byte-identical to Caffe's
     * (raw resize, original JPEG bytes, and resize + imencode quality 95) */
    CHECK_MSG(identical == 8, "%s: %d of 8 records byte-identical to Caffe's", runs[r].name,
              identical);
  }
  /* compute_image_mean on our raw32: the same binaryproto, byte for byte */
  char raw[1200], mean[1200];
  snprintf(raw, sizeof raw, "%s/lmdb_raw32", dir);
  snprintf(mean, sizeof mean, "%s/mean.binaryproto", dir);
  float cm[4];
  int ch = 0;
  REQUIRE(compute_image_mean(raw, mean, cm, 4, &ch) == 0);
  CHECK(ch == 3);
  size_t la, lb;
  uint8_t *a = read_all(mean, &la), *b = read_all(shared_path("golden/lmdb/mean.binaryproto"), &lb);
  REQUIRE(a && b);
  CHECK_MSG(la == lb && memcmp(a, b, la) == 0, "mean.binaryproto: %zu bytes vs Caffe's %zu", la,
            lb);
  size_t nf;
  float *mf = read_f32(shared_path("golden/lmdb/mean_binaryproto.f32"), &nf);
  REQUIRE(mf != NULL && nf == 3072);
  double m0 = 0;
  for (int i = 0; i < 1024; i++) m0 += mf[i];
  CHECK(fabs(cm[0] - m0 / 1024) < 1e-3);
  free(mf);
  free(a);
  free(b);
  /* the mean of an encoded LMDB (decoded as stored) */
  char jpg[1200];
  snprintf(jpg, sizeof jpg, "%s/lmdb_jpg32", dir);
  REQUIRE(compute_image_mean(jpg, NULL, cm, 4, &ch) == 0);
  CHECK(ch == 3 && cm[0] > 10 && cm[0] < 250);
  /* images of different sizes cannot be averaged */
  snprintf(jpg, sizeof jpg, "%s/lmdb_jpg", dir);
  CHECK(compute_image_mean(jpg, NULL, cm, 4, &ch) != 0);
  CHECK(strstr(moka_error(), "same size") != NULL);
  /* an existing database is not overwritten */
  ConvertOptions o = {0};
  o.root = root, o.list = list, o.db = raw;
  CHECK(convert_imageset(&o, NULL) != 0 && strstr(moka_error(), "already exists"));
  const char *names[] = {"lmdb_raw32", "lmdb_jpg", "lmdb_jpg32"};
  for (int i = 0; i < 3; i++) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    rm_tree(p);
  }
  unlink(mean);
  rmdir(dir);
}

/* Odd files are skipped one line each; keys keep their line numbers; with
 * --encoded, a PNG named .jpg is stored as it is (Caffe copies the file). */
static void test_convert_imageset_skips(void) {
  char dir[] = "/tmp/moka_test_skip_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char list[1200], out[1200], out2[1200];
  snprintf(list, sizeof list, "%s/list.txt", dir);
  FILE *f = fopen(list, "w");
  REQUIRE(f != NULL);
  fprintf(f, "colour.jpg 3\n"          /* 0 ok */
             "gif_named.jpg 1\n"       /* 1 GIF */
             "empty.jpg 1\n"           /* 2 empty */
             "with space.jpg 7\n"      /* 3 ok, space in the name */
             "no_such.jpg 2\n"         /* 4 missing */
             "png_named.jpg 4\n"       /* 5 ok (PNG content) */
             "truncated.jpg 5\n"       /* 6 ok with a warning, as OpenCV */
             "text_named.jpg 0\n");    /* 7 not an image */
  fclose(f);
  snprintf(out, sizeof out, "%s/db", dir);
  ConvertOptions o = {0};
  o.root = "tests/data/images/";
  o.list = list;
  o.db = out;
  o.resize_height = o.resize_width = 16;
  o.check_size = true;
  ConvertStats st;
  REQUIRE(convert_imageset(&o, &st) == 0);
  CHECK(st.lines == 8 && st.written == 4 && st.skipped == 4);
  DbReader *r;
  REQUIRE(db_reader_open(out, &r) == 0);
  const char *keys[] = {"00000000_colour.jpg", "00000003_with space.jpg", "00000005_png_named.jpg",
                        "00000006_truncated.jpg"};
  const int labels[] = {3, 7, 4, 5};
  CHECK(db_reader_count(r) == 4);
  for (int i = 0; i < 4; i++) {
    const void *k, *v;
    size_t kl, vl;
    db_reader_current(r, &k, &kl, &v, &vl);
    CHECK_MSG(kl == strlen(keys[i]) && !memcmp(k, keys[i], kl), "key %s", db_reader_key_str(r));
    Caffe__Datum *d;
    REQUIRE(datum_unpack(v, vl, "rec", &d) == 0);
    CHECK(d->label == labels[i] && d->channels == 3 && d->height == 16 && d->data.len == 768);
    caffe__datum__free_unpacked(d, NULL);
    db_reader_next(r, NULL);
  }
  db_reader_close(r);
  /* encoded, no resize: original bytes, whatever their format */
  snprintf(out2, sizeof out2, "%s/db_enc", dir);
  o.db = out2;
  o.resize_height = o.resize_width = 0;
  o.check_size = false;
  o.encoded = true;
  REQUIRE(convert_imageset(&o, &st) == 0);
  CHECK(st.written == 4);
  REQUIRE(db_reader_open(out2, &r) == 0);
  db_reader_next(r, NULL);
  db_reader_next(r, NULL); /* 00000005_png_named.jpg */
  const void *v;
  size_t vl, fl;
  db_reader_current(r, NULL, NULL, &v, &vl);
  Caffe__Datum *d;
  REQUIRE(datum_unpack(v, vl, "rec", &d) == 0);
  uint8_t *file = read_all("tests/data/images/png_named.jpg", &fl);
  REQUIRE(file != NULL);
  CHECK(d->encoded && d->data.len == fl && !memcmp(d->data.data, file, fl));
  CHECK(image_sniff(d->data.data, d->data.len) == IMG_PNG);
  free(file);
  caffe__datum__free_unpacked(d, NULL);
  db_reader_close(r);
  /* --check_size with images of different sizes stops the conversion */
  char out3[1200];
  snprintf(out3, sizeof out3, "%s/db_size", dir);
  o.db = out3;
  o.encoded = false;
  o.check_size = true;
  CHECK(convert_imageset(&o, &st) != 0 && strstr(moka_error(), "check_size"));
  /* an unknown encoding is refused up front */
  o.check_size = false;
  o.encode_type = "bmp";
  CHECK(convert_imageset(&o, &st) != 0 && strstr(moka_error(), "bmp"));
  rm_tree(out);
  rm_tree(out2);
  rm_tree(out3);
  unlink(list);
  rmdir(dir);
}

/* --shuffle: a permutation of the lines, the same for the same seed. */
static void test_convert_imageset_shuffle(void) {
  char dir[] = "/tmp/moka_test_shuf_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char root[1024], out[2][1200];
  snprintf(root, sizeof root, "%s/", shared_path("golden/lmdb/images"));
  char order[2][8][64];
  for (int run = 0; run < 2; run++) {
    snprintf(out[run], sizeof out[run], "%s/db%d", dir, run);
    ConvertOptions o = {0};
    o.root = root;
    o.list = shared_path("golden/lmdb/list.txt");
    o.db = out[run];
    o.encoded = true;
    o.shuffle = true;
    o.shuffle_seed = 42;
    REQUIRE(convert_imageset(&o, NULL) == 0);
    DbReader *r;
    REQUIRE(db_reader_open(out[run], &r) == 0);
    for (int i = 0; i < 8; i++) {
      snprintf(order[run][i], sizeof order[run][i], "%s", db_reader_key_str(r));
      db_reader_next(r, NULL);
    }
    db_reader_close(r);
  }
  int same = 1, identity = 1, seen = 0;
  for (int i = 0; i < 8; i++) {
    same &= !strcmp(order[0][i], order[1][i]);
    /* key = position in the shuffled list + the original name */
    int pos = atoi(order[0][i]), img = order[0][i][strlen(order[0][i]) - 5] - '0';
    CHECK(pos == i);
    identity &= img == i;
    seen |= 1 << img;
  }
  CHECK(same && !identity && seen == 255);
  rm_tree(out[0]);
  rm_tree(out[1]);
  rmdir(dir);
}

int main(void) {
  moka_set_log_level(1);
  RUN(test_db_reader_order_and_wrap);
  RUN(test_records_match_caffe);
  RUN(test_datum_build_matches_caffe_bytes);
  RUN(test_datum_errors);
  RUN(test_data_layer_golden);
  RUN(test_data_layer_one_top_wraps);
  RUN(test_train_random_crop_and_mirror);
  RUN(test_force_gray_encoded);
  RUN(test_data_layer_errors);
  RUN(test_db_writer);
  RUN(test_convert_imageset_golden);
  RUN(test_convert_imageset_skips);
  RUN(test_convert_imageset_shuffle);
  return test_summary();
}
