#!/bin/sh
# coredump-node-setup: install or undo pipe capture on one node. Plain POSIX sh, so the copy left on
# the node (RECEIVER_DIR/coredump-node-setup) runs there without the image.
#
#   coredump-node-setup install   # as the chart's privileged init container does (pipe mode)
#   coredump-node-setup restore   # put back the core_pattern and core_pipe_limit saved by install
#
# CAPTURE_MODE=socket|auto (socket capture, docs/socket-capture.md): install does all of the above
# (the pipe line stays the fallback whenever the socket server is down), leaves the line in
# RECEIVER_DIR/pipe-core_pattern for the server and makes the socket's directory (root, 0755).
# auto picks socket where kernel.core_modes lists it, pipe elsewhere, and logs the choice.
#
# install: saves the node's current kernel.core_pattern and kernel.core_pipe_limit (unless they are
# already ours, so a re-install never saves its own line), copies the receiver in with an atomic
# rename (the kernel may be running the old one), gives CORE_DIR to the shipper (0700), then writes
# core_pipe_limit and the line printed by `coredump-shipper core-pattern`.
set -eu
STATE=${RECEIVER_DIR:-/var/lib/coredump-shipper}
HELPER=$STATE/coredump-receive
SYSCTL=${SYSCTL_DIR:-/proc/sys/kernel}
SOURCE=${RECEIVER_SOURCE:-/usr/local/lib/coredump-shipper/coredump-receive}
SOCKET=${SOCKET_PATH:-/run/coredump-shipper/coredump.sock}

save() {  # save NAME: keep the node's value of kernel.NAME in STATE/saved-NAME
  cat "$SYSCTL/$1" > "$STATE/.saved-$1.tmp"
  mv -f "$STATE/.saved-$1.tmp" "$STATE/saved-$1"
}

install_receiver() {
  : "${CORE_DIR:?CORE_DIR is required}" "${DIR_UID:?DIR_UID is required}" "${DIR_GID:?DIR_GID is required}"
  # First, before anything changes: a line the kernel cannot take stops here (exit 2, one line).
  line=$(coredump-shipper core-pattern --helper "$HELPER" --watch-dir "$CORE_DIR")
  mode=$(capture_mode)
  mkdir -p "$STATE"
  chown 0:0 "$STATE"
  chmod 0755 "$STATE"
  case "$(cat "$SYSCTL/core_pattern")" in
    "|$HELPER "*) echo "core_pattern already pipes to $HELPER: the saved values stay" ;;
    "@@$SOCKET") echo "core_pattern already names $SOCKET: the saved values stay" ;;
    *) save core_pattern; save core_pipe_limit ;;
  esac
  cp "$SOURCE" "$STATE/.coredump-receive.new"
  chown 0:0 "$STATE/.coredump-receive.new"
  chmod 0755 "$STATE/.coredump-receive.new"
  mv -f "$STATE/.coredump-receive.new" "$HELPER"
  cp "$0" "$STATE/.coredump-node-setup.new"
  chmod 0755 "$STATE/.coredump-node-setup.new"
  mv -f "$STATE/.coredump-node-setup.new" "$STATE/coredump-node-setup"
  "$HELPER" --version
  mkdir -p "$CORE_DIR"
  chown "$DIR_UID:$DIR_GID" "$CORE_DIR"
  chmod 0700 "$CORE_DIR"
  printf '%s\n' "${PIPE_LIMIT:-16}" > "$SYSCTL/core_pipe_limit"
  printf '%s\n' "$line" > "$SYSCTL/core_pattern"
  echo "kernel.core_pattern = $(cat "$SYSCTL/core_pattern")"
  echo "kernel.core_pipe_limit = $(cat "$SYSCTL/core_pipe_limit")"
  echo "previous values saved in $STATE (undo: sh $STATE/coredump-node-setup restore)"
  if [ "${CAPTURE_MODE:-pipe}" != pipe ]; then leave_line "$line"; fi  # auto: also for a later kernel
  if [ "$mode" = socket ]; then prepare_socket; fi
  echo "capture mode: $mode"
}

# Socket capture ------------------------------------------------------------------------------------
kernel_has_socket() { grep -qw socket "$SYSCTL/core_modes" 2>/dev/null; }

capture_mode() {  # pipe or socket, from CAPTURE_MODE and what this kernel supports; exit 2 if neither
  case "${CAPTURE_MODE:-pipe}" in
    pipe) echo pipe ;;
    auto) if kernel_has_socket; then echo socket; else echo pipe; fi ;;
    socket)
      if ! kernel_has_socket; then
        echo "capture.mode=socket needs Linux 6.17+ (kernel.core_modes lists: $(cat "$SYSCTL/core_modes" 2>/dev/null | tr '\n' ' ')); use auto or pipe" >&2
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
  if [ -f "$STATE/saved-core_pattern" ]; then
    cat "$STATE/saved-core_pipe_limit" > "$SYSCTL/core_pipe_limit" 2>/dev/null || true
    cat "$STATE/saved-core_pattern" > "$SYSCTL/core_pattern"
  else
    # Nothing saved: the kernel's default, which never runs a helper that may be gone.
    echo core > "$SYSCTL/core_pattern"
  fi
  echo "kernel.core_pattern = $(cat "$SYSCTL/core_pattern")"
}

case "${1:-}" in
  install) install_receiver ;;
  restore) restore ;;
  *) echo "usage: $0 install|restore" >&2; exit 2 ;;
esac
