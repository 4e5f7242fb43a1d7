"""The cache key of the cluster build (e2e/cluster/build.sh): pinned, and made of the recipe alone.

Every machine that ran `make test-deps` or `make e2e` holds the binaries under
/var/cache/coredump-shipper/{k8s,kube-apiserver}-1.20.2-<key>. A new key means a cold build on each
of them: 12-25 min for the cluster, ~6 min for kube-apiserver. Change EXPECTED_KEY only together with
a change of the recipe that needs new binaries (the build section of build.sh, mkimage.py,
get-helm.sh), never as a side effect of moving or editing the scripts around it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "e2e" / "cluster"
# The key of the binaries the machines hold. When it changes, every cache is rebuilt.
EXPECTED_KEY = "2fe0bd386541"


def run(script: Path, *args: str, cache_dir: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_LAB_", "CDS_CACHE_DIR"))}
    if cache_dir is not None:
        env["CDS_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_the_key_is_the_one_the_machines_caches_are_under() -> None:
    assert run(CLUSTER / "build.sh", "key") == EXPECTED_KEY


def test_cluster_sh_names_the_same_caches(tmp_path: Path) -> None:
    """testkit/servers/kube.py and e2e/run.sh ask cluster.sh and build.sh: both name the pinned key's
    caches."""
    for script in (CLUSTER / "cluster.sh", CLUSTER / "build.sh"):
        assert run(script, "key") == EXPECTED_KEY
        assert run(script, "bindir", cache_dir=tmp_path) == f"{tmp_path}/k8s-1.20.2-{EXPECTED_KEY}/bin"
        assert (
            run(script, "apiserver", cache_dir=tmp_path)
            == f"{tmp_path}/kube-apiserver-1.20.2-{EXPECTED_KEY}/bin/kube-apiserver"
        )
    assert (
        run(CLUSTER / "cluster.sh", "bindir") == f"/var/cache/coredump-shipper/k8s-1.20.2-{EXPECTED_KEY}/bin"
    )


def edited_copy(tmp_path: Path, name: str, old: str, new: str) -> str:
    """The key of a copy of e2e/cluster in which `old` in `name` is replaced by `new`."""
    copy = tmp_path / "cluster"
    shutil.copytree(CLUSTER, copy)
    path = copy / name
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return run(copy / "build.sh", "key")


def test_editing_the_recipe_changes_the_key(tmp_path: Path) -> None:
    old = "  need_pkgs golang-go make rsync\n"
    assert edited_copy(tmp_path, "build.sh", old, old + "  # one more step\n") != EXPECTED_KEY


def test_editing_the_image_helper_changes_the_key(tmp_path: Path) -> None:
    assert (
        edited_copy(tmp_path, "mkimage.py", "import json\n", "import json  # one more step\n") != EXPECTED_KEY
    )


def test_editing_what_is_not_the_recipe_keeps_the_key(tmp_path: Path) -> None:
    """The commands around the recipe and the cluster's start/stop reuse the cached binaries."""
    old = "# ---------------------------------------------------------------------------- build commands\n"
    assert edited_copy(tmp_path, "build.sh", old, old + "# a note\n") == EXPECTED_KEY
    assert (
        edited_copy(tmp_path / "2", "cluster.sh", "cmd_stop() {\n", "cmd_stop() {  # a note\n")
        == EXPECTED_KEY
    )
