/* moka device_query — what moka can run on here: the CPU (cores, vector
 * extensions, the OpenBLAS build and kernel in use) and CUDA devices. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/flags.h"
#include "layers/fast.h"
#include "util.h"

#ifdef MOKA_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

/* OpenBLAS's own description of itself (declared in its cblas.h). */
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);
extern int openblas_get_num_threads(void);

static void cpu_info(void) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[4096], model[256] = "unknown";
  int avx2 = 0, avx512f = 0, avx512bf16 = 0, amx = 0;
  if (f) {
    while (fgets(line, sizeof line, f)) {
      if (!strncmp(line, "model name", 10)) {
        char *c = strchr(line, ':');
        if (c) {
          snprintf(model, sizeof model, "%s", c + 2);
          model[strcspn(model, "\n")] = 0;
        }
      }
      if (!strncmp(line, "flags", 5)) {
        avx2 = strstr(line, " avx2") != NULL;
        avx512f = strstr(line, " avx512f") != NULL;
        avx512bf16 = strstr(line, " avx512_bf16") != NULL;
        amx = strstr(line, " amx_tile") != NULL;
      }
    }
    fclose(f);
  }
  printf("CPU: %s\n", model);
  printf("  logical cores online: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
  printf("  AVX2: %s  AVX-512F: %s  AVX-512 BF16: %s  AMX: %s\n", avx2 ? "yes" : "no",
         avx512f ? "yes" : "no", avx512bf16 ? "yes" : "no", amx ? "yes" : "no");
  printf("  --precision=bf16 multiplies with: %s\n",
         !fast_bf16_supported() ? "(not available: no AVX-512 BF16)"
         : fast_amx_active()    ? "AMX tiles (MOKA_AMX=0: AVX-512 BF16 vectors)"
                                : "AVX-512 BF16 vectors");
  const char *ct = getenv("OPENBLAS_CORETYPE");
  printf("  OpenBLAS: %s; kernel in use: %s; threads: %d; OPENBLAS_CORETYPE=%s\n",
         openblas_get_config(), openblas_get_corename(), openblas_get_num_threads(),
         ct ? ct : "(unset)");
}

int cmd_device_query(int argc, char **argv) {
  int n_pos;
  const char *pos[1];
  int rc = flags_parse("device_query", "", "Describe the CPU and any CUDA devices moka can use.",
                       NULL, 0, argc, argv, pos, 0, &n_pos);
  if (rc) return rc < 0 ? -1 : 0;
  cpu_info();
#ifdef MOKA_WITH_CUDA
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    printf("CUDA: no usable device (%s)\n", cudaGetErrorString(e));
    return 0;
  }
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  printf("CUDA: %d device(s), driver %d, runtime %d\n", n, drv, rt);
  for (int i = 0; i < n; i++) {
    struct cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    printf("  device %d: %s, compute capability %d.%d, %.1f GiB, %d SMs\n", i, p.name, p.major,
           p.minor, (double)p.totalGlobalMem / (1 << 30), p.multiProcessorCount);
  }
#else
  printf("CUDA: not built into this binary (no nvcc at build time, or CUDA=0)\n");
#endif
  return 0;
}
