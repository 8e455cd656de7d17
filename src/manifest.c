/* manifest.c — see manifest.h. */
#include "manifest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void manifest_free(ManifestEntry *e, int n) {
  for (int i = 0; i < n; i++) {
    free(e[i].name);
    free(e[i].file);
  }
  free(e);
}

int manifest_read(const char *path, ManifestEntry **out, int *n) {
  *out = NULL;
  *n = 0;
  uint8_t *data;
  size_t len;
  if (moka_read_file(path, &data, &len)) return -1;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *sl = strrchr(dir, '/');
  if (sl) sl[1] = 0; else dir[0] = 0;
  ManifestEntry *e = NULL;
  int cnt = 0, lineno = 0;
  char *save = NULL;
  for (char *line = strtok_r((char *)data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    lineno++;
    while (*line == ' ' || *line == '\t') line++;
    if (!*line || *line == '#' || *line == '\r') continue;
    char name[1024], shape[1024], file[2048], dtype[64];
    if (sscanf(line, "%1023s %1023s %2047s %63s", name, shape, file, dtype) != 4) {
      moka_errorf("%s:%d: expected 'name shape file dtype'", path, lineno);
      goto fail;
    }
    ManifestEntry *ne = moka_realloc(e, (size_t)(cnt + 1) * sizeof *ne);
    if (!ne) goto fail;
    e = ne;
    ManifestEntry *m = &e[cnt];
    memset(m, 0, sizeof *m);
    cnt++;
    m->name = moka_strdup(name);
    if (!strcmp(dtype, "uint8")) m->is_u8 = 1;
    else if (strcmp(dtype, "float32")) {
      moka_errorf("%s:%d: dtype '%s' is not float32 or uint8", path, lineno, dtype);
      goto fail;
    }
    char *p = shape;
    while (*p) {
      char *end;
      errno = 0;
      long d = strtol(p, &end, 10);
      if (end == p || errno || d < 0 || d > 1 << 30 || m->num_axes >= MOKA_MAX_AXES) {
        moka_errorf("%s:%d: bad shape '%s'", path, lineno, shape);
        goto fail;
      }
      m->shape[m->num_axes++] = (int)d;
      p = end;
      if (*p == ',') p++;
      else if (*p) {
        moka_errorf("%s:%d: bad shape '%s'", path, lineno, shape);
        goto fail;
      }
    }
    size_t fl = strlen(dir) + strlen(file) + 1;
    m->file = moka_malloc(fl);
    if (!m->file || !m->name) goto fail;
    if (file[0] == '/') snprintf(m->file, fl, "%s", file);
    else snprintf(m->file, fl, "%s%s", dir, file);
  }
  free(data);
  if (cnt == 0) {
    free(e);
    return moka_errorf("manifest '%s' lists no arrays", path);
  }
  *out = e;
  *n = cnt;
  return 0;
fail:
  free(data);
  manifest_free(e, cnt);
  return -1;
}

float *manifest_load(const ManifestEntry *e) {
  size_t count = 1;
  for (int i = 0; i < e->num_axes; i++)
    if (!moka_mul_size(count, (size_t)e->shape[i], &count) ||
        count > (size_t)MOKA_MAX_BLOB_COUNT) {
      moka_errorf("shape of '%s' has more than %lld elements", e->name,
                  (long long)MOKA_MAX_BLOB_COUNT);
      return NULL;
    }
  uint8_t *data;
  size_t len;
  if (moka_read_file(e->file, &data, &len)) return NULL;
  size_t want = count * (e->is_u8 ? 1 : 4);
  if (len != want) {
    free(data);
    moka_errorf("'%s' holds %zu bytes; shape of '%s' needs %zu", e->file, len, e->name, want);
    return NULL;
  }
  float *f = moka_malloc((count ? count : 1) * sizeof(float));
  if (f) {
    if (e->is_u8)
      for (size_t i = 0; i < count; i++) f[i] = data[i];
    else
      memcpy(f, data, count * sizeof(float));
  }
  free(data);
  return f;
}
