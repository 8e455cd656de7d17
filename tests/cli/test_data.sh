#!/bin/sh
# CLI tests of the data tools: moka convert_imageset (summary line, the
# DB.skipped.txt report, malformed list lines named by line number, an
# existing database refused, --fast_resize, --check_decodable), moka
# compute_image_mean on the result, and moka classify --fast_resize.
# Prints "ok NAME" / "FAIL NAME" per check.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
S=${MOKA_SHARED:-../shared}
G=$S/golden
T=$(mktemp -d /tmp/moka_cli_data.XXXXXX)
trap 'rm -rf "$T"' EXIT

. "$(dirname "$0")/lib.sh"

I=tests/data/images
mkdir -p "$T/img"
cp "$I/colour.jpg" "$I/grey.jpg" "$I/truncated.jpg" "$I/gif_named.jpg" "$T/img/"
cp "$I/colour.jpg" "$T/img/with space.jpg"
: > "$T/img/zero.jpg"
printf 'colour.jpg 0\ngif_named.jpg 1\nwith space.jpg 2\nzero.jpg 3\nno_label.jpg\ngrey.jpg x\ntruncated.jpg 4\ngrey.jpg 5\n' > "$T/list.txt"

# --- convert: exit 0, one line per skipped file, a summary, the report
if $M convert_imageset --resize_height=8 --resize_width=8 "$T/img/" "$T/list.txt" "$T/db" 2>"$T/err"; then
  n_skip=$(grep -c 'skipping ' "$T/err")
  if [ "$n_skip" = 4 ] &&
     grep -q "skipping $T/img/gif_named.jpg: GIF image" "$T/err" &&
     grep -q "skipping $T/img/zero.jpg: empty file" "$T/err" &&
     grep -q "skipping line 5 of $T/list.txt: malformed: missing label" "$T/err" &&
     grep -q "skipping line 6 of $T/list.txt: malformed: the label is not an integer" "$T/err" &&
     grep -q "converted 4, skipped 4, 1 with warnings (see $T/db.skipped.txt)" "$T/err"; then
    ok convert_summary
  else fail convert_summary "$(cat "$T/err")"; fi
  if [ "$(wc -l < "$T/db.skipped.txt")" = 5 ] &&
     grep -q "^$T/img/truncated.jpg	warning: JPEG: Premature end of JPEG file\$" "$T/db.skipped.txt" &&
     grep -q "^$T/list.txt:5	malformed list line: missing label" "$T/db.skipped.txt" &&
     [ -f "$T/db/data.mdb" ] && ! ls -d "$T"/db.tmp-* >/dev/null 2>&1; then
    ok convert_report
  else fail convert_report "$(cat "$T/db.skipped.txt")"; fi
else fail convert_summary "exit status: $(cat "$T/err")"; fi

# --- an existing database: one clear error, exit 1, nothing touched
$M convert_imageset "$T/img/" "$T/list.txt" "$T/db" >/dev/null 2>"$T/err"; rc=$?
if [ $rc = 1 ] && [ "$(grep -c '^moka: error:' "$T/err")" = 1 ] &&
   grep -q "^moka: error: .*'$T/db' already exists" "$T/err" && [ -f "$T/db/data.mdb" ]; then
  ok convert_existing_db
else fail convert_existing_db "exit $rc: $(cat "$T/err")"; fi

# --- compute_image_mean on it
if $M compute_image_mean "$T/db" "$T/mean.binaryproto" 2>"$T/err" && [ -s "$T/mean.binaryproto" ] &&
   grep -q 'mean_value channel \[2\]' "$T/err"; then ok compute_image_mean
else fail compute_image_mean "$(cat "$T/err")"; fi

# --- --fast_resize and --check_decodable=false are accepted and still skip bad files
if $M convert_imageset --fast_resize --resize_height=8 --resize_width=8 "$T/img/" "$T/list.txt" "$T/db_fast" 2>"$T/err" &&
   grep -q "converted 4, skipped 4" "$T/err"; then ok convert_fast_resize
else fail convert_fast_resize "$(cat "$T/err")"; fi
if $M convert_imageset --encoded --check_decodable=false "$T/img/" "$T/list.txt" "$T/db_enc" 2>"$T/err" &&
   grep -q "converted 4, skipped 4 (see" "$T/err"; then ok convert_header_check
else fail convert_header_check "$(cat "$T/err")"; fi

# --- a list file that cannot be read: one error naming it
$M convert_imageset "$T/img/" "$T/no_list.txt" "$T/db_none" >/dev/null 2>"$T/err"; rc=$?
if [ $rc = 1 ] && grep -q "^moka: error: .*no_list.txt" "$T/err" && [ ! -e "$T/db_none" ] &&
   ! ls -d "$T"/db_none.tmp-* >/dev/null 2>&1; then ok convert_missing_list
else fail convert_missing_list "exit $rc: $(cat "$T/err")"; fi

# --- classify --fast_resize on the mini net
if $M classify --fast_resize --model="$G/mini_resnet/deploy.prototxt" --weights="$G/mini_resnet/weights.caffemodel" \
     --mean_value=104,117,123 --top_k=2 "$G/lmdb/images/img5.jpg" >"$T/cls" 2>"$T/err" &&
   [ "$(grep -c '^[0-9]\.[0-9]\{4\} - "' "$T/cls")" = 2 ]; then ok classify_fast_resize
else fail classify_fast_resize "$(cat "$T/err" "$T/cls")"; fi
exit 0
