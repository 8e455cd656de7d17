/* prototxt_lex.h — the lexer of the prototxt reader (prototxt_lex.c), and
 * the reader's state, which the parser (prototxt.c) shares. Not part of
 * moka's API. */
#ifndef MOKA_PROTOTXT_LEX_H
#define MOKA_PROTOTXT_LEX_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef enum {
  TOK_END,    /* end of input */
  TOK_IDENT,  /* [A-Za-z_][A-Za-z0-9_]* */
  TOK_INT,    /* decimal, 0x hex or 0 octal integer (no sign) */
  TOK_FLOAT,  /* digits with '.', an exponent, or an f suffix (no sign) */
  TOK_STRING, /* one quoted literal, quotes included, escapes not decoded */
  TOK_SYMBOL, /* one of { } < > [ ] : ; , - */
  TOK_ERROR,  /* lexical error; the message is in Parser.lexmsg */
} TokKind;

typedef struct {
  TokKind kind;
  const char *p; /* first byte of the token in the input */
  size_t len;
  int line, col;
} Token;

typedef struct {
  const char *pos, *end; /* lexer cursor and end of input */
  const char *start;     /* first byte of the input */
  int line, col;         /* of pos */
  const char *filename;
  Token tok;        /* the current (lookahead) token */
  char lexmsg[128]; /* message of a TOK_ERROR token */
  size_t msg_bytes; /* sub-message structs allocated so far */
  size_t budget;    /* ... and the most allowed (PROTOTXT_BUDGET) */
} Parser;

static inline bool is_digit(int c) { return c >= '0' && c <= '9'; }
static inline bool is_hex(int c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Read the next token into ps->tok (TOK_ERROR with ps->lexmsg on a lexical
 * error). */
void lex_next(Parser *ps);

static inline bool is_sym(const Token *t, char c) { return t->kind == TOK_SYMBOL && t->p[0] == c; }

/* Consume the current token if it is the symbol c. */
static inline bool try_sym(Parser *ps, char c) {
  if (!is_sym(&ps->tok, c)) return false;
  lex_next(ps);
  return true;
}

static inline bool tok_is(const Token *t, const char *word) {
  size_t n = strlen(word);
  return t->kind == TOK_IDENT && t->len == n && memcmp(t->p, word, n) == 0;
}

#endif
