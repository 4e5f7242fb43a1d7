"""The docs' generated blocks (tools/readme.py) match the code, each on exactly one page."""

from __future__ import annotations

from tools import readme


def test_each_generated_block_lives_on_one_page() -> None:
    for name, pages in readme.homes().items():
        assert len(pages) == 1, f"the {name} block is on {len(pages)} pages: {pages}"


def test_generated_blocks_are_current() -> None:
    assert readme.stale() == [], "out of date: run `python -m tools.readme`"


def test_a_block_is_rendered_wherever_it_lives() -> None:
    # Any page, any place on it: the same block in made-up text is filled in from the code.
    text = "# Some page\n\nintro\n\n<!-- rbac:start -->\nold\n<!-- rbac:end -->\n\nafter\n"
    rendered = readme.render(text)
    assert rendered.startswith("# Some page\n\nintro\n\n<!-- rbac:start -->\n```yaml\nrules:\n")
    assert rendered.endswith("```\n<!-- rbac:end -->\n\nafter\n")
    assert readme.render(rendered) == rendered
