/* testlib.h — the tiny test harness every tests/unit/test_*.c uses.
 *
 * Each test binary calls its test functions through RUN(fn); each CHECK that
 * fails prints file:line and the expression and marks the current test
 * failed. main() ends with `return test_summary();`, which prints
 * "N passed, N failed" and returns non-zero when anything failed.
 * Paths: SHARED is ../shared relative to the repository root (override with
 * the MOKA_SHARED environment variable); tests run from the repository root.
 */
#ifndef MOKA_TESTLIB_H
#define MOKA_TESTLIB_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed __attribute__((unused)), t_failed __attribute__((unused)), t_cur_failed __attribute__((unused));
static const char *t_cur_name __attribute__((unused));

#define CHECK(cond)                                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "  FAIL %s:%d: %s: CHECK(%s)\n", __FILE__, __LINE__, t_cur_name, \
              #cond);                                                                  \
      t_cur_failed = 1;                                                                \
    }                                                                                  \
  } while (0)

#define CHECK_MSG(cond, ...)                                                           \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "  FAIL %s:%d: %s: CHECK(%s): ", __FILE__, __LINE__, t_cur_name, \
              #cond);                                                                  \
      fprintf(stderr, __VA_ARGS__);                                                    \
      fprintf(stderr, "\n");                                                           \
      t_cur_failed = 1;                                                                \
    }                                                                                  \
  } while (0)

/* A CHECK that also stops the current test function. */
#define REQUIRE(cond)                                                                  \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "  FAIL %s:%d: %s: REQUIRE(%s)\n", __FILE__, __LINE__,           \
              t_cur_name, #cond);                                                      \
      t_cur_failed = 1;                                                                \
      return;                                                                          \
    }                                                                                  \
  } while (0)

#define RUN(fn)                                                 \
  do {                                                          \
    t_cur_name = #fn;                                           \
    t_cur_failed = 0;                                           \
    fn();                                                       \
    if (t_cur_failed) {                                         \
      t_failed++;                                               \
      fprintf(stderr, "[FAIL] %s\n", #fn);                      \
    } else {                                                    \
      t_passed++;                                               \
      fprintf(stderr, "[ ok ] %s\n", #fn);                      \
    }                                                           \
  } while (0)

static inline int test_summary(void) {
  printf("%d passed, %d failed\n", t_passed, t_failed);
  return t_failed ? 1 : 0;
}

static inline const char *test_shared(void) {
  const char *s = getenv("MOKA_SHARED");
  return s && *s ? s : "../shared";
}

/* "<shared>/<rel>" in a static rotating buffer. */
static inline const char *shared_path(const char *rel) {
  static char bufs[8][1024];
  static int k;
  char *b = bufs[k++ & 7];
  snprintf(b, 1024, "%s/%s", test_shared(), rel);
  return b;
}

/* Read a raw float32 file; *n gets the element count. NULL when missing. */
static inline float *read_f32(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "  cannot open %s\n", path);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  float *p = malloc(sz > 0 ? (size_t)sz : 1);
  size_t got = fread(p, 1, (size_t)sz, f);
  fclose(f);
  if (got != (size_t)sz) {
    free(p);
    return NULL;
  }
  *n = (size_t)sz / sizeof(float);
  return p;
}

/* Golden comparison as shared/golden/README.md prescribes:
 * |a-b| <= atol + rtol*|b| with atol = rtol*max|b| (+ abs_floor).
 * Prints the worst element on failure; returns 1 when all pass. */
static inline int compare_f32(const char *what, const float *a, const float *b, size_t n,
                              double rtol, double abs_floor) {
  double maxb = 0;
  for (size_t i = 0; i < n; i++) maxb = fmax(maxb, fabs((double)b[i]));
  double atol = rtol * maxb + abs_floor;
  size_t bad = 0, worst = 0;
  double worst_ex = -1;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    double lim = atol + rtol * fabs((double)b[i]);
    if (!(d <= lim)) bad++;
    double ex = d - lim;
    if (ex > worst_ex || isnan(d)) {
      worst_ex = ex;
      worst = i;
    }
  }
  if (bad) {
    fprintf(stderr, "    %s: %zu of %zu values out of tolerance (rtol %g, max|b| %g); worst at %zu: got %.9g want %.9g\n",
            what, bad, n, rtol, maxb, worst, (double)a[worst], (double)b[worst]);
    return 0;
  }
  return 1;
}

/* Normalised error max|a-b| / max|b| (max|a-b| when b is all zero; a NaN
 * difference counts as infinite). */
static inline double norm_err(const float *a, const float *b, size_t n) {
  double maxb = 0, maxd = 0;
  for (size_t i = 0; i < n; i++) {
    maxb = fmax(maxb, fabs((double)b[i]));
    double d = fabs((double)a[i] - (double)b[i]);
    if (isnan(d)) d = INFINITY;
    maxd = fmax(maxd, d);
  }
  return maxb > 0 ? maxd / maxb : maxd;
}

#endif
