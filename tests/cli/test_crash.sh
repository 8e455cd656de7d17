#!/bin/sh
# Crash safety of `moka train` (docs/reliability.md, "Crash safety"):
#  - SIGKILL at random moments, 30 trials: a small net (an iteration is a few
#    ms) whose 1 MiB InnerProduct weights make each snapshot ~2 MiB, so that
#    most kills land while a snapshot is being written (the run spends most
#    of its time in fsync). Each trial resumes from the newest snapshot the
#    previous ones left (a run killed again and again), then: every
#    *.caffemodel / *.solverstate on disk parses completely and matches the
#    net (tests/tools/checksnap), the newest solverstate resumes for 2 more
#    iterations, `moka finetune`'s resume logic (ft_find_snapshot) picks that
#    same newest complete snapshot and never a PATH.tmp.<pid> file, and the
#    temporary files of killed runs are removed by the next successful
#    snapshot. 20 trials snapshot every iteration, 10 every 3.
#  - a full disk (a small tmpfs) while snapshotting: the write fails, training
#    stops with a message naming the file and saying the previous snapshot is
#    intact, no temporary file is left, and the previous snapshot loads.
# Prints "ok NAME" / "FAIL NAME" per check and a summary line. The random
# delays come from MOKA_CRASH_SEED (default: the process id; printed).
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
case "$M" in /*) ;; *) M="$(pwd)/$M" ;; esac
C="$(pwd)/$BUILD/tools/checksnap"
T=$(mktemp -d /tmp/moka_crash.XXXXXX)
MOUNTED=""
cleanup() {
  [ -n "$MOUNTED" ] && umount "$MOUNTED" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"

if [ ! -x "$C" ]; then fail checksnap_built "$C is missing (make $BUILD/tools/checksnap)"; exit 1; fi

# conv -> BatchNorm -> Scale -> ReLU -> fc1 (2048 x 128 weights: 1 MiB) -> ReLU -> fc2 -> loss
cat > "$T/net.prototxt" <<'EOF'
name: "crash"
layer { name: "d" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 16 dim: 16 } shape { dim: 4 }
    data_filler { type: "uniform" min: -1 max: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv" top: "fc1"
  inner_product_param { num_output: 128 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
EOF
solver() { # solver FILE PREFIX SNAPSHOT MAX_ITER
  { echo "net: \"$T/net.prototxt\""
    echo 'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"'
    echo "max_iter: $4 display: 0 snapshot: $3 snapshot_prefix: \"$2\""
    echo 'random_seed: 1 solver_mode: CPU'; } > "$1"
}
iter_of() { sed -n 's/.*_iter_\([0-9]*\)\.solverstate$/\1/p'; }
# the newest PREFIX_iter_N.solverstate that has its .caffemodel ("" if none)
newest_state() {
  for s in $(ls "$1" | grep '^c_iter_[0-9]*\.solverstate$' | iter_of | sort -n -r); do
    if [ -f "$1/c_iter_$s.caffemodel" ]; then echo "$1/c_iter_$s.solverstate"; return; fi
  done
}

SEED=${MOKA_CRASH_SEED:-$$}
echo "# crash: random seed $SEED (MOKA_CRASH_SEED=$SEED to repeat)"
trials=0 in_write=0 between=0 resumed_ok=0 bad_files=0 bad_resume=0 picked_bad=0
stale_seen=0 stale_left=0 early_exit=0 snapshots_seen=0

# run_trials VARIANT SNAPSHOT_EVERY N
run_trials() {
  v=$1 every=$2 n=$3
  D="$T/$v"; mkdir -p "$D" "$T/verify"
  solver "$D/solver.prototxt" "$D/c" "$every" 100000
  delays=$(awk -v s="$SEED$every" -v n="$n" 'BEGIN { srand(s); for (i = 0; i < n; i++) printf "%.3f\n", 0.01 + rand() * 0.30 }')
  for delay in $delays; do
    trials=$((trials + 1))
    before=$(newest_state "$D")
    stale_before=$(ls "$D" | grep '\.tmp\.[0-9]*$')
    if [ -n "$before" ]; then
      "$M" train --solver="$D/solver.prototxt" --snapshot="$before" >"$D/log" 2>&1 &
    else
      "$M" train --solver="$D/solver.prototxt" >"$D/log" 2>&1 &
    fi
    pid=$!
    sleep "$delay"
    kill -9 "$pid" 2>/dev/null
    { wait "$pid"; } 2>/dev/null; rc=$?
    if [ "$rc" != 137 ]; then
      early_exit=$((early_exit + 1))
      fail "crash_${v}_killed" "trial $trials: moka train exited with $rc before the kill: $(tail -2 "$D/log")"
    fi
    # where the kill landed
    if ls "$D" | grep -q "\.tmp\.$pid\$"; then
      in_write=$((in_write + 1))
    else
      top_model=$(ls "$D" | sed -n 's/^c_iter_\([0-9]*\)\.caffemodel$/\1/p' | sort -n | tail -1)
      top_state=$(ls "$D" | grep '^c_iter_[0-9]*\.solverstate$' | iter_of | sort -n | tail -1)
      [ -n "$top_model" ] && [ "$top_model" != "$top_state" ] && between=$((between + 1))
    fi
    # every complete-named file parses and matches the net
    files=$(ls "$D" | grep -E '^c_iter_[0-9]+\.(caffemodel|solverstate)$' | sed "s|^|$D/|")
    if [ -n "$files" ]; then
      snapshots_seen=$((snapshots_seen + $(echo "$files" | wc -l)))
      # shellcheck disable=SC2086
      if ! "$C" --net="$T/net.prototxt" $files >"$T/check" 2>&1; then
        bad_files=$((bad_files + 1))
        fail "crash_${v}_files_parse" "trial $trials (killed after ${delay}s): $(grep -v '^ok ' "$T/check" | head -3)"
      fi
    fi
    newest=$(newest_state "$D")
    # moka finetune's choice: the same file, never a temporary one
    picked=$("$C" --newest="$D/c")
    want=${newest:-none}
    if [ "$picked" != "$want" ]; then
      picked_bad=$((picked_bad + 1))
      fail "crash_${v}_newest_pick" "trial $trials: ft_find_snapshot picked '$picked', want '$want'"
    fi
    # the temporary files of earlier (dead) runs are gone once this run has
    # written a snapshot of its own and gone on to the next one (the clean-up
    # follows each snapshot: a kill can land between the two)
    first=$(( $(echo "$before" | iter_of) + every ))
    top_model=$(ls "$D" | sed -n 's/^c_iter_\([0-9]*\)\.caffemodel$/\1/p' | sort -n | tail -1)
    if [ -n "$top_model" ] && [ "$top_model" -gt "$first" ]; then
      for f in $stale_before; do
        stale_seen=$((stale_seen + 1))
        if [ -e "$D/$f" ]; then
          stale_left=$((stale_left + 1))
          fail "crash_${v}_stale_removed" "trial $trials: $f is still there after a new snapshot"
        fi
      done
    fi
    # the newest snapshot resumes for 2 more iterations
    if [ -n "$newest" ]; then
      it=$(echo "$newest" | iter_of)
      rm -rf "$T/verify"; mkdir -p "$T/verify"
      solver "$T/verify/solver.prototxt" "$T/verify/r" 0 $((it + 2))
      if "$M" train --solver="$T/verify/solver.prototxt" --snapshot="$newest" >"$T/verify/log" 2>&1 &&
         [ -f "$T/verify/r_iter_$((it + 2)).solverstate" ]; then
        resumed_ok=$((resumed_ok + 1))
      else
        bad_resume=$((bad_resume + 1))
        fail "crash_${v}_resume" "trial $trials: resuming $newest: $(grep -v '^I' "$T/verify/log" | tail -2)"
      fi
    fi
    # keep the folder small: the two newest snapshots stay (the temporary
    # files too: the next trial must remove them)
    for s in $(ls "$D" | grep '^c_iter_[0-9]*\.solverstate$' | iter_of | sort -n -r | tail -n +3); do
      rm -f "$D/c_iter_$s.solverstate" "$D/c_iter_$s.caffemodel"
    done
  done
}

# Controls: the checks above can fail. A truncated snapshot fails the
# checker; a newer PATH.tmp.<pid> (with its model) is not taken for a snapshot.
X="$T/control"; mkdir -p "$X"
solver "$X/solver.prototxt" "$X/c" 1 2
"$M" train --solver="$X/solver.prototxt" >"$X/log" 2>&1
head -c 600000 "$X/c_iter_2.caffemodel" > "$X/c_iter_7.caffemodel"
cp "$X/c_iter_2.solverstate" "$X/c_iter_7.solverstate.tmp.1"
if "$C" --net="$T/net.prototxt" "$X/c_iter_7.caffemodel" >/dev/null 2>&1; then
  fail crash_control_truncated "checksnap accepted a truncated caffemodel"
elif [ "$("$C" --newest="$X/c")" != "$X/c_iter_2.solverstate" ]; then
  fail crash_control_tmp_ignored "ft_find_snapshot picked $("$C" --newest="$X/c")"
else
  ok crash_controls
fi

t0=$(date +%s)
run_trials every1 1 20
run_trials every3 3 10
[ "$early_exit" = 0 ] && ok crash_all_killed
[ "$bad_files" = 0 ] && ok crash_every_snapshot_parses
[ "$picked_bad" = 0 ] && ok crash_resume_picks_newest_complete
[ "$bad_resume" = 0 ] && [ "$resumed_ok" -gt 0 ] && ok crash_newest_resumes
[ "$resumed_ok" = 0 ] && fail crash_newest_resumes "no trial left a snapshot to resume"
[ "$stale_left" = 0 ] && ok crash_stale_temps_removed
echo "# crash: $trials SIGKILL trials in $(( $(date +%s) - t0 )) s: $in_write landed during a snapshot write (a .tmp.<pid> file was left), $between between a .caffemodel and its .solverstate, $((trials - in_write - between)) elsewhere; $snapshots_seen snapshot files checked, all complete; $resumed_ok resumes of the newest snapshot; $stale_seen temporary files of killed runs checked, $((stale_seen - stale_left)) removed by the next snapshot"
[ "$in_write" -gt 0 ] || echo "# crash: warning: no kill landed during a write this time (random delays; seed $SEED)"

# --- a full disk while snapshotting ------------------------------------------------------
# A tmpfs sized so that the first snapshot fits and the second does not:
# 1.25 snapshots (the second's .caffemodel fails) and 1.75 snapshots (its
# .caffemodel fits, its .solverstate fails).
pair=$(( $(stat -c %s "$T/verify/r_iter_"*.caffemodel 2>/dev/null | head -1) + 0 ))
[ "$pair" -gt 0 ] || pair=1060000
pair=$((pair * 2))
full_disk() { # NAME FRACTION_OF_A_PAIR_IN_QUARTERS FAILING_FILE
  name=$1 quarters=$2 failing=$3
  F="$T/full_$quarters"; mkdir -p "$F"
  kb=$((pair * quarters / 4 / 1024))
  if ! mount -t tmpfs -o size=${kb}k tmpfs "$F" 2>"$T/mount_err"; then
    ok "$name (skipped: cannot mount a tmpfs: $(head -1 "$T/mount_err"))"
    return
  fi
  MOUNTED="$F"
  solver "$T/full_solver.prototxt" "$F/c" 1 10
  "$M" train --solver="$T/full_solver.prototxt" >"$T/full_log" 2>&1; rc=$?
  err=$(grep '^moka: error:' "$T/full_log")
  if [ "$rc" != 1 ] || [ "$(echo "$err" | grep -c .)" != 1 ]; then
    fail "$name" "exit status $rc, errors: $err $(tail -2 "$T/full_log")"
  elif ! echo "$err" | grep -q "writing snapshot file $F/c_iter_2\.$failing failed" ||
       ! echo "$err" | grep -q "the previous snapshot $F/c_iter_1\.solverstate is intact" ||
       ! echo "$err" | grep -q "No space left on device"; then
    fail "$name" "message: $err"
  elif ls "$F" | grep -q '\.tmp\.'; then
    fail "$name" "a temporary file was left: $(ls "$F")"
  elif ! "$C" --net="$T/net.prototxt" "$F/c_iter_1.caffemodel" "$F/c_iter_1.solverstate" >"$T/check"; then
    fail "$name" "the previous snapshot does not load: $(cat "$T/check")"
  else
    rm -rf "$T/verify"; mkdir -p "$T/verify"
    solver "$T/verify/solver.prototxt" "$T/verify/r" 0 3
    if "$M" train --solver="$T/verify/solver.prototxt" --snapshot="$F/c_iter_1.solverstate" >"$T/verify/log" 2>&1 &&
       [ -f "$T/verify/r_iter_3.solverstate" ]; then
      ok "$name"
      echo "# $name: tmpfs of ${kb} KiB: $err"
    else
      fail "$name" "resuming the previous snapshot: $(tail -2 "$T/verify/log")"
    fi
  fi
  umount "$F"
  MOUNTED=""
}
full_disk full_disk_caffemodel 5 caffemodel
full_disk full_disk_solverstate 7 solverstate
