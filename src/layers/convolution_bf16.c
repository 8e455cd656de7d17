/* convolution_bf16.c — the Convolution layer with bf16 GEMMs (--precision=bf16)
 * on the fast CPU backend, without an fp32 column buffer.
 *
 * The fp32 path (convolution_fast.c) writes im2col columns in fp32, and the
 * bf16 GEMM then reads them again to round and pack them; the weights are
 * rounded and packed again for every chunk of images. Here:
 *
 *   - the weights are rounded and packed ONCE per layer call (W for the
 *     forward, W^T for the data gradient; gemm_bf16.h's packed-A layout),
 *     by the whole pool, and shared read-only by the threads;
 *   - the im2col matrix col (IC/G*KH*KW, nc*S) of a chunk of nc images is
 *     never stored: the GEMM's B-packing callback reads it straight from the
 *     input, 16 values at a time, and writes the bf16 micro-panels
 *     (forward: pack_cols, pairs along col's rows; weight gradient:
 *     pack_cols_t, pairs along its columns, i.e. col^T);
 *   - the output gradient dY (OC, nc*S) is rounded once per use it has:
 *     packed as A (pairs along pixels) for dW_g += dY_g x col_g^T, and as
 *     plain B (pairs along OC) for dcol_g = W_g^T x dY_g.
 *
 * Reading col: element (r, n) of a chunk's col is, with r = (c, kh, kw) and
 * column n = (image j, output pixel oh, ow),
 *
 *   x[j][c][ih][iw],  ih = oh*SH - PH + kh*DH,  iw = ow*SW - PW + kw*DW
 *
 * or 0 outside the image. Two tables split that address into a row part
 * (r: c*H*W + kh*DH*W + kw*DW, kh*DH, kw*DW) and a column part (n: j*C*H*W +
 * (oh*SH-PH)*W + ow*SW-PW, oh*SH-PH, ow*SW-PW): 16 columns of one row are
 * two adds, two unsigned range checks (the mask of lanes inside the image)
 * and a masked load. Which load is decided per group of 16 columns when the
 * chunk's tables are built: one vector load when their offsets are
 * consecutive (stride 1; with W == OW, as for a 3x3 pad 1, also across
 * output rows), two when they form two consecutive runs (a group across two
 * images), two and a permute for stride 2, else a gather (slow on AMD).
 * A 1x1 convolution with a stride (ResNet's downsampling 1x1s) writes its
 * compact fp32 columns instead, as the fp32 path does: it would be all
 * gathers. Past the last row or column the tables hold an offset far outside
 * the image, so the packed panels are zero there. The packing walks rows of
 * col (sequential reads) and prefetches the next ones: the reads of the
 * input are what it waits for.
 *
 * Chunks and threads as in convolution_fast.c (~512 columns per GEMM,
 * chunks side by side), except for layers with few columns per thread (see
 * plan()). Numerics: the same bf16 rounding of the same operands (round to
 * nearest even, denormals to zero) and fp32 accumulation as the older path;
 * only the order of the fp32 sums differs (tests/unit/test_bf16_conv.c).
 */
#include <limits.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "convolution_bf16.h"
#include "convolution_priv.h"
#include "fast.h"
#include "gemm_bf16.h"
#include "layer.h"
#include "util.h"

/* Columns (output pixels x images) per GEMM, as FAST_CONV_COLS (512 measured
 * as good as 256 or 1024 here); see plan() for the other two. */
#define BF16_CONV_COLS 512
#define BF16_CONV_FEW_COLS 1024
#define BF16_CONV_BIG_COLS 2048

/* A table entry that puts a row or column far outside every image. */
#define FAR_OUTSIDE (-(1 << 29))

enum { NR = BF16_NR };

/* Off: conv_bf16_set_direct(false), or MOKA_BF16_CONV=columns in the
 * environment (to compare the two paths in benchmarks). */
static int g_direct = -1; /* -1: not read yet */
void conv_bf16_set_direct(bool on) { g_direct = on; }
static bool direct_on(void) {
  if (g_direct < 0) {
    const char *env = getenv("MOKA_BF16_CONV");
    g_direct = !(env && !strcmp(env, "columns"));
  }
  return g_direct;
}

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

/* The chunk's col (kdim, ld) as the packing callbacks read it. */
typedef struct ConvCols {
  const float *x;                  /* chunk's first image, group's first channel */
  int H, W;
  const int32_t *roff, *rdh, *rdw; /* (kdim rounded up to NR) per row */
  const int32_t *pb, *pih, *piw;   /* (ld rounded up to NR) per column */
  const uint8_t *step;             /* (ld/16) how to load columns 16i..16i+15: 1 or 2: at
                                      x offsets pb[16i] + step*lane; 3: two such runs of
                                      step 1, the second from lane split[i]; 0: gather */
  const uint8_t *split;            /* (ld/16) */
} ConvCols;

/* One layer call: shapes, row tables, packed weights. */
typedef struct Bf16Conv {
  const ConvPriv *p;
  int G, OC, OCg, C, kdim, kdim_pad;
  size_t S, in_img, out_img, plane;
  bool compact; /* 1x1 with stride or pad: col is written (fp32, 1/stride^2 of the input) */
  int32_t *roff, *rdh, *rdw; /* (kdim_pad) each */
  const int32_t *wpack;      /* G x wsize dwords */
  size_t wsize;
} Bf16Conv;

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,bmi2")
#include <immintrin.h>

#include "avx512_transpose.h"
#include "bf16_simd.h"

/* The column part of 16 columns starting at n (n a multiple of 16). */
typedef struct Cols16 {
  __m512i pih, piw, pb;
  const float *xb;  /* x + pb[n] */
  const float *xb2; /* step 3: x + pb[n+a] - a, a = split */
  __mmask16 low;    /* step 3: the first run's lanes */
  int step;         /* as ConvCols.step */
} Cols16;

static inline Cols16 cols16(const ConvCols *c, int n) {
  const int g = n / 16, a = c->split[g];
  Cols16 v = {_mm512_loadu_si512(c->pih + n), _mm512_loadu_si512(c->piw + n),
              _mm512_loadu_si512(c->pb + n), c->x + c->pb[n], c->x + c->pb[n + a] - a,
              (__mmask16)((1u << a) - 1), c->step[g]};
  return v;
}

/* col (r, n..n+15), lanes outside `lanes` zero. The loads are masked to the
 * lanes inside the image (masked lanes never fault). */
static inline __m512 col_row16(const ConvCols *c, const Cols16 *v, int r, __mmask16 lanes) {
  const __m512i ih = _mm512_add_epi32(v->pih, _mm512_set1_epi32(c->rdh[r]));
  const __m512i iw = _mm512_add_epi32(v->piw, _mm512_set1_epi32(c->rdw[r]));
  const __mmask16 m = lanes & _mm512_cmplt_epu32_mask(ih, _mm512_set1_epi32(c->H)) &
                      _mm512_cmplt_epu32_mask(iw, _mm512_set1_epi32(c->W));
  if (v->step == 1) return _mm512_maskz_loadu_ps(m, v->xb + c->roff[r]);
  if (v->step == 3) {
    const __m512 a = _mm512_maskz_loadu_ps(m & v->low, v->xb + c->roff[r]);
    return _mm512_mask_loadu_ps(a, m & (__mmask16)~v->low, v->xb2 + c->roff[r]);
  }
  if (v->step == 2) { /* the even elements of 32 consecutive ones */
    const __m512i even =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const unsigned m2 = _pdep_u32(m, 0x55555555u);
    const __m512 a = _mm512_maskz_loadu_ps((__mmask16)m2, v->xb + c->roff[r]);
    const __m512 b = _mm512_maskz_loadu_ps((__mmask16)(m2 >> 16), v->xb + c->roff[r] + 16);
    return _mm512_permutex2var_ps(a, even, b);
  }
  const __m512i idx = _mm512_add_epi32(v->pb, _mm512_set1_epi32(c->roff[r]));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, c->x, 4);
}

/* Bf16PackB for the forward: B = col (kdim, ld), rows [p0, p0+kc), columns
 * [j0, j0+nc): micro-panel dword (kp, n) = (col(p0+2kp, n), col(p0+2kp+1, n)).
 * A pair of rows at a time, along the columns: sequential reads. */
static void pack_cols(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const ConvCols *c = ctx;
  const int kpt = (kc + 1) / 2, panels = (nc + NR - 1) / NR;
  for (int kp = 0; kp < kpt; kp++) {
    const int r = p0 + 2 * kp;
    const bool has1 = 2 * kp + 1 < kc;
    for (int jp = 0; jp < panels; jp++)
      for (int v = 0; v < NR; v += 16) {
        const Cols16 cv = cols16(c, j0 + jp * NR + v);
        if (2 * kp + 3 < kc) { /* the next pair of rows, a row's length ahead */
          for (int q = 2; q < 4; q++) {
            _mm_prefetch((const char *)(cv.xb + c->roff[r + q]), _MM_HINT_T0);
            if (cv.step >= 2)
              _mm_prefetch((const char *)((cv.step == 2 ? cv.xb : cv.xb2) + c->roff[r + q] + 15),
                           _MM_HINT_T0);
          }
        }
        const __m512 lo = col_row16(c, &cv, r, 0xFFFF);
        const __m512 hi = has1 ? col_row16(c, &cv, r + 1, 0xFFFF) : _mm512_setzero_ps();
        _mm512_storeu_si512(out + ((size_t)jp * kpt + kp) * NR + v, bf16_pairs_interleaved(lo, hi));
      }
  }
}

/* Bf16PackB for the weight gradient: B = col^T (ld, kdim), K range (pixels)
 * [p0, p0+kc), columns (col's rows) [j0, j0+nc): 16 rows of col read along
 * the pixels, 32 at a time, paired, and transposed 16 x 16. */
static void pack_cols_t(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const ConvCols *c = ctx;
  const int kpt = (kc + 1) / 2, panels = (nc + NR - 1) / NR;
  for (int jp = 0; jp < panels; jp++)
    for (int v = 0; v < NR; v += 16) {
      const int r0 = j0 + jp * NR + v;
      int32_t *dst = out + (size_t)jp * kpt * NR + v; /* (kpt, NR) */
      for (int k = 0; k < kc; k += 32) {
        const Cols16 c0 = cols16(c, p0 + k), c1 = cols16(c, p0 + k + 16);
        const __mmask16 l0 = bf16_mask16(kc - k), l1 = bf16_mask16(kc - k - 16);
        if (k + 96 <= kc) { /* the same rows, two steps ahead (when contiguous there) */
          const Cols16 cp = cols16(c, p0 + k + 64);
          if (cp.step == 1)
            for (int j = 0; j < 16; j++) {
              _mm_prefetch((const char *)(cp.xb + c->roff[r0 + j]), _MM_HINT_T0);
              _mm_prefetch((const char *)(cp.xb + c->roff[r0 + j] + 16), _MM_HINT_T0);
            }
        }
        __m512i t[16];
        for (int j = 0; j < 16; j++)
          t[j] = bf16_pairs_consecutive(col_row16(c, &c0, r0 + j, l0),
                                        col_row16(c, &c1, r0 + j, l1));
        transpose16(t); /* t[q] = pair k/2+q of the 16 rows */
        const int np = (kc - k + 1) / 2 < 16 ? (kc - k + 1) / 2 : 16;
        for (int q = 0; q < np; q++) _mm512_storeu_si512(dst + (size_t)(k / 2 + q) * NR, t[q]);
      }
    }
}

#pragma GCC pop_options

/* ---- tables, plan, weights ------------------------------------------------------------ */

/* Row tables of the layer (one group: the group's channel offset goes into
 * ConvCols.x). */
static void fill_row_tables(Bf16Conv *cv) {
  const ConvPriv *p = cv->p;
  const int KW = p->kernel_w, KK = p->kernel_h * p->kernel_w;
  for (int r = 0; r < cv->kdim_pad; r++) {
    if (r >= cv->kdim) {
      cv->roff[r] = 0, cv->rdh[r] = FAR_OUTSIDE, cv->rdw[r] = FAR_OUTSIDE;
      continue;
    }
    const int c = r / KK, kh = r % KK / KW, kw = r % KW;
    cv->rdh[r] = kh * p->dilation_h;
    cv->rdw[r] = kw * p->dilation_w;
    cv->roff[r] = (int32_t)((size_t)c * cv->plane) + cv->rdh[r] * p->width + cv->rdw[r];
  }
}

/* This thread's column tables for a chunk of nc images, after `front`
 * floats of other scratch (*front, may be 0) in the same workspace slot. */
static int chunk_tables(const Bf16Conv *cv, int nc, size_t front_count, float **front,
                        ConvCols *cols) {
  const ConvPriv *p = cv->p;
  const int ld = (int)(nc * cv->S), ldpad = round_up(ld, NR);
  const size_t table = 3 * (size_t)ldpad + (size_t)ldpad / 16 / 2 + 1; /* floats */
  float *buf = fast_workspace(FAST_WS_COL, front_count + table, "bf16 convolution tables");
  if (!buf) return -1;
  *front = buf;
  int32_t *pb = (int32_t *)(buf + front_count), *pih = pb + ldpad, *piw = pih + ldpad;
  uint8_t *step = (uint8_t *)(piw + ldpad), *split = step + ldpad / 16;
  const int OW = p->out_w;
  for (int n = 0; n < ldpad; n++) {
    if (n >= ld) {
      pb[n] = 0, pih[n] = FAR_OUTSIDE, piw[n] = FAR_OUTSIDE;
      continue;
    }
    const int j = n / (int)cv->S, s = n % (int)cv->S, oh = s / OW, ow = s % OW;
    pih[n] = oh * p->stride_h - p->pad_h;
    piw[n] = ow * p->stride_w - p->pad_w;
    pb[n] = (int32_t)((size_t)j * cv->in_img) + pih[n] * p->width + piw[n];
  }
  /* Within one image the offsets pb often advance by the stride even across
   * output rows (e.g. 3x3 pad 1 stride 1: W == OW, so the row's last pixel
   * + 1 is the next row's first); lanes outside the image are masked anyway. */
  for (int g = 0; g < ldpad / 16; g++) {
    const int n = g * 16;
    step[g] = 0, split[g] = 0;
    for (int st = 1; st <= 2 && n + 16 <= ld && !step[g]; st++) {
      bool ok = true;
      for (int i = 1; ok && i < 16; i++) ok = pb[n + i] == pb[n] + st * i;
      if (ok) step[g] = (uint8_t)st;
    }
    if (step[g] || n + 16 > ld) continue;
    /* Two runs (e.g. a group across two images)? */
    int a = 1;
    while (a < 16 && pb[n + a] == pb[n] + a) a++;
    bool ok = true;
    for (int i = a + 1; ok && i < 16; i++) ok = pb[n + i] == pb[n + a] + (i - a);
    if (ok) step[g] = 3, split[g] = (uint8_t)a;
  }
  cols->H = p->height, cols->W = p->width;
  cols->roff = cv->roff, cols->rdh = cv->rdh, cols->rdw = cv->rdw;
  cols->pb = pb, cols->pih = pih, cols->piw = piw, cols->step = step, cols->split = split;
  return 0;
}

/* As conv_plan in convolution_fast.c: chunks of about BF16_CONV_COLS
 * columns, run side by side (one thread each) when the batch has at least
 * as many images as the pool has threads, unless the layer has few columns
 * per thread (below). */
typedef struct Plan {
  int chunk, n_chunks, threads;
  bool by_chunk;
} Plan;

static Plan plan(const ConvPriv *p) {
  const long S = (long)p->out_h * p->out_w, N = p->num;
  const int T = fast_threads();
  Plan pl = {S >= BF16_CONV_COLS ? 1 : (int)((BF16_CONV_COLS + S - 1) / S), 0, T, false};
  if (pl.chunk > N) pl.chunk = (int)N;
  if (T > 1 && N >= T) {
    long n_chunks = (N * S + BF16_CONV_COLS - 1) / BF16_CONV_COLS;
    n_chunks = (n_chunks + T - 1) / T * T;
    if (n_chunks > N) n_chunks = N;
    pl.chunk = (int)((N + n_chunks - 1) / n_chunks);
    pl.by_chunk = true;
  }
  if (pl.by_chunk && S * N / T < BF16_CONV_FEW_COLS) {
    /* Few columns per thread (ResNet's 7x7 and 14x14 layers): the weights
     * are large next to the columns, and with chunks side by side each
     * thread would stream all of them (forward, data gradient) and
     * accumulate a weight gradient of its own for every few columns. One
     * chunk of up to BF16_CONV_BIG_COLS columns with every GEMM split over
     * the pool does each of those once (5-25% less CPU time on those layers,
     * measured single runs on a busy machine). */
    pl.by_chunk = false;
    pl.chunk = (int)((BF16_CONV_BIG_COLS + S - 1) / S);
    if (pl.chunk > N) pl.chunk = (int)N;
  }
  pl.n_chunks = (int)((N + pl.chunk - 1) / pl.chunk);
  return pl;
}

/* Shapes, row tables, and the weights packed (transposed: W_g^T (kdim,
 * OC/G) for the data gradient, else W_g (OC/G, kdim)) into the calling
 * thread's FAST_WS_WPACK (pack false: not packed); with frozen weights
 * (Layer.weights_frozen, inference) the forward's are packed once, on the
 * first call, and kept in ConvPriv.bf16_wpack. 1: not taken (no AVX-512
 * BF16, 32-bit offsets too small, or the test hook). */
static int layer_setup(Layer *l, const Plan *pl, bool transposed, bool pack, Bf16Conv *cv) {
  ConvPriv *p = l->priv;
  memset(cv, 0, sizeof *cv);
  cv->p = p;
  cv->G = p->group, cv->OC = p->num_output, cv->OCg = cv->OC / cv->G, cv->C = p->channels;
  cv->kdim = p->channels / cv->G * p->kernel_h * p->kernel_w;
  cv->kdim_pad = round_up(cv->kdim, NR);
  cv->S = (size_t)p->out_h * p->out_w;
  cv->plane = (size_t)p->height * p->width;
  cv->in_img = (size_t)p->channels * cv->plane;
  cv->out_img = (size_t)cv->OC * cv->S;
  /* A strided 1x1's columns are a strided subset of the input: most vectors of
   * them would be gathers; a compact fp32 copy is cheaper (as the fp32 path). */
  cv->compact = p->kernel_h * p->kernel_w == 1 && !p->is_1x1;
  /* Not taken without AVX-512 BF16 (the precision may be set for CUDA): the
   * caller's path then reports it (fast_gemm_bf16). */
  if (!direct_on() || !fast_bf16_supported() ||
      (size_t)(pl->chunk + 2) * cv->in_img >= (size_t)INT_MAX / 2 ||
      (size_t)pl->chunk * cv->S >= (size_t)INT_MAX / 4)
    return 1;
  const int M = transposed ? cv->kdim : cv->OCg, K = transposed ? cv->OCg : cv->kdim;
  cv->wsize = bf16_packed_a_size(M, K);
  const size_t wtotal = cv->wsize * cv->G, tables = 3 * (size_t)cv->kdim_pad;
  const bool keep = pack && !transposed && l->weights_frozen;
  float *buf = fast_workspace(FAST_WS_WPACK, (keep ? 0 : wtotal) + tables,
                              "bf16 convolution weights");
  if (!buf) return -1;
  int32_t *w = keep ? p->bf16_wpack : (int32_t *)buf;
  const bool pack_now = pack && !(keep && w);
  if (keep && !w) {
    if (!(w = p->bf16_wpack = moka_malloc(wtotal * sizeof(int32_t))))
      return moka_error_prefix("layer %s: packed bf16 weights", l->name);
  }
  cv->wpack = w;
  cv->roff = keep ? (int32_t *)buf : w + wtotal;
  cv->rdh = cv->roff + cv->kdim_pad, cv->rdw = cv->rdh + cv->kdim_pad;
  fill_row_tables(cv);
  const float *weight = l->params[0]->data; /* (OC, IC/G, KH, KW) */
  for (int g = 0; pack_now && g < cv->G; g++)
    bf16_pack_a(transposed, weight + (size_t)g * cv->OCg * cv->kdim, cv->kdim, M, K,
                w + (size_t)g * cv->wsize, true);
  return 0;
}

/* ---- forward -------------------------------------------------------------------------- */

static int forward_chunk(const Bf16Conv *cv, const float *x, const float *bias, float *top,
                         int n0, int nc, bool par) {
  const int OCg = cv->OCg, ld = (int)(nc * cv->S);
  ConvCols cols;
  float *col; /* compact: (C, ld) */
  if (chunk_tables(cv, nc, cv->compact ? (size_t)cv->C * ld : 0, &col, &cols)) return -1;
  if (cv->compact) conv_fast_fill_columns(cv->p, x, n0, nc, col, par);
  float *Y = top + (size_t)n0 * cv->out_img; /* (OC, nc*S) */
  if (nc > 1 &&
      !(Y = fast_workspace(FAST_WS_OUT, nc * cv->out_img, "convolution output buffer")))
    return -1;
  for (int g = 0; g < cv->G; g++) {
    cols.x = x + (size_t)n0 * cv->in_img + (size_t)g * (cv->C / cv->G) * cv->plane;
    const Bf16Plain b = {col + (size_t)g * cv->kdim * ld, ld};
    const Bf16Gemm gm = {OCg, ld, cv->kdim, cv->wpack + (size_t)g * cv->wsize,
                         cv->compact ? bf16_pack_b_plain : pack_cols,
                         cv->compact ? (const void *)&b : &cols, Y + (size_t)g * OCg * ld, ld,
                         false, 1.0f};
    if (bf16_gemm_packed(&gm, par)) return -1;
  }
  if (nc > 1) {
    conv_fast_to_nchw(Y, bias, cv->OC, cv->S, nc, top + (size_t)n0 * cv->out_img, par);
  } else if (bias) {
#pragma omp parallel for schedule(static) if (par && cv->out_img >= FAST_GRAIN)
    for (int oc = 0; oc < cv->OC; oc++) {
      float *y = Y + (size_t)oc * cv->S; /* (S) */
      const float b = bias[oc];
#pragma omp simd
      for (size_t s = 0; s < cv->S; s++) y[s] += b;
    }
  }
  return 0;
}

int conv_forward_bf16(Layer *l) {
  ConvPriv *p = l->priv;
  const float *bias = p->bias_term ? l->params[1]->data : NULL; /* (OC) */
  const Plan pl = plan(p);
  Bf16Conv cv;
  int rc = layer_setup(l, &pl, false, true, &cv);
  if (rc) return rc;
  for (int i = 0; i < l->n_bottom; i++) {
    const float *x = l->bottom[i]->data; /* (N,IC,H,W) */
    float *top = l->top[i]->data;        /* (N,OC,OH,OW) */
    if (pl.by_chunk) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(pl.threads) reduction(| : rc)
      for (int k = 0; k < pl.n_chunks; k++) {
        const int n0 = k * pl.chunk, nc = p->num - n0 < pl.chunk ? p->num - n0 : pl.chunk;
        rc |= forward_chunk(&cv, x, bias, top, n0, nc, false);
      }
    } else {
      for (int k = 0; k < pl.n_chunks && !rc; k++) {
        const int n0 = k * pl.chunk, nc = p->num - n0 < pl.chunk ? p->num - n0 : pl.chunk;
        rc = forward_chunk(&cv, x, bias, top, n0, nc, true);
      }
    }
    if (rc) return -1;
  }
  return 0;
}

/* ---- backward ------------------------------------------------------------------------- */

/* Images [n0, n0+nc): dW accumulated into wacc (NULL: not wanted), dx
 * (NULL: not wanted) written. cv->wpack holds W^T when dx is wanted. */
static int backward_chunk(const Bf16Conv *cv, const float *x, const float *dy, float *dx,
                          float *wacc, int n0, int nc, bool par) {
  const ConvPriv *p = cv->p;
  const int OCg = cv->OCg, kdim = cv->kdim, ld = (int)(nc * cv->S);
  const bool direct = p->is_1x1 && nc == 1; /* dx is dcol */
  ConvCols cols;
  float *dcol; /* (C*KH*KW, ld) */
  const size_t dcol_count = dx && !direct ? (size_t)cv->C * p->kernel_h * p->kernel_w * ld : 0;
  const size_t col_count = wacc && cv->compact ? (size_t)cv->C * ld : 0;
  if (chunk_tables(cv, nc, dcol_count + col_count, &dcol, &cols)) return -1;
  float *col = dcol + dcol_count; /* compact: (C, ld) */
  if (col_count) conv_fast_fill_columns(p, x, n0, nc, col, par);
  const float *dY = dy + (size_t)n0 * cv->out_img; /* (OC, ld) */
  if (nc > 1) {
    float *buf = fast_workspace(FAST_WS_OUT, nc * cv->out_img, "convolution gradient buffer");
    if (!buf) return -1;
    conv_fast_from_nchw(dY, cv->OC, cv->S, nc, buf, par);
    dY = buf;
  }
  if (wacc) {
    /* dW_g (OC/G, kdim) += dY_g (OC/G, ld) x col_g^T */
    int32_t *ap = (int32_t *)fast_workspace(FAST_WS_PACK_A, bf16_packed_a_size(OCg, ld),
                                            "bf16 convolution gradient packing");
    if (!ap) return -1;
    for (int g = 0; g < cv->G; g++) {
      bf16_pack_a(false, dY + (size_t)g * OCg * ld, ld, OCg, ld, ap, par);
      cols.x = x + (size_t)n0 * cv->in_img + (size_t)g * (cv->C / cv->G) * cv->plane;
      const Bf16Plain b = {col + (size_t)g * kdim * ld, ld}; /* compact: col_g^T as (kdim, ld) */
      const Bf16Gemm gm = {OCg, kdim, ld, ap, cv->compact ? bf16_pack_b_plain_t : pack_cols_t,
                           cv->compact ? (const void *)&b : &cols, wacc + (size_t)g * OCg * kdim,
                           kdim, true, 1.0f};
      if (bf16_gemm_packed(&gm, par)) return -1;
    }
  }
  if (!dx) return 0;
  /* dcol_g (kdim, ld) = W_g^T (kdim, OC/G) x dY_g, then back to (N,IC,H,W) */
  if (direct) dcol = dx + (size_t)n0 * cv->in_img;
  for (int g = 0; g < cv->G; g++) {
    const Bf16Plain b = {dY + (size_t)g * OCg * ld, ld};
    const Bf16Gemm gm = {kdim, ld, OCg, cv->wpack + (size_t)g * cv->wsize, bf16_pack_b_plain, &b,
                         dcol + (size_t)g * kdim * ld, ld, false, 1.0f};
    if (bf16_gemm_packed(&gm, par)) return -1;
  }
  if (!direct) conv_fast_scatter_columns(p, dcol, n0, nc, dx, par);
  return 0;
}

/* backward_chunk for fast_chunked_wgrad: chunk k of `chunk` images, one thread. */
typedef struct BwdChunks {
  const Bf16Conv *cv;
  const float *x, *dy;
  float *dx;
  int chunk, num;
} BwdChunks;

static int backward_chunk_k(void *ctx, int k, float *wacc) {
  const BwdChunks *b = ctx;
  const int n0 = k * b->chunk, nc = b->num - n0 < b->chunk ? b->num - n0 : b->chunk;
  return backward_chunk(b->cv, b->x, b->dy, b->dx, wacc, n0, nc, false);
}

int conv_backward_bf16(Layer *l, const float *x, const float *dy, float *dx, float *wdiff) {
  ConvPriv *p = l->priv;
  const size_t wcount = l->params[0]->count;
  const Plan pl = plan(p);
  Bf16Conv cv;
  int rc = layer_setup(l, &pl, true, dx != NULL, &cv);
  if (rc) return rc;
  if (pl.by_chunk) {
    /* A chunk per thread in turn, weight gradients added in thread order. */
    BwdChunks bc = {&cv, x, dy, dx, pl.chunk, p->num};
    rc = fast_chunked_wgrad(pl.threads, pl.n_chunks, wdiff, wcount, backward_chunk_k, &bc);
  } else {
    for (int k = 0; k < pl.n_chunks && !rc; k++) {
      const int n0 = k * pl.chunk, nc = p->num - n0 < pl.chunk ? p->num - n0 : pl.chunk;
      rc = backward_chunk(&cv, x, dy, dx, wdiff, n0, nc, true);
    }
  }
  return rc ? -1 : 0;
}
