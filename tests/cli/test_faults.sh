#!/bin/sh
# Numerical faults in `moka train` (docs/reliability.md, "Numerical faults"):
# a run made to diverge (a huge base_lr), a NaN injected by DummyData, and an
# overflow inside an in-place chain (conv -> Scale -> ReLU on one blob) each
# stop training with one error naming the iteration, the layer and the last
# good snapshot; the snapshots on disk stay finite. debug_info lines (the
# solver's debug_info, or --debug_info) match Caffe's format and values.
# Prints "ok NAME" / "FAIL NAME" per check.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
case "$M" in /*) ;; *) M="$(pwd)/$M" ;; esac
C="$(pwd)/$BUILD/tools/checksnap"
T=$(mktemp -d /tmp/moka_faults.XXXXXX)
trap 'rm -rf "$T"' EXIT

. "$(dirname "$0")/lib.sh"

# net NAME DATA_FILLER LABEL_FILLER SCALE_FILLER: DummyData -> conv -> Scale
# (in place) -> ReLU (in place) -> fc -> softmax loss
net() {
  cat > "$T/$1.prototxt" <<EOF
name: "$1"
layer { name: "d" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } shape { dim: 4 }
    data_filler { $2 } data_filler { $3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
  scale_param { filler { $4 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
EOF
}
solver() { # solver NAME NET LR MAX_ITER [extra lines]
  f=$1 n=$2 lr=$3 max=$4; shift 4
  { echo "net: \"$T/$n.prototxt\""
    echo "base_lr: $lr momentum: 0.9 lr_policy: \"fixed\""
    echo "max_iter: $max display: 0 snapshot: 1 snapshot_prefix: \"$T/snap_$f/s\""
    echo 'random_seed: 5 solver_mode: CPU'
    for l in "$@"; do echo "$l"; done; } > "$T/$f.solver"
  mkdir -p "$T/snap_$f"
}
# expect_fault NAME SOLVER PATTERN...: exit status 1, one error line matching
# every PATTERN, and every snapshot on disk complete with finite weights
expect_fault() {
  name=$1 sv=$2; shift 2
  "$M" train --solver="$T/$sv.solver" >"$T/out" 2>"$T/err"; rc=$?
  err=$(grep '^moka: error:' "$T/err")
  if [ $rc -ne 1 ] || [ "$(echo "$err" | grep -c .)" != 1 ]; then
    fail "$name" "exit status $rc (want 1), errors: $err $(tail -2 "$T/err")"; return; fi
  for pat in "$@"; do
    if ! echo "$err" | grep -q -- "$pat"; then fail "$name" "'$pat' not in: $err"; return; fi
  done
  files=$(ls "$T/snap_$sv" | sed "s|^|$T/snap_$sv/|")
  # shellcheck disable=SC2086
  if [ -n "$files" ] && ! "$C" --finite --net="$T/$(sed -n 's|^net: ".*/\(.*\)\.prototxt"$|\1|p' "$T/$sv.solver").prototxt" $files >"$T/check"; then
    fail "$name" "snapshots: $(grep -v '^ok ' "$T/check" | head -2)"; return; fi
  ok "$name"
  echo "# $name: $err"
}

# 1. divergence: random labels (they cannot be learnt) and base_lr 1e6
net diverge 'type: "uniform" min: -1 max: 1' 'type: "uniform" min: 0 max: 4.99' 'type: "constant" value: 1'
solver diverge diverge 1e6 50
expect_fault diverge_stops diverge \
  'moka: error: iteration [0-9]*: \(the training loss is [-a-z]*, not finite\|a parameter gradient is not finite\)' \
  "the first layer[a-z ,]* is '[a-z]*' ([A-Za-z]*)" \
  "Training stopped before this iteration's update; the last good snapshot is $T/snap_diverge/s_iter_[0-9]*\.solverstate\$"

# 2. a NaN in the input: the data layer is named, at iteration 0
net nan_input 'type: "constant" value: nan' 'type: "constant" value: 1' 'type: "constant" value: 1'
solver nan_input nan_input 0.01 5
expect_fault nan_input_named nan_input \
  'moka: error: iteration 0: ' \
  "the first layer whose output is not finite is 'd' (DummyData): its top blob 'data' holds nan at element 0 of 432" \
  'no snapshot yet$'

# 3. an overflow in the middle of an in-place chain: Scale (x 1e30) is
# named, not the conv that wrote the blob first nor the ReLU after it
net overflow 'type: "constant" value: 1e10' 'type: "constant" value: 1' 'type: "constant" value: 1e30'
solver overflow overflow 0.01 5
expect_fault overflow_in_place_named overflow \
  'moka: error: iteration 0: ' \
  "the first layer whose output is not finite is 'scale' (Scale): its top blob 'conv' holds -*inf at element [0-9]* of 256"

# --- debug_info -------------------------------------------------------------------------
# constant data 0.3, labels 1, conv bias 0.25 (a named ParamSpec for the
# weights: Caffe shows that name in [Forward] and [Update], the index in
# [Backward]); display every 2 iterations of 4
cat > "$T/dbg.prototxt" <<'EOF'
name: "dbg"
layer { name: "d" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 }
    data_filler { type: "constant" value: 0.3 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { name: "cw" } param { }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" }
    bias_filler { type: "constant" value: 0.25 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
EOF
dbg_solver() { # FILE DEBUG_LINE
  { echo "net: \"$T/dbg.prototxt\""
    echo 'base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 4 display: 2'
    echo "snapshot: 0 snapshot_after_train: false random_seed: 1 solver_mode: CPU"
    echo "$2"; } > "$1"
}
num='[0-9][0-9.e+-]*'
check_debug() { # NAME LOG
  name=$1 log=$2
  strip "$log" > "$T/text"
  bad=""
  for pat in \
    "^    \[Forward\] Layer d, top blob data data: 0\.3\$" \
    "^    \[Forward\] Layer d, top blob label data: 1\$" \
    "^    \[Forward\] Layer conv, top blob conv data: $num\$" \
    "^    \[Forward\] Layer conv, param blob cw data: $num\$" \
    "^    \[Forward\] Layer conv, param blob 1 data: 0\.25\$" \
    "^    \[Forward\] Layer relu, top blob conv data: $num\$" \
    "^    \[Forward\] Layer loss, top blob loss data: $num\$" \
    "^    \[Backward\] Layer loss, bottom blob fc diff: $num\$" \
    "^    \[Backward\] Layer fc, bottom blob conv diff: $num\$" \
    "^    \[Backward\] Layer fc, param blob 0 diff: $num\$" \
    "^    \[Backward\] Layer conv, param blob 0 diff: $num\$" \
    "^    \[Backward\] Layer conv, param blob 1 diff: $num\$" \
    "^    \[Backward\] All net params (data, diff): L1 norm = ($num, $num); L2 norm = ($num, $num)\$" \
    "^    \[Update\] Layer conv, param cw data: $num; diff: $num\$" \
    "^    \[Update\] Layer fc, param 1 data: $num; diff: $num\$"; do
    grep -q -- "$pat" "$T/text" || bad="$bad [$pat]"
  done
  # the conv's input needs no gradient: no bottom line for it
  grep -q 'Layer conv, bottom blob' "$T/text" && bad="$bad [conv bottom diff printed]"
  # on display iterations only (0 and 2): 2 x 10 [Forward] lines (tops and params)
  nf=$(grep -c '^    \[Forward\]' "$T/text")
  [ "$nf" = 20 ] || bad="$bad [$nf Forward lines, want 20]"
  nu=$(grep -c '^    \[Update\]' "$T/text")
  [ "$nu" = 8 ] || bad="$bad [$nu Update lines, want 8]"
  if [ -z "$bad" ]; then ok "$name"; else fail "$name" "missing or wrong:$bad"; fi
}
dbg_solver "$T/dbg1.solver" "debug_info: true"
if "$M" train --solver="$T/dbg1.solver" >"$T/dbg1.log" 2>&1; then
  check_debug debug_info_solver "$T/dbg1.log"
else
  fail debug_info_solver "$(tail -2 "$T/dbg1.log")"
fi
dbg_solver "$T/dbg2.solver" ""
if "$M" train --solver="$T/dbg2.solver" --debug_info >"$T/dbg2.log" 2>&1; then
  check_debug debug_info_flag "$T/dbg2.log"
else
  fail debug_info_flag "$(tail -2 "$T/dbg2.log")"
fi
# without debug_info: no such line; with display 0: a warning says why none
"$M" train --solver="$T/dbg2.solver" >"$T/dbg3.log" 2>&1
if grep -q '\[Forward\]\|\[Backward\]\|\[Update\]' "$T/dbg3.log"; then
  fail debug_info_off "debug lines without debug_info"
else
  ok debug_info_off
fi
sed 's/display: 2/display: 0/' "$T/dbg1.solver" > "$T/dbg4.solver"
"$M" train --solver="$T/dbg4.solver" >"$T/dbg4.log" 2>&1
if grep -q 'debug_info is set but display is 0' "$T/dbg4.log" && ! grep -q '\[Forward\]' "$T/dbg4.log"; then
  ok debug_info_display_0
else
  fail debug_info_display_0 "$(grep -i debug "$T/dbg4.log" | head -2)"
fi
