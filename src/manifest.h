/* manifest.h — the array manifest of shared/golden/README.md: one line per
 * array, `name shape file dtype`, shape comma-separated, file relative to the
 * manifest's folder, dtype float32 or uint8; '#' starts a comment line. */
#ifndef MOKA_MANIFEST_H
#define MOKA_MANIFEST_H

#include "blob.h"

typedef struct ManifestEntry {
  char *name;
  int num_axes;
  int shape[MOKA_MAX_AXES];
  char *file;  /* resolved path */
  int is_u8;
} ManifestEntry;

int manifest_read(const char *path, ManifestEntry **out, int *n);
void manifest_free(ManifestEntry *e, int n);
/* Load an entry's values (converted to float) into a malloc'd array of
 * count(shape) floats; the file size must match. */
float *manifest_load(const ManifestEntry *e);

#endif
