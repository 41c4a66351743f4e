#!/usr/bin/env bash
# Builds lem fleet's harness image without any registry: FROM the local base image
# (docker/base-image.sh, called first), the harness files of docker/harness/ copied to
# /opt/lem/harness. Idempotent and cached:
#
#   * the image is tagged lem-fleet/harness:<hash of its inputs> (and
#     lem-fleet/harness:latest); the inputs are this script's code, the base image's
#     tag and every harness file; if that tag exists, nothing is built;
#   * `docker build --pull=false`: the base image is local, and no registry is ever
#     asked (the build machines have none).
#
# Progress goes to stderr; the image tag is the last line of stdout, so
#   image=$(docker/images.sh | tail -n 1)
# works. The worker runs it with `lem-worker --runtime docker --image TAG` once the
# image's id is on its allowlist (docs/runtimes.md).
#
# The image holds the harness (server, client, engines, the built-in aienergyscore
# prompt set) and nothing of the worker. Its labels carry the harness and protocol
# versions (org.lem-fleet.harness, org.lem-fleet.protocol) and the inputs' hash.
set -euo pipefail

REPO=lem-fleet/harness
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HARNESS="$HERE/harness"

say() { echo "images: $*" >&2; }
die() {
    echo "images: error: $*" >&2
    exit 1
}

# --- The base image (cached; it checks Docker and says what is wrong) ---------------
BASE=$("$HERE/base-image.sh" | tail -n 1)
[ -n "$BASE" ] || die "docker/base-image.sh printed no image tag"

# --- The harness files: everything the server imports, without tests and caches ---
# Sorted, so the hash does not depend on the directory's order.
mapfile -t FILES < <(cd "$HARNESS" && find . -type f \
    ! -path './tests/*' ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort)
[ -f "$HARNESS/server.py" ] && [ -f "$HARNESS/client.py" ] \
    || die "$HARNESS has no server.py/client.py (run this script from a lem fleet checkout)"

VERSION=$(sed -n 's/^HARNESS_VERSION = "\(.*\)"$/\1/p' "$HARNESS/protocol.py")
PROTOCOL=$(sed -n 's/^PROTOCOL_VERSION = \([0-9]*\)$/\1/p' "$HARNESS/protocol.py")
[ -n "$VERSION" ] && [ -n "$PROTOCOL" ] \
    || die "cannot read HARNESS_VERSION/PROTOCOL_VERSION from $HARNESS/protocol.py"

# --- The tag: a hash of everything that decides the image's contents ---------------
# This script's code (comment and blank lines left out), the base tag (itself a hash
# of the base's inputs) and each harness file's path and content.
SCRIPT="${BASH_SOURCE[0]}"
HASH=$( {
    grep -Ev '^[[:space:]]*(#|$)' "$SCRIPT"
    echo "base=$BASE"
    (cd "$HARNESS" && sha256sum "${FILES[@]}")
} | sha256sum | cut -c1-12)
TAG="$REPO:$HASH"

present() {
    docker image inspect "$TAG" >/dev/null 2>&1 || return 1
    say "$TAG is present"
    docker tag "$TAG" "$REPO:latest"
    echo "$TAG"
}
present && exit 0

# One build at a time per cache dir (parallel tests call this script at once): a
# second caller waits, then finds the image.
CACHE_DIR="${LEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lem-fleet}"
mkdir -p "$CACHE_DIR" || die "cannot create the cache dir $CACHE_DIR (set LEM_CACHE_DIR to a writable directory)"
exec 9>"$CACHE_DIR/images.lock"
if ! flock -n 9; then
    say "another image build is running (lock $CACHE_DIR/images.lock); waiting for it"
    flock 9
fi
present && exit 0

# --- Build: a context holding only the harness files, readable by any user ---------
# (the worker runs the container as its own uid, which owns none of these files).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lem-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/harness"
(cd "$HARNESS" && cp --parents "${FILES[@]}" "$WORK/harness/")
chmod -R u=rwX,go=rX "$WORK/harness"
cat >"$WORK/Dockerfile" <<EOF
FROM $BASE
COPY harness/ /opt/lem/harness/
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
LABEL org.lem-fleet.harness="$VERSION" \\
      org.lem-fleet.protocol="$PROTOCOL" \\
      org.lem-fleet.inputs="$HASH" \\
      org.lem-fleet.base="$BASE"
CMD ["python3", "/opt/lem/harness/server.py", "--help"]
EOF

say "building $TAG from $BASE (harness $VERSION, protocol $PROTOCOL, ${#FILES[@]} files)"
started=$(date +%s)
# The legacy builder: it needs no BuildKit and takes FROM from the local image store.
if ! out=$(DOCKER_BUILDKIT=0 docker build --pull=false --network none -q -t "$TAG" "$WORK" 2>&1); then
    echo "$out" >&2
    die "docker build of $TAG failed (above)"
fi
docker tag "$TAG" "$REPO:latest"
say "built $TAG ($(docker image inspect -f '{{.Id}}' "$TAG")) in $(($(date +%s) - started)) s"
echo "$TAG"
