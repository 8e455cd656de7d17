/* split_fast.c — Split on the fast CPU backend: the copies and the gradient
 * sum threaded, the sum fused into one pass in the reference's order
 * ((dy0 + dy1) + dy2 ...: identical results). In a net, the tops usually
 * share the bottom's data (net_fuse_split_share, before this forward), and
 * forward copies nothing.
 */
#include <string.h>

#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* dst = src, in parallel blocks. */
static void copy_parallel(float *dst, const float *src, size_t n) {
  const size_t block = 1 << 16;
  const long nb = (long)((n + block - 1) / block);
#pragma omp parallel for schedule(static) if (n >= FAST_GRAIN)
  for (long b = 0; b < nb; b++) {
    size_t lo = (size_t)b * block, len = n - lo < block ? n - lo : block;
    memcpy(dst + lo, src + lo, len * sizeof(float));
  }
}

int split_forward_fast(Layer *l) {
  const Blob *x = l->bottom[0];
  /* A top that shares the bottom's data (the net's doing, as Caffe's
   * ShareData: src/net_fuse.c) needs no copy. */
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t] != x && l->top[t]->data != x->data)
      copy_parallel(l->top[t]->data, x->data, x->count);
  return 0;
}

int split_backward_fast(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  Blob *x = l->bottom[0];
  float *dx = x->diff; /* (any) */
  const size_t n = x->count;
  const float *d0 = l->top[0]->diff;
  if (l->n_top == 1) {
    if (l->top[0] != x) copy_parallel(dx, d0, n);
    return 0;
  }
  const float *d1 = l->top[1]->diff;
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
  for (size_t i = 0; i < n; i++) dx[i] = d0[i] + d1[i];
  for (int t = 2; t < l->n_top; t++) {
    const float *dy = l->top[t]->diff; /* (any) */
#pragma omp parallel for simd schedule(static) if (n >= FAST_GRAIN)
    for (size_t i = 0; i < n; i++) dx[i] += dy[i];
  }
  return 0;
}
