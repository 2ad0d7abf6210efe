#!/usr/bin/env bash
# The recipe trials' data (training/configs/trials/lite_f3.yaml): v2 clips, 8 training clips held out as `val`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d runs/synth_v2/train ] || erdn synth runs/synth_v2 --clips 48 --test-clips 8 --frames 16 --size 256x256 \
  --subframes 9 --motion 1.0 --shake 1.0 --sprites 3 --noise 0.01 --seed 2026
mkdir -p runs/trials_v2/train runs/trials_v2/val
for i in $(seq -f "%04g" 0 39); do ln -sfn "../../synth_v2/train/clip_$i" "runs/trials_v2/train/clip_$i"; done
for i in $(seq -f "%04g" 40 47); do ln -sfn "../../synth_v2/train/clip_$i" "runs/trials_v2/val/clip_$i"; done
ln -sfn ../synth_v2/test runs/trials_v2/test
