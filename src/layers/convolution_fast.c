/* convolution_fast.c — the Convolution layer on the fast CPU backend.
 *
 * The reference (convolution.c) runs one im2col and one GEMM per image; for
 * ResNet's late layers (14x14 and 7x7 outputs) those GEMMs are too thin for
 * OpenBLAS to run fast, and each step waits for the previous one. Here the
 * batch is cut into chunks of nc images, and a chunk goes through ONE GEMM
 * per group:
 *
 *   col (IC*KH*KW, nc*S)   im2col of images n0..n0+nc side by side
 *                          (S = OH*OW; column j*S + s is image n0+j, pixel s)
 *   Y   (OC, nc*S)        = W (OC, IC/G*KH*KW) x col, per group
 *   top (N,OC,OH,OW)      <- Y transposed back, bias added
 *
 * A chunk has about FAST_CONV_COLS columns; with one image (OH*OW large
 * enough) the GEMM writes straight into the top. A 1x1 stride-1
 * convolution has no im2col: its columns are the input itself (one image),
 * or the chunk's images gathered side by side.
 *
 * Backward, per chunk: dY gathered to (OC, nc*S) (or read in place for one
 * image), the weight gradient as one GEMM over the chunk
 *   dW_g (OC/G, kdim) += dY_g (OC/G, nc*S) x col_g^T,
 * then the data gradient as one GEMM
 *   dcol_g (kdim, nc*S) = W_g^T x dY_g
 * and col2im. Parameter gradients are skipped when lr_mult is 0 (Caffe's
 * param_propagate_down); the bias gradient is the reference's loop.
 *
 * Threads (conv_plan): when the batch has at least as many images as the
 * pool has threads, the chunks themselves run in parallel, each on one
 * thread with single-threaded GEMMs, so a chunk's im2col, GEMM and transpose
 * follow each other on one core with no barrier in between; in backward
 * thread t takes chunks t, t+T, ... and accumulates its weight gradient in
 * its own buffer, the buffers being added in thread order afterwards (the
 * same sums on every run). With a smaller batch (classify: batch 1), or
 * weights large beside the chunks' columns (ResNet's 7x7 layers), the
 * chunks run one after another and every step uses the pool (fast_gemm
 * splits the GEMM). Buffers come from the per-thread workspace (fast.h):
 * one column buffer, one output/gradient buffer, one weight-gradient buffer
 * per thread, shared by every convolution.
 *
 * Agreement with the reference: the same products summed in another order
 * (GEMM blocking, chunked weight-gradient accumulation), so results differ
 * by float rounding only; im2col/col2im, the bias and the transposes are
 * exact.
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conv_winograd.h" /* Winograd hook: 3x3 stride-1 convolutions in fp32 */
#include "convolution_bf16.h"
#include "convolution_nhwc.h"
#include "convolution_priv.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* A GEMM should have about this many columns (output pixels x images):
 * enough for OpenBLAS's kernels, few enough that the column buffer stays in
 * cache (measured on ResNet-50's layers, one thread: 512 beats 2048 and
 * 8192 by 5-30% and per-image GEMMs on 7x7 and 14x14 outputs by 10-25%). */
#define FAST_CONV_COLS 512

/* Images per GEMM for this layer (when the chunks run one after another). */
static int chunk_images(const ConvPriv *p) {
  const int S = p->out_h * p->out_w, cols = FAST_CONV_COLS;
  int nc = S >= cols ? 1 : (cols + S - 1) / S;
  return nc > p->num ? p->num : nc;
}

/* Fill the KH*KW rows of one input channel for output rows [oh0, oh1):
 * plane (H,W) -> rows (KH*KW, ld), columns [0, (oh1-oh0)*OW) of each row
 * (Caffe's im2col order). */
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

/* dst[i] = src[2*i], i < n (a stride-2 row of im2col): 16 at a time, the
 * even lanes of 32 loaded values; the last pieces masked, never reading past
 * src[2*(n-1)]. */
static void gather_stride2(float *dst, const float *src, int n) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  int i = 0;
  for (; i + 16 <= n && 2 * i + 32 <= 2 * n - 1; i += 16) {
    const __m512 a = _mm512_loadu_ps(src + 2 * i), b = _mm512_loadu_ps(src + 2 * i + 16);
    _mm512_storeu_ps(dst + i, _mm512_permutex2var_ps(a, even, b));
  }
  for (; i < n; i += 16) {
    const int m = n - i < 16 ? n - i : 16;  /* outputs in this piece */
    const int need = 2 * (m - 1) + 1;       /* source values read */
    const __mmask16 ka = need >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << need) - 1);
    const __mmask16 kb = need <= 16 ? 0 : (__mmask16)((1u << (need - 16)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(ka, src + 2 * i);
    const __m512 b = _mm512_maskz_loadu_ps(kb, src + 2 * i + 16);
    _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << m) - 1), _mm512_permutex2var_ps(a, even, b));
  }
}

/* ---- stride 1, output rows as wide as the input's: im2col and col2im by shifts ----
 *
 * With stride 1 and OW == W ("same" padding across: ResNet's 3x3 pad 1
 * layers, GoogLeNet's 3x3 and 5x5), output pixel s = oh*OW + ow and kernel
 * tap kk = (kh, kw) read the input pixel s + d_kk of the flat plane,
 * d_kk = (kh*DH - PH)*W + kw*DW - PW, whenever that pixel lies inside the
 * image. So im2col's row kk is the plane shifted by d_kk with the pixels
 * from outside zeroed (16 values per masked load and store), and col2im's
 * plane is, value by value, the sum over the taps of the rows shifted back,
 * added in registers in the reference's tap order and stored once: no
 * memset, no read-modify-write per tap and no copy per output row (ResNet's
 * 7x7 layers have rows of 7 values). Which lanes lie inside, per tap and 16
 * values: ConvPriv.shift_masks, made once per geometry by shift_prepare.
 * Masked-off lanes are neither read nor written (their addresses may lie
 * outside the plane: integer arithmetic, as fill_phases_avx512). */

static bool shift_eligible(const ConvPriv *p) {
  return p->stride_h == 1 && p->stride_w == 1 && p->out_w == p->width && !p->is_1x1 &&
         (size_t)p->height * p->width <= (1u << 28) && fast_avx512_supported();
}

static bool shift_ready(const ConvPriv *p) {
  return p->shift_masks && p->shift_h == p->height && p->shift_w == p->width;
}

/* d_kk: the offset in the flat input plane of tap kk's pixel from the output pixel's. */
static ptrdiff_t shift_tap(const ConvPriv *p, int kk) {
  const ptrdiff_t kh = kk / p->kernel_w, kw = kk % p->kernel_w;
  return (kh * p->dilation_h - p->pad_h) * (ptrdiff_t)p->width + kw * p->dilation_w - p->pad_w;
}

static inline const float *shifted(const float *base, ptrdiff_t off) {
  return (const float *)((uintptr_t)base + (uintptr_t)(off * (ptrdiff_t)sizeof(float)));
}

/* The masks for the current geometry (no-op when made already or not
 * eligible): (KK, PS) for im2col rows, then (KK, PT) for col2im planes. */
static int shift_prepare(ConvPriv *p) {
  if (!shift_eligible(p) || shift_ready(p)) return 0;
  const int KK = p->kernel_h * p->kernel_w, OH = p->out_h, OW = p->out_w;
  const int H = p->height, W = p->width;
  const size_t S = (size_t)OH * OW, HW = (size_t)H * W, PS = (S + 15) / 16, PT = (HW + 15) / 16;
  size_t n = 0;
  if (!moka_mul_size((size_t)KK, PS + PT, &n))
    return moka_errorf("convolution shift masks: size overflows");
  uint16_t *m = moka_calloc(n ? n : 1, sizeof *m);
  if (!m) return moka_error_prefix("convolution shift masks (%zu values)", n);
  uint16_t *mt = m + (size_t)KK * PS;
  for (int kk = 0; kk < KK; kk++) {
    const long dh = (long)(kk / p->kernel_w) * p->dilation_h - p->pad_h;
    const long dw = (long)(kk % p->kernel_w) * p->dilation_w - p->pad_w;
    for (size_t s = 0; s < S; s++) { /* output pixel s reads (oh + dh, ow + dw) */
      const long ih = (long)(s / OW) + dh, iw = (long)(s % OW) + dw;
      if (ih >= 0 && ih < H && iw >= 0 && iw < W) m[kk * PS + s / 16] |= (uint16_t)(1u << (s % 16));
    }
    for (size_t t = 0; t < HW; t++) { /* input pixel t gets output pixel (ih - dh, iw - dw) */
      const long oh = (long)(t / W) - dh, ow = (long)(t % W) - dw;
      if (oh >= 0 && oh < OH && ow >= 0 && ow < OW) mt[kk * PT + t / 16] |= (uint16_t)(1u << (t % 16));
    }
  }
  free(p->shift_masks);
  p->shift_masks = m;
  p->shift_h = H;
  p->shift_w = W;
  return 0;
}

/* im2col of one channel's whole plane by shifts: rows (KK, ld), columns [0, OH*OW). */
static void im2col_shift(const ConvPriv *p, const float *plane, float *rows, size_t ld) {
  const int KK = p->kernel_h * p->kernel_w;
  const size_t S = (size_t)p->out_h * p->out_w, PS = (S + 15) / 16;
  const __mmask16 tail = (__mmask16)(S % 16 ? (1u << (S % 16)) - 1 : 0xFFFF);
  for (int kk = 0; kk < KK; kk++) {
    const uint16_t *mk = p->shift_masks + (size_t)kk * PS;
    const float *src = shifted(plane, shift_tap(p, kk)); /* src[s]: output pixel s's input */
    float *row = rows + (size_t)kk * ld;
    for (size_t q = 0; q + 1 < PS; q++)
      _mm512_storeu_ps(row + 16 * q, _mm512_maskz_loadu_ps(mk[q], shifted(src, 16 * (ptrdiff_t)q)));
    const size_t q = PS - 1;
    _mm512_mask_storeu_ps(row + 16 * q, tail,
                          _mm512_maskz_loadu_ps(mk[q], shifted(src, 16 * (ptrdiff_t)q)));
  }
}

/* col2im of one channel by shifts: plane (H*W) = sum over the taps, in
 * order, of rows (KK, ld) shifted back. Each value's sum starts from +0
 * and adds the taps that reach it in the reference's order; a tap that
 * does not reach it adds +0 here (the sum is never -0, so that changes
 * nothing): the reference's values exactly. */
static void col2im_shift(const ConvPriv *p, const float *rows, size_t ld, float *plane) {
  const int KK = p->kernel_h * p->kernel_w;
  const size_t S = (size_t)p->out_h * p->out_w, PS = (S + 15) / 16;
  const size_t HW = (size_t)p->height * p->width, PT = (HW + 15) / 16;
  const uint16_t *mt = p->shift_masks + (size_t)KK * PS;
  const __mmask16 tail = (__mmask16)(HW % 16 ? (1u << (HW % 16)) - 1 : 0xFFFF);
  for (size_t q = 0; q < PT; q++) {
    __m512 acc = _mm512_setzero_ps();
    for (int kk = 0; kk < KK; kk++) {
      const __mmask16 m = mt[(size_t)kk * PT + q];
      if (!m) continue;
      const float *src = shifted(rows + (size_t)kk * ld, 16 * (ptrdiff_t)q - shift_tap(p, kk));
      acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, src));
    }
    _mm512_mask_storeu_ps(plane + 16 * q, q + 1 < PT ? (__mmask16)0xFFFF : tail, acc);
  }
}

/* col2im of one channel of a 1x1 stride-2 layer without padding: the
 * plane's even rows take their row's values at the even columns, with
 * zeros between (8 values spread to 16 lanes by one permute), and every
 * other value is 0. +0 is added to each value, as the reference's sum
 * 0 + v does (-0 becomes +0). */
static void col2im_1x1_stride2(const ConvPriv *p, const float *row, float *plane) {
  const int H = p->height, W = p->width, OW = p->out_w;
  const __m512i spread = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512 zero = _mm512_setzero_ps();
  for (int ih = 0; ih < H; ih++) {
    float *dst = plane + (size_t)ih * W;
    if (ih % 2) {
      memset(dst, 0, (size_t)W * sizeof(float));
      continue;
    }
    const float *src = row + (size_t)(ih / 2) * OW; /* (OW): input columns 0, 2, 4, ... */
    for (int iw = 0; iw < W; iw += 16) {
      const int n = W - iw < 16 ? W - iw : 16; /* values of the plane's row */
      const int k = (n + 1) / 2;               /* of the output row, from src[iw/2] */
      const __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << k) - 1), src + iw / 2);
      const __m512 e = _mm512_maskz_permutexvar_ps((__mmask16)0x5555, spread, v);
      _mm512_mask_storeu_ps(dst + iw, (__mmask16)((1u << n) - 1), _mm512_add_ps(e, zero));
    }
  }
}

#pragma GCC pop_options

static void im2col_channel(const ConvPriv *p, const float *plane, float *rows, size_t ld, int oh0,
                           int oh1) {
  if (oh0 == 0 && oh1 == p->out_h && shift_ready(p)) {
    im2col_shift(p, plane, rows, ld);
    return;
  }
  const bool avx512 = fast_avx512_supported();
  const int H = p->height, W = p->width, OW = p->out_w;
  const int SH = p->stride_h, SW = p->stride_w;
  for (int kh = 0; kh < p->kernel_h; kh++)
    for (int kw = 0; kw < p->kernel_w; kw++) {
      float *row = rows + (size_t)(kh * p->kernel_w + kw) * ld; /* ((oh1-oh0)*OW) */
      const int iw0 = kw * p->dilation_w - p->pad_w;            /* iw = ow*SW + iw0 */
      /* Output columns whose input column lies inside the image: [lo, hi). */
      int lo = iw0 >= 0 ? 0 : (-iw0 + SW - 1) / SW;
      int hi = W - 1 - iw0 < 0 ? 0 : (W - 1 - iw0) / SW + 1;
      if (hi > OW) hi = OW;
      if (lo > hi) lo = hi;
      for (int oh = oh0; oh < oh1; oh++) {
        const int ih = oh * SH - p->pad_h + kh * p->dilation_h;
        float *dst = row + (size_t)(oh - oh0) * OW; /* (OW) */
        if (ih < 0 || ih >= H) {
          memset(dst, 0, (size_t)OW * sizeof(float));
          continue;
        }
        const float *src = plane + (size_t)ih * W; /* input row ih: src[ow*SW + iw0] */
        for (int ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
        if (SW == 1) {
          if (hi > lo) memcpy(dst + lo, src + lo + iw0, (size_t)(hi - lo) * sizeof(float));
        } else if (SW == 2 && avx512) {
          gather_stride2(dst + lo, src + 2 * lo + iw0, hi - lo);
        } else {
          for (int ow = lo; ow < hi; ow++) dst[ow] = src[ow * SW + iw0];
        }
        for (int ow = hi; ow < OW; ow++) dst[ow] = 0.0f;
      }
    }
}

/* The inverse for one channel: plane (H,W) = sum of the KH*KW rows mapped
 * back, in the reference's order (kh, kw, oh, ow), so the sums are exact
 * copies of moka_col2im's. */
static void col2im_channel(const ConvPriv *p, const float *rows, size_t ld, float *plane) {
  if (shift_ready(p)) {
    col2im_shift(p, rows, ld, plane);
    return;
  }
  if (p->kernel_h == 1 && p->kernel_w == 1 && p->stride_h == 2 && p->stride_w == 2 &&
      p->pad_h == 0 && p->pad_w == 0 && fast_avx512_supported()) {
    col2im_1x1_stride2(p, rows, plane);
    return;
  }
  const int H = p->height, W = p->width, OH = p->out_h, OW = p->out_w;
  const int SH = p->stride_h, SW = p->stride_w;
  memset(plane, 0, (size_t)H * W * sizeof(float));
  for (int kh = 0; kh < p->kernel_h; kh++)
    for (int kw = 0; kw < p->kernel_w; kw++) {
      const float *row = rows + (size_t)(kh * p->kernel_w + kw) * ld;
      const int iw0 = kw * p->dilation_w - p->pad_w;
      int lo = iw0 >= 0 ? 0 : (-iw0 + SW - 1) / SW;
      int hi = W - 1 - iw0 < 0 ? 0 : (W - 1 - iw0) / SW + 1;
      if (hi > OW) hi = OW;
      if (lo > hi) lo = hi;
      for (int oh = 0; oh < OH; oh++) {
        const int ih = oh * SH - p->pad_h + kh * p->dilation_h;
        if (ih < 0 || ih >= H) continue;
        const float *src = row + (size_t)oh * OW;
        float *dst = plane + (size_t)ih * W; /* input row ih: dst[ow*SW + iw0] */
        if (SW == 1) {
#pragma omp simd
          for (int ow = lo; ow < hi; ow++) dst[ow + iw0] += src[ow];
        } else {
          for (int ow = lo; ow < hi; ow++) dst[ow * SW + iw0] += src[ow];
        }
      }
    }
}

/* The GEMM's right-hand side for images [n0, n0+nc): im2col (or, 1x1, a
 * gather of the inputs) into col (IC*KH*KW, nc*S). par: use the thread pool
 * (false inside a parallel region). */
static void fill_columns(const ConvPriv *p, const float *x, int n0, int nc, float *col,
                         bool par) {
  const int C = p->channels, KK = p->kernel_h * p->kernel_w;
  const size_t S = (size_t)p->out_h * p->out_w, ld = (size_t)nc * S;
  const size_t in_img = (size_t)C * p->height * p->width;
#pragma omp parallel for collapse(2) schedule(static) if (par && ld * C * KK >= FAST_GRAIN)
  for (int j = 0; j < nc; j++)
    for (int c = 0; c < C; c++) {
      const float *plane = x + (size_t)(n0 + j) * in_img + (size_t)c * p->height * p->width;
      float *rows = col + (size_t)c * KK * ld + (size_t)j * S;
      if (p->is_1x1)
        memcpy(rows, plane, S * sizeof(float));
      else
        im2col_channel(p, plane, rows, ld, 0, p->out_h);
    }
}

/* dcol (IC*KH*KW, nc*S) back to images [n0, n0+nc) of dx (N,IC,H,W): col2im
 * (or, 1x1, a scatter). */
static void scatter_columns(const ConvPriv *p, const float *dcol, int n0, int nc, float *dx,
                            bool par) {
  const int C = p->channels, KK = p->kernel_h * p->kernel_w;
  const size_t S = (size_t)p->out_h * p->out_w, ld = (size_t)nc * S;
  const size_t in_img = (size_t)C * p->height * p->width;
#pragma omp parallel for collapse(2) schedule(static) if (par && ld * C * KK >= FAST_GRAIN)
  for (int j = 0; j < nc; j++)
    for (int c = 0; c < C; c++) {
      const float *rows = dcol + (size_t)c * KK * ld + (size_t)j * S;
      float *plane = dx + (size_t)(n0 + j) * in_img + (size_t)c * p->height * p->width;
      if (p->is_1x1)
        memcpy(plane, rows, S * sizeof(float));
      else
        col2im_channel(p, rows, ld, plane);
    }
}

/* (OC, nc*S) <-> (nc, OC, S): copy block [n0, n0+nc) of a (N,OC,S) blob to
 * or from the GEMM layout, adding bias (may be NULL) on the way out. */
static void to_nchw(const float *Y, const float *bias, int OC, size_t S, int nc, float *top,
                    bool par) {
  const size_t ld = (size_t)nc * S;
#pragma omp parallel for collapse(2) schedule(static) if (par && ld * OC >= FAST_GRAIN)
  for (int j = 0; j < nc; j++)
    for (int oc = 0; oc < OC; oc++) {
      const float *src = Y + (size_t)oc * ld + (size_t)j * S;
      float *dst = top + ((size_t)j * OC + oc) * S;
      if (bias) {
        const float b = bias[oc];
#pragma omp simd
        for (size_t s = 0; s < S; s++) dst[s] = src[s] + b;
      } else {
        memcpy(dst, src, S * sizeof(float));
      }
    }
}

static void from_nchw(const float *blob, int OC, size_t S, int nc, float *Y, bool par) {
  const size_t ld = (size_t)nc * S;
#pragma omp parallel for collapse(2) schedule(static) if (par && ld * OC >= FAST_GRAIN)
  for (int j = 0; j < nc; j++)
    for (int oc = 0; oc < OC; oc++)
      memcpy(Y + (size_t)oc * ld + (size_t)j * S, blob + ((size_t)j * OC + oc) * S,
             S * sizeof(float));
}

/* One image whose column matrix is large (ResNet's 7x7 stride-2 first
 * layer: 147 x 12544 values, 7 MiB) goes through in blocks of output rows,
 * each block's columns small enough to stay in the core's cache between
 * im2col and the GEMM (measured, conv1 of ResNet-50 at batch 8 in the
 * training step: forward + backward 14.5 -> 12.5 ms; 128 KiB to 1 MiB
 * blocks alike on their own). */
#define FAST_CONV_BLOCK_BYTES (512 * 1024)

/* Output rows per block for one image (out_h: no blocking). */
static int block_rows(const ConvPriv *p) {
  const size_t kdim = (size_t)p->channels * p->kernel_h * p->kernel_w;
  const size_t row_bytes = kdim * p->out_w * sizeof(float);
  if (p->is_1x1 || row_bytes * p->out_h <= FAST_CONV_BLOCK_BYTES) return p->out_h;
  const size_t r = FAST_CONV_BLOCK_BYTES / row_bytes;
  return r < 1 ? 1 : (int)r;
}

/* im2col of image n, output rows [oh0, oh1), into col (IC*KH*KW, (oh1-oh0)*OW). */
static void fill_block(const ConvPriv *p, const float *x, int n, int oh0, int oh1, float *col,
                       bool par) {
  const int C = p->channels, KK = p->kernel_h * p->kernel_w;
  const size_t ld = (size_t)(oh1 - oh0) * p->out_w, plane = (size_t)p->height * p->width;
#pragma omp parallel for schedule(static) if (par && ld * C * KK >= FAST_GRAIN)
  for (int c = 0; c < C; c++)
    im2col_channel(p, x + ((size_t)n * C + c) * plane, col + (size_t)c * KK * ld, ld, oh0, oh1);
}

/* One image in blocks of output rows (see block_rows), each block's im2col
 * then its GEMMs: forward (top (N,OC,OH,OW) = W x col, or the frozen
 * weights' packed copy wpack), or the weight gradient (wacc: dW_g +=
 * dY_g[:, block] x col_g(block)^T, dy (N,OC,OH,OW)). */
static int run_blocks(const ConvPriv *p, const float *x, const float *weight, const float *wpack,
                      float *top, const float *dy, float *wacc, int n, int rows, bool par) {
  const int G = p->group, OC = p->num_output, OCg = OC / G, C = p->channels;
  const int KK = p->kernel_h * p->kernel_w, kdim = C / G * KK;
  const size_t S = (size_t)p->out_h * p->out_w;
  float *col = fast_workspace(FAST_WS_COL, (size_t)C * KK * rows * p->out_w,
                              "convolution column buffer");
  if (!col) return -1;
  const size_t img = (size_t)n * OC * S;
  for (int oh0 = 0; oh0 < p->out_h; oh0 += rows) {
    const int oh1 = oh0 + rows < p->out_h ? oh0 + rows : p->out_h;
    const int cols = (oh1 - oh0) * p->out_w;
    fill_block(p, x, n, oh0, oh1, col, par);
    const size_t b0 = img + (size_t)oh0 * p->out_w; /* the block's columns, rows S apart */
    if (!wacc && wpack) {
      if (fast_gemm_f32_prepacked(OC, cols, kdim, wpack, col, cols, top + b0, (int)S)) return -1;
      continue;
    }
    for (int g = 0; g < G; g++) {
      const float *colg = col + (size_t)g * kdim * cols;
      const size_t bg = b0 + (size_t)g * OCg * S;
      if (wacc ? fast_gemm(false, true, OCg, kdim, cols, 1.0f, dy + bg, (int)S, colg, cols, 1.0f,
                           wacc + (size_t)g * OCg * kdim, kdim)
               : fast_gemm(false, false, OCg, cols, kdim, 1.0f, weight + (size_t)g * OCg * kdim,
                           kdim, colg, cols, 0.0f, top + bg, (int)S))
        return -1;
    }
  }
  return 0;
}

/* How the images are cut into chunks: by_chunk = the chunks run on separate
 * threads, each with single-threaded GEMMs (no barrier between im2col, GEMM
 * and transpose; the column buffer stays in that core's cache); otherwise
 * (batch smaller than the pool, or large weights) chunk after chunk with
 * the pool inside each step. */
typedef struct ConvPlan {
  int chunk;     /* images per GEMM */
  bool by_chunk;
  int threads;
} ConvPlan;

static ConvPlan conv_plan(const ConvPriv *p) {
  ConvPlan pl = {chunk_images(p), false, fast_threads()};
  const int N = p->num, T = pl.threads;
  /* Chunks per thread only when the weights are small beside the columns
   * and outputs (OC + IC*KH*KW values per output pixel): each thread packs
   * all the weights, and in backward keeps and adds its own weight
   * gradient. ResNet-50's 7x7 layers (512-2048 channels, 49 pixels) run
   * each GEMM over the pool instead (measured: those layers 8-10% faster,
   * the whole batch-8 training step 2%). */
  const long S = (long)p->out_h * p->out_w;
  const double kk = (double)p->kernel_h * p->kernel_w;
  const double weights = (double)p->num_output * p->channels / p->group * kk;
  const double acts = (double)N * S * (p->num_output + p->channels * kk);
  if (T > 1 && N >= T && 2.0 * weights < acts) {
    const int cols = FAST_CONV_COLS;
    long n_chunks = (N * S + cols - 1) / cols;   /* about `cols` columns each */
    n_chunks = (n_chunks + T - 1) / T * T;       /* a multiple of the pool */
    if (n_chunks > N) n_chunks = N;
    pl.chunk = (int)((N + n_chunks - 1) / n_chunks);
    pl.by_chunk = true;
  }
  return pl;
}

/* Forward of images [n0, n0+nc) of one bottom. wpack: the weights packed
 * by fast_gemm_f32_pack (one group), or NULL. */
static int forward_chunk(const ConvPriv *p, const float *x, const float *weight,
                         const float *wpack, const float *bias, float *top, int n0, int nc,
                         bool par) {
  const int G = p->group, OC = p->num_output, OCg = OC / G, C = p->channels;
  const int KK = p->kernel_h * p->kernel_w, kdim = C / G * KK;
  const size_t S = (size_t)p->out_h * p->out_w, ld = (size_t)nc * S;
  const size_t in_img = (size_t)C * p->height * p->width, out_img = (size_t)OC * S;
  const float *B = x + (size_t)n0 * in_img; /* (IC*KH*KW, nc*S) */
  const int rows = nc == 1 ? block_rows(p) : p->out_h;
  if (rows < p->out_h) {
    if (run_blocks(p, x, weight, wpack, top, NULL, NULL, n0, rows, par)) return -1;
    B = NULL;
  } else if (!(p->is_1x1 && nc == 1)) {
    float *col = fast_workspace(FAST_WS_COL, (size_t)C * KK * ld, "convolution column buffer");
    if (!col) return -1;
    fill_columns(p, x, n0, nc, col, par);
    B = col;
  }
  float *Y = top + (size_t)n0 * out_img; /* (OC, nc*S) */
  if (nc > 1 && !(Y = fast_workspace(FAST_WS_OUT, nc * out_img, "convolution output buffer")))
    return -1;
  if (!B) {
    /* done by forward_blocks */
  } else if (wpack) {
    if (fast_gemm_f32_prepacked(OC, (int)ld, kdim, wpack, B, (int)ld, Y, (int)ld)) return -1;
  } else {
    for (int g = 0; g < G; g++)
      if (fast_gemm(false, false, OCg, (int)ld, kdim, 1.0f, weight + (size_t)g * OCg * kdim,
                    kdim, B + (size_t)g * kdim * ld, (int)ld, 0.0f, Y + (size_t)g * OCg * ld,
                    (int)ld))
        return -1;
  }
  if (nc > 1) {
    to_nchw(Y, bias, OC, S, nc, top + (size_t)n0 * out_img, par);
  } else if (bias) {
#pragma omp parallel for schedule(static) if (par && out_img >= FAST_GRAIN)
    for (int oc = 0; oc < OC; oc++) {
      float *y = Y + (size_t)oc * S;
      const float b = bias[oc];
#pragma omp simd
      for (size_t s = 0; s < S; s++) y[s] += b;
    }
  }
  return 0;
}

/* ---- an input subsampled by the net (ConvPriv.sub_x) ---------------------------------- */

bool conv_fast_subsample_applies(const Layer *l) {
  const ConvPriv *p = l->priv;
  return l->n_bottom == 1 && p->kernel_h == 1 && p->kernel_w == 1 && p->pad_h == 0 &&
         p->pad_w == 0 && (p->stride_h > 1 || p->stride_w > 1);
}

void conv_fast_subsample(const Layer *l, const float *x, float *out) {
  const ConvPriv *p = l->priv;
  const int H = p->height, W = p->width, OH = p->out_h, OW = p->out_w;
  const int SH = p->stride_h, SW = p->stride_w;
  const size_t planes = (size_t)p->num * p->channels, S = (size_t)OH * OW;
  const bool avx512 = fast_avx512_supported();
#pragma omp parallel for schedule(static) if (planes * S >= FAST_GRAIN)
  for (size_t k = 0; k < planes; k++) {
    const float *src = x + k * H * W;
    float *dst = out + k * S;
    for (int oh = 0; oh < OH; oh++) {
      const float *row = src + (size_t)oh * SH * W;
      float *d = dst + (size_t)oh * OW;
      if (SW == 2 && avx512) {
        gather_stride2(d, row, OW);
      } else {
        for (int ow = 0; ow < OW; ow++) d[ow] = row[(size_t)ow * SW];
      }
    }
  }
}

/* The layer as a 1x1 stride-1 convolution of its subsampled input: the same
 * GEMMs on the same values (the same columns, in the same order), without
 * the gathers. s: a copy of p with that geometry (it shares p's packed
 * weights; anything it packs goes back to p). */
static void subsampled_priv(const ConvPriv *p, ConvPriv *s) {
  *s = *p;
  s->height = p->out_h, s->width = p->out_w;
  s->stride_h = s->stride_w = 1;
  s->is_1x1 = true;
  s->sub_x = NULL;
}

static void subsampled_done(ConvPriv *p, const ConvPriv *s) {
  if (!p->wpack) p->wpack = s->wpack;
  if (!p->bf16_wpack) p->bf16_wpack = s->bf16_wpack;
}

/* fn(l) with l seen as its subsampled 1x1 stride-1 self: priv and the
 * bottom's data swapped for the call. */
static int run_subsampled(Layer *l, int (*fn)(Layer *)) {
  ConvPriv *p = l->priv, s;
  subsampled_priv(p, &s);
  float *data = l->bottom[0]->data;
  l->priv = &s;
  l->bottom[0]->data = (float *)p->sub_x;
  const int rc = fn(l);
  l->bottom[0]->data = data;
  l->priv = p;
  subsampled_done(p, &s);
  return rc;
}

int conv_forward_fast(Layer *l) {
  ConvPriv *p = l->priv;
  if (conv_nhwc_in_use(l)) return conv_forward_nhwc(l); /* bf16 channels-last blobs */
  if (p->sub_x) return run_subsampled(l, conv_forward_fast);
  const float *weight = l->params[0]->data;                     /* (OC, IC/G, KH, KW) */
  const float *bias = p->bias_term ? l->params[1]->data : NULL; /* (OC) */
  if (p->num == 0 || p->out_h * p->out_w == 0) return 0;
  /* Winograd hook (conv_winograd.c; MOKA_WINOGRAD=0 turns it off). */
  if (conv_winograd_applies(p, false)) return conv_winograd_forward(l);
  if (shift_prepare(p)) return moka_error_prefix("layer %s", l->name);
  /* bf16 hook (convolution_bf16.c: no fp32 column buffer); 1: not taken. */
  if (fast_precision() == FAST_BF16) {
    const int rb = conv_forward_bf16(l);
    if (rb <= 0) return rb;
  }
  /* Frozen weights (inference): packed for moka's GEMM once, on the first
   * forward, instead of in every GEMM (at batch 1 that packing is a fifth
   * of the time: every weight read and written once more per image). */
  const float *wpack = NULL;
  if (l->weights_frozen && p->group == 1 && fast_precision() == FAST_FP32 &&
      fast_prepacked_allowed()) {
    const int kdim = p->channels * p->kernel_h * p->kernel_w;
    if (!p->wpack) {
      if (!(p->wpack = moka_malloc(fast_gemm_f32_packed_size(p->num_output, kdim) * sizeof(float))))
        return moka_error_prefix("layer %s: packed weights", l->name);
      fast_gemm_f32_pack(false, p->num_output, kdim, weight, kdim, p->wpack);
    }
    wpack = p->wpack;
  }
  const ConvPlan pl = conv_plan(p);
  const int n_chunks = (p->num + pl.chunk - 1) / pl.chunk;
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->data; /* (N,IC,H,W) */
    float *top = l->top[i]->data;        /* (N,OC,OH,OW) */
    int rc = 0;
    if (pl.by_chunk) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(pl.threads) reduction(| : rc)
      for (int k = 0; k < n_chunks; k++) {
        const int n0 = k * pl.chunk, nc = p->num - n0 < pl.chunk ? p->num - n0 : pl.chunk;
        rc |= forward_chunk(p, x, weight, wpack, bias, top, n0, nc, false);
      }
    } else {
      for (int k = 0; k < n_chunks && !rc; k++) {
        const int n0 = k * pl.chunk, nc = p->num - n0 < pl.chunk ? p->num - n0 : pl.chunk;
        rc = forward_chunk(p, x, weight, wpack, bias, top, n0, nc, true);
      }
    }
    if (rc) return -1;
  }
  return 0;
}

/* Backward of images [n0, n0+nc) of one bottom: dW accumulated into wacc
 * (NULL: not wanted), dx (NULL: not wanted) written. */
static int backward_chunk(const ConvPriv *p, const float *x, const float *dy, float *dx,
                          const float *weight, float *wacc, int n0, int nc, bool par) {
  const int G = p->group, OC = p->num_output, OCg = OC / G, C = p->channels;
  const int KK = p->kernel_h * p->kernel_w, kdim = C / G * KK;
  const size_t S = (size_t)p->out_h * p->out_w, ld = (size_t)nc * S;
  const size_t in_img = (size_t)C * p->height * p->width, out_img = (size_t)OC * S;
  const bool direct = p->is_1x1 && nc == 1; /* the input is the column buffer */
  /* One large image: the weight gradient in blocks of output rows. */
  const int rows = nc == 1 ? block_rows(p) : p->out_h;
  float *col = NULL;
  if (!direct && (dx || rows == p->out_h) &&
      !(col = fast_workspace(FAST_WS_COL, (size_t)C * KK * ld, "convolution column buffer")))
    return -1;
  /* dY (OC, nc*S) */
  const float *dY = dy + (size_t)n0 * out_img;
  if (nc > 1) {
    float *g = fast_workspace(FAST_WS_OUT, nc * out_img, "convolution gradient buffer");
    if (!g) return -1;
    from_nchw(dY, OC, S, nc, g, par);
    dY = g;
  }
  if (wacc && rows < p->out_h) {
    if (run_blocks(p, x, NULL, NULL, NULL, dy, wacc, n0, rows, par)) return -1;
  } else if (wacc) {
    /* dW_g (OC/G, kdim) += dY_g (OC/G, nc*S) x col_g^T */
    const float *B = x + (size_t)n0 * in_img;
    if (!direct) {
      fill_columns(p, x, n0, nc, col, par);
      B = col;
    }
    for (int g = 0; g < G; g++)
      if (fast_gemm(false, true, OCg, kdim, (int)ld, 1.0f, dY + (size_t)g * OCg * ld, (int)ld,
                    B + (size_t)g * kdim * ld, (int)ld, 1.0f, wacc + (size_t)g * OCg * kdim,
                    kdim))
        return -1;
  }
  if (!dx) return 0;
  /* dcol_g (kdim, nc*S) = W_g^T dY_g, then back to (N,IC,H,W). */
  float *dcol = direct ? dx + (size_t)n0 * in_img : col;
  for (int g = 0; g < G; g++)
    if (fast_gemm(true, false, kdim, (int)ld, OCg, 1.0f, weight + (size_t)g * OCg * kdim, kdim,
                  dY + (size_t)g * OCg * ld, (int)ld, 0.0f, dcol + (size_t)g * kdim * ld,
                  (int)ld))
      return -1;
  if (!direct) scatter_columns(p, dcol, n0, nc, dx, par);
  return 0;
}

/* backward_chunk for fast_chunked_wgrad: chunk k of `chunk` images, one thread. */
typedef struct BwdChunks {
  const ConvPriv *p;
  const float *x, *dy;
  float *dx;
  const float *weight;
  int chunk;
} BwdChunks;

static int backward_chunk_k(void *ctx, int k, float *wacc) {
  const BwdChunks *b = ctx;
  const int n0 = k * b->chunk, nc = b->p->num - n0 < b->chunk ? b->p->num - n0 : b->chunk;
  return backward_chunk(b->p, b->x, b->dy, b->dx, b->weight, wacc, n0, nc, false);
}

/* Backward of every bottom: the parameters' gradients (params) and the
 * bottoms' (dx, where propagate_down), or only one kind. */
static int backward_impl(Layer *l, bool params, bool dxs) {
  ConvPriv *p = l->priv;
  const int OC = p->num_output;
  const size_t S = (size_t)p->out_h * p->out_w, out_img = (size_t)OC * S;
  const size_t wcount = l->params[0]->count;
  const float *weight = l->params[0]->data; /* (OC, IC/G, KH, KW) */
  float *wdiff = params && layer_param_needs_grad(l, 0) ? l->params[0]->diff : NULL; /* accumulated */
  float *bdiff =
      params && p->bias_term && layer_param_needs_grad(l, 1) ? l->params[1]->diff : NULL;
  if (p->num == 0 || S == 0) return 0;
  const ConvPlan pl = conv_plan(p);
  const int n_chunks = (p->num + pl.chunk - 1) / pl.chunk;
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->data; /* (N,IC,H,W) */
    const float *dy = l->top[i]->diff;   /* (N,OC,OH,OW) */
    float *dx = dxs && l->propagate_down[i] ? l->bottom[i]->diff : NULL; /* (N,IC,H,W) */
    /* Winograd hook (conv_winograd.c): the data gradient. */
    if (dx && conv_winograd_applies(p, true)) {
      if (conv_winograd_backward_data(p, weight, dy, dx))
        return moka_error_prefix("layer %s", l->name);
      dx = NULL;
    }
    if (bdiff) {
      /* As the reference: per image a double sum, added to the float diff in
       * image order. */
#pragma omp parallel for schedule(static) if (p->num * out_img >= FAST_GRAIN)
      for (int oc = 0; oc < OC; oc++)
        for (int n = 0; n < p->num; n++) {
          const float *d = dy + (size_t)n * out_img + (size_t)oc * S;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (size_t k = 0; k < S; k++) s += d[k];
          bdiff[oc] += (float)s;
        }
    }
    if (!wdiff && !dx) continue;
    /* Winograd hook (conv_winograd.c): the weight gradient, when the data gradient is done. */
    if (!dx && conv_winograd_applies(p, false)) {
      if (conv_winograd_backward_weights(p, x, dy, wdiff))
        return moka_error_prefix("layer %s", l->name);
      continue;
    }
    /* The im2col/col2im below (not Winograd's): shifts' masks, once per geometry. */
    if (shift_prepare(p)) return moka_error_prefix("layer %s", l->name);
    if (fast_precision() == FAST_BF16) { /* bf16 hook (convolution_bf16.c); 1: not taken */
      const int rb = conv_backward_bf16(l, x, dy, dx, wdiff);
      if (rb < 0) return -1;
      if (rb == 0) continue;
    }
    int rc = 0;
    if (pl.by_chunk) {
      /* A chunk per thread in turn, weight gradients added in thread order. */
      BwdChunks bc = {p, x, dy, dx, weight, pl.chunk};
      rc = fast_chunked_wgrad(pl.threads, n_chunks, wdiff, wcount, backward_chunk_k, &bc);
    } else {
      for (int k = 0; k < n_chunks && !rc; k++) {
        const int n0 = k * pl.chunk, nc = p->num - n0 < pl.chunk ? p->num - n0 : pl.chunk;
        rc = backward_chunk(p, x, dy, dx, weight, wdiff, n0, nc, true);
      }
    }
    if (rc) return -1;
  }
  return 0;
}

static int backward_params(Layer *l) { return backward_impl(l, true, false); }

int conv_backward_fast(Layer *l) {
  ConvPriv *p = l->priv;
  if (conv_nhwc_in_use(l)) return conv_backward_nhwc(l); /* bf16 channels-last blobs */
  if (!p->sub_x) return backward_impl(l, true, true);
  /* The parameters' gradients from the subsampled input; the data gradient
   * (which does not read x) as usual. */
  if (run_subsampled(l, backward_params)) return -1;
  return backward_impl(l, false, true);
}

/* For convolution_bf16.c (declared in convolution_bf16.h). */
void conv_fast_fill_columns(const ConvPriv *p, const float *x, int n0, int nc, float *col,
                            bool par) {
  fill_columns(p, x, n0, nc, col, par);
}
void conv_fast_scatter_columns(const ConvPriv *p, const float *dcol, int n0, int nc, float *dx,
                               bool par) {
  scatter_columns(p, dcol, n0, nc, dx, par);
}
void conv_fast_to_nchw(const float *Y, const float *bias, int OC, size_t S, int nc, float *top,
                       bool par) {
  to_nchw(Y, bias, OC, S, nc, top, par);
}
void conv_fast_from_nchw(const float *blob, int OC, size_t S, int nc, float *Y, bool par) {
  from_nchw(blob, OC, S, nc, Y, par);
}
