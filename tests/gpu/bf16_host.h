/* bf16_host.h — bf16 on the host for the GPU tests (test_cuda_igemm.c, test_cuda_bn_nhwc.c),
 * the kernel emulators (emu_cuda.h; C and C++) and the CPU's bf16 tests (test_nhwc_bf16.c,
 * test_bn_nhwc_cpu.c): the device's rounding (__float2bfloat16_rn: nearest even), the CPU's
 * (denormals to zero), and channels-last copies.
 * Allocation failures end the test program (these are test fixtures). */
#ifndef MOKA_TESTS_BF16_HOST_H
#define MOKA_TESTS_BF16_HOST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline float round_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  memcpy(&f, &u, 4);
  return f;
}

/* The bits of f rounded to bf16, and the value of bf16 bits. */
static inline uint16_t bf16_bits(float f) {
  uint32_t u;
  f = round_bf16(f);
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}
/* The CPU's rounding (VCVTNEPS2BF16, what moka's AVX-512 BF16 code stores): nearest even,
 * denormals (keeping their sign) to zero, NaN quiet. */
static inline uint16_t bf16_bits_cpu(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline float bf16_value(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline void *bf16_host_alloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
    exit(1);
  }
  return p;
}

/* (N, C, S) fp32 -> (N, S, C) bf16 bits (malloc'd), and back */
static inline uint16_t *nchw_to_nhwc_bf16(const float *x, size_t N, size_t C, size_t S) {
  uint16_t *o = (uint16_t *)bf16_host_alloc(N * C * S * 2);
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++)
      for (size_t s = 0; s < S; s++) o[(n * S + s) * C + c] = bf16_bits(x[(n * C + c) * S + s]);
  return o;
}
static inline float *nhwc_bf16_to_nchw(const uint16_t *h, size_t N, size_t C, size_t S) {
  float *o = (float *)bf16_host_alloc(N * C * S * 4);
  for (size_t n = 0; n < N; n++)
    for (size_t c = 0; c < C; c++)
      for (size_t s = 0; s < S; s++) o[(n * C + c) * S + s] = bf16_value(h[(n * S + s) * C + c]);
  return o;
}

#endif
