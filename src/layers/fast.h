/* fast.h — what the fast CPU backend (MOKA_BACKEND_CPU_FAST) shares between
 * its layers: one thread pool, one GEMM, one workspace.
 *
 * Threads. There is a single pool: OpenMP's. OpenBLAS is switched to one
 * thread (once, by fast_init) and fast_gemm splits a GEMM into column (or
 * row) blocks that the OpenMP threads run side by side, each block one
 * single-threaded cblas_sgemm (or a call of moka's own AVX-512 GEMM). So OpenBLAS's own threads never compete with
 * OpenMP's (no oversubscription, no spinning pool stealing the other's
 * cores), and BLAS is only ever called from inside a parallel region while
 * it is single-threaded. The reference backend never calls fast_init: when
 * only the reference runs, OpenBLAS keeps its own threading.
 *
 * Workspace. Scratch buffers (column buffers, gathered/transposed blocks)
 * come from fast_workspace(slot, count): a few grow-only buffers per thread,
 * shared by every layer of every net that runs on that thread, so all
 * convolutions together hold one column buffer sized to the largest. A
 * buffer is valid until the next fast_workspace call for the same slot;
 * layers never keep them across calls.
 *
 * Loops. Element-wise loops use `#pragma omp parallel for simd` over ranges
 * of at least FAST_GRAIN elements (smaller ones run on one thread: a parallel
 * region costs microseconds).
 *
 * On a machine where other processes keep the cores busy, libgomp's spinning
 * waits make every parallel region cost a time slice: run with
 * OMP_WAIT_POLICY=passive there (docs/performance.md).
 *
 * Internal to src/layers, except the precision functions, which the CLI
 * uses for --precision (src/cli/common.c).
 */
#ifndef MOKA_LAYERS_FAST_H
#define MOKA_LAYERS_FAST_H

#include <stdbool.h>
#include <stddef.h>

/* Work below this many elements runs single-threaded. */
#define FAST_GRAIN 32768

/* Workspace slots (independent buffers): the convolution's column buffer,
 * its output/gradient buffer, its per-thread weight-gradient buffer, and
 * the packed panels of moka's own GEMMs (gemm_f32.c, gemm_bf16.c). */
enum {
  FAST_WS_COL = 0,
  FAST_WS_OUT = 1,
  FAST_WS_AUX = 2,
  FAST_WS_PACK_A = 3,
  FAST_WS_PACK_B = 4,
  FAST_WS_WINO = 5, /* Winograd's transformed weights or weight gradient (conv_winograd.c) */
  FAST_WS_WPACK = 6, /* the bf16 convolution's packed weights (convolution_bf16.c) */
  FAST_WS_NHWC_X = 7, /* the channels-last convolution layer (convolution_nhwc.c): */
  FAST_WS_NHWC_Y = 8, /*   an input, output or gradient in the other format, */
  FAST_WS_NHWC_D = 9, /*   a subsampled input or a strided layer's gradient */
  FAST_WS_SLOTS = 10
};

/* Precision of the convolution and inner-product GEMMs: fp32 (the default,
 * Caffe-exact), or bf16 inputs with fp32 accumulation (opt-in:
 * MOKA_PRECISION=bf16 or the CLI's --precision=bf16): on the fast CPU
 * backend with AVX-512 BF16, on CUDA with tensor cores (kernels/conv_igemm.cu);
 * or tf32 (CUDA only: inputs rounded to TF32, fp32 accumulation). Everything
 * else (BatchNorm statistics, the weights, the gradients, the solver) stays
 * fp32. Process-wide, like OpenBLAS's thread count. The name is checked when
 * set; whether the backend can run it, by fast_check_precision. */
typedef enum FastPrecision { FAST_FP32 = 0, FAST_BF16 = 1, FAST_TF32 = 2 } FastPrecision;

/* Once per process: OpenBLAS to one thread (see above), and the choice of
 * the fp32 GEMM: moka's own AVX-512 kernel (gemm_f32.c) on a CPU with
 * AVX-512, whatever kernel OpenBLAS runs; OpenBLAS on other CPUs.
 * MOKA_SGEMM=openblas|moka forces one (for benchmarks). Cheap to call again. */
void fast_init(void);
/* Which fp32 GEMM the fast backend uses (for logs). */
const char *fast_sgemm_name(void);

/* The OpenMP pool size (>= 1). */
int fast_threads(void);

/* Set the GEMM precision by name ("fp32", "bf16" or "tf32"); -1 with a
 * message for an unknown name. */
int fast_set_precision(const char *name);
/* 0 when the current precision can run on the CPU (cuda false: bf16 needs
 * AVX-512 BF16, tf32 is refused) or on CUDA (cuda true: every precision);
 * else -1 with a message saying why. */
int fast_check_precision(bool cuda);
/* The current precision; the first call reads MOKA_PRECISION (an invalid
 * value there is reported once and leaves fp32). */
FastPrecision fast_precision(void);
const char *fast_precision_name(FastPrecision p);
/* Does this CPU have AVX-512 BF16 (and AVX-512 F/BW)? */
bool fast_bf16_supported(void);
/* Do the bf16 GEMMs multiply AMX tiles (the CPU has AMX-BF16, Linux granted the tile state and
 * MOKA_AMX is not 0; decided once per process)? Else VDPBF16PS vectors. See amx.h. */
bool fast_amx_active(void);

/* A scratch buffer of at least `count` floats (64-byte aligned), this
 * thread's buffer for `slot`; its contents are undefined. NULL with
 * moka_errorf() naming `what` when it cannot be allocated. */
float *fast_workspace(int slot, size_t count, const char *what);

/* Free this thread's workspace (a later call allocates again). */
void fast_workspace_release(void);

/* The start of moka's own GEMMs (C (M,N), leading dimension ldc): beta other
 * than 0 and 1 scales C first (the kernels then accumulate); with K <= 0
 * there is nothing to multiply (C = beta * C). Returns true when the GEMM is
 * then done. */
bool fast_gemm_prepare_c(int M, int N, int K, float beta, float *C, int ldc);

/* Chunks with a weight gradient, deterministically: runs fn(ctx, k, wacc) for
 * k = 0..n_chunks-1 on T threads, thread t taking chunks t, t+T, ... (a
 * fixed assignment). Thread 0 accumulates into wdiff, the others into their
 * own zeroed buffers (slot FAST_WS_AUX, wcount floats), added to wdiff
 * afterwards in thread order: the same sums on every run. wdiff may be NULL
 * (fn then gets NULL). fn returns 0 / non-zero; 0 / -1. */
int fast_chunked_wgrad(int T, int n_chunks, float *wdiff, size_t wcount,
                       int (*fn)(void *ctx, int k, float *wacc), void *ctx);
/* The same without the final additions: parts[t] (t < T, parts[0] = wdiff) gets thread t's
 * sums, for the caller to add in thread order in a pass of its own (valid until the threads'
 * next FAST_WS_AUX workspace). */
int fast_chunked_wgrad_parts(int T, int n_chunks, float *wdiff, size_t wcount,
                             int (*fn)(void *ctx, int k, float *wacc), void *ctx,
                             float **parts);
/* The same with no buffer zeroed first: fn(ctx, k, wacc, fresh) gets fresh true for its
 * thread's first chunk and then writes its sums instead of adding them (a thread with no
 * chunk has its buffer zeroed); wacc0 is thread 0's buffer, parts[t] thread t's. */
int fast_chunked_wgrad_fresh(int T, int n_chunks, float *wacc0, size_t wcount,
                             int (*fn)(void *ctx, int k, float *wacc, bool fresh), void *ctx,
                             float **parts);

/* C (M,N) = alpha * op(A) * op(B) + beta * C, row-major with leading
 * dimensions, op(A) (M,K) and op(B) (K,N) as in moka_gemm. Runs on the
 * OpenMP pool: blocks of columns (or rows, when N is small) in parallel,
 * each a single-threaded OpenBLAS call. Called from inside a parallel region
 * it runs on the calling thread only. With the bf16 precision it is
 * fast_gemm_bf16. Returns 0, or -1 with moka_errorf (bf16 workspace). */
int fast_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* moka's own AVX-512 fp32 GEMM (gemm_f32.c), the same interface: -1 with a
 * message on CPUs without AVX-512F. */
int fast_gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);
bool fast_avx512_supported(void);

/* For tests: false makes fast_gemm_f32 pack every panel of op(A)
 * (MOKA_GEMM_PACK=1), true (the default) reads the full panels of a
 * transposed A in place; the results are the same bit for bit. */
void fast_gemm_f32_set_in_place(bool on);
/* Whether layers may keep weights packed for fast_gemm_f32_prepacked
 * (moka's kernel): AVX-512, and MOKA_SGEMM not forcing OpenBLAS. */
bool fast_prepacked_allowed(void);

/* op(A) (M, K) packed once for fast_gemm_f32_prepacked (weights that do not
 * change between calls): fast_gemm_f32_packed_size floats at Ap. AVX-512
 * only, as fast_gemm_f32. */
size_t fast_gemm_f32_packed_size(int M, int K);
void fast_gemm_f32_pack(bool trans_a, int M, int K, const float *A, int lda, float *Ap);
/* C (M, N) = op(A) x B (K, N), op(A) packed by fast_gemm_f32_pack: the same
 * values as fast_gemm_f32 with alpha 1, beta 0, B not transposed. */
int fast_gemm_f32_prepacked(int M, int N, int K, const float *Ap, const float *B, int ldb,
                            float *C, int ldc);

/* The same with bf16-rounded inputs and fp32 accumulation (gemm_bf16.c):
 * AVX-512 BF16 only (-1 with a message on other CPUs). */
int fast_gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C,
                   int ldc);

#endif
