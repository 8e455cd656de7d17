/* listfile.h — the "<path> <label>" list files of Caffe's convert_imageset
 * and ImageData layer.
 *
 * Caffe reads each line with std::getline and splits it at its LAST space:
 * the path is what comes before (it may contain spaces), the label is
 * atoi() of what comes after. Caffe accepts anything; moka names the line
 * of a malformed one instead:
 *   - trailing spaces, tabs and '\r' (CRLF files) are dropped first;
 *   - a blank line is ignored (it still counts as a line: keys are numbered
 *     by line, as Caffe numbers them);
 *   - no space: "missing label"; an empty path; a label that is not a whole
 *     int ("3x", "abc", "99999999999"): malformed, with the reason.
 */
#ifndef MOKA_LISTFILE_H
#define MOKA_LISTFILE_H

typedef struct ListEntry {
  char *path;        /* as written in the list (NULL for blank lines) */
  int label;
  int line;          /* 1-based line number in the file */
  const char *error; /* NULL, or why the line is malformed (static text) */
  char *text;        /* malformed lines: the line itself (for messages), else NULL */
} ListEntry;

/* Read every line of `file` (blank and malformed ones included, so that
 * index == line - 1). Returns 0, or -1 when the file cannot be read. */
int list_file_read(const char *file, ListEntry **out, int *n);
void list_file_free(ListEntry *e, int n);

/* Paths from a list file stay inside root_folder: when `root` is not empty,
 * an absolute path, or one whose ".." components climb above the root, is
 * marked malformed ("path escapes root_folder"), so convert_imageset skips it
 * and ImageData refuses it, naming the line. Caffe joins root + path without
 * any check; setting MOKA_ALLOW_PATH_ESCAPE=1 in the environment restores
 * that (explicitly allowed). With an empty root, paths are used as written
 * (absolute lists are Caffe's common usage), and there is nothing to escape. */
void list_file_check_paths(ListEntry *e, int n, const char *root);
/* The same rule for one path: true when `path` may be joined to `root`. */
int list_path_inside_root(const char *root, const char *path);

/* caffe::shuffle (include/caffe/util/rng.hpp) with boost::uniform_int on
 * the given mt19937 stream: Fisher-Yates from the end. */
#include "rng.h"
void list_shuffle(ListEntry *e, int n, Rng *r);

#endif
