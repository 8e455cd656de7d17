#!/bin/sh
# tests/fuzz/run.sh SECONDS TARGET... — run each fuzz target for SECONDS
# (called by `make fuzz` / `make fuzz-ci`, tests/fuzz/fuzz.mk). Each run
# starts from the committed seeds (tests/fuzz/corpus/<t>), larger seeds from
# ../shared and what earlier runs kept ($FUZZ_DIR/corpus/<t>). Prints one
# line per target (executions, corpus, peak memory) and stops at the first
# target that finds a crash, leak, timeout or out-of-memory: the input is in
# $FUZZ_DIR/artifacts/<t>/. Copy it to tests/fuzz/regress/<t>/ once fixed.
set -u
secs=$1
shift
FUZZ_DIR=${FUZZ_DIR:-build/fuzz}
FUZZ_SHARED=${FUZZ_SHARED:-../shared}

opts() {
  case $1 in
    prototxt) echo "-max_len=16384 -dict=tests/fuzz/prototxt.dict" ;;
    caffemodel|solverstate) echo "-max_len=65536" ;;
    blobproto|datum|image) echo "-max_len=16384" ;;
    listfile) echo "-max_len=4096" ;;
    flags) echo "-max_len=1024 -dict=tests/fuzz/flags.dict" ;;
  esac
}

shared_seeds() {
  case $1 in
    prototxt) echo "models/ResNet-50-deploy.prototxt golden/mini_train/train.prototxt golden/mini_alexnet/train/train.prototxt" ;;
    caffemodel) echo "golden/mini_train/init.caffemodel golden/mini_alexnet/weights.caffemodel" ;;
    blobproto) echo "models/ResNet_mean.binaryproto golden/lmdb/mean.binaryproto" ;;
    solverstate) echo "golden/mini_train/snapshots/mini_iter_1.solverstate golden/mini_alexnet/train/snapshots/alex_iter_5.solverstate" ;;
    image) echo "golden/lmdb/images/img0.jpg golden/lmdb/images/img1.jpg" ;;
    listfile) echo "golden/lmdb/list.txt" ;;
  esac
}

status=0
for t in "$@"; do
  bin=$FUZZ_DIR/fuzz_$t
  mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/seeds/$t" "$FUZZ_DIR/artifacts/$t"
  for f in $(shared_seeds "$t"); do
    [ -f "$FUZZ_SHARED/$f" ] && cp -f "$FUZZ_SHARED/$f" "$FUZZ_DIR/seeds/$t/"
  done
  log=$FUZZ_DIR/fuzz_$t.log
  # shellcheck disable=SC2046
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    $(opts "$t") -artifact_prefix="$FUZZ_DIR/artifacts/$t/" \
    "$FUZZ_DIR/corpus/$t" "tests/fuzz/corpus/$t" "$FUZZ_DIR/seeds/$t" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/cov \1 ft \2 corpus \3/p')
  if [ $rc -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz_$t: FAILED after ${execs:-?} executions (log $log, input in $FUZZ_DIR/artifacts/$t/)"
    status=1
    break
  fi
  echo "fuzz_$t: ${secs} s, ${execs:-?} executions, $cov, peak RSS ${rss:-?} MB, no crash"
done
exit $status
