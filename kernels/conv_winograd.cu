/* conv_winograd.cu — moka's fp32 engine for 3x3 stride-1 convolutions: Winograd F(2x2, 3x3)
 * for the forward pass and the data gradient (the arithmetic, layouts and the data
 * gradient as a convolution are in conv_winograd_tile.h). The weight gradient stays
 * im2col + GEMM (conv_gemm.cu).
 *
 * One pass per chunk of images: the filter transform U (16, K, C) once, then per chunk the
 * input transform V (16, C, T), 16 GEMMs in one strided-batched cuBLAS call (fp32, TF32
 * off) M (16, K, T) = U x V, and the output transform into the NCHW blob (bias added on
 * the way). Against im2col + GEMM: 2.25x fewer multiply-adds, and V and M are 4x the input
 * and output instead of the 9x column buffer, with no transposes of the output.
 *
 * Used for group 1, 3x3 kernels, stride 1, dilation 1, pad 0..2 (moka_cuda_winograd_applies);
 * MOKA_CONV_WINOGRAD=0 turns it off (im2col + GEMM for everything, as before it).
 * MOKA_CONV_WINOGRAD=4 takes F(4x4, 3x3) instead for the forward and the data gradient: 36
 * GEMMs, 2.25 products per output instead of 4, V and M 2.25x the input and output instead
 * of 4x; max error ~2e-5 of the outputs in fp32 (the CPU backend's choice on this machine for
 * the 56x56 and 28x28 layers). Written after the last GPU run: off until a GPU run measures
 * it (make gpu-check has its A/B row). Chunks:
 * as many images as fit in the convolution workspace budget (MOKA_CONV_WS_BYTES, 512 MiB).
 *
 * The weight gradient by Winograd too, F(3x3, 2x2) (conv_winograd_tile.h), with
 * MOKA_CONV_WINOGRAD_WGRAD=1: input and output-gradient transforms per chunk, 16 GEMMs
 * S (K, C) += Z (K, T) x V (C, T)^T accumulated over the chunks, then dw += G^T S G. Off by
 * default: written after the last GPU run of 2026-11-28 and not yet run on a GPU (the
 * per-thread arithmetic is tested on the CPU); make gpu-check times it in an A/B row.
 */
#include <stdlib.h>

#include "conv_winograd_tile.h"
#include "cuda_internal.h"

__global__ void wg_filter_kernel(const float *w, float *U, int A, int B, int flip, int m) {
  MOKA_GRID_LOOP(i, (size_t)A * B) {
    const int a = (int)(i / (size_t)B), b = (int)(i - (size_t)a * B);
    wg_filter_tile(w, a, b, A, B, flip, m, U);
  }
}

/* one thread per (c, t), t fastest: V's rows are written in runs */
__global__ void wg_input_kernel(WgGeom g, const float *x, float *V, size_t T) {
  MOKA_GRID_LOOP(i, (size_t)g.C * T) {
    const int c = (int)(i / T);
    wg_input_tile(&g, x, c, i - (size_t)c * T, T, V);
  }
}

__global__ void wg_output_kernel(WgGeom g, const float *M, size_t T, const float *bias,
                                 float *y) {
  MOKA_GRID_LOOP(i, (size_t)g.K * T) {
    const int k = (int)(i / T);
    wg_output_tile(&g, M, k, i - (size_t)k * T, T, bias, y);
  }
}

/* weight gradient: one thread per (k, t) for Z, one per (k, c) for dw */
__global__ void wg_dy_kernel(WgGeom g, const float *dy, float *Z, size_t T) {
  MOKA_GRID_LOOP(i, (size_t)g.K * T) {
    const int k = (int)(i / T);
    wg_dy_tile(&g, dy, k, i - (size_t)k * T, T, Z);
  }
}

__global__ void wg_wgrad_kernel(const float *S, int K, int C, float *dw) {
  MOKA_GRID_LOOP(i, (size_t)K * C) {
    const int k = (int)(i / (size_t)C), c = (int)(i - (size_t)k * C);
    wg_wgrad_tile(S, k, c, K, C, dw);
  }
}

bool moka_cuda_winograd_wgrad_applies(const MokaConvGeom *g) {
  const char *e = getenv("MOKA_CONV_WINOGRAD_WGRAD");
  return e && e[0] == '1' && moka_cuda_winograd_applies(g);
}

/* The forward's and data gradient's tile: 4 with MOKA_CONV_WINOGRAD=4, else 2. */
static int wg_tile_m(void) {
  const char *e = getenv("MOKA_CONV_WINOGRAD");
  return e && e[0] == '4' && e[1] == 0 ? 4 : 2;
}

bool moka_cuda_winograd_applies(const MokaConvGeom *g) {
  const char *e = getenv("MOKA_CONV_WINOGRAD");
  if (e && e[0] == '0') return false;
  return g->group == 1 && g->kernel_h == 3 && g->kernel_w == 3 && g->stride_h == 1 &&
         g->stride_w == 1 && g->dilation_h == 1 && g->dilation_w == 1 && g->pad_h == g->pad_w &&
         g->pad_h >= 0 && g->pad_h <= 2 && g->out_h >= 1 && g->out_w >= 1;
}

/* Images per chunk of a pass and its workspace: `fixed` floats (U or S) and, per image, the
 * a*a transformed input and output planes (V and M, or V and Z). Reserved in the shared
 * workspace; *ws its start. */
static int wg_chunk(MokaCuda *c, const WgGeom *pg, int num, size_t fixed, const char *what,
                    size_t *nb_out, void **ws) {
  const size_t Ti = (size_t)pg->th * pg->tw;
  const size_t per_img = (size_t)pg->a * pg->a * Ti * ((size_t)pg->C + pg->K);
  const size_t budget = moka_cuda_conv_ws_budget() / sizeof(float);
  size_t nb = budget > fixed ? (budget - fixed) / per_img : 0;
  if (nb < 1) nb = 1;
  if (nb > (size_t)num) nb = (size_t)num;
  while (nb > 1 && nb * Ti > 0x7fffffffu) nb /= 2; /* cuBLAS dimensions are ints */
  *nb_out = nb;
  return moka_cuda_workspace(c, (fixed + nb * per_img) * sizeof(float), what, ws);
}

/* One convolution of num images: pg the pass geometry (per image), w the layer's weights
 * (flip: the data gradient's), src (num, C, H, W) -> dst (num, K, OH, OW). */
static int wg_run(MokaCuda *c, const WgGeom *pg, int num, const float *w, int flip,
                  const float *bias, const float *src, float *dst, const char *what) {
  cudaStream_t s = c->stream;
  const size_t Ti = (size_t)pg->th * pg->tw;
  const int a2 = pg->a * pg->a; /* GEMMs: 16 for F(2x2), 36 for F(4x4) */
  const size_t u_floats = (size_t)a2 * pg->K * pg->C;
  size_t nb;
  void *ws;
  if (wg_chunk(c, pg, num, u_floats, what, &nb, &ws)) return -1;
  float *U = (float *)ws, *V = U + u_floats, *M = V + (size_t)a2 * pg->C * nb * Ti;
  wg_filter_kernel<<<moka_blocks((size_t)pg->K * pg->C), MOKA_THREADS, 0, s>>>(
      w, U, pg->K, pg->C, flip, pg->m);
  if (moka_cuda_launched(s, "wg_filter_kernel", __FILE__, __LINE__)) return -1;
  const size_t in_img = (size_t)pg->C * pg->H * pg->W, out_img = (size_t)pg->K * pg->OH * pg->OW;
  for (int n0 = 0; n0 < num; n0 += (int)nb) {
    const size_t nc = (size_t)num - n0 < nb ? (size_t)num - n0 : nb;
    const size_t T = nc * Ti;
    wg_input_kernel<<<moka_blocks((size_t)pg->C * T), MOKA_THREADS, 0, s>>>(
        *pg, src + (size_t)n0 * in_img, V, T);
    if (moka_cuda_launched(s, "wg_input_kernel", __FILE__, __LINE__)) return -1;
    /* M_xi (K, T) = U_xi (K, C) x V_xi (C, T), xi = 0..a*a-1 */
    if (moka_cuda_gemm_strided(c, false, false, pg->K, (int)T, pg->C, 1.0f, U,
                               (long long)pg->K * pg->C, V, (long long)pg->C * T, 0.0f, M,
                               (long long)pg->K * T, a2))
      return -1;
    wg_output_kernel<<<moka_blocks((size_t)pg->K * T), MOKA_THREADS, 0, s>>>(
        *pg, M, T, bias, dst + (size_t)n0 * out_img);
    if (moka_cuda_launched(s, "wg_output_kernel", __FILE__, __LINE__)) return -1;
  }
  return 0;
}

int moka_cuda_winograd_forward(MokaCuda *c, const MokaConvGeom *g, const float *x,
                               const float *w, const float *bias, float *y) {
  if (g->num == 0) return 0;
  const WgGeom pg =
      wg_geom_m(g->channels, g->num_output, g->height, g->width, g->pad_h, wg_tile_m());
  if (pg.OH != g->out_h || pg.OW != g->out_w)
    return moka_errorf("internal error: Winograd output %dx%d, the layer's %dx%d", pg.OH, pg.OW,
                       g->out_h, g->out_w);
  return wg_run(c, &pg, g->num, w, 0, bias, x, y, "Winograd convolution buffers");
}

int moka_cuda_winograd_backward_data(MokaCuda *c, const MokaConvGeom *g, const float *w,
                                     const float *dy, float *dx) {
  if (g->num == 0) return 0;
  /* dx = dy (num, OC, OH, OW) convolved with the turned, transposed weights, pad 2 - pad */
  const WgGeom pg =
      wg_geom_m(g->num_output, g->channels, g->out_h, g->out_w, 2 - g->pad_h, wg_tile_m());
  if (pg.OH != g->height || pg.OW != g->width)
    return moka_errorf("internal error: Winograd data gradient %dx%d, the layer's input %dx%d",
                       pg.OH, pg.OW, g->height, g->width);
  return wg_run(c, &pg, g->num, w, 1, NULL, dy, dx, "Winograd data-gradient buffers");
}

int moka_cuda_winograd_backward_weights(MokaCuda *c, const MokaConvGeom *g, const float *x,
                                        const float *dy, float *dw) {
  if (g->num == 0) return 0;
  cudaStream_t s = c->stream;
  const WgGeom pg = wg_geom(g->channels, g->num_output, g->height, g->width, g->pad_h);
  if (pg.OH != g->out_h || pg.OW != g->out_w)
    return moka_errorf("internal error: Winograd output %dx%d, the layer's %dx%d", pg.OH, pg.OW,
                       g->out_h, g->out_w);
  const size_t Ti = (size_t)pg.th * pg.tw;
  const size_t s_floats = (size_t)16 * pg.K * pg.C;
  size_t nb;
  void *ws;
  if (wg_chunk(c, &pg, g->num, s_floats, "Winograd weight-gradient buffers", &nb, &ws))
    return -1;
  float *S = (float *)ws, *V = S + s_floats, *Z = V + (size_t)16 * pg.C * nb * Ti;
  const size_t in_img = (size_t)pg.C * pg.H * pg.W, out_img = (size_t)pg.K * pg.OH * pg.OW;
  for (int n0 = 0; n0 < g->num; n0 += (int)nb) {
    const size_t nc = (size_t)g->num - n0 < nb ? (size_t)g->num - n0 : nb;
    const size_t T = nc * Ti;
    wg_input_kernel<<<moka_blocks((size_t)pg.C * T), MOKA_THREADS, 0, s>>>(
        pg, x + (size_t)n0 * in_img, V, T);
    if (moka_cuda_launched(s, "wg_input_kernel", __FILE__, __LINE__)) return -1;
    wg_dy_kernel<<<moka_blocks((size_t)pg.K * T), MOKA_THREADS, 0, s>>>(
        pg, dy + (size_t)n0 * out_img, Z, T);
    if (moka_cuda_launched(s, "wg_dy_kernel", __FILE__, __LINE__)) return -1;
    /* S_xi (K, C) (+)= Z_xi (K, T) x V_xi (C, T)^T, xi = 0..15 */
    if (moka_cuda_gemm_strided(c, false, true, pg.K, pg.C, (int)T, 1.0f, Z,
                               (long long)pg.K * T, V, (long long)pg.C * T, n0 ? 1.0f : 0.0f, S,
                               (long long)pg.K * pg.C, 16))
      return -1;
  }
  wg_wgrad_kernel<<<moka_blocks((size_t)pg.K * pg.C), MOKA_THREADS, 0, s>>>(S, pg.K, pg.C, dw);
  return moka_cuda_launched(s, "wg_wgrad_kernel", __FILE__, __LINE__);
}
