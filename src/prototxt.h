/* prototxt.h — protobuf text format (what .prototxt files are), read and
 * written generically over protobuf-c's message descriptors (protobuf-c has
 * no text format of its own).
 *
 * Reader: every scalar type, enums by name (or number), strings with C
 * escapes and adjacent-literal concatenation, nested messages in both
 * `field { ... }` and `field: { ... }` / `field < ... >` forms, repeated
 * fields (one entry per occurrence, and the `field: [a, b]` list form),
 * `#` comments. Errors name file:line:column and the field, e.g.
 *   solver.prototxt:12:3: unknown field 'use_global_stat' in caffe.BatchNormParameter
 * Unset optional fields keep their .proto defaults (the descriptor's init).
 */
#ifndef MOKA_PROTOTXT_H
#define MOKA_PROTOTXT_H

#include <stddef.h>
#include <protobuf-c/protobuf-c.h>

/* Parse `len` bytes of text as a message of type `desc`. `filename` is only
 * used in error messages. On success *out is a new message to be freed with
 * protobuf_c_message_free_unpacked(*out, NULL). Returns 0 / -1 (moka_error()). */
int prototxt_parse(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                   const char *filename, ProtobufCMessage **out);
/* Read and parse a file. */
int prototxt_read_file(const ProtobufCMessageDescriptor *desc, const char *path,
                       ProtobufCMessage **out);

/* Text of a message in the format above (2-space indentation, fields in
 * descriptor order, only fields that are set). Returns a malloc'd string or
 * NULL. Parsing the result gives an equal message. */
char *prototxt_format(const ProtobufCMessage *msg);
/* Write atomically (temporary file + rename). */
int prototxt_write_file(const ProtobufCMessage *msg, const char *path);

#endif
