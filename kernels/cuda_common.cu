/* cuda_common.cu — device selection, the MokaCuda context, error reporting
 * and device memory (see moka_cuda.h).
 */
#include <cublas_v2.h>
#include <cudnn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- errors ------------------------------------------------------------------------------ */

/* " on device D (name)" for the messages (best effort: the device may be
 * in an error state). */
static void device_suffix(char *buf, size_t n) {
  int d = -1;
  if (cudaGetDevice(&d) != cudaSuccess) {
    snprintf(buf, n, " (no current device)");
    return;
  }
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, d) == cudaSuccess)
    snprintf(buf, n, " on device %d (%s, sm_%d%d)", d, p.name, p.major, p.minor);
  else
    snprintf(buf, n, " on device %d", d);
}

int moka_cuda_fail(int err, const char *call, const char *file, int line) {
  char dev[384];
  cudaError_t e = (cudaError_t)err;
  device_suffix(dev, sizeof dev);
  return moka_errorf("CUDA error %d (%s: %s) in %s at %s:%d%s", err, cudaGetErrorName(e),
                     cudaGetErrorString(e), call, file, line, dev);
}

int moka_cublas_fail(int status, const char *call, const char *file, int line) {
  char dev[384];
  device_suffix(dev, sizeof dev);
  return moka_errorf("cuBLAS error %d (%s) in %s at %s:%d%s", status,
                     cublasGetStatusString((cublasStatus_t)status), call, file, line, dev);
}

int moka_cudnn_fail(int status, const char *msg, const char *call, const char *file, int line) {
  char dev[384];
  device_suffix(dev, sizeof dev);
  return moka_errorf("cuDNN error %d (%s) in %s at %s:%d%s", status, msg, call, file, line, dev);
}

bool moka_cuda_debug_sync(void) {
  /* A process-wide debug knob (like CUDA_LAUNCH_BLOCKING), read once. */
  static int cached = -1;
  if (cached < 0) {
#ifdef MOKA_DEBUG
    cached = 1;
#else
    const char *e = getenv("MOKA_CUDA_SYNC");
    cached = e && *e && strcmp(e, "0") != 0;
#endif
  }
  return cached == 1;
}

int moka_cuda_launched(cudaStream_t s, const char *kernel, const char *file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return moka_cuda_fail((int)e, kernel, file, line);
  if (moka_cuda_debug_sync()) {
    e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) {
      char what[256];
      snprintf(what, sizeof what, "%s (execution; MOKA_CUDA_SYNC=1)", kernel);
      return moka_cuda_fail((int)e, what, file, line);
    }
  }
  return 0;
}

/* ---- device selection --------------------------------------------------------------------- */

/* A kernel whose attributes tell whether this binary has code for the device. */
__global__ void moka_probe_kernel(int *p) {
  if (p) *p = 1;
}

int moka_cuda_init(int device, char *err, size_t n) {
  int count = 0, drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  cudaError_t e = cudaGetDeviceCount(&count);
  if (drv == 0) {
    snprintf(err, n, "no NVIDIA driver is loaded (no GPU here, or its driver is not installed: %s)",
             cudaGetErrorString(e));
    return -1;
  }
  if (e == cudaErrorInsufficientDriver) {
    snprintf(err, n,
             "the NVIDIA driver is too old for this build: it supports CUDA %d.%d, moka was "
             "built with CUDA runtime %d.%d (update the driver, or rebuild with an older "
             "toolkit)",
             drv / 1000, (drv % 1000) / 10, rt / 1000, (rt % 1000) / 10);
    return -1;
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    snprintf(err, n, "no CUDA device found (driver %s)",
             drv ? "present" : "not loaded: is the NVIDIA driver installed?");
    return -1;
  }
  if (e != cudaSuccess) {
    snprintf(err, n, "no CUDA device is usable: %s (%s)", cudaGetErrorString(e),
             cudaGetErrorName(e));
    return -1;
  }
  if (device < 0 || device >= count) {
    snprintf(err, n, "CUDA device %d does not exist (this machine has %d: 0..%d)", device, count,
             count - 1);
    return -1;
  }
  cudaDeviceProp p;
  e = cudaGetDeviceProperties(&p, device);
  if (e == cudaSuccess) e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    snprintf(err, n, "CUDA device %d: %s", device, cudaGetErrorString(e));
    return -1;
  }
  cudaFuncAttributes fa;
  e = cudaFuncGetAttributes(&fa, moka_probe_kernel);
  if (e != cudaSuccess) {
    cudaGetLastError();
    snprintf(err, n,
             "CUDA device %d (%s) has compute capability %d.%d, which this build has no code "
             "for (%s): rebuild with CUDA_ARCH='-gencode arch=compute_%d%d,code=sm_%d%d'",
             device, p.name, p.major, p.minor, cudaGetErrorString(e), p.major, p.minor, p.major,
             p.minor);
    return -1;
  }
  return 0;
}

MokaCuda *moka_cuda_create(int device) {
  char err[512];
  if (moka_cuda_init(device, err, sizeof err)) {
    moka_errorf("%s", err);
    return NULL;
  }
  MokaCuda *c = (MokaCuda *)moka_calloc(1, sizeof *c);
  if (!c) return NULL;
  c->device = device;
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) == cudaSuccess) {
    snprintf(c->device_name, sizeof c->device_name, "%s", p.name);
    c->cc_major = p.major;
    c->cc_minor = p.minor;
  }
  cudaError_t e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    moka_cuda_fail((int)e, "cudaStreamCreateWithFlags", __FILE__, __LINE__);
    free(c);
    return NULL;
  }
  cublasHandle_t h;
  cublasStatus_t s = cublasCreate(&h);
  if (s != CUBLAS_STATUS_SUCCESS) {
    moka_cublas_fail((int)s, "cublasCreate", __FILE__, __LINE__);
    moka_cuda_destroy(c);
    return NULL;
  }
  c->cublas = h;
  /* fp32: CUBLAS_DEFAULT_MATH never uses TF32 for SGEMM (TF32 needs
   * CUBLAS_TF32_TENSOR_OP_MATH), unless NVIDIA_TF32_OVERRIDE=1 forces it. */
  s = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
  if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(h, c->stream);
  if (s != CUBLAS_STATUS_SUCCESS) {
    moka_cublas_fail((int)s, "cublasSetMathMode/cublasSetStream", __FILE__, __LINE__);
    moka_cuda_destroy(c);
    return NULL;
  }
  const char *tf = getenv("NVIDIA_TF32_OVERRIDE");
  if (tf && strcmp(tf, "0") != 0)
    LOG_WARN("NVIDIA_TF32_OVERRIDE=%s is set: cuBLAS/cuDNN may use TF32, and results will not "
             "match Caffe's float32 (unset it, or set it to 0)",
             tf);
  const char *eng = getenv("MOKA_CONV_ENGINE");
  c->conv_engine_cudnn = eng && (strcmp(eng, "cudnn") == 0 || strcmp(eng, "CUDNN") == 0);
  c->conv_engine_auto = eng && (strcmp(eng, "auto") == 0 || strcmp(eng, "AUTO") == 0);
  if (eng && *eng && !c->conv_engine_cudnn && !c->conv_engine_auto && strcmp(eng, "moka") != 0 &&
      strcmp(eng, "MOKA") != 0) {
    moka_errorf("MOKA_CONV_ENGINE='%s': use 'moka' (the default), 'cudnn' or 'auto'", eng);
    moka_cuda_destroy(c);
    return NULL;
  }
  return c;
}

int moka_cuda_cudnn(MokaCuda *c) {
  if (c->cudnn) return 0;
  cudnnHandle_t h;
  MOKA_CUDNN_CHECK(cudnnCreate(&h));
  c->cudnn = h;
  MOKA_CUDNN_CHECK(cudnnSetStream(h, c->stream));
  return 0;
}

void moka_cuda_destroy(MokaCuda *c) {
  if (!c) return;
  if (c->stream) cudaStreamSynchronize(c->stream);
  if (c->cudnn) cudnnDestroy(c->cudnn);
  if (c->cublas) cublasDestroy(c->cublas);
  if (c->work) cudaFree(c->work);
  if (c->stream) cudaStreamDestroy(c->stream);
  free(c);
}

int moka_cuda_sync(MokaCuda *c) {
  MOKA_CUDA_CHECK(cudaStreamSynchronize(c->stream));
  return 0;
}

int moka_cuda_workspace(MokaCuda *c, size_t bytes, const char *what, void **out) {
  if (bytes > c->work_bytes) {
    /* Round up to 1 MiB so that small growths do not reallocate each time. */
    size_t want = (bytes + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1);
    MOKA_CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* the old buffer may be in use */
    moka_dev_free(c->work);
    c->work = NULL;
    c->work_bytes = 0;
    char w[512];
    snprintf(w, sizeof w, "the shared workspace (%s)", what);
    if (moka_dev_alloc(&c->work, want, w)) return -1;
    c->work_bytes = want;
  }
  *out = c->work;
  return 0;
}

/* ---- memory ------------------------------------------------------------------------------ */

int moka_dev_mem_info(size_t *free_bytes, size_t *total_bytes) {
  MOKA_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
  return 0;
}

int moka_dev_alloc(void **p, size_t bytes, const char *what) {
  *p = NULL;
  if (bytes == 0) return 0;
  cudaError_t e = cudaMalloc(p, bytes);
  if (e == cudaSuccess) return 0;
  *p = NULL;
  if (e != cudaErrorMemoryAllocation)
    return moka_cuda_fail((int)e, "cudaMalloc", __FILE__, __LINE__);
  cudaGetLastError(); /* clear the (non-sticky) allocation error */
  size_t fr = 0, tot = 0;
  cudaMemGetInfo(&fr, &tot);
  char dev[384];
  device_suffix(dev, sizeof dev);
  return moka_errorf("out of GPU memory: %s asked for %zu bytes (%.1f MiB), %.1f MiB of %.1f MiB "
                     "free%s. Lower the batch size (and raise iter_size to keep the effective "
                     "batch)",
                     what ? what : "an allocation", bytes, bytes / 1048576.0, fr / 1048576.0,
                     tot / 1048576.0, dev);
}

int moka_dev_calloc(void **p, size_t bytes, const char *what) {
  if (moka_dev_alloc(p, bytes, what)) return -1;
  if (!bytes) return 0;
  cudaError_t e = cudaMemset(*p, 0, bytes);
  if (e == cudaSuccess) e = cudaDeviceSynchronize(); /* ordered before any stream's use */
  if (e != cudaSuccess) {
    cudaFree(*p);
    *p = NULL;
    return moka_cuda_fail((int)e, "cudaMemset (zero-filled allocation)", __FILE__, __LINE__);
  }
  return 0;
}

void moka_dev_free(void *p) {
  if (p) cudaFree(p);
}

int moka_devbuf_reserve(DevBuf *b, size_t bytes, const char *what) {
  if (bytes <= b->bytes) return 0;
  moka_dev_free(b->ptr);
  b->ptr = NULL;
  b->bytes = 0;
  if (moka_dev_alloc(&b->ptr, bytes, what)) return -1;
  b->bytes = bytes;
  return 0;
}

void moka_devbuf_free(DevBuf *b) {
  moka_dev_free(b->ptr);
  b->ptr = NULL;
  b->bytes = 0;
}

int moka_h2d(cudaStream_t s, void *dst, const void *src, size_t bytes) {
  if (!bytes) return 0;
  MOKA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  return 0;
}

int moka_d2h(cudaStream_t s, void *dst, const void *src, size_t bytes) {
  if (!bytes) return 0;
  MOKA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  MOKA_CUDA_CHECK(cudaStreamSynchronize(s));
  return 0;
}

int moka_d2d(cudaStream_t s, void *dst, const void *src, size_t bytes) {
  if (!bytes || dst == src) return 0;
  MOKA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
  return 0;
}

int moka_d2d_2d(cudaStream_t s, void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                size_t row_bytes, size_t rows) {
  if (!rows || !row_bytes) return 0;
  MOKA_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows,
                                    cudaMemcpyDeviceToDevice, s));
  return 0;
}

int moka_dev_zero(cudaStream_t s, void *p, size_t bytes) {
  if (!bytes) return 0;
  MOKA_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));
  return 0;
}
