#!/bin/sh
# Regenerate the family B montages of docs/tamper-lab.md (section 6) on 2 CPU cores, ~5 min.
# The white-box target is a briefly trained (60 steps, width 8) inpainting model per modality:
# enough to show the perturbation's form, not a measure of its strength.
set -eu
T=${TAMPERSCAN:-tamperscan}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
$T phantoms --modality CT --studies 3 --slices 24 --out "$W/ph" --seed 41 --quiet
$T phantoms --modality MR --studies 3 --slices 24 --out "$W/ph" --seed 42 --quiet
for m in CT MR; do
  $T train --detector inpaint --modality $m --data "$W/ph" --model-path "$W/$m.ckpt" \
    --patch-size 64 --model-dim 8 --batch-size 16 --max-steps 60 --calibration-patches 32 \
    --device cpu --quiet
done
$T tamper --in "$W/ph" --out "$W/tampered" --attack all --family B --count 1 --seed 7 \
  --target-model "$W/CT.ckpt" --target-model "$W/MR.ckpt" --montages "$W/montages"
cp "$W"/montages/*-b*.png "$(dirname "$0")/"
