/* strbuf.c — see strbuf.h. */
#include "finetune/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool reserve(StrBuf *b, size_t extra) {
  if (b->failed) return false;
  if (b->len + extra + 1 <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *s = realloc(b->s, cap);
  if (!s) {
    b->failed = true;
    return false;
  }
  b->s = s;
  b->cap = cap;
  return true;
}

void sb_append(StrBuf *b, const char *text, size_t n) {
  if (!reserve(b, n)) return;
  memcpy(b->s + b->len, text, n);
  b->len += n;
  b->s[b->len] = 0;
}

void sb_puts(StrBuf *b, const char *text) { sb_append(b, text, strlen(text)); }

void sb_printf(StrBuf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || !reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void sb_indent(StrBuf *b, const char *text, const char *indent) {
  const char *p = text;
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) : strlen(p);
    if (n) {
      sb_puts(b, indent);
      sb_append(b, p, n);
    }
    sb_append(b, "\n", 1);
    p += n + (nl ? 1 : 0);
  }
}

char *sb_take(StrBuf *b) {
  if (b->failed || !reserve(b, 0)) {
    sb_free(b);
    moka_errorf("out of memory while writing text");
    return NULL;
  }
  b->s[b->len] = 0; /* (an empty buffer was never terminated) */
  char *s = b->s;
  b->s = NULL;
  b->len = b->cap = 0;
  return s;
}

void sb_free(StrBuf *b) {
  free(b->s);
  b->s = NULL;
  b->len = b->cap = 0;
  b->failed = false;
}
