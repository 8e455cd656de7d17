/* gemm_f32.c — moka's own fp32 GEMM for CPUs with AVX-512 (the fast CPU
 * backend's fp32 GEMM on such CPUs; see fast_gemm and init_once in fast.c).
 *
 *   C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C     (row-major)
 *
 * Why: OpenBLAS picks its kernel once, from the CPU or from
 * OPENBLAS_CORETYPE; environments that pin an older core type (Haswell:
 * AVX2, 8 lanes) halve moka's GEMM throughput on an AVX-512 CPU. This is the
 * same blocked algorithm as gemm_bf16.c (BLIS's loops: NC columns of op(B)
 * packed, KC values of K per pass, MC rows of op(A) packed, an MR x NR
 * micro-kernel), with fp32 panels
 *
 *   packed A micro-panel (MR rows):  [k][MR]
 *   packed B micro-panel (NR cols):  [k][NR]
 *
 * zero-padded past M and N, and a 12 x 32 micro-kernel of FMAs (24 zmm
 * accumulators, per k two B vectors and one broadcast per row), or 8 x 32
 * where 12-row panels would pad M too much (pick_mr). Threads split the
 * longer of M and N, each packing into its own workspace.
 *
 * Compiled for AVX-512F by a target pragma; fast_gemm calls it only when
 * the CPU has AVX-512F.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "fast.h"
#include "util.h"

/* KC = 256: a B micro-panel (32 KiB) and an A micro-panel (12 KiB) together in a 48 KiB L1.
 * On the Zen 5 build machine KC = 512 (K up to 512 in one pass over C, the B micro-panel in
 * L2) was 1% faster (ResNet-50 training at batch 8 with this GEMM: 542 -> 538 ms); on the
 * Xeon that replaced it (session 13) 256 is 3% faster (alternating runs: 756 / 754 / 720 ->
 * 730 / 733 / 712 ms; 192 and 384 between, MC 96 and 240 the same within the noise). */
enum { MR = 12, NR = 32, MC = 144, KC = 256, NC = 512 }; /* MR: the largest micro-panel height */
/* Packing a transposed operand reads 16 rows far apart (a long K) a cache
 * line at a time, too little of each for the hardware prefetchers: PF
 * floats ahead are prefetched by hand (measured, ResNet-50 training at
 * batch 8 with this GEMM: 5% faster; 32 and 64 alike, 16 less). */
enum { PF = 64 };
/* The micro-kernels' modes: add to C; stream C's lines past the caches (whole lines only). */
enum { KERN_ACC = 1, KERN_STREAM = 2, STREAM_C_BYTES = 1 << 20 };

bool fast_avx512_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include <immintrin.h>

#include "avx512_transpose.h"

static inline __mmask16 mask16(int n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* op(A) rows [i0, i0+mc), K range [p0, p0+kc) -> micro-panels of MR rows. */
static void pack_a(int mr, bool ta, const float *A, int lda, int i0, int mc, int p0, int kc,
                   float *out) {
  const __mmask16 mr_mask = mask16(mr);
  for (int ip = 0; ip * mr < mc; ip++) {
    float *dst = out + (size_t)ip * kc * mr;
    const int m0 = ip * mr, mm = mc - m0 < mr ? mc - m0 : mr;
    if (!ta) { /* A(m,k) = A[m*lda + k]: rows contiguous in k; transpose 16 x 16 */
      for (int k = 0; k < kc; k += 16) {
        __m512i r[16];
        const __mmask16 kmask = mask16(kc - k);
        /* PF floats ahead; past the end of these rows, the next panel's. */
        const int kp = k + PF < kc ? k + PF : k + PF - kc, rp = k + PF < kc ? m0 : m0 + mr;
        for (int j = 0; j < mr && rp + j < mc; j++)
          _mm_prefetch((const char *)(A + (size_t)(i0 + rp + j) * lda + p0 + kp), _MM_HINT_T0);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
          r[j] = j < mm ? _mm512_castps_si512(_mm512_maskz_loadu_ps(
                              kmask, A + (size_t)(i0 + m0 + j) * lda + p0 + k))
                        : _mm512_setzero_si512();
        transpose16(r); /* r[q] = column k+q of the rows */
        const int nk = kc - k < 16 ? kc - k : 16;
#pragma GCC unroll 16
        for (int q = 0; q < 16; q++)
          if (q < nk) _mm512_mask_storeu_epi32(dst + (size_t)(k + q) * mr, mr_mask, r[q]);
      }
    } else { /* A(m,k) = A[k*lda + m]: storage row k, consecutive m */
      const __mmask16 mk = mask16(mm);
      for (int k = 0; k < kc; k++)
        _mm512_mask_storeu_ps(dst + (size_t)k * mr, mr_mask,
                              _mm512_maskz_loadu_ps(mk, A + (size_t)(p0 + k) * lda + i0 + m0));
    }
  }
}

/* op(B) columns [j0, j0+nc), K range [p0, p0+kc) -> micro-panels of NR columns. */
static void pack_b(bool tb, const float *B, int ldb, int p0, int kc, int j0, int nc, float *out) {
  const int panels = (nc + NR - 1) / NR;
  for (int jp = 0; jp < panels; jp++) {
    float *dst = out + (size_t)jp * kc * NR;
    const int n0 = jp * NR, nn = nc - n0 < NR ? nc - n0 : NR;
    if (!tb) { /* B(k,n) = B[k*ldb + n]: row k, consecutive n */
      for (int k = 0; k < kc; k++) {
        const float *row = B + (size_t)(p0 + k) * ldb + j0 + n0;
        _mm512_storeu_ps(dst + (size_t)k * NR, _mm512_maskz_loadu_ps(mask16(nn), row));
        _mm512_storeu_ps(dst + (size_t)k * NR + 16, _mm512_maskz_loadu_ps(mask16(nn - 16), row + 16));
      }
    } else { /* B(k,n) = B[n*ldb + k]: storage rows contiguous in k; transpose 16 x 16 */
      for (int v = 0; v < NR; v += 16)
        for (int k = 0; k < kc; k += 16) {
          __m512i r[16];
          const __mmask16 kmask = mask16(kc - k);
          const int kp = k + PF < kc ? k + PF : k + PF - kc, vp = k + PF < kc ? v : v + 16;
          for (int j = 0; j < 16 && n0 + vp + j < nc; j++)
            _mm_prefetch((const char *)(B + (size_t)(j0 + n0 + vp + j) * ldb + p0 + kp),
                         _MM_HINT_T0);
#pragma GCC unroll 16
          for (int j = 0; j < 16; j++)
            r[j] = v + j < nn ? _mm512_castps_si512(_mm512_maskz_loadu_ps(
                                    kmask, B + (size_t)(j0 + n0 + v + j) * ldb + p0 + k))
                              : _mm512_setzero_si512();
          transpose16(r); /* r[q] = row k+q of op(B), 16 columns */
          const int nk = kc - k < 16 ? kc - k : 16;
#pragma GCC unroll 16
          for (int q = 0; q < 16; q++)
            if (q < nk) _mm512_storeu_si512(dst + (size_t)(k + q) * NR + v, r[q]);
        }
    }
  }
}

/* C tile (mr <= MRK rows, nr <= NR columns) (+)= alpha * Ap x Bp over kc,
 * for a micro-panel height MRK known at compile time (12 or 8, see
 * pick_mr). */
static inline __attribute__((always_inline)) void kernel_mr(const int MRK, const bool HALF,
                                                            int kc, const float *Ap, size_t as,
                                                            const float *Bp, float *C, int ldc,
                                                            int mr, int nr, int mode,
                                                            float alpha) {
  const bool accumulate = mode & KERN_ACC, stream = mode & KERN_STREAM;
  __m512 c[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MRK; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_loadu_ps(Bp + (size_t)k * NR);
    const __m512 b1 = HALF ? b0 : _mm512_loadu_ps(Bp + (size_t)k * NR + 16);
    const float *a = Ap + (size_t)k * as;
#pragma GCC unroll 12
    for (int m = 0; m < MRK; m++) {
      const __m512 am = _mm512_set1_ps(a[m]);
      c[m][0] = _mm512_fmadd_ps(am, b0, c[m][0]);
      if (!HALF) c[m][1] = _mm512_fmadd_ps(am, b1, c[m][1]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
  const __mmask16 k0 = mask16(nr), k1 = mask16(nr - 16);
#pragma GCC unroll 12
  for (int m = 0; m < MRK; m++) {
    if (m >= mr) break;
    float *row = C + (size_t)m * ldc;
    __m512 v0 = alpha == 1.0f ? c[m][0] : _mm512_mul_ps(c[m][0], va);
    if (accumulate) v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, row));
    if (HALF) {
      _mm512_mask_storeu_ps(row, k0, v0);
      continue;
    }
    __m512 v1 = alpha == 1.0f ? c[m][1] : _mm512_mul_ps(c[m][1], va);
    if (accumulate) v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, row + 16));
    if (stream && nr == NR) { /* the row's two whole lines past the caches */
      _mm512_stream_ps(row, v0);
      _mm512_stream_ps(row + 16, v1);
    } else {
      _mm512_mask_storeu_ps(row, k0, v0);
      _mm512_mask_storeu_ps(row + 16, k1, v1);
    }
  }
}

typedef void KernelFn(int kc, const float *Ap, size_t as, const float *Bp, float *C, int ldc,
                      int mr, int nr, int mode, float alpha);

/* Full-width kernels, and half-width ones for a panel of at most 16 columns
 * (the last of N, e.g. 8 of N = 392): half the FMAs, all of them useful. */
static void kernel12(int kc, const float *Ap, size_t as, const float *Bp, float *C, int ldc,
                     int mr, int nr, int mode, float alpha) {
  kernel_mr(12, false, kc, Ap, as, Bp, C, ldc, mr, nr, mode, alpha);
}
static void kernel12h(int kc, const float *Ap, size_t as, const float *Bp, float *C, int ldc,
                      int mr, int nr, int mode, float alpha) {
  kernel_mr(12, true, kc, Ap, as, Bp, C, ldc, mr, nr, mode, alpha);
}
static void kernel8(int kc, const float *Ap, size_t as, const float *Bp, float *C, int ldc,
                    int mr, int nr, int mode, float alpha) {
  kernel_mr(8, false, kc, Ap, as, Bp, C, ldc, mr, nr, mode, alpha);
}
static void kernel8h(int kc, const float *Ap, size_t as, const float *Bp, float *C, int ldc,
                     int mr, int nr, int mode, float alpha) {
  kernel_mr(8, true, kc, Ap, as, Bp, C, ldc, mr, nr, mode, alpha);
}

/* The micro-panel height for M rows: 12 (24 accumulators, more FMAs per
 * load), or 8 where 12 would pad M by over 5% more (M = 64: 72 rows with
 * 12; measured one thread, 1x1 convolutions' shapes with M = 64: 8-10%
 * faster with 8; M = 2048 or 512: 12 is 3-10% faster than 8). */
static int pick_mr(int M) {
  const int pad12 = (M + 11) / 12 * 12, pad8 = (M + 7) / 8 * 8;
  return pad12 > 1.05 * pad8 ? 8 : 12;
}

/* op(A) transposed (A stored (K, M): the data gradients' W^T, Winograd's
 * U^T) read in place: storage row k holds the MR broadcasts of a micro-
 * panel's step k side by side, so whole panels are read where they lie, lda
 * apart, instead of being copied into the packed block first (the same
 * values into the same FMAs: the same results bit for bit). A last panel of
 * fewer than MR rows is still packed (zero-padded). Measured, ResNet-50
 * training at batch 8, interleaved pairs: 16.70 -> 17.10 img/s (the same
 * binary with and without the switch, four pairs), 16.90 -> 17.34 (binary
 * against binary, five pairs); inference is unchanged (its weights are
 * packed once). The same for op(B) not transposed (its rows are the B
 * vectors already) measured no faster in training and 1.4% slower in
 * inference at batch 1 (short rows of 7x7 and 14x14 planes): B is packed.
 * MOKA_GEMM_PACK=1 packs A too, as before (A/B). */
static int g_in_place = -1; /* -1: not read yet */
static bool in_place_on(void) {
  if (g_in_place < 0) {
    const char *e = getenv("MOKA_GEMM_PACK");
    g_in_place = !(e && strcmp(e, "1") == 0);
  }
  return g_in_place;
}
void fast_gemm_f32_set_in_place(bool on) { g_in_place = on; }

/* One thread's GEMM (beta 0 or 1 here), packing into its own workspace.
 * With Ap, op(A) comes packed already (fast_gemm_f32_pack's layout for
 * Mfull rows; this call's rows start at row i0 of it, a multiple of its
 * panel height) and only op(B) is packed here. */
static int gemm_f32_1(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, bool accumulate, float *C, int ldc,
                      const float *Ap, int Mfull, int i0) {
  float *abuf =
      Ap ? NULL : fast_workspace(FAST_WS_PACK_A, (size_t)(MC + MR) * KC, "fp32 GEMM packing (A)");
  float *bbuf = fast_workspace(FAST_WS_PACK_B, (size_t)(NC + NR) * KC, "fp32 GEMM packing (B)");
  if ((!Ap && !abuf) || !bbuf) return -1;
  const bool in_place = in_place_on();
  const int mr = pick_mr(Ap ? Mfull : M);
  const size_t mpad = Ap ? (size_t)(Mfull + mr - 1) / mr * mr : 0;
  KernelFn *const kern = mr == 8 ? kernel8 : kernel12;
  KernelFn *const kern_half = mr == 8 ? kernel8h : kernel12h; /* panels of <= 16 columns */
  /* C's last writes streamed past the caches when C is large (its reader, the next layer, finds
   * it in memory anyway; no read for ownership) and its rows are whole 64-byte lines apart;
   * not when the call adds to C (a weight gradient summed over images reads it again next). */
  const bool stream = !accumulate && (size_t)M * N * sizeof(float) >= STREAM_C_BYTES &&
                      ldc % 16 == 0 && ((uintptr_t)C & 63) == 0;
  for (int jc = 0; jc < N; jc += NC) {
    const int nc = N - jc < NC ? N - jc : NC;
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = K - pc < KC ? K - pc : KC;
      const bool acc = accumulate || pc > 0;
      const int mode = (acc ? KERN_ACC : 0) | (stream && pc + kc >= K ? KERN_STREAM : 0);
      pack_b(tb, B, ldb, pc, kc, jc, nc, bbuf);
      for (int ic = 0; ic < M; ic += MC) {
        const int mc = M - ic < MC ? M - ic : MC;
        const float *ablk; /* the micro-panels of rows [ic, ic+mc), K range [pc, pc+kc) */
        /* op(A) transposed: its full panels read in place (in_place_on), a
         * partial last one packed. */
        const int full_m = !Ap && ta && in_place ? mc / mr * mr : 0;
        if (Ap) {
          ablk = Ap + (size_t)pc * mpad + (size_t)(i0 + ic) * kc;
        } else {
          /* panels from full_m/mr on, packed */
          if (full_m < mc) pack_a(mr, ta, A, lda, ic + full_m, mc - full_m, pc, kc, abuf);
          ablk = abuf;
        }
        for (int jr = 0; jr < nc; jr += NR) {
          KernelFn *const k = nc - jr <= 16 ? kern_half : kern;
          for (int ir = 0; ir < mc; ir += mr)
            k(kc,
              ir < full_m ? A + (size_t)pc * lda + ic + ir
                          : ablk + (size_t)((ir - full_m) / mr) * kc * mr,
              ir < full_m ? (size_t)lda : (size_t)mr, bbuf + (size_t)(jr / NR) * kc * NR,
              C + (size_t)(ic + ir) * ldc + jc + jr, ldc, mc - ir < mr ? mc - ir : mr,
              nc - jr < NR ? nc - jr : NR, mode, alpha);
        }
      }
    }
  }
  if (stream) _mm_sfence(); /* the streamed lines out before anything reads C */
  return 0;
}

/* The packed layout of op(A) (M, K): for each K block pc of KC (the last
 * shorter), the M rows padded to panels of mr, each panel [kc][mr]; block
 * pc starts at pc * mpad. */
size_t fast_gemm_f32_packed_size(int M, int K) {
  const int mr = pick_mr(M);
  return (size_t)(M + mr - 1) / mr * mr * (size_t)(K > 0 ? K : 1);
}

void fast_gemm_f32_pack(bool ta, int M, int K, const float *A, int lda, float *Ap) {
  const int mr = pick_mr(M);
  const size_t mpad = (size_t)(M + mr - 1) / mr * mr;
  const int kb = (K + KC - 1) / KC, mb = (M + MC - 1) / MC; /* K blocks x MC-row blocks */
#pragma omp parallel for collapse(2) schedule(static) \
    if (!omp_in_parallel() && (size_t)M * K >= 1u << 16)
  for (int b = 0; b < kb; b++)
    for (int i = 0; i < mb; i++) {
      const int pc = b * KC, kc = K - pc < KC ? K - pc : KC;
      const int ic = i * MC, mc = M - ic < MC ? M - ic : MC;
      /* rows [ic, ic+mc): panels from ic/mr on, the last one zero-padded */
      pack_a(mr, ta, A, lda, ic, mc, pc, kc, Ap + (size_t)pc * mpad + (size_t)ic * kc);
    }
}

#pragma GCC pop_options

/* fast_gemm_f32 and fast_gemm_f32_prepacked: op(A) from A, or packed (Ap). */
static int gemm_f32_run(bool ta, bool tb, int M, int N, int K, float alpha, const float *A,
                        int lda, const float *Ap, const float *B, int ldb, float beta, float *C,
                        int ldc) {
  if (!fast_avx512_supported())
    return moka_errorf("fp32 GEMM: this CPU has no AVX-512 (use OpenBLAS)");
  if (M <= 0 || N <= 0) return 0;
  if (fast_gemm_prepare_c(M, N, K, beta, C, ldc)) return 0;
  const bool accumulate = beta != 0.0f;
  const int T = omp_in_parallel() ? 1 : fast_threads();
  /* Split the longer side: each block packs the whole of the other operand. */
  const bool by_cols = N >= M;
  const int len = by_cols ? N : M, unit = by_cols ? NR : pick_mr(M);
  int nb = T;
  while (nb > 1 && len / nb < unit) nb--;
  if (2.0 * M * N * K < 2e6) nb = 1;
  int rc = 0;
#pragma omp parallel for schedule(static, 1) num_threads(nb) reduction(| : rc) if (nb > 1)
  for (int b = 0; b < nb; b++) {
    const int units = (len + unit - 1) / unit;
    int lo = (int)((long)units * b / nb) * unit, hi = (int)((long)units * (b + 1) / nb) * unit;
    if (hi > len) hi = len;
    if (hi <= lo) continue;
    if (by_cols)
      rc |= gemm_f32_1(ta, tb, M, hi - lo, K, alpha, A, lda, tb ? B + (size_t)lo * ldb : B + lo,
                       ldb, accumulate, C + lo, ldc, Ap, M, 0);
    else
      rc |= gemm_f32_1(ta, tb, hi - lo, N, K, alpha, Ap ? NULL : ta ? A + lo : A + (size_t)lo * lda,
                       lda, B, ldb, accumulate, C + (size_t)lo * ldc, ldc, Ap, M, lo);
  }
  return rc ? -1 : 0;
}

int fast_gemm_f32(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
  return gemm_f32_run(ta, tb, M, N, K, alpha, A, lda, NULL, B, ldb, beta, C, ldc);
}

int fast_gemm_f32_prepacked(int M, int N, int K, const float *Ap, const float *B, int ldb,
                            float *C, int ldc) {
  return gemm_f32_run(false, false, M, N, K, 1.0f, NULL, 0, Ap, B, ldb, 0.0f, C, ldc);
}
