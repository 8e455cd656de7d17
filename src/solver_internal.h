/* solver_internal.h — what the solver's source files share; not part of the
 * public API (that is solver.h).
 *
 * The solver is split by what each part does:
 *   solver.c          the solver parameter, building the nets, the CUDA set-up,
 *                     solver_create / solver_free
 *   solver_update.c   learning-rate policies and the update rules (SGD,
 *                     Nesterov, AdaGrad, RMSProp, AdaDelta, Adam), with
 *                     normalisation, regularisation and gradient clipping
 *   solver_loop.c     the training loop (Step / Solve), testing, the log
 *                     lines, numerical-fault checks
 *   solver_snapshot.c snapshots, restoring a solverstate, data seeking
 */
#ifndef MOKA_SOLVER_INTERNAL_H
#define MOKA_SOLVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "solver.h"

/* solver.c */
bool solver_file_exists(const char *path);
/* The folder part of `path` ("." when none, "/" for a file in the root) into buf. */
void solver_dir_of(const char *path, char *buf, size_t n);

/* solver_snapshot.c */
/* "the last good snapshot is X" / "no snapshot yet", for error messages. */
void solver_last_snapshot_text(const Solver *s, char *buf, size_t n);
/* Caffe's CheckSnapshotWritePermissions (made when solving starts rather than
 * when the solver is built, and also for the final snapshot). */
int solver_check_snapshot_prefix(const Solver *s);
/* The first parameter value (diff: gradient, else weight) of `net` that is
 * not finite, in net order: its layer (NULL when none is found), the index of
 * its blob in that layer, the element and the value. The host copies must be
 * current. */
const Layer *solver_first_nonfinite(const Net *net, bool diff, int *blob, size_t *at,
                                    float *value);

#endif
