/* net_memplan.h — a memory plan for a net's activations: which blob data and
 * diffs may share memory, and where each one lives in one arena.
 * Backend-neutral plain C (the CUDA backend uses it for device memory,
 * src/net_cuda.c; tests/unit/test_memplan.c checks it without a GPU).
 *
 * Time is counted in steps of one forward+backward pass over the net's L
 * layers:
 *
 *   step i          forward of layer i            (0 <= i < L)
 *   step 2L-1-i     backward of layer i           (only when with_diff)
 *
 * Every buffer (the data of a blob, the diff of a blob) gets a live interval
 * [first, last] of steps, inclusive; two buffers whose intervals meet must
 * not overlap in memory, any others may. Blob objects, not names, are the
 * unit: in-place layers share their bottom's Blob and so its buffers.
 *
 * Data (blob values):
 *   - forward-only nets (with_diff false: TEST phase, or no layer needs
 *     backward): from the first forward that writes the blob to the last
 *     forward that reads or writes it;
 *   - training (with_diff true): conservatively the whole pass, since
 *     backward reads bottoms and tops in ways each layer decides (ReLU reads
 *     its top, convolution its bottom, ...);
 *   - tops of source layers (no bottoms: Input, Data, ...) and blobs marked
 *     `keep` (net outputs, loss tops, blobs the user reads): the whole pass
 *     (the diffs too, except for source tops).
 * Diffs (with_diff only), all in the backward half:
 *   - written by the backward of each layer that needs backward and has the
 *     blob as a bottom with propagate_down (after it reads its tops), and,
 *     for loss tops, by the net before the loss layer's backward (the loss
 *     weight); read by the backward of each layer that needs backward and
 *     has the blob as a top;
 *   - live from the first write to the last read or write;
 *   - a diff that some backward reads before any write (a top nobody
 *     consumes) must read as zeros, as on the CPU where it is never written:
 *     it gets the whole pass, so nothing else ever touches its (zero-filled)
 *     memory; so do the diffs of `keep` blobs, outputs and loss tops;
 *   - a diff no backward reads or writes (the input data's, the labels')
 *     is never live, `used` = false: all of them point at one sink above
 *     the other buffers, as large as the largest of them (layers still want
 *     a pointer; a stray write there clobbers nothing).
 *
 * Fused chains (src/net_fuse.h). When net->fuse has chains, a chain may run
 * as one op (forward at its fwd_at: reads x and the shortcut, writes x and
 * y; backward at its bwd_at: reads y's diff, writes x's and the shortcut's)
 * or layer by layer (debug_info): every interval covers both ways, and a
 * diff that either way reads unwritten keeps its zeros all pass.
 *
 * Placement: greedy by size (largest first), each buffer at the smallest
 * gap between the already placed buffers whose intervals meet its own that
 * fits it (best fit), else above them; offsets aligned to MEMPLAN_ALIGN.
 */
#ifndef MOKA_NET_MEMPLAN_H
#define MOKA_NET_MEMPLAN_H

#include <stdbool.h>
#include <stddef.h>

#include "net.h"

/* Offsets (and the arena size) are multiples of this many bytes. */
#define MEMPLAN_ALIGN 256

typedef struct MemPlanBuffer {
  size_t bytes;   /* the buffer's size (0: an empty blob) */
  bool used;      /* false: never read or written (placed in the shared sink) */
  int first, last; /* live steps, inclusive (used buffers) */
  size_t offset;  /* bytes from the arena's start */
} MemPlanBuffer;

typedef struct MemPlan {
  int n_layers;            /* L */
  int n_steps;             /* L (forward-only) or 2L */
  bool with_diff;          /* diffs planned */
  int n_blobs;             /* = net->n_blobs; index b is net->blobs[b] */
  MemPlanBuffer *data;     /* [n_blobs] */
  MemPlanBuffer *diff;     /* [n_blobs]; all unused when !with_diff */
  size_t arena_bytes;      /* the arena the plan needs */
  size_t unplanned_bytes;  /* every data (and diff) its own memory: the sum of sizes */
} MemPlan;

/* Plan the activations of `net`. keep: [n_blobs] blobs that must stay
 * readable after the pass (NULL: none beyond the net's outputs and loss
 * tops, which are always kept); with_diff: plan the diffs too (training).
 * 0, or -1 with moka_errorf. Free with memplan_free. */
int memplan_net(const Net *net, const bool *keep, bool with_diff, MemPlan *plan);
void memplan_free(MemPlan *plan);

/* Place n buffers (their bytes/used/first/last set): fills each offset and
 * returns the arena size. The generic core of memplan_net. */
size_t memplan_place(MemPlanBuffer *buf, int n);

/* Log the plan's figures (one line: arena vs. every-blob-its-own). */
void memplan_log(const MemPlan *plan, const char *net_name);

#endif
