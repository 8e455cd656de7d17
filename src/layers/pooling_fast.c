/* pooling_fast.c — Pooling (MAX, AVE) on the fast CPU backend: the
 * reference's window loops (pooling.c, pool_window from pool_geom.h), run in
 * parallel over the (n, c) planes. Each plane is computed exactly as the
 * reference computes it (same comparisons, same double sums in the same
 * order), so the results, the argmax and the gradients are identical.
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#include "fast.h"
#include "conv_nhwc_bf16.h"
#include "fast_layers.h"
#include "net_bf16.h"
#include "layer.h"
#include "pool_geom.h"
#include "pooling_priv.h"
#include "util.h"

/* ---- MAX, 16 outputs at a time (AVX-512) ---------------------------------------------
 *
 * Along a row of outputs, the outputs whose windows lie wholly inside the
 * image columns take the same comparisons as the scalar loop, lane by lane:
 * the window scanned in (h, w) order, a value replacing the maximum when
 * greater (so the first of equal maxima wins, NaN never does). Column
 * strides 1 and 2 (the even lanes of 32 loaded values); anything else, and
 * the clipped outputs at the edges, stay scalar. */
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

/* Outputs [pw0, pw0+n) (n <= 16) of row ph: x (H,W) the plane, rows
 * [h0, h1) of the windows; y, am, mt the row's outputs (mt may be NULL). */
static void max_row16(const float *x, int W, int h0, int h1, int kw, int sw, int pad_w, int pw0,
                      int n, float *y, int *am, float *mt) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __mmask16 kn = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
  /* source values read per window column: sw*(n-1)+1 (the last lane's) */
  const int need = sw * (n - 1) + 1;
  const __mmask16 ka = need >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << need) - 1);
  const __mmask16 kb = need <= 16 ? 0 : (__mmask16)((1u << (need - 16)) - 1);
  const int wb = pw0 * sw - pad_w; /* lane 0's first window column */
  __m512 m = _mm512_set1_ps(-FLT_MAX);
  __m512i arg = _mm512_set1_epi32(-1);
  const __m512i lane_w = _mm512_mullo_epi32(lane, _mm512_set1_epi32(sw));
  for (int h = h0; h < h1; h++)
    for (int k = 0; k < kw; k++) {
      const float *src = x + (size_t)h * W + wb + k;
      __m512 v;
      if (sw == 1) {
        v = _mm512_maskz_loadu_ps(kn, src);
      } else {
        const __m512 a = _mm512_maskz_loadu_ps(ka, src), b = _mm512_maskz_loadu_ps(kb, src + 16);
        v = _mm512_permutex2var_ps(a, even, b);
      }
      const __mmask16 gt = _mm512_mask_cmp_ps_mask(kn, v, m, _CMP_GT_OQ);
      m = _mm512_mask_blend_ps(gt, m, v);
      arg = _mm512_mask_blend_epi32(gt, arg,
                                    _mm512_add_epi32(lane_w, _mm512_set1_epi32(h * W + wb + k)));
    }
  _mm512_mask_storeu_ps(y, kn, m);
  _mm512_mask_storeu_epi32(am, kn, arg);
  if (mt) _mm512_mask_storeu_ps(mt, kn, _mm512_cvtepi32_ps(arg));
}

#pragma GCC pop_options

/* ---- bf16 channels-last blobs (--precision=bf16, src/net_bf16.h) ----------------------
 *
 * Global AVE pooling (ResNet's pool5; the CUDA backend's kernels/pool_nhwc.cu, the same
 * definitions): y (N, C) fp32 = the mean over the S pixels, summed in fp32 in pixel order and
 * divided by S (as Caffe's AVE divides by its window); back, dx (N*S, C) bf16 = dy / S,
 * rounded as every bf16 store (nhwc_bf16_round).
 *
 * MAX pooling (ResNet's pool1), bf16 (N, H, W, C) to bf16 (N, PH, PW, C): the fp32 path's
 * definitions channel by channel, 16 channels at a time: each window scanned in (h, w)
 * order, a value replacing the maximum when greater (the first of equal maxima wins, NaN
 * never does), from -FLT_MAX; the maximum is one of the bf16 inputs, stored as it is, and
 * its place in the window, (h - ph*SH + PH) * KW + (w - pw*SW + PW), kept as one byte per
 * output and channel in PoolPriv.argmax's buffer, laid out (N, PH, PW, C) (255: none; at
 * most 255 window places). Back, each input pixel's dx is the sum, in fp32 and in output
 * order (ph, then pw: the fp32 path's order), of the dy of the outputs whose maximum it was,
 * rounded to bf16 once: computed pixel by pixel from the at most ceil(kernel/stride)^2
 * outputs whose windows hold it, so every dx is written once and nothing is zeroed first. */
static inline float bf16_f32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static bool pool_is_max(const PoolPriv *p) {
  return p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
}

static int pool_nhwc_check(const Layer *l) {
  const PoolPriv *p = l->priv;
  if (!pool_cpu_bf16_nhwc_capable(l) || l->top[0]->host_bf16 != pool_is_max(p))
    return moka_errorf("internal error: pooling '%s' has a bf16 channels-last bottom but is "
                       "neither a global AVE pooling into fp32 nor a MAX pooling into bf16",
                       l->name);
  return 0;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

#include "bf16_simd.h"

static int max_forward_nhwc(Layer *l) {
  PoolPriv *p = l->priv;
  const int N = p->num, C = p->channels, H = p->height, W = p->width, PH = p->out_h,
            PW = p->out_w;
  const uint16_t *x = (const uint16_t *)l->bottom[0]->data;
  uint16_t *y = (uint16_t *)l->top[0]->data;
  uint8_t *am = (uint8_t *)p->argmax; /* (N, PH, PW, C) window places */
  const size_t work = (size_t)N * PH * PW * C * p->kernel_h * p->kernel_w;
  (void)work; /* read only by the OpenMP if clause */
#pragma omp parallel for collapse(2) schedule(static) if (work >= FAST_GRAIN)
  for (int n = 0; n < N; n++)
    for (int ph = 0; ph < PH; ph++) {
      int h0, h1;
      (void)pool_window(ph, p->stride_h, p->pad_h, p->kernel_h, H, &h0, &h1);
      for (int pw = 0; pw < PW; pw++) {
        int w0, w1;
        (void)pool_window(pw, p->stride_w, p->pad_w, p->kernel_w, W, &w0, &w1);
        const size_t o = (((size_t)n * PH + ph) * PW + pw) * C;
        const int hs = ph * p->stride_h - p->pad_h, ws = pw * p->stride_w - p->pad_w;
        for (int c = 0; c < C; c += 16) {
          const __mmask16 k = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
          __m512 m = _mm512_set1_ps(-FLT_MAX);
          __m512i arg = _mm512_set1_epi32(255);
          for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++) {
              const __m512 v = bf16x16_load_f32(x + (((size_t)n * H + h) * W + w) * C + c, k);
              const __mmask16 gt = _mm512_mask_cmp_ps_mask(k, v, m, _CMP_GT_OQ);
              m = _mm512_mask_blend_ps(gt, m, v);
              arg = _mm512_mask_blend_epi32(gt, arg,
                                            _mm512_set1_epi32((h - hs) * p->kernel_w + w - ws));
            }
          _mm256_mask_storeu_epi16(y + o + c, k, (__m256i)_mm512_cvtneps_pbh(m));
          _mm_mask_storeu_epi8(am + o + c, k, _mm512_cvtepi32_epi8(arg));
        }
      }
    }
  return 0;
}

/* Image n's dx: its outputs in order (ph, then pw), each 16 channels' dy added to the fp32
 * sums of the window places its bytes name (at most one place per channel: every pixel's
 * sum in output order). The sums of the input rows live windows reach are a ring of
 * max_ring_rows rows of acc, each W*C + 16 floats (rows a multiple of 4 KiB apart would
 * make every load look like it hits the store to the row above: 3x slower); a row is zeroed
 * when a window first reaches it and rounded into dx once no later window does. */
static int max_ring_rows(const PoolPriv *p) { return p->kernel_h + p->stride_h; }

static void max_backward_image(const PoolPriv *p, const uint8_t *am, const uint16_t *dy,
                               float *ring, uint16_t *dx) {
  const int C = p->channels, H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  const int R = max_ring_rows(p);
  const size_t row = (size_t)W * C, ld = row + 16;
  int zeroed = 0, done = 0; /* rows [0, zeroed) zeroed, [0, done) written to dx */
  for (int ph = 0; ph <= PH; ph++) {
    /* rows no window from ph on reaches: done (untouched ones are zeros) */
    const int start = ph * p->stride_h - p->pad_h, next = ph < PH ? (start > 0 ? start : 0) : H;
    for (; done < next && done < H; done++) {
      uint16_t *d = dx + (size_t)done * row;
      const float *a = ring + (size_t)(done % R) * ld;
      if (done >= zeroed) {
        memset(d, 0, row * sizeof(uint16_t));
        continue;
      }
      for (size_t i = 0; i < row; i += 16) {
        const __mmask16 k = row - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (row - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(k, a + i);
        _mm256_mask_storeu_epi16(d + i, k, (__m256i)_mm512_cvtneps_pbh(v));
      }
    }
    if (ph == PH) break;
    int h0, h1;
    (void)pool_window(ph, p->stride_h, p->pad_h, p->kernel_h, H, &h0, &h1);
    if (zeroed < done) zeroed = done;
    for (; zeroed < h1; zeroed++) memset(ring + (size_t)(zeroed % R) * ld, 0, row * sizeof(float));
    const int hs = ph * p->stride_h - p->pad_h;
    for (int pw = 0; pw < PW; pw++) {
      int w0, w1;
      (void)pool_window(pw, p->stride_w, p->pad_w, p->kernel_w, W, &w0, &w1);
      const int ws = pw * p->stride_w - p->pad_w;
      const size_t o = ((size_t)ph * PW + pw) * C;
      for (int c = 0; c < C; c += 16) {
        const __mmask16 k = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
        const __m128i places = _mm_maskz_loadu_epi8(k, am + o + c);
        const __m512 g = bf16x16_load_f32(dy + o + c, k);
        for (int h = h0; h < h1; h++)
          for (int w = w0; w < w1; w++) {
            /* no branch (which pixels hit is data: mispredicted half the time) */
            const __mmask16 hit = _mm_mask_cmpeq_epi8_mask(
                k, places, _mm_set1_epi8((char)((h - hs) * p->kernel_w + w - ws)));
            float *a = ring + (size_t)(h % R) * ld + (size_t)w * C + c;
            const __m512 cur = _mm512_maskz_loadu_ps(k, a);
            _mm512_mask_storeu_ps(a, k, _mm512_mask_add_ps(cur, hit, cur, g));
          }
      }
    }
  }
}

static int max_backward_nhwc(Layer *l) {
  const PoolPriv *p = l->priv;
  const int N = p->num, C = p->channels, H = p->height, W = p->width, PH = p->out_h,
            PW = p->out_w;
  const uint16_t *dy = (const uint16_t *)l->top[0]->diff;
  uint16_t *dx = (uint16_t *)l->bottom[0]->diff;
  const uint8_t *am = (const uint8_t *)p->argmax;
  const size_t img = (size_t)H * W * C, out = (size_t)PH * PW * C;
  int rc = 0;

#pragma omp parallel for schedule(static) if ((size_t)N * img >= FAST_GRAIN) reduction(| : rc)
  for (int n = 0; n < N; n++) {
    float *acc = fast_workspace(FAST_WS_COL, (size_t)max_ring_rows(p) * ((size_t)W * C + 16),
                                "pooling gradient sums");
    if (!acc) {
      rc |= 1;
      continue;
    }
    max_backward_image(p, am + n * out, dy + n * out, acc, dx + n * img);
  }
  return rc ? -1 : 0;
}

#pragma GCC pop_options

static int pool_forward_nhwc(Layer *l) {
  const PoolPriv *p = l->priv;
  if (pool_nhwc_check(l)) return -1;
  if (pool_is_max(p)) return max_forward_nhwc(l);
  const size_t N = p->num, C = p->channels, S = (size_t)p->height * p->width;
  const uint16_t *x = (const uint16_t *)l->bottom[0]->data;
  float *y = l->top[0]->data;
#pragma omp parallel for schedule(static) if (N * C * S >= FAST_GRAIN)
  for (size_t n = 0; n < N; n++) {
    float *yn = y + n * C;
    for (size_t c = 0; c < C; c++) yn[c] = 0.0f;
    for (size_t s = 0; s < S; s++) {
      const uint16_t *xs = x + (n * S + s) * C;
#pragma omp simd
      for (size_t c = 0; c < C; c++) yn[c] += bf16_f32(xs[c]);
    }
    for (size_t c = 0; c < C; c++) yn[c] /= (float)S;
  }
  return 0;
}

static int pool_backward_nhwc(Layer *l) {
  const PoolPriv *p = l->priv;
  if (pool_nhwc_check(l)) return -1;
  if (pool_is_max(p)) return max_backward_nhwc(l);
  const size_t N = p->num, C = p->channels, S = (size_t)p->height * p->width;
  const float *dy = l->top[0]->diff;
  uint16_t *dx = (uint16_t *)l->bottom[0]->diff;
  if (N * S * C == 0) return 0;
  /* an image's row dy / S, rounded once (nhwc_bf16_round), copied to each of its pixels */
  float *row = fast_workspace(FAST_WS_COL, C, "pooling gradient row");
  if (!row) return -1;
  for (size_t n = 0; n < N; n++) {
    uint16_t *d0 = dx + n * S * C;
    for (size_t c = 0; c < C; c++) row[c] = dy[n * C + c] / (float)S;
    nhwc_bf16_round(row, C, d0);
#pragma omp parallel for schedule(static) if (S * C >= FAST_GRAIN)
    for (size_t s = 1; s < S; s++) memcpy(d0 + s * C, d0, C * sizeof(uint16_t));
  }
  return 0;
}

bool pool_cpu_bf16_nhwc_capable(const Layer *l) {
  const PoolPriv *p = l->priv;
  const bool max = pool_is_max(p) && p->kernel_h * p->kernel_w < 255; /* places in a byte */
  return l->n_top == 1 && (pool_is_global_ave(p) || max) && p->channels % 8 == 0 &&
         fast_bf16_supported();
}

bool pool_cpu_bf16_nhwc_top(const Layer *l) { return pool_is_max((const PoolPriv *)l->priv); }

int pool_forward_fast(Layer *l) {
  PoolPriv *p = l->priv;
  if (l->bottom[0]->host_bf16) return pool_forward_nhwc(l);
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  const bool is_max = p->method == CAFFE__POOLING_PARAMETER__POOL_METHOD__MAX;
  float *mask_top = l->n_top > 1 ? l->top[1]->data : NULL; /* (N,C,PH,PW) argmax as float */
  const int planes = p->num * p->channels;
  const size_t work = (size_t)planes * PH * PW * p->kernel_h * p->kernel_w;
  (void)work; /* read only by the OpenMP if clause */
  const bool vec = is_max && (p->stride_w == 1 || p->stride_w == 2) && fast_avx512_supported();
#pragma omp parallel for schedule(static) if (work >= FAST_GRAIN)
  for (int nc = 0; nc < planes; nc++) {
    const float *x = l->bottom[0]->data + (size_t)nc * H * W; /* (H,W) */
    float *y = l->top[0]->data + (size_t)nc * PH * PW;        /* (PH,PW) */
    int *am = is_max ? p->argmax + (size_t)nc * PH * PW : NULL; /* (PH,PW) */
    for (int ph = 0; ph < PH; ph++) {
      int h0, h1, w0, w1;
      int eh = pool_window(ph, p->stride_h, p->pad_h, p->kernel_h, H, &h0, &h1);
      /* [v0, v1): outputs whose windows lie inside the image columns, done
       * 16 at a time (see max_row16); the others below. */
      int v0 = 0, v1 = 0;
      if (vec) {
        /* The input rows that output row ph + 2 adds, fetched now (measured:
         * pool1 of ResNet-50 at batch 8, 3.7-4.6 -> 1.3-3.1 ms; the
         * hardware's prefetch does not run ahead of these short rows). */
        for (int hp = h1 + p->stride_h; hp < h1 + 2 * p->stride_h && hp < H; hp++)
          for (int q = 0; q < W; q += 16) __builtin_prefetch(x + (size_t)hp * W + q);
        const int sw = p->stride_w, kw = p->kernel_w;
        v0 = (p->pad_w + sw - 1) / sw;
        v1 = W - kw + p->pad_w >= 0 ? (W - kw + p->pad_w) / sw + 1 : 0;
        if (v1 > PW) v1 = PW;
        if (v0 > v1) v0 = v1;
        for (int pw = v0; pw < v1; pw += 16)
          max_row16(x, W, h0, h1, kw, sw, p->pad_w, pw, v1 - pw < 16 ? v1 - pw : 16,
                    y + ph * PW + pw, am + ph * PW + pw,
                    mask_top ? mask_top + (size_t)nc * PH * PW + ph * PW + pw : NULL);
      }
      for (int pw = 0; pw < PW; pw++) {
        if (pw == v0 && v1 > v0) pw = v1; /* done above */
        if (pw >= PW) break;
        int ew = pool_window(pw, p->stride_w, p->pad_w, p->kernel_w, W, &w0, &w1);
        const int o = ph * PW + pw;
        if (is_max) {
          float m = -FLT_MAX;
          int arg = -1;
          for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++)
              if (x[h * W + w] > m) {
                m = x[h * W + w];
                arg = h * W + w;
              }
          y[o] = m;
          am[o] = arg;
          if (mask_top) mask_top[(size_t)nc * PH * PW + o] = (float)arg;
        } else {
          double s = 0.0;
          for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++) s += x[h * W + w];
          y[o] = (float)(s / ((double)eh * ew));
        }
      }
    }
  }
  return 0;
}

int pool_backward_fast(Layer *l) {
  PoolPriv *p = l->priv;
  if (!l->propagate_down[0]) return 0;
  if (l->bottom[0]->host_bf16) return pool_backward_nhwc(l);
  const int H = p->height, W = p->width, PH = p->out_h, PW = p->out_w;
  const int planes = p->num * p->channels;
  const size_t work = (size_t)planes * H * W;
  (void)work; /* read only by the OpenMP if clause */
#pragma omp parallel for schedule(static) if (work >= FAST_GRAIN)
  for (int nc = 0; nc < planes; nc++) {
    float *dx = l->bottom[0]->diff + (size_t)nc * H * W; /* (H,W) */
    memset(dx, 0, (size_t)H * W * sizeof(float));
    pool_backward_plane(p, nc, l->top[0]->diff + (size_t)nc * PH * PW, dx); /* dy (PH,PW) */
  }
  return 0;
}
