#!/bin/sh
# Full-size ResNet-50/101/152 checked against an independent implementation:
# OpenCV's DNN module (Debian python3-opencv) reads the same prototxt and the
# same caffemodel (random MSRA weights written by `moka import`) and runs the
# same input. Compared: blobs that are not written in place (OpenCV fuses
# BatchNorm/Scale/ReLU into the convolutions, so in-place blobs differ there):
# pool1, pool5, the classifier and prob; max relative error <= 1e-4.
# Installs python3-opencv when missing (as root), as CI runs it.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
S=${MOKA_SHARED:-../shared}
PY=/usr/bin/python3
if ! $PY -c "import cv2, numpy" 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-opencv python3-numpy) >/dev/null 2>&1
  fi
  if ! $PY -c "import cv2, numpy" 2>/dev/null; then
    echo "FAIL opencv_available: python3-opencv is not installed and could not be installed (apt-get install python3-opencv)"
    exit 1
  fi
fi
T=$(mktemp -d /tmp/moka_cv.XXXXXX)
trap 'rm -rf "$T"' EXIT
for depth in 50 101 152; do
  P=$S/models/ResNet-$depth-deploy.prototxt
  if ! $M import --model="$P" --fill=msra --seed=$depth --out="$T/r.caffemodel" 2>"$T/err"; then
    echo "FAIL opencv_resnet$depth: import: $(cat "$T/err")"; continue; fi
  $PY -c "
import numpy as np
np.random.seed($depth)
(np.random.randn(1,3,224,224)*50).astype(np.float32).tofile('$T/in.bin')"
  echo "data 1,3,224,224 $T/in.bin float32" > "$T/in.txt"
  if ! $M forward --model="$P" --weights="$T/r.caffemodel" --input="$T/in.txt" --out="$T/fwd" \
       --blobs=pool1,pool5,fc1000,prob 2>"$T/err"; then
    echo "FAIL opencv_resnet$depth: forward: $(cat "$T/err")"; continue; fi
  if $PY - "$P" "$T" <<'PYEOF' 2>"$T/err"; then echo "ok opencv_resnet$depth"; else echo "FAIL opencv_resnet$depth: $(cat "$T/err")"; fi
import sys, numpy as np, cv2
proto, t = sys.argv[1], sys.argv[2]
net = cv2.dnn.readNetFromCaffe(proto, t + "/r.caffemodel")
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
x = np.fromfile(t + "/in.bin", dtype=np.float32).reshape(1, 3, 224, 224)
net.setInput(x)
names = ["pool1", "pool5", "fc1000", "prob"]
outs = net.forward(names)
worst = 0.0
for name, ref in zip(names, outs):
    got = np.fromfile(t + "/fwd/" + name + ".f32", dtype=np.float32).reshape(ref.shape)
    err = float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))
    worst = max(worst, err)
    print("  %-7s shape %-18s max|ref| %.4g  max rel err %.2e" % (name, ref.shape, np.max(np.abs(ref)), err), file=sys.stderr)
    if not err <= 1e-4:
        sys.exit("%s: relative error %.3g > 1e-4" % (name, err))
PYEOF
  sed 's/^/   /' "$T/err" >&2
done
