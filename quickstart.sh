#!/usr/bin/env bash
# Runs a real campaign end to end on this machine: builds lem fleet (release), then
# `lem-coord run examples/quickstart.yaml` with an embedded coordinator and two local
# workers. Without an NVIDIA GPU the workers use the labelled simulated GPU.
# Idempotent: re-running rebuilds only what changed and adds a new campaign to the
# same data dir (./lem-data). Extra arguments go to `lem-coord run`; with
# `--runtime docker` the harness image is built first (docker/images.sh, cached) and
# the local workers run it, unless --image names another.
set -euo pipefail
cd "$(dirname "$0")"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "quickstart: $1 is required ($2)" >&2; exit 1; }
}
need cargo "install Rust stable from https://rustup.rs"
need python3 "the experiment harness is Python 3.10+ (Debian: apt-get install python3)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || { echo "quickstart: python3 must be 3.10 or newer (found $(python3 --version))" >&2; exit 1; }

echo "==> building lem fleet (release)"
cargo build --release --locked -p lem-coord -p lem-worker
extra=()
docker_runtime=0
has_image=0
prev=""
for a in "$@"; do
    case "$a" in
        --runtime=docker) docker_runtime=1 ;;
        --image|--image=*) has_image=1 ;;
    esac
    [ "$prev" = "--runtime" ] && [ "$a" = "docker" ] && docker_runtime=1
    prev="$a"
done
if [ "$docker_runtime" = 1 ] && [ "$has_image" = 0 ]; then
    need docker "the docker runtime needs Docker Engine (Debian: apt-get install docker.io)"
    echo "==> building the harness image (docker/images.sh; cached)"
    image=$(docker/images.sh | tail -n 1)
    extra=(--image "$image")
fi
echo "==> running examples/quickstart.yaml"
exec ./target/release/lem-coord run examples/quickstart.yaml --local-workers 2 --data-dir lem-data "${extra[@]}" "$@"
