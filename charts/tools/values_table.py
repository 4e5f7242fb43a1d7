#!/usr/bin/env python3
"""The chart README's values table, generated from the `# --` comments in values.yaml.

    charts/tools/values_table.py            # rewrite the table in charts/coredump-shipper/README.md
    charts/tools/values_table.py --check    # exit 1 if the README is stale or a key lacks a comment

A `# -- text` comment documents the key on the next line; a key whose value is a non-empty mapping
and has no comment of its own is a section, and its children are documented one by one. Only PyYAML
is needed (it is in the dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "coredump-shipper"
BEGIN = "<!-- values-table:begin -->"
END = "<!-- values-table:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+):(?P<rest>.*)$")


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "int" if isinstance(value, int) else "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def _lookup(values: dict[str, Any], path: list[str]) -> Any:
    node: Any = values
    for part in path:
        node = node[part]
    return node


def rows(values_text: str) -> tuple[list[Row], list[str]]:
    """Documented keys in file order, and the dotted names of keys that have no comment."""
    values = yaml.safe_load(values_text)
    out: list[Row] = []
    undocumented: list[str] = []
    documented: set[str] = set()
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    in_comment = False
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment, in_comment = [stripped[4:].strip()], True
            continue
        if stripped.startswith("#") and in_comment:
            comment.append(stripped[1:].strip())  # continuation of a multi-line `# --` comment
            continue
        in_comment = False
        match = _KEY.match(line)
        if not match or stripped.startswith("-"):
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = [name for _, name in stack]
        dotted = ".".join(path)
        # Keys inside a documented value (a probe's httpGet, resources' limits) are part of its
        # default, not rows of their own.
        if any(".".join(path[:i]) in documented for i in range(1, len(path))):
            comment = []
            continue
        value = _lookup(values, path)
        if comment:
            out.append(Row(dotted, _type_of(value), _default(value), " ".join(comment)))
            documented.add(dotted)
            comment = []
        elif not (isinstance(value, dict) and value):
            undocumented.append(dotted)
    return out, undocumented


def _default(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def table(values_text: str) -> str:
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for row in rows(values_text)[0]:
        default = row.default.replace("|", "\\|")
        description = row.description.replace("|", "\\|")
        lines.append(f"| `{row.key}` | {row.type} | `{default}` | {description} |")
    return "\n".join(lines)


def render_readme(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table(values_text)}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail instead of rewriting")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args()
    values_text = (args.chart / "values.yaml").read_text()
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    _, undocumented = rows(values_text)
    if undocumented:
        print(f"values.yaml keys without a `# --` comment: {', '.join(undocumented)}", file=sys.stderr)
        return 1
    if BEGIN not in readme or END not in readme:
        print(f"{readme_path}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    fresh = render_readme(readme, values_text)
    if args.check:
        if fresh != readme:
            print(f"{readme_path} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
