/* moka_cuda.h — the C interface of moka's CUDA backend (kernels/<op>.cu).
 *
 * One op per .cu file, its kernels and its launcher side by side; this header
 * is all that the C code in src/ sees. Conventions:
 *
 *   - Every launcher takes the CUDA stream it runs on explicitly (or the
 *     MokaCuda context, for the ops that need cuBLAS/cuDNN or scratch
 *     memory) and returns 0, or -1 after moka_errorf() with the failing call,
 *     file:line and device (the caller adds the layer's name).
 *   - Launchers only enqueue work: nothing waits for the GPU except the
 *     copies to the host (moka_d2h), which say so. With MOKA_CUDA_SYNC=1 in
 *     the environment (or a DEBUG=1 build) every launch is followed by a
 *     stream synchronisation, so that a fault is reported by the launch that
 *     caused it.
 *   - Precision: fp32 everywhere, comparable with Caffe and the CPU
 *     reference. TF32 is OFF: cuBLAS runs in CUBLAS_DEFAULT_MATH (which never
 *     uses TF32 for SGEMM unless NVIDIA_TF32_OVERRIDE=1 forces it; the context
 *     warns when that variable is set) and cuDNN convolutions in
 *     CUDNN_FMA_MATH (cuDNN's CUDNN_DEFAULT_MATH *permits* TF32 on Ampere and
 *     later, so it is not used).
 *     Opt-in bf16 / TF32 (--precision, MOKA_PRECISION; issue 7): only the
 *     convolutions and inner products change (see "Convolution and inner
 *     product in bf16 / TF32" below): inputs rounded as they are read,
 *     fp32 accumulation, fp32 outputs; blobs, master weights, gradients,
 *     BatchNorm statistics, loss and solver stay fp32.
 *   - Blobs: NCHW float32, the same layout as the host blobs; copies between
 *     host and device are explicit calls (moka_h2d / moka_d2h), never hidden.
 */
#ifndef MOKA_CUDA_H
#define MOKA_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device and context ------------------------------------------------------------------ */

/* Select `device` for this thread and check that it can run moka's kernels:
 * a device exists, the driver is recent enough for this build's runtime, the
 * compute capability is one this binary was compiled for (sm_80 and later).
 * On failure writes one clear message into err (n bytes) and returns -1. */
int moka_cuda_init(int device, char *err, size_t n);

/* The state every CUDA launch needs: one stream, the library handles and a
 * shared scratch buffer (im2col columns, cuDNN workspace). Owned by the net
 * (net_to_device) or by a test; every layer of the net points at it. */
typedef struct MokaCuda {
  int device;
  char device_name[256];
  int cc_major, cc_minor;
  cudaStream_t stream;
  struct cublasContext *cublas;   /* cublasHandle_t, bound to `stream` */
  struct cudnnContext *cudnn;     /* cudnnHandle_t, made on first use (engine CUDNN) */
  void *work;                     /* (work_bytes) shared scratch */
  size_t work_bytes;
  bool conv_engine_cudnn;         /* MOKA_CONV_ENGINE=cudnn: every Convolution via cuDNN */
  bool conv_engine_auto;          /* MOKA_CONV_ENGINE=auto: each Convolution's forward and
                                     backward via the faster engine, timed once per shape */
} MokaCuda;

/* moka_cuda_init(device) + stream + cuBLAS handle (fp32, TF32 off). Reads
 * MOKA_CONV_ENGINE (moka | cudnn | auto; default moka). NULL + moka_errorf(). */
MokaCuda *moka_cuda_create(int device);
void moka_cuda_destroy(MokaCuda *c);
/* The cuDNN handle, made on the first call. 0 / -1. */
int moka_cuda_cudnn(MokaCuda *c);
/* At least `bytes` of shared scratch at *out (grown, never shrunk; growing
 * synchronises the stream). `what` names the user in the OOM message. */
int moka_cuda_workspace(MokaCuda *c, size_t bytes, const char *what, void **out);
/* Wait for everything queued on the context's stream; report any fault. */
int moka_cuda_sync(MokaCuda *c);
/* true when every launch must be followed by a synchronisation
 * (MOKA_CUDA_SYNC=1, or a DEBUG build). */
bool moka_cuda_debug_sync(void);

/* ---- errors ------------------------------------------------------------------------------ */

/* Record "CUDA error ... in <call> at <file>:<line> on device D (<name>)";
 * returns -1. */
int moka_cuda_fail(int err, const char *call, const char *file, int line);
/* After a kernel launch: the launch error, and with the debug switch the
 * execution error (stream synchronised). 0 / -1. */
int moka_cuda_launched(cudaStream_t s, const char *kernel, const char *file, int line);

#define MOKA_CUDA_CHECK(call)                                                 \
  do {                                                                        \
    cudaError_t moka_e_ = (call);                                             \
    if (moka_e_ != cudaSuccess)                                               \
      return moka_cuda_fail((int)moka_e_, #call, __FILE__, __LINE__);         \
  } while (0)
#define MOKA_CUDA_LAUNCHED(stream, kernel)                                    \
  do {                                                                        \
    if (moka_cuda_launched((stream), (kernel), __FILE__, __LINE__)) return -1; \
  } while (0)

/* ---- memory ------------------------------------------------------------------------------ */

/* cudaMalloc with an out-of-memory message that names `what`, the bytes
 * asked for, the free/total device memory, and the advice to lower the batch
 * size or raise iter_size. 0 / -1. bytes == 0 gives *p = NULL. */
int moka_dev_alloc(void **p, size_t bytes, const char *what);
/* The same, zero-filled, and complete when it returns (it waits for the
 * device: for set-up paths, not for every pass). */
int moka_dev_calloc(void **p, size_t bytes, const char *what);
void moka_dev_free(void *p);
/* Free and total memory of the current device, in bytes. */
int moka_dev_mem_info(size_t *free_bytes, size_t *total_bytes);

/* A growable device buffer (per-layer scratch: BatchNorm's normalised
 * output, pooling's argmax, ...). Zero-initialised struct = empty. */
typedef struct DevBuf {
  void *ptr;
  size_t bytes;
} DevBuf;
/* Make b hold at least `bytes` (contents are lost when it grows). */
int moka_devbuf_reserve(DevBuf *b, size_t bytes, const char *what);
void moka_devbuf_free(DevBuf *b);

/* Copies on `stream`. moka_d2h waits for the copy (and so for everything
 * queued before it): the host may read dst when it returns. */
int moka_h2d(cudaStream_t s, void *dst, const void *src, size_t bytes);
int moka_d2h(cudaStream_t s, void *dst, const void *src, size_t bytes);
int moka_d2d(cudaStream_t s, void *dst, const void *src, size_t bytes);
/* `rows` rows of `row_bytes` each, from src (rows src_pitch apart) to dst
 * (rows dst_pitch apart), device to device. */
int moka_d2d_2d(cudaStream_t s, void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                size_t row_bytes, size_t rows);
int moka_dev_zero(cudaStream_t s, void *p, size_t bytes);

/* ---- GEMM (cuBLAS, fp32, TF32 off) -------------------------------------------------------- */

/* Row-major, as moka_gemm (src/moka_math.h):
 *   C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C
 * op(A) = A stored (M,K), or A^T with A stored (K,M); likewise B. */
int moka_cuda_gemm(MokaCuda *c, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                   const float *A, const float *B, float beta, float *C);
/* `batch` independent products C_i = op(A_i) op(B_i), X_i = X + i*stride_X
 * (stride 0: the same matrix for every i). */
int moka_cuda_gemm_strided(MokaCuda *c, bool trans_a, bool trans_b, int M, int N, int K,
                           float alpha, const float *A, long long stride_a, const float *B,
                           long long stride_b, float beta, float *C, long long stride_c,
                           int batch);
/* The same with explicit row-major leading dimensions (A (M,K) or (K,M) rows lda apart,
 * B likewise ldb, C (M,N) rows ldc apart): GEMMs on column slices of wider matrices. */
int moka_cuda_gemm_strided_ld(MokaCuda *c, bool trans_a, bool trans_b, int M, int N, int K,
                              float alpha, const float *A, int lda, long long stride_a,
                              const float *B, int ldb, long long stride_b, float beta, float *C,
                              int ldc, long long stride_c, int batch);

/* ---- per-channel reduction (shared by BatchNorm, Scale, conv/fc bias) ---------------------- */

/* out[d] (+)= (float) sum over n < outer, i < inner of a[n,d,i] * b[n,d,i]
 * (b NULL: of a alone), x viewed as (outer, D, inner); double accumulation.
 * accumulate: add into out (parameter gradients); else overwrite. */
int moka_cuda_channel_sum(cudaStream_t s, const float *a, const float *b, float *out,
                          size_t outer, size_t D, size_t inner, bool accumulate);

/* ---- elementwise ops ---------------------------------------------------------------------- */

/* ReLU: y = max(x,0) + slope*min(x,0); dx = dy * ((x > 0) + slope*(x <= 0)). */
int moka_cuda_relu_forward(cudaStream_t s, const float *x, float *y, size_t n, float slope);
int moka_cuda_relu_backward(cudaStream_t s, const float *x, const float *dy, float *dx, size_t n,
                            float slope);

/* y = x * scale[d] (+ bias[d]), x viewed as (outer, D, inner); bias may be
 * NULL; y may be x. */
int moka_cuda_scale_forward(cudaStream_t s, const float *x, const float *scale, const float *bias,
                            float *y, size_t outer, size_t D, size_t inner);
/* y += bias[d], y viewed as (outer, D, inner). */
int moka_cuda_bias_add(cudaStream_t s, float *y, const float *bias, size_t outer, size_t D,
                       size_t inner);

/* Eltwise pieces, each one pass in Caffe's order (eltwise.c):
 *   sum:    y = (first ? 0 : y) + coeff * x
 *   mul:    y = a * b                     (y may be a or b)
 *   div:    y = a / b
 *   scal:   y = coeff == 1 ? x : coeff * x
 *   max2:   y = a > b ? a : b, arg = a > b ? 0 : 1
 *   maxacc: where x > y: y = x, arg = k
 *   maxbwd: dx = arg == k ? dy : 0 */
int moka_cuda_eltwise_sum(cudaStream_t s, float *y, const float *x, float coeff, bool first,
                          size_t n);
int moka_cuda_mul(cudaStream_t s, const float *a, const float *b, float *y, size_t n);
int moka_cuda_div(cudaStream_t s, const float *a, const float *b, float *y, size_t n);
int moka_cuda_scal(cudaStream_t s, const float *x, float coeff, float *y, size_t n);
/* Split, in one pass each: forward y0 = y1 = x (any of y0, y1 may be NULL: skipped);
 * backward dx = dy0 + dy1 (the reference's copy then sum, bit for bit). Float4 accesses
 * where every pointer is 16-byte aligned. */
int moka_cuda_split_copy2(cudaStream_t s, const float *x, float *y0, float *y1, size_t n);
int moka_cuda_split_sum2(cudaStream_t s, const float *dy0, const float *dy1, float *dx, size_t n);
int moka_cuda_eltwise_max2(cudaStream_t s, const float *a, const float *b, float *y, int *arg,
                           size_t n);
int moka_cuda_eltwise_maxacc(cudaStream_t s, const float *x, float *y, int *arg, int k, size_t n);
int moka_cuda_eltwise_maxbwd(cudaStream_t s, const float *dy, const int *arg, int k, float *dx,
                             size_t n);

/* Dropout (TRAIN): y = x * mask * scale; the same call gives dx from dy.
 * The mask is drawn on the host from the net's random stream (dropout.c). */
int moka_cuda_dropout(cudaStream_t s, const float *x, const unsigned int *mask, float scale,
                      float *y, size_t n);

/* ---- BatchNorm (Caffe's formulas, src/layers/batchnorm.c) --------------------------------- */

/* x, y, x_norm (N,C,S); stats (3C): mean, var, std; b0, b1 (C), b2 (1) are
 * the layer's statistics blobs. use_global: normalise with b0/b2, b1/b2;
 * else with the batch's statistics and update b0..b2 (maf, bias_correction
 * = m/(m-1) computed by the caller in float as the reference does). */
int moka_cuda_bn_forward(cudaStream_t s, const float *x, float *y, float *x_norm, float *stats,
                         float *b0, float *b1, float *b2, size_t N, size_t C, size_t S, float eps,
                         float maf, float bias_correction, bool use_global);
/* dx from dy (may alias); work (2C) floats of scratch. */
int moka_cuda_bn_backward(cudaStream_t s, const float *dy, const float *x_norm,
                          const float *stats, float *dx, float *work, size_t N, size_t C,
                          size_t S, bool use_global);

/* ---- Fused BatchNorm -> Scale [-> Eltwise SUM] [-> ReLU] (kernels/bn_fused.cu) ------------- */
/* The math of src/net_fuse.h (per channel c of x (N,C,S), m = N*S):
 *   statistics as moka_cuda_bn_forward (batch: two passes, double sums, the
 *   running statistics b0..b2 updated; global: from b0..b2); stats (3C) =
 *   mean | var | std;
 *   xhat = (x - mean) / std;  z = xhat * gamma + beta (two roundings);
 *   no residual:   xz = relu(z) (or z without ReLU)
 *   residual:      xz = z;  y = relu((0 + b0) + b1), b0/b1 = z and r in the
 *                  Eltwise's bottom order (residual_first: z is bottom 0)
 *   backward, dy/y = the chain output's diff/data:
 *     dz = dy * ((y > 0) + slope*(y <= 0)) (relu_bw; else dz = dy)
 *     dr = dz;  per channel sdz = sum dz, sdzx = sum dz*xhat (double);
 *     dbeta += sdz, dgamma += sdzx;
 *     dx = (dz*gamma - mean_a - mean_b*xhat) / std  (batch; mean_a =
 *          (float)(gamma*sdz/m), mean_b = (float)(gamma*sdzx/m))
 *     dx = (dz*gamma) / std                         (global)
 * Each per-channel sum is split over several blocks (double partials, added
 * in a fixed order: deterministic). */
typedef struct MokaBnFusedGeom {
  size_t N, C, S;
  float eps, maf, bias_correction; /* bias_correction = m/(m-1) in float, by the caller */
  bool use_global;
  bool has_relu;       /* forward: apply the ReLU */
  bool relu_bw;        /* backward: apply the ReLU mask to dy */
  float slope;         /* the ReLU's negative_slope */
  int residual;        /* -1: none; 0: z is the Eltwise's bottom 0; 1: z is its bottom 1 */
} MokaBnFusedGeom;
/* Device scratch (bytes) the two calls need (the caller passes it as
 * `partials`, e.g. from moka_cuda_workspace). */
size_t moka_cuda_bn_fused_scratch_bytes(const MokaBnFusedGeom *g);
/* x (N,C,S) in; xz (N,C,S) out (may be x); y (N,C,S) the Eltwise/ReLU
 * output and r (N,C,S) the shortcut (residual only; else NULL); x_norm
 * (N,C,S) or NULL (not kept); stats (3C); b0, b1 (C), b2 (1) the BatchNorm
 * blobs; gamma (C), beta (C) or NULL. */
int moka_cuda_bn_fused_forward(cudaStream_t s, const MokaBnFusedGeom *g, const float *x,
                               float *xz, float *y, const float *r, float *x_norm, float *stats,
                               float *b0, float *b1, float *b2, const float *gamma,
                               const float *beta, void *partials);
/* dy, y (N,C,S) the chain output's diff and data (dy1: NULL, or a second diff the chain's
 * gradient is the sum with, dy + dy1: the two tops of the Split after the chain); x_norm
 * (N,C,S) and stats (3C) from the forward; gamma (C). Outputs, each NULL when not wanted:
 * dx (N,C,S, may be dy), dr (N,C,S, residual), dgamma, dbeta (C, accumulated). */
int moka_cuda_bn_fused_backward(cudaStream_t s, const MokaBnFusedGeom *g, const float *dy,
                                const float *dy1, const float *y, const float *x_norm,
                                const float *stats, const float *gamma, float *dx, float *dr,
                                float *dgamma, float *dbeta, void *partials);

/* stats (3C) = mean | var | std from BatchNorm's running statistics b0, b1 (C), b2 (1)
 * (use_global_stats), as the fused chains use them. */
int moka_cuda_bn_global_stats(cudaStream_t s, const float *b0, const float *b1, const float *b2,
                              float *stats, size_t C, float eps);

/* The same chain on channels-last bf16 activations (kernels/bn_nhwc.cu; the chains of nets
 * with MOKA_BF16_ACT=1, src/net_bf16.h): every activation buffer (N*S, C)
 * bf16 (moka_bf16: the bits of a bfloat16), 16-byte aligned, C a multiple of 8 up to
 * 2048; g->S the pixels per image; statistics and parameters fp32. Same arguments and
 * meanings as moka_cuda_bn_fused_forward / _backward; x_norm is kept in bf16. */
typedef uint16_t moka_bf16;
size_t moka_cuda_bn_nhwc_scratch_bytes(const MokaBnFusedGeom *g);
int moka_cuda_bn_nhwc_forward(cudaStream_t s, const MokaBnFusedGeom *g, const moka_bf16 *x,
                              moka_bf16 *xz, moka_bf16 *y, const moka_bf16 *r, moka_bf16 *x_norm,
                              float *stats, float *b0, float *b1, float *b2, const float *gamma,
                              const float *beta, void *partials);
int moka_cuda_bn_nhwc_backward(cudaStream_t s, const MokaBnFusedGeom *g, const moka_bf16 *dy,
                               const moka_bf16 *dy1, const moka_bf16 *y, const moka_bf16 *x_norm,
                               const float *stats, const float *gamma, moka_bf16 *dx,
                               moka_bf16 *dr, float *dgamma, float *dbeta, void *partials);

/* ---- Pooling (Caffe's rounding; src/pool_geom.h) ------------------------------------------ */

typedef struct MokaPoolGeom {
  int num, channels, height, width, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
} MokaPoolGeom;
/* is_max: y and argmax (int, index h*W+w) and, when mask != NULL, the argmax
 * as floats; else AVE. */
int moka_cuda_pool_forward(cudaStream_t s, const MokaPoolGeom *g, bool is_max, const float *x,
                           float *y, int *argmax, float *mask);
/* dx (overwritten) from dy. */
int moka_cuda_pool_backward(cudaStream_t s, const MokaPoolGeom *g, bool is_max, const float *dy,
                            const int *argmax, float *dx);

/* Global AVE pooling of a bf16 channels-last blob (kernels/pool_nhwc.cu; MOKA_BF16_ACT):
 * x (N*S, C) bf16 -> y (N, C) fp32 mean over the S pixels; dx (N*S, C) bf16 = dy / S. */
int moka_cuda_pool_ave_global_nhwc_forward(cudaStream_t s, size_t N, size_t C, size_t S,
                                           const moka_bf16 *x, float *y);
int moka_cuda_pool_ave_global_nhwc_backward(cudaStream_t s, size_t N, size_t C, size_t S,
                                            const float *dy, moka_bf16 *dx);

/* ---- Softmax, SoftmaxWithLoss, Accuracy --------------------------------------------------- */

/* x viewed as (outer, C, inner); y may be x. */
int moka_cuda_softmax_forward(cudaStream_t s, const float *x, float *y, size_t outer, size_t C,
                              size_t inner);
/* dx may be dy. */
int moka_cuda_softmax_backward(cudaStream_t s, const float *y, const float *dy, float *dx,
                               size_t outer, size_t C, size_t inner);

/* What a loss/accuracy kernel found, written on the device and copied back
 * by the layer (label errors are reported like the CPU's). */
typedef struct MokaLabelStatus {
  int bad_pos;       /* first position whose label is invalid, or INT_MAX */
  float bad_value;   /* its label value (set when bad_pos < INT_MAX) */
  int valid;         /* positions counted (not ignored) */
  float normalizer;  /* SoftmaxWithLoss: the loss normaliser used */
} MokaLabelStatus;

/* loss_param.normalization, as in caffe.proto (the layer maps it). */
typedef enum MokaLossNorm {
  MOKA_LOSS_NORM_FULL = 0,
  MOKA_LOSS_NORM_VALID = 1,
  MOKA_LOSS_NORM_BATCH_SIZE = 2,
  MOKA_LOSS_NORM_NONE = 3
} MokaLossNorm;

typedef struct MokaLossGeom {
  size_t outer, channels, inner;
  bool has_ignore;
  int ignore_label;
  MokaLossNorm norm;
} MokaLossGeom;
/* prob (outer,C,inner) already computed; loss[0] = -sum log(max(p, FLT_MIN)) / Z;
 * status (device) filled. */
int moka_cuda_softmax_loss_forward(cudaStream_t s, const MokaLossGeom *g, const float *prob,
                                   const float *label, float *loss, MokaLabelStatus *status);
/* dx = (prob - onehot) * dloss[0] / Z (Z from status), zero where ignored. */
int moka_cuda_softmax_loss_backward(cudaStream_t s, const MokaLossGeom *g, const float *prob,
                                    const float *label, const float *dloss,
                                    const MokaLabelStatus *status, float *dx);

/* top[0] = accuracy; per_class (C) when not NULL; counts: (2C) int scratch. */
int moka_cuda_accuracy(cudaStream_t s, const float *x, const float *label, size_t outer,
                       size_t C, size_t inner, unsigned top_k, bool has_ignore, int ignore_label,
                       float *top, float *per_class, int *counts, MokaLabelStatus *status);

/* ---- Convolution ---------------------------------------------------------------------------- */

typedef struct MokaConvGeom {
  int num, channels, height, width;   /* bottom (N,C,H,W) */
  int num_output, group;              /* top (N,OC,OH,OW) */
  int out_h, out_w;
  int kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
} MokaConvGeom;

/* moka's engine: im2col + cuBLAS SGEMM (1x1/stride 1/no pad: the GEMM
 * straight on the NCHW blob; 3x3/stride 1: Winograd F(2x2,3x3) for forward and
 * data gradient, kernels/conv_winograd.cu). w (OC, C/G, KH, KW), bias (OC) or NULL. */
int moka_cuda_conv_forward(MokaCuda *c, const MokaConvGeom *g, const float *x, const float *w,
                           const float *bias, float *y);
/* dw (+)= and db (+)= (accumulated, db may be NULL); dx (overwritten) when
 * not NULL. */
int moka_cuda_conv_backward(MokaCuda *c, const MokaConvGeom *g, const float *x, const float *w,
                            const float *dy, float *dx, float *dw, float *db);

/* Winograd F(2x2,3x3) (kernels/conv_winograd.cu): whether it takes this geometry (group 1,
 * 3x3, stride 1, dilation 1, equal pads 0..2; not with MOKA_CONV_WINOGRAD=0); the forward
 * (y overwritten, + bias when not NULL) and the data gradient (dx overwritten). */
bool moka_cuda_winograd_applies(const MokaConvGeom *g);
int moka_cuda_winograd_forward(MokaCuda *c, const MokaConvGeom *g, const float *x,
                               const float *w, const float *bias, float *y);
int moka_cuda_winograd_backward_data(MokaCuda *c, const MokaConvGeom *g, const float *w,
                                     const float *dy, float *dx);
/* The weight gradient by Winograd F(3x3,2x2), dw += (MOKA_CONV_WINOGRAD_WGRAD=1, off by
 * default; _applies: the switch and moka_cuda_winograd_applies). */
bool moka_cuda_winograd_wgrad_applies(const MokaConvGeom *g);
int moka_cuda_winograd_backward_weights(MokaCuda *c, const MokaConvGeom *g, const float *x,
                                        const float *dy, float *dw);

/* cuDNN engine: descriptors and algorithms, made for one geometry (remade
 * when it changes). */
typedef struct MokaCudnnConv MokaCudnnConv;
int moka_cudnn_conv_forward(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                            const float *x, const float *w, const float *bias, float *y);
int moka_cudnn_conv_backward(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                             const float *x, const float *w, const float *dy, float *dx,
                             float *dw, float *db);
void moka_cudnn_conv_free(MokaCudnnConv *plan);

/* ---- Convolution and inner product in bf16 / TF32 (issue 7: --precision on CUDA) ---------- */
/* conv_igemm.cu, conv_cudnn.cu (the _prec functions), gemm_lowp.cu.
 * MOKA_CONV_FP32 is Caffe-exact fp32 (the functions above). BF16: inputs
 * (x, W, dy) rounded to bf16 (nearest even) as they are read, products
 * accumulated in fp32, outputs and gradients written in fp32 (the fp32
 * master weights, fp32 gradients, BatchNorm untouched). TF32: the same with
 * inputs rounded to TF32 (10-bit mantissa). sm_80 and later. */
typedef enum MokaConvPrec {
  MOKA_CONV_FP32 = 0,
  MOKA_CONV_BF16 = 1,
  MOKA_CONV_TF32 = 2
} MokaConvPrec;
const char *moka_conv_prec_name(MokaConvPrec p);

/* moka's implicit-GEMM convolution on tensor cores (WMMA; bf16 or tf32,
 * not fp32): no column buffer; bias added in the epilogue. Same contract as
 * moka_cuda_conv_forward / _backward: dw and db accumulate (+=), dx is
 * overwritten; the weight gradient is deterministic (split-K partials
 * reduced in a fixed order). */
int moka_cuda_igemm_conv_forward(MokaCuda *c, const MokaConvGeom *g, MokaConvPrec prec,
                                 const float *x, const float *w, const float *bias, float *y);
int moka_cuda_igemm_conv_backward(MokaCuda *c, const MokaConvGeom *g, MokaConvPrec prec,
                                  const float *x, const float *w, const float *dy, float *dx,
                                  float *dw, float *db);
/* Benchmarks only: every later igemm launch uses BM x BN tiles (64 or 128
 * each); 0, 0 restores the automatic choice. Process-wide. 0 / -1. */
int moka_cuda_igemm_force_tile(int bm, int bn);

/* moka's bf16 convolution through channels-last copies (conv_nhwc.cu: cp.async, ldmatrix,
 * mma.sync m16n8k16): opt-in with MOKA_CONV_NHWC=1; moka_cuda_igemm_conv_forward/_backward
 * send it each direction it applies to (group 1, C and OC multiples of 8; the data gradient
 * also needs stride 1, or a 1x1 unpadded kernel). Same contract as the igemm functions;
 * _backward does the data gradient when dx is not NULL and the weight gradient when dw is
 * not NULL (no bias gradient). _force: -1 follows the environment (default), 0 off, 1 on
 * (tests and benchmarks; process-wide). */
typedef enum MokaNhwcDir { MOKA_NHWC_FWD = 0, MOKA_NHWC_DGRAD = 1, MOKA_NHWC_WGRAD = 2 } MokaNhwcDir;
bool moka_cuda_nhwc_applies(const MokaConvGeom *g, MokaNhwcDir dir);
/* The geometry test alone (conv_nhwc_geom.h), whatever the switch says. */
bool moka_cuda_nhwc_geom_ok(const MokaConvGeom *g, MokaNhwcDir dir);
void moka_cuda_nhwc_force(int mode);
/* Benchmarks only: every later NHWC launch uses BM x BN tiles (64 or 128 each); 0, 0
 * restores the automatic choice. Process-wide. 0 / -1. */
int moka_cuda_nhwc_force_tile(int bm, int bn);
int moka_cuda_nhwc_conv_forward(MokaCuda *c, const MokaConvGeom *g, const float *x,
                                const float *w, const float *bias, float *y);
int moka_cuda_nhwc_conv_backward(MokaCuda *c, const MokaConvGeom *g, const float *x,
                                 const float *w, const float *dy, float *dx, float *dw);
/* The same with each activation in either format (channels-last bf16 activations read and
 * written as they are, no conversion; the convolutions of nets with MOKA_BF16_ACT=1,
 * src/net_bf16.h): MOKA_ACT_F32_NCHW (float*, the blobs' layout) or MOKA_ACT_BF16_NHWC
 * (moka_bf16* (N, H, W, C), 16-byte aligned). */
typedef enum MokaActFmt { MOKA_ACT_F32_NCHW = 0, MOKA_ACT_BF16_NHWC = 1 } MokaActFmt;
int moka_cuda_nhwc_conv_forward_fmt(MokaCuda *c, const MokaConvGeom *g, const void *x,
                                    MokaActFmt xf, const float *w, const float *bias, void *y,
                                    MokaActFmt yf);
int moka_cuda_nhwc_conv_backward_fmt(MokaCuda *c, const MokaConvGeom *g, const void *x,
                                     MokaActFmt xf, const float *w, const void *dy,
                                     MokaActFmt dyf, void *dx, MokaActFmt dxf, float *dw);

/* cuDNN in a given precision (FP32: exactly moka_cudnn_conv_forward/backward).
 * BF16: x, w, dy converted to bf16 in the shared workspace, CUDNN_DATA_BFLOAT16
 * tensors with fp32 compute (tensor-op math), outputs converted back to fp32
 * (the weight gradient is computed into bf16 by cuDNN, then added to dw in
 * fp32). TF32: fp32 tensors, CUDNN_DEFAULT_MATH (TF32 allowed; note that
 * NVIDIA_TF32_OVERRIDE=0 turns it back into fp32). The plan is remade when
 * the precision changes. */
int moka_cudnn_conv_forward_prec(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                                 MokaConvPrec prec, const float *x, const float *w,
                                 const float *bias, float *y);
int moka_cudnn_conv_backward_prec(MokaCuda *c, MokaCudnnConv **plan, const MokaConvGeom *g,
                                  MokaConvPrec prec, const float *x, const float *w,
                                  const float *dy, float *dx, float *dw, float *db);

/* moka_cuda_gemm in a given precision (gemm_lowp.cu): FP32 is moka_cuda_gemm;
 * BF16 converts A and B to bf16 in the shared workspace and runs
 * cublasGemmEx (bf16 inputs, fp32 C, CUBLAS_COMPUTE_32F); TF32 runs
 * cublasGemmEx on the fp32 inputs with CUBLAS_COMPUTE_32F_FAST_TF32. */
int moka_cuda_gemm_prec(MokaCuda *c, MokaConvPrec prec, bool trans_a, bool trans_b, int M, int N,
                        int K, float alpha, const float *A, const float *B, float beta,
                        float *C);
/* n values fp32 -> bf16 (nearest even; dst holds n 2-byte values) and back
 * (gemm_lowp.cu; the benchmark uses them to time the conversions the cuDNN
 * bf16 engine pays). */
int moka_cuda_to_bf16(cudaStream_t s, const float *src, void *dst, size_t n);
int moka_cuda_from_bf16(cudaStream_t s, const void *src, float *dst, size_t n);

/* ---- SGD update over the flat parameter buffers ------------------------------------------- */

/* One segment per parameter blob: values [offset, offset+count). */
typedef struct MokaSgdSegment {
  size_t offset, count;
  float local_rate;   /* rate * lr_mult */
  float local_decay;  /* weight_decay * decay_mult */
} MokaSgdSegment;
/* Caffe's SGDSolver ApplyUpdate for every segment (see sgd.cu):
 *   g = diff * (1/iter_size)  (iter_size > 1)
 *   g = g + local_decay * w   (L2; L1: sign(w)); when local_decay != 0
 *   h = momentum * h;  h = h + local_rate * g;  diff = h;  w = w - diff
 * seg_dev: the segment table on the device (n_seg entries), filled by the
 * caller with moka_h2d. */
int moka_cuda_sgd_update(cudaStream_t s, float *w, float *diff, float *history,
                         const MokaSgdSegment *seg_dev, int n_seg, size_t total, float momentum,
                         int iter_size, bool l1);
/* Caffe's NesterovSolver, the same segments and regularisation (see
 * nesterov.cu), then with h_old = h:
 *   h = momentum * h;  h = h + local_rate * g
 *   u = -momentum * h_old;  u = u + (1 + momentum) * h;  diff = u;  w = w - diff */
int moka_cuda_nesterov_update(cudaStream_t s, float *w, float *diff, float *history,
                              const MokaSgdSegment *seg_dev, int n_seg, size_t total,
                              float momentum, int iter_size, bool l1);

/* ---- data transforms on the device (kernels/transform.cu) ------------------------------ */
#include "data/raw_batch.h"

/* The DataTransformer's constants for moka_cuda_transform (device pointers). */
typedef struct MokaTransformParams {
  int num, channels, out_h, out_w;   /* top (N,C,OH,OW) */
  float scale;
  const float *mean;                 /* (C,MH,MW) mean file on the device, or NULL */
  int mean_h, mean_w;                /* = every image's (H,W) when mean is set */
  const float *mean_values;          /* [n_mean_values] on the device, or NULL */
  int n_mean_values;                 /* 0, 1 or C */
} MokaTransformParams;
/* A raw batch (src/data/raw_batch.h) already on the device, `batch` = its
 * start (the items at 0, image i at batch + items[i].offset) -> y (N,C,OH,OW):
 *   y[i][c][h][mirror ? OW-1-w : w] = (x - mean) * scale
 * with x = image i's uint8 pixel (c, h_off+h, w_off+w) as float, mean the mean
 * file at that position, or mean_value[c], or none (y = x * scale): the CPU
 * transformer's float operations in its order (bit-identical; oracle:
 * transform_apply_raw_host). labels (N), unless NULL: items[i].label. */
int moka_cuda_transform(cudaStream_t s, const MokaTransformParams *p, const uint8_t *batch,
                        float *y, float *labels);

#ifdef __cplusplus
}
#endif

#endif
