/* blob.c — see blob.h. */
#include "blob.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

Blob *blob_new(const char *name) {
  Blob *b = moka_calloc(1, sizeof *b);
  if (!b) return NULL;
  b->name = moka_strdup(name ? name : "");
  b->owns = true;
  b->count = 1;
  return b;
}

void blob_free(Blob *b) {
  if (!b) return;
  if (b->owns) {
    free(b->data);
    free(b->diff);
  }
  free(b->name);
  free(b);
}

static int shape_count(int num_axes, const int *shape, size_t *count) {
  if (num_axes < 0 || num_axes > MOKA_MAX_AXES)
    return moka_errorf("blob has %d axes; at most %d are supported", num_axes, MOKA_MAX_AXES);
  size_t c = 1;
  for (int i = 0; i < num_axes; i++) {
    if (shape[i] < 0) return moka_errorf("blob axis %d has negative size %d", i, shape[i]);
    c *= (size_t)shape[i];
    if (c > (size_t)MOKA_MAX_BLOB_COUNT)
      return moka_errorf("blob size exceeds %lld elements", (long long)MOKA_MAX_BLOB_COUNT);
  }
  *count = c;
  return 0;
}

int blob_reshape(Blob *b, int num_axes, const int *shape) {
  size_t count;
  if (shape_count(num_axes, shape, &count)) return -1;
  if (!b->owns && count > b->capacity)
    return moka_errorf("blob '%s' is a view of %zu values and cannot grow to %zu", b->name,
                       b->capacity, count);
  if (b->owns && count > b->capacity) {
    float *d = calloc(count, sizeof(float));
    float *g = calloc(count, sizeof(float));
    if (!d || !g) {
      free(d);
      free(g);
      return moka_errorf("out of memory: blob '%s' needs 2 x %zu bytes", b->name,
                         count * sizeof(float));
    }
    free(b->data);
    free(b->diff);
    b->data = d;
    b->diff = g;
    b->capacity = count;
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
  if (shape_count(num_axes, shape, &count)) return -1;
  if (b->owns) {
    free(b->data);
    free(b->diff);
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
