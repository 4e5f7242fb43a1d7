#!/usr/bin/env bash
# Builds docker/Dockerfile with podman on a Debian 12 machine that has no Docker engine and no access
# to image registries, then (with `test`) runs the image the way the Helm chart does and ships a core
# through it to a local S3 server.
#
#   docker/ci-image.sh build     # image only
#   docker/ci-image.sh test      # build, then the smoke test (testkit/imagesmoke.py)
#
# What is cached under $CDS_CACHE_DIR (default .cache/image) so that reruns are fast:
#   - the debootstrap tarball of the base image (keyed by suite and package list),
#   - a wheelhouse with the pinned runtime dependencies (keyed by pyproject.toml + constraints.txt),
#   - podman's own layer cache (the dependency layer is rebuilt only when the pins change).
#
# Podman is configured through CONTAINERS_CONF pointing at a file in the cache directory: nothing
# under /etc changes and other podman users on the machine are unaffected.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-test}

CACHE=${CDS_CACHE_DIR:-$ROOT/.cache/image}
IMAGE=${CDS_IMAGE:-localhost/coredump-shipper:ci}
SUITE=bookworm
BASE_PACKAGES=python3-minimal,python3-venv
BASE_IMAGE=localhost/coredump-shipper-base:$SUITE
# The build backend from pyproject.toml's [build-system], pinned so offline builds are reproducible.
SETUPTOOLS_VERSION=84.2.1
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

log() { printf '%s [ci-image] %s\n' "$(date +%T)" "$*" >&2; }
started=$(date +%s)

ensure_packages() {
  local missing=()
  for tool in podman buildah debootstrap runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman buildah debootstrap runc uidmap slirp4netns containernetworking-plugins iptables \
      >/dev/null
  fi
}

configure_podman() {
  mkdir -p "$CACHE"
  # crun fails on this VM's cgroup setup; there is no systemd to manage cgroups nor a journal.
  # Ulimits must not exceed the hard limits of the calling shell, or every container fails to start.
  # podman's defaults raise nofile/nproc beyond what this (CAP_SYS_RESOURCE-less) root may set, and
  # podman build ignores default_ulimits for RUN steps, hence ULIMITS on its command line too.
  # nproc: runc fails here even at the shell's hard limit; 4096 is plenty for one service.
  local nofile
  nofile=$(ulimit -Hn)
  [[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
  ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=4096:4096")
  cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF=$CACHE/containers.conf
}

debian_mirror() {
  # The mirror this machine's apt already uses, so debootstrap needs no other network access;
  # DEBIAN_MIRROR overrides it. No guessed fallback: without one the build stops with one line.
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then
    echo "$DEBIAN_MIRROR"
  else
    python3 docker/debian_mirror.py --suite "$SUITE"
  fi
}

ensure_base_image() {
  if podman image exists "$BASE_IMAGE"; then
    return
  fi
  local tarball="$CACHE/$SUITE-minbase-${BASE_PACKAGES//,/+}.tar"
  if [[ ! -s $tarball ]]; then
    local mirror rootfs
    mirror=$(debian_mirror) || exit 1
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
      >"$CACHE/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap.log"; exit 1; }
    # No package caches, lists or documentation in the base: the image never runs apt or man.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/log/*.log "$rootfs"/usr/share/{doc,man,info,locale}/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing base image from $tarball"
  podman import --quiet "$tarball" "$BASE_IMAGE" >/dev/null
}

ensure_wheelhouse() {
  # The build runs with --network=none, so every wheel the Dockerfile installs must be here. The base
  # has Debian 12's Python 3.11, like this machine, so the host's pip picks matching wheels.
  local key
  key=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  WHEELHOUSE=$CACHE/wheelhouse-$key
  if [[ -f $WHEELHOUSE/.complete ]]; then
    return
  fi
  log "downloading pinned wheels into $WHEELHOUSE"
  rm -rf "$CACHE"/wheelhouse-*
  mkdir -p "$WHEELHOUSE"
  "$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$WHEELHOUSE/requirements.txt"
  "$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$WHEELHOUSE" \
    -c constraints.txt -r "$WHEELHOUSE/requirements.txt" "setuptools==$SETUPTOOLS_VERSION" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  touch "$WHEELHOUSE/.complete"
}

build_image() {
  local version revision
  version=$("$PYTHON" -c 'import re; print(re.search(r"__version__ = \"(.+?)\"", open("coredump_shipper/__init__.py").read()).group(1))')
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  log "building $IMAGE from docker/Dockerfile on $BASE_IMAGE"
  local previous
  previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  local t0
  t0=$(date +%s)
  podman build --pull=never --network=none --layers "${ULIMITS[@]}" \
    --file docker/Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS=/wheelhouse \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --volume "$WHEELHOUSE:/wheelhouse:ro" \
    --build-arg "GO_IMAGE=$BASE_IMAGE" \
    --build-arg "GO=$GO_ROOT/bin/go" \
    --volume "$GO_ROOT:$GO_ROOT:ro" \
    --volume "$GO_SHARE:$GO_SHARE:ro" \
    --tag "$IMAGE" . >"$CACHE/build.log" 2>&1 || { tail -n 40 "$CACHE/build.log"; exit 1; }
  log "built $IMAGE in $(($(date +%s) - t0)) s, size $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
  # The image this build replaced only takes disk space. No `image prune`: it would also delete the
  # untagged build-stage layers that make the next build fast.
  if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
}

ensure_go() {
  # The receiver's build stage runs the host's Debian Go toolchain, mounted read-only: the build
  # stays offline. Debian keeps the toolchain in /usr/lib/go-1.19 and its sources in /usr/share.
  if ! command -v go >/dev/null; then
    log "installing golang-go from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >/dev/null
  fi
  GO_ROOT=$(go env GOROOT)
  GO_ROOT=$(readlink -f "$GO_ROOT")
  GO_SHARE=$(readlink -f "$GO_ROOT/src/..")
}

ensure_packages
ensure_go
configure_podman
ensure_base_image
ensure_wheelhouse
build_image
if [[ $MODE == test ]]; then
  log "smoke test"
  "$PYTHON" -m testkit.imagesmoke --image "$IMAGE"
fi
log "done in $(($(date +%s) - started)) s"
