/* train_feed.h — feeding the golden mini_train batches to a Solver through
 * its before_forward hook (shared by tests/unit/test_solver.c and
 * tests/gpu/test_cuda_solver.c), and reading a golden train_log.txt.
 *
 * The batches are golden/<dir>/batches/batch<k>_{data,label}.f32; iteration
 * `iter`, micro-batch `micro` gets batch (iter * iter_size + micro) mod
 * n_batches, so a resumed run sees what an uninterrupted one would. The
 * loss of every forward is recorded (from the "loss" blob, on the host: the
 * CUDA backend copies loss tops down by itself) when the next forward starts;
 * call record_loss once more after the last one. Include after testlib.h,
 * net.h and solver.h.
 */
#ifndef MOKA_TEST_TRAIN_FEED_H
#define MOKA_TEST_TRAIN_FEED_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"
#include "solver.h"
#include "testlib.h"
#include "util.h"

typedef struct Feed {
  int n_batches;
  float *data[8], *label[8];
  size_t n_data;
  /* losses recorded as they are computed: [iter][micro] */
  float loss[16][2];
  int last_iter, last_micro; /* the previous forward, -1 = none yet */
  int error;
} Feed;

static inline int feed_load(Feed *f, const char *dir, int n) {
  memset(f, 0, sizeof *f);
  f->n_batches = n;
  f->last_iter = -1;
  for (int k = 0; k < n; k++) {
    char p[512];
    size_t nd = 0, nl = 0;
    snprintf(p, sizeof p, "%s/batches/batch%d_data.f32", dir, k);
    f->data[k] = read_f32(shared_path(p), &nd);
    snprintf(p, sizeof p, "%s/batches/batch%d_label.f32", dir, k);
    f->label[k] = read_f32(shared_path(p), &nl);
    if (!f->data[k] || !f->label[k]) return 0;
    f->n_data = nd;
  }
  return 1;
}

static inline void feed_free(Feed *f) {
  for (int k = 0; k < f->n_batches; k++) free(f->data[k]), free(f->label[k]);
}

static inline void record_loss(Feed *f, Net *net) {
  if (f->last_iter < 0 || f->last_iter >= 16) return;
  Blob *l = net_blob(net, "loss");
  if (l) f->loss[f->last_iter][f->last_micro] = l->data[0];
}

/* Batch index = iter * iter_size + micro_batch (mod the number of batches):
 * the read position derived from the iteration number. */
static inline int feed_before_forward(Solver *s, int iter, int micro, void *user) {
  Feed *f = user;
  record_loss(f, s->net);
  int k = (iter * s->param->iter_size + micro) % f->n_batches;
  Blob *d = net_blob(s->net, "data"), *l = net_blob(s->net, "label");
  if (!d || !l || d->count != f->n_data) {
    f->error = 1;
    return moka_errorf("feed: no data/label blob of the right size");
  }
  memcpy(d->data, f->data[k], d->count * sizeof(float));
  memcpy(l->data, f->label[k], l->count * sizeof(float));
  f->last_iter = iter;
  f->last_micro = micro;
  return 0;
}

/* train_log.txt: "iter lr loss printed micro..." -> loss[iter], micro[iter][j] */
static inline int read_train_log(const char *file, double *loss, double micro[][2], int max) {
  FILE *f = fopen(shared_path(file), "r");
  if (!f) return 0;
  char line[1024];
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    if (line[0] == '#') continue;
    int it;
    double lr, l, printed, m0 = NAN, m1 = NAN;
    int got = sscanf(line, "%d %lf %lf %lf %lf %lf", &it, &lr, &l, &printed, &m0, &m1);
    if (got < 4 || it < 0 || it >= max) continue;
    loss[it] = l;
    if (micro) micro[it][0] = m0, micro[it][1] = m1;
    if (it + 1 > n) n = it + 1;
  }
  fclose(f);
  return n;
}

#endif
