/* convolution_nhwc.c — the Convolution layer on the fast CPU backend when a
 * bottom or top is a bf16 channels-last blob (Blob.host_bf16: --precision=bf16
 * unless MOKA_BF16_ACT=0, decided by src/net_bf16.c), on the kernels of
 * conv_nhwc_bf16.c.
 *
 * Formats. A bf16 blob holds (N, H, W, C) bf16 values in the first half of
 * its buffers; the layer reads and writes it in place. A blob on the other
 * side that is still fp32 NCHW (a layer the bf16 path does not take before or
 * after it) is converted through a workspace: the input rounded and
 * transposed once per forward and once per backward, the output (or the
 * data gradient) computed channels-last in fp32 and transposed back.
 *
 * Geometry (conv_cpu_bf16_nhwc_capable): one bottom, group 1, no dilation;
 * 1x1 kernels with no pad and no bias at any stride (strided: the input
 * subsampled first, then the data gradient spread back at the stride with
 * zeros between), other kernels of at most 64 taps, with stride 1 when the
 * data gradient runs (it is the flipped kernel's convolution of dy), a bias
 * added before the one rounding. An even channel count, except for the stem
 * (conv_nhwc_bf16.h: ResNet's conv1 on the 3-channel fp32 image, no data
 * gradient): its input is converted into a zero-padded buffer with a zero
 * fourth channel, and its kernel rows read as runs. The same bf16 rounding of
 * the same operands as the NCHW bf16 path (convolution_bf16.c), fp32 sums in
 * another order; where both sides are bf16 the outputs are rounded to bf16
 * once, on store.
 */
#include <stdlib.h>
#include <string.h>

#include "conv_nhwc_bf16.h"
#include "convolution_nhwc.h"
#include "convolution_priv.h"
#include "fast.h"
#include "layer.h"
#include "util.h"

static NhwcGeom geom_of(const ConvPriv *p);

/* The stem's kernels (conv_nhwc_bf16.h): an fp32 input with few channels, no data gradient
 * (the layer's own choice at run time; the capability for an odd channel count). */
static bool stem_of(const Layer *l) {
  const ConvPriv *p = l->priv;
  const NhwcGeom g = geom_of(p);
  return !l->bottom[0]->host_bf16 && !(p->kernel_h == 1 && p->kernel_w == 1) &&
         !l->propagate_down[0] && nhwc_bf16_stem_fits(&g);
}

bool conv_cpu_bf16_nhwc_capable(const Layer *l, bool dgrad) {
  const ConvPriv *p = l->priv;
  if (l->n_bottom != 1 || l->n_top != 1 || p->group != 1 || p->dilation_h != 1 ||
      p->dilation_w != 1 || fast_precision() != FAST_BF16 || !fast_bf16_supported())
    return false;
  const bool one = p->kernel_h == 1 && p->kernel_w == 1;
  /* An odd channel count (an fp32 input, as ResNet's 3-channel image): the stem's kernels
   * (stored with one zero channel more); no data gradient then. */
  if (p->channels % 2 && (one || dgrad || !stem_of(l))) return false;
  if (one) return p->pad_h == 0 && p->pad_w == 0 && !p->bias_term; /* a bias: kernels of taps */
  if (p->kernel_h * p->kernel_w > 64) return false;
  if (dgrad && (p->stride_h != 1 || p->stride_w != 1 || p->pad_h >= p->kernel_h ||
                p->pad_w >= p->kernel_w))
    return false;
  return true;
}

bool conv_nhwc_in_use(const Layer *l) {
  return l->n_bottom >= 1 && l->n_top >= 1 &&
         (l->bottom[0]->host_bf16 || l->top[0]->host_bf16);
}

/* The kernels' geometry: an odd channel count padded to the next even one. */
static NhwcGeom geom_of(const ConvPriv *p) {
  NhwcGeom g = {p->num,      p->height,   p->width,    p->channels + p->channels % 2, p->num_output,
                p->kernel_h, p->kernel_w, p->stride_h, p->stride_w, p->pad_h,
                p->pad_w,    p->out_h,    p->out_w};
  return g;
}

static bool is_1x1(const NhwcGeom *g) { return g->KH == 1 && g->KW == 1; }
static bool strided(const NhwcGeom *g) { return g->SH != 1 || g->SW != 1; }

/* The geometry the 1x1 GEMM sees: the subsampled input as a stride-1 layer. */
static size_t pixels_out(const NhwcGeom *g) { return (size_t)g->N * g->OH * g->OW; }

static int check(const Layer *l, bool dgrad) {
  if (!conv_cpu_bf16_nhwc_capable(l, dgrad))
    return moka_errorf("internal error: layer '%s' has a bf16 channels-last blob but is not a "
                       "convolution the channels-last kernels take",
                       l->name);
  return 0;
}

/* x as bf16 channels-last: the blob itself, or converted into `slot` (C channels, then a
 * zero one when C is odd); for a strided 1x1, subsampled (the GEMM's input) into
 * FAST_WS_NHWC_D. */
static const uint16_t *input16(const Blob *b, const NhwcGeom *g, int C, bool sub, bool stem) {
  const size_t n = (size_t)g->N * g->H * g->W * g->C;
  const uint16_t *x16 = (const uint16_t *)b->data;
  if (stem) { /* the stem's zero-padded input */
    uint16_t *w = (uint16_t *)fast_workspace(FAST_WS_NHWC_X, nhwc_bf16_stem_input_size(g) / 2 + 1,
                                             "channels-last input");
    if (w) nhwc_bf16_stem_input(b->data, C, g, w);
    return w;
  }
  if (!b->host_bf16) {
    uint16_t *w = (uint16_t *)fast_workspace(FAST_WS_NHWC_X, n / 2 + 1, "channels-last input");
    if (!w) return NULL;
    nhwc_bf16_from_nchw_pad(b->data, g->N, C, (size_t)g->H * g->W, g->C, w);
    x16 = w;
  }
  if (!sub) return x16;
  uint16_t *s = (uint16_t *)fast_workspace(FAST_WS_NHWC_D, pixels_out(g) * g->C / 2 + 1,
                                           "subsampled channels-last input");
  if (!s) return NULL;
  nhwc_bf16_subsample(x16, g, s);
  return s;
}

/* w (OC, C, KH, KW) with a zero channel after the C (g->C = C + 1), in a workspace. */
static const float *padded_weights(const float *w, const NhwcGeom *g, int C) {
  const size_t T = (size_t)g->KH * g->KW;
  float *wp = fast_workspace(FAST_WS_OUT, (size_t)g->OC * g->C * T, "padded weights");
  if (!wp) return NULL;
  for (int o = 0; o < g->OC; o++) {
    memcpy(wp + (size_t)o * g->C * T, w + (size_t)o * C * T, (size_t)C * T * sizeof(float));
    memset(wp + ((size_t)o * g->C + C) * T, 0, (size_t)(g->C - C) * T * sizeof(float));
  }
  return wp;
}

int conv_forward_nhwc(Layer *l) {
  ConvPriv *p = l->priv;
  if (check(l, false)) return -1;
  const NhwcGeom g = geom_of(p);
  const size_t P = pixels_out(&g);
  if (P == 0) return 0;
  Blob *top = l->top[0];
  const bool one = is_1x1(&g);
  const size_t wsize = one ? nhwc_bf16_packed_b_size(g.C, g.OC) : nhwc_bf16_conv_packed_size(&g);
  /* Frozen weights (inference): packed by the first forward and kept (ConvPriv.nhwc_wpack);
   * else packed into the workspace on every call. */
  const bool keep = l->weights_frozen, pack = !keep || !p->nhwc_wpack;
  if (keep && !p->nhwc_wpack && !(p->nhwc_wpack = moka_malloc(wsize * sizeof(int32_t))))
    return moka_error_prefix("layer %s: packed channels-last weights", l->name);
  int32_t *wp = keep ? p->nhwc_wpack
                     : (int32_t *)fast_workspace(FAST_WS_WPACK, wsize, "channels-last weights");
  const bool stem = stem_of(l);
  const uint16_t *x16 = input16(l->bottom[0], &g, p->channels, one && strided(&g), stem);
  float *yf = NULL;
  uint16_t *y16 = top->host_bf16 ? (uint16_t *)top->data : NULL;
  if (!y16 && !(yf = fast_workspace(FAST_WS_NHWC_Y, P * g.OC, "channels-last output")))
    return moka_error_prefix("layer %s", l->name);
  if (!wp || !x16) return moka_error_prefix("layer %s", l->name);
  const float *w = l->params[0]->data; /* (OC, C, KH, KW) */
  int rc;
  if (one) {
    if (pack) nhwc_bf16_pack_fwd(w, g.OC, g.C, wp);
    rc = nhwc_bf16_gemm(x16, (size_t)g.C, (int)P, g.C, wp, g.OC, yf, y16, (size_t)g.OC);
  } else {
    if (pack && g.C != p->channels && !(w = padded_weights(w, &g, p->channels)))
      return moka_error_prefix("layer %s", l->name);
    const float *bias = p->bias_term ? l->params[1]->data : NULL;
    rc = (pack && nhwc_bf16_pack_conv_fwd(&g, w, wp)) ||
         (stem ? nhwc_bf16_stem_fwd(&g, x16, wp, bias, yf, y16)
               : nhwc_bf16_conv_fwd_bias(&g, x16, wp, bias, yf, y16));
  }
  if (rc && keep && pack) { /* not a complete pack: not kept */
    free(p->nhwc_wpack);
    p->nhwc_wpack = NULL;
  }
  if (rc) return moka_error_prefix("layer %s", l->name);
  if (yf) nhwc_to_nchw(yf, NULL, g.N, g.OC, (size_t)g.OH * g.OW, top->data);
  return 0;
}

int conv_backward_nhwc(Layer *l) {
  const ConvPriv *p = l->priv;
  Blob *bottom = l->bottom[0], *top = l->top[0];
  const bool want_dx = l->propagate_down[0];
  float *dw = layer_param_needs_grad(l, 0) ? l->params[0]->diff : NULL; /* accumulated */
  float *db = p->bias_term && layer_param_needs_grad(l, 1) ? l->params[1]->diff : NULL;
  if (check(l, want_dx)) return -1;
  const NhwcGeom g = geom_of(p);
  const size_t P = pixels_out(&g);
  if (P == 0 || (!dw && !db && !want_dx)) return 0;
  const bool one = is_1x1(&g), sub = one && strided(&g);
  /* dy as bf16 channels-last */
  const uint16_t *dy16 = (const uint16_t *)top->diff;
  if (!top->host_bf16) {
    uint16_t *t = (uint16_t *)fast_workspace(FAST_WS_NHWC_Y, P * g.OC / 2 + 1,
                                             "channels-last output gradient");
    if (!t) return moka_error_prefix("layer %s", l->name);
    nhwc_bf16_from_nchw(top->diff, g.N, g.OC, (size_t)g.OH * g.OW, t);
    dy16 = t;
  }
  if (db && nhwc_bf16_bias_grad(dy16, (long)P, g.OC, db))
    return moka_error_prefix("layer %s", l->name);
  if (dw) {
    const bool stem = stem_of(l);
    const uint16_t *x16 = input16(bottom, &g, p->channels, sub, stem);
    if (!x16) return moka_error_prefix("layer %s", l->name);
    const int rc = one    ? nhwc_bf16_wgrad(dy16, x16, (int)P, g.OC, g.C, dw)
                   : stem ? nhwc_bf16_stem_wgrad(&g, dy16, x16, p->channels, dw)
                          : nhwc_bf16_conv_wgrad(&g, dy16, x16, dw);
    if (rc) return moka_error_prefix("layer %s", l->name);
  }
  if (!want_dx) return 0;
  /* dx: bf16 in place, or fp32 channels-last then transposed (or spread) */
  const float *w = l->params[0]->data;
  const size_t nx = (size_t)g.N * g.H * g.W * g.C;
  if (one) {
    int32_t *wp = (int32_t *)fast_workspace(FAST_WS_WPACK, nhwc_bf16_packed_b_size(g.OC, g.C),
                                            "channels-last weights");
    if (!wp) return moka_error_prefix("layer %s", l->name);
    nhwc_bf16_pack_dgrad(w, g.OC, g.C, wp);
    /* the GEMM's output: dx itself (stride 1, bf16), else a workspace */
    uint16_t *d16 = NULL;
    float *df = NULL;
    if (!sub && bottom->host_bf16) {
      d16 = (uint16_t *)bottom->diff;
    } else if (bottom->host_bf16) {
      d16 = (uint16_t *)fast_workspace(FAST_WS_NHWC_D, P * g.C / 2 + 1, "channels-last gradient");
      if (!d16) return moka_error_prefix("layer %s", l->name);
    } else if (!(df = fast_workspace(FAST_WS_NHWC_X, P * g.C, "channels-last gradient"))) {
      return moka_error_prefix("layer %s", l->name);
    }
    if (nhwc_bf16_gemm(dy16, (size_t)g.OC, (int)P, g.OC, wp, g.C, df, d16, (size_t)g.C))
      return moka_error_prefix("layer %s", l->name);
    if (sub)
      nhwc_spread_strided(df, d16, &g, bottom->host_bf16 ? (uint16_t *)bottom->diff : NULL,
                          bottom->host_bf16 ? NULL : bottom->diff);
    else if (df)
      nhwc_to_nchw(df, NULL, g.N, g.C, (size_t)g.H * g.W, bottom->diff);
    return 0;
  }
  NhwcGeom d;
  if (nhwc_bf16_dgrad_geom(&g, &d)) return moka_error_prefix("layer %s", l->name);
  int32_t *wp = (int32_t *)fast_workspace(FAST_WS_WPACK, nhwc_bf16_conv_packed_size(&d),
                                          "channels-last weights");
  float *df = NULL;
  if (!bottom->host_bf16 && !(df = fast_workspace(FAST_WS_NHWC_X, nx, "channels-last gradient")))
    return moka_error_prefix("layer %s", l->name);
  if (!wp || nhwc_bf16_pack_conv_dgrad(&g, w, wp) ||
      nhwc_bf16_conv_fwd(&d, dy16, wp, df, df ? NULL : (uint16_t *)bottom->diff))
    return moka_error_prefix("layer %s", l->name);
  if (df) nhwc_to_nchw(df, NULL, g.N, g.C, (size_t)g.H * g.W, bottom->diff);
  return 0;
}
