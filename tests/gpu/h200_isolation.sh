#!/usr/bin/env bash
# Device isolation on real hardware (part 4 of h200_extras.sh on its own): while
# another process holds a CUDA context on the GPU, tests/gpu/h200-isolation.yaml runs
# on a worker with --device-isolation warn (runs measured and flagged gpu_shared, the
# foreign pid named), then refuse (runs held back while the process lives, measured
# once it is gone). Binaries in .carry/bin. Writes to $OUT. Changes no GPU setting.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem
export PYTHONUNBUFFERED=1
. tests/gpu/fleet.sh
WORKER_ARGS="--prefill-window-seconds 0" start_fleet
sleep 2
sed -n '/^echo "== 4. device isolation (/,$p' tests/gpu/h200_extras.sh | tail -n +2 > /tmp/part4.sh
left() { echo 300; }
. /tmp/part4.sh
pkill -f "$B/lem-worker"; pkill -f "$B/lem-coord"
