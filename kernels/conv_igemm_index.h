/* conv_igemm_index.h — the index math of moka's implicit-GEMM convolution
 * (kernels/conv_igemm.cu), in plain C that compiles both for the device
 * (nvcc: __host__ __device__) and for the host (a C11 compiler), so that
 * tests/gpu/test_igemm_index.c checks exactly these functions on the CPU
 * against a naive im2col/col2im, without a GPU.
 *
 * Notation (per group g; Cg = C/G input channels, OCg = OC/G outputs,
 * KHW = KH*KW, HW = H*W, OHW = OH*OW):
 *   forward          y_g (OCg, N*OHW)   = W_g (OCg, Cg*KHW) x col_g (Cg*KHW, N*OHW)
 *   data gradient    dx_g (Cg, N*HW)    = W_g^T' (Cg, OCg*KHW) x dcol'_g (OCg*KHW, N*HW)
 *   weight gradient  dW_g (OCg, Cg*KHW) = dy_g (OCg, N*OHW) x col_g^T (N*OHW, Cg*KHW)
 * where col is Caffe's im2col matrix, never materialised: its element
 * (k = (c,kh,kw), n = (img,oh,ow)) is read from x on the fly
 * (igemm_fwd_src), and dcol' gathers, for an input pixel n = (img,h,w) and a
 * tap k = (oc,kh,kw), the dy value that tap receives from, or nothing when
 * (h + pad - kh*dil) is negative, not a multiple of the stride or past the
 * output (igemm_dgrad_src).
 *
 * Split into a "pixel" part (from the GEMM's n or K=(img,...) coordinate,
 * computed once per thread) and a "tap" part (from (c,kh,kw) or
 * (oc,kh,kw), precomputed into a small table per geometry), so the kernels
 * do no integer division in their inner loops.
 * Offsets are element offsets into the NCHW blobs; -1 means "zero" (padding
 * or a tap that does not exist).
 */
#ifndef MOKA_CONV_IGEMM_INDEX_H
#define MOKA_CONV_IGEMM_INDEX_H

#ifdef __CUDACC__
#define IGEMM_HD static inline __host__ __device__
#else
#define IGEMM_HD static inline
#endif

/* The geometry with the derived sizes (all fit int: the launcher checks
 * that every per-image blob and every GEMM dimension is < 2^31). */
typedef struct IgemmGeom {
  int num, C, H, W, OC, G, OH, OW;
  int KH, KW, PH, PW, SH, SW, DH, DW;
  int Cg, OCg, KHW, HW, OHW;
} IgemmGeom;

IGEMM_HD IgemmGeom igemm_geom(int num, int C, int H, int W, int OC, int G, int OH, int OW, int KH,
                              int KW, int PH, int PW, int SH, int SW, int DH, int DW) {
  IgemmGeom g;
  g.num = num; g.C = C; g.H = H; g.W = W; g.OC = OC; g.G = G; g.OH = OH; g.OW = OW;
  g.KH = KH; g.KW = KW; g.PH = PH; g.PW = PW; g.SH = SH; g.SW = SW; g.DH = DH; g.DW = DW;
  g.Cg = C / G;
  g.OCg = OC / G;
  g.KHW = KH * KW;
  g.HW = H * W;
  g.OHW = OH * OW;
  return g;
}

/* A tap: k -> (c or oc, kh, kw) precomputed. 16-byte aligned, so that the
 * kernels read one with a single 128-bit load. */
typedef struct __attribute__((aligned(16))) IgemmTap {
  int off;  /* forward/wgrad: c*HW (input channel within the group); dgrad: oc*OHW */
  int dh;   /* kh * dil_h */
  int dw;   /* kw * dil_w */
  int woff; /* dgrad: oc*Cg*KHW + kh*KW + kw, the weight offset without group and c */
} IgemmTap;

/* A pixel: the other coordinate, decomposed once. */
typedef struct IgemmPix {
  long long base; /* element offset of (img, group's first channel) in x (fwd) or dy (dgrad) */
  int h0, w0;     /* fwd: oh*SH - PH, ow*SW - PW;  dgrad: h + PH, w + PW */
} IgemmPix;

/* k in [0, Cg*KHW) = (c, kh, kw), Caffe's im2col row order. */
IGEMM_HD IgemmTap igemm_fwd_tap(const IgemmGeom *g, int k) {
  IgemmTap t;
  const int c = k / g->KHW, r = k - c * g->KHW, kh = r / g->KW, kw = r - kh * g->KW;
  t.off = c * g->HW;
  t.dh = kh * g->DH;
  t.dw = kw * g->DW;
  t.woff = 0;
  return t;
}

/* n in [0, num*OHW) = (img, oh, ow): the output pixel of the forward GEMM
 * (and the K coordinate of the weight gradient), group `grp`. */
IGEMM_HD IgemmPix igemm_out_pix(const IgemmGeom *g, int grp, int n) {
  IgemmPix p;
  const int img = n / g->OHW, r = n - img * g->OHW, oh = r / g->OW, ow = r - oh * g->OW;
  p.base = ((long long)img * g->C + (long long)grp * g->Cg) * g->HW;
  p.h0 = oh * g->SH - g->PH;
  p.w0 = ow * g->SW - g->PW;
  return p;
}

/* The x element of im2col's (k, n), or -1 for padding. */
IGEMM_HD long long igemm_fwd_src(const IgemmGeom *g, IgemmPix p, IgemmTap t) {
  const int h = p.h0 + t.dh, w = p.w0 + t.dw;
  if (h < 0 || h >= g->H || w < 0 || w >= g->W) return -1;
  return p.base + t.off + (long long)h * g->W + w;
}

/* Forward output element (m = output channel within group, n = (img,oh,ow)). */
IGEMM_HD long long igemm_fwd_dst(const IgemmGeom *g, int grp, int m, int n) {
  const int img = n / g->OHW, r = n - img * g->OHW;
  return ((long long)img * g->OC + (long long)grp * g->OCg + m) * g->OHW + r;
}

/* The forward GEMM's A operand: W (OC, Cg*KHW), row grp*OCg + m, column k. */
IGEMM_HD long long igemm_fwd_w(const IgemmGeom *g, int grp, int m, int k) {
  return ((long long)grp * g->OCg + m) * ((long long)g->Cg * g->KHW) + k;
}

/* ---- data gradient --------------------------------------------------------------------- */

/* k in [0, OCg*KHW) = (oc, kh, kw). */
IGEMM_HD IgemmTap igemm_dgrad_tap(const IgemmGeom *g, int k) {
  IgemmTap t;
  const int oc = k / g->KHW, r = k - oc * g->KHW, kh = r / g->KW, kw = r - kh * g->KW;
  t.off = oc * g->OHW;
  t.dh = kh * g->DH;
  t.dw = kw * g->DW;
  t.woff = oc * g->Cg * g->KHW + r;
  return t;
}

/* n in [0, num*HW) = (img, h, w): an input pixel, group `grp`. */
IGEMM_HD IgemmPix igemm_in_pix(const IgemmGeom *g, int grp, int n) {
  IgemmPix p;
  const int img = n / g->HW, r = n - img * g->HW, h = r / g->W, w = r - h * g->W;
  p.base = ((long long)img * g->OC + (long long)grp * g->OCg) * g->OHW;
  p.h0 = h + g->PH;
  p.w0 = w + g->PW;
  return p;
}

/* The dy element that input pixel p receives through tap t, or -1:
 * oh = (h + PH - kh*DH) / SH when that is exact and inside [0, OH). */
IGEMM_HD long long igemm_dgrad_src(const IgemmGeom *g, IgemmPix p, IgemmTap t) {
  int hp = p.h0 - t.dh, wp = p.w0 - t.dw;
  if (hp < 0 || wp < 0) return -1;
  int oh = hp, ow = wp;
  if (g->SH != 1) {
    oh = hp / g->SH;
    if (oh * g->SH != hp) return -1;
  }
  if (g->SW != 1) {
    ow = wp / g->SW;
    if (ow * g->SW != wp) return -1;
  }
  if (oh >= g->OH || ow >= g->OW) return -1;
  return p.base + t.off + (long long)oh * g->OW + ow;
}

/* The data-gradient GEMM's A operand: W^T' (Cg, OCg*KHW) element (m = c, k), from W
 * (OC, Cg, KH, KW): w[grp*OCg + oc][m][kh][kw]. */
IGEMM_HD long long igemm_dgrad_w(const IgemmGeom *g, int grp, int m, IgemmTap t) {
  return (long long)grp * g->OCg * g->Cg * g->KHW + t.woff + (long long)m * g->KHW;
}

/* Data-gradient output element (m = input channel within group, n = (img,h,w)). */
IGEMM_HD long long igemm_dgrad_dst(const IgemmGeom *g, int grp, int m, int n) {
  const int img = n / g->HW, r = n - img * g->HW;
  return ((long long)img * g->C + (long long)grp * g->Cg + m) * g->HW + r;
}

/* ---- weight gradient ------------------------------------------------------------------- */

/* The weight-gradient GEMM's A operand: dy (OCg, num*OHW) element (m, k = (img, oh, ow)). */
IGEMM_HD long long igemm_wgrad_dy(const IgemmGeom *g, int grp, int m, int k) {
  const int img = k / g->OHW, r = k - img * g->OHW;
  return ((long long)img * g->OC + (long long)grp * g->OCg + m) * g->OHW + r;
}
/* Its B operand is col_g^T: element (k = (img,oh,ow), n = (c,kh,kw)) is
 * igemm_fwd_src(g, igemm_out_pix(g, grp, k), igemm_fwd_tap(g, n)); its
 * output dW (OC, Cg*KHW) element (m, n) is igemm_fwd_w(g, grp, m, n). */

/* ---- split-K (host) ---------------------------------------------------------------------- */

/* The weight gradient's split-K (conv_igemm.cu and conv_nhwc.cu): about two
 * CTAs per SM, at least 8 slices of bk values of K per split, at most 64
 * splits; *kchunk_out (a multiple of bk) is each split's share of K, every
 * split non-empty. Depends only on the geometry and the SM count, so a run is
 * reproducible on a given GPU. */
IGEMM_HD void igemm_plan_split(int M, int N, int K, int G, int bm, int bn, int bk, int sms,
                               int *splits_out, int *kchunk_out) {
  const long long tiles = (long long)((M + bm - 1) / bm) * ((N + bn - 1) / bn) * G;
  const int nk = (K + bk - 1) / bk;
  long long splits = (2LL * sms + tiles - 1) / tiles;
  if (splits > nk / 8) splits = nk / 8;
  if (splits > 64) splits = 64;
  if (splits * G > 65535) splits = 65535 / G;
  if (splits < 1) splits = 1;
  const int kchunk = (int)((nk + splits - 1) / splits) * bk;
  *kchunk_out = kchunk;
  *splits_out = (K + kchunk - 1) / kchunk;
}

#endif
