"""The chart in socket and auto capture modes (docs/socket-capture.md), rendered by the real helm."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.test_chart import CHART, pod_spec, render, render_error, shipper

VALUES = CHART / "ci" / "socket-capture-values.yaml"


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, [c["name"] for c in spec["containers"]]
    return found[0]


@pytest.mark.parametrize("mode", ["socket", "auto"])
def test_socket_mode_runs_a_privileged_server_beside_an_unprivileged_shipper(mode: str) -> None:
    manifests = render(VALUES, sets={"capture.mode": mode})
    spec = pod_spec(manifests)
    assert spec["hostPID"] is True
    (init,) = spec["initContainers"]
    assert init["command"] == ["/bin/sh", "/usr/local/bin/coredump-node-setup", "install"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert (env["CAPTURE_MODE"], env["SOCKET_PATH"]) == (mode, "/run/coredump-shipper/coredump.sock")
    assert {"name": "socket", "mountPath": "/run/coredump-shipper"} in init["volumeMounts"]

    server = _container(spec, "socket-server")
    assert server["image"] == shipper(manifests)["image"], "the shipper image carries the receiver"
    command = server["command"]
    assert command[:2] == ["/usr/local/lib/coredump-shipper/coredump-receive", "serve"]
    options = {flag: command[i + 1] for i, flag in enumerate(command[:-1]) if flag.startswith("-")}
    assert options["-socket"] == "/run/coredump-shipper/coredump.sock"
    assert options["-fallback-file"] == "/var/lib/coredump-shipper/pipe-core_pattern"
    assert options["-cgroup-root"] == "/host/sys/fs/cgroup"
    assert "-claim-pattern" in command
    assert ("-when-supported" in command) == (mode == "auto")
    assert server["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["receiver"]["readOnly"] is True and mounts["host-cgroup"]["readOnly"] is True
    assert mounts["coredumps"]["mountPath"] == "/var/coredump"

    # The shipper stays unprivileged and sees the socket read-only (doctor).
    ship = shipper(manifests)
    assert ship["securityContext"]["privileged"] is False
    assert {"name": "socket", "mountPath": "/run/coredump-shipper", "readOnly": True} in ship["volumeMounts"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["socket"]["hostPath"] == {"path": "/run/coredump-shipper", "type": "DirectoryOrCreate"}
    assert volumes["host-cgroup"]["hostPath"]["path"] == "/sys/fs/cgroup"


def test_pipe_and_file_modes_have_no_server_and_no_host_pid() -> None:
    for sets in ({"capture.mode": "pipe"}, {"capture.mode": "file"}, {"nodeSetup.enabled": "false"}):
        spec = pod_spec(render(VALUES, sets=sets))
        assert [c["name"] for c in spec["containers"]] == ["shipper"]
        assert "hostPID" not in spec


@pytest.mark.parametrize("path", ["run/coredump.sock", "/run/with space/c.sock", "/" + "x" * 120])
def test_socket_path_must_be_a_short_absolute_path(path: str) -> None:
    assert "capture.socketPath" in render_error(VALUES, sets={"capture.socketPath": path})
