#!/bin/sh
# The seed's fine-tuning recipe, as a Caffe user writes it: take a trained
# net, rename the classifier (fc -> fc100) so that it is not copied but
# initialised by its filler, raise its lr_mult (10/20), and run
#   moka train --solver=solver.prototxt -weights trained.caffemodel
# Checks Caffe's log lines for copied/ignored layers, that training runs,
# and that the snapshot has the new classifier and the copied layers.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
G=$(cd "${MOKA_SHARED:-../shared}" && pwd)/golden/mini_train
T=$(mktemp -d /tmp/moka_recipe.XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$(dirname "$0")/lib.sh"

# DummyData instead of the two Input layers; the classifier renamed.
awk '
  /^layer {/ { buf = $0; inlayer = 1; next }
  inlayer { buf = buf "\n" $0; if ($0 ~ /^}/) { inlayer = 0; print fix(buf) }; next }
  { print }
  function fix(b) {
    if (b ~ /name: "data"/ && b ~ /type: "Input"/)
      return "layer {\n  name: \"data\" type: \"DummyData\" top: \"data\" top: \"label\"\n" \
             "  dummy_data_param {\n    shape { dim: 2 dim: 3 dim: 64 dim: 64 } shape { dim: 2 }\n" \
             "    data_filler { type: \"uniform\" min: -1 max: 1 } data_filler { type: \"constant\" value: 3 }\n  }\n}"
    if (b ~ /name: "label"/ && b ~ /type: "Input"/) return ""
    if (b ~ /name: "fc"/) {
      gsub(/name: "fc"/, "name: \"fc100\"", b)
      sub(/inner_product_param {/, "inner_product_param {\n\t\tweight_filler { type: \"gaussian\" std: 0.01 }\n\t\tbias_filler { type: \"constant\" value: 0 }", b)
    }
    return b
  }' "$G/train.prototxt" > "$T/train_val.prototxt"
cat > "$T/solver.prototxt" <<S
net: "$T/train_val.prototxt"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0001
lr_policy: "multistep"
stepvalue: 1
gamma: 0.1
max_iter: 2
display: 1
random_seed: 7
snapshot_prefix: "$T/ft"
solver_mode: CPU
S
if $M train --solver="$T/solver.prototxt" -weights "$G/init.caffemodel" >"$T/log" 2>&1; then
  ok recipe_trains
else
  fail recipe_trains "$(tail -3 "$T/log")"
fi
grep -q "Ignoring source layer fc$" "$T/log" && ok recipe_ignores_old_classifier || fail recipe_ignores_old_classifier
grep -q "Copying source layer conv1 " "$T/log" && grep -q "Copying source layer res3a_branch2c " "$T/log" &&
  ok recipe_copies_trunk || fail recipe_copies_trunk
grep -q "Iteration 1, lr = 0.001" "$T/log" && ok recipe_lr_drop || fail recipe_lr_drop "$(grep 'lr =' "$T/log")"
grep -q "Optimization Done." "$T/log" && [ -f "$T/ft_iter_2.caffemodel" ] && [ -f "$T/ft_iter_2.solverstate" ] &&
  ok recipe_snapshot || fail recipe_snapshot "$(ls "$T")"
# The snapshot has fc100 (10x64, trained from its filler) and the copied trunk.
echo "data 2,3,64,64 $G/batches/batch0_data.f32 float32" > "$T/in.txt"
sed 's/name: "fc"/name: "fc100"/' "$G/../mini_resnet/deploy.prototxt" > "$T/deploy.prototxt"
if $M forward --model="$T/deploy.prototxt" --weights="$T/ft_iter_2.caffemodel" --input="$T/in.txt" \
     --out="$T/fwd" --blobs=prob >"$T/flog" 2>&1 && grep -q "Copying source layer fc100" "$T/flog"; then
  ok recipe_deploy_loads_snapshot
else
  fail recipe_deploy_loads_snapshot "$(tail -3 "$T/flog")"
fi
