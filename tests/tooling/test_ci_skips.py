"""The CI skip rule itself, run on a throw-away test file in a pytest subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest_plugins = ["pytester"]


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str) -> pytest.RunResult:
    pytester.makepyfile(
        test_inner="""
        import pytest

        def test_allowed():
            pytest.skip("the host lacks a widget")

        def test_not_allowed():
            pytest.skip("the kernel pattern is wrong")

        @pytest.mark.skipif(True, reason="marked away")
        def test_marked():
            pass
        """
    )
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "ci-skip-allowlist.txt").write_text(
        "# comment\ntest_inner.py::test_allowed | lacks a widget  # why\n"
    )
    pytester.makeconftest(
        "from tests import skips\n"
        "def pytest_configure(config):\n"
        "    config.pluginmanager.register(skips, 'ci-skips')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "addopts=")


def test_under_ci_only_allow_listed_skips_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "true")
    # A skip in a test's body fails it; a skip mark (decided at setup) makes it an error.
    result.assert_outcomes(skipped=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*skip summary*",
            "3 skipped: 1 on tests/ci-skip-allowlist.txt, 2 not (failures under CI=true)",
            "*[[]allowed[]] test_inner.py::test_allowed: the host lacks a widget",
            "*[[]NOT ALLOWED IN CI[]] test_inner.py::test_not_allowed: the kernel pattern is wrong",
            "*[[]NOT ALLOWED IN CI[]] test_inner.py::test_marked: marked away",
        ]
    )


def test_outside_ci_skips_stay_skips_and_are_listed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*skip summary*", "3 skipped: 1 on tests/ci-skip-allowlist.txt, 2 not"])
