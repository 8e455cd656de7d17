/* flags.h — one table per subcommand drives both the parser and --help, so
 * the help text can never advertise a flag the parser does not accept.
 *
 * Accepted forms (gflags-compatible, as Caffe's tools): -flag value,
 * --flag value, -flag=value, --flag=value; booleans also as --flag,
 * --noflag, --flag=true|false|1|0. Arguments that do not start with '-' are
 * positional. "--" ends the flags.
 */
#ifndef MOKA_FLAGS_H
#define MOKA_FLAGS_H

#include <stdbool.h>
#include <stdio.h>

typedef enum FlagType { FLAG_STRING, FLAG_INT, FLAG_DOUBLE, FLAG_BOOL } FlagType;

typedef struct Flag {
  const char *name;
  FlagType type;
  void *dst;          /* const char ** / int * / double * / bool * */
  const char *help;
  bool seen;          /* set by the parser */
} Flag;

typedef struct Command {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv); /* argv[0] is the command name */
} Command;

/* Parse argv[1..]. Positional arguments are collected in order into pos
 * (up to max_pos; more is an error). Returns 0, 1 when --help was asked for
 * (usage already printed to stdout), or -1 with moka_error() set. */
int flags_parse(const char *cmd, const char *usage_args, const char *summary, Flag *flags,
                int n_flags, int argc, char **argv, const char **pos, int max_pos, int *n_pos);
void flags_usage(FILE *out, const char *cmd, const char *usage_args, const char *summary,
                 const Flag *flags, int n_flags);

/* "a,b,c" -> count of comma-separated items parsed as doubles; -1 on error. */
int flags_parse_doubles(const char *s, double *out, int max);

#endif
