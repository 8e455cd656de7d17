/* prototxt_write.c — the protobuf text format writer (prototxt_format,
 * prototxt_write_file; the reader is prototxt.c).
 *
 * Fields in descriptor order (protobuf-c sorts them by field number, which
 * is also the order Caffe's TextFormat printer uses), only fields that are
 * set, 2-space indentation, enums by name, floats in the shortest form that
 * parses back to the identical value. Numbers use the C locale's '.' (moka
 * never calls setlocale).
 */
#include "prototxt.h"
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "prototxt_internal.h"
#include "util.h"

/* ======================================================================== */
/* Writer                                                                    */
/* ======================================================================== */

typedef struct {
  char *p;
  size_t len, cap;
  bool failed; /* out of memory: everything after is dropped */
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) {
      if (cap > SIZE_MAX / 2) {
        b->failed = true;
        return;
      }
      cap *= 2;
    }
    char *np = realloc(b->p, cap);
    if (!np) {
      b->failed = true;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

static void buf_puts(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_printf(Buf *b, const char *fmt, ...) MOKA_PRINTF(2, 3);
static void buf_printf(Buf *b, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) {
    b->failed = true; /* only used for numbers, which always fit */
    return;
  }
  buf_put(b, tmp, (size_t)n);
}

static void buf_indent(Buf *b, int depth) {
  for (int i = 0; i < depth; i++) buf_put(b, "  ", 2);
}

/* Quoted literal with C escapes. Bytes >= 0x80 pass through for strings
 * (UTF-8 stays readable) and are escaped for bytes fields. */
static void buf_quoted(Buf *b, const uint8_t *s, size_t n, bool escape_high) {
  buf_put(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    switch (c) {
      case '\n': buf_put(b, "\\n", 2); break;
      case '\r': buf_put(b, "\\r", 2); break;
      case '\t': buf_put(b, "\\t", 2); break;
      case '"': buf_put(b, "\\\"", 2); break;
      case '\\': buf_put(b, "\\\\", 2); break;
      default:
        if (c < 0x20 || c == 0x7f || (c >= 0x80 && escape_high)) {
          char e[5];
          snprintf(e, sizeof e, "\\%03o", c); /* always 3 digits: unambiguous */
          buf_put(b, e, 4);
        } else {
          buf_put(b, (const char *)&c, 1);
        }
    }
  }
  buf_put(b, "\"", 1);
}

/* Shortest "%.Ng" that reads back as the identical value. */
static void format_real(Buf *b, double v, bool is_float) {
  if (isnan(v)) {
    buf_puts(b, "nan");
    return;
  }
  if (isinf(v)) {
    buf_puts(b, v > 0 ? "inf" : "-inf");
    return;
  }
  char tmp[40];
  int max_prec = is_float ? 9 : 17;
  for (int prec = 1; prec <= max_prec; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (is_float ? strtof(tmp, NULL) == (float)v : strtod(tmp, NULL) == v) break;
  }
  buf_puts(b, tmp);
}

/* The value of one element of scalar field f stored at p. */
static void format_scalar(Buf *b, const ProtobufCFieldDescriptor *f, const void *p) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: buf_printf(b, "%" PRId32, *(const int32_t *)p); break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: buf_printf(b, "%" PRId64, *(const int64_t *)p); break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: buf_printf(b, "%" PRIu32, *(const uint32_t *)p); break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: buf_printf(b, "%" PRIu64, *(const uint64_t *)p); break;
    case PROTOBUF_C_TYPE_FLOAT: format_real(b, *(const float *)p, true); break;
    case PROTOBUF_C_TYPE_DOUBLE: format_real(b, *(const double *)p, false); break;
    case PROTOBUF_C_TYPE_BOOL:
      buf_puts(b, *(const protobuf_c_boolean *)p ? "true" : "false");
      break;
    case PROTOBUF_C_TYPE_ENUM: {
      int v = *(const int *)p;
      const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
      if (ev)
        buf_puts(b, ev->name);
      else
        buf_printf(b, "%d", v); /* not a known value: the number reads back */
      break;
    }
    case PROTOBUF_C_TYPE_STRING: {
      const char *s = *(const char *const *)p;
      if (!s) s = "";
      buf_quoted(b, (const uint8_t *)s, strlen(s), false);
      break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      const ProtobufCBinaryData *bd = p;
      buf_quoted(b, bd->data, bd->data ? bd->len : 0, true);
      break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: break;
  }
}

static int format_message(Buf *b, const ProtobufCMessage *m, int depth);

/* One `name: value` line or `name { ... }` block. */
static int format_element(Buf *b, const ProtobufCFieldDescriptor *f, const void *p, int depth) {
  buf_indent(b, depth);
  buf_puts(b, f->name);
  if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    buf_puts(b, " {\n");
    const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
    if (sub && format_message(b, sub, depth + 1)) return -1;
    buf_indent(b, depth);
    buf_puts(b, "}\n");
  } else {
    buf_puts(b, ": ");
    format_scalar(b, f, p);
    buf_puts(b, "\n");
  }
  return 0;
}

/* Is non-repeated field f set in m? */
static bool field_is_set(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f) {
  const void *p = MEMBER(m, f->offset);
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    return *(const uint32_t *)MEMBER(m, f->quantifier_offset) == f->id;
  if (f->type == PROTOBUF_C_TYPE_MESSAGE) return *(const void *const *)p != NULL;
  if (f->type == PROTOBUF_C_TYPE_STRING) {
    /* an unset string keeps the descriptor's default (or NULL) pointer */
    const char *s = *(const char *const *)p;
    if (!s || s == f->default_value) return false;
    return f->label != PROTOBUF_C_LABEL_NONE || s[0] != 0;
  }
  switch (f->label) {
    case PROTOBUF_C_LABEL_OPTIONAL:
      return *(const protobuf_c_boolean *)MEMBER(m, f->quantifier_offset);
    case PROTOBUF_C_LABEL_REQUIRED: return true;
    default: break;
  }
  /* proto3 (no presence): set when not zero */
  if (f->type == PROTOBUF_C_TYPE_BYTES) return ((const ProtobufCBinaryData *)p)->len != 0;
  static const char zero[sizeof(double)];
  return memcmp(p, zero, elem_size(f->type)) != 0;
}

static int format_message(Buf *b, const ProtobufCMessage *m, int depth) {
  if (depth > PROTOTXT_MAX_DEPTH)
    return moka_errorf("prototxt_format: messages nested deeper than %d levels",
                       PROTOTXT_MAX_DEPTH);
  const ProtobufCMessageDescriptor *md = m->descriptor;
  if (!md || md->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
    return moka_errorf("prototxt_format: not an initialised message");
  for (unsigned i = 0; i < md->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &md->fields[i];
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)MEMBER(m, f->quantifier_offset);
      const char *arr = *(const char *const *)MEMBER(m, f->offset);
      size_t es = elem_size(f->type);
      for (size_t k = 0; k < n && arr; k++) {
        const void *p = arr + k * es;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && !*(const void *const *)p) continue;
        if (format_element(b, f, p, depth)) return -1;
      }
    } else if (field_is_set(m, f)) {
      if (format_element(b, f, MEMBER(m, f->offset), depth)) return -1;
    }
  }
  return 0;
}

char *prototxt_format(const ProtobufCMessage *msg) {
  if (!msg) {
    moka_errorf("prototxt_format: NULL message");
    return NULL;
  }
  Buf b = {0};
  buf_put(&b, "", 0); /* an empty message is "" (allocated), not NULL */
  if (format_message(&b, msg, 0)) {
    free(b.p);
    return NULL;
  }
  if (b.failed) {
    free(b.p);
    moka_errorf("out of memory formatting %s as text", msg->descriptor->name);
    return NULL;
  }
  return b.p;
}

int prototxt_write_file(const ProtobufCMessage *msg, const char *path) {
  char *text = prototxt_format(msg);
  if (!text) return moka_error_prefix("writing '%s'", path);
  int rc = moka_write_file_atomic(path, text, strlen(text));
  free(text);
  return rc;
}
