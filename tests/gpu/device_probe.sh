#!/usr/bin/env bash
# Device probe (run on the GPU machine from the repo root, binaries in .carry/bin):
# 1. an NVML trace under a known load pattern, counter read back to back;
# 2. sampler CPU cost at 20 Hz with the counter every 20 ms, idle GPU;
# 3. the full coordinator + worker path on the real GPU with the synthetic engine.
set -u
B=.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu,clocks.sm,pstate --format=csv | tee "$OUT/smi.txt"
echo "== trace under load"
$B/lem-gpu-trace --seconds 32 --power-interval-ms 50 --counter-interval-ms 0 --out "$OUT/trace.jsonl" > "$OUT/trace_stats.json" &
TP=$!
python3 tests/gpu/gpu_load.py --marks "$OUT/marks.jsonl" --lead-idle 3
wait $TP
cat "$OUT/trace_stats.json"
echo "== sampler cost, idle, 20 Hz power + 20 ms counter"
$B/lem-gpu-trace --seconds 20 --power-interval-ms 50 --counter-interval-ms 20 --out /tmp/cost.jsonl | tee "$OUT/cost_20ms.json"
$B/lem-gpu-trace --seconds 20 --power-interval-ms 50 --counter-interval-ms 100 --out /tmp/cost100.jsonl | tee "$OUT/cost_100ms.json"
echo "== coordinator + worker, real NVML, synthetic engine"
rm -rf /tmp/lem && mkdir -p /tmp/lem
$B/lem-coord start --listen 127.0.0.1:0 --data-dir /tmp/lem/coord > /tmp/lem/coord.log 2>&1 &
sleep 1
A=$(cat /tmp/lem/coord/coordinator.addr)
$B/lem-worker --coordinator "$A" --data-dir /tmp/lem/w0 --name h100 > /tmp/lem/w0.log 2>&1 &
ID=$($B/lem-coord submit tests/fixtures/e2e-12.yaml --coordinator "$A" | tail -1)
for i in $(seq 1 90); do
  D=$($B/lem-coord status "$ID" --json --coordinator "$A" | python3 -c "import sys,json; s=json.load(sys.stdin); print(s['done']+s['failed'])")
  [ "$D" = "12" ] && break; sleep 1
done
$B/lem-coord status "$ID" --coordinator "$A"
$B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/synthetic_results.jsonl"
$B/lem-coord workers --coordinator "$A"
head -c 3000 "$OUT/synthetic_results.jsonl"; echo
tail -20 /tmp/lem/w0.log
cp /tmp/lem/w0.log "$OUT/worker.log"
