/* emu_cuda.h — the CPU stand-in for a CUDA thread block that the kernel
 * emulators (igemm_emulate.cpp, nhwc_emulate.cpp) compile real kernels/<op>.cu
 * sources against: the CUDA keywords as no-ops, threadIdx / blockIdx, bf16
 * with the device's rounding, and a block of 256 cooperative threads
 * (ucontext) on one OS thread, where __syncthreads and __syncwarp switch to
 * the next thread round robin, so that every thread reaches its i-th
 * barrier before any passes it (threads that meet different barriers are an
 * error). __shared__ is a static (one block runs at a time). */
#ifndef MOKA_EMU_CUDA_H
#define MOKA_EMU_CUDA_H

#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include <ucontext.h>

/* ---- mocked CUDA ----------------------------------------------------------------------------- */

#define __global__
#define __device__
#define __host__
#define __forceinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __ldg(p) (*(p))

struct dim3 {
  unsigned x, y, z;
};
static dim3 threadIdx, blockIdx;
/* The block's shape (x*y must be NT, the emulated threads: thread t is (t % x, t / x)) and
 * the grid's, for kernels that read them (grid-stride loops, 2-D blocks). */
[[maybe_unused]] static dim3 blockDim = {256, 1, 1}, gridDim = {1, 1, 1};

static void emu_sync(int kind);
static int g_cur; /* the running thread */
static void __syncthreads() { emu_sync(1); }
static void __syncwarp() { emu_sync(2); }
static void __trap() { abort(); }

#include "bf16_host.h" /* round_bf16: the device's rounding (nearest even) */

struct __nv_bfloat16 { /* 2 bytes, like the device's: the shared-memory layout is the same */
  uint16_t bits;
};
static __nv_bfloat16 __float2bfloat16_rn(float v) {
  const float r = round_bf16(v);
  uint32_t u;
  memcpy(&u, &r, 4);
  return __nv_bfloat16{(uint16_t)(u >> 16)};
}
static float to_float(float v) { return v; }
static float to_float(__nv_bfloat16 v) {
  const uint32_t u = (uint32_t)v.bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static int g_errors;
#define EMU_ASSERT(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      if (g_errors++ < 5) {                                                                     \
        fprintf(stderr, "emulator: " __VA_ARGS__);                                              \
        fprintf(stderr, "\n");                                                                  \
      }                                                                                         \
    }                                                                                           \
  } while (0)

/* ---- cooperative threads --------------------------------------------------------------------- */

enum { NT = 256, STACK = 256 * 1024 };
static ucontext_t g_sched, g_ctx[NT];
static std::vector<char> g_stacks;
static int g_kind[NT], g_count[NT];
static bool g_done[NT];
static std::function<void()> g_body;

static void emu_sync(int kind) {
  const int t = g_cur;
  g_kind[t] = kind;
  g_count[t]++;
  swapcontext(&g_ctx[t], &g_sched);
}

static void thread_entry() {
  g_body();
  g_done[g_cur] = true;
}

static void run_block(const std::function<void()> &body) {
  if (g_stacks.empty()) g_stacks.resize((size_t)NT * STACK);
  g_body = body;
  for (int t = 0; t < NT; t++) {
    getcontext(&g_ctx[t]);
    g_ctx[t].uc_stack.ss_sp = &g_stacks[(size_t)t * STACK];
    g_ctx[t].uc_stack.ss_size = STACK;
    g_ctx[t].uc_link = &g_sched;
    makecontext(&g_ctx[t], thread_entry, 0);
    g_done[t] = false;
    g_kind[t] = 0;
    g_count[t] = 0;
  }
  for (;;) {
    for (int t = 0; t < NT; t++) {
      if (g_done[t]) continue;
      g_cur = t;
      threadIdx = dim3{(unsigned)t % blockDim.x, (unsigned)t / blockDim.x, 0};
      swapcontext(&g_sched, &g_ctx[t]);
    }
    int ndone = 0;
    for (int t = 0; t < NT; t++) ndone += g_done[t];
    if (ndone == NT) return;
    bool same = ndone == 0;
    for (int t = 1; t < NT && same; t++)
      same = g_kind[t] == g_kind[0] && g_count[t] == g_count[0];
    EMU_ASSERT(same, "threads diverge at a barrier (%d finished; thread 0 at barrier %d kind %d)",
               ndone, g_count[0], g_kind[0]);
    if (!same) { /* run the rest to completion to leave no context behind */
      for (int t = 0; t < NT; t++) g_kind[t] = g_count[t] = 0;
    }
  }
}

/* ---- for the checks -------------------------------------------------------------------------- */

/* Uniform values in [-1, 1] on the bf16 grid (so bf16 and TF32 roundings are exact), from a
 * caller-held LCG state. */
static float emu_rnd_grid(unsigned long long *lcg) {
  *lcg = *lcg * 6364136223846793005ULL + 1442695040888963407ULL;
  return round_bf16((float)((*lcg >> 33) % 2000001) / 1000000.0f - 1.0f);
}

/* Every element within (K + 64) 2^-23 S of the double reference (S: the sum of the terms'
 * magnitudes, K their number); prints the first miss. */
static bool emu_close_all(const char *what, const std::vector<float> &got,
                          const std::vector<double> &ref, const std::vector<double> &S,
                          long long K) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double d = fabs((double)got[i] - ref[i]);
    if (!(d <= (double)(K + 64) * ldexp(1.0, -23) * S[i] + 1e-30)) {
      if (!bad) first = i;
      bad++;
    }
  }
  if (bad)
    fprintf(stderr, "  FAIL %s: %zu of %zu wrong (first %zu: got %.9g want %.9g)\n", what, bad,
            got.size(), first, (double)got[first], ref[first]);
  return bad == 0;
}

#endif
