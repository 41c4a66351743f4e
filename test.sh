#!/usr/bin/env bash
# Runs the whole test suite: formatting, clippy, the Rust unit, integration and
# end-to-end tests (real processes on loopback), the across-hosts test (containers on
# a private Docker network, on the base image docker/base-image.sh builds without a
# registry), the docker runtime's tests (workers with --runtime docker, on the harness
# image docker/images.sh builds from the base image), the Slurm test (workers as
# Slurm jobs in a one-node cluster, on the image docker/slurm-image.sh builds from
# Debian's packages), the llem differential test
# against llem's own code (installed into .venv-llem from PyPI on first use), and the
# Python harness tests. Idempotent; CI runs exactly this (.ci/run). LEM_SKIP_DOCKER=1
# skips the tests that need Docker on a machine without it (never in CI). The report
# test renders lem-coord's HTML report in headless Chromium: Debian's `chromium` is
# installed on first use (apt-get, through sudo unless root); LEM_SKIP_CHROMIUM=1
# skips that render instead (never in CI). The metrics test scrapes the coordinator
# and a worker with a real Prometheus: Debian's `prometheus` is installed the same
# way; LEM_SKIP_PROMETHEUS=1 skips the scrape instead (never in CI). The Ansible test
# (tests/ansible/run.sh: ansible/site.yml applied to Debian containers with systemd,
# a campaign across them, applied again with nothing changed, ansible-lint) runs
# last; Debian's ansible and ansible-lint are installed the same way, and
# LEM_SKIP_DOCKER=1 skips it too. See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "test: $1 is required ($2)" >&2; exit 1; }
}
need cargo "install Rust stable from https://rustup.rs"
need python3 "the experiment harness and the llem oracle are Python 3.10+"

# The llem oracle (shared/llem/README.md): pinned, without llem's heavy runtime deps.
LLEM_SHARED="${LLEM_SHARED:-$(cd .. && pwd)/shared/llem}"
export LLEM_SHARED
if [ -d "$LLEM_SHARED" ]; then
    if ! .venv-llem/bin/python -c 'import llenergymeasure' >/dev/null 2>&1; then
        echo "==> installing the llem 0.7.0 oracle into .venv-llem"
        python3 -m venv .venv-llem
        .venv-llem/bin/pip install -q pydantic==2.14.4 PyYAML==6.0.4 platformdirs==4.14.8 numpy==2.4.6
        .venv-llem/bin/pip install -q --no-deps llenergymeasure==0.7.0
    fi
    export LEM_ORACLE_PYTHON="$PWD/.venv-llem/bin/python"
    # pyarrow reads back the parquet export in the results-format test.
    .venv-llem/bin/python -c 'import pyarrow' >/dev/null 2>&1 || .venv-llem/bin/pip install -q pyarrow==26.0.1
    export LEM_PYARROW_PYTHON="$PWD/.venv-llem/bin/python"
else
    echo "test: llem reference not found at $LLEM_SHARED (set LLEM_SHARED); the llem tests will fail" >&2
fi

# The images of the tests that need Docker: the base image (the across-hosts test) and
# the harness image on it (the docker runtime's tests); cached, so a no-op once built
# (docs/testing.md).
skip_docker=()
if [ "${LEM_SKIP_DOCKER:-}" = 1 ]; then
    echo "test: ************************************************************************" >&2
    echo "test: LEM_SKIP_DOCKER=1: SKIPPING the across-hosts test (containers on a Docker" >&2
    echo "test: network), the docker runtime's tests (docker_runtime_*), the Slurm test" >&2
    echo "test: (slurm_jobs_*) and the Ansible test (tests/ansible/run.sh). CI never sets" >&2
    echo "test: this; run them before you push Docker-facing or Ansible changes." >&2
    echo "test: ************************************************************************" >&2
    skip_docker=(-- --skip containers_across_hosts --skip docker_runtime --skip slurm_jobs)
else
    need docker "the across-hosts, docker runtime and Slurm tests run containers; install Docker Engine, or set LEM_SKIP_DOCKER=1 to skip those tests on this machine"
    echo "==> docker/images.sh (and docker/base-image.sh)"
    docker/images.sh
fi

# Headless Chromium for the report test (tests/tests/e2e/report.rs); a no-op once
# installed.
if [ "${LEM_SKIP_CHROMIUM:-}" = 1 ]; then
    echo "test: ************************************************************************" >&2
    echo "test: LEM_SKIP_CHROMIUM=1: the report test will NOT render the HTML report in" >&2
    echo "test: Chromium (it still writes and checks the file). CI never sets this." >&2
    echo "test: ************************************************************************" >&2
elif ! command -v chromium >/dev/null 2>&1; then
    need apt-get "the report test renders the HTML report in headless Chromium; install Debian's chromium package, or set LEM_SKIP_CHROMIUM=1 to skip the render on this machine"
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        need sudo "installing chromium needs root: run \`apt-get install chromium\` as root, or set LEM_SKIP_CHROMIUM=1"
        sudo=(sudo)
    fi
    echo "==> installing chromium (the report test renders the HTML report headless)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Prometheus for the metrics test (tests/tests/e2e/metrics.rs); a no-op once
# installed.
if [ "${LEM_SKIP_PROMETHEUS:-}" = 1 ]; then
    echo "test: ************************************************************************" >&2
    echo "test: LEM_SKIP_PROMETHEUS=1: the metrics test will NOT scrape lem-coord and" >&2
    echo "test: lem-worker with Prometheus (it still reads /metrics itself). CI never sets" >&2
    echo "test: this." >&2
    echo "test: ************************************************************************" >&2
elif ! command -v prometheus >/dev/null 2>&1; then
    need apt-get "the metrics test scrapes lem-coord with a real Prometheus; install Debian's prometheus package, or set LEM_SKIP_PROMETHEUS=1 to skip the scrape on this machine"
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        need sudo "installing prometheus needs root: run \`apt-get install prometheus\` as root, or set LEM_SKIP_PROMETHEUS=1"
        sudo=(sudo)
    fi
    echo "==> installing prometheus (the metrics test scrapes the coordinator and a worker)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # The server alone: the test starts it itself, and the node exporter it
    # recommends is not needed.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Ansible and ansible-lint for the Ansible test (tests/ansible/run.sh); a no-op once
# installed. Debian's ansible brings the community.docker collection the test
# connects to its containers with.
if [ "${LEM_SKIP_DOCKER:-}" != 1 ] \
    && ! { command -v ansible-playbook && command -v ansible-lint; } >/dev/null 2>&1; then
    need apt-get "the Ansible test applies ansible/site.yml; install Debian's ansible and ansible-lint packages, or set LEM_SKIP_DOCKER=1 to skip the tests that need Docker"
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        need sudo "installing ansible needs root: run \`apt-get install ansible ansible-lint\` as root, or set LEM_SKIP_DOCKER=1"
        sudo=(sudo)
    fi
    echo "==> installing ansible and ansible-lint (the Ansible test)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ansible ansible-lint >/dev/null
fi

# The Slurm and Ansible tests' images (docker/slurm-image.sh, docker/systemd-image.sh)
# build in the background while formatting, clippy and the harness tests run: a cold
# build is mostly downloading and unpacking packages (about 5 and 3 minutes here),
# which would otherwise add to the run. Started after the apt-get installs above
# (the scripts install debootstrap with apt-get if it is missing); `cargo test`
# waits for them. Cached, so a no-op once built.
images_pid=
if [ "${LEM_SKIP_DOCKER:-}" != 1 ]; then
    images_log=$(mktemp)
    echo "==> docker/slurm-image.sh and docker/systemd-image.sh, in the background (log: $images_log)"
    (docker/slurm-image.sh && docker/systemd-image.sh) >"$images_log" 2>&1 &
    images_pid=$!
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> python harness tests"
python3 -m unittest discover -s docker/harness/tests
if [ -n "$images_pid" ]; then
    echo "==> waiting for docker/slurm-image.sh and docker/systemd-image.sh"
    if ! wait "$images_pid"; then
        cat "$images_log" >&2
        echo "test: building the Slurm or the Ansible test's image failed (its log is above)" >&2
        exit 1
    fi
    grep -E '^(slurm|systemd)-image: ' "$images_log" | tail -n 4 >&2 || true
    rm -f "$images_log"
fi
echo "==> cargo test"
cargo test --locked --workspace "${skip_docker[@]}"
if [ "${LEM_SKIP_DOCKER:-}" = 1 ]; then
    echo "test: LEM_SKIP_DOCKER=1: SKIPPING the Ansible test (tests/ansible/run.sh)" >&2
else
    echo "==> ansible test (tests/ansible/run.sh)"
    tests/ansible/run.sh
fi
