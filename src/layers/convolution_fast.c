/* convolution_fast.c — the Convolution layer on the fast CPU backend.
 *
 * The reference (convolution.c) runs one im2col and one GEMM per image; for
 * ResNet's late layers (14x14 and 7x7 outputs) those GEMMs are too thin for
 * OpenBLAS to run fast. Here a chunk of images goes through ONE GEMM per
 * group:
 *
 *   col (IC*KH*KW, nc*S)   im2col of images n0..n0+nc side by side
 *                          (S = OH*OW; column j*S + s is image n0+j, pixel s)
 *   Y   (OC, nc*S)        = W (OC, IC/G*KH*KW) x col, per group
 *   top (N,OC,OH,OW)      <- Y transposed back, bias added
 *
 * nc is chosen so that a GEMM has at least FAST_CONV_COLS columns (all N
 * images for the late layers; one image when OH*OW is already that large, in
 * which case the GEMM writes straight into the top and nothing is copied).
 * A 1x1 stride-1 convolution has no im2col: its "columns" are the input
 * itself (one image), or the chunk's images gathered side by side.
 *
 * Backward, per chunk: dY gathered to (OC, nc*S) (or read in place for one
 * image), the weight gradient as one GEMM over the chunk
 *   dW_g (OC/G, kdim) += dY_g (OC/G, nc*S) x col_g^T,
 * then the data gradient as one GEMM
 *   dcol_g (kdim, nc*S) = W_g^T x dY_g
 * and col2im of every image in parallel. Parameter gradients are skipped
 * when lr_mult is 0 (Caffe's param_propagate_down).
 *
 * Threads: im2col, col2im, gathers and the transposes run on the OpenMP pool
 * over (image, channel); the GEMMs are fast_gemm (fast.h). Buffers come from
 * the shared workspace: one column buffer (FAST_WS_COL) and one output
 * buffer (FAST_WS_OUT) for every convolution of the process's thread.
 *
 * Agreement with the reference: the same products summed in another order
 * (GEMM blocking, chunked weight-gradient accumulation), so results differ
 * by float rounding only; im2col/col2im, the bias and the transposes are
 * exact.
 */
#include <string.h>

#include "convolution_priv.h"
#include "fast.h"
#include "fast_layers.h"
#include "layer.h"
#include "util.h"

/* A GEMM should have at least this many columns (output pixels x images). */
#define FAST_CONV_COLS 2048

/* Images per GEMM for this layer. */
static int chunk_images(const ConvPriv *p) {
  const int S = p->out_h * p->out_w;
  int nc = S >= FAST_CONV_COLS ? 1 : (FAST_CONV_COLS + S - 1) / S;
  return nc > p->num ? p->num : nc;
}

/* Fill the KH*KW rows of one input channel: plane (H,W) -> rows
 * (KH*KW, ld), columns [0, OH*OW) of each row (Caffe's im2col order). */
static void im2col_channel(const ConvPriv *p, const float *plane, float *rows, size_t ld) {
  const int H = p->height, W = p->width, OH = p->out_h, OW = p->out_w;
  const int SH = p->stride_h, SW = p->stride_w;
  for (int kh = 0; kh < p->kernel_h; kh++)
    for (int kw = 0; kw < p->kernel_w; kw++) {
      float *row = rows + (size_t)(kh * p->kernel_w + kw) * ld; /* (OH*OW) */
      const int iw0 = kw * p->dilation_w - p->pad_w;            /* iw = ow*SW + iw0 */
      /* Output columns whose input column lies inside the image: [lo, hi). */
      int lo = iw0 >= 0 ? 0 : (-iw0 + SW - 1) / SW;
      int hi = W - 1 - iw0 < 0 ? 0 : (W - 1 - iw0) / SW + 1;
      if (hi > OW) hi = OW;
      if (lo > hi) lo = hi;
      for (int oh = 0; oh < OH; oh++) {
        const int ih = oh * SH - p->pad_h + kh * p->dilation_h;
        float *dst = row + (size_t)oh * OW; /* (OW) */
        if (ih < 0 || ih >= H) {
          memset(dst, 0, (size_t)OW * sizeof(float));
          continue;
        }
        const float *src = plane + (size_t)ih * W; /* input row ih: src[ow*SW + iw0] */
        for (int ow = 0; ow < lo; ow++) dst[ow] = 0.0f;
        if (SW == 1) {
          if (hi > lo) memcpy(dst + lo, src + lo + iw0, (size_t)(hi - lo) * sizeof(float));
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
 * gather of the inputs) into col (IC*KH*KW, nc*S). */
static void fill_columns(const ConvPriv *p, const float *x, int n0, int nc, float *col) {
  const int C = p->channels, KK = p->kernel_h * p->kernel_w;
  const size_t S = (size_t)p->out_h * p->out_w, ld = (size_t)nc * S;
  const size_t in_img = (size_t)C * p->height * p->width;
#pragma omp parallel for collapse(2) schedule(static) if (ld * C * KK >= FAST_GRAIN)
  for (int j = 0; j < nc; j++)
    for (int c = 0; c < C; c++) {
      const float *plane = x + (size_t)(n0 + j) * in_img + (size_t)c * p->height * p->width;
      float *rows = col + (size_t)c * KK * ld + (size_t)j * S;
      if (p->is_1x1)
        memcpy(rows, plane, S * sizeof(float));
      else
        im2col_channel(p, plane, rows, ld);
    }
}

/* (OC, nc*S) <-> (nc, OC, S): copy block [n0, n0+nc) of a (N,OC,S) blob to
 * or from the GEMM layout, adding bias (may be NULL) on the way out. */
static void to_nchw(const float *Y, const float *bias, int OC, size_t S, int nc, float *top) {
  const size_t ld = (size_t)nc * S;
#pragma omp parallel for collapse(2) schedule(static) if (ld * OC >= FAST_GRAIN)
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

static void from_nchw(const float *blob, int OC, size_t S, int nc, float *Y) {
  const size_t ld = (size_t)nc * S;
#pragma omp parallel for collapse(2) schedule(static) if (ld * OC >= FAST_GRAIN)
  for (int j = 0; j < nc; j++)
    for (int oc = 0; oc < OC; oc++)
      memcpy(Y + (size_t)oc * ld + (size_t)j * S, blob + ((size_t)j * OC + oc) * S,
             S * sizeof(float));
}

int conv_forward_fast(Layer *l) {
  ConvPriv *p = l->priv;
  const int G = p->group, OC = p->num_output, OCg = OC / G, C = p->channels;
  const int KK = p->kernel_h * p->kernel_w;
  const int kdim = C / G * KK;
  const size_t S = (size_t)p->out_h * p->out_w;
  const size_t in_img = (size_t)C * p->height * p->width, out_img = (size_t)OC * S;
  const float *weight = l->params[0]->data;                     /* (OC, IC/G, KH, KW) */
  const float *bias = p->bias_term ? l->params[1]->data : NULL; /* (OC) */
  const int chunk = chunk_images(p);
  if (p->num == 0 || S == 0) return 0;
  float *col = NULL, *out = NULL;
  const bool need_col = !(p->is_1x1 && chunk == 1);
  if (need_col && !(col = fast_workspace(FAST_WS_COL, (size_t)C * KK * chunk * S,
                                         "convolution column buffer")))
    return -1;
  if (chunk > 1 && !(out = fast_workspace(FAST_WS_OUT, (size_t)chunk * out_img,
                                          "convolution output buffer")))
    return -1;
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->data; /* (N,IC,H,W) */
    float *top = l->top[i]->data;        /* (N,OC,OH,OW) */
    for (int n0 = 0; n0 < p->num; n0 += chunk) {
      const int nc = p->num - n0 < chunk ? p->num - n0 : chunk;
      const size_t ldb = (size_t)nc * S;
      const float *B = x + (size_t)n0 * in_img; /* (IC*KH*KW, nc*S) */
      if (need_col) {
        fill_columns(p, x, n0, nc, col);
        B = col;
      }
      float *Y = nc == 1 ? top + (size_t)n0 * out_img : out; /* (OC, nc*S) */
      for (int g = 0; g < G; g++)
        fast_gemm(false, false, OCg, (int)ldb, kdim, 1.0f, weight + (size_t)g * OCg * kdim, kdim,
                  B + (size_t)g * kdim * ldb, (int)ldb, 0.0f, Y + (size_t)g * OCg * ldb,
                  (int)ldb);
      if (nc > 1) {
        to_nchw(Y, bias, OC, S, nc, top + (size_t)n0 * out_img);
      } else if (bias) {
#pragma omp parallel for schedule(static) if (out_img >= FAST_GRAIN)
        for (int oc = 0; oc < OC; oc++) {
          float *y = Y + (size_t)oc * S;
          const float b = bias[oc];
#pragma omp simd
          for (size_t s = 0; s < S; s++) y[s] += b;
        }
      }
    }
  }
  return 0;
}

int conv_backward_fast(Layer *l) {
  ConvPriv *p = l->priv;
  const int G = p->group, OC = p->num_output, OCg = OC / G, C = p->channels;
  const int KK = p->kernel_h * p->kernel_w;
  const int kdim = C / G * KK;
  const size_t S = (size_t)p->out_h * p->out_w;
  const size_t in_img = (size_t)C * p->height * p->width, out_img = (size_t)OC * S;
  const float *weight = l->params[0]->data; /* (OC, IC/G, KH, KW) */
  float *wdiff = layer_param_needs_grad(l, 0) ? l->params[0]->diff : NULL; /* accumulated */
  float *bdiff = p->bias_term && layer_param_needs_grad(l, 1) ? l->params[1]->diff : NULL;
  const int chunk = chunk_images(p);
  if (p->num == 0 || S == 0) return 0;
  float *col = NULL, *dyg = NULL;
  const bool need_col = !(p->is_1x1 && chunk == 1);
  if (need_col && !(col = fast_workspace(FAST_WS_COL, (size_t)C * KK * chunk * S,
                                         "convolution column buffer")))
    return -1;
  if (chunk > 1 && !(dyg = fast_workspace(FAST_WS_OUT, (size_t)chunk * out_img,
                                          "convolution gradient buffer")))
    return -1;
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->data;  /* (N,IC,H,W) */
    const float *dy = l->top[i]->diff;    /* (N,OC,OH,OW) */
    float *dx = l->propagate_down[i] ? l->bottom[i]->diff : NULL; /* (N,IC,H,W) */
    if (!wdiff && !bdiff && !dx) continue;
    for (int n0 = 0; n0 < p->num; n0 += chunk) {
      const int nc = p->num - n0 < chunk ? p->num - n0 : chunk;
      const size_t ld = (size_t)nc * S;
      /* dY (OC, nc*S) */
      const float *dY = dy + (size_t)n0 * out_img;
      if (nc > 1) {
        from_nchw(dY, OC, S, nc, dyg);
        dY = dyg;
      }
      if (bdiff) {
        /* As the reference: per image a double sum, added to the float diff. */
#pragma omp parallel for schedule(static) if (ld * OC >= FAST_GRAIN)
        for (int oc = 0; oc < OC; oc++)
          for (int j = 0; j < nc; j++) {
            const float *d = dY + (size_t)oc * ld + (size_t)j * S;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (size_t k = 0; k < S; k++) s += d[k];
            bdiff[oc] += (float)s;
          }
      }
      /* col (IC*KH*KW, nc*S): the forward's right-hand side. */
      const float *B = x + (size_t)n0 * in_img;
      if (wdiff) {
        if (need_col) {
          fill_columns(p, x, n0, nc, col);
          B = col;
        }
        for (int g = 0; g < G; g++)
          fast_gemm(false, true, OCg, kdim, (int)ld, 1.0f, dY + (size_t)g * OCg * ld, (int)ld,
                    B + (size_t)g * kdim * ld, (int)ld, 1.0f, wdiff + (size_t)g * OCg * kdim,
                    kdim);
      }
      if (!dx) continue;
      /* dcol (IC*KH*KW, nc*S) = W^T dY per group; then back to (N,IC,H,W). */
      float *dcol = need_col ? col : dx + (size_t)n0 * in_img;
      for (int g = 0; g < G; g++)
        fast_gemm(true, false, kdim, (int)ld, OCg, 1.0f, weight + (size_t)g * OCg * kdim, kdim,
                  dY + (size_t)g * OCg * ld, (int)ld, 0.0f, dcol + (size_t)g * kdim * ld,
                  (int)ld);
      if (!need_col) continue;
      float *dxn = dx + (size_t)n0 * in_img;
#pragma omp parallel for collapse(2) schedule(static) if (ld * C * KK >= FAST_GRAIN)
      for (int j = 0; j < nc; j++)
        for (int c = 0; c < C; c++) {
          const float *rows = dcol + (size_t)c * KK * ld + (size_t)j * S;
          float *plane = dxn + (size_t)j * in_img + (size_t)c * p->height * p->width;
          if (p->is_1x1)
            memcpy(plane, rows, S * sizeof(float));
          else
            col2im_channel(p, rows, ld, plane);
        }
    }
  }
  return 0;
}
