"""The package's architecture read from the code: its areas, each module's job and who imports whom.

    python -m tools.architecture          # print the package graph and any import that goes up
    python -m tools.architecture --write  # regenerate the module map in docs/development.md

Each subpackage of `coredump_shipper` is one area. The areas form layers: a module may import from
its own area and from areas below it, never from one above, so the one-way data flow of the daemon
(watcher -> queue -> worker -> S3 -> after-upload) is also the direction of the imports. The layers,
lowest first, are LAYERS; `tests/tooling/test_architecture.py` fails on an import that goes up, on a cycle
between modules, on a subpackage `__init__` that does more than name its area, and on a stale map.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "coredump_shipper"
DEVELOPMENT = ROOT / "docs" / "development.md"
NAME = "coredump_shipper"

# Lowest first. `errors` and `stopping` are the package's two shared leaves (they import nothing of
# it); `cli` is the entry point above everything.
LAYERS = (
    "errors",
    "stopping",
    "capture",
    "ops",
    "bucket",
    "kube",
    "core",
    "config",
    "s3",
    "ship",
    "diagnostics",
    "daemon",
    "browse",
    "cli",
    "__main__",
)


@dataclass(frozen=True)
class Module:
    name: str  # dotted, without the package: "ship.shipper", "errors"
    path: Path
    summary: str  # the docstring's first sentence
    imports: frozenset[str]  # modules of the package it imports (dotted, without the package)

    @property
    def area(self) -> str:
        return self.name.split(".")[0]


def _summary(tree: ast.Module) -> str:
    paragraph = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
    return re.split(r"(?<=\.) (?=[A-Z`])", paragraph, maxsplit=1)[0]


def _imports(tree: ast.Module, known: set[str]) -> frozenset[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(NAME):
            base = node.module[len(NAME) + 1 :]
            for alias in node.names:
                target = f"{base}.{alias.name}" if base else alias.name
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name[len(NAME) + 1 :] for a in node.names if a.name.startswith(NAME + "."))
    return frozenset(name for name in found if name in known)


def modules() -> list[Module]:
    paths = {
        ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py"
    }
    known = set(paths)
    found = []
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        found.append(Module(name, path, _summary(tree), _imports(tree, known)))
    return found


def areas() -> dict[str, str]:
    """Each subpackage and the one line its `__init__.py` says about it."""
    return {
        init.parent.name: " ".join((ast.get_docstring(ast.parse(init.read_text())) or "").split())
        for init in sorted(PACKAGE.glob("*/__init__.py"))
    }


def upward_imports(found: list[Module]) -> list[str]:
    rank = {area: index for index, area in enumerate(LAYERS)}
    return [
        f"{module.name} imports {target}"
        for module in found
        for target in sorted(module.imports)
        if rank[target.split(".")[0]] > rank[module.area]
    ]


def _reachable(graph: dict[str, list[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def cycles(found: list[Module]) -> list[list[str]]:
    """Every import cycle between modules, each as the sorted list of the modules in it."""
    graph = {module.name: sorted(module.imports) for module in found}
    reach = {name: _reachable(graph, name) for name in graph}
    groups = {
        tuple(sorted(other for other in reach[name] if name in reach[other]))
        for name in graph
        if name in reach[name]
    }
    return sorted(list(group) for group in groups)


def area_graph(found: list[Module]) -> dict[str, list[str]]:
    """Each area and the areas it imports from, highest first."""
    rank = {area: index for index, area in enumerate(LAYERS)}
    edges: dict[str, set[str]] = {area: set() for area in LAYERS}
    for module in found:
        edges[module.area].update(t.split(".")[0] for t in module.imports if t.split(".")[0] != module.area)
    return {area: sorted(edges[area], key=rank.__getitem__, reverse=True) for area in reversed(LAYERS)}


def module_map(found: list[Module]) -> str:
    """The markdown the development guide carries between its module-map markers."""
    described = areas()
    lines = ["Areas, highest layer first; each imports only from the areas listed after it.", ""]
    lines += ["```text"]
    for area, below in area_graph(found).items():
        lines.append(f"{area:<12} -> {', '.join(below) if below else '(nothing of the package)'}")
    lines += ["```", ""]
    lines += ["| Module | Job |", "|---|---|"]
    for area in reversed(LAYERS):
        if area in described:
            lines.append(f"| **`{area}/`** | **{described[area]}** |")
        for module in sorted((m for m in found if m.area == area), key=lambda m: m.name):
            job = module.summary.replace("|", "\\|")
            lines.append(f"| `{module.name.replace('.', '/')}.py` | {job} |")
    return "\n".join(lines)


def render(text: str) -> str:
    start, end = "<!-- module-map:start -->", "<!-- module-map:end -->"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{start}\n{module_map(modules())}\n{end}{tail}"


def main(argv: list[str]) -> int:
    found = modules()
    if "--write" in argv:
        DEVELOPMENT.write_text(render(DEVELOPMENT.read_text()))
        return 0
    for area, below in area_graph(found).items():
        print(f"{area:<12} -> {' '.join(below)}")
    problems = upward_imports(found) + [" -> ".join(cycle) for cycle in cycles(found)]
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
