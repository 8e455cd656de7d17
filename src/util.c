/* util.c — see util.h. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char g_err[4096];

int moka_errorf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return -1;
}

int moka_error_prefix(const char *fmt, ...) {
  char pre[1024], old[sizeof g_err];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  memcpy(old, g_err, sizeof old);
  /* "<pre>: <old>", truncated to the buffer */
  size_t pl = strnlen(pre, sizeof g_err - 3), ol = strnlen(old, sizeof old - 1);
  memcpy(g_err, pre, pl);
  g_err[pl] = ':';
  g_err[pl + 1] = ' ';
  size_t room = sizeof g_err - pl - 3;
  if (ol > room) ol = room;
  memcpy(g_err + pl + 2, old, ol);
  g_err[pl + 2 + ol] = 0;
  return -1;
}

const char *moka_error(void) { return g_err; }
void moka_error_clear(void) { g_err[0] = 0; }

static int g_log_min = 0;
static FILE *g_log_stream = NULL;

void moka_set_log_level(int min_level) { g_log_min = min_level; }

FILE *moka_set_log_stream(FILE *f) {
  FILE *old = g_log_stream ? g_log_stream : stderr;
  g_log_stream = f;
  return old;
}

void moka_log_at(char level, const char *file, int line, const char *fmt, ...) {
  int lv = level == 'I' ? 0 : level == 'W' ? 1 : 2;
  if (lv < g_log_min) return;
  FILE *out = g_log_stream ? g_log_stream : stderr;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  localtime_r(&tv.tv_sec, &tm);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  char msg[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(out, "%c%02d%02d %02d:%02d:%02d.%06ld %5d %s:%d] %s\n", level, tm.tm_mon + 1,
          tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)tv.tv_usec, (int)getpid(), base,
          line, msg);
  fflush(out);
}

void *moka_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) moka_errorf("out of memory allocating %zu bytes", n);
  return p;
}

void *moka_calloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) moka_errorf("out of memory allocating %zu x %zu bytes", count, size);
  return p;
}

/* Large arrays on huge pages. The fast backend reads activations along
 * strided paths (a GEMM panel takes 128 bytes from each of hundreds of rows
 * 12 KiB apart; a channel's planes lie an image apart), and with 4 KiB pages
 * those walks miss the TLB on almost every row. From MAPPED_MIN on, an array
 * is a mapping of its own: zero pages, allocated only when touched (an
 * inference net never touches its diffs), as calloc's. From 2 MiB on it is
 * 2 MiB-aligned, with transparent huge pages asked for on its whole 2 MiB
 * pages (madvise: the kernel's "madvise" THP mode, Debian's default, gives
 * none otherwise). Below MAPPED_MIN, posix_memalign + memset (a few pages at
 * most). Measured (ResNet-50 training, A/B in the same minutes): see
 * docs/performance.md. Under AddressSanitizer everything stays on the heap,
 * so that its redzones still catch a layer writing past a blob. */
#if defined(__SANITIZE_ADDRESS__)
#define MOKA_HEAP_ONLY 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOKA_HEAP_ONLY 1
#endif
#endif
#ifdef MOKA_HEAP_ONLY
enum { HUGE_PAGE = 2 << 20, SMALL_PAGE = 4096, MAPPED_MIN = 0x7fffffff };
#else
enum { HUGE_PAGE = 2 << 20, SMALL_PAGE = 4096, MAPPED_MIN = 64 << 10 };
#endif

static size_t page_round(size_t bytes) {
  return (bytes + SMALL_PAGE - 1) / SMALL_PAGE * SMALL_PAGE;
}

void *moka_alloc_big(size_t bytes) {
  if (bytes < (size_t)MAPPED_MIN) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) p = NULL;
    if (p) memset(p, 0, bytes);
    if (!p) moka_errorf("out of memory allocating %zu bytes", bytes);
    return p;
  }
  const size_t len = page_round(bytes);
  if (len < bytes || len + HUGE_PAGE < len) {
    moka_errorf("out of memory allocating %zu bytes", bytes);
    return NULL;
  }
  /* From 2 MiB on, one huge page more, then the unaligned head and the tail
   * given back. */
  const size_t extra = bytes >= HUGE_PAGE ? HUGE_PAGE : 0;
  char *base = mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    moka_errorf("out of memory allocating %zu bytes", bytes);
    return NULL;
  }
  if (!extra) return base;
  char *p = (char *)(((uintptr_t)base + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
  char *end = base + len + HUGE_PAGE;
  if (p > base) (void)munmap(base, (size_t)(p - base));
  if (end > p + len) (void)munmap(p + len, (size_t)(end - (p + len)));
#ifdef MADV_HUGEPAGE
  /* The whole 2 MiB pages; a partial last one stays on small pages (no
   * memory beyond the array's). A hint: fine if refused. */
  (void)madvise(p, bytes / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
#endif
  return p;
}

void moka_free_big(void *p, size_t bytes) {
  if (!p) return;
  if (bytes < (size_t)MAPPED_MIN)
    free(p);
  else
    (void)munmap(p, page_round(bytes));
}

void *moka_realloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) moka_errorf("out of memory allocating %zu bytes", n);
  return q;
}

char *moka_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = moka_malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

bool moka_mul_size(size_t a, size_t b, size_t *out) {
  if (a && b > SIZE_MAX / a) return false;
  *out = a * b;
  return true;
}

int moka_read_file(const char *path, uint8_t **data, size_t *len) {
  *data = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return moka_errorf("cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return moka_errorf("cannot stat '%s': %s", path, strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return moka_errorf("'%s' is a directory, not a file", path);
  }
  size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size : 65536;
  /* A device or pipe (a list entry "/dev/zero") has no size: read it up to
   * a limit rather than until memory runs out. */
  const size_t limit = S_ISREG(st.st_mode) ? SIZE_MAX : (size_t)1 << 30;
  uint8_t *buf = moka_malloc(cap + 1);
  if (!buf) {
    close(fd);
    return moka_error_prefix("reading '%s'", path);
  }
  size_t n = 0;
  for (;;) {
    if (n == cap) {
      if (n >= limit) {
        free(buf);
        close(fd);
        return moka_errorf("'%s' is not a regular file and gives more than %zu bytes", path, limit);
      }
      size_t ncap = cap ? cap * 2 : 65536;
      uint8_t *nb = moka_realloc(buf, ncap + 1);
      if (!nb) {
        free(buf);
        close(fd);
        return moka_error_prefix("reading '%s'", path);
      }
      buf = nb;
      cap = ncap;
    }
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      free(buf);
      close(fd);
      return moka_errorf("cannot read '%s': %s", path, strerror(e));
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  buf[n] = 0;
  *data = buf;
  *len = n;
  return 0;
}

int moka_write_file_atomic(const char *path, const void *data, size_t len) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp)
    return moka_errorf("path too long: '%s'", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
  if (fd < 0) return moka_errorf("cannot create '%s': %s", tmp, strerror(errno));
  const uint8_t *p = data;
  size_t left = len;
  while (left) {
    ssize_t w = write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      unlink(tmp);
      return moka_errorf("cannot write '%s': %s (the previous '%s', if any, is untouched)", tmp,
                         strerror(e), path);
    }
    p += w;
    left -= (size_t)w;
  }
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return moka_errorf("cannot fsync '%s': %s (the previous '%s', if any, is untouched)", tmp,
                       strerror(e), path);
  }
  if (close(fd) != 0) {
    int e = errno;
    unlink(tmp);
    return moka_errorf("cannot close '%s': %s", tmp, strerror(e));
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    return moka_errorf("cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
  }
  /* Make the rename itself durable. */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash) {
    if (slash == dir) slash[1] = 0; else *slash = 0;
  } else {
    strcpy(dir, ".");
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

double moka_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
