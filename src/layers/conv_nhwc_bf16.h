/* conv_nhwc_bf16.h — channels-last bf16 convolution kernels for the fast CPU
 * backend (AVX-512 BF16), what its bf16 channels-last training path runs;
 * measured against the NCHW bf16 layers (convolution_bf16.c) by
 * tests/bench/nhwc_bf16.sh and checked by tests/unit/test_nhwc_bf16.c; the
 * Convolution layer runs them on bf16 channels-last blobs (convolution_nhwc.c;
 * docs/performance.md, "bf16 channels-last on the CPU").
 *
 * Why. VDPBF16PS multiplies pairs along the reduction dimension. With
 * activations stored bf16 and channels last (pixel p's C channels
 * consecutive), the pairs of a 1x1 convolution's reduction (channels) are
 * already adjacent in memory: the forward and the data gradient broadcast
 * their A operand straight from the activations (no packing, half the bytes
 * of fp32), and only the weights are packed, once per call. The weight
 * gradient reduces over pixels: its two packs interleave two consecutive
 * pixel rows (sequential reads, no transposes), where the NCHW path
 * transposes 16x16 blocks of fp32.
 *
 * Layout: a tensor is (P, C) row-major with P = N*H*W pixels, bf16 as
 * uint16 (round to nearest even, denormals to zero: VCVTNEPS2BF16, the
 * rounding of every bf16 path in moka). The reduction dimension of every
 * in-place operand must be even.
 *
 * Where the CPU has AMX-BF16 the same functions multiply AMX tiles (amx.h), with the same
 * packed weights and results within the same bounds (fp32 sums of the same bf16 products).
 *
 * Callers check fast_bf16_supported() first. Internal to src/layers. */
#ifndef MOKA_LAYERS_CONV_NHWC_BF16_H
#define MOKA_LAYERS_CONV_NHWC_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* dwords of a packed B (K, N) (32-column panels of K/2 pairs; K even). */
size_t nhwc_bf16_packed_b_size(int K, int N);

/* The weights w (OC, C) fp32, Caffe's (OC, C, 1, 1), packed as the forward's
 * B = w^T (K = C, N = OC), or as the data gradient's B = w (K = OC, N = C). */
void nhwc_bf16_pack_fwd(const float *w, int OC, int C, int32_t *out);
void nhwc_bf16_pack_dgrad(const float *w, int OC, int C, int32_t *out);

/* y (P, N) fp32, or y16 bf16 (the other NULL; row stride ldy) = a (P, K) x
 * B, a bf16 read in place (row
 * stride lda elements, K even), B packed as above. The forward (a = x,
 * K = C, N = OC) and the data gradient (a = dy, K = OC, N = C) of a 1x1
 * stride-1 convolution. On the OpenMP pool (rows split); 0, or -1 with
 * moka_errorf when K or lda is odd. */
int nhwc_bf16_gemm(const uint16_t *a, size_t lda, int P, int K, const int32_t *bp, int N,
                   float *y, uint16_t *y16, size_t ldy);

/* dw (OC, C) += dy^T x x summed over the P pixels: dy (P, OC), x (P, C),
 * bf16. On the pool in chunks of pixels, each thread's sums added to dw in
 * thread order (fast_chunked_wgrad: the same sums on every run). 0, or -1
 * with moka_errorf (workspace). */
int nhwc_bf16_wgrad(const uint16_t *dy, const uint16_t *x, int P, int OC, int C, float *dw);

/* ---- any kernel size, stride and pad (ResNet's 3x3 layers) ---- */

/* A convolution's geometry, channels last: x (N, H, W, C), y (N, OH, OW,
 * OC), w (OC, C, KH, KW) as Caffe stores it. No groups, no dilation. */
typedef struct NhwcGeom {
  int N, H, W, C, OC, KH, KW, SH, SW, PH, PW, OH, OW;
} NhwcGeom;

/* g's output size from the rest, as Caffe computes it. */
void nhwc_geom_finish(NhwcGeom *g);

/* The forward's B (K = KH*KW*C ordered (kh, kw, c), N = OC) from w; 0, or
 * -1 with moka_errorf (workspace). */
size_t nhwc_bf16_conv_packed_size(const NhwcGeom *g);
int nhwc_bf16_pack_conv_fwd(const NhwcGeom *g, const float *w, int32_t *out);
/* y (N*OH*OW, OC) fp32, or y16 bf16 (the other NULL) = the convolution of
 * x (bf16, read in place; C even). On the pool; 0, or -1 with moka_errorf
 * (odd C, workspace). */
int nhwc_bf16_conv_fwd(const NhwcGeom *g, const uint16_t *x, const int32_t *bp, float *y,
                       uint16_t *y16);
/* The same plus bias (OC fp32, NULL: none), added to each output's sum before it is
 * stored (and rounded). */
int nhwc_bf16_conv_fwd_bias(const NhwcGeom *g, const uint16_t *x, const int32_t *bp,
                            const float *bias, float *y, uint16_t *y16);
/* db (OC) += the sum of dy (P, OC) bf16 over the pixels: fp32 sums of fixed runs of pixels,
 * added in order in double (the same on any number of threads). 0, or -1 (workspace). */
int nhwc_bf16_bias_grad(const uint16_t *dy, long P, int OC, float *db);

/* The data gradient of a stride-1 convolution is the forward convolution
 * of dy by the flipped kernel: nhwc_bf16_dgrad_geom gives that
 * convolution's geometry (input dy: C = OC, OC = C, pad KH-1-PH), and
 * nhwc_bf16_pack_conv_dgrad its B from w (0 / -1 as above); then nhwc_bf16_conv_fwd(dy) is
 * dx (N*H*W, C). Stride 1 only (-1 from dgrad_geom otherwise). */
int nhwc_bf16_dgrad_geom(const NhwcGeom *g, NhwcGeom *d);
int nhwc_bf16_pack_conv_dgrad(const NhwcGeom *g, const float *w, int32_t *out);

/* dw (OC, C, KH, KW) += the weight gradient from dy (N*OH*OW, OC) and x,
 * bf16: per tap a GEMM over the pixels (dy packed once per chunk of pixels,
 * x's shifted rows packed per tap). On the pool, deterministic; 0, or -1
 * with moka_errorf (workspace). */
int nhwc_bf16_conv_wgrad(const NhwcGeom *g, const uint16_t *dy, const uint16_t *x, float *dw);
/* ---- the stem: few input channels (ResNet's conv1: 3, stored as 4) ---- */

/* Whether g (C the stored, even channel count) is one: C < 16, KW*C <= 64, <= 64 taps. */
bool nhwc_bf16_stem_fits(const NhwcGeom *g);
/* Its input xp (N, H+2PH, W+2PW, C) bf16, zero-padded: values, and from x (N, C_x, H, W)
 * fp32 (channels past C_x zero too). */
size_t nhwc_bf16_stem_input_size(const NhwcGeom *g);
void nhwc_bf16_stem_input(const float *x, int C_x, const NhwcGeom *g, uint16_t *xp);
/* The forward from xp (weights packed by nhwc_bf16_pack_conv_fwd; bias as above): the same
 * sums as nhwc_bf16_conv_fwd on the unpadded input, a tile row per kernel row. */
int nhwc_bf16_stem_fwd(const NhwcGeom *g, const uint16_t *xp, const int32_t *bp,
                       const float *bias, float *y, uint16_t *y16);
/* dw (OC, dw_c, KH, KW) += the weight gradient from dy and xp, dw_c <= C (the channels past
 * it are padding, their gradient dropped): one GEMM over whole patches (KH*KW*C columns). */
int nhwc_bf16_stem_wgrad(const NhwcGeom *g, const uint16_t *dy, const uint16_t *xp, int dw_c,
                         float *dw);

/* dst[i] = bf16(src[i]), i < n; on the pool. */
void nhwc_bf16_round(const float *src, size_t n, uint16_t *dst);

/* ---- layouts (on the pool; nhwc_layout.c, as are nhwc_bf16_round, nhwc_bf16_stem_input and
 * nhwc_bf16_bias_grad) ---- */

/* x (N, C, S) fp32 -> out (N, S, C) bf16; _pad: out (N, S, Cp), Cp > C only when C is
 * odd (Cp = C + 1, the channels past C zero). */
void nhwc_bf16_from_nchw(const float *x, size_t N, size_t C, size_t S, uint16_t *out);
void nhwc_bf16_from_nchw_pad(const float *x, size_t N, size_t C, size_t S, size_t Cp,
                             uint16_t *out);
/* y (N, S, C) fp32 or y16 (N, S, C) bf16 (the other NULL) -> out (N, C, S) fp32. */
void nhwc_to_nchw(const float *y, const uint16_t *y16, size_t N, size_t C, size_t S, float *out);
/* out (N, OH, OW, C) = x (N, H, W, C) at rows oh*SH, columns ow*SW (bf16). */
void nhwc_bf16_subsample(const uint16_t *x, const NhwcGeom *g, uint16_t *out);
/* The strided 1x1 data gradient's spreading: d (N*OH*OW, C) values (fp32 d
 * or bf16 d16) put at their pixels (oh*SH, ow*SW) of dx (N, H, W, C), bf16
 * (dx16) or, as fp32 NCHW (dxf), (N, C, H, W); every other value zero. */
void nhwc_spread_strided(const float *d, const uint16_t *d16, const NhwcGeom *g, uint16_t *dx16,
                         float *dxf);

#endif
