/* test_solver.c — the solver against closed forms, on a tiny net:
 *   - learning-rate policies against their formulas;
 *   - SGD (momentum, L2/L1 weight decay, lr_mult/decay_mult, iter_size
 *     normalisation, gradient clipping) and the adaptive solvers against
 *     double-precision replays of their update rules;
 *   - solver parameter handling and its errors; test nets, the log lines,
 *     Solve and the actions; the random stream shared with the test nets.
 * The solver against real Caffe training runs, snapshots and resuming:
 * test_solver_golden.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net.h"
#include "proto_io.h"
#include "prototxt.h"
#include "solver.h"
#include "solvertest.h"
#include "testlib.h"
#include "util.h"

/* ---- learning-rate policies ---------------------------------------------------------- */

static double lr_closed(const char *pol, int it) {
  const double base = 0.01, gamma = 0.1f, power = 0.75f;
  if (!strcmp(pol, "fixed")) return base;
  if (!strcmp(pol, "step")) return base * pow(gamma, floor(it / 3));
  if (!strcmp(pol, "exp")) return base * pow((double)0.99f, it);
  if (!strcmp(pol, "inv")) return base * pow(1 + 0.0001f * it, -power);
  if (!strcmp(pol, "multistep")) return base * pow(gamma, (it >= 2) + (it >= 5) + (it >= 9));
  if (!strcmp(pol, "poly")) return base * pow(1.0 - it / 20.0, 2.0);
  if (!strcmp(pol, "sigmoid")) return base / (1 + exp(-(double)0.5f * (it - 3)));
  return NAN;
}

static void test_lr_policies(void) {
  static const char *pols[] = {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"};
  for (size_t k = 0; k < MOKA_ARRAY_LEN(pols); k++) {
    char text[2048];
    const char *extra = "";
    if (!strcmp(pols[k], "step")) extra = "gamma: 0.1 stepsize: 3";
    if (!strcmp(pols[k], "exp")) extra = "gamma: 0.99";
    if (!strcmp(pols[k], "inv")) extra = "gamma: 0.0001 power: 0.75";
    if (!strcmp(pols[k], "multistep")) extra = "gamma: 0.1 stepvalue: 2 stepvalue: 5 stepvalue: 9";
    if (!strcmp(pols[k], "poly")) extra = "power: 2 max_iter: 20";
    if (!strcmp(pols[k], "sigmoid")) extra = "gamma: 0.5 stepsize: 3";
    snprintf(text, sizeof text, TINY_NET "base_lr: 0.01 lr_policy: '%s' %s", pols[k], extra);
    Solver *s = make_solver(text);
    REQUIRE(s);
    for (int it = 0; it < 20; it++) {
      s->iter = it;
      double got = solver_learning_rate(s);
      double want = lr_closed(pols[k], it);
      CHECK_MSG(fabs(got - want) <= 1e-6 * want, "%s iter %d: got %.9g want %.9g",
                pols[k], it, got, want);
    }
    if (!strcmp(pols[k], "multistep")) CHECK(s->current_step == 3);
    if (!strcmp(pols[k], "step")) CHECK(s->current_step == 19 / 3);
    solver_free(s);
  }
  /* errors found when the solver is built */
  moka_set_log_level(2);
  Caffe__SolverParameter *p = parse_solver(TINY_NET "base_lr: 0.01 lr_policy: 'stepp'");
  REQUIRE(p);
  SolverOptions o = {.quiet_nets = true};
  Solver *s = solver_create(p, &o, "bad.prototxt");
  CHECK(!s && strstr(moka_error(), "Unknown learning rate policy: 'stepp'"));
  replace_string(&p->lr_policy, "step");
  s = solver_create(p, &o, "bad.prototxt");
  CHECK(!s && strstr(moka_error(), "stepsize"));
  caffe__solver_parameter__free_unpacked(p, NULL);
}

/* ---- the update rules on the tiny net ------------------------------------------------ */

/* Gradient of iteration t, element k (8 values: 6 weights then 2 biases). */
static double grad_at(int t, int k) { return sin(1.3 * k + 0.7 * t) * (k < 6 ? 1.0 : 0.3); }
static double init_w(int k) { return cos(0.9 * k) * 0.5; }

typedef struct Replay {
  double w[8], h[8], h2[8];
} Replay;

static const double kLrMult[8] = {1, 1, 1, 1, 1, 1, 2, 2}, kDecayMult[8] = {1, 1, 1, 1, 1, 1, 0, 0};

/* Run `iters` updates on the tiny net, setting the diffs to grad_at(t) *
 * iter_size (as if iter_size micro-batches each gave grad_at). */
static int run_tiny(Solver *s, int iters, int iter_size) {
  Net *net = s->net;
  if (net->param_count != 8) return 0;
  for (int k = 0; k < 8; k++) net->param_data[k] = (float)init_w(k);
  for (int t = 0; t < iters; t++) {
    for (int k = 0; k < 8; k++) net->param_diff[k] = (float)(grad_at(t, k) * iter_size);
    if (solver_apply_update(s)) return 0;
    s->iter++;
  }
  return 1;
}

static void check_replay(Solver *s, const Replay *r, double rtol, const char *what) {
  double maxw = 0, maxh = 0;
  for (int k = 0; k < 8; k++) maxw = fmax(maxw, fabs(r->w[k])), maxh = fmax(maxh, fabs(r->h[k]));
  for (int k = 0; k < 8; k++) {
    CHECK_MSG(fabs(s->net->param_data[k] - r->w[k]) <= rtol * maxw, "%s: w[%d] = %.9g, want %.9g",
              what, k, s->net->param_data[k], r->w[k]);
    CHECK_MSG(fabs(s->history[0][k] - r->h[k]) <= rtol * maxh, "%s: history[%d] = %.9g, want %.9g",
              what, k, s->history[0][k], r->h[k]);
  }
}

static void test_sgd_closed_form(void) {
  /* 1. no weight decay, constant gradient G, momentum m, fixed rate:
   *    v_t = lr*G*(1-m^t)/(1-m),  w_t = w_0 - lr*G*sum_{k=1..t} (1-m^k)/(1-m) */
  Solver *s = make_solver(TINY_NET "base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9");
  REQUIRE(s);
  const double m = 0.9f, lr = 0.1f;
  for (int k = 0; k < 8; k++) s->net->param_data[k] = (float)init_w(k);
  for (int t = 1; t <= 5; t++) {
    for (int k = 0; k < 8; k++) s->net->param_diff[k] = (float)grad_at(0, k);
    REQUIRE(solver_apply_update(s) == 0);
    s->iter++;
    for (int k = 0; k < 8; k++) {
      double G = (float)grad_at(0, k), rate = lr * kLrMult[k];
      double v = rate * G * (1 - pow(m, t)) / (1 - m), sum = 0;
      for (int q = 1; q <= t; q++) sum += (1 - pow(m, q)) / (1 - m);
      double w = (float)init_w(k) - rate * G * sum;
      CHECK_MSG(fabs(s->history[0][k] - v) <= 1e-6 * fabs(v) + 1e-9, "t %d v[%d] %.9g want %.9g", t,
                k, s->history[0][k], v);
      CHECK_MSG(fabs(s->net->param_data[k] - w) <= 1e-6, "t %d w[%d] %.9g want %.9g", t, k,
                s->net->param_data[k], w);
    }
  }
  solver_free(s);

  /* 2. momentum + L2 decay + lr_mult/decay_mult + a rate drop (step policy) +
   *    iter_size 3: g = diff/3; g += wd*decay_mult*w; v = m*v + lr*lr_mult*g; w -= v */
  static const char *regs[] = {"L2", "L1"};
  for (int rk = 0; rk < 2; rk++) {
    char text[2048];
    snprintf(text, sizeof text,
             TINY_NET "base_lr: 0.05 lr_policy: 'step' gamma: 0.1 stepsize: 2 momentum: 0.9 "
                      "weight_decay: 0.01 regularization_type: '%s' iter_size: 3",
             regs[rk]);
    s = make_solver(text);
    REQUIRE(s);
    REQUIRE(run_tiny(s, 5, 3));
    Replay r = {{0}};
    for (int k = 0; k < 8; k++) r.w[k] = (float)init_w(k);
    for (int t = 0; t < 5; t++) {
      double rate = 0.05 * pow(0.1, t / 2);
      for (int k = 0; k < 8; k++) {
        double g = (float)(grad_at(t, k) * 3) / 3.0;
        double reg = rk == 0 ? r.w[k] : (r.w[k] > 0) - (r.w[k] < 0);
        g += 0.01 * kDecayMult[k] * reg;
        r.h[k] = 0.9 * r.h[k] + rate * kLrMult[k] * g;
        r.w[k] -= r.h[k];
      }
    }
    check_replay(s, &r, 2e-6, regs[rk]);
    solver_free(s);
  }

  /* 3. clipping: the L2 norm over all 8 diffs is scaled down to 0.5 first,
   *    before normalisation and decay */
  s = make_solver(TINY_NET "base_lr: 0.1 lr_policy: 'fixed' momentum: 0.5 weight_decay: 0.1 "
                           "clip_gradients: 0.5");
  REQUIRE(s);
  moka_set_log_level(1);
  REQUIRE(run_tiny(s, 3, 1));
  Replay r = {{0}};
  for (int k = 0; k < 8; k++) r.w[k] = (float)init_w(k);
  for (int t = 0; t < 3; t++) {
    double n2 = 0;
    for (int k = 0; k < 8; k++) n2 += grad_at(t, k) * grad_at(t, k);
    double sc = sqrt(n2) > 0.5 ? 0.5 / sqrt(n2) : 1;
    CHECK(sqrt(n2) > 0.5); /* the test must exercise the clip */
    for (int k = 0; k < 8; k++) {
      double g = grad_at(t, k) * sc + 0.1 * kDecayMult[k] * r.w[k];
      r.h[k] = 0.5 * r.h[k] + 0.1 * kLrMult[k] * g;
      r.w[k] -= r.h[k];
    }
  }
  check_replay(s, &r, 2e-6, "clip");
  solver_free(s);
}

/* The adaptive solvers against double replays of Caffe's formulas. */
static void test_adaptive_solvers(void) {
  static const char *types[] = {"Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"};
  for (int ti = 0; ti < 5; ti++) {
    char text[2048];
    const char *mom = ti == 1 || ti == 2 ? "" : ti == 3 ? "momentum: 0.95" : "momentum: 0.9";
    snprintf(text, sizeof text,
             TINY_NET "type: '%s' base_lr: 0.01 lr_policy: 'fixed' %s weight_decay: 0.001 "
                      "delta: 1e-6 rms_decay: 0.98 momentum2: 0.999",
             types[ti], mom);
    Solver *s = make_solver(text);
    REQUIRE(s);
    CHECK(s->n_history_slots == (ti >= 3 ? 2 : 1));
    REQUIRE(run_tiny(s, 6, 1));
    Replay r = {{0}};
    for (int k = 0; k < 8; k++) r.w[k] = (float)init_w(k);
    const double delta = 1e-6f;
    for (int t = 0; t < 6; t++)
      for (int k = 0; k < 8; k++) {
        double lr = 0.01 * kLrMult[k];
        double g = (float)grad_at(t, k) + 0.001 * kDecayMult[k] * r.w[k], step = 0;
        switch (ti) {
          case 0: { /* Nesterov: w -= (1+m) v_t - m v_{t-1} */
            double old = r.h[k];
            r.h[k] = (double)0.9f * r.h[k] + lr * g;
            step = (double)1.9f * r.h[k] - (double)0.9f * old;
            break;
          }
          case 1: /* AdaGrad */
            r.h[k] += g * g;
            step = lr * g / (sqrt(r.h[k]) + delta);
            break;
          case 2: /* RMSProp */
            r.h[k] = (double)0.98f * r.h[k] + (double)(1.0f - 0.98f) * g * g;
            step = lr * g / (sqrt(r.h[k]) + delta);
            break;
          case 3: { /* AdaDelta */
            r.h[k] = (double)0.95f * r.h[k] + (double)(1.0f - 0.95f) * g * g;
            double d = g * sqrt((r.h2[k] + delta) / (r.h[k] + delta));
            r.h2[k] = (double)0.95f * r.h2[k] + (double)(1.0f - 0.95f) * d * d;
            step = lr * d;
            break;
          }
          case 4: { /* Adam, Caffe's form */
            /* the constants as Caffe has them: floats, 1 - beta in float */
            r.h[k] = (double)0.9f * r.h[k] + (double)(1.0f - 0.9f) * g;
            r.h2[k] = (double)0.999f * r.h2[k] + (double)(1.0f - 0.999f) * g * g;
            double corr = sqrt(1 - pow((double)0.999f, t + 1)) / (1 - pow((double)0.9f, t + 1));
            step = lr * corr * r.h[k] / (sqrt(r.h2[k]) + delta);
            break;
          }
        }
        r.w[k] -= step;
      }
    check_replay(s, &r, 1e-5, types[ti]);
    if (ti >= 3) {
      double maxh = 0;
      for (int k = 0; k < 8; k++) maxh = fmax(maxh, fabs(r.h2[k]));
      for (int k = 0; k < 8; k++)
        CHECK_MSG(fabs(s->history[1][k] - r.h2[k]) <= 1e-5 * maxh, "%s history2[%d] %.9g want %.9g",
                  types[ti], k, s->history[1][k], r.h2[k]);
    }
    solver_free(s);
  }
}

static void test_solver_param_handling(void) {
  moka_set_log_level(2);
  /* the deprecated enum */
  Caffe__SolverParameter *p = parse_solver(TINY_NET "base_lr: 0.1 lr_policy: 'fixed' solver_type: ADAM");
  REQUIRE(p);
  CHECK(solver_param_upgrade(p, "t") == 0 && p->type && !strcmp(p->type, "Adam") && !p->has_solver_type);
  caffe__solver_parameter__free_unpacked(p, NULL);
  p = parse_solver(TINY_NET "base_lr: 0.1 lr_policy: 'fixed' solver_type: NESTEROV type: 'SGD'");
  REQUIRE(p);
  CHECK(solver_param_upgrade(p, "t") == -1 && strstr(moka_error(), "cannot be both specified"));
  caffe__solver_parameter__free_unpacked(p, NULL);
  /* unknown type, momentum with AdaGrad, no net, two nets, test_iter without test_interval */
  struct {
    const char *text, *msg;
  } bad[] = {
      {TINY_NET "lr_policy: 'fixed' type: 'Sgd'", "Unknown solver type: 'Sgd'"},
      {TINY_NET "lr_policy: 'fixed' type: 'AdaGrad' momentum: 0.9", "Momentum cannot be used with AdaGrad"},
      {"lr_policy: 'fixed'", "must specify a train net"},
      {TINY_NET "net: 'x.prototxt' lr_policy: 'fixed'", "must not contain more than one"},
      {TINY_NET "lr_policy: 'fixed' regularization_type: 'L3'", "Unknown regularization type"},
      {TINY_NET "lr_policy: 'fixed' snapshot_format: HDF5", "HDF5 is not supported"},
      {TINY_NET "lr_policy: 'fixed' test_net_param { name: 't' } test_iter: 1", "test_interval"},
      {TINY_NET "lr_policy: 'fixed' test_net_param { name: 't' }", "test_iter must be specified"},
      {"net: '/nonexistent/train.prototxt' lr_policy: 'fixed'", "/nonexistent/train.prototxt"},
  };
  for (size_t i = 0; i < MOKA_ARRAY_LEN(bad); i++) {
    p = parse_solver(bad[i].text);
    REQUIRE(p);
    SolverOptions o = {.quiet_nets = true};
    Solver *s = solver_create(p, &o, "bad.prototxt");
    CHECK_MSG(!s && strstr(moka_error(), bad[i].msg), "case %zu: want '%s', got '%s'", i, bad[i].msg,
              moka_error());
    solver_free(s);
    caffe__solver_parameter__free_unpacked(p, NULL);
  }
  /* snapshot_prefix defaults to the solver file name without extension */
  char dir[] = "/tmp/moka_solver_XXXXXX";
  REQUIRE(mkdtemp(dir));
  char path[256], sub[256];
  snprintf(path, sizeof path, "%s/my.solver.prototxt", dir);
  FILE *f = fopen(path, "w");
  REQUIRE(f);
  fputs("base_lr: 0.1\n", f);
  fclose(f);
  REQUIRE(solver_param_read(path, &p) == 0);
  char want[300];
  snprintf(want, sizeof want, "%s/my.solver", dir);
  CHECK(p->snapshot_prefix && !strcmp(p->snapshot_prefix, want));
  caffe__solver_parameter__free_unpacked(p, NULL);
  snprintf(sub, sizeof sub, "%s/snaps", dir);
  mkdir(sub, 0700);
  f = fopen(path, "w");
  REQUIRE(f);
  fprintf(f, "snapshot_prefix: '%s'\n", sub);
  fclose(f);
  REQUIRE(solver_param_read(path, &p) == 0);
  snprintf(want, sizeof want, "%s/snaps/my.solver", dir);
  CHECK(p->snapshot_prefix && !strcmp(p->snapshot_prefix, want));
  caffe__solver_parameter__free_unpacked(p, NULL);
  unlink(path);
  rmdir(sub);
  rmdir(dir);
}

/* ---- the loop: test nets, display, smoothing, solve, actions ------------------------- */

static char *g_log_buf;
static size_t g_log_len;

static int count_lines(const char *log, const char *needle) {
  int n = 0;
  for (const char *p = log; (p = strstr(p, needle)); p++) n++;
  return n;
}

static int g_actions;
static SolverAction action_stop_at_3(void *user) {
  Solver **s = user;
  g_actions++;
  return (*s)->iter == 3 ? SOLVER_ACTION_STOP : SOLVER_ACTION_NONE;
}

static void test_solve_log_and_test_nets(void) {
  char dir[] = "/tmp/moka_solve_XXXXXX";
  REQUIRE(mkdtemp(dir));
  char text[4096];
  /* DummyData gives constant data; the test net adds an Accuracy output. */
  snprintf(text, sizeof text,
           "net_param { name: 'dd' "
           "  layer { name: 'd' type: 'DummyData' top: 'data' top: 'label' dummy_data_param { "
           "    shape { dim: 4 dim: 5 } shape { dim: 4 } "
           "    data_filler { type: 'constant' value: 0.5 } data_filler { type: 'constant' value: 1 } } } "
           "  layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' "
           "    inner_product_param { num_output: 3 weight_filler { type: 'constant' value: 0.1 } } } "
           "  layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' } "
           "  layer { name: 'acc' type: 'Accuracy' bottom: 'ip' bottom: 'label' top: 'accuracy' "
           "    include { phase: TEST } } } "
           "base_lr: 0.1 lr_policy: 'fixed' momentum: 0.9 max_iter: 5 display: 2 average_loss: 3 "
           "test_iter: 2 test_interval: 2 snapshot: 4 snapshot_prefix: '%s/dd' solver_mode: CPU",
           dir);
  Caffe__SolverParameter *p = parse_solver(text);
  REQUIRE(p);
  SolverOptions o = {.quiet_nets = true};
  Solver *s = solver_create(p, &o, "dd");
  REQUIRE(s);
  CHECK(s->n_test_nets == 1);
  FILE *mem = open_memstream(&g_log_buf, &g_log_len);
  REQUIRE(mem);
  moka_set_log_level(0);
  FILE *old = moka_set_log_stream(mem);
  int rc = solver_solve(s, NULL);
  moka_set_log_stream(old);
  moka_set_log_level(1);
  fclose(mem);
  CHECK(rc == 0);
  const char *log = g_log_buf ? g_log_buf : "";
  /* tests at 0, 2, 4 and after the last iteration (5 % 2 != 0: no) */
  CHECK(count_lines(log, "Testing net (#0)") == 3);
  CHECK(count_lines(log, "] Iteration 0, Testing net (#0)") == 1);
  CHECK(count_lines(log, "]     Test net output #0: accuracy = ") == 3);
  CHECK(count_lines(log, "]     Test net output #1: loss = ") == 3);
  CHECK(count_lines(log, " loss)") >= 3 + 3);
  CHECK(count_lines(log, "] Iteration 0 (") == 1 && count_lines(log, "] Iteration 4 (") == 1 &&
        count_lines(log, "] Iteration 1 (") == 0);
  CHECK(count_lines(log, "]     Train net output #0: loss = ") == 3);
  CHECK(count_lines(log, "] Iteration 2, lr = 0.1") == 1);
  CHECK(count_lines(log, "Snapshotting to binary proto file ") == 2); /* iter 4 and the final 5 */
  CHECK(count_lines(log, "Snapshotting solver state to binary proto file ") == 2);
  CHECK(count_lines(log, "] Optimization Done.") == 1);
  CHECK(count_lines(log, "] Solving dd") == 1 && count_lines(log, "] Learning Rate Policy: fixed") == 1);
  if (t_cur_failed) fprintf(stderr, "%s", log);
  char f4[256], f5[256];
  snprintf(f4, sizeof f4, "%s/dd_iter_4.caffemodel", dir);
  snprintf(f5, sizeof f5, "%s/dd_iter_5.solverstate", dir);
  CHECK(access(f4, R_OK) == 0 && access(f5, R_OK) == 0);
  free(g_log_buf);
  g_log_buf = NULL;
  /* the smoothed loss: the mean of the last average_loss iteration losses */
  CHECK(s->n_losses == 3);
  float mean = (s->losses[0] + s->losses[1] + s->losses[2]) / 3;
  CHECK(fabsf(mean - s->smoothed_loss) <= 1e-5f * fabsf(mean));
  solver_free(s);

  /* a STOP request after iteration 3: snapshot (snapshot_after_train) and stop */
  Solver *s2 = NULL;
  SolverOptions o2 = {.quiet_nets = true, .action = action_stop_at_3, .user = &s2};
  p->max_iter = 100;
  s2 = solver_create(p, &o2, "dd");
  REQUIRE(s2);
  CHECK(solver_solve(s2, NULL) == 0);
  CHECK(s2->iter == 3 && s2->requested_early_exit);
  char f3[256];
  snprintf(f3, sizeof f3, "%s/dd_iter_3.solverstate", dir);
  CHECK(access(f3, R_OK) == 0);
  solver_free(s2);
  caffe__solver_parameter__free_unpacked(p, NULL);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
}

/* Caffe's one random stream: the train net's setup draws, then the test
 * net's, then training; the test net's layers draw from the same stream. */
static void test_test_nets_share_stream(void) {
  moka_set_log_level(2);
  Solver *s = make_solver(
      "net_param { name: 'r' "
      "  layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } } "
      "  layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' inner_product_param { "
      "    num_output: 5 weight_filler { type: 'uniform' min: -1 max: 1 } } } "
      "  layer { name: 'ip_t' type: 'InnerProduct' bottom: 'x' top: 'z' include { phase: TEST } "
      "    inner_product_param { num_output: 7 weight_filler { type: 'uniform' } } } } "
      "base_lr: 0.1 lr_policy: 'fixed' test_iter: 1 test_interval: 10 random_seed: 99");
  REQUIRE(s);
  REQUIRE(s->n_test_nets == 1);
  Rng r;
  rng_seed(&r, 99);
  for (int k = 0; k < 15 + 15 + 21; k++) (void)rng_u32(&r); /* train ip, test ip, test ip_t */
  CHECK(!memcmp(r.mt, s->net->rng.mt, sizeof r.mt) && r.idx == s->net->rng.idx);
  for (int i = 0; i < s->test_nets[0]->n_layers; i++) CHECK(s->test_nets[0]->layers[i]->rng == &s->net->rng);
  solver_free(s);
}

int main(void) {
  moka_set_log_level(1);
  RUN(test_lr_policies);
  RUN(test_sgd_closed_form);
  RUN(test_adaptive_solvers);
  RUN(test_solver_param_handling);
  RUN(test_solve_log_and_test_nets);
  RUN(test_test_nets_share_stream);
  return test_summary();
}
