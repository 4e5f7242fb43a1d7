"""Generated parts of README.md, so the docs cannot drift from the code.

`python -m tests.docs` rewrites the blocks between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
tests/test_docs.py fails when README.md differs from what this would write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from coredump_shipper.config import SETTINGS

README = Path(__file__).resolve().parent.parent / "README.md"


def settings_table() -> str:
    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        env = f"`{setting.env}`" + "".join(f", `{alias}`" for alias in setting.aliases)
        if setting.default is None:
            default = "required"
        elif setting.default == "":
            default = "(see meaning)"
        else:
            default = f"`{setting.default}`"
        rows.append(f"| `{setting.flag}` | {env} | {default} | {setting.help} |")
    return "\n".join(rows)


BLOCKS: dict[str, Callable[[], str]] = {"settings": settings_table}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
        text = pattern.sub(rf"\g<1>{_escape(make())}\g<2>", text)
    return text


def _escape(replacement: str) -> str:
    return replacement.replace("\\", "\\\\")


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
