"""Setting parsers and the Config they build once, table-driven; the S3 layer never imports it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coredump_shipper.config.settings import load_config, parse_disk_limit, parse_duration, parse_size
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.s3.parts import MiB


@pytest.mark.parametrize(
    ("text", "value"), [("8MiB", 8 * MiB), ("5 mb", 5_000_000), ("1G", 10**9), ("512", 512), ("2.5KiB", 2560)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("20s", 20.0), ("1.5", 1.5), ("5m", 300.0), ("1h", 3600.0)])
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


def test_parse_disk_limit() -> None:
    assert parse_disk_limit("10%").resolve(1000) == 100
    assert parse_disk_limit("1MiB").resolve(10) == MiB
    with pytest.raises(ValueError):
        parse_disk_limit("120%")


def test_flag_beats_env_beats_alias_beats_default() -> None:
    env = {"S3_BUCKET": "alias", "COREDUMP_SHIPPER_CLUSTER_NAME": "envc", "CLUSTER_NAME": "aliasc"}
    config = load_config({"bucket": None}, env=env, command="ship")
    assert (config.bucket, config.cluster_name, config.node_name != "") == ("alias", "envc", True)
    config = load_config({"bucket": "flag"}, env=env, command="ship")
    assert config.bucket == "flag"
    assert config.workers == 2 and config.part_size == 8 * MiB


def test_config_holds_its_small_languages_parsed_once() -> None:
    settings = {
        "bucket": "bk",
        "key_template": "{cluster}/{node}/{filename}",
        "filename_pattern": "core.%e.%p",
        "tags": "team={cluster}",
    }
    config = load_config(settings, env={}, command="ship")
    assert config.keys is config.keys and config.core_names is config.core_names
    assert config.keys.render({"cluster": "c", "node": "n", "filename": "f"}) == "c/n/f.zst"
    assert config.keys.render({"cluster": "c", "node": "n", "filename": "f"}, suffix="") == "c/n/f"
    assert config.core_names.parse("core.app.12").exe == "app"
    assert config.storage.args({"cluster": "c"}) == {"Tagging": "team=c"}
    plain = load_config({**settings, "compression": "none"}, env={}, command="ship")
    assert plain.keys.render({"cluster": "c", "node": "n", "filename": "f"}) == "c/n/f"


@pytest.mark.parametrize(("uses_pid", "name", "pid"), [(True, "core.app.7", 7), (False, "core.app.7", None)])
def test_core_names_narrowed_to_the_nodes_core_uses_pid(uses_pid: bool, name: str, pid: int | None) -> None:
    config = load_config({"bucket": "bk", "filename_pattern": "core.%e"}, env={}, command="ship")
    narrowed = config.core_names.with_uses_pid(uses_pid)
    assert narrowed.parse(name).pid == pid
    assert narrowed == CoreNamePattern.compile("core.%e", uses_pid=uses_pid)


def test_the_s3_layer_and_the_disk_budget_do_not_import_the_config() -> None:
    code = (
        "import sys\n"
        "import coredump_shipper.s3.store, coredump_shipper.config.storageoptions\n"
        "import coredump_shipper.ship.diskbudget\n"
        "import coredump_shipper.s3.client, coredump_shipper.s3.settings\n"
        "print('coredump_shipper.config.settings' in sys.modules)"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"
