#!/usr/bin/env bash
# The Ansible test (docs/testing.md): ansible/site.yml applied to three Debian
# containers with systemd as PID 1 on a private Docker network (a head node and two
# GPU hosts whose workers measure the simulated GPU), then a real campaign across
# them, then the playbook again, which must change nothing. Also: ansible-lint is
# clean, the backup timer made backups (by the running coordinator) that restore as a
# manifest with the same campaign, the backup unit works on a stopped coordinator,
# and logrotate rotates a worker's harness log.
#
#   tests/ansible/run.sh          # builds lem-coord and lem-worker (debug) first
#   LEM_ANSIBLE_BIN_DIR=target/release tests/ansible/run.sh   # or uses these
#
# Needs Docker, ansible-playbook and ansible-lint (./test.sh installs Debian's
# ansible and ansible-lint when missing). LEM_SKIP_DOCKER=1 skips it, loudly.
# Containers and the network carry the label org.lem-fleet.test=<prefix> and are
# removed when the script ends, failed or not. LEM_ANSIBLE_KEEP=1 keeps them (and
# says how to remove them).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

T0=$(date +%s.%N)
say() { echo "ansible-test: $(awk "BEGIN { printf \"%6.1fs\", $(date +%s.%N) - $T0 }") $*" >&2; }
die() {
    echo "ansible-test: FAILED: $*" >&2
    exit 1
}

if [ "${LEM_SKIP_DOCKER:-}" = 1 ]; then
    echo "ansible-test: LEM_SKIP_DOCKER=1: the Ansible test is SKIPPED (it needs Docker)" >&2
    exit 0
fi
for tool in docker ansible-playbook ansible-lint objcopy; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool is missing (./test.sh installs ansible and ansible-lint from Debian; objcopy is in binutils)"
done

LABEL=org.lem-fleet.test
PREFIX="lemans-$$-$(date +%s)"
NET="$PREFIX-net"
HEAD="$PREFIX-head"
WORKERS=("$PREFIX-w1" "$PREFIX-w2")
COORD_DIR=/var/lib/lem/coordinator
BACKUP_DIR=/var/backups/lem-coord
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lem-ansible.XXXXXX")

diagnose() {
    for c in "$HEAD" "${WORKERS[@]}"; do
        docker inspect "$c" >/dev/null 2>&1 || continue
        echo "--- $c: failed units, and the lem units' journal" >&2
        docker exec "$c" systemctl --failed --no-pager >&2 || true
        docker exec "$c" journalctl --no-pager -n 60 -u lem-coord -u lem-coord-backup \
            -u lem-worker >&2 || true
    done
}

cleanup() {
    local rc=$?
    [ "$rc" -ne 0 ] && diagnose
    if [ "${LEM_ANSIBLE_KEEP:-}" = 1 ]; then
        echo "ansible-test: LEM_ANSIBLE_KEEP=1: kept $PREFIX-*; remove with: docker rm -f \$(docker ps -aq --filter label=$LABEL=$PREFIX); docker network rm $NET" >&2
    else
        local ids
        ids=$(docker ps -aq --filter "label=$LABEL=$PREFIX")
        # shellcheck disable=SC2086
        [ -n "$ids" ] && docker rm -f -v $ids >/dev/null
        docker network ls -q --filter "label=$LABEL=$PREFIX" | xargs -r docker network rm >/dev/null
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

# --- The binaries: built here, debug info stripped (the copies are smaller) -------
if [ -n "${LEM_ANSIBLE_BIN_DIR:-}" ]; then
    BIN_DIR=$LEM_ANSIBLE_BIN_DIR
else
    say "cargo build -p lem-coord -p lem-worker"
    cargo build --locked -q -p lem-coord -p lem-worker
    BIN_DIR=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
fi
mkdir -p "$WORK/bin"
for b in lem-coord lem-worker; do
    [ -x "$BIN_DIR/$b" ] || die "no $BIN_DIR/$b (build it, or set LEM_ANSIBLE_BIN_DIR)"
    objcopy --strip-debug "$BIN_DIR/$b" "$WORK/bin/$b"
done

# --- Three hosts: Debian with systemd as PID 1, on a network with no way out -------
IMAGE=$(docker/systemd-image.sh | tail -n 1)
say "image $IMAGE"
docker network create --internal --label "$LABEL=$PREFIX" "$NET" >/dev/null
# systemd needs its own cgroup namespace and CAP_SYS_ADMIN to mount its cgroup
# hierarchy there (this host's cgroup v1 included), and tmpfs on /run; SIGRTMIN+3
# makes it shut down on `docker stop`. No --privileged.
for c in "$HEAD" "${WORKERS[@]}"; do
    docker run -d --name "$c" --hostname "${c#"$PREFIX"-}" --network "$NET" \
        --label "$LABEL=$PREFIX" --cgroupns private --cap-add SYS_ADMIN \
        --tmpfs /run --tmpfs /run/lock --stop-signal SIGRTMIN+3 "$IMAGE" >/dev/null
done
for c in "$HEAD" "${WORKERS[@]}"; do
    state=$(docker exec "$c" systemctl is-system-running --wait 2>&1 || true)
    [ "$state" = running ] || die "systemd in $c is $state, not running"
done
say "hosts up: $HEAD ${WORKERS[*]} on $NET"

cat >"$WORK/inventory.yml" <<EOF
all:
  vars:
    ansible_connection: community.docker.docker
    ansible_python_interpreter: /usr/bin/python3
    lem_coord_binary_src: $WORK/bin/lem-coord
    lem_worker_binary_src: $WORK/bin/lem-worker
  children:
    lem_coordinators:
      hosts:
        $HEAD:
          lem_coord_backup_on_calendar: "*:*:0/10"
          lem_coord_backup_accuracy: 1s
          lem_coord_backup_keep: 3
    lem_workers:
      vars:
        lem_worker_simulate_gpu: true
        lem_worker_extra_args: ["--prefill-window-seconds", "0"]
      hosts:
        ${WORKERS[0]}:
        ${WORKERS[1]}:
EOF

export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_PIPELINING=1 \
    ANSIBLE_LOCAL_TEMP="$WORK/ansible-tmp" ANSIBLE_HOME="$WORK/ansible-home"

# Runs the playbook; prints its recap; fails the test if any host failed.
play() {
    local log="$WORK/play-$1.log"
    if ! ansible-playbook -i "$WORK/inventory.yml" ansible/site.yml >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        die "ansible-playbook ($1) failed; the whole log was $log"
    fi
    sed -n '/^PLAY RECAP/,$p' "$log" | grep -E 'ok=' >&2
}

# --- First run: everything is installed, the workers join ------------------------
play first
say "first run done"
# (No `grep -q` after a pipe: with pipefail, the writer's SIGPIPE would fail it.)
first=$(sed -n '/^PLAY RECAP/,$p' "$WORK/play-first.log" | grep -E 'ok=')
case "$first" in *"changed=0 "*) die "a host changed nothing on the first run: $first" ;; esac

# --- A campaign across the two workers --------------------------------------------
docker cp examples/quickstart.yaml "$HEAD:/tmp/quickstart.yaml"
coord() { docker exec "$HEAD" lem-coord "$@"; }
id=$(coord submit /tmp/quickstart.yaml --data-dir "$COORD_DIR" --wait 2>"$WORK/submit.log" | tail -n 1) \
    || { cat "$WORK/submit.log" >&2; die "the campaign did not finish with every run done"; }
say "campaign $id finished"
coord status "$id" --json --data-dir "$COORD_DIR" >"$WORK/status.json"
coord results "$id" --format jsonl --data-dir "$COORD_DIR" >"$WORK/results.jsonl"
python3 - "$WORK/status.json" "$WORK/results.jsonl" "${WORKERS[@]}" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
want = set(sys.argv[3:])
assert status["total"] == 6 and status["done"] == 6, status
assert status["failed"] == 0 and status["pending"] == 0 and status["running"] == 0, status
assert len(rows) == 6 and all(r["state"] == "done" for r in rows), rows
workers = {r["worker"] for r in rows}
assert workers == want, f"results came from {workers}, not from both of {want}"
assert all(r["simulated"] for r in rows), "every result is labelled simulated"
print(f"ansible-test: 6 runs done, from {sorted(workers)}", file=sys.stderr)
EOF
FINISHED=$(date +%s)

# --- Backups: the timer's (made by the running coordinator) restore the campaign ---
newest_backup() {
    docker exec "$HEAD" sh -c "ls -1 $BACKUP_DIR | grep -E '^manifest-.*\.redb$' | sort | tail -n 1"
}
for _ in $(seq 60); do
    b=$(newest_backup)
    [ -n "$b" ] && [ "$(docker exec "$HEAD" stat -c %Y "$BACKUP_DIR/$b")" -gt "$FINISHED" ] && break
    sleep 1
done
[ -n "$b" ] || die "the backup timer made no backup in $BACKUP_DIR"
n=$(docker exec "$HEAD" sh -c "ls -1 $BACKUP_DIR | grep -c '^manifest-'")
[ "$n" -ge 1 ] && [ "$n" -le 3 ] || die "$n backups in $BACKUP_DIR; the timer keeps 3"
journal() { docker exec "$HEAD" journalctl --no-pager -u lem-coord-backup; }
case "$(journal)" in *"by the running coordinator"*) ;; *) false ;; esac \
    || die "no backup was made by the running coordinator (journal of lem-coord-backup)"
[ "$(docker exec "$HEAD" systemctl is-failed lem-coord-backup.service || true)" != failed ] \
    || die "lem-coord-backup.service failed"
# Restored: a coordinator on a copy of the newest backup has the same campaign.
docker exec "$HEAD" sh -ec "
    d=\$(mktemp -d); cp $BACKUP_DIR/$b \$d/manifest.redb
    lem-coord start --listen 127.0.0.1:0 --http off --data-dir \$d >\$d/log 2>&1 & pid=\$!
    for i in \$(seq 100); do [ -s \$d/coordinator.addr ] && break; sleep 0.1; done
    lem-coord status $id --json --coordinator \$(cat \$d/coordinator.addr) || cat \$d/log >&2
    kill \$pid; wait \$pid || true; rm -rf \$d" >"$WORK/restored.json"
python3 - "$WORK/status.json" "$WORK/restored.json" <<'EOF' || die "the backup $b does not restore campaign $id"
import json, sys
live, copy = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["campaign", "total", "done", "failed", "pending", "study_design_hash"]
assert [live[k] for k in keys] == [copy[k] for k in keys], (live, copy)
EOF
say "backup $b (one of $n kept) restores campaign $id"
# The same unit on a stopped coordinator reads the manifest itself.
docker exec "$HEAD" systemctl stop lem-coord-backup.timer lem-coord.service
docker exec "$HEAD" systemctl start lem-coord-backup.service \
    || die "the backup unit failed on the stopped coordinator"
case "$(journal)" in *"from the stopped coordinator"*) ;; *) false ;; esac \
    || die "the backup of the stopped coordinator did not say so"
docker exec "$HEAD" systemctl start lem-coord.service lem-coord-backup.timer
say "backup of the stopped coordinator made; coordinator started again"

# --- Log rotation on a GPU host ----------------------------------------------------
w=${WORKERS[0]}
docker exec "$w" logrotate --force /etc/logrotate.d/lem-worker \
    || die "logrotate refused /etc/logrotate.d/lem-worker on $w"
docker exec "$w" sh -c 'ls /var/lib/lem/worker/*/harness.log.1' >/dev/null \
    || die "logrotate did not rotate the harness log on $w"
say "logrotate rotated $w's harness log"

# --- Second run: nothing changes --------------------------------------------------
play second
recap=$(sed -n '/^PLAY RECAP/,$p' "$WORK/play-second.log" | grep -E 'ok=')
[ "$(echo "$recap" | wc -l)" -eq 3 ] || die "the second run's recap has not 3 hosts"
[ "$(echo "$recap" | grep -E -c 'changed=0 +unreachable=0 +failed=0 ')" -eq 3 ] \
    || die "the second run changed something (or failed): $recap"
say "second run: changed=0 on every host"

# --- ansible-lint ------------------------------------------------------------------
(cd ansible && ansible-lint --nocolor >"$WORK/lint.log" 2>&1) \
    || { cat "$WORK/lint.log" >&2; die "ansible-lint is not clean"; }
say "ansible-lint: $(tail -n 1 "$WORK/lint.log")"
say "passed"
