/* strbuf.h — a growable text buffer for the files `moka finetune` writes
 * (prototxts, HTML, TSV). Allocation failures are remembered and reported
 * once by sb_take / sb_failed, so writers need not check every append. */
#ifndef MOKA_FT_STRBUF_H
#define MOKA_FT_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

typedef struct StrBuf {
  char *s;
  size_t len, cap;
  bool failed;
} StrBuf;

void sb_printf(StrBuf *b, const char *fmt, ...) MOKA_PRINTF(2, 3);
void sb_append(StrBuf *b, const char *text, size_t n);
void sb_puts(StrBuf *b, const char *text);
/* Append `text` with every line prefixed by `indent` (empty lines stay empty). */
void sb_indent(StrBuf *b, const char *text, const char *indent);
/* The text (caller frees), or NULL after a failed allocation (moka_error set). */
char *sb_take(StrBuf *b);
void sb_free(StrBuf *b);

#endif
