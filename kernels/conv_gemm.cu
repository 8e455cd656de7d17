/* conv_gemm.cu — moka's convolution engine: im2col + cuBLAS SGEMM (fp32, TF32
 * off), the GPU twin of the CPU reference (src/layers/convolution.c).
 *
 * Layout. The reference loops over images; here a chunk of `nb` images is
 * done at once with the images side by side in the GEMM's N dimension:
 *   col (C*KH*KW, nb*OH*OW)   row (c*KH + kh)*KW + kw, column n*OH*OW + oh*OW + ow
 *   t   (OC, nb*OH*OW)        the output (or its gradient) in the same order
 * so, per group g (rows g*kdim.. of col, rows g*OCg.. of t, kdim = C/G*KH*KW):
 *   forward:          t_g   = W_g (OCg, kdim) x col_g (kdim, nb*OHW)
 *   weight gradient:  dW_g += dt_g (OCg, nb*OHW) x col_g^T        (one GEMM per chunk)
 *   data gradient:    dcol_g = W_g^T (kdim, OCg) x dt_g, then col2im
 * and t is transposed to/from the blob's (nb, OC, OH*OW) order (adding the
 * bias on the way out). The chunk is as many images as fit in the workspace
 * budget: 512 MiB, or the environment's MOKA_CONV_WS_BYTES (tests set it
 * small to exercise several chunks).
 * The weight gradient's GEMM is short and wide the wrong way for a GPU: (OCg, kdim) is
 * a few tiles (64 x 576 for ResNet's 56x56 3x3 layers) and K = nb*OH*OW is long.
 * MOKA_CONV_WGRAD_SPLIT=1 splits it along K by images: P partial products of nb/P
 * images each, one strided-batched GEMM into P partial (OCg, kdim) buffers after the
 * columns, then a kernel adding them to dW in p order (deterministic; the split depends
 * only on the shape). Off by default: on the H200 (2026-11-28, ResNet-50 batch 64) it
 * made the convolutions' backward 40.2 -> 42.5 ms (cuBLAS already splits such products
 * well; only the 56x56 1x1 layers gained, 0.77 -> 0.71 ms, the stem and the 3x3 layers
 * lost, 2.72 -> 3.16 and 1.60 -> 1.70 ms). P is chosen for about two waves of 128x128
 * tiles on the GPU, at least 2048 columns per part, at most 64 parts, and a divisor of nb
 * (the stem's weight gradient, (64, 147) with K = 802,816 at batch 64: 64 parts).
 * 1x1 convolutions with stride 1 and no padding skip im2col for forward and
 * data gradient: a strided-batched GEMM straight on the NCHW blob,
 *   y_n (OC, HW) = W (OC, C) x x_n (C, HW)   (per group).
 *
 * The kernels are plain (one thread per value, Caffe's im2col/col2im
 * indexing); col2im gathers the (kh, kw) contributions of a pixel in the
 * reference's order, so its sums round the same way.
 * 3x3 stride-1 convolutions take Winograd F(2x2,3x3) for forward and data gradient
 * (kernels/conv_winograd.cu, MOKA_CONV_WINOGRAD=0: this file's path for them too).
 * TODO(speed): an implicit-GEMM kernel (no column buffer), and fusing the transposes into
 * the GEMM epilogue.
 */
#include <stdlib.h>

#include "cuda_internal.h"

/* The workspace budget (cuda_internal.h): the column buffer and the transposed output here,
 * Winograd's buffers in conv_winograd.cu. */
size_t moka_cuda_conv_ws_budget(void) {
  const char *e = getenv("MOKA_CONV_WS_BYTES");
  if (e && *e) return (size_t)strtoull(e, NULL, 10);
  return (size_t)512 << 20;
}

/* x (nb, C, H, W) -> col (C*KH*KW, nb*OHW). One thread per (c, n, oh, ow). */
__global__ void im2col_batched_kernel(MokaConvGeom g, int nb, const float *x, float *col) {
  const int OHW = g.out_h * g.out_w;
  const size_t ncols = (size_t)nb * OHW;
  const size_t total = (size_t)g.channels * ncols;
  MOKA_GRID_LOOP(i, total) {
    const int c = (int)(i / ncols);
    const size_t j = i - (size_t)c * ncols; /* column */
    const int n = (int)(j / OHW), s = (int)(j - (size_t)n * OHW);
    const int oh = s / g.out_w, ow = s - oh * g.out_w;
    const float *xc = x + ((size_t)n * g.channels + c) * g.height * g.width; /* (H,W) */
    float *cp = col + (size_t)c * g.kernel_h * g.kernel_w * ncols + j;
    for (int kh = 0; kh < g.kernel_h; kh++) {
      const int h = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
      for (int kw = 0; kw < g.kernel_w; kw++) {
        const int w = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
        const bool in = h >= 0 && h < g.height && w >= 0 && w < g.width;
        *cp = in ? xc[(size_t)h * g.width + w] : 0.0f;
        cp += ncols;
      }
    }
  }
}

/* col (C*KH*KW, nb*OHW) -> dx (nb, C, H, W), overwritten with the sum of
 * the entries that map onto each pixel, in (kh, kw) order. */
__global__ void col2im_batched_kernel(MokaConvGeom g, int nb, const float *col, float *dx) {
  const int OHW = g.out_h * g.out_w;
  const size_t ncols = (size_t)nb * OHW;
  const size_t HW = (size_t)g.height * g.width;
  const size_t total = (size_t)nb * g.channels * HW;
  MOKA_GRID_LOOP(i, total) {
    const size_t nc = i / HW;
    const int n = (int)(nc / g.channels), c = (int)(nc - (size_t)n * g.channels);
    const int q = (int)(i - nc * HW), h = q / g.width, w = q - h * g.width;
    float acc = 0.0f;
    for (int kh = 0; kh < g.kernel_h; kh++) {
      const int hp = h + g.pad_h - kh * g.dilation_h;
      if (hp < 0 || hp % g.stride_h) continue;
      const int oh = hp / g.stride_h;
      if (oh >= g.out_h) continue;
      for (int kw = 0; kw < g.kernel_w; kw++) {
        const int wp = w + g.pad_w - kw * g.dilation_w;
        if (wp < 0 || wp % g.stride_w) continue;
        const int ow = wp / g.stride_w;
        if (ow >= g.out_w) continue;
        const size_t row = ((size_t)c * g.kernel_h + kh) * g.kernel_w + kw;
        acc = __fadd_rn(acc, col[row * ncols + (size_t)n * OHW + (size_t)oh * g.out_w + ow]);
      }
    }
    dx[i] = acc;
  }
}

/* src (nb, C, S) -> dst (C, nb*S). */
__global__ void nchw_to_cnhw_kernel(const float *src, float *dst, int nb, int C, size_t S) {
  const size_t cols = (size_t)nb * S, total = (size_t)C * cols;
  MOKA_GRID_LOOP(i, total) {
    const size_t c = i / cols, j = i - c * cols, n = j / S, s = j - n * S;
    dst[i] = src[(n * C + c) * S + s];
  }
}

/* src (C, nb*S) -> dst (nb, C, S), + bias[c] when bias != NULL. */
__global__ void cnhw_to_nchw_kernel(const float *src, float *dst, const float *bias, int nb, int C,
                                    size_t S) {
  const size_t cols = (size_t)nb * S, total = (size_t)C * cols;
  MOKA_GRID_LOOP(i, total) {
    const size_t n = i / ((size_t)C * S), r = i - n * C * S, c = r / S, s = r - c * S;
    float v = src[c * cols + n * S + s];
    if (bias) v = __fadd_rn(v, bias[c]);
    dst[i] = v;
  }
}

/* dw[i] += part[0][i] + part[1][i] + ... (P parts of len values, in order). */
__global__ void wgrad_reduce_kernel(const float *part, float *dw, size_t len, int P) {
  MOKA_GRID_LOOP(i, len) {
    float acc = part[i];
    for (int p = 1; p < P; p++) acc = __fadd_rn(acc, part[(size_t)p * len + i]);
    dw[i] = __fadd_rn(dw[i], acc);
  }
}

/* Read at each backward (tests switch it within a process). */
static bool wgrad_split_on(void) {
  const char *e = getenv("MOKA_CONV_WGRAD_SPLIT");
  return e && e[0] == '1';
}

/* Parts of the weight gradient's K for a chunk of nb images (see the header); 1: none. */
static int wgrad_parts(const MokaConvGeom *g, int nb) {
  if (!wgrad_split_on()) return 1;
  const size_t OCg = (size_t)(g->num_output / g->group);
  const size_t kdim = (size_t)(g->channels / g->group) * g->kernel_h * g->kernel_w;
  const size_t ncols = (size_t)nb * g->out_h * g->out_w;
  const size_t tiles = ((OCg + 127) / 128) * ((kdim + 127) / 128);
  size_t p = (264 + tiles - 1) / tiles;
  if (p > ncols / 2048) p = ncols / 2048;
  if (p > 64) p = 64;
  if (p > (size_t)nb) p = (size_t)nb;
  while (p > 1 && nb % (int)p) p--;
  return p < 2 ? 1 : (int)p;
}

static bool is_plain_1x1(const MokaConvGeom *g) {
  return g->kernel_h == 1 && g->kernel_w == 1 && g->stride_h == 1 && g->stride_w == 1 &&
         g->pad_h == 0 && g->pad_w == 0;
}

static int check_geom(const MokaConvGeom *g) {
  if (g->group <= 0 || g->channels % g->group || g->num_output % g->group || g->out_h <= 0 ||
      g->out_w <= 0)
    return moka_errorf("internal error: bad convolution geometry (C %d, OC %d, group %d, out "
                       "%dx%d)",
                       g->channels, g->num_output, g->group, g->out_h, g->out_w);
  return 0;
}

/* Images per chunk and the workspace: col, then t, then (backward, parts > 1) the weight
 * gradient's partial products. */
static int chunk_plan(MokaCuda *c, const MokaConvGeom *g, bool backward, int *chunk, float **col,
                      float **t, float **part) {
  const size_t OHW = (size_t)g->out_h * g->out_w;
  const size_t col_img = (size_t)g->channels * g->kernel_h * g->kernel_w * OHW;
  const size_t t_img = (size_t)g->num_output * OHW;
  const size_t per_img = (col_img + t_img) * sizeof(float);
  size_t nb = moka_cuda_conv_ws_budget() / per_img;
  if (nb < 1) nb = 1;
  if (nb > (size_t)g->num) nb = (size_t)g->num;
  /* cuBLAS dimensions are ints */
  while (nb > 1 && nb * OHW * ((size_t)g->channels * g->kernel_h * g->kernel_w) > 2147483647u)
    nb /= 2;
  const int parts = backward ? wgrad_parts(g, (int)nb) : 1;
  const size_t part_floats = parts > 1 ? (size_t)parts * g->num_output *
                                             ((size_t)g->channels / g->group) * g->kernel_h *
                                             g->kernel_w
                                       : 0;
  void *ws;
  if (moka_cuda_workspace(c, nb * per_img + part_floats * sizeof(float),
                          "convolution column buffer", &ws))
    return -1;
  *chunk = (int)nb;
  *col = (float *)ws;
  *t = *col + nb * col_img;
  if (part) *part = part_floats ? *t + nb * t_img : NULL;
  return 0;
}

int moka_cuda_conv_forward(MokaCuda *c, const MokaConvGeom *g, const float *x, const float *w,
                           const float *bias, float *y) {
  if (check_geom(g)) return -1;
  if (g->num == 0) return 0;
  if (moka_cuda_winograd_applies(g)) return moka_cuda_winograd_forward(c, g, x, w, bias, y);
  cudaStream_t s = c->stream;
  const int G = g->group, OCg = g->num_output / G, Cg = g->channels / G;
  const size_t OHW = (size_t)g->out_h * g->out_w, HW = (size_t)g->height * g->width;
  const int kdim = Cg * g->kernel_h * g->kernel_w;
  if (is_plain_1x1(g)) {
    for (int gi = 0; gi < G; gi++)
      if (moka_cuda_gemm_strided(c, false, false, OCg, (int)OHW, Cg, 1.0f,
                                 w + (size_t)gi * OCg * Cg, 0, x + (size_t)gi * Cg * HW,
                                 (long long)(g->channels * HW), 0.0f, y + (size_t)gi * OCg * OHW,
                                 (long long)(g->num_output * OHW), g->num))
        return -1;
    return bias ? moka_cuda_bias_add(s, y, bias, (size_t)g->num, (size_t)g->num_output, OHW) : 0;
  }
  int chunk;
  float *col, *t;
  if (chunk_plan(c, g, false, &chunk, &col, &t, NULL)) return -1;
  for (int n0 = 0; n0 < g->num; n0 += chunk) {
    const int nb = g->num - n0 < chunk ? g->num - n0 : chunk;
    const size_t ncols = (size_t)nb * OHW;
    im2col_batched_kernel<<<moka_blocks((size_t)g->channels * ncols), MOKA_THREADS, 0, s>>>(
        *g, nb, x + (size_t)n0 * g->channels * HW, col);
    if (moka_cuda_launched(s, "im2col_batched_kernel", __FILE__, __LINE__)) return -1;
    for (int gi = 0; gi < G; gi++)
      if (moka_cuda_gemm(c, false, false, OCg, (int)ncols, kdim, 1.0f, w + (size_t)gi * OCg * kdim,
                         col + (size_t)gi * kdim * ncols, 0.0f, t + (size_t)gi * OCg * ncols))
        return -1;
    cnhw_to_nchw_kernel<<<moka_blocks((size_t)g->num_output * ncols), MOKA_THREADS, 0, s>>>(
        t, y + (size_t)n0 * g->num_output * OHW, bias, nb, g->num_output, OHW);
    if (moka_cuda_launched(s, "cnhw_to_nchw_kernel", __FILE__, __LINE__)) return -1;
  }
  return 0;
}

int moka_cuda_conv_backward(MokaCuda *c, const MokaConvGeom *g, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db) {
  if (check_geom(g)) return -1;
  if (g->num == 0) return 0;
  cudaStream_t s = c->stream;
  const int G = g->group, OCg = g->num_output / G, Cg = g->channels / G;
  const size_t OHW = (size_t)g->out_h * g->out_w, HW = (size_t)g->height * g->width;
  const int kdim = Cg * g->kernel_h * g->kernel_w;
  const bool plain = is_plain_1x1(g);
  const bool wino_dx = dx && moka_cuda_winograd_applies(g); /* dx after the weight gradient */
  const bool wino_dw = moka_cuda_winograd_wgrad_applies(g);  /* then no column buffer at all */
  if (db &&
      moka_cuda_channel_sum(s, dy, NULL, db, (size_t)g->num, (size_t)g->num_output, OHW, true))
    return -1;
  if (wino_dw && moka_cuda_winograd_backward_weights(c, g, x, dy, dw)) return -1;
  int chunk = g->num;
  float *col = NULL, *t = NULL, *part = NULL;
  if (!wino_dw && chunk_plan(c, g, true, &chunk, &col, &t, &part)) return -1;
  for (int n0 = 0; n0 < g->num && !wino_dw; n0 += chunk) {
    const int nb = g->num - n0 < chunk ? g->num - n0 : chunk;
    const size_t ncols = (size_t)nb * OHW;
    nchw_to_cnhw_kernel<<<moka_blocks((size_t)g->num_output * ncols), MOKA_THREADS, 0, s>>>(
        dy + (size_t)n0 * g->num_output * OHW, t, nb, g->num_output, OHW);
    if (moka_cuda_launched(s, "nchw_to_cnhw_kernel", __FILE__, __LINE__)) return -1;
    im2col_batched_kernel<<<moka_blocks((size_t)g->channels * ncols), MOKA_THREADS, 0, s>>>(
        *g, nb, x + (size_t)n0 * g->channels * HW, col);
    if (moka_cuda_launched(s, "im2col_batched_kernel", __FILE__, __LINE__)) return -1;
    const int P = part ? wgrad_parts(g, nb) : 1;
    for (int gi = 0; gi < G; gi++) {
      const float *tg = t + (size_t)gi * OCg * ncols, *cg = col + (size_t)gi * kdim * ncols;
      float *dwg = dw + (size_t)gi * OCg * kdim;
      if (P > 1) { /* P parts of L columns: part_p (OCg, kdim) = t_g[:, p] x col_g[:, p]^T */
        const long long L = (long long)(ncols / (size_t)P);
        const size_t len = (size_t)OCg * kdim;
        if (moka_cuda_gemm_strided_ld(c, false, true, OCg, kdim, (int)L, 1.0f, tg, (int)ncols, L,
                                      cg, (int)ncols, L, 0.0f, part, kdim, (long long)len, P))
          return -1;
        wgrad_reduce_kernel<<<moka_blocks(len), MOKA_THREADS, 0, s>>>(part, dwg, len, P);
        if (moka_cuda_launched(s, "wgrad_reduce_kernel", __FILE__, __LINE__)) return -1;
      } else if (moka_cuda_gemm(c, false, true, OCg, kdim, (int)ncols, 1.0f, tg, cg, 1.0f, dwg)) {
        return -1;
      }
    }
    if (!dx || plain || wino_dx) continue;
    for (int gi = 0; gi < G; gi++) /* dcol overwrites col (done with it) */
      if (moka_cuda_gemm(c, true, false, kdim, (int)ncols, OCg, 1.0f, w + (size_t)gi * OCg * kdim,
                         t + (size_t)gi * OCg * ncols, 0.0f, col + (size_t)gi * kdim * ncols))
        return -1;
    col2im_batched_kernel<<<moka_blocks((size_t)nb * g->channels * HW), MOKA_THREADS, 0, s>>>(
        *g, nb, col, dx + (size_t)n0 * g->channels * HW);
    if (moka_cuda_launched(s, "col2im_batched_kernel", __FILE__, __LINE__)) return -1;
  }
  if (wino_dx) return moka_cuda_winograd_backward_data(c, g, w, dy, dx);
  if (dx && plain)
    for (int gi = 0; gi < G; gi++) /* dx_n (Cg, HW) = W_g^T (Cg, OCg) x dy_n (OCg, HW) */
      if (moka_cuda_gemm_strided(c, true, false, Cg, (int)OHW, OCg, 1.0f,
                                 w + (size_t)gi * OCg * Cg, 0, dy + (size_t)gi * OCg * OHW,
                                 (long long)(g->num_output * OHW), 0.0f, dx + (size_t)gi * Cg * HW,
                                 (long long)(g->channels * HW), g->num))
        return -1;
  return 0;
}
