"""docker/debian_mirror.py: the image and cluster builds take the Debian mirror from apt's own sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "debian_mirror.py"

DEBIAN_DEFAULT = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

SECURITY_FIRST = """\
Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs:
 http://mirror.example/debian/
 http://second.example/debian
Suites: bookworm
Components: contrib
 main non-free-firmware
"""

DISABLED_AND_SOURCE_ONLY = """\
Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://src-only.example/debian
Suites: bookworm
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://one-line.example/debian bookworm main contrib
"""

OTHER_RELEASE = "deb http://old.example/debian bullseye main\n"
NOT_FETCHABLE = "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
OTHER_VENDOR = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


def mirror(apt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--suite", "bookworm", "--apt-dir", str(apt)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def apt_dir(tmp_path: Path, sources_list: str | None, parts: dict[str, str]) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if sources_list is not None:
        (apt / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (apt / "sources.list.d" / name).write_text(text)
    return apt


@pytest.mark.parametrize(
    ("sources_list", "parts", "expected"),
    [
        # Debian 12's own default: deb822 only, no sources.list; -updates and -security not taken.
        (None, {"debian.sources": DEBIAN_DEFAULT}, "http://deb.debian.org/debian"),
        # The suite itself, not -security, even when that comes first; continuation lines; no trailing /.
        (None, {"a.sources": SECURITY_FIRST}, "http://mirror.example/debian"),
        (
            None,
            {"a.sources": DISABLED_AND_SOURCE_ONLY, "b.sources": DEBIAN_DEFAULT},
            "http://deb.debian.org/debian",
        ),
        # One-line format with [options]; comments and deb-src lines do not count.
        (ONE_LINE, {}, "http://one-line.example/debian"),
        # sources.list is read before sources.list.d, and *.list files there too, in name order.
        (ONE_LINE, {"debian.sources": DEBIAN_DEFAULT}, "http://one-line.example/debian"),
        (None, {"b.list": ONE_LINE, "a.sources": SECURITY_FIRST}, "http://mirror.example/debian"),
        (None, {"nodesource.sources": OTHER_VENDOR, "z.list": ONE_LINE}, "http://one-line.example/debian"),
        # A file with another suffix (as disabled by renaming) is not read.
        (
            None,
            {"x.list.disabled": ONE_LINE, "debian.sources": DEBIAN_DEFAULT},
            "http://deb.debian.org/debian",
        ),
    ],
)
def test_the_mirror_is_the_first_deb_source_of_the_suite_main(
    tmp_path: Path, sources_list: str | None, parts: dict[str, str], expected: str
) -> None:
    done = mirror(apt_dir(tmp_path, sources_list, parts))
    assert (done.returncode, done.stdout, done.stderr) == (0, expected + "\n", "")


@pytest.mark.parametrize(
    ("sources_list", "parts"),
    [
        (None, {}),
        ("", {"nodesource.sources": OTHER_VENDOR}),
        (OTHER_RELEASE, {"a.sources": DISABLED_AND_SOURCE_ONLY}),
        (NOT_FETCHABLE, {"x.list.disabled": ONE_LINE}),
    ],
)
def test_no_mirror_fails_with_one_line_and_no_guess(
    tmp_path: Path, sources_list: str | None, parts: dict[str, str]
) -> None:
    apt = apt_dir(tmp_path, sources_list, parts)
    done = mirror(apt)
    assert (done.returncode, done.stdout) == (1, "")
    (line,) = done.stderr.splitlines()
    assert f"no Debian mirror for 'bookworm main' in {apt}/sources.list" in line and "DEBIAN_MIRROR" in line
