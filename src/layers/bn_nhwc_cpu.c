/* bn_nhwc_cpu.c — the fused BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] chain on
 * channels-last bf16 activations, AVX-512 (see bn_nhwc_cpu.h for the math; it is
 * kernels/bn_nhwc.cu's, operation for operation).
 *
 * Passes. Forward, batch statistics: one pass of partial sums (x and x^2 in double per
 * channel, one row of partials per chunk of CHUNK pixels), the chunks added in index order
 * per channel (so the sums, and everything after them, do not depend on the thread count),
 * the statistics and the running statistics, then one elementwise pass that reads x (and r)
 * and writes x_norm, xz (and y). Global statistics: the elementwise pass only. Backward: one
 * pass of partial sums (dz and dz*xhat, dz from dy (+ dy1) through the ReLU mask of y), the
 * parameter gradients and the two constants per channel, then one elementwise pass that
 * recomputes dz and writes dr and dx. The sums need every chunk before any output can be
 * written, so each pass reads its inputs twice.
 *
 * Tasks: a chunk by a range of channels; every pass of a call runs over the same tasks
 * (run_tasks: each thread a run of them). Two kinds of kernels, chosen by C, with the same
 * values (each channel's partial sum adds the chunk's pixels in order; each element's
 * float operations are the same; test_bn_nhwc_cpu passes with either kind everywhere):
 *  - narrow (C <= NARROW): a task is one block of 64 channels (four vectors) over the
 *    chunk's rows, the block's constants and double accumulators in registers. At 64
 *    channels the chunk is one run of memory; at 128, two blocks over the same 32 KiB.
 *  - wide: a task is up to RANGE channels, row after row, in memory's order; each vector's
 *    constants come from L1 and its partial sums are read and written back in the chunk's
 *    row of partials (L1). The blocks' strided columns ran at half this speed at 256
 *    channels and a third at 2048 (rows 4 KiB apart), memory's order alone keeping the
 *    hardware prefetchers ahead; the row kernels lose at 64 channels (0.23 ms against
 *    0.16, ResNet-50 b8's 64 @ 56x56 forward).
 * ResNet-50 b8 on 2 threads (test_bn_nhwc_cpu bench): forward + backward from 0.08 ms
 * (512 @ 7x7) and 0.4 ms (64 @ 56x56) to 4.3-4.8 ms (256 @ 56x56 residual), 1.2-2.2x
 * faster than the fp32 NCHW chain (net_fuse.c) on the same shapes.
 *
 * The double sums: x^2 and dz*xhat are products of floats (24 and 24, or 24 and 8
 * significant bits), exact in double, so a fused multiply-add gives the same sum as the
 * separate multiply and add. Everything in fp32 is separate multiplies, adds and divides
 * in bn_nhwc.cu's order (-std=c11 keeps GCC from contracting; the intrinsics are explicit).
 * The variance's clamp at 0 (bn_nhwc.cu's) never acts on bf16 inputs: their sums in double
 * are exact or nearly, and a channel whose values differ has a variance far above the
 * rounding of q/m - mean^2; it is kept for the same code as the CUDA kernels'.
 */
#include "bn_nhwc_cpu.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "fast.h"
#include "util.h"

enum {
  CHUNK = BN_NHWC_CPU_CHUNK, /* pixels per chunk of the partial sums: a constant, so the
                                sums' order depends on the shape only */
  BLOCK = 64,                /* channels per register block (four vectors) */
  NV = BLOCK / 16,
  NARROW = 128,              /* C up to this: the block kernels */
  RANGE = 512                /* channels per task of the row kernels, at most */
};

#define BNC_INLINE static inline __attribute__((always_inline))

/* The task grid of a (P, C) buffer: chunks by channel ranges of `width` channels. */
typedef struct Grid {
  size_t P, C, chunks, width, ranges, tasks;
  bool narrow;
} Grid;

static Grid grid_of(size_t P, size_t C) {
  Grid gr = {P, C, (P + CHUNK - 1) / CHUNK, C <= NARROW ? BLOCK : RANGE, 0, 0, C <= NARROW};
  gr.ranges = (C + gr.width - 1) / gr.width;
  gr.tasks = gr.chunks * gr.ranges;
  return gr;
}

/* What the passes read and write (NULL: absent). */
typedef struct Pass {
  Grid gr;
  const uint16_t *x, *r, *dy, *dy1, *y, *xn_in;
  uint16_t *xz, *yo, *xn, *dx, *dr;
  const float *stats, *gamma, *beta, *wab; /* wab: wa (C) | wb (C), backward batch */
  int residual;
  bool relu, global;
  float slope, f_pos, f_neg, f_nan;
  double *part; /* (chunks, 2C): one row per chunk, sums (C) | second sums (C) */
} Pass;

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "bf16_simd.h"

/* ---- loads, stores and the per-vector math (bn_nhwc.cu's bnh_* functions) --------------- */

/* 16 bf16 values (k: the live lanes; FULL: all) widened to fp32, exactly. */
BNC_INLINE __m512 ld16(const uint16_t *p, __mmask16 k, const bool FULL) {
  const __m256i h = FULL ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 floats rounded to bf16 (nearest even, denormals to zero) and stored. */
BNC_INLINE void st16(uint16_t *p, __mmask16 k, __m512 v, const bool FULL) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  if (FULL)
    _mm256_storeu_si256((__m256i *)p, h);
  else
    _mm256_mask_storeu_epi16(p, k, h);
}

/* 16 per-channel floats (dead lanes 0). */
BNC_INLINE __m512 ldf(const float *p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }

/* 8 doubles of partial sums (k: the live lanes; all when FULL). */
BNC_INLINE __m512d ld8d(const double *p, __mmask8 k, const bool FULL) {
  return FULL ? _mm512_loadu_pd(p) : _mm512_maskz_loadu_pd(k, p);
}
BNC_INLINE void st8d(double *p, __mmask8 k, __m512d v, const bool FULL) {
  if (FULL)
    _mm512_storeu_pd(p, v);
  else
    _mm512_mask_storeu_pd(p, k, v);
}

/* relu(v) = (v < 0 ? 0 : v) + slope * (0 < v ? 0 : v) on 16 lanes (bnh_relu). */
BNC_INLINE __m512 relu16(__m512 v, __m512 slope) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 mx = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
  const __m512 mn = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(zero, v, _CMP_LT_OQ), v, zero);
  return _mm512_add_ps(mx, _mm512_mul_ps(slope, mn));
}

/* The ReLU factors of bnh_dz's d * ((y > 0) + slope*(y <= 0)): 1 + slope*0 (y > 0),
 * 0 + slope*1 (y <= 0), 0 + slope*0 (y NaN), each computed once in float. */
typedef struct Mask16 {
  __m512 pos, neg, nan;
} Mask16;

/* dz = (dy [+ dy1]) [* the factor of y] at offset o. */
BNC_INLINE __m512 dz16(const uint16_t *dy, const uint16_t *dy1, const uint16_t *y, size_t o,
                       __mmask16 k, const Mask16 *f, const bool FULL) {
  __m512 d = ld16(dy + o, k, FULL);
  if (dy1) d = _mm512_add_ps(d, ld16(dy1 + o, k, FULL));
  if (y) {
    const __m512 yv = ld16(y + o, k, FULL), zero = _mm512_setzero_ps();
    const __m512 g = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(yv, zero, _CMP_GT_OQ), f->nan, f->pos);
    d = _mm512_mul_ps(d, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(yv, zero, _CMP_LE_OQ), g, f->neg));
  }
  return d;
}

/* One vector forward (bnh_forward1): xhat = (x - mean) / sd; z = xhat * g + b; without a
 * residual xz = relu(z) (or z); with one xz = z and y = relu of the Eltwise's sum in its
 * bottom order. Stores x_norm (xn non-NULL), xz and y (residual) at offset o. */
BNC_INLINE void fwd16(const uint16_t *x, const uint16_t *r, uint16_t *xn, uint16_t *xz,
                      uint16_t *y, size_t o, __mmask16 k, __m512 mean, __m512 sd, __m512 g,
                      __m512 b, __m512 slope, int residual, bool relu, const bool FULL) {
  const __m512 xv = ld16(x + o, k, FULL);
  const __m512 rv = residual >= 0 ? ld16(r + o, k, FULL) : _mm512_setzero_ps();
  const __m512 xh = _mm512_div_ps(_mm512_sub_ps(xv, mean), sd);
  if (xn) st16(xn + o, k, xh, FULL);
  const __m512 z = _mm512_add_ps(_mm512_mul_ps(xh, g), b);
  if (residual < 0) {
    st16(xz + o, k, relu ? relu16(z, slope) : z, FULL);
  } else {
    st16(xz + o, k, z, FULL);
    const __m512 sum = residual == 0 ? _mm512_add_ps(z, rv) : _mm512_add_ps(rv, z);
    st16(y + o, k, relu ? relu16(sum, slope) : sum, FULL);
  }
}

/* One vector backward (bnh_grad_apply8): dz, then dr = dz and dx = (dz g - wa - wb xhat) / sd
 * (batch) or dz g / sd (global). Every input is read before dx (possibly dy's memory) and dr
 * are written. */
BNC_INLINE void grad16(const uint16_t *dy, const uint16_t *dy1, const uint16_t *y,
                       const uint16_t *xn, uint16_t *dx, uint16_t *dr, size_t o, __mmask16 k,
                       const Mask16 *f, __m512 g, __m512 sd, __m512 wa, __m512 wb, bool global,
                       const bool FULL) {
  const __m512 dz = dz16(dy, dy1, y, o, k, f, FULL);
  if (!dx) {
    st16(dr + o, k, dz, FULL);
    return;
  }
  const __m512 dbn = _mm512_mul_ps(dz, g);
  const __m512 num =
      global ? dbn
             : _mm512_sub_ps(_mm512_sub_ps(dbn, wa), _mm512_mul_ps(wb, ld16(xn + o, k, FULL)));
  if (dr) st16(dr + o, k, dz, FULL);
  st16(dx + o, k, _mm512_div_ps(num, sd), FULL);
}

/* The two values a vector adds to its partial sums: forward x and x (sums of x and x^2),
 * backward dz and xhat (sums of dz and dz*xhat). */
BNC_INLINE void sum_terms(const Pass *a, const Mask16 *f, size_t o, __mmask16 k, __m512 *u,
                          __m512 *w, const bool FULL) {
  if (!a->dy) {
    *u = *w = ld16(a->x + o, k, FULL);
  } else {
    *u = dz16(a->dy, a->dy1, a->y, o, k, f, FULL);
    *w = ld16(a->xn_in + o, k, FULL);
  }
}

/* s += u, q += u*w on 16 lanes, in double (two vectors of 8 each). */
BNC_INLINE void acc16(__m512d s[2], __m512d q[2], __m512 u, __m512 w) {
  const __m512d u0 = _mm512_cvtps_pd(_mm512_castps512_ps256(u));
  const __m512d u1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(u, 1));
  const __m512d w0 = _mm512_cvtps_pd(_mm512_castps512_ps256(w));
  const __m512d w1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(w, 1));
  s[0] = _mm512_add_pd(s[0], u0);
  s[1] = _mm512_add_pd(s[1], u1);
  q[0] = _mm512_fmadd_pd(u0, w0, q[0]);
  q[1] = _mm512_fmadd_pd(u1, w1, q[1]);
}

/* ---- narrow: one block of 64 channels over rows [p0, p1), in registers ------------------ */

/* k: the live lanes of the block's vectors (all, when FULL). */
BNC_INLINE void sums_block(const Pass *a, const Mask16 *f, size_t p0, size_t p1, size_t c0,
                           const __mmask16 k[NV], double *s, double *q, const bool FULL) {
  const size_t C = a->gr.C;
  __m512d as[NV][2], aq[NV][2];
  for (int v = 0; v < NV; v++) as[v][0] = as[v][1] = aq[v][0] = aq[v][1] = _mm512_setzero_pd();
  for (size_t p = p0; p < p1; p++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      if (!FULL && !k[v]) continue;
      __m512 u, w;
      sum_terms(a, f, p * C + c0 + 16 * (size_t)v, k[v], &u, &w, FULL);
      acc16(as[v], aq[v], u, w);
    }
  for (int v = 0; v < NV; v++) {
    const size_t c = c0 + 16 * (size_t)v;
    const __mmask8 lo = (__mmask8)(k[v] & 0xFF), hi = (__mmask8)(k[v] >> 8);
    st8d(s + c, lo, as[v][0], FULL), st8d(s + c + 8, hi, as[v][1], FULL);
    st8d(q + c, lo, aq[v][0], FULL), st8d(q + c + 8, hi, aq[v][1], FULL);
  }
}

BNC_INLINE void apply_block(const Pass *a, size_t p0, size_t p1, size_t c0, const __mmask16 k[NV],
                            const bool FULL) {
  const size_t C = a->gr.C;
  const uint16_t *x = a->x, *r = a->r;
  uint16_t *xn = a->xn, *xz = a->xz, *y = a->yo;
  const int residual = a->residual;
  const bool relu = a->relu;
  const __m512 slope = _mm512_set1_ps(a->slope);
  __m512 mean[NV], sd[NV], g[NV], b[NV];
  for (int v = 0; v < NV; v++) {
    const size_t c = c0 + 16 * (size_t)v;
    mean[v] = ldf(a->stats + c, k[v]);
    sd[v] = ldf(a->stats + 2 * C + c, k[v]);
    g[v] = ldf(a->gamma + c, k[v]);
    b[v] = a->beta ? ldf(a->beta + c, k[v]) : _mm512_setzero_ps();
  }
  for (size_t p = p0; p < p1; p++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      if (!FULL && !k[v]) continue;
      fwd16(x, r, xn, xz, y, p * C + c0 + 16 * (size_t)v, k[v], mean[v], sd[v], g[v], b[v],
            slope, residual, relu, FULL);
    }
}

BNC_INLINE void grad_block(const Pass *a, const Mask16 *f, size_t p0, size_t p1, size_t c0,
                           const __mmask16 k[NV], const bool FULL) {
  const size_t C = a->gr.C;
  const uint16_t *dy = a->dy, *dy1 = a->dy1, *y = a->y, *xn = a->xn_in;
  uint16_t *dx = a->dx, *dr = a->dr;
  const bool global = a->global, wants = dx && !global;
  const __m512 zero = _mm512_setzero_ps();
  __m512 g[NV], sd[NV], wa[NV], wb[NV];
  for (int v = 0; v < NV; v++) {
    const size_t c = c0 + 16 * (size_t)v;
    g[v] = dx ? ldf(a->gamma + c, k[v]) : zero;
    sd[v] = dx ? ldf(a->stats + 2 * C + c, k[v]) : zero;
    wa[v] = wants ? ldf(a->wab + c, k[v]) : zero;
    wb[v] = wants ? ldf(a->wab + C + c, k[v]) : zero;
  }
  for (size_t p = p0; p < p1; p++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      if (!FULL && !k[v]) continue;
      grad16(dy, dy1, y, xn, dx, dr, p * C + c0 + 16 * (size_t)v, k[v], f, g[v], sd[v], wa[v],
             wb[v], global, FULL);
    }
}

/* ---- wide: channels [c0, c1) row after row, full vectors then a masked tail ------------- */

/* The row's vectors: BODY(c, k, FULL) for c = c0, c0 + 16, ... */
#define ROW_VECTORS(c0, c1, BODY)                               \
  do {                                                          \
    const size_t cf_ = (c0) + ((c1) - (c0)) / 16 * 16;          \
    for (size_t c = (c0); c < cf_; c += 16) BODY(c, 0xFFFF, true); \
    if (cf_ < (c1)) BODY(cf_, bf16_mask16((int)((c1) - cf_)), false); \
  } while (0)

BNC_INLINE void sums_vec(const Pass *a, const Mask16 *f, size_t o, size_t c, __mmask16 k,
                         double *s, double *q, const bool FULL) {
  __m512 u, w;
  sum_terms(a, f, o, k, &u, &w, FULL);
  const __mmask8 lo = (__mmask8)(k & 0xFF), hi = (__mmask8)(k >> 8);
  __m512d as[2] = {ld8d(s + c, lo, FULL), ld8d(s + c + 8, hi, FULL)};
  __m512d aq[2] = {ld8d(q + c, lo, FULL), ld8d(q + c + 8, hi, FULL)};
  acc16(as, aq, u, w);
  st8d(s + c, lo, as[0], FULL), st8d(s + c + 8, hi, as[1], FULL);
  st8d(q + c, lo, aq[0], FULL), st8d(q + c + 8, hi, aq[1], FULL);
}

BNC_INLINE void sums_rows(const Pass *a, const Mask16 *f, size_t p0, size_t p1, size_t c0,
                          size_t c1, double *s, double *q) {
  const size_t C = a->gr.C;
  for (size_t c = c0; c < c1; c++) s[c] = q[c] = 0;
  for (size_t p = p0; p < p1; p++) {
#define SUMS_BODY(c, k, FULL) sums_vec(a, f, p * C + (c), c, k, s, q, FULL)
    ROW_VECTORS(c0, c1, SUMS_BODY);
#undef SUMS_BODY
  }
}

BNC_INLINE void apply_rows(const Pass *a, size_t p0, size_t p1, size_t c0, size_t c1) {
  const size_t C = a->gr.C;
  const uint16_t *x = a->x, *r = a->r;
  uint16_t *xn = a->xn, *xz = a->xz, *y = a->yo;
  const float *mean = a->stats, *sd = a->stats + 2 * C, *gm = a->gamma, *be = a->beta;
  const int residual = a->residual;
  const bool relu = a->relu;
  const __m512 slope = _mm512_set1_ps(a->slope);
  for (size_t p = p0; p < p1; p++) {
#define APPLY_BODY(c, k, FULL)                                                              \
  fwd16(x, r, xn, xz, y, p * C + (c), k, ldf(mean + (c), k), ldf(sd + (c), k), ldf(gm + (c), k), \
        be ? ldf(be + (c), k) : _mm512_setzero_ps(), slope, residual, relu, FULL)
    ROW_VECTORS(c0, c1, APPLY_BODY);
#undef APPLY_BODY
  }
}

BNC_INLINE void grad_rows(const Pass *a, const Mask16 *f, size_t p0, size_t p1, size_t c0,
                          size_t c1) {
  const size_t C = a->gr.C;
  const uint16_t *dy = a->dy, *dy1 = a->dy1, *y = a->y, *xn = a->xn_in;
  uint16_t *dx = a->dx, *dr = a->dr;
  const float *gm = a->gamma, *sd = dx ? a->stats + 2 * C : NULL;
  const float *wa = a->wab, *wb = a->wab ? a->wab + C : NULL;
  const bool global = a->global, wants = dx && !global;
  const __m512 zero = _mm512_setzero_ps();
  for (size_t p = p0; p < p1; p++) {
#define GRAD_BODY(c, k, FULL)                                                                \
  grad16(dy, dy1, y, xn, dx, dr, p * C + (c), k, f, dx ? ldf(gm + (c), k) : zero,           \
         dx ? ldf(sd + (c), k) : zero, wants ? ldf(wa + (c), k) : zero,                     \
         wants ? ldf(wb + (c), k) : zero, global, FULL)
    ROW_VECTORS(c0, c1, GRAD_BODY);
#undef GRAD_BODY
  }
}

/* ---- tasks --------------------------------------------------------------------------------- */

enum { PASS_SUMS = 0, PASS_APPLY = 1, PASS_GRAD = 2 };

/* Task t of a pass: chunk t / ranges, channels [c0, c1) of range t % ranges. */
BNC_INLINE void task_run(const Pass *a, size_t t, const int kind) {
  const Grid *gr = &a->gr;
  const size_t j = t / gr->ranges, c0 = (t % gr->ranges) * gr->width;
  const size_t c1 = gr->C - c0 < gr->width ? gr->C : c0 + gr->width;
  const size_t p0 = j * CHUNK, p1 = p0 + CHUNK < gr->P ? p0 + CHUNK : gr->P;
  double *s = a->part ? a->part + j * 2 * gr->C : NULL, *q = s ? s + gr->C : NULL;
  const Mask16 f = {_mm512_set1_ps(a->f_pos), _mm512_set1_ps(a->f_neg), _mm512_set1_ps(a->f_nan)};
  if (!gr->narrow) {
    if (kind == PASS_SUMS) sums_rows(a, &f, p0, p1, c0, c1, s, q);
    if (kind == PASS_APPLY) apply_rows(a, p0, p1, c0, c1);
    if (kind == PASS_GRAD) grad_rows(a, &f, p0, p1, c0, c1);
    return;
  }
  __mmask16 k[NV];
  for (int v = 0; v < NV; v++) k[v] = bf16_mask16((int)(c1 - c0) - 16 * v);
  if (c1 - c0 == BLOCK) {
    if (kind == PASS_SUMS) sums_block(a, &f, p0, p1, c0, k, s, q, true);
    if (kind == PASS_APPLY) apply_block(a, p0, p1, c0, k, true);
    if (kind == PASS_GRAD) grad_block(a, &f, p0, p1, c0, k, true);
  } else {
    if (kind == PASS_SUMS) sums_block(a, &f, p0, p1, c0, k, s, q, false);
    if (kind == PASS_APPLY) apply_block(a, p0, p1, c0, k, false);
    if (kind == PASS_GRAD) grad_block(a, &f, p0, p1, c0, k, false);
  }
}

static void sums_task(const Pass *a, size_t t) { task_run(a, t, PASS_SUMS); }
static void apply_task(const Pass *a, size_t t) { task_run(a, t, PASS_APPLY); }
static void grad_task(const Pass *a, size_t t) { task_run(a, t, PASS_GRAD); }

#pragma GCC pop_options

/* ---- the passes over all tasks, and the per-channel steps ------------------------------ */

/* The tasks on the pool: each thread one run of consecutive tasks, the runs cut at equal
 * shares of the values (the last chunk may be short: at 7x7, batch 8, 392 pixels are
 * chunks of 128, 128, 128 and 8), so the threads mostly hold whole chunks, rows of their
 * own. Two threads on different channels of the same rows write to the cache lines where
 * their ranges meet (rows need not start on a line) and pass those lines back and forth: a
 * dynamic schedule, or tasks ordered range by range, ran ResNet-50's 1024- and 2048-channel
 * chains at half the speed and 128 channels at a tenth. */
static void run_tasks(const Pass *a, void (*fn)(const Pass *, size_t)) {
  const Grid *gr = &a->gr;
  const size_t n = gr->tasks, total = gr->P * gr->C;
  if (total < FAST_GRAIN || n < 2 || fast_threads() < 2) {
    for (size_t t = 0; t < n; t++) fn(a, t);
    return;
  }
#pragma omp parallel
  {
    const size_t T = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
    const size_t lo = total / T * id + total % T * id / T;
    const size_t hi = id + 1 == T ? total : total / T * (id + 1) + total % T * (id + 1) / T;
    for (size_t t = 0; t < n; t++) {
      /* the values before task t: its chunk's predecessors, then its range's in the chunk */
      const size_t j = t / gr->ranges, p0 = j * CHUNK;
      const size_t rows = gr->P - p0 < CHUNK ? gr->P - p0 : CHUNK;
      const size_t start = p0 * gr->C + rows * (t % gr->ranges) * gr->width;
      if (start >= lo && start < hi) fn(a, t);
    }
  }
}

/* The partials' scratch: (chunks, 2C) doubles, then the per-channel totals (2C doubles),
 * then the backward's wa | wb (2C floats). */
static double *scratch(const Grid *gr, const char *what) {
  const size_t doubles = (gr->chunks + 1) * 2 * gr->C;
  return (double *)fast_workspace(FAST_WS_AUX, 2 * doubles + 2 * gr->C, what);
}

/* tot (2C) = the partials' rows added in chunk order, per channel. */
static void add_chunks(const Grid *gr, const double *part, double *tot) {
  const size_t n = 2 * gr->C;
  for (size_t i = 0; i < n; i++) tot[i] = 0;
  for (size_t j = 0; j < gr->chunks; j++)
    for (size_t i = 0; i < n; i++) tot[i] += part[j * n + i];
}

static int check_geom(const BnNhwcGeom *g, const char *what) {
  if (g->C == 0 || g->C % 8)
    return moka_errorf("internal error: the channels-last bf16 BatchNorm chain (%s) takes "
                       "channel counts that are multiples of 8, not %zu",
                       what, g->C);
  if (g->residual < -1 || g->residual > 1)
    return moka_errorf("internal error: the channels-last bf16 BatchNorm chain (%s): residual "
                       "%d (want -1, 0 or 1)",
                       what, g->residual);
  size_t P, n;
  if (!moka_mul_size(g->N, g->S, &P) || !moka_mul_size(P, g->C, &n) || n > SIZE_MAX / 4)
    return moka_errorf("internal error: the channels-last bf16 BatchNorm chain (%s): "
                       "(%zu, %zu, %zu) overflows",
                       what, g->N, g->C, g->S);
  return 0;
}

int bn_nhwc_cpu_forward(const BnNhwcGeom *g, const uint16_t *x, uint16_t *xz, uint16_t *y, const uint16_t *r,
                        uint16_t *x_norm, float *stats, float *b0, float *b1, float *b2,
                        const float *gamma, const float *beta) {
  if (check_geom(g, "forward")) return -1;
  if (!x || !xz || !stats || !b0 || !b1 || !b2 || !gamma)
    return moka_errorf("internal error: the channels-last bf16 BatchNorm chain's forward needs "
                       "x, xz, stats, the statistics blobs and gamma");
  if (g->residual >= 0 && (!y || !r))
    return moka_errorf("internal error: the channels-last bf16 BatchNorm chain with a residual "
                       "needs y and r");
  const size_t C = g->C, P = g->N * g->S, m = P;
  if (P == 0) return 0;
  Pass a = {.gr = grid_of(P, C), .x = x, .r = g->residual >= 0 ? r : NULL, .xz = xz,
            .yo = g->residual >= 0 ? y : NULL, .xn = x_norm, .stats = stats, .gamma = gamma,
            .beta = beta, .residual = g->residual, .relu = g->has_relu, .slope = g->slope};
  float *mean = stats, *var = stats + C, *sd = stats + 2 * C;
  if (g->use_global) {
    const float f = b2[0] == 0.0f ? 0.0f : 1.0f / b2[0];
    for (size_t c = 0; c < C; c++) {
      mean[c] = f * b0[c];
      var[c] = f * b1[c];
      sd[c] = sqrtf(var[c] + g->eps);
    }
  } else {
    a.part = scratch(&a.gr, "BatchNorm chain partial sums");
    if (!a.part) return -1;
    run_tasks(&a, sums_task);
    double *tot = a.part + a.gr.chunks * 2 * C;
    add_chunks(&a.gr, a.part, tot);
    for (size_t c = 0; c < C; c++) {
      const double mu = tot[c] / (double)m;
      double v = tot[C + c] / (double)m - mu * mu;
      if (v < 0) v = 0;
      mean[c] = (float)mu;
      var[c] = (float)v;
      sd[c] = sqrtf(var[c] + g->eps);
      /* the running statistics, Caffe's (two roundings, no FMA) */
      b0[c] = g->maf * b0[c] + mean[c];
      b1[c] = g->maf * b1[c] + g->bias_correction * var[c];
    }
    b2[0] = b2[0] * g->maf + 1.0f;
    a.part = NULL;
  }
  run_tasks(&a, apply_task);
  return 0;
}

int bn_nhwc_cpu_backward(const BnNhwcGeom *g, const uint16_t *dy, const uint16_t *dy1, const uint16_t *y,
                         const uint16_t *x_norm, const float *stats, const float *gamma,
                         uint16_t *dx, uint16_t *dr, float *dgamma, float *dbeta) {
  if (check_geom(g, "backward")) return -1;
  const bool sums = dgamma || dbeta || (dx && !g->use_global);
  if (!dy || (g->relu_bw && !y) || (sums && !x_norm) || ((sums || dx) && !gamma) ||
      (dx && !stats))
    return moka_errorf("internal error: the channels-last bf16 BatchNorm chain's backward needs "
                       "dy, y (ReLU mask), x_norm (sums), gamma and stats");
  const size_t C = g->C, P = g->N * g->S, m = P;
  if (P == 0) return 0;
  const float sl = g->slope;
  Pass a = {.gr = grid_of(P, C), .dy = dy, .dy1 = dy1, .y = g->relu_bw ? y : NULL,
            .xn_in = x_norm, .dx = dx, .dr = dr, .stats = stats, .gamma = gamma,
            .global = g->use_global, .slope = sl,
            /* ReLU's factor for y > 0, y <= 0 and NaN: (y > 0) + slope*(y <= 0) in float */
            .f_pos = 1.0f + sl * 0.0f, .f_neg = 0.0f + sl * 1.0f, .f_nan = 0.0f + sl * 0.0f};
  if (sums) {
    a.part = scratch(&a.gr, "BatchNorm chain gradient sums");
    if (!a.part) return -1;
    run_tasks(&a, sums_task);
    double *tot = a.part + a.gr.chunks * 2 * C;
    float *wab = (float *)(tot + 2 * C);
    add_chunks(&a.gr, a.part, tot);
    for (size_t c = 0; c < C; c++) {
      const double sdz = tot[c], sdzx = tot[C + c], gc = (double)gamma[c];
      if (dgamma) dgamma[c] += (float)sdzx;
      if (dbeta) dbeta[c] += (float)sdz;
      wab[c] = (float)(gc * sdz / (double)m);
      wab[C + c] = (float)(gc * sdzx / (double)m);
    }
    a.wab = wab;
    a.part = NULL;
  }
  if (!dx && !dr) return 0;
  run_tasks(&a, grad_task);
  return 0;
}
