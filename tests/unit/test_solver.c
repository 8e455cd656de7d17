/* test_solver.c — the solver against closed forms and against real Caffe
 * training runs (shared/golden/mini_train, mini_alexnet/train):
 *   - learning-rate policies against their formulas;
 *   - SGD (momentum, L2/L1 weight decay, lr_mult/decay_mult, iter_size
 *     normalisation, gradient clipping) and the adaptive solvers against
 *     double-precision replays of their update rules on a tiny net;
 *   - mini_train: per-iteration losses, parameters, BN statistics and the
 *     momentum history after 6 iterations; iter_size 2; frozen BatchNorm;
 *     one forward/backward (grad_iter0);
 *   - mini_alexnet: random_seed 1701, the ten Dropout masks, losses,
 *     parameters and history after 5 iterations; grad_iter0;
 *   - snapshot -> resume is bit-identical to an uninterrupted run; resuming
 *     from Caffe's own solverstate; the files moka writes;
 *   - solver parameter handling and its errors; test nets and the log lines.
 * Tolerances are the golden README's (section 5/6); the worst error seen per
 * kind of data is printed at the end. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net.h"
#include "proto_io.h"
#include "prototxt.h"
#include "solver.h"
#include "testlib.h"
#include "train_feed.h"
#include "util.h"

/* ---- worst errors, reported at the end ----------------------------------------------- */

typedef struct Worst {
  const char *what;
  double rtol;   /* the tolerance used */
  double ratio;  /* worst max|a-b| / max|b| seen (absolute for losses) */
} Worst;
static Worst g_worst[] = {
    {"losses (absolute)", 1e-4, 0},
    {"parameters after training (max|a-b|/max|b|)", 1e-4, 0},
    {"momentum history (max|a-b|/max|b|)", 1e-4, 0},
    {"BN running statistics (max|a-b|/max|b|)", 1e-4, 0},
    {"grad_iter0 diffs (max|a-b|/max|b|)", 1e-3, 0},
    {"grad_iter0 blobs (max|a-b|/max|b|)", 1e-4, 0},
    {"history of mini_train conv1 bias (noise; absolute)", 1e-7, 0},
};
enum { W_LOSS, W_PARAM, W_HIST, W_BN, W_DIFF, W_BLOB, W_NOISE };

static int cmp(int cat, const char *what, const float *a, const float *b, size_t n, double rtol,
               double abs_floor) {
  double maxb = 0, maxd = 0;
  for (size_t i = 0; i < n; i++) {
    maxb = fmax(maxb, fabs((double)b[i]));
    maxd = fmax(maxd, fabs((double)a[i] - (double)b[i]));
  }
  double r = cat == W_NOISE ? maxd : maxb > 0 ? maxd / maxb : 0;
  if (r > g_worst[cat].ratio) g_worst[cat].ratio = r;
  return compare_f32(what, a, b, n, rtol, abs_floor);
}

static int cmp_loss(const char *what, double got, double want) {
  double d = fabs(got - want);
  if (d > g_worst[W_LOSS].ratio) g_worst[W_LOSS].ratio = d;
  if (!(d <= 1e-4)) {
    fprintf(stderr, "    %s: got %.8f want %.8f\n", what, got, want);
    return 0;
  }
  return 1;
}

/* ---- helpers ------------------------------------------------------------------------- */

static Caffe__SolverParameter *parse_solver(const char *text) {
  ProtobufCMessage *m;
  if (prototxt_parse(&caffe__solver_parameter__descriptor, text, strlen(text), "test", &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  return (Caffe__SolverParameter *)m;
}

static Solver *make_solver(const char *text) {
  Caffe__SolverParameter *p = parse_solver(text);
  if (!p) return NULL;
  SolverOptions o = {.quiet_nets = true};
  Solver *s = solver_create(p, &o, "test");
  if (!s) fprintf(stderr, "    %s\n", moka_error());
  caffe__solver_parameter__free_unpacked(p, NULL);
  return s;
}

static void replace_string(char **field, const char *v) {
  free(*field);
  *field = strdup(v);
}

/* The tiny net of the update tests: ip weights (2,3) lr 1 decay 1, bias (2)
 * lr 2 decay 0. */
#define TINY_NET                                                                      \
  "train_net_param { name: 'tiny' "                                                   \
  "  layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } } " \
  "  layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' "                  \
  "    param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } "        \
  "    inner_product_param { num_output: 2 } } } "

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

/* ---- golden training runs ------------------------------------------------------------ */

/* Build a golden solver: the solver file, with `net` replaced by `net_file`
 * (both in shared/golden), and initial weights. */
static Solver *golden_solver(const char *solver_file, const char *net_file, const char *weights,
                             Feed *feed) {
  Caffe__SolverParameter *p;
  if (solver_param_read(shared_path(solver_file), &p)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  replace_string(&p->net, shared_path(net_file));
  SolverOptions o = {.quiet_nets = true, .before_forward = feed_before_forward, .user = feed};
  Solver *s = solver_create(p, &o, solver_file);
  caffe__solver_parameter__free_unpacked(p, NULL);
  if (!s) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  if (weights && net_copy_from_file(s->net, shared_path(weights))) {
    fprintf(stderr, "    %s\n", moka_error());
    solver_free(s);
    return NULL;
  }
  return s;
}

/* Every blob of every layer of a caffemodel against the net's parameters. */
static int compare_caffemodel(const Net *net, const char *file, bool bn_only) {
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__net_parameter__descriptor, file, &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return 0;
  }
  const Caffe__NetParameter *np = (const Caffe__NetParameter *)m;
  int ok = 1, compared = 0;
  for (size_t i = 0; i < np->n_layer; i++) {
    const Caffe__LayerParameter *lp = np->layer[i];
    if (!lp->n_blobs) continue;
    bool is_bn = lp->type && !strcmp(lp->type, "BatchNorm");
    if (bn_only && !is_bn) continue;
    Layer *l = net_layer(net, lp->name);
    if (!l || l->n_params != (int)lp->n_blobs) {
      fprintf(stderr, "    layer %s missing or different blob count\n", lp->name);
      ok = 0;
      continue;
    }
    for (size_t k = 0; k < lp->n_blobs; k++) {
      char what[256];
      snprintf(what, sizeof what, "%s.%zu", lp->name, k);
      if (lp->blobs[k]->n_data != l->params[k]->count) {
        fprintf(stderr, "    %s: size mismatch\n", what);
        ok = 0;
        continue;
      }
      ok &= cmp(is_bn ? W_BN : W_PARAM, what, l->params[k]->data, lp->blobs[k]->data,
                lp->blobs[k]->n_data, 1e-4, 0);
      compared++;
    }
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return ok && compared > 0;
}

/* The solver's history against a solverstate's; iter and current_step. */
static int compare_solverstate(const Solver *s, const char *file, int iter, int step) {
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__solver_state__descriptor, file, &m)) {
    fprintf(stderr, "    %s\n", moka_error());
    return 0;
  }
  const Caffe__SolverState *st = (const Caffe__SolverState *)m;
  int ok = st->iter == iter && st->current_step == step &&
           (int)st->n_history == s->net->n_params;
  if (!ok)
    fprintf(stderr, "    %s: iter %d step %d history %zu (want %d %d %d)\n", file, st->iter,
            st->current_step, st->n_history, iter, step, s->net->n_params);
  size_t off = 0;
  for (int i = 0; ok && i < s->net->n_params; i++) {
    size_t n = s->net->params[i]->count;
    char what[256];
    snprintf(what, sizeof what, "history %d (%s)", i, s->net->layers[s->net->param_layer[i]]->name);
    if (st->history[i]->n_data != n) {
      ok = 0;
      break;
    }
    /* The conv1 bias gradient of mini_train is rounding noise (golden README:
     * compare it with an absolute 1e-6 only); its history is lr * that noise
     * summed under momentum: absolute 1e-6 * base_lr / (1 - momentum). */
    const Layer *l = s->net->layers[s->net->param_layer[i]];
    double floor = 0;
    if (!strcmp(l->name, "conv1") && i == 1 && s->net->n_params == 75)
      floor = 1e-6 * s->param->base_lr / (1 - s->param->momentum);
    ok &= cmp(floor > 0 ? W_NOISE : W_HIST, what, s->history[0] + off, st->history[i]->data, n,
              1e-4, floor);
    off += n;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return ok;
}

static void check_losses(const Feed *f, const char *log, int n_iter, int iter_size) {
  double want[16], micro[16][2];
  int n = read_train_log(log, want, micro, 16);
  CHECK_MSG(n == n_iter, "%s: %d iterations in the log", log, n);
  for (int it = 0; it < n && it < n_iter; it++) {
    double mean = 0;
    for (int m = 0; m < iter_size; m++) mean += f->loss[it][m];
    mean /= iter_size;
    char what[64];
    snprintf(what, sizeof what, "loss at iteration %d", it);
    CHECK(cmp_loss(what, mean, want[it]));
    if (iter_size == 2)
      for (int m = 0; m < 2; m++) {
        snprintf(what, sizeof what, "micro-batch loss %d.%d", it, m);
        CHECK(cmp_loss(what, f->loss[it][m], micro[it][m]));
      }
  }
}

static void test_mini_train(void) {
  moka_set_log_level(1);
  Feed f;
  REQUIRE(feed_load(&f, "golden/mini_train", 6));
  Solver *s = golden_solver("golden/mini_train/solver.prototxt", "golden/mini_train/train.prototxt",
                            "golden/mini_train/init.caffemodel", &f);
  if (!s) feed_free(&f);
  REQUIRE(s);
  CHECK(s->kind == SOLVER_SGD && s->n_test_nets == 0 && s->net->n_params == 75);
  CHECK(solver_step(s, 6) == 0);
  record_loss(&f, s->net);
  CHECK(s->iter == 6 && s->current_step == 2);
  check_losses(&f, "golden/mini_train/train_log.txt", 6, 1);
  CHECK(compare_caffemodel(s->net, shared_path("golden/mini_train/snapshots/mini_iter_6.caffemodel"), false));
  CHECK(compare_solverstate(s, shared_path("golden/mini_train/snapshots/mini_iter_6.solverstate"), 6, 2));
  /* BN statistics vs final_bn/ */
  int nbn = 0;
  for (int i = 0; i < s->net->n_layers; i++) {
    Layer *l = s->net->layers[i];
    if (strcmp(l->type->name, "BatchNorm")) continue;
    for (int k = 0; k < 3; k++) {
      char p[256];
      snprintf(p, sizeof p, "golden/mini_train/final_bn/%s.%d.f32", l->name, k);
      size_t n;
      float *want = read_f32(shared_path(p), &n);
      CHECK(want && n == l->params[k]->count);
      if (want && n == l->params[k]->count) CHECK(cmp(W_BN, p, l->params[k]->data, want, n, 1e-4, 0));
      free(want);
      nbn++;
    }
  }
  CHECK(nbn == 12 * 3);
  solver_free(s);
  feed_free(&f);
}

static void test_mini_train_itersize2(void) {
  moka_set_log_level(1);
  Feed f;
  REQUIRE(feed_load(&f, "golden/mini_train", 6));
  /* itersize2/train.prototxt feeds with a Python layer; the Input-layer net
   * fed the same sequence is equivalent (golden README section 2). */
  Solver *s = golden_solver("golden/mini_train/itersize2/solver.prototxt",
                            "golden/mini_train/train.prototxt", "golden/mini_train/init.caffemodel", &f);
  if (!s) feed_free(&f);
  REQUIRE(s);
  CHECK(s->param->iter_size == 2);
  CHECK(solver_step(s, 6) == 0);
  record_loss(&f, s->net);
  check_losses(&f, "golden/mini_train/itersize2/train_log.txt", 6, 2);
  CHECK(compare_caffemodel(s->net, shared_path("golden/mini_train/itersize2/snapshots/mini_is2_iter_6.caffemodel"), false));
  CHECK(compare_solverstate(s, shared_path("golden/mini_train/itersize2/snapshots/mini_is2_iter_6.solverstate"), 6, 2));
  solver_free(s);
  feed_free(&f);
}

static void test_mini_train_frozen_bn(void) {
  moka_set_log_level(1);
  Feed f;
  REQUIRE(feed_load(&f, "golden/mini_train", 6));
  Solver *s = golden_solver("golden/mini_train/frozen_bn/solver.prototxt",
                            "golden/mini_train/frozen_bn/train.prototxt",
                            "golden/mini_train/init.caffemodel", &f);
  if (!s) feed_free(&f);
  REQUIRE(s);
  CHECK(solver_step(s, 6) == 0);
  record_loss(&f, s->net);
  check_losses(&f, "golden/mini_train/frozen_bn/train_log.txt", 6, 1);
  CHECK(compare_caffemodel(s->net, shared_path("golden/mini_train/frozen_bn/snapshots/mini_frozen_iter_6.caffemodel"), false));
  CHECK(compare_solverstate(s, shared_path("golden/mini_train/frozen_bn/snapshots/mini_frozen_iter_6.solverstate"), 6, 2));
  solver_free(s);
  feed_free(&f);
}

/* One TRAIN forward/backward from the initial weights, no solver. */
static Net *grad_net(const char *net_file, const char *weights, const char *batch_dir, bool seed,
                     float *loss) {
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TRAIN;
  o.quiet = true;
  o.has_seed = seed;
  o.seed = 1701;
  Net *net = net_create_from_file(shared_path(net_file), &o);
  if (!net || net_copy_from_file(net, shared_path(weights))) {
    fprintf(stderr, "    %s\n", moka_error());
    net_free(net);
    return NULL;
  }
  char p[512];
  size_t n;
  snprintf(p, sizeof p, "%s/batches/batch0_data.f32", batch_dir);
  float *d = read_f32(shared_path(p), &n);
  snprintf(p, sizeof p, "%s/batches/batch0_label.f32", batch_dir);
  float *l = read_f32(shared_path(p), &n);
  int rc = -1;
  if (d && l) {
    memcpy(net_blob(net, "data")->data, d, net_blob(net, "data")->count * sizeof(float));
    memcpy(net_blob(net, "label")->data, l, net_blob(net, "label")->count * sizeof(float));
    net_clear_param_diffs(net);
    rc = net_forward(net, loss) || net_backward(net) ? -1 : 0;
  }
  free(d);
  free(l);
  if (rc) {
    fprintf(stderr, "    %s\n", moka_error());
    net_free(net);
    return NULL;
  }
  return net;
}

/* Compare every grad_iter0 file named <prefix><name>.f32 in `dir`. */
static int compare_grad_dir(const Net *net, const char *dir, int *n_diff, int *n_blob, int *n_bn) {
  int ok = 1;
  for (int i = 0; i < net->n_layers; i++) {
    const Layer *l = net->layers[i];
    for (int k = 0; k < l->n_params; k++) {
      char name[512], file[600];
      snprintf(name, sizeof name, "%s", l->name);
      for (char *c = name; *c; c++)
        if (*c == '/') *c = '_';
      bool bn = !strcmp(l->type->name, "BatchNorm");
      snprintf(file, sizeof file, "%s/%s_%s.%d.f32", dir, bn ? "bnstat" : "diff", name, k);
      if (access(shared_path(file), R_OK)) continue;
      size_t n;
      float *want = read_f32(shared_path(file), &n);
      if (!want || n != l->params[k]->count) {
        ok = 0;
        free(want);
        continue;
      }
      bool bias_zero = !strcmp(l->name, "conv1") && k == 1 && strstr(dir, "mini_train");
      if (bn) {
        ok &= cmp(W_BN, file, l->params[k]->data, want, n, 1e-4, 0);
        (*n_bn)++;
      } else if (bias_zero) {
        /* conv1's bias gradient is mathematically 0 (cancelled by batch BN):
         * absolute tolerance only */
        for (size_t q = 0; q < n; q++)
          if (!(fabs(l->params[k]->diff[q] - want[q]) <= 1e-6)) ok = 0;
        (*n_diff)++;
      } else {
        ok &= cmp(W_DIFF, file, l->params[k]->diff, want, n, 1e-3, 0);
        (*n_diff)++;
      }
      free(want);
    }
  }
  for (int b = 0; b < net->n_blobs; b++) {
    char name[512], file[600];
    snprintf(name, sizeof name, "%s", net->blobs[b]->name);
    for (char *c = name; *c; c++)
      if (*c == '/') *c = '_';
    snprintf(file, sizeof file, "%s/blob_%s.f32", dir, name);
    if (access(shared_path(file), R_OK)) continue;
    size_t n;
    float *want = read_f32(shared_path(file), &n);
    if (want && n == net->blobs[b]->count)
      ok &= cmp(W_BLOB, file, net->blobs[b]->data, want, n, 1e-4, 0);
    else
      ok = 0;
    free(want);
    (*n_blob)++;
  }
  return ok;
}

static void test_grad_iter0(void) {
  float loss;
  Net *net = grad_net("golden/mini_train/train.prototxt", "golden/mini_train/init.caffemodel",
                      "golden/mini_train", false, &loss);
  REQUIRE(net);
  size_t n;
  float *want = read_f32(shared_path("golden/mini_train/grad_iter0/loss.f32"), &n);
  REQUIRE(want);
  CHECK(cmp_loss("mini_train grad_iter0 loss", loss, want[0]));
  free(want);
  int nd = 0, nb = 0, nbn = 0;
  CHECK(compare_grad_dir(net, "golden/mini_train/grad_iter0", &nd, &nb, &nbn));
  CHECK_MSG(nd == 39 && nb == 7 && nbn == 36, "compared %d diffs, %d blobs, %d BN stats", nd, nb, nbn);
  net_free(net);

  net = grad_net("golden/mini_alexnet/train/train.prototxt", "golden/mini_alexnet/weights.caffemodel",
                 "golden/mini_alexnet/train", true, &loss);
  REQUIRE(net);
  want = read_f32(shared_path("golden/mini_alexnet/train/grad_iter0/loss.f32"), &n);
  REQUIRE(want);
  CHECK(cmp_loss("mini_alexnet grad_iter0 loss", loss, want[0]));
  free(want);
  nd = nb = nbn = 0;
  CHECK(compare_grad_dir(net, "golden/mini_alexnet/train/grad_iter0", &nd, &nb, &nbn));
  CHECK_MSG(nd == 28 && nb == 4, "compared %d diffs, %d blobs", nd, nb);
  net_free(net);
}

/* mini_alexnet: random_seed 1701 drives Dropout. The solver's net must draw
 * exactly the stream that, replayed, gives Caffe's ten stored masks. */
static void test_mini_alexnet_train(void) {
  moka_set_log_level(1);
  Feed f;
  REQUIRE(feed_load(&f, "golden/mini_alexnet/train", 5));
  Solver *s = golden_solver("golden/mini_alexnet/train/solver.prototxt",
                            "golden/mini_alexnet/train/train.prototxt",
                            "golden/mini_alexnet/weights.caffemodel", &f);
  if (!s) feed_free(&f);
  REQUIRE(s);
  CHECK(s->param->random_seed == 1701);
  Rng replay;
  rng_seed(&replay, 1701);
  int masks_ok = 0;
  for (int it = 0; it < 5; it++) {
    /* replay Caffe's rule: one draw per element, keep iff u <= (1-ratio)*(2^32-1) */
    static const char *drops[] = {"drop6", "drop7"};
    static const double ratio[] = {0.5f, 0.3f};
    unsigned char mask[2][128];
    for (int d = 0; d < 2; d++)
      for (int k = 0; k < 128; k++) mask[d][k] = (double)rng_u32(&replay) <= (1.0 - ratio[d]) * 4294967295.0;
    REQUIRE(solver_step(s, 1) == 0);
    /* the net's stream is exactly where the replay is */
    CHECK_MSG(!memcmp(s->net->rng.mt, replay.mt, sizeof replay.mt) && s->net->rng.idx == replay.idx,
              "iteration %d: the net's random stream differs from the replay", it);
    for (int d = 0; d < 2; d++) {
      char p[256];
      snprintf(p, sizeof p, "golden/mini_alexnet/train/masks/iter%d_%s.u8", it, drops[d]);
      FILE *mf = fopen(shared_path(p), "rb");
      unsigned char want[128];
      size_t got = mf ? fread(want, 1, 128, mf) : 0;
      if (mf) fclose(mf);
      CHECK_MSG(got == 128 && !memcmp(want, mask[d], 128), "%s differs from the replay", p);
      /* and the blob after Dropout agrees: dropped units are 0 */
      const Blob *b = net_blob(s->net, d == 0 ? "fc6" : "fc7");
      int agree = b && b->count == 128;
      for (int k = 0; agree && k < 128; k++)
        if (!want[k] && b->data[k] != 0.0f) agree = 0;
      CHECK_MSG(agree, "%s: a dropped unit is non-zero in the net", p);
      masks_ok += got == 128 && !memcmp(want, mask[d], 128) && agree;
    }
  }
  CHECK(masks_ok == 10);
  record_loss(&f, s->net);
  check_losses(&f, "golden/mini_alexnet/train/train_log.txt", 5, 1);
  CHECK(compare_caffemodel(s->net, shared_path("golden/mini_alexnet/train/snapshots/alex_iter_5.caffemodel"), false));
  CHECK(compare_solverstate(s, shared_path("golden/mini_alexnet/train/snapshots/alex_iter_5.solverstate"), 5, 2));
  solver_free(s);
  feed_free(&f);
}

/* ---- snapshots and resuming ---------------------------------------------------------- */

static void test_snapshot_resume_bit_identical(void) {
  moka_set_log_level(1);
  char dir[] = "/tmp/moka_resume_XXXXXX";
  REQUIRE(mkdtemp(dir));
  char prefix[128];
  snprintf(prefix, sizeof prefix, "%s/run", dir);
  Feed f1, f2;
  REQUIRE(feed_load(&f1, "golden/mini_train", 6));
  REQUIRE(feed_load(&f2, "golden/mini_train", 6));
  /* uninterrupted: 6 iterations */
  Solver *a = golden_solver("golden/mini_train/solver.prototxt", "golden/mini_train/train.prototxt",
                            "golden/mini_train/init.caffemodel", &f1);
  REQUIRE(a);
  REQUIRE(solver_step(a, 6) == 0);
  record_loss(&f1, a->net);
  /* interrupted: 3 iterations, snapshot, a new solver resumes for 3 more */
  Solver *b = golden_solver("golden/mini_train/solver.prototxt", "golden/mini_train/train.prototxt",
                            "golden/mini_train/init.caffemodel", &f2);
  REQUIRE(b);
  replace_string(&b->param->snapshot_prefix, prefix);
  REQUIRE(solver_step(b, 3) == 0);
  record_loss(&f2, b->net);
  REQUIRE(solver_snapshot(b) == 0);
  solver_free(b);
  char state[256], model[256];
  snprintf(state, sizeof state, "%s_iter_3.solverstate", prefix);
  snprintf(model, sizeof model, "%s_iter_3.caffemodel", prefix);
  /* the files are readable, with the right fields */
  ProtobufCMessage *m;
  REQUIRE(proto_read_binary(&caffe__solver_state__descriptor, state, &m) == 0);
  Caffe__SolverState *st = (Caffe__SolverState *)m;
  CHECK(st->iter == 3 && st->current_step == 1 && st->n_history == 75);
  CHECK(st->learned_net && !strcmp(st->learned_net, model));
  protobuf_c_message_free_unpacked(m, NULL);
  REQUIRE(proto_read_binary(&caffe__net_parameter__descriptor, model, &m) == 0);
  Caffe__NetParameter *np = (Caffe__NetParameter *)m;
  int with_blobs = 0, bn_specs = 0;
  for (size_t i = 0; i < np->n_layer; i++) {
    with_blobs += np->layer[i]->n_blobs > 0;
    if (!strcmp(np->layer[i]->type, "BatchNorm"))
      bn_specs += np->layer[i]->n_param == 3 && np->layer[i]->param[0]->lr_mult == 0.0f;
  }
  CHECK(with_blobs == 12 + 12 + 12 + 1 && bn_specs == 12); /* conv, BN, Scale, fc */
  protobuf_c_message_free_unpacked(m, NULL);

  Caffe__SolverParameter *p;
  REQUIRE(solver_param_read(shared_path("golden/mini_train/solver.prototxt"), &p) == 0);
  replace_string(&p->net, shared_path("golden/mini_train/train.prototxt"));
  SolverOptions o = {.quiet_nets = true, .before_forward = feed_before_forward, .user = &f2};
  Solver *c = solver_create(p, &o, "resume");
  caffe__solver_parameter__free_unpacked(p, NULL);
  REQUIRE(c);
  REQUIRE(solver_restore(c, state) == 0);
  CHECK(c->iter == 3 && c->current_step == 1);
  f2.last_iter = -1;
  REQUIRE(solver_step(c, 3) == 0);
  record_loss(&f2, c->net);
  for (int it = 0; it < 6; it++)
    CHECK_MSG(!memcmp(&f1.loss[it][0], &f2.loss[it][0], sizeof(float)), "loss %d: %.9g vs %.9g", it,
              f1.loss[it][0], f2.loss[it][0]);
  CHECK(a->net->param_count == c->net->param_count &&
        !memcmp(a->net->param_data, c->net->param_data, a->net->param_count * sizeof(float)));
  CHECK(!memcmp(a->history[0], c->history[0], a->net->param_count * sizeof(float)));
  CHECK(a->iter == c->iter && a->current_step == c->current_step);
  solver_free(a);
  solver_free(c);
  unlink(state);
  unlink(model);
  rmdir(dir);
  feed_free(&f1);
  feed_free(&f2);
}

/* Caffe's own mini_iter_3.solverstate (learned_net "snapshots/mini_iter_3.caffemodel",
 * relative to where Caffe ran) -> 3 more iterations -> Caffe's mini_iter_6. */
static void test_resume_from_caffe_solverstate(void) {
  moka_set_log_level(1);
  Feed f;
  REQUIRE(feed_load(&f, "golden/mini_train", 6));
  Solver *s = golden_solver("golden/mini_train/solver.prototxt", "golden/mini_train/train.prototxt",
                            NULL, &f);
  if (!s) feed_free(&f);
  REQUIRE(s);
  CHECK(solver_restore(s, shared_path("golden/mini_train/snapshots/mini_iter_3.solverstate")) == 0);
  CHECK(s->iter == 3 && s->current_step == 1);
  CHECK(solver_step(s, 3) == 0);
  record_loss(&f, s->net);
  double want[16];
  read_train_log("golden/mini_train/train_log.txt", want, NULL, 16);
  for (int it = 3; it < 6; it++) CHECK(cmp_loss("resumed loss", f.loss[it][0], want[it]));
  CHECK(compare_caffemodel(s->net, shared_path("golden/mini_train/snapshots/mini_iter_6.caffemodel"), false));
  CHECK(compare_solverstate(s, shared_path("golden/mini_train/snapshots/mini_iter_6.solverstate"), 6, 2));
  /* a wrong history count is refused */
  Solver *t = make_solver(TINY_NET "base_lr: 0.1 lr_policy: 'fixed'");
  REQUIRE(t);
  CHECK(solver_restore(t, shared_path("golden/mini_train/snapshots/mini_iter_3.solverstate")) == -1 &&
        strstr(moka_error(), "Incorrect length of history blobs"));
  CHECK(solver_restore(t, "x.solverstate.h5") == -1 && strstr(moka_error(), "HDF5"));
  solver_free(t);
  solver_free(s);
  feed_free(&f);
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
  RUN(test_grad_iter0);
  RUN(test_mini_train);
  RUN(test_mini_train_itersize2);
  RUN(test_mini_train_frozen_bn);
  RUN(test_mini_alexnet_train);
  RUN(test_snapshot_resume_bit_identical);
  RUN(test_resume_from_caffe_solverstate);
  RUN(test_solve_log_and_test_nets);
  RUN(test_test_nets_share_stream);
  fprintf(stderr, "worst errors against Caffe (tolerance in brackets):\n");
  for (size_t i = 0; i < MOKA_ARRAY_LEN(g_worst); i++)
    fprintf(stderr, "  %-48s %.3g  [%g]\n", g_worst[i].what, g_worst[i].ratio, g_worst[i].rtol);
  return test_summary();
}
