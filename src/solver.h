/* solver.h — Caffe's Solver: the training loop, learning-rate policies, the
 * parameter update rules, testing, snapshots and resuming.
 *
 * It follows Caffe 1.0 (Solver / SGDSolver and the other solvers in
 * src/caffe/solvers/), step for step:
 *
 *   Step(n): for each iteration
 *     1. clear all parameter diffs;
 *     2. every test_interval iterations (and at 0 unless
 *        test_initialization is false) run every test net;
 *     3. iter_size times: forward + backward (gradients accumulate), losses
 *        summed, then divided by iter_size;
 *     4. smooth the loss over the last average_loss iterations and, every
 *        `display` iterations, log it with the train net's outputs;
 *     5. ApplyUpdate: learning rate of this iteration, gradient clipping,
 *        then per parameter: normalise by iter_size, weight decay, the
 *        solver's update value; then w -= update for every parameter;
 *     6. ++iter; snapshot every `snapshot` iterations or when a signal asks.
 *   Solve(): Step(max_iter - iter), a final snapshot (snapshot_after_train),
 *     a last forward pass to display the loss, a last test, "Optimization
 *     Done.".
 *
 * The net's parameters live in one flat buffer (net->param_data/param_diff);
 * the solver keeps its history in flat buffers of the same layout, so the
 * update is one loop per parameter blob and a snapshot is one write.
 *
 * Data. Nets fed by Input layers get their batches from the caller through
 * `before_forward(solver, iter, micro_batch, user)`, called before every
 * forward pass of the train net (micro_batch = 0..iter_size-1, and once more
 * with iter = max_iter for the final display pass). Because it receives the
 * iteration number, a data source can derive its read position from it
 * (batch index = iter * iter_size + micro_batch), so that a run resumed from a
 * solverstate continues exactly as an uninterrupted run (CAFFE_NOTES.md,
 * "Resuming"); Caffe itself restarts its Data layer at the first record.
 *
 * CUDA (opt.backend == MOKA_BACKEND_CUDA, CUDA builds). solver_create builds
 * the nets, copies the `weights` into them, then moves the train net and
 * every test net to opt.device (net_to_device): a caller that changes host
 * parameters after solver_create must copy them up (net_params_to_device).
 * Forward/backward run on the device. The update:
 *   - SGD and Nesterov without clip_gradients: on the device, over the flat
 *     buffers (kernels/sgd.cu, kernels/nesterov.cu), the momentum in
 *     net->dev_history; the same float operations in the same order as the
 *     CPU code, so given the same gradients the results are bit-identical;
 *   - the other solvers, and any solver with clip_gradients: on the host, by
 *     the CPU code below, with explicit copies each iteration (parameters and
 *     gradients down, parameters and update values up); the history stays on
 *     the host. solver_create logs which path it took.
 * Test nets get the train net's parameters device to device before each test.
 * The values the solver logs (train/test outputs) are copied down explicitly;
 * snapshots copy parameters, gradients and history down first
 * (solver_sync_to_host), solver_restore loads on the host and copies up
 * (solver_sync_to_device). BatchNorm statistics are parameters, so they
 * travel with the flat buffer.
 *
 * Faults. Every forward pass of the train net has its loss checked (a
 * scalar), and once per iteration, after backward and before the update, the
 * parameter gradients are checked for NaN and infinities (one pass over the
 * flat gradient buffer on the host; on CUDA, chunk sums on the device and a
 * few hundred floats copied down). When a value is not finite, training
 * stops before the update with an error naming the iteration, the first
 * layer that produced a non-finite value (src/net_check.h replays the pass
 * to find it) and the last good snapshot (or "no snapshot yet"). A snapshot
 * is refused when the parameters are not finite, so a snapshot on disk never
 * holds NaN weights. With debug_info (the solver's, the train net's, or
 * `moka train --debug_info`), the train net logs Caffe's per-layer
 * [Forward] / [Backward] / [Update] lines on display iterations (Caffe's
 * rule: net_->set_debug_info(display && debug_info)).
 *
 * Snapshots are written with moka_write_file_atomic (PATH.tmp.<pid>, fsync,
 * rename), weights first: a run killed at any moment leaves every
 * .caffemodel and .solverstate complete, at worst a PATH.tmp.<pid> file
 * (never read as a snapshot: readers look for names ending in .solverstate /
 * .caffemodel) and a .caffemodel without its .solverstate. After each
 * successful snapshot, the temporary snapshot files of the same prefix whose
 * process no longer exists are removed. A failed write (a full disk) stops
 * training with an error naming the file and the previous snapshot, which is
 * left intact.
 *
 * Randomness. random_seed >= 0 seeds the train net's stream (Net.rng) before
 * the net is built, as Caffe seeds its global stream when the solver starts;
 * the test nets then take their setup draws from the same sequence and draw
 * from the train net's stream when they run. Fillers, Data-layer seeds and
 * Dropout masks thus follow Caffe's one global stream (exactly, except for
 * gaussian fillers: see solver.c).
 */
#ifndef MOKA_SOLVER_H
#define MOKA_SOLVER_H

#include <stdbool.h>

#include "caffe.pb-c.h"
#include "net.h"

typedef enum SolverKind {
  SOLVER_SGD = 0,
  SOLVER_NESTEROV,
  SOLVER_ADAGRAD,
  SOLVER_RMSPROP,
  SOLVER_ADADELTA,
  SOLVER_ADAM
} SolverKind;

/* What a signal (or any outside request) asks the solver to do; checked
 * between iterations and between test batches (Caffe's SolverAction). */
typedef enum SolverAction {
  SOLVER_ACTION_NONE = 0,
  SOLVER_ACTION_STOP,
  SOLVER_ACTION_SNAPSHOT
} SolverAction;

typedef struct Solver Solver;

/* Called before each forward pass of the train net. Return 0, or -1 with
 * moka_errorf() to stop training with that error. */
typedef int (*SolverBeforeForward)(Solver *s, int iter, int micro_batch, void *user);
/* Called before each forward pass of test net `test_net` (batch i of
 * test_iter) — the same hook for test data. */
typedef int (*SolverBeforeTest)(Solver *s, int test_net, int test_iter, void *user);
typedef SolverAction (*SolverActionFn)(void *user);

typedef struct SolverOptions {
  Backend backend;              /* default CPU (the reference). solver_mode/device_id are
                                   not read here: the caller (moka train) maps them to a
                                   backend, and refuses GPU when none is usable */
  int device;                   /* MOKA_BACKEND_CUDA: the CUDA device (default 0) */
  const char *base_dir;         /* net files given with a relative path that does not exist
                                   from the working directory are looked up here (the solver
                                   file's folder); NULL = only the working directory (Caffe) */
  bool quiet_nets;              /* no per-layer set-up lines while building nets */
  SolverBeforeForward before_forward;
  SolverBeforeTest before_test;
  SolverActionFn action;        /* NULL = never asked */
  void *user;                   /* passed to the three callbacks */
} SolverOptions;

struct Solver {
  Caffe__SolverParameter *param; /* upgraded copy (owned) */
  SolverKind kind;
  SolverOptions opt;
  Net *net;                     /* the train net */
  int n_test_nets;
  Net **test_nets;

  int iter;                     /* number of updates done */
  int current_step;             /* step/multistep position (saved in the solverstate) */

  /* Solver history, one flat buffer per slot in the layout of net->param_data.
   * Slot 0 is SGD's momentum (Caffe's history_[0..n)); AdaDelta and Adam keep
   * a second slot (history_[n..2n)). Saved as n_history_slots * n_params
   * BlobProtos in the solverstate. */
  int n_history_slots;
  float *history[2];            /* (param_count) each; with the device update (CUDA, SGD or
                                   Nesterov) slot 0 lives in net->dev_history and this copy is
                                   only current after solver_sync_to_host */
  bool update_on_device;        /* CUDA: the update runs on the device (see above) */
  float *update;                /* (param_count) scratch: Caffe's update_ */
  float *temp;                  /* (param_count) scratch: Caffe's temp_ */

  /* Loss smoothing over average_loss iterations (Caffe's UpdateSmoothedLoss). */
  float smoothed_loss;
  float *losses;                /* [average_loss] */
  int n_losses;

  bool requested_early_exit;
  int iterations_last;          /* for the iter/s figure of the display line */
  double timer_start;

  /* Numerical faults and snapshots (see "Faults" below). */
  bool debug_info;              /* the solver's or the train net's debug_info */
  char *last_snapshot;          /* the .solverstate last written or resumed from (owned);
                                   NULL: none yet */
  float *dev_sums;              /* CUDA: (n_sums) chunk sums of the gradients on the device */
  float *host_sums;             /* CUDA: (n_sums) their copy */
  size_t n_sums;
};

/* Read a solver prototxt as Caffe's ReadSolverParamsFromTextFileOrDie does:
 * upgrade the deprecated `solver_type` enum into `type`, and default
 * snapshot_prefix to the solver file name without extension (or
 * PREFIX/<solver name> when snapshot_prefix is a folder). */
int solver_param_read(const char *path, Caffe__SolverParameter **out);
/* Upgrade solver_type -> type in place (error when both are given). */
int solver_param_upgrade(Caffe__SolverParameter *p, const char *source);
/* Replace the `weights` list of `p` by the one file `weights` (moka train
 * --weights, moka finetune), or empty it when `weights` is NULL or "". */
int solver_param_set_weights(Caffe__SolverParameter *p, const char *weights);

/* Build the solver: the train net (net / net_param / train_net /
 * train_net_param, with train_state), the test nets (test_net /
 * test_net_param / the generic net, one per test_iter, with test_state),
 * copy `weights` from the parameter into all of them, and allocate the
 * history. `param` is copied. Returns NULL with moka_error(). */
Solver *solver_create(const Caffe__SolverParameter *param, const SolverOptions *o,
                      const char *source);
/* solver_param_read + solver_create with base_dir = the solver file's folder. */
Solver *solver_create_from_file(const char *path, const SolverOptions *o);
void solver_free(Solver *s);

/* "SGD", "Nesterov", ... -> kind; -1 with an error listing the known types. */
int solver_kind_from_name(const char *name, SolverKind *out);
const char *solver_kind_name(SolverKind k);

/* Caffe's GetLearningRate for the current s->iter (multistep advances
 * s->current_step, as in Caffe). Returns the rate, or NAN with moka_error()
 * for an unknown policy or a bad parameter. */
float solver_learning_rate(Solver *s);

/* Caffe's ApplyUpdate on the diffs now in the net: rate, clipping,
 * normalisation, regularisation, update value, w -= update. Does not change
 * s->iter. */
int solver_apply_update(Solver *s);

/* Run `iters` iterations (Caffe's Step). Stops early (returns 0) when the
 * action callback asked to stop: s->requested_early_exit is then true. */
int solver_step(Solver *s, int iters);
/* Caffe's Solve: restore from `resume_file` when non-NULL, step up to
 * max_iter, final snapshot, display pass, test, "Optimization Done.". */
int solver_solve(Solver *s, const char *resume_file);
/* Run every test net (Caffe's TestAll) / one. */
int solver_test_all(Solver *s);
int solver_test(Solver *s, int test_net);

/* Write PREFIX_iter_N.caffemodel, then PREFIX_iter_N.solverstate (each
 * atomically, in this order, so a solverstate never names a missing model). */
int solver_snapshot(Solver *s);
/* Restore iter, current_step, history and the weights of learned_net (looked
 * up as written, then beside the solverstate). HDF5 states are refused. */
int solver_restore(Solver *s, const char *solverstate);

/* CUDA: copy the train net's parameters, gradients and (device update) the
 * momentum history down into net->param_data/param_diff and s->history /
 * up from them. No-ops on the CPU. 0 / -1. */
int solver_sync_to_host(Solver *s);
int solver_sync_to_device(Solver *s);

/* Position the Data/ImageData layers of every net where an uninterrupted
 * run would be at s->iter (solver_restore calls it). */
int solver_seek_data(Solver *s);

/* Copy the parameters of every layer of `src` into the layer of the same name
 * in `dst` (Caffe's ShareTrainedLayersWith, by value). When both nets are on a
 * CUDA device the copy is device to device (the host copies are untouched);
 * one on the device and one not is an error. */
int solver_share_trained_layers(Net *dst, const Net *src);

#endif
