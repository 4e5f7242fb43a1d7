"""The pinned pod beside a core (`.<core>.pod.json`) read as hostile input, and the capture filter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coredump_shipper.config.settings import load_config
from coredump_shipper.core import companions
from coredump_shipper.errors import ConfigError
from coredump_shipper.kube import podrecord
from coredump_shipper.kube.podfilter import CaptureFilter, Requirement, parse_selector
from coredump_shipper.kube.pods import Container, Pod
from coredump_shipper.ship.afterupload import Delete, IgnoreFilter

UID = "0f0e0d0c-0b0a-4908-8706-050403020100"
POD = Pod(
    uid=UID,
    namespace="shop",
    name="web-5c4d7f9b8-x7k2p",
    hostname="web-5c4d7f9b8-x7k2p",
    host_network=False,
    labels=(("team", "a"),),
    containers=(Container("app", "registry.local/app:1", "sha256:00", "a" * 64),),
    regular_containers=1,
    owner_kind="Deployment",
    owner_name="web",
    created=None,
)


def pinned(directory: Path, name: str = "core.1") -> Path:
    (directory / name).write_bytes(b"core")
    st = os.stat(directory / name)
    podrecord.write(directory, name, st.st_ino, st.st_size, POD, POD.containers[0])
    return directory / podrecord.record_name(name)


def read_back(directory: Path, name: str = "core.1") -> tuple[Pod, Container | None] | None:
    st = os.stat(directory / name)
    return podrecord.read(directory, name, st.st_ino, st.st_size)


def test_round_trip_keeps_what_keys_events_and_filters_need(tmp_path: Path) -> None:
    path = pinned(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    found = read_back(tmp_path)
    assert found is not None
    pod, container = found
    assert (pod.uid, pod.namespace, pod.name, pod.owner_kind, pod.owner_name) == (
        UID,
        "shop",
        POD.name,
        "Deployment",
        "web",
    )
    assert pod.labels == (("team", "a"),) and not pod.capture_opt_out
    assert container == POD.containers[0]
    assert sorted(os.listdir(tmp_path)) == [podrecord.record_name("core.1"), "core.1"], "no temporary left"


def _rewrite(path: Path, change: dict[str, object]) -> None:
    data = json.loads(path.read_text())
    for dotted, value in change.items():
        target = data
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change",
    [
        {"inode": 1},  # describes another core
        {"size": 999},
        {"format": 2},
        {"pod.uid": "../../etc"},
        {"pod.namespace": "a\nb"},
        {"pod.namespace": ""},
        {"pod.name": "x" * 300},
        {"pod.labels": ["team"]},
        {"pod.labels": {"team": "x" * 100}},
        {"pod.capture": "false"},
        {"pod.container.section": "volumes"},
        {"pod.container": "app"},
        {"pod": None},
    ],
)
def test_a_tampered_record_is_ignored(tmp_path: Path, change: dict[str, object]) -> None:
    _rewrite(pinned(tmp_path), change)
    assert read_back(tmp_path) is None


def test_links_foreign_owners_and_writable_modes_are_ignored(tmp_path: Path) -> None:
    path = pinned(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    os.rename(path, elsewhere)
    os.symlink(elsewhere, path)
    assert read_back(tmp_path) is None, "a symlink is never followed"
    os.unlink(path)
    os.link(elsewhere, path)
    assert read_back(tmp_path) is None, "a second name may be a planted file"
    os.unlink(elsewhere)
    os.chmod(path, 0o620)  # group-writable
    assert read_back(tmp_path) is None, "a record others may write is not ours"
    os.chmod(path, 0o600)
    assert read_back(tmp_path) is not None
    if os.geteuid() == 0:
        os.chown(path, 12345, 12345)
        assert read_back(tmp_path) is None, "written by another uid"
    path.write_text("x" * (podrecord.MAX_BYTES + 1))
    assert read_back(tmp_path) is None


def test_records_are_never_shipped_and_go_with_or_after_their_core(tmp_path: Path) -> None:
    path = pinned(tmp_path)
    ignore = IgnoreFilter((), Delete())  # even with --ignore ''
    assert ignore(path.name) and ignore(f".core.1{podrecord.TEMP_SUFFIX}") and not ignore("core.1")
    names = set(os.listdir(tmp_path))
    assert companions.sweep(tmp_path, names, now=os.stat(path).st_mtime + 3600) == [], "its core is there"
    os.unlink(tmp_path / "core.1")
    names = set(os.listdir(tmp_path))
    assert companions.sweep(tmp_path, names, now=os.stat(path).st_mtime + 1) == [], (
        "too young to be an orphan"
    )
    assert companions.sweep(tmp_path, names, now=os.stat(path).st_mtime + 3600) == [path.name]
    pinned(tmp_path, "core.2")
    companions.remove(tmp_path, "core.2")
    assert os.listdir(tmp_path) == ["core.2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("team=a", (Requirement("team", "=", "a"),)),
        ("team==a, tier!=batch", (Requirement("team", "=", "a"), Requirement("tier", "!=", "batch"))),
        ("app.kubernetes.io/name", (Requirement("app.kubernetes.io/name", "exists"),)),
        ("!secret-holder", (Requirement("secret-holder", "!exists"),)),
        ("team=", (Requirement("team", "=", ""),)),
    ],
)
def test_selector_syntax(text: str, expected: tuple[Requirement, ...]) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize("text", ["team in (a,b)", "!team=a", "=a", "team=a=b", "te am=a", "team=-a"])
def test_selector_rejects_what_it_cannot_evaluate(text: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(text)


def test_filter_reasons_in_order() -> None:
    selector = parse_selector("team=a")
    rules = CaptureFilter(("kube-*", "vault"), selector)
    assert rules.excluded(POD) is None
    assert rules.excluded(Pod(**{**POD.__dict__, "namespace": "kube-system"})) == "namespace"
    assert rules.excluded(Pod(**{**POD.__dict__, "labels": (("team", "b"),)})) == "pod_selector"
    assert rules.excluded(Pod(**{**POD.__dict__, "capture_opt_out": True})) == "pod_annotation"
    assert CaptureFilter().excluded(Pod(**{**POD.__dict__, "capture_opt_out": True})) == "pod_annotation"


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"pod_selector": "team in (a)"}, "--pod-selector"),
        ({"kubernetes": "off", "exclude_namespaces": "kube-system"}, "--exclude-namespaces"),
        ({"kubernetes": "off", "pod_selector": "team=a"}, "--pod-selector"),
        ({"capture_mode": "sometimes"}, "--capture-mode"),
        ({"pipe_limit": "-1"}, "--pipe-limit"),
    ],
)
def test_bad_filter_and_capture_settings_name_the_setting(
    tmp_path: Path, values: dict[str, str], flag: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config({"bucket": "cores", "watch_dir": str(tmp_path), **values}, env={}, command="run")
    assert error.value.setting == flag
