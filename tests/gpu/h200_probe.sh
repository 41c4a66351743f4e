#!/usr/bin/env bash
# The H200 probe (docs/validation/h200.md, "H200 facts"): the energy counter read back
# to back by lem-gpu-trace while tests/gpu/h200_probe.py runs matmul edges and
# random-weight Llama 1.1B generate() with and without the per-step streamer; then
# NVML's instant power field.
# (Other readers' cost: h200_extras.sh.) Binaries in .carry/bin. Writes to $OUT.
# Changes no GPU setting.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu,clocks.sm,pstate,persistence_mode --format=csv | tee "$OUT/smi.txt"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv
rm -f /tmp/stop
$B/lem-gpu-trace --seconds 400 --power-interval-ms 20 --counter-interval-ms 0 --stop-file /tmp/stop --out "$OUT/trace.jsonl" > "$OUT/trace_stats.json" &
TP=$!
sleep 4
python3 tests/gpu/h200_probe.py --marks "$OUT/marks.jsonl" --repeats "${REPEATS:-5}" 2>&1 | grep -v Warning | tail -5
sleep 2; touch /tmp/stop; wait $TP
cat "$OUT/trace_stats.json"; echo
python3 - "$OUT/instant.json" <<'PY'
import json, sys, time, threading
import pynvml as N
import torch
N.nvmlInit(); h = N.nvmlDeviceGetHandleByIndex(0)
fid = getattr(N, "NVML_FI_DEV_POWER_INSTANT", 186)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
def load():
    time.sleep(1.0); end = time.time() + 1.5
    while time.time() < end:
        torch.mm(a, a); torch.cuda.synchronize()
th = threading.Thread(target=load); th.start()
rows = []; t_end = time.monotonic() + 4.0
while time.monotonic() < t_end:
    t = time.monotonic_ns()
    try:
        v = N.nvmlDeviceGetFieldValues(h, [fid])[0]
        inst = v.value.uiVal if v.nvmlReturn == 0 else None
    except Exception as e:
        inst = str(e)
    avg = N.nvmlDeviceGetPowerUsage(h)
    rows.append((t, inst, avg)); time.sleep(0.002)
th.join()
changes = lambda k: sum(1 for i in range(1, len(rows)) if rows[i][k] != rows[i-1][k])
out = {"n": len(rows), "seconds": (rows[-1][0]-rows[0][0])/1e9, "instant_changes": changes(1), "usage_changes": changes(2), "rows": rows}
json.dump(out, open(sys.argv[1], "w"))
print({k: out[k] for k in ("n", "seconds", "instant_changes", "usage_changes")}, rows[::100])
PY
ls -la "$OUT"
