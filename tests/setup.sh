#!/usr/bin/env bash
# Everything the test suite needs beyond the venv: `make test` runs this first (`make test-deps` alone).
#
#   tests/setup.sh           check every part; as root, install what is missing, then check again
#   tests/setup.sh --check   check only: one line per missing part, exit 1 if any is missing
#   tests/setup.sh --list    the parts, one a line: name, check, set-up, why (tab-separated)
#
# Quick and silent when everything is there (one test per part). Without root nothing that needs root
# is installed: each missing part gets one line saying what is missing, why the tests need it and
# what to run, and the exit status is 1, so `make test` never runs with a part of the suite skipped
# for want of set-up.
#
# To add a part, add one `part` line to parts() below. Debian packages need nothing more: check them
# with `have COMMAND...` and every missing package goes into one apt-get run (tests/tooling/test_setup.py
# reads the list and covers a new line as it is). Any other set-up is a command (prefixed `root` when
# it needs root); its check is a function below that prints why the part is missing and fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

parts() {
  #    name           present when                set up by                   what needs it (tests/...)
  part go             "have go"                   "apt golang-go"             "the Go pipe receiver (make receiver): capture/test_receiver, kernel/test_pipe_capture"
  part qemu           "have qemu-aarch64-static"  "apt qemu-user-static"     "the arm64 receiver's tests under emulation: capture/test_receiver"
  part util-linux     "have unshare setpriv"      "apt util-linux"            "namespaces and uid changes: kernel/test_pipe_capture"
  part gdb            "have gdb gcore"            "apt gdb"                   "gcore cores and the gdb walkthrough: core/test_elfcore, browse/test_browse, test_walkthrough"
  part prometheus     "have promtool prometheus"  "apt prometheus"            "the chart's alert rules: chart/test_alerts (promtool), chart/test_alerts_live (server)"
  part swift          "have $SWIFT_COMMANDS"      "apt $SWIFT_PACKAGES"       "OpenStack Swift s3api in the S3 compatibility matrix: system/test_matrix, s3/test_s3_servers"
  part ceph           "have $CEPH_COMMANDS"       "apt $CEPH_PACKAGES"        "Ceph's RADOS Gateway in the S3 compatibility matrix: system/test_matrix"
  part etcd           "have etcd openssl"         "apt etcd-server openssl"   "the Kubernetes API server's store: kube/test_kube"
  part helm           "helm_present"              "fetch_helm"                "rendering the chart: chart/test_chart, chart/test_alerts"
  part kube-apiserver "apiserver_present"         "root build_apiserver"      "kube/test_kube (built once from Debian's source, ~6 min, cached in /var/cache/coredump-shipper)"
  part core-pattern   "plain_core_pattern"        "root repair_core_pattern"  "real kernel cores written into the crashing process's directory: most core tests"
}

SWIFT_COMMANDS="swift-proxy-server swift-object-server swift-container-server swift-account-server swift-ring-builder memcached"
SWIFT_PACKAGES="swift swift-proxy swift-object swift-container swift-account memcached"
CEPH_COMMANDS="ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool"
CEPH_PACKAGES="ceph-mon ceph-osd radosgw ceph-common"
# The machine's files; tests/tooling/test_setup.py points these elsewhere.
CORE_PATTERN=${CDS_CORE_PATTERN:-/proc/sys/kernel/core_pattern}
POLICY_RC_D=${CDS_POLICY_RC_D:-/usr/sbin/policy-rc.d}
CORE_PATTERN_LOCK=${CDS_CORE_PATTERN_LOCK:-/tmp/cds-core-pattern.lock}  # testkit/receiver.py's, for every change

# ---------------------------------------------------------------------------- checks
# Each prints why the part is missing (one phrase) and fails, or succeeds silently.
have() {
  local tool absent=()
  for tool in "$@"; do command -v "$tool" >/dev/null || absent+=("$tool"); done
  [ ${#absent[@]} -eq 0 ] || { echo "${absent[*]} not found"; return 1; }
}

helm_path() {  # where tests/chart/test_chart.py looks, in its order
  local candidate
  for candidate in "${HELM:-}" "$ROOT/.cache/tools/helm"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return 0; }
  done
  command -v helm
}

helm_present() { helm_path >/dev/null || { echo "no helm in .cache/tools, \$HELM or PATH"; return 1; }; }

apiserver_present() {
  local path
  path=$(bash e2e/cluster/build.sh apiserver)
  [ -x "$path" ] || { echo "$path not built"; return 1; }
}

is_plain() { [[ $1 != \|* && $1 != */* ]]; }

plain_core_pattern() {
  local pattern
  pattern=$(cat "$CORE_PATTERN")
  is_plain "$pattern" && return 0
  # A test (or make e2e) may be using another pattern right now: look again once it is done.
  lock_core_pattern
  pattern=$(cat "$CORE_PATTERN")
  flock -u 8
  is_plain "$pattern" && return 0
  echo "kernel.core_pattern is '$pattern', not a plain file name such as 'core'; if it is this machine's" \
    "own, set one while testing: sysctl -w kernel.core_pattern=core"
  return 1
}

lock_core_pattern() {  # fd 8: the lock every change of core_pattern takes (testkit/receiver.py, e2e/run.sh)
  { exec 8<>"$CORE_PATTERN_LOCK" || exec 8<"$CORE_PATTERN_LOCK"; } 2>/dev/null || return 0
  flock -w 1 8 && return 0
  echo "test set-up: waiting for $CORE_PATTERN_LOCK (a test or make e2e is changing kernel.core_pattern)" >&2
  flock 8
}

# ---------------------------------------------------------------------------- set-up commands
fetch_helm() {  # into .cache/tools; needs no root
  PYTHON=$ROOT/.venv/bin/python charts/tools/fetch-helm.sh 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) >/dev/null
}

build_apiserver() {  # cached outside the clone, shared by every clone on the machine
  bash e2e/cluster/build.sh build-apiserver
}

repair_core_pattern() {
  # A run killed while a test had the pattern pointing into its temporary directory (or piping to a
  # helper there, or to one since removed) left it so: put back 'core'. Under the tests' lock, so a
  # test that has changed it right now is waited for rather than undone. Any other pattern is the
  # machine's own choice (systemd-coredump, apport): it is left alone and the check says why.
  local pattern helper
  lock_core_pattern
  pattern=$(cat "$CORE_PATTERN")
  helper=${pattern#|}
  helper=${helper%% *}
  if [[ $pattern == /tmp/* || $pattern == "|/tmp/"* || ($pattern == \|* && ! -x $helper) ]]; then
    echo core >"$CORE_PATTERN"
    echo "test set-up: kernel.core_pattern was '$pattern', left by a killed test run: restored to 'core'"
  fi
  flock -u 8
}

apt_install() {  # every missing Debian package in one run; the packages' services are not started
  local policy=$POLICY_RC_D created=0 log
  log=$(mktemp /tmp/cds-test-setup-apt.XXXXXX)
  if [ ! -e "$policy" ]; then
    # exit 101: postinst scripts must not start memcached, etcd, prometheus, swift or ceph system-wide
    # (tests start their own on loopback, and such services would outlive the run).
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
    trap 'rm -f "$POLICY_RC_D"' EXIT  # also when interrupted: it would stop every service for good
  fi
  local ok=0
  {
    flock /tmp/apt.lock apt-get -o DPkg::Lock::Timeout=900 update -q &&
      flock /tmp/apt.lock env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 \
        install -y -q --no-install-recommends "$@"
  } >"$log" 2>&1 || ok=$?
  [ $created = 0 ] || { rm -f "$policy"; trap - EXIT; }
  if [ $ok != 0 ]; then
    tail -n 20 "$log" >&2
    echo "test set-up: apt-get install $* failed (log: $log)" >&2
    return 1
  fi
  rm -f "$log"
}

# ---------------------------------------------------------------------------- driver
NAMES=() SETUPS=() WHYS=() REASONS=()
part() {
  local reason
  if ! reason=$(eval "$2"); then
    NAMES+=("$1") SETUPS+=("$3") WHYS+=("$4") REASONS+=("$reason")
  fi
}

hint() {  # what a person runs to set the part up
  case $1 in
    apt\ *) echo "apt-get install --no-install-recommends ${1#apt }, as root (or: sudo make test-deps)" ;;
    root\ *) echo "sudo make test-deps" ;;
    *) echo "make test-deps" ;;
  esac
}

report_missing() {  # one line per part still missing; returns 1 if any. $1: the set-up ran as root
  local i run
  for i in "${!NAMES[@]}"; do
    run=". Run: $(hint "${SETUPS[$i]}")"
    [ "${1:-}" != ran ] || run=" (the set-up could not do it)"
    echo "make test: ${NAMES[$i]} missing (${REASONS[$i]}), needed for ${WHYS[$i]}$run" >&2
  done
  [ ${#NAMES[@]} -eq 0 ]
}

needs_root() { [[ $1 == apt\ * || $1 == root\ * ]]; }

main() {
  local mode=${1:-install} started i setup packages=() for=()
  started=$(date +%s)
  case $mode in install | --check | --list) ;; *) echo "usage: tests/setup.sh [--check|--list]" >&2; return 2 ;; esac
  if [ "$mode" = --list ]; then
    part() { printf '%s\t%s\t%s\t%s\n' "$@"; }
    parts
    return
  fi
  parts
  [ ${#NAMES[@]} -gt 0 ] || return 0
  [ "$mode" != --check ] || { report_missing; return; }
  local root=0
  [ "$(id -u)" -ne 0 ] || root=1
  for i in "${!NAMES[@]}"; do
    setup=${SETUPS[$i]}
    if [[ $setup == apt\ * && $root = 1 ]]; then
      # shellcheck disable=SC2206  # a list of package names
      packages+=(${setup#apt })
      for+=("${NAMES[$i]}")
    fi
  done
  if [ ${#packages[@]} -gt 0 ]; then
    echo "test set-up: apt-get install ${packages[*]} (for ${for[*]})"
    apt_install "${packages[@]}"
  fi
  for i in "${!NAMES[@]}"; do
    setup=${SETUPS[$i]}
    [[ $setup != apt\ * ]] && { [ $root = 1 ] || ! needs_root "$setup"; } || continue
    echo "test set-up: ${NAMES[$i]} (${REASONS[$i]}), needed for ${WHYS[$i]}"
    ${setup#root } || { echo "make test: setting up ${NAMES[$i]} failed (${setup#root }: see above)" >&2; return 1; }
  done
  # Check again: what is still missing (as a user: what needs root) is reported, one line each.
  NAMES=() SETUPS=() WHYS=() REASONS=()
  parts
  [ $root = 0 ] || { echo "test set-up: done in $(($(date +%s) - started)) s"; report_missing ran; return; }
  report_missing
}

main "$@"
