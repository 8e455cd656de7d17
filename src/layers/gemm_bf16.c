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
 * (L2), KC values of K per pass, MC rows of A at a time, then the
 * micro-kernel over MR x NR tiles. A is packed whole, once, before the
 * threads start (by the pool: bf16_pack_a); B is packed a block at a time
 * by a callback (gemm_bf16.h), here from a matrix, in convolution_bf16.c
 * straight from the convolution's input (im2col without a column buffer).
 * Threads split the columns (or rows, when N is small); each packs B into
 * its own workspace (fast_workspace).
 *
 * The packing loops read along rows of the fp32 source (sequential), or
 * prefetch when they cannot: the strided reads of a row-by-row walk were
 * latency-bound (up to half the micro-kernel's time on ResNet's 1x1 layers).
 *
 * Where the CPU has AMX-BF16 (amx.h, fast_amx_active), the same GEMM multiplies tiles
 * instead: A packed in 16-row tiles, B's micro-panels padded to whole tiles, a 32 x 32 block
 * of C in four tiles ("AMX" below); the packing entry points and bf16_gemm_packed pick the
 * layout, so callers do not change.
 *
 * The file is compiled for AVX-512 BF16 by a target pragma; callers must
 * check fast_bf16_supported() first (fast_set_precision does).
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "amx.h"
#include "fast.h"
#include "gemm_bf16.h"
#include "util.h"

enum {
  MR = BF16_MR,
  NR = BF16_NR,
  MC = 144,
  KC = BF16_KC,
  NC = BF16_NC_MAX,
  PACK_PAIRS = BF16_PACK_PAIRS
};

bool fast_bf16_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("bmi2");
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

#include "avx512_transpose.h"
#include "bf16_simd.h"

/* ---- packing ------------------------------------------------------------------------- */

/* A rows [i0, i0+mc), K range [p0, p0+kc) -> micro-panels of MR rows
 * (rows past mc and the odd K tail are zero). */
static void pack_a(bool ta, const float *A, int lda, int i0, int mc, int p0, int kc,
                   int32_t *out) {
  const int kpt = (kc + 1) / 2;
  const __mmask16 mr_mask = bf16_mask16(MR);
  if (ta) { /* A(m,k) = A[k*lda + m]: storage rows k and k+1, read along m (sequential) */
    for (int kp = 0; kp < kpt; kp++) {
      const float *r0 = A + (size_t)(p0 + 2 * kp) * lda + i0;
      const bool has1 = 2 * kp + 1 < kc;
      for (int ip = 0; ip * MR < mc; ip++) {
        const int m0 = ip * MR;
        const __mmask16 mk = bf16_mask16(mc - m0);
        __m512 lo = _mm512_maskz_loadu_ps(mk, r0 + m0);
        __m512 hi = has1 ? _mm512_maskz_loadu_ps(mk, r0 + lda + m0) : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(out + ((size_t)ip * kpt + kp) * MR, mr_mask,
                                 bf16_pairs_interleaved(lo, hi));
      }
    }
    return;
  }
  for (int ip = 0; ip * MR < mc; ip++) {
    int32_t *dst = out + (size_t)ip * kpt * MR;
    const int m0 = ip * MR, mm = mc - m0 < MR ? mc - m0 : MR;
    { /* A(m,k) = A[m*lda + k]: each row gives consecutive pairs; transpose */
      for (int k = 0; k < kc; k += 32) {
        __m512i r[16];
        const int left = kc - k;
        for (int j = 0; j < 16; j++) {
          if (j < mm) {
            const float *row = A + (size_t)(i0 + m0 + j) * lda + p0 + k;
            if (k + 96 <= kc) { /* the same row two steps ahead */
              _mm_prefetch((const char *)(row + 64), _MM_HINT_T0);
              _mm_prefetch((const char *)(row + 80), _MM_HINT_T0);
            }
            r[j] = bf16_pairs_consecutive(_mm512_maskz_loadu_ps(bf16_mask16(left), row),
                                          _mm512_maskz_loadu_ps(bf16_mask16(left - 16), row + 16));
          } else {
            r[j] = _mm512_setzero_si512();
          }
        }
        transpose16(r); /* r[q] = pair k/2+q of the rows */
        const int np = (left + 1) / 2 < 16 ? (left + 1) / 2 : 16;
        for (int q = 0; q < np; q++)
          _mm512_mask_storeu_epi32(dst + (size_t)(k / 2 + q) * MR, mr_mask, r[q]);
      }
    }
  }
}

/* B columns [j0, j0+nc), K range [p0, p0+kc) -> micro-panels of NR columns. */
static void pack_b(bool tb, const float *B, int ldb, int p0, int kc, int j0, int nc,
                   int32_t *out) {
  const int kpt = (kc + 1) / 2;
  const int panels = (nc + NR - 1) / NR;
  if (!tb) { /* B(k,n) = B[k*ldb + n]: rows k and k+1 read along n (sequential), into
              * every panel */
    for (int kp = 0; kp < kpt; kp++) {
      const float *r0 = B + (size_t)(p0 + 2 * kp) * ldb + j0;
      const bool has1 = 2 * kp + 1 < kc;
      for (int n = 0; n < panels * NR; n += 16) {
        const __mmask16 mk = bf16_mask16(nc - n);
        __m512 lo = _mm512_maskz_loadu_ps(mk, r0 + n);
        __m512 hi = has1 ? _mm512_maskz_loadu_ps(mk, r0 + ldb + n) : _mm512_setzero_ps();
        _mm512_storeu_si512(out + ((size_t)(n / NR) * kpt + kp) * NR + n % NR,
                            bf16_pairs_interleaved(lo, hi));
      }
    }
    return;
  }
  for (int jp = 0; jp < panels; jp++) {
    int32_t *dst = out + (size_t)jp * kpt * NR;
    const int n0 = jp * NR, nn = nc - n0 < NR ? nc - n0 : NR;
    { /* B(k,n) = B[n*ldb + k]: one storage row per column, consecutive pairs */
      for (int v = 0; v < NR; v += 16) {
        for (int k = 0; k < kc; k += 32) {
          __m512i r[16];
          const int left = kc - k;
          for (int j = 0; j < 16; j++) {
            if (v + j < nn) {
              const float *row = B + (size_t)(j0 + n0 + v + j) * ldb + p0 + k;
              __m512 x0 = _mm512_maskz_loadu_ps(bf16_mask16(left), row);
              __m512 x1 = _mm512_maskz_loadu_ps(bf16_mask16(left - 16), row + 16);
              r[j] = bf16_pairs_consecutive(x0, x1);
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
                   int nr, bool accumulate, float alpha, const char *pf) {
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  if (accumulate) /* the C tile, read at the end */
    for (int m = 0; m < mr; m++) {
      _mm_prefetch((const char *)(C + (size_t)m * ldc), _MM_HINT_T0);
      _mm_prefetch((const char *)(C + (size_t)m * ldc + 16), _MM_HINT_T0);
    }
  for (int p = 0; p < kpt; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + (size_t)p * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + (size_t)p * NR + 16);
    const int32_t *a = Ap + (size_t)p * MR;
    if (pf) _mm_prefetch(pf + (size_t)p * 64, _MM_HINT_T1);
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
      const __m512bh am = (__m512bh)_mm512_set1_epi32(a[m]);
      c[m][0] = _mm512_dpbf16_ps(c[m][0], am, b0);
      c[m][1] = _mm512_dpbf16_ps(c[m][1], am, b1);
    }
  }
  const __mmask16 k0 = bf16_mask16(nr), k1 = bf16_mask16(nr - 16);
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

/* ---- AMX (amx.h): packed A, the micro-kernel ------------------------------------------
 *
 * With AMX the packed A is in tiles: for each KC-block of K, groups of AMX_M = 16 rows, each
 * ceil(kpt/16) steps of 16 rows x 16 dwords (a row's 16 pairs of K consecutive: one A tile,
 * 1 KiB), zero past M and past K; the block starts at dword Mpad * pc/2 as above (Mpad: M
 * rounded up to 16; a whole block has 128 pairs, 8 steps). B is the same micro-panels, each
 * padded with zero pairs to a multiple of 16 (gemm_packed_amx). The micro-kernel keeps a
 * 32 x 32 block of C in four tiles (two A tiles by the panel's two B tiles). */

enum { AMX_M = 16, AMX_MR = 32, AMX_MC = 128 };

static int round16(int x) { return (x + 15) / 16 * 16; }

/* Rows [i0, i0+mc) (i0 a multiple of AMX_M), K range [p0, p0+kc) of op(A) -> groups of
 * tiles at out. */
static void amx_pack_a(bool ta, const float *A, int lda, int i0, int mc, int p0, int kc,
                       int32_t *out) {
  const int ks = round16((kc + 1) / 2) / 16;
  for (int m0 = 0; m0 < mc; m0 += AMX_M) {
    const int mm = mc - m0 < AMX_M ? mc - m0 : AMX_M;
    int32_t *grp = out + (size_t)(m0 / AMX_M) * ks * 256;
    for (int s = 0; s < ks; s++) {
      __m512i r[16];
      if (ta) { /* A(m,k) = A[k*lda + m]: pairs of storage rows interleaved, then turned */
        const __mmask16 mk = bf16_mask16(mm);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
          const int k = 32 * s + 2 * j;
          if (k >= kc) {
            r[j] = _mm512_setzero_si512();
            continue;
          }
          const float *r0 = A + (size_t)(p0 + k) * lda + i0 + m0;
          const __m512 hi = k + 1 < kc ? _mm512_maskz_loadu_ps(mk, r0 + lda) : _mm512_setzero_ps();
          r[j] = bf16_pairs_interleaved(_mm512_maskz_loadu_ps(mk, r0), hi);
        }
        transpose16(r); /* r[m]: row m's 16 pairs */
      } else { /* A(m,k) = A[m*lda + k]: a row's 32 values are its 16 pairs */
        const int left = kc - 32 * s;
#pragma GCC unroll 16
        for (int m = 0; m < 16; m++) {
          const float *row = A + (size_t)(i0 + m0 + m) * lda + p0 + 32 * s;
          r[m] = m >= mm ? _mm512_setzero_si512()
                         : bf16_pairs_consecutive(_mm512_maskz_loadu_ps(bf16_mask16(left), row),
                                                  _mm512_maskz_loadu_ps(bf16_mask16(left - 16),
                                                                        row + 16));
        }
      }
      for (int m = 0; m < 16; m++) _mm512_storeu_si512(grp + (size_t)s * 256 + m * 16, r[m]);
    }
  }
}

/* bf16_pack_a_t16's tiles: A(m,k) = a16[k*lda + m]. */
static void amx_pack_a_t16(const uint16_t *a16, size_t lda, int M, int K, int32_t *out) {
  const size_t Mpad = (size_t)round16(M);
  for (int pc = 0; pc < K; pc += KC) {
    const int kc = K - pc < KC ? K - pc : KC, ks = round16((kc + 1) / 2) / 16;
    int32_t *blk = out + Mpad * (pc / 2);
    for (int s = 0; s < ks; s++)
      for (int m0 = 0; m0 < M; m0 += AMX_M) {
        const __mmask16 mk = bf16_mask16(M - m0);
        __m512i r[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
          const int k = 32 * s + 2 * j;
          if (k >= kc) {
            r[j] = _mm512_setzero_si512();
            continue;
          }
          const uint16_t *r0 = a16 + (size_t)(pc + k) * lda + m0;
          const __m256i hi =
              k + 1 < kc ? _mm256_maskz_loadu_epi16(mk, r0 + lda) : _mm256_setzero_si256();
          r[j] = bf16_words_interleaved(_mm256_maskz_loadu_epi16(mk, r0), hi);
        }
        transpose16(r);
        int32_t *dst = blk + ((size_t)(m0 / AMX_M) * ks + s) * 256;
        for (int m = 0; m < 16; m++) _mm512_storeu_si512(dst + m * 16, r[m]);
      }
  }
}

/* C block (mr <= 32 rows: two A tiles a0, a1, or mr <= 16 and a1 NULL; nr <= NR columns)
 * (+)= alpha * A x the B panel bp (ks steps, rows NR dwords apart). Whole blocks with
 * alpha 1 load and store C's tiles in place; others go through S. pf: kpt lines to prefetch
 * into L2 (Bf16Gemm.prefetch), or NULL. */
static void amx_kernel(int ks, const int32_t *a0, const int32_t *a1, const int32_t *bp, float *C,
                       int ldc, int mr, int nr, bool accumulate, float alpha, const char *pf,
                       int pf_lines) {
  const bool two = a1 != NULL;
  const bool direct = alpha == 1.0f && nr == NR && mr == (two ? 2 : 1) * AMX_M;
  const long ldcb = (long)ldc * (long)sizeof(float);
  if (direct && accumulate) {
    AMX_LOAD(0, C, ldcb);
    AMX_LOAD(1, C + 16, ldcb);
    if (two) {
      AMX_LOAD(2, C + (size_t)16 * ldc, ldcb);
      AMX_LOAD(3, C + (size_t)16 * ldc + 16, ldcb);
    }
  } else {
    AMX_ZERO(0);
    AMX_ZERO(1);
    AMX_ZERO(2);
    AMX_ZERO(3);
  }
  for (int s = 0; s < ks; s++) {
    const int32_t *b = bp + (size_t)s * 16 * NR;
    if (pf)
      for (int j = 0; j < 16 && s * 16 + j < pf_lines; j++)
        _mm_prefetch(pf + (size_t)(s * 16 + j) * 64, _MM_HINT_T1);
    AMX_LOAD(4, a0 + (size_t)s * 256, 64);
    AMX_LOAD(6, b, NR * 4);
    AMX_LOAD(7, b + 16, NR * 4);
    AMX_DP(0, 4, 6);
    AMX_DP(1, 4, 7);
    if (two) {
      AMX_LOAD(5, a1 + (size_t)s * 256, 64);
      AMX_DP(2, 5, 6);
      AMX_DP(3, 5, 7);
    }
  }
  if (direct) {
    AMX_STORE(0, C, ldcb);
    AMX_STORE(1, C + 16, ldcb);
    if (two) {
      AMX_STORE(2, C + (size_t)16 * ldc, ldcb);
      AMX_STORE(3, C + (size_t)16 * ldc + 16, ldcb);
    }
    return;
  }
  float S[AMX_MR * NR] __attribute__((aligned(64)));
  AMX_STORE(0, S, NR * 4);
  AMX_STORE(1, S + 16, NR * 4);
  if (two) {
    AMX_STORE(2, S + 16 * NR, NR * 4);
    AMX_STORE(3, S + 16 * NR + 16, NR * 4);
  }
  const __mmask16 k0 = bf16_mask16(nr), k1 = bf16_mask16(nr - 16);
  const __m512 va = _mm512_set1_ps(alpha);
  for (int m = 0; m < mr; m++) {
    float *row = C + (size_t)m * ldc;
    __m512 v0 = _mm512_mul_ps(_mm512_load_ps(S + m * NR), va);
    __m512 v1 = _mm512_mul_ps(_mm512_load_ps(S + m * NR + 16), va);
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, row));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, row + 16));
    }
    _mm512_mask_storeu_ps(row, k0, v0);
    _mm512_mask_storeu_ps(row + 16, k1, v1);
  }
}

/* ---- pre-packed A, B packed by a callback (gemm_bf16.h) ------------------------------ */

/* Packed A (M,K): for each KC-block of K (pairs pc/2 ..), ceil(M/MR) micro-
 * panels of kpt x MR dwords, the block starting at dword Mpad * pc/2 (AMX: above). */
static int round_mr(int M) { return fast_amx_active() ? round16(M) : (M + MR - 1) / MR * MR; }

size_t bf16_packed_a_size(int M, int K) {
  if (!fast_amx_active()) return (size_t)round_mr(M) * ((K + 1) / 2);
  const int last = K - (K - 1) / KC * KC; /* the last block's values (K > 0) */
  return K <= 0 ? 0
                : (size_t)round16(M) * ((size_t)(K - last) / 2 + (size_t)round16((last + 1) / 2));
}

void bf16_pack_a(bool ta, const float *A, int lda, int M, int K, int32_t *out, bool par) {
  const bool amx = fast_amx_active();
  const int unit = amx ? AMX_M : MR;
  const int panels = round_mr(M) / unit, blocks = (K + KC - 1) / KC;
  const int T = par && !omp_in_parallel() && (size_t)M * K >= FAST_GRAIN ? fast_threads() : 1;
  /* Pieces: KC-blocks of K, each cut into `cuts` runs of whole micro-panels. */
  int cuts = (2 * T + blocks - 1) / blocks;
  if (cuts > panels) cuts = panels;
#pragma omp parallel for collapse(2) schedule(static) num_threads(T) if (T > 1)
  for (int b = 0; b < blocks; b++)
    for (int q = 0; q < cuts; q++) {
      const int ip0 = panels * q / cuts, ip1 = panels * (q + 1) / cuts;
      const int pc = b * KC, kc = K - pc < KC ? K - pc : KC;
      const int kpt = amx ? round16((kc + 1) / 2) : (kc + 1) / 2;
      const int i0 = ip0 * unit, i1 = ip1 * unit < M ? ip1 * unit : M;
      int32_t *at = out + (size_t)round_mr(M) * (pc / 2) + (size_t)ip0 * kpt * unit;
      if (i1 > i0) {
        if (amx)
          amx_pack_a(ta, A, lda, i0, i1 - i0, pc, kc, at);
        else
          pack_a(ta, A, lda, i0, i1 - i0, pc, kc, at);
      }
    }
}

void bf16_pack_a_t16(const uint16_t *a16, size_t lda, int M, int K, int32_t *out) {
  if (fast_amx_active()) {
    amx_pack_a_t16(a16, lda, M, K, out);
    return;
  }
  const size_t Mpad = (size_t)round_mr(M);
  const __mmask16 mr_mask = bf16_mask16(MR);
  for (int pc = 0; pc < K; pc += KC) {
    const int kc = K - pc < KC ? K - pc : KC, kpt = (kc + 1) / 2;
    int32_t *blk = out + Mpad * (pc / 2);
    /* PACK_PAIRS pairs at a time (their rows stay in L1), panel after panel: the panels are
     * kpt * MR dwords apart, a multiple of 2 KiB, so storing every panel's row of one pair
     * in turn would keep a few L1 sets busy with all of them. */
    for (int kq = 0; kq < kpt; kq += PACK_PAIRS) {
      const int kn = kpt - kq < PACK_PAIRS ? kpt - kq : PACK_PAIRS;
      for (int m0 = 0; m0 < M; m0 += MR) {
        const __mmask16 mk = bf16_mask16(M - m0) & mr_mask;
        int32_t *dst = blk + ((size_t)(m0 / MR) * kpt + kq) * MR;
        for (int j = 0; j < kn; j++) {
          const int kp = kq + j;
          const uint16_t *r0 = a16 + (size_t)(pc + 2 * kp) * lda + m0;
          const __m256i lo = _mm256_maskz_loadu_epi16(mk, r0);
          const __m256i hi =
              2 * kp + 1 < kc ? _mm256_maskz_loadu_epi16(mk, r0 + lda) : _mm256_setzero_si256();
          _mm512_mask_storeu_epi32(dst + (size_t)j * MR, mr_mask, bf16_words_interleaved(lo, hi));
        }
      }
    }
  }
}

void bf16_pack_b_plain(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const Bf16Plain *b = ctx;
  pack_b(false, b->B, b->ldb, p0, kc, j0, nc, out);
}

void bf16_pack_b_plain_t(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out) {
  const Bf16Plain *b = ctx;
  pack_b(true, b->B, b->ldb, p0, kc, j0, nc, out);
}

/* Bf16Gemm.prefetch's ranges, consumed a kernel call at a time. */
typedef struct Prefetch {
  const char *p[2];
  size_t left[2];
} Prefetch;

/* The next kernel call's prefetch start (kpt lines), or NULL when done. */
static const char *prefetch_next(Prefetch *f, int kpt) {
  for (int r = 0; r < 2; r++) {
    if (!f->left[r]) continue;
    const char *at = f->p[r];
    const size_t bytes = (size_t)kpt * 64 < f->left[r] ? (size_t)kpt * 64 : f->left[r];
    f->p[r] += bytes;
    f->left[r] -= bytes;
    return bytes == (size_t)kpt * 64 ? at : NULL; /* a short tail: left to the hardware */
  }
  return NULL;
}

/* Rows [i0, i1) (i0 a multiple of MR) and columns [j0, j1) (j0 a multiple
 * of NR) of g, on this thread; prefetch: honour g->prefetch (the GEMM is not split). */
static int gemm_packed_1(const Bf16Gemm *g, int i0, int i1, int j0, int j1, bool prefetch) {
  int32_t *bbuf = (int32_t *)fast_workspace(FAST_WS_PACK_B, (size_t)NC * (KC / 2 + 1),
                                            "bf16 GEMM packing (B)");
  if (!bbuf) return -1;
  Prefetch pf = {{g->prefetch[0], g->prefetch[1]},
                 {prefetch ? g->prefetch_bytes[0] : 0, prefetch ? g->prefetch_bytes[1] : 0}};
  const size_t Mpad = (size_t)round_mr(g->M);
  for (int jc = j0; jc < j1; jc += NC) {
    const int nc = j1 - jc < NC ? j1 - jc : NC;
    for (int pc = 0; pc < g->K; pc += KC) {
      const int kc = g->K - pc < KC ? g->K - pc : KC, kpt = (kc + 1) / 2;
      const bool acc = g->accumulate || pc > 0;
      const int32_t *ablk = g->A + Mpad * (pc / 2); /* (Mpad/MR panels, kpt, MR) */
      g->pack_b(g->b_ctx, pc, kc, jc, nc, bbuf);
      for (int ic = i0; ic < i1; ic += MC) {
        const int mc = i1 - ic < MC ? i1 - ic : MC;
        for (int jr = 0; jr < nc; jr += NR)
          for (int ir = 0; ir < mc; ir += MR)
            kernel(kpt, ablk + (size_t)((ic + ir) / MR) * kpt * MR,
                   bbuf + (size_t)(jr / NR) * kpt * NR, g->C + (size_t)(ic + ir) * g->ldc + jc + jr,
                   g->ldc, mc - ir < MR ? mc - ir : MR, nc - jr < NR ? nc - jr : NR, acc, g->alpha,
                   prefetch_next(&pf, kpt));
      }
    }
  }
  return 0;
}

/* gemm_packed_1 with AMX: B packed a micro-panel at a time, each padded with zero pairs to
 * whole tiles; blocks of 32 x 32 of C. */
static int gemm_packed_amx(const Bf16Gemm *g, int i0, int i1, int j0, int j1, bool prefetch) {
  int32_t *bbuf = (int32_t *)fast_workspace(FAST_WS_PACK_B, (size_t)NC * (KC / 2 + 1),
                                            "bf16 GEMM packing (B)");
  if (!bbuf) return -1;
  amx_ready();
  Prefetch pf = {{g->prefetch[0], g->prefetch[1]},
                 {prefetch ? g->prefetch_bytes[0] : 0, prefetch ? g->prefetch_bytes[1] : 0}};
  const size_t Mpad = (size_t)round16(g->M);
  for (int jc = j0; jc < j1; jc += NC) {
    const int nc = j1 - jc < NC ? j1 - jc : NC;
    for (int pc = 0; pc < g->K; pc += KC) {
      const int kc = g->K - pc < KC ? g->K - pc : KC, kpt = (kc + 1) / 2, kp16 = round16(kpt);
      const int ks = kp16 / 16;
      const bool acc = g->accumulate || pc > 0;
      const int32_t *ablk = g->A + Mpad * (pc / 2);
      for (int jr = 0; jr < nc; jr += NR) {
        int32_t *dst = bbuf + (size_t)(jr / NR) * kp16 * NR;
        g->pack_b(g->b_ctx, pc, kc, jc + jr, nc - jr < NR ? nc - jr : NR, dst);
        memset(dst + (size_t)kpt * NR, 0, (size_t)(kp16 - kpt) * NR * sizeof(int32_t));
      }
      for (int ic = i0; ic < i1; ic += AMX_MC) {
        const int mc = i1 - ic < AMX_MC ? i1 - ic : AMX_MC;
        for (int jr = 0; jr < nc; jr += NR)
          for (int ir = 0; ir < mc; ir += AMX_MR) {
            const int32_t *a0 = ablk + (size_t)((ic + ir) / AMX_M) * ks * 256;
            const int mr = mc - ir < AMX_MR ? mc - ir : AMX_MR;
            amx_kernel(ks, a0, mr > AMX_M ? a0 + (size_t)ks * 256 : NULL,
                       bbuf + (size_t)(jr / NR) * kp16 * NR,
                       g->C + (size_t)(ic + ir) * g->ldc + jc + jr, g->ldc, mr,
                       nc - jr < NR ? nc - jr : NR, acc, g->alpha, prefetch_next(&pf, kpt), kpt);
          }
      }
    }
  }
  return 0;
}

int bf16_gemm_packed(const Bf16Gemm *g, bool par) {
  if (g->M <= 0 || g->N <= 0) return 0;
  if (g->K <= 0) {
    if (!g->accumulate)
      for (int i = 0; i < g->M; i++)
        memset(g->C + (size_t)i * g->ldc, 0, (size_t)g->N * sizeof(float));
    return 0;
  }
  const int T = par && !omp_in_parallel() ? fast_threads() : 1;
  /* Split the columns when there are enough of them (each block packs its
   * own B; A is shared), else the rows (each block packs all of B). */
  const bool amx = fast_amx_active();
  const int mr = amx ? AMX_MR : MR;
  int (*run1)(const Bf16Gemm *, int, int, int, int, bool) = amx ? gemm_packed_amx : gemm_packed_1;
  const int col_units = (g->N + NR - 1) / NR, row_units = (g->M + mr - 1) / mr;
  const bool by_cols = col_units >= 2 * T || col_units * NR >= row_units * mr;
  const int units = by_cols ? col_units : row_units, unit = by_cols ? NR : mr;
  int nb = T < units ? T : units;
  if (2.0 * g->M * g->N * g->K < 2e6) nb = 1;
  if (nb <= 1) return run1(g, 0, g->M, 0, g->N, true);
  int rc = 0;
#pragma omp parallel for schedule(static, 1) num_threads(nb) reduction(| : rc)
  for (int b = 0; b < nb; b++) {
    const int len = by_cols ? g->N : g->M;
    int lo = (int)((long)units * b / nb) * unit, hi = (int)((long)units * (b + 1) / nb) * unit;
    if (hi > len) hi = len;
    if (hi <= lo) continue;
    rc |= by_cols ? run1(g, 0, g->M, lo, hi, false) : run1(g, lo, hi, 0, g->N, false);
  }
  return rc ? -1 : 0;
}

#pragma GCC pop_options

int fast_gemm_bf16(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc) {
  if (!fast_bf16_supported())
    return moka_errorf("bf16 GEMM: this CPU has no AVX-512 BF16 instructions (vdpbf16ps)");
  if (M <= 0 || N <= 0) return 0;
  if (fast_gemm_prepare_c(M, N, K, beta, C, ldc)) return 0;
  /* A packed whole (by the pool), B a block at a time by each thread. */
  int32_t *ap = (int32_t *)fast_workspace(FAST_WS_PACK_A, bf16_packed_a_size(M, K),
                                          "bf16 GEMM packing (A)");
  if (!ap) return -1;
  bf16_pack_a(ta, A, lda, M, K, ap, true);
  const Bf16Plain b = {B, ldb};
  const Bf16Gemm g = {M, N, K, ap, tb ? bf16_pack_b_plain_t : bf16_pack_b_plain, &b, C, ldc,
                      beta != 0.0f, alpha};
  return bf16_gemm_packed(&g, true);
}
