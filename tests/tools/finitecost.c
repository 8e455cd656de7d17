/* finitecost — what the solver's per-iteration gradient check costs: the
 * time of moka_all_finite (src/net_check.h) over N floats, by default
 * ResNet-50's 25,557,032 parameters (docs/reliability.md compares it with a
 * ResNet-50 iteration from `moka time`).
 *   finitecost [N] [REPEATS]     prints "n=... best=... ms mean=... ms GB/s=..." */
#include <stdio.h>
#include <stdlib.h>

#include "net_check.h"
#include "util.h"

int main(int argc, char **argv) {
  const size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 25557032;
  const int reps = argc > 2 ? atoi(argv[2]) : 20;
  float *x = malloc((n + 1) * sizeof *x); /* (n) */
  if (!x || reps < 1) {
    fprintf(stderr, "usage: finitecost [N] [REPEATS]\n");
    return 2;
  }
  for (size_t k = 0; k < n; k++) x[k] = (float)(k % 1000) * 1e-6f - 5e-4f;
  double best = 1e30, total = 0;
  bool all = true;
  for (int r = 0; r < reps; r++) {
    const double t = moka_now();
    all = moka_all_finite(x, n) && all;
    const double dt = moka_now() - t;
    total += dt;
    if (dt < best) best = dt;
  }
  printf("n=%zu best=%.2f ms mean=%.2f ms GB/s=%.1f finite=%d\n", n, best * 1e3,
         total / reps * 1e3, (double)n * sizeof(float) / best / 1e9, all);
  free(x);
  return all ? 0 : 1;
}
