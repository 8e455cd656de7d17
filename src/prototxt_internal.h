/* prototxt_internal.h — what the prototxt reader (prototxt.c) and writer
 * (prototxt_write.c) share. Not part of moka's API. */
#ifndef MOKA_PROTOTXT_INTERNAL_H
#define MOKA_PROTOTXT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

/* Messages may nest at most this many levels (Google's parser's default),
 * in text read and written alike. */
#define PROTOTXT_MAX_DEPTH 100

/* The field at byte offset `off` of a message. */
#define MEMBER(msg, off) ((void *)((char *)(msg) + (off)))

/* Bytes one element of a field of type t occupies in a repeated array. */
static inline size_t elem_size(ProtobufCType t) {
  switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: return sizeof(int32_t);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return sizeof(int64_t);
    case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM: return sizeof(int); /* protobuf-c enums are int-sized */
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
  }
  return 0;
}

#endif
