/* test_reliability.c — hostile and broken inputs are refused with a clear
 * message before anything large is allocated (docs/reliability.md lists
 * them with the messages they produce): shapes that overflow or exceed the
 * limits (BlobProto, input_dim, input_shape, layer parameters), the blob
 * memory limit, repeated fields and nesting beyond the limits, images that
 * declare huge sizes, LMDB records that are not Datums, Python layers; and
 * files moka writes follow the umask. */
#include <fcntl.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blob.h"
#include "caffe.pb-c.h"
#include "data/datum.h"
#include "image.h"
#include "net.h"
#include "proto_io.h"
#include "prototxt.h"
#include "solver.h"
#include "testlib.h"
#include "util.h"

/* The messages the refusals produce, printed with MOKA_TEST_VERBOSE=1
 * (docs/reliability.md quotes them). */
#define SAY(...)                                          \
  do {                                                    \
    if (getenv("MOKA_TEST_VERBOSE")) printf(__VA_ARGS__); \
  } while (0)

/* A temporary folder for this run. */
static char g_tmp[256];

static const char *tmp_path(const char *name) {
  static char bufs[4][512];
  static int k;
  char *b = bufs[k++ & 3];
  snprintf(b, 512, "%s/%s", g_tmp, name);
  return b;
}

/* Build a net from prototxt text; NULL (with moka_error()) when refused. */
static Net *net_from_text(const char *text) {
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), "hostile.prototxt", &m))
    return NULL;
  NetOptions o;
  net_options_default(&o);
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1;
  Net *net = net_create((Caffe__NetParameter *)m, &o, "hostile.prototxt");
  protobuf_c_message_free_unpacked(m, NULL);
  return net;
}

/* The net must be refused with a message containing every needle. */
#define CHECK_REFUSED(text, ...)                                                            \
  do {                                                                                      \
    moka_error_clear();                                                                     \
    Net *net_ = net_from_text(text);                                                        \
    CHECK_MSG(net_ == NULL, "accepted:\n%s", text);                                         \
    net_free(net_);                                                                         \
    const char *needles_[] = {__VA_ARGS__};                                                 \
    for (size_t i_ = 0; i_ < sizeof needles_ / sizeof *needles_; i_++)                      \
      CHECK_MSG(strstr(moka_error(), needles_[i_]), "message lacks '%s': %s", needles_[i_], \
                moka_error());                                                              \
    SAY("  refused: %s\n", moka_error());                                                   \
  } while (0)

/* ---- shapes ------------------------------------------------------------------------ */

static void test_blobproto_shapes_overflowing(void) {
  Blob *b = blob_new("mean");
  Caffe__BlobProto bp;
  Caffe__BlobShape s;
  /* 65536^3 = 2^48 elements: the product overflows int, not int64 */
  int64_t dims[3] = {65536, 65536, 65536};
  caffe__blob_proto__init(&bp);
  caffe__blob_shape__init(&s);
  s.n_dim = 3;
  s.dim = dims;
  bp.shape = &s;
  CHECK(blobproto_load(&bp, b, "mean.binaryproto") != 0);
  CHECK(strstr(moka_error(), "mean.binaryproto") && strstr(moka_error(), "65536 65536 65536") &&
        strstr(moka_error(), "more than 2147483647 elements"));
  SAY("  refused: %s\n", moka_error());
  /* a dimension beyond int */
  int64_t big[2] = {1, 5000000000LL};
  s.n_dim = 2;
  s.dim = big;
  CHECK(blobproto_load(&bp, b, "mean.binaryproto") != 0);
  CHECK(strstr(moka_error(), "5000000000"));
  /* 33 axes */
  int64_t many[33];
  for (int i = 0; i < 33; i++) many[i] = 1;
  s.n_dim = 33;
  s.dim = many;
  CHECK(blobproto_load(&bp, b, "mean.binaryproto") != 0);
  CHECK(strstr(moka_error(), "33 axes"));
  /* a legacy header that is negative */
  caffe__blob_proto__init(&bp);
  bp.has_num = 1;
  bp.num = -1;
  CHECK(blobproto_load(&bp, b, "mean.binaryproto") != 0);
  CHECK(strstr(moka_error(), "negative"));
  /* a zero axis makes the blob empty, whatever the others say */
  int64_t zero[3] = {0, 2000000000, 2000000000};
  caffe__blob_proto__init(&bp);
  s.n_dim = 3;
  s.dim = zero;
  bp.shape = &s;
  CHECK(blobproto_load(&bp, b, "empty") == 0 && b->count == 0);
  /* the value count must match the shape */
  int64_t two[1] = {2};
  float one_value = 1.0f;
  s.n_dim = 1;
  s.dim = two;
  bp.n_data = 1;
  bp.data = &one_value;
  CHECK(blobproto_load(&bp, b, "mean.binaryproto") != 0);
  CHECK(strstr(moka_error(), "1 values stored, 2 expected"));
  blob_free(b);
}

static void test_input_dims_overflowing(void) {
  /* deprecated input_dim: 2^17 x 2^17 x 2^17 */
  CHECK_REFUSED(
      "input: 'data' input_dim: 131072 input_dim: 131072 input_dim: 131072 "
      "input_dim: 1",
      "layer 'input'", "131072 131072 131072 1", "more than 2147483647 elements");
  CHECK_REFUSED("input: 'data' input_dim: -1 input_dim: 3 input_dim: 4 input_dim: 4",
                "layer 'input'", "-1 is out of range");
  /* input_shape with a dim beyond int */
  CHECK_REFUSED("input: 'data' input_shape { dim: 1 dim: 3 dim: 4294967296 }", "layer 'input'",
                "4294967296");
  /* an Input layer of 2^31 elements */
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' "
      "input_param { shape { dim: 2 dim: 1024 dim: 1024 dim: 1024 } } }",
      "layer 'in'", "more than 2147483647 elements");
  /* input count and shape count disagree */
  CHECK_REFUSED("input: 'a' input: 'b' input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1",
                "2 inputs need 8 input_dim values");
}

static void test_layer_params_too_large(void) {
  /* num_output 2^30 with 4 inputs: 2^32 weights */
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 4 } } }"
      "layer { name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'y' "
      "inner_product_param { num_output: 1073741824 } }",
      "layer 'fc'", "more than 2147483647 elements");
  /* a convolution whose weights overflow int: 2^16 outputs x 2^10 channels x 2^8 x 2^8 */
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' "
      "input_param { shape { dim: 1 dim: 1024 dim: 256 dim: 256 } } }"
      "layer { name: 'conv' type: 'Convolution' bottom: 'x' top: 'y' "
      "convolution_param { num_output: 65536 kernel_size: 256 } }",
      "layer 'conv'");
  /* num_output beyond int */
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 "
      "} } }"
      "layer { name: 'conv' type: 'Convolution' bottom: 'x' top: 'y' "
      "convolution_param { num_output: 4294967295 kernel_size: 1 } }",
      "layer 'conv'", "4294967295");
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 4 } } }"
      "layer { name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'y' "
      "inner_product_param { num_output: 4294967295 } }",
      "layer 'fc'", "4294967295");
}

static void test_memory_limit_names_the_blob(void) {
  /* Under a 64 MiB limit, 2^24 x 4 weights (2 x 256 MiB with the diff) are
   * refused before they are allocated, naming the layer and the sizes. */
  blob_set_memory_limit((size_t)64 << 20);
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 4 } } }"
      "layer { name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'y' "
      "inner_product_param { num_output: 16777216 } }",
      "layer 'fc'", "16777216 4", "memory limit is 64.0 MiB");
  /* and the same net fits once the limit is back to physical memory */
  blob_set_memory_limit(0);
  CHECK(blob_memory_limit() > ((size_t)64 << 20));
  /* A net's blobs are counted while they live and released when freed. */
  size_t before = blob_memory_in_use();
  Net *net = net_from_text(
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 4 } } }"
      "layer { name: 'fc' type: 'InnerProduct' bottom: 'x' top: 'y' "
      "inner_product_param { num_output: 1000 } }");
  REQUIRE(net);
  /* x (4), y (1000), weights (4000), bias (1000): data + diff */
  CHECK_MSG(blob_memory_in_use() >= before + 2 * 4 * (4 + 1000 + 1000), "in use %zu, before %zu",
            blob_memory_in_use(), before);
  net_free(net);
  CHECK(blob_memory_in_use() == before);
}

static void test_python_layer_refused(void) {
  CHECK_REFUSED(
      "layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 4 } } }"
      "layer { name: 'py_loss' type: 'Python' bottom: 'x' top: 'y' "
      "python_param { module: 'evil' layer: 'Loss' param_str: 'import os' } }",
      "layer 'py_loss'", "Python", "evil", "never runs code");
}

/* ---- repeated fields and nesting --------------------------------------------------- */

static void test_prototxt_nesting_limit(void) {
  /* caffe.proto is not recursive (6 levels at most), so nesting stops at
   * the first level the schema does not have, long before the reader's
   * limit of 100 levels: 5000 nested `layer {` fail at the second, with
   * file:line:column, and without deep recursion. */
  size_t depth = 5000;
  char *t = malloc(depth * 12 + 64);
  size_t n = 0;
  for (size_t i = 0; i < depth; i++) n += (size_t)sprintf(t + n, "layer { ");
  t[n] = 0;
  ProtobufCMessage *m = NULL;
  CHECK(prototxt_parse(&caffe__net_parameter__descriptor, t, n, "deep.prototxt", &m) != 0);
  CHECK_MSG(strstr(moka_error(), "deep.prototxt:1:9"), "%s", moka_error());
  SAY("  refused: %.200s\n", moka_error());
  free(t);
}

static void test_prototxt_of_empty_layers(void) {
  /* 2 MB of `layer{}`: 300000 LayerParameter structs (~170 MB) if nothing
   * stopped it; the reader stops at 64 MiB + 16 bytes per byte of text. */
  const size_t n = 300000;
  char *t = malloc(7 * n + 1);
  for (size_t i = 0; i < n; i++) memcpy(t + 7 * i, "layer{}", 7);
  t[7 * n] = 0;
  ProtobufCMessage *m = NULL;
  CHECK(prototxt_parse(&caffe__net_parameter__descriptor, t, 7 * n, "bomb.prototxt", &m) != 0);
  CHECK_MSG(strstr(moka_error(), "bomb.prototxt") && strstr(moka_error(), "MiB"), "%s",
            moka_error());
  SAY("  refused: %s\n", moka_error());
  /* 1000 of them parse */
  CHECK(prototxt_parse(&caffe__net_parameter__descriptor, t, 7 * 1000, "ok.prototxt", &m) == 0);
  if (m) {
    CHECK(((Caffe__NetParameter *)m)->n_layer == 1000);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  free(t);
}

static void test_caffemodel_of_empty_layers(void) {
  /* 300000 empty `layer {}` entries: 600 kB of file that protobuf-c would
   * turn into 300000 LayerParameter structs (~170 MB). */
  const size_t n = 300000;
  /* field 100 (layer), wire type 2: tag 100 << 3 | 2 = 802 = varint 0xA2 0x06; length 0 */
  uint8_t *buf = malloc(3 * n);
  for (size_t i = 0; i < n; i++) buf[3 * i] = 0xA2, buf[3 * i + 1] = 0x06, buf[3 * i + 2] = 0;
  ProtobufCMessage *m = NULL;
  CHECK(proto_unpack(&caffe__net_parameter__descriptor, buf, 3 * n, "'bomb.caffemodel'", &m) != 0);
  CHECK_MSG(strstr(moka_error(), "bomb.caffemodel") && strstr(moka_error(), "MiB of memory"), "%s",
            moka_error());
  SAY("  refused: %s\n", moka_error());
  /* through the file reader too */
  FILE *f = fopen(tmp_path("bomb.caffemodel"), "wb");
  REQUIRE(f);
  fwrite(buf, 1, 3 * n, f);
  fclose(f);
  CHECK(proto_read_binary(&caffe__net_parameter__descriptor, tmp_path("bomb.caffemodel"), &m) != 0);
  CHECK(strstr(moka_error(), "bomb.caffemodel") && strstr(moka_error(), "MiB of memory"));
  /* 1000 of them are fine (a real net) */
  CHECK(proto_unpack(&caffe__net_parameter__descriptor, buf, 3 * 1000, "small", &m) == 0);
  if (m) {
    CHECK(((Caffe__NetParameter *)m)->n_layer == 1000);
    protobuf_c_message_free_unpacked(m, NULL);
  }
  free(buf);
}

static void test_datum_declaring_huge_sizes(void) {
  Caffe__Datum d;
  caffe__datum__init(&d);
  DatumPixels px = {0};
  d.channels = 1 << 20;
  d.height = 1 << 20;
  d.width = 1 << 20;
  uint8_t byte = 7;
  d.has_data = 1;
  d.data.data = &byte;
  d.data.len = 1;
  CHECK(datum_decode(&d, 0, "record '00000001_x'", &px) != 0);
  CHECK(strstr(moka_error(), "00000001_x") && strstr(moka_error(), "too large"));
  SAY("  refused: %s\n", moka_error());
  d.channels = 3, d.height = 100, d.width = 100;
  CHECK(datum_decode(&d, 0, "record '00000002_y'", &px) != 0);
  CHECK(strstr(moka_error(), "00000002_y") && strstr(moka_error(), "30000"));
  datum_pixels_free(&px);
}

/* ---- images -------------------------------------------------------------------------- */

static uint32_t crc32_png(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
  }
  return c ^ 0xFFFFFFFFu;
}

static size_t put_chunk(uint8_t *out, const char *type, const uint8_t *data, uint32_t len) {
  out[0] = (uint8_t)(len >> 24), out[1] = (uint8_t)(len >> 16), out[2] = (uint8_t)(len >> 8),
  out[3] = (uint8_t)len;
  memcpy(out + 4, type, 4);
  if (len) memcpy(out + 8, data, len);
  uint32_t c = crc32_png(out + 4, 4 + len);
  out[8 + len] = (uint8_t)(c >> 24), out[9 + len] = (uint8_t)(c >> 16),
          out[10 + len] = (uint8_t)(c >> 8), out[11 + len] = (uint8_t)c;
  return 12 + len;
}

/* A PNG header declaring w x h RGB pixels (no pixel data). */
static size_t png_header(uint8_t *out, uint32_t w, uint32_t h) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(out, sig, 8);
  uint8_t ihdr[13] = {(uint8_t)(w >> 24),
                      (uint8_t)(w >> 16),
                      (uint8_t)(w >> 8),
                      (uint8_t)w,
                      (uint8_t)(h >> 24),
                      (uint8_t)(h >> 16),
                      (uint8_t)(h >> 8),
                      (uint8_t)h,
                      8,
                      2,
                      0,
                      0,
                      0};
  size_t n = 8 + put_chunk(out + 8, "IHDR", ihdr, 13);
  n += put_chunk(out + n, "IDAT", NULL, 0);
  n += put_chunk(out + n, "IEND", NULL, 0);
  return n;
}

/* tests/data/images/colour.jpg with its frame header (SOF) set to w x h. */
static uint8_t *jpeg_declaring(int w, int h, size_t *len) {
  uint8_t *buf;
  if (moka_read_file("tests/data/images/colour.jpg", &buf, len)) return NULL;
  for (size_t i = 2; i + 9 < *len; i++)
    if (buf[i] == 0xFF && (buf[i + 1] == 0xC0 || buf[i + 1] == 0xC2)) {
      buf[i + 5] = (uint8_t)(h >> 8), buf[i + 6] = (uint8_t)h;
      buf[i + 7] = (uint8_t)(w >> 8), buf[i + 8] = (uint8_t)w;
      return buf;
    }
  free(buf);
  return NULL;
}

static void test_images_declaring_huge_sizes(void) {
  uint8_t png[128];
  Image im = {0};
  const uint32_t sizes[3][2] = {{70000, 10}, {20000, 20000}, {1u << 31, 1u << 31}};
  for (int i = 0; i < 3; i++) {
    size_t n = png_header(png, sizes[i][0], sizes[i][1]);
    for (int ch = 0; ch <= 3; ch += 3) {
      CHECK_MSG(image_decode(png, n, ch, &im) != 0, "PNG %ux%u decoded", sizes[i][0], sizes[i][1]);
      CHECK(im.px == NULL);
      if (i < 2)
        CHECK_MSG(strstr(moka_error(), "too large"), "PNG %ux%u: %s", sizes[i][0], sizes[i][1],
                  moka_error());
    }
    SAY("  PNG %ux%u refused: %s\n", sizes[i][0], sizes[i][1], moka_error());
  }
  /* a small PNG header decodes past the size check and fails on the missing data */
  size_t n = png_header(png, 4, 4);
  CHECK(image_decode(png, n, 3, &im) != 0);
  CHECK(!strstr(moka_error(), "too large"));
  const int jsizes[2][2] = {{65535, 16}, {60000, 60000}};
  for (int i = 0; i < 2; i++) {
    size_t len;
    uint8_t *j = jpeg_declaring(jsizes[i][0], jsizes[i][1], &len);
    REQUIRE(j);
    CHECK(image_decode(j, len, 3, &im) != 0);
    CHECK_MSG(strstr(moka_error(), "too large") || strstr(moka_error(),
                                                          "Maximum supported image "
                                                          "dimension is 65500"),
              "JPEG %dx%d: %s", jsizes[i][0], jsizes[i][1], moka_error());
    SAY("  JPEG %dx%d refused: %s\n", jsizes[i][0], jsizes[i][1], moka_error());
    free(j);
  }
  /* resizing to a huge size is refused too */
  uint8_t px[12] = {0};
  Image small = {2, 2, 3, px}, out = {0};
  CHECK(image_resize_bilinear(&small, 100000, 100000, &out) != 0);
  CHECK(strstr(moka_error(), "too large"));
}

/* ---- LMDB records that are not Datums ------------------------------------------------ */

/* Write an LMDB at `dir` with the given records (liblmdb directly). */
static int write_lmdb(const char *dir, int n, const char *const *keys, const uint8_t *const *vals,
                      const size_t *lens) {
  if (mkdir(dir, 0755) != 0) return -1;
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi dbi;
  if (mdb_env_create(&env) || mdb_env_set_mapsize(env, 1 << 20) || mdb_env_open(env, dir, 0, 0644))
    return -1;
  if (mdb_txn_begin(env, NULL, 0, &txn) || mdb_dbi_open(txn, NULL, 0, &dbi)) return -1;
  for (int i = 0; i < n; i++) {
    MDB_val k = {strlen(keys[i]), (void *)keys[i]}, v = {lens[i], (void *)vals[i]};
    if (mdb_put(txn, dbi, &k, &v, 0)) return -1;
  }
  if (mdb_txn_commit(txn)) return -1;
  mdb_env_close(env);
  return 0;
}

static void test_lmdb_records_of_the_wrong_type(void) {
  /* A good raw Datum (1x2x2) */
  Caffe__Datum d;
  uint8_t px[4] = {1, 2, 3, 4};
  caffe__datum__init(&d);
  d.has_channels = d.has_height = d.has_width = d.has_data = d.has_label = 1;
  d.channels = 1, d.height = 2, d.width = 2, d.label = 3;
  d.data.data = px;
  d.data.len = 4;
  uint8_t *good;
  size_t good_len;
  REQUIRE(datum_pack(&d, &good, &good_len) == 0);
  /* A BlobProto: valid protobuf, but not a Datum (parses as an empty one). */
  Caffe__BlobProto bp;
  float vals[2] = {1, 2};
  caffe__blob_proto__init(&bp);
  bp.n_data = 2;
  bp.data = vals;
  uint8_t blob[64];
  size_t blob_len = caffe__blob_proto__pack(&bp, blob);
  const uint8_t *text = (const uint8_t *)"this is not a Datum";

  /* 1: the second record is text: setup reads the first, forward fails on the second */
  const char *k1[2] = {"00000000_good", "00000001_text"};
  const uint8_t *v1[2] = {good, text};
  size_t l1[2] = {good_len, strlen((const char *)text)};
  REQUIRE(write_lmdb(tmp_path("lmdb_text"), 2, k1, v1, l1) == 0);
  char net_text[1024];
  snprintf(net_text, sizeof net_text,
           "layer { name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s' batch_size: 2 backend: LMDB } }",
           tmp_path("lmdb_text"));
  Net *net = net_from_text(net_text);
  CHECK_MSG(net != NULL, "%s", moka_error());
  if (net) {
    float loss;
    CHECK(net_forward(net, &loss) != 0);
    CHECK_MSG(strstr(moka_error(), "00000001_text") && strstr(moka_error(), "layer 'data'") &&
                  strstr(moka_error(), "not a caffe.Datum"),
              "%s", moka_error());
    SAY("  refused: %s\n", moka_error());
    net_free(net);
  }
  /* 2: the first record is a BlobProto: refused at setup */
  const char *k2[2] = {"00000000_blob", "00000001_good"};
  const uint8_t *v2[2] = {blob, good};
  size_t l2[2] = {blob_len, good_len};
  REQUIRE(write_lmdb(tmp_path("lmdb_blob"), 2, k2, v2, l2) == 0);
  snprintf(net_text, sizeof net_text,
           "layer { name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s' batch_size: 2 backend: LMDB } }",
           tmp_path("lmdb_blob"));
  CHECK_REFUSED(net_text, "layer 'data'", "00000000_blob");
  /* 3: an empty value */
  const char *k3[1] = {"00000000_empty"};
  const uint8_t *v3[1] = {good};
  size_t l3[1] = {0};
  REQUIRE(write_lmdb(tmp_path("lmdb_empty"), 1, k3, v3, l3) == 0);
  snprintf(net_text, sizeof net_text,
           "layer { name: 'data' type: 'Data' top: 'data' top: 'label' "
           "data_param { source: '%s' batch_size: 1 backend: LMDB } }",
           tmp_path("lmdb_empty"));
  CHECK_REFUSED(net_text, "layer 'data'", "00000000_empty");
  free(good);
}

/* ---- solver files naming bad nets ---------------------------------------------------- */

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static void test_solver_naming_itself_or_nothing(void) {
  SolverOptions o;
  memset(&o, 0, sizeof o);
  o.quiet_nets = true;
  /* net: the solver file itself: read as a net definition, its first
   * solver field is an unknown field of caffe.NetParameter (no recursion:
   * a net file cannot include anything). */
  char text[1024];
  snprintf(text, sizeof text, "net: \"%s\"\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: \"fixed\"\n",
           tmp_path("self_solver.prototxt"));
  write_text(tmp_path("self_solver.prototxt"), text);
  Solver *s = solver_create_from_file(tmp_path("self_solver.prototxt"), &o);
  CHECK(s == NULL);
  solver_free(s);
  CHECK_MSG(strstr(moka_error(), "self_solver.prototxt:1:1") &&
                strstr(moka_error(), "unknown field 'net' in caffe.NetParameter"),
            "%s", moka_error());
  SAY("  refused: %s\n", moka_error());
  /* net: a file that does not exist */
  write_text(tmp_path("missing_solver.prototxt"),
             "net: \"no_such_net.prototxt\"\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: \"fixed\"\n");
  s = solver_create_from_file(tmp_path("missing_solver.prototxt"), &o);
  CHECK(s == NULL);
  solver_free(s);
  CHECK_MSG(strstr(moka_error(), "no_such_net.prototxt"), "%s", moka_error());
  SAY("  refused: %s\n", moka_error());
  /* net: a folder */
  snprintf(text, sizeof text, "net: \"%s\"\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: \"fixed\"\n",
           g_tmp);
  write_text(tmp_path("dir_solver.prototxt"), text);
  s = solver_create_from_file(tmp_path("dir_solver.prototxt"), &o);
  CHECK(s == NULL);
  solver_free(s);
  CHECK_MSG(strstr(moka_error(), "is a directory"), "%s", moka_error());
  SAY("  refused: %s\n", moka_error());
}

/* ---- files moka writes ----------------------------------------------------------------- */

static void test_written_files_follow_the_umask(void) {
  const mode_t masks[3] = {022, 077, 0};
  for (int i = 0; i < 3; i++) {
    mode_t old = umask(masks[i]);
    const char *p = tmp_path("written.bin");
    unlink(p);
    int rc = moka_write_file_atomic(p, "abc", 3);
    umask(old);
    REQUIRE(rc == 0);
    struct stat st;
    REQUIRE(stat(p, &st) == 0);
    CHECK_MSG((st.st_mode & 0777) == (0666 & ~masks[i]), "umask %03o: mode %03o", masks[i],
              st.st_mode & 0777);
  }
  /* A snapshot-style write over an existing file takes the umask again, not
   * the old file's mode. */
  const char *p = tmp_path("written.bin");
  chmod(p, 0600);
  mode_t old = umask(022);
  CHECK(moka_write_file_atomic(p, "abcd", 4) == 0);
  umask(old);
  struct stat st;
  CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0644);
  /* no temporary file is left behind */
  char tmp_name[600];
  snprintf(tmp_name, sizeof tmp_name, "%s.tmp.%d", p, (int)getpid());
  CHECK(access(tmp_name, F_OK) != 0);
}

static void remove_tree(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "  cannot remove %s\n", dir);
}

int main(void) {
  moka_set_log_level(2);
  snprintf(g_tmp, sizeof g_tmp, "/tmp/moka_reliability_XXXXXX");
  if (!mkdtemp(g_tmp)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_blobproto_shapes_overflowing);
  RUN(test_input_dims_overflowing);
  RUN(test_layer_params_too_large);
  RUN(test_memory_limit_names_the_blob);
  RUN(test_python_layer_refused);
  RUN(test_prototxt_nesting_limit);
  RUN(test_prototxt_of_empty_layers);
  RUN(test_caffemodel_of_empty_layers);
  RUN(test_datum_declaring_huge_sizes);
  RUN(test_images_declaring_huge_sizes);
  RUN(test_lmdb_records_of_the_wrong_type);
  RUN(test_solver_naming_itself_or_nothing);
  RUN(test_written_files_follow_the_umask);
  remove_tree(g_tmp);
  return test_summary();
}
