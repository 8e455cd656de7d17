/* peak.c — the arithmetic peak of this CPU's cores for moka's two GEMM
 * micro-kernels' instruction mix (a benchmark, not a test): what a GEMM's
 * GFLOP/s in docs/performance.md are measured against.
 *
 *   fp32: 12 x 32 block, 24 zmm accumulators, per k two 16-float vectors of
 *         B and one broadcast of A per row, 24 VFMADD231PS (gemm_f32.c)
 *   bf16: the same with bf16 pairs, 24 VDPBF16PS, each 2 products a lane
 *         (gemm_bf16.c)
 *   AMX:  where the CPU has AMX-BF16: a 32 x 32 block in four C tiles, per
 *         step of 32 bf16 of K two A and two B tiles loaded, 4 TDPBF16PS
 *         (16 x 16 x 32 products each: amx.h, gemm_bf16.c, conv_nhwc_bf16.c)
 *
 * on operands that stay in L1 (no memory traffic), one thread and then
 * every thread of the OpenMP pool. Build and run: tests/bench/peak.sh.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

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

/* AMX: the tile state asked of Linux once (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA); each
 * thread loads a configuration of eight 16 x 64-byte tiles. */
static int amx_available(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22)))
    return 0;
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

static int32_t amx_a[2][256] __attribute__((aligned(64))), amx_b[2][256]
    __attribute__((aligned(64)));

static float amx_block(long n) {
  struct {
    uint8_t palette, start;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
  __asm__ volatile("tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3" ::);
  for (long it = 0; it < n * 16; it++)
    __asm__ volatile("tileloadd (%0,%4,1), %%tmm4\n\t"
                     "tileloadd (%1,%4,1), %%tmm5\n\t"
                     "tileloadd (%2,%4,1), %%tmm6\n\t"
                     "tileloadd (%3,%4,1), %%tmm7\n\t"
                     "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\t"
                     "tdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
                     "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\t"
                     "tdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::"r"(amx_a[0]),
                     "r"(amx_a[1]), "r"(amx_b[0]), "r"(amx_b[1]), "r"(64L)
                     : "memory");
  float out[256] __attribute__((aligned(64)));
  __asm__ volatile("tilestored %%tmm0, (%0,%1,1)" ::"r"(out), "r"(64L) : "memory");
  __asm__ volatile("tilerelease" ::);
  return out[0];
}

static double run_amx(int threads, long n) {
  float sink = 0.0f;
  const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  sink += amx_block(n);
  const double t = omp_get_wtime() - t0;
  if (sink == 1.2345f) printf(" ");
  return (double)threads * n * 16 * 4 * 16 * 16 * 32 * 2 / t / 1e9;
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
  if (amx_available()) {
    for (int i = 0; i < 256; i++)
      amx_a[0][i] = amx_a[1][i] = amx_b[0][i] = amx_b[1][i] = 0x3a833a83;
    run_amx(T, n / 10);
    double best1 = 0, bestT = 0;
    for (int r = 0; r < 3; r++) {
      const double g1 = run_amx(1, n), gT = run_amx(T, n);
      if (g1 > best1) best1 = g1;
      if (gT > bestT) bestT = gT;
    }
    printf("bf16 peak (AMX TDPBF16PS, 2x2 tiles): %.0f GFLOP/s on 1 thread, %.0f on %d threads\n",
           best1, bestT, T);
  } else {
    printf("AMX peak: no AMX-BF16 on this CPU (or Linux did not grant the tile state)\n");
  }
  return 0;
}
