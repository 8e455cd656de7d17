/* rng.h — Caffe's random stream: a 32-bit Mersenne Twister (mt19937, the
 * engine behind Caffe's boost::mt19937), seeded by the solver's random_seed.
 *
 * Uniform and Bernoulli draws follow boost's formulas exactly, so Dropout
 * masks equal Caffe's for the same seed and the same sequence of draws.
 * Gaussian draws use Box–Muller on the same stream: statistically right,
 * not bit-identical to boost's ziggurat (fillers only initialise weights).
 */
#ifndef MOKA_RNG_H
#define MOKA_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct Rng {
  uint32_t mt[624];
  int idx;
  int have_spare;   /* Box–Muller keeps its second value */
  double spare;
} Rng;

void rng_seed(Rng *r, uint32_t seed);
uint32_t rng_u32(Rng *r);
/* n draws of rng_u32 into out, in order (the same values and final state). */
void rng_fill_u32(Rng *r, uint32_t *out, size_t n);
/* boost::uniform_real<float>(a, b): in [a, b). */
float rng_uniform(Rng *r, float a, float b);
/* N(mu, sigma). */
float rng_gaussian(Rng *r, float mu, float sigma);
/* boost::bernoulli_distribution<double>(p): true with probability p. */
int rng_bernoulli(Rng *r, double p);
/* A seed from system entropy (Caffe's behaviour without random_seed). */
uint32_t rng_entropy_seed(void);

#endif
