/* peak.c — the arithmetic peak of this CPU's cores for moka's two GEMM
 * micro-kernels' instruction mix (a benchmark, not a test): what a GEMM's
 * GFLOP/s in docs/performance.md are measured against.
 *
 *   fp32: 12 x 32 block, 24 zmm accumulators, per k two 16-float vectors of
 *         B and one broadcast of A per row, 24 VFMADD231PS (gemm_f32.c)
 *   bf16: the same with bf16 pairs, 24 VDPBF16PS, each 2 products a lane
 *         (gemm_bf16.c)
 *
 * on operands that stay in L1 (no memory traffic), one thread and then
 * every thread of the OpenMP pool. Build and run: tests/bench/peak.sh.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>

enum { KP = 128 };

__attribute__((target("avx512f"), noinline)) static float fp32_block(const float *A,
                                                                    const float *B, long n) {
  __m512 c[12][2];
#pragma GCC unroll 12
  for (int m = 0; m < 12; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (long it = 0; it < n; it++)
    for (int p = 0; p < KP; p++) {
      const __m512 b0 = _mm512_loadu_ps(B + p * 32), b1 = _mm512_loadu_ps(B + p * 32 + 16);
#pragma GCC unroll 12
      for (int m = 0; m < 12; m++) {
        const __m512 a = _mm512_set1_ps(A[p * 12 + m]);
        c[m][0] = _mm512_fmadd_ps(a, b0, c[m][0]);
        c[m][1] = _mm512_fmadd_ps(a, b1, c[m][1]);
      }
    }
  __m512 s = _mm512_setzero_ps();
#pragma GCC unroll 12
  for (int m = 0; m < 12; m++) s = _mm512_add_ps(s, _mm512_add_ps(c[m][0], c[m][1]));
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16"), noinline)) static float bf16_block(const int32_t *A,
                                                                               const int32_t *B,
                                                                               long n) {
  __m512 c[12][2];
#pragma GCC unroll 12
  for (int m = 0; m < 12; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
  for (long it = 0; it < n; it++)
    for (int p = 0; p < KP; p++) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B + p * 32);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B + p * 32 + 16);
#pragma GCC unroll 12
      for (int m = 0; m < 12; m++) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(A[p * 12 + m]);
        c[m][0] = _mm512_dpbf16_ps(c[m][0], a, b0);
        c[m][1] = _mm512_dpbf16_ps(c[m][1], a, b1);
      }
    }
  __m512 s = _mm512_setzero_ps();
#pragma GCC unroll 12
  for (int m = 0; m < 12; m++) s = _mm512_add_ps(s, _mm512_add_ps(c[m][0], c[m][1]));
  return _mm512_reduce_add_ps(s);
}

static float fa[KP * 12], fb[KP * 32];
static int32_t ba[KP * 12], bb[KP * 32];

/* GFLOP/s of `threads` threads running the block n times each. */
static double run(int bf16, int threads, long n) {
  float sink = 0.0f;
  const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  sink += bf16 ? bf16_block(ba, bb, n) : fp32_block(fa, fb, n);
  const double t = omp_get_wtime() - t0;
  if (sink == 1.2345f) printf(" "); /* keep the result alive */
  const double flops = (double)threads * n * KP * 12 * 32 * 2 * (bf16 ? 2 : 1);
  return flops / t / 1e9;
}

int main(void) {
  for (int i = 0; i < KP * 12; i++) fa[i] = 1e-3f, ba[i] = 0x3a833a83; /* bf16 pairs ~1e-3 */
  for (int i = 0; i < KP * 32; i++) fb[i] = 1e-3f, bb[i] = 0x3a833a83;
  __builtin_cpu_init();
  const int has_bf16 = __builtin_cpu_supports("avx512bf16") != 0;
  if (!__builtin_cpu_supports("avx512f")) {
    printf("peak: no AVX-512 on this CPU: moka's AVX-512 kernels do not run here\n");
    return 0;
  }
  const int T = omp_get_max_threads();
  const long n = 100000;
  for (int bf16 = 0; bf16 <= has_bf16; bf16++) {
    run(bf16, T, n / 10); /* warm-up (clocks up) */
    double best1 = 0, bestT = 0;
    for (int r = 0; r < 3; r++) {
      const double g1 = run(bf16, 1, n), gT = run(bf16, T, n);
      if (g1 > best1) best1 = g1;
      if (gT > bestT) bestT = gT;
    }
    printf("%s peak (%s): %.0f GFLOP/s on 1 thread, %.0f on %d threads\n",
           bf16 ? "bf16" : "fp32", bf16 ? "VDPBF16PS, 12x32" : "VFMADD231PS, 12x32", best1, bestT,
           T);
  }
  if (!has_bf16) printf("bf16 peak: no AVX-512 BF16 on this CPU\n");
  return 0;
}
