#!/bin/sh
# tests/bench/fast.sh [BUILD] — moka's fast CPU backend against its reference backend, in fp32
# and bf16, and against PyTorch fp32 and bf16 (autocast), all in one run on this machine:
# ResNet-50 v1 at 224x224, training (forward + backward, TRAIN phase, batch statistics) and
# inference (forward, TEST phase). A benchmark, not a test: it prints a table and never fails on
# a slow figure. Caffe's figures come from tests/bench/train.sh and forward.sh. Every engine's
# figure is its best of RUNS runs (moka: separate processes; PyTorch: its script's own runs).
#
#   moka reference   MOKA_BACKEND=reference moka time ...      (plain loops + per-image GEMMs)
#   moka fast fp32   moka time ...                             (the default backend)
#   moka fast bf16   moka time --precision=bf16 ...            (AVX-512 BF16 GEMMs, bf16
#                    channels-last activations (src/net_bf16.h); fp32 weights and statistics)
#   moka fast bf16f32act MOKA_BF16_ACT=0 moka time --precision=bf16 (the same GEMMs on fp32
#                    NCHW activations)
#   PyTorch fp32     tests/bench/torch_resnet50.py             (channels_last, 2 threads)
#   PyTorch bf16     tests/bench/torch_resnet50_bf16.py        (autocast bf16, channels_last)
#
# Training runs `moka time` on the DummyData-fed train prototxt of train.sh (no parameter
# update, like `caffe time`); PyTorch's figure is forward + backward without its SGD step.
# Inference runs `moka time --forward_only` on the deploy net with `moka import --fill=msra`
# weights, as forward.sh does. Each figure is the mean of ITER iterations after a warm-up.
#
# Environment: ITER (default 3), RUNS (runs per engine, best kept; default 2), TRAIN_BATCHES
# ("8 16"), FORWARD_BATCHES ("1 8"), MODES (default: as bench_modes in lib.sh: the
# environment's OPENBLAS_CORETYPE, then unset), BENCH_DIR (default $BUILD/bench).
# Needs python3-torch and GNU time (not root: Caffe is not run here).
set -eu
BUILD=${1:-${BUILD:-build}}
. "$(dirname "$0")/lib.sh"
ITER=${ITER:-3}
RUNS=${RUNS:-2}
TRAIN_BATCHES=${TRAIN_BATCHES:-"8 16"}
FORWARD_BATCHES=${FORWARD_BATCHES:-"1 8"}
[ -x "$M" ] || die "no $M: build it first (make BUILD=$BUILD)"
$PY -c 'import torch' 2>/dev/null || die "PyTorch missing: apt-get install -y python3-torch"
[ -x /usr/bin/time ] || die "GNU time missing: apt-get install -y time"
WORK=$(mkdir -p "${BENCH_DIR:-$BUILD/bench}/fast" && cd "${BENCH_DIR:-$BUILD/bench}/fast" && pwd)

frow() { printf '  %-26s %5s %10s %8s %9s %7s\n' "$@"; }

echo "== moka fast CPU backend: ResNet-50, 224x224 ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "   CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; ITER=$ITER RUNS=$RUNS"
echo "   load average before the run: $(cut -d" " -f1-3 /proc/loadavg)"
echo "   OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(unset)} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-(unset)}"
"$M" device_query | sed -n 's/^/   /; /CPU:/p; /AVX/p'
for b in $TRAIN_BATCHES; do
  $PY "$HERE/gen_prototxt.py" train "$DEPLOY" "$b" "$WORK/train_b$b.prototxt"
done
for b in $FORWARD_BATCHES; do
  $PY "$HERE/gen_prototxt.py" deploy "$DEPLOY" "$b" "$WORK/deploy_b$b.prototxt"
done
first=$(echo $FORWARD_BATCHES | cut -d" " -f1)
"$M" import --model="$WORK/deploy_b$first.prototxt" --fill=msra --seed=1 \
  --out="$WORK/resnet50_msra.caffemodel" >"$WORK/import.log" 2>&1 ||
  die "moka import failed: $(tail -2 "$WORK/import.log")"

# moka_run LOG KEY BACKEND PRECISION ARGS...: `moka time`, the best of RUNS runs by KEY (as
# PyTorch's script keeps its best of RUNS), into LOG and LOG.rss
# PRECISION bf16f32act: --precision=bf16 with MOKA_BF16_ACT=0 (fp32 NCHW activations, the
# bf16 mode before 2026-11-29); bf16: the default (bf16 channels-last activations).
moka_run() {
  log=$1 key=$2 be=$3 pr=$4 act=; shift 4
  if [ "$pr" = bf16f32act ]; then pr=bf16 act=0; fi
  best_run "$RUNS" "$key" "$log" $(envp "$mode") MOKA_BACKEND="$be" MOKA_BF16_ACT=$act "$M" time \
    --precision="$pr" "$@" --iterations="$ITER" || die "moka time failed: $(tail -2 "$log")"
}

# torch_run LOG SCRIPT ARGS...
torch_run() {
  log=$1 script=$2; shift 2
  (cd "$HERE" && timed "$log.rss" $(envp "$mode") $PY "$script" "$@" >"$log" 2>&1) ||
    die "PyTorch failed: $(tail -2 "$log")"
  result_val "$log" ms_per_batch
}

for mode in ${MODES:-$(bench_modes)}; do
  echo
  echo "== $(mode_title "$mode")"
  echo "  moka: $($(envp "$mode") "$M" device_query | sed -n 's/^ *OpenBLAS: //p')"
  echo "  PyTorch: $($(envp "$mode") $PY "$HERE/torch_resnet50.py" info)"
  echo
  echo "  training (forward + backward), ms per batch:"
  frow "engine" "batch" "ms" "img/s" "peak RSS" "others"
  for b in $TRAIN_BATCHES; do
    L=$WORK/$mode.train.b$b
    for cfg in "reference fp32" "fast fp32" "fast bf16f32act" "fast bf16"; do
      set -- $cfg
      moka_run "$L.moka.$1.$2.log" "Average Forward-Backward" "$1" "$2" \
        --model="$WORK/train_b$b.prototxt"
      ms=$(avg_ms "$L.moka.$1.$2.log" "Average Forward-Backward")
      eval "t_$1_$2=\$ms"
      frow "moka $1 $2" "$b" "$(ms1 "$ms")" "$(img_s "$b" "$ms")" \
        "$(rss_mib "$L.moka.$1.$2.log.rss") MiB" "$(other_load "$L.moka.$1.$2.log.rss")"
    done
    pt=$(torch_run "$L.torch_fp32.log" torch_resnet50.py train "$b" "$ITER" "$RUNS" channels_last)
    frow "PyTorch fp32 channels_last" "$b" "$(ms1 "$pt")" "$(img_s "$b" "$pt")" \
      "$(rss_mib "$L.torch_fp32.log.rss") MiB" "$(other_load "$L.torch_fp32.log.rss")"
    pb=$(torch_run "$L.torch_bf16.log" torch_resnet50_bf16.py train "$b" "$ITER" "$RUNS" channels_last)
    frow "PyTorch bf16 autocast" "$b" "$(ms1 "$pb")" "$(img_s "$b" "$pb")" \
      "$(rss_mib "$L.torch_bf16.log.rss") MiB" "$(other_load "$L.torch_bf16.log.rss")"
    echo "  ratios at batch $b (img/s over img/s): fast/reference $(ratio "$t_reference_fp32" "$t_fast_fp32")," \
      "fast fp32/PyTorch fp32 $(ratio "$pt" "$t_fast_fp32"), fast bf16/PyTorch bf16 $(ratio "$pb" "$t_fast_bf16")," \
      "fast bf16f32act/PyTorch bf16 $(ratio "$pb" "$t_fast_bf16f32act"), bf16/fp32 $(ratio "$t_fast_fp32" "$t_fast_bf16")"
  done
  echo
  echo "  inference (forward, TEST), ms per batch:"
  frow "engine" "batch" "ms" "img/s" "peak RSS" "others"
  for b in $FORWARD_BATCHES; do
    L=$WORK/$mode.forward.b$b
    for cfg in "reference fp32" "fast fp32" "fast bf16f32act" "fast bf16"; do
      set -- $cfg
      moka_run "$L.moka.$1.$2.log" "Average Forward pass" "$1" "$2" \
        --model="$WORK/deploy_b$b.prototxt" --weights="$WORK/resnet50_msra.caffemodel" --forward_only
      ms=$(avg_ms "$L.moka.$1.$2.log" "Average Forward pass")
      eval "f_$1_$2=\$ms"
      frow "moka $1 $2" "$b" "$(ms1 "$ms")" "$(img_s "$b" "$ms")" \
        "$(rss_mib "$L.moka.$1.$2.log.rss") MiB" "$(other_load "$L.moka.$1.$2.log.rss")"
    done
    pt=$(torch_run "$L.torch_fp32.log" torch_resnet50.py forward "$b" "$ITER" "$RUNS" channels_last)
    frow "PyTorch fp32 channels_last" "$b" "$(ms1 "$pt")" "$(img_s "$b" "$pt")" \
      "$(rss_mib "$L.torch_fp32.log.rss") MiB" "$(other_load "$L.torch_fp32.log.rss")"
    pb=$(torch_run "$L.torch_bf16.log" torch_resnet50_bf16.py forward "$b" "$ITER" "$RUNS" channels_last)
    frow "PyTorch bf16 autocast" "$b" "$(ms1 "$pb")" "$(img_s "$b" "$pb")" \
      "$(rss_mib "$L.torch_bf16.log.rss") MiB" "$(other_load "$L.torch_bf16.log.rss")"
    echo "  ratios at batch $b: fast/reference $(ratio "$f_reference_fp32" "$f_fast_fp32")," \
      "fast fp32/PyTorch fp32 $(ratio "$pt" "$f_fast_fp32"), fast bf16/PyTorch bf16 $(ratio "$pb" "$f_fast_bf16")," \
      "fast bf16f32act/PyTorch bf16 $(ratio "$pb" "$f_fast_bf16f32act")"
  done
  bl=$(echo $TRAIN_BATCHES | cut -d" " -f1)
  echo "  per layer type, training at batch $bl (reference, fast fp32, fast bf16 with fp32 and bf16 activations):"
  $PY "$HERE/layer_summary.py" "$WORK/train_b$bl.prototxt" \
    "reference=$WORK/$mode.train.b$bl.moka.reference.fp32.log" \
    "fast=$WORK/$mode.train.b$bl.moka.fast.fp32.log" \
    "bf16f32act=$WORK/$mode.train.b$bl.moka.fast.bf16f32act.log" \
    "bf16=$WORK/$mode.train.b$bl.moka.fast.bf16.log"
done
echo
echo "logs: $WORK"
