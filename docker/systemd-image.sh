#!/usr/bin/env bash
# Builds a Debian "host" image for the Ansible test (tests/ansible/run.sh) without any
# registry: debootstrap a minimal bookworm root file system with systemd as init and
# what Ansible needs on a managed host, then `docker import` it. Each container of it
# stands in for one machine of a lab (the head node, a GPU host): systemd is PID 1,
# so the roles' units, timers and `systemctl` run as they do on a real host.
# Idempotent and cached, like docker/base-image.sh:
#
#   * the image is tagged lem-fleet/systemd:<hash of this script and the
#     architecture> (and lem-fleet/systemd:latest); if that tag exists, nothing is done;
#   * the root file system is kept as a tarball in $LEM_CACHE_DIR (default
#     ${XDG_CACHE_HOME:-~/.cache}/lem-fleet), so a Docker whose images were removed
#     re-imports it in seconds, without root and without the network.
#
# Progress goes to stderr; the image tag is the last line of stdout, so
#   image=$(docker/systemd-image.sh | tail -n 1)
# works. Only a cold build needs root (debootstrap) and deb.debian.org (or
# $LEM_DEBIAN_MIRROR). See docs/testing.md.
#
# The packages: systemd and systemd-sysv (init), dbus (systemctl's and hostnamectl's
# peer), sudo (Ansible's `become`, as on a real host), python3 and python3-apt (Ansible's modules, its apt module included, which
# then needs no network to find a package installed), logrotate (the worker role's
# log rotation), iproute2, procps and ca-certificates (as in the base image). No
# Docker and no NVIDIA driver: the test's GPU hosts run the process runtime on the
# simulated GPU.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

SUITE=bookworm
VARIANT=minbase
PACKAGES=systemd,systemd-sysv,dbus,sudo,python3,python3-apt,logrotate,iproute2,procps,ca-certificates
REPO=lem-fleet/systemd
NEED_MB=1536

MIRROR="${LEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${LEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lem-fleet}"

say() { echo "systemd-image: $*" >&2; }
die() {
    echo "systemd-image: error: $*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 \
    || die "docker is not installed (install Docker Engine: https://docs.docker.com/engine/install/debian/)"
if ! docker_err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
    die "cannot reach the Docker daemon: ${docker_err##*$'\n'} (is dockerd running? can $(id -un) use its socket?)"
fi

# The tag: this script's code (comments and blank lines left out) and the architecture.
ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
SCRIPT="${BASH_SOURCE[0]}"
HASH=$( { grep -Ev '^[[:space:]]*(#|$)' "$SCRIPT"; echo "arch=$ARCH"; } | sha256sum | cut -c1-12)
TAG="$REPO:$HASH"

present() {
    docker image inspect "$TAG" >/dev/null 2>&1 || return 1
    say "$TAG is present"
    docker tag "$TAG" "$REPO:latest"
    echo "$TAG"
}
present && exit 0

mkdir -p "$CACHE_DIR" || die "cannot create the cache dir $CACHE_DIR (set LEM_CACHE_DIR to a writable directory)"
TARBALL="$CACHE_DIR/systemd-$SUITE-$HASH.tar"

exec 9>"$CACHE_DIR/systemd-image.lock"
if ! flock -n 9; then
    say "another systemd-image build is running (lock $CACHE_DIR/systemd-image.lock); waiting for it"
    flock 9
fi
present && exit 0

import_tarball() {
    say "importing $TARBALL as $TAG"
    # container=docker tells systemd it runs in a container (no udev, no gettys, no
    # hardware units). `docker import` takes no STOPSIGNAL: run it with
    # --stop-signal SIGRTMIN+3, which makes systemd halt cleanly on `docker stop`.
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV container=docker' \
        --change 'CMD ["/sbin/init"]' \
        --change "LABEL org.lem-fleet.systemd=$HASH org.lem-fleet.suite=$SUITE" \
        --message "lem fleet test host: debootstrap $SUITE --variant=$VARIANT --include=$PACKAGES" \
        "$TARBALL" "$TAG" >/dev/null \
        || die "docker import of $TARBALL failed (is there free space where Docker keeps images? docker info shows its root dir)"
    docker tag "$TAG" "$REPO:latest"
}

if [ -s "$TARBALL" ]; then
    import_tarball
    echo "$TAG"
    exit 0
fi

# --- Cold build: debootstrap -------------------------------------------------------
[ "$(id -u)" -eq 0 ] \
    || die "the first build runs debootstrap, which needs root: run $SCRIPT once as root (e.g. sudo -E $SCRIPT); later builds reuse $TARBALL and need only docker"

avail_mb=$(df -Pm "$CACHE_DIR" | awk 'NR==2 {print $4}')
[ "${avail_mb:-0}" -ge "$NEED_MB" ] \
    || die "only ${avail_mb} MiB free in $CACHE_DIR; a cold build needs ${NEED_MB} MiB (free some space or set LEM_CACHE_DIR elsewhere)"

if ! command -v debootstrap >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 \
        || die "debootstrap is missing and there is no apt-get to install it (install debootstrap with your package manager)"
    say "installing debootstrap with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 \
            || die "could not install debootstrap with apt-get (is a Debian mirror reachable?)"
    fi
fi

WORK=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
cleanup() {
    for m in proc sys dev/pts dev; do
        mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && umount -l "$WORK/rootfs/$m" || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

say "debootstrap $SUITE --variant=$VARIANT --include=$PACKAGES from $MIRROR (a few minutes; log: $WORK/debootstrap.log)"
started=$(date +%s)
if ! debootstrap --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$WORK/rootfs" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/debootstrap.log" >&2
    [ -f "$WORK/rootfs/debootstrap/debootstrap.log" ] && tail -n 20 "$WORK/rootfs/debootstrap/debootstrap.log" >&2
    avail_mb=$(df -Pm "$CACHE_DIR" | awk 'NR==2 {print $4}')
    die "debootstrap failed (above; ${avail_mb} MiB free in $CACHE_DIR; is $MIRROR reachable? set LEM_DEBIAN_MIRROR for another mirror)"
fi
say "debootstrap took $(($(date +%s) - started)) s"

R="$WORK/rootfs"
# Units that have nothing to do in a container, or wait for hardware it lacks.
for unit in systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
    systemd-remount-fs.service getty.target console-getty.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$R/etc/systemd/system/$unit"
done
# The machine id is made at first boot, so every container gets its own.
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* \
    "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/var/log/*.log \
    "$R"/debootstrap
if ! tar --numeric-owner --one-file-system -C "$R" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$TARBALL.partial" .; then
    rm -f "$TARBALL.partial"
    die "cannot write $TARBALL ($(df -Pm "$CACHE_DIR" | awk 'NR==2 {print $4}') MiB free in $CACHE_DIR)"
fi
mv "$TARBALL.partial" "$TARBALL"
find "$CACHE_DIR" -maxdepth 1 -name "systemd-*.tar" ! -name "$(basename "$TARBALL")" -delete
say "root fs: $(du -m "$TARBALL" | cut -f1) MiB in $TARBALL"

import_tarball
say "built $TAG in $(($(date +%s) - started)) s"
echo "$TAG"
