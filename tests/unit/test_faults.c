/* test_faults.c — numerical faults in training (src/net_check.h, solver.h
 * "Faults"): the finiteness scans, a NaN fed through an Input layer, a -inf
 * that only the gradients show, the backward locator, snapshots refused for
 * non-finite weights, the last good snapshot named. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net_check.h"
#include "prototxt.h"
#include "solver.h"
#include "testlib.h"
#include "util.h"

static void test_all_finite(void) {
  const size_t sizes[] = {0, 1, 7, 64, 1000, (size_t)3 << 20};
  float *x = malloc(((size_t)3 << 20) * sizeof *x); /* (3M) */
  REQUIRE(x);
  for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
    const size_t n = sizes[si];
    for (size_t k = 0; k < n; k++) x[k] = (k % 3 == 0) ? FLT_MAX : -(float)k * 1e-3f;
    if (n) x[n / 2] = -0.0f;
    if (n > 2) x[1] = 1e-42f; /* denormal */
    CHECK_MSG(moka_all_finite(x, n), "n=%zu", n);
    CHECK(moka_first_nonfinite(x, n) == n);
    if (!n) continue;
    const float bad[] = {NAN, -NAN, INFINITY, -INFINITY};
    const size_t where[] = {0, n / 2, n - 1};
    for (int b = 0; b < 4; b++)
      for (int w = 0; w < 3; w++) {
        const size_t at = where[w];
        const float keep = x[at];
        x[at] = bad[b];
        CHECK_MSG(!moka_all_finite(x, n), "n=%zu bad %d at %zu", n, b, at);
        CHECK(moka_first_nonfinite(x, n) == at);
        x[at] = keep;
      }
  }
  char buf[32];
  CHECK(!strcmp(moka_float_text(-NAN, buf), "nan"));
  CHECK(!strcmp(moka_float_text(-INFINITY, buf), "-inf"));
  CHECK(!strcmp(moka_float_text(0.25f, buf), "0.25"));
  free(x);
}

/* Input (1,1,4,4) -> 1x1 conv (2 outputs, weights 1) -> max pool 2x2 -> fc
 * (3, weights 0: the first loss is log 3) -> softmax loss (with LOSS_EXTRA in
 * the loss layer). A -inf (or nan)
 * input is absorbed by the max pooling, so the loss stays finite, but the
 * conv's weight gradient becomes 0 * -inf = nan. (A nan that reaches
 * moka's SoftmaxWithLoss gives a finite loss too: fmaxf(nan, FLT_MIN) is
 * FLT_MIN, where Caffe's std::max gives nan; the gradient check catches it.) */
static const char kNet[] =
    "name: 'faults'\n"
    "layer { name: 'data' type: 'Input' top: 'data' top: 'label'\n"
    "  input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } shape { dim: 1 } } }\n"
    "layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'\n"
    "  convolution_param { num_output: 2 kernel_size: 1\n"
    "    weight_filler { type: 'constant' value: 1 } } }\n"
    "layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool'\n"
    "  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"
    "layer { name: 'fc' type: 'InnerProduct' bottom: 'pool' top: 'fc'\n"
    "  inner_product_param { num_output: 3 } }\n"
    "layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc' bottom: 'label' top: 'loss' %s }\n";

typedef struct Feed {
  int bad_iter;   /* the iteration whose batch holds the bad value */
  int bad_at;     /* its element */
  float bad;      /* the value */
} Feed;

static int feed(Solver *s, int iter, int micro_batch, void *user) {
  const Feed *f = user;
  Blob *data = net_blob(s->net, "data"), *label = net_blob(s->net, "label");
  for (size_t k = 0; k < data->count; k++) data->data[k] = (float)((k * 7 + (size_t)iter) % 5) - 2;
  if (iter == f->bad_iter) data->data[f->bad_at] = f->bad;
  label->data[0] = (float)(iter % 3);
  (void)micro_batch;
  return 0;
}

static Solver *make_solver(Feed *f, const char *loss_extra, const char *prefix, int snapshot) {
  char net[2048], text[4096];
  snprintf(net, sizeof net, kNet, loss_extra);
  snprintf(text, sizeof text,
           "net_param { %s }\n"
           "base_lr: 0.01 momentum: 0.9 lr_policy: 'fixed' max_iter: 100 display: 0\n"
           "snapshot: %d snapshot_prefix: '%s' random_seed: 3\n",
           net, snapshot, prefix);
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__solver_parameter__descriptor, text, strlen(text), "faults", &m))
    return NULL;
  SolverOptions o = {.quiet_nets = true, .before_forward = feed, .user = f};
  Solver *s = solver_create((Caffe__SolverParameter *)m, &o, "faults");
  protobuf_c_message_free_unpacked(m, NULL);
  return s;
}

static bool contains(const char *s, const char *part) {
  if (strstr(s, part)) return true;
  fprintf(stderr, "    message: %s\n    does not contain: %s\n", s, part);
  return false;
}

/* A NaN in the input at iteration 3: the Input layer is named (through the
 * loss or the gradient check), no update is made, no snapshot yet. */
static void test_nan_input(void) {
  Feed f = {.bad_iter = 3, .bad_at = 5, .bad = NAN};
  Solver *s = make_solver(&f, "", "/nonexistent/never", 0);
  REQUIRE(s);
  CHECK(solver_step(s, 3) == 0);
  float *before = malloc(s->net->param_count * sizeof *before);
  memcpy(before, s->net->param_data, s->net->param_count * sizeof *before);
  CHECK(solver_step(s, 5) == -1);
  const char *e = moka_error();
  CHECK_MSG(strstr(e, "iteration 3: the training loss is nan, not finite") ||
                strstr(e, "iteration 3: a parameter gradient is not finite"),
            "%s", e);
  CHECK(contains(e, "the first layer whose output is not finite is 'data' (Input): its top blob "
                    "'data' holds nan at element 5 of 16"));
  CHECK(contains(e, "no snapshot yet"));
  CHECK(s->iter == 3);
  CHECK(!memcmp(before, s->net->param_data, s->net->param_count * sizeof *before));
  free(before);
  solver_free(s);
}

/* Every value finite, but the weighted loss overflows float: the loss
 * check stops at iteration 0 and names the loss layer and its weight. */
static void test_loss_weight_overflow(void) {
  Feed f = {.bad_iter = -1};
  Solver *s = make_solver(&f, "loss_weight: 3.4e38", "/nonexistent/never", 0);
  REQUIRE(s);
  CHECK(solver_step(s, 2) == -1);
  const char *e = moka_error();
  CHECK(contains(e, "iteration 0: the training loss is inf, not finite: every value is finite, "
                    "but the loss of layer 'loss' (SoftmaxWithLoss), top 'loss' = "));
  CHECK(contains(e, "times its loss_weight 3.4e+38 is inf"));
  solver_free(s);
}

/* A -inf that max pooling absorbs: the loss is finite, the gradient is not.
 * The input is named (the forward replay finds it first); the backward
 * locator alone names the conv's weight gradient. The last good snapshot is
 * named, and the weights are not updated. */
static void test_gradient_fault(void) {
  char dir[] = "/tmp/moka_faults.XXXXXX";
  REQUIRE(mkdtemp(dir));
  char prefix[256], snap[300];
  snprintf(prefix, sizeof prefix, "%s/f", dir);
  snprintf(snap, sizeof snap, "the last good snapshot is %s/f_iter_4.solverstate", dir);
  Feed f = {.bad_iter = 5, .bad_at = 6, .bad = -INFINITY};
  Solver *s = make_solver(&f, "", prefix, 2);
  REQUIRE(s);
  CHECK(solver_step(s, 5) == 0);
  float *before = malloc(s->net->param_count * sizeof *before);
  memcpy(before, s->net->param_data, s->net->param_count * sizeof *before);
  CHECK(solver_step(s, 1) == -1);
  const char *e = moka_error();
  CHECK(contains(e, "iteration 5: a parameter gradient is not finite (first in net order: param "
                    "blob 0 of layer 'conv' holds nan at element "));
  CHECK(contains(e, "the first layer whose output is not finite is 'data' (Input): its top blob "
                    "'data' holds -inf at element 6 of 16"));
  CHECK(contains(e, snap));
  CHECK(!memcmp(before, s->net->param_data, s->net->param_count * sizeof *before));
  /* the backward locator by itself (the forward state is still iteration 5's) */
  NetFault nf;
  CHECK(net_locate_backward_fault(s->net, &nf) == 0);
  CHECK(nf.kind == NET_FAULT_PARAM_DIFF && nf.layer == net_layer_index(s->net, "conv") &&
        nf.index == 0 && isnan(nf.value));
  char d[1024];
  net_fault_describe(s->net, &nf, d, sizeof d);
  CHECK(contains(d, "going backward from the loss, whose gradient is not finite is 'conv' "
                    "(Convolution): the gradient of its param blob 0 holds nan"));
  CHECK(contains(d, "its input 'data' holds -inf at element 6 from the forward pass"));
  free(before);
  solver_free(s);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
}

/* Weights that are not finite are never written as a snapshot. */
static void test_snapshot_refused(void) {
  char dir[] = "/tmp/moka_faults.XXXXXX";
  REQUIRE(mkdtemp(dir));
  char prefix[256], model[300];
  snprintf(prefix, sizeof prefix, "%s/w", dir);
  snprintf(model, sizeof model, "%s/w_iter_1.caffemodel", dir);
  Feed f = {.bad_iter = -1};
  Solver *s = make_solver(&f, "", prefix, 0);
  REQUIRE(s);
  CHECK(solver_step(s, 1) == 0);
  Layer *fc = net_layer(s->net, "fc");
  REQUIRE(fc);
  fc->params[0]->data[4] = INFINITY;
  CHECK(solver_snapshot(s) == -1);
  CHECK(contains(moka_error(), "iteration 1: not writing snapshot"));
  CHECK(contains(moka_error(), "param blob 0 of layer 'fc' holds inf at element 4"));
  CHECK(contains(moka_error(), "no snapshot yet"));
  struct stat st;
  CHECK(stat(model, &st) != 0);
  fc->params[0]->data[4] = 0.5f;
  CHECK(solver_snapshot(s) == 0);
  CHECK(stat(model, &st) == 0);
  CHECK(s->last_snapshot && strstr(s->last_snapshot, "w_iter_1.solverstate"));
  solver_free(s);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
}

int main(void) {
  moka_set_log_level(getenv("MOKA_TEST_VERBOSE") ? 0 : 2);
  RUN(test_all_finite);
  RUN(test_nan_input);
  RUN(test_loss_weight_overflow);
  RUN(test_gradient_fault);
  RUN(test_snapshot_refused);
  return test_summary();
}
