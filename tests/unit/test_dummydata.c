/* test_dummydata.c — the DummyData layer: shapes (shape and legacy forms,
 * once or per top), default constant 0, Caffe's refill rule (constant tops
 * filled once at setup, others refilled on every forward from the net's
 * random stream, in the same order as Caffe's draws), and its errors. */
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "net.h"
#include "prototxt.h"
#include "rng.h"
#include "testlib.h"
#include "util.h"

/* The registry refers to layer types through weak symbols: name the ones
 * this test needs so that the linker pulls them out of libmoka.a. */
extern const LayerType layer_type_dummydata, layer_type_innerproduct;
static const LayerType *const g_types_under_test[] __attribute__((unused)) = {
    &layer_type_dummydata, &layer_type_innerproduct};

typedef struct Made {
  Caffe__LayerParameter *lp;
  Blob *top[4];
  int n_top;
  Layer *l;
  Rng rng;
} Made;

/* Parse one LayerParameter from text and create it with n_top fresh tops.
 * Returns 0, or -1 with moka_error() set (m->l == NULL). */
static int make(Made *m, const char *text, int n_top, uint32_t seed) {
  memset(m, 0, sizeof *m);
  ProtobufCMessage *msg;
  if (prototxt_parse(&caffe__layer_parameter__descriptor, text, strlen(text), "test", &msg))
    return -1;
  m->lp = (Caffe__LayerParameter *)msg;
  m->n_top = n_top;
  for (int t = 0; t < n_top; t++) {
    char name[16];
    snprintf(name, sizeof name, "t%d", t);
    m->top[t] = blob_new(name);
  }
  rng_seed(&m->rng, seed);
  m->l = layer_create(m->lp, MOKA_TRAIN, &m->rng, NULL, 0, m->top, n_top);
  return m->l ? 0 : -1;
}

static void unmake(Made *m) {
  layer_free(m->l);
  for (int t = 0; t < m->n_top; t++) blob_free(m->top[t]);
  if (m->lp) caffe__layer_parameter__free_unpacked(m->lp, NULL);
}

static bool shape_is(const Blob *b, int n, const int *s) {
  if (b->num_axes != n) return false;
  for (int i = 0; i < n; i++)
    if (b->shape[i] != s[i]) return false;
  return true;
}

static bool all_equal(const Blob *b, float v) {
  for (size_t i = 0; i < b->count; i++)
    if (b->data[i] != v) return false;
  return true;
}

static void test_default_is_constant_zero(void) {
  Made m;
  int rc = make(&m,
                "name: 'd' type: 'DummyData' top: 'a' top: 'b'\n"
                "dummy_data_param { shape { dim: 2 dim: 3 } }",
                2, 1);
  CHECK_MSG(rc == 0, "%s", moka_error());
  if (rc == 0) {
    const int s[2] = {2, 3};
    CHECK(shape_is(m.top[0], 2, s) && shape_is(m.top[1], 2, s));
    /* poison, then forward: a constant top is never refilled (Caffe) */
    m.top[0]->data[0] = 7.0f;
    CHECK(layer_forward(m.l, MOKA_BACKEND_CPU) == 0);
    CHECK(m.top[0]->data[0] == 7.0f);
    m.top[0]->data[0] = 0.0f;
    CHECK(all_equal(m.top[0], 0.0f) && all_equal(m.top[1], 0.0f));
  }
  unmake(&m);
}

static void test_legacy_dims_per_top(void) {
  Made m;
  int rc = make(&m,
                "name: 'd' type: 'DummyData' top: 'data' top: 'label'\n"
                "dummy_data_param { num: 5 channels: 3 channels: 1 height: 4 height: 1\n"
                "  width: 6 width: 1\n"
                "  data_filler { type: 'constant' value: 1.5 }\n"
                "  data_filler { type: 'constant' value: 2 } }",
                2, 1);
  CHECK_MSG(rc == 0, "%s", moka_error());
  if (rc == 0) {
    const int s0[4] = {5, 3, 4, 6}, s1[4] = {5, 1, 1, 1};
    CHECK(shape_is(m.top[0], 4, s0));
    CHECK(shape_is(m.top[1], 4, s1));
    CHECK(all_equal(m.top[0], 1.5f));
    CHECK(all_equal(m.top[1], 2.0f));
  }
  unmake(&m);
}

/* A gaussian top is refilled on every forward, drawing from the layer's
 * stream exactly as filler_fill would (nothing is drawn at setup). */
static void test_gaussian_refills_each_forward(void) {
  Made m;
  int rc = make(&m,
                "name: 'd' type: 'DummyData' top: 'x'\n"
                "dummy_data_param { shape { dim: 4 dim: 5 }\n"
                "  data_filler { type: 'gaussian' mean: 3 std: 2 } }",
                1, 42);
  CHECK_MSG(rc == 0, "%s", moka_error());
  if (rc != 0) {
    unmake(&m);
    return;
  }
  Rng ref;
  rng_seed(&ref, 42);
  Blob *want = blob_new("want");
  const int s[2] = {4, 5};
  REQUIRE(want && blob_reshape(want, 2, s) == 0);
  Caffe__FillerParameter f = CAFFE__FILLER_PARAMETER__INIT;
  f.type = "gaussian";
  f.mean = 3;
  f.std = 2;
  for (int it = 0; it < 2; it++) {
    REQUIRE(layer_forward(m.l, MOKA_BACKEND_CPU) == 0);
    REQUIRE(filler_fill(want, &f, &ref) == 0);
    CHECK_MSG(memcmp(want->data, m.top[0]->data, want->count * sizeof(float)) == 0,
              "forward %d: got %g want %g", it, m.top[0]->data[0], want->data[0]);
  }
  /* the values are really N(3, 2^2)-like, not zeros */
  double mean = 0;
  for (size_t i = 0; i < m.top[0]->count; i++) mean += m.top[0]->data[i];
  mean /= (double)m.top[0]->count;
  CHECK_MSG(mean > 1.5 && mean < 4.5, "mean %g", mean);
  blob_free(want);
  unmake(&m);
}

/* One filler per top: the constant top is filled once, the uniform one
 * each forward; one shape for both tops. */
static void test_mixed_fillers(void) {
  Made m;
  int rc = make(&m,
                "name: 'd' type: 'DummyData' top: 'a' top: 'b'\n"
                "dummy_data_param { shape { dim: 3 dim: 2 dim: 2 }\n"
                "  data_filler { type: 'constant' value: -1 }\n"
                "  data_filler { type: 'uniform' min: 10 max: 11 } }",
                2, 7);
  CHECK_MSG(rc == 0, "%s", moka_error());
  if (rc != 0) {
    unmake(&m);
    return;
  }
  CHECK(all_equal(m.top[0], -1.0f));
  CHECK(all_equal(m.top[1], 0.0f)); /* not filled before the first forward */
  REQUIRE(layer_forward(m.l, MOKA_BACKEND_CPU) == 0);
  float first = m.top[1]->data[0];
  bool in_range = true;
  for (size_t i = 0; i < m.top[1]->count; i++)
    in_range &= m.top[1]->data[i] >= 10.0f && m.top[1]->data[i] <= 11.0f;
  CHECK(in_range);
  m.top[0]->data[1] = 5.0f;
  REQUIRE(layer_forward(m.l, MOKA_BACKEND_CPU) == 0);
  CHECK(m.top[0]->data[1] == 5.0f); /* constant: not refilled */
  CHECK(m.top[1]->data[0] != first);
  unmake(&m);
}

/* One non-constant filler shared by two tops: both refilled, top 0 first. */
static void test_shared_filler_order(void) {
  Made m;
  int rc = make(&m,
                "name: 'd' type: 'DummyData' top: 'a' top: 'b'\n"
                "dummy_data_param { shape { dim: 3 } shape { dim: 2 }\n"
                "  data_filler { type: 'uniform' min: 0 max: 1 } }",
                2, 9);
  CHECK_MSG(rc == 0, "%s", moka_error());
  if (rc != 0) {
    unmake(&m);
    return;
  }
  REQUIRE(layer_forward(m.l, MOKA_BACKEND_CPU) == 0);
  CHECK(m.top[0]->count == 3 && m.top[1]->count == 2);
  Rng ref;
  rng_seed(&ref, 9);
  float want[5];
  /* Caffe's uniform filler draws from the closed [min, max] (see filler.c) */
  for (int i = 0; i < 5; i++) want[i] = rng_uniform(&ref, 0.0f, nextafterf(1.0f, 2.0f));
  CHECK(memcmp(m.top[0]->data, want, 3 * sizeof(float)) == 0);
  CHECK(memcmp(m.top[1]->data, want + 3, 2 * sizeof(float)) == 0);
  unmake(&m);
}

static void expect_error(const char *text, int n_top, const char *pattern) {
  Made m;
  int rc = make(&m, text, n_top, 1);
  CHECK_MSG(rc != 0, "accepted: %s", text);
  if (rc != 0)
    CHECK_MSG(strstr(moka_error(), pattern) != NULL, "message '%s' lacks '%s'", moka_error(),
              pattern);
  unmake(&m);
}

static void test_errors(void) {
  expect_error("name: 'd' type: 'DummyData' top: 'a' top: 'b' top: 'c'\n"
               "dummy_data_param { shape { dim: 1 } shape { dim: 2 } }",
               3, "'shape' once, or once per top blob (3); got 2");
  expect_error("name: 'd' type: 'DummyData' top: 'a'\n"
               "dummy_data_param { shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1 }",
               1, "both 'shape' and the legacy");
  expect_error("name: 'd' type: 'DummyData' top: 'a' top: 'b' top: 'c'\n"
               "dummy_data_param { num: 1 num: 2 channels: 1 height: 1 width: 1 }",
               3, "'num' once, or once per top blob (3); got 2");
  expect_error("name: 'd' type: 'DummyData' top: 'a'\n"
               "dummy_data_param { num: 1 height: 1 width: 1 }",
               1, "'channels' once");
  expect_error("name: 'd' type: 'DummyData' top: 'a' top: 'b' top: 'c'\n"
               "dummy_data_param { shape { dim: 1 }\n"
               "  data_filler { type: 'constant' } data_filler { type: 'constant' } }",
               3, "'data_filler' 0 times, once, or once per top blob (3); got 2");
  expect_error("name: 'd' type: 'DummyData' top: 'a'\n"
               "dummy_data_param { shape { dim: 2 } data_filler { type: 'nonsense' } }",
               1, "nonsense");
  expect_error("name: 'd' type: 'DummyData' top: 'a'", 1, "'shape' once");
  /* the layer names itself in the message */
  expect_error("name: 'mydummy' type: 'DummyData' top: 'a'", 1, "mydummy");
}

/* In a net, the draws interleave as in Caffe: the InnerProduct's weight
 * filler draws at set-up, the DummyData's gaussian at each forward. */
static void test_in_net_draw_order(void) {
  const char *text =
      "name: 'n' layer { name: 'd' type: 'DummyData' top: 'x'\n"
      "  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'gaussian' } } }\n"
      "layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y'\n"
      "  inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } } }";
  ProtobufCMessage *msg;
  REQUIRE(prototxt_parse(&caffe__net_parameter__descriptor, text, strlen(text), "net", &msg) == 0);
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TRAIN;
  o.quiet = true;
  o.has_seed = true;
  o.seed = 1234;
  Net *net = net_create((Caffe__NetParameter *)msg, &o, "net");
  protobuf_c_message_free_unpacked(msg, NULL);
  CHECK_MSG(net, "%s", moka_error());
  if (!net) return;
  float loss;
  CHECK(net_forward(net, &loss) == 0);
  Rng ref;
  rng_seed(&ref, 1234);
  float w[12], x[6];
  for (int i = 0; i < 12; i++) w[i] = rng_gaussian(&ref, 0.0f, 0.5f);
  for (int i = 0; i < 6; i++) x[i] = rng_gaussian(&ref, 0.0f, 1.0f);
  Blob *bx = net_blob(net, "x");
  Layer *ip = net_layer(net, "ip");
  CHECK(bx && memcmp(bx->data, x, sizeof x) == 0);
  CHECK(ip && ip->n_params >= 1 && memcmp(ip->params[0]->data, w, sizeof w) == 0);
  net_free(net);
}

/* The stream itself: mt19937's published check value (the 10000th output
 * for the default seed 5489 is 4123659995), and rng_fill_u32 (the fast
 * DummyData's bulk draws) equal to one rng_u32 at a time, across twists,
 * from any position, leaving the same state. */
static void test_mt19937_stream(void) {
  Rng r;
  rng_seed(&r, 5489);
  uint32_t v = 0;
  for (int i = 0; i < 10000; i++) v = rng_u32(&r);
  CHECK(v == 4123659995u);
  static const size_t counts[] = {1, 5, 623, 624, 625, 2000};
  for (size_t c = 0; c < MOKA_ARRAY_LEN(counts); c++) {
    Rng a, b;
    rng_seed(&a, 77);
    rng_seed(&b, 77);
    for (size_t i = 0; i < c * 3; i++) (void)rng_u32(&a), (void)rng_u32(&b); /* any offset */
    uint32_t got[2000];
    rng_fill_u32(&a, got, counts[c]);
    bool same = true;
    for (size_t i = 0; i < counts[c]; i++) same &= got[i] == rng_u32(&b);
    CHECK_MSG(same, "rng_fill_u32 of %zu", counts[c]);
    CHECK(rng_u32(&a) == rng_u32(&b));
  }
}

int main(void) {
  moka_set_log_level(1);
  RUN(test_mt19937_stream);
  RUN(test_default_is_constant_zero);
  RUN(test_legacy_dims_per_top);
  RUN(test_gaussian_refills_each_forward);
  RUN(test_mixed_fillers);
  RUN(test_shared_filler_order);
  RUN(test_errors);
  RUN(test_in_net_draw_order);
  return test_summary();
}
