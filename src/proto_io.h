/* proto_io.h — binary protobuf files: .caffemodel (NetParameter),
 * .solverstate (SolverState), .binaryproto (BlobProto), and BlobProto <->
 * Blob conversion.
 */
#ifndef MOKA_PROTO_IO_H
#define MOKA_PROTO_IO_H

#include <protobuf-c/protobuf-c.h>

#include "blob.h"
#include "caffe.pb-c.h"

/* Memory allowed for unpacking `len` bytes: 64 MiB plus 4 bytes per input
 * byte. Real files need about 1 byte per byte (float arrays dominate); a
 * hostile one made of empty sub-messages would need ~300 (protobuf-c
 * allocates a whole struct, 568 bytes for a LayerParameter, for each 2-byte
 * `layer {}`), so a 10 MB file could ask for 3 GB. */
#define PROTO_UNPACK_BUDGET(len) (((size_t)64 << 20) + 4 * (size_t)(len))

/* Unpack `len` bytes as a message of type desc, refusing (before running out
 * of memory) input that would need more than PROTO_UNPACK_BUDGET(len).
 * `what` names the source in errors. Free with
 * protobuf_c_message_free_unpacked(*out, NULL). */
int proto_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                 const char *what, ProtobufCMessage **out);
/* Read a binary message of type desc from path (proto_unpack). The file is
 * mapped, not copied, so peak memory is about the file plus the unpacked
 * message. Errors name the file ("truncated or corrupt"). */
int proto_read_binary(const ProtobufCMessageDescriptor *desc, const char *path,
                      ProtobufCMessage **out);
/* Pack and write atomically (temporary file, fsync, rename). */
int proto_write_binary(const ProtobufCMessage *msg, const char *path);

/* Shape of a BlobProto: `shape` if present, else the legacy
 * num/channels/height/width (Caffe's LegacyShape: 4 axes). */
int blobproto_shape(const Caffe__BlobProto *bp, int *num_axes, int shape[MOKA_MAX_AXES]);
/* Copy values (data, or double_data) into b->data; b must have the same
 * element count. `what` names the source for error messages. */
int blobproto_to_blob_data(const Caffe__BlobProto *bp, Blob *b, const char *what);
/* Reshape b to bp's shape and copy its values. */
int blobproto_load(const Caffe__BlobProto *bp, Blob *b, const char *what);
/* Fill a BlobProto (caffe__blob_proto__init'd by this call) from b: shape and
 * data; diff too when write_diff. The float arrays are malloc'd copies:
 * free with blobproto_clear. */
int blobproto_from_blob(Caffe__BlobProto *bp, const Blob *b, int write_diff);
void blobproto_clear(Caffe__BlobProto *bp);

#endif
