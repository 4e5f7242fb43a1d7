"""The platform values files (charts/coredump-shipper/ci/, documented in docs/platforms.md): each
renders, and in pipe mode its receiver directory gives a core_pattern line the kernel takes whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import HELPER_NAME, KERNEL_LIMIT, pipe_line
from tests.chart import test_chart
from tests.chart.test_chart import CHART, pod_spec, render

pytestmark = test_chart.pytestmark

PLATFORMS = {
    "gke-cos": ("pipe", "/home/kubernetes/bin/coredump-shipper"),
    "flatcar": ("pipe", "/opt/bin/coredump-shipper"),
    "openshift": ("pipe", "/var/lib/coredump-shipper"),
    "bottlerocket": ("file", None),
    "talos": ("file", None),
}
DOCS = CHART.parent.parent / "docs" / "platforms.md"


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_platform_values_render_the_capture_that_works_there(platform: str) -> None:
    path = CHART / "ci" / f"{platform}-values.yaml"
    values = yaml.safe_load(path.read_text())
    mode, receiver_dir = PLATFORMS[platform]
    (init,) = pod_spec(render(path))["initContainers"]
    env = {e["name"]: e.get("value") for e in init.get("env", [])}
    assert values["capture"]["mode"] == mode
    if mode == "pipe":
        assert env["RECEIVER_DIR"] == receiver_dir
        line = pipe_line(
            f"{receiver_dir}/{HELPER_NAME}", env["CORE_DIR"], 32 << 30, DiskLimit(percent=15), 600
        )
        assert len(line) <= KERNEL_LIMIT
    else:
        assert "RECEIVER_DIR" not in env
    assert f"ci/{platform}-values.yaml" in DOCS.read_text(), "each platform has its row in docs/platforms.md"


def test_every_platform_file_is_listed() -> None:
    files = {p.name.removesuffix("-values.yaml") for p in Path(CHART / "ci").glob("*-values.yaml")}
    assert set(PLATFORMS) <= files
