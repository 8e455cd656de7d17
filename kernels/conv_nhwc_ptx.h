/* conv_nhwc_ptx.h — the four sm_80+ instructions kernels/conv_nhwc.cu is built
 * on, each wrapped in one small function, so that tests/gpu/nhwc_emulate.cpp
 * can supply CPU versions of exactly these (and nothing else of the kernel):
 *
 *   nh_cp_async16(dst, src)   cp.async.cg.shared.global, 16 bytes; src NULL:
 *                             16 zero bytes (copied from a zero buffer in
 *                             global memory, so every copy reads a valid
 *                             address)
 *   nh_cp_commit()            cp.async.commit_group
 *   nh_cp_wait<N>()           cp.async.wait_group N (all but the newest N
 *                             groups have landed in shared memory)
 *   nh_ldmatrix_x4(r, p)      ldmatrix.sync.aligned.m8n8.x4.shared.b16:
 *                             lanes 8j..8j+7 give the row addresses of
 *                             matrix j; lane l receives in r[j] the two
 *                             elements (row l/4, columns 2(l%4), 2(l%4)+1)
 *                             of matrix j (low half: the first)
 *   nh_ldmatrix_x4_trans(r,p) the same with .trans: lane l receives
 *                             (rows 2(l%4), 2(l%4)+1; column l/4)
 *   nh_mma_bf16(d, a, b)      mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32,
 *                             d += A(16x16) B(16x8); with g = lane/4, t = lane%4:
 *                             a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..),
 *                             a[2] = A(g, 2t+8..), a[3] = A(g+8, 2t+8..);
 *                             b[0] = B(2t..2t+1, g), b[1] = B(2t+8.., g);
 *                             d[0..1] = D(g, 2t..2t+1), d[2..3] = D(g+8, 2t..)
 *
 * (Layouts as the PTX ISA's "Matrix fragments for mma.m16n8k16 with
 * floating point type" and "ldmatrix" give them.) */
#ifndef MOKA_CONV_NHWC_PTX_H
#define MOKA_CONV_NHWC_PTX_H

#ifndef MOKA_NHWC_EMULATE
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define NH_ARCH_OK 1
#else
#define NH_ARCH_OK 0
#endif

/* The kernel's dynamic shared memory (the emulator gives it a static buffer). */
#define NH_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

__device__ __forceinline__ unsigned nh_smem_addr(const void *p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __align__(16) static const unsigned char nh_zero16[16] = {0};

__device__ __forceinline__ void nh_cp_async16(void *dst, const void *src) {
#if NH_ARCH_OK
  const void *s = src ? src : (const void *)nh_zero16;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(nh_smem_addr(dst)), "l"(s));
#endif
}

__device__ __forceinline__ void nh_cp_commit() {
#if NH_ARCH_OK
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N> __device__ __forceinline__ void nh_cp_wait() {
#if NH_ARCH_OK
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void nh_ldmatrix_x4(unsigned r[4], const void *p) {
#if NH_ARCH_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(nh_smem_addr(p)));
#endif
}

__device__ __forceinline__ void nh_ldmatrix_x4_trans(unsigned r[4], const void *p) {
#if NH_ARCH_OK
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(nh_smem_addr(p)));
#endif
}

/* Two bf16 values (rounded to nearest even) at p, 4-byte aligned, in one store. */
__device__ __forceinline__ void nh_store_bf16x2(__nv_bfloat16 *p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

__device__ __forceinline__ void nh_mma_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
#if NH_ARCH_OK
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
#endif /* MOKA_NHWC_EMULATE */

#endif
