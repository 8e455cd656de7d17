/* flags.c — see flags.h. */
#include "flags.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char *type_hint(FlagType t) {
  switch (t) {
    case FLAG_STRING: return "=STR";
    case FLAG_INT: return "=N";
    case FLAG_DOUBLE: return "=X";
    default: return "";
  }
}

void flags_usage(FILE *out, const char *cmd, const char *usage_args, const char *summary,
                 const Flag *flags, int n_flags) {
  fprintf(out, "usage: moka %s%s%s\n\n%s\n\nflags:\n", cmd, n_flags ? " [flags]" : "",
          usage_args && *usage_args ? usage_args : "", summary);
  for (int i = 0; i < n_flags; i++) {
    char left[64];
    snprintf(left, sizeof left, "--%s%s", flags[i].name, type_hint(flags[i].type));
    fprintf(out, "  %-26s %s\n", left, flags[i].help);
  }
  fprintf(out, "  %-26s %s\n", "--help", "show this text");
}

static int set_value(const char *cmd, Flag *f, const char *v) {
  char *end;
  switch (f->type) {
    case FLAG_STRING:
      *(const char **)f->dst = v;
      return 0;
    case FLAG_INT: {
      errno = 0;
      long x = strtol(v, &end, 10);
      if (errno || end == v || *end || x < INT_MIN || x > INT_MAX)
        return moka_errorf("moka %s: --%s wants an integer, got '%s'", cmd, f->name, v);
      *(int *)f->dst = (int)x;
      return 0;
    }
    case FLAG_DOUBLE: {
      errno = 0;
      double x = strtod(v, &end);
      if (errno || end == v || *end)
        return moka_errorf("moka %s: --%s wants a number, got '%s'", cmd, f->name, v);
      *(double *)f->dst = x;
      return 0;
    }
    case FLAG_BOOL:
      if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")) {
        *(bool *)f->dst = true;
        return 0;
      }
      if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no")) {
        *(bool *)f->dst = false;
        return 0;
      }
      return moka_errorf("moka %s: --%s wants true or false, got '%s'", cmd, f->name, v);
  }
  return -1;
}

int flags_parse(const char *cmd, const char *usage_args, const char *summary, Flag *flags,
                int n_flags, int argc, char **argv, const char **pos, int max_pos, int *n_pos) {
  *n_pos = 0;
  bool only_pos = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (only_pos || a[0] != '-' || a[1] == 0) {
      if (*n_pos >= max_pos)
        return moka_errorf("moka %s: unexpected argument '%s' (see moka %s --help)", cmd, a, cmd);
      pos[(*n_pos)++] = a;
      continue;
    }
    if (!strcmp(a, "--")) {
      only_pos = true;
      continue;
    }
    const char *name = a + 1;
    if (*name == '-') name++;
    char key[128];
    const char *eq = strchr(name, '=');
    size_t klen = eq ? (size_t)(eq - name) : strlen(name);
    if (klen >= sizeof key) return moka_errorf("moka %s: flag '%s' is too long", cmd, a);
    memcpy(key, name, klen);
    key[klen] = 0;
    if (!strcmp(key, "help") || !strcmp(key, "h")) {
      flags_usage(stdout, cmd, usage_args, summary, flags, n_flags);
      return 1;
    }
    Flag *f = NULL;
    bool negated = false;
    for (int k = 0; k < n_flags; k++)
      if (!strcmp(flags[k].name, key)) f = &flags[k];
    if (!f && !strncmp(key, "no", 2))
      for (int k = 0; k < n_flags; k++)
        if (flags[k].type == FLAG_BOOL && !strcmp(flags[k].name, key + 2)) f = &flags[k], negated = true;
    if (!f) return moka_errorf("moka %s: unknown flag '%s' (see moka %s --help)", cmd, a, cmd);
    f->seen = true;
    if (f->type == FLAG_BOOL && !eq) {
      *(bool *)f->dst = !negated;
      continue;
    }
    if (negated) return moka_errorf("moka %s: '%s' takes no value", cmd, a);
    const char *v;
    if (eq) {
      v = eq + 1;
    } else {
      if (i + 1 >= argc) return moka_errorf("moka %s: flag '%s' needs a value", cmd, a);
      v = argv[++i];
    }
    if (set_value(cmd, f, v)) return -1;
  }
  return 0;
}

int flags_parse_doubles(const char *s, double *out, int max) {
  int n = 0;
  const char *p = s;
  while (*p) {
    char *end;
    errno = 0;
    double x = strtod(p, &end);
    if (end == p || errno) return -1;
    if (n >= max) return -1;
    out[n++] = x;
    p = end;
    while (*p == ' ') p++;
    if (*p == ',') {
      p++;
      if (!*p) return -1;
    } else if (*p) {
      return -1;
    }
  }
  return n;
}
