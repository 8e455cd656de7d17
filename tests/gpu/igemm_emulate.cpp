/* igemm_emulate.cpp — the implicit-GEMM convolution kernel of
 * kernels/conv_igemm.cu (the same source, compiled with MOKA_IGEMM_EMULATE)
 * run on the CPU, so that its tiling, thread maps, shared-memory staging,
 * boundary checks, epilogue and split-K are tested where there is no GPU
 * (`make test`). Only the hardware is mocked:
 *
 *   - threads: the 256 threads of a CTA are cooperative contexts
 *     (ucontext) on one OS thread; __syncthreads and __syncwarp switch to
 *     the next thread, round robin, so every thread reaches its i-th barrier
 *     before any passes it (the scheduler checks that all threads meet at the
 *     same barrier: a divergent barrier is an error). __shared__ is a static
 *     (one CTA runs at a time).
 *   - WMMA: fragments hold the whole 16x16 (16x8, 8x16) tile; load, MMA and
 *     store act for the warp (lane 0 does the work, the other lanes skip it,
 *     like the collective operations they are). Their documented
 *     preconditions are asserted: 256-bit aligned pointers, ldm a multiple
 *     of 16 bytes. MMA accumulates in fp32, in k order.
 *   - bf16 / tf32 conversions: round to nearest even / nearest-away, the
 *     roundings of __float2bfloat16_rn and cvt.rna.tf32.f32.
 *
 * Checks, for geometries that leave partial tiles in M, N and K, several
 * groups and several K splits, with every tile shape (BM, BN in {64, 128}) and
 * both precisions: forward (with bias), data gradient and weight gradient
 * (single pass +=, and split-K partials reduced in order) against a direct
 * convolution in double. Inputs on the bf16 grid (so both roundings are
 * exact): bound (K + 64) * 2^-23 * sum |terms| per element, as in
 * test_cuda_igemm.c. What it cannot check: the real fragment layouts (hidden
 * behind load/store, which the mock honours), timing, memory coherence.
 * Out-of-bounds reads of the gathers are caught with AddressSanitizer (slow,
 * not in `make test`; ASan warns that it does not fully support swapcontext):
 *   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -Wno-unknown-pragmas \
 *       tests/gpu/igemm_emulate.cpp -o /tmp/igemm_emulate && /tmp/igemm_emulate
 */
#include "emu_cuda.h"

/* ---- mocked WMMA ------------------------------------------------------------------------------ */

namespace wmma {
struct row_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major };
namespace precision {
struct tf32 {};
}
template <class Use, int M, int N, int K, class T, class L = void>
struct fragment {
  float v[256];
};

static bool lane0() { return threadIdx.x % 32 == 0; }
static void check_ptr(const void *p, unsigned ldm, size_t elem) {
  EMU_ASSERT((uintptr_t)p % 32 == 0, "WMMA pointer %p is not 256-bit aligned", p);
  EMU_ASSERT((ldm * elem) % 16 == 0,
             "WMMA ldm %u (element %zu bytes) is not a multiple of 16 bytes", ldm, elem);
}

template <int M, int N, int K, class T, class L, class E>
void load_matrix_sync(fragment<matrix_a, M, N, K, T, L> &f, const E *p, unsigned ldm) {
  check_ptr(p, ldm, sizeof(E));
  if (!lane0()) return;
  for (int r = 0; r < M; r++)
    for (int c = 0; c < K; c++) f.v[r * K + c] = to_float(p[(size_t)r * ldm + c]);
}
template <int M, int N, int K, class T, class L, class E>
void load_matrix_sync(fragment<matrix_b, M, N, K, T, L> &f, const E *p, unsigned ldm) {
  check_ptr(p, ldm, sizeof(E));
  if (!lane0()) return;
  for (int r = 0; r < K; r++)
    for (int c = 0; c < N; c++) f.v[r * N + c] = to_float(p[(size_t)r * ldm + c]);
}
template <int M, int N, int K, class TA, class TB, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float> &d,
              const fragment<matrix_a, M, N, K, TA, LA> &a,
              const fragment<matrix_b, M, N, K, TB, LB> &b,
              const fragment<accumulator, M, N, K, float> &c) {
  if (!lane0()) return;
  float t[256];
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      float s = c.v[i * N + j];
      for (int k = 0; k < K; k++) s += a.v[i * K + k] * b.v[k * N + j];
      t[i * N + j] = s;
    }
  memcpy(d.v, t, sizeof t);
}
template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float> &f, float v) {
  for (int i = 0; i < 256; i++) f.v[i] = v;
}
template <int M, int N, int K>
void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                       layout_t) {
  check_ptr(p, ldm, 4);
  if (!lane0()) return;
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) p[(size_t)r * ldm + c] = f.v[r * N + c];
}
static float __float_to_tf32(float f) { /* cvt.rna.tf32.f32: nearest, ties away from zero */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;
  u += 0x1000u;
  u &= 0xffffe000u;
  memcpy(&f, &u, 4);
  return f;
}
} // namespace wmma

#define MOKA_IGEMM_EMULATE 1
#include "../../kernels/conv_igemm.cu"

template <int BM, int BN, class PR, class Op>
static void launch_emu(const Op &op, int M, int N, int K, int kchunk, int splits, int G) {
  const unsigned gx = (N + BN - 1) / BN, gy = (M + BM - 1) / BM, gz = G * splits;
  for (unsigned z = 0; z < gz; z++)
    for (unsigned y = 0; y < gy; y++)
      for (unsigned x = 0; x < gx; x++) {
        blockIdx = dim3{x, y, z};
        run_block([&] { igemm_kernel<BM, BN, PR, Op>(op, M, N, K, kchunk, splits); });
      }
}

template <class PR, class Op>
static void launch_tile(int bm, int bn, const Op &op, int M, int N, int K, int kchunk, int splits,
                        int G) {
  if (bm == 128 && bn == 128) launch_emu<128, 128, PR>(op, M, N, K, kchunk, splits, G);
  else if (bm == 128) launch_emu<128, 64, PR>(op, M, N, K, kchunk, splits, G);
  else if (bn == 128) launch_emu<64, 128, PR>(op, M, N, K, kchunk, splits, G);
  else launch_emu<64, 64, PR>(op, M, N, K, kchunk, splits, G);
}

/* ---- the checks ------------------------------------------------------------------------------ */

static int g_passed, g_failed;

struct Geo {
  int num, C, H, W, OC, G, KH, KW, PH, PW, SH, SW, DH, DW;
};

static unsigned long long g_lcg = 777;

/* One geometry, one tile shape, one precision: the three GEMMs. */
template <class PR>
static bool run(const Geo &c, int bm, int bn, bool split, const char *pname) {
  const EmuConv e = emu_conv(c.num, c.C, c.H, c.W, c.OC, c.G, c.KH, c.KW, c.PH, c.PW, c.SH,
                             c.SW, c.DH, c.DW, true, &g_lcg);
  const int OH = e.OH, OW = e.OW;
  const IgemmGeom g = igemm_geom(c.num, c.C, c.H, c.W, c.OC, c.G, OH, OW, c.KH, c.KW, c.PH, c.PW,
                                 c.SH, c.SW, c.DH, c.DW);
  const size_t nx = e.x.size(), ny = e.dy.size(), nw = e.w.size();
  const std::vector<float> &x = e.x, &w = e.w, &dy = e.dy, &bias = e.bias, &dw0 = e.dw0;
  const std::vector<double> &y = e.y, &sy = e.sy, &dx = e.dx, &sdx = e.sdx, &dwr = e.dw,
                            &sdw = e.sdw;
  std::vector<IgemmTap> tab(g.Cg * g.KHW), dtab(g.OCg * g.KHW);
  for (int k = 0; k < (int)tab.size(); k++) tab[k] = igemm_fwd_tap(&g, k);
  for (int k = 0; k < (int)dtab.size(); k++) dtab[k] = igemm_dgrad_tap(&g, k);
  std::vector<float> gy(ny, NAN), gdx(nx, NAN), gdw(dw0);
  char what[200];
  bool ok = true;
  /* forward */
  {
    FwdOp op = {g, x.data(), w.data(), bias.data(), gy.data(), tab.data()};
    const int M = g.OCg, N = c.num * g.OHW, K = g.Cg * g.KHW;
    launch_tile<PR>(bm, bn, op, M, N, K, K, 1, c.G);
    snprintf(what, sizeof what, "%s forward, tile %dx%d", pname, bm, bn);
    ok &= emu_close_all(what, gy, y, sy, K + 1);
  }
  /* data gradient */
  {
    DgradOp op = {g, w.data(), dy.data(), gdx.data(), dtab.data()};
    const int M = g.Cg, N = c.num * g.HW, K = g.OCg * g.KHW;
    launch_tile<PR>(bm, bn, op, M, N, K, K, 1, c.G);
    snprintf(what, sizeof what, "%s data gradient, tile %dx%d", pname, bm, bn);
    ok &= emu_close_all(what, gdx, dx, sdx, K);
  }
  /* weight gradient: one pass (+=), or split-K as the launcher plans it for a 4-SM GPU */
  {
    const int M = g.OCg, N = g.Cg * g.KHW, K = c.num * g.OHW;
    int splits = 1, kchunk = K;
    if (split) igemm_plan_split(M, N, K, c.G, bm, bn, IG_BK, 4, &splits, &kchunk);
    std::vector<float> part(splits > 1 ? (size_t)splits * nw : 0, NAN);
    WgradOp op = {g, x.data(), dy.data(), gdw.data(), splits > 1 ? part.data() : nullptr,
                  tab.data()};
    launch_tile<PR>(bm, bn, op, M, N, K, kchunk, splits, c.G);
    if (splits > 1)
      for (size_t i = 0; i < nw; i++) { /* igemm_split_reduce_kernel */
        float s = part[i];
        for (int p = 1; p < splits; p++) s += part[(size_t)p * nw + i];
        gdw[i] += s;
      }
    snprintf(what, sizeof what, "%s weight gradient, tile %dx%d, %d split(s)", pname, bm, bn,
             splits);
    ok &= emu_close_all(what, gdw, dwr, sdw, K + splits + 1);
    if (split && splits < 2 && K >= 16 * IG_BK)
      fprintf(stderr, "  note: %s planned no split for K %d\n", what, K);
  }
  return ok;
}

int main() {
  static const Geo geos[] = {
      /* num C H W OC G KH KW PH PW SH SW DH DW */
      {2, 3, 19, 17, 70, 1, 7, 7, 3, 3, 2, 2, 1, 1},     /* stem-like: K 147, M 70 > 64 */
      {1, 20, 13, 11, 36, 1, 3, 3, 1, 1, 1, 1, 1, 1},    /* odd: N 143, K 180 */
      {2, 40, 9, 7, 130, 1, 1, 1, 0, 0, 1, 1, 1, 1},     /* 1x1: M 130 (> 128), N 126 */
      {2, 24, 15, 15, 40, 1, 1, 1, 0, 0, 2, 2, 1, 1},    /* 1x1/2: dgrad skips 3 of 4 pixels */
      {1, 18, 10, 10, 22, 2, 3, 3, 1, 1, 1, 1, 1, 1},    /* groups 2 */
      {1, 12, 14, 13, 21, 3, 3, 3, 2, 2, 2, 1, 2, 2},    /* groups 3, dilation 2, stride 2x1 */
      {4, 8, 16, 16, 16, 1, 3, 3, 1, 1, 1, 1, 1, 1},     /* wgrad K 1024: split-K */
  };
  struct Tile {
    int bm, bn;
  } tiles[] = {{128, 128}, {128, 64}, {64, 128}, {64, 64}};
  for (const Geo &c : geos)
    for (const Tile &t : tiles)
      for (int prec = 0; prec < 2; prec++) {
        const int e0 = g_errors;
        const bool split = (t.bm + t.bn + prec) % 3 != 0; /* both paths across the runs */
        const bool ok = prec == 0 ? run<PrecBf16>(c, t.bm, t.bn, split, "bf16")
                                  : run<PrecTf32>(c, t.bm, t.bn, split, "tf32");
        if (ok && g_errors == e0) {
          g_passed++;
        } else {
          g_failed++;
          fprintf(stderr,
                  "[FAIL] N%d C%d %dx%d OC%d G%d k%dx%d p%dx%d s%dx%d d%dx%d tile %dx%d %s\n",
                  c.num, c.C, c.H, c.W, c.OC, c.G, c.KH, c.KW, c.PH, c.PW, c.SH, c.SW, c.DH, c.DW,
                  t.bm, t.bn, prec == 0 ? "bf16" : "tf32");
        }
      }
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
