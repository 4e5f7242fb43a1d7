#!/bin/sh
# coredump-node-setup: install or undo pipe capture on one node. Plain POSIX sh, so the copy left on
# the node (RECEIVER_DIR/coredump-node-setup) runs there without the image.
#
#   coredump-node-setup install   # as the chart's privileged init container does (pipe mode)
#   coredump-node-setup restore   # as the chart's pre-delete hook does: put the node back
#
# install: checks that the kernel can execute the receiver from RECEIVER_DIR (refuses with exit 2 and
# one line otherwise, before anything changes), saves the node's kernel.core_pattern,
# kernel.core_pipe_limit and fs.suid_dumpable (unless the pattern is already one of ours, so a
# re-install, a move of RECEIVER_DIR or a switch from file mode never saves our own line), copies the
# receiver in with an atomic rename (the kernel may be running the old one), gives CORE_DIR to the
# shipper (0700), then writes the three settings.
#
# restore: writes the saved values back (never one of our own lines), then removes the receiver, the
# saved values and this script from RECEIVER_DIR. Run twice, the second run changes nothing.
#
# CAPTURE_MODE=socket|auto (socket capture, docs/socket-capture.md): install does all of the above
# (the pipe line stays the fallback whenever the socket server is down), leaves the line in
# RECEIVER_DIR/pipe-core_pattern for the server and makes the socket's directory (root, 0755).
# auto picks socket where kernel.core_modes lists it, pipe elsewhere, and logs the choice.
set -eu
STATE=${RECEIVER_DIR:-/var/lib/coredump-shipper}
HELPER=$STATE/coredump-receive
SYSCTL=${SYSCTL_ROOT:-/proc/sys}
SOURCE=${RECEIVER_SOURCE:-/usr/local/lib/coredump-shipper/coredump-receive}
SOCKET=${SOCKET_PATH:-/run/coredump-shipper/coredump.sock}
OS_RELEASE=${HOST_OS_RELEASE:-/host/etc/os-release}
# Every sysctl install changes, in the order restore writes them back (the pattern last: it is what
# makes the kernel run a helper). The saved copies are STATE/saved-<name> (the name after the slash).
SETTINGS="fs/suid_dumpable kernel/core_pipe_limit kernel/core_pattern"
# The chart's file-mode pattern in its default shape, in whatever coreDirectory.path.
FILE_SHAPE='/*/core.%h.%e.sig%s.%p.%t'

ours() {  # ours PATTERN: true for every core_pattern this chart sets or ever set
  case "$1" in
    "|"*/coredump-receive | "|"*"/coredump-receive "*) return 0 ;;  # pipe mode, any receiverDirectory
    "@@$SOCKET" | "@@"*/coredump.sock) return 0 ;;  # socket mode (claimed by the chart's server)
  esac
  # File mode: the chart's pattern (FILE_PATTERN is nodeSetup.corePattern), or its default shape.
  if [ -n "${FILE_PATTERN:-}" ] && [ "$1" = "$FILE_PATTERN" ]; then return 0; fi
  # shellcheck disable=SC2254  # FILE_SHAPE is a glob on purpose
  case "$1" in $FILE_SHAPE) return 0 ;; esac
  return 1
}

refuse() {  # refuse MESSAGE: one line, exit 2, nothing on the node changed
  echo "capture.receiverDirectory: $1" >&2
  exit 2
}

# A directory the kernel can execute a helper from on this node's OS: from the host's os-release when
# it is at HOST_OS_RELEASE, else from the kernel's release (a container shares the host's kernel):
# Flatcar and Talos tag it, COS kernels end in "+".
suggest() {
  id=$(sed -n 's/^ID=//p' "$OS_RELEASE" 2>/dev/null | tr -d '"') || id=
  if [ -z "$id" ]; then
    case "$(uname -r)" in
      *-flatcar*) id=flatcar ;;
      *-talos*) id=talos ;;
      *+) id=cos ;;
    esac
  fi
  case "$id" in
    cos) echo "use /home/kubernetes/bin/coredump-shipper (the only executable writable directory on Container-Optimized OS)" ;;
    flatcar) echo "use /opt/bin/coredump-shipper (Flatcar's directory for extra executables)" ;;
    talos | bottlerocket) echo "pipe capture cannot work on $id (no writable directory the kernel may execute from): set capture.mode=file" ;;
    *) echo "use a directory on an executable, writable filesystem, e.g. /var/lib/coredump-shipper (/home/kubernetes/bin/coredump-shipper on GKE COS, /opt/bin/coredump-shipper on Flatcar; capture.mode=file on Talos and Bottlerocket)" ;;
  esac
}

mount_options() {  # mount_options DIR: the options of the mount DIR is on (from mountinfo)
  awk -v dir="$1" '
    { mp = $5; if ((dir == mp || index(dir "/", mp "/") == 1 || mp == "/") && length(mp) >= best) { best = length(mp); opts = $6 } }
    END { print opts }' /proc/self/mountinfo 2>/dev/null || true
}

check_directory() {  # the kernel must be able to execute a file written to STATE
  if ! mkdir -p "$STATE" 2>/dev/null || ! touch "$STATE/.write-test" 2>/dev/null; then
    refuse "$STATE is not writable (read-only filesystem?): $(suggest)"
  fi
  rm -f "$STATE/.write-test"
  case ",$(mount_options "$(cd "$STATE" && pwd -P)")," in
    *,noexec,*) refuse "$STATE is on a noexec mount, so the kernel cannot run the receiver from it: $(suggest)" ;;
  esac
  cp "$SOURCE" "$STATE/.coredump-receive.new"
  chmod 0755 "$STATE/.coredump-receive.new"
  # Whatever the reason (a filesystem without exec, a security module), a receiver that cannot run
  # here would make every crash on the node fail.
  if ! "$STATE/.coredump-receive.new" --version >/dev/null 2>&1; then
    rm -f "$STATE/.coredump-receive.new"
    refuse "the receiver cannot be executed from $STATE: $(suggest)"
  fi
}

save_node_values() {
  current=$(cat "$SYSCTL/kernel/core_pattern")
  if ours "$current"; then
    # Our own line (this directory's, another receiverDirectory's, file mode's): never saved. The
    # values saved by the install that replaced the node's own line stay, if they are here.
    if [ -f "$STATE/saved-core_pattern" ] && ours "$(cat "$STATE/saved-core_pattern")"; then
      rm -f "$STATE"/saved-*  # left by an older version that saved its own line
    fi
    if [ -f "$STATE/saved-core_pattern" ] && [ ! -f "$STATE/saved-suid_dumpable" ]; then
      # Saved by a version that did not change suid_dumpable: the current value is still the node's.
      cat "$SYSCTL/fs/suid_dumpable" > "$STATE/.saved-suid_dumpable.tmp"
      mv -f "$STATE/.saved-suid_dumpable.tmp" "$STATE/saved-suid_dumpable"
    fi
    echo "core_pattern is already set by this chart ($current): the saved values stay"
    return
  fi
  for setting in $SETTINGS; do
    name=${setting#*/}
    cat "$SYSCTL/$setting" > "$STATE/.saved-$name.tmp"
    mv -f "$STATE/.saved-$name.tmp" "$STATE/saved-$name"
  done
}

install_receiver() {
  : "${CORE_DIR:?CORE_DIR is required}" "${DIR_UID:?DIR_UID is required}" "${DIR_GID:?DIR_GID is required}"
  # First, before anything changes: a line the kernel cannot take stops here (exit 2, one line).
  line=$(coredump-shipper core-pattern --helper "$HELPER" --watch-dir "$CORE_DIR")
  mode=$(capture_mode)
  check_directory
  chown 0:0 "$STATE"
  chmod 0755 "$STATE"
  save_node_values
  chown 0:0 "$STATE/.coredump-receive.new"
  mv -f "$STATE/.coredump-receive.new" "$HELPER"
  cp "$0" "$STATE/.coredump-node-setup.new"
  chmod 0755 "$STATE/.coredump-node-setup.new"
  mv -f "$STATE/.coredump-node-setup.new" "$STATE/coredump-node-setup"
  "$HELPER" --version
  mkdir -p "$CORE_DIR"
  chown "$DIR_UID:$DIR_GID" "$CORE_DIR"
  chmod 0700 "$CORE_DIR"
  # The shipper's heartbeat, which the receiver (-a) needs fresh to store anything: the one
  # directory here the shipper may write; fresh now, so a crash before the shipper's first beat is
  # stored.
  if [ -L "$STATE/alive" ]; then rm -f "$STATE/alive"; fi
  mkdir -p "$STATE/alive"
  rm -rf "$STATE/alive/heartbeat"
  : > "$STATE/alive/heartbeat"
  chown "$DIR_UID:$DIR_GID" "$STATE/alive" "$STATE/alive/heartbeat"
  chmod 0755 "$STATE/alive"
  printf '%s\n' "${PIPE_LIMIT:-128}" > "$SYSCTL/kernel/core_pipe_limit"
  printf '%s\n' "$line" > "$SYSCTL/kernel/core_pattern"
  # Processes that changed credentials (nginx, php-fpm workers) dump only with 2; the kernel then
  # marks the dump (%d) and the receiver keeps it root-private. Safe only with a pipe pattern.
  echo 2 > "$SYSCTL/fs/suid_dumpable"
  for setting in $SETTINGS; do echo "$setting = $(cat "$SYSCTL/$setting")"; done
  echo "previous values saved in $STATE (undo: sh $STATE/coredump-node-setup restore)"
  if [ "${CAPTURE_MODE:-pipe}" != pipe ]; then leave_line "$line"; fi  # auto: also for a later kernel
  if [ "$mode" = socket ]; then prepare_socket; fi
  echo "capture mode: $mode"
}

# Socket capture ------------------------------------------------------------------------------------
kernel_has_socket() { grep -qw socket "$SYSCTL/kernel/core_modes" 2>/dev/null; }

capture_mode() {  # pipe or socket, from CAPTURE_MODE and what this kernel supports; exit 2 if neither
  case "${CAPTURE_MODE:-pipe}" in
    pipe) echo pipe ;;
    auto) if kernel_has_socket; then echo socket; else echo pipe; fi ;;
    socket)
      if ! kernel_has_socket; then
        echo "capture.mode=socket needs Linux 6.17+ (kernel.core_modes lists: $(cat "$SYSCTL/kernel/core_modes" 2>/dev/null | tr '\n' ' ')); use auto or pipe" >&2
        exit 2
      fi
      echo socket ;;
    *) echo "CAPTURE_MODE must be pipe, socket or auto, not '$CAPTURE_MODE'" >&2; exit 2 ;;
  esac
}

# The server container (coredump-receive serve -fallback-file ...) reads the pipe line for its
# directory and limits, claims core_pattern once it listens and writes the line back when it stops.
leave_line() {  # leave_line LINE
  printf '%s\n' "$1" > "$STATE/.pipe-core_pattern.tmp"
  mv -f "$STATE/.pipe-core_pattern.tmp" "$STATE/pipe-core_pattern"
}

# The socket's directory: root's, readable so that doctor (the shipper's uid) can see the socket
# and the server's counters; only root may connect (the kernel connects with its own credentials).
prepare_socket() {
  mkdir -p "$(dirname "$SOCKET")"
  chown 0:0 "$(dirname "$SOCKET")"
  chmod 0755 "$(dirname "$SOCKET")"
  echo "socket capture: the server claims kernel.core_pattern (@@$SOCKET) once it listens; while it is down the pipe line above takes the cores"
}

restore() {
  if [ -f "$STATE/saved-core_pattern" ] && ! ours "$(cat "$STATE/saved-core_pattern")"; then
    for setting in $SETTINGS; do
      name=${setting#*/}
      if [ -f "$STATE/saved-$name" ]; then cat "$STATE/saved-$name" > "$SYSCTL/$setting"; fi
    done
  elif ours "$(cat "$SYSCTL/kernel/core_pattern")"; then
    # Our line, but nothing of the node's saved here (it was ours already when this directory's
    # install ran: file mode, or another receiverDirectory): the kernel's defaults, which never run
    # a helper that may be gone.
    echo 0 > "$SYSCTL/fs/suid_dumpable"
    echo 0 > "$SYSCTL/kernel/core_pipe_limit"
    echo core > "$SYSCTL/kernel/core_pattern"
  else
    echo "core_pattern is not this chart's: left as it is"
  fi
  rm -f "$HELPER" "$STATE"/saved-* "$STATE"/.saved-*.tmp "$STATE"/.coredump-receive.new \
    "$STATE"/.coredump-node-setup.new "$STATE/coredump-node-setup" "$STATE/pipe-core_pattern"
  rm -rf "$STATE/alive"  # the shipper's heartbeat (rm -r never follows a link inside it)
  # The directory itself goes too unless it is a mount point (the hook's hostPath) or holds more.
  rmdir "$STATE" 2>/dev/null || true
  for setting in $SETTINGS; do echo "$setting = $(cat "$SYSCTL/$setting")"; done
}

case "${1:-}" in
  install) install_receiver ;;
  restore) restore ;;
  *) echo "usage: $0 install|restore" >&2; exit 2 ;;
esac
