#!/usr/bin/env bash
# The one prepared script a lent GPU machine runs (README: "GPU session"). From the repo root:
#
#   bash benchmarks/gpu_session.sh            # on the GPU machine; OUT names the folder that comes back
#   bash benchmarks/gpu_session.sh --dry-run  # here: every step on the CPU at tiny sizes (tests/test_gpu_session.py)
#
# Set-up: a venv over the machine's python3 (its torch included), the wheels carried in gpu_wheels/
# (`make gpu-wheels`), this project without dependencies. Then benchmarks/gpu_session.py runs the steps,
# each under its own time budget; a failing step is recorded and the next one runs. Everything ends within
# TOTAL_S seconds, set-up included. $OUT gets gpu_session.json, gpu_session.md and the last two training
# checkpoints (train_it<N>.*; `python -m training.split_checkpoint join` makes a last.ckpt of one).
set -u
cd "$(dirname "$0")/.." || exit 1
started=$(date +%s.%N)
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1

# ------------------------------------------------------------------ what to train (keep these current)
# The quality run to go on with: its config; its checkpoint, resumed when present; else the weights it starts
# from (TRAIN_INIT_FROM: empty for the config's model.init_from when that file came along, else the shipped
# weights; "none" for none); the `erdn synth` options of its data (the command in the config's header, without
# the output folder); and the GPU recipe, `erdn train --set` overrides of the config.
TRAIN_CONFIG=${TRAIN_CONFIG:-training/configs/trials_quarter/quarter.yaml}
TRAIN_CHECKPOINT=${TRAIN_CHECKPOINT:-training/checkpoints/trials_quarter/quarter/last.ckpt}
TRAIN_INIT_FROM=${TRAIN_INIT_FROM:-none}
SYNTH_ARGS=${SYNTH_ARGS:---recipe v3 --clips 64 --val-clips 8 --test-clips 8 --frames 16 --size 256x256 --seed 2027}
TRAIN_SET=${TRAIN_SET:-batch=16 data.workers=8 threads=4 amp=true val_every=500 log_every=20}
CHECKPOINT_MINUTES=${CHECKPOINT_MINUTES:-0.5}  # a checkpoint to OUT at least every minute
MIN_TRAIN_S=${MIN_TRAIN_S:-150}                # the steps before the training leave it this long
TRAIN_MAX_S=${TRAIN_MAX_S:-0}                  # 0: the training takes all the time left
TOTAL_S=${TOTAL_S:-540}                        # the whole script, set-up included (the run's timeout_s: 560)
PYTHON=${GPU_PYTHON:-python3}                  # the machine's Python, with torch
WORK=${GPU_WORK:-/tmp/erdn-gpu}                # venv, data, run folder, logs (a short path: ipc sockets)

if [ "$dry" = 1 ]; then
  TOTAL_S=${DRY_TOTAL_S:-1500}  # only a bound: a busy 2-core CPU
  OUT=${OUT:-$(mktemp -d /tmp/erdn-gpu-out-XXXXXX)}
  PYTHON=${GPU_PYTHON:-$(command -v python3)}
  WORK=${GPU_WORK:-$(mktemp -d /tmp/erdn-gpu-XXXXXX)}
  TRAIN_CHECKPOINT=${DRY_TRAIN_CHECKPOINT:-}
  TRAIN_INIT_FROM=none  # from scratch: the shipped weights are lite, the dry run trains tiny
  SYNTH_ARGS="--clips 2 --val-clips 1 --test-clips 1 --frames 6 --size 64x64 --subframes 3 --seed 1"
  # trains until stopped, as there: 60 s, a checkpoint every iteration (the deadline and the last-two rule at work)
  TRAIN_SET="model.preset=tiny batch=2 data.crop=32 data.crop_steps=[] data.workers=0 threads=1 iterations=100000 val_every=100000 log_every=1 checkpoint_every=1 data.val_windows=2"
  CHECKPOINT_MINUTES=0.05
  MIN_TRAIN_S=90
  TRAIN_MAX_S=60
fi
if [ -z "${OUT:-}" ]; then
  echo "gpu_session.sh: OUT is not set (the folder whose files come back); for a try here use --dry-run" >&2
  exit 2
fi
deadline=$(python3 -c "print($started + $TOTAL_S - 10)")
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
export XDG_CONFIG_HOME=$WORK/config XDG_CACHE_HOME=$WORK/cache XDG_RUNTIME_DIR=$WORK/xdg
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

# ------------------------------------------------------------------ set-up
venv=$WORK/venv
setup_log=$WORK/setup.log
setup() {
  "$PYTHON" -m venv --system-site-packages --without-pip "$venv" || return 1
  local site
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))') || return 1
  # python3 may itself be a venv (/opt/torch/.venv there, .venv here); a venv made from it sees the base
  # interpreter's packages, not its own: add its site-packages (and their .pth files) explicitly.
  "$PYTHON" -c 'import site; print("\n".join(f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()))' \
    >"$site/_machine_python.pth" || return 1
  "$venv/bin/python" -m pip --version || return 1
  if compgen -G "gpu_wheels/*.whl" >/dev/null; then
    "$venv/bin/python" -m pip install --no-index --no-deps --find-links gpu_wheels gpu_wheels/*.whl || return 1
  elif [ "$dry" = 0 ]; then
    echo "no gpu_wheels/: run 'make gpu-wheels' before the run and carry it (carry: [\"gpu_wheels\"])"
    return 1
  fi
  # vspipe beside the venv's python, where erdn and the tests look, also when vapoursynth is the machine's
  [ -e "$venv/bin/vspipe" ] || ln -s "$("$venv/bin/python" -c 'import os, vapoursynth as v
print(os.path.join(os.path.dirname(v.__file__), "vspipe"))')" "$venv/bin/vspipe" || return 1
  "$venv/bin/python" -m pip install --no-index --no-deps --no-build-isolation -e . || return 1
  "$venv/bin/python" -m vapoursynth config || return 1
}
echo "gpu_session.sh: set-up (python: $PYTHON; log $setup_log)"
if setup >"$setup_log" 2>&1; then setup_status=ok; else setup_status=failed; fi
driver_python=$venv/bin/python
[ -x "$driver_python" ] || driver_python=$PYTHON
setup_seconds=$(python3 -c "import time; print(round(time.time() - $started, 1))")
echo "gpu_session.sh: set-up $setup_status in $setup_seconds s"
[ "$setup_status" = ok ] || tail -n 20 "$setup_log"

# ------------------------------------------------------------------ the steps
args=(--out "$OUT" --work "$WORK" --deadline "$deadline" --started "$started"
      --setup-seconds "$setup_seconds" --setup-status "$setup_status" --setup-log "$setup_log"
      --train-config "$TRAIN_CONFIG" --train-checkpoint "$TRAIN_CHECKPOINT" --train-init-from "$TRAIN_INIT_FROM"
      --synth-args "$SYNTH_ARGS" --train-set "$TRAIN_SET" --checkpoint-minutes "$CHECKPOINT_MINUTES"
      --min-train-s "$MIN_TRAIN_S" --train-max-s "$TRAIN_MAX_S")
[ "$dry" = 1 ] && args+=(--dry-run)
left=$(python3 -c "import time; print(max(1, int($started + $TOTAL_S - time.time())))")
PYTHONUNBUFFERED=1 timeout --kill-after=5 "$left" "$driver_python" benchmarks/gpu_session.py "${args[@]}"
rc=$?
echo "gpu_session.sh: done in $(python3 -c "import time; print(round(time.time() - $started))") s (driver exit $rc); OUT=$OUT"
exit "$rc"
