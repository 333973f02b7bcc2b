"""A pytest run of a user's own tests: the report comes after pytest's
summary, whatever pytest does with descriptor 1 while the tests run."""

from __future__ import annotations

import re

import pytest
from conftest import report

USER_TESTS = """
import pyatexit

def test_counts():
    c = pyatexit.Counter(3)
    c.inc(); c.inc(); c.dec()
    assert c.count == 4

def test_more():
    d = pyatexit.Counter()
    d.dec()
    assert d.count == {expected}
"""


def split_at_summary(lines: list[str]) -> tuple[str, str]:
    """pytest's closing summary line, and all the output after it."""
    for i in range(len(lines) - 1, -1, -1):
        if re.fullmatch(r"=+ .* in [\d.]+s =+", lines[i]):
            return lines[i], "".join(line + "\n" for line in lines[i + 1 :])
    raise AssertionError("no summary line in:\n" + "\n".join(lines))


@pytest.fixture(autouse=True)
def _report_to_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYATEXIT_DUMP_FILE", raising=False)


@pytest.mark.parametrize(
    "capture", [None, "-s", "--capture=sys", "--capture=tee-sys", "--capture=fd"]
)
def test_report_follows_the_summary(pytester: pytest.Pytester, capture: str) -> None:
    pytester.makepyfile(test_user=USER_TESTS.format(expected=-1))
    args = ["-p", "no:cacheprovider"] + ([capture] if capture else [])
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.OK
    summary, after = split_at_summary(result.outlines)
    assert re.fullmatch(r"=+ 2 passed in [\d.]+s =+", summary)
    assert after == report(2, 2)


def test_failing_run_keeps_pytest_exit_status(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS.format(expected=5))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    summary, after = split_at_summary(result.outlines)
    assert re.fullmatch(r"=+ 1 failed, 1 passed in [\d.]+s =+", summary)
    assert after == report(2, 2)
