/* blob.h — Caffe's Blob: a float32 N-d array with data and diff.
 *
 * Shape: up to 32 axes (Caffe's limit); ResNet uses 4 (N,C,H,W) and 2 (N,D).
 * Memory: host `data` and `diff`, each `count` floats. A blob either owns its
 * memory or is a view into a larger allocation (the net's flat parameter
 * buffer): `owns` says which. Device copies (CUDA backend) are explicit and
 * live beside the host pointers; nothing here copies behind your back.
 */
#ifndef MOKA_BLOB_H
#define MOKA_BLOB_H

#include <stdbool.h>
#include <stddef.h>

#define MOKA_MAX_AXES 32
/* Element-count limit for one blob (2^31 - 1, as Caffe's INT_MAX check). */
#define MOKA_MAX_BLOB_COUNT 2147483647LL

typedef struct Blob {
  char *name;
  int num_axes;
  int shape[MOKA_MAX_AXES];
  size_t count;     /* product of shape (1 for 0 axes) */
  size_t capacity;  /* floats allocated in data/diff (owned blobs) */
  float *data;      /* (shape...) host values */
  float *diff;      /* (shape...) host gradients */
  bool owns;        /* false: data/diff point into someone else's buffer */
  /* blob_share_data: `data` is another blob's (Caffe's ShareData), the
   * blob's own data array waits in own_data; NULL when not shared. */
  float *own_data;
  /* Device copies (CUDA backend); NULL on the CPU. */
  float *dev_data;
  float *dev_diff;
  /* floats allocated at dev_data/dev_diff when the blob owns its device
   * memory (src/net_cuda.c); 0 for a view (parameters: views into the net's
   * flat device buffers) or no device copy. */
  size_t dev_capacity;
  /* The device copies hold bf16 channels-last values (N, H, W, C; 2 bytes each) instead
   * of fp32 NCHW: decided per blob by net_bf16_plan (MOKA_BF16_ACT=1, src/net_bf16.h) before
   * the device buffers are made; the host copies (data, diff) stay fp32 NCHW and the
   * explicit copies convert. */
  bool dev_bf16;
  /* The same on the fast CPU backend (--precision=bf16, net_bf16_plan): `data` and
   * `diff` hold bf16 channels-last values (N, H, W, C; 2 bytes each, in the first half
   * of the buffers) instead of fp32 NCHW. Only the layers the plan chose read them
   * (src/net_bf16.h); blob_host_f32 reads such a blob's values as fp32 NCHW. */
  bool host_bf16;
} Blob;

/* Bytes per value of the blob's device copies (2 for bf16 channels-last, else 4). */
static inline size_t blob_dev_elem_bytes(const Blob *b) { return b->dev_bf16 ? 2 : 4; }

/* The blob's host values (diff: its gradient) as fp32 (shape...) into out
 * (count floats): a copy, or converted from bf16 channels-last (host_bf16). */
void blob_host_f32(const Blob *b, bool diff, float *out);

/* Memory limit for blobs (process-wide): an owned blob's data + diff are
 * counted while allocated, and a reshape that would take the total over
 * the limit fails before allocating, naming the blob and the sizes. The
 * default is the machine's physical memory (a net that needs more cannot
 * run anyway; failing early beats the OOM killer). Services and fuzzers
 * lower it; 0 restores the default. */
void blob_set_memory_limit(size_t bytes);
size_t blob_memory_limit(void);
size_t blob_memory_in_use(void);
/* Check that a scratch buffer of `bytes` (a layer's column buffer, ...)
 * fits what is left under the limit; 0, or -1 with a message naming
 * `what`. Nothing is reserved. */
int blob_memory_check(size_t bytes, const char *what);
/* Count `bytes` of memory that is not a blob's (the net's flat parameter
 * arrays) against the limit: -1 with a message naming `what` when it does
 * not fit, nothing counted then. Release the same amount when freeing. */
int blob_memory_reserve(size_t bytes, const char *what);
void blob_memory_release(size_t bytes);

Blob *blob_new(const char *name);
void blob_free(Blob *b);

/* Set the shape; grows the allocation when needed (owned blobs). Shapes with
 * a negative dimension or a count over MOKA_MAX_BLOB_COUNT are errors. New
 * memory is zeroed. Returns 0 / -1. */
int blob_reshape(Blob *b, int num_axes, const int *shape);
int blob_reshape4(Blob *b, int n, int c, int h, int w);
int blob_reshape_like(Blob *b, const Blob *other);
/* Make `b` a view of `count(shape)` floats at data/diff (not owned). */
int blob_set_view(Blob *b, int num_axes, const int *shape, float *data, float *diff);

/* Caffe's ShareData: dst's data becomes a view of src's (same count; dst
 * keeps its own diff). Host memory only. The sharing lasts until
 * blob_unshare_data, or until dst is reshaped, set as a view or freed, which
 * all give dst its own data back (with the values it had before sharing):
 * whoever shares re-shares after reshaping (the net does it before each
 * Split forward, src/net_fuse.c). -1 with a message when the counts
 * differ or dst is a view. */
int blob_share_data(Blob *dst, const Blob *src);
void blob_unshare_data(Blob *b);
static inline bool blob_data_shared(const Blob *b) { return b->own_data != NULL; }

/* Caffe's CanonicalAxisIndex: negative axes count from the end. -1 and an
 * error when out of range. */
int blob_canonical_axis(const Blob *b, int axis);
/* Product of shape[start..end) (end exclusive). */
size_t blob_count_range(const Blob *b, int start, int end);
/* Caffe's legacy 4-D accessors: axis or 1 when the blob has fewer axes. */
int blob_legacy_dim(const Blob *b, int i);
bool blob_same_shape(const Blob *a, const Blob *b);
/* "2 3 224 224 (301056)" as Caffe prints shapes. */
const char *blob_shape_string(const Blob *b, char *buf, size_t len);

void blob_zero_data(Blob *b);
void blob_zero_diff(Blob *b);

#endif
