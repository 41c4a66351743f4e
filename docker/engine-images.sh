#!/usr/bin/env bash
# Builds lem fleet's engine images: the experiment harness on vLLM or TensorRT-LLM,
# each in its own image (pitfall 4: engines with conflicting PyTorch builds never
# share one), from docker/vllm/Dockerfile or docker/tensorrt/Dockerfile.
#
#   docker/engine-images.sh vllm|tensorrt [--base IMAGE]   # the full image
#   docker/engine-images.sh vllm|tensorrt --harness-only   # the layer CI can build
#
# Full image: FROM the upstream image with the pinned engine (vllm/vllm-openai:v0.19.1,
# nvcr.io/nvidia/tensorrt-llm/release:1.2.1; --base names another ref, e.g. one pinned
# by digest). Nothing is ever pulled (`docker build --pull=false --network none`):
# the base must be in the local image store, and the script says how to get it there
# when it is not. The build checks that the installed engine is exactly the pin.
# Tagged lem-fleet/ENGINE:VERSION-<hash of the inputs> and lem-fleet/ENGINE:VERSION.
#
# --harness-only: the same Dockerfile FROM lem-fleet/base (docker/base-image.sh,
# Debian, built without a registry) with the engine check off: the harness is
# installed, the engine import is guarded (the harness lists only the synthetic
# engine and refuses a vllm/tensorrt run with "... is not installed in this image").
# Tagged lem-fleet/ENGINE-harness-only:<hash> and :latest.
#
# Labels: org.lem-fleet.harness, .protocol (the worker checks it), .engine,
# .engine-pin (vllm==0.19.1), .engine-checked (1 for a full image), .inputs, .base,
# .base-digest (the base's repo digest when it has one, else its image id). The tag
# is the last line of stdout; the worker pins the image by its id (allowlist,
# docs/runtimes.md), so a rebuilt image must be allowed again.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HARNESS="$HERE/harness"

say() { echo "engine-images: $*" >&2; }
die() {
    echo "engine-images: error: $*" >&2
    exit 1
}

ENGINE="${1:-}"
shift || true
case "$ENGINE" in
vllm)
    PIN_NAME=vllm
    VERSION=0.19.1
    DEFAULT_BASE=vllm/vllm-openai:v0.19.1
    ;;
tensorrt)
    PIN_NAME=tensorrt-llm
    VERSION=1.2.1
    DEFAULT_BASE=nvcr.io/nvidia/tensorrt-llm/release:1.2.1
    ;;
*) die "usage: docker/engine-images.sh vllm|tensorrt [--base IMAGE | --harness-only]" ;;
esac
BASE="$DEFAULT_BASE"
HARNESS_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
    --base)
        BASE="${2:?--base needs an image}"
        shift 2
        ;;
    --harness-only)
        HARNESS_ONLY=1
        shift
        ;;
    *) die "unknown option $1" ;;
    esac
done
DOCKERFILE="$HERE/$ENGINE/Dockerfile"
[ -f "$DOCKERFILE" ] || die "no $DOCKERFILE"
grep -q "'$PIN_NAME==$VERSION'" "$DOCKERFILE" \
    || die "$DOCKERFILE does not check $PIN_NAME==$VERSION (keep the pins of this script, the Dockerfile and docker/harness/engines/*_logic.py equal)"

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "cannot reach the Docker daemon (is dockerd running? can $(id -un) use its socket?)"

if [ "$HARNESS_ONLY" = 1 ]; then
    BASE=$("$HERE/base-image.sh" | tail -n 1)
    [ -n "$BASE" ] || die "docker/base-image.sh printed no image tag"
    REPO="lem-fleet/$ENGINE-harness-only"
    CHECK=0
else
    REPO="lem-fleet/$ENGINE"
    CHECK=1
    if ! docker image inspect "$BASE" >/dev/null 2>&1; then
        die "the base image $BASE is not in the local image store, and this script never pulls. On a machine with access to its registry: docker pull $BASE && docker save $BASE | gzip > base.tar.gz; here: docker load < base.tar.gz; then run this script again (or --base IMAGE for another ref; --harness-only builds the layer that needs no NVIDIA image)"
    fi
fi
BASE_DIGEST=$(docker image inspect -f '{{if .RepoDigests}}{{index .RepoDigests 0}}{{else}}{{.Id}}{{end}}' "$BASE")

mapfile -t FILES < <(cd "$HARNESS" && find . -type f \
    ! -path './tests/*' ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort)
HVERSION=$(sed -n 's/^HARNESS_VERSION = "\(.*\)"$/\1/p' "$HARNESS/protocol.py")
PROTOCOL=$(sed -n 's/^PROTOCOL_VERSION = \([0-9]*\)$/\1/p' "$HARNESS/protocol.py")
[ -n "$HVERSION" ] && [ -n "$PROTOCOL" ] || die "cannot read the versions from $HARNESS/protocol.py"

SCRIPT="${BASH_SOURCE[0]}"
HASH=$( {
    grep -Ev '^[[:space:]]*(#|$)' "$SCRIPT"
    grep -Ev '^[[:space:]]*(#|$)' "$DOCKERFILE"
    echo "base=$BASE digest=$BASE_DIGEST check=$CHECK"
    (cd "$HARNESS" && sha256sum "${FILES[@]}")
} | sha256sum | cut -c1-12)
if [ "$HARNESS_ONLY" = 1 ]; then
    TAG="$REPO:$HASH"
    ALIAS="$REPO:latest"
else
    TAG="$REPO:$VERSION-$HASH"
    ALIAS="$REPO:$VERSION"
fi

present() {
    docker image inspect "$TAG" >/dev/null 2>&1 || return 1
    say "$TAG is present"
    docker tag "$TAG" "$ALIAS"
    echo "$TAG"
}
present && exit 0

CACHE_DIR="${LEM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lem-fleet}"
mkdir -p "$CACHE_DIR" || die "cannot create the cache dir $CACHE_DIR"
exec 9>"$CACHE_DIR/engine-images-$ENGINE.lock"
flock 9
present && exit 0

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lem-engine-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/harness"
(cd "$HARNESS" && cp --parents "${FILES[@]}" "$WORK/harness/")
chmod -R u=rwX,go=rX "$WORK/harness"
cp "$DOCKERFILE" "$WORK/Dockerfile"

say "building $TAG from $BASE ($BASE_DIGEST; harness $HVERSION, protocol $PROTOCOL, engine check $CHECK)"
started=$(date +%s)
if ! out=$(DOCKER_BUILDKIT=0 docker build --pull=false --network none -q -t "$TAG" \
    --build-arg "BASE=$BASE" --build-arg "CHECK_ENGINE=$CHECK" \
    --build-arg "HARNESS_VERSION=$HVERSION" --build-arg "PROTOCOL=$PROTOCOL" \
    --build-arg "INPUTS=$HASH" --build-arg "BASE_REF=$BASE" --build-arg "BASE_DIGEST=$BASE_DIGEST" \
    "$WORK" 2>&1); then
    echo "$out" >&2
    die "docker build of $TAG failed (above)"
fi
docker tag "$TAG" "$ALIAS"
say "built $TAG ($(docker image inspect -f '{{.Id}}' "$TAG")) in $(($(date +%s) - started)) s"
echo "$TAG"
