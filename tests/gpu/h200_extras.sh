#!/usr/bin/env bash
# The rest of the H200 validation (docs/validation/h200.md), in one call:
#   1. NVML read costs (power, energy counter, instant power field), pynvml;
#   2. whether another process reading NVML slows generate(): one reading the counter
#      back to back, one sampling at 20 Hz as the worker's sampler does
#      (tests/gpu/h200_probe.py --phase readers: interleaved, with and without);
#   3. per-token timing's cost: tests/gpu/h200-per-token.yaml on a worker run with
#      --per-token-timing when-profiling; then idle repeatability,
#      tests/gpu/h200-repeat-fresh.yaml (device and resident idle around every run);
#   4. device isolation: tests/gpu/h200-isolation.yaml while another process holds a
#      CUDA context, with --device-isolation warn, then refuse.
# Binaries in .carry/bin. Writes to $OUT. Changes no GPU setting.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem
export PYTHONUNBUFFERED=1
. tests/gpu/fleet.sh
T0=$(date +%s)
left() { echo $(( ${BUDGET_S:-560} - ($(date +%s) - T0) )); }

echo "== 1. read costs"
python3 - <<'PY' | tee "$OUT/read_costs.txt"
import time, statistics as st
import pynvml as N
N.nvmlInit(); h = N.nvmlDeviceGetHandleByIndex(0)
fid = getattr(N, "NVML_FI_DEV_POWER_INSTANT", 186)
def cost(f, n):
    v = []
    for _ in range(n):
        a = time.perf_counter_ns(); f(); v.append((time.perf_counter_ns() - a) / 1e3)
    v.sort()
    return "mean %.1f us, p50 %.1f us, p99 %.1f us (n=%d)" % (st.mean(v), v[len(v)//2], v[int(len(v)*0.99)], n)
print("nvmlDeviceGetPowerUsage:", cost(lambda: N.nvmlDeviceGetPowerUsage(h), 2000))
print("nvmlDeviceGetTotalEnergyConsumption:", cost(lambda: N.nvmlDeviceGetTotalEnergyConsumption(h), 500))
print("field POWER_INSTANT:", cost(lambda: N.nvmlDeviceGetFieldValues(h, [fid]), 500))
print("nvmlDeviceGetTemperature:", cost(lambda: N.nvmlDeviceGetTemperature(h, 0), 500))
PY

echo "== 3. per-token timing and idle repeatability ($(left) s left)"
WORKER_ARGS="--prefill-window-seconds 0 --per-token-timing when-profiling" start_fleet
ID1=$($B/lem-coord submit tests/gpu/h200-per-token.yaml --coordinator "$A" | tail -1)
ID2=$($B/lem-coord submit tests/gpu/h200-repeat-fresh.yaml --coordinator "$A" | tail -1)
wait_done "$ID1" 20 $(( $(date +%s) + $(left) - 200 )) || echo "per-token campaign not finished"
wait_done "$ID2" 4 $(( $(date +%s) + $(left) - 110 )) || echo "repeat campaign not finished"
for ID in $ID1 $ID2; do
  $B/lem-coord status "$ID" --coordinator "$A"
  $B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/results-$ID.jsonl"
done
cp $W/w0.log "$OUT/worker.log"
python3 - "$OUT/results-$ID1.jsonl" "$OUT/results-$ID2.jsonl" <<'PY' | tee "$OUT/per_token.txt"
import json, sys, statistics as st
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1])]
d = defaultdict(list)
for r in rows:
    if r["state"] != "done":
        print("not done:", r["experiment_id"], r["state"], r.get("last_failure")); continue
    key = (r["output_tokens"], r.get("itl_measurement_mode"))
    d[key].append((r["total_inference_time_sec"], r["avg_energy_per_token_j"], (r["energy_adjusted_resident_j"] or 0) / max(1, r["output_tokens"])))
for k in sorted(d):
    v = d[k]
    f = lambda i: (st.mean(x[i] for x in v), st.stdev(x[i] for x in v) if len(v) > 1 else 0)
    print("output_tokens=%s mode=%s n=%d window %.3f +- %.3f s, J/token %.4f +- %.4f, dynamic J/token %.4f +- %.4f" % (k + (len(v),) + f(0) + f(1) + f(2)))
for l in open(sys.argv[2]):
    r = json.loads(l)
    print("repeat", r["experiment_id"], r["state"], "device idle %s W (sd %s) resident %s W (sd %s) quiet %s W" % (
        r.get("baseline_power_w"), r.get("baseline_std_w"), r.get("resident_baseline_power_w"),
        r.get("resident_baseline_std_w"), r.get("quiet_power_w")))
PY

pkill -f "$B/lem-worker"; sleep 1   # no NVML reader of ours during part 2's "none"
echo "== 2. a second counter reader against generate() ($(left) s left)"
python3 tests/gpu/h200_probe.py --phase readers --marks "$OUT/marks_readers.jsonl" --repeats 5 \
  --readers "{\"counter_back_to_back\": \"$B/lem-gpu-trace --seconds 120 --power-interval-ms 1000 --counter-interval-ms 0 --out /tmp/r1.jsonl\",
              \"sampler_20hz\": \"$B/lem-gpu-trace --seconds 120 --power-interval-ms 50 --counter-interval-ms 100000 --out /tmp/r2.jsonl\"}" \
  2>&1 | grep -v Warning | tail -3
python3 - "$OUT/marks_readers.jsonl" <<'PY' | tee "$OUT/readers.txt"
import json, sys, statistics as st
from collections import defaultdict
d = defaultdict(list)
for l in open(sys.argv[1]):
    m = json.loads(l)
    d[(m["name"], m["reader"])].append((m["t1_ns"] - m["t0_ns"]) / 1e9)
for name in sorted({k[0] for k in d}):
    base = d[(name, "none")]
    print("%s: no other reader %.3f +- %.3f s (n=%d)" % (name, st.mean(base), st.stdev(base), len(base)))
    for cond in sorted({k[1] for k in d if k[0] == name and k[1] != "none"}):
        v = d[(name, cond)]
        print("%s: with %s %.3f +- %.3f s (n=%d): %+.1f%%" % (name, cond, st.mean(v), st.stdev(v), len(v),
              (st.mean(v) - st.mean(base)) / st.mean(base) * 100))
PY

if ! $B/lem-worker --help | grep -q -- --device-isolation || [ "$(left)" -lt 100 ]; then
  cp $W/w0.log "$OUT/worker.log" 2>/dev/null
  echo "== 4. device isolation: skipped (this lem-worker has no --device-isolation, or $(left) s left)"
  pkill -f "$B/lem-worker"; pkill -f "$B/lem-coord"; exit 0
fi
echo "== 4. device isolation ($(left) s left)"
python3 -c "import torch, time; x = torch.ones(1 << 26, device='cuda'); torch.cuda.synchronize(); open('/tmp/foreign.pid','w').write(str(__import__('os').getpid())); time.sleep(600)" &
FOREIGN=$!
sleep 8
nvidia-smi --query-compute-apps=pid,used_memory --format=csv | tee "$OUT/isolation_smi.txt"
for policy in warn refuse; do
  # The previous worker must be gone (it holds the GPU's lock until it exits).
  pkill -f "$B/lem-worker"; while pgrep -f "$B/lem-worker" > /dev/null; do sleep 0.5; done
  setsid "$B/lem-worker" --coordinator "$A" --data-dir "$W/w0" --name h200 --prefill-window-seconds 0 \
    --device-isolation $policy > "$W/w-$policy.log" 2>&1 < /dev/null &
  ID=$($B/lem-coord submit tests/gpu/h200-isolation.yaml --coordinator "$A" | tail -1)
  if [ $policy = warn ]; then
    wait_done "$ID" 2 $(( $(date +%s) + 90 )) || echo "isolation (warn) not finished"
  else
    sleep 25
    $B/lem-coord status "$ID" --coordinator "$A" | tee -a "$OUT/isolation.txt"
    kill -9 $FOREIGN; echo "killed the foreign process $FOREIGN"
    wait_done "$ID" 2 $(( $(date +%s) + 90 )) || echo "isolation (refuse) not finished"
  fi
  $B/lem-coord status "$ID" --coordinator "$A" | tee -a "$OUT/isolation.txt"
  $B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/isolation-$policy.jsonl"
  python3 - "$OUT/isolation-$policy.jsonl" <<'PY' | tee -a "$OUT/isolation.txt"
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(r["experiment_id"], r["state"], "attempts", r["attempts"], "gpu_shared", r.get("gpu_shared"), "pids", r.get("gpu_foreign_pids"), "device idle", r.get("baseline_power_w"), "last_failure", r.get("last_failure"))
PY
  cp "$W/w-$policy.log" "$OUT/"
done
kill -9 $FOREIGN 2>/dev/null
echo "done with $(left) s left"
