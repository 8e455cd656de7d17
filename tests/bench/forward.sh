#!/bin/sh
# tests/bench/forward.sh [BUILD] — ResNet-50 (Kaiming He's v1, 224x224, fp32) inference
# throughput on the CPU: moka against Caffe 1.0 and PyTorch, in one run on this machine.
# A benchmark, not a test: it prints a table and never fails on a slow figure.
#
#   moka      moka time --forward_only on data/ResNet-50-deploy.prototxt with the batch set,
#             weights from `moka import --fill=msra` (BatchNorm statistics calibrated), the input
#             filled with N(0, 50^2) noise by moka time
#   Caffe     (a) pycaffe, TEST phase, the same prototxt, weights and kind of input (like for like);
#             (b) `caffe time` on a DummyData-fed training version of the net (gaussian data,
#             MSRA fillers: `caffe time` cannot load weights), its "Average Forward pass" (TRAIN
#             phase: BatchNorm on batch statistics, the data layer's refill included)
#   PyTorch   the same v1 graph built in torch (tests/bench/torch_resnet50.py), eval mode,
#             torch.set_num_threads(2), NCHW and channels_last, best of RUNS runs
# Each figure is the mean of ITER timed iterations after one warm-up pass; img/s = batch / mean;
# moka, `caffe time` and PyTorch: the best of RUNS runs (pycaffe: one run).
# Everything runs twice: OPENBLAS_CORETYPE as set, then unset (see lib.sh).
#
# Environment: ITER (default 4), RUNS (3), BATCHES ("1 8"), BENCH_DIR (default $BUILD/bench).
# Needs root (caffe-peer), python3-torch and GNU time. Logs stay in $BENCH_DIR/forward/.
set -eu
BUILD=${1:-${BUILD:-build}}
. "$(dirname "$0")/lib.sh"
ITER=${ITER:-4}
RUNS=${RUNS:-3}
BATCHES=${BATCHES:-"1 8"}
bench_check
WORK=$(mkdir -p "${BENCH_DIR:-$BUILD/bench}/forward" && cd "${BENCH_DIR:-$BUILD/bench}/forward" && pwd)
cp "$HERE/pycaffe_forward.py" "$WORK/"

echo "== ResNet-50 forward benchmark, fp32, 224x224 ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "   CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; ITER=$ITER RUNS=$RUNS"
echo "   load average before the run: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
for b in $BATCHES; do
  $PY "$HERE/gen_prototxt.py" deploy "$DEPLOY" "$b" "$WORK/deploy_b$b.prototxt"
  $PY "$HERE/gen_prototxt.py" train "$DEPLOY" "$b" "$WORK/train_b$b.prototxt"
done
# One set of random weights for every batch size (the shapes do not depend on it).
"$M" import --model="$WORK/deploy_b1.prototxt" --fill=msra --seed=1 \
  --out="$WORK/resnet50_msra.caffemodel" >"$WORK/import.log" 2>&1 || die "moka import failed: $(tail -2 "$WORK/import.log")"
torch_conv_kernels forward

for mode in $(bench_modes); do
  echo
  echo "== $(mode_title "$mode")"
  kernels "$mode"
  core=$(caffe_core "$mode")
  row "engine" "batch" "ms/batch" "img/s" "peak RSS" "others"
  for b in $BATCHES; do
    L=$WORK/$mode.b$b
    # moka
    best_run "$RUNS" "Average Forward pass" "$L.moka.log" $(envp "$mode") "$M" time \
      --model="$WORK/deploy_b$b.prototxt" --weights="$WORK/resnet50_msra.caffemodel" \
      --forward_only --iterations="$ITER" || die "moka time failed: $(tail -2 "$L.moka.log")"
    moka_ms=$(avg_ms "$L.moka.log" "Average Forward pass")
    row "moka (time --forward_only, TEST)" "$b" "$(ms1 "$moka_ms")" "$(img_s "$b" "$moka_ms")" "$(rss_mib "$L.moka.log.rss") MiB" "$(other_load "$L.moka.log.rss")"
    # Caffe (a) pycaffe TEST, same files
    (cd "$WORK" && CAFFE_PEER_CORETYPE=$core timed "$L.pycaffe.rss" "$PEER" python3 pycaffe_forward.py \
       "deploy_b$b.prototxt" resnet50_msra.caffemodel "$ITER" >"$L.pycaffe.log" 2>&1) ||
      die "pycaffe failed: $(tail -2 "$L.pycaffe.log")"
    pyc_ms=$(result_val "$L.pycaffe.log" ms_per_batch)
    row "Caffe (pycaffe forward, TEST)" "$b" "$(ms1 "$pyc_ms")" "$(img_s "$b" "$pyc_ms")" "$(rss_mib "$L.pycaffe.rss") MiB" "$(other_load "$L.pycaffe.rss")"
    # Caffe (b) caffe time, TRAIN-phase forward
    (cd "$WORK" && export CAFFE_PEER_CORETYPE="$core" &&
       best_run "$RUNS" "Average Forward pass" "$L.caffe.log" "$PEER" caffe time \
         -model "train_b$b.prototxt" -iterations "$ITER") ||
      die "caffe time failed: $(tail -2 "$L.caffe.log")"
    ct_ms=$(avg_ms "$L.caffe.log" "Average Forward pass")
    row "Caffe (caffe time fwd, TRAIN)*" "$b" "$(ms1 "$ct_ms")" "$(img_s "$b" "$ct_ms")" "$(rss_mib "$L.caffe.log.rss") MiB" "$(other_load "$L.caffe.log.rss")"
    # PyTorch, both layouts
    best_t=""
    for lay in nchw channels_last; do
      timed "$L.torch_$lay.rss" $(envp "$mode") $PY "$HERE/torch_resnet50.py" forward "$b" "$ITER" "$RUNS" "$lay" \
        >"$L.torch_$lay.log" 2>&1 || die "PyTorch failed: $(tail -2 "$L.torch_$lay.log")"
      t_ms=$(result_val "$L.torch_$lay.log" ms_per_batch)
      row "PyTorch (eval, $lay)" "$b" "$(ms1 "$t_ms")" "$(img_s "$b" "$t_ms")" "$(rss_mib "$L.torch_$lay.rss") MiB" "$(other_load "$L.torch_$lay.rss")"
      best_t=$(awk -v a="$best_t" -v b="$t_ms" 'BEGIN{ print (a == "" || b + 0 < a + 0) ? b : a }')
    done
    echo "  ratios at batch $b (moka img/s / peer img/s): moka/Caffe(pycaffe) $(ratio "$pyc_ms" "$moka_ms")," \
      "moka/Caffe(caffe time) $(ratio "$ct_ms" "$moka_ms"), moka/PyTorch(best layout) $(ratio "$best_t" "$moka_ms")"
  done
  echo "  others: share of the 2 CPUs used by other processes during that measurement"
  echo "  * caffe time: TRAIN phase, BatchNorm on batch statistics, DummyData refill included; its RSS includes backward buffers"
  echo "  moka per layer type (batch $b, forward only) against caffe time's TRAIN forward:"
  $PY "$HERE/layer_summary.py" "$WORK/train_b$b.prototxt" "moka=$WORK/$mode.b$b.moka.log" \
    "caffe_time=$WORK/$mode.b$b.caffe.log" | sed -n '/forward/,/total/p'
done
echo
echo "logs: $WORK"
