/* gemm_bf16.c — GEMM with bf16 inputs and fp32 accumulation on AVX-512 BF16
 * (the opt-in --precision=bf16 of the fast CPU backend; see fast.h).
 *
 *   C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C     (row-major)
 *
 * The operands stay fp32 in memory (fp32 master weights, fp32 activations):
 * they are rounded to bf16 (round to nearest even, as VCVTNE2PS2BF16 does;
 * denormals become zero) while being packed, and every product is summed in
 * fp32 by VDPBF16PS, which adds a[2i]*b[2i] + a[2i+1]*b[2i+1] into fp32 lane
 * i. So K is consumed in pairs, and the packed panels hold pairs along K:
 *
 *   packed A micro-panel (MR rows):  [kp][MR] dwords, dword = (A(m,2kp), A(m,2kp+1))
 *   packed B micro-panel (NR cols):  [kp][NR] dwords, dword = (B(2kp,n), B(2kp+1,n))
 *
 * zero-padded past M, N and (odd) K. The micro-kernel keeps an MR x NR = 12 x 32
 * block of C in 24 zmm accumulators; per k-pair it loads two B vectors and
 * broadcasts one A dword per row. Blocking is BLIS's: NC columns of B packed
 * (L2), KC values of K per pass, MC rows of A packed, then the micro-kernel
 * over MR x NR tiles. Threads split the columns (or rows, when N is small);
 * each thread packs into its own workspace (fast_workspace).
 *
 * The file is compiled for AVX-512 BF16 by a target pragma; callers must
 * check fast_bf16_supported() first (fast_set_precision does).
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "fast.h"
#include "util.h"

enum { MR = 12, NR = 32, MC = 144, KC = 256, NC = 1024 };

bool fast_bf16_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512f");
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "avx512_transpose.h"

/* Two 16-float vectors -> 16 dwords, dword j = (bf16(lo[j]), bf16(hi[j])). */
static inline __m512i pairs_interleaved(__m512 lo, __m512 hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                       8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  __m512i w = (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* words: lo[0..15], hi[0..15] */
  return _mm512_permutexvar_epi16(idx, w);
}

/* 32 consecutive floats -> 16 dwords, dword j = (bf16(x[2j]), bf16(x[2j+1])). */
static inline __m512i pairs_consecutive(__m512 x0_15, __m512 x16_31) {
  return (__m512i)_mm512_cvtne2ps_pbh(x16_31, x0_15);
}

static inline __mmask16 mask16(int n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* ---- packing ------------------------------------------------------------------------- */

/* A rows [i0, i0+mc), K range [p0, p0+kc) -> micro-panels of MR rows
 * (rows past mc and the odd K tail are zero). */
static void pack_a(bool ta, const float *A, int lda, int i0, int mc, int p0, int kc,
                   int32_t *out) {
  const int kpt = (kc + 1) / 2;
  const __mmask16 mr_mask = mask16(MR);
  for (int ip = 0; ip * MR < mc; ip++) {
    int32_t *dst = out + (size_t)ip * kpt * MR;
    const int m0 = ip * MR, mm = mc - m0 < MR ? mc - m0 : MR;
    if (!ta) { /* A(m,k) = A[m*lda + k]: each row gives consecutive pairs; transpose */
      for (int k = 0; k < kc; k += 32) {
        __m512i r[16];
        const int left = kc - k;
        for (int j = 0; j < 16; j++) {
          if (j < mm) {
            const float *row = A + (size_t)(i0 + m0 + j) * lda + p0 + k;
            r[j] = pairs_consecutive(_mm512_maskz_loadu_ps(mask16(left), row),
                                     _mm512_maskz_loadu_ps(mask16(left - 16), row + 16));
          } else {
            r[j] = _mm512_setzero_si512();
          }
        }
        transpose16(r); /* r[q] = pair k/2+q of the rows */
        const int np = (left + 1) / 2 < 16 ? (left + 1) / 2 : 16;
        for (int q = 0; q < np; q++)
          _mm512_mask_storeu_epi32(dst + (size_t)(k / 2 + q) * MR, mr_mask, r[q]);
      }
    } else { /* A(m,k) = A[k*lda + m]: storage rows k and k+1, consecutive m */
      const __mmask16 mk = mask16(mm);
      for (int kp = 0; kp < kpt; kp++) {
        const float *r0 = A + (size_t)(p0 + 2 * kp) * lda + i0 + m0;
        __m512 lo = _mm512_maskz_loadu_ps(mk, r0);
        __m512 hi = 2 * kp + 1 < kc ? _mm512_maskz_loadu_ps(mk, r0 + lda) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + (size_t)kp * MR, mr_mask, pairs_interleaved(lo, hi));
      }
    }
  }
}

/* B columns [j0, j0+nc), K range [p0, p0+kc) -> micro-panels of NR columns. */
static void pack_b(bool tb, const float *B, int ldb, int p0, int kc, int j0, int nc,
                   int32_t *out) {
  const int kpt = (kc + 1) / 2;
  const int panels = (nc + NR - 1) / NR;
  for (int jp = 0; jp < panels; jp++) {
    int32_t *dst = out + (size_t)jp * kpt * NR;
    const int n0 = jp * NR, nn = nc - n0 < NR ? nc - n0 : NR;
    if (!tb) { /* B(k,n) = B[k*ldb + n]: rows k, k+1, consecutive n */
      for (int kp = 0; kp < kpt; kp++) {
        const float *r0 = B + (size_t)(p0 + 2 * kp) * ldb + j0 + n0;
        const bool has1 = 2 * kp + 1 < kc;
        for (int v = 0; v < NR; v += 16) {
          const __mmask16 mk = mask16(nn - v);
          __m512 lo = _mm512_maskz_loadu_ps(mk, r0 + v);
          __m512 hi = has1 ? _mm512_maskz_loadu_ps(mk, r0 + ldb + v) : _mm512_setzero_ps();
          _mm512_storeu_si512(dst + (size_t)kp * NR + v, pairs_interleaved(lo, hi));
        }
      }
    } else { /* B(k,n) = B[n*ldb + k]: one storage row per column, consecutive pairs */
      for (int v = 0; v < NR; v += 16) {
        for (int k = 0; k < kc; k += 32) {
          __m512i r[16];
          const int left = kc - k;
          for (int j = 0; j < 16; j++) {
            if (v + j < nn) {
              const float *row = B + (size_t)(j0 + n0 + v + j) * ldb + p0 + k;
              __m512 x0 = _mm512_maskz_loadu_ps(mask16(left), row);
              __m512 x1 = _mm512_maskz_loadu_ps(mask16(left - 16), row + 16);
              r[j] = pairs_consecutive(x0, x1);
            } else {
              r[j] = _mm512_setzero_si512();
            }
          }
          transpose16(r); /* r[q] = pair k/2+q of the 16 columns */
          const int np = (left + 1) / 2 < 16 ? (left + 1) / 2 : 16;
          for (int q = 0; q < np; q++)
            _mm512_storeu_si512(dst + (size_t)(k / 2 + q) * NR + v, r[q]);
        }
      }
    }
  }
}

/* ---- the micro-kernel ----------------------------------------------------------------- */

/* C tile (mr <= MR rows, nr <= NR columns) (+)= alpha * Ap x Bp over kpt pairs. */
static void kernel(int kpt, const int32_t *Ap, const int32_t *Bp, float *C, int ldc, int mr,
                   int nr, bool accumulate, float alpha) {
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (int p = 0; p < kpt; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + (size_t)p * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + (size_t)p * NR + 16);
    const int32_t *a = Ap + (size_t)p * MR;
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
      const __m512bh am = (__m512bh)_mm512_set1_epi32(a[m]);
      c[m][0] = _mm512_dpbf16_ps(c[m][0], am, b0);
      c[m][1] = _mm512_dpbf16_ps(c[m][1], am, b1);
    }
  }
  const __mmask16 k0 = mask16(nr), k1 = mask16(nr - 16);
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) {
    if (m >= mr) break;
    float *row = C + (size_t)m * ldc;
    __m512 v0 = alpha == 1.0f ? c[m][0] : _mm512_mul_ps(c[m][0], va);
    __m512 v1 = alpha == 1.0f ? c[m][1] : _mm512_mul_ps(c[m][1], va);
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, row));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, row + 16));
    }
    _mm512_mask_storeu_ps(row, k0, v0);
    _mm512_mask_storeu_ps(row + 16, k1, v1);
  }
}

/* One thread's GEMM (beta 0 or 1 here), packing into its own workspace. */
static int gemm_bf16_1(bool ta, bool tb, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *B, int ldb, bool accumulate, float *C, int ldc) {
  int32_t *abuf = (int32_t *)fast_workspace(FAST_WS_PACK_A, (size_t)MC * (KC / 2 + 1),
                                            "bf16 GEMM packing (A)");
  int32_t *bbuf = (int32_t *)fast_workspace(FAST_WS_PACK_B, (size_t)NC * (KC / 2 + 1),
                                            "bf16 GEMM packing (B)");
  if (!abuf || !bbuf) return -1;
  for (int jc = 0; jc < N; jc += NC) {
    const int nc = N - jc < NC ? N - jc : NC;
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = K - pc < KC ? K - pc : KC, kpt = (kc + 1) / 2;
      const bool acc = accumulate || pc > 0;
      pack_b(tb, B, ldb, pc, kc, jc, nc, bbuf);
      for (int ic = 0; ic < M; ic += MC) {
        const int mc = M - ic < MC ? M - ic : MC;
        pack_a(ta, A, lda, ic, mc, pc, kc, abuf);
        for (int jr = 0; jr < nc; jr += NR)
          for (int ir = 0; ir < mc; ir += MR)
            kernel(kpt, abuf + (size_t)(ir / MR) * kpt * MR, bbuf + (size_t)(jr / NR) * kpt * NR,
                   C + (size_t)(ic + ir) * ldc + jc + jr, ldc, mc - ir < MR ? mc - ir : MR,
                   nc - jr < NR ? nc - jr : NR, acc, alpha);
      }
    }
  }
  return 0;
}

#pragma GCC pop_options

int fast_gemm_bf16(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
  if (!fast_bf16_supported())
    return moka_errorf("bf16 GEMM: this CPU has no AVX-512 BF16 instructions (vdpbf16ps)");
  if (M <= 0 || N <= 0) return 0;
  /* beta other than 0 and 1: scale C first, then accumulate. */
  if (beta != 0.0f && beta != 1.0f)
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
  if (K <= 0) {
    if (beta == 0.0f)
      for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
    return 0;
  }
  const bool accumulate = beta != 0.0f;
  const int T = omp_in_parallel() ? 1 : fast_threads();
  /* Split the longer side: each block packs the whole of the other operand. */
  const bool by_cols = N >= M;
  const int len = by_cols ? N : M;
  int nb = T;
  while (nb > 1 && len / nb < (by_cols ? NR : MR)) nb--;
  if (2.0 * M * N * K < 2e6) nb = 1;
  int rc = 0;
#pragma omp parallel for schedule(static, 1) num_threads(nb) reduction(| : rc) if (nb > 1)
  for (int b = 0; b < nb; b++) {
    /* Block edges on multiples of NR (columns) or MR (rows). */
    const int unit = by_cols ? NR : MR, units = (len + unit - 1) / unit;
    int lo = (int)((long)units * b / nb) * unit, hi = (int)((long)units * (b + 1) / nb) * unit;
    if (hi > len) hi = len;
    if (hi <= lo) continue;
    if (by_cols)
      rc |= gemm_bf16_1(ta, tb, M, hi - lo, K, alpha, A, lda, tb ? B + (size_t)lo * ldb : B + lo,
                        ldb, accumulate, C + lo, ldc);
    else
      rc |= gemm_bf16_1(ta, tb, hi - lo, N, K, alpha, ta ? A + lo : A + (size_t)lo * lda, lda, B,
                        ldb, accumulate, C + (size_t)lo * ldc, ldc);
  }
  return rc ? -1 : 0;
}
