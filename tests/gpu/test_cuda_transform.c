/* test_cuda_transform.c — the data transforms on the device (issue 7):
 * kernels/transform.cu and the CUDA forward of the Data / ImageData layers
 * (src/data/data_cuda.c). Needs a GPU; without one (or in a build without
 * CUDA) it prints "SKIP: no CUDA device (<reason>)" and exits 0, so `make
 * test` builds and runs it everywhere (tests/gpu/run.sh runs it on the
 * device).
 *
 * 1. The kernel against its oracle transform_apply_raw_host, bit for bit:
 *    images of different (odd) sizes in one batch, random crop offsets and
 *    mirror flags, 1 and 3 channels, no mean / one mean_value / one per
 *    channel / a mean file, scale, batch 1, and a 224 crop of 8 images of
 *    256x256.
 * 2. The layers' CUDA forward against the CPU layer over several batches
 *    and wrap-arounds (TRAIN: random crops and mirrors; encoded JPEGs of 8
 *    sizes; mean file; ImageData with shuffle), 0 and 3 decode threads, with
 *    device transforms and with MOKA_DEVICE_TRANSFORM=0; then a seek. The
 *    fixtures (JPEGs of the 8 sizes of golden/lmdb, LMDBs, a mean file) are
 *    made here in a temporary folder, so the device run needs no golden
 *    files (the CPU layer is tested against Caffe's in tests/unit).
 * 3. A net fed by a Data layer (TRAIN, crop + mirror + mean file) on the
 *    device: 4 forward/backward passes give the same losses with device and
 *    host transforms (bit for bit) and the CPU net's (1e-4).
 * 4. A timing: forwards per second of a Data layer (batch 64 of 3x256x256
 *    raw records, crop 224, mirror, mean_value) with device transforms vs
 *    host transforms (informational, never fails).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"

#ifndef MOKA_WITH_CUDA
int main(void) {
  printf("SKIP: no CUDA device (this moka was built without CUDA: CUDA=0 or no nvcc)\n");
  return test_summary();
}
#else

#include "data/data_layer.h"
#include "data/datum.h"
#include "data/db.h"
#include "data/transform.h"
#include "layer.h"
#include "gputest.h"
#include "moka_cuda.h"
#include "net.h"
#include "image.h"
#include "net_cuda.h"
#include "proto_io.h"
#include "prototxt.h"
#include "util.h"

static MokaCuda *ctx;

static uint32_t lcg(uint32_t *s) { return *s = *s * 1664525u + 1013904223u; }

/* ---- 1. the kernel against its oracle ------------------------------------------------------- */

typedef struct KCase {
  const char *name;
  int n, c, crop;       /* crop 0: every image is (c, fixed_h, fixed_w), no crop */
  int fixed_h, fixed_w; /* all images this size (mean file, no crop); 0: varied sizes */
  int mean_kind;        /* 0 none, 1 one mean_value, 2 one per channel, 3 mean file */
  float scale;
} KCase;

static void run_kernel_case(const KCase *k, uint32_t seed) {
  const int N = k->n, C = k->c;
  TransformRawItem *items = calloc((size_t)N, sizeof *items);
  const size_t hdr = transform_raw_header_bytes(N);
  size_t total = hdr;
  for (int i = 0; i < N; i++) {
    TransformRawItem *it = &items[i];
    it->c = C;
    it->h = k->fixed_h ? k->fixed_h : k->crop + (int)(lcg(&seed) % 37);
    it->w = k->fixed_w ? k->fixed_w : k->crop + (int)(lcg(&seed) % 41);
    it->offset = total;
    total += ((size_t)C * it->h * it->w + 63) & ~(size_t)63;
  }
  const int oh = k->crop ? k->crop : k->fixed_h, ow = k->crop ? k->crop : k->fixed_w;
  uint8_t *buf = calloc(total, 1);
  for (int i = 0; i < N; i++) {
    TransformRawItem *it = &items[i];
    it->h_off = (int)(lcg(&seed) % (uint32_t)(it->h - oh + 1));
    it->w_off = (int)(lcg(&seed) % (uint32_t)(it->w - ow + 1));
    it->mirror = (int)((lcg(&seed) >> 7) & 1u);
    it->label = (float)(lcg(&seed) % 1000);
    for (size_t p = 0; p < (size_t)C * it->h * it->w; p++)
      buf[it->offset + p] = (uint8_t)(lcg(&seed) >> 13);
  }
  memcpy(buf, items, (size_t)N * sizeof *items);
  Transformer tf;
  memset(&tf, 0, sizeof tf);
  tf.scale = k->scale;
  float mv[4] = {104.0f, 116.779f, 123.68f, 99.5f};
  float *mean_file = NULL;
  if (k->mean_kind == 1 || k->mean_kind == 2) {
    tf.n_mean_values = k->mean_kind == 1 ? 1 : C;
    tf.mean_values = mv;
  } else if (k->mean_kind == 3) {
    const size_t n = (size_t)C * k->fixed_h * k->fixed_w;
    mean_file = malloc(n * sizeof(float));
    for (size_t p = 0; p < n; p++) mean_file[p] = (float)(lcg(&seed) % 25600) / 100.0f + 0.003f;
    tf.mean = mean_file;
    tf.mean_c = C, tf.mean_h = k->fixed_h, tf.mean_w = k->fixed_w;
  }
  const size_t out_n = (size_t)N * C * oh * ow;
  float *want = malloc(out_n * sizeof(float)), *got = malloc(out_n * sizeof(float));
  transform_apply_raw_host(&tf, buf, items, N, C, oh, ow, want);

  void *d_buf = NULL, *d_out = NULL, *d_mean = NULL, *d_mv = NULL, *d_lab = NULL;
  REQUIRE(moka_dev_alloc(&d_buf, total, "test") == 0);
  REQUIRE(moka_dev_alloc(&d_lab, (size_t)N * sizeof(float), "test") == 0);
  REQUIRE(moka_dev_alloc(&d_out, out_n * sizeof(float), "test") == 0);
  REQUIRE(moka_h2d(ctx->stream, d_buf, buf, total) == 0);
  if (mean_file) {
    const size_t n = (size_t)C * k->fixed_h * k->fixed_w * sizeof(float);
    REQUIRE(moka_dev_alloc(&d_mean, n, "test") == 0);
    REQUIRE(moka_h2d(ctx->stream, d_mean, mean_file, n) == 0);
  }
  if (tf.n_mean_values) {
    REQUIRE(moka_dev_alloc(&d_mv, sizeof mv, "test") == 0);
    REQUIRE(moka_h2d(ctx->stream, d_mv, mv, sizeof mv) == 0);
  }
  MokaTransformParams p = {.num = N,
                           .channels = C,
                           .out_h = oh,
                           .out_w = ow,
                           .scale = k->scale,
                           .mean = d_mean,
                           .mean_h = k->fixed_h,
                           .mean_w = k->fixed_w,
                           .mean_values = d_mv,
                           .n_mean_values = tf.n_mean_values};
  CHECK_MSG(moka_cuda_transform(ctx->stream, &p, d_buf, d_out, d_lab) == 0, "%s: %s", k->name,
            moka_error());
  REQUIRE(moka_d2h(ctx->stream, got, d_out, out_n * sizeof(float)) == 0);
  float *labs = malloc((size_t)N * sizeof(float));
  REQUIRE(moka_d2h(ctx->stream, labs, d_lab, (size_t)N * sizeof(float)) == 0);
  int lab_ok = 1;
  for (int i = 0; i < N; i++) lab_ok &= labs[i] == items[i].label;
  CHECK_MSG(lab_ok, "%s: labels", k->name);
  free(labs);
  moka_dev_free(d_lab);
  size_t bad = 0;
  for (size_t i = 0; i < out_n; i++) bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
  CHECK_MSG(bad == 0, "%s: %zu of %zu values differ from transform_apply_raw_host", k->name, bad,
            out_n);
  moka_dev_free(d_buf);
  moka_dev_free(d_out);
  moka_dev_free(d_mean);
  moka_dev_free(d_mv);
  free(items);
  free(buf);
  free(want);
  free(got);
  free(mean_file);
}

static void test_kernel_vs_oracle(void) {
  const KCase cases[] = {
      {"varied sizes, crop 27, no mean, scale 1", 5, 3, 27, 0, 0, 0, 1.0f},
      {"varied sizes, crop 31, one mean_value, scale 0.017", 7, 3, 31, 0, 0, 1, 0.017f},
      {"varied sizes, crop 13, per-channel mean, scale 0.00390625", 6, 3, 13, 0, 0, 2, 0.00390625f},
      {"grey, crop 9, per-channel mean", 4, 1, 9, 0, 0, 2, 0.5f},
      {"mean file 3x35x33, crop 28", 5, 3, 28, 35, 33, 3, 1.0f},
      {"mean file 3x35x33, no crop", 3, 3, 0, 35, 33, 3, 0.02f},
      {"batch 1, 4 channels, crop 5", 1, 4, 5, 0, 0, 2, 3.0f},
      {"8 x 3x256x256, crop 224, mean_value", 8, 3, 224, 256, 256, 2, 0.017f},
  };
  for (size_t i = 0; i < MOKA_ARRAY_LEN(cases); i++)
    run_kernel_case(&cases[i], 1234u + (uint32_t)i);
}

/* ---- 2. the layers on the device against the CPU layer ----------------------------------------
 */

static char fix[64]; /* the fixtures' folder */

/* A smooth-ish random BGR image (JPEG-friendly). */
static void random_image(Image *im, int h, int w, uint32_t *seed) {
  im->h = h, im->w = w, im->c = 3;
  im->px = malloc((size_t)h * w * 3);
  const int a = (int)(lcg(seed) % 7) + 1, b = (int)(lcg(seed) % 5) + 1;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++)
        im->px[((size_t)y * w + x) * 3 + c] =
            (uint8_t)((x * a + y * b + c * 60 + (int)(lcg(seed) % 24)) & 255);
}

/* fix/images/img<k>.jpg (the 8 sizes of golden/lmdb), fix/list.txt,
 * fix/jpg (encoded Datums of those files), fix/raw32 (raw 3x32x32 Datums),
 * fix/mean.binaryproto (1x3x32x32). 0 / -1. */
static int make_fixtures(void) {
  snprintf(fix, sizeof fix, "/tmp/moka_gpu_tf_XXXXXX");
  if (!mkdtemp(fix)) return moka_errorf("mkdtemp failed");
  static const int WH[8][2] = {{40, 32}, {32, 40},  {48, 48}, {64, 36},
                               {29, 31}, {100, 75}, {36, 28}, {56, 44}};
  char path[256];
  snprintf(path, sizeof path, "%s/images", fix);
  if (mkdir(path, 0755) != 0) return moka_errorf("mkdir %s failed", path);
  snprintf(path, sizeof path, "%s/list.txt", fix);
  FILE *lf = fopen(path, "w");
  DbWriter *jw = NULL, *rw = NULL;
  snprintf(path, sizeof path, "%s/jpg", fix);
  if (!lf || db_writer_open(path, &jw)) return -1;
  snprintf(path, sizeof path, "%s/raw32", fix);
  if (db_writer_open(path, &rw)) return -1;
  uint32_t seed = 77;
  for (int k = 0; k < 8; k++) {
    Image im;
    random_image(&im, WH[k][1], WH[k][0], &seed);
    uint8_t *jpg, *val;
    size_t jlen, vlen;
    if (image_encode_jpeg(&im, 90, &jpg, &jlen)) return -1;
    snprintf(path, sizeof path, "%s/images/img%d.jpg", fix, k);
    if (moka_write_file_atomic(path, jpg, jlen)) return -1;
    fprintf(lf, "img%d.jpg %d\n", k, k % 5);
    char key[64];
    snprintf(key, sizeof key, "%08d_img%d.jpg", k, k);
    Caffe__Datum d;
    if (datum_from_encoded(jpg, jlen, k % 5, &d) || datum_pack(&d, &val, &vlen) ||
        db_writer_put(jw, key, strlen(key), val, vlen))
      return -1;
    datum_clear(&d);
    free(val);
    free(jpg);
    image_free(&im);
    random_image(&im, 32, 32, &seed);
    if (datum_from_image(&im, k % 5, &d) || datum_pack(&d, &val, &vlen) ||
        db_writer_put(rw, key, strlen(key), val, vlen))
      return -1;
    datum_clear(&d);
    free(val);
    image_free(&im);
  }
  fclose(lf);
  if (db_writer_close(jw) || db_writer_close(rw)) return -1;
  Blob *m = blob_new("mean");
  if (blob_reshape4(m, 1, 3, 32, 32)) return -1;
  for (size_t i = 0; i < m->count; i++) m->data[i] = (float)(lcg(&seed) % 25600) / 100.0f;
  Caffe__BlobProto bp;
  snprintf(path, sizeof path, "%s/mean.binaryproto", fix);
  int rc = blobproto_from_blob(&bp, m, 0) || proto_write_binary(&bp.base, path) ? -1 : 0;
  blobproto_clear(&bp);
  blob_free(m);
  return rc;
}

typedef struct TLayer {
  Caffe__LayerParameter *lp;
  Blob *top[2];
  Rng rng;
  Layer *l;
} TLayer;

static int tlayer_make(TLayer *t, int phase, uint32_t seed, int threads, bool device,
                       const char *text) {
  memset(t, 0, sizeof *t);
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
  if (!t->l) return -1;
  if (device) {
    t->l->cuda = ctx;
    for (int i = 0; i < 2; i++)
      if (blob_alloc_device(t->top[i], false, "test")) return -1;
  }
  return 0;
}

static void tlayer_free(TLayer *t) {
  layer_free(t->l);
  blob_free(t->top[0]);
  blob_free(t->top[1]);
  if (t->lp) protobuf_c_message_free_unpacked(&t->lp->base, NULL);
  memset(t, 0, sizeof *t);
}

/* The device layer's tops (brought down) equal the CPU layer's. */
static int same_tops(TLayer *cpu, TLayer *dev) {
  Blob *d = dev->top[0], *l = dev->top[1];
  if (blob_to_host(ctx, d) || blob_to_host(ctx, l)) return 0;
  return blob_same_shape(cpu->top[0], d) && blob_same_shape(cpu->top[1], l) &&
         memcmp(cpu->top[0]->data, d->data, d->count * sizeof(float)) == 0 &&
         memcmp(cpu->top[1]->data, l->data, l->count * sizeof(float)) == 0;
}

static void layer_case(const char *name, int phase, const char *text) {
  for (int env = 0; env < 2; env++)
    for (int threads = 0; threads <= 3; threads += 3) {
      if (env)
        setenv("MOKA_DEVICE_TRANSFORM", "0", 1);
      else
        unsetenv("MOKA_DEVICE_TRANSFORM");
      TLayer a, b;
      int rc = tlayer_make(&a, phase, 2718, threads, false, text);
      if (rc == 0) rc = tlayer_make(&b, phase, 2718, threads, true, text);
      CHECK_MSG(rc == 0, "%s: %s", name, moka_error());
      if (rc) {
        tlayer_free(&a);
        tlayer_free(&b);
        continue;
      }
      int same = 1, ok = 1;
      for (int f = 0; f < 7 && ok; f++) {
        ok &= layer_forward(a.l, MOKA_BACKEND_CPU) == 0;
        ok &= layer_forward(b.l, MOKA_BACKEND_CUDA) == 0;
        if (ok) same &= same_tops(&a, &b);
      }
      CHECK_MSG(ok, "%s: %s", name, moka_error());
      CHECK_MSG(same,
                "%s, %d threads, %s transforms: the device forward differs from the CPU "
                "layer's",
                name, threads, env ? "host" : "device");
      /* seek both to record 10 and go on */
      ok = data_layer_seek(a.l, 10) == 0 && data_layer_seek(b.l, 10) == 0;
      CHECK_MSG(ok, "%s: seek: %s", name, moka_error());
      for (int f = 0; f < 3 && ok; f++) {
        ok &= layer_forward(a.l, MOKA_BACKEND_CPU) == 0;
        ok &= layer_forward(b.l, MOKA_BACKEND_CUDA) == 0;
        if (ok) same &= same_tops(&a, &b);
      }
      CHECK_MSG(ok && same, "%s, %d threads, %s transforms: after a seek: %s", name, threads,
                env ? "host" : "device", ok ? "different tops" : moka_error());
      tlayer_free(&a);
      tlayer_free(&b);
    }
  unsetenv("MOKA_DEVICE_TRANSFORM");
}

/* Losses of 4 forward/backward passes of a small net fed by a Data layer. */
static int net_losses(Backend be, const char *env, float loss[4]) {
  char text[4096];
  snprintf(text, sizeof text,
           "name: 'datanet' "
           "layer { name: 'data' type: 'Data' top: 'data' top: 'label' "
           "  data_param { source: '%s/jpg' batch_size: 4 backend: LMDB } "
           "  transform_param { mirror: true crop_size: 28 scale: 0.0078125 mean_value: 104 "
           "  mean_value: 117 mean_value: 123 } } "
           "layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' "
           "  convolution_param { num_output: 4 kernel_size: 3 stride: 2 "
           "  weight_filler { type: 'xavier' } } } "
           "layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' } "
           "layer { name: 'fc' type: 'InnerProduct' bottom: 'conv' top: 'fc' "
           "  inner_product_param { num_output: 5 weight_filler { type: 'xavier' } } } "
           "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc' bottom: 'label' "
           "  top: 'loss' }",
           fix);
  Caffe__NetParameter *np = NULL;
  if (prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), "datanet",
                     (ProtobufCMessage **)&np))
    return -1;
  if (env) setenv("MOKA_DEVICE_TRANSFORM", env, 1);
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TRAIN;
  o.backend = be == MOKA_BACKEND_CUDA ? MOKA_BACKEND_CPU : be;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 11;
  Net *net = net_create(np, &o, "datanet");
  protobuf_c_message_free_unpacked(&np->base, NULL);
  int rc = net ? 0 : -1;
  if (rc == 0 && be == MOKA_BACKEND_CUDA) rc = net_to_device(net, 0);
  for (int k = 0; k < 4 && rc == 0; k++) {
    rc = net_forward(net, &loss[k]);
    if (rc == 0) rc = net_backward(net);
  }
  net_free(net);
  unsetenv("MOKA_DEVICE_TRANSFORM");
  return rc;
}

static void test_net_losses(void) {
  float dev[4], host[4], cpu[4];
  int ok = net_losses(MOKA_BACKEND_CUDA, NULL, dev) == 0 &&
           net_losses(MOKA_BACKEND_CUDA, "0", host) == 0 &&
           net_losses(MOKA_BACKEND_CPU, NULL, cpu) == 0;
  CHECK_MSG(ok, "net fed by a Data layer: %s", moka_error());
  if (!ok) return;
  for (int k = 0; k < 4; k++) {
    CHECK_MSG(dev[k] == host[k], "pass %d: loss %.9g with device transforms, %.9g with host ones",
              k, dev[k], host[k]);
    CHECK_MSG(fabsf(dev[k] - cpu[k]) <= 1e-4f, "pass %d: loss %.9g on the device, %.9g on the CPU",
              k, dev[k], cpu[k]);
  }
}

static void test_layers_vs_cpu(void) {
  char text[4096];
  if (make_fixtures() != 0) {
    CHECK_MSG(0, "fixtures: %s", moka_error());
    return;
  }
  const char *sh = fix;
  snprintf(text, sizeof text,
           "name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s/jpg' batch_size: 3 backend: LMDB prefetch: 3 } "
           "transform_param { mirror: true crop_size: 28 scale: 0.017 mean_value: 104 "
           "mean_value: 117 mean_value: 123 }",
           sh);
  layer_case("Data, JPEGs of 8 sizes, TRAIN crop 28 + mirror", MOKA_TRAIN, text);
  snprintf(text, sizeof text,
           "name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s/raw32' batch_size: 5 backend: LMDB } "
           "transform_param { mirror: true crop_size: 24 mean_file: '%s/mean.binaryproto' }",
           sh, sh);
  layer_case("Data, raw 32x32, TRAIN crop 24 + mirror, mean file", MOKA_TRAIN, text);
  snprintf(text, sizeof text,
           "name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s/raw32' batch_size: 8 backend: LMDB } "
           "transform_param { crop_size: 28 mean_file: '%s/mean.binaryproto' }",
           sh, sh);
  layer_case("Data, raw 32x32, TEST centre crop, mean file", MOKA_TEST, text);
  snprintf(text, sizeof text,
           "name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s/raw32' batch_size: 3 backend: LMDB } "
           "transform_param { mirror: true scale: 0.25 }",
           sh);
  layer_case("Data, raw 32x32, TRAIN mirror only, scale", MOKA_TRAIN, text);
  snprintf(text, sizeof text,
           "name: 'data' type: 'ImageData' top: 'data' top: 'label' "
           "image_data_param { source: '%s/list.txt' root_folder: '%s/images/' batch_size: 4 "
           "shuffle: true } transform_param { mirror: true crop_size: 27 scale: 0.5 }",
           sh, sh);
  layer_case("ImageData, 8 sizes, shuffle, TRAIN crop 27 + mirror", MOKA_TRAIN, text);
  snprintf(text, sizeof text,
           "name: 'data' type: 'ImageData' top: 'data' top: 'label' "
           "image_data_param { source: '%s/list.txt' root_folder: '%s/images/' batch_size: 2 "
           "new_height: 32 new_width: 32 } transform_param { mirror: true crop_size: 30 "
           "mean_file: '%s/mean.binaryproto' }",
           sh, sh, sh);
  layer_case("ImageData, resized 32x32, TRAIN crop 30 + mirror, mean file", MOKA_TRAIN, text);
  test_net_losses();
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", fix);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", fix);
}

/* ---- 3. timing: device vs host transforms -------------------------------------------------------
 */

static void test_timing(void) {
  char tmp[] = "/tmp/moka_gpu_tf_db_XXXXXX";
  REQUIRE(mkdtemp(tmp) != NULL);
  char dir[64];
  snprintf(dir, sizeof dir, "%s/db", tmp); /* db_writer_open wants a new folder */
  enum { R = 128, C = 3, H = 256, W = 256 };
  DbWriter *w;
  if (db_writer_open(dir, &w) != 0) {
    CHECK_MSG(0, "db_writer_open: %s", moka_error());
    return;
  }
  uint8_t *px = malloc((size_t)C * H * W);
  uint32_t seed = 5;
  for (int r = 0; r < R; r++) {
    for (size_t p = 0; p < (size_t)C * H * W; p++) px[p] = (uint8_t)(lcg(&seed) >> 11);
    Caffe__Datum d;
    caffe__datum__init(&d);
    d.has_channels = d.has_height = d.has_width = d.has_data = d.has_label = 1;
    d.channels = C, d.height = H, d.width = W, d.label = r % 10;
    d.data.data = px, d.data.len = (size_t)C * H * W;
    uint8_t *buf;
    size_t len;
    char key[32];
    snprintf(key, sizeof key, "%08d", r);
    REQUIRE(datum_pack(&d, &buf, &len) == 0);
    REQUIRE(db_writer_put(w, key, strlen(key), buf, len) == 0);
    free(buf);
  }
  free(px);
  REQUIRE(db_writer_close(w) == 0);
  char text[2048];
  snprintf(text, sizeof text,
           "name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s' batch_size: 64 backend: LMDB prefetch: 4 } "
           "transform_param { mirror: true crop_size: 224 mean_value: 104 mean_value: 117 "
           "mean_value: 123 }",
           dir);
  double ips[2] = {0, 0};
  for (int env = 0; env < 2; env++) {
    if (env) setenv("MOKA_DEVICE_TRANSFORM", "0", 1);
    TLayer t;
    int threads = prefetch_default_threads();
    if (tlayer_make(&t, MOKA_TRAIN, 3, threads, true, text) != 0) {
      CHECK_MSG(0, "%s", moka_error());
      tlayer_free(&t);
      continue;
    }
    int ok = 1;
    for (int f = 0; f < 3 && ok; f++) ok &= layer_forward(t.l, MOKA_BACKEND_CUDA) == 0;
    ok &= moka_cuda_sync(ctx) == 0;
    const int F = 20;
    double t0 = moka_now();
    for (int f = 0; f < F && ok; f++) ok &= layer_forward(t.l, MOKA_BACKEND_CUDA) == 0;
    ok &= moka_cuda_sync(ctx) == 0;
    double dt = moka_now() - t0;
    CHECK_MSG(ok, "%s", moka_error());
    ips[env] = F * 64 / dt;
    printf(
        "TIMING data layer b64 3x256x256 -> 224, %d decode threads, %s transforms: %.0f img/s "
        "(%.2f ms/batch, %.2f ms/batch waiting on decode)\n",
        threads, env ? "host" : "device", ips[env], dt * 1e3 / F,
        prefetch_wait_seconds(data_layer_prefetcher(t.l)) * 1e3 / (F + 3));
    tlayer_free(&t);
  }
  unsetenv("MOKA_DEVICE_TRANSFORM");
  if (ips[0] > 0 && ips[1] > 0)
    printf("TIMING data layer device/host transform ratio: %.2fx\n", ips[0] / ips[1]);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
}

int main(void) {
  const int g = gpu_test_open(&ctx);
  if (g) return g > 0 ? test_summary() : 1;
  RUN(test_kernel_vs_oracle);
  RUN(test_layers_vs_cpu);
  RUN(test_timing);
  moka_cuda_destroy(ctx);
  return test_summary();
}
#endif
