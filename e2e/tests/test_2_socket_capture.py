"""Scenario 2s: socket capture (capture.mode=socket, Linux 6.17+, docs/socket-capture.md).

The release switches to socket mode: node setup installs the pipe fallback and the socket-server
container claims kernel.core_pattern. Pods crash with no volume (as root, and as uid 12345 with a
read-only root filesystem) and their cores reach S3 with their pod's identity; doctor's socket rows
pass. Then `kubectl rollout restart` while a pod crashes a child every half second: every crash
before, during and after the restart must reach S3 (the pattern goes socket -> pipe -> socket), and
the time the node spent on the pipe fallback is measured. The release goes back to file mode after.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.tests.conftest import APPS, DAEMONSET, NAMESPACE, Kube, Release, Store, is_ready, wait_for
from e2e.tests.test_2_crashing_pods import CRASH, first_record, pod, records_of, terminated, upgrade

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
CORE_MODES = Path("/proc/sys/kernel/core_modes")
# A child crashes every half second, CRASHES times; each one is echoed, so the log counts them.
CRASHES = 80
LOOP = (
    f"i=0; while [ $i -lt {CRASHES} ]; do i=$((i+1)); "
    'sh -c "kill -SEGV \\$\\$"; echo "crash $i"; sleep 0.5; done'
)
SOCKET_ROWS = ("kernel.core_pattern", "coredump socket support", "coredump socket", "socket server")


def _socket(release: Release) -> Path:
    return release.kube.work / "sock" / "coredump.sock"


class PatternTimeline:
    """kernel.core_pattern sampled every 20 ms in a thread: (seconds since start, value) per change."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            value = CORE_PATTERN.read_text().strip()
            if value != last:
                self.changes.append((time.monotonic() - self._started, value))
                last = value
            time.sleep(0.02)

    def __enter__(self) -> PatternTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def seconds_in(self, predicate: Any) -> float:
        end = time.monotonic() - self._started
        bounds = [*(t for t, _ in self.changes[1:]), end]
        return sum(b - t for (t, value), b in zip(self.changes, bounds, strict=True) if predicate(value))


def test_socket_capture_ships_cores_with_their_pod(release: Release, store: Store, kube: Kube) -> None:
    if "socket" not in (CORE_MODES.read_text().split() if CORE_MODES.exists() else []):
        pytest.fail("this machine's kernel has no coredump socket (Linux 6.17+)")
    sock = _socket(release)
    upgrade(kube, "capture.mode=socket", f"capture.socketPath={sock}")
    wait_for("the server to claim core_pattern", lambda: CORE_PATTERN.read_text().strip() == f"@@{sock}", 60)
    shipper = kube.shipper_pod()["metadata"]["name"]
    assert "capture mode: socket" in kube.kubectl("-n", NAMESPACE, "logs", shipper, "-c", "node-setup")

    kube.apply(pod("sock-root", CRASH))
    kube.apply(
        pod(
            "sock-readonly",
            CRASH,
            security={"runAsUser": 12345, "runAsGroup": 12345, "readOnlyRootFilesystem": True},
        )
    )
    for name in ("sock-root", "sock-readonly"):
        key, facts = wait_for(f"the core of {name}", first_record(store, name), 90)
        assert store.bucket.content(key)[:4] == b"\x7fELF"
        assert (facts["container"], facts["exe"]) == ("app", "sh")
        pod_uid = kube.get("pod", "-n", APPS, name)["metadata"]["uid"]
        # The API's pod (namespace and name, matched above) is the one whose UID the cgroup gave.
        assert facts["pod-uid"] == pod_uid, facts

    result = kube.run(
        "kubectl",
        "-n",
        NAMESPACE,
        "exec",
        shipper,
        "-c",
        "shipper",
        "--",
        "coredump-shipper",
        "doctor",
        check=False,
    )
    rows = {line[8:].split("  ")[0]: line[:6].strip() for line in result.stdout.splitlines() if len(line) > 8}
    assert {name: rows.get(name) for name in SOCKET_ROWS} == dict.fromkeys(SOCKET_ROWS, "OK"), result.stdout
    kube.kubectl("-n", APPS, "delete", "pod", "sock-root", "sock-readonly", "--wait=true")


def test_a_rollout_restart_during_crashes_loses_no_core(release: Release, store: Store, kube: Kube) -> None:
    sock = _socket(release)
    old = kube.shipper_pod()["metadata"]["name"]
    kube.apply(pod("sock-loop", LOOP))
    wait_for("the loop's first core", first_record(store, "sock-loop"), 90)
    with PatternTimeline() as timeline:
        restarted = time.monotonic()
        kube.kubectl("-n", NAMESPACE, "rollout", "restart", f"daemonset/{DAEMONSET}")
        wait_for(
            "the new pod Ready",
            lambda: next(
                (p for p in kube.shipper_pods() if p["metadata"]["name"] != old and is_ready(p)), None
            ),
            180,
        )
        wait_for(
            "the new server to claim core_pattern",
            lambda: CORE_PATTERN.read_text().strip() == f"@@{sock}",
            60,
        )
        rollout = time.monotonic() - restarted
        state = wait_for("the crash loop to end", lambda: terminated(kube, "sock-loop"), 120)
    assert state["exitCode"] == 0, state
    crashes = kube.kubectl("-n", APPS, "logs", "sock-loop").count("crash ")
    assert crashes == CRASHES

    # Every crash is a core: stored by the old server, the pipe receiver or the new server.
    def all_records() -> list[tuple[str, dict[str, Any]]] | None:
        found = records_of(store, "sock-loop")
        return found if len(found) >= CRASHES else None

    found = wait_for("every crash's record in S3", all_records, 240, interval=2)
    assert len(found) == CRASHES, len(found)
    values = {value for _, value in timeline.changes}
    pipe = {value for value in values if value.startswith("|")}
    assert values == {f"@@{sock}", *pipe} and len(pipe) == 1, timeline.changes
    on_pipe = timeline.seconds_in(lambda value: value.startswith("|"))
    print(
        f"rollout restart to the new server's claim: {rollout:.1f}s; on the pipe fallback {on_pipe:.1f}s; "
        f"{CRASHES} crashes, {len(found)} cores recorded; pattern changes: "
        + ", ".join(f"{t:.2f}s {'socket' if v.startswith('@') else 'pipe'}" for t, v in timeline.changes)
    )
    kube.kubectl("-n", APPS, "delete", "pod", "sock-loop", "--wait=true")
    # Back to file mode: the stopping server hands the pattern to the pipe line, then the new pod's
    # node setup writes the file pattern.
    upgrade(kube, "capture.mode=file")
    assert CORE_PATTERN.read_text().strip() == release.core_pattern
    assert not sock.exists()
