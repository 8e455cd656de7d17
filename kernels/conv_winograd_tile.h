/* conv_winograd_tile.h — the per-thread arithmetic of the CUDA Winograd convolution
 * (kernels/conv_winograd.cu), F(2x2, 3x3) and F(4x4, 3x3), as plain functions that compile for the device
 * (nvcc) and for the host (a C compiler), so that tests/unit/test_cuda_winograd_tile.c runs
 * the whole algorithm on the CPU, with these very functions, against a direct convolution.
 *
 * A 3x3, stride-1 convolution of x (nb, C, H, W), zero-padded by `pad`, into (nb, K, OH, OW)
 * with OH = H + 2 pad - 2 is cut into 2x2 output tiles, th = ceil(OH/2) by tw = ceil(OW/2) per
 * image, T = nb*th*tw in all, tile t = (n*th + ty)*tw + tx. Per tile, with the 4x4 input patch
 * d at rows 2ty - pad .. +3, columns 2tx - pad .. +3 (zeros outside the image):
 *
 *   V = B^T d B,  U = G g G^T,  M = sum over c of U (.) V  (16 GEMMs, one per position xi),
 *   y (2x2) = A^T M A,
 *
 *   B^T = | 1  0 -1  0 |   G = | 1    0    0   |   A^T = | 1  1  1  0 |
 *         | 0  1  1  0 |       | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
 *         | 0 -1  1  0 |       | 1/2 -1/2  1/2 |
 *         | 0  1  0 -1 |       | 0    0    1   |
 *
 * Layouts: U (16, K, C), V (16, C, T), M (16, K, T), each position xi = 4i + j a row-major
 * matrix, so that M_xi (K, T) = U_xi (K, C) x V_xi (C, T) is one strided-batched GEMM.
 *
 * The data gradient of such a convolution is one too: dx = dy convolved with the weights
 * turned by 180 degrees and their two channel axes swapped, zero-padded by 2 - pad
 * (wg_filter_tile's `flip`).
 *
 * Float operations: only additions, subtractions and halvings (exact scalings), no FMA
 * contraction needed for accuracy; F(2x2)'s error is of the order of a direct sum's.
 *
 * F(4x4, 3x3) (WgGeom.m = 4; MOKA_CONV_WINOGRAD=4): 4x4 output tiles from 6x6 input
 * patches at rows 4ty - pad .., 36 positions xi = 6i + j (U (36, K, C), V (36, C, T),
 * M (36, K, T)), interpolation points 0, +-1, +-2, inf (as the CPU's conv_winograd.c):
 *
 *   B^T = | 4  0 -5  0  1  0 |   G = |  1/4    0     0   |   A^T = | 1  1  1  1  1  0 |
 *         | 0 -4 -4  1  1  0 |       | -1/6  -1/6  -1/6  |         | 0  1 -1  2 -2  0 |
 *         | 0  4 -4 -1  1  0 |       | -1/6   1/6  -1/6  |         | 0  1  1  4  4  0 |
 *         | 0 -2 -1  2  1  0 |       |  1/24  1/12  1/6  |         | 0  1 -1  8 -8  1 |
 *         | 0  2 -1 -2  1  0 |       |  1/24 -1/12  1/6  |
 *         | 0  4  0 -5  0  1 |       |  0     0     1    |
 *
 * 36 products per 16 outputs (2.25 a output, against 4 for F(2x2) and 9 direct), and V, M are
 * 2.25x the input and output (4x for F(2x2)); the price is accuracy: max |err| / max |y| up
 * to ~2e-5 in fp32 on ResNet-50's layers (F(2x2): ~1e-6). The weight gradient stays F(3x3, 2x2).
 */
#ifndef MOKA_CONV_WINOGRAD_TILE_H
#define MOKA_CONV_WINOGRAD_TILE_H

#include <stddef.h>

#ifdef __CUDACC__
#define WG_FN __host__ __device__ static inline
#else
#define WG_FN static inline
#endif

/* One pass: input (nb, C, H, W) padded by pad, output (nb, K, OH, OW), th x tw tiles of
 * m x m outputs (m = 2 or 4), a = m + 2 the transformed tile's side (a*a GEMMs). */
typedef struct WgGeom {
  int C, K, H, W, OH, OW, pad, th, tw, m, a;
} WgGeom;

WG_FN WgGeom wg_geom_m(int C, int K, int H, int W, int pad, int m) {
  WgGeom g;
  g.C = C;
  g.K = K;
  g.H = H;
  g.W = W;
  g.pad = pad;
  g.OH = H + 2 * pad - 2;
  g.OW = W + 2 * pad - 2;
  g.m = m;
  g.a = m + 2;
  g.th = (g.OH + m - 1) / m;
  g.tw = (g.OW + m - 1) / m;
  return g;
}

/* F(2x2, 3x3) */
WG_FN WgGeom wg_geom(int C, int K, int H, int W, int pad) { return wg_geom_m(C, K, H, W, pad, 2); }

/* Tile t -> image n (within the pass), tile row ty, tile column tx. */
WG_FN void wg_tile_pos(const WgGeom *g, size_t t, size_t *n, int *ty, int *tx) {
  const size_t per = (size_t)g->th * g->tw;
  *n = t / per;
  const int r = (int)(t - *n * per);
  *ty = r / g->tw;
  *tx = r - *ty * g->tw;
}

/* V[xi][c][t] for input channel c and tile t of x (the pass's nb images), F(2x2). */
WG_FN void wg2_input_tile(const WgGeom *g, const float *x, int c, size_t t, size_t T, float *V) {
  size_t n;
  int ty, tx;
  wg_tile_pos(g, t, &n, &ty, &tx);
  const float *xc = x + (n * (size_t)g->C + (size_t)c) * (size_t)g->H * (size_t)g->W;
  const int h0 = 2 * ty - g->pad, w0 = 2 * tx - g->pad;
  float d[4][4], b[4][4];
  for (int i = 0; i < 4; i++) {
    const int h = h0 + i;
    for (int j = 0; j < 4; j++) {
      const int w = w0 + j;
      d[i][j] = h >= 0 && h < g->H && w >= 0 && w < g->W ? xc[(size_t)h * g->W + w] : 0.0f;
    }
  }
  for (int j = 0; j < 4; j++) { /* B^T d */
    b[0][j] = d[0][j] - d[2][j];
    b[1][j] = d[1][j] + d[2][j];
    b[2][j] = d[2][j] - d[1][j];
    b[3][j] = d[1][j] - d[3][j];
  }
  const size_t CT = (size_t)g->C * T;
  float *v = V + (size_t)c * T + t;
  for (int i = 0; i < 4; i++) { /* (B^T d) B */
    v[(size_t)(4 * i + 0) * CT] = b[i][0] - b[i][2];
    v[(size_t)(4 * i + 1) * CT] = b[i][1] + b[i][2];
    v[(size_t)(4 * i + 2) * CT] = b[i][2] - b[i][1];
    v[(size_t)(4 * i + 3) * CT] = b[i][1] - b[i][3];
  }
}

/* U[xi][a][b] (16, A, B) for output channel a and input channel b of the pass. w is the
 * layer's (OC, IC, 3, 3). flip = 0 (forward): A = OC, B = IC, g = w[a][b]. flip = 1 (data
 * gradient): A = IC, B = OC, g = w[b][a] turned by 180 degrees. */
WG_FN void wg2_filter_tile(const float *w, int a, int b, int A, int B, int flip, float *U) {
  float g[3][3], q[4][3];
  const float *src = flip ? w + ((size_t)b * A + a) * 9 : w + ((size_t)a * B + b) * 9;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) g[i][j] = flip ? src[(2 - i) * 3 + (2 - j)] : src[i * 3 + j];
  for (int j = 0; j < 3; j++) { /* G g */
    q[0][j] = g[0][j];
    q[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
    q[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
    q[3][j] = g[2][j];
  }
  const size_t AB = (size_t)A * B;
  float *u = U + (size_t)a * B + b;
  for (int i = 0; i < 4; i++) { /* (G g) G^T */
    u[(size_t)(4 * i + 0) * AB] = q[i][0];
    u[(size_t)(4 * i + 1) * AB] = 0.5f * (q[i][0] + q[i][1] + q[i][2]);
    u[(size_t)(4 * i + 2) * AB] = 0.5f * (q[i][0] - q[i][1] + q[i][2]);
    u[(size_t)(4 * i + 3) * AB] = q[i][2];
  }
}

/* The 2x2 outputs of output channel k and tile t from M[xi][k][t]: y (the pass's nb images,
 * (nb, K, OH, OW)) overwritten, plus bias[k] when bias is not NULL. */
WG_FN void wg2_output_tile(const WgGeom *g, const float *M, int k, size_t t, size_t T,
                          const float *bias, float *y) {
  size_t n;
  int ty, tx;
  wg_tile_pos(g, t, &n, &ty, &tx);
  const size_t KT = (size_t)g->K * T;
  const float *m = M + (size_t)k * T + t;
  float p[4][4], a[2][4];
  for (int xi = 0; xi < 16; xi++) p[xi / 4][xi % 4] = m[(size_t)xi * KT];
  for (int j = 0; j < 4; j++) { /* A^T M */
    a[0][j] = p[0][j] + p[1][j] + p[2][j];
    a[1][j] = p[1][j] - p[2][j] - p[3][j];
  }
  const float bk = bias ? bias[k] : 0.0f;
  float *yk = y + (n * (size_t)g->K + (size_t)k) * (size_t)g->OH * (size_t)g->OW;
  for (int i = 0; i < 2; i++) { /* (A^T M) A */
    const int oh = 2 * ty + i;
    if (oh >= g->OH) continue;
    const float o[2] = {a[i][0] + a[i][1] + a[i][2], a[i][1] - a[i][2] - a[i][3]};
    for (int j = 0; j < 2; j++) {
      const int ow = 2 * tx + j;
      if (ow < g->OW) yk[(size_t)oh * g->OW + ow] = bias ? o[j] + bk : o[j];
    }
  }
}

/* The weight gradient, F(3x3, 2x2) (optional, conv_winograd.cu): with the forward written as
 * y = A^T ((G g G^T) (.) V) A per tile, dL/dg = G^T [sum over tiles of (A dY A^T) (.) V] G, dY
 * the tile's 2x2 output gradient (zeros past OH, OW). Z[xi][k][t] = (A dY A^T) for output
 * channel k and tile t of dy (the pass's nb images, (nb, K, OH, OW)); S[xi][k][c] = sum over
 * t of Z[xi][k][t] V[xi][c][t] (16 GEMMs, S_xi = Z_xi V_xi^T); dw[k][c] += G^T S[k][c] G. */
WG_FN void wg_dy_tile(const WgGeom *g, const float *dy, int k, size_t t, size_t T, float *Z) {
  size_t n;
  int ty, tx;
  wg_tile_pos(g, t, &n, &ty, &tx);
  const float *dk = dy + (n * (size_t)g->K + (size_t)k) * (size_t)g->OH * (size_t)g->OW;
  float d[2][2], e[4][2];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) {
      const int oh = 2 * ty + i, ow = 2 * tx + j;
      d[i][j] = oh < g->OH && ow < g->OW ? dk[(size_t)oh * g->OW + ow] : 0.0f;
    }
  for (int j = 0; j < 2; j++) { /* A dY, A = (A^T)^T (4x2) */
    e[0][j] = d[0][j];
    e[1][j] = d[0][j] + d[1][j];
    e[2][j] = d[0][j] - d[1][j];
    e[3][j] = -d[1][j];
  }
  const size_t KT = (size_t)g->K * T;
  float *z = Z + (size_t)k * T + t;
  for (int i = 0; i < 4; i++) { /* (A dY) A^T */
    z[(size_t)(4 * i + 0) * KT] = e[i][0];
    z[(size_t)(4 * i + 1) * KT] = e[i][0] + e[i][1];
    z[(size_t)(4 * i + 2) * KT] = e[i][0] - e[i][1];
    z[(size_t)(4 * i + 3) * KT] = -e[i][1];
  }
}

/* dw[k][c] (3x3, of the layer's (K, C, 3, 3)) += G^T S[k][c] G. */
WG_FN void wg_wgrad_tile(const float *S, int k, int c, int K, int C, float *dw) {
  const size_t KC = (size_t)K * C;
  const float *sp = S + (size_t)k * C + c;
  float s[4][4], q[3][4];
  for (int xi = 0; xi < 16; xi++) s[xi / 4][xi % 4] = sp[(size_t)xi * KC];
  for (int j = 0; j < 4; j++) { /* G^T S */
    q[0][j] = s[0][j] + 0.5f * (s[1][j] + s[2][j]);
    q[1][j] = 0.5f * (s[1][j] - s[2][j]);
    q[2][j] = 0.5f * (s[1][j] + s[2][j]) + s[3][j];
  }
  float *w = dw + ((size_t)k * C + c) * 9;
  for (int i = 0; i < 3; i++) { /* (G^T S) G */
    w[i * 3 + 0] += q[i][0] + 0.5f * (q[i][1] + q[i][2]);
    w[i * 3 + 1] += 0.5f * (q[i][1] - q[i][2]);
    w[i * 3 + 2] += 0.5f * (q[i][1] + q[i][2]) + q[i][3];
  }
}

/* ---- F(4x4, 3x3) -------------------------------------------------------------------------- */

/* v = B^T d (6 values) */
WG_FN void wg4_bt(const float d[6], float v[6]) {
  const float t1 = d[4] - 4.0f * d[2], t2 = d[3] - 4.0f * d[1];
  const float t3 = d[4] - d[2], t4 = 2.0f * (d[3] - d[1]);
  v[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
  v[1] = t1 + t2;
  v[2] = t1 - t2;
  v[3] = t3 + t4;
  v[4] = t3 - t4;
  v[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

/* y = A^T s (4 values from 6) */
WG_FN void wg4_at(const float s[6], float y[4]) {
  const float p1 = s[1] + s[2], m1 = s[1] - s[2], p2 = s[3] + s[4], m2 = s[3] - s[4];
  y[0] = s[0] + p1 + p2;
  y[1] = m1 + 2.0f * m2;
  y[2] = p1 + 4.0f * p2;
  y[3] = m1 + 8.0f * m2 + s[5];
}

/* q = G g (6 values from 3) */
WG_FN void wg4_g(const float g[3], float q[6]) {
  q[0] = 0.25f * g[0];
  q[1] = -(g[0] + g[1] + g[2]) / 6.0f;
  q[2] = -(g[0] - g[1] + g[2]) / 6.0f;
  q[3] = g[0] / 24.0f + g[1] / 12.0f + g[2] / 6.0f;
  q[4] = g[0] / 24.0f - g[1] / 12.0f + g[2] / 6.0f;
  q[5] = g[2];
}

WG_FN void wg4_input_tile(const WgGeom *g, const float *x, int c, size_t t, size_t T, float *V) {
  size_t n;
  int ty, tx;
  wg_tile_pos(g, t, &n, &ty, &tx);
  const float *xc = x + (n * (size_t)g->C + (size_t)c) * (size_t)g->H * (size_t)g->W;
  const int h0 = 4 * ty - g->pad, w0 = 4 * tx - g->pad;
  float d[6][6], b[6][6];
  for (int i = 0; i < 6; i++) {
    const int h = h0 + i;
    for (int j = 0; j < 6; j++) {
      const int w = w0 + j;
      d[i][j] = h >= 0 && h < g->H && w >= 0 && w < g->W ? xc[(size_t)h * g->W + w] : 0.0f;
    }
  }
  for (int j = 0; j < 6; j++) { /* B^T d, column by column */
    float col[6], v[6];
    for (int i = 0; i < 6; i++) col[i] = d[i][j];
    wg4_bt(col, v);
    for (int i = 0; i < 6; i++) b[i][j] = v[i];
  }
  const size_t CT = (size_t)g->C * T;
  float *vp = V + (size_t)c * T + t;
  for (int i = 0; i < 6; i++) { /* (B^T d) B, row by row */
    float v[6];
    wg4_bt(b[i], v);
    for (int j = 0; j < 6; j++) vp[(size_t)(6 * i + j) * CT] = v[j];
  }
}

WG_FN void wg4_filter_tile(const float *w, int a, int b, int A, int B, int flip, float *U) {
  float g[3][3], q[6][3];
  const float *src = flip ? w + ((size_t)b * A + a) * 9 : w + ((size_t)a * B + b) * 9;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) g[i][j] = flip ? src[(2 - i) * 3 + (2 - j)] : src[i * 3 + j];
  for (int j = 0; j < 3; j++) { /* G g */
    const float col[3] = {g[0][j], g[1][j], g[2][j]};
    float v[6];
    wg4_g(col, v);
    for (int i = 0; i < 6; i++) q[i][j] = v[i];
  }
  const size_t AB = (size_t)A * B;
  float *u = U + (size_t)a * B + b;
  for (int i = 0; i < 6; i++) { /* (G g) G^T */
    float v[6];
    wg4_g(q[i], v);
    for (int j = 0; j < 6; j++) u[(size_t)(6 * i + j) * AB] = v[j];
  }
}

WG_FN void wg4_output_tile(const WgGeom *g, const float *M, int k, size_t t, size_t T,
                           const float *bias, float *y) {
  size_t n;
  int ty, tx;
  wg_tile_pos(g, t, &n, &ty, &tx);
  const size_t KT = (size_t)g->K * T;
  const float *mp = M + (size_t)k * T + t;
  float p[6][6], a[4][6];
  for (int xi = 0; xi < 36; xi++) p[xi / 6][xi % 6] = mp[(size_t)xi * KT];
  for (int j = 0; j < 6; j++) { /* A^T M */
    float col[6], o[4];
    for (int i = 0; i < 6; i++) col[i] = p[i][j];
    wg4_at(col, o);
    for (int i = 0; i < 4; i++) a[i][j] = o[i];
  }
  const float bk = bias ? bias[k] : 0.0f;
  float *yk = y + (n * (size_t)g->K + (size_t)k) * (size_t)g->OH * (size_t)g->OW;
  for (int i = 0; i < 4; i++) { /* (A^T M) A */
    const int oh = 4 * ty + i;
    if (oh >= g->OH) continue;
    float o[4];
    wg4_at(a[i], o);
    for (int j = 0; j < 4; j++) {
      const int ow = 4 * tx + j;
      if (ow < g->OW) yk[(size_t)oh * g->OW + ow] = bias ? o[j] + bk : o[j];
    }
  }
}

/* ---- either tile size ---------------------------------------------------------------------- */

WG_FN void wg_input_tile(const WgGeom *g, const float *x, int c, size_t t, size_t T, float *V) {
  if (g->m == 4)
    wg4_input_tile(g, x, c, t, T, V);
  else
    wg2_input_tile(g, x, c, t, T, V);
}

/* U[xi][a][b] (a*a, A, B) of tile size m (see wg2_filter_tile for A, B and flip). */
WG_FN void wg_filter_tile(const float *w, int a, int b, int A, int B, int flip, int m, float *U) {
  if (m == 4)
    wg4_filter_tile(w, a, b, A, B, flip, U);
  else
    wg2_filter_tile(w, a, b, A, B, flip, U);
}

WG_FN void wg_output_tile(const WgGeom *g, const float *M, int k, size_t t, size_t T,
                          const float *bias, float *y) {
  if (g->m == 4)
    wg4_output_tile(g, M, k, t, T, bias, y);
  else
    wg2_output_tile(g, M, k, t, T, bias, y);
}

#endif
