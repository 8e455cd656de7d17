/* goldentest.h — what the tests against real Caffe's golden runs share
 * (test_fast.c, test_winograd.c, test_solver_golden.c): the mini ResNet
 * forward on the fast backend against the golden manifest, a caffemodel
 * against a net's parameters, a solver built from a golden solver file, and
 * the 6-iteration mini_train run checked against Caffe's log and snapshot.
 * Header-only, like testlib.h: each test_*.c is its own program.
 */
#ifndef MOKA_GOLDENTEST_H
#define MOKA_GOLDENTEST_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"
#include "net.h"
#include "proto_io.h"
#include "solver.h"
#include "solvertest.h"
#include "testlib.h"
#include "train_feed.h"
#include "util.h"

/* Every blob of the golden mini_resnet manifest with this prefix ("" = the
 * names without a '/') against a fast-backend TEST net built from `proto`
 * with the golden weights, fed `input`: rtol 1e-4 (the golden README's
 * rule), prob with an absolute floor 1e-5. want_count = blobs to compare. */
static inline int golden_forward(const char *proto, const char *input, const char *prefix,
                                 int want_count) {
  moka_set_log_level(1); /* no "Copying source layer" lines */
  NetOptions o;
  net_options_default(&o);
  o.phase = MOKA_TEST;
  o.backend = MOKA_BACKEND_CPU_FAST;
  o.quiet = true;
  Net *net = net_create_from_file(shared_path(proto), &o);
  if (net && net_copy_from_file(net, shared_path("golden/mini_resnet/weights.caffemodel"))) {
    net_free(net);
    net = NULL;
  }
  moka_set_log_level(0);
  if (!net) {
    fprintf(stderr, "    %s\n", moka_error());
    return 0;
  }
  Blob *in = net_blob(net, "data");
  size_t n;
  float *v = read_f32(shared_path(input), &n);
  int ok = in && v && n == in->count;
  if (ok) memcpy(in->data, v, n * sizeof(float));
  free(v);
  float loss;
  ok = ok && net_forward(net, &loss) == 0;
  ManifestEntry *e;
  int ne, count = 0;
  if (ok && manifest_read(shared_path("golden/mini_resnet/manifest.txt"), &e, &ne) == 0) {
    for (int i = 0; i < ne; i++) {
      const char *name = e[i].name;
      if (*prefix) {
        if (strncmp(name, prefix, strlen(prefix))) continue;
        name += strlen(prefix);
      } else if (strchr(name, '/')) {
        continue;
      }
      Blob *b = net_blob(net, name);
      if (!b || !strcmp(name, "data")) continue;
      float *want = read_f32(e[i].file, &n); /* manifest_read gives the full path */
      if (!want || n != b->count) {
        fprintf(stderr, "    %s: missing or wrong size\n", name);
        ok = 0;
      } else {
        ok &= compare_f32(name, b->data, want, n, 1e-4, !strcmp(name, "prob") ? 1e-5 : 0);
      }
      free(want);
      count++;
    }
    manifest_free(e, ne);
  } else {
    ok = 0;
  }
  if (count != want_count) {
    fprintf(stderr, "    %d blobs compared, %d expected\n", count, want_count);
    ok = 0;
  }
  net_free(net);
  return ok;
}

/* Compares one parameter blob `what` (a = the net's, b = the file's, n
 * floats); is_bn: it belongs to a BatchNorm layer. Returns 1 if it agrees. */
typedef int (*GoldenParamCmp)(bool is_bn, const char *what, const float *a, const float *b,
                              size_t n);

/* Every blob of every layer of a caffemodel against the net's parameters
 * (only the BatchNorm layers' if bn_only), with `cmp` (NULL: compare_f32,
 * rtol 1e-4). Fails when nothing was compared. */
static inline int golden_compare_caffemodel(const Net *net, const char *file, bool bn_only,
                                            GoldenParamCmp cmp) {
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
      const float *a = l->params[k]->data, *b = lp->blobs[k]->data;
      size_t n = lp->blobs[k]->n_data;
      ok &= cmp ? cmp(is_bn, what, a, b, n) : compare_f32(what, a, b, n, 1e-4, 0);
      compared++;
    }
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return ok && compared > 0;
}

/* A solver from a golden solver file (paths relative to shared/), its `net`
 * replaced by `net_file`, on `backend`, fed by `feed`, with initial
 * `weights` (NULL: none). NULL after printing the error. */
static inline Solver *golden_solver(const char *solver_file, const char *net_file,
                                    const char *weights, Backend backend, Feed *feed) {
  Caffe__SolverParameter *p;
  if (solver_param_read(shared_path(solver_file), &p)) {
    fprintf(stderr, "    %s\n", moka_error());
    return NULL;
  }
  replace_string(&p->net, shared_path(net_file));
  SolverOptions o = {.backend = backend,
                     .quiet_nets = true,
                     .before_forward = feed_before_forward,
                     .user = feed};
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

/* The mini_train solver (golden/mini_train/solver.prototxt on the Input-layer
 * train.prototxt, init.caffemodel) on `backend`, fed by `feed`. */
static inline Solver *golden_mini_train_solver(Backend backend, Feed *feed) {
  return golden_solver("golden/mini_train/solver.prototxt", "golden/mini_train/train.prototxt",
                       "golden/mini_train/init.caffemodel", backend, feed);
}

/* The mini_train batches loaded into `feed` and golden_mini_train_solver on
 * `backend` fed by it. NULL on failure, with the feed freed. */
static inline Solver *golden_mini_train_start(Backend backend, Feed *feed) {
  if (!feed_load(feed, "golden/mini_train", 6)) {
    fprintf(stderr, "    golden/mini_train: cannot read the batches\n");
    feed_free(feed);
    return NULL;
  }
  Solver *s = golden_mini_train_solver(backend, feed);
  if (!s) feed_free(feed);
  return s;
}

/* Runs a mini_train solver (golden_mini_train_start) 6 iterations and checks
 * the losses against Caffe's train_log.txt (absolute 1e-4) and the weights
 * against its mini_iter_6.caffemodel (rtol 1e-4). `label` starts each loss
 * message ("" for none). Returns the largest loss difference. */
static inline double golden_mini_train_check(Solver *s, Feed *f, const char *label) {
  CHECK(solver_step(s, 6) == 0);
  record_loss(f, s->net);
  double want[16], micro[16][2];
  int n = read_train_log("golden/mini_train/train_log.txt", want, micro, 16);
  CHECK(n == 6);
  double worst = 0;
  for (int it = 0; it < n && it < 6; it++) {
    worst = fmax(worst, fabs(f->loss[it][0] - want[it]));
    CHECK_MSG(fabs(f->loss[it][0] - want[it]) <= 1e-4, "%sloss at iteration %d: %.8f, want %.8f",
              label, it, (double)f->loss[it][0], want[it]);
  }
  CHECK(golden_compare_caffemodel(
      s->net, shared_path("golden/mini_train/snapshots/mini_iter_6.caffemodel"), false, NULL));
  return worst;
}

#endif
