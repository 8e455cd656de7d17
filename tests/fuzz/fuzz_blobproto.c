/* fuzz_blobproto.c — a .binaryproto (mean files): BlobProto unpacked as
 * proto_read_binary does, then blobproto_load into a Blob, which must either
 * fail with a message or hold exactly the stored values. */
#include <string.h>

#include "caffe.pb-c.h"
#include "fuzz.h"
#include "proto_io.h"

int fuzz_blobproto(const uint8_t *data, size_t size) {
  fuzz_init();
  ProtobufCMessage *m;
  if (proto_unpack(&caffe__blob_proto__descriptor, data, size, "fuzz.binaryproto", &m) != 0)
    return 0;
  Caffe__BlobProto *bp = (Caffe__BlobProto *)m;
  Blob *b = blob_new("mean");
  FUZZ_ASSERT(b, "blob_new");
  if (blobproto_load(bp, b, "fuzz.binaryproto") == 0) {
    size_t n = bp->n_double_data ? bp->n_double_data : bp->n_data;
    FUZZ_ASSERT(n == b->count, "loaded %zu values into a blob of %zu", n, b->count);
    if (!bp->n_double_data && n)
      FUZZ_ASSERT(memcmp(b->data, bp->data, n * sizeof(float)) == 0, "values differ");
  } else {
    FUZZ_ASSERT(moka_error()[0], "failure without a message");
  }
  blob_free(b);
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

FUZZ_ENTRY(fuzz_blobproto)
