#!/bin/sh
# The demo behind `make demo`: the most complete job moka does end to end
# without downloading anything. It builds Kaiming He's ResNet-50 from
# data/ResNet-50-deploy.prototxt, gives it random (MSRA) weights, saves them
# as a caffemodel, loads that caffemodel back and classifies a generated
# image, printing the top-5 classes and the time taken.
# (Random weights: the classes are meaningless; with the real
# ResNet-50-model.caffemodel the same command labels photos.)
set -e
B=${1:-build}
D=$B/demo
mkdir -p "$D"
echo "== moka demo: ResNet-50 with random weights, saved and reloaded as a caffemodel"
"$B/moka" import --model=data/ResNet-50-deploy.prototxt --fill=msra --seed=1 \
  --out="$D/ResNet-50-random.caffemodel"
"$B/tools/mkimage" "$D/demo.jpg" 320 240 1
echo "== moka classify $D/demo.jpg"
"$B/moka" classify --model=data/ResNet-50-deploy.prototxt \
  --weights="$D/ResNet-50-random.caffemodel" --mean_value=104,117,123 --top_k=5 "$D/demo.jpg"
echo "== done: see README.md for training (moka train) and the tests (make test)"
