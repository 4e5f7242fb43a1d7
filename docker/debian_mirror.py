"""Print the Debian mirror this machine's apt already uses for a suite's `main` component.

    python3 docker/debian_mirror.py [--suite bookworm] [--apt-dir /etc/apt]

The image build (debootstrap) and the cluster build (`apt-get source`) fetch from the same mirror as
the machine's own packages, so they need no network access the machine does not already have. Both
apt formats are read, in apt's order: /etc/apt/sources.list, then sources.list.d/*.list one-line
entries and *.sources deb822 stanzas. The first `deb` entry whose suites include the suite itself
(not `-security` or `-updates`) and whose components include `main` wins. Exits 1 with one line when
there is none: there is no guessed fallback host.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Schemes debootstrap and apt-get fetch from without extra apt transports.
FETCHABLE = ("http://", "https://", "file:/")


@dataclass(frozen=True)
class Source:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def one_line_sources(text: str) -> Iterator[Source]:
    """`deb [options] URI suite component...` lines (sources.list, *.list)."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):  # [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            yield Source((kind,), (rest[0],), (rest[1],), tuple(rest[2:]))


def deb822_sources(text: str) -> Iterator[Source]:
    """deb822 stanzas (*.sources): blank-line separated, `Field: value`, continuation lines indented."""
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        yield Source(
            tuple(stanza.get("types", "").split()),
            tuple(stanza.get("uris", "").split()),
            tuple(stanza.get("suites", "").split()),
            tuple(stanza.get("components", "").split()),
        )


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    name = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, name = {}, None
        elif raw[0] in " \t" and name is not None:
            fields[name] += " " + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            name = key.strip().lower()
            fields[name] = value.strip()


def machine_sources(apt_dir: Path) -> Iterator[Source]:
    """Every source entry, in the order apt reads them."""
    main = apt_dir / "sources.list"
    if main.is_file():
        yield from one_line_sources(main.read_text(encoding="utf-8", errors="replace"))
    parts = apt_dir / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        if path.suffix == ".list":
            yield from one_line_sources(path.read_text(encoding="utf-8", errors="replace"))
        elif path.suffix == ".sources":
            yield from deb822_sources(path.read_text(encoding="utf-8", errors="replace"))


def mirror(sources: Iterator[Source], suite: str) -> str | None:
    for source in sources:
        if "deb" in source.types and suite in source.suites and "main" in source.components:
            for uri in source.uris:
                if uri.startswith(FETCHABLE):
                    return uri.rstrip("/")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--apt-dir", type=Path, default=Path("/etc/apt"))
    args = parser.parse_args(argv)
    found = mirror(machine_sources(args.apt_dir), args.suite)
    if found is None:
        print(
            f"no Debian mirror for '{args.suite} main' in {args.apt_dir}/sources.list or "
            f"{args.apt_dir}/sources.list.d/ (*.list, *.sources): add one, or set DEBIAN_MIRROR",
            file=sys.stderr,
        )
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
