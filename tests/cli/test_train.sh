#!/bin/sh
# CLI tests of `moka train` and `moka test`: Caffe's log lines (compared with
# real Caffe's solver log, numbers aside), snapshots, resuming, signals, and
# the errors (solver_mode GPU without a GPU, unknown solver type, missing net
# file, bad flags). Prints "ok NAME" / "FAIL NAME" per check.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
case "$M" in /*) ;; *) M="$(pwd)/$M" ;; esac
G=$(cd "${MOKA_SHARED:-../shared}/golden" && pwd)
T=$(mktemp -d /tmp/moka_train.XXXXXX)
trap 'rm -rf "$T"' EXIT

. "$(dirname "$0")/lib.sh"

# --- a small net fed by DummyData: constant data, so runs are reproducible
# and a resumed run sees the same batches as an uninterrupted one.
mkdir -p "$T/def" "$T/snap"
cat > "$T/def/net.prototxt" <<'EOF'
name: "tiny"
layer { name: "d" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 }
    data_filler { type: "constant" value: 0.3 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
  include { phase: TEST } }
EOF
solver() { # solver FILE PREFIX MAX_ITER [extra lines]
  f=$1 pre=$2 max=$3; shift 3
  { echo 'net: "net.prototxt"'
    echo 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005'
    echo 'lr_policy: "step" gamma: 0.5 stepsize: 2'
    echo "max_iter: $max display: 1 snapshot: 2 snapshot_prefix: \"$pre\""
    echo 'test_iter: 2 test_interval: 2 random_seed: 7 solver_mode: CPU'
    for l in "$@"; do echo "$l"; done; } > "$f"
}
solver "$T/def/solver.prototxt" "$T/snap/dd" 4

# run from another folder: net.prototxt is found beside the solver file
if (cd "$T" && "$M" train --solver="$T/def/solver.prototxt") >"$T/log" 2>&1; then
  ok train_runs
else
  fail train_runs "$(tail -3 "$T/log")"
fi
strip "$T/log" > "$T/text"
bad=""
for pat in \
  '^Use CPU\.$' \
  '^Solving tiny$' \
  '^Learning Rate Policy: step$' \
  '^Iteration 0, Testing net (#0)$' \
  '^    Test net output #0: accuracy = [0-9.e+-]*$' \
  '^    Test net output #1: loss = [0-9.e+-]* (\* 1 = [0-9.e+-]* loss)$' \
  '^Iteration 0 ([0-9.e+-]* iter/s, [0-9.e+-]*s/1 iters), loss = [0-9.e+-]*$' \
  '^    Train net output #0: loss = [0-9.e+-]* (\* 1 = [0-9.e+-]* loss)$' \
  '^Iteration 0, lr = 0\.01$' \
  '^Iteration 2, lr = 0\.005$' \
  '^Iteration 3, lr = 0\.005$' \
  "^Snapshotting to binary proto file $T/snap/dd_iter_2\.caffemodel\$" \
  "^Snapshotting solver state to binary proto file $T/snap/dd_iter_2\.solverstate\$" \
  "^Snapshotting to binary proto file $T/snap/dd_iter_4\.caffemodel\$" \
  '^Iteration 4, loss = [0-9.e+-]*$' \
  '^Iteration 4, Testing net (#0)$' \
  '^Optimization Done\.$'; do
  grep -q -- "$pat" "$T/text" || bad="$bad [$pat]"
done
[ -z "$bad" ] && ok train_log_lines || fail train_log_lines "missing:$bad"
[ "$(grep -c 'Testing net' "$T/text")" = 3 ] && ok train_tests_every_interval || fail train_tests_every_interval
for f in dd_iter_2.caffemodel dd_iter_2.solverstate dd_iter_4.caffemodel dd_iter_4.solverstate; do
  [ -s "$T/snap/$f" ] || bad="$bad $f"
done
[ -z "$bad" ] && ok train_snapshot_files || fail train_snapshot_files "missing:$bad"
ls "$T/snap" | grep -q tmp && fail no_temp_files_left || ok no_temp_files_left

# the same run again gives the same bytes (random_seed)
mkdir -p "$T/snap2"
solver "$T/def/solver2.prototxt" "$T/snap2/dd" 4
"$M" train --solver="$T/def/solver2.prototxt" >/dev/null 2>&1
cmp -s "$T/snap/dd_iter_4.caffemodel" "$T/snap2/dd_iter_4.caffemodel" && ok train_reproducible ||
  fail train_reproducible

# resume from iteration 2: the same weights at iteration 4, bit for bit
mkdir -p "$T/snap3"
solver "$T/def/solver3.prototxt" "$T/snap3/dd" 4
if "$M" train --solver="$T/def/solver3.prototxt" --snapshot="$T/snap/dd_iter_2.solverstate" >"$T/log3" 2>&1; then
  grep -q "Resuming from $T/snap/dd_iter_2.solverstate" "$T/log3" &&
    ! grep -q "Iteration 1 (" "$T/log3" && grep -q "Iteration 2 (" "$T/log3" &&
    cmp -s "$T/snap/dd_iter_4.caffemodel" "$T/snap3/dd_iter_4.caffemodel" && ok train_resume_bit_identical ||
    fail train_resume_bit_identical "$(grep -c Iteration "$T/log3") iteration lines"
else
  fail train_resume_bit_identical "$(tail -3 "$T/log3")"
fi

# --weights: fine-tune from the iteration-4 weights
"$M" train --solver="$T/def/solver3.prototxt" --weights="$T/snap/dd_iter_4.caffemodel" >"$T/log4" 2>&1 &&
  grep -q "Finetuning from $T/snap/dd_iter_4.caffemodel" "$T/log4" && grep -q "Copying source layer ip" "$T/log4" &&
  ok train_weights || fail train_weights "$(tail -3 "$T/log4")"

# --- the log against real Caffe's: mini_train with a snapshot every
# iteration (as the golden run), every solver line equal once numbers that
# depend on data and time are masked.
mkdir -p "$T/mt/snapshots"
sed "s|^net: .*|net: \"$G/mini_train/train.prototxt\"|" "$G/mini_train/solver.prototxt" > "$T/mt/solver.prototxt"
echo "snapshot: 1" >> "$T/mt/solver.prototxt"
if (cd "$T/mt" && "$M" train --solver=solver.prototxt --weights="$G/mini_train/init.caffemodel") >"$T/mt/log" 2>&1; then
  mask() { sed -e 's/([^)]*iters)/(T)/' -e 's/loss = [-0-9.e+]*/loss = N/g' -e 's/(\* 1 = [-0-9.e+]* loss)/(* 1 = N loss)/'; }
  grep -E ' (solver|sgd_solver)\.cpp:' "$G/mini_train/caffe_log.txt" | strip /dev/stdin |
    sed -n '/^Iteration 0 (/,$p' | mask > "$T/mt/caffe"
  strip "$T/mt/log" | sed -n '/^Iteration 0 (/,/mini_iter_6.solverstate/p' | mask > "$T/mt/moka"
  if [ -s "$T/mt/caffe" ] && diff "$T/mt/caffe" "$T/mt/moka" >"$T/mt/diff"; then
    ok train_log_matches_caffe
  else
    fail train_log_matches_caffe "$(head -6 "$T/mt/diff")"
  fi
else
  fail train_log_matches_caffe "$(tail -3 "$T/mt/log")"
fi

# --- signals: SIGINT with --sigint_effect=snapshot writes a snapshot and goes
# on; SIGHUP with --sighup_effect=stop stops (final snapshot, exit 0).
mkdir -p "$T/sig"
solver "$T/def/sig.prototxt" "$T/sig/s" 100000000 "test_interval: 0" "display: 0" "snapshot: 0"
sed -i -e 's/test_iter: 2 test_interval: 2 //' -e 's/display: 1 snapshot: 2 //' "$T/def/sig.prototxt"
timeout 120 "$M" train --solver="$T/def/sig.prototxt" --sigint_effect=snapshot --sighup_effect=stop >"$T/sig/log" 2>&1 &
pid=$!
i=0; while [ $i -lt 200 ] && ! grep -q "Learning Rate Policy" "$T/sig/log" 2>/dev/null; do sleep 0.05; i=$((i+1)); done
sleep 0.2
kill -INT $pid
i=0; while [ $i -lt 200 ] && ! ls "$T/sig" | grep -q 'solverstate$'; do sleep 0.05; i=$((i+1)); done
first=$(ls "$T/sig" | grep 'solverstate$' | head -1)
sleep 0.2
kill -HUP $pid
wait $pid; rc=$?
n=$(ls "$T/sig" | grep -c 'solverstate$')
if [ $rc = 0 ] && [ -n "$first" ] && [ "$n" = 2 ] && grep -q "Optimization stopped early." "$T/sig/log"; then
  ok train_sigint_snapshot_sighup_stop
else
  fail train_sigint_snapshot_sighup_stop "rc $rc, snapshots: $(ls "$T/sig" | tr '\n' ' ')"
fi
# default SIGINT: stop (and the final snapshot)
rm -f "$T/sig"/s_*
timeout 120 "$M" train --solver="$T/def/sig.prototxt" >"$T/sig/log2" 2>&1 &
pid=$!
i=0; while [ $i -lt 200 ] && ! grep -q "Learning Rate Policy" "$T/sig/log2" 2>/dev/null; do sleep 0.05; i=$((i+1)); done
sleep 0.2
kill -INT $pid
wait $pid; rc=$?
n=$(ls "$T/sig" | grep -c 'solverstate$')
[ $rc = 0 ] && [ "$n" = 1 ] && grep -q "Optimization stopped early." "$T/sig/log2" &&
  ok train_sigint_default_stop || fail train_sigint_default_stop "rc $rc, $n snapshots"

# --- moka test
if "$M" test --model="$T/def/net.prototxt" --weights="$T/snap/dd_iter_4.caffemodel" --iterations=3 >"$T/tlog" 2>&1; then
  strip "$T/tlog" > "$T/ttext"
  bad=""
  for pat in '^Running for 3 iterations\.$' '^Batch 0, accuracy = [0-9.e+-]*$' '^Batch 2, loss = [0-9.e+-]*$' \
             '^Loss: [0-9.e+-]*$' '^accuracy = [0-9.e+-]*$' '^loss = [0-9.e+-]* (\* 1 = [0-9.e+-]* loss)$'; do
    grep -q -- "$pat" "$T/ttext" || bad="$bad [$pat]"
  done
  [ "$(grep -c '^Batch ' "$T/ttext")" = 6 ] || bad="$bad [6 batch lines]"
  [ -z "$bad" ] && ok test_cmd_log || fail test_cmd_log "missing:$bad"
else
  fail test_cmd_log "$(tail -3 "$T/tlog")"
fi
expect_error test_needs_weights "Need model weights" $M test --model="$T/def/net.prototxt"

# --- errors
solver "$T/def/gpu.prototxt" "$T/snap/g" 2 "solver_mode: GPU"
sed -i 's/ solver_mode: CPU//' "$T/def/gpu.prototxt"
# Without a usable GPU, solver_mode: GPU is an error (never a silent CPU run).
# Where moka sees a CUDA device, the same solver must train on it instead.
if "$M" device_query 2>/dev/null | grep -q '^  device 0:' &&
   "$M" train --solver="$T/def/gpu.prototxt" >"$T/gpulog" 2>&1; then
  if grep -q 'Using GPUs 0' "$T/gpulog" && grep -q "on CUDA device 0" "$T/gpulog" &&
     grep -q 'Optimization Done' "$T/gpulog"; then
    ok "train_solver_mode_gpu (skipped: a GPU is present)"
  else
    fail train_solver_mode_gpu "trained, but not on CUDA device 0: $(tail -3 "$T/gpulog")"
  fi
else
  expect_error train_solver_mode_gpu "solver_mode: GPU.*solver_mode: CPU" $M train --solver="$T/def/gpu.prototxt"
fi
expect_error train_gpu_all "multi-GPU is not supported yet; use --gpu=0" \
  $M train --solver="$T/def/solver.prototxt" --gpu=all
solver "$T/def/type.prototxt" "$T/snap/t" 2 'type: "Adamm"'
expect_error train_unknown_solver_type "Unknown solver type: 'Adamm'" $M train --solver="$T/def/type.prototxt"
solver "$T/def/nonet.prototxt" "$T/snap/n" 2
sed -i 's/net: "net.prototxt"/net: "missing_net.prototxt"/' "$T/def/nonet.prototxt"
expect_error train_missing_net_file "missing_net.prototxt" $M train --solver="$T/def/nonet.prototxt"
expect_error train_missing_solver_file "nope.prototxt" $M train --solver="$T/def/nope.prototxt"
expect_error train_needs_solver "Need a solver definition" $M train
expect_error train_weights_and_snapshot "not both" \
  $M train --solver="$T/def/solver.prototxt" --weights=a.caffemodel --snapshot=b.solverstate
expect_error train_bad_signal_effect "Invalid signal effect \"halt\"" \
  $M train --solver="$T/def/solver.prototxt" --sigint_effect=halt
solver "$T/def/hdf5.prototxt" "$T/snap/h" 2 "snapshot_format: HDF5"
expect_error train_hdf5_refused "HDF5 is not supported" $M train --solver="$T/def/hdf5.prototxt"
expect_error train_bad_snapshot_prefix "Cannot write to snapshot prefix" \
  sh -c "sed 's|$T/snap/dd|/nonexistent/dir/x|' '$T/def/solver.prototxt' > '$T/def/badpre.prototxt' && exec $M train --solver='$T/def/badpre.prototxt'"
exit 0
