/* listfile.c — list files of convert_imageset / ImageData (see listfile.h). */
#include "data/listfile.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void list_file_free(ListEntry *e, int n) {
  if (!e) return;
  for (int i = 0; i < n; i++) {
    free(e[i].path);
    free(e[i].text);
  }
  free(e);
}

/* Parse one line (NUL-terminated, trailing whitespace already dropped). */
static int parse_line(char *line, int lineno, ListEntry *e) {
  memset(e, 0, sizeof *e);
  e->line = lineno;
  if (!line[0]) return 0; /* blank */
  char *sp = strrchr(line, ' ');
  if (!sp) e->error = strchr(line, '\t') ? "missing label (the label must follow the last space, "
                                           "not a tab)"
                                         : "missing label (no space before a label)";
  else if (sp == line) e->error = "empty path";
  else {
    const char *lab = sp + 1;
    errno = 0;
    char *end;
    long v = strtol(lab, &end, 10);
    if (!*lab || *end || end == lab) e->error = "the label is not an integer";
    else if (errno == ERANGE || v < INT_MIN || v > INT_MAX) e->error = "the label is out of range";
    else {
      e->label = (int)v;
      *sp = 0;
      e->path = moka_strdup(line);
      return e->path ? 0 : -1;
    }
  }
  e->text = moka_strdup(line);
  return e->text ? 0 : -1;
}

int list_file_read(const char *file, ListEntry **out, int *n) {
  uint8_t *text;
  size_t len;
  *out = NULL;
  *n = 0;
  if (moka_read_file(file, &text, &len) != 0) return moka_error_prefix("list file");
  size_t cap = 0;
  int cnt = 0;
  ListEntry *lines = NULL;
  size_t pos = 0;
  while (pos < len) {
    size_t end = pos;
    while (end < len && text[end] != '\n') end++;
    if ((size_t)cnt == cap) {
      if (cnt == INT_MAX) {
        list_file_free(lines, cnt);
        return moka_errorf("'%s' has too many lines", file);
      }
      cap = cap ? cap * 2 : 1024;
      ListEntry *p = moka_realloc(lines, cap * sizeof *p);
      if (!p) goto fail;
      lines = p;
    }
    char *line = (char *)text + pos;
    text[end] = 0; /* (the buffer has a NUL after its last byte) */
    size_t k = end - pos;
    while (k && (line[k - 1] == ' ' || line[k - 1] == '\t' || line[k - 1] == '\r')) line[--k] = 0;
    if (strlen(line) != k) { /* a NUL byte inside the line */
      memset(&lines[cnt], 0, sizeof lines[cnt]);
      lines[cnt].line = cnt + 1;
      lines[cnt].error = "the line holds a NUL byte (not a text file?)";
      lines[cnt].text = moka_strdup("?");
      if (!lines[cnt].text) goto fail;
    } else if (parse_line(line, cnt + 1, &lines[cnt]) != 0) {
      goto fail;
    }
    cnt++;
    pos = end + 1;
  }
  free(text);
  *out = lines;
  *n = cnt;
  return 0;
fail:
  list_file_free(lines, cnt);
  free(text);
  return moka_error_prefix("list file '%s'", file);
}

/* boost::uniform_int<>(0, range) on a 32-bit engine (boost's "brange >
 * range" branch, which these ranges take). */
static uint32_t boost_uniform_int(Rng *r, uint32_t range) {
  if (range == 0) return 0;
  if (range == 0xFFFFFFFFu) return rng_u32(r);
  uint32_t bucket = 0xFFFFFFFFu / (range + 1u);
  if (0xFFFFFFFFu % (range + 1u) == range) bucket++;
  for (;;) {
    uint32_t v = rng_u32(r) / bucket;
    if (v <= range) return v;
  }
}

void list_shuffle(ListEntry *e, int n, Rng *r) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)boost_uniform_int(r, (uint32_t)i);
    ListEntry t = e[i];
    e[i] = e[j];
    e[j] = t;
  }
}

int list_path_inside_root(const char *root, const char *path) {
  if (!root || !*root) return 1;
  const char *allow = getenv("MOKA_ALLOW_PATH_ESCAPE");
  if (allow && !strcmp(allow, "1")) return 1;
  if (path[0] == '/') return 0;
  int depth = 0;
  const char *p = path;
  while (*p) {
    const char *slash = strchr(p, '/');
    size_t len = slash ? (size_t)(slash - p) : strlen(p);
    if (len == 2 && p[0] == '.' && p[1] == '.') {
      if (--depth < 0) return 0;
    } else if (len > 0 && !(len == 1 && p[0] == '.')) {
      depth++;
    }
    if (!slash) break;
    p = slash + 1;
  }
  return 1;
}

void list_file_check_paths(ListEntry *e, int n, const char *root) {
  for (int i = 0; i < n; i++) {
    if (!e[i].path || e[i].error || list_path_inside_root(root, e[i].path)) continue;
    e[i].error = "path escapes root_folder (set MOKA_ALLOW_PATH_ESCAPE=1 to allow it)";
    if (!e[i].text) e[i].text = moka_strdup(e[i].path);
  }
}
