#!/usr/bin/env bash
# Builds docker/Dockerfile with podman on a Debian 12 machine that has no Docker engine and no access
# to image registries, then (with `test`) runs the image the way the Helm chart does and ships a core
# through it to a local S3 server.
#
#   docker/ci-image.sh build              # the amd64 image only
#   docker/ci-image.sh test               # build, then the smoke test (testkit/imagesmoke.py)
#   docker/ci-image.sh multiarch          # amd64 and arm64 images in one manifest list
#   docker/ci-image.sh multiarch-test     # multiarch, then the smoke test of the list's arm64 image
#
# The arm64 half is built and run under user-mode emulation: Debian's qemu-user-static, registered
# with the kernel's binfmt_misc (register_binfmt below), runs the arm64 base's programs. Only the
# steps that must run arm64 code are emulated: the receiver is cross-compiled by the host's Go and
# the arm64 wheels are downloaded by the host's pip.
#
# What is cached under $CDS_CACHE_DIR (default .cache/image) so that reruns are fast, per architecture:
#   - the debootstrap tarball of the base image (keyed by suite, architecture and package list),
#   - a wheelhouse with the pinned runtime dependencies (keyed by pyproject.toml + constraints.txt),
#   - podman's own layer cache (the dependency layer is rebuilt only when the pins change).
# The base images themselves stay in podman's storage; a build that finds one skips the tarball.
#
# Podman is configured through CONTAINERS_CONF pointing at a file in the cache directory: nothing
# under /etc changes and other podman users on the machine are unaffected.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-test}

CACHE=${CDS_CACHE_DIR:-$ROOT/.cache/image}
IMAGE=${CDS_IMAGE:-localhost/coredump-shipper:ci}
# The manifest list of the multiarch modes and its arm64 member.
IMAGE_LIST=${CDS_IMAGE_LIST:-localhost/coredump-shipper:ci-multiarch}
IMAGE_ARM64=${CDS_IMAGE_ARM64:-localhost/coredump-shipper:ci-arm64}
SUITE=bookworm
BASE_PACKAGES=python3-minimal,python3-venv
HOST_ARCH=$(dpkg --print-architecture)
# The build backend from pyproject.toml's [build-system], pinned so offline builds are reproducible.
SETUPTOOLS_VERSION=84.2.1
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

log() { printf '%s [ci-image] %s\n' "$(date +%T)" "$*" >&2; }
started=$(date +%s)

ensure_packages() {
  local missing=() extra=()
  for tool in podman buildah debootstrap runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [[ $MODE == multiarch* ]] && ! command -v qemu-aarch64-static >/dev/null; then
    missing+=(qemu-aarch64-static)
    extra+=(qemu-user-static)
  fi
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman buildah debootstrap runc uidmap slirp4netns containernetworking-plugins iptables \
      "${extra[@]}" >/dev/null
  fi
}

register_binfmt() {
  # What systemd-binfmt does at boot with qemu-user-static's own rule, for machines without systemd:
  # the kernel then runs arm64 programs (debootstrap's second stage, RUN steps, the container)
  # through qemu-aarch64-static. The rule's F flag opens the emulator once, here, so it also works
  # inside containers whose root has no emulator. Registered once per boot; left registered, as the
  # package does on systemd machines.
  local dir=/proc/sys/fs/binfmt_misc rule=/usr/lib/binfmt.d/qemu-aarch64.conf
  [[ -e $dir/qemu-aarch64 ]] && return
  [[ -e $dir/register ]] || mount -t binfmt_misc binfmt_misc "$dir"
  log "registering $(basename "$rule" .conf) with binfmt_misc"
  cat "$rule" >"$dir/register"
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

base_image() {  # the base image's name for an architecture; amd64's name predates the others
  if [[ $1 == "$HOST_ARCH" ]]; then
    echo "localhost/coredump-shipper-base:$SUITE"
  else
    echo "localhost/coredump-shipper-base:$SUITE-$1"
  fi
}

ensure_base_image() {  # $1: architecture
  local arch=$1 name suffix=""
  name=$(base_image "$arch")
  if podman image exists "$name"; then
    return
  fi
  [[ $arch == "$HOST_ARCH" ]] || suffix=-$arch
  local tarball="$CACHE/$SUITE$suffix-minbase-${BASE_PACKAGES//,/+}.tar"
  if [[ ! -s $tarball ]]; then
    local mirror rootfs
    mirror=$(debian_mirror) || exit 1
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap $SUITE ($arch) from $mirror"
    # A foreign architecture's second stage (the packages' maintainer scripts) runs in the chroot
    # through binfmt_misc and qemu: one debootstrap call, as for the host's own.
    debootstrap --arch="$arch" --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
      >"$CACHE/debootstrap$suffix.log" 2>&1 || { tail -n 30 "$CACHE/debootstrap$suffix.log"; exit 1; }
    # No package caches, lists or documentation in the base: the image never runs apt or man.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/log/*.log "$rootfs"/usr/share/{doc,man,info,locale}/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing base image from $tarball"
  podman import --quiet --arch "$arch" "$tarball" "$name" >/dev/null
}

ensure_wheelhouse() {  # $1: architecture
  # The build runs with --network=none, so every wheel the Dockerfile installs must be here. The base
  # has Debian 12's Python 3.11, like this machine, so the host's pip picks matching wheels; for
  # another architecture it is told the base's platform: CPython 3.11 and glibc 2.36, which takes
  # every manylinux wheel up to 2.36 (pip does not widen a --platform by itself). Measured: the
  # host's pip downloads the arm64 set in ~5 s; pip inside the emulated base took 163 s (56 s CPU).
  local arch=$1 key prefix=wheelhouse platform=()
  key=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [[ $arch != "$HOST_ARCH" ]]; then
    prefix=wheelhouse-$arch
    local machine=${arch/arm64/aarch64} glibc
    platform=(--implementation cp --python-version 3.11 --abi cp311 --platform "manylinux2014_$machine")
    for glibc in $(seq 17 36); do platform+=(--platform "manylinux_2_${glibc}_$machine"); done
  fi
  WHEELHOUSE=$CACHE/$prefix-$key
  if [[ -f $WHEELHOUSE/.complete ]]; then
    return
  fi
  log "downloading pinned wheels ($arch) into $WHEELHOUSE"
  # Older wheelhouses of this architecture only: another architecture's stays valid.
  find "$CACHE" -maxdepth 1 -regextype egrep -regex ".*/$prefix-[0-9a-f]{16}" -exec rm -rf {} +
  mkdir -p "$WHEELHOUSE"
  "$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    >"$WHEELHOUSE/requirements.txt"
  "$PYTHON" -m pip download --quiet --only-binary=:all: "${platform[@]}" --dest "$WHEELHOUSE" \
    -c constraints.txt -r "$WHEELHOUSE/requirements.txt" "setuptools==$SETUPTOOLS_VERSION" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  touch "$WHEELHOUSE/.complete"
}

build_image() {  # $1: architecture, $2: the image's name
  local arch=$1 image=$2 base version revision platform=() buildlog=$CACHE/build.log
  base=$(base_image "$arch")
  # Without --platform the host's own build is exactly what it was before multiarch builds existed.
  # BUILDPLATFORM (the receiver stage's platform) is automatic in BuildKit, not in Debian 12's
  # buildah 1.28, where it would be empty and the stage would look for an arm64 Go image.
  if [[ $arch != "$HOST_ARCH" ]]; then
    platform=(--platform "linux/$arch" --build-arg "BUILDPLATFORM=linux/$HOST_ARCH")
    buildlog=$CACHE/build-$arch.log
  fi
  version=$("$PYTHON" -c 'import re; print(re.search(r"__version__ = \"(.+?)\"", open("coredump_shipper/__init__.py").read()).group(1))')
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  log "building $image ($arch) from docker/Dockerfile on $base"
  local previous
  previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  local t0
  t0=$(date +%s)
  podman build --pull=never --network=none --layers "${ULIMITS[@]}" "${platform[@]}" \
    --file docker/Dockerfile \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS=/wheelhouse \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --volume "$WHEELHOUSE:/wheelhouse:ro" \
    --build-arg "GO_IMAGE=$(base_image "$HOST_ARCH")" \
    --build-arg "GO=$GO_ROOT/bin/go" \
    --volume "$GO_ROOT:$GO_ROOT:ro" \
    --volume "$GO_SHARE:$GO_SHARE:ro" \
    --tag "$image" . >"$buildlog" 2>&1 || { tail -n 40 "$buildlog"; exit 1; }
  log "built $image ($arch) in $(($(date +%s) - t0)) s, size $(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec)"
  # The image this build replaced only takes disk space. No `image prune`: it would also delete the
  # untagged build-stage layers that make the next build fast.
  if [[ -n $previous && $previous != "$(podman image inspect --format '{{.Id}}' "$image")" ]]; then
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

build_arch() {  # $1: architecture, $2: the image's name
  ensure_base_image "$1"
  ensure_wheelhouse "$1"
  build_image "$1" "$2"
}

make_manifest_list() {
  # Rebuilt on every run from the two images (a second): a list never points at a replaced image.
  podman manifest exists "$IMAGE_LIST" && podman manifest rm "$IMAGE_LIST" >/dev/null
  podman manifest create "$IMAGE_LIST" >/dev/null
  local image
  for image in "$IMAGE" "$IMAGE_ARM64"; do
    podman manifest add "$IMAGE_LIST" "containers-storage:$image" >/dev/null
  done
  log "manifest list $IMAGE_LIST: $(podman manifest inspect "$IMAGE_LIST" |
    "$PYTHON" -c 'import json, sys; print(", ".join(m["platform"]["os"] + "/" + m["platform"]["architecture"] for m in json.load(sys.stdin)["manifests"]))')"
}

case $MODE in
  build | test | multiarch | multiarch-test) ;;
  *) echo "usage: docker/ci-image.sh build|test|multiarch|multiarch-test" >&2; exit 2 ;;
esac
if [[ $MODE == multiarch* && $HOST_ARCH != amd64 ]]; then
  echo "docker/ci-image.sh $MODE: builds arm64 beside amd64 on an amd64 host, not on $HOST_ARCH" >&2
  exit 2
fi
ensure_packages
ensure_go
configure_podman
build_arch "$HOST_ARCH" "$IMAGE"
if [[ $MODE == multiarch* ]]; then
  register_binfmt
  build_arch arm64 "$IMAGE_ARM64"
  make_manifest_list
fi
case $MODE in
  test)
    log "smoke test"
    "$PYTHON" -m testkit.imagesmoke --image "$IMAGE"
    ;;
  multiarch-test)
    # The arm64 entry of the list, run under emulation; `test` is the amd64 image's smoke test.
    log "smoke test (arm64, emulated)"
    "$PYTHON" -m testkit.imagesmoke --image "$IMAGE_LIST" --arch arm64
    ;;
esac
log "done in $(($(date +%s) - started)) s"
