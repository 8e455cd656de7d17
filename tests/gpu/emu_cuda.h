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

/* A convolution case for the emulated kernels: inputs on the bf16 grid (x, w, dy, bias, and
 * dw0 the weight gradient's starting value, drawn in that order from *lcg) and a direct
 * convolution in double: y (+ bias when with_bias), dx, dw (from dw0), each with the sum of
 * its terms' magnitudes (sy, sdx, sdw) for emu_close_all. Groups G, Caffe's geometry. */
struct EmuConv {
  int num, C, H, W, OC, G, KH, KW, PH, PW, SH, SW, DH, DW, OH, OW;
  std::vector<float> x, w, dy, bias, dw0;
  std::vector<double> y, sy, dx, sdx, dw, sdw;
};

static EmuConv emu_conv(int num, int C, int H, int W, int OC, int G, int KH, int KW, int PH,
                        int PW, int SH, int SW, int DH, int DW, bool with_bias,
                        unsigned long long *lcg) {
  EmuConv e = {num, C, H, W, OC, G, KH, KW, PH, PW, SH, SW, DH, DW, 0, 0, {}, {}, {}, {}, {},
               {}, {}, {}, {}, {}, {}};
  e.OH = (H + 2 * PH - (DH * (KH - 1) + 1)) / SH + 1;
  e.OW = (W + 2 * PW - (DW * (KW - 1) + 1)) / SW + 1;
  const int Cg = C / G, OCg = OC / G;
  const size_t nx = (size_t)num * C * H * W, ny = (size_t)num * OC * e.OH * e.OW;
  const size_t nw = (size_t)OC * Cg * KH * KW;
  e.x.resize(nx), e.w.resize(nw), e.dy.resize(ny), e.bias.resize(OC), e.dw0.resize(nw);
  for (auto &v : e.x) v = emu_rnd_grid(lcg);
  for (auto &v : e.w) v = emu_rnd_grid(lcg);
  for (auto &v : e.dy) v = emu_rnd_grid(lcg);
  for (auto &v : e.bias) v = emu_rnd_grid(lcg) * 0.37f;
  for (auto &v : e.dw0) v = emu_rnd_grid(lcg) * 0.11f;
  e.y.assign(ny, 0.0), e.sy.assign(ny, 0.0), e.dx.assign(nx, 0.0), e.sdx.assign(nx, 0.0);
  e.dw.resize(nw), e.sdw.resize(nw);
  for (size_t i = 0; i < nw; i++) e.dw[i] = e.dw0[i], e.sdw[i] = fabs(e.dw0[i]);
  for (int n = 0; n < num; n++)
    for (int oc = 0; oc < OC; oc++)
      for (int oh = 0; oh < e.OH; oh++)
        for (int ow = 0; ow < e.OW; ow++) {
          const int grp = oc / OCg;
          const size_t yi = (((size_t)n * OC + oc) * e.OH + oh) * e.OW + ow;
          double s = with_bias ? e.bias[oc] : 0.0, a = fabs(s);
          for (int ci = 0; ci < Cg; ci++)
            for (int kh = 0; kh < KH; kh++)
              for (int kw = 0; kw < KW; kw++) {
                const int h = oh * SH - PH + kh * DH, ww = ow * SW - PW + kw * DW;
                if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                const size_t xi = (((size_t)n * C + grp * Cg + ci) * H + h) * W + ww;
                const size_t wi = (((size_t)oc * Cg + ci) * KH + kh) * KW + kw;
                const double xv = e.x[xi], wv = e.w[wi], gv = e.dy[yi];
                s += wv * xv, a += fabs(wv * xv);
                e.dx[xi] += wv * gv, e.sdx[xi] += fabs(wv * gv);
                e.dw[wi] += gv * xv, e.sdw[wi] += fabs(gv * xv);
              }
          e.y[yi] = s, e.sy[yi] = a;
        }
  return e;
}

#endif
