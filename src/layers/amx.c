/* amx.c — whether the bf16 kernels use Intel AMX, and each thread's tile
 * configuration (amx.h). */
#include "amx.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

enum {
  ARCH_REQ_XCOMP_PERM = 0x1023, /* arch_prctl: ask for an extended state component */
  XFEATURE_XTILEDATA = 18       /* the tile data */
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool cpu_ok; /* CPU and kernel allow it */
static bool active;

static void decide(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  if (!tile || !bf16) return;
  /* Linux (5.16+) hands the 8 KiB tile state to a process only when asked; without it the
   * first tile instruction faults. */
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return;
  cpu_ok = true;
  const char *e = getenv("MOKA_AMX");
  active = !(e && strcmp(e, "0") == 0);
}

bool fast_amx_active(void) {
  pthread_once(&once, decide);
  return active;
}

bool fast_amx_set(bool on) {
  pthread_once(&once, decide);
  const bool was = active;
  active = on && cpu_ok;
  return was;
}

/* The configuration (palette 1): 64 bytes, tiles' bytes per row at 16 + 2t, rows at 48 + t. */
typedef struct TileCfg {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} TileCfg;

static __thread bool configured;

void amx_ready(void) {
  if (configured) return;
  TileCfg cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
  configured = true;
}
