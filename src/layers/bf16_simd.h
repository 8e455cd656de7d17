/* bf16_simd.h — the fp32 -> bf16 pair conversions shared by the bf16 packing
 * routines (gemm_bf16.c, convolution_bf16.c). VDPBF16PS multiplies pairs:
 * dword i of a packed operand holds two bf16 values (low word first), both
 * rounded to nearest even by VCVTNE2PS2BF16 (denormal inputs become zero); and bf16 values
 * widened back (pooling_fast.c, split_fast.c, nhwc_layout.c).
 * Include it inside a `#pragma GCC target("avx512f,avx512bw,avx512bf16")`
 * region, after <immintrin.h>. Internal to src/layers. */
#ifndef MOKA_LAYERS_BF16_SIMD_H
#define MOKA_LAYERS_BF16_SIMD_H

/* Two 16-float vectors -> 16 dwords, dword j = (bf16(lo[j]), bf16(hi[j])). */
static inline __m512i bf16_pairs_interleaved(__m512 lo, __m512 hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24,
                                       8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  __m512i w = (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* words: lo[0..15], hi[0..15] */
  return _mm512_permutexvar_epi16(idx, w);
}

/* 32 consecutive floats -> 16 dwords, dword j = (bf16(x[2j]), bf16(x[2j+1])). */
static inline __m512i bf16_pairs_consecutive(__m512 x0_15, __m512 x16_31) {
  return (__m512i)_mm512_cvtne2ps_pbh(x16_31, x0_15);
}

/* Two rows of 16 bf16 values -> 16 dwords, dword j = (lo[j], hi[j]). */
static inline __m512i bf16_words_interleaved(__m256i lo, __m256i hi) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
}

/* 16 bf16 values (lanes past mask k zero) widened to fp32, exactly. */
static inline __m512 bf16x16_load_f32(const uint16_t *p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The first n of 16 lanes (n clamped to 0..16). */
static inline __mmask16 bf16_mask16(int n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

#endif
