"""The README's generated blocks match the code."""

from __future__ import annotations

import re

from tests.docs import BLOCKS, README, render


def test_readme_blocks_are_current() -> None:
    text = README.read_text()
    for name in BLOCKS:
        assert f"<!-- {name}:start -->" in text, f"README.md lacks the {name} block"
    assert render(text) == text, "README.md is out of date: run `python -m tests.docs`"


def test_module_map_names_every_module() -> None:
    text = README.read_text()
    section = text.split("### Module map", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"`([a-z0-9_]+)`", section))
    package = README.parent / "coredump_shipper"
    modules = {path.stem for path in package.glob("*.py")} - {"__init__", "__main__"}
    assert modules - named == set(), "modules missing from README's module map"
