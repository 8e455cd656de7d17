/* rng.c — see rng.h. mt19937 as specified by Matsumoto & Nishimura (1998). */
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

void rng_seed(Rng *r, uint32_t seed) {
  r->mt[0] = seed;
  for (int i = 1; i < 624; i++)
    r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
  r->idx = 624;
  r->have_spare = 0;
}

/* The next 624 words of state. Three loops (the words i + 1 and i + 397
 * without a modulo) so that the compiler vectorises the first two: the
 * same arithmetic as the one-loop definition, in the same order. */
static inline uint32_t twist1(uint32_t hi, uint32_t lo, uint32_t far) {
  const uint32_t y = (hi & 0x80000000u) | (lo & 0x7fffffffu);
  return far ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
}

static void twist(Rng *r) {
  uint32_t *mt = r->mt;
  int i = 0;
  for (; i < 624 - 397; i++) mt[i] = twist1(mt[i], mt[i + 1], mt[i + 397]);
  for (; i < 623; i++) mt[i] = twist1(mt[i], mt[i + 1], mt[i + 397 - 624]);
  mt[623] = twist1(mt[623], mt[0], mt[396]);
  r->idx = 0;
}

static inline uint32_t temper(uint32_t y) {
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

uint32_t rng_u32(Rng *r) {
  if (r->idx >= 624) twist(r);
  return temper(r->mt[r->idx++]);
}

void rng_fill_u32(Rng *r, uint32_t *out, size_t n) {
  size_t k = 0;
  while (k < n) {
    if (r->idx >= 624) twist(r);
    size_t take = (size_t)(624 - r->idx);
    if (take > n - k) take = n - k;
    const uint32_t *src = r->mt + r->idx;
    for (size_t j = 0; j < take; j++) out[k + j] = temper(src[j]);
    r->idx += (int)take;
    k += take;
  }
}

float rng_uniform(Rng *r, float a, float b) {
  /* boost::uniform_real: numerator / divisor * (b - a) + a, redrawn while
   * the result is not below b; computed in the result type (float). */
  for (;;) {
    float numerator = (float)rng_u32(r);
    float divisor = (float)4294967295u + 1.0f;
    float x = numerator / divisor * (b - a) + a;
    if (x < b) return x;
  }
}

float rng_gaussian(Rng *r, float mu, float sigma) {
  if (r->have_spare) {
    r->have_spare = 0;
    return (float)(mu + sigma * r->spare);
  }
  double u1, u2;
  do {
    u1 = (rng_u32(r) + 0.5) / 4294967296.0;
  } while (u1 <= 0.0);
  u2 = (rng_u32(r) + 0.5) / 4294967296.0;
  double rad = sqrt(-2.0 * log(u1));
  r->spare = rad * sin(2.0 * M_PI * u2);
  r->have_spare = 1;
  return (float)(mu + sigma * rad * cos(2.0 * M_PI * u2));
}

int rng_bernoulli(Rng *r, double p) {
  /* boost::bernoulli_distribution: false when p == 0, else
   * (u - min) <= p * (max - min). */
  if (p == 0.0) return 0;
  return (double)rng_u32(r) <= p * 4294967295.0;
}

uint32_t rng_entropy_seed(void) {
  uint32_t s = 0;
  FILE *f = fopen("/dev/urandom", "rb");
  if (f) {
    if (fread(&s, sizeof s, 1, f) != 1) s = 0;
    fclose(f);
  }
  if (!s) s = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16);
  return s;
}
