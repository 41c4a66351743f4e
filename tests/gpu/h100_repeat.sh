#!/usr/bin/env bash
# Baseline repeatability and lease-to-measure on the H100 (docs/validation/h100.md):
# lem-coord and lem-worker on the GPU machine (binaries carried in .carry/bin), real
# NVML, the transformers engine; tests/gpu/h100-repeat-fresh.yaml (both baselines
# measured around every run), then tests/gpu/h100-repeat-cached.yaml on the same
# worker (model loaded, baselines cached). Writes to $OUT.
#   h100_repeat.sh start     starts both detached (setsid) and waits up to WAIT_S
#   h100_repeat.sh collect   waits for both campaigns and writes the results
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem-repeat
phase=${1:-start}
. tests/gpu/fleet.sh
if [ "$phase" = start ]; then
  start_fleet
  $B/lem-coord submit tests/gpu/h100-repeat-fresh.yaml --coordinator "$A" | tail -1 > $W/id1
fi
A=$(cat $W/coord/coordinator.addr); ID1=$(cat $W/id1)
deadline=$(( $(date +%s) + ${WAIT_S:-540} ))
wait_done "$ID1" 4 "$deadline" || { echo "campaign $ID1 not finished yet"; exit 0; }
[ -f $W/id2 ] || $B/lem-coord submit tests/gpu/h100-repeat-cached.yaml --coordinator "$A" | tail -1 > $W/id2
ID2=$(cat $W/id2)
wait_done "$ID2" 4 "$deadline" || { echo "campaign $ID2 not finished yet"; exit 0; }
echo "both campaigns: $(( $(date +%s) - $(cat $W/t0) )) s"
for ID in $ID1 $ID2; do
  $B/lem-coord status "$ID" --coordinator "$A" | tee -a "$OUT/status.txt"
  $B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/results-$ID.jsonl"
done
cp $W/w0.log "$OUT/worker.log"; cp $W/w0/slot-0/harness.log "$OUT/harness.log"
python3 - "$OUT"/results-*.jsonl <<'PY'
import json, sys
for path in sys.argv[1:]:
    for l in open(path):
        r = json.loads(l)
        f = lambda k: r.get(k) if r.get(k) is not None else float("nan")
        print(r["experiment_id"], r["state"], "device=%.2fW sd=%.2f settle=%.1fs resident=%.2fW sd=%.2f settle=%.1fs lease->measure=%.3fs gate=%.1fs loaded=%s E=%.1fJ dis=%.2f%% T=%s" % (
            f("baseline_power_w"), f("baseline_std_w"), f("baseline_settle_s"),
            f("resident_baseline_power_w"), f("resident_baseline_std_w"), f("resident_baseline_settle_s"),
            f("lease_to_measure_s"), f("thermal_wait_s"), r.get("model_already_loaded"),
            f("total_energy_j"), f("energy_disagreement_pct"), r.get("max_temperature_c")))
PY
