/* cmpf32 — compare two raw float32 files with the golden rule
 * |a-b| <= atol + rtol*|b|, atol = rtol*max|b| (+ ABS_FLOOR).
 *   cmpf32 GOT WANT [RTOL=1e-4] [ABS_FLOOR=0]   exit 0 = within tolerance */
#include <stdio.h>
#include <stdlib.h>

#include "testlib.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: cmpf32 GOT WANT [RTOL] [ABS_FLOOR]\n");
    return 2;
  }
  double rtol = argc > 3 ? atof(argv[3]) : 1e-4, floor = argc > 4 ? atof(argv[4]) : 0;
  size_t na, nb;
  float *a = read_f32(argv[1], &na), *b = read_f32(argv[2], &nb);
  if (!a || !b) return 2;
  if (na != nb) {
    fprintf(stderr, "cmpf32: %s has %zu values, %s has %zu\n", argv[1], na, argv[2], nb);
    return 1;
  }
  int ok = compare_f32(argv[1], a, b, na, rtol, floor);
  free(a);
  free(b);
  return ok ? 0 : 1;
}
