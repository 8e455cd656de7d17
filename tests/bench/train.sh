#!/bin/sh
# tests/bench/train.sh [BUILD] — ResNet-50 (Kaiming He's v1, 224x224, fp32) training throughput
# on the CPU: moka against Caffe 1.0 and PyTorch, in one run on this machine. A benchmark, not
# a test: it prints a table and never fails on a slow figure. This measures the starting point.
#
#   moka      moka time (TRAIN phase: forward + backward) on a DummyData-fed training version of
#             data/ResNet-50-deploy.prototxt (tests/bench/gen_prototxt.py train: gaussian data
#             refilled every pass, MSRA fillers, BatchNorm on batch statistics, SoftmaxWithLoss)
#   Caffe     `caffe time` on the very same prototxt (forward + backward)
#   PyTorch   the same v1 graph (tests/bench/torch_resnet50.py train), train mode,
#             cross-entropy, backward, and an SGD step (momentum 0.9, weight decay) timed
#             separately; torch.set_num_threads(2); NCHW and channels_last; best of RUNS runs
# `caffe time` and `moka time` do no parameter update: img/s is forward + backward for all three
# (PyTorch's step is shown beside it; the update is ~1% of an iteration here).
# Each figure is the mean of ITER timed iterations after one warm-up pass, the best (lowest) of
# RUNS runs for every engine (moka and Caffe: separate processes, lib.sh's best_run).
# Everything runs twice: OPENBLAS_CORETYPE as set, then unset (see lib.sh).
#
# Environment: ITER (default 3), RUNS (2), BATCHES ("8 16"), BENCH_DIR (default $BUILD/bench).
# Needs root (caffe-peer), python3-torch and GNU time. Logs stay in $BENCH_DIR/train/.
set -eu
BUILD=${1:-${BUILD:-build}}
. "$(dirname "$0")/lib.sh"
ITER=${ITER:-3}
RUNS=${RUNS:-2}
BATCHES=${BATCHES:-"8 16"}
bench_check
WORK=$(mkdir -p "${BENCH_DIR:-$BUILD/bench}/train" && cd "${BENCH_DIR:-$BUILD/bench}/train" && pwd)
cp "$HERE/pycaffe_forward.py" "$WORK/"

trow() { printf '  %-30s %5s %9s %9s %9s %7s %9s %7s  %s\n' "$@"; }

echo "== ResNet-50 training benchmark (forward + backward), fp32, 224x224 ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "   CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; ITER=$ITER RUNS=$RUNS"
echo "   load average before the run: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
for b in $BATCHES; do
  $PY "$HERE/gen_prototxt.py" train "$DEPLOY" "$b" "$WORK/train_b$b.prototxt"
done
torch_conv_kernels train

for mode in $(bench_modes); do
  echo
  echo "== $(mode_title "$mode")"
  kernels "$mode"
  core=$(caffe_core "$mode")
  trow "engine" "batch" "fwd ms" "bwd ms" "f+b ms" "img/s" "peak RSS" "others" ""
  for b in $BATCHES; do
    L=$WORK/$mode.b$b
    best_run "$RUNS" "Average Forward-Backward" "$L.moka.log" $(envp "$mode") "$M" time \
      --model="$WORK/train_b$b.prototxt" --iterations="$ITER" ||
      die "moka time failed: $(tail -2 "$L.moka.log")"
    mf=$(avg_ms "$L.moka.log" "Average Forward pass")
    mb=$(avg_ms "$L.moka.log" "Average Backward pass")
    mfb=$(avg_ms "$L.moka.log" "Average Forward-Backward")
    trow "moka (time, TRAIN)" "$b" "$(ms1 "$mf")" "$(ms1 "$mb")" "$(ms1 "$mfb")" "$(img_s "$b" "$mfb")" \
      "$(rss_mib "$L.moka.log.rss") MiB" "$(other_load "$L.moka.log.rss")" ""
    (cd "$WORK" && export CAFFE_PEER_CORETYPE="$core" &&
       best_run "$RUNS" "Average Forward-Backward" "$L.caffe.log" "$PEER" caffe time \
         -model "train_b$b.prototxt" -iterations "$ITER") ||
      die "caffe time failed: $(tail -2 "$L.caffe.log")"
    cf=$(avg_ms "$L.caffe.log" "Average Forward pass")
    cb=$(avg_ms "$L.caffe.log" "Average Backward pass")
    cfb=$(avg_ms "$L.caffe.log" "Average Forward-Backward")
    trow "Caffe (caffe time, TRAIN)" "$b" "$(ms1 "$cf")" "$(ms1 "$cb")" "$(ms1 "$cfb")" "$(img_s "$b" "$cfb")" \
      "$(rss_mib "$L.caffe.log.rss") MiB" "$(other_load "$L.caffe.log.rss")" ""
    best_t=""
    for lay in nchw channels_last; do
      timed "$L.torch_$lay.rss" $(envp "$mode") $PY "$HERE/torch_resnet50.py" train "$b" "$ITER" "$RUNS" "$lay" \
        >"$L.torch_$lay.log" 2>&1 || die "PyTorch failed: $(tail -2 "$L.torch_$lay.log")"
      t=$(result_val "$L.torch_$lay.log" ms_per_batch)
      st=$(result_val "$L.torch_$lay.log" step_ms)
      full=$(result_val "$L.torch_$lay.log" full_ms_per_batch)
      trow "PyTorch (train, $lay)" "$b" "-" "-" "$(ms1 "$t")" "$(img_s "$b" "$t")" \
        "$(rss_mib "$L.torch_$lay.rss") MiB" "$(other_load "$L.torch_$lay.rss")" "SGD step $(ms1 "$st") ms; with it $(img_s "$b" "$full") img/s"
      best_t=$(awk -v a="$best_t" -v b="$t" 'BEGIN{ print (a == "" || b + 0 < a + 0) ? b : a }')
    done
    echo "  ratios at batch $b (moka img/s / peer img/s): moka/Caffe $(ratio "$cfb" "$mfb")," \
      "moka/PyTorch(best layout) $(ratio "$best_t" "$mfb")"
  done
  echo "  others: share of the 2 CPUs used by other processes during that measurement"
  echo "  per layer type at batch $b (both TRAIN phase, same prototxt):"
  $PY "$HERE/layer_summary.py" "$WORK/train_b$b.prototxt" "moka=$WORK/$mode.b$b.moka.log" \
    "caffe_time=$WORK/$mode.b$b.caffe.log"
done
echo
echo "logs: $WORK"
