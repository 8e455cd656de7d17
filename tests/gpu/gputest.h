/* gputest.h — what the GPU tests (tests/gpu/test_cuda_*.c) share; CUDA builds only. */
#ifndef MOKA_TESTS_GPUTEST_H
#define MOKA_TESTS_GPUTEST_H

#include <stdio.h>

#include "moka_cuda.h"
#include "util.h"

/* Open CUDA device 0 for a test: 0 with *out set (the device named on
 * stderr); 1 when there is no device ("SKIP: no CUDA device (...)" printed:
 * main returns test_summary()); -1 when the context could not be made (the
 * error printed: main fails). */
static inline int gpu_test_open(MokaCuda **out) {
  char err[512];
  *out = NULL;
  if (moka_cuda_init(0, err, sizeof err)) {
    printf("SKIP: no CUDA device (%s)\n", err);
    return 1;
  }
  MokaCuda *c = moka_cuda_create(0);
  if (!c) {
    fprintf(stderr, "moka_cuda_create: %s\n", moka_error());
    return -1;
  }
  fprintf(stderr, "device 0: %s (sm_%d%d)%s\n", c->device_name, c->cc_major, c->cc_minor,
          moka_cuda_debug_sync() ? ", MOKA_CUDA_SYNC on" : "");
  *out = c;
  return 0;
}

#endif
