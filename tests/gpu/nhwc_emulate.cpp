/* nhwc_emulate.cpp — the NHWC bf16 convolution kernel of kernels/conv_nhwc.cu
 * (the same source, compiled with MOKA_NHWC_EMULATE) run on the CPU in a
 * block of 256 cooperative threads (emu_cuda.h), so that its loader maps,
 * pipeline, fragment addressing, epilogue and split-K are tested where there
 * is no GPU (`make test`). Only the four instructions of conv_nhwc_ptx.h are
 * emulated, lane by lane, with the layouts the PTX ISA documents:
 *
 *   - cp.async: each copy is queued in its thread's open group; commit closes
 *     the group; wait_group N lands every group but the newest N, oldest
 *     first. Two modes, both run: LATE (copies land only at the wait: reading
 *     a stage before waiting for it sees stale data) and EARLY (copies land
 *     when issued: overwriting a stage another warp still reads shows). A
 *     copy still queued when the kernel ends is an error. Addresses must be
 *     16-byte aligned.
 *   - ldmatrix (.x4, with and without .trans) and mma.sync m16n8k16: warp
 *     collectives. Each lane deposits its operands (row addresses; A, B, C
 *     registers) and waits at a warp barrier; the warp's last lane computes
 *     all 32 lanes' results from the deposits (reading shared memory then,
 *     before any thread moves on); each lane takes its own. The MMA's
 *     products are exact in fp32 (bf16 x bf16) and summed in k order onto C.
 *
 * Also the two layout conversions the launchers run first (nh_to_nhwc_kernel in its 32x8
 * blocks, nh_weights_kernel as a grid-stride loop) against host copies, bit for bit.
 * Checks, against a direct convolution in double, with inputs on the bf16
 * grid (so the conversions are exact): forward (with and without bias), data
 * gradient (stride 1 with padding and dilation; 1x1 stride 2), weight
 * gradient (one pass +=, and split-K partials reduced in order), every tile
 * shape, on geometries that leave partial tiles in M, N and K; then three of
 * ResNet-50's shapes at batch 1 (C up to 2048, K up to 2304) with the tiles and
 * split-K the launchers plan for a 132-SM GPU. Bound per
 * element: (K + 64) * 2^-23 * sum |terms|, as in igemm_emulate.cpp.
 * What it cannot check: the layout conversions (nh_to_nhwc_kernel,
 * nh_weights_kernel: test_cuda_igemm on the GPU), the real hardware's
 * fragment layouts beyond the documented ones, timing.
 */
#include "emu_cuda.h"

#include <algorithm>

#define NH_DYNAMIC_SMEM(name)
alignas(16) static unsigned char nh_smem[200 * 1024];

/* ---- cp.async ---------------------------------------------------------------------------------- */

struct CpCopy {
  void *dst;
  const void *src;
};
static std::vector<CpCopy> g_open[NT];
static std::vector<std::vector<CpCopy>> g_groups[NT];
static bool g_early; /* copies land when issued */

static void cp_land(const CpCopy &c) {
  if (c.src)
    memcpy(c.dst, c.src, 16);
  else
    memset(c.dst, 0, 16);
}
static void nh_cp_async16(void *dst, const void *src) {
  EMU_ASSERT((uintptr_t)dst % 16 == 0, "cp.async destination %p is not 16-byte aligned", dst);
  EMU_ASSERT((uintptr_t)src % 16 == 0, "cp.async source %p is not 16-byte aligned", src);
  EMU_ASSERT((unsigned char *)dst >= nh_smem &&
                 (unsigned char *)dst + 16 <= nh_smem + sizeof nh_smem,
             "cp.async destination %p is not in shared memory", dst);
  const CpCopy c = {dst, src};
  if (g_early)
    cp_land(c);
  else
    g_open[g_cur].push_back(c);
}
static void nh_cp_commit() {
  g_groups[g_cur].push_back(g_open[g_cur]);
  g_open[g_cur].clear();
}
template <int N> static void nh_cp_wait() {
  auto &q = g_groups[g_cur];
  while (q.size() > (size_t)N) {
    for (const CpCopy &c : q.front()) cp_land(c);
    q.erase(q.begin());
  }
}

/* ---- warp collectives -------------------------------------------------------------------------- */

struct Deposit {
  const void *addr;
  unsigned a[4], b[2];
  float c[4];
};
static Deposit g_dep[2][NT];      /* by call parity: a lane may deposit call i+1 while another
                                     still takes the result of call i */
static unsigned g_res_u[2][NT][4];
static float g_res_f[2][NT][4];
static unsigned g_calls[NT];

static uint16_t lo16(unsigned v) { return (uint16_t)(v & 0xffffu); }
static uint16_t hi16(unsigned v) { return (uint16_t)(v >> 16); }
static float bf(uint16_t bits) { return to_float(__nv_bfloat16{bits}); }

/* ldmatrix .x4: lane l gets, from matrix j (rows given by lanes 8j..8j+7), the
 * elements (l/4, 2(l%4)), (l/4, 2(l%4)+1); .trans: (2(l%4), l/4), (2(l%4)+1, l/4). */
static void ldmatrix(unsigned r[4], const void *p, bool trans) {
  const int t = g_cur, lane = t % 32, w0 = t - lane, par = g_calls[t]++ & 1;
  EMU_ASSERT((uintptr_t)p % 16 == 0, "ldmatrix row address %p is not 16-byte aligned", p);
  EMU_ASSERT((const unsigned char *)p >= nh_smem &&
                 (const unsigned char *)p + 16 <= nh_smem + sizeof nh_smem,
             "ldmatrix row address %p is not in shared memory", p);
  g_dep[par][t].addr = p;
  if (lane == 31)
    for (int l = 0; l < 32; l++)
      for (int j = 0; j < 4; j++) {
        uint16_t e[2];
        for (int h = 0; h < 2; h++) {
          const int row = trans ? 2 * (l % 4) + h : l / 4, col = trans ? l / 4 : 2 * (l % 4) + h;
          const uint16_t *rp = (const uint16_t *)g_dep[par][w0 + j * 8 + row].addr;
          e[h] = rp[col];
        }
        g_res_u[par][w0 + l][j] = (unsigned)e[0] | (unsigned)e[1] << 16;
      }
  __syncwarp();
  for (int j = 0; j < 4; j++) r[j] = g_res_u[par][t][j];
}
static void nh_ldmatrix_x4(unsigned r[4], const void *p) { ldmatrix(r, p, false); }
static void nh_ldmatrix_x4_trans(unsigned r[4], const void *p) { ldmatrix(r, p, true); }

/* mma m16n8k16 row.col: A(r, k) is in lane (r%8)*4 + (k%8)/2, register (r/8) + 2(k/8),
 * half k%2; B(k, n) in lane n*4 + (k%8)/2, register k/8, half k%2; D(r, n) in lane
 * (r%8)*4 + n/2, element 2(r/8) + n%2. */
static void nh_mma_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
  const int t = g_cur, lane = t % 32, w0 = t - lane, par = g_calls[t]++ & 1;
  Deposit &dp = g_dep[par][t];
  memcpy(dp.a, a, sizeof dp.a);
  memcpy(dp.b, b, sizeof dp.b);
  memcpy(dp.c, d, sizeof dp.c);
  if (lane == 31) {
    auto A = [&](int r, int k) {
      const unsigned v = g_dep[par][w0 + (r % 8) * 4 + (k % 8) / 2].a[r / 8 + 2 * (k / 8)];
      return bf(k % 2 ? hi16(v) : lo16(v));
    };
    auto B = [&](int k, int n) {
      const unsigned v = g_dep[par][w0 + n * 4 + (k % 8) / 2].b[k / 8];
      return bf(k % 2 ? hi16(v) : lo16(v));
    };
    for (int l = 0; l < 32; l++)
      for (int e = 0; e < 4; e++) {
        const int r = l / 4 + (e / 2) * 8, n = 2 * (l % 4) + e % 2;
        float s = g_dep[par][w0 + l].c[e];
        for (int k = 0; k < 16; k++) s += A(r, k) * B(k, n);
        g_res_f[par][w0 + l][e] = s;
      }
  }
  __syncwarp();
  for (int e = 0; e < 4; e++) d[e] = g_res_f[par][t][e];
}

static void nh_store_bf16x2(__nv_bfloat16 *p, float a, float b) {
  EMU_ASSERT((uintptr_t)p % 4 == 0, "bf16x2 store at %p is not 4-byte aligned", (void *)p);
  p[0] = __float2bfloat16_rn(a);
  p[1] = __float2bfloat16_rn(b);
}

#define MOKA_GRID_LOOP(i, n)                                                        \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);   \
       i += (size_t)blockDim.x * gridDim.x)
#define MOKA_NHWC_EMULATE 1
#define NH_ARCH_OK 1
#include "../../kernels/conv_nhwc.cu"

template <int BM, int BN, class Op>
static void launch_emu(const Op &op, int M, int N, int K, int kchunk, int splits) {
  static_assert(NhTile<BM, BN, Op>::SMEM_BYTES <= (int)sizeof nh_smem, "emulated shared memory");
  const unsigned gx = (M + BM - 1) / BM, gy = (N + BN - 1) / BN;
  for (unsigned z = 0; z < (unsigned)splits; z++)
    for (unsigned y = 0; y < gy; y++)
      for (unsigned x = 0; x < gx; x++) {
        blockIdx = dim3{x, y, z};
        memset(nh_smem, 0xff, sizeof nh_smem); /* NaN patterns: a stage read unfilled shows */
        for (int t = 0; t < NT; t++) g_calls[t] = 0, g_open[t].clear(), g_groups[t].clear();
        run_block([&] { nh_gemm_kernel<BM, BN, Op>(op, M, N, K, kchunk); });
        for (int t = 0; t < NT; t++) {
          size_t left = g_open[t].size();
          for (auto &gr : g_groups[t]) left += gr.size();
          EMU_ASSERT(left == 0, "thread %d ends with %zu cp.async copies in flight", t, left);
        }
      }
}

template <class Op>
static void launch_tile(int bm, int bn, const Op &op, int M, int N, int K, int kchunk,
                        int splits) {
  if (bm == 128 && bn == 128) launch_emu<128, 128>(op, M, N, K, kchunk, splits);
  else if (bm == 128) launch_emu<128, 64>(op, M, N, K, kchunk, splits);
  else if (bn == 128) launch_emu<64, 128>(op, M, N, K, kchunk, splits);
  else launch_emu<64, 64>(op, M, N, K, kchunk, splits);
}

/* ---- the checks ------------------------------------------------------------------------------ */

static int g_passed, g_failed;

struct Geo {
  int num, C, H, W, OC, KH, KW, PH, PW, SH, SW, DH, DW;
};

static unsigned long long g_lcg = 4242;
static float rnd_grid() { return emu_rnd_grid(&g_lcg); }

static std::vector<__nv_bfloat16> to_bf16(const std::vector<float> &v) {
  std::vector<__nv_bfloat16> o(v.size());
  for (size_t i = 0; i < v.size(); i++) o[i] = __float2bfloat16_rn(v[i]);
  return o;
}

/* (num, C, HW) -> (num, HW, C), as nh_to_nhwc_kernel */
static std::vector<__nv_bfloat16> nhwc(const std::vector<float> &x, int num, int C, int HW) {
  std::vector<float> o(x.size());
  for (int n = 0; n < num; n++)
    for (int c = 0; c < C; c++)
      for (int p = 0; p < HW; p++)
        o[((size_t)n * HW + p) * C + c] = x[((size_t)n * C + c) * HW + p];
  return to_bf16(o);
}

/* (OC, C, T) -> (OC, T, C) or, for the data gradient, (C, T, OC), as nh_weights_kernel */
static std::vector<__nv_bfloat16> weights(const std::vector<float> &w, int OC, int C, int T,
                                          bool dgrad) {
  std::vector<float> o(w.size());
  for (int oc = 0; oc < OC; oc++)
    for (int c = 0; c < C; c++)
      for (int t = 0; t < T; t++)
        o[dgrad ? ((size_t)c * T + t) * OC + oc : ((size_t)oc * T + t) * C + c] =
            w[((size_t)oc * C + c) * T + t];
  return to_bf16(o);
}

/* (num, HW, C) bf16 -> (num, C, HW) fp32 */
static std::vector<float> from_nhwc(const std::vector<__nv_bfloat16> &h, int num, int C, int HW) {
  std::vector<float> o(h.size());
  for (int n = 0; n < num; n++)
    for (int c = 0; c < C; c++)
      for (int p = 0; p < HW; p++) o[((size_t)n * C + c) * HW + p] = to_float(h[((size_t)n * HW + p) * C + c]);
  return o;
}

/* An output rounded to bf16: the fp32 bound plus half a bf16 ulp (2^-8 relative, safely). */
static bool close_bf16(const char *what, const std::vector<float> &got,
                       const std::vector<double> &ref, const std::vector<double> &S, long long K) {
  std::vector<double> S2(S.size());
  for (size_t i = 0; i < S.size(); i++)
    S2[i] = S[i] + ldexp(1.0, -8) * fabs(ref[i]) / ((double)(K + 64) * ldexp(1.0, -23));
  return emu_close_all(what, got, ref, S2, K);
}

/* One geometry, one tile shape (the forward / data-gradient tile; the weight
 * gradient's is bm x bn too, with `split` choosing split-K planned for a
 * 4-SM GPU or one pass); bm = 0: each direction's tile and split as the
 * launchers plan them for a 132-SM GPU (an H100 / H200). */
static bool run(const Geo &c, int bm, int bn, bool split, bool with_bias, bool bf16_out) {
  const bool planned = bm == 0;
  const int SMS = 132;
  const EmuConv e = emu_conv(c.num, c.C, c.H, c.W, c.OC, 1, c.KH, c.KW, c.PH, c.PW, c.SH, c.SW,
                             c.DH, c.DW, with_bias, &g_lcg);
  const int OH = e.OH, OW = e.OW;
  const IgemmGeom g = igemm_geom(c.num, c.C, c.H, c.W, c.OC, 1, OH, OW, c.KH, c.KW, c.PH, c.PW,
                                 c.SH, c.SW, c.DH, c.DW);
  const size_t nx = e.x.size(), ny = e.dy.size(), nw = e.w.size();
  const std::vector<float> &x = e.x, &w = e.w, &dy = e.dy, &bias = e.bias, &dw0 = e.dw0;
  const std::vector<double> &y = e.y, &sy = e.sy, &dx = e.dx, &sdx = e.sdx, &dwr = e.dw,
                            &sdw = e.sdw;
  const auto xh = nhwc(x, c.num, c.C, g.HW), dyh = nhwc(dy, c.num, c.OC, g.OHW);
  const auto wf = weights(w, c.OC, c.C, g.KHW, false), wd = weights(w, c.OC, c.C, g.KHW, true);
  const int P = c.num * g.OHW, Q = c.num * g.HW;
  char what[200];
  bool ok = true;
  if (planned) nh_pick_tile(P, c.OC, SMS, &bm, &bn);
  {
    std::vector<float> gy(ny, NAN);
    NhFwd op = {g, xh.data(), wf.data(), with_bias ? bias.data() : nullptr, gy.data(), nullptr};
    launch_tile(bm, bn, op, P, c.OC, g.KHW * c.C, g.KHW * c.C, 1);
    snprintf(what, sizeof what, "forward%s, tile %dx%d", with_bias ? " + bias" : "", bm, bn);
    ok &= emu_close_all(what, gy, y, sy, g.KHW * c.C + 1);
    if (bf16_out) { /* the same into a bf16 NHWC output */
      std::vector<__nv_bfloat16> gyh(ny);
      NhFwd oh = {g, xh.data(), wf.data(), with_bias ? bias.data() : nullptr, nullptr, gyh.data()};
      launch_tile(bm, bn, oh, P, c.OC, g.KHW * c.C, g.KHW * c.C, 1);
      snprintf(what, sizeof what, "forward%s into bf16 NHWC, tile %dx%d",
               with_bias ? " + bias" : "", bm, bn);
      ok &= close_bf16(what, from_nhwc(gyh, c.num, c.OC, g.OHW), y, sy, g.KHW * c.C + 1);
    }
  }
  if (planned) nh_pick_tile(c.SH == 1 && c.SW == 1 ? Q : P, c.C, SMS, &bm, &bn);
  if (c.SH == 1 && c.SW == 1) {
    std::vector<float> gdx(nx, NAN);
    NhDgrad op = {{g, dyh.data(), wd.data(), gdx.data(), nullptr}};
    launch_tile(bm, bn, op, Q, c.C, g.KHW * c.OC, g.KHW * c.OC, 1);
    snprintf(what, sizeof what, "data gradient, tile %dx%d", bm, bn);
    ok &= emu_close_all(what, gdx, dx, sdx, g.KHW * c.OC);
    if (bf16_out) {
      std::vector<__nv_bfloat16> gdxh(nx);
      NhDgrad oh = {{g, dyh.data(), wd.data(), nullptr, gdxh.data()}};
      launch_tile(bm, bn, oh, Q, c.C, g.KHW * c.OC, g.KHW * c.OC, 1);
      snprintf(what, sizeof what, "data gradient into bf16 NHWC, tile %dx%d", bm, bn);
      ok &= close_bf16(what, from_nhwc(gdxh, c.num, c.C, g.HW), dx, sdx, g.KHW * c.OC);
    }
  } else if (c.KH == 1 && c.KW == 1 && c.PH == 0 && c.PW == 0) {
    std::vector<float> gdx(nx, 0.0f); /* the launcher clears dx */
    NhDgrad1x1 op = {{g, dyh.data(), wd.data(), gdx.data(), nullptr}};
    launch_tile(bm, bn, op, P, c.C, c.OC, c.OC, 1);
    snprintf(what, sizeof what, "data gradient 1x1/%dx%d, tile %dx%d", c.SH, c.SW, bm, bn);
    ok &= emu_close_all(what, gdx, dx, sdx, c.OC);
    if (bf16_out) {
      std::vector<__nv_bfloat16> gdxh(nx, __nv_bfloat16{0}); /* cleared by the launcher */
      NhDgrad1x1 oh = {{g, dyh.data(), wd.data(), nullptr, gdxh.data()}};
      launch_tile(bm, bn, oh, P, c.C, c.OC, c.OC, 1);
      snprintf(what, sizeof what, "data gradient 1x1/%dx%d into bf16 NHWC, tile %dx%d", c.SH,
               c.SW, bm, bn);
      ok &= close_bf16(what, from_nhwc(gdxh, c.num, c.C, g.HW), dx, sdx, c.OC);
    }
  }
  {
    const int M = c.OC, N = g.KHW * c.C, K = P;
    int splits = 1, kchunk = K;
    if (planned)
      nh_plan_wgrad(M, N, K, SMS, &bm, &bn, &splits, &kchunk);
    else if (split)
      igemm_plan_split(M, N, K, 1, bm, bn, NH_BK, 4, &splits, &kchunk);
    std::vector<float> part(splits > 1 ? (size_t)splits * nw : 0, NAN), gdw(dw0);
    NhWgrad op = {g, dyh.data(), xh.data(), gdw.data(), splits > 1 ? part.data() : nullptr};
    launch_tile(bm, bn, op, M, N, K, kchunk, splits);
    if (splits > 1)
      for (size_t i = 0; i < nw; i++) { /* moka_cuda_split_reduce */
        float s = part[i];
        for (int p = 1; p < splits; p++) s += part[(size_t)p * nw + i];
        gdw[i] += s;
      }
    snprintf(what, sizeof what, "weight gradient, tile %dx%d, %d split(s)", bm, bn, splits);
    ok &= emu_close_all(what, gdw, dwr, sdw, K + splits + 1);
    if (split && splits < 2 && K >= 16 * NH_BK) fprintf(stderr, "  note: %s planned no split for K %d\n", what, K);
  }
  return ok;
}

/* The layout conversions the launchers run before the GEMMs (nh_to_nhwc_kernel in 32x8
 * blocks over a (HW/32, C/32, num) grid; nh_weights_kernel as a grid-stride loop over
 * 3 blocks) against this file's host copies (nhwc, weights): bit for bit. */
static bool conversions(int num, int C, int HW, int OC, int T) {
  std::vector<float> x((size_t)num * C * HW), w((size_t)OC * C * T);
  for (auto &v : x) v = rnd_grid() * 3.1f;
  for (auto &v : w) v = rnd_grid() * 0.7f;
  std::vector<__nv_bfloat16> got(x.size(), __nv_bfloat16{0xffff});
  blockDim = dim3{32, 8, 1};
  for (unsigned z = 0; z < (unsigned)num; z++)
    for (unsigned yb = 0; yb < (unsigned)(C + 31) / 32; yb++)
      for (unsigned xb = 0; xb < (unsigned)(HW + 31) / 32; xb++) {
        blockIdx = dim3{xb, yb, z};
        run_block([&] { nh_to_nhwc_kernel(x.data(), C, HW, got.data()); });
      }
  blockDim = dim3{256, 1, 1};
  const auto want = nhwc(x, num, C, HW);
  bool ok = !memcmp(got.data(), want.data(), want.size() * sizeof want[0]);
  EMU_ASSERT(ok, "nh_to_nhwc_kernel: (%d, %d, %d) differs from the host copy", num, C, HW);
  for (int dgrad = 0; dgrad < 2; dgrad++) {
    std::vector<__nv_bfloat16> gw(w.size(), __nv_bfloat16{0xffff});
    gridDim = dim3{3, 1, 1};
    for (unsigned b = 0; b < 3; b++) {
      blockIdx = dim3{b, 0, 0};
      run_block([&] { nh_weights_kernel(w.data(), OC, C, T, dgrad != 0, gw.data()); });
    }
    gridDim = dim3{1, 1, 1};
    const auto ww = weights(w, OC, C, T, dgrad != 0);
    const bool same = !memcmp(gw.data(), ww.data(), ww.size() * sizeof ww[0]);
    EMU_ASSERT(same, "nh_weights_kernel (%s): differs from the host copy",
               dgrad ? "data gradient" : "forward");
    ok = ok && same;
  }
  return ok;
}

int main() {
  /* the conversions: partial 32x32 tiles in both axes, several images, taps 1 and 9 */
  {
    const int e0 = g_errors;
    const bool ok = conversions(2, 40, 70, 24, 9) && conversions(3, 8, 7, 16, 1);
    if (ok && g_errors == e0)
      g_passed++;
    else
      g_failed++, fprintf(stderr, "[FAIL] layout conversions\n");
  }
  static const Geo geos[] = {
      /* num C H W OC KH KW PH PW SH SW DH DW */
      {2, 16, 9, 7, 40, 3, 3, 1, 1, 1, 1, 1, 1},  /* 3x3: P 126, K 144 (not a multiple of 32) */
      {2, 24, 15, 15, 40, 1, 1, 0, 0, 2, 2, 1, 1}, /* 1x1/2: the strided data gradient */
      {1, 8, 13, 11, 136, 1, 1, 0, 0, 1, 1, 1, 1}, /* 1x1: N 136 > 128, K 8 */
      {1, 16, 10, 9, 24, 3, 3, 2, 2, 1, 1, 2, 2},  /* dilation 2, pad 2 */
      {2, 32, 12, 10, 16, 3, 3, 1, 1, 2, 2, 1, 1}, /* 3x3/2: data gradient not taken */
      {4, 8, 16, 16, 8, 3, 3, 1, 1, 1, 1, 1, 1},   /* weight gradient K 1024: split-K */
  };
  struct Tile {
    int bm, bn;
  } tiles[] = {{128, 128}, {128, 64}, {64, 128}, {64, 64}};
  int run_no = 0;
  for (int early = 0; early < 2; early++) {
    g_early = early;
    for (const Geo &c : geos)
      for (const Tile &t : tiles) {
        const int e0 = g_errors;
        run_no++;
        const bool split = run_no % 3 != 0, with_bias = run_no % 2 == 0;
        const bool ok = run(c, t.bm, t.bn, split, with_bias, run_no % 4 < 2);
        if (ok && g_errors == e0) {
          g_passed++;
        } else {
          g_failed++;
          fprintf(stderr, "[FAIL] N%d C%d %dx%d OC%d k%dx%d p%dx%d s%dx%d d%dx%d tile %dx%d %s\n",
                  c.num, c.C, c.H, c.W, c.OC, c.KH, c.KW, c.PH, c.PW, c.SH, c.SW, c.DH, c.DW,
                  t.bm, t.bn, early ? "early copies" : "late copies");
        }
      }
  }
  /* ResNet-50's shapes at batch 1 (the 14x14 3x3, a strided 1x1, a 7x7 1x1 with K 2048),
   * each direction with the launchers' own tile and split for 132 SMs; copies landing late */
  static const Geo resnet[] = {
      {1, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1, 1, 1}, /* res4b_branch2b */
      {1, 256, 28, 28, 512, 1, 1, 0, 0, 2, 2, 1, 1}, /* res3a_branch1 */
      {1, 2048, 7, 7, 512, 1, 1, 0, 0, 1, 1, 1, 1},  /* res5b_branch2a */
  };
  g_early = false;
  for (const Geo &c : resnet) {
    const int e0 = g_errors;
    if (run(c, 0, 0, true, true, true) && g_errors == e0) {
      g_passed++;
    } else {
      g_failed++;
      fprintf(stderr, "[FAIL] ResNet-50 shape N%d C%d %dx%d OC%d k%d s%d, planned tiles\n", c.num,
              c.C, c.H, c.W, c.OC, c.KH, c.SH);
    }
  }
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
