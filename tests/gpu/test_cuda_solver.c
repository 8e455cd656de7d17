/* test_cuda_solver.c — training on the CUDA backend: the Solver with
 * SolverOptions.backend = MOKA_BACKEND_CUDA, against real Caffe and against
 * the CPU solver. Needs a GPU; without one (or in a build without CUDA) it
 * prints "SKIP: no CUDA device (<reason>)" and exits 0, so `make test` builds
 * and runs it everywhere (tests/gpu/run.sh runs it on the device).
 *
 * 1. The golden mini_train runs on the device (6 iterations, SGD with
 *    momentum, L2 weight decay, multistep lr; batches fed through the
 *    before_forward hook as tests/unit/test_solver.c does): every iteration's
 *    loss against train_log.txt (1e-4 absolute), and the snapshot the solver
 *    writes (so the explicit device->host copies are exercised) against
 *    Caffe's mini_iter_6.caffemodel (parameters and BN statistics, rtol 1e-4)
 *    and .solverstate (momentum history, rtol 1e-4; the conv1 bias history
 *    is rounding noise, compared with an absolute floor as on the CPU).
 *    Also with iter_size 2 and with frozen BatchNorm (use_global_stats).
 * 2. Snapshot -> resume on the device is bit-identical to an uninterrupted
 *    device run (losses, parameters, history), the resumed solver starting
 *    from random fillers (so the restore must copy the weights up).
 * 3. The update rules on a tiny net with the same injected gradients on the
 *    CPU solver and on the CUDA solver: bit-identical parameters and history
 *    for SGD (L2, L1, iter_size 3, a rate drop) and Nesterov (device
 *    kernels, the CPU's float operations in its order), and for AdaGrad,
 *    RMSProp, AdaDelta, Adam and SGD with clip_gradients (the host path,
 *    which is the CPU code itself); which path was taken, and its log line.
 * 4. Test nets on the device: the train and test output lines of a solve
 *    with a test net (Accuracy) agree with the CPU run's, and the test net
 *    holds exactly the train net's parameters (shared device to device).
 */
#include <math.h>
#include <stdbool.h>
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
#include "net.h"
#include "net_cuda.h"
#include "proto_io.h"
#include "prototxt.h"
#include "solver.h"
#include "train_feed.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static void replace_string(char **field, const char *v) {
  free(*field);
  *field = strdup(v);
}

static Caffe__SolverParameter *parse_solver(const char *text) {
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__solver_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  return (Caffe__SolverParameter *)m;
}

static Solver *make_solver(const Caffe__SolverParameter *p, Backend be, SolverOptions o) {
  o.backend = be;
  o.device = 0;
  o.quiet_nets = true;
  Solver *s = solver_create(p, &o, be == MOKA_BACKEND_CUDA ? "cuda test" : "cpu test");
  if (!s) fprintf(stderr, "    %s\n", moka_error());
  return s;
}

/* A golden mini_train solver on the device: the solver file with `net`
 * replaced by net_file (both in shared/golden) and, unless NULL, the initial
 * weights given as the solver's `weights` (copied on the host before the
 * nets go to the device). */
static Solver *golden_cuda_solver(const char *solver_file, const char *net_file,
                                  const char *weights, Feed *feed) {
  Caffe__SolverParameter *p;
  if (solver_param_read(shared_path(solver_file), &p)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  replace_string(&p->net, shared_path(net_file));
  if (weights) {
    for (size_t i = 0; i < p->n_weights; i++) free(p->weights[i]);
    free(p->weights);
    p->weights = calloc(1, sizeof *p->weights);
    p->weights[0] = strdup(shared_path(weights));
    p->n_weights = 1;
  }
  SolverOptions o = {.before_forward = feed_before_forward, .user = feed};
  Solver *s = make_solver(p, MOKA_BACKEND_CUDA, o);
  caffe__solver_parameter__free_unpacked(p, NULL);
  return s;
}

/* Every blob of every layer of the golden caffemodel against the same layer
 * of the caffemodel `got` (as written by the solver). */
static int compare_model_files(const char *got, const char *golden, double rtol) {
  ProtobufCMessage *ma, *mb;
  if (proto_read_binary(&caffe__net_parameter__descriptor, got, &ma)) {
    fprintf(stderr, "    %s\n", moka_error());
    return 0;
  }
  if (proto_read_binary(&caffe__net_parameter__descriptor, golden, &mb)) {
    fprintf(stderr, "    %s\n", moka_error());
    protobuf_c_message_free_unpacked(ma, NULL);
    return 0;
  }
  const Caffe__NetParameter *a = (const Caffe__NetParameter *)ma, *b = (const Caffe__NetParameter *)mb;
  int ok = 1, compared = 0;
  for (size_t i = 0; i < b->n_layer; i++) {
    const Caffe__LayerParameter *lb = b->layer[i];
    if (!lb->n_blobs) continue;
    const Caffe__LayerParameter *la = NULL;
    for (size_t j = 0; j < a->n_layer && !la; j++)
      if (a->layer[j]->name && !strcmp(a->layer[j]->name, lb->name)) la = a->layer[j];
    if (!la || la->n_blobs != lb->n_blobs) {
      fprintf(stderr, "    layer %s missing from %s or a different blob count\n", lb->name, got);
      ok = 0;
      continue;
    }
    for (size_t k = 0; k < lb->n_blobs; k++) {
      char what[256];
      snprintf(what, sizeof what, "%s.%zu", lb->name, k);
      if (la->blobs[k]->n_data != lb->blobs[k]->n_data) {
        fprintf(stderr, "    %s: size mismatch\n", what);
        ok = 0;
        continue;
      }
      ok &= compare_f32(what, la->blobs[k]->data, lb->blobs[k]->data, lb->blobs[k]->n_data, rtol, 0);
      compared++;
    }
  }
  protobuf_c_message_free_unpacked(ma, NULL);
  protobuf_c_message_free_unpacked(mb, NULL);
  if (!compared) fprintf(stderr, "    %s: no blobs compared\n", golden);
  return ok && compared > 0;
}

/* The written solverstate against the golden one: iter, current_step and
 * every history blob at rtol 1e-4. The conv1 bias gradient of mini_train is
 * rounding noise (golden README), so its history (blob 1) gets an extra
 * absolute floor of 1e-6 * base_lr / (1 - momentum), as in
 * tests/unit/test_solver.c. */
static int compare_state_files(const char *got, const char *golden, double base_lr,
                               double momentum) {
  ProtobufCMessage *ma, *mb;
  if (proto_read_binary(&caffe__solver_state__descriptor, got, &ma)) {
    fprintf(stderr, "    %s\n", moka_error());
    return 0;
  }
  if (proto_read_binary(&caffe__solver_state__descriptor, golden, &mb)) {
    fprintf(stderr, "    %s\n", moka_error());
    protobuf_c_message_free_unpacked(ma, NULL);
    return 0;
  }
  const Caffe__SolverState *a = (const Caffe__SolverState *)ma, *b = (const Caffe__SolverState *)mb;
  int ok = a->iter == b->iter && a->current_step == b->current_step && a->n_history == b->n_history;
  if (!ok)
    fprintf(stderr, "    %s: iter %d step %d, %zu history blobs; Caffe: %d %d %zu\n", got, a->iter,
            a->current_step, a->n_history, b->iter, b->current_step, b->n_history);
  for (size_t i = 0; ok && i < b->n_history; i++) {
    char what[64];
    snprintf(what, sizeof what, "history %zu", i);
    if (a->history[i]->n_data != b->history[i]->n_data) {
      fprintf(stderr, "    %s: size mismatch\n", what);
      ok = 0;
      break;
    }
    const double floor = i == 1 ? 1e-6 * base_lr / (1 - momentum) : 0;
    ok &= compare_f32(what, a->history[i]->data, b->history[i]->data, b->history[i]->n_data, 1e-4,
                      floor);
  }
  protobuf_c_message_free_unpacked(ma, NULL);
  protobuf_c_message_free_unpacked(mb, NULL);
  return ok;
}

static char g_tmp[64];

static void make_tmp(void) {
  snprintf(g_tmp, sizeof g_tmp, "/tmp/moka_cuda_solver_XXXXXX");
  if (!mkdtemp(g_tmp)) g_tmp[0] = 0;
}

static void remove_tmp(void) {
  char cmd[128];
  if (!g_tmp[0]) return;
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  if (system(cmd) != 0) fprintf(stderr, "    could not remove %s\n", g_tmp);
}

/* ---- 1. the golden mini_train runs on the device ----------------------------------------- */

typedef struct GoldenRun {
  const char *solver, *net, *log, *model, *state;
  int iter_size;
} GoldenRun;

static void run_golden(const GoldenRun *g) {
  moka_set_log_level(1);
  Feed f;
  REQUIRE(feed_load(&f, "golden/mini_train", 6));
  Solver *s = golden_cuda_solver(g->solver, g->net, "golden/mini_train/init.caffemodel", &f);
  if (!s) feed_free(&f);
  REQUIRE(s);
  CHECK(s->net->cuda != NULL && s->net->backend == MOKA_BACKEND_CUDA);
  CHECK(s->update_on_device && s->kind == SOLVER_SGD && s->param->iter_size == g->iter_size);
  CHECK(solver_step(s, 6) == 0);
  record_loss(&f, s->net);
  CHECK(s->iter == 6 && s->current_step == 2);
  /* losses */
  double want[16], micro[16][2];
  const int n = read_train_log(g->log, want, micro, 16);
  CHECK_MSG(n == 6, "%s: %d iterations in the log", g->log, n);
  for (int it = 0; it < n && it < 6; it++) {
    double mean = 0;
    for (int m = 0; m < g->iter_size; m++) mean += f.loss[it][m];
    mean /= g->iter_size;
    CHECK_MSG(fabs(mean - want[it]) <= 1e-4, "iteration %d: loss %.8f, Caffe %.8f", it, mean,
              want[it]);
    if (g->iter_size == 2)
      for (int m = 0; m < 2; m++)
        CHECK_MSG(fabs(f.loss[it][m] - micro[it][m]) <= 1e-4,
                  "iteration %d micro-batch %d: loss %.8f, Caffe %.8f", it, m, f.loss[it][m],
                  micro[it][m]);
  }
  /* the snapshot the solver writes from the device */
  make_tmp();
  REQUIRE(g_tmp[0]);
  char prefix[128], model[160], state[160];
  snprintf(prefix, sizeof prefix, "%s/gpu", g_tmp);
  replace_string(&s->param->snapshot_prefix, prefix);
  CHECK(solver_snapshot(s) == 0);
  snprintf(model, sizeof model, "%s_iter_6.caffemodel", prefix);
  snprintf(state, sizeof state, "%s_iter_6.solverstate", prefix);
  CHECK(compare_model_files(model, shared_path(g->model), 1e-4));
  CHECK(compare_state_files(state, shared_path(g->state), s->param->base_lr, s->param->momentum));
  remove_tmp();
  solver_free(s);
  feed_free(&f);
}

static void test_cuda_mini_train(void) {
  const GoldenRun g = {"golden/mini_train/solver.prototxt", "golden/mini_train/train.prototxt",
                       "golden/mini_train/train_log.txt",
                       "golden/mini_train/snapshots/mini_iter_6.caffemodel",
                       "golden/mini_train/snapshots/mini_iter_6.solverstate", 1};
  run_golden(&g);
}

static void test_cuda_mini_train_itersize2(void) {
  /* itersize2/train.prototxt feeds with a Python layer; the Input-layer net
   * fed the same sequence is equivalent (golden README section 2) */
  const GoldenRun g = {"golden/mini_train/itersize2/solver.prototxt",
                       "golden/mini_train/train.prototxt",
                       "golden/mini_train/itersize2/train_log.txt",
                       "golden/mini_train/itersize2/snapshots/mini_is2_iter_6.caffemodel",
                       "golden/mini_train/itersize2/snapshots/mini_is2_iter_6.solverstate", 2};
  run_golden(&g);
}

static void test_cuda_mini_train_frozen_bn(void) {
  const GoldenRun g = {"golden/mini_train/frozen_bn/solver.prototxt",
                       "golden/mini_train/frozen_bn/train.prototxt",
                       "golden/mini_train/frozen_bn/train_log.txt",
                       "golden/mini_train/frozen_bn/snapshots/mini_frozen_iter_6.caffemodel",
                       "golden/mini_train/frozen_bn/snapshots/mini_frozen_iter_6.solverstate", 1};
  run_golden(&g);
}

/* ---- 2. snapshot -> resume on the device ---------------------------------------------------- */

static void test_cuda_resume_bit_identical(void) {
  moka_set_log_level(1);
  make_tmp();
  REQUIRE(g_tmp[0]);
  char prefix[128], state[160];
  snprintf(prefix, sizeof prefix, "%s/run", g_tmp);
  Feed f1, f2;
  REQUIRE(feed_load(&f1, "golden/mini_train", 6));
  REQUIRE(feed_load(&f2, "golden/mini_train", 6));
  /* uninterrupted: 6 iterations */
  Solver *a = golden_cuda_solver("golden/mini_train/solver.prototxt",
                                 "golden/mini_train/train.prototxt",
                                 "golden/mini_train/init.caffemodel", &f1);
  REQUIRE(a);
  REQUIRE(solver_step(a, 6) == 0);
  record_loss(&f1, a->net);
  /* interrupted: 3 iterations, snapshot, a new solver resumes for 3 more */
  Solver *b = golden_cuda_solver("golden/mini_train/solver.prototxt",
                                 "golden/mini_train/train.prototxt",
                                 "golden/mini_train/init.caffemodel", &f2);
  REQUIRE(b);
  replace_string(&b->param->snapshot_prefix, prefix);
  REQUIRE(solver_step(b, 3) == 0);
  record_loss(&f2, b->net);
  REQUIRE(solver_snapshot(b) == 0);
  solver_free(b);
  snprintf(state, sizeof state, "%s_iter_3.solverstate", prefix);
  /* no initial weights: the restore must bring (and copy up) all of them */
  Solver *c = golden_cuda_solver("golden/mini_train/solver.prototxt",
                                 "golden/mini_train/train.prototxt", NULL, &f2);
  REQUIRE(c);
  REQUIRE(solver_restore(c, state) == 0);
  CHECK(c->iter == 3 && c->current_step == 1);
  f2.last_iter = -1;
  REQUIRE(solver_step(c, 3) == 0);
  record_loss(&f2, c->net);
  for (int it = 0; it < 6; it++)
    CHECK_MSG(!memcmp(&f1.loss[it][0], &f2.loss[it][0], sizeof(float)), "loss %d: %.9g vs %.9g",
              it, f1.loss[it][0], f2.loss[it][0]);
  REQUIRE(solver_sync_to_host(a) == 0 && solver_sync_to_host(c) == 0);
  CHECK(a->net->param_count == c->net->param_count &&
        !memcmp(a->net->param_data, c->net->param_data, a->net->param_count * sizeof(float)));
  CHECK(!memcmp(a->history[0], c->history[0], a->net->param_count * sizeof(float)));
  CHECK(a->iter == c->iter && a->current_step == c->current_step);
  /* and the resumed run is Caffe's run */
  double want[16];
  CHECK(read_train_log("golden/mini_train/train_log.txt", want, NULL, 16) == 6);
  for (int it = 0; it < 6; it++)
    CHECK_MSG(fabs(f2.loss[it][0] - want[it]) <= 1e-4, "loss %d: %.8f, Caffe %.8f", it,
              f2.loss[it][0], want[it]);
  solver_free(a);
  solver_free(c);
  feed_free(&f1);
  feed_free(&f2);
  remove_tmp();
}

/* ---- 3. the update rules: the CPU solver and the CUDA solver, same gradients --------------- */

/* ip weights (2,3) lr 1 decay 1, bias (2) lr 2 decay 0 */
#define TINY_NET                                                                           \
  "train_net_param { name: 'tiny' "                                                        \
  "  layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } } "  \
  "  layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' "                       \
  "    param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } "             \
  "    inner_product_param { num_output: 2 } } } "

static double grad_at(int t, int k) { return sin(1.3 * k + 0.7 * t) * (k < 6 ? 1.0 : 0.3); }
static double init_w(int k) { return cos(0.9 * k) * 0.5; }

/* `iters` updates with the diffs set to grad_at(t) * iter_size on the host
 * (and copied up on the device). */
static int run_tiny(Solver *s, int iters, int iter_size) {
  Net *net = s->net;
  if (net->param_count != 8) return -1;
  for (int k = 0; k < 8; k++) net->param_data[k] = (float)init_w(k);
  if (net->cuda && net_params_to_device(net)) return -1;
  for (int t = 0; t < iters; t++) {
    for (int k = 0; k < 8; k++) net->param_diff[k] = (float)(grad_at(t, k) * iter_size);
    if (net->cuda && net_param_diffs_to_device(net)) return -1;
    if (solver_apply_update(s)) return -1;
    s->iter++;
  }
  return solver_sync_to_host(s);
}

static void test_cuda_update_rules(void) {
  static const struct {
    const char *extra;
    bool on_device;
    int iter_size;
  } cases[] = {
      {"type: 'SGD' lr_policy: 'step' gamma: 0.1 stepsize: 2 momentum: 0.9 weight_decay: 0.01", true, 1},
      {"type: 'SGD' lr_policy: 'fixed' momentum: 0.9 weight_decay: 0.01 regularization_type: 'L1'", true, 1},
      {"type: 'SGD' lr_policy: 'fixed' momentum: 0.9 weight_decay: 0.01 iter_size: 3", true, 3},
      {"type: 'Nesterov' lr_policy: 'step' gamma: 0.1 stepsize: 3 momentum: 0.9 weight_decay: 0.001", true, 1},
      {"type: 'Nesterov' lr_policy: 'fixed' momentum: 0.95 weight_decay: 0.001 iter_size: 2 regularization_type: 'L1'", true, 2},
      {"type: 'AdaGrad' lr_policy: 'fixed' weight_decay: 0.001 delta: 1e-6", false, 1},
      {"type: 'RMSProp' lr_policy: 'fixed' weight_decay: 0.001 delta: 1e-6 rms_decay: 0.98", false, 1},
      {"type: 'AdaDelta' lr_policy: 'fixed' momentum: 0.95 weight_decay: 0.001 delta: 1e-6", false, 1},
      {"type: 'Adam' lr_policy: 'fixed' momentum: 0.9 momentum2: 0.999 weight_decay: 0.001 delta: 1e-6", false, 1},
      {"type: 'SGD' lr_policy: 'fixed' momentum: 0.5 weight_decay: 0.1 clip_gradients: 0.5", false, 1},
  };
  for (size_t c = 0; c < MOKA_ARRAY_LEN(cases); c++) {
    char text[2048];
    snprintf(text, sizeof text, TINY_NET "base_lr: 0.05 %s", cases[c].extra);
    Caffe__SolverParameter *p = parse_solver(text);
    REQUIRE(p);
    SolverOptions o = {0};
    moka_set_log_level(1);
    Solver *cpu = make_solver(p, MOKA_BACKEND_CPU, o);
    /* the CUDA solver's set-up log names the update path */
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    FILE *old = mem ? moka_set_log_stream(mem) : NULL;
    moka_set_log_level(0);
    Solver *gpu = make_solver(p, MOKA_BACKEND_CUDA, o);
    moka_set_log_level(1);
    if (mem) {
      moka_set_log_stream(old);
      fclose(mem);
    }
    caffe__solver_parameter__free_unpacked(p, NULL);
    const char *log = buf ? buf : "";
    if (!cpu || !gpu) {
      solver_free(cpu);
      solver_free(gpu);
      free(buf);
      REQUIRE(cpu && gpu);
    }
    CHECK_MSG(gpu->update_on_device == cases[c].on_device, "case %zu (%s): update_on_device %d",
              c, cases[c].extra, gpu->update_on_device);
    CHECK_MSG(strstr(log, cases[c].on_device ? "update on CUDA device 0" : "ON THE HOST") != NULL,
              "case %zu: the set-up log does not name the update path", c);
    free(buf);
    CHECK(run_tiny(cpu, 6, cases[c].iter_size) == 0);
    CHECK(run_tiny(gpu, 6, cases[c].iter_size) == 0);
    const size_t bytes = 8 * sizeof(float);
    CHECK_MSG(!memcmp(cpu->net->param_data, gpu->net->param_data, bytes),
              "case %zu (%s): parameters differ from the CPU solver's (w[0] %.9g vs %.9g)", c,
              cases[c].extra, cpu->net->param_data[0], gpu->net->param_data[0]);
    for (int h = 0; h < cpu->n_history_slots; h++)
      CHECK_MSG(!memcmp(cpu->history[h], gpu->history[h], bytes),
                "case %zu (%s): history %d differs from the CPU solver's (%.9g vs %.9g)", c,
                cases[c].extra, h, cpu->history[h][0], gpu->history[h][0]);
    /* the update moved something */
    CHECK(gpu->net->param_data[0] != (float)init_w(0));
    solver_free(cpu);
    solver_free(gpu);
  }
}

/* ---- 4. test nets on the device -------------------------------------------------------------- */

/* The numbers after "<key>" on every line that has it, in order. */
static int numbers_after(const char *log, const char *key, double *out, int max) {
  int n = 0;
  for (const char *p = log; (p = strstr(p, key)) && n < max; p += strlen(key))
    out[n++] = strtod(p + strlen(key), NULL);
  return n;
}

static char *solve_logged(const Caffe__SolverParameter *p, Backend be, Solver **out) {
  char *buf = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&buf, &len);
  if (!mem) return NULL;
  FILE *old = moka_set_log_stream(mem);
  moka_set_log_level(0);
  SolverOptions o = {0};
  Solver *s = make_solver(p, be, o);
  int rc = s ? solver_solve(s, NULL) : -1;
  if (rc) fprintf(stderr, "    %s\n", moka_error());
  moka_set_log_level(1);
  moka_set_log_stream(old);
  fclose(mem);
  *out = s;
  if (rc) {
    free(buf);
    return NULL;
  }
  return buf;
}

static void test_cuda_test_nets(void) {
  make_tmp();
  REQUIRE(g_tmp[0]);
  char text[4096];
  snprintf(text, sizeof text,
           "net_param { name: 'dd' "
           "  layer { name: 'd' type: 'DummyData' top: 'data' top: 'label' dummy_data_param { "
           "    shape { dim: 4 dim: 5 } shape { dim: 4 } "
           "    data_filler { type: 'uniform' min: -1 max: 1 } "
           "    data_filler { type: 'constant' value: 1 } } } "
           "  layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' "
           "    inner_product_param { num_output: 3 weight_filler { type: 'uniform' min: -0.5 max: 0.5 } } } "
           "  layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' } "
           "  layer { name: 'acc' type: 'Accuracy' bottom: 'ip' bottom: 'label' top: 'accuracy' "
           "    include { phase: TEST } } } "
           "base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9 max_iter: 4 display: 1 "
           "test_iter: 2 test_interval: 2 random_seed: 5 snapshot: 0 snapshot_prefix: '%s/dd' "
           "snapshot_after_train: false",
           g_tmp);
  Caffe__SolverParameter *p = parse_solver(text);
  REQUIRE(p);
  Solver *cs = NULL, *gs = NULL;
  char *clog = solve_logged(p, MOKA_BACKEND_CPU, &cs);
  char *glog = solve_logged(p, MOKA_BACKEND_CUDA, &gs);
  caffe__solver_parameter__free_unpacked(p, NULL);
  if (!clog || !glog || !cs || !gs) {
    free(clog), free(glog), solver_free(cs), solver_free(gs);
    REQUIRE(false);
  }
  static const char *keys[] = {"Test net output #0: accuracy = ", "Test net output #1: loss = ",
                               "Train net output #0: loss = ", "] Iteration 4, loss = "};
  const int want_n[] = {3, 3, 4, 1};
  for (size_t k = 0; k < MOKA_ARRAY_LEN(keys); k++) {
    double a[16], b[16];
    const int na = numbers_after(clog, keys[k], a, 16), nb = numbers_after(glog, keys[k], b, 16);
    CHECK_MSG(na == want_n[k] && nb == na, "'%s': %d lines on the CPU, %d on CUDA (want %d)",
              keys[k], na, nb, want_n[k]);
    for (int i = 0; i < na && i < nb; i++)
      CHECK_MSG(fabs(a[i] - b[i]) <= 1e-4 * fmax(1.0, fabs(a[i])), "'%s' #%d: CPU %.8g, CUDA %.8g",
                keys[k], i, a[i], b[i]);
  }
  /* the test net holds exactly the train net's parameters (the last test ran
   * after the last update) */
  Net *tn = gs->test_nets[0];
  CHECK(tn->cuda != NULL);
  REQUIRE(net_params_to_host(tn) == 0 && net_params_to_host(gs->net) == 0);
  const Layer *la = net_layer(gs->net, "ip"), *lb = net_layer(tn, "ip");
  REQUIRE(la && lb && la->n_params == 2 && lb->n_params == 2);
  for (int k = 0; k < 2; k++)
    CHECK_MSG(!memcmp(la->params[k]->data, lb->params[k]->data, la->params[k]->count * sizeof(float)),
              "param %d of 'ip' differs between the train and the test net", k);
  if (t_cur_failed) fprintf(stderr, "---- CPU log\n%s---- CUDA log\n%s", clog, glog);
  free(clog);
  free(glog);
  solver_free(cs);
  solver_free(gs);
  remove_tmp();
}

int main(void) {
  char err[512];
  if (moka_cuda_init(0, err, sizeof err)) {
    printf("SKIP: no CUDA device (%s)\n", err);
    return test_summary();
  }
  moka_set_log_level(1);
  RUN(test_cuda_update_rules);
  RUN(test_cuda_mini_train);
  RUN(test_cuda_mini_train_itersize2);
  RUN(test_cuda_mini_train_frozen_bn);
  RUN(test_cuda_resume_bit_identical);
  RUN(test_cuda_test_nets);
  return test_summary();
}
#endif
