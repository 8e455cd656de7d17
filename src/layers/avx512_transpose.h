/* avx512_transpose.h — a 16 x 16 transpose of 32-bit elements in AVX-512
 * registers, shared by the packing routines of gemm_bf16.c and gemm_f32.c.
 * Include it inside a `#pragma GCC target("avx512f")` region, after
 * <immintrin.h>. Internal to src/layers. */
#ifndef MOKA_LAYERS_AVX512_TRANSPOSE_H
#define MOKA_LAYERS_AVX512_TRANSPOSE_H

/* r[0..15] (16 x 16 dwords) transposed in place. The loops are unrolled
 * (GCC's -O2 leaves them rolled, and the arrays then live on the stack:
 * 4x slower packing). */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16]) {
  __m512i t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  /* Each 128-bit lane of r[] now holds one row of a transposed 4 x 4 block;
   * the two lane shuffles below move those blocks to their places. */
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);      /* lanes 0,2 of a; 0,2 of b */
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);  /* lanes 1,3 of a; 1,3 of b */
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

#endif
