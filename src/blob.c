/* blob.c — see blob.h. */
#include "blob.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "util.h"

/* ---- the memory limit ---------------------------------------------------------------- */

static size_t g_limit;   /* 0 = the default (physical memory) */
static size_t g_in_use;  /* bytes of owned data + diff, updated atomically */

void blob_set_memory_limit(size_t bytes) { __atomic_store_n(&g_limit, bytes, __ATOMIC_RELAXED); }

size_t blob_memory_limit(void) {
  size_t l = __atomic_load_n(&g_limit, __ATOMIC_RELAXED);
  if (l) return l;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return SIZE_MAX;
  return (size_t)pages * (size_t)page;
}

size_t blob_memory_in_use(void) { return __atomic_load_n(&g_in_use, __ATOMIC_RELAXED); }

static double mib(size_t b) { return (double)b / (1024.0 * 1024.0); }

int blob_memory_check(size_t bytes, const char *what) {
  size_t limit = blob_memory_limit(), used = blob_memory_in_use();
  if (bytes > limit || used > limit - bytes)
    return moka_errorf("%s needs %.1f MiB, but blobs already hold %.1f MiB and the memory limit "
                       "is %.1f MiB%s",
                       what, mib(bytes), mib(used), mib(limit),
                       __atomic_load_n(&g_limit, __ATOMIC_RELAXED) ? "" : " (physical memory)");
  return 0;
}

static void charge(size_t bytes) { __atomic_add_fetch(&g_in_use, bytes, __ATOMIC_RELAXED); }
static void uncharge(size_t bytes) { __atomic_sub_fetch(&g_in_use, bytes, __ATOMIC_RELAXED); }

int blob_memory_reserve(size_t bytes, const char *what) {
  if (blob_memory_check(bytes, what)) return -1;
  charge(bytes);
  return 0;
}

void blob_memory_release(size_t bytes) { uncharge(bytes); }

/* ---- blobs ---------------------------------------------------------------------------- */

Blob *blob_new(const char *name) {
  Blob *b = moka_calloc(1, sizeof *b);
  if (!b) return NULL;
  b->name = moka_strdup(name ? name : "");
  b->owns = true;
  /* A new blob is a scalar 0 (0 axes, count 1) with real memory behind it:
   * a blob nobody shapes (an Input layer without a shape, ...) must still
   * be readable. */
  b->count = 1;
  b->data = moka_alloc_big(sizeof(float));
  b->diff = moka_alloc_big(sizeof(float));
  if (!b->name || !b->data || !b->diff) {
    moka_free_big(b->data, sizeof(float));
    moka_free_big(b->diff, sizeof(float));
    free(b->name);
    free(b);
    moka_errorf("out of memory creating blob '%s'", name ? name : "");
    return NULL;
  }
  b->capacity = 1;
  charge(2 * sizeof(float));
  return b;
}

int blob_share_data(Blob *dst, const Blob *src) {
  if (dst == src) return 0;
  if (!dst->owns)
    return moka_errorf("blob '%s' is a view and cannot share blob '%s''s data", dst->name,
                       src->name);
  if (dst->count != src->count)
    return moka_errorf("blob '%s' (%zu values) cannot share the data of blob '%s' (%zu values)",
                       dst->name, dst->count, src->name, src->count);
  if (!dst->own_data) dst->own_data = dst->data;
  dst->data = src->data;
  return 0;
}

void blob_unshare_data(Blob *b) {
  if (!b->own_data) return;
  b->data = b->own_data;
  b->own_data = NULL;
}

void blob_free(Blob *b) {
  if (!b) return;
  blob_unshare_data(b);
  if (b->owns) {
    moka_free_big(b->data, b->capacity * sizeof(float));
    moka_free_big(b->diff, b->capacity * sizeof(float));
    uncharge(2 * b->capacity * sizeof(float));
  }
  free(b->name);
  free(b);
}

/* "2 3 224 224" into buf (for messages about shapes that are not a blob's yet). */
static const char *shape_text(int num_axes, const int *shape, char *buf, size_t len) {
  size_t off = 0;
  buf[0] = 0;
  for (int i = 0; i < num_axes && i < MOKA_MAX_AXES && off < len; i++)
    off += (size_t)snprintf(buf + off, len - off, "%s%d", i ? " " : "", shape[i]);
  return buf;
}

static int shape_count(const char *name, int num_axes, const int *shape, size_t *count) {
  if (num_axes < 0 || num_axes > MOKA_MAX_AXES)
    return moka_errorf("blob '%s' has %d axes; at most %d are supported", name, num_axes,
                       MOKA_MAX_AXES);
  char buf[400];
  for (int i = 0; i < num_axes; i++)
    if (shape[i] < 0)
      return moka_errorf("blob '%s' shape (%s): axis %d has negative size %d", name,
                         shape_text(num_axes, shape, buf, sizeof buf), i, shape[i]);
  /* In 64 bits: 32 axes of up to 2^31 cannot overflow before the check
   * (each step multiplies a value <= 2^31 by one < 2^31); a zero axis makes
   * the blob empty whatever the others say. */
  uint64_t c = 1;
  bool too_big = false;
  for (int i = 0; i < num_axes; i++) {
    c *= (uint64_t)shape[i];
    if (c > (uint64_t)MOKA_MAX_BLOB_COUNT) {
      too_big = true;
      c = (uint64_t)MOKA_MAX_BLOB_COUNT + 1;
    }
  }
  for (int i = 0; i < num_axes; i++)
    if (shape[i] == 0) too_big = false, c = 0;
  if (too_big)
    return moka_errorf("blob '%s' shape (%s) has more than %lld elements (Caffe's limit)", name,
                       shape_text(num_axes, shape, buf, sizeof buf),
                       (long long)MOKA_MAX_BLOB_COUNT);
  *count = (size_t)c;
  return 0;
}

int blob_reshape(Blob *b, int num_axes, const int *shape) {
  size_t count;
  blob_unshare_data(b);
  if (shape_count(b->name, num_axes, shape, &count)) return -1;
  if (!b->owns && count > b->capacity)
    return moka_errorf("blob '%s' is a view of %zu values and cannot grow to %zu", b->name,
                       b->capacity, count);
  if (b->owns && (count > b->capacity || !b->data)) {
    /* data + diff; the old arrays are freed once the new ones exist. An
     * empty blob still gets one float, so that data and diff are never
     * NULL (memcpy and friends must not see NULL, even for 0 bytes). */
    char what[600], sb[400];
    snprintf(what, sizeof what, "blob '%s' (%s: 2 x %zu floats)", b->name,
             shape_text(num_axes, shape, sb, sizeof sb), count);
    if (blob_memory_check(2 * count * sizeof(float), what)) return -1;
    const size_t alloc = count ? count : 1;
    float *d = moka_alloc_big(alloc * sizeof(float)); /* huge pages from 2 MiB on */
    float *g = moka_alloc_big(alloc * sizeof(float));
    if (!d || !g) {
      moka_free_big(d, alloc * sizeof(float));
      moka_free_big(g, alloc * sizeof(float));
      return moka_errorf("out of memory: blob '%s' needs 2 x %zu bytes", b->name,
                         count * sizeof(float));
    }
    moka_free_big(b->data, b->capacity * sizeof(float));
    moka_free_big(b->diff, b->capacity * sizeof(float));
    uncharge(2 * b->capacity * sizeof(float));
    charge(2 * alloc * sizeof(float));
    b->data = d;
    b->diff = g;
    b->capacity = alloc;
  }
  b->num_axes = num_axes;
  for (int i = 0; i < num_axes; i++) b->shape[i] = shape[i];
  b->count = count;
  return 0;
}

int blob_reshape4(Blob *b, int n, int c, int h, int w) {
  int s[4] = {n, c, h, w};
  return blob_reshape(b, 4, s);
}

int blob_reshape_like(Blob *b, const Blob *other) {
  return blob_reshape(b, other->num_axes, other->shape);
}

int blob_set_view(Blob *b, int num_axes, const int *shape, float *data, float *diff) {
  size_t count;
  if (shape_count(b->name, num_axes, shape, &count)) return -1;
  blob_unshare_data(b);
  if (b->owns) {
    moka_free_big(b->data, b->capacity * sizeof(float));
    moka_free_big(b->diff, b->capacity * sizeof(float));
    uncharge(2 * b->capacity * sizeof(float));
  }
  b->owns = false;
  b->data = data;
  b->diff = diff;
  b->capacity = count;
  b->count = count;
  b->num_axes = num_axes;
  for (int i = 0; i < num_axes; i++) b->shape[i] = shape[i];
  return 0;
}

int blob_canonical_axis(const Blob *b, int axis) {
  if (axis < -b->num_axes || axis >= b->num_axes) {
    moka_errorf("axis %d out of range for a blob with %d axes", axis, b->num_axes);
    return -1;
  }
  return axis < 0 ? axis + b->num_axes : axis;
}

size_t blob_count_range(const Blob *b, int start, int end) {
  size_t c = 1;
  for (int i = start; i < end && i < b->num_axes; i++) c *= (size_t)b->shape[i];
  return c;
}

int blob_legacy_dim(const Blob *b, int i) {
  /* Caffe's LegacyShape: with fewer than 4 axes, missing axes are 1. */
  if (i >= b->num_axes) return 1;
  return b->shape[i];
}

bool blob_same_shape(const Blob *a, const Blob *b) {
  if (a->num_axes != b->num_axes) return false;
  for (int i = 0; i < a->num_axes; i++)
    if (a->shape[i] != b->shape[i]) return false;
  return true;
}

const char *blob_shape_string(const Blob *b, char *buf, size_t len) {
  size_t off = 0;
  buf[0] = 0;
  for (int i = 0; i < b->num_axes && off < len; i++)
    off += (size_t)snprintf(buf + off, len - off, "%d ", b->shape[i]);
  if (off < len) snprintf(buf + off, len - off, "(%zu)", b->count);
  return buf;
}

void blob_zero_data(Blob *b) {
  if (b->data && b->count) memset(b->data, 0, b->count * sizeof(float));
}

void blob_zero_diff(Blob *b) {
  if (b->diff && b->count) memset(b->diff, 0, b->count * sizeof(float));
}

void blob_host_f32(const Blob *b, bool diff, float *out) {
  const float *src = diff ? b->diff : b->data;
  if (!b->host_bf16) {
    memcpy(out, src, b->count * sizeof(float));
    return;
  }
  /* (N, H, W, C) bf16 -> (N, C, H, W); any trailing axes count as pixels */
  const uint16_t *h = (const uint16_t *)src;
  const size_t N = b->num_axes > 0 ? (size_t)b->shape[0] : 1;
  const size_t C = b->num_axes > 1 ? (size_t)b->shape[1] : 1;
  const size_t S = N > 0 && C > 0 ? b->count / (N * C) : 0;
  for (size_t n = 0; n < N; n++)
    for (size_t s = 0; s < S; s++)
      for (size_t c = 0; c < C; c++) {
        const uint32_t u = (uint32_t)h[(n * S + s) * C + c] << 16;
        memcpy(&out[(n * C + c) * S + s], &u, sizeof(float));
      }
}
