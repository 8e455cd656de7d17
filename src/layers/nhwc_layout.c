/* nhwc_layout.c — the layout changes around the channels-last bf16 convolutions
 * (conv_nhwc_bf16.h, "layouts"): fp32 -> bf16 rounding, NCHW <-> NHWC, the strided 1x1's
 * subsampling and spreading, the stem's zero-padded input; and the bias gradient (a
 * per-channel sum over the pixels). Split from conv_nhwc_bf16.c, which keeps the kernels.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "conv_nhwc_bf16.h"
#include "fast.h"
#include "util.h"

enum { BIAS_PIXELS = 1024 }; /* pixels per partial sum of the bias gradient */

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "avx512_transpose.h"
#include "bf16_simd.h"

void nhwc_bf16_round(const float *src, size_t n, uint16_t *dst) {
  const size_t blocks = (n + 4095) / 4096;
#pragma omp parallel for schedule(static) if (n >= FAST_GRAIN)
  for (size_t b = 0; b < blocks; b++) {
    const size_t i1 = (b + 1) * 4096 < n ? (b + 1) * 4096 : n;
    for (size_t i = b * 4096; i < i1; i += 16) {
      const __mmask16 mk = bf16_mask16((int)(i1 - i < 16 ? i1 - i : 16));
      const __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, src + i));
      _mm256_mask_storeu_epi16(dst + i, mk, v);
    }
  }
}

static inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Both layout changes go 16 channels x 16 pixels at a time through a 16 x 16 transpose in
 * registers (avx512_transpose.h): rows read and written whole, masked at the edges. */
void nhwc_bf16_from_nchw(const float *x, size_t N, size_t C, size_t S, uint16_t *out) {
  nhwc_bf16_from_nchw_pad(x, N, C, S, C, out);
}

void nhwc_bf16_from_nchw_pad(const float *x, size_t N, size_t C, size_t S, size_t Cp,
                             uint16_t *out) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S >= FAST_GRAIN)
  for (size_t n = 0; n < N; n++)
    for (size_t s0 = 0; s0 < S; s0 += 16) {
      const int ns = S - s0 < 16 ? (int)(S - s0) : 16;
      for (size_t c0 = 0; c0 < C; c0 += 16) {
        const int nc = C - c0 < 16 ? (int)(C - c0) : 16;
        __m512i t[16];
#pragma GCC unroll 16
        for (int c = 0; c < 16; c++) /* row c: channel c0+c's pixels s0.. */
          t[c] = c < nc ? _mm512_castps_si512(_mm512_maskz_loadu_ps(
                              bf16_mask16(ns), x + (n * C + c0 + c) * S + s0))
                        : _mm512_setzero_si512();
        transpose16(t); /* row q: pixel s0+q's channels c0.., zero past C */
        const int keep = Cp - c0 < 16 ? (int)(Cp - c0) : 16; /* and the padding after C */
        for (int q = 0; q < ns; q++)
          _mm256_mask_storeu_epi16(out + (n * S + s0 + q) * Cp + c0, bf16_mask16(keep),
                                   (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(t[q])));
      }
    }
}

void nhwc_to_nchw(const float *y, const uint16_t *y16, size_t N, size_t C, size_t S, float *out) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S >= FAST_GRAIN)
  for (size_t n = 0; n < N; n++)
    for (size_t s0 = 0; s0 < S; s0 += 16) {
      const int ns = S - s0 < 16 ? (int)(S - s0) : 16;
      for (size_t c0 = 0; c0 < C; c0 += 16) {
        const int nc = C - c0 < 16 ? (int)(C - c0) : 16;
        const __mmask16 mk = bf16_mask16(nc);
        __m512i t[16];
#pragma GCC unroll 16
        for (int q = 0; q < 16; q++) { /* row q: pixel s0+q's channels c0.. */
          const size_t i = (n * S + s0 + q) * C + c0;
          t[q] = q >= ns ? _mm512_setzero_si512()
                 : y     ? _mm512_castps_si512(_mm512_maskz_loadu_ps(mk, y + i))
                         : _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, y16 + i)), 16);
        }
        transpose16(t); /* row c: channel c0+c's pixels s0.. */
        for (int c = 0; c < nc; c++)
          _mm512_mask_storeu_ps(out + (n * C + c0 + c) * S + s0, bf16_mask16(ns),
                                _mm512_castsi512_ps(t[c]));
      }
    }
}


void nhwc_bf16_stem_input(const float *x, int C_x, const NhwcGeom *g, uint16_t *xp) {
  const int C = g->C, H = g->H, W = g->W, Hp = H + 2 * g->PH, Wp = W + 2 * g->PW;
  const size_t S = (size_t)H * W, rows = (size_t)g->N * Hp;
  /* dword lane j of the result: pixel j/2's channels 0,1 (even j) or 2,3 (odd j) */
  const __m512i lo_idx =
      _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#pragma omp parallel for schedule(static) if (rows * Wp * C >= FAST_GRAIN)
  for (size_t r = 0; r < rows; r++) {
    const size_t n = r / Hp;
    const int h = (int)(r % Hp) - g->PH;
    uint16_t *dst = xp + r * Wp * C;
    if (h < 0 || h >= H) {
      memset(dst, 0, (size_t)Wp * C * sizeof(uint16_t));
      continue;
    }
    memset(dst, 0, (size_t)g->PW * C * sizeof(uint16_t));
    memset(dst + (size_t)(g->PW + W) * C, 0, (size_t)g->PW * C * sizeof(uint16_t));
    uint16_t *out = dst + (size_t)g->PW * C;
    const float *src = x + n * C_x * S + (size_t)h * W;
    for (int w0 = 0; w0 < W; w0 += 16) {
      const int nw = W - w0 < 16 ? W - w0 : 16;
      const __mmask16 k = bf16_mask16(nw);
      if (C == 4) { /* ResNet's: 16 pixels' 4 channels in two stores */
        __m512i ch[4]; /* channel c of the 16 pixels, one bf16 per dword (0 past C_x) */
        for (int c = 0; c < 4; c++)
          ch[c] = c < C_x ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(
                                _mm512_maskz_loadu_ps(k, src + (size_t)c * S + w0)))
                          : _mm512_setzero_si512();
        const __m512i c01 = _mm512_or_si512(ch[0], _mm512_slli_epi32(ch[1], 16));
        const __m512i c23 = _mm512_or_si512(ch[2], _mm512_slli_epi32(ch[3], 16));
        uint32_t *o = (uint32_t *)(out + (size_t)w0 * 4); /* 2 dwords per pixel */
        _mm512_mask_storeu_epi32(o, bf16_mask16(2 * nw),
                                 _mm512_permutex2var_epi32(c01, lo_idx, c23));
        _mm512_mask_storeu_epi32(o + 16, bf16_mask16(2 * nw - 16),
                                 _mm512_permutex2var_epi32(c01, hi_idx, c23));
        continue;
      }
      for (int c = 0; c < C; c++) {
        uint16_t v[16] = {0};
        if (c < C_x)
          _mm256_storeu_si256((__m256i *)v, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(
                                                 k, src + (size_t)c * S + w0)));
        for (int q = 0; q < nw; q++) out[(size_t)(w0 + q) * C + c] = v[q];
      }
    }
  }
}

#pragma GCC pop_options

void nhwc_bf16_subsample(const uint16_t *x, const NhwcGeom *g, uint16_t *out) {
  const size_t C = (size_t)g->C, rows = (size_t)g->N * g->OH;
#pragma omp parallel for schedule(static) if (rows * g->OW * C >= FAST_GRAIN)
  for (size_t r = 0; r < rows; r++) {
    const size_t n = r / g->OH, oh = r % g->OH;
    const uint16_t *src = x + ((n * g->H + oh * g->SH) * g->W) * C;
    uint16_t *dst = out + r * g->OW * C;
    for (int ow = 0; ow < g->OW; ow++)
      memcpy(dst + (size_t)ow * C, src + (size_t)ow * g->SW * C, C * sizeof(uint16_t));
  }
}

void nhwc_spread_strided(const float *d, const uint16_t *d16, const NhwcGeom *g, uint16_t *dx16,
                         float *dxf) {
  const size_t C = (size_t)g->C, H = g->H, W = g->W, N = g->N;
  if (dx16) {
#pragma omp parallel for schedule(static) if (N * H * W * C >= FAST_GRAIN)
    for (size_t r = 0; r < N * H; r++) {
      const size_t n = r / H, ih = r % H;
      uint16_t *dst = dx16 + r * W * C;
      memset(dst, 0, W * C * sizeof(uint16_t));
      if (ih % g->SH || ih / g->SH >= (size_t)g->OH) continue;
      const size_t orow = (n * g->OH + ih / g->SH) * g->OW;
      for (int ow = 0; ow < g->OW; ow++) {
        uint16_t *o = dst + (size_t)ow * g->SW * C;
        if (d16) {
          memcpy(o, d16 + (orow + ow) * C, C * sizeof(uint16_t));
        } else {
          nhwc_bf16_round(d + (orow + ow) * C, C, o);
        }
      }
    }
    return;
  }
#pragma omp parallel for schedule(static) if (N * H * W * C >= FAST_GRAIN)
  for (size_t k = 0; k < N * C; k++) {
    const size_t n = k / C, c = k % C;
    float *dst = dxf + k * H * W;
    memset(dst, 0, H * W * sizeof(float));
    for (int oh = 0; oh < g->OH; oh++)
      for (int ow = 0; ow < g->OW; ow++) {
        const size_t i = ((n * g->OH + oh) * g->OW + ow) * C + c;
        dst[(size_t)oh * g->SH * W + (size_t)ow * g->SW] = d ? d[i] : bf16_to_f32(d16[i]);
      }
  }
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
/* s (OC) = the fp32 sums of dy's rows [p0, p1), row after row. */
static void bias_rows(const uint16_t *dy, long p0, long p1, int OC, float *s) {
  for (int c = 0; c < OC; c += 16) {
    const __mmask16 mk = bf16_mask16(OC - c);
    __m512 acc = _mm512_setzero_ps();
    for (long p = p0; p < p1; p++)
      acc = _mm512_add_ps(acc, bf16x16_load_f32(dy + (size_t)p * OC + c, mk));
    _mm512_mask_storeu_ps(s + c, mk, acc);
  }
}
#pragma GCC pop_options

int nhwc_bf16_bias_grad(const uint16_t *dy, long P, int OC, float *db) {
  if (P <= 0 || OC <= 0) return 0;
  const long chunks = (P + BIAS_PIXELS - 1) / BIAS_PIXELS;
  float *part = fast_workspace(FAST_WS_AUX, (size_t)chunks * OC, "bias gradient");
  if (!part) return -1;
#pragma omp parallel for schedule(static) if ((size_t)P * OC >= FAST_GRAIN)
  for (long k = 0; k < chunks; k++)
    bias_rows(dy, k * BIAS_PIXELS, (k + 1) * BIAS_PIXELS < P ? (k + 1) * BIAS_PIXELS : P, OC,
              part + (size_t)k * OC);
  for (int c = 0; c < OC; c++) {
    double t = 0;
    for (long k = 0; k < chunks; k++) t += part[(size_t)k * OC + c];
    db[c] += (float)t;
  }
  return 0;
}

