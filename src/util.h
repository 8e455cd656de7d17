/* util.h — errors, logging and small helpers shared by every part of moka.
 *
 * Errors: library functions return 0 on success and -1 on failure after
 * recording one human-readable message with moka_errorf(). The caller either
 * adds context (moka_error_prefix) and returns -1 again, or — at the top, in
 * the CLI — prints "moka: error: <message>" and exits non-zero. Nothing below
 * the CLI calls exit().
 *
 * Logging: glog-style lines ("I1128 04:26:02.123456 12345 net.c:42] text"),
 * because Caffe users parse Caffe's logs with scripts that expect that shape.
 */
#ifndef MOKA_UTIL_H
#define MOKA_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#if defined(__GNUC__)
#define MOKA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MOKA_PRINTF(a, b)
#endif

/* Record an error message (replaces any previous one). Always returns -1 so
 * that `return moka_errorf(...)` reads naturally. */
int moka_errorf(const char *fmt, ...) MOKA_PRINTF(1, 2);
/* Prepend context to the current message: "<context>: <old message>". */
int moka_error_prefix(const char *fmt, ...) MOKA_PRINTF(1, 2);
/* The current message ("" when none). */
const char *moka_error(void);
void moka_error_clear(void);

/* Logging. Level: 'I', 'W', 'E'. */
void moka_log_at(char level, const char *file, int line, const char *fmt, ...) MOKA_PRINTF(4, 5);
#define LOG_INFO(...) moka_log_at('I', __FILE__, __LINE__, __VA_ARGS__)
#define LOG_WARN(...) moka_log_at('W', __FILE__, __LINE__, __VA_ARGS__)
#define LOG_ERROR(...) moka_log_at('E', __FILE__, __LINE__, __VA_ARGS__)
/* 0 = everything (default), 1 = warnings and errors, 2 = errors only. */
void moka_set_log_level(int min_level);
/* Where log lines go (default stderr). Returns the previous stream. */
FILE *moka_set_log_stream(FILE *f);

/* Allocation that reports the size asked for instead of crashing. They
 * return NULL after moka_errorf on failure. */
void *moka_malloc(size_t n);
void *moka_calloc(size_t count, size_t size);
/* bytes for a large array (activations, workspaces), zeroed, 64-byte
 * aligned; from 64 KiB on a mapping of its own (pages allocated when
 * touched), from 2 MiB on with huge pages (util.c).
 * Released by moka_free_big with the same byte count (never by free()).
 * NULL with a message (moka_errorf) on failure. */
void *moka_alloc_big(size_t bytes);
void moka_free_big(void *p, size_t bytes);
void *moka_realloc(void *p, size_t n);
char *moka_strdup(const char *s);
/* n * m with overflow check: returns false on overflow. */
bool moka_mul_size(size_t a, size_t b, size_t *out);

/* Whole file into memory (with a NUL after the last byte). */
int moka_read_file(const char *path, uint8_t **data, size_t *len);
/* Atomic write: PATH.tmp.<pid>, fsync, rename over PATH. A failure leaves
 * any previous PATH untouched and removes the temporary file. */
int moka_write_file_atomic(const char *path, const void *data, size_t len);

/* Monotonic time in seconds. */
double moka_now(void);

#define MOKA_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOKA_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MOKA_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Internal invariant check that stays on in every build (not for user input:
 * bad input is an error message, never an assert). */
#define MOKA_CHECK(cond)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "moka: internal error: %s:%d: check failed: %s\n",      \
              __FILE__, __LINE__, #cond);                                      \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#endif
