#!/usr/bin/env bash
# One GPU, one measuring worker, on the real H100 (docs/validation/h100.md):
# a second lem-worker asked to measure the GPU a first one holds must refuse to
# start, naming it; once the first is gone the second starts. Then `lem-coord run`
# on the real GPU starts one local worker (not --local-workers' default 2 on GPU 0).
# Binaries carried in .carry/bin; writes to $OUT.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem-one-gpu
. tests/gpu/fleet.sh
start_fleet
sleep 5
"$B/lem-worker" --coordinator "$A" --data-dir "$W/w1" --name second > "$OUT/second.log" 2>&1 &
P2=$!
sleep 8
if kill -0 $P2 2>/dev/null; then echo "FAIL: the second worker is running"; kill $P2; else wait $P2; echo "second worker exit $?"; fi
tail -2 "$OUT/second.log"
pkill -f "$B/lem-worker --coordinator $A --data-dir $W/w0"; sleep 2
"$B/lem-worker" --coordinator "$A" --data-dir "$W/w1" --name second > "$OUT/second-after.log" 2>&1 &
P3=$!
sleep 8
kill -0 $P3 2>/dev/null && echo "second worker runs once the first is gone"
$B/lem-coord workers --coordinator "$A" | tee "$OUT/workers.txt"
kill $P3; pkill -f "$B/lem-coord"; sleep 1
ls -la /tmp/lem-fleet-gpu-*.lock
rm -rf /tmp/lem-run && timeout 400 "$B/lem-coord" run tests/gpu/h100-dynamic.yaml --data-dir /tmp/lem-run > "$OUT/run.log" 2>&1
echo "lem-coord run exit $?"
grep -E "real GPUs|campaign|done|SIMULATED" "$OUT/run.log" | tail -8
ls /tmp/lem-run
python3 - /tmp/lem-run/campaign-1/results.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(r["experiment_id"], r["state"], r.get("worker"), r.get("slot"), r.get("gpu_indices"), "E=%.1fJ" % (r.get("total_energy_j") or 0), "sim=%s" % r.get("simulated"), r["started_at"], r["ended_at"])
PY
