/* prototxt.c — protobuf text format (.prototxt) reader (the writer is in
 * prototxt_write.c), generic
 * over protobuf-c message descriptors (protobuf-c has no text format).
 *
 * Reader: a small lexer (prototxt_lex.c: identifiers, numbers, quoted
 * strings, one-character symbols, `#` comments) and a recursive-descent
 * parser over the message descriptor. Recursion is bounded: messages may nest at most
 * PROTOTXT_MAX_DEPTH levels (Google's parser has the same default limit), so
 * hostile input cannot exhaust the stack. The input is a (pointer, length)
 * pair and is never read past its end (it need not be NUL-terminated).
 *
 * Memory layout: everything the parser builds is exactly what protobuf-c's
 * own unpacker would build with the default allocator, so the result is freed
 * with protobuf_c_message_free_unpacked(msg, NULL):
 *   - each message is malloc(desc->sizeof_message) + protobuf_c_message_init;
 *   - optional scalars set their has_* flag (proto2), oneof members their case;
 *   - strings are malloc'd and NUL-terminated; an unset string field keeps its
 *     init value, which for a field with a [default] is the descriptor's
 *     default_value array (free_unpacked skips a pointer equal to it);
 *   - bytes are malloc'd (never NULL, even when empty);
 *   - repeated fields are a size_t count at quantifier_offset plus a malloc'd
 *     array at offset (elements by value; strings, bytes data and
 *     sub-messages each malloc'd).
 * Every sub-message and array is attached to its parent before it is filled,
 * so on any error freeing the top-level message frees everything.
 *
 * Semantics follow Google's TextFormat parser (what Caffe uses): a
 * non-repeated field given twice is an error, unknown fields and enum values
 * are errors, required fields must be present, integers are range-checked for
 * their field type, `field: [a, b]` lists only for repeated fields. Error
 * messages read "FILE:LINE:COL: message"; lines and columns count from 1, a
 * tab advances the column to the next multiple of 8 plus one (as protobuf's
 * tokenizer and GCC count), and UTF-8 continuation bytes take no column.
 *
 * Writer: fields in descriptor order (protobuf-c sorts them by field number,
 * which is also the order Caffe's TextFormat printer uses), only fields that
 * are set, 2-space indentation, enums by name, floats in the shortest form
 * that parses back to the identical value. Numbers use the C locale's '.'
 * (moka never calls setlocale).
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
#include "prototxt_lex.h"
#include "util.h"

#define MAX_NAME_LEN 255   /* longer identifiers cannot be field names */
#define MAX_NUMBER_LEN 511 /* longer numeric literals are rejected */

/* Memory allowed for the message structs of `len` bytes of text: 64 MiB
 * plus 16 bytes per byte. Real definitions need under 10 per byte; an
 * empty `layer{}` costs 7 bytes of text and 568 of memory, so a large
 * hostile file would otherwise ask for 80 times its size. */
#define PROTOTXT_BUDGET(len) (((size_t)64 << 20) + 16 * (size_t)(len))

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

/* "FILE:LINE:COL: message" at token t. Returns -1. */
static int perr(const Parser *ps, const Token *t, const char *fmt, ...) MOKA_PRINTF(3, 4);
static int perr(const Parser *ps, const Token *t, const char *fmt, ...) {
  char msg[3072];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return moka_errorf("%s:%d:%d: %s", ps->filename, t->line, t->col, msg);
}

/* A printable description of a token for "got X" in messages. */
static const char *tok_desc(const Token *t, char *buf, size_t cap) {
  if (t->kind == TOK_END) return "end of input";
  size_t n = MOKA_MIN(t->len, (size_t)40);
  snprintf(buf, cap, "'%.*s%s'", (int)n, t->p, n < t->len ? "..." : "");
  return buf;
}

static const char *type_name(ProtobufCType t) {
  switch (t) {
    case PROTOBUF_C_TYPE_INT32: return "int32";
    case PROTOBUF_C_TYPE_SINT32: return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32: return "sfixed32";
    case PROTOBUF_C_TYPE_INT64: return "int64";
    case PROTOBUF_C_TYPE_SINT64: return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64: return "sfixed64";
    case PROTOBUF_C_TYPE_UINT32: return "uint32";
    case PROTOBUF_C_TYPE_FIXED32: return "fixed32";
    case PROTOBUF_C_TYPE_UINT64: return "uint64";
    case PROTOBUF_C_TYPE_FIXED64: return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT: return "float";
    case PROTOBUF_C_TYPE_DOUBLE: return "double";
    case PROTOBUF_C_TYPE_BOOL: return "bool";
    case PROTOBUF_C_TYPE_ENUM: return "enum";
    case PROTOBUF_C_TYPE_STRING: return "string";
    case PROTOBUF_C_TYPE_BYTES: return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE: return "message";
  }
  return "?";
}

/* The current token is not what field f (of message md) needs: report it.
 * A lexical error token reports the lexer's message instead. `what` says
 * what was expected. f may be NULL (message context only). */
static int bad_token(const Parser *ps, const ProtobufCMessageDescriptor *md,
                     const ProtobufCFieldDescriptor *f, const char *what) {
  const Token *t = &ps->tok;
  char buf[64];
  if (t->kind == TOK_ERROR) {
    if (f) return perr(ps, t, "%s (field '%s' in %s)", ps->lexmsg, f->name, md->name);
    return perr(ps, t, "%s (in %s)", ps->lexmsg, md->name);
  }
  if (f)
    return perr(ps, t, "expected %s for %s field '%s' in %s, got %s", what, type_name(f->type),
                f->name, md->name, tok_desc(t, buf, sizeof buf));
  return perr(ps, t, "expected %s in %s, got %s", what, md->name, tok_desc(t, buf, sizeof buf));
}

/* Edit distance (insertions, deletions, substitutions and swaps of two
 * neighbouring characters each cost 1), for "did you mean". */
static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > MAX_NAME_LEN || lb > MAX_NAME_LEN) return SIZE_MAX;
  size_t rows[3][MAX_NAME_LEN + 1]; /* rows i-2, i-1, i of the DP table */
  size_t *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
  for (size_t j = 0; j <= lb; j++) prev[j] = j;
  for (size_t i = 1; i <= la; i++) {
    cur[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t best = prev[j - 1] + (a[i - 1] != b[j - 1]);
      if (prev[j] + 1 < best) best = prev[j] + 1;
      if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < best)
        best = prev2[j - 2] + 1;
      cur[j] = best;
    }
    size_t *t = prev2;
    prev2 = prev;
    prev = cur;
    cur = t;
  }
  return prev[lb];
}

static int unknown_field(const Parser *ps, const ProtobufCMessageDescriptor *md, const Token *t,
                         const char *name) {
  const char *best = NULL;
  size_t best_d = SIZE_MAX, limit = MOKA_MAX((size_t)1, strlen(name) / 3);
  for (unsigned i = 0; i < md->n_fields; i++) {
    size_t d = edit_distance(name, md->fields[i].name);
    if (d < best_d) {
      best_d = d;
      best = md->fields[i].name;
    }
  }
  if (best && best_d <= limit)
    return perr(ps, t, "unknown field '%s' in %s (did you mean '%s'?)", name, md->name, best);
  return perr(ps, t, "unknown field '%s' in %s", name, md->name);
}

/* ======================================================================== */
/* Values                                                                    */
/* ======================================================================== */


/* Magnitude of an integer token (decimal, 0x hex, 0 octal). Returns 0, or -1
 * on overflow of 64 bits, or -2 for a bad octal digit. */
static int int_token_value(const Token *t, uint64_t *out) {
  const char *p = t->p, *e = t->p + t->len;
  unsigned base = 10;
  if (t->len > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  } else if (t->len > 1 && p[0] == '0') {
    base = 8;
    p++;
  }
  uint64_t v = 0;
  for (; p < e; p++) {
    unsigned c = (unsigned char)*p, d;
    if (is_digit((int)c))
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      d = c - 'A' + 10;
    if (d >= base) return -2;
    if (v > (UINT64_MAX - d) / base) return -1;
    v = v * base + d;
  }
  *out = v;
  return 0;
}

/* An integer for field f: optional '-', then an integer token within
 * [-neg_max, pos_max]. Stores the value as int64 (signed types) or uint64. */
static int parse_integer(Parser *ps, const ProtobufCMessageDescriptor *md,
                         const ProtobufCFieldDescriptor *f, uint64_t neg_max, uint64_t pos_max,
                         bool *neg_out, uint64_t *mag_out) {
  Token start = ps->tok;
  bool neg = false;
  if (try_sym(ps, '-')) neg = true;
  const Token t = ps->tok;
  char lit[64];
  snprintf(lit, sizeof lit, "%s%.*s%s", neg ? "-" : "", (int)MOKA_MIN(t.len, (size_t)40), t.p,
           t.len > 40 ? "..." : "");
  if (t.kind == TOK_FLOAT)
    return perr(ps, &start, "expected an integer for %s field '%s' in %s, got '%s'",
                type_name(f->type), f->name, md->name, lit);
  if (t.kind != TOK_INT) return bad_token(ps, md, f, "an integer");
  uint64_t mag = 0;
  int rc = int_token_value(&t, &mag);
  if (rc == -2)
    return perr(ps, &start, "invalid octal number '%s' for field '%s' in %s", lit, f->name,
                md->name);
  if (rc == -1 || (neg ? mag > neg_max : mag > pos_max)) {
    if (neg_max)
      return perr(ps, &start,
                  "value %s is out of range for %s field '%s' in %s (-%" PRIu64 " to %" PRIu64 ")",
                  lit, type_name(f->type), f->name, md->name, neg_max, pos_max);
    return perr(ps, &start, "value %s is out of range for %s field '%s' in %s (0 to %" PRIu64 ")",
                lit, type_name(f->type), f->name, md->name, pos_max);
  }
  lex_next(ps);
  *neg_out = neg && mag != 0;
  *mag_out = mag;
  return 0;
}

static int64_t signed_value(bool neg, uint64_t mag) {
  /* mag <= 2^63 when neg; -(mag-1)-1 avoids overflowing on INT64_MIN */
  return neg ? -(int64_t)(mag - 1) - 1 : (int64_t)mag;
}

/* A float or double for field f: [-] (number | inf | infinity | nan). */
static int parse_real(Parser *ps, const ProtobufCMessageDescriptor *md,
                      const ProtobufCFieldDescriptor *f, double *out) {
  const bool is_float = f->type == PROTOBUF_C_TYPE_FLOAT;
  Token start = ps->tok;
  bool neg = try_sym(ps, '-');
  const Token t = ps->tok;
  double v;
  if (t.kind == TOK_IDENT) {
    char w[16] = {0};
    if (t.len < sizeof w)
      for (size_t i = 0; i < t.len; i++) w[i] = (char)(t.p[i] | 0x20); /* ASCII lower case */
    if (!strcmp(w, "inf") || !strcmp(w, "infinity"))
      v = INFINITY;
    else if (!strcmp(w, "nan"))
      v = NAN;
    else
      return bad_token(ps, md, f, "a number");
  } else if (t.kind == TOK_INT || t.kind == TOK_FLOAT) {
    uint64_t mag;
    bool decimal = t.kind == TOK_FLOAT || t.len == 1 || t.p[0] != '0';
    if (!decimal) { /* 0x.. or 0.. octal: exact integer, then one rounding */
      int rc = int_token_value(&t, &mag);
      if (rc == -2)
        return perr(ps, &start, "invalid octal number '%.*s' for field '%s' in %s",
                    (int)MOKA_MIN(t.len, (size_t)40), t.p, f->name, md->name);
      if (rc == -1)
        return perr(ps, &start, "value '%.*s' is out of range for %s field '%s' in %s",
                    (int)MOKA_MIN(t.len, (size_t)40), t.p, type_name(f->type), f->name, md->name);
      v = is_float ? (double)(float)mag : (double)mag;
    } else {
      if (t.len > MAX_NUMBER_LEN)
        return perr(ps, &start, "number too long (%zu characters) for field '%s' in %s", t.len,
                    f->name, md->name);
      char buf[MAX_NUMBER_LEN + 1];
      size_t n = t.len;
      if (t.p[n - 1] == 'f' || t.p[n - 1] == 'F') n--; /* 1.5f */
      memcpy(buf, t.p, n);
      buf[n] = 0;
      /* strtof rounds the decimal text once, straight to float */
      errno = 0;
      v = is_float ? (double)strtof(buf, NULL) : strtod(buf, NULL);
      if (errno == ERANGE && isinf(v))
        return perr(ps, &start, "value %s%s is out of range for %s field '%s' in %s",
                    neg ? "-" : "", buf, type_name(f->type), f->name, md->name);
    }
  } else {
    return bad_token(ps, md, f, "a number");
  }
  lex_next(ps);
  *out = neg ? -v : v;
  return 0;
}

/* Decode one or more adjacent string literals (C escapes) into a malloc'd,
 * NUL-terminated buffer; *len excludes the terminator. */
static int parse_string(Parser *ps, const ProtobufCMessageDescriptor *md,
                        const ProtobufCFieldDescriptor *f, char **out, size_t *len) {
  if (ps->tok.kind != TOK_STRING) return bad_token(ps, md, f, "a quoted string");
  char *buf = NULL;
  size_t n = 0;
  while (ps->tok.kind == TOK_STRING) {
    const Token t = ps->tok;
    char *nb = realloc(buf, n + t.len + 1); /* decoding never grows the text */
    if (!nb) {
      free(buf);
      return perr(ps, &t, "out of memory reading field '%s'", f->name);
    }
    buf = nb;
    const char *p = t.p + 1, *e = t.p + t.len - 1; /* between the quotes */
    while (p < e) {
      char c = *p++;
      if (c != '\\') {
        buf[n++] = c;
        continue;
      }
      c = *p++; /* the lexer guarantees a character after '\' */
      switch (c) {
        case 'n': buf[n++] = '\n'; break;
        case 't': buf[n++] = '\t'; break;
        case 'r': buf[n++] = '\r'; break;
        case 'a': buf[n++] = '\a'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'v': buf[n++] = '\v'; break;
        case '\\':
        case '\'':
        case '"':
        case '?': buf[n++] = c; break;
        case 'x':
        case 'X': {
          unsigned v = 0, k = 0;
          while (k < 2 && p < e && is_hex((unsigned char)*p)) {
            unsigned char h = (unsigned char)*p++;
            v = v * 16 + (is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
            k++;
          }
          if (!k) {
            free(buf);
            return perr(ps, &t,
                        "invalid escape '\\x' without hex digits in string for field '%s' in %s",
                        f->name, md->name);
          }
          buf[n++] = (char)v;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            unsigned v = (unsigned)(c - '0'), k = 1;
            while (k < 3 && p < e && *p >= '0' && *p <= '7') {
              v = v * 8 + (unsigned)(*p++ - '0');
              k++;
            }
            if (v > 255) {
              free(buf);
              return perr(ps, &t,
                          "octal escape \\%o is larger than a byte in string for field '%s' in %s",
                          v, f->name, md->name);
            }
            buf[n++] = (char)v;
          } else {
            free(buf);
            return perr(ps, &t, "invalid escape '\\%c' in string for field '%s' in %s", c, f->name,
                        md->name);
          }
      }
    }
    lex_next(ps);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

/* Parse one value of scalar (non-message) field f into dst, which has
 * elem_size(f->type) bytes. Nothing is written to dst on error. */
static int parse_scalar(Parser *ps, const ProtobufCMessageDescriptor *md,
                        const ProtobufCFieldDescriptor *f, void *dst) {
  bool neg;
  uint64_t mag;
  switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
      if (parse_integer(ps, md, f, (uint64_t)INT32_MAX + 1, INT32_MAX, &neg, &mag)) return -1;
      *(int32_t *)dst = (int32_t)signed_value(neg, mag);
      return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
      if (parse_integer(ps, md, f, (uint64_t)INT64_MAX + 1, INT64_MAX, &neg, &mag)) return -1;
      *(int64_t *)dst = signed_value(neg, mag);
      return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      if (parse_integer(ps, md, f, 0, UINT32_MAX, &neg, &mag)) return -1;
      *(uint32_t *)dst = (uint32_t)mag;
      return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      if (parse_integer(ps, md, f, 0, UINT64_MAX, &neg, &mag)) return -1;
      *(uint64_t *)dst = mag;
      return 0;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
      double v = 0;
      if (parse_real(ps, md, f, &v)) return -1;
      if (f->type == PROTOBUF_C_TYPE_DOUBLE)
        *(double *)dst = v;
      else
        *(float *)dst = (float)v; /* already a float value (or inf/nan) */
      return 0;
    }
    case PROTOBUF_C_TYPE_BOOL: {
      const Token t = ps->tok;
      int v = -1;
      if (tok_is(&t, "true") || tok_is(&t, "True") || tok_is(&t, "t"))
        v = 1;
      else if (tok_is(&t, "false") || tok_is(&t, "False") || tok_is(&t, "f"))
        v = 0;
      else if (t.kind == TOK_INT && int_token_value(&t, &mag) == 0 && mag <= 1)
        v = (int)mag;
      if (v < 0) return bad_token(ps, md, f, "true or false");
      lex_next(ps);
      *(protobuf_c_boolean *)dst = v;
      return 0;
    }
    case PROTOBUF_C_TYPE_ENUM: {
      const ProtobufCEnumDescriptor *ed = f->descriptor;
      const Token t = ps->tok;
      if (t.kind == TOK_IDENT) {
        char name[MAX_NAME_LEN + 1];
        const ProtobufCEnumValue *ev = NULL;
        if (t.len <= MAX_NAME_LEN) {
          memcpy(name, t.p, t.len);
          name[t.len] = 0;
          ev = protobuf_c_enum_descriptor_get_value_by_name(ed, name);
        }
        if (!ev) {
          char valid[1024];
          size_t k = 0;
          valid[0] = 0;
          for (unsigned i = 0; i < ed->n_values && k + 1 < sizeof valid; i++) {
            int w =
                snprintf(valid + k, sizeof valid - k, "%s%s", i ? ", " : "", ed->values[i].name);
            if (w < 0) break;
            k += (size_t)w;
          }
          return perr(ps, &t, "unknown value '%.*s' for enum field '%s' in %s (valid: %s)",
                      (int)MOKA_MIN(t.len, (size_t)60), t.p, f->name, md->name, valid);
        }
        lex_next(ps);
        *(int *)dst = ev->value;
        return 0;
      }
      if (t.kind == TOK_INT || is_sym(&t, '-')) {
        if (parse_integer(ps, md, f, (uint64_t)INT32_MAX + 1, INT32_MAX, &neg, &mag)) return -1;
        int v = (int)signed_value(neg, mag);
        if (!protobuf_c_enum_descriptor_get_value(ed, v))
          return perr(ps, &t, "unknown number %d for enum field '%s' in %s (type %s)", v, f->name,
                      md->name, ed->name);
        *(int *)dst = v;
        return 0;
      }
      return bad_token(ps, md, f, "an enum value name");
    }
    case PROTOBUF_C_TYPE_STRING: {
      const Token t = ps->tok;
      char *s;
      size_t n;
      if (parse_string(ps, md, f, &s, &n)) return -1;
      if (strlen(s) != n) {
        free(s);
        return perr(ps, &t, "string field '%s' in %s cannot hold a NUL byte (use a bytes field)",
                    f->name, md->name);
      }
      *(char **)dst = s;
      return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      char *s;
      size_t n;
      if (parse_string(ps, md, f, &s, &n)) return -1;
      ProtobufCBinaryData *bd = dst;
      bd->len = n;
      bd->data = (uint8_t *)s;
      return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: break;
  }
  return perr(ps, &ps->tok, "internal error: field '%s' in %s has unsupported type %d", f->name,
              md->name, (int)f->type);
}

/* ======================================================================== */
/* Messages                                                                  */
/* ======================================================================== */


static int parse_body(Parser *ps, const ProtobufCMessageDescriptor *md, ProtobufCMessage *msg,
                      int depth, char close, const Token *open, const char *open_field);

/* A slot for one more element of repeated field f (not yet counted: the
 * caller increments the count once the slot holds a valid element). The
 * array's capacity is implicit: the smallest power of two >= count, so it is
 * full exactly when the count is 0 or a power of two. */
static int append_slot(Parser *ps, const Token *at, const ProtobufCMessageDescriptor *md,
                       ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, void **slot) {
  size_t *n = MEMBER(msg, f->quantifier_offset);
  void **arr = MEMBER(msg, f->offset);
  size_t es = elem_size(f->type);
  if (*n == 0 || (*n & (*n - 1)) == 0) {
    size_t cap = *n ? *n * 2 : 1, bytes;
    if (!moka_mul_size(cap, es, &bytes))
      return perr(ps, at, "too many values for repeated field '%s' in %s", f->name, md->name);
    void *na = realloc(*arr, bytes);
    if (!na)
      return perr(ps, at, "out of memory: %zu values for repeated field '%s' in %s", cap, f->name,
                  md->name);
    *arr = na;
  }
  *slot = (char *)*arr + *n * es;
  return 0;
}

/* Mark non-repeated field f as present (has_* flag or oneof case). */
static void mark_present(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f) {
  if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
    *(uint32_t *)MEMBER(msg, f->quantifier_offset) = f->id;
  else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
           f->type != PROTOBUF_C_TYPE_MESSAGE)
    *(protobuf_c_boolean *)MEMBER(msg, f->quantifier_offset) = 1;
}

/* One value of field f (after its ':'), stored in msg. */
static int parse_one_value(Parser *ps, const ProtobufCMessageDescriptor *md, ProtobufCMessage *msg,
                           const ProtobufCFieldDescriptor *f) {
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    void *slot;
    if (append_slot(ps, &ps->tok, md, msg, f, &slot)) return -1;
    if (parse_scalar(ps, md, f, slot)) return -1;
    (*(size_t *)MEMBER(msg, f->quantifier_offset))++;
    return 0;
  }
  if (parse_scalar(ps, md, f, MEMBER(msg, f->offset))) return -1;
  mark_present(msg, f);
  return 0;
}

/* `{ ... }` or `< ... >` for message field f: a new sub-message, attached to
 * msg before it is filled. */
static int parse_sub_message(Parser *ps, const ProtobufCMessageDescriptor *md,
                             ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, int depth) {
  const Token open = ps->tok;
  char close;
  if (is_sym(&open, '{'))
    close = '}';
  else if (is_sym(&open, '<'))
    close = '>';
  else
    return bad_token(ps, md, f, "'{'");
  if (depth + 1 > PROTOTXT_MAX_DEPTH)
    return perr(ps, &open, "messages nested deeper than %d levels (field '%s' in %s)",
                PROTOTXT_MAX_DEPTH, f->name, md->name);
  const ProtobufCMessageDescriptor *sd = f->descriptor;
  ps->msg_bytes += sd->sizeof_message;
  if (ps->msg_bytes > ps->budget)
    return perr(ps, &open, "the messages so far take more than %zu MiB (for %zu bytes of text): "
                "far more than a real definition of this size needs",
                ps->budget >> 20, (size_t)(ps->end - ps->start));
  ProtobufCMessage *sub = malloc(sd->sizeof_message);
  if (!sub) return perr(ps, &open, "out of memory for field '%s' in %s", f->name, md->name);
  protobuf_c_message_init(sd, sub);
  if (f->label == PROTOBUF_C_LABEL_REPEATED) {
    void *slot;
    if (append_slot(ps, &open, md, msg, f, &slot)) {
      free(sub);
      return -1;
    }
    *(ProtobufCMessage **)slot = sub;
    (*(size_t *)MEMBER(msg, f->quantifier_offset))++;
  } else {
    *(ProtobufCMessage **)MEMBER(msg, f->offset) = sub;
    mark_present(msg, f);
  }
  lex_next(ps);
  return parse_body(ps, sd, sub, depth + 1, close, &open, f->name);
}

/* `[v, v, ...]` for repeated field f (messages or scalars); the current token
 * is '['. */
static int parse_list(Parser *ps, const ProtobufCMessageDescriptor *md, ProtobufCMessage *msg,
                      const ProtobufCFieldDescriptor *f, int depth) {
  if (f->label != PROTOBUF_C_LABEL_REPEATED)
    return perr(ps, &ps->tok, "field '%s' in %s is not repeated: a [...] list is not allowed",
                f->name, md->name);
  lex_next(ps);
  if (try_sym(ps, ']')) return 0;
  for (;;) {
    int rc = f->type == PROTOBUF_C_TYPE_MESSAGE ? parse_sub_message(ps, md, msg, f, depth)
                                                : parse_one_value(ps, md, msg, f);
    if (rc) return -1;
    if (try_sym(ps, ',')) continue;
    if (try_sym(ps, ']')) return 0;
    return bad_token(ps, md, f, "',' or ']' in the list");
  }
}

/* `name: value`, `name { ... }`, `name: [ ... ]`; the current token is the
 * field name. seen[i] records which fields of md were given. */
static int parse_field(Parser *ps, const ProtobufCMessageDescriptor *md, ProtobufCMessage *msg,
                       unsigned char *seen, int depth) {
  const Token name = ps->tok;
  char nbuf[MAX_NAME_LEN + 1];
  size_t n = MOKA_MIN(name.len, (size_t)MAX_NAME_LEN);
  memcpy(nbuf, name.p, n);
  nbuf[n] = 0;
  const ProtobufCFieldDescriptor *f =
      name.len <= MAX_NAME_LEN ? protobuf_c_message_descriptor_get_field_by_name(md, nbuf) : NULL;
  if (!f) return unknown_field(ps, md, &name, nbuf);
  size_t idx = (size_t)(f - md->fields);
  if (f->label != PROTOBUF_C_LABEL_REPEATED) {
    if (seen[idx])
      return perr(ps, &name, "non-repeated field '%s' is specified multiple times in %s", f->name,
                  md->name);
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t cur = *(uint32_t *)MEMBER(msg, f->quantifier_offset);
      if (cur != 0 && cur != f->id) {
        const ProtobufCFieldDescriptor *other = protobuf_c_message_descriptor_get_field(md, cur);
        return perr(ps, &name,
                    "field '%s' in %s is in the same oneof as '%s', which is already set", f->name,
                    md->name, other ? other->name : "?");
      }
    }
  }
  seen[idx] = 1;
  lex_next(ps);

  if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    try_sym(ps, ':'); /* optional before a message */
    if (is_sym(&ps->tok, '[')) {
      if (parse_list(ps, md, msg, f, depth)) return -1;
    } else if (parse_sub_message(ps, md, msg, f, depth)) {
      return -1;
    }
  } else {
    if (!try_sym(ps, ':')) return bad_token(ps, md, f, "':'");
    if (is_sym(&ps->tok, '[')) {
      if (parse_list(ps, md, msg, f, depth)) return -1;
    } else if (parse_one_value(ps, md, msg, f)) {
      return -1;
    }
  }
  if (!try_sym(ps, ';')) try_sym(ps, ','); /* optional separator */
  return 0;
}

/* Fields of message md up to `close` ('}' or '>'), or to the end of input
 * when close is 0 (the top level). */
static int parse_body(Parser *ps, const ProtobufCMessageDescriptor *md, ProtobufCMessage *msg,
                      int depth, char close, const Token *open, const char *open_field) {
  unsigned char *seen = calloc(md->n_fields ? md->n_fields : 1, 1);
  if (!seen) return perr(ps, &ps->tok, "out of memory parsing %s", md->name);
  int rc = -1;
  Token last;
  for (;;) {
    last = ps->tok;
    if (last.kind == TOK_END) {
      if (close) {
        perr(ps, &last,
             "unexpected end of input: missing '%c' to close '%s' (opened at %d:%d) in %s", close,
             open_field, open->line, open->col, md->name);
        goto out;
      }
      break;
    }
    if (close && is_sym(&last, close)) {
      lex_next(ps);
      break;
    }
    if (last.kind != TOK_IDENT) {
      char what[32];
      snprintf(what, sizeof what, close ? "a field name or '%c'" : "a field name", close);
      bad_token(ps, md, NULL, what);
      goto out;
    }
    if (parse_field(ps, md, msg, seen, depth)) goto out;
  }
  for (unsigned i = 0; i < md->n_fields; i++) {
    if (md->fields[i].label == PROTOBUF_C_LABEL_REQUIRED && !seen[i]) {
      perr(ps, &last, "missing required field '%s' in %s", md->fields[i].name, md->name);
      goto out;
    }
  }
  rc = 0;
out:
  free(seen);
  return rc;
}

int prototxt_parse(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                   const char *filename, ProtobufCMessage **out) {
  if (out) *out = NULL;
  if (!desc || !out || desc->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
    return moka_errorf("prototxt_parse: invalid arguments");
  if (!text) {
    if (len) return moka_errorf("prototxt_parse: NULL text with length %zu", len);
    text = "";
  }
  Parser ps = {.pos = text,
               .start = text,
               .budget = PROTOTXT_BUDGET(len),
               .end = text + len,
               .line = 1,
               .col = 1,
               .filename = filename ? filename : "<text>"};
  ProtobufCMessage *msg = malloc(desc->sizeof_message);
  if (!msg) return moka_errorf("out of memory parsing %s", desc->name);
  protobuf_c_message_init(desc, msg);
  lex_next(&ps);
  if (parse_body(&ps, desc, msg, 0, 0, NULL, NULL)) {
    protobuf_c_message_free_unpacked(msg, NULL);
    return -1;
  }
  *out = msg;
  return 0;
}

int prototxt_read_file(const ProtobufCMessageDescriptor *desc, const char *path,
                       ProtobufCMessage **out) {
  if (out) *out = NULL;
  uint8_t *data;
  size_t len;
  if (moka_read_file(path, &data, &len)) return -1;
  int rc = prototxt_parse(desc, (const char *)data, len, path, out);
  free(data);
  return rc;
}
