# Shared by the device scripts (h100_validation.sh, h100_repeat.sh); sourced, with B
# (carried binaries), OUT and W (work dir) set.

# Stops fleet processes left by an earlier call, then starts lem-coord and one
# lem-worker (no --simulate-gpu; extra flags in $WORKER_ARGS) detached in $W; sets A
# to the coordinator's address.
start_fleet() {
  nvidia-smi --query-gpu=name,driver_version,power.draw,temperature.gpu,clocks.sm,pstate --format=csv | tee "$OUT/smi.txt"
  pkill -f "$B/lem-worker" ; pkill -f "$B/lem-coord" ; sleep 1
  rm -rf "$W" && mkdir -p "$W"
  setsid "$B/lem-coord" start --listen 127.0.0.1:0 --data-dir "$W/coord" > "$W/coord.log" 2>&1 < /dev/null &
  sleep 1
  A=$(cat "$W/coord/coordinator.addr")
  # shellcheck disable=SC2086  # WORKER_ARGS is a list of flags
  setsid "$B/lem-worker" --coordinator "$A" --data-dir "$W/w0" --name h100 ${WORKER_ARGS:-} > "$W/w0.log" 2>&1 < /dev/null &
  date +%s > "$W/t0"
}

# wait_done CAMPAIGN RUNS DEADLINE: 0 once RUNS runs are done or failed, 1 at DEADLINE.
wait_done() {
  while [ "$(date +%s)" -lt "$3" ]; do
    D=$("$B/lem-coord" status "$1" --json --coordinator "$A" | python3 -c "import sys,json; s=json.load(sys.stdin); print(s['done']+s['failed'])")
    [ "$D" = "$2" ] && return 0; sleep 2
  done
  return 1
}
