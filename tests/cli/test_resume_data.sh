#!/bin/sh
# A run fed by a Data layer (random crops and mirrors from an LMDB that wraps
# around) and resumed from its snapshot ends with exactly the weights of an
# uninterrupted run: moka repositions the Data layers and their random
# streams from the iteration number (Caffe would restart at record 0).
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
L=$(cd "${MOKA_SHARED:-../shared}" && pwd)/golden/lmdb
T=$(mktemp -d /tmp/moka_resume.XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$(dirname "$0")/lib.sh"
cat > "$T/net.prototxt" <<N
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { crop_size: 28 mirror: true mean_value: 110 scale: 0.02 }
  data_param { source: "$L/lmdb_raw32" batch_size: 3 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { crop_size: 28 mean_value: 110 scale: 0.02 }
  data_param { source: "$L/lmdb_jpg32" batch_size: 2 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 5 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
N
solver() { # $1 prefix $2 max_iter
  cat <<S
net: "$T/net.prototxt"
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
stepsize: 4
gamma: 0.5
iter_size: 2
max_iter: $2
test_interval: 3
test_iter: 3
display: 1
snapshot: 3
snapshot_prefix: "$T/$1"
random_seed: 11
solver_mode: CPU
S
}
solver full 7 > "$T/full.prototxt"
solver part 7 > "$T/part.prototxt"
if $M train --solver="$T/full.prototxt" > "$T/full.log" 2>&1 &&
   $M train --solver="$T/part.prototxt" > "$T/part1.log" 2>&1 &&
   $M train --solver="$T/part.prototxt" --snapshot="$T/part_iter_3.solverstate" > "$T/part2.log" 2>&1; then
  ok resume_runs
else
  fail resume_runs "$(tail -3 "$T"/*.log)"
fi
grep -q "train net data layer data continues at record 18" "$T/part2.log" && ok resume_seeks_data ||
  fail resume_seeks_data "$(grep -i continues "$T/part2.log")"
if cmp -s "$T/full_iter_7.caffemodel" "$T/part_iter_7.caffemodel"; then ok resume_bit_identical_weights
else fail resume_bit_identical_weights; fi
# the losses and test accuracies after the resume point are the same lines
for f in full.log part2.log; do
  sed -n 's/.*\(Iteration [4-7] .*loss = .*\)/\1/p; s/.*\(Iteration [4-7], lr = .*\)/\1/p; s/.*\(Test net output #[0-9]: .*\)/\1/p' "$T/$f" | sed 's/([0-9.e+-]* iter\/s, [0-9.e+-]*s\/[0-9]* iters), //' > "$T/$f.cut"
done
tail -n +1 "$T/part2.log.cut" > /dev/null
if [ -s "$T/part2.log.cut" ] && tail -n "$(wc -l < "$T/part2.log.cut")" "$T/full.log.cut" | cmp -s - "$T/part2.log.cut"; then
  ok resume_same_log_lines
else
  fail resume_same_log_lines "$(tail -n "$(wc -l < "$T/part2.log.cut")" "$T/full.log.cut" | diff - "$T/part2.log.cut" | head -6)"
fi
