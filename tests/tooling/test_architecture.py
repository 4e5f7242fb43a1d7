"""The package's layers hold (tools/architecture.py) and the development guide's module map is current."""

from __future__ import annotations

import ast
from pathlib import Path

from tools import architecture
from tools.architecture import Module


def test_no_import_goes_up_a_layer_or_closes_a_cycle() -> None:
    found = architecture.modules()
    assert {module.area for module in found} <= set(architecture.LAYERS), "an area missing from LAYERS"
    assert architecture.upward_imports(found) == []
    assert architecture.cycles(found) == []


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    # The same checks on a made-up package: a low area reaching up, and two modules importing each other.
    made_up = [
        Module("capture.pattern", Path("p"), "", frozenset({"daemon.service"})),
        Module("daemon.service", Path("s"), "", frozenset({"daemon.pipeline"})),
        Module("daemon.pipeline", Path("q"), "", frozenset({"daemon.service"})),
    ]
    assert architecture.upward_imports(made_up) == ["capture.pattern imports daemon.service"]
    assert architecture.cycles(made_up) == [["daemon.pipeline", "daemon.service"]]


def test_subpackage_init_files_only_name_their_area() -> None:
    # Anything more (an import, a re-export) would load the area for every command that touches it.
    inits = sorted(architecture.PACKAGE.glob("*/__init__.py"))
    assert len(inits) == len(architecture.areas()) >= 10
    for init in inits:
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init} does more than name its area"
        assert architecture.areas()[init.parent.name], f"{init} has no line naming its area"


def test_every_module_says_what_it_is_for() -> None:
    assert [m.name for m in architecture.modules() if not m.summary] == []


def test_the_module_map_is_current() -> None:
    text = architecture.DEVELOPMENT.read_text()
    assert architecture.render(text) == text, (
        "docs/development.md is out of date: python -m tools.architecture --write"
    )
    for module in architecture.modules():
        assert f"`{module.name.replace('.', '/')}.py`" in text
