#!/usr/bin/env bash
# The H100 validation run (docs/validation/h100.md): lem-coord and lem-worker on the GPU
# machine, real NVML, the transformers engine, examples/h100-llama-1.1b.yaml.
# Binaries in .carry/bin (built on the developer machine, carried). Writes to $OUT.
#   h100_validation.sh start     starts both detached (setsid) and waits up to ~9 min
#   h100_validation.sh collect   waits for the campaign and writes the results
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem
phase=${1:-start}
. tests/gpu/fleet.sh
if [ "$phase" = start ]; then
  start_fleet
  $B/lem-coord submit examples/h100-llama-1.1b.yaml --coordinator "$A" | tail -1 > $W/id
fi
A=$(cat $W/coord/coordinator.addr); ID=$(cat $W/id)
deadline=$(( $(date +%s) + ${WAIT_S:-540} ))
wait_done "$ID" 9 "$deadline"
$B/lem-coord status "$ID" --coordinator "$A" | tee "$OUT/status.txt"
echo "campaign wall so far: $(( $(date +%s) - $(cat $W/t0) )) s"
$B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/results.jsonl"
$B/lem-coord results "$ID" --format timeseries --coordinator "$A" > "$OUT/timeseries.jsonl"
cp $W/w0.log "$OUT/worker.log"; cp $W/w0/slot-0/harness.log "$OUT/harness.log"
grep -c '"kind":"device"' "$OUT/results.jsonl" >/dev/null 2>&1
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    f = lambda k: r.get(k) if r.get(k) is not None else float("nan")
    print(r["experiment_id"], r["cycle"], r["state"], "win=%.1fs E=%.0fJ adj=%.0f adjres=%.0f base=%.2fW res=%.2fW tok/s=%.1f dis=%.2f%% pre/call=%.3fJ load=%.2f warm=%s gate=%.1fs T=%s" % (
        f("total_inference_time_sec"), f("total_energy_j"), f("energy_adjusted_j"), f("energy_adjusted_resident_j"),
        f("baseline_power_w"), f("resident_baseline_power_w"), f("avg_tokens_per_second"), f("energy_disagreement_pct"),
        f("prefill_energy_per_call_j"), f("model_load_time_sec"), r.get("model_already_loaded"), f("thermal_wait_s"), r.get("max_temperature_c")))
PY
grep -i "baseline\|warn" $W/w0.log | tail -5
