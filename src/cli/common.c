/* common.c — see common.h. */
#include "cli/common.h"

#include <stdlib.h>
#include <string.h>

#include "cli/flags.h"
#include "layers/fast.h"
#include "net_bf16.h"
#include "proto_io.h"
#include "util.h"

#ifdef MOKA_WITH_CUDA
#include "moka_cuda.h"
#include "net_cuda.h"
#endif

int cli_gpu_device(const char *gpu, int *device) {
  char *end = NULL;
  long d = gpu ? strtol(gpu, &end, 10) : -1;
  if (!gpu || !*gpu || *end || d < 0 || d > 1024)
    return moka_errorf("--gpu=%s: give one CUDA device number (0, 1, ...); several devices "
                       "('all', '0,1') are not supported",
                       gpu ? gpu : "");
  *device = (int)d;
  return 0;
}

/* The CPU backend: the fast path unless MOKA_BACKEND asks for the reference. */
static int cpu_backend(Backend *out) {
  const char *env = getenv("MOKA_BACKEND");
  if (!env || !*env || !strcmp(env, "fast") || !strcmp(env, "cpu-fast")) {
    *out = MOKA_BACKEND_CPU_FAST;
  } else if (!strcmp(env, "reference") || !strcmp(env, "cpu")) {
    *out = MOKA_BACKEND_CPU;
  } else {
    return moka_errorf("MOKA_BACKEND=%s: use 'reference' (the plain-loop CPU reference) or "
                       "'fast' (the default: threaded, batched GEMMs); a GPU is chosen with --gpu",
                       env);
  }
  if (*out == MOKA_BACKEND_CPU)
    LOG_INFO("Using the %s backend (the reference; MOKA_BACKEND=reference)", backend_name(*out));
  else
    LOG_INFO("Using the %s backend (fp32 GEMMs: %s)", backend_name(*out), fast_sgemm_name());
  return 0;
}

int cli_precision(const char *precision, Backend be) {
  if (precision && *precision && fast_set_precision(precision))
    return moka_error_prefix("--precision");
  FastPrecision p = fast_precision(); /* the flag, else MOKA_PRECISION, else fp32 */
  if (p == FAST_FP32) return 0;
#ifdef MOKA_WITH_CUDA
  if (be == MOKA_BACKEND_CUDA) {
    if (fast_check_precision(true)) return -1;
    LOG_INFO("Precision %s on CUDA: convolutions on moka's implicit-GEMM tensor-core kernels "
             "(or cuDNN in %s with MOKA_CONV_ENGINE=cudnn) and inner products on cuBLAS, "
             "%s-rounded inputs, fp32 accumulation; weights, gradients and BatchNorm "
             "statistics stay fp32",
             fast_precision_name(p), fast_precision_name(p), fast_precision_name(p));
    return 0;
  }
#endif
  if (be != MOKA_BACKEND_CPU_FAST)
    return moka_errorf("precision %s is a mode of the fast CPU backend and of CUDA; the %s "
                       "backend runs fp32 only (unset MOKA_PRECISION or drop --precision)",
                       fast_precision_name(p), backend_name(be));
  if (fast_check_precision(false)) return -1;
  const int act = net_bf16_setting();
  LOG_INFO("Precision %s: convolution and inner-product GEMMs take bf16-rounded inputs and "
           "accumulate in fp32 (%s); %s; weights, gradients and BatchNorm statistics stay fp32",
           fast_precision_name(p),
           fast_amx_active() ? "AMX tiles, TDPBF16PS; MOKA_AMX=0: AVX-512 BF16 vectors"
                             : "AVX-512 BF16 vectors, VDPBF16PS",
           act == 0 ? "activations stay fp32 (MOKA_BF16_ACT=0)"
                    : "activations between the convolutions and BatchNorm chains are stored "
                      "bf16 channels-last (MOKA_BF16_ACT=0: fp32)");
  return 0;
}

int cli_backend(const char *gpu, Backend *out) {
  *out = MOKA_BACKEND_CPU;
  if (!gpu || !*gpu) return cpu_backend(out) || cli_precision(NULL, *out) ? -1 : 0;
#ifdef MOKA_WITH_CUDA
  int device;
  char err[512];
  if (cli_gpu_device(gpu, &device)) return -1;
  if (moka_cuda_init(device, err, sizeof err))
    return moka_errorf("--gpu=%s asked for a GPU, but %s; run without --gpu to use the CPU", gpu,
                       err);
  *out = MOKA_BACKEND_CUDA;
  return cli_precision(NULL, *out);
#else
  return moka_errorf("--gpu=%s asked for a GPU, but this moka was built without CUDA "
                     "(rebuild with nvcc installed, or run without --gpu)",
                     gpu);
#endif
}

Net *cli_load_net(const char *model, const char *weights, Phase phase, Backend be,
                  const char *gpu) {
  if (!model || !*model) {
    moka_errorf("--model is required (a .prototxt net definition)");
    return NULL;
  }
  NetOptions o;
  net_options_default(&o);
  o.phase = phase;
  o.backend = be;
  o.quiet = true;
  Net *net = net_create_from_file(model, &o);
  if (!net) return NULL;
  if (weights && *weights && net_copy_from_file(net, weights)) {
    net_free(net);
    return NULL;
  }
  if (cli_net_to_device(net, gpu)) {
    net_free(net);
    return NULL;
  }
  return net;
}

int cli_net_to_device(Net *net, const char *gpu) {
#ifdef MOKA_WITH_CUDA
  int device;
  if (net->backend == MOKA_BACKEND_CUDA &&
      (cli_gpu_device(gpu, &device) || net_to_device(net, device)))
    return -1;
#else
  (void)net;
  (void)gpu;
#endif
  return 0;
}

int cli_input_to_device(Net *net, Blob *b) {
#ifdef MOKA_WITH_CUDA
  if (net->backend == MOKA_BACKEND_CUDA) return blob_to_device(net->cuda, b);
#else
  (void)net;
  (void)b;
#endif
  return 0;
}

int cli_outputs_to_host(Net *net, Blob *const *blobs, int n) {
#ifdef MOKA_WITH_CUDA
  if (net->backend == MOKA_BACKEND_CUDA)
    for (int i = 0; i < n; i++)
      if (blob_to_host(net->cuda, blobs[i])) return -1;
#else
  (void)net;
  (void)blobs;
  (void)n;
#endif
  return 0;
}

Blob *cli_input_blob(Net *net) {
  for (int i = 0; i < net->n_layers; i++)
    if (!strcmp(net->layers[i]->type->name, "Input") && net->layers[i]->n_top > 0)
      return net->layers[i]->top[0];
  moka_errorf("the net has no Input layer (and no input: header); use a deploy prototxt");
  return NULL;
}

float *cli_load_mean(const char *mean_file, const char *mean_value, int c, int h, int w) {
  size_t n = (size_t)c * h * w;
  float *m = moka_calloc(n, sizeof(float));
  if (!m) return NULL;
  if (mean_file && *mean_file && mean_value && *mean_value) {
    free(m);
    moka_errorf("give --mean_file or --mean_value, not both");
    return NULL;
  }
  if (mean_value && *mean_value) {
    double v[64];
    int k = flags_parse_doubles(mean_value, v, 64);
    if (k <= 0 || (k != 1 && k != c)) {
      free(m);
      moka_errorf("--mean_value='%s': give one value or %d comma-separated values", mean_value, c);
      return NULL;
    }
    for (int ch = 0; ch < c; ch++)
      for (int i = 0; i < h * w; i++) m[(size_t)ch * h * w + i] = (float)v[k == 1 ? 0 : ch];
    return m;
  }
  if (!mean_file || !*mean_file) return m;
  ProtobufCMessage *msg;
  if (proto_read_binary(&caffe__blob_proto__descriptor, mean_file, &msg)) {
    free(m);
    return NULL;
  }
  Blob *b = blob_new("mean");
  int rc = b ? blobproto_load((Caffe__BlobProto *)msg, b, mean_file) : -1;
  protobuf_c_message_free_unpacked(msg, NULL);
  if (rc) {
    blob_free(b);
    free(m);
    return NULL;
  }
  int mc = blob_legacy_dim(b, 1), mh = blob_legacy_dim(b, 2), mw = blob_legacy_dim(b, 3);
  if (b->num_axes != 4 || blob_legacy_dim(b, 0) != 1 || mc != c) {
    char s[128];
    moka_errorf("mean file '%s' has shape %s; expected 1 x %d x H x W", mean_file,
                blob_shape_string(b, s, sizeof s), c);
    blob_free(b);
    free(m);
    return NULL;
  }
  if (mh >= h && mw >= w) {
    int oh = (mh - h) / 2, ow = (mw - w) / 2;
    for (int ch = 0; ch < c; ch++)
      for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
          m[((size_t)ch * h + y) * w + x] = b->data[((size_t)ch * mh + y + oh) * mw + x + ow];
  } else {
    for (int ch = 0; ch < c; ch++) {
      double s = 0;
      for (int i = 0; i < mh * mw; i++) s += b->data[(size_t)ch * mh * mw + i];
      float v = (float)(s / (mh * mw));
      for (int i = 0; i < h * w; i++) m[(size_t)ch * h * w + i] = v;
    }
  }
  blob_free(b);
  return m;
}
