"""The README's generated blocks match the code."""

from __future__ import annotations

from tests.docs import BLOCKS, README, render


def test_readme_blocks_are_current() -> None:
    text = README.read_text()
    for name in BLOCKS:
        assert f"<!-- {name}:start -->" in text, f"README.md lacks the {name} block"
    assert render(text) == text, "README.md is out of date: run `python -m tests.docs`"
