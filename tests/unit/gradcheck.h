/* gradcheck.h — finite-difference gradient checks for one layer (Caffe's
 * GradientChecker, with the objective accumulated in double).
 *
 * Objective: E = sum_t sum_i w_t[i] * top_t[i] with fixed random weights w
 * (loss layers: the top is the loss and w is its loss weight). The analytic
 * gradient comes from layer_backward with top diff = w; the numerical one
 * from central differences (E(x+h) - E(x-h)) / 2h on every bottom element and
 * every parameter element. A point where the function is not smooth inside
 * the window (ReLU at 0, a max-pool tie; the one-sided slopes disagree) is
 * skipped and counted: the "kink" window.
 *
 * Requires layer.h, testlib.h.
 */
#ifndef MOKA_GRADCHECK_H
#define MOKA_GRADCHECK_H

#include "layer.h"
#include "testlib.h"

typedef struct GradCheckOpts {
  double step;       /* h, default 1e-2 */
  double threshold;  /* relative threshold, default 1e-2 */
  int check_bottom_mask; /* bit i set: check bottom i (default all: -1) */
  int check_params;  /* default 1 */
  unsigned seed;
} GradCheckOpts;

static inline double gc_objective(Layer *l, Backend be, float **w) {
  layer_forward(l, be);
  double e = 0;
  for (int t = 0; t < l->n_top; t++)
    for (size_t i = 0; i < l->top[t]->count; i++) e += (double)w[t][i] * (double)l->top[t]->data[i];
  return e;
}

/* Returns the number of mismatches (0 = pass); prints the first few. */
static inline int gradcheck_layer(Layer *l, Backend be, const GradCheckOpts *o_in) {
  GradCheckOpts o = {1e-2, 1e-2, -1, 1, 1};
  if (o_in) o = *o_in;
  if (o.step == 0) o.step = 1e-2;
  if (o.threshold == 0) o.threshold = 1e-2;
  unsigned s = o.seed ? o.seed : 1;
  float *w[16];
  layer_forward(l, be);
  for (int t = 0; t < l->n_top; t++) {
    w[t] = malloc(l->top[t]->count * sizeof(float) + 4);
    for (size_t i = 0; i < l->top[t]->count; i++) {
      s = s * 1103515245u + 12345u;
      w[t][i] = (float)((s >> 8) & 0xffff) / 65536.0f * 2.0f - 1.0f;
    }
  }
  /* analytic */
  for (int p = 0; p < l->n_params; p++) blob_zero_diff(l->params[p]);
  for (int b = 0; b < l->n_bottom; b++) {
    blob_zero_diff(l->bottom[b]);
    l->propagate_down[b] = (o.check_bottom_mask >> b) & 1;
  }
  layer_forward(l, be);
  for (int t = 0; t < l->n_top; t++) memcpy(l->top[t]->diff, w[t], l->top[t]->count * sizeof(float));
  layer_backward(l, be);
  int nblobs = l->n_bottom + (o.check_params ? l->n_params : 0);
  int bad = 0, skipped = 0, checked = 0;
  for (int k = 0; k < nblobs; k++) {
    Blob *b = k < l->n_bottom ? l->bottom[k] : l->params[k - l->n_bottom];
    if (k < l->n_bottom && !((o.check_bottom_mask >> k) & 1)) continue;
    float *ana = malloc(b->count * sizeof(float) + 4);
    memcpy(ana, b->diff, b->count * sizeof(float));
    for (size_t i = 0; i < b->count; i++) {
      float x0 = b->data[i];
      b->data[i] = (float)(x0 + o.step);
      double ep = gc_objective(l, be, w);
      b->data[i] = (float)(x0 - o.step);
      double em = gc_objective(l, be, w);
      b->data[i] = x0;
      double e0 = gc_objective(l, be, w);
      double num = (ep - em) / (2 * o.step);
      double right = (ep - e0) / o.step, left = (e0 - em) / o.step;
      double scale = fmax(fmax(fabs(num), fabs((double)ana[i])), 1.0);
      if (fabs(right - left) > 4 * o.threshold * fmax(fmax(fabs(right), fabs(left)), 1.0)) {
        skipped++; /* kink inside the window */
        continue;
      }
      checked++;
      if (fabs(num - (double)ana[i]) > o.threshold * scale) {
        if (bad < 5)
          fprintf(stderr, "    gradcheck %s: %s %d elem %zu: analytic %.6g numeric %.6g\n",
                  l->name, k < l->n_bottom ? "bottom" : "param",
                  k < l->n_bottom ? k : k - l->n_bottom, i, (double)ana[i], num);
        bad++;
      }
    }
    free(ana);
  }
  for (int t = 0; t < l->n_top; t++) free(w[t]);
  if (checked == 0 && nblobs > 0) {
    fprintf(stderr, "    gradcheck %s: nothing checked (%d skipped)\n", l->name, skipped);
    return 1;
  }
  return bad;
}

#endif
