#!/bin/sh
# Paths from list files stay inside root_folder (docs/reliability.md):
# "../x.jpg" and "/abs/x.jpg" under a root are skipped by convert_imageset
# with the reason, unless MOKA_ALLOW_PATH_ESCAPE=1 says otherwise; paths that
# stay inside ("sub/../ok.jpg") are fine; an empty root uses paths as written.
# (Allowed, root + "/abs" is joined as Caffe joins it, so it is not found.)
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
T=$(mktemp -d /tmp/moka_paths.XXXXXX)
trap 'rm -rf "$T"' EXIT
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/root/sub"
$BUILD/tools/mkimage "$T/root/ok.jpg" 20 16 1
$BUILD/tools/mkimage "$T/outside.jpg" 20 16 2
printf 'sub/../ok.jpg 0\n../outside.jpg 1\n%s/outside.jpg 1\n' "$T" > "$T/list.txt"
$M convert_imageset "$T/root/" "$T/list.txt" "$T/db1" > "$T/log1" 2>&1
if grep -q "path escapes root_folder" "$T/db1.skipped.txt" 2>/dev/null &&
   [ "$(grep -c 'escapes root_folder' "$T/db1.skipped.txt")" = 2 ] &&
   grep -q "converted 1, skipped 2" "$T/log1"; then ok paths_cannot_escape_root
else fail paths_cannot_escape_root "$(cat "$T/log1" "$T/db1.skipped.txt" 2>/dev/null | tail -5)"; fi
MOKA_ALLOW_PATH_ESCAPE=1 $M convert_imageset "$T/root/" "$T/list.txt" "$T/db2" > "$T/log2" 2>&1
grep -q "converted 2, skipped 1" "$T/log2" && ok paths_escape_when_allowed ||
  fail paths_escape_when_allowed "$(tail -3 "$T/log2")"
printf '%s/outside.jpg 1\n' "$T" > "$T/abs.txt"
$M convert_imageset "" "$T/abs.txt" "$T/db3" > "$T/log3" 2>&1
grep -q "converted 1, skipped 0" "$T/log3" && ok absolute_paths_with_empty_root ||
  fail absolute_paths_with_empty_root "$(tail -3 "$T/log3")"
