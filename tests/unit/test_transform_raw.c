/* test_transform_raw.c — the host half of the device transforms (issue 7):
 * the prefetch pipeline's raw mode (uint8 records + per-image crop offset
 * and mirror flag, src/data/prefetch.h) followed by transform_apply_raw_host
 * (the plain-C twin of kernels/transform.cu, and its oracle) must give
 * exactly what the float path gives, so the RNG order is proven here on the
 * CPU; tests/gpu/test_cuda_transform.c then checks the kernel against
 * transform_apply_raw_host.
 *   - the golden Data-layer outputs of real Caffe (crop, mean file,
 *     mean_value, scale, encoded JPEGs of different sizes), bit for bit;
 *   - TRAIN (random crops and mirrors) against the float layer over several
 *     batches and wrap-arounds, 0 and 3 threads, two batches held at once;
 *     and against real Caffe's TRAIN values (Data and ImageData);
 *   - switching to raw mid-run, and seeking in raw mode;
 *   - errors: mixed sizes without crop, float_data Datums, wrong-mode calls;
 *   - (CUDA builds) the kernel's own source, kernels/transform.cu, run on the
 *     CPU (its grid-stride loop as a plain loop; __fsub_rn/__fmul_rn as float
 *     operations) against transform_apply_raw_host on synthetic batches and
 *     against the float layer on TRAIN batches: its index arithmetic, mirror,
 *     mean indexing and labels are checked here, where there is no GPU.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data_layer.h"
#include "data/datum.h"
#include "data/prefetch.h"
#include "data/transform.h"
#include "datatest.h"
#include "layer.h"
#include "prototxt.h"
#include "testlib.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------------- */

/* A data layer (tlayer_make, datatest.h) with its transform in t->tf. */
static int rlayer_make(TLayer *t, int phase, uint32_t seed, int threads, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int rlayer_make(TLayer *t, int phase, uint32_t seed, int threads, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = tlayer_vmake(t, phase, seed, threads, fmt, ap);
  va_end(ap);
  return rc == 0 ? tlayer_init_transform(t, phase) : -1;
}

/* The raw buffers: counted, so the test sees they come from the hook. */
static int n_raw_alloc, n_raw_free;
static void *raw_alloc(void *ctx, size_t bytes) {
  (void)ctx;
  __atomic_add_fetch(&n_raw_alloc, 1, __ATOMIC_RELAXED);
  return moka_malloc(bytes);
}
static void raw_free(void *ctx, void *p) {
  (void)ctx;
  __atomic_add_fetch(&n_raw_free, 1, __ATOMIC_RELAXED);
  free(p);
}

static int to_raw(TLayer *t, size_t hint) {
  PrefetchRawAlloc a = {raw_alloc, raw_free, NULL, hint};
  return prefetch_set_raw(data_layer_prefetcher(t->l), &a);
}

/* Every item of a raw batch lies inside the buffer, after the parameters,
 * its crop inside its image, and it carries its label (which goes up to the
 * device inside the batch). */
static int batch_well_formed(const PrefetchRawBatch *b) {
  const uint64_t hdr = transform_raw_header_bytes(b->batch);
  for (int i = 0; i < b->batch; i++) {
    const TransformRawItem *it = &b->items[i];
    const uint64_t n = (uint64_t)it->c * it->h * it->w;
    if (it->offset < hdr || it->offset + n > b->n_bytes) return 0;
    if (it->c != b->c || it->h_off < 0 || it->w_off < 0 || it->h_off + b->h > it->h ||
        it->w_off + b->w > it->w || (it->mirror != 0 && it->mirror != 1) ||
        it->label != b->labels[i])
      return 0;
  }
  return 1;
}

/* Apply a taken raw batch on the host into data (N,C,H,W) and label (N). */
static void apply_batch(TLayer *t, const PrefetchRawBatch *b, Blob *data, Blob *label) {
  REQUIRE(blob_reshape4(data, b->batch, b->c, b->h, b->w) == 0);
  int shape[1] = {b->batch};
  REQUIRE(blob_reshape(label, 1, shape) == 0);
  transform_apply_raw_host(&t->tf, b->bytes, b->items, b->batch, b->c, b->h, b->w, data->data);
  memcpy(label->data, b->labels, (size_t)b->batch * sizeof(float));
}

/* The next raw batch of t, transformed on the host. 0 / -1. */
static int raw_forward(TLayer *t, Blob *data, Blob *label) {
  Prefetcher *pf = data_layer_prefetcher(t->l);
  PrefetchRawBatch b;
  if (prefetch_raw_take(pf, 1, &b) != 0) return -1;
  CHECK(batch_well_formed(&b));
  apply_batch(t, &b, data, label);
  prefetch_raw_release(pf, &b);
  return 0;
}

/* ---- the golden Data-layer outputs of real Caffe -------------------------------------------- */

typedef struct Golden {
  const char *name, *source;
  int batch, forwards, crop;
  const char *mean; /* transform_param lines */
} Golden;

static const Golden GOLDEN[] = {
    {"raw32_plain", "lmdb_raw32", 8, 1, 0, ""},
    {"raw32_crop28_meanfile", "lmdb_raw32", 5, 2, 28, "mean_file: '%s'"},
    {"raw32_crop28_meanvalue_scale", "lmdb_raw32", 5, 2, 28,
     "mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017"},
    {"jpg_crop28_meanvalue_scale", "lmdb_jpg", 4, 2, 28,
     "mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017"},
    {"jpg32_crop28_meanfile", "lmdb_jpg32", 8, 1, 28, "mean_file: '%s'"},
};

static void test_golden(void) {
  for (size_t k = 0; k < MOKA_ARRAY_LEN(GOLDEN); k++) {
    const Golden *g = &GOLDEN[k];
    char src[1024], mean[1536], tp[2048];
    snprintf(src, sizeof src, "golden/lmdb/%s", g->source);
    snprintf(mean, sizeof mean, g->mean, golden("golden/lmdb/mean.binaryproto"));
    snprintf(tp, sizeof tp, "%s%s%s", g->crop ? "crop_size: 28 " : "", mean, " mirror: false");
    TLayer t;
    int rc = rlayer_make(&t, MOKA_TEST, 1, 2,
                         "name: 'data' type: 'Data' top: 'data' top: 'label' "
                         "data_param { source: '%s' batch_size: %d backend: LMDB } "
                         "transform_param { %s }",
                         golden(src), g->batch, tp);
    CHECK_MSG(rc == 0, "%s: %s", g->name, moka_error());
    if (rc == 0) rc = to_raw(&t, 3072);
    CHECK_MSG(rc == 0, "%s: %s", g->name, moka_error());
    CHECK(prefetch_is_raw(data_layer_prefetcher(t.l)));
    for (int f = 0; rc == 0 && f < g->forwards; f++) {
      Blob *d = blob_new("d"), *l = blob_new("l");
      REQUIRE(raw_forward(&t, d, l) == 0);
      char rel[256];
      size_t n;
      snprintf(rel, sizeof rel, "golden/lmdb/data_%s_fwd%d.f32", g->name, f);
      float *want = read_f32(golden(rel), &n);
      REQUIRE(want != NULL);
      size_t bad = n == d->count ? 0 : n + 1;
      for (size_t i = 0; i < n && i < d->count; i++) bad += d->data[i] != want[i];
      CHECK_MSG(bad == 0, "%s fwd%d: %zu of %zu values differ from Caffe's", g->name, f, bad, n);
      free(want);
      snprintf(rel, sizeof rel, "golden/lmdb/label_%s_fwd%d.f32", g->name, f);
      want = read_f32(golden(rel), &n);
      REQUIRE(want != NULL);
      CHECK(n == (size_t)g->batch && memcmp(want, l->data, n * sizeof(float)) == 0);
      free(want);
      blob_free(d);
      blob_free(l);
    }
    tlayer_free(&t);
  }
}

/* ---- TRAIN: the float layer and the raw path, side by side ------------------------------------
 */

typedef struct TrainCase {
  const char *source;
  const char *transform;
} TrainCase;

static void test_train_matches_float(void) {
  char mf[1200];
  snprintf(mf, sizeof mf, "mirror: true crop_size: 24 mean_file: '%s'",
           golden("golden/lmdb/mean.binaryproto"));
  const TrainCase cases[] = {
      {"golden/lmdb/lmdb_raw32",
       "mirror: true crop_size: 20 scale: 0.5 mean_value: 100 mean_value: 110 mean_value: 120"},
      /* JPEGs of 8 different sizes in one batch: per-image sizes and offsets */
      {"golden/lmdb/lmdb_jpg",
       "mirror: true crop_size: 28 scale: 0.017 mean_value: 104 mean_value: 117 mean_value: 123"},
      {"golden/lmdb/lmdb_jpg32", mf},
      {"golden/lmdb/lmdb_raw32", "mirror: true mean_value: 7"}, /* mirror only, no crop */
      {"golden/lmdb/lmdb_raw32", "crop_size: 31 scale: 2"},     /* crop only */
  };
  for (size_t c = 0; c < MOKA_ARRAY_LEN(cases); c++)
    for (int threads = 0; threads <= 3; threads += 3) {
      TLayer a, b;
      const char *fmt =
          "name: 'data' type: 'Data' top: 'data' top: 'label' "
          "data_param { source: '%s' batch_size: 3 backend: LMDB prefetch: 3 } "
          "transform_param { %s }";
      int rc = rlayer_make(&a, MOKA_TRAIN, 4242, threads, fmt, golden(cases[c].source),
                           cases[c].transform);
      if (rc == 0)
        rc = rlayer_make(&b, MOKA_TRAIN, 4242, threads, fmt, golden(cases[c].source),
                         cases[c].transform);
      if (rc == 0) rc = to_raw(&b, 0);
      CHECK_MSG(rc == 0, "case %zu: %s", c, moka_error());
      if (rc) {
        tlayer_free(&a);
        tlayer_free(&b);
        continue;
      }
      Prefetcher *pf = data_layer_prefetcher(b.l);
      Blob *d = blob_new("d"), *l = blob_new("l");
      int same = 1, mirrors = 0, offs = 0;
      for (int f = 0; f < 8;) { /* 24 records: 3 passes over 8 */
        /* with threads, hold two batches at once (as the CUDA forward does) */
        PrefetchRawBatch rb[2];
        const int n = threads ? 2 : 1;
        for (int k = 0; k < n; k++) {
          REQUIRE(prefetch_raw_take(pf, 1, &rb[k]) == 0);
          CHECK(batch_well_formed(&rb[k]));
        }
        for (int k = 0; k < n; k++, f++) {
          REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
          apply_batch(&b, &rb[k], d, l);
          same &= blobs_equal(a.top[0], d) && blobs_equal(a.top[1], l);
          for (int i = 0; i < rb[k].batch; i++)
            mirrors += rb[k].items[i].mirror, offs |= rb[k].items[i].h_off + rb[k].items[i].w_off;
          prefetch_raw_release(pf, &rb[k]);
        }
      }
      CHECK_MSG(same, "case %zu (%s), %d threads: raw batches differ from the float path", c,
                cases[c].transform, threads);
      if (strstr(cases[c].transform, "mirror: true")) CHECK(mirrors > 2 && mirrors < 22);
      if (strstr(cases[c].transform, "crop_size")) CHECK(offs != 0);
      /* both layers took the same setup draws from the net's stream */
      CHECK(rng_u32(&a.rng) == rng_u32(&b.rng));
      blob_free(d);
      blob_free(l);
      tlayer_free(&a);
      tlayer_free(&b);
    }
}

/* ---- TRAIN against real Caffe (values measured with caffe-peer: the tables of
 * datatest.h, shared with tests/unit/test_data_pipeline.c) ---------------------------------------
 */

static void check_raw_against_caffe(const char *name, TLayer *t, const CaffeItem *want) {
  int bad = 0;
  Blob *d = blob_new("d"), *l = blob_new("l");
  for (int f = 0; f < 6; f++) {
    if (raw_forward(t, d, l) != 0) {
      CHECK_MSG(0, "%s: %s", name, moka_error());
      break;
    }
    caffe_items_check(name, f, d, l, want, &bad);
  }
  CHECK_MSG(bad == 0, "%s: %d of 18 items differ from Caffe's", name, bad);
  blob_free(d);
  blob_free(l);
}

static void test_against_caffe(void) {
  char list[] = "/tmp/moka_test_raw_XXXXXX";
  REQUIRE(write_image_list(list, 10) == 0);
  for (int threads = 0; threads <= 3; threads += 3) {
    TLayer t;
    int rc = rlayer_make(&t, MOKA_TRAIN, 1701, threads, CAFFE_IMAGEDATA_LAYER, list,
                         golden("golden/lmdb/images"));
    if (rc == 0) rc = to_raw(&t, 3072);
    CHECK_MSG(rc == 0, "%s", moka_error());
    if (rc == 0)
      check_raw_against_caffe(threads ? "ImageData raw, 3 threads" : "ImageData raw, sync", &t,
                              CAFFE_IMAGEDATA_1701);
    tlayer_free(&t);
    rc = rlayer_make(&t, MOKA_TRAIN, 1701, threads, CAFFE_DATA_LAYER,
                     golden("golden/lmdb/lmdb_raw32"));
    if (rc == 0) rc = to_raw(&t, 3072);
    CHECK_MSG(rc == 0, "%s", moka_error());
    if (rc == 0)
      check_raw_against_caffe(threads ? "Data raw, 3 threads" : "Data raw, sync", &t,
                              CAFFE_DATA_1701);
    tlayer_free(&t);
  }
  unlink(list);
}

/* ImageData without resize (images of 8 sizes) and with a mean file on
 * resized images: raw == float. */
static void test_imagedata_matches_float(void) {
  char list[] = "/tmp/moka_test_raw_XXXXXX";
  REQUIRE(write_image_list(list, 0) == 0);
  char extra[2][1300];
  snprintf(extra[0], sizeof extra[0],
           "} transform_param { mirror: true crop_size: 27 scale: 0.25 }");
  snprintf(extra[1], sizeof extra[1],
           "new_height: 32 new_width: 32 } transform_param { mirror: true crop_size: 30 "
           "mean_file: '%s' }",
           golden("golden/lmdb/mean.binaryproto"));
  for (int e = 0; e < 2; e++) {
    TLayer a, b;
    const char *fmt =
        "name: 'data' type: 'ImageData' top: 'data' top: 'label' "
        "image_data_param { source: '%s' root_folder: '%s/' batch_size: 4 "
        "shuffle: true %s";
    int rc = rlayer_make(&a, MOKA_TRAIN, 99, 2, fmt, list, golden("golden/lmdb/images"), extra[e]);
    if (rc == 0)
      rc = rlayer_make(&b, MOKA_TRAIN, 99, 2, fmt, list, golden("golden/lmdb/images"), extra[e]);
    if (rc == 0) rc = to_raw(&b, 0);
    CHECK_MSG(rc == 0, "ImageData case %d: %s", e, moka_error());
    if (rc == 0) {
      Blob *d = blob_new("d"), *l = blob_new("l");
      int same = 1;
      for (int k = 0; k < 5; k++) { /* 20 records: reshuffled passes */
        REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
        REQUIRE(raw_forward(&b, d, l) == 0);
        same &= blobs_equal(a.top[0], d) && blobs_equal(a.top[1], l);
      }
      CHECK_MSG(same, "ImageData case %d: raw batches differ from the float path", e);
      blob_free(d);
      blob_free(l);
    }
    tlayer_free(&a);
    tlayer_free(&b);
  }
  unlink(list);
}

/* ---- switching mid-run, seeking
 * ------------------------------------------------------------------ */

static void test_switch_and_seek(void) {
  const char *fmt =
      "name: 'data' type: 'Data' top: 'data' top: 'label' "
      "data_param { source: '%s' batch_size: 3 backend: LMDB prefetch: 2 } "
      "transform_param { mirror: true crop_size: 28 mean_value: 104 "
      "mean_value: 117 mean_value: 123 }";
  const char *src = golden("golden/lmdb/lmdb_jpg");
  for (int threads = 0; threads <= 2; threads += 2) {
    TLayer a, b;
    REQUIRE(rlayer_make(&a, MOKA_TRAIN, 31337, threads, fmt, src) == 0);
    REQUIRE(rlayer_make(&b, MOKA_TRAIN, 31337, threads, fmt, src) == 0);
    /* two float forwards on b, then raw: the raw batches continue the run */
    Blob *d = blob_new("d"), *l = blob_new("l");
    int same = 1;
    for (int k = 0; k < 2; k++) {
      REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
      REQUIRE(layer_forward(b.l, MOKA_BACKEND_CPU) == 0);
      same &= blobs_equal(a.top[0], b.top[0]);
    }
    REQUIRE(to_raw(&b, 0) == 0);
    CHECK(prefetch_position(data_layer_prefetcher(b.l)) == 6);
    for (int k = 0; k < 4; k++) {
      REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
      REQUIRE(raw_forward(&b, d, l) == 0);
      same &= blobs_equal(a.top[0], d) && blobs_equal(a.top[1], l);
    }
    CHECK_MSG(same, "%d threads: the run switched to raw differs from the float run", threads);
    /* seek both to record 13 (a crop/mirror draw position mid-batch) */
    REQUIRE(data_layer_seek(a.l, 13) == 0);
    REQUIRE(data_layer_seek(b.l, 13) == 0);
    CHECK(prefetch_is_raw(data_layer_prefetcher(b.l)));
    same = 1;
    for (int k = 0; k < 3; k++) {
      REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
      REQUIRE(raw_forward(&b, d, l) == 0);
      same &= blobs_equal(a.top[0], d) && blobs_equal(a.top[1], l);
    }
    CHECK_MSG(same, "%d threads: raw batches after a seek differ from the float path's", threads);
    /* synchronous mode never has a batch ready without waiting */
    if (threads == 0) {
      PrefetchRawBatch rb;
      CHECK(prefetch_raw_take(data_layer_prefetcher(b.l), 0, &rb) == 1);
    }
    /* the wrong-mode calls are errors, not crashes */
    CHECK(prefetch_next(data_layer_prefetcher(b.l), d, l) != 0 &&
          strstr(moka_error(), "raw batches"));
    PrefetchRawBatch rb;
    CHECK(prefetch_raw_take(data_layer_prefetcher(a.l), 1, &rb) != 0 &&
          strstr(moka_error(), "float batches"));
    blob_free(d);
    blob_free(l);
    tlayer_free(&a);
    tlayer_free(&b);
  }
}

/* ---- errors
 * ----------------------------------------------------------------------------------------- */

static void test_errors(void) {
  /* images of different sizes without crop_size: the float path's message */
  TLayer t;
  REQUIRE(rlayer_make(&t, MOKA_TEST, 1, 2,
                      "name: 'data' type: 'Data' top: 'data' top: 'label' "
                      "data_param { source: '%s' batch_size: 2 backend: LMDB }",
                      golden("golden/lmdb/lmdb_jpg")) == 0);
  REQUIRE(to_raw(&t, 0) == 0);
  Blob *d = blob_new("d"), *l = blob_new("l");
  CHECK(raw_forward(&t, d, l) != 0 &&
        strstr(moka_error(),
               "images of different sizes need "
               "crop_size") &&
        strstr(moka_error(), "00000001_img1.jpg"));
  CHECK(raw_forward(&t, d, l) != 0 && strstr(moka_error(), "different sizes")); /* sticky */
  tlayer_free(&t);
  /* a Datum with float_data has no uint8 form */
  Caffe__Datum dt;
  caffe__datum__init(&dt);
  float fd[12] = {0};
  dt.has_channels = dt.has_height = dt.has_width = 1;
  dt.channels = 3, dt.height = 2, dt.width = 2;
  dt.n_float_data = 12, dt.float_data = fd;
  DatumBytes bx = {0};
  CHECK(datum_decode_u8(&dt, 0, "record 'k'", &bx) != 0 && strstr(moka_error(), "float_data") &&
        strstr(moka_error(), "MOKA_DEVICE_TRANSFORM=0") && strstr(moka_error(), "record 'k'"));
  /* raw bytes: exactly the Datum's */
  uint8_t px[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255};
  dt.n_float_data = 0, dt.float_data = NULL;
  dt.has_data = 1, dt.data.data = px, dt.data.len = 12;
  CHECK(datum_decode_u8(&dt, 0, "r", &bx) == 0 && bx.c == 3 && bx.h == 2 && bx.w == 2 &&
        memcmp(bx.data, px, 12) == 0);
  dt.data.len = 11;
  CHECK(datum_decode_u8(&dt, 0, "r", &bx) != 0 && strstr(moka_error(), "11 bytes"));
  datum_bytes_free(&bx);
  blob_free(d);
  blob_free(l);
}

/* ---- the kernel's source on the CPU (CUDA builds: moka_cuda.h needs the toolkit) ------------ */

#ifdef MOKA_WITH_CUDA
#define MOKA_TRANSFORM_EMULATE 1
#define __global__ static
#define __fsub_rn(a, b) ((float)((a) - (b)))
#define __fmul_rn(a, b) ((float)((a) * (b)))
#define MOKA_GRID_LOOP(i, n) for (size_t i = 0; i < (size_t)(n); i++)
#include "moka_cuda.h"
#include "transform.cu" /* kernels/: the kernel only */

static uint32_t lcg(uint32_t *s) { return *s = *s * 1664525u + 1013904223u; }

/* The emulated kernel on one raw batch vs transform_apply_raw_host; labels
 * too. Returns the number of differing values. */
static size_t emulate_vs_oracle(const Transformer *tf, const uint8_t *buf,
                                const TransformRawItem *items, int n, int c, int oh, int ow) {
  const size_t count = (size_t)n * c * oh * ow;
  float *want = malloc(count * sizeof(float)), *got = malloc(count * sizeof(float));
  float *labels = malloc((size_t)n * sizeof(float));
  transform_apply_raw_host(tf, buf, items, n, c, oh, ow, want);
  MokaTransformParams p = {.num = n,
                           .channels = c,
                           .out_h = oh,
                           .out_w = ow,
                           .scale = tf->scale,
                           .mean = tf->mean,
                           .mean_h = tf->mean_h,
                           .mean_w = tf->mean_w,
                           .mean_values = tf->mean_values,
                           .n_mean_values = tf->n_mean_values};
  transform_kernel(buf, p, got, labels);
  size_t bad = 0;
  for (size_t i = 0; i < count; i++) bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
  for (int i = 0; i < n; i++) bad += labels[i] != items[i].label;
  free(want);
  free(got);
  free(labels);
  return bad;
}

static void test_kernel_emulated(void) {
  /* synthetic batches: odd sizes, every mean kind, 1/3/4 channels */
  for (int k = 0; k < 8; k++) {
    uint32_t seed = 99u + (uint32_t)k;
    const int N = 1 + k % 5, C = k == 3 ? 1 : k == 6 ? 4 : 3, crop = 5 + 3 * k;
    const int mean_kind = k % 4, fixed = mean_kind == 3; /* mean file: one size */
    const int FH = crop + 4, FW = crop + 7;
    TransformRawItem *items = calloc((size_t)N, sizeof *items);
    size_t total = (size_t)transform_raw_header_bytes(N);
    for (int i = 0; i < N; i++) {
      items[i].c = C;
      items[i].h = fixed ? FH : crop + (int)(lcg(&seed) % 9);
      items[i].w = fixed ? FW : crop + (int)(lcg(&seed) % 11);
      items[i].offset = total;
      items[i].h_off = (int)(lcg(&seed) % (uint32_t)(items[i].h - crop + 1));
      items[i].w_off = (int)(lcg(&seed) % (uint32_t)(items[i].w - crop + 1));
      items[i].mirror = (int)((lcg(&seed) >> 9) & 1u);
      items[i].label = (float)(lcg(&seed) % 100);
      total += (size_t)C * items[i].h * items[i].w;
    }
    uint8_t *buf = malloc(total);
    for (size_t i = 0; i < total; i++) buf[i] = (uint8_t)(lcg(&seed) >> 13);
    memcpy(buf, items, (size_t)N * sizeof *items);
    Transformer tf;
    memset(&tf, 0, sizeof tf);
    tf.scale = k % 2 ? 0.017f : 1.0f;
    float mv[4] = {104.0f, 116.779f, 123.68f, 7.25f};
    float *mean = NULL;
    if (mean_kind == 1 || mean_kind == 2) {
      tf.n_mean_values = mean_kind == 1 ? 1 : C;
      tf.mean_values = mv;
    } else if (mean_kind == 3) {
      mean = malloc((size_t)C * FH * FW * sizeof(float));
      for (int i = 0; i < C * FH * FW; i++) mean[i] = (float)(lcg(&seed) % 25600) / 100.0f;
      tf.mean = mean, tf.mean_c = C, tf.mean_h = FH, tf.mean_w = FW;
    }
    size_t bad = emulate_vs_oracle(&tf, buf, items, N, C, crop, crop);
    CHECK_MSG(bad == 0, "synthetic batch %d (N=%d C=%d crop %d, mean kind %d): %zu values differ",
              k, N, C, crop, mean_kind, bad);
    free(items);
    free(buf);
    free(mean);
  }
  /* real TRAIN batches (JPEGs of 8 sizes; a mean file) vs the float layer */
  char mf[1200];
  snprintf(mf, sizeof mf, "mirror: true crop_size: 26 scale: 0.5 mean_file: '%s'",
           golden("golden/lmdb/mean.binaryproto"));
  const char *srcs[2] = {"golden/lmdb/lmdb_jpg", "golden/lmdb/lmdb_raw32"};
  const char *tps[2] = {"mirror: true crop_size: 28 scale: 0.017 mean_value: 104 mean_value: 117 "
                        "mean_value: 123",
                        mf};
  for (int c = 0; c < 2; c++) {
    TLayer a, b;
    const char *fmt = "name: 'data' type: 'Data' top: 'data' top: 'label' "
                      "data_param { source: '%s' batch_size: 3 backend: LMDB } "
                      "transform_param { %s }";
    int rc = rlayer_make(&a, MOKA_TRAIN, 8, 2, fmt, golden(srcs[c]), tps[c]);
    if (rc == 0) rc = rlayer_make(&b, MOKA_TRAIN, 8, 2, fmt, golden(srcs[c]), tps[c]);
    if (rc == 0) rc = to_raw(&b, 0);
    CHECK_MSG(rc == 0, "%s", moka_error());
    Prefetcher *pf = rc == 0 ? data_layer_prefetcher(b.l) : NULL;
    int same = 1;
    for (int f = 0; pf && f < 6; f++) {
      PrefetchRawBatch rb;
      REQUIRE(layer_forward(a.l, MOKA_BACKEND_CPU) == 0);
      REQUIRE(prefetch_raw_take(pf, 1, &rb) == 0);
      const size_t count = (size_t)rb.batch * rb.c * rb.h * rb.w;
      float *got = malloc(count * sizeof(float)), *labels = malloc((size_t)rb.batch * 4);
      MokaTransformParams p = {.num = rb.batch,
                               .channels = rb.c,
                               .out_h = rb.h,
                               .out_w = rb.w,
                               .scale = b.tf.scale,
                               .mean = b.tf.mean,
                               .mean_h = b.tf.mean_h,
                               .mean_w = b.tf.mean_w,
                               .mean_values = b.tf.mean_values,
                               .n_mean_values = b.tf.n_mean_values};
      transform_kernel(rb.bytes, p, got, labels);
      same &= count == a.top[0]->count &&
              memcmp(got, a.top[0]->data, count * sizeof(float)) == 0 &&
              memcmp(labels, a.top[1]->data, (size_t)rb.batch * sizeof(float)) == 0;
      free(got);
      free(labels);
      prefetch_raw_release(pf, &rb);
    }
    CHECK_MSG(same, "%s: the emulated kernel differs from the float layer", srcs[c]);
    tlayer_free(&a);
    tlayer_free(&b);
  }
}
#endif

int main(void) {
  RUN(test_golden);
  RUN(test_train_matches_float);
  RUN(test_against_caffe);
  RUN(test_imagedata_matches_float);
  RUN(test_switch_and_seek);
  RUN(test_errors);
#ifdef MOKA_WITH_CUDA
  RUN(test_kernel_emulated);
#endif
  CHECK_MSG(n_raw_alloc > 0 && n_raw_alloc == n_raw_free,
            "raw buffers: %d allocated, %d freed (all through the hooks)", n_raw_alloc, n_raw_free);
  return test_summary();
}
