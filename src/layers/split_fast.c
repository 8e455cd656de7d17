/* split_fast.c — Split on the fast CPU backend: the copies and the gradient
 * sum threaded, the sum fused into one pass in the reference's order
 * ((dy0 + dy1) + dy2 ...: identical results). In a net, the tops usually
 * share the bottom's data (net_fuse_split_share, before this forward), and
 * forward copies nothing. bf16 channels-last blobs (src/net_bf16.h: the
 * bottom and the tops all bf16, or none): the same sum in fp32, rounded to
 * bf16 once (ResNet's pool1 Split).
 */
#include <stdint.h>
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

static int split_bf16_check(const Layer *l) {
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t]->host_bf16 != l->bottom[0]->host_bf16 ||
        (l->bottom[0]->host_bf16 && l->bottom[0]->count % 2))
      return moka_errorf("internal error: Split '%s' mixes bf16 channels-last and fp32 blobs",
                         l->name);
  return 0;
}

int split_forward_fast(Layer *l) {
  const Blob *x = l->bottom[0];
  if (split_bf16_check(l)) return -1;
  /* bf16: the count's values in the first half of the buffer */
  const size_t n = x->host_bf16 ? x->count / 2 : x->count;
  /* A top that shares the bottom's data (the net's doing, as Caffe's
   * ShareData: src/net_fuse.c) needs no copy. */
  for (int t = 0; t < l->n_top; t++)
    if (l->top[t] != x && l->top[t]->data != x->data) copy_parallel(l->top[t]->data, x->data, n);
  return 0;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
#include <immintrin.h>

#include "bf16_simd.h"

/* dx = bf16((dy0 + dy1) + dy2 ...), the sums in fp32. */
static void sum_bf16(const Layer *l, uint16_t *dx, size_t n) {
  const size_t blocks = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= FAST_GRAIN)
  for (size_t b = 0; b < blocks; b++) {
    const size_t i1 = (b + 1) * 4096 < n ? (b + 1) * 4096 : n;
    for (size_t i = b * 4096; i < i1; i += 16) {
      const __mmask16 k = i1 - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (i1 - i)) - 1);
      __m512 v = bf16x16_load_f32((const uint16_t *)l->top[0]->diff + i, k);
      for (int t = 1; t < l->n_top; t++)
        v = _mm512_add_ps(v, bf16x16_load_f32((const uint16_t *)l->top[t]->diff + i, k));
      _mm256_mask_storeu_epi16(dx + i, k, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

#pragma GCC pop_options

int split_backward_fast(Layer *l) {
  if (!l->propagate_down[0]) return 0;
  Blob *x = l->bottom[0];
  if (split_bf16_check(l)) return -1;
  float *dx = x->diff; /* (any) */
  const size_t n = x->count;
  const float *d0 = l->top[0]->diff;
  if (l->n_top == 1) {
    if (l->top[0] != x) copy_parallel(dx, d0, x->host_bf16 ? n / 2 : n);
    return 0;
  }
  if (x->host_bf16) {
    sum_bf16(l, (uint16_t *)dx, n);
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
