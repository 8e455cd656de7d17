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

static void twist(Rng *r) {
  for (int i = 0; i < 624; i++) {
    uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
    uint32_t v = r->mt[(i + 397) % 624] ^ (y >> 1);
    if (y & 1u) v ^= 0x9908b0dfu;
    r->mt[i] = v;
  }
  r->idx = 0;
}

uint32_t rng_u32(Rng *r) {
  if (r->idx >= 624) twist(r);
  uint32_t y = r->mt[r->idx++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
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
