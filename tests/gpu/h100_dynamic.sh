#!/usr/bin/env bash
# A dynamic GPU pool on the real H100 (docs/validation/multi-gpu.md): lem-coord and
# `lem-worker --gpu-groups dynamic` on the GPU machine (binaries carried in
# .carry/bin), real NVML, the transformers engine. tests/gpu/h100-dynamic.yaml (4 TP-1
# runs on the one-GPU pool), then tests/gpu/h100-dynamic-tp2.yaml (a TP-2 run, larger
# than the pool: reported blocked, never leased, then cancelled). Writes to $OUT.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem-dynamic
. tests/gpu/fleet.sh
WORKER_ARGS="--gpu-groups dynamic" start_fleet
ID1=$($B/lem-coord submit tests/gpu/h100-dynamic.yaml --coordinator "$A" | tail -1)
deadline=$(( $(date +%s) + ${WAIT_S:-420} ))
wait_done "$ID1" 4 "$deadline" || echo "campaign $ID1 not finished in time"
echo "campaign $ID1: $(( $(date +%s) - $(cat $W/t0) )) s"
ID2=$($B/lem-coord submit tests/gpu/h100-dynamic-tp2.yaml --coordinator "$A" | tail -1)
sleep 5
$B/lem-coord workers --coordinator "$A" | tee "$OUT/workers.txt"
for ID in $ID1 $ID2; do
  $B/lem-coord status "$ID" --coordinator "$A" | tee -a "$OUT/status.txt"
  $B/lem-coord status "$ID" --json --coordinator "$A" > "$OUT/status-$ID.json"
  $B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/results-$ID.jsonl"
done
$B/lem-coord cancel "$ID2" --coordinator "$A" > /dev/null
cp $W/w0.log "$OUT/worker.log"
find $W/w0 -name harness.log -exec cp {} "$OUT/" \; 2>/dev/null
pkill -f "$B/lem-worker" ; pkill -f "$B/lem-coord"
python3 - "$OUT"/results-*.jsonl <<'PY'
import json, sys
for path in sys.argv[1:]:
    for l in open(path):
        r = json.loads(l)
        f = lambda k: r.get(k) if r.get(k) is not None else float("nan")
        print(r["experiment_id"], r["state"], "gpus=%s tp=%s device=%.2fW resident=%.2fW E=%.1fJ gpuE=%s tok/s=%.0f lease->measure=%.3fs loaded=%s sim=%s" % (
            r.get("gpu_indices"), r.get("tp_size"), f("baseline_power_w"), f("resident_baseline_power_w"),
            f("total_energy_j"), r.get("gpu_energy_j"), f("avg_tokens_per_second"), f("lease_to_measure_s"),
            r.get("model_already_loaded"), r.get("simulated")))
PY
