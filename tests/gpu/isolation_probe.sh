#!/usr/bin/env bash
# Device isolation on a real GPU (docs/measurement.md, "Device isolation"). A foreign
# CUDA process (a PyTorch tensor of 512 MiB, then sleep) holds GPU 0 while lem-worker
# measures tests/gpu/isolation-2.yaml (transformers, random-weight tiny Llama: the
# harness holds a context of its own):
#   1. --device-isolation warn: both runs done and flagged with the foreign pid, never
#      the harness's;
#   2. the process killed: the same study again, no run flagged (the harness's own
#      context is not foreign);
#   3. --device-isolation refuse with the process back: nothing leased while it lives;
#      once it is killed the runs complete, unflagged.
# nvidia-smi's process list is sampled every 2 s throughout. PHASES=12 leaves out the
# third part. Binaries in .carry/bin; writes to $OUT. Changes no GPU setting.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
W=/tmp/lem-iso
mkdir -p "$OUT"
rm -rf "$W" && mkdir -p "$W"
nvidia-smi --query-gpu=name,driver_version,power.draw,pstate --format=csv | tee "$OUT/smi.txt"
( while true; do date +%s; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader; sleep 2; done ) > "$OUT/compute_apps.txt" 2>&1 &
SMI=$!

hold() {
  python3 -c "import torch, time; a = torch.empty(512 * 2**20, dtype=torch.uint8, device='cuda'); print('holding', flush=True); time.sleep(900)" > "$W/hold.log" 2>&1 &
  HP=$!
  for _ in $(seq 1 60); do grep -q holding "$W/hold.log" && break; sleep 0.5; done
  echo "foreign process $HP: $(cat "$W/hold.log")"
}
unhold() { kill -9 "$HP"; wait "$HP" 2>/dev/null; echo "foreign process $HP killed"; }
start_worker() {
  setsid "$B/lem-worker" --coordinator "$A" --data-dir "$W/w0" --name h200 --prefill-window-seconds 0 "$@" >> "$W/w0.log" 2>&1 < /dev/null &
  WP=$!
}
stop_worker() { kill -TERM "$WP"; wait "$WP" 2>/dev/null; }
status() { "$B/lem-coord" status "$1" --json --coordinator "$A"; }
wait_done() {  # CAMPAIGN RUNS SECONDS
  local end=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    D=$(status "$1" | python3 -c "import sys,json; s=json.load(sys.stdin); print(s['done']+s['failed'])")
    [ "$D" = "$2" ] && return 0; sleep 2
  done
  echo "campaign $1 not finished in $3 s"; return 1
}
report() {  # CAMPAIGN LABEL
  "$B/lem-coord" results "$1" --format llem --output "$W/llem-$1" --coordinator "$A" > /dev/null
  python3 - "$W/llem-$1" "$2" <<'PY' | tee -a "$OUT/report.txt"
import glob, json, os, sys
print("==", sys.argv[2])
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "fleet.json"))):
    j = json.load(open(f)); r = j["run_result"]
    # The stored result, nested since protocol 5 (docs/results.md, "The stored result").
    bl = r.get("baselines") or {}; iso = r.get("isolation") or {}
    b = bl.get("device") or {}; rb = bl.get("resident") or {}
    print(j["run"], "attempts", j["attempts"], "gpu_shared", iso.get("gpu_shared"),
          "device %.1f W (age %.1f s)" % (b.get("mean_power_w", float("nan")), b.get("cache_age_s", float("nan"))),
          "resident %.1f W (age %.1f s)" % (rb.get("mean_power_w", float("nan")), rb.get("cache_age_s", float("nan"))))
    for p in iso.get("foreign_processes", []):
        print("   foreign", p)
    for w in r.get("warnings", []):
        if "isolation" in w or "shared" in w:
            print("   warning:", w)
PY
}

setsid "$B/lem-coord" start --listen 127.0.0.1:0 --data-dir "$W/coord" > "$W/coord.log" 2>&1 < /dev/null &
CP=$!
sleep 1
A=$(cat "$W/coord/coordinator.addr")

echo "== 1. warn, foreign process present"
hold
start_worker --device-isolation warn
ID1=$("$B/lem-coord" submit tests/gpu/isolation-2.yaml --coordinator "$A" | tail -1)
wait_done "$ID1" 2 200 && report "$ID1" "warn, foreign pid $HP"
echo "== 2. warn, foreign process killed"
unhold
ID2=$("$B/lem-coord" submit tests/gpu/isolation-2.yaml --coordinator "$A" | tail -1)
wait_done "$ID2" 2 200 && report "$ID2" "warn, no foreign process"
stop_worker

if [ "${PHASES:-123}" != 12 ]; then
echo "== 3. refuse, foreign process present"
hold
start_worker --device-isolation refuse
ID3=$("$B/lem-coord" submit tests/gpu/isolation-2.yaml --coordinator "$A" | tail -1)
sleep 20
status "$ID3" | python3 -c "import sys,json; s=json.load(sys.stdin); print('after 20 s with pid', '$HP', {k: s[k] for k in ('pending','running','done','failed')})" | tee -a "$OUT/report.txt"
unhold
wait_done "$ID3" 2 200 && report "$ID3" "refuse, foreign process killed after 20 s"
stop_worker
fi

kill "$SMI"; kill -TERM "$CP"
grep -E "shared|refus|not leasing|isolation|PID namespace" "$W/w0.log" | tail -30 > "$OUT/worker_isolation_lines.txt"
cp "$W/w0.log" "$OUT/worker.log"
tail -5 "$OUT/worker_isolation_lines.txt"
