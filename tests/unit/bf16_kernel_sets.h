/* bf16_kernel_sets.h — run a test suite once with every bf16 kernel set this CPU has: the AMX
 * tiles where it has them (src/layers/amx.h), then the AVX-512 BF16 vectors; a note where AMX
 * is missing (its kernels then untested here). For the bf16 unit tests. */
#ifndef MOKA_TESTS_BF16_KERNEL_SETS_H
#define MOKA_TESTS_BF16_KERNEL_SETS_H

#include <stdbool.h>
#include <stdio.h>

#include "layers/amx.h"

static inline void bf16_kernel_sets(void (*suite)(void)) {
  const bool amx = fast_amx_active();
  if (!amx)
    fprintf(stderr, "  note: no AMX-BF16 here (CPU or kernel): its kernels are not tested\n");
  for (int pass = 0; pass < 1 + amx; pass++) {
    fast_amx_set(amx && pass == 0);
    fprintf(stderr, "== bf16 kernels: %s\n", fast_amx_active() ? "AMX" : "AVX-512 BF16");
    suite();
  }
  fast_amx_set(amx);
}

#endif
