/* amx.h — Intel AMX (Advanced Matrix Extensions) for the bf16 GEMMs of the
 * fast CPU backend: where the CPU has AMX-BF16 (Sapphire Rapids and later),
 * the bf16 micro-kernels (gemm_bf16.c, conv_nhwc_bf16.c) multiply 16 x 32 by
 * 32 x 16 bf16 tiles with TDPBF16PS instead of VDPBF16PS vectors: on the
 * 2-vCPU Xeon build machine 3.3 TFLOP/s a core with operands in L1, against
 * 121 GFLOP/s for VDPBF16PS (tests/bench/peak.sh).
 *
 * Tiles. Every thread that runs a kernel loads one configuration (amx_ready):
 * all eight tiles 16 rows x 64 bytes. A tile of A is 16 rows of 32 bf16 (16
 * pairs along K, a row's pairs consecutive); a tile of B is 16 pairs of K x 16
 * columns, a row holding each column's pair (B(2kp, n), B(2kp+1, n)): exactly
 * the dwords of a packed B micro-panel (gemm_bf16.h), so a 32-column panel is
 * two B tiles 128 bytes a row apart. C is 16 x 16 fp32. TDPBF16PS sums each
 * pair's two products and adds them to C in fp32 (round to nearest even,
 * denormals zero: the same products as VDPBF16PS, summed in another order).
 *
 * The instructions are written as inline assembly (the binutils of Debian 12
 * know them) with a memory clobber on loads and stores: GCC 12's intrinsics
 * give tileloadd no memory operand, so a store just before one could be
 * moved past it.
 *
 * Whether AMX runs: fast_amx_active() (the CPU has AMX-TILE and AMX-BF16,
 * Linux granted this process the tile state, and MOKA_AMX is not 0). It is
 * decided once per process; every bf16 path asks it, so a run is all AMX or
 * all AVX-512 BF16. Internal to src/layers. */
#ifndef MOKA_LAYERS_AMX_H
#define MOKA_LAYERS_AMX_H

#include <stdbool.h>

#include "fast.h"

/* fast_amx_active() (fast.h): does this process multiply bf16 with AMX? (see above) */
/* For tests: force the AVX-512 BF16 kernels (false) or AMX again (true, only
 * where the CPU allows it); returns the previous setting. Not while kernels run. */
bool fast_amx_set(bool on);
/* Load this thread's tile configuration if it has not (before any tile instruction). */
void amx_ready(void);

/* Tile instructions; t, a, b tile numbers 0..7 (literals). */
#define AMX_LOAD(t, base, stride)                                                          \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(base)),            \
                   "r"((long)(stride))                                                     \
                   : "memory")
#define AMX_STORE(t, base, stride)                                                         \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void *)(base)),              \
                   "r"((long)(stride))                                                     \
                   : "memory")
#define AMX_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
/* C tile c += A tile a x B tile b */
#define AMX_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

#endif
