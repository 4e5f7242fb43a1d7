"""tests/setup.sh, the set-up `make test` runs first: what a fresh machine gets, and a quiet second run.

The "missing" branches run the script from a copy of the files it reads, with a PATH that holds only
the basic tools, fake `id` and `apt-get` commands and its machine files (core_pattern, policy-rc.d)
pointed into the test's directory: nothing on the machine is installed or changed.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.receiver import unavailable

ROOT = Path(__file__).resolve().parents[2]
COPIED = [
    "tests/setup.sh",
    "e2e/cluster/build.sh",
    "e2e/cluster/mkimage.py",
    "e2e/cluster/get-helm.sh",
    "charts/tools/fetch-helm.sh",
]
# What the script and `build.sh apiserver` use besides the parts they check.
BASICS = [
    "bash", "sh", "cat", "sed", "sha256sum", "cut", "dirname", "readlink", "date", "grep", "mktemp",
    "env", "flock", "rm", "chmod", "tail", "touch", "mkdir", "bc", "dpkg-query",
]  # fmt: skip


@dataclass(frozen=True)
class Part:
    name: str
    check: str
    setup: str
    why: str


def listed_parts() -> list[Part]:
    done = subprocess.run(
        ["bash", str(ROOT / "tests" / "setup.sh"), "--list"], capture_output=True, text=True, check=True
    )
    return [Part(*line.split("\t")) for line in done.stdout.splitlines()]


PARTS = listed_parts()
# A Debian package part is checked by the commands it brings (`have ...`): a new one needs no change here.
APT_PARTS = [part for part in PARTS if part.setup.startswith("apt ")]
PACKAGES = [package for part in APT_PARTS for package in part.setup.split()[1:]]
COMMANDS = [command for part in APT_PARTS for command in part.check.split()[1:]]
# The others have fakes of their own below (Machine.have_helm_and_apiserver, the pattern file).
OTHER_PARTS = {"helm", "kube-apiserver", "core-pattern"}
ALL_PARTS = {part.name for part in PARTS} - {"core-pattern"}  # the pattern file says 'core'

FAKE_APT = """#!/bin/bash
# Records each call; `install` "installs" every command of the Debian parts as a stub on the fake PATH.
echo "$* | policy-rc.d $(cat "$CDS_POLICY_RC_D" 2>/dev/null | tail -n 1)" >> "$APT_LOG"
[[ " $* " == *" install "* ]] || exit 0
for tool in $FAKE_TOOLS; do
  printf '#!/bin/sh\\n' > "$FAKE_BIN/$tool" && chmod +x "$FAKE_BIN/$tool"
done
"""


def test_every_part_is_a_debian_package_checked_by_its_commands_or_has_a_fake_here() -> None:
    assert all(part.check.startswith("have ") for part in APT_PARTS), APT_PARTS
    assert {part.name for part in PARTS} - {part.name for part in APT_PARTS} == OTHER_PARTS
    # What the suite needed when this was written; parts may be added, not lost.
    assert {"golang-go", "util-linux", "gdb", "prometheus", "swift-proxy", "memcached", "etcd-server"} <= set(
        PACKAGES
    )


class Machine:
    """A copy of the script's files and a bare PATH: a fresh machine as far as tests/setup.sh can tell."""

    def __init__(self, base: Path, uid: int) -> None:
        self.repo = base / "repo"
        for name in COPIED:
            (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, self.repo / name)
        self.bin = base / "bin"
        self.bin.mkdir()
        for tool in BASICS:
            found = shutil.which(tool)
            assert found is not None, f"{tool} is needed to run tests/setup.sh"
            (self.bin / tool).symlink_to(found)
        self._stub("id", f'#!/bin/sh\n[ "$1" = -u ] && echo {uid} || exec /usr/bin/id "$@"\n')
        self._stub("apt-get", FAKE_APT)
        self.apt_log = base / "apt.log"
        self.core_pattern = base / "core_pattern"
        self.core_pattern.write_text("core\n")
        self.policy = base / "policy-rc.d"
        self.apiserver_cache = base / "apiserver-cache"
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(base),
            "FAKE_BIN": str(self.bin),
            "FAKE_TOOLS": " ".join(COMMANDS),
            "APT_LOG": str(self.apt_log),
            "CDS_CORE_PATTERN": str(self.core_pattern),
            "CDS_CORE_PATTERN_LOCK": str(base / "core_pattern.lock"),
            "CDS_POLICY_RC_D": str(self.policy),
            "K8S_LAB_CACHE": str(base / "cluster-cache"),
            "K8S_LAB_APISERVER_CACHE": str(self.apiserver_cache),
        }

    def _stub(self, name: str, text: str) -> Path:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    def have_helm_and_apiserver(self) -> None:
        """The two parts that are no Debian package, already there (fetching or building them is slow)."""
        self.env["HELM"] = str(self._stub("helm", "#!/bin/sh\n"))
        self.apiserver_cache.joinpath("bin").mkdir(parents=True)
        self.apiserver_cache.joinpath("bin", "kube-apiserver").write_text("#!/bin/sh\n")
        self.apiserver_cache.joinpath("bin", "kube-apiserver").chmod(0o755)

    def have_every_package(self) -> None:
        for tool in COMMANDS:
            self._stub(tool, "#!/bin/sh\n")

    def setup(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.repo / "tests" / "setup.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []


def missing_lines(stderr: str) -> dict[str, str]:
    lines = stderr.splitlines()
    assert all(line.startswith("make test: ") for line in lines), stderr
    return {line.split()[2]: line for line in lines}


def test_check_names_every_missing_part_on_one_line_and_installs_nothing(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    done = machine.setup("--check")
    assert done.returncode == 1 and done.stdout == ""
    lines = missing_lines(done.stderr)
    assert set(lines) == ALL_PARTS
    assert "gcore" in lines["gdb"] and "test_elfcore" in lines["gdb"]
    assert "apt-get install --no-install-recommends gdb," in lines["gdb"]
    assert f"{machine.apiserver_cache}/bin/kube-apiserver not built" in lines["kube-apiserver"]
    assert machine.apt_calls() == [] and not machine.policy.exists()


def test_without_root_nothing_is_installed_and_each_part_says_what_to_run(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=1000)
    machine.have_helm_and_apiserver()
    machine.apiserver_cache.joinpath("bin", "kube-apiserver").unlink()
    done = machine.setup()
    assert done.returncode == 1
    lines = missing_lines(done.stderr)
    assert set(lines) == ALL_PARTS - {"helm"}
    assert lines["etcd"].endswith(
        "Run: apt-get install --no-install-recommends etcd-server openssl, as root (or: sudo make test-deps)"
    )
    assert lines["kube-apiserver"].endswith("Run: sudo make test-deps")
    assert machine.apt_calls() == [] and not machine.policy.exists()
    assert "apt-get" not in done.stdout


def test_as_root_every_missing_package_comes_in_one_apt_run_without_starting_services(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    machine.have_helm_and_apiserver()
    done = machine.setup()
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    packages = " ".join(PACKAGES)
    # The packages' services must not start (tests run their own): policy-rc.d says no while apt runs.
    assert machine.apt_calls() == [
        "-o DPkg::Lock::Timeout=900 update -q | policy-rc.d exit 101",
        f"-o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends {packages} | policy-rc.d exit 101",
    ]
    assert not machine.policy.exists(), "policy-rc.d must go once apt is done"
    progress = done.stdout.splitlines()
    names = " ".join(part.name for part in APT_PARTS)
    assert progress[0] == f"test set-up: apt-get install {packages} (for {names})"
    assert progress[-1].startswith("test set-up: done in ")
    # Idempotent: a second run finds everything and says nothing.
    again = machine.setup()
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert len(machine.apt_calls()) == 2


@pytest.mark.parametrize(
    "left",
    [
        "|/tmp/cds-pipe-test-abc/coredump-receive /tmp/cds-pipe-test-abc/cores %P %u %g %s %t %h %e",
        "/tmp/pytest-of-root/pytest-7/test_x0/cores/core.%e.%p",
        "|/nonexistent/coredump-receive /var/coredump %P",
    ],
)
def test_a_pattern_left_by_a_killed_run_is_repaired(tmp_path: Path, left: str) -> None:
    machine = Machine(tmp_path, uid=0)
    machine.have_helm_and_apiserver()
    machine.have_every_package()
    machine.core_pattern.write_text(left + "\n")
    done = machine.setup()
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert machine.core_pattern.read_text() == "core\n"
    assert f"kernel.core_pattern was '{left}', left by a killed test run: restored to 'core'" in done.stdout


@pytest.mark.parametrize("pattern", ["|/bin/sh -c true %P", "/var/coredump/core.%e.%p"])
def test_the_machines_own_pattern_is_kept_and_refused_in_one_line(tmp_path: Path, pattern: str) -> None:
    machine = Machine(tmp_path, uid=0)
    machine.have_helm_and_apiserver()
    machine.have_every_package()
    machine.core_pattern.write_text(pattern + "\n")
    done = machine.setup()
    assert done.returncode == 1
    assert machine.core_pattern.read_text() == pattern + "\n"
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"make test: core-pattern missing (kernel.core_pattern is '{pattern}', not a plain"
    ), line
    assert "sysctl -w kernel.core_pattern=core" in line and line.endswith("(the set-up could not do it)"), (
        line
    )


def test_when_everything_is_there_the_set_up_is_silent_and_quick() -> None:
    def setup(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "tests" / "setup.sh"), *args], capture_output=True, text=True, check=False, timeout=60
        )

    # `make test` ran the set-up just before; run by hand, the suite may find it incomplete.
    check = setup("--check")
    if check.returncode != 0:
        unavailable(f"the test set-up is incomplete here (run make test-deps): {check.stderr}")
    started = time.monotonic()
    done = setup()
    took = time.monotonic() - started
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert took < 3, f"{took:.1f} s"


def test_a_pattern_in_use_by_a_running_test_is_waited_for_not_undone(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    machine.have_helm_and_apiserver()
    machine.have_every_package()
    in_use = "|/tmp/cds-pipe-test-live/coredump-receive /tmp/cds-pipe-test-live/cores %P"
    with open(machine.env["CDS_CORE_PATTERN_LOCK"], "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what testkit/receiver.py's pipe_core_pattern holds
        machine.core_pattern.write_text(in_use + "\n")
        setup = subprocess.Popen(
            ["bash", str(machine.repo / "tests" / "setup.sh")],
            env=machine.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert setup.poll() is None and machine.core_pattern.read_text() == in_use + "\n"
        machine.core_pattern.write_text("core\n")  # the test puts the pattern back, then unlocks
    out, err = setup.communicate(timeout=30)
    assert setup.returncode == 0, err
    assert err.splitlines() == [
        f"test set-up: waiting for {machine.env['CDS_CORE_PATTERN_LOCK']} "
        "(a test or make e2e is changing kernel.core_pattern)"
    ]
    assert "restored" not in out and machine.core_pattern.read_text() == "core\n"
