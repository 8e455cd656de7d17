/* common.h — what several subcommands share: loading a net with weights,
 * choosing the backend from --gpu, reading a mean. */
#ifndef MOKA_CLI_COMMON_H
#define MOKA_CLI_COMMON_H

#include "blob.h"
#include "net.h"

/* --gpu: "" = CPU. Anything else asks for CUDA device N: an error when this
 * build or this machine has no usable GPU (never a silent CPU run).
 * On the CPU the backend is the fast path (MOKA_BACKEND_CPU_FAST) unless the
 * environment says MOKA_BACKEND=reference (the plain-loop reference,
 * MOKA_BACKEND_CPU); the choice is logged ("Using the cpu-fast backend"). */
int cli_backend(const char *gpu, Backend *out);
/* --precision=fp32|bf16|tf32 (NULL or "": keep MOKA_PRECISION's, default
 * fp32): the convolution/inner-product precision (src/layers/fast.h). bf16
 * runs on the fast CPU backend (AVX-512 BF16 CPUs only) and on CUDA; tf32 on
 * CUDA only; anything else is an error.
 * cli_backend applies MOKA_PRECISION itself. */
int cli_precision(const char *precision, Backend be);
#define CLI_PRECISION_HELP                                                                   \
  "fp32 (default), bf16 or tf32: convolution/inner-product GEMMs with bf16 (CPU with "       \
  "AVX-512 BF16, or CUDA) or TF32 (CUDA only) inputs and fp32 accumulation; on the CPU, "    \
  "bf16 also stores activations in bf16 (MOKA_BF16_ACT=0: fp32) (also MOKA_PRECISION)"
/* The device number of --gpu (one non-negative integer). */
int cli_gpu_device(const char *gpu, int *device);
/* Build `model` in `phase` and copy `weights` (comma-separated, may be NULL
 * or ""). With the CUDA backend the net is then moved to device --gpu. */
Net *cli_load_net(const char *model, const char *weights, Phase phase, Backend be,
                  const char *gpu);
/* A net built with the CUDA backend goes to device --gpu (net_to_device);
 * nothing for the CPU backends. */
int cli_net_to_device(Net *net, const char *gpu);
/* On the CUDA backend, copy this blob's data to the device (an input the
 * caller wrote on the host); nothing on the CPU. */
int cli_input_to_device(Net *net, Blob *b);
/* On the CUDA backend, copy these blobs' data to the host (explicitly, after
 * a forward); nothing on the CPU. */
int cli_outputs_to_host(Net *net, Blob *const *blobs, int n);
/* The first Input-layer top of a deploy net (the image input). */
Blob *cli_input_blob(Net *net);
/* A mean as (C,H,W) floats: from a binaryproto, or per-channel values
 * "104,117,123" (or one value for all channels), for an input of c x h x w.
 * A mean file whose size differs from h x w is centre-cropped when larger,
 * or reduced to per-channel means when smaller. NULL inputs = zero mean. */
float *cli_load_mean(const char *mean_file, const char *mean_value, int c, int h, int w);

#endif
