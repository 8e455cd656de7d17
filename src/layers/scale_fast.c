/* scale_fast.c — Scale (with its bias) on the fast CPU backend.
 *
 * The reference (scale.c) makes up to four passes over the blob in forward
 * (copy of the input when in place, y = x*s, y += b) and three in backward.
 * Here, when the bias has the scale's geometry (the usual case: both per
 * channel), forward is one pass over (outer, D) planes in parallel:
 *   x_copy = x (in place only);  y = x*s[d] + b[d]
 * which is the reference's float operations (x*s rounded, then + b rounded:
 * moka builds with -std=c11, which does not contract a*b+c into an FMA).
 * Backward is one parallel loop over channels d: the bias and scale
 * gradient sums (double) and dx = dy*s[d] in the same pass. Any other
 * geometry (scale from a second bottom, a bias with other axes) runs the
 * same steps as the reference, each threaded.
 */
#include <string.h>

#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "scale_priv.h"
#include "util.h"

static bool bias_like_scale(const ScalePriv *p) {
  return p->bias_idx >= 0 && p->b_outer == p->outer && p->b_dim == p->scale_dim &&
         p->b_inner == p->inner;
}

int scale_forward_fast(Layer *l) {
  ScalePriv *p = l->priv;
  const float *x = l->bottom[0]->data; /* (outer, D, inner) */
  float *y = l->top[0]->data;          /* (outer, D, inner), may be x */
  const float *s = (l->n_bottom > 1 ? l->bottom[1] : l->params[0])->data; /* (D) */
  const bool in_place = y == x;
  float *xc = in_place ? p->x_copy : NULL; /* (outer, D, inner) */
  const size_t D = p->scale_dim, I = p->inner, count = l->bottom[0]->count;
  (void)count; /* read only by the OpenMP if clause */
  const bool fused_bias = bias_like_scale(p);
  const float *b = fused_bias ? l->params[p->bias_idx]->data : NULL; /* (D) */
#pragma omp parallel for collapse(2) schedule(static) if (count >= FAST_GRAIN)
  for (size_t n = 0; n < p->outer; n++)
    for (size_t d = 0; d < D; d++) {
      const size_t o = (n * D + d) * I;
      const float sd = s[d];
      if (xc) memcpy(xc + o, x + o, I * sizeof(float));
      if (b) {
        const float bd = b[d];
#pragma omp simd
        for (size_t i = 0; i < I; i++) y[o + i] = x[o + i] * sd + bd;
      } else {
#pragma omp simd
        for (size_t i = 0; i < I; i++) y[o + i] = x[o + i] * sd;
      }
    }
  if (p->bias_idx >= 0 && !fused_bias) {
    const float *bb = l->params[p->bias_idx]->data; /* (BD) */
    const size_t BD = p->b_dim, BI = p->b_inner;
#pragma omp parallel for collapse(2) schedule(static) if (count >= FAST_GRAIN)
    for (size_t n = 0; n < p->b_outer; n++)
      for (size_t d = 0; d < BD; d++) {
        float *yy = y + (n * BD + d) * BI;
        const float bd = bb[d];
#pragma omp simd
        for (size_t i = 0; i < BI; i++) yy[i] += bd;
      }
  }
  return 0;
}

int scale_backward_fast(Layer *l) {
  ScalePriv *p = l->priv;
  const float *dy = l->top[0]->diff; /* (outer, D, inner) */
  const bool in_place = l->top[0] == l->bottom[0];
  const size_t D = p->scale_dim, I = p->inner, count = l->top[0]->count;
  (void)count; /* read only by the OpenMP if clause */
  const bool scale_is_param = l->n_bottom == 1;
  /* Parameter gradients are skipped at lr_mult 0, as in the reference. */
  const bool want_db = p->bias_idx >= 0 && layer_param_needs_grad(l, p->bias_idx);
  const bool fused_bias = bias_like_scale(p);
  /* Bias gradient on its own when its geometry differs (before dx may
   * overwrite dy in place). */
  if (want_db && !fused_bias) {
    float *db = l->params[p->bias_idx]->diff; /* (BD) */
    const size_t BD = p->b_dim, BI = p->b_inner;
#pragma omp parallel for schedule(static) if (count >= FAST_GRAIN)
    for (size_t d = 0; d < BD; d++) {
      double acc = 0;
      for (size_t n = 0; n < p->b_outer; n++) {
        const float *g = dy + (n * BD + d) * BI;
#pragma omp simd reduction(+ : acc)
        for (size_t i = 0; i < BI; i++) acc += g[i];
      }
      db[d] += (float)acc;
    }
  }
  const bool want_ds = scale_is_param ? layer_param_needs_grad(l, 0) : l->propagate_down[1];
  const float *x = in_place ? p->x_copy : l->bottom[0]->data; /* (outer, D, inner) */
  float *ds = scale_is_param ? l->params[0]->diff : l->bottom[1]->diff; /* (D) */
  float *db = want_db && fused_bias ? l->params[p->bias_idx]->diff : NULL; /* (D) */
  const float *s = (l->n_bottom > 1 ? l->bottom[1] : l->params[0])->data; /* (D) */
  float *dx = l->propagate_down[0] ? l->bottom[0]->diff : NULL; /* (outer, D, inner), may be dy */
  /* One pass per channel: the sums read dy[k] before dx[k] overwrites it. */
#pragma omp parallel for schedule(dynamic, 4) if (count >= FAST_GRAIN)
  for (size_t d = 0; d < D; d++) {
    double acc_s = 0, acc_b = 0;
    const float sd = s[d];
    for (size_t n = 0; n < p->outer; n++) {
      const size_t o = (n * D + d) * I;
      if (want_ds) {
#pragma omp simd reduction(+ : acc_s)
        for (size_t i = 0; i < I; i++) acc_s += (double)dy[o + i] * (double)x[o + i];
      }
      if (db) {
#pragma omp simd reduction(+ : acc_b)
        for (size_t i = 0; i < I; i++) acc_b += dy[o + i];
      }
      if (dx) {
#pragma omp simd
        for (size_t i = 0; i < I; i++) dx[o + i] = dy[o + i] * sd;
      }
    }
    if (want_ds) {
      if (scale_is_param)
        ds[d] += (float)acc_s;
      else
        ds[d] = (float)acc_s;
    }
    if (db) db[d] += (float)acc_b;
  }
  return 0;
}
