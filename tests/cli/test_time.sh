#!/bin/sh
# CLI tests for `moka time`: Caffe's `caffe time` lines on a small
# DummyData-fed training net, --forward_only on it and on a deploy net with an
# Input layer, and bad flags. Prints "ok NAME" / "FAIL NAME" per check.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
G=${MOKA_SHARED:-../shared}/golden
T=$(mktemp -d /tmp/moka_time.XXXXXX)
trap 'rm -rf "$T"' EXIT

. "$(dirname "$0")/lib.sh"

# has NAME FILE PATTERN...: every (grep basic) pattern occurs in FILE.
has() {
  name=$1 file=$2; shift 2
  for p in "$@"; do
    if ! grep -q -- "$p" "$file"; then fail "$name" "no line matching '$p'"; return; fi
  done
  ok "$name"
}

cat > "$T/small.prototxt" <<'EOF'
name: "small"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
EOF

# --- forward-backward (TRAIN), Caffe's lines
if $M time --model="$T/small.prototxt" --iterations=3 >"$T/out" 2>"$T/log"; then
  ok time_train_runs
  L="$T/log"
  has time_train_caffe_lines "$L" \
    '] Performing Forward$' '] Initial loss: [0-9.e+-]*$' '] Performing Backward$' \
    '] \*\*\* Benchmark begins \*\*\*$' '] Testing for 3 iterations\.$' \
    '] Average time per layer: $' \
    '] Average Forward pass: [0-9.e+-]* ms\.$' '] Average Backward pass: [0-9.e+-]* ms\.$' \
    '] Average Forward-Backward: [0-9.e+-]* ms\.$' '] Total Time: [0-9.e+-]* ms\.$' \
    '] \*\*\* Benchmark ends \*\*\*$'
  n=$(grep -c '] Iteration: [123] forward-backward time: [0-9.e+-]* ms\.$' "$L")
  [ "$n" = 3 ] && ok time_train_iteration_lines || fail time_train_iteration_lines "$n of 3"
  bad=""
  for l in data conv1 bn1 relu1 pool1 fc loss; do
    [ "$(grep -c "] *$l	forward: [0-9.e+-]* ms\.$" "$L")" = 1 ] || bad="$bad $l/forward"
    [ "$(grep -c "] *$l	backward: [0-9.e+-]* ms\.$" "$L")" = 1 ] || bad="$bad $l/backward"
  done
  [ -z "$bad" ] && ok time_train_per_layer_lines || fail time_train_per_layer_lines "missing:$bad"
  has time_train_throughput "$L" \
    '] Average throughput: [0-9.]* img/s (batch size 4, forward-backward, TRAIN phase)$'
  # the loss of 10 classes on random data is near ln(10), and not 0 (the data is not zeros)
  awk '/Initial loss: /{v=$NF; exit} END{exit !(v > 0.5 && v < 10)}' "$L" &&
    ok time_train_initial_loss || fail time_train_initial_loss "$(grep 'Initial loss' "$L")"
  # Caffe's order: the benchmark comes after the warm-up pass
  awk '/Performing Backward/{b=NR} /Benchmark begins/{s=NR} /Benchmark ends/{e=NR}
       END{exit !(b && s > b && e > s)}' "$L" && ok time_train_order || fail time_train_order
else
  fail time_train_runs "$(tail -3 "$T/log")"
fi

# --- --forward_only: TEST phase, no backward
if $M time --model="$T/small.prototxt" --iterations=2 --forward_only >"$T/out" 2>"$T/log2"; then
  L="$T/log2"
  n=$(grep -c '] Iteration: [12] forward time: [0-9.e+-]* ms\.$' "$L")
  nb=$(grep -c 'backward\|Backward' "$L")
  [ "$n" = 2 ] && [ "$nb" = 0 ] && ok time_forward_only ||
    fail time_forward_only "$n iteration lines, $nb backward lines"
  has time_forward_only_lines "$L" '] Average Forward pass: [0-9.e+-]* ms\.$' \
    '] Average throughput: [0-9.]* img/s (batch size 4, forward, TEST phase)$'
else
  fail time_forward_only "$(tail -3 "$T/log2")"
fi

# --- a deploy net (Input layer): filled with noise, batch from the input shape
if $M time --model="$G/mini_resnet/deploy.prototxt" --weights="$G/mini_resnet/weights.caffemodel" \
     --forward_only --iterations=1 >"$T/out" 2>"$T/log3"; then
  has time_deploy_input "$T/log3" \
    "Input blob 'data' (2 3 64 64 (24576)): filled with gaussian noise" \
    '] Average throughput: [0-9.]* img/s (batch size 2, forward, TEST phase)$' \
    '] *prob	forward: [0-9.e+-]* ms\.$'
else
  fail time_deploy_input "$(tail -3 "$T/log3")"
fi

# --- bad flags
expect_error time_no_model "--model is required" $M time
expect_error time_bad_iterations "--iterations must be >= 1, got 0" \
  $M time --model="$T/small.prototxt" --iterations=0
expect_error time_bad_phase "--phase must be TRAIN or TEST, not 'VAL'" \
  $M time --model="$T/small.prototxt" --phase=VAL
exit 0
