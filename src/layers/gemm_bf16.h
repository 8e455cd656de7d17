/* gemm_bf16.h — the lower level of the bf16 GEMM (gemm_bf16.c) for callers
 * that pack their own operands: the bf16 convolution (convolution_bf16.c)
 * packs its weights once per layer call and writes its im2col columns
 * straight into the packed B panels, with no fp32 column buffer;
 * fast_gemm_bf16 is this with A packed whole and B read from a matrix.
 *
 *   C (M,N) (+)= alpha A (M,K) x B (K,N), bf16 products summed in fp32
 *
 * A is packed whole, in KC-blocks of MR-row micro-panels (bf16_pack_a); B is
 * packed a block at a time (KC values of K x up to NC columns) by a
 * callback into BF16_NR-column micro-panels, [kp][BF16_NR] dwords each, a
 * dword holding (B(2kp,n), B(2kp+1,n)) as bf16, zero past N and past an odd
 * K. AVX-512 BF16 only: callers check fast_bf16_supported() first.
 * Internal to src/layers. */
#ifndef MOKA_LAYERS_GEMM_BF16_H
#define MOKA_LAYERS_GEMM_BF16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { BF16_NR = 32, BF16_MR = 12, BF16_KC = 256 }; /* micro-tile columns/rows; K block */
enum { BF16_NC_MAX = 1024 }; /* columns of B a callback packs at most per call */
/* Packing from bf16 rows (bf16_pack_a_t16, the channels-last weight gradient's B): pairs
 * of K per pass over the micro-panels, panel after panel. */
enum { BF16_PACK_PAIRS = 8 };

/* Pack rows [j0, j0+nc) x K range [p0, p0+kc) of B (p0 a multiple of 2, j0
 * of BF16_NR) into out: ceil(nc/BF16_NR) micro-panels of (kc+1)/2 x BF16_NR
 * dwords. */
typedef void (*Bf16PackB)(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out);

/* dwords of a packed A (M,K). */
size_t bf16_packed_a_size(int M, int K);

/* op(A) (M,K) (ta: A stored (K,M)) -> out (bf16_packed_a_size dwords);
 * par: on the pool (ignored inside a parallel region). */
void bf16_pack_a(bool ta, const float *A, int lda, int M, int K, int32_t *out, bool par);

/* The same packed layout from bf16 values already rounded: A (M,K) stored
 * transposed, a16 (K, lda) row-major (A(m,k) = a16[k*lda + m]): rows k and
 * k+1 interleaved, read along m. On the calling thread. */
void bf16_pack_a_t16(const uint16_t *a16, size_t lda, int M, int K, int32_t *out);

/* B callback for a plain fp32 matrix B (K,N), row-major: ctx a Bf16Plain. */
typedef struct Bf16Plain {
  const float *B;
  int ldb;
} Bf16Plain;
void bf16_pack_b_plain(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out);
/* The same for B^T: ctx's matrix stored (N,K). */
void bf16_pack_b_plain_t(const void *ctx, int p0, int kc, int j0, int nc, int32_t *out);

typedef struct Bf16Gemm {
  int M, N, K;
  const int32_t *A;   /* packed by bf16_pack_a */
  Bf16PackB pack_b;   /* packs B a block at a time */
  const void *b_ctx;
  float *C;           /* (M, ldc) */
  int ldc;
  bool accumulate;    /* C += alpha A x B, else C = alpha A x B */
  float alpha;
  /* Optional: memory the caller reads next (the next chunk's operands),
   * prefetched into L2 a cache line per pair of K as the micro-kernels run,
   * so that it streams in while they compute. Honoured when the GEMM runs on
   * one thread. */
  const char *prefetch[2];
  size_t prefetch_bytes[2];
} Bf16Gemm;

/* Run it; par: split the columns (or rows) over the OpenMP pool (ignored
 * inside a parallel region). The callback runs on the worker threads, each
 * packing into its own workspace (FAST_WS_PACK_B). -1 with moka_errorf when
 * the workspace cannot be allocated. */
int bf16_gemm_packed(const Bf16Gemm *g, bool par);

#endif
