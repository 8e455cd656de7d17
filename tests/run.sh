#!/bin/sh
# tests/run.sh — runs every test binary given, then the shell/CLI tests, and
# prints one total line "N passed, N failed". Exit status non-zero on failure.
BUILD=${BUILD:-build}
export MOKA=${MOKA:-$BUILD/moka}
passed=0 failed=0 failed_names=""
for t in "$@"; do
  echo "== $t"
  out=$("$t" 2>&1); rc=$?
  echo "$out" | grep -v '^\[ ok \]' | grep -v '^[0-9]* passed, [0-9]* failed$'
  p=$(echo "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' | tail -1)
  f=$(echo "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' | tail -1)
  [ -n "$p" ] || p=0
  [ -n "$f" ] || f=0
  if [ $rc -ne 0 ] && [ "$f" = 0 ]; then f=1; echo "   $t exited with status $rc"; fi
  echo "   $p passed, $f failed"
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" = 0 ] || failed_names="$failed_names $t"
done
for s in tests/cli/test_*.sh; do
  [ -f "$s" ] || continue
  echo "== $s"
  out=$(sh "$s" 2>&1); rc=$?
  echo "$out" | grep -v '^ok '
  p=$(echo "$out" | grep -c '^ok ')
  f=$(echo "$out" | grep -c '^FAIL ')
  if [ $rc -ne 0 ] && [ "$f" = 0 ]; then f=1; echo "   $s exited with status $rc"; fi
  echo "   $p passed, $f failed"
  passed=$((passed + p)); failed=$((failed + f))
  [ "$f" = 0 ] || failed_names="$failed_names $s"
done
[ -z "$failed_names" ] || echo "failed:$failed_names"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
