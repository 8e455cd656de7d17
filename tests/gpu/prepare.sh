#!/bin/sh
# tests/gpu/prepare.sh — run on a build machine (the CPU one, with the Debian mirror reachable)
# BEFORE a device run. The GPU machine starts bare, reaches no network and gets only the
# working tree, so this puts what tests/gpu/run.sh needs there into .gpu/ (git-ignored; name
# it in the device call's `carry`):
#   .gpu/debs/    Debian packages of moka's build dependencies (protobuf-c, LMDB, libjpeg-turbo,
#                 libpng, zlib, OpenBLAS + gfortran runtime): run.sh unpacks them into a
#                 private prefix when the machine lacks the headers (it never touches /usr);
#   .gpu/proto/   the protoc-c output for proto/caffe.proto (so protoc-c is not needed there);
#   .gpu/shared/  the golden files the GPU tests compare with (../shared does not travel):
#                 mini_resnet/ and all of mini_train/ (batches, init.caffemodel, train_log.txt,
#                 snapshots/, itersize2/, frozen_bn/: test_cuda_layers, test_cuda_solver and
#                 train_cli.sh use them);
# About 25 MB in all. Idempotent; rerun after changing proto/caffe.proto.
set -eu
cd "$(dirname "$0")/../.."
D=.gpu
SHARED=${MOKA_SHARED:-../shared}
PKGS="libprotobuf-c-dev libprotobuf-c1 liblmdb-dev liblmdb0 libturbojpeg0-dev libturbojpeg0
      libpng-dev libpng16-16 zlib1g-dev libopenblas-dev libopenblas-pthread-dev
      libopenblas0-pthread libopenblas0 libgfortran5 libquadmath0"
mkdir -p "$D/debs" "$D/proto" "$D/shared/golden"

# 1. generated protobuf-c sources
make --no-print-directory BUILD="$D/pb" "$D/pb/proto/caffe.pb-c.c" >/dev/null
cp "$D/pb/proto/caffe.pb-c.c" "$D/pb/proto/caffe.pb-c.h" "$D/proto/"
rm -rf "$D/pb"

# 2. golden files
for g in mini_resnet mini_train; do
  [ -d "$SHARED/golden/$g" ] || { echo "prepare: no $SHARED/golden/$g (set MOKA_SHARED)" >&2; exit 1; }
  rm -rf "$D/shared/golden/$g"
  cp -r "$SHARED/golden/$g" "$D/shared/golden/"
done
cp "$SHARED/golden/README.md" "$D/shared/golden/"

# 3. build dependencies as .deb files (apt-get download: no root needed, nothing installed)
missing=""
for p in $PKGS; do
  ls "$D/debs/${p}_"*.deb >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  (cd "$D/debs" && apt-get download $missing)
fi
echo "prepare: $(du -sh "$D" | cut -f1) in $D; now run on the device, carrying .gpu:"
echo "  make gpu-check      (or: sh tests/gpu/run.sh)"
