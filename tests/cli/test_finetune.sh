#!/bin/sh
# CLI tests of `moka finetune` and `moka classify --csv`: the whole workflow
# on tiny generated data (a small net for most checks, ResNet-50 at 32x32 for
# the pretrain -> fine-tune path), resuming, interruption, the report in
# headless Chromium, and the bad inputs of the issue (no images, one class,
# one image in a class, labels that do not match, unreadable files, a full
# disk during conversion and during a snapshot). Prints "ok NAME" / "FAIL NAME".
# KEEP=1 keeps the temporary folder for a look at what the runs wrote.
BUILD=${BUILD:-build}
M=${MOKA:-$BUILD/moka}
case "$M" in /*) ;; *) M="$(pwd)/$M" ;; esac
T=$(mktemp -d /tmp/moka_finetune.XXXXXX)
MNT=""
cleanup() {
  [ -n "$MNT" ] && umount "$MNT" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
[ -n "$KEEP" ] && trap - EXIT
R50=$(pwd)/data/ResNet-50-deploy.prototxt

. "$(dirname "$0")/lib.sh"

# A small deploy net in Kaiming He's style (legacy input header, BatchNorm +
# Scale, a 1000-way classifier fc1000 and a Softmax): fast to train.
cat > "$T/tiny.prototxt" <<'EOF'
name: "tiny"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 32
input_dim: 32
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale_conv1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { use_global_stats: true } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool5" type: "Pooling" bottom: "conv2" top: "pool5" pooling_param { pool: AVE kernel_size: 16 stride: 1 } }
layer { name: "fc1000" type: "InnerProduct" bottom: "pool5" top: "fc1000" inner_product_param { num_output: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc1000" top: "prob" }
EOF

# --- the data: generated shapes (6 pretrain classes x 6 images, 4 fine-tune classes x 5)
if "$M" finetune --demo_data="$T/demo" --demo_per_class=6 --demo_size=40 >"$T/out" 2>&1 &&
   [ "$(ls "$T/demo/pretrain" | wc -l)" = 6 ] && [ -f "$T/demo/finetune/star/0002.jpg" ]; then
  ok finetune_demo_data
else
  fail finetune_demo_data "$(tail -2 "$T/out")"
fi
# fine-tune classes with 5 images each (2 more than --demo_per_class/2), for a 4/1 split
for c in crescent diamond hexagon star; do
  cp "$T/demo/pretrain/circle/0000.jpg" "$T/demo/finetune/$c/0003.jpg"
  cp "$T/demo/pretrain/ring/0001.jpg" "$T/demo/finetune/$c/0004.jpg"
done

# --- 1. the whole workflow, small net from scratch
TINY="--model=$T/tiny.prototxt --epochs=2 --batch=4 --lr=0.01"
"$M" finetune $TINY --out="$T/r1" "$T/demo/pretrain" >"$T/r1.out" 2>"$T/r1.err"; rc=$?
missing=""
for f in train_val.prototxt solver.prototxt deploy.prototxt labels.txt train.txt val.txt \
         best.caffemodel report.html train.log epochs.tsv iterations.tsv confusion.tsv \
         mean.binaryproto loss.png accuracy.png per_class.png confusion.png .done/train; do
  [ -e "$T/r1/$f" ] || missing="$missing $f"
done
if [ $rc -eq 0 ] && [ -z "$missing" ] && grep -q 'Best validation accuracy' "$T/r1.err" &&
   [ "$(grep -c . "$T/r1/epochs.tsv")" = 3 ] && [ "$(sed -n 1p "$T/r1/labels.txt")" = circle ]; then
  ok finetune_runs
else
  fail finetune_runs "rc=$rc missing:$missing $(tail -3 "$T/r1.err")"
fi
# the split: 6 classes x 6 images -> 1 validation image per class
if [ "$(grep -c . "$T/r1/val.txt")" = 6 ] && [ "$(grep -c . "$T/r1/train.txt")" = 30 ] &&
   grep -q "^$T/demo/pretrain/ring/" "$T/r1/val.txt"; then
  ok finetune_split
else
  fail finetune_split "$(wc -l "$T/r1/train.txt" "$T/r1/val.txt")"
fi
# the files: Caffe's train log lines, the classifier renamed, the nets run in `moka test`
if grep -q 'Iteration [0-9]*, Testing net (#0)' "$T/r1/train.log" &&
   grep -q '    Test net output #0: accuracy = ' "$T/r1/train.log" &&
   grep -q 'Snapshotting to binary proto file' "$T/r1/train.log" &&
   grep -q 'name: "fc6"' "$T/r1/train_val.prototxt" && grep -q 'name: "fc6"' "$T/r1/deploy.prototxt" &&
   grep -q '^stepvalue: ' "$T/r1/solver.prototxt" &&
   "$M" test --model="$T/r1/train_val.prototxt" --weights="$T/r1/best.caffemodel" --iterations=2 \
     >"$T/out" 2>&1 && grep -q 'accuracy = ' "$T/out"; then
  ok finetune_caffe_files
else
  fail finetune_caffe_files "$(tail -3 "$T/out")"
fi

# a validation set of its own, and the model's 224x224 mean file (per-channel values at 256x256)
MEAN=${MOKA_SHARED:-../shared}/models/ResNet_mean.binaryproto
[ -f "$MEAN" ] || MEAN=""
"$M" finetune $TINY --epochs=1 --val="$T/demo/pretrain" ${MEAN:+--mean_file="$MEAN"} --out="$T/v" \
  "$T/demo/pretrain" >"$T/out" 2>"$T/err"; rc=$?
if [ $rc -eq 0 ] && [ "$(grep -c . "$T/v/val.txt")" = 36 ] && [ "$(grep -c . "$T/v/train.txt")" = 36 ] &&
   { [ -z "$MEAN" ] || { grep -q 'mean_value: 103.063' "$T/v/train_val.prototxt" &&
                         grep -q -- '--mean_value=103.063,115.903,123.152' "$T/v/report.html"; }; }; then
  ok finetune_val_and_mean_file
else
  fail finetune_val_and_mean_file "rc=$rc $(tail -2 "$T/err")"
fi

# --- 2. rerunning the same command does nothing twice; other settings are refused
"$M" finetune $TINY --out="$T/r1" "$T/demo/pretrain" >"$T/out" 2>"$T/err"; rc=$?
if [ $rc -eq 0 ] && ! grep -q 'converting' "$T/err" && grep -q 'Best validation accuracy' "$T/err" &&
   [ "$(grep -c . "$T/r1/epochs.tsv")" = 3 ]; then
  ok finetune_rerun_done
else
  fail finetune_rerun_done "rc=$rc $(tail -3 "$T/err")"
fi
expect_error finetune_settings_changed "other settings: epochs is '3' now, '2' there" \
  "$M" finetune --model="$T/tiny.prototxt" --epochs=3 --batch=4 --lr=0.01 --out="$T/r1" "$T/demo/pretrain"

# --- 3. classify: CSV over a folder, a list and an unreadable file; mirror TTA
printf 'not an image' > "$T/bad.jpg"
printf '%s\n%s 0\n' "$T/demo/finetune/star/0000.jpg" "$T/demo/finetune/hexagon/0001.jpg" > "$T/list.txt"
"$M" classify --model="$T/r1/deploy.prototxt" --weights="$T/r1/best.caffemodel" \
  --labels="$T/r1/labels.txt" --mean_file="$T/r1/mean.binaryproto" --resize=37 --squash \
  --top_k=3 --mirror --csv="$T/p.csv" --list="$T/list.txt" "$T/demo/finetune" "$T/bad.jpg" \
  >"$T/out" 2>"$T/err"; rc=$?
rows=$(($(grep -c . "$T/p.csv") - 1))
if [ $rc -eq 0 ] && [ "$(sed -n 1p "$T/p.csv")" = "file,top1,p1,top2,p2,top3,p3,error" ] &&
   [ "$rows" = 23 ] && grep -q "^$T/bad.jpg,,,,,,,.*" "$T/p.csv" &&
   grep -q "^$T/demo/finetune/crescent/0000.jpg,[a-z]*,0\.[0-9]*,[a-z]*,0\.[0-9]*,[a-z]*,0\.[0-9]*,$" "$T/p.csv" &&
   [ "$(sed -n 2p "$T/p.csv" | cut -d, -f1)" = "$T/demo/finetune/crescent/0000.jpg" ] &&
   [ "$(tail -1 "$T/p.csv" | cut -d, -f1)" = "$T/demo/finetune/hexagon/0001.jpg" ]; then
  ok classify_csv
else
  fail classify_csv "rc=$rc rows=$rows $(head -3 "$T/p.csv") $(tail -2 "$T/err")"
fi
# mirror TTA averages the two predictions: p differs from the plain run for some image
"$M" classify --model="$T/r1/deploy.prototxt" --weights="$T/r1/best.caffemodel" \
  --labels="$T/r1/labels.txt" --mean_file="$T/r1/mean.binaryproto" --resize=37 --squash \
  --top_k=3 --csv="$T/p2.csv" --list="$T/list.txt" "$T/demo/finetune" "$T/bad.jpg" >/dev/null 2>&1
if ! cmp -s "$T/p.csv" "$T/p2.csv" && [ "$(grep -c . "$T/p2.csv")" = 24 ]; then
  ok classify_mirror
else
  fail classify_mirror "the --mirror CSV equals the plain one"
fi

# --- 4. ResNet-50 at 32x32: pretrain from random weights, interrupted and resumed
RES="--model=$R50 --input_size=32 --batch=6 --lr=0.005 --classifier_lr_mult=0.1 --bn_maf=0.9"
# first a run that is never stopped (moved aside: the files name their folder)
"$M" finetune $RES --epochs=3 --out="$T/p" "$T/demo/pretrain" >"$T/out" 2>&1 && mv "$T/p" "$T/p_ref"
"$M" finetune $RES --epochs=3 --out="$T/p" "$T/demo/pretrain" >"$T/p.out" 2>"$T/p.err" &
pid=$!
i=0
while [ $i -lt 600 ] && [ "$(grep -c . "$T/p/epochs.tsv" 2>/dev/null)" != 2 ] && kill -0 $pid 2>/dev/null; do
  sleep 0.1; i=$((i + 1))
done
kill -INT $pid 2>/dev/null
wait $pid; rc=$?
if [ $rc -eq 130 ] && grep -q 'interrupted at iteration' "$T/p.err" &&
   grep -q 'run the same command again' "$T/p.err" && [ ! -e "$T/p/.done/train" ] &&
   ls "$T/p/snapshots/"*.solverstate >/dev/null 2>&1; then
  ok finetune_interrupt
else
  fail finetune_interrupt "rc=$rc $(tail -3 "$T/p.err")"
fi
"$M" finetune $RES --epochs=3 --out="$T/p" "$T/demo/pretrain" >"$T/p.out" 2>"$T/p.err"; rc=$?
if [ $rc -eq 0 ] && grep -q 'resuming from' "$T/p/train.log" && [ -e "$T/p/.done/train" ] &&
   [ "$(grep -c . "$T/p/epochs.tsv")" = 4 ] && [ "$(grep -c . "$T/p/iterations.tsv")" = 16 ] &&
   [ "$(ls "$T/p/snapshots" | grep -c caffemodel)" = 2 ]; then
  ok finetune_resume
else
  fail finetune_resume "rc=$rc $(tail -3 "$T/p.err") $(cat "$T/p/epochs.tsv")"
fi
# the interrupted + resumed run ends with the same weights as the one that never stopped
if [ -f "$T/p_ref/best.caffemodel" ] &&
   cmp -s "$T/p/snapshots/finetune_iter_15.caffemodel" "$T/p_ref/snapshots/finetune_iter_15.caffemodel" &&
   cmp -s "$T/p/best.caffemodel" "$T/p_ref/best.caffemodel" &&
   cmp -s "$T/p/iterations.tsv" "$T/p_ref/iterations.tsv"; then
  ok finetune_resume_exact
else
  fail finetune_resume_exact "the resumed run's weights differ from those of a run that never stopped"
fi
# fine-tune it on the other label set: the classifier fc6 is not copied, fc4 is new
"$M" finetune --model="$R50" --input_size=32 --batch=4 --epochs=1 \
  --weights="$T/p/best.caffemodel" --out="$T/f" "$T/demo/finetune" >"$T/f.out" 2>"$T/f.err"; rc=$?
if [ $rc -eq 0 ] && grep -q 'Ignoring source layer fc6' "$T/f/train.log" &&
   grep -q 'Copying source layer res5c_branch2c' "$T/f/train.log" &&
   grep -q 'name: "fc4"' "$T/f/deploy.prototxt" &&
   grep -q 'use_global_stats: true' "$T/f/train_val.prototxt" &&
   grep -q 'lr_mult: 10' "$T/f/train_val.prototxt"; then
  ok finetune_pretrained
else
  fail finetune_pretrained "rc=$rc $(tail -3 "$T/f.err")"
fi

# --- 5. the report renders in headless Chromium
CH=$(command -v chromium || command -v chromium-browser)
if [ -z "$CH" ] && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }) \
    >"$T/apt.log" 2>&1
  CH=$(command -v chromium)
fi
if [ -z "$CH" ]; then
  fail finetune_report_chromium "chromium is not installed and could not be installed (apt-get install -y chromium, as root)"
else
  HOME="$T" timeout 120 "$CH" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1000,1400 --screenshot="$T/shot.png" "file://$T/r1/report.html" >"$T/ch.out" 2>&1
  HOME="$T" timeout 120 "$CH" --headless --no-sandbox --disable-gpu --dump-dom \
    "file://$T/r1/report.html" >"$T/dom.html" 2>"$T/ch.err"
  stat=$("$BUILD/tools/pngstat" "$T/shot.png" 2>&1)
  heads=0
  for h in 'moka fine-tuning report' '>Loss<' '>Accuracy<' '>Per-class accuracy<' \
           '>Confusion matrix<' '>Top confusions<' '>Time per epoch<' '>Configuration<'; do
    grep -q "$h" "$T/dom.html" && heads=$((heads + 1))
  done
  imgs=$(grep -o '<img src="data:image/png;base64,' "$T/dom.html" | wc -l)
  set -- $stat
  if [ "$1" = 1000 ] && [ "$2" = 1400 ] && [ "${3:-0}" -gt 20 ] && [ $heads = 8 ] && [ "$imgs" = 4 ]; then
    ok finetune_report_chromium
  else
    fail finetune_report_chromium "png: $stat, headings $heads/8, images $imgs/4 $(tail -2 "$T/ch.out")"
  fi
fi

# --- 6. bad input
mkdir -p "$T/empty" "$T/single/cat" "$T/loose" "$T/one/a" "$T/one/b"
cp "$T/demo/pretrain/circle/0000.jpg" "$T/single/cat/"
cp "$T/demo/pretrain/circle/0000.jpg" "$T/loose/x.jpg"
expect_error finetune_no_images "no images found" "$M" finetune $TINY --out="$T/e1" "$T/empty"
expect_error finetune_single_class "only one class ('cat')" "$M" finetune $TINY --out="$T/e2" "$T/single"
expect_error finetune_no_class_folders "no class subfolders" "$M" finetune $TINY --out="$T/e3" "$T/loose"
printf 'circle\nzebra\n' > "$T/labels_bad.txt"
expect_error finetune_labels_mismatch "names class 'zebra'" \
  "$M" finetune $TINY --labels="$T/labels_bad.txt" --out="$T/e4" "$T/demo/pretrain"
printf '%s/demo/pretrain/circle/0000.jpg 0\n%s/demo/pretrain/ring/0000.jpg 3\n' "$T" "$T" > "$T/list_bad.txt"
expect_error finetune_list_labels_gap "no image with label 1" "$M" finetune $TINY --out="$T/e5" "$T/list_bad.txt"
expect_error finetune_no_model "--model is required" "$M" finetune --out="$T/e6" "$T/demo/pretrain"
# a class with one image: a warning, training only; an unreadable file: skipped and reported
cp "$T/demo/pretrain/circle/0000.jpg" "$T/one/a/"
for i in 0 1 2 3; do cp "$T/demo/pretrain/ring/000$i.jpg" "$T/one/b/"; done
printf 'garbage' > "$T/one/b/broken.jpg"
"$M" finetune $TINY --epochs=1 --out="$T/o" "$T/one" >"$T/out" 2>"$T/err"; rc=$?
if [ $rc -eq 0 ] && grep -q "class 'a' has only 1 image" "$T/err" && grep -q 'broken.jpg' "$T/err" &&
   grep -q 'broken.jpg' "$T/o/train_lmdb.skipped.txt" "$T/o/val_lmdb.skipped.txt" 2>/dev/null &&
   grep -q 'broken.jpg' "$T/o/report.html" && grep -q "has only 1 image" "$T/o/report.html"; then
  ok finetune_one_image_and_bad_file
else
  fail finetune_one_image_and_bad_file "rc=$rc $(tail -4 "$T/err")"
fi

# --- 7. a full disk: during the conversion, then during a snapshot (a small tmpfs; root only)
mkdir -p "$T/mnt"
if mount -t tmpfs -o size=2m tmpfs "$T/mnt" 2>/dev/null; then
  MNT="$T/mnt"
  "$M" finetune $TINY --encoded=false --resize=160 --out="$T/mnt/d" "$T/demo/pretrain" >"$T/out" 2>"$T/err"; rc=$?
  left=$(ls -a "$T/mnt/d" | grep -c 'lmdb\.tmp')
  if [ $rc -eq 1 ] && grep -q '^moka: error:.*converting the train' "$T/err" &&
     grep -qi 'space\|full' "$T/err" && [ ! -e "$T/mnt/d/train_lmdb" ] && [ "$left" = 0 ] &&
     [ ! -e "$T/mnt/d/.done/train_lmdb" ]; then
    ok finetune_disk_full_conversion
  else
    fail finetune_disk_full_conversion "rc=$rc left=$left $(grep error "$T/err")"
  fi
  umount "$T/mnt"; MNT=""
  if mount -t tmpfs -o size=40m tmpfs "$T/mnt" 2>/dev/null; then
    MNT="$T/mnt"
    "$M" finetune $RES --epochs=1 --out="$T/mnt/s" "$T/demo/pretrain" >"$T/out" 2>"$T/err"; rc=$?
    tmps=$(ls -a "$T/mnt/s/snapshots" | grep -c '\.tmp')
    if [ $rc -eq 1 ] && grep -q '^moka: error:.*snapshot' "$T/err" && grep -q 'rerun the same command' "$T/err" &&
       [ ! -e "$T/mnt/s/.done/train" ] && [ "$tmps" = 0 ] && [ ! -e "$T/mnt/s/best.caffemodel" ] &&
       ! ls "$T/mnt/s/snapshots/"*.solverstate >/dev/null 2>&1; then
      ok finetune_disk_full_snapshot
    else
      fail finetune_disk_full_snapshot "rc=$rc tmps=$tmps $(grep error "$T/err")"
    fi
    umount "$T/mnt"; MNT=""
  fi
else
  echo "skip finetune_disk_full: cannot mount a tmpfs here (needs root)"
fi

# --- 8. --help comes from the flag table
if "$M" finetune --help 2>&1 | grep -q -- '--val_fraction=' && "$M" classify --help 2>&1 | grep -q -- '--csv='; then
  ok finetune_help
else
  fail finetune_help
fi
