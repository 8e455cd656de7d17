/* test_cuda_faults.c — numerical faults on the CUDA backend (solver.h
 * "Faults", src/net_check.h): the per-iteration gradient check by chunk sums
 * on the device, the replays that name the layer (values copied down), and
 * debug_info lines read from the device. The same scenarios as
 * tests/unit/test_faults.c, with SolverOptions.backend = MOKA_BACKEND_CUDA.
 * Without a GPU (or in a build without CUDA) it prints "SKIP: no CUDA device
 * (<reason>)" and exits 0.
 *
 * 1. A NaN fed into the Input layer at iteration 3: the error names the
 *    iteration and the Input layer, and the device weights are unchanged.
 * 2. A -inf that max pooling absorbs (finite loss, NaN conv gradient): the
 *    gradient check on the device stops it, naming the input and the last
 *    good snapshot.
 * 3. Large finite gradients (~1e29, the data scaled by 1e30): no false
 *    alarm, the step runs.
 * 4. debug_info: [Forward] / [Backward] / summary lines with finite values.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

#ifndef MOKA_WITH_CUDA
int main(void) {
  printf("SKIP: no CUDA device (this moka was built without CUDA: CUDA=0 or no nvcc)\n");
  return test_summary();
}
#else

#include "moka_cuda.h"
#include "net_check.h"
#include "net_cuda.h"
#include "prototxt.h"
#include "solver.h"
#include "util.h"

/* Input (1,1,4,4) -> 1x1 conv (2 outputs, weights 1) -> max pool 2x2 -> fc
 * (3) -> softmax loss, LOSS_EXTRA in the loss layer (tests/unit/test_faults.c) */
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
  int bad_iter, bad_at;
  float bad;
  float scale; /* multiplies the data */
} Feed;

static int feed(Solver *s, int iter, int micro_batch, void *user) {
  const Feed *f = user;
  Blob *data = net_blob(s->net, "data"), *label = net_blob(s->net, "label");
  for (size_t k = 0; k < data->count; k++)
    data->data[k] = ((float)((k * 7 + (size_t)iter) % 5) - 2) * f->scale;
  if (iter == f->bad_iter) data->data[f->bad_at] = f->bad;
  label->data[0] = (float)(iter % 3);
  (void)micro_batch;
  return 0;
}

static Solver *make_solver(Feed *f, const char *extra, const char *prefix, int snapshot,
                           const char *more) {
  char net[2048], text[4096];
  snprintf(net, sizeof net, kNet, extra);
  snprintf(text, sizeof text,
           "net_param { %s }\n"
           "base_lr: 0.01 momentum: 0.9 lr_policy: 'fixed' max_iter: 100 display: 1\n"
           "snapshot: %d snapshot_prefix: '%s' random_seed: 3 %s\n",
           net, snapshot, prefix, more);
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__solver_parameter__descriptor, text, strlen(text), "faults", &m))
    return NULL;
  SolverOptions o = {.backend = MOKA_BACKEND_CUDA, .quiet_nets = true, .before_forward = feed,
                     .user = f};
  Solver *s = solver_create((Caffe__SolverParameter *)m, &o, "faults");
  protobuf_c_message_free_unpacked(m, NULL);
  if (!s) fprintf(stderr, "    %s\n", moka_error());
  return s;
}

static bool contains(const char *s, const char *part) {
  if (strstr(s, part)) return true;
  fprintf(stderr, "    message: %s\n    does not contain: %s\n", s, part);
  return false;
}

/* The device weights, copied down. */
static float *device_weights(Solver *s) {
  if (net_params_to_host(s->net)) return NULL;
  float *w = malloc(s->net->param_count * sizeof *w);
  if (w) memcpy(w, s->net->param_data, s->net->param_count * sizeof *w);
  return w;
}

static void test_cuda_nan_input(void) {
  Feed f = {.bad_iter = 3, .bad_at = 5, .bad = NAN, .scale = 1};
  Solver *s = make_solver(&f, "", "/nonexistent/never", 0, "");
  REQUIRE(s);
  CHECK(solver_step(s, 3) == 0);
  float *before = device_weights(s);
  REQUIRE(before);
  CHECK(solver_step(s, 5) == -1);
  const char *e = moka_error();
  CHECK_MSG(strstr(e, "iteration 3: the training loss is nan, not finite") ||
                strstr(e, "iteration 3: a parameter gradient is not finite"),
            "%s", e);
  CHECK(contains(e, "the first layer whose output is not finite is 'data' (Input): its top blob "
                    "'data' holds nan at element 5 of 16"));
  CHECK(contains(e, "no snapshot yet"));
  float *after = device_weights(s);
  CHECK(after && !memcmp(before, after, s->net->param_count * sizeof *after));
  free(before);
  free(after);
  solver_free(s);
}

static void test_cuda_gradient_fault(void) {
  char dir[] = "/tmp/moka_cuda_faults.XXXXXX";
  REQUIRE(mkdtemp(dir));
  char prefix[256], snap[300];
  snprintf(prefix, sizeof prefix, "%s/f", dir);
  snprintf(snap, sizeof snap, "the last good snapshot is %s/f_iter_4.solverstate", dir);
  Feed f = {.bad_iter = 5, .bad_at = 6, .bad = -INFINITY, .scale = 1};
  Solver *s = make_solver(&f, "", prefix, 2, "");
  REQUIRE(s);
  CHECK(solver_step(s, 5) == 0);
  CHECK(solver_step(s, 1) == -1);
  const char *e = moka_error();
  CHECK(contains(e, "iteration 5: a parameter gradient is not finite (first in net order: param "
                    "blob 0 of layer 'conv' holds nan"));
  CHECK(contains(e, "its top blob 'data' holds -inf at element 6 of 16"));
  CHECK(contains(e, snap));
  solver_free(s);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
}

/* Large finite gradients pass the check. */
static void test_cuda_large_finite_gradients(void) {
  Feed f = {.bad_iter = -1, .scale = 1e30f};
  Solver *s = make_solver(&f, "", "/nonexistent/never", 0, "");
  REQUIRE(s);
  CHECK_MSG(solver_step(s, 1) == 0, "%s", moka_error());
  CHECK(s->iter == 1);
  solver_free(s);
}

static void test_cuda_debug_info(void) {
  char path[] = "/tmp/moka_cuda_faults_log.XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  FILE *log = fdopen(fd, "w+");
  REQUIRE(log);
  Feed f = {.bad_iter = -1, .scale = 1};
  Solver *s = make_solver(&f, "", "/nonexistent/never", 0, "debug_info: true");
  REQUIRE(s);
  moka_set_log_level(0);
  FILE *prev = moka_set_log_stream(log);
  CHECK(solver_step(s, 1) == 0);
  moka_set_log_stream(prev);
  moka_set_log_level(1);
  fflush(log);
  rewind(log);
  static char text[1 << 16];
  size_t n = fread(text, 1, sizeof text - 1, log);
  text[n] = 0;
  CHECK(contains(text, "[Forward] Layer conv, top blob conv data: "));
  CHECK(contains(text, "[Backward] Layer conv, param blob 0 diff: "));
  CHECK(contains(text, "[Backward] All net params (data, diff): L1 norm = ("));
  CHECK(!strstr(text, "nan") && !strstr(text, "inf"));
  fclose(log);
  unlink(path);
  solver_free(s);
}

int main(void) {
  char err[512];
  if (moka_cuda_init(0, err, sizeof err)) {
    printf("SKIP: no CUDA device (%s)\n", err);
    return test_summary();
  }
  moka_set_log_level(1);
  RUN(test_cuda_nan_input);
  RUN(test_cuda_gradient_fault);
  RUN(test_cuda_large_finite_gradients);
  RUN(test_cuda_debug_info);
  return test_summary();
}
#endif
