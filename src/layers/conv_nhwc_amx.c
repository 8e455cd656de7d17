/* conv_nhwc_amx.c — the channels-last bf16 forward (and stride-1 data gradient) on Intel
 * AMX tiles (amx.h), what conv_nhwc_bf16.c's nhwc_bf16_gemm and nhwc_bf16_conv_fwd /
 * nhwc_bf16_stem_fwd run when fast_amx_active(): the same packed weights, the same sums of
 * the same bf16 products in another order.
 *
 * Blocks of AMX_MR = 32 output rows by 32-column panels: four C tiles, A's two tiles per
 * step of 16 pairs of K, B's two straight from the packed panel (step q of a panel at dword
 * q*16*NR: the taps' pairs follow one another). A is read in place where a block's 32 rows
 * are one run of memory (the 1x1 layers' whole blocks), else copied into a stage first, step
 * after step (2 KiB each): a tap's input rows, or the stem's patches (its KH runs end to end,
 * zeros to a whole step). When all of B is larger than AMX_B_BYTES (L2), the panels are cut
 * into groups, and for staged rows K into chunks of AMX_CHUNK steps, so that a group's chunk
 * of B stays in L2 across a thread's blocks (the stage made once per group and chunk, not
 * once per panel); the sums wait in fp32 between chunks (a workspace). */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amx.h"
#include "conv_nhwc_bf16.h"
#include "conv_nhwc_priv.h"
#include "fast.h"
#include "gemm_bf16.h"
#include "util.h"

enum { NR = BF16_NR };

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "bf16_simd.h"

enum { AMX_MR = 32, AMX_B_BYTES = 512 * 1024, AMX_CHUNK = 32, AMX_STEP_DW = 512 };
enum { MAX_PATCH = NHWC_MAX_TAPS * NHWC_PATCH_C / 2 + 32 }; /* the stem's patch, dwords, + a step */

typedef enum { AMX_ROWS, AMX_TAPS, AMX_STEM } AmxKind;

/* Where a block's rows of A come from. */
typedef struct AmxSrc {
  AmxKind kind;
  const int32_t *a32;  /* AMX_ROWS: row p at a32 + p*lda32 */
  size_t lda32;
  const NhwcGeom *g;   /* AMX_TAPS, AMX_STEM: the geometry and its input */
  const int32_t *x32;
  const int32_t *zero; /* a zero row, a step longer than any row */
  int ks;              /* AMX_TAPS: steps per tap */
} AmxSrc;

/* Steps [q0, q1) of the block at row m0 (mr rows, zeros after them) into stage; rows: room
 * for NHWC_MAX_TAPS * AMX_MR pointers. */
static void amx_stage(const AmxSrc *src, long m0, int mr, int q0, int q1, int32_t *stage,
                      const int32_t **rows) {
  if (src->kind == AMX_STEM) {
    const NhwcGeom *g = src->g;
    const int run = g->KW * g->C / 2, len = g->KH * run;
    int32_t patch[MAX_PATCH] __attribute__((aligned(64)));
    nhwc_stem_rows(g, src->x32, m0, mr, AMX_MR, rows);
    for (int i = len; i < q1 * 16; i++) patch[i] = 0;
    for (int m = 0; m < AMX_MR; m++) {
      for (int kh = 0; kh < g->KH; kh++)
        for (int c = 0; c < run; c += 16)
          _mm512_mask_storeu_epi32(patch + kh * run + c, bf16_mask16(run - c),
                                   _mm512_maskz_loadu_epi32(bf16_mask16(run - c),
                                                            rows[kh * AMX_MR + m] + c));
      for (int q = q0; q < q1; q++)
        _mm512_storeu_si512(stage + (size_t)(q - q0) * AMX_STEP_DW + m * 16,
                            _mm512_loadu_si512(patch + q * 16));
    }
    return;
  }
  const bool taps = src->kind == AMX_TAPS;
  if (taps)
    nhwc_tap_rows(src->g, src->x32, src->zero, m0, mr, AMX_MR, rows);
  else
    for (int m = 0; m < AMX_MR; m++)
      rows[m] = m < mr ? src->a32 + (size_t)(m0 + m) * src->lda32 : src->zero;
  for (int q = q0; q < q1; q++) {
    const int t = taps ? q / src->ks : 0, s = taps ? q % src->ks : q;
    int32_t *d = stage + (size_t)(q - q0) * AMX_STEP_DW;
    const int32_t *const *r = rows + (size_t)t * AMX_MR;
#pragma GCC unroll 8
    for (int m = 0; m < AMX_MR; m++)
      _mm512_storeu_si512(d + m * 16, _mm512_loadu_si512(r[m] + (size_t)s * 16));
  }
}

/* The 32 x nr block into y / y16 (rows ldy apart, mr of them) from the four tiles, bias
 * (the panel's, or NULL) added before the one rounding. */
static void amx_store_block(float *y, uint16_t *y16, size_t ldy, int mr, int nr,
                            const float *bias) {
  if (y && !bias && mr == AMX_MR && nr == NR) { /* fp32 as it is: the tiles in place */
    const long ldb = (long)ldy * (long)sizeof(float);
    AMX_STORE(0, y, ldb);
    AMX_STORE(1, y + 16, ldb);
    AMX_STORE(2, y + 16 * ldy, ldb);
    AMX_STORE(3, y + 16 * ldy + 16, ldb);
    return;
  }
  float S[AMX_MR * NR] __attribute__((aligned(64)));
  AMX_STORE(0, S, NR * 4);
  AMX_STORE(1, S + 16, NR * 4);
  AMX_STORE(2, S + 16 * NR, NR * 4);
  AMX_STORE(3, S + 16 * NR + 16, NR * 4);
  const __mmask16 k0 = bf16_mask16(nr), k1 = bf16_mask16(nr - 16);
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (bias) {
    b0 = _mm512_maskz_loadu_ps(k0, bias);
    b1 = _mm512_maskz_loadu_ps(k1, bias + 16);
  }
  const __mmask32 k32 = (__mmask32)k0 | (__mmask32)k1 << 16;
  for (int m = 0; m < mr; m++) {
    __m512 c0 = _mm512_load_ps(S + m * NR), c1 = _mm512_load_ps(S + m * NR + 16);
    if (bias) {
      c0 = _mm512_add_ps(c0, b0);
      c1 = _mm512_add_ps(c1, b1);
    }
    if (y16) { /* the row's 32 values rounded by one instruction, stored by one */
      _mm512_mask_storeu_epi16(y16 + (size_t)m * ldy, k32, (__m512i)_mm512_cvtne2ps_pbh(c1, c0));
    } else {
      float *row = y + (size_t)m * ldy;
      _mm512_mask_storeu_ps(row, k0, c0);
      _mm512_mask_storeu_ps(row + 16, k1, c1);
    }
  }
}

/* y (P, N) (+bias) = A (P, steps*32 bf16, from src) x B (bp: panels panel_dw dwords apart);
 * on nth threads, blocks of rows split between them. 0, or -1 (workspace). */
static int amx_conv(const AmxSrc *src, long P, int steps, const int32_t *bp, size_t panel_dw,
                    int N, const float *bias, float *y, uint16_t *y16, size_t ldy, int nth) {
  const int panels = (N + NR - 1) / NR;
  const size_t step_bytes = 16 * NR * sizeof(int32_t);
  int chunk = steps, group = panels;
  if ((size_t)steps * panels * step_bytes > AMX_B_BYTES) {
    /* Rows read in place: whole K a group (A again for each group: cheaper than the sums
     * stored and loaded between chunks). */
    chunk = steps < AMX_CHUNK || src->kind == AMX_ROWS ? steps : AMX_CHUNK;
    group = (int)(AMX_B_BYTES / ((size_t)chunk * step_bytes));
    group = group < 1 ? 1 : group > panels ? panels : group;
  }
  const long blocks = (P + AMX_MR - 1) / AMX_MR;
  int rc = 0;
  (void)nth; /* read only by the OpenMP clauses */
#pragma omp parallel num_threads(nth) if (nth > 1) reduction(| : rc)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const long b0 = blocks * t / nt;
    long b1 = blocks * (t + 1) / nt;
    const int32_t *rows[NHWC_MAX_TAPS * AMX_MR];
    int32_t *stage = (int32_t *)fast_workspace(FAST_WS_PACK_A, (size_t)chunk * AMX_STEP_DW,
                                               "bf16 channels-last convolution (rows)");
    const size_t acc_ld = (size_t)group * NR; /* the sums between chunks: a block's rows */
    float *acc = chunk < steps && b1 > b0
                     ? fast_workspace(FAST_WS_AUX, (size_t)(b1 - b0) * AMX_MR * acc_ld,
                                      "bf16 channels-last convolution (sums)")
                     : NULL;
    if (!stage || (chunk < steps && b1 > b0 && !acc)) {
      rc |= 1;
      b1 = b0;
    }
    amx_ready();
    for (int g0 = 0; g0 < panels; g0 += group) {
      const int g1 = g0 + group < panels ? g0 + group : panels;
      for (int q0 = 0; q0 < steps; q0 += chunk) {
        const int q1 = q0 + chunk < steps ? q0 + chunk : steps, nq = q1 - q0;
        for (long bi = b0; bi < b1; bi++) {
          const long m0 = bi * AMX_MR;
          const int mr = P - m0 < AMX_MR ? (int)(P - m0) : AMX_MR;
          const int32_t *a = stage;
          long a_row = 64;
          size_t a_half = 256, a_step = AMX_STEP_DW;
          if (src->kind == AMX_ROWS && mr == AMX_MR) { /* in place */
            a = src->a32 + (size_t)m0 * src->lda32 + (size_t)q0 * 16;
            a_row = (long)src->lda32 * 4, a_half = 16 * src->lda32, a_step = 16;
          } else {
            amx_stage(src, m0, mr, q0, q1, stage, rows);
          }
          float *ab = acc ? acc + (size_t)(bi - b0) * AMX_MR * acc_ld : NULL;
          const long ab_row = (long)(acc_ld * sizeof(float));
          for (int jp = g0; jp < g1; jp++) {
            float *cb = ab ? ab + (size_t)(jp - g0) * NR : NULL;
            if (q0 == 0) {
              AMX_ZERO(0);
              AMX_ZERO(1);
              AMX_ZERO(2);
              AMX_ZERO(3);
            } else {
              AMX_LOAD(0, cb, ab_row);
              AMX_LOAD(1, cb + 16, ab_row);
              AMX_LOAD(2, cb + 16 * acc_ld, ab_row);
              AMX_LOAD(3, cb + 16 * acc_ld + 16, ab_row);
            }
            const int32_t *b = bp + (size_t)jp * panel_dw + (size_t)q0 * 16 * NR;
            for (int q = 0; q < nq; q++) {
              const int32_t *at = a + q * a_step, *bt = b + (size_t)q * 16 * NR;
              AMX_LOAD(4, at, a_row);
              AMX_LOAD(6, bt, NR * 4);
              AMX_LOAD(7, bt + 16, NR * 4);
              AMX_LOAD(5, at + a_half, a_row);
              AMX_DP(0, 4, 6);
              AMX_DP(1, 4, 7);
              AMX_DP(2, 5, 6);
              AMX_DP(3, 5, 7);
            }
            if (q1 == steps) {
              const size_t at = (size_t)m0 * ldy + (size_t)jp * NR;
              amx_store_block(y ? y + at : NULL, y16 ? y16 + at : NULL, ldy, mr,
                              N - jp * NR < NR ? N - jp * NR : NR,
                              bias ? bias + (size_t)jp * NR : NULL);
            } else {
              AMX_STORE(0, cb, ab_row);
              AMX_STORE(1, cb + 16, ab_row);
              AMX_STORE(2, cb + 16 * acc_ld, ab_row);
              AMX_STORE(3, cb + 16 * acc_ld + 16, ab_row);
            }
          }
        }
      }
    }
  }
  return rc ? -1 : 0;
}

#pragma GCC pop_options

int nhwc_amx_gemm(const int32_t *a32, size_t lda32, long P, int kpt, const int32_t *bp, int N,
                  float *y, uint16_t *y16, size_t ldy, int nth) {
  int32_t *zero = moka_calloc((size_t)kpt + 16, sizeof(int32_t));
  if (!zero) return moka_error_prefix("channels-last GEMM");
  const AmxSrc src = {AMX_ROWS, a32, lda32, NULL, NULL, zero, 0};
  const int rc = amx_conv(&src, P, kpt / 16, bp, (size_t)kpt * NR, N, NULL, y, y16, ldy, nth);
  free(zero);
  return rc;
}

int nhwc_amx_conv_fwd(const NhwcGeom *g, const int32_t *x32, const int32_t *zero,
                      const int32_t *bp, const float *bias, float *y, uint16_t *y16, bool stem,
                      int nth) {
  const long P = (long)g->N * g->OH * g->OW;
  const int kpt = g->C / 2, T = g->KH * g->KW;
  const size_t panel_dw = (size_t)T * kpt * NR;
  if (!stem) {
    const AmxSrc src = {AMX_TAPS, NULL, 0, g, x32, zero, kpt / 16};
    return amx_conv(&src, P, T * (kpt / 16), bp, panel_dw, g->OC, bias, y, y16, (size_t)g->OC,
                    nth);
  }
  const int pairs = T * kpt, steps = (pairs + 15) / 16, panels = (g->OC + NR - 1) / NR;
  const size_t pad_dw = (size_t)steps * 16 * NR;
  int32_t *bpad = moka_calloc((size_t)panels * pad_dw, sizeof(int32_t));
  if (!bpad) return moka_error_prefix("channels-last convolution");
  for (int jp = 0; jp < panels; jp++)
    memcpy(bpad + jp * pad_dw, bp + jp * panel_dw, (size_t)pairs * NR * sizeof(int32_t));
  const AmxSrc src = {AMX_STEM, NULL, 0, g, x32, zero, 0};
  const int rc = amx_conv(&src, P, steps, bpad, pad_dw, g->OC, bias, y, y16, (size_t)g->OC, nth);
  free(bpad);
  return rc;
}
