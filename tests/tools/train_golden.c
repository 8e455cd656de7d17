/* train_golden — train a net whose Input layers `data` and `label` are fed
 * from files BATCHES/batch<k>_data.f32 / batch<k>_label.f32 (iteration k
 * trains on batch k mod N), as shared/golden/mini_train does; used by the
 * cross-checks against real Caffe (tests/cross/).
 *   train_golden SOLVER.prototxt BATCH_DIR N_BATCHES ITERS [RESUME.solverstate]
 * Runs ITERS iterations (from the resumed iteration, if any), then writes a
 * snapshot. Weights come from the solver's `weights:` or a resume file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "solver.h"
#include "util.h"

typedef struct {
  const char *dir;
  int n;
} Feed;

static int load(const char *dir, int k, const char *what, Blob *b) {
  char path[4096];
  snprintf(path, sizeof path, "%s/batch%d_%s.f32", dir, k, what);
  uint8_t *d;
  size_t len;
  if (moka_read_file(path, &d, &len)) return -1;
  if (len != b->count * sizeof(float)) {
    free(d);
    return moka_errorf("%s: %zu bytes, blob '%s' needs %zu", path, len, b->name,
                       b->count * sizeof(float));
  }
  memcpy(b->data, d, len);
  free(d);
  return 0;
}

static int feed(Solver *s, int iter, int micro, void *user) {
  Feed *f = user;
  int k = (iter * (int)s->param->iter_size + micro) % f->n;
  Blob *data = net_blob(s->net, "data"), *label = net_blob(s->net, "label");
  if (!data || !label) return moka_errorf("the net needs Input blobs 'data' and 'label'");
  return load(f->dir, k, "data", data) || load(f->dir, k, "label", label) ? -1 : 0;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: train_golden SOLVER BATCH_DIR N_BATCHES ITERS [RESUME]\n");
    return 2;
  }
  Feed f = {argv[2], atoi(argv[3])};
  SolverOptions o = {0};
  o.backend = MOKA_BACKEND_CPU;
  o.quiet_nets = true;
  o.before_forward = feed;
  o.user = &f;
  Solver *s = solver_create_from_file(argv[1], &o);
  if (!s || (argc > 5 && solver_restore(s, argv[5])) || solver_step(s, atoi(argv[4])) ||
      solver_snapshot(s)) {
    fprintf(stderr, "train_golden: %s\n", moka_error());
    return 1;
  }
  solver_free(s);
  return 0;
}
