/* conv_igemm.cu — moka's implicit-GEMM convolution on tensor cores (bf16 or
 * TF32 inputs, fp32 accumulation; sm_80 and later): forward, data gradient
 * and weight gradient of a grouped / strided / padded / dilated 2-D
 * convolution on NCHW fp32 blobs, with no column buffer in global memory.
 * The precision modes --precision=bf16 / tf32 on CUDA run here; fp32 stays on
 * conv_gemm.cu (im2col + cuBLAS SGEMM, Caffe-exact).
 *
 * The three GEMMs (per group g, blockIdx.z; index math in
 * conv_igemm_index.h, tested on the host by tests/gpu/test_igemm_index.c):
 *   forward          M = OC/G, N = batch*OH*OW, K = C/G*KH*KW
 *                    A = W (row m, col k), B = im2col(x) gathered on the fly
 *   data gradient    M = C/G,  N = batch*H*W,   K = OC/G*KH*KW
 *                    A = W seen as (c, (oc,kh,kw)), B = dy gathered per input
 *                    pixel: the tap (oc,kh,kw) of pixel (h,w) reads dy at
 *                    oh = (h+pad-kh*dil)/stride when that is exact and in
 *                    range, else contributes 0 (a gather: no atomics)
 *   weight gradient  M = OC/G, N = C/G*KH*KW,   K = batch*OH*OW
 *                    A = dy, B = im2col(x)^T; DETERMINISTIC split-K: split s
 *                    of S writes its partial dW to a workspace (S, OC, C/G*KH*KW),
 *                    then one kernel adds dw += p_0 + p_1 + ... + p_{S-1} in
 *                    that order (no float atomics: the same inputs give the
 *                    same bits on every run on a given GPU; S depends only on
 *                    the geometry and the GPU's SM count). S = 1 adds in place.
 *
 * Tiling (one CTA of 256 threads = 8 warps computes a BM x BN tile of C,
 * BM, BN in {64, 128}; the warps are 2 (M) x 4 (N), each BM/2 x BN/4, i.e.
 * (BM/32) x (BN/64) WMMA 16x16 accumulators in fp32):
 *   for each 32-deep slice of K:
 *     every thread gathers BM*32/256 values of A and BN*32/256 of B as fp32
 *     from global memory into registers (the next slice's loads are issued
 *     before the current slice's MMAs: register double buffering, one
 *     shared-memory buffer, two __syncthreads per slice);
 *     converts them to bf16 (round to nearest even) or TF32 (cvt.rna) and
 *     stores them in shared memory: As (BM, 32+8) row-major, Bs (32, BN+8)
 *     row-major (the +8 padding keeps WMMA pointers 32-byte aligned and
 *     spreads banks);
 *     each warp runs bf16 m16n16k16 (2 steps) or tf32 m16n16k8 (4 steps) MMAs.
 *   Epilogue: each warp stores one accumulator at a time into a 16x16 fp32
 *   scratch in shared memory and writes its in-range elements to the output
 *   (forward: + bias; data gradient: overwrite; weight gradient: += or the
 *   split's partial).
 * Which coordinate a thread keeps fixed while gathering is chosen per
 * operand for coalescing: along k when the operand is contiguous in k (W in
 * forward, dy and x in the weight gradient: adjacent threads read adjacent
 * k), along m/n otherwise (x, dy gathered per pixel: adjacent threads read
 * adjacent pixels; the pixel's decomposition is then computed once per CTA).
 * The (c,kh,kw) / (oc,kh,kw) decomposition of the other coordinate comes from
 * a small table (IgemmTap, one per k) built per call in the workspace: no
 * integer division in the inner loops. Every load and store is bounds-checked.
 *
 * Tests: tests/gpu/test_igemm_index.c (the index math vs naive im2col/col2im,
 * host), tests/gpu/igemm_emulate.cpp (this kernel compiled for the CPU with
 * mocked WMMA and cooperative threads: tiling, staging, epilogue, split-K;
 * both in `make test`), tests/gpu/test_cuda_igemm.c (on the GPU, against a
 * direct convolution; `test_cuda_igemm bench` times it against cuDNN).
 * Not yet measured on a GPU: pick_tile's choice is a guess (the benchmark
 * times all four tile shapes per ResNet-50 layer to tune it).
 */
#ifndef MOKA_IGEMM_EMULATE
#include <climits>
#include <cuda_bf16.h>
#include <mma.h>

#include "cuda_internal.h"

using namespace nvcuda;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define IGEMM_ARCH_OK 1
#else
#define IGEMM_ARCH_OK 0
#endif
#else
/* tests/gpu/igemm_emulate.cpp compiles the kernel below on the host with
 * mock WMMA fragments and cooperative "threads" (see there). */
#define IGEMM_ARCH_OK 1
#endif
#include "conv_igemm_index.h"

#define IG_THREADS 256
#define IG_BK 32

/* ---- precision traits ------------------------------------------------------------------ */

struct PrecBf16 {
  typedef __nv_bfloat16 T;
  static constexpr int KSTEP = 16;
  typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragA;
  typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragB;
  typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;
  __device__ static T cvt(float v) { return __float2bfloat16_rn(v); }
};

struct PrecTf32 {
  typedef float T;
  static constexpr int KSTEP = 8;
  typedef wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>
      FragA;
  typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>
      FragB;
  typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> FragC;
  __device__ static T cvt(float v) {
#if IGEMM_ARCH_OK
    return wmma::__float_to_tf32(v);
#else
    return v;
#endif
  }
};

/* ---- the three operations (what A, B and the output are) ------------------------------- */
/* Each gives, for the operand whose fixed coordinate is F and varying one V,
 * a_fix(grp, F) -> state, a_at(grp, state, V) -> value (likewise b_), and
 * store(grp, split, m, n, v). All coordinates are in range when called. */

struct FwdOp {
  IgemmGeom g;
  const float *x, *w, *bias;
  float *y;
  const IgemmTap *tab; /* (Cg*KHW) */
  static constexpr bool A_KFAST = true, B_KFAST = false;
  typedef long long AS; /* offset of W (grp*OCg, k); row m is m*Cg*KHW further (< 2^31) */
  typedef IgemmPix BS;  /* the output pixel n */
  __device__ AS a_fix(int grp, int k) const { return igemm_fwd_w(&g, grp, 0, k); }
  __device__ float a_at(int, AS off, int m) const { return __ldg(w + off + m * (g.Cg * g.KHW)); }
  __device__ BS b_fix(int grp, int n) const { return igemm_out_pix(&g, grp, n); }
  __device__ float b_at(int, const BS &p, int k) const {
    const long long i = igemm_fwd_src(&g, p, tab[k]);
    return i < 0 ? 0.0f : __ldg(x + i);
  }
  __device__ void store(int grp, int, int m, int n, float v) const {
    y[igemm_fwd_dst(&g, grp, m, n)] = bias ? v + __ldg(bias + grp * g.OCg + m) : v;
  }
};

struct DgradOp {
  IgemmGeom g;
  const float *w, *dy;
  float *dx;
  const IgemmTap *tab; /* (OCg*KHW) */
  static constexpr bool A_KFAST = false, B_KFAST = false;
  typedef int AS;      /* m = input channel within the group */
  typedef IgemmPix BS; /* the input pixel n */
  __device__ AS a_fix(int, int m) const { return m; }
  __device__ float a_at(int grp, AS m, int k) const {
    return __ldg(w + igemm_dgrad_w(&g, grp, m, tab[k]));
  }
  __device__ BS b_fix(int grp, int n) const { return igemm_in_pix(&g, grp, n); }
  __device__ float b_at(int, const BS &p, int k) const {
    const long long i = igemm_dgrad_src(&g, p, tab[k]);
    return i < 0 ? 0.0f : __ldg(dy + i);
  }
  __device__ void store(int grp, int, int m, int n, float v) const {
    dx[igemm_dgrad_dst(&g, grp, m, n)] = v;
  }
};

struct WgradOp {
  IgemmGeom g;
  const float *x, *dy;
  float *dw;           /* (OC, Cg*KHW): += when partial == NULL */
  float *partial;      /* (S, OC, Cg*KHW) or NULL */
  const IgemmTap *tab; /* (Cg*KHW) */
  static constexpr bool A_KFAST = true, B_KFAST = true;
  typedef long long AS; /* dy offset of (img, grp*OCg, oh, ow) */
  typedef IgemmPix BS;  /* the output pixel k */
  __device__ AS a_fix(int grp, int k) const { return igemm_wgrad_dy(&g, grp, 0, k); }
  __device__ float a_at(int, AS off, int m) const { return __ldg(dy + off + m * g.OHW); }
  __device__ BS b_fix(int grp, int k) const { return igemm_out_pix(&g, grp, k); }
  __device__ float b_at(int, const BS &p, int n) const {
    const long long i = igemm_fwd_src(&g, p, tab[n]);
    return i < 0 ? 0.0f : __ldg(x + i);
  }
  __device__ void store(int grp, int split, int m, int n, float v) const {
    const long long i = igemm_fwd_w(&g, grp, m, n);
    if (partial)
      partial[(long long)split * g.OC * g.Cg * g.KHW + i] = v;
    else
      dw[i] += v;
  }
};

/* ---- the kernel -------------------------------------------------------------------------- */

template <int BM, int BN, class PR, class Op>
__global__ void __launch_bounds__(IG_THREADS)
    igemm_kernel(Op op, int M, int N, int K, int kchunk, int splits) {
#if IGEMM_ARCH_OK
  typedef typename PR::T T;
  constexpr int A_LD = IG_BK + 8, B_LD = BN + 8;
  constexpr int A_PER = BM * IG_BK / IG_THREADS, B_PER = BN * IG_BK / IG_THREADS;
  constexpr int WM = BM / 2, WN = BN / 4, FM = WM / 16, FN = WN / 16;
  constexpr int SMEM_AB = (BM * A_LD + IG_BK * B_LD) * (int)sizeof(T);
  constexpr int SMEM_EPI = (IG_THREADS / 32) * 256 * (int)sizeof(float);
  __shared__ __align__(128) unsigned char smem[SMEM_AB > SMEM_EPI ? SMEM_AB : SMEM_EPI];
  T *As = reinterpret_cast<T *>(smem);  /* (BM, A_LD): element (m, k) */
  T *Bs = As + BM * A_LD;               /* (IG_BK, B_LD): element (k, n) */

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;
  const int grp = blockIdx.z / splits, split = blockIdx.z - grp * splits;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int kbeg = split * kchunk;
  const int kend = K - kbeg < kchunk ? K : kbeg + kchunk;

  /* Thread -> element maps. k-fast: fixed k = tid % 32, rows tid/32 + 8i;
   * mn-fast: fixed row tid % BM (BN), k = tid/BM + (256/BM) i. */
  constexpr int A_VSTEP = Op::A_KFAST ? IG_THREADS / IG_BK : IG_THREADS / BM;
  constexpr int B_VSTEP = Op::B_KFAST ? IG_THREADS / IG_BK : IG_THREADS / BN;
  const int a_fixed = Op::A_KFAST ? tid % IG_BK : tid % BM;
  const int a_var0 = Op::A_KFAST ? tid / IG_BK : tid / BM;
  const int b_fixed = Op::B_KFAST ? tid % IG_BK : tid % BN;
  const int b_var0 = Op::B_KFAST ? tid / IG_BK : tid / BN;

  /* mn-fast operands: the state of the fixed row/column, once per CTA */
  typename Op::AS a_st{};
  typename Op::BS b_st{};
  bool a_ok = false, b_ok = false;
  if constexpr (!Op::A_KFAST) {
    a_ok = m0 + a_fixed < M;
    if (a_ok) a_st = op.a_fix(grp, m0 + a_fixed);
  }
  if constexpr (!Op::B_KFAST) {
    b_ok = n0 + b_fixed < N;
    if (b_ok) b_st = op.b_fix(grp, n0 + b_fixed);
  }

  float ra[A_PER], rb[B_PER]; /* the slice being fetched, fp32 */
  auto fetch = [&](int k0) {
    if constexpr (Op::A_KFAST) {
      const int k = k0 + a_fixed;
      const bool kok = k < kend;
      typename Op::AS s{};
      if (kok) s = op.a_fix(grp, k);
#pragma unroll
      for (int i = 0; i < A_PER; i++) {
        const int m = m0 + a_var0 + i * A_VSTEP;
        ra[i] = kok && m < M ? op.a_at(grp, s, m) : 0.0f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < A_PER; i++) {
        const int k = k0 + a_var0 + i * A_VSTEP;
        ra[i] = a_ok && k < kend ? op.a_at(grp, a_st, k) : 0.0f;
      }
    }
    if constexpr (Op::B_KFAST) {
      const int k = k0 + b_fixed;
      const bool kok = k < kend;
      typename Op::BS s{};
      if (kok) s = op.b_fix(grp, k);
#pragma unroll
      for (int i = 0; i < B_PER; i++) {
        const int n = n0 + b_var0 + i * B_VSTEP;
        rb[i] = kok && n < N ? op.b_at(grp, s, n) : 0.0f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < B_PER; i++) {
        const int k = k0 + b_var0 + i * B_VSTEP;
        rb[i] = b_ok && k < kend ? op.b_at(grp, b_st, k) : 0.0f;
      }
    }
  };
  auto stage = [&]() {
#pragma unroll
    for (int i = 0; i < A_PER; i++) {
      const int v = a_var0 + i * A_VSTEP;
      const int mm = Op::A_KFAST ? v : a_fixed, kk = Op::A_KFAST ? a_fixed : v;
      As[mm * A_LD + kk] = PR::cvt(ra[i]);
    }
#pragma unroll
    for (int i = 0; i < B_PER; i++) {
      const int v = b_var0 + i * B_VSTEP;
      const int kk = Op::B_KFAST ? b_fixed : v, nn = Op::B_KFAST ? v : b_fixed;
      Bs[kk * B_LD + nn] = PR::cvt(rb[i]);
    }
  };

  typename PR::FragC acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; i++)
#pragma unroll
    for (int j = 0; j < FN; j++) wmma::fill_fragment(acc[i][j], 0.0f);

  if (kbeg < kend) fetch(kbeg);
  for (int k0 = kbeg; k0 < kend; k0 += IG_BK) {
    __syncthreads(); /* every warp is done with the previous slice */
    stage();
    __syncthreads();
    if (k0 + IG_BK < kend) fetch(k0 + IG_BK); /* in flight during the MMAs */
#pragma unroll
    for (int kk = 0; kk < IG_BK; kk += PR::KSTEP) {
      typename PR::FragA fa[FM];
      typename PR::FragB fb[FN];
#pragma unroll
      for (int i = 0; i < FM; i++)
        wmma::load_matrix_sync(fa[i], As + (wm * WM + i * 16) * A_LD + kk, A_LD);
#pragma unroll
      for (int j = 0; j < FN; j++)
        wmma::load_matrix_sync(fb[j], Bs + kk * B_LD + wn * WN + j * 16, B_LD);
#pragma unroll
      for (int i = 0; i < FM; i++)
#pragma unroll
        for (int j = 0; j < FN; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  /* epilogue: through a per-warp 16x16 fp32 scratch (reusing As/Bs) */
  __syncthreads();
  float *scr = reinterpret_cast<float *>(smem) + warp * 256;
#pragma unroll
  for (int i = 0; i < FM; i++)
#pragma unroll
    for (int j = 0; j < FN; j++) {
      wmma::store_matrix_sync(scr, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int m = m0 + wm * WM + i * 16 + e / 16, n = n0 + wn * WN + j * 16 + e % 16;
        if (m < M && n < N) op.store(grp, split, m, n, scr[e]);
      }
      __syncwarp();
    }
#else
  __trap(); /* not compiled for this GPU: the launcher refuses before sm_80 */
#endif
}

/* ---- host-side planning (also run by the emulator) ------------------------------------------ */

/* A tile shape forced by moka_cuda_igemm_force_tile (benchmarks), or 0. */
static int g_force_bm, g_force_bn;

/* Tile shape: BM 64 when M fits it; BN 64 when 128-wide tiles would not
 * give every SM a CTA. */
static void pick_tile(int M, int N, int batches, int sms, int *bm, int *bn) {
  if (g_force_bm) {
    *bm = g_force_bm;
    *bn = g_force_bn;
    return;
  }
  *bm = M <= 64 ? 64 : 128;
  const long long tiles = (long long)((M + *bm - 1) / *bm) * ((N + 127) / 128) * batches;
  *bn = tiles < sms ? 64 : 128;
}

#ifndef MOKA_IGEMM_EMULATE
/* ---- small kernels -------------------------------------------------------------------------- */

/* tab[k] for k < n: forward/wgrad taps (c,kh,kw), or data-gradient taps (oc,kh,kw). */
__global__ void igemm_tap_kernel(IgemmGeom g, bool dgrad, IgemmTap *tab, int n) {
  MOKA_GRID_LOOP(k, n) tab[k] = dgrad ? igemm_dgrad_tap(&g, (int)k) : igemm_fwd_tap(&g, (int)k);
}

/* dw[i] += p_0[i] + p_1[i] + ... + p_{S-1}[i], in that order (deterministic). */
__global__ void igemm_split_reduce_kernel(const float *partial, int splits, size_t n, float *dw) {
  MOKA_GRID_LOOP(i, n) {
    float s = partial[i];
    for (int p = 1; p < splits; p++) s += partial[(size_t)p * n + i];
    dw[i] += s;
  }
}

int moka_cuda_sm_count(MokaCuda *c) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c->device) != cudaSuccess ||
      sms <= 0)
    sms = 100;
  return sms;
}

int moka_cuda_split_reduce(cudaStream_t s, const float *partial, int splits, size_t n, float *dw) {
  igemm_split_reduce_kernel<<<moka_blocks(n), MOKA_THREADS, 0, s>>>(partial, splits, n, dw);
  return moka_cuda_launched(s, "igemm_split_reduce_kernel", __FILE__, __LINE__);
}

/* ---- launchers ------------------------------------------------------------------------------- */

template <class PR, class Op>
static int launch_prec(MokaCuda *c, const Op &op, int M, int N, int K, int kchunk, int splits,
                       int G, int bm, int bn, const char *name) {
  const dim3 grid((unsigned)((N + bn - 1) / bn), (unsigned)((M + bm - 1) / bm),
                  (unsigned)(G * splits));
  if (grid.y > 65535 || grid.z > 65535)
    return moka_errorf("internal error: %s grid %ux%ux%u too large", name, grid.x, grid.y,
                       grid.z);
  if (bm == 128 && bn == 128)
    igemm_kernel<128, 128, PR, Op><<<grid, IG_THREADS, 0, c->stream>>>(op, M, N, K, kchunk, splits);
  else if (bm == 128)
    igemm_kernel<128, 64, PR, Op><<<grid, IG_THREADS, 0, c->stream>>>(op, M, N, K, kchunk, splits);
  else if (bn == 128)
    igemm_kernel<64, 128, PR, Op><<<grid, IG_THREADS, 0, c->stream>>>(op, M, N, K, kchunk, splits);
  else
    igemm_kernel<64, 64, PR, Op><<<grid, IG_THREADS, 0, c->stream>>>(op, M, N, K, kchunk, splits);
  return moka_cuda_launched(c->stream, name, __FILE__, __LINE__);
}

template <class Op>
static int launch(MokaCuda *c, MokaConvPrec prec, const Op &op, int M, int N, int K, int kchunk,
                  int splits, int G, int bm, int bn, const char *name) {
  if (prec == MOKA_CONV_BF16)
    return launch_prec<PrecBf16>(c, op, M, N, K, kchunk, splits, G, bm, bn, name);
  return launch_prec<PrecTf32>(c, op, M, N, K, kchunk, splits, G, bm, bn, name);
}

/* Preconditions shared by both directions; fills the index geometry. */
static int igemm_check(MokaCuda *c, const MokaConvGeom *cg, MokaConvPrec prec, IgemmGeom *g) {
  if (prec != MOKA_CONV_BF16 && prec != MOKA_CONV_TF32)
    return moka_errorf("internal error: the implicit-GEMM convolution runs bf16 or tf32 only "
                       "(precision %d; fp32 is conv_gemm.cu)",
                       (int)prec);
  if (c->cc_major < 8)
    return moka_errorf("the %s convolution needs tensor cores of compute capability 8.0 or "
                       "later; device %d (%s) is %d.%d: use --precision=fp32",
                       moka_conv_prec_name(prec), c->device, c->device_name, c->cc_major,
                       c->cc_minor);
  if (cg->group <= 0 || cg->channels % cg->group || cg->num_output % cg->group ||
      cg->out_h <= 0 || cg->out_w <= 0 || cg->num < 0 || cg->kernel_h <= 0 || cg->kernel_w <= 0 ||
      cg->stride_h <= 0 || cg->stride_w <= 0 || cg->dilation_h <= 0 || cg->dilation_w <= 0)
    return moka_errorf("internal error: bad convolution geometry (C %d, OC %d, group %d, out "
                       "%dx%d)",
                       cg->channels, cg->num_output, cg->group, cg->out_h, cg->out_w);
  /* every GEMM dimension and every per-image offset must fit an int */
  const long long HW = (long long)cg->height * cg->width, OHW = (long long)cg->out_h * cg->out_w;
  const long long KHW = (long long)cg->kernel_h * cg->kernel_w;
  const long long lim = INT_MAX;
  if (cg->channels * HW > lim || cg->num_output * OHW > lim || cg->num * HW > lim ||
      cg->num * OHW > lim || (long long)cg->channels * KHW > lim ||
      (long long)cg->num_output * KHW > lim || (long long)cg->num_output * cg->channels * KHW > lim)
    return moka_errorf("convolution %dx%dx%dx%d -> %d outputs %dx%d is too large for the "
                       "implicit-GEMM kernels (a dimension passes 2^31)",
                       cg->num, cg->channels, cg->height, cg->width, cg->num_output, cg->out_h,
                       cg->out_w);
  *g = igemm_geom(cg->num, cg->channels, cg->height, cg->width, cg->num_output, cg->group,
                  cg->out_h, cg->out_w, cg->kernel_h, cg->kernel_w, cg->pad_h, cg->pad_w,
                  cg->stride_h, cg->stride_w, cg->dilation_h, cg->dilation_w);
  return 0;
}

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

static int build_taps(MokaCuda *c, const IgemmGeom *g, bool dgrad, IgemmTap *tab, int n) {
  igemm_tap_kernel<<<moka_blocks((size_t)n), MOKA_THREADS, 0, c->stream>>>(*g, dgrad, tab, n);
  return moka_cuda_launched(c->stream, "igemm_tap_kernel", __FILE__, __LINE__);
}

extern "C" int moka_cuda_igemm_force_tile(int bm, int bn) {
  if (bm == 0 && bn == 0) {
    g_force_bm = g_force_bn = 0;
    return 0;
  }
  if ((bm != 64 && bm != 128) || (bn != 64 && bn != 128))
    return moka_errorf("implicit-GEMM tile %dx%d: the kernels are built for 64 or 128 each", bm,
                       bn);
  g_force_bm = bm;
  g_force_bn = bn;
  return 0;
}

extern "C" const char *moka_conv_prec_name(MokaConvPrec p) {
  return p == MOKA_CONV_BF16 ? "bf16" : p == MOKA_CONV_TF32 ? "tf32" : "fp32";
}

extern "C" int moka_cuda_igemm_conv_forward(MokaCuda *c, const MokaConvGeom *cg,
                                            MokaConvPrec prec, const float *x, const float *w,
                                            const float *bias, float *y) {
  IgemmGeom g;
  if (igemm_check(c, cg, prec, &g)) return -1;
  if (g.num == 0) return 0;
  if (prec == MOKA_CONV_BF16 && moka_cuda_nhwc_applies(cg, MOKA_NHWC_FWD))
    return moka_cuda_nhwc_conv_forward(c, cg, x, w, bias, y);
  const int K = g.Cg * g.KHW, M = g.OCg, N = g.num * g.OHW;
  void *ws;
  if (moka_cuda_workspace(c, align256((size_t)K * sizeof(IgemmTap)), "implicit-GEMM taps", &ws))
    return -1;
  IgemmTap *tab = (IgemmTap *)ws; /* (Cg*KHW) */
  if (build_taps(c, &g, false, tab, K)) return -1;
  FwdOp op = {g, x, w, bias, y, tab};
  int bm, bn;
  pick_tile(M, N, g.G, moka_cuda_sm_count(c), &bm, &bn);
  return launch(c, prec, op, M, N, K, K, 1, g.G, bm, bn, "igemm forward");
}

extern "C" int moka_cuda_igemm_conv_backward(MokaCuda *c, const MokaConvGeom *cg,
                                             MokaConvPrec prec, const float *x, const float *w,
                                             const float *dy, float *dx, float *dw, float *db) {
  IgemmGeom g;
  if (igemm_check(c, cg, prec, &g)) return -1;
  if (g.num == 0) return 0;
  const int sms = moka_cuda_sm_count(c);
  if (db && moka_cuda_channel_sum(c->stream, dy, NULL, db, (size_t)g.num, (size_t)g.OC,
                                  (size_t)g.OHW, true))
    return -1;
  /* MOKA_CONV_NHWC=1: the directions conv_nhwc.cu takes go there first */
  if (prec == MOKA_CONV_BF16) {
    const bool nd = dx && moka_cuda_nhwc_applies(cg, MOKA_NHWC_DGRAD);
    const bool nw = dw && moka_cuda_nhwc_applies(cg, MOKA_NHWC_WGRAD);
    if ((nd || nw) && moka_cuda_nhwc_conv_backward(c, cg, x, w, dy, nd ? dx : NULL, nw ? dw : NULL))
      return -1;
    if (nd) dx = NULL;
    if (nw) dw = NULL;
    if (!dx && !dw) return 0;
  }
  /* weight gradient: M = OCg, N = Cg*KHW, K = num*OHW, split-K */
  const int Mw = g.OCg, Nw = g.Cg * g.KHW, Kw = g.num * g.OHW;
  int bm, bn, splits, kchunk;
  pick_tile(Mw, Nw, g.G, sms, &bm, &bn);
  igemm_plan_split(Mw, Nw, Kw, g.G, bm, bn, IG_BK, sms, &splits, &kchunk);
  const size_t nw = (size_t)g.OC * Nw; /* dw (OC, Cg*KHW) */
  const int Kd = g.OCg * g.KHW;
  const size_t tab_bytes = align256((size_t)Nw * sizeof(IgemmTap));
  const size_t dtab_bytes = align256((size_t)Kd * sizeof(IgemmTap));
  const size_t part_bytes = splits > 1 ? (size_t)splits * nw * sizeof(float) : 0;
  void *ws;
  if (moka_cuda_workspace(c, tab_bytes + dtab_bytes + part_bytes, "implicit-GEMM backward", &ws))
    return -1;
  IgemmTap *tab = (IgemmTap *)ws;                                 /* (Cg*KHW) */
  IgemmTap *dtab = (IgemmTap *)((char *)ws + tab_bytes);          /* (OCg*KHW) */
  float *partial = splits > 1 ? (float *)((char *)ws + tab_bytes + dtab_bytes) : NULL;
  if (dw) {
    if (build_taps(c, &g, false, tab, Nw)) return -1;
    WgradOp op = {g, x, dy, dw, partial, tab};
    if (launch(c, prec, op, Mw, Nw, Kw, kchunk, splits, g.G, bm, bn, "igemm wgrad"))
      return -1;
    if (partial && moka_cuda_split_reduce(c->stream, partial, splits, nw, dw)) return -1;
  }
  if (!dx) return 0;
  /* data gradient: M = Cg, N = num*HW, K = OCg*KHW */
  const int Md = g.Cg, Nd = g.num * g.HW;
  if (build_taps(c, &g, true, dtab, Kd)) return -1;
  DgradOp op = {g, w, dy, dx, dtab};
  pick_tile(Md, Nd, g.G, sms, &bm, &bn);
  return launch(c, prec, op, Md, Nd, Kd, Kd, 1, g.G, bm, bn, "igemm dgrad");
}
#endif /* MOKA_IGEMM_EMULATE */
