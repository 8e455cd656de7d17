/* conv_nhwc.cu — moka's bf16 convolution on tensor cores through channels-last
 * (NHWC) bf16 copies of the activations: forward, data gradient and weight
 * gradient as implicit GEMMs whose operands are read as 16-byte runs of 8
 * channels (cp.async, three-stage pipeline), fed to mma.sync m16n8k16 through
 * ldmatrix. Opt-in (MOKA_CONV_NHWC=1) under --precision=bf16, for group-1
 * convolutions whose input and output channel counts are multiples of 8
 * (every ResNet-50 convolution but conv1); moka_cuda_igemm_conv_forward /
 * _backward call it and keep conv_igemm.cu's WMMA kernels for the rest. Same
 * contract and numerics as conv_igemm.cu: inputs rounded to bf16 (nearest
 * even), products accumulated in fp32, y and dx overwritten, dw +=,
 * deterministic split-K.
 *
 * Per call, in the shared workspace: x (and dy in the backward) converted
 * once to NHWC bf16 (a tiled transpose, nh_to_nhwc_kernel), the weights to
 * (OC, KH, KW, C) for the forward and (C, KH, KW, OC) for the data gradient.
 * Then, with P = num*OH*OW output pixels, Q = num*H*W input pixels,
 * T = KH*KW taps:
 *   forward          y(p, oc)  = sum over k=(tap,c)   xh(p's tap, c) wf(oc, tap, c)
 *                    M = P, N = OC, K = T*C; A, B both K-contiguous
 *   data gradient    dx(q, c)  = sum over k=(tap,oc)  dyh(q's tap, oc) wd(c, tap, oc)
 *     (stride 1)     M = Q, N = C, K = T*OC; the tap of input pixel (h,w) reads
 *                    dy at (h + pad - kh*dil, w + pad - kw*dil) or nothing
 *     (1x1, pad 0,   M = P, N = C, K = OC: each dy pixel gives the dx pixel
 *      any stride)   (oh*s, ow*s); the others are zero (dx cleared first)
 *   weight gradient  dw(oc, (c,tap)) += sum over k=p   dyh(p, oc) xh(p's tap, c)
 *                    M = OC, N = T*C, K = P; A, B both M/N-contiguous (read
 *                    with ldmatrix .trans); split-K over pixels into
 *                    partials reduced in a fixed order (no atomics)
 * Other geometries (stride > 1 with a kernel > 1, or padding, in the data
 * gradient) keep the WMMA kernel for that direction.
 *
 * The kernel (nh_gemm_kernel<BM, BN, Op>): 256 threads = 8 warps as 2 (M) x
 * 4 (N), each warp a (BM/2) x (BN/4) tile of m16n8 fp32 accumulators; BK = 32;
 * NH_STAGES shared-memory stages filled by cp.async (padding rows and columns
 * zero-filled by the copy itself), one __syncthreads per slice. Shared tiles:
 * K-contiguous operands as [row][BK + 8], M/N-contiguous ones as [BK][rows + 8]
 * (the +8 keeps each ldmatrix phase on distinct banks and rows 16-byte
 * aligned). Each thread's row (or column chunk) is fixed for the whole CTA,
 * so a pixel's decomposition is computed once; its k chunk's coordinates
 * (tap and channel, or output pixel) are divided out once and then moved on
 * by additions, slice by slice. Epilogue: straight from the accumulators to the
 * NCHW fp32 output (8 consecutive pixels per store group) or to a bf16 NHWC one (a pair of
 * channels per 4-byte store), + bias in the forward.
 *
 * The instructions are in conv_nhwc_ptx.h; tests/gpu/nhwc_emulate.cpp runs
 * this file on the CPU with those four emulated lane by lane (fragment
 * layouts, cp.async groups and all), in `make test`; test_cuda_igemm checks
 * it on the GPU against a direct convolution, and its benchmark times it per
 * ResNet-50 layer beside the WMMA kernel and cuDNN.
 */
#ifndef MOKA_NHWC_EMULATE
#include <climits>
#include <cstdlib>
#include <cuda_bf16.h>

#include "cuda_internal.h"
#endif
#include "conv_igemm_index.h"
#include "conv_nhwc_geom.h"
#include "conv_nhwc_ptx.h"

typedef __nv_bfloat16 nh_bf16;

#define NH_THREADS 256
#define NH_BK 32
#define NH_STAGES 3

/* ---- the three operations -------------------------------------------------------------------- */
/* Each gives, for operand A (rows m) and B (rows n): a row state made once per
 * thread (a_row / b_row; `ok` false past M or N); a k state for the k chunk a
 * thread copies, made once (a_kinit / b_kinit: the only divisions) and moved
 * on by NH_BK per slice (a_kstep / b_kstep: additions and compares); the
 * address of the 8 bf16 values at (row, k) (a_src / b_src; NULL: zeros, e.g.
 * padding); and the output's row / column offsets and store (out_row,
 * out_col, put). A_K / B_K: the operand is contiguous along k (else along
 * m / n). Geometry in IgemmGeom (G = 1). */

/* k = (tap, c) with c fastest, as an incremental (c, kh, kw); nch channels per tap */
struct NhTapK {
  int c, kh, kw;
};
__device__ static inline NhTapK nh_tap_init(int k, int nch, int KW) {
  const int tap = k / nch, kh = tap / KW;
  return NhTapK{k - tap * nch, kh, tap - kh * KW};
}
__device__ static inline void nh_tap_step(NhTapK &s, int nch, int KW) {
  s.c += NH_BK;
  while (s.c >= nch) { /* once per step when nch >= NH_BK */
    s.c -= nch;
    if (++s.kw == KW) {
      s.kw = 0;
      s.kh++;
    }
  }
}

/* k = a plain offset along a contiguous row */
struct NhLinK {
  int k;
};

struct NhFwd {
  IgemmGeom g;
  const nh_bf16 *xh, *wf; /* (num, H, W, C), (OC, KH, KW, C) */
  const float *bias;      /* (OC) or NULL */
  float *y;               /* (num, OC, OH, OW) fp32, or NULL: */
  nh_bf16 *yh;            /* (num, OH, OW, OC) bf16 */
  static constexpr bool A_K = true, B_K = true;
  struct AR {
    int base, ih0, iw0; /* base: img*H*W */
    bool ok;
  };
  struct BR {
    const nh_bf16 *p;
  };
  typedef NhTapK AK;
  typedef NhLinK BK;
  __device__ AR a_row(int m, bool ok) const {
    AR r = {0, 0, 0, ok};
    if (!ok) return r;
    const int img = m / g.OHW, pix = m - img * g.OHW, oh = pix / g.OW, ow = pix - oh * g.OW;
    r.base = img * g.HW;
    r.ih0 = oh * g.SH - g.PH;
    r.iw0 = ow * g.SW - g.PW;
    return r;
  }
  __device__ AK a_kinit(int k) const { return nh_tap_init(k, g.C, g.KW); }
  __device__ void a_kstep(AK &s) const { nh_tap_step(s, g.C, g.KW); }
  __device__ const nh_bf16 *a_src(const AR &r, const AK &s) const {
    if (!r.ok) return nullptr;
    const int ih = r.ih0 + s.kh * g.DH, iw = r.iw0 + s.kw * g.DW;
    if ((unsigned)ih >= (unsigned)g.H || (unsigned)iw >= (unsigned)g.W) return nullptr;
    return xh + (long long)(r.base + ih * g.W + iw) * g.C + s.c;
  }
  __device__ BR b_row(int n, bool ok) const {
    return BR{ok ? wf + (long long)n * g.KHW * g.C : nullptr};
  }
  __device__ BK b_kinit(int k) const { return BK{k}; }
  __device__ void b_kstep(BK &s) const { s.k += NH_BK; }
  __device__ const nh_bf16 *b_src(const BR &r, const BK &s) const {
    return r.p ? r.p + s.k : nullptr;
  }
  __device__ long long out_row(int m) const {
    if (yh) return (long long)m * g.OC;
    const int img = m / g.OHW;
    return (long long)img * g.OC * g.OHW + (m - img * g.OHW);
  }
  __device__ long long out_col(int n) const { return yh ? n : (long long)n * g.OHW; }
  __device__ void put(int, long long ro, long long co, int n, float v) const {
    const float o = bias ? v + bias[n] : v;
    if (yh)
      yh[ro + co] = __float2bfloat16_rn(o);
    else
      y[ro + co] = o;
  }
  /* columns n, n+1 adjacent in memory (bf16 NHWC output): one 4-byte store */
  __device__ bool put2(long long ro, long long co, int n, float v0, float v1) const {
    if (!yh) return false;
    nh_store_bf16x2(yh + ro + co, bias ? v0 + bias[n] : v0, bias ? v1 + bias[n + 1] : v1);
    return true;
  }
};

/* What both data gradients share: B = the weights (C, KH, KW, OC), a row per input channel,
 * and the output, dx (num, C, H, W) fp32 or dxh (num, H, W, C) bf16 (the other NULL); the
 * row offset of an output pixel is each one's own (out_row). */
struct NhDgradBase {
  IgemmGeom g;
  const nh_bf16 *dyh, *wd; /* (num, OH, OW, OC), (C, KH, KW, OC) */
  float *dx;
  nh_bf16 *dxh;
  static constexpr bool A_K = true, B_K = true;
  struct BR {
    const nh_bf16 *p;
  };
  typedef NhLinK BK;
  __device__ BR b_row(int n, bool ok) const {
    return BR{ok ? wd + (long long)n * g.KHW * g.OC : nullptr};
  }
  __device__ BK b_kinit(int k) const { return BK{k}; }
  __device__ void b_kstep(BK &s) const { s.k += NH_BK; }
  __device__ const nh_bf16 *b_src(const BR &r, const BK &s) const {
    return r.p ? r.p + s.k : nullptr;
  }
  __device__ long long out_col(int n) const { return dxh ? n : (long long)n * g.HW; }
  __device__ void put(int, long long ro, long long co, int, float v) const {
    if (dxh)
      dxh[ro + co] = __float2bfloat16_rn(v);
    else
      dx[ro + co] = v;
  }
  __device__ bool put2(long long ro, long long co, int, float v0, float v1) const {
    if (!dxh) return false;
    nh_store_bf16x2(dxh + ro + co, v0, v1);
    return true;
  }
};

/* Data gradient, stride 1 (any kernel, padding, dilation): A = dy gathered per input pixel. */
struct NhDgrad : NhDgradBase {
  struct AR {
    int base, h0, w0; /* base: img*OH*OW; h0 = h + pad */
    bool ok;
  };
  typedef NhTapK AK; /* k = (tap, oc) */
  __device__ AR a_row(int m, bool ok) const {
    AR r = {0, 0, 0, ok};
    if (!ok) return r;
    const int img = m / g.HW, pix = m - img * g.HW, h = pix / g.W, w = pix - h * g.W;
    r.base = img * g.OHW;
    r.h0 = h + g.PH;
    r.w0 = w + g.PW;
    return r;
  }
  __device__ AK a_kinit(int k) const { return nh_tap_init(k, g.OC, g.KW); }
  __device__ void a_kstep(AK &s) const { nh_tap_step(s, g.OC, g.KW); }
  __device__ const nh_bf16 *a_src(const AR &r, const AK &s) const {
    if (!r.ok) return nullptr;
    const int oh = r.h0 - s.kh * g.DH, ow = r.w0 - s.kw * g.DW;
    if ((unsigned)oh >= (unsigned)g.OH || (unsigned)ow >= (unsigned)g.OW) return nullptr;
    return dyh + (long long)(r.base + oh * g.OW + ow) * g.OC + s.c;
  }
  __device__ long long out_row(int m) const {
    if (dxh) return (long long)m * g.C;
    const int img = m / g.HW;
    return (long long)img * g.C * g.HW + (m - img * g.HW);
  }
};

/* Data gradient of a 1x1, unpadded convolution with any stride: dy pixel p
 * -> dx pixel (oh*SH, ow*SW); the other dx pixels are cleared beforehand. */
struct NhDgrad1x1 : NhDgradBase {
  struct AR {
    const nh_bf16 *p;
  };
  typedef NhLinK AK;
  __device__ AR a_row(int m, bool ok) const {
    return AR{ok ? dyh + (long long)m * g.OC : nullptr};
  }
  __device__ AK a_kinit(int k) const { return AK{k}; }
  __device__ void a_kstep(AK &s) const { s.k += NH_BK; }
  __device__ const nh_bf16 *a_src(const AR &r, const AK &s) const {
    return r.p ? r.p + s.k : nullptr;
  }
  __device__ long long out_row(int m) const {
    const int img = m / g.OHW, pix = m - img * g.OHW, oh = pix / g.OW, ow = pix - oh * g.OW;
    const long long q = (long long)oh * g.SH * g.W + (long long)ow * g.SW; /* the dx pixel */
    if (dxh) return ((long long)img * g.HW + q) * g.C;
    return (long long)img * g.C * g.HW + q;
  }
};

struct NhWgrad {
  IgemmGeom g;
  const nh_bf16 *dyh, *xh; /* (num, OH, OW, OC), (num, H, W, C) */
  float *dw;               /* (OC, C, KH, KW): += when partial is NULL */
  float *partial;          /* (splits, OC, C, KH, KW) or NULL */
  static constexpr bool A_K = false, B_K = false;
  struct AR {
    const nh_bf16 *p; /* dyh + oc */
  };
  struct BR {
    int offh, offw, c; /* kh*dil - pad, kw*dil - pad */
    bool ok;
  };
  typedef NhLinK AK; /* k = output pixel */
  struct BK {        /* k = output pixel (img, oh, ow), moved on incrementally */
    int img, oh, ow;
  };
  __device__ AR a_row(int m, bool ok) const { return AR{ok ? dyh + m : nullptr}; }
  __device__ AK a_kinit(int k) const { return AK{k}; }
  __device__ void a_kstep(AK &s) const { s.k += NH_BK; }
  __device__ const nh_bf16 *a_src(const AR &r, const AK &s) const {
    return r.p ? r.p + (long long)s.k * g.OC : nullptr;
  }
  __device__ BR b_row(int n, bool ok) const {
    BR r = {0, 0, 0, ok};
    if (!ok) return r;
    const int tap = n / g.C, kh = tap / g.KW, kw = tap - kh * g.KW;
    r.c = n - tap * g.C;
    r.offh = kh * g.DH - g.PH;
    r.offw = kw * g.DW - g.PW;
    return r;
  }
  __device__ BK b_kinit(int k) const {
    const int img = k / g.OHW, pix = k - img * g.OHW, oh = pix / g.OW;
    return BK{img, oh, pix - oh * g.OW};
  }
  __device__ void b_kstep(BK &s) const {
    s.ow += NH_BK;
    while (s.ow >= g.OW) {
      s.ow -= g.OW;
      if (++s.oh == g.OH) {
        s.oh = 0;
        s.img++;
      }
    }
  }
  __device__ const nh_bf16 *b_src(const BR &r, const BK &s) const {
    if (!r.ok) return nullptr;
    const int ih = s.oh * g.SH + r.offh, iw = s.ow * g.SW + r.offw;
    if ((unsigned)ih >= (unsigned)g.H || (unsigned)iw >= (unsigned)g.W) return nullptr;
    return xh + (long long)(s.img * g.HW + ih * g.W + iw) * g.C + r.c;
  }
  __device__ long long out_row(int m) const { return (long long)m * g.C * g.KHW; }
  __device__ long long out_col(int n) const {
    const int tap = n / g.C;
    return (long long)(n - tap * g.C) * g.KHW + tap;
  }
  __device__ bool put2(long long, long long, int, float, float) const { return false; }
  __device__ void put(int split, long long ro, long long co, int, float v) const {
    if (partial)
      partial[(long long)split * g.OC * g.C * g.KHW + ro + co] = v;
    else
      dw[ro + co] += v;
  }
};

/* ---- the kernel -------------------------------------------------------------------------------- */

/* Elements of one pipeline stage (A then B) for a BM x BN tile. */
template <int BM, int BN, class Op> struct NhTile {
  static constexpr int A_LD = Op::A_K ? NH_BK + 8 : BM + 8;
  static constexpr int B_LD = Op::B_K ? NH_BK + 8 : BN + 8;
  static constexpr int A_ELEMS = (Op::A_K ? BM : NH_BK) * A_LD;
  static constexpr int B_ELEMS = (Op::B_K ? BN : NH_BK) * B_LD;
  static constexpr int SMEM_BYTES = NH_STAGES * (A_ELEMS + B_ELEMS) * (int)sizeof(nh_bf16);
};

template <int BM, int BN, class Op>
__global__ void __launch_bounds__(NH_THREADS, 2)
    nh_gemm_kernel(Op op, int M, int N, int K, int kchunk) {
#if NH_ARCH_OK
  typedef NhTile<BM, BN, Op> TL;
  constexpr int A_LD = TL::A_LD, B_LD = TL::B_LD, STAGE = TL::A_ELEMS + TL::B_ELEMS;
  constexpr int WM = BM / 2, WN = BN / 4, MI = WM / 16, NI = WN / 8;
  constexpr int A_CH = BM * NH_BK / 8 / NH_THREADS, B_CH = BN * NH_BK / 8 / NH_THREADS;
  constexpr int A_RC = BM / 8, B_RC = BN / 8; /* 8-wide column chunks of an M/N-contiguous row */
  static_assert(A_CH >= 1 && B_CH >= 1 && NI % 2 == 0, "tile shape");
  NH_DYNAMIC_SMEM(nh_smem);
  nh_bf16 *smem = reinterpret_cast<nh_bf16 *>(nh_smem);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, split = blockIdx.z;
  const int kbeg = split * kchunk;
  const int kend = K - kbeg < kchunk ? K : kbeg + kchunk;
  const int nk = (kend - kbeg + NH_BK - 1) / NH_BK;

  /* Loader maps. K-contiguous: chunk i is row tid/4 + 64i, k offset 8*(tid%4).
   * M/N-contiguous: the column chunk tid % RC (fixed), k row tid/RC + (256/RC) i. */
  typename Op::AR ar[A_CH];
  typename Op::BR br[B_CH];
  typename Op::AK ak[A_CH]; /* the k chunk each copy is at, and its k index */
  typename Op::BK bk[B_CH];
  int ka[A_CH], kb[B_CH];
#pragma unroll
  for (int i = 0; i < A_CH; i++) {
    const int m = m0 + (Op::A_K ? tid / 4 + i * (NH_THREADS / 4) : (tid % A_RC) * 8);
    ar[i] = op.a_row(m, m < M);
    ka[i] = kbeg + (Op::A_K ? (tid % 4) * 8 : tid / A_RC + i * (NH_THREADS / A_RC));
    ak[i] = op.a_kinit(ka[i]);
  }
#pragma unroll
  for (int i = 0; i < B_CH; i++) {
    const int n = n0 + (Op::B_K ? tid / 4 + i * (NH_THREADS / 4) : (tid % B_RC) * 8);
    br[i] = op.b_row(n, n < N);
    kb[i] = kbeg + (Op::B_K ? (tid % 4) * 8 : tid / B_RC + i * (NH_THREADS / B_RC));
    bk[i] = op.b_kinit(kb[i]);
  }

  /* The next slice into stage s (slices are loaded in order, each once). */
  auto load_stage = [&](int s) {
    nh_bf16 *As = smem + s * STAGE, *Bs = As + TL::A_ELEMS;
#pragma unroll
    for (int i = 0; i < A_CH; i++) {
      nh_bf16 *dst = Op::A_K ? As + (tid / 4 + i * (NH_THREADS / 4)) * A_LD + (tid % 4) * 8
                             : As + (tid / A_RC + i * (NH_THREADS / A_RC)) * A_LD + (tid % A_RC) * 8;
      nh_cp_async16(dst, ka[i] < kend ? op.a_src(ar[i], ak[i]) : nullptr);
      ka[i] += NH_BK;
      op.a_kstep(ak[i]);
    }
#pragma unroll
    for (int i = 0; i < B_CH; i++) {
      nh_bf16 *dst = Op::B_K ? Bs + (tid / 4 + i * (NH_THREADS / 4)) * B_LD + (tid % 4) * 8
                             : Bs + (tid / B_RC + i * (NH_THREADS / B_RC)) * B_LD + (tid % B_RC) * 8;
      nh_cp_async16(dst, kb[i] < kend ? op.b_src(br[i], bk[i]) : nullptr);
      kb[i] += NH_BK;
      op.b_kstep(bk[i]);
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int j = 0; j < NI; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < NH_STAGES - 1; s++) {
    if (s < nk) load_stage(s);
    nh_cp_commit(); /* empty groups keep the count uniform */
  }
  const int lr = lane % 8, lj = lane / 8; /* ldmatrix: this lane's row within matrix lj */
  for (int kt = 0; kt < nk; kt++) {
    nh_cp_wait<NH_STAGES - 2>(); /* slice kt has landed (this thread's copies) */
    __syncthreads();             /* ... everyone's; and slice kt-1's stage is free */
    if (kt + NH_STAGES - 1 < nk) load_stage((kt + NH_STAGES - 1) % NH_STAGES);
    nh_cp_commit();
    const nh_bf16 *As = smem + (kt % NH_STAGES) * STAGE, *Bs = As + TL::A_ELEMS;
#pragma unroll
    for (int kk = 0; kk < NH_BK; kk += 16) {
      unsigned af[MI][4], bfr[NI][2];
#pragma unroll
      for (int i = 0; i < MI; i++) {
        const int mb = wm * WM + i * 16;
        if constexpr (Op::A_K)
          nh_ldmatrix_x4(af[i], As + (mb + lr + (lj & 1) * 8) * A_LD + kk + (lj >> 1) * 8);
        else
          nh_ldmatrix_x4_trans(af[i], As + (kk + (lj >> 1) * 8 + lr) * A_LD + mb + (lj & 1) * 8);
      }
#pragma unroll
      for (int j = 0; j < NI; j += 2) {
        const int nb = wn * WN + j * 8;
        unsigned r[4];
        if constexpr (Op::B_K)
          nh_ldmatrix_x4(r, Bs + (nb + (lj >> 1) * 8 + lr) * B_LD + kk + (lj & 1) * 8);
        else
          nh_ldmatrix_x4_trans(r, Bs + (kk + (lj & 1) * 8 + lr) * B_LD + nb + (lj >> 1) * 8);
        bfr[j][0] = r[0];
        bfr[j][1] = r[1];
        bfr[j + 1][0] = r[2];
        bfr[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++) nh_mma_bf16(acc[i][j], af[i], bfr[j]);
    }
  }
  nh_cp_wait<0>(); /* only empty groups can be left; nothing may be in flight at exit */

  /* epilogue: accumulator (i, j, e) is row wm*WM + 16i + g + 8(e/2), column wn*WN + 8j + 2t + e%2 */
  const int g = lane / 4, t = lane % 4;
  long long co[NI][2];
#pragma unroll
  for (int j = 0; j < NI; j++)
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int n = n0 + wn * WN + j * 8 + t * 2 + e;
      co[j][e] = n < N ? op.out_col(n) : -1;
    }
#pragma unroll
  for (int i = 0; i < MI; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int m = m0 + wm * WM + i * 16 + g + h * 8;
      if (m >= M) continue;
      const long long ro = op.out_row(m);
#pragma unroll
      for (int j = 0; j < NI; j++) {
        const int n = n0 + wn * WN + j * 8 + t * 2;
        /* bf16 NHWC outputs: the pair of columns in one store (n even, so 4-byte aligned) */
        if (co[j][0] >= 0 && co[j][1] == co[j][0] + 1 &&
            op.put2(ro, co[j][0], n, acc[i][j][h * 2], acc[i][j][h * 2 + 1]))
          continue;
#pragma unroll
        for (int e = 0; e < 2; e++)
          if (co[j][e] >= 0) op.put(split, ro, co[j][e], n + e, acc[i][j][h * 2 + e]);
      }
    }
#else
  __trap(); /* not compiled for this GPU: the launcher refuses before sm_80 */
#endif
}

/* ---- host-side planning (also run by the emulator) --------------------------------------------- */

/* A tile shape forced by moka_cuda_nhwc_force_tile (benchmarks), or 0. */
static int g_nh_force_bm, g_nh_force_bn;

/* Forward and data gradient (M = pixels): BN 64 when N <= 64, else 128; BM 128,
 * or 64 when 128-row tiles would not give every SM a CTA. */
static void nh_pick_tile(int M, int N, int sms, int *bm, int *bn) {
  if (g_nh_force_bm) {
    *bm = g_nh_force_bm;
    *bn = g_nh_force_bn;
    return;
  }
  *bn = N <= 64 ? 64 : 128;
  const long long tiles = (long long)((M + 127) / 128) * ((N + *bn - 1) / *bn);
  *bm = tiles < sms ? 64 : 128;
}

/* Weight gradient (M = OC, N = taps*C, K = pixels): 64 or 128 each, and the
 * split-K of conv_igemm.cu (igemm_plan_split: depends only on the geometry
 * and the SM count). */
static void nh_plan_wgrad(int M, int N, int K, int sms, int *bm, int *bn, int *splits,
                          int *kchunk) {
  *bm = g_nh_force_bm ? g_nh_force_bm : M <= 64 ? 64 : 128;
  *bn = g_nh_force_bn ? g_nh_force_bn : N <= 64 ? 64 : 128;
  igemm_plan_split(M, N, K, 1, *bm, *bn, NH_BK, sms, splits, kchunk);
}

/* ---- layout conversions (also run by the emulator) ------------------------------------------ */

/* x (num, C, HW) fp32 -> out (num, HW, C) bf16: 32x32 tiles through shared memory. */
__global__ void nh_to_nhwc_kernel(const float *__restrict__ x, int C, int HW,
                                  nh_bf16 *__restrict__ out) {
  __shared__ float tile[32][33];
  const int img = blockIdx.z, p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
  const float *xi = x + (size_t)img * C * HW;
  nh_bf16 *oi = out + (size_t)img * HW * C;
  for (int j = threadIdx.y; j < 32; j += 8) {
    const int c = c0 + j, p = p0 + threadIdx.x;
    if (c < C && p < HW) tile[j][threadIdx.x] = xi[(size_t)c * HW + p];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < 32; j += 8) {
    const int p = p0 + j, c = c0 + threadIdx.x;
    if (p < HW && c < C) oi[(size_t)p * C + c] = __float2bfloat16_rn(tile[threadIdx.x][j]);
  }
}

/* w (OC, C, T) fp32 -> (OC, T, C) bf16 (forward), or (C, T, OC) bf16 (data gradient). */
__global__ void nh_weights_kernel(const float *__restrict__ w, int OC, int C, int T, bool dgrad,
                                  nh_bf16 *__restrict__ out) {
  MOKA_GRID_LOOP(i, (size_t)OC * C * T) {
    const int tap = (int)(i % (size_t)T);
    const size_t r = i / (size_t)T;
    const int c = (int)(r % (size_t)C), oc = (int)(r / (size_t)C);
    const size_t o = dgrad ? ((size_t)c * T + tap) * OC + oc : ((size_t)oc * T + tap) * C + c;
    out[o] = __float2bfloat16_rn(w[i]);
  }
}

#ifndef MOKA_NHWC_EMULATE
static int to_nhwc(MokaCuda *c, const float *x, int num, int C, int HW, nh_bf16 *out) {
  const dim3 grid((unsigned)((HW + 31) / 32), (unsigned)((C + 31) / 32), (unsigned)num);
  nh_to_nhwc_kernel<<<grid, dim3(32, 8), 0, c->stream>>>(x, C, HW, out);
  return moka_cuda_launched(c->stream, "nh_to_nhwc_kernel", __FILE__, __LINE__);
}

static int weights_bf16(MokaCuda *c, const float *w, int OC, int C, int T, bool dgrad,
                        nh_bf16 *out) {
  nh_weights_kernel<<<moka_blocks((size_t)OC * C * T), MOKA_THREADS, 0, c->stream>>>(
      w, OC, C, T, dgrad, out);
  return moka_cuda_launched(c->stream, "nh_weights_kernel", __FILE__, __LINE__);
}

/* ---- launchers ---------------------------------------------------------------------------------- */

static int g_nhwc_force = -1; /* moka_cuda_nhwc_force: -1 the environment, 0 off, 1 on */

extern "C" void moka_cuda_nhwc_force(int mode) { g_nhwc_force = mode < 0 ? -1 : mode > 0; }

extern "C" int moka_cuda_nhwc_force_tile(int bm, int bn) {
  if (bm == 0 && bn == 0) {
    g_nh_force_bm = g_nh_force_bn = 0;
    return 0;
  }
  if ((bm != 64 && bm != 128) || (bn != 64 && bn != 128))
    return moka_errorf("NHWC tile %dx%d: the kernels are built for 64 or 128 each", bm, bn);
  g_nh_force_bm = bm;
  g_nh_force_bn = bn;
  return 0;
}

static bool nhwc_enabled(void) {
  if (g_nhwc_force >= 0) return g_nhwc_force == 1;
  const char *e = getenv("MOKA_CONV_NHWC");
  return e && e[0] == '1';
}

extern "C" bool moka_cuda_nhwc_applies(const MokaConvGeom *g, MokaNhwcDir dir) {
  return nhwc_enabled() && moka_cuda_nhwc_geom_ok(g, dir);
}

extern "C" bool moka_cuda_nhwc_geom_ok(const MokaConvGeom *g, MokaNhwcDir dir) {
  return nhwc_conv_geom_ok(g->group, g->num, g->channels, g->height, g->width, g->num_output,
                           g->out_h, g->out_w, g->kernel_h, g->kernel_w, g->stride_h,
                           g->stride_w, g->pad_h, g->pad_w, (int)dir);
}

template <int BM, int BN, class Op>
static int launch_tile(MokaCuda *c, const Op &op, int M, int N, int K, int kchunk, int splits,
                       const char *name) {
  const int smem = NhTile<BM, BN, Op>::SMEM_BYTES;
  static unsigned long long attr_set = 0; /* per instantiation: a bit per device it was set on */
  const unsigned long long bit = c->device >= 0 && c->device < 64 ? 1ull << c->device : 0;
  if (!bit || !(attr_set & bit)) {
    if (smem > 48 * 1024 &&
        cudaFuncSetAttribute(nh_gemm_kernel<BM, BN, Op>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
      return moka_errorf("%s: cannot give the kernel %d bytes of shared memory on device %d "
                         "(%s): %s",
                         name, smem, c->device, c->device_name,
                         cudaGetErrorString(cudaGetLastError()));
    attr_set |= bit;
  }
  const dim3 grid((unsigned)((M + BM - 1) / BM), (unsigned)((N + BN - 1) / BN), (unsigned)splits);
  if (grid.y > 65535 || grid.z > 65535)
    return moka_errorf("internal error: %s grid %ux%ux%u too large", name, grid.x, grid.y,
                       grid.z);
  nh_gemm_kernel<BM, BN, Op><<<grid, NH_THREADS, smem, c->stream>>>(op, M, N, K, kchunk);
  return moka_cuda_launched(c->stream, name, __FILE__, __LINE__);
}

template <class Op>
static int launch(MokaCuda *c, const Op &op, int M, int N, int K, int kchunk, int splits, int bm,
                  int bn, const char *name) {
  if (bm == 128 && bn == 128) return launch_tile<128, 128>(c, op, M, N, K, kchunk, splits, name);
  if (bm == 128) return launch_tile<128, 64>(c, op, M, N, K, kchunk, splits, name);
  if (bn == 128) return launch_tile<64, 128>(c, op, M, N, K, kchunk, splits, name);
  return launch_tile<64, 64>(c, op, M, N, K, kchunk, splits, name);
}

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

static int nh_check(MokaCuda *c, const MokaConvGeom *cg, MokaNhwcDir dir, IgemmGeom *g) {
  if (c->cc_major < 8)
    return moka_errorf("the bf16 convolution needs tensor cores of compute capability 8.0 or "
                       "later; device %d (%s) is %d.%d: use --precision=fp32",
                       c->device, c->device_name, c->cc_major, c->cc_minor);
  if (!moka_cuda_nhwc_geom_ok(cg, dir))
    return moka_errorf("internal error: the NHWC bf16 convolution does not take this geometry "
                       "(C %d, OC %d, group %d, kernel %dx%d, stride %dx%d)",
                       cg->channels, cg->num_output, cg->group, cg->kernel_h, cg->kernel_w,
                       cg->stride_h, cg->stride_w);
  *g = igemm_geom(cg->num, cg->channels, cg->height, cg->width, cg->num_output, 1, cg->out_h,
                  cg->out_w, cg->kernel_h, cg->kernel_w, cg->pad_h, cg->pad_w, cg->stride_h,
                  cg->stride_w, cg->dilation_h, cg->dilation_w);
  return 0;
}

/* A bf16 NHWC buffer the caller passes must be 16-byte aligned (the kernels copy 16 bytes). */
static int nh_check_aligned(const void *p, const char *what) {
  if (moka_aligned16(p)) return 0;
  return moka_errorf("internal error: the NHWC bf16 convolution's %s is not 16-byte aligned",
                     what);
}

extern "C" int moka_cuda_nhwc_conv_forward_fmt(MokaCuda *c, const MokaConvGeom *cg,
                                               const void *x, MokaActFmt xf, const float *w,
                                               const float *bias, void *y, MokaActFmt yf) {
  IgemmGeom g;
  if (nh_check(c, cg, MOKA_NHWC_FWD, &g)) return -1;
  const bool xin = xf == MOKA_ACT_BF16_NHWC, yout = yf == MOKA_ACT_BF16_NHWC;
  if ((xin && nh_check_aligned(x, "input")) || (yout && nh_check_aligned(y, "output")))
    return -1;
  const size_t xb = xin ? 0 : align256((size_t)g.num * g.HW * g.C * sizeof(nh_bf16));
  const size_t wb = align256((size_t)g.OC * g.KHW * g.C * sizeof(nh_bf16));
  void *ws;
  if (moka_cuda_workspace(c, xb + wb, "NHWC bf16 convolution", &ws)) return -1;
  nh_bf16 *xh = xin ? (nh_bf16 *)x : (nh_bf16 *)ws, *wf = (nh_bf16 *)((char *)ws + xb);
  if ((!xin && to_nhwc(c, (const float *)x, g.num, g.C, g.HW, xh)) ||
      weights_bf16(c, w, g.OC, g.C, g.KHW, false, wf))
    return -1;
  const int M = g.num * g.OHW, N = g.OC, K = g.KHW * g.C;
  int bm, bn;
  nh_pick_tile(M, N, moka_cuda_sm_count(c), &bm, &bn);
  NhFwd op = {g, xh, wf, bias, yout ? NULL : (float *)y, yout ? (nh_bf16 *)y : NULL};
  return launch(c, op, M, N, K, K, 1, bm, bn, "nhwc forward");
}

extern "C" int moka_cuda_nhwc_conv_forward(MokaCuda *c, const MokaConvGeom *cg, const float *x,
                                           const float *w, const float *bias, float *y) {
  return moka_cuda_nhwc_conv_forward_fmt(c, cg, x, MOKA_ACT_F32_NCHW, w, bias, y,
                                         MOKA_ACT_F32_NCHW);
}

extern "C" int moka_cuda_nhwc_conv_backward_fmt(MokaCuda *c, const MokaConvGeom *cg,
                                                const void *x, MokaActFmt xf, const float *w,
                                                const void *dy, MokaActFmt dyf, void *dx,
                                                MokaActFmt dxf, float *dw) {
  IgemmGeom g;
  if (dx && nh_check(c, cg, MOKA_NHWC_DGRAD, &g)) return -1;
  if (dw && nh_check(c, cg, MOKA_NHWC_WGRAD, &g)) return -1;
  if (!dx && !dw) return 0;
  const bool xin = xf == MOKA_ACT_BF16_NHWC, dyin = dyf == MOKA_ACT_BF16_NHWC;
  const bool dxout = dxf == MOKA_ACT_BF16_NHWC;
  if ((dw && xin && nh_check_aligned(x, "input")) || (dyin && nh_check_aligned(dy, "gradient")) ||
      (dx && dxout && nh_check_aligned(dx, "input gradient")))
    return -1;
  const int sms = moka_cuda_sm_count(c);
  const int P = g.num * g.OHW, Q = g.num * g.HW;
  int wbm = 0, wbn = 0, splits = 1, kchunk = P;
  if (dw) nh_plan_wgrad(g.OC, g.KHW * g.C, P, sms, &wbm, &wbn, &splits, &kchunk);
  const size_t nw = (size_t)g.OC * g.C * g.KHW;
  const size_t dyb = dyin ? 0 : align256((size_t)P * g.OC * sizeof(nh_bf16));
  const size_t xb = dw && !xin ? align256((size_t)Q * g.C * sizeof(nh_bf16)) : 0;
  const size_t wb = dx ? align256(nw * sizeof(nh_bf16)) : 0;
  const size_t pb = dw && splits > 1 ? (size_t)splits * nw * sizeof(float) : 0;
  void *ws = NULL;
  if (dyb + xb + wb + pb &&
      moka_cuda_workspace(c, dyb + xb + wb + pb, "NHWC bf16 convolution backward", &ws))
    return -1;
  nh_bf16 *dyh = dyin ? (nh_bf16 *)dy : (nh_bf16 *)ws;
  nh_bf16 *xh = xin ? (nh_bf16 *)x : (nh_bf16 *)((char *)ws + dyb);
  nh_bf16 *wd = (nh_bf16 *)((char *)ws + dyb + xb);
  float *partial = pb ? (float *)((char *)ws + dyb + xb + wb) : NULL;
  if (!dyin && to_nhwc(c, (const float *)dy, g.num, g.OC, g.OHW, dyh)) return -1;
  if (dw) {
    if (!xin && to_nhwc(c, (const float *)x, g.num, g.C, g.HW, xh)) return -1;
    NhWgrad op = {g, dyh, xh, dw, partial};
    if (launch(c, op, g.OC, g.KHW * g.C, P, kchunk, splits, wbm, wbn, "nhwc wgrad")) return -1;
    if (partial && moka_cuda_split_reduce(c->stream, partial, splits, nw, dw)) return -1;
  }
  if (!dx) return 0;
  if (weights_bf16(c, w, g.OC, g.C, g.KHW, true, wd)) return -1;
  float *dxf32 = dxout ? NULL : (float *)dx;
  nh_bf16 *dxh = dxout ? (nh_bf16 *)dx : NULL;
  int bm, bn;
  if (g.SH == 1 && g.SW == 1) {
    nh_pick_tile(Q, g.C, sms, &bm, &bn);
    NhDgrad op = {{g, dyh, wd, dxf32, dxh}};
    return launch(c, op, Q, g.C, g.KHW * g.OC, g.KHW * g.OC, 1, bm, bn, "nhwc dgrad");
  }
  /* 1x1, unpadded, strided: only the strided pixels receive gradient (zero bits are 0 in
   * both formats) */
  const size_t dxbytes = (size_t)Q * g.C * (dxout ? sizeof(nh_bf16) : sizeof(float));
  if (cudaMemsetAsync(dx, 0, dxbytes, c->stream) != cudaSuccess)
    return moka_errorf("cudaMemsetAsync (nhwc dgrad, %zu bytes) failed on device %d: %s",
                       dxbytes, c->device, cudaGetErrorString(cudaGetLastError()));
  nh_pick_tile(P, g.C, sms, &bm, &bn);
  NhDgrad1x1 op = {{g, dyh, wd, dxf32, dxh}};
  return launch(c, op, P, g.C, g.OC, g.OC, 1, bm, bn, "nhwc dgrad 1x1");
}

extern "C" int moka_cuda_nhwc_conv_backward(MokaCuda *c, const MokaConvGeom *cg, const float *x,
                                            const float *w, const float *dy, float *dx,
                                            float *dw) {
  return moka_cuda_nhwc_conv_backward_fmt(c, cg, x, MOKA_ACT_F32_NCHW, w, dy, MOKA_ACT_F32_NCHW,
                                          dx, MOKA_ACT_F32_NCHW, dw);
}
#endif /* MOKA_NHWC_EMULATE */
