/* solver_snapshot.c — Caffe's Solver::Snapshot and Restore for the
 * BINARYPROTO format (PREFIX_iter_N.caffemodel + .solverstate, written
 * atomically, weights first), the clean-up of temporary files left by killed
 * runs, and positioning the data layers of a resumed run (see solver.h,
 * "Snapshots").
 */
#include "solver.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/data_layer.h"
#include "net_check.h"
#include "proto_io.h"
#include "solver_internal.h"
#include "util.h"

/* ---- names and messages (shared with solver_loop.c) ------------------------------------ */

static void snapshot_name(const Solver *s, const char *ext, char *buf, size_t n) {
  snprintf(buf, n, "%s_iter_%d%s", s->param->snapshot_prefix ? s->param->snapshot_prefix : "",
           s->iter, ext);
}

int solver_check_snapshot_prefix(const Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (!p->snapshot && !p->snapshot_after_train) return 0;
  if (!p->snapshot_prefix || !*p->snapshot_prefix)
    return moka_errorf("In solver params, snapshot is specified but snapshot_prefix is not "
                       "(set snapshot_prefix, or snapshot: 0 and snapshot_after_train: false)");
  char probe[4200];
  snapshot_name(s, ".tempfile", probe, sizeof probe);
  FILE *f = fopen(probe, "wb");
  if (!f)
    return moka_errorf("Cannot write to snapshot prefix '%s' (%s).  Make sure that the directory "
                       "exists and is writeable.",
                       p->snapshot_prefix, strerror(errno));
  fclose(f);
  remove(probe);
  return 0;
}

void solver_last_snapshot_text(const Solver *s, char *buf, size_t n) {
  if (!s->last_snapshot)
    snprintf(buf, n, "no snapshot yet");
  else if (solver_file_exists(s->last_snapshot))
    snprintf(buf, n, "the last good snapshot is %s", s->last_snapshot);
  else
    snprintf(buf, n, "the last snapshot, %s, is no longer on disk", s->last_snapshot);
}

const Layer *solver_first_nonfinite(const Net *net, bool diff, int *blob, size_t *at,
                                    float *value) {
  *blob = 0;
  *at = 0;
  *value = NAN;
  const int p = net_first_nonfinite_param(net, diff, at);
  if (p < 0) return NULL;
  const Layer *l = net->layers[net->param_layer[p]];
  while (*blob < l->n_params && l->params[*blob] != net->params[p]) ++*blob;
  *value = (diff ? net->params[p]->diff : net->params[p]->data)[*at];
  return l;
}

/* A view of history slot `slot` for parameter blob `b` (at flat offset off):
 * the parameter's shape, the history's values. */
static Blob history_view(const Solver *s, int slot, const Blob *b, size_t off) {
  Blob view = {0};
  view.num_axes = b->num_axes;
  memcpy(view.shape, b->shape, sizeof view.shape);
  view.count = b->count;
  view.data = s->history[slot] + off;
  return view;
}

/* ---- snapshots ----------------------------------------------------------------------- */

/* Remove PREFIX_iter_N.caffemodel.tmp.PID / .solverstate.tmp.PID files
 * (moka_write_file_atomic's temporary names) whose process PID no longer
 * exists: what a run killed while writing a snapshot leaves. Files of a live
 * process (or one we may not signal) are kept. */
static void remove_stale_temps(const char *prefix) {
  char dir[4096];
  const char *slash = strrchr(prefix, '/'), *base = slash ? slash + 1 : prefix;
  solver_dir_of(prefix, dir, sizeof dir);
  DIR *d = opendir(dir);
  if (!d) return;
  const size_t bl = strlen(base);
  int removed = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *name = e->d_name;
    if (strncmp(name, base, bl) || strncmp(name + bl, "_iter_", 6)) continue;
    const char *t = strstr(name + bl, ".tmp.");
    if (!t) continue;
    const size_t stem = (size_t)(t - name);
    const bool model = stem >= 11 && !memcmp(t - 11, ".caffemodel", 11);
    const bool state = stem >= 12 && !memcmp(t - 12, ".solverstate", 12);
    if (!model && !state) continue;
    char *end;
    errno = 0;
    const long pid = strtol(t + 5, &end, 10);
    if (*end || errno || pid <= 0 || pid > INT_MAX || pid == (long)getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours */
    char path[8400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) == 0) removed++;
  }
  closedir(d);
  if (removed)
    LOG_INFO("Removed %d temporary snapshot file(s) left by killed runs (%s_iter_*.tmp.<pid>)",
             removed, prefix);
}

int solver_snapshot(Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (p->snapshot_format == CAFFE__SOLVER_PARAMETER__SNAPSHOT_FORMAT__HDF5)
    return moka_errorf("snapshot_format: HDF5 is not supported; use BINARYPROTO");
  if (!p->snapshot_prefix || !*p->snapshot_prefix)
    return moka_errorf("cannot snapshot: the solver has no snapshot_prefix");
  char model[4200], state_file[4200];
  snapshot_name(s, ".caffemodel", model, sizeof model);
  snapshot_name(s, ".solverstate", state_file, sizeof state_file);
  /* CUDA: parameters, gradients and history down first (explicit copies) */
  if (solver_sync_to_host(s)) return moka_error_prefix("snapshot '%s'", model);
  char prev[4400], prev_ok[4400];
  solver_last_snapshot_text(s, prev, sizeof prev);
  if (s->last_snapshot && solver_file_exists(s->last_snapshot))
    snprintf(prev_ok, sizeof prev_ok, "the previous snapshot %s is intact", s->last_snapshot);
  else
    snprintf(prev_ok, sizeof prev_ok, "%s", prev);
  /* weights that are not finite are never written as a snapshot */
  if (!moka_all_finite(s->net->param_data, s->net->param_count)) {
    int k;
    size_t at;
    float value;
    const Layer *l = solver_first_nonfinite(s->net, false, &k, &at, &value);
    char v[32];
    return moka_errorf("iteration %d: not writing snapshot %s: param blob %d of layer '%s' holds "
                       "%s at element %zu (the weights are not finite: training has diverged); %s",
                       s->iter, model, k, l ? l->name : "?", moka_float_text(value, v), at, prev);
  }
  /* 1. the weights (atomically: temporary file, fsync, rename) */
  LOG_INFO("Snapshotting to binary proto file %s", model);
  Caffe__NetParameter *np = net_to_proto(s->net, p->snapshot_diff);
  if (!np) return moka_error_prefix("snapshot '%s'", model);
  int rc = proto_write_binary(&np->base, model);
  caffe__net_parameter__free_unpacked(np, NULL);
  if (rc)
    return moka_error_prefix("iteration %d: writing snapshot file %s failed, training stopped "
                             "(%s)",
                             s->iter, model, prev_ok);
  /* 2. the solver state, which names the weights file */
  LOG_INFO("Snapshotting solver state to binary proto file %s", state_file);
  const Net *net = s->net;
  Caffe__SolverState st;
  caffe__solver_state__init(&st);
  st.has_iter = 1;
  st.iter = s->iter;
  st.learned_net = model;
  st.has_current_step = 1;
  st.current_step = s->current_step;
  const int nh = s->n_history_slots * net->n_params;
  Caffe__BlobProto *hist = moka_calloc((size_t)nh + 1, sizeof *hist);
  Caffe__BlobProto **ptrs = moka_calloc((size_t)nh + 1, sizeof *ptrs);
  rc = hist && ptrs ? 0 : -1;
  int made = 0;
  for (int slot = 0; slot < s->n_history_slots && !rc; slot++) {
    size_t off = 0;
    for (int i = 0; i < net->n_params && !rc; i++) {
      const Blob *b = net->params[i];
      Blob view = history_view(s, slot, b, off);
      rc = blobproto_from_blob(&hist[made], &view, 0);
      if (!rc) ptrs[made] = &hist[made], made++;
      off += b->count;
    }
  }
  if (!rc) {
    st.n_history = (size_t)made;
    st.history = ptrs;
    rc = proto_write_binary(&st.base, state_file);
  }
  for (int i = 0; i < made; i++) blobproto_clear(&hist[i]);
  free(hist);
  free(ptrs);
  if (rc)
    return moka_error_prefix("iteration %d: writing snapshot file %s failed, training stopped "
                             "(its weights %s were written; %s)",
                             s->iter, state_file, model, prev_ok);
  char *done = moka_strdup(state_file);
  if (done) {
    free(s->last_snapshot);
    s->last_snapshot = done;
  }
  remove_stale_temps(p->snapshot_prefix);
  return 0;
}

int solver_restore(Solver *s, const char *path) {
  size_t len = strlen(path);
  if (len >= 3 && !strcmp(path + len - 3, ".h5"))
    return moka_errorf("'%s': HDF5 solver states are not supported; resume from a .solverstate "
                       "(BINARYPROTO) file",
                       path);
  ProtobufCMessage *m;
  if (proto_read_binary(&caffe__solver_state__descriptor, path, &m)) return -1;
  Caffe__SolverState *st = (Caffe__SolverState *)m;
  Net *net = s->net;
  /* CUDA: the host copies current first (what the state leaves unset, e.g.
   * the weights when it names no learned_net, keeps the device's values) */
  int rc = solver_sync_to_host(s);
  if (rc) goto done;
  const int want = s->n_history_slots * net->n_params;
  if ((int)st->n_history != want) {
    rc = moka_errorf("'%s': Incorrect length of history blobs: the solverstate has %zu, a %s "
                     "solver on this net needs %d (%d parameter blobs%s)",
                     path, st->n_history, solver_kind_name(s->kind), want, net->n_params,
                     s->n_history_slots > 1 ? " x 2" : "");
    goto done;
  }
  if (st->learned_net && *st->learned_net) {
    /* as written (relative to the working directory, as Caffe), else beside
     * the solverstate (its folder + the path, then + the file name) */
    char dir[4096], a[8300], b[8300];
    solver_dir_of(path, dir, sizeof dir);
    const char *model = st->learned_net;
    if (!solver_file_exists(model) && model[0] != '/') {
      const char *base = strrchr(model, '/');
      snprintf(a, sizeof a, "%s/%s", dir, model);
      snprintf(b, sizeof b, "%s/%s", dir, base ? base + 1 : model);
      if (solver_file_exists(a))
        model = a;
      else if (solver_file_exists(b))
        model = b;
    }
    ProtobufCMessage *w;
    if (proto_read_binary(&caffe__net_parameter__descriptor, model, &w)) {
      rc = moka_error_prefix("'%s' names learned_net '%s'", path, st->learned_net);
      goto done;
    }
    rc = net_copy_from(net, (Caffe__NetParameter *)w, model);
    protobuf_c_message_free_unpacked(w, NULL);
    if (rc) goto done;
  }
  LOG_INFO("SGDSolver: restoring history");
  for (int slot = 0, h = 0; slot < s->n_history_slots; slot++) {
    size_t off = 0;
    for (int i = 0; i < net->n_params; i++, h++) {
      const Blob *b = net->params[i];
      Blob view = history_view(s, slot, b, off);
      int na, shape[MOKA_MAX_AXES];
      if (blobproto_shape(st->history[h], &na, shape)) {
        rc = moka_error_prefix("'%s': history blob %d", path, h);
        goto done;
      }
      bool same = na == b->num_axes;
      for (int a = 0; same && a < na; a++) same = shape[a] == b->shape[a];
      if (!same) {
        char sb[256];
        rc = moka_errorf("'%s': history blob %d does not have the shape of parameter %d of layer "
                         "'%s' (%s)",
                         path, h, i, net->layers[net->param_layer[i]]->name,
                         blob_shape_string(b, sb, sizeof sb));
        goto done;
      }
      char what[4200];
      snprintf(what, sizeof what, "'%s': history blob %d", path, h);
      if (blobproto_to_blob_data(st->history[h], &view, what)) {
        rc = -1;
        goto done;
      }
      off += b->count;
    }
  }
  s->iter = st->iter;
  s->current_step = st->current_step;
  s->iterations_last = s->iter;
  char *resumed = moka_strdup(path);
  if (resumed) {
    free(s->last_snapshot);
    s->last_snapshot = resumed;
  }
  /* CUDA: the restored parameters and history up (explicit copies) */
  rc = solver_sync_to_device(s);
  if (!rc) rc = solver_seek_data(s);
done:
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* Position every Data / ImageData layer where an uninterrupted run would be
 * at iteration s->iter: the train net has read iter x iter_size batches; each
 * test net has run test_iter batches per test done before this iteration
 * (tests run at iterations t < iter with t % test_interval == 0, the one at 0
 * only with test_initialization). Caffe restarts its Data layers at the first
 * record instead (CAFFE_NOTES.md, "Resuming"); moka continues exactly. */
static int seek_net(Net *net, uint64_t batches, const char *what) {
  for (int i = 0; i < net->n_layers; i++) {
    Layer *l = net->layers[i];
    if (strcmp(l->type->name, "Data") && strcmp(l->type->name, "ImageData")) continue;
    uint64_t batch = (uint64_t)l->top[0]->shape[0];
    if (data_layer_seek(l, batches * batch))
      return moka_error_prefix("resuming the %s's data layer '%s' at batch %llu", what, l->name,
                               (unsigned long long)batches);
    LOG_INFO("%s data layer %s continues at record %llu", what, l->name,
             (unsigned long long)(batches * batch));
  }
  return 0;
}

int solver_seek_data(Solver *s) {
  const Caffe__SolverParameter *p = s->param;
  if (seek_net(s->net, (uint64_t)s->iter * (uint64_t)p->iter_size, "train net")) return -1;
  uint64_t tests = 0;
  if (p->test_interval > 0)
    for (int t = 0; t < s->iter; t += p->test_interval)
      if (t > 0 || p->test_initialization) tests++;
  for (int k = 0; k < s->n_test_nets; k++) {
    uint64_t per = k < (int)p->n_test_iter ? (uint64_t)p->test_iter[k] : 0;
    if (seek_net(s->test_nets[k], tests * per, "test net")) return -1;
  }
  return 0;
}
