#!/bin/sh
# The demo behind `make demo`: the whole fine-tuning workflow of the README,
# end to end, on a fresh machine with no downloads, in a few minutes on 2 CPU
# cores.
#
#   1. moka generates an image dataset: 6 classes of shapes to pretrain on,
#      and 4 other shapes to fine-tune on (48x48 JPEGs, one folder per class);
#   2. `moka finetune` pretrains Kaiming He's ResNet-50 graph (the deploy
#      prototxt unchanged, at a 32x32 input instead of 224x224, pool5 made
#      global) from random weights on the 6 shapes;
#   3. `moka finetune --weights=<the pretrained caffemodel>` fine-tunes it on
#      the 4 other shapes: the classifier fc6 is renamed fc4 and starts
#      afresh, BatchNorm statistics are frozen (batches of 16), the rest starts
#      from the pretrained weights — exactly what the README's command does
#      with ResNet-50-model.caffemodel on a folder of photos;
#   4. `moka classify` labels newly generated images into a CSV.
# Each step's folder holds ordinary Caffe files (train_val/solver/deploy
# prototxts, labels.txt), train.log and report.html.
set -e
B=${1:-build}
M=$B/moka
D=$B/demo
rm -rf "$D"
mkdir -p "$D"
t0=$(date +%s)

echo "== 1/4 generating the images (moka finetune --demo_data)"
"$M" finetune --demo_data="$D/images"

echo
echo "== 2/4 pretraining ResNet-50 (32x32 input) from random weights on 6 shapes"
# From scratch, BatchNorm learns per-batch statistics; moving_average_fraction
# 0.9 lets the stored ones follow a short run. The 2048 pool5 features of a
# young net are large: the classifier learns at a tenth of the rate.
"$M" finetune --model=data/ResNet-50-deploy.prototxt --input_size=32 \
  --epochs=8 --batch=16 --lr=0.02 --lr_steps=0.5,0.75 --bn_maf=0.9 --classifier_lr_mult=0.1 \
  --out="$D/pretrain" "$D/images/pretrain"

echo
echo "== 3/4 fine-tuning it on 4 other shapes (fc6 -> fc4, the README's workflow)"
# The pretrained model's own mean goes with its weights (as ResNet_mean.binaryproto
# goes with Kaiming He's).
"$M" finetune --model=data/ResNet-50-deploy.prototxt --input_size=32 \
  --weights="$D/pretrain/best.caffemodel" --mean_file="$D/pretrain/mean.binaryproto" \
  --epochs=6 --batch=16 --lr=0.001 --lr_steps=0.67 --classifier_lr_mult=1 --val_fraction=0.2 \
  --out="$D/finetune" "$D/images/finetune"

echo
echo "== 4/4 classifying 40 newly generated images (moka classify --csv)"
"$M" finetune --demo_data="$D/new" --demo_per_class=20 --seed=2 >/dev/null
"$M" classify --model="$D/finetune/deploy.prototxt" --weights="$D/finetune/best.caffemodel" \
  --labels="$D/finetune/labels.txt" --mean_file="$D/pretrain/mean.binaryproto" \
  --resize=37 --squash --mirror --top_k=2 --csv="$D/predictions.csv" "$D/new/finetune"
right=$(awk -F, 'NR > 1 { n++; k = split($1, p, "/"); if (p[k - 1] == $2) r++ } END { print r + 0 "/" n }' "$D/predictions.csv")

t1=$(date +%s)
best=$(awk -F'\t' 'NR > 1 && $10 == 1 { printf "%.1f%% (epoch %d)", 100 * $6, $1 }' "$D/finetune/epochs.tsv")
echo
echo "== moka demo done in $((t1 - t0)) s"
echo "   fine-tuned validation accuracy: $best; chance is 25%"
echo "   new images classified right:    $right (with --mirror; $D/predictions.csv)"
echo "   report:                          $D/finetune/report.html (pretraining: $D/pretrain/report.html)"
echo "   README.md shows the same commands on your own photos with Kaiming He's ResNet-50 weights."
