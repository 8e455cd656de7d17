/* proto_io.c — binary protobuf files and BlobProto <-> Blob. See proto_io.h. */
#include "proto_io.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* A protobuf-c allocator that counts what it hands out and refuses to go over
 * a budget. Memory from it is plain malloc memory, so the message is freed
 * with the default allocator like any other. */
typedef struct UnpackBudget {
  size_t used, limit;
  bool over;
} UnpackBudget;

static void *budget_alloc(void *ctx, size_t n) {
  UnpackBudget *b = ctx;
  if (n > b->limit - b->used) {
    b->over = true;
    return NULL;
  }
  void *p = malloc(n ? n : 1);
  if (p) b->used += malloc_usable_size(p);
  return p;
}

static void budget_free(void *ctx, void *p) {
  UnpackBudget *b = ctx;
  if (!p) return;
  size_t n = malloc_usable_size(p);
  b->used -= MOKA_MIN(n, b->used);
  free(p);
}

int proto_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                 const char *what, ProtobufCMessage **out) {
  UnpackBudget b = {0, PROTO_UNPACK_BUDGET(len), false};
  ProtobufCAllocator a = {budget_alloc, budget_free, &b};
  *out = protobuf_c_message_unpack(desc, &a, len, len ? data : (const uint8_t *)"");
  if (*out) return 0;
  if (b.over)
    return moka_errorf("%s: unpacking it as a %s would take more than %zu MiB of memory for a "
                       "%zu-byte input (far more messages than its size allows for real "
                       "data: a corrupt or hostile file)",
                       what, desc->name, b.limit >> 20, len);
  return moka_errorf("%s is truncated or corrupt: it does not parse as a binary %s (%zu bytes)",
                     what, desc->name, len);
}

int proto_read_binary(const ProtobufCMessageDescriptor *desc, const char *path,
                      ProtobufCMessage **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return moka_errorf("cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return moka_errorf("'%s' is not a regular file", path);
  }
  size_t len = (size_t)st.st_size;
  const uint8_t *data = NULL;
  void *map = MAP_FAILED;
  if (len > 0) {
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      int e = errno;
      close(fd);
      return moka_errorf("cannot map '%s': %s", path, strerror(e));
    }
    data = map;
  }
  close(fd);
  char what[4200];
  snprintf(what, sizeof what, "'%s'", path);
  int rc = proto_unpack(desc, data, len, what, out);
  if (map != MAP_FAILED) munmap(map, len);
  return rc;
}

int proto_write_binary(const ProtobufCMessage *msg, const char *path) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = moka_malloc(len);
  if (!buf) return moka_error_prefix("writing '%s'", path);
  size_t got = protobuf_c_message_pack(msg, buf);
  MOKA_CHECK(got == len);
  int rc = moka_write_file_atomic(path, buf, len);
  free(buf);
  return rc;
}

int blobproto_shape(const Caffe__BlobProto *bp, int *num_axes, int shape[MOKA_MAX_AXES]) {
  if (bp->shape) {
    if (bp->shape->n_dim > MOKA_MAX_AXES)
      return moka_errorf("blob has %zu axes; at most %d are supported", bp->shape->n_dim,
                         MOKA_MAX_AXES);
    *num_axes = (int)bp->shape->n_dim;
    for (size_t i = 0; i < bp->shape->n_dim; i++) {
      int64_t d = bp->shape->dim[i];
      if (d < 0 || d > 2147483647LL)
        return moka_errorf("blob axis %zu has invalid size %lld", i, (long long)d);
      shape[i] = (int)d;
    }
    return 0;
  }
  /* Legacy 4-D header (num, channels, height, width; each defaults to 0). */
  *num_axes = 4;
  int32_t v[4] = {bp->num, bp->channels, bp->height, bp->width};
  for (int i = 0; i < 4; i++) {
    if (v[i] < 0) return moka_errorf("blob has negative legacy dimension %d", v[i]);
    shape[i] = v[i];
  }
  return 0;
}

int blobproto_to_blob_data(const Caffe__BlobProto *bp, Blob *b, const char *what) {
  if (bp->n_double_data > 0) {
    if (bp->n_double_data != b->count)
      return moka_errorf("%s: %zu values stored, %zu expected", what, bp->n_double_data, b->count);
    for (size_t i = 0; i < b->count; i++) b->data[i] = (float)bp->double_data[i];
    return 0;
  }
  if (bp->n_data != b->count)
    return moka_errorf("%s: %zu values stored, %zu expected", what, bp->n_data, b->count);
  if (b->count) memcpy(b->data, bp->data, b->count * sizeof(float));
  return 0;
}

int blobproto_load(const Caffe__BlobProto *bp, Blob *b, const char *what) {
  int n, shape[MOKA_MAX_AXES];
  if (blobproto_shape(bp, &n, shape) || blob_reshape(b, n, shape))
    return moka_error_prefix("%s", what);
  return blobproto_to_blob_data(bp, b, what);
}

int blobproto_from_blob(Caffe__BlobProto *bp, const Blob *b, int write_diff) {
  caffe__blob_proto__init(bp);
  Caffe__BlobShape *s = moka_malloc(sizeof *s);
  if (!s) return -1;
  caffe__blob_shape__init(s);
  s->n_dim = (size_t)b->num_axes;
  s->dim = moka_malloc((size_t)(b->num_axes ? b->num_axes : 1) * sizeof(int64_t));
  bp->shape = s;
  bp->n_data = b->count;
  bp->data = moka_malloc((b->count ? b->count : 1) * sizeof(float));
  if (!s->dim || !bp->data) {
    blobproto_clear(bp);
    return -1;
  }
  for (int i = 0; i < b->num_axes; i++) s->dim[i] = b->shape[i];
  if (b->count) memcpy(bp->data, b->data, b->count * sizeof(float));
  if (write_diff) {
    bp->n_diff = b->count;
    bp->diff = moka_malloc((b->count ? b->count : 1) * sizeof(float));
    if (!bp->diff) {
      blobproto_clear(bp);
      return -1;
    }
    if (b->count) memcpy(bp->diff, b->diff, b->count * sizeof(float));
  }
  return 0;
}

void blobproto_clear(Caffe__BlobProto *bp) {
  if (bp->shape) {
    free(bp->shape->dim);
    free(bp->shape);
  }
  free(bp->data);
  free(bp->diff);
  caffe__blob_proto__init(bp);
}
