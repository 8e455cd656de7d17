/* test_fuzz_regress.c — replays every fuzz input kept in the repository
 * through the fuzz targets' own code (tests/fuzz/fuzz_*.c, included here and
 * run without libFuzzer): tests/fuzz/regress/<target>/ holds the inputs that
 * once crashed (each named after its bug), tests/fuzz/corpus/<target>/ the
 * seeds. A target that crashes, trips a sanitizer (SANITIZE=1) or breaks one
 * of its invariants (FUZZ_ASSERT -> abort) fails the whole binary, and the
 * file being replayed is printed first, so the log names the input. */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fuzz/fuzz_blobproto.c"
#include "../fuzz/fuzz_caffemodel.c"
#include "../fuzz/fuzz_datum.c"
#include "../fuzz/fuzz_flags.c"
#include "../fuzz/fuzz_image.c"
#include "../fuzz/fuzz_listfile.c"
#include "../fuzz/fuzz_prototxt.c"
#include "../fuzz/fuzz_solverstate.c"
#include "cli/flags.c" /* the CLI is not in libmoka.a */
#include "testlib.h"

/* The file being replayed, named when the process dies (abort, a signal, or
 * a sanitizer report: their death callback). */
static char g_current[1024];

static void say_current(void) {
  if (!g_current[0]) return;
  const char *a = "test_fuzz_regress: died while replaying ";
  if (write(2, a, strlen(a)) < 0 || write(2, g_current, strlen(g_current)) < 0 ||
      write(2, "\n", 1) < 0) {
  }
}

static void on_signal(int sig) {
  say_current();
  signal(sig, SIG_DFL);
  raise(sig);
}

extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

typedef int (*FuzzFn)(const uint8_t *, size_t);

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run fn on every regular file in dir (sorted); returns how many, -1 when
 * the folder is missing. */
static int replay_dir(const char *dir, FuzzFn fn) {
  DIR *d = opendir(dir);
  if (!d) return -1;
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || !strcmp(e->d_name, "README.md")) continue;
    names = realloc(names, (n + 1) * sizeof *names);
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof *names, by_name);
  int count = 0;
  for (size_t i = 0; i < n; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    uint8_t *data;
    size_t len;
    if (moka_read_file(path, &data, &len) == 0) {
      snprintf(g_current, sizeof g_current, "%s", path);
      fn(data, len);
      g_current[0] = 0;
      free(data);
      count++;
    }
    free(names[i]);
  }
  free(names);
  return count;
}

static void replay(const char *target, FuzzFn fn, int min_seeds) {
  char dir[256];
  snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", target);
  int seeds = replay_dir(dir, fn);
  CHECK_MSG(seeds >= min_seeds, "%s: %d seed files, expected at least %d", dir, seeds, min_seeds);
  snprintf(dir, sizeof dir, "tests/fuzz/regress/%s", target);
  int regress = replay_dir(dir, fn);
  printf("  %-12s %d seeds, %d regression inputs replayed\n", target, seeds,
         regress < 0 ? 0 : regress);
}

static void test_replay_prototxt(void) { replay("prototxt", fuzz_prototxt, 5); }
static void test_replay_caffemodel(void) { replay("caffemodel", fuzz_caffemodel, 3); }
static void test_replay_blobproto(void) { replay("blobproto", fuzz_blobproto, 2); }
static void test_replay_solverstate(void) { replay("solverstate", fuzz_solverstate, 1); }
static void test_replay_datum(void) { replay("datum", fuzz_datum, 3); }
static void test_replay_image(void) { replay("image", fuzz_image, 5); }
static void test_replay_listfile(void) { replay("listfile", fuzz_listfile, 1); }
static void test_replay_flags(void) { replay("flags", fuzz_flags, 2); }

/* The replay must be able to fail: a target's invariant check aborts. */
static void test_harness_invariants_hold_on_a_known_input(void) {
  /* A prototxt that parses: the round trip must be exact. */
  const char *t = "name: \"x\" layer { name: \"a\" type: \"ReLU\" }";
  CHECK(fuzz_prototxt((const uint8_t *)t, strlen(t)) == 0);
  /* 3 lines, the last one without '\n'. */
  const char *l = "a 1\nb 2\nc";
  CHECK(fuzz_listfile((const uint8_t *)l, strlen(l)) == 0);
}

int main(void) {
  signal(SIGABRT, on_signal);
  signal(SIGSEGV, on_signal);
  signal(SIGBUS, on_signal);
  signal(SIGFPE, on_signal);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(say_current);
  RUN(test_replay_prototxt);
  RUN(test_replay_caffemodel);
  RUN(test_replay_blobproto);
  RUN(test_replay_solverstate);
  RUN(test_replay_datum);
  RUN(test_replay_image);
  RUN(test_replay_listfile);
  RUN(test_replay_flags);
  RUN(test_harness_invariants_hold_on_a_known_input);
  return test_summary();
}
