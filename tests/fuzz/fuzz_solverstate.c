/* fuzz_solverstate.c — a .solverstate: SolverState unpacked as
 * proto_read_binary does, and every history blob loaded into a Blob as a
 * resume would (the solver's own restore, src/solver_snapshot.c, checks the history
 * against the net's parameters through blobproto_shape and
 * blobproto_to_blob_data, both exercised here). */
#include "caffe.pb-c.h"
#include "fuzz.h"
#include "proto_io.h"

int fuzz_solverstate(const uint8_t *data, size_t size) {
  fuzz_init();
  ProtobufCMessage *m;
  if (proto_unpack(&caffe__solver_state__descriptor, data, size, "fuzz.solverstate", &m) != 0)
    return 0;
  Caffe__SolverState *st = (Caffe__SolverState *)m;
  for (size_t i = 0; i < st->n_history; i++) {
    Blob *b = blob_new("history");
    FUZZ_ASSERT(b, "blob_new");
    int n, shape[MOKA_MAX_AXES];
    if (blobproto_shape(st->history[i], &n, shape) == 0) {
      FUZZ_ASSERT(n >= 0 && n <= MOKA_MAX_AXES, "%d axes", n);
      for (int k = 0; k < n; k++) FUZZ_ASSERT(shape[k] >= 0, "axis %d is %d", k, shape[k]);
    }
    (void)blobproto_load(st->history[i], b, "fuzz.solverstate history");
    blob_free(b);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

FUZZ_ENTRY(fuzz_solverstate)
