/* prototxt_lex.c — the lexer of the prototxt reader (prototxt.c):
 * identifiers, numbers, quoted strings, one-character symbols and `#`
 * comments, with line and column numbers for error messages (a tab advances
 * the column to the next multiple of 8 plus one, as protobuf's tokenizer and
 * GCC count; UTF-8 continuation bytes take no column). It never reads past
 * the end of the input.
 */
#include "prototxt_lex.h"

#include <stdarg.h>
#include <stdio.h>

#include "util.h"

#define TAB_WIDTH 8

static bool is_alpha_(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_alnum_(int c) { return is_alpha_(c) || is_digit(c); }
static bool is_space(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Consume one byte, keeping line and column up to date. */
static void lex_adv(Parser *ps) {
  unsigned char c = (unsigned char)*ps->pos++;
  if (c == '\n') {
    ps->line++;
    ps->col = 1;
  } else if (c == '\t') {
    ps->col = ((ps->col - 1) / TAB_WIDTH + 1) * TAB_WIDTH + 1;
  } else if ((c & 0xC0) != 0x80) {
    ps->col++;
  }
}

static void lex_adv_to(Parser *ps, const char *q) {
  while (ps->pos < q) lex_adv(ps);
}

/* Mark the current token as a lexical error at its start. */
static void lex_fail(Parser *ps, const char *fmt, ...) MOKA_PRINTF(2, 3);
static void lex_fail(Parser *ps, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ps->lexmsg, sizeof ps->lexmsg, fmt, ap);
  va_end(ap);
  ps->tok.kind = TOK_ERROR;
  ps->tok.len = 0;
}

/* Scan a number starting at ps->pos (a digit, or '.' followed by a digit). */
static void lex_number(Parser *ps) {
  const char *q = ps->pos, *end = ps->end;
  bool is_float = false;
  if (q + 1 < end && q[0] == '0' && (q[1] == 'x' || q[1] == 'X')) {
    q += 2;
    if (q >= end || !is_hex((unsigned char)*q)) {
      lex_fail(ps, "invalid hexadecimal number: '0x' needs digits");
      return;
    }
    while (q < end && is_hex((unsigned char)*q)) q++;
  } else {
    while (q < end && is_digit((unsigned char)*q)) q++;
    if (q < end && *q == '.') {
      is_float = true;
      q++;
      while (q < end && is_digit((unsigned char)*q)) q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
      is_float = true;
      q++;
      if (q < end && (*q == '+' || *q == '-')) q++;
      if (q >= end || !is_digit((unsigned char)*q)) {
        lex_fail(ps, "invalid number '%.*s': the exponent has no digits",
                 (int)MOKA_MIN((size_t)(q - ps->pos), 40), ps->pos);
        return;
      }
      while (q < end && is_digit((unsigned char)*q)) q++;
    }
    if (is_float && q < end && (*q == 'f' || *q == 'F')) q++;
  }
  if (q < end && (is_alnum_((unsigned char)*q) || *q == '.')) {
    const char *r = q;
    while (r < end && (is_alnum_((unsigned char)*r) || *r == '.')) r++;
    lex_fail(ps, "invalid number '%.*s'", (int)MOKA_MIN((size_t)(r - ps->pos), 40), ps->pos);
    return;
  }
  ps->tok.kind = is_float ? TOK_FLOAT : TOK_INT;
  ps->tok.len = (size_t)(q - ps->pos);
  lex_adv_to(ps, q);
}

/* Scan a quoted literal (escapes are checked when it is decoded). */
static void lex_string(Parser *ps) {
  const char quote = *ps->pos;
  const char *q = ps->pos + 1, *end = ps->end;
  for (;;) {
    if (q >= end || *q == '\n') {
      lex_fail(ps, "unterminated string literal (strings cannot span lines)");
      return;
    }
    if (*q == quote) break;
    if (*q == '\\') {
      q++;
      if (q >= end || *q == '\n') continue; /* reported as unterminated above */
    }
    q++;
  }
  q++; /* closing quote */
  ps->tok.kind = TOK_STRING;
  ps->tok.len = (size_t)(q - ps->pos);
  lex_adv_to(ps, q);
}

void lex_next(Parser *ps) {
  for (;;) {
    while (ps->pos < ps->end && is_space((unsigned char)*ps->pos)) lex_adv(ps);
    if (ps->pos < ps->end && *ps->pos == '#') {
      while (ps->pos < ps->end && *ps->pos != '\n') lex_adv(ps);
      continue;
    }
    break;
  }
  Token *t = &ps->tok;
  t->p = ps->pos;
  t->line = ps->line;
  t->col = ps->col;
  t->len = 0;
  if (ps->pos >= ps->end) {
    t->kind = TOK_END;
    return;
  }
  unsigned char c = (unsigned char)*ps->pos;
  if (is_alpha_(c)) {
    const char *q = ps->pos;
    while (q < ps->end && is_alnum_((unsigned char)*q)) q++;
    t->kind = TOK_IDENT;
    t->len = (size_t)(q - ps->pos);
    lex_adv_to(ps, q);
  } else if (is_digit(c) ||
             (c == '.' && ps->pos + 1 < ps->end && is_digit((unsigned char)ps->pos[1]))) {
    lex_number(ps);
  } else if (c == '"' || c == '\'') {
    lex_string(ps);
  } else if (c != 0 && strchr("{}<>[]:;,-", c)) {
    t->kind = TOK_SYMBOL;
    t->len = 1;
    lex_adv(ps);
  } else if (c >= 0x20 && c < 0x7f) {
    lex_fail(ps, "unexpected character '%c'", c);
  } else {
    lex_fail(ps, "unexpected byte 0x%02x", c);
  }
}
