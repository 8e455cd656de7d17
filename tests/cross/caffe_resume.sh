#!/bin/sh
# Cross-check with the real Caffe 1.0 (shared/tools/caffe-peer; needs root and
# a one-time set-up of a few minutes, so it is not part of `make test`):
#   1. moka trains the golden mini ResNet for 3 iterations and snapshots;
#   2. Caffe (pycaffe) restores moka's .solverstate + .caffemodel and runs
#      iterations 3..5 on the same batches;
#   3. the weights Caffe ends with must equal Caffe's own uninterrupted run
#      (shared/golden/mini_train/snapshots/mini_iter_6.caffemodel), rtol 1e-4.
# So Caffe accepts moka's snapshots and continues them as its own.
set -eu
BUILD=${BUILD:-build}
S=$(cd "${MOKA_SHARED:-../shared}" && pwd)
G=$S/golden/mini_train
PEER=$S/tools/caffe-peer
W=$(mktemp -d /tmp/moka_cross.XXXXXX)
trap 'rm -rf "$W"' EXIT
cp "$G/train.prototxt" "$G/init.caffemodel" "$W/"
cp "$G/snapshots/mini_iter_6.caffemodel" "$W/caffe_iter_6.caffemodel"
mkdir -p "$W/snapshots"
sed 's/^max_iter: .*/max_iter: 6/' "$G/solver.prototxt" > "$W/solver.prototxt"
echo 'weights: "init.caffemodel"' >> "$W/solver.prototxt"
(cd "$W" && "$OLDPWD/$BUILD/tools/train_golden" solver.prototxt "$G/batches" 6 3)
ls "$W/snapshots"
cp -r "$G/batches" "$W/batches"
cat > "$W/resume.py" <<'PY'
import numpy as np, caffe
caffe.set_mode_cpu()
s = caffe.get_solver("solver.prototxt")
s.restore("snapshots/mini_iter_3.solverstate")
assert s.iter == 3, s.iter
for k in range(3, 6):
    s.net.blobs["data"].data[...] = np.fromfile("batches/batch%d_data.f32" % k, np.float32).reshape(2, 3, 64, 64)
    s.net.blobs["label"].data[...] = np.fromfile("batches/batch%d_label.f32" % k, np.float32)
    s.step(1)
    print("caffe iteration", k, "loss", float(s.net.blobs["loss"].data))
s.net.save("caffe_after_moka.caffemodel")
ref = caffe.Net("train.prototxt", "caffe_iter_6.caffemodel", caffe.TEST)
got = caffe.Net("train.prototxt", "caffe_after_moka.caffemodel", caffe.TEST)
worst = 0.0
for name in ref.params:
    for i, (a, b) in enumerate(zip(got.params[name], ref.params[name])):
        d = np.abs(a.data - b.data).max() / max(np.abs(b.data).max(), 1e-30)
        worst = max(worst, d)
print("worst relative difference to Caffe's own 6-iteration run: %.3g" % worst)
assert worst <= 1e-4, worst
print("ok caffe_resumes_moka_snapshot")
PY
cd "$W" && "$PEER" python3 resume.py
