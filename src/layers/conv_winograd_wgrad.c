/* conv_winograd_wgrad.c — the weight gradient of the fast backend's
 * Winograd convolution (conv_winograd.c has the method, the tile choice,
 * the forward and the data gradient; conv_winograd_priv.h what the two
 * share). Not a reference: tests/unit/test_winograd.c compares it with
 * convolution.c.
 */
#include <omp.h>
#include <string.h>

#include "conv_winograd.h"
#include "conv_winograd_priv.h"
#include "fast.h"
#include "util.h"

/* ---- the weight gradient -------------------------------------------------------------- */

/* With y = A^T [U (.) V] A and U = G g G^T, the gradient of a tile's loss
 * sum(dy (.) y) is dL/dU = (A dy A^T) (.) V and dL/dg = G^T (dL/dU) G:
 *
 *   Y (a*a, cout, P)   = A dy A^T        per tile of dy (m x m, zero past OH/OW)
 *   dU[xi] (cout, cin) += Y[xi] x V[xi]^T  one GEMM per xi, summed over the chunks
 *   dW (cout, cin, 3, 3) += G^T dU G
 *
 * with V the forward's input tiles. */

/* A y for one column y (m) of a dy tile: v (a). */
/* clang-format off */
#define AY2(y0, y1, v0, v1, v2, v3) \
  do {                              \
    v0 = (y0);                      \
    v1 = (y0) + (y1);               \
    v2 = (y0) - (y1);               \
    v3 = -(y1);                     \
  } while (0)
#define AY4(y0, y1, y2, y3, v0, v1, v2, v3, v4, v5)                               \
  do {                                                                            \
    const float e_ = (y0) + (y2), o_ = (y1) + (y3), e4_ = (y0) + 4.0f * (y2),     \
                o4_ = 2.0f * (y1) + 8.0f * (y3);                                  \
    v0 = (y0);                                                                    \
    v1 = e_ + o_;                                                                 \
    v2 = e_ - o_;                                                                 \
    v3 = e4_ + o4_;                                                               \
    v4 = e4_ - o4_;                                                               \
    v5 = (y3);                                                                    \
  } while (0)

/* clang-format on */

/* Y (a*a, cout, P), columns of tile rows [r0, r1), channel oc: the dy tiles
 * of dy (N,cout,OH,OW); P the padded row stride. scratch: (m, m, ld) strip +
 * (a, m, ld). */
static void grad_rows(const Wino *z, const float *dy, int oc, int r0, int r1, float *Y, size_t P,
                      float *scratch) {
  const int a = z->a, m = z->m, tw = z->tw;
  const int twp = tiles_padded(tw), ld = row_ld(tw), cols = m * ld;
  float *strip = scratch;                 /* (m, m, ld): dy rows, by column phase */
  float *sv = scratch + (size_t)m * cols; /* (a, m, ld): A applied down the columns */
  const size_t xs = plane_stride(z->cout, P);
  for (int r = r0; r < r1; r++) {
    const int n = r / z->th, t = r % z->th;
    const float *plane = dy + ((size_t)n * z->cout + oc) * z->oh * z->ow; /* (OH,OW) */
    for (int q = 0; q < m; q++) {
      float *row = strip + (size_t)q * cols;
      const int oh = t * m + q;
      if (oh >= z->oh)
        memset(row, 0, (size_t)cols * sizeof(float));
      else
        wino_fill_phases(plane + (size_t)oh * z->ow, z->ow, 0, m, tw, ld, row);
    }
    float *out = Y + (size_t)oc * P + (size_t)(r - r0) * tw;
    if (a == 4) {
      const float *s0 = strip, *s1 = s0 + cols;
      float *restrict t0 = sv, *restrict t1 = t0 + cols, *restrict t2 = t1 + cols,
                      *restrict t3 = t2 + cols;
#pragma omp simd
      for (int xx = 0; xx < cols; xx++) AY2(s0[xx], s1[xx], t0[xx], t1[xx], t2[xx], t3[xx]);
      for (int i = 0; i < 4; i++) {
        const float *p0 = sv + i * cols, *p1 = p0 + ld;
        float *restrict o0 = out + (size_t)(i * 4) * xs, *restrict o1 = o0 + xs,
                        *restrict o2 = o1 + xs, *restrict o3 = o2 + xs;
#pragma omp simd
        for (int j = 0; j < twp; j++) AY2(p0[j], p1[j], o0[j], o1[j], o2[j], o3[j]);
      }
    } else {
      const float *s0 = strip, *s1 = s0 + cols, *s2 = s1 + cols, *s3 = s2 + cols;
      float *restrict t0 = sv, *restrict t1 = t0 + cols, *restrict t2 = t1 + cols,
                      *restrict t3 = t2 + cols, *restrict t4 = t3 + cols, *restrict t5 = t4 + cols;
#pragma omp simd
      for (int xx = 0; xx < cols; xx++)
        AY4(s0[xx], s1[xx], s2[xx], s3[xx], t0[xx], t1[xx], t2[xx], t3[xx], t4[xx], t5[xx]);
      for (int i = 0; i < 6; i++) {
        const float *p0 = sv + i * cols, *p1 = p0 + ld, *p2 = p1 + ld, *p3 = p2 + ld;
        float *restrict o0 = out + (size_t)(i * 6) * xs, *restrict o1 = o0 + xs,
                        *restrict o2 = o1 + xs, *restrict o3 = o2 + xs, *restrict o4 = o3 + xs,
                        *restrict o5 = o4 + xs;
#pragma omp simd
        for (int j = 0; j < twp; j++)
          AY4(p0[j], p1[j], p2[j], p3[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
      }
    }
  }
}

/* dU (a*a, cout, cin) += the products of tile rows [r0, r1). */
static int wgrad_chunk(const Wino *z, const float *x, const float *dy, float *dU, int r0, int r1,
                       bool par) {
  const int aa = z->a * z->a;
  const size_t P = (size_t)(r1 - r0) * z->tw, Pp = chunk_stride(P);
  float *V, *Y;
  if (wino_chunk_tiles(z, x, r0, r1, par, "Winograd gradient tiles", &V, &Y)) return -1;
  const size_t scr = wino_scratch_floats(z);
  int rc = 0;
#pragma omp parallel for schedule(static) \
    reduction(|                           \
              : rc) if (par && aa * z->cout * P >= FAST_GRAIN)
  for (int oc = 0; oc < z->cout; oc++) {
    float *s = fast_workspace(FAST_WS_AUX, scr, "Winograd transform scratch");
    if (s)
      grad_rows(z, dy, oc, r0, r1, Y, Pp, s);
    else
      rc |= 1;
  }
  if (rc) return -1;
  /* dU[xi] (cout, cin) += Y[xi] (cout, P) x V[xi]^T (P, cin) */
#pragma omp parallel for schedule(dynamic, 1) reduction(| : rc) if (par)
  for (int xi = 0; xi < aa; xi++)
    rc |= fast_gemm(false, true, z->cout, z->cin, (int)P, 1.0f, Y + xi * plane_stride(z->cout, Pp),
                    (int)Pp, V + xi * plane_stride(z->cin, Pp), (int)Pp, 1.0f,
                    dU + (size_t)xi * z->cout * z->cin, z->cin);
  return rc ? -1 : 0;
}

/* wdiff (cout, cin, 3, 3) += G^T dU G. */
static void weights_from_transform(const Wino *z, const float *dU, float *wdiff) {
  const int a = z->a, co_n = z->cout, ci_n = z->cin;
  const size_t plane = (size_t)co_n * ci_n;
  const float(*G)[3] = z->m == 2 ? wino_G2 : wino_G4;
  enum { V = 16 };
  const int blocks = (ci_n + V - 1) / V;
#pragma omp parallel for schedule(static) if (plane * a * a >= FAST_GRAIN)
  for (int b = 0; b < co_n * blocks; b++) {
    const int co = b / blocks, ci0 = b % blocks * V, nv = ci_n - ci0 < V ? ci_n - ci0 : V;
    const float *d0 = dU + (size_t)co * ci_n + ci0; /* dU[xi][co][ci0+v] = d0[xi*plane + v] */
    float d[36][V], t[6][3][V], w[9][V];
    for (int xi = 0; xi < a * a; xi++) {
      for (int v = 0; v < nv; v++) d[xi][v] = d0[xi * plane + v];
      for (int v = nv; v < V; v++) d[xi][v] = 0.0f;
    }
    /* t[i][kw] = sum_i2 dU[i][i2] G[i2][kw]; w[kh][kw] = sum_i G[i][kh] t[i][kw] */
    for (int i = 0; i < a; i++)
      for (int kw = 0; kw < 3; kw++) {
#pragma omp simd
        for (int v = 0; v < V; v++) {
          float acc = 0.0f;
          for (int i2 = 0; i2 < a; i2++) acc += d[i * a + i2][v] * G[i2][kw];
          t[i][kw][v] = acc;
        }
      }
    for (int kh = 0; kh < 3; kh++)
      for (int kw = 0; kw < 3; kw++) {
#pragma omp simd
        for (int v = 0; v < V; v++) {
          float acc = 0.0f;
          for (int i = 0; i < a; i++) acc += G[i][kh] * t[i][kw][v];
          w[kh * 3 + kw][v] = acc;
        }
      }
    float *dst = wdiff + ((size_t)co * ci_n + ci0) * 9; /* (nv, 3, 3) */
    for (int v = 0; v < nv; v++)
      for (int k = 0; k < 9; k++) dst[v * 9 + k] += w[k][v];
  }
}

int conv_winograd_backward_weights(const ConvPriv *p, const float *x, const float *dy,
                                   float *wdiff) {
  const int m = conv_winograd_tile(p, false);
  if (!m) return moka_errorf("internal: Winograd called on a convolution it does not apply to");
  Wino z;
  wino_init(&z, m, p->num, p->channels, p->num_output, p->height, p->width, p->pad_h, p->pad_w);
  const WinoPlan pl = wino_plan(&z);
  const size_t nU = (size_t)z.a * z.a * z.cout * z.cin;
  int rc = 0;
  float *dU = NULL;
  if (pl.by_chunk) {
    /* Thread t takes chunks t, t+T, ... into its own dU (a fixed assignment:
     * the same sums on every run), added in thread order afterwards. */
    const int T = pl.threads;
    float *acc[64] = {0};
    if (T > 64) return moka_errorf("internal: more than 64 threads");
#pragma omp parallel num_threads(T) reduction(| : rc)
    {
      const int t = omp_get_thread_num();
      float *mine = fast_workspace(FAST_WS_WINO, nU, "Winograd weight gradient");
      if (mine) {
        memset(mine, 0, nU * sizeof(float));
        acc[t] = mine;
        for (int k = t; k < pl.n_chunks && !rc; k += T) {
          const int r0 = k * pl.chunk, r1 = r0 + pl.chunk < pl.rows ? r0 + pl.chunk : pl.rows;
          rc |= wgrad_chunk(&z, x, dy, mine, r0, r1, false);
        }
      } else {
        rc |= 1;
      }
    }
    if (rc) return -1;
    dU = acc[0];
#pragma omp parallel for simd schedule(static) if (nU >= FAST_GRAIN)
    for (size_t k = 0; k < nU; k++)
      for (int t = 1; t < T; t++) dU[k] += acc[t][k];
  } else {
    if (!(dU = fast_workspace(FAST_WS_WINO, nU, "Winograd weight gradient"))) return -1;
    memset(dU, 0, nU * sizeof(float));
    for (int r0 = 0; r0 < pl.rows && !rc; r0 += pl.chunk)
      rc = wgrad_chunk(&z, x, dy, dU, r0, r0 + pl.chunk < pl.rows ? r0 + pl.chunk : pl.rows, true);
    if (rc) return -1;
  }
  weights_from_transform(&z, dU, wdiff);
  return 0;
}
