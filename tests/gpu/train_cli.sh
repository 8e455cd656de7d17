#!/bin/sh
# tests/gpu/train_cli.sh MOKA SHARED WORKDIR — `moka train` on the GPU (run by tests/gpu/run.sh):
# the golden mini_train solver (its Input layers unfed, as in tests/cli/test_train.sh) trained
# (a) with --gpu=0 and (b) with `solver_mode: GPU device_id: 0` and no --gpu. Both must say
# they use GPU 0 and run the SGD update on the device, finish, write mini_iter_6, and give the
# same bytes. Exit status 0 when all of that holds.
set -u
M=$1 G=$2/golden/mini_train D=$3/train_cli
case "$M" in /*) ;; *) M="$(pwd)/$M" ;; esac
rm -rf "$D" && mkdir -p "$D/a/snapshots" "$D/b/snapshots" || exit 1
sed "s|^net: .*|net: \"$G/train.prototxt\"|" "$G/solver.prototxt" >"$D/a/solver.prototxt"
sed "s|solver_mode: CPU|solver_mode: GPU device_id: 0|" "$D/a/solver.prototxt" >"$D/b/solver.prototxt"
grep -q 'solver_mode: GPU device_id: 0' "$D/b/solver.prototxt" || { echo "FAIL: no solver_mode line to edit"; exit 1; }
(cd "$D/a" && "$M" train --solver=solver.prototxt --gpu=0 --weights="$G/init.caffemodel") >"$D/a.log" 2>&1
ra=$?
(cd "$D/b" && "$M" train --solver=solver.prototxt --weights="$G/init.caffemodel") >"$D/b.log" 2>&1
rb=$?
bad=0
for r in a b; do
  echo "---- run $r ($( [ $r = a ] && echo '--gpu=0' || echo 'solver_mode: GPU'))"
  cat "$D/$r.log"
  for pat in 'Using GPUs 0' "on CUDA device 0" 'SGD update on CUDA device 0' 'Optimization Done'; do
    grep -q -- "$pat" "$D/$r.log" || { echo "FAIL run $r: no line with '$pat'"; bad=1; }
  done
  [ -s "$D/$r/snapshots/mini_iter_6.caffemodel" ] || { echo "FAIL run $r: no mini_iter_6.caffemodel"; bad=1; }
done
[ $ra = 0 ] && [ $rb = 0 ] || { echo "FAIL: exit status $ra / $rb"; bad=1; }
cmp "$D/a/snapshots/mini_iter_6.caffemodel" "$D/b/snapshots/mini_iter_6.caffemodel" ||
  { echo "FAIL: the two runs' snapshots differ"; bad=1; }
[ $bad = 0 ] && echo "ok moka train on the GPU: --gpu=0 and solver_mode: GPU, identical snapshots"
exit $bad
