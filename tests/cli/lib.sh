# tests/cli/lib.sh — helpers sourced by every tests/cli/test_*.sh (not a test
# itself: tests/run.sh runs only test_*.sh). Source it after setting T, the
# script's temporary folder:  . "$(dirname "$0")/lib.sh"

# ok NAME / fail NAME [WHY]: one result line, as tests/run.sh counts them.
ok() { echo "ok $1"; }
fail() { echo "FAIL $1${2:+: $2}"; }

# expect_error NAME PATTERN CMD...: exit status 1 (not a crash), and stderr
# has exactly one "moka: error:" line matching PATTERN. Uses $T/out, $T/err.
expect_error() {
  name=$1 pat=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; rc=$?
  n=$(grep -c '^moka: error:' "$T/err")
  if [ $rc -ne 1 ]; then fail "$name" "exit status $rc (want 1): $(tail -2 "$T/err")"; return; fi
  if [ "$n" != 1 ]; then fail "$name" "$n error lines: $(tail -3 "$T/err")"; return; fi
  if ! grep '^moka: error:' "$T/err" | grep -q -- "$pat"; then
    fail "$name" "message does not match '$pat': $(grep '^moka: error:' "$T/err")"; return; fi
  ok "$name"
}

# strip FILE: the log lines of FILE without their glog prefix
# ("I1128 03:26:26.427273 19818 solver.cpp:239] ").
strip() { sed -n 's/^[IWE][0-9]\{4\} [0-9:.]* *[0-9]* [^ ]*] //p' "$1"; }
