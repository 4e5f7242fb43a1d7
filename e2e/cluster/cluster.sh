#!/usr/bin/env bash
# A REAL single-node Kubernetes v1.20.2 cluster on loopback, built only from Debian 12
# packages (no image registry, no GitHub, no docker engine):
#   etcd 3.4.23 (etcd-server) + kube-apiserver/-controller-manager/-scheduler/kubelet/
#   kubectl v1.20.2 built from the Debian SOURCE package `kubernetes` with golang-go 1.19
#   + containerd 1.6.20 + runc 1.1.5 (Debian) + pause/busybox images built locally
#   (gcc -static pause.c, busybox-static) and imported with `ctr images import`.
# This script runs the cluster; build.sh builds and caches its parts (once), and the checks that
# the cluster works as a node should (probes, logs, exec, SA tokens, restarts, helm) are
# e2e/tests/test_0_cluster.py, the first scenario of `make e2e`.
#
# usage: cluster.sh start WORKDIR      build if needed, start everything, wait for node Ready (~20 s)
#        cluster.sh stop  WORKDIR      stop every process it started, by PID; no mounts left
#        cluster.sh import WORKDIR IMAGE.tar   import an OCI/docker archive into the node
#        cluster.sh env   WORKDIR      print `export KUBECONFIG=... PATH=...`
#        cluster.sh mem   WORKDIR      RSS of each component
#        cluster.sh netaudit WORKDIR   after K8S_LAB_STRACE=1 start, the scenarios and stop: every IP
#                                      address connected/sent/bound to (strace -f)
#        cluster.sh build | build-apiserver | apiserver | bindir | key
#                                      passed to build.sh (its header says what each does)
# A second `start` on the same WORKDIR restarts the cluster with its state (etcd, pki, pods).
# env:   K8S_LAB_CACHE (default: see build.sh)  binaries, images, helm
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
# The build (build.sh): its cache paths ($CACHE, its key), the image names and the logging helpers.
# shellcheck source=e2e/cluster/build.sh
. "$HERE/build.sh"
API_IP=${K8S_LAB_API_IP:-127.100.0.1}
API_PORT=${K8S_LAB_API_PORT:-443}
EPORT=${K8S_LAB_ETCD_PORT:-12379}
KPORT=${K8S_LAB_KUBELET_PORT:-10250}
KHPORT=${K8S_LAB_KUBELET_HEALTHZ_PORT:-10248}
NODE=${K8S_LAB_NODE:-lab-node}
SVC_CIDR=${API_IP%.*}.0/24
[ "${API_IP##*.}" = 1 ] || { echo "K8S_LAB_API_IP must end in .1 (first IP of the service range)" >&2; exit 2; }
# hardcoded host paths: mountpoints (created empty if missing, removed by stop) for
# tmpfs/bind mounts that exist only inside the node mount namespace
HOST_DIRS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers)

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
  bash "$HERE/build.sh" build > "$CACHE/last-build.log" 2>&1 || { cat "$CACHE/last-build.log" >&2; exit 1; }
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

case "${1:-}" in
  build|build-apiserver|apiserver|bindir|key) exec bash "$HERE/build.sh" "$@" ;;
  start|stop|env|mem|netaudit|_node)
    [ -n "${2:-}" ] || { echo "usage: $0 $1 WORKDIR" >&2; exit 2; }
    mkdir -p "$2"; WORK=$(cd "$2" && pwd)
    case $1 in start) cmd_start ;; stop) cmd_stop ;; env) cmd_env ;; mem) cmd_mem ;; netaudit) cmd_netaudit ;; _node) node_ns ;; esac ;;
  import)
    WORK=$(cd "${2:?WORKDIR}" && pwd); CTR images import "${3:?IMAGE.tar}" ;;
  *) sed -n '2,/^set -euo pipefail$/p' "$SELF" | sed '$d' >&2; exit 2 ;;
esac
