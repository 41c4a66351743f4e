#!/usr/bin/env bash
# The H100 validation run (docs/validation/h100.md): lem-coord and lem-worker on the GPU
# machine, real NVML, the transformers engine, examples/h100-llama-1.1b.yaml.
# Binaries in .carry/bin (built on the developer machine, carried). Writes to $OUT.
set -u
B=.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu,clocks.sm,pstate --format=csv | tee "$OUT/smi.txt"
rm -rf /tmp/lem && mkdir -p /tmp/lem
$B/lem-coord start --listen 127.0.0.1:0 --data-dir /tmp/lem/coord > /tmp/lem/coord.log 2>&1 &
sleep 1
A=$(cat /tmp/lem/coord/coordinator.addr)
$B/lem-worker --coordinator "$A" --data-dir /tmp/lem/w0 --name h100 --python python3 > /tmp/lem/w0.log 2>&1 &
WP=$!
T0=$(date +%s)
ID=$($B/lem-coord submit examples/h100-llama-1.1b.yaml --coordinator "$A" | tail -1)
for i in $(seq 1 500); do
  D=$($B/lem-coord status "$ID" --json --coordinator "$A" | python3 -c "import sys,json; s=json.load(sys.stdin); print(s['done']+s['failed'])")
  [ "$D" = "9" ] && break; sleep 1
done
echo "campaign wall: $(( $(date +%s) - T0 )) s"
$B/lem-coord status "$ID" --coordinator "$A" | tee "$OUT/status.txt"
$B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/results.jsonl"
# Full records (all fields) straight from the manifest via the runs RPC is what results
# exports; keep the worker log and harness log too.
cp /tmp/lem/w0.log "$OUT/worker.log"; cp /tmp/lem/w0/slot-0/harness.log "$OUT/harness.log"
# Worker CPU while idle between campaigns: sampler at 20 Hz + a lease long-poll.
C0=$(awk '{print $14+$15}' /proc/$WP/stat); sleep 20; C1=$(awk '{print $14+$15}' /proc/$WP/stat)
echo "worker idle cpu: $(( C1 - C0 )) ticks in 20 s (CLK_TCK=$(getconf CLK_TCK))" | tee "$OUT/idle_cpu.txt"
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    print(r["experiment_id"], r["cycle"], r["config_hash"], r["state"], "E=%.1f J adj=%.1f J base=%.1f W tok/s=%.1f J/tok=%.4f adjJ/tok=%.4f dis=%.2f%% T=%s load=%.2fs warm=%s" % (
        r["total_energy_j"] or 0, r["energy_adjusted_j"] or 0, r["baseline_power_w"] or 0,
        r["avg_tokens_per_second"] or 0, r["avg_energy_per_token_j"] or 0, r["energy_per_token_adjusted_j"] or 0,
        r["energy_disagreement_pct"] or 0, r["max_temperature_c"], r["model_load_time_sec"] or 0, r["model_already_loaded"]))
PY
tail -5 /tmp/lem/w0.log
