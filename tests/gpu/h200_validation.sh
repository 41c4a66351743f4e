#!/usr/bin/env bash
# The live-energy validation on the H200 (docs/validation/h200.md): a separate process
# (lem-gpu-trace) reads the energy counter back to back for the whole campaign while
# lem-coord and one lem-worker (real NVML, transformers engine, quiet spans) run
# tests/gpu/h200-validation.yaml; then tests/gpu/energy_reference.py judges every
# window's total_energy_j against that reference and the raw delta, and writes the
# replay fixture. Binaries in .carry/bin. Writes to $OUT. Changes no GPU setting.
set -u
B=$PWD/.carry/bin
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
W=/tmp/lem
REF=/tmp/lem-reference.jsonl
STUDY=tests/gpu/h200-validation.yaml
export PYTHONUNBUFFERED=1
. tests/gpu/fleet.sh
rm -f /tmp/stop-ref
# The reference starts first and ends last; power every 100 ms beside the counter.
$B/lem-gpu-trace --seconds 580 --power-interval-ms 100 --counter-interval-ms 0 \
  --stop-file /tmp/stop-ref --out "$REF" > "$OUT/reference_stats.json" 2>&1 &
REFPID=$!
sleep 2
WORKER_ARGS="--prefill-window-seconds 1 ${EXTRA_WORKER_ARGS:-}" start_fleet
$B/lem-coord grid "$STUDY" --json > "$OUT/grid.json" 2>/dev/null
ID=$($B/lem-coord submit "$STUDY" --coordinator "$A" | tail -1)
N=$(python3 -c "import json; print(len(json.load(open('$OUT/grid.json'))['runs']))")
deadline=$(( $(date +%s) + ${WAIT_S:-480} ))
wait_done "$ID" "$N" "$deadline" || echo "campaign $ID not finished in time"
echo "campaign wall: $(( $(date +%s) - $(cat $W/t0) )) s"
$B/lem-coord status "$ID" --coordinator "$A"
$B/lem-coord results "$ID" --format jsonl --coordinator "$A" > "$OUT/results.jsonl"
sleep 1; touch /tmp/stop-ref; wait $REFPID
cat "$OUT/reference_stats.json"; echo
python3 tests/gpu/energy_reference.py --trace "$REF" --results "$OUT/results.jsonl" \
  --grid "$OUT/grid.json" --fixture "$OUT/h200-live-windows.json" \
  --summary "$OUT/summary.json" | tee "$OUT/validation.txt"
gzip -c "$REF" > "$OUT/reference.jsonl.gz"
cp $W/w0.log "$OUT/worker.log"
rm -f "$OUT/smi.txt"   # printed above; at most 8 files come back
ls -la "$OUT"
