/* test_data_pipeline.c — the prefetch pipeline (src/data/prefetch.c), the
 * ImageData layer (src/layers/imagedata.c) and data_layer_seek:
 *   - the threaded pipeline gives exactly the synchronous reference's
 *     batches (src/data/reader.c), for 0..3 threads, TRAIN crops and mirrors
 *     included;
 *   - worker errors come back on the forward, naming the record, sticky,
 *     never a hang; destroy joins;
 *   - a slow net does not wait on data; batch buffers are not reallocated
 *     per batch and go through the pinned-memory hooks;
 *   - seeking reproduces an uninterrupted run;
 *   - ImageData against real Caffe 1.0 (TRAIN, shuffle, rand_skip, mirror,
 *     crop, resize; values measured with ../shared/tools/caffe-peer).
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/data_layer.h"
#include "data/db.h"
#include "data/prefetch.h"
#include "data/reader.h"
#include "datatest.h"
#include "image.h"
#include "layer.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

/* ---- the pipeline equals the synchronous reference ------------------------------ */

/* Data layer (prefetch, any thread count) vs DataReader (reader.c, the
 * synchronous reference), TRAIN with random crops and mirrors, over several
 * wrap-arounds, raw and encoded LMDBs. */
static void test_prefetch_matches_reference(void) {
  const char *dbs[2] = {"golden/lmdb/lmdb_raw32", "golden/lmdb/lmdb_jpg"};
  const int crops[2] = {20, 28};
  for (int d = 0; d < 2; d++)
    for (int threads = 0; threads <= 3; threads++) {
      TLayer t;
      int rc = tlayer_make(&t, MOKA_TRAIN, 77, threads,
                           "name: 'data' type: 'Data' top: 'data' top: 'label' "
                           "data_param { source: '%s' batch_size: 3 backend: LMDB prefetch: 2 } "
                           "transform_param { mirror: true crop_size: %d scale: 0.5 "
                           "mean_value: 100 mean_value: 110 mean_value: 120 }",
                           golden(dbs[d]), crops[d]);
      CHECK_MSG(rc == 0, "%s", moka_error());
      if (rc) {
        tlayer_free(&t);
        continue;
      }
      CHECK(prefetch_threads(data_layer_prefetcher(t.l)) == threads);
      DataReader ref;
      Rng g;
      rng_seed(&g, 77);
      REQUIRE(data_reader_open(&ref, "ref", golden(dbs[d]), 3, t.lp->transform_param, 1, &g) ==
              0);
      Blob *rd = blob_new("rd"), *rl = blob_new("rl");
      int same = 1;
      for (int f = 0; f < 7; f++) { /* 21 records: 2.6 passes over 8 */
        REQUIRE(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
        REQUIRE(data_reader_load_batch(&ref, rd, rl) == 0);
        same &= blobs_equal(t.top[0], rd) && blobs_equal(t.top[1], rl);
      }
      CHECK_MSG(same, "%s, %d threads: batches differ from the synchronous reference", dbs[d],
                threads);
      /* the layer took Caffe's three setup draws (2 InitRand + thread seed) */
      rng_u32(&g);
      CHECK(rng_u32(&g) == rng_u32(&t.rng));
      data_reader_close(&ref);
      blob_free(rd);
      blob_free(rl);
      tlayer_free(&t);
    }
}

/* ---- errors ---------------------------------------------------------------------- */

/* A database of 10 raw 3x6x6 records, labels = index; record `bad` is not a
 * Datum (kind 0) or has another size (kind 1). */
static void make_db(const char *path, int bad, int kind) {
  DbWriter *w;
  if (db_writer_open(path, &w) != 0) {
    CHECK_MSG(0, "%s", moka_error());
    return;
  }
  for (int i = 0; i < 10; i++) {
    char key[32];
    int kl = snprintf(key, sizeof key, "%08d_r%d", i, i);
    uint8_t px[3 * 7 * 7];
    for (size_t k = 0; k < sizeof px; k++) px[k] = (uint8_t)(i * 10 + k);
    Image im = {6, 6, 3, px};
    if (i == bad && kind == 1) im.h = 7, im.w = 7;
    Caffe__Datum d;
    datum_from_image(&im, i, &d);
    uint8_t *buf;
    size_t len;
    datum_pack(&d, &buf, &len);
    if (i == bad && kind == 0) memset(buf, 0xff, 3);
    db_writer_put(w, key, (size_t)kl, buf, len);
    free(buf);
    datum_clear(&d);
  }
  CHECK(db_writer_close(w) == 0);
}

static void rm_db(const char *path) {
  char p[1200];
  snprintf(p, sizeof p, "%s/data.mdb", path);
  unlink(p);
  snprintf(p, sizeof p, "%s/lock.mdb", path);
  unlink(p);
  rmdir(path);
}

static void test_worker_errors_reported(void) {
  char dir[] = "/tmp/moka_test_pf_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  for (int kind = 0; kind < 2; kind++)
    for (int threads = 0; threads <= 3; threads += 3) {
      char db[1100];
      snprintf(db, sizeof db, "%s/db%d", dir, kind);
      make_db(db, 5, kind);
      TLayer t;
      int rc = tlayer_make(&t, MOKA_TEST, 1, threads,
                           "name: 'd' type: 'Data' top: 'data' top: 'label' "
                           "data_param { source: '%s' batch_size: 4 backend: LMDB }",
                           db);
      REQUIRE(rc == 0);
      CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) == 0); /* records 0-3 */
      CHECK(t.top[1]->data[3] == 3.0f);
      for (int again = 0; again < 2; again++) { /* records 4-7: the error, then again (sticky) */
        CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) != 0);
        const char *e = moka_error();
        CHECK_MSG(strstr(e, "layer 'd'") && strstr(e, "record '00000005_r5'") &&
                      strstr(e, kind == 0 ? "not a caffe.Datum" : "3x7x7"),
                  "kind %d, %d threads: '%s'", kind, threads, e);
      }
      tlayer_free(&t); /* joins the threads (a hang here would stop the test) */
      rm_db(db);
    }
  rmdir(dir);
}

/* A record failing at the first batch: the error comes at the first forward
 * even though setup decoded record 0 fine; seeking past it recovers. */
static void test_error_then_seek_recovers(void) {
  char dir[] = "/tmp/moka_test_pf2_XXXXXX";
  REQUIRE(mkdtemp(dir) != NULL);
  char db[1100];
  snprintf(db, sizeof db, "%s/db", dir);
  make_db(db, 2, 0);
  TLayer t;
  REQUIRE(tlayer_make(&t, MOKA_TEST, 1, 2,
                      "name: 'd' type: 'Data' top: 'data' top: 'label' "
                      "data_param { source: '%s' batch_size: 2 backend: LMDB }",
                      db) == 0);
  CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
  CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) != 0 && strstr(moka_error(), "00000002_r2"));
  REQUIRE(data_layer_seek(t.l, 4) == 0);
  CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
  CHECK(t.top[1]->data[0] == 4.0f && t.top[1]->data[1] == 5.0f);
  CHECK(prefetch_position(data_layer_prefetcher(t.l)) == 6);
  tlayer_free(&t);
  rm_db(db);
  rmdir(dir);
}

/* ---- speed and memory -------------------------------------------------------------- */

static int n_alloc, n_free;
static void *counting_alloc(size_t n) {
  __atomic_add_fetch(&n_alloc, 1, __ATOMIC_SEQ_CST);
  return malloc(n);
}
static void counting_free(void *p) {
  if (p) __atomic_add_fetch(&n_free, 1, __ATOMIC_SEQ_CST);
  free(p);
}

/* The net computes (sleeps) 25 ms per batch; decoding a batch of 8 small
 * JPEGs takes far less: after the first batch the forward never waits.
 * Batch buffers come from the hooks, once per slot, not per batch. */
static void test_net_does_not_wait_and_no_malloc_per_batch(void) {
  void *(*old_alloc)(size_t) = data_alloc_host;
  void (*old_free)(void *) = data_free_host;
  data_alloc_host = counting_alloc;
  data_free_host = counting_free;
  n_alloc = n_free = 0;
  TLayer t;
  int rc = tlayer_make(&t, MOKA_TRAIN, 3, 2,
                       "name: 'd' type: 'Data' top: 'data' top: 'label' "
                       "data_param { source: '%s' batch_size: 8 backend: LMDB prefetch: 3 } "
                       "transform_param { crop_size: 28 mirror: true }",
                       golden("golden/lmdb/lmdb_jpg"));
  CHECK_MSG(rc == 0, "%s", moka_error());
  if (rc == 0) {
    Prefetcher *pf = data_layer_prefetcher(t.l);
    REQUIRE(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
    double w0 = prefetch_wait_seconds(pf);
    const int N = 12;
    for (int f = 0; f < N; f++) {
      struct timespec ts = {0, 25 * 1000 * 1000};
      nanosleep(&ts, NULL); /* the net's compute */
      REQUIRE(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
    }
    double waited = prefetch_wait_seconds(pf) - w0;
    fprintf(stderr, "  waited %.2f ms over %d forwards (net: 25 ms each)\n", waited * 1e3, N);
    CHECK_MSG(waited < 0.25 * N * 0.025, "the net waited %.1f ms on data", waited * 1e3);
    /* 3 slots: one data + one label buffer each, never again */
    CHECK_MSG(n_alloc == 6, "%d batch allocations", n_alloc);
  }
  tlayer_free(&t);
  CHECK(n_free == n_alloc);
  data_alloc_host = old_alloc;
  data_free_host = old_free;
}

/* ---- seek ------------------------------------------------------------------------- */

/* Seeking to record r gives what an uninterrupted run gives from record r
 * (records and random crops/mirrors), for Data and ImageData (shuffled,
 * rand_skip, across reshuffles). */
static void test_seek_matches_uninterrupted(void) {
  char list[] = "/tmp/moka_test_seek_XXXXXX";
  REQUIRE(write_image_list(list, 0) == 0);
  char layers[2][2048];
  snprintf(layers[0], sizeof layers[0],
           "name: 'd' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s' batch_size: 3 backend: LMDB } "
           "transform_param { mirror: true crop_size: 24 }",
           golden("golden/lmdb/lmdb_raw32"));
  snprintf(layers[1], sizeof layers[1],
           "name: 'd' type: 'ImageData' top: 'data' top: 'label' "
           "image_data_param { source: '%s' root_folder: '%s/' batch_size: 3 shuffle: true "
           "rand_skip: 6 new_height: 30 new_width: 30 } "
           "transform_param { mirror: true crop_size: 24 }",
           list, golden("golden/lmdb/images"));
  for (int k = 0; k < 2; k++)
    for (int threads = 0; threads <= 2; threads += 2) {
      TLayer a, b;
      REQUIRE(tlayer_make(&a, MOKA_TRAIN, 9, threads, "%s", layers[k]) == 0);
      REQUIRE(tlayer_make(&b, MOKA_TRAIN, 9, 2 - threads, "%s", layers[k]) == 0);
      enum { F = 9 }; /* 27 records: several wraps (and reshuffles) */
      Blob *want[F];
      float labels[F][3];
      for (int i = 0; i < F; i++) {
        REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
        want[i] = blob_new("w");
        blob_reshape_like(want[i], a.top[0]);
        memcpy(want[i]->data, a.top[0]->data, a.top[0]->count * sizeof(float));
        memcpy(labels[i], a.top[1]->data, sizeof labels[i]);
      }
      const int starts[] = {15, 3, 0, 24, 6};
      for (size_t s = 0; s < MOKA_ARRAY_LEN(starts); s++) {
        REQUIRE(data_layer_seek(b.l, (uint64_t)starts[s]) == 0);
        int ok = 1;
        for (int i = starts[s] / 3; i < F; i++) {
          REQUIRE(layer_forward(b.l, MOKA_BACKEND_CPU) == 0);
          ok &= blobs_equal(b.top[0], want[i]) && !memcmp(b.top[1]->data, labels[i], 12);
        }
        CHECK_MSG(ok, "%s, seek to %d: differs from the uninterrupted run",
                  k ? "ImageData" : "Data", starts[s]);
      }
      if (k == 1) {
        /* after the skipped part of the first pass, each pass of 8 records
         * holds every label once, and the passes are reshuffled */
        int found = 0;
        for (int o = 0; o < 8 && !found; o++) {
          int seen[2] = {0, 0}, same_order = 1;
          for (int i = 0; i < 8; i++)
            for (int pass = 0; pass < 2; pass++) {
              int r = o + pass * 8 + i;
              seen[pass] |= 1 << (int)labels[r / 3][r % 3];
            }
          for (int i = 0; i < 8; i++) {
            int r = o + i, r2 = o + 8 + i;
            same_order &= labels[r / 3][r % 3] == labels[r2 / 3][r2 % 3];
          }
          found = seen[0] == 255 && seen[1] == 255 && !same_order;
        }
        CHECK_MSG(found, "ImageData: no two reshuffled passes of all 8 labels");
      }
      for (int i = 0; i < F; i++) blob_free(want[i]);
      tlayer_free(&a);
      tlayer_free(&b);
    }
  Layer fake = {0};
  LayerType ft = {.name = "ReLU"};
  fake.type = &ft;
  fake.name = "relu";
  CHECK(data_layer_seek(&fake, 3) != 0 && strstr(moka_error(), "relu"));
  unlink(list);
}

/* ---- ImageData ------------------------------------------------------------------------ */

/* Caffe 1.0's ImageData values (datatest.h) with seed 5. */
static const CaffeItem CAFFE_IMAGEDATA_5[18] = {
    {0, 0, 11, 10317.0, 5657267.0},   {0, 1, 17, 36425.0, 22624366.0},
    {0, 2, 14, -1318.0, -7116656.0},  {1, 0, 10, 12358.0, -8400779.0},
    {1, 1, 13, 12918.0, -16613019.0}, {1, 2, 12, 18581.0, 27879048.0},
    {2, 0, 14, -3828.0, -1382474.0},  {2, 1, 12, 17991.0, 26189776.0},
    {2, 2, 17, 29260.0, 14362799.0},  {3, 0, 13, 15360.0, -11783310.0},
    {3, 1, 10, 12358.0, -8400779.0},  {3, 2, 16, 4784.0, -16357910.0},
    {4, 0, 15, 13100.0, 14124031.0},  {4, 1, 11, 17958.0, 18425780.0},
    {4, 2, 10, 10655.0, -12094149.0}, {5, 0, 15, 13100.0, 14311701.0},
    {5, 1, 12, 17991.0, 26374499.0},  {5, 2, 17, 34982.0, 21113727.0},
};

static void check_against_caffe(const char *name, TLayer *t, const CaffeItem *want) {
  int bad = 0;
  for (int f = 0; f < 6; f++) {
    if (layer_forward(t->l, MOKA_BACKEND_CPU) != 0) {
      CHECK_MSG(0, "%s: %s", name, moka_error());
      return;
    }
    caffe_items_check(name, f, t->top[0], t->top[1], want, &bad);
  }
  CHECK_MSG(bad == 0, "%s: %d of 18 items differ from Caffe's", name, bad);
}

static void test_against_caffe(void) {
  char list[] = "/tmp/moka_test_idl_XXXXXX";
  REQUIRE(write_image_list(list, 10) == 0);
  const uint32_t seeds[2] = {1701, 5};
  const CaffeItem *wants[2] = {CAFFE_IMAGEDATA_1701, CAFFE_IMAGEDATA_5};
  for (int s = 0; s < 2; s++)
    for (int threads = 0; threads <= 3; threads += 3) {
      TLayer t;
      int rc = tlayer_make(&t, MOKA_TRAIN, seeds[s], threads, CAFFE_IMAGEDATA_LAYER, list,
                           golden("golden/lmdb/images"));
      CHECK_MSG(rc == 0, "%s", moka_error());
      if (rc == 0) {
        CHECK(t.top[0]->shape[0] == 3 && t.top[0]->shape[1] == 3 && t.top[0]->shape[2] == 28);
        char name[64];
        snprintf(name, sizeof name, "ImageData seed %u, %d threads", seeds[s], threads);
        check_against_caffe(name, &t, wants[s]);
      }
      tlayer_free(&t);
    }
  for (int threads = 0; threads <= 3; threads += 3) {
    TLayer t;
    int rc = tlayer_make(&t, MOKA_TRAIN, 1701, threads, CAFFE_DATA_LAYER,
                         golden("golden/lmdb/lmdb_raw32"));
    CHECK_MSG(rc == 0, "%s", moka_error());
    if (rc == 0) check_against_caffe(threads ? "Data, 3 threads" : "Data, sync", &t, CAFFE_DATA_1701);
    tlayer_free(&t);
  }
  unlink(list);
}

/* TEST, no transform: every item is the image decoded as cv::imread, resized
 * as cv::resize, (C,H,W); paths with spaces; grey with is_color: false;
 * blank lines ignored. */
static void test_imagedata_pixels(void) {
  char list[] = "/tmp/moka_test_idp_XXXXXX";
  int fd = mkstemp(list);
  REQUIRE(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fprintf(f, "colour.jpg 1\n\nwith space.jpg 2\r\npng_named.jpg 3\ngrey.jpg 4\n");
  fclose(f);
  const char *files[4] = {"colour.jpg", "with space.jpg", "png_named.jpg", "grey.jpg"};
  for (int color = 0; color < 2; color++) {
    TLayer t;
    int rc = tlayer_make(&t, MOKA_TEST, 1, 2,
                         "name: 'data' type: 'ImageData' top: 'data' top: 'label' "
                         "image_data_param { source: '%s' root_folder: 'tests/data/images/' "
                         "batch_size: 3 new_height: 11 new_width: 13 is_color: %s }",
                         list, color ? "true" : "false");
    CHECK_MSG(rc == 0, "%s", moka_error());
    if (rc) {
      tlayer_free(&t);
      continue;
    }
    const int C = color ? 3 : 1;
    CHECK(t.top[0]->shape[1] == C && t.top[0]->shape[2] == 11 && t.top[0]->shape[3] == 13);
    int ok = 1;
    for (int fw = 0; fw < 2; fw++) {
      REQUIRE(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
      for (int i = 0; i < 3; i++) {
        int k = (fw * 3 + i) % 4;
        char p[256];
        snprintf(p, sizeof p, "tests/data/images/%s", files[k]);
        Image im, rs;
        REQUIRE(image_read_file(p, C, &im) == 0);
        REQUIRE(image_resize_bilinear(&im, 11, 13, &rs) == 0);
        ok &= t.top[1]->data[i] == (float)(k + 1);
        for (int c = 0; c < C; c++)
          for (int y = 0; y < 11; y++)
            for (int x = 0; x < 13; x++)
              ok &= t.top[0]->data[((i * C + c) * 11 + y) * 13 + x] ==
                    (float)rs.px[(y * 13 + x) * C + c];
        image_free(&im);
        image_free(&rs);
      }
    }
    CHECK(ok);
    tlayer_free(&t);
  }
  unlink(list);
}

static void expect_setup_error(const char *needle, const char *fmt, const char *a, const char *b) {
  TLayer t;
  char text[2048];
  snprintf(text, sizeof text, fmt, a, b);
  int rc = tlayer_make(&t, MOKA_TRAIN, 1, 2, "%s", text);
  CHECK_MSG(rc != 0 && strstr(moka_error(), needle), "want an error with '%s', got %s", needle,
            rc ? moka_error() : "none");
  tlayer_free(&t);
}

static void test_imagedata_errors(void) {
  char list[] = "/tmp/moka_test_ide_XXXXXX";
  int fd = mkstemp(list);
  REQUIRE(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fprintf(f, "colour.jpg 1\nwith space.jpg 2\nno_label.jpg\ncolour.jpg 4\n");
  fclose(f);
  const char *layer = "name: 'data' type: 'ImageData' top: 'data' top: 'label' "
                      "image_data_param { source: '%s' root_folder: '%s' batch_size: 2 }";
  expect_setup_error("line 3: missing label", layer, list, "tests/data/images/");
  f = fopen(list, "w");
  fprintf(f, "colour.jpg 1\ncolour.jpg x2\n");
  fclose(f);
  expect_setup_error("line 2: the label is not an integer", layer, list, "tests/data/images/");
  f = fopen(list, "w");
  fprintf(f, "\n \n");
  fclose(f);
  expect_setup_error("lists no image", layer, list, "tests/data/images/");
  expect_setup_error("no_such_list", layer, "/tmp/no_such_list.txt", "");
  expect_setup_error("new_height (5) and new_width (0)",
                     "name: 'd' type: 'ImageData' top: 'data' image_data_param { source: '%s' "
                     "new_height: 5 }%s",
                     list, "");
  /* a bad image: the forward that reaches it fails, naming the list line and file */
  f = fopen(list, "w");
  fprintf(f, "colour.jpg 1\ncolour.jpg 2\ncolour.jpg 3\ngif_named.jpg 4\n");
  fclose(f);
  for (int threads = 0; threads <= 2; threads += 2) {
    TLayer t;
    int rc = tlayer_make(&t, MOKA_TEST, 1, threads,
                         "name: 'data' type: 'ImageData' top: 'data' top: 'label' "
                         "image_data_param { source: '%s' root_folder: 'tests/data/images/' "
                         "batch_size: 2 }",
                         list);
    REQUIRE(rc == 0);
    CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) == 0);
    CHECK(layer_forward(t.l, MOKA_BACKEND_CPU) != 0);
    CHECK_MSG(strstr(moka_error(), "line 4") && strstr(moka_error(), "gif_named.jpg") &&
                  strstr(moka_error(), "GIF"),
              "%s", moka_error());
    tlayer_free(&t);
  }
  /* the first image unreadable: a setup error */
  f = fopen(list, "w");
  fprintf(f, "empty.jpg 1\n");
  fclose(f);
  expect_setup_error("empty file", layer, list, "tests/data/images/");
  unlink(list);
}

int main(void) {
  moka_set_log_level(2);
  RUN(test_prefetch_matches_reference);
  RUN(test_worker_errors_reported);
  RUN(test_error_then_seek_recovers);
  RUN(test_net_does_not_wait_and_no_malloc_per_batch);
  RUN(test_seek_matches_uninterrupted);
  RUN(test_against_caffe);
  RUN(test_imagedata_pixels);
  RUN(test_imagedata_errors);
  return test_summary();
}
