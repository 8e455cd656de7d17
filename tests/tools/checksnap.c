/* checksnap — check snapshot files the way a resume would read them (used by
 * tests/cli/test_crash.sh after killing training at random moments).
 *
 *   checksnap [--net=NET.prototxt] [--finite] FILE...
 *                                              check each .caffemodel / .solverstate
 *   checksnap --newest=PREFIX                  the snapshot `moka finetune` would resume
 *                                              from (ft_find_snapshot), or "none"
 *
 * A .caffemodel must unpack completely as a NetParameter; with --net, every
 * layer of NET (TRAIN phase) that has parameters must be in it with the same
 * number of blobs, shapes and values for each (net_copy_from loads them).
 * A .solverstate must unpack completely, name a learned_net that exists (as
 * written, else beside the state, as solver_restore looks) and passes the
 * caffemodel check, and hold one history blob per parameter blob (or two, for
 * AdaDelta / Adam) of the parameter's shape. --finite: the weights hold no
 * NaN or infinity either.
 * Prints "ok FILE" or "FAIL FILE: reason" per file; exit status 1 if any
 * failed, 2 on bad usage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "finetune/trainer.h"
#include "net.h"
#include "proto_io.h"
#include "util.h"

static bool g_finite;

static bool exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

/* 0 or -1 with moka_error(). */
static int check_model(const char *path, const char *net_file) {
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__net_parameter__descriptor, path, &m)) return -1;
  const Caffe__NetParameter *w = (const Caffe__NetParameter *)m;
  int rc = 0;
  for (size_t k = 0; g_finite && k < w->n_layer && !rc; k++)
    for (size_t j = 0; j < w->layer[k]->n_blobs && !rc; j++) {
      const Caffe__BlobProto *b = w->layer[k]->blobs[j];
      for (size_t i = 0; i < b->n_data && !rc; i++)
        if (!isfinite(b->data[i]))
          rc = moka_errorf("layer '%s' blob %zu holds %g at element %zu", w->layer[k]->name, j,
                           (double)b->data[i], i);
    }
  Net *net = NULL;
  if (net_file) {
    NetOptions o;
    net_options_default(&o);
    o.phase = MOKA_TRAIN;
    o.quiet = true;
    net = net_create_from_file(net_file, &o);
    if (!net) rc = -1;
    for (int i = 0; net && i < net->n_layers && !rc; i++) {
      const Layer *l = net->layers[i];
      if (!l->n_params) continue;
      const Caffe__LayerParameter *found = NULL;
      for (size_t k = 0; k < w->n_layer && !found; k++)
        if (w->layer[k]->name && !strcmp(w->layer[k]->name, l->name)) found = w->layer[k];
      if (!found)
        rc = moka_errorf("layer '%s' (%d parameter blobs) is missing", l->name, l->n_params);
      else if ((int)found->n_blobs != l->n_params)
        rc = moka_errorf("layer '%s' has %zu blobs, the net %d", l->name, found->n_blobs,
                         l->n_params);
    }
    if (!rc) rc = net_copy_from(net, w, path); /* shapes and value counts */
  }
  net_free(net);
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

static int check_state(const char *path, const char *net_file) {
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__solver_state__descriptor, path, &m)) return -1;
  const Caffe__SolverState *st = (const Caffe__SolverState *)m;
  int rc = 0;
  char dir[4096], a[8300], b[8300];
  const char *slash = strrchr(path, '/');
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
  const char *model = st->learned_net;
  if (!model || !*model) {
    rc = moka_errorf("no learned_net");
    goto done;
  }
  if (!exists(model) && model[0] != '/') {
    const char *base = strrchr(model, '/');
    snprintf(a, sizeof a, "%s/%s", dir, model);
    snprintf(b, sizeof b, "%s/%s", dir, base ? base + 1 : model);
    model = exists(a) ? a : b;
  }
  if (!exists(model)) {
    rc = moka_errorf("learned_net '%s' does not exist", st->learned_net);
    goto done;
  }
  if (check_model(model, net_file)) {
    rc = moka_error_prefix("learned_net '%s'", model);
    goto done;
  }
  if (net_file) {
    NetOptions o;
    net_options_default(&o);
    o.phase = MOKA_TRAIN;
    o.quiet = true;
    Net *net = net_create_from_file(net_file, &o);
    if (!net) {
      rc = -1;
      goto done;
    }
    const int n = net->n_params;
    if (!n || ((int)st->n_history != n && (int)st->n_history != 2 * n))
      rc = moka_errorf("%zu history blobs for %d parameter blobs", st->n_history, n);
    for (size_t h = 0; h < st->n_history && !rc; h++) {
      const Blob *p = net->params[h % (size_t)n];
      int na, shape[MOKA_MAX_AXES];
      if (blobproto_shape(st->history[h], &na, shape)) {
        rc = moka_error_prefix("history blob %zu", h);
        break;
      }
      bool same = na == p->num_axes;
      for (int k = 0; same && k < na; k++) same = shape[k] == p->shape[k];
      size_t values = st->history[h]->n_data ? st->history[h]->n_data : st->history[h]->n_double_data;
      if (!same || values != p->count)
        rc = moka_errorf("history blob %zu does not match parameter blob %zu (%zu values, want "
                         "%zu)",
                         h, h % (size_t)n, values, p->count);
    }
    net_free(net);
  }
done:
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

int main(int argc, char **argv) {
  const char *net_file = NULL;
  int failed = 0, files = 0;
  moka_set_log_level(1);
  for (int i = 1; i < argc; i++) {
    if (!strncmp(argv[i], "--net=", 6)) {
      net_file = argv[i] + 6;
      continue;
    }
    if (!strcmp(argv[i], "--finite")) {
      g_finite = true;
      continue;
    }
    if (!strncmp(argv[i], "--newest=", 9)) {
      char path[4400];
      int iter;
      if (ft_find_snapshot(argv[i] + 9, path, sizeof path, &iter) == 1)
        printf("%s\n", path);
      else
        printf("none\n");
      files++;
      continue;
    }
    const char *f = argv[i];
    files++;
    int rc;
    if (ends_with(f, ".caffemodel"))
      rc = check_model(f, net_file);
    else if (ends_with(f, ".solverstate"))
      rc = check_state(f, net_file);
    else
      rc = moka_errorf("neither a .caffemodel nor a .solverstate");
    if (rc) {
      printf("FAIL %s: %s\n", f, moka_error());
      failed++;
    } else {
      printf("ok %s\n", f);
    }
  }
  if (!files) {
    fprintf(stderr, "usage: checksnap [--net=NET.prototxt] [--finite] FILE... | --newest=PREFIX\n");
    return 2;
  }
  return failed ? 1 : 0;
}
