"""Skips are failures in CI unless allow-listed: a test that cannot run there must say so out loud.

Under CI=true (any of 1/true/yes), a skipped test is reported as failed unless a line of
tests/ci-skip-allowlist.txt names it (a test id glob) and a text its skip reason contains. Every run
ends with a "skip summary" section listing each skip, its reason and whether the allow-list covers it.
Loaded by tests/conftest.py; documented in docs/development.md (Testing: set-up and skips under CI).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

ALLOW_LIST = Path("tests") / "ci-skip-allowlist.txt"


@dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str
    allowed: bool


_SKIPS = pytest.StashKey[list[Skip]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def load_allow_list(path: Path) -> list[tuple[str, str]]:
    """(test id glob, reason text) pairs; `#` starts a comment, blank lines are ignored."""
    entries = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pattern, bar, reason = line.partition("|")
        if not bar or not pattern.strip() or not reason.strip():
            raise pytest.UsageError(f"{path}:{number}: expected '<test id glob> | <reason text>'")
        entries.append((pattern.strip(), reason.strip()))
    return entries


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _judge(config: pytest.Config, report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    allow_list = load_allow_list(config.rootpath / ALLOW_LIST)
    allowed = any(fnmatch.fnmatchcase(report.nodeid, glob) and text in reason for glob, text in allow_list)
    config.stash.setdefault(_SKIPS, []).append(Skip(report.nodeid, reason, allowed))
    if in_ci() and not allowed:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true and not on {ALLOW_LIST}: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _judge(item.config, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _judge(collector.config, report)
    return report


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    skips = config.stash.get(_SKIPS, [])
    allowed = sum(skip.allowed for skip in skips)
    terminalreporter.section("skip summary")
    terminalreporter.line(
        f"{len(skips)} skipped: {allowed} on {ALLOW_LIST}, {len(skips) - allowed} not"
        + (" (failures under CI=true)" if in_ci() else "")
    )
    for skip in skips:
        mark = "allowed" if skip.allowed else "NOT ALLOWED IN CI"
        terminalreporter.line(f"  [{mark}] {skip.nodeid}: {skip.reason}")
