#!/usr/bin/env bash
# `make e2e`: the chart and the image on a real single-node Kubernetes, then proof that the machine
# is as it was.
#
#   e2e/run.sh                 # what `make e2e` runs; PYTEST_ARGS passes options to pytest
#   K8S_LAB_STRACE=1 e2e/run.sh   # the same under strace, then `cluster.sh netaudit`: fails unless
#                                 # every address the cluster and its pods used is loopback
#
# 1. the cluster binaries (e2e/cluster/build.sh build: ~12-16 min once, then cached outside the
#    clone under /var/cache/coredump-shipper, keyed on the source version and the build recipe);
# 2. the product image (docker/ci-image.sh build, the image job's own podman build), saved with
#    `podman save` and imported into the node's containerd;
# 3. `cluster.sh start` in a fresh temporary WORK directory, the scenarios in e2e/tests (pytest;
#    test_0_cluster.py checks the cluster itself first), the components' memory into the logs,
#    `cluster.sh stop` in a trap;
# 4. checks that nothing is left behind: no process of the run, no mount, no kubepods cgroup, no
#    created host directory, and the machine's kernel.core_pattern, core_pipe_limit and
#    fs.suid_dumpable as they were before the run.
#
# kernel.core_pattern is global to the machine and the scenarios change it (the chart's node setup):
# the run holds /tmp/cds-core-pattern.lock throughout, the lock every core_pattern change takes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# Everything this run starts (cluster, moto, the proxy, the pods through extraEnv) inherits it: no
# process may ask the EC2 metadata address (169.254.169.254, not loopback) for credentials.
export AWS_EC2_METADATA_DISABLED=true
CLUSTER=$ROOT/e2e/cluster/cluster.sh
BUILD=$ROOT/e2e/cluster/build.sh
IMAGE=${CDS_E2E_IMAGE:-localhost/coredump-shipper:e2e}
PY=$ROOT/.venv/bin/python
PATTERN=/proc/sys/kernel/core_pattern
PIPE_LIMIT=/proc/sys/kernel/core_pipe_limit
SUID_DUMPABLE=/proc/sys/fs/suid_dumpable
LOGS=$ROOT/.cache/e2e
# Mount points cluster.sh creates on the host when missing (its HOST_DIRS).
HOST_DIRS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers)

started=$(date +%s)
log() { printf '%s [e2e %4ss] %s\n' "$(date +%T)" "$(($(date +%s) - started))" "$*" >&2; }

# pgrep (the leftover check) comes with procps.
if ! command -v pgrep >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends procps >/dev/null
fi

exec 9>/tmp/cds-core-pattern.lock
flock -w 900 9 || { echo "e2e: another run holds /tmp/cds-core-pattern.lock" >&2; exit 1; }
saved_pattern=$(cat "$PATTERN")
# Pipe capture's node setup raises core_pipe_limit and sets suid_dumpable=2: machine-global as well.
saved_pipe_limit=$(cat "$PIPE_LIMIT")
saved_suid_dumpable=$(cat "$SUID_DUMPABLE")
# A killed earlier run may have left the node-setup pattern pointing into its temporary directory.
if [[ $saved_pattern == */cds-e2e.* ]]; then
  log "core_pattern $saved_pattern was left by a killed run: repairing it to 'core'"
  saved_pattern=core
  echo core >"$PATTERN"
  saved_pipe_limit=0
  echo 0 >"$PIPE_LIMIT"
  saved_suid_dumpable=0
  echo 0 >"$SUID_DUMPABLE"
fi
missing_dirs=()
for d in "${HOST_DIRS[@]}"; do [[ -e $d ]] || missing_dirs+=("$d"); done

rm -rf "$LOGS"
mkdir -p "$LOGS"
log "cluster binaries: $(bash "$BUILD" bindir)"
t=$(date +%s)
bash "$BUILD" build >"$LOGS/cluster-build.log" 2>&1 || { tail -n 30 "$LOGS/cluster-build.log" >&2; exit 1; }
log "cluster binaries ready in $(($(date +%s) - t)) s"

t=$(date +%s)
CDS_IMAGE=$IMAGE docker/ci-image.sh build
WORK=$(mktemp -d /tmp/cds-e2e.XXXXXX)
chmod 0755 "$WORK"
podman save --quiet --format docker-archive -o "$WORK/image.tar" "$IMAGE"
log "image $IMAGE built and saved in $(($(date +%s) - t)) s"

leftovers() {
  # Everything the run may leave behind, one line per finding; empty when the machine is clean.
  local d
  grep -F "$WORK" /proc/self/mountinfo | sed 's/^/mount: /' || true
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $d ]] && echo "cgroup: $d"
  done
  for d in "${missing_dirs[@]}"; do
    [[ -e $d ]] && echo "host directory: $d"
  done
  pgrep -a -f "$WORK" | grep -v "^$$ " | sed 's/^/process: /' || true
  [[ -n ${pytest_sid:-} ]] && { pgrep -a -s "$pytest_sid" | sed 's/^/test process: /' || true; }
  [[ $(cat "$PATTERN") == "$saved_pattern" ]] || echo "kernel.core_pattern: $(cat "$PATTERN") (was $saved_pattern)"
  [[ $(cat "$PIPE_LIMIT") == "$saved_pipe_limit" ]] || echo "kernel.core_pipe_limit: $(cat "$PIPE_LIMIT") (was $saved_pipe_limit)"
  [[ $(cat "$SUID_DUMPABLE") == "$saved_suid_dumpable" ]] || echo "fs.suid_dumpable: $(cat "$SUID_DUMPABLE") (was $saved_suid_dumpable)"
}

finish() {
  local status=$? found
  trap - EXIT INT TERM
  # RSS of each component after the scenarios, for the record (measured here, asserted nowhere).
  bash "$CLUSTER" mem "$WORK" >"$LOGS/cluster-mem.txt" 2>&1 || true
  log "stopping the cluster"
  bash "$CLUSTER" stop "$WORK" >"$LOGS/cluster-stop.log" 2>&1 || { status=1; cat "$LOGS/cluster-stop.log" >&2; }
  if [[ $(cat "$PATTERN") != "$saved_pattern" ]]; then
    log "restoring kernel.core_pattern: $(cat "$PATTERN") -> $saved_pattern"
    printf '%s\n' "$saved_pattern" >"$PATTERN"
  fi
  [[ $(cat "$PIPE_LIMIT") == "$saved_pipe_limit" ]] || echo "$saved_pipe_limit" >"$PIPE_LIMIT"
  [[ $(cat "$SUID_DUMPABLE") == "$saved_suid_dumpable" ]] || echo "$saved_suid_dumpable" >"$SUID_DUMPABLE"
  cp -r "$WORK/logs" "$LOGS/cluster-logs" 2>/dev/null || true
  cp -r "$WORK/log/pods" "$LOGS/pod-logs" 2>/dev/null || true
  if [[ ${K8S_LAB_STRACE:-0} == 1 ]]; then
    # Audit mode: every address the cluster's processes (and the pods, their children) connected,
    # sent or bound to must be loopback.
    if bash "$CLUSTER" netaudit "$WORK" >"$LOGS/netaudit.log" 2>&1; then
      log "netaudit: $(tail -n 1 "$LOGS/netaudit.log")"
    else
      status=1
      cat "$LOGS/netaudit.log" >&2
    fi
  fi
  found=$(leftovers)
  if [[ -n $found ]]; then
    echo "e2e: left behind after the run:" >&2
    echo "$found" >&2
    status=1
  else
    log "nothing left behind: no process, mount, kubepods cgroup or host directory; core_pattern '$saved_pattern', core_pipe_limit $saved_pipe_limit, suid_dumpable $saved_suid_dumpable"
  fi
  rm -rf "$WORK"
  log "done in $(($(date +%s) - started)) s (status $status; logs in $LOGS)"
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

t=$(date +%s)
bash "$CLUSTER" start "$WORK" >"$LOGS/cluster-start.log" 2>&1 || { tail -n 30 "$LOGS/cluster-start.log" >&2; exit 1; }
bash "$CLUSTER" import "$WORK" "$WORK/image.tar" >>"$LOGS/cluster-start.log" 2>&1
rm -f "$WORK/image.tar"
log "cluster up (node Ready) and image imported in $(($(date +%s) - t)) s"

# The scenarios run in a session of their own, so that the leftover check finds any process they
# started (moto, the fault proxy, kubectl logs -f) and did not stop.
t=$(date +%s)
set +e
CDS_E2E_WORK=$WORK CDS_E2E_BIN=$(bash "$BUILD" bindir) CDS_E2E_IMAGE=$IMAGE CDS_E2E_LOGS=$LOGS \
  CDS_E2E_SAVED_PATTERN=$saved_pattern CDS_E2E_SAVED_PIPE_LIMIT=$saved_pipe_limit \
  CDS_E2E_SAVED_SUID_DUMPABLE=$saved_suid_dumpable \
  setsid --wait "$PY" -m pytest -p no:cacheprovider --timeout 400 --durations 0 e2e/tests ${PYTEST_ARGS:-} &
pytest_sid=$!
wait "$pytest_sid"
status=$?
set -e
log "scenarios finished in $(($(date +%s) - t)) s (pytest status $status)"
exit "$status"
