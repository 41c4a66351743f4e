#!/usr/bin/env bash
# Builds the image of the Slurm test (tests/tests/slurm.rs) without any registry:
# debootstrap a minimal bookworm root file system with Debian's Slurm (slurmctld,
# slurmd, the client commands) and munge, then `docker import` it. The same recipe
# as docker/base-image.sh, with its own tag and cache:
#
#   * the image is tagged lem-fleet/slurm:<hash of this script and the architecture>
#     (and lem-fleet/slurm:latest); if that tag exists, nothing is done;
#   * the root file system is kept as a tarball in $LEM_CACHE_DIR (default
#     ${XDG_CACHE_HOME:-~/.cache}/lem-fleet), so a Docker whose images were removed
#     re-imports it in seconds, without root and without the network.
#
# Progress goes to stderr; the image tag is the last line of stdout, so
#   image=$(docker/slurm-image.sh | tail -n 1)
# works. Only a cold build needs root (debootstrap) and deb.debian.org (or
# $LEM_DEBIAN_MIRROR). See docs/testing.md.
#
# The image holds a single-node Slurm cluster's daemons and nothing else: no
# configuration (the test writes slurm.conf and gres.conf), no running services (the
# test starts munged, slurmctld and slurmd itself; there is no systemd), python3 for
# the worker's harness, procps. Binaries are not in the image: the test bind-mounts
# them read-only.
set -euo pipefail
# debootstrap and mountpoint live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

SUITE=bookworm
VARIANT=minbase
PACKAGES=python3,procps,ca-certificates,munge,slurmctld,slurmd,slurm-client
REPO=lem-fleet/slurm
# Free space a cold build needs in the cache dir (the root fs plus its tarball).
NEED_MB=1024

MIRROR="${LEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${LEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lem-fleet}"

say() { echo "slurm-image: $*" >&2; }
die() {
    echo "slurm-image: error: $*" >&2
    exit 1
}

# --- Docker ------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 \
    || die "docker is not installed (install Docker Engine: https://docs.docker.com/engine/install/debian/)"
if ! docker_err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
    die "cannot reach the Docker daemon: ${docker_err##*$'\n'} (is dockerd running? can $(id -un) use its socket, e.g. as a member of the docker group?)"
fi

# --- The tag: a hash of everything that decides the image's contents ---------------
# This script's code (comment and blank lines left out, so editing a comment does
# not cost a rebuild) and the architecture.
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
TARBALL="$CACHE_DIR/slurm-$SUITE-$HASH.tar"

# One build at a time per cache dir: a second caller waits, then finds the image.
exec 9>"$CACHE_DIR/slurm-image.lock"
if ! flock -n 9; then
    say "another slurm-image build is running (lock $CACHE_DIR/slurm-image.lock); waiting for it"
    flock 9
fi
present && exit 0

import_tarball() {
    say "importing $TARBALL as $TAG"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL org.lem-fleet.slurm=$HASH org.lem-fleet.suite=$SUITE" \
        --message "lem fleet slurm test image: debootstrap $SUITE --variant=$VARIANT --include=$PACKAGES" \
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

WORK=$(mktemp -d "$CACHE_DIR/slurm-build.XXXXXX")
cleanup() {
    # debootstrap mounts /proc and /sys in the root fs; never delete through a mount.
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
# Nothing of the build's own machine goes into the image: a munge key is made by the
# test in each container (a key in the image would be the same for everyone who
# imports the tarball), and the daemons' state starts empty.
rm -f "$R"/etc/munge/munge.key
rm -rf "$R"/var/lib/slurm/* "$R"/var/spool/slurmd/* "$R"/var/log/munge/* "$R"/var/log/slurm/*
# Trim what a container never reads: package caches, lists, documentation.
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* \
    "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/var/log/*.log \
    "$R"/debootstrap
# Docker provides /dev, /proc and /sys; the image carries them empty.
if ! tar --numeric-owner --one-file-system -C "$R" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$TARBALL.partial" .; then
    rm -f "$TARBALL.partial"
    die "cannot write $TARBALL ($(df -Pm "$CACHE_DIR" | awk 'NR==2 {print $4}') MiB free in $CACHE_DIR)"
fi
mv "$TARBALL.partial" "$TARBALL"
# Tarballs of older versions of this script are not needed any more.
find "$CACHE_DIR" -maxdepth 1 -name "slurm-*.tar" ! -name "$(basename "$TARBALL")" -delete
say "root fs: $(du -m "$TARBALL" | cut -f1) MiB in $TARBALL"

import_tarball
say "built $TAG in $(($(date +%s) - started)) s"
echo "$TAG"
