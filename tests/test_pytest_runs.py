"""A pytest run of a user's own tests: the report comes after pytest's
summary, whatever pytest does with descriptor 1 while the tests run."""

from __future__ import annotations

import re

import pytest
from conftest import report

pytestmark = [pytest.mark.nested_pytest]

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


# Enough tests that pytest-xdist's load scheduling gives some to each of two
# workers from its first batch; each makes its own Counter.
XDIST_USER_TESTS = """
import pyatexit
import pytest

@pytest.mark.parametrize("n", range(8))
def test_counts(n):
    c = pyatexit.Counter()
    for _ in range(n + 1):
        c.inc()
    c.dec()
    assert c.count == n
"""
XDIST_CALLS = (sum(n + 1 for n in range(8)), 8)
REPORT_RE = re.compile(
    r"==== dump_inc_dec_count\(\) ====\n"
    r"Increments: (\d+)\nDecrements: (\d+)\n"
    r"== dump_inc_dec_count\(\) END ==\n"
)


def test_xdist_workers_reports_vanish(pytester: pytest.Pytester) -> None:
    # Each worker ends through finalisation, so it writes its report, but to
    # its descriptor 1, which pytest-xdist points at /dev/null: the output
    # the user sees has no report at all.
    pytester.makepyfile(test_user=XDIST_USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    assert result.ret == pytest.ExitCode.OK
    summary, after = split_at_summary(result.outlines)
    assert re.fullmatch(r"=+ 8 passed in [\d.]+s =+", summary)
    assert after == ""
    assert "dump_inc_dec_count" not in "\n".join(result.outlines + result.errlines)


def test_xdist_workers_append_their_reports_to_the_dump_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = pytester.path / "counts.txt"
    monkeypatch.setenv("PYATEXIT_DUMP_FILE", str(dump))
    pytester.makepyfile(test_user=XDIST_USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    assert result.ret == pytest.ExitCode.OK
    summary, after = split_at_summary(result.outlines)
    assert re.fullmatch(r"=+ 8 passed in [\d.]+s =+", summary)
    assert after == ""
    text = dump.read_text()
    reports = [m.groups() for m in REPORT_RE.finditer(text)]
    # Whole reports and nothing else, one per worker (the controller makes
    # no Counter), adding up to the calls of the run.
    assert "".join(report(int(i), int(d)) for i, d in reports) == text
    assert len(reports) == 2
    assert (
        sum(int(i) for i, _ in reports),
        sum(int(d) for _, d in reports),
    ) == XDIST_CALLS


# A conftest that gives sys.stdout a file object of its own on descriptor 1,
# which finalisation closes when it frees it.
REWRAPPING_CONFTEST = """
import sys
sys.stdout = open(1, "w", encoding="utf-8", buffering=1)
"""


# (Under --capture=sys and tee-sys, pytest puts its own object in
# sys.stdout and frees the conftest's while the run goes on, which closes
# descriptor 1 then: not even pytest's summary reaches it.)
@pytest.mark.parametrize("capture", [None, "-s", "--capture=fd"])
def test_report_follows_the_summary_when_stdout_is_rewrapped(
    pytester: pytest.Pytester, capture: str
) -> None:
    pytester.makeconftest(REWRAPPING_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS.format(expected=-1))
    args = ["-p", "no:cacheprovider"] + ([capture] if capture else [])
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.OK
    summary, after = split_at_summary(result.outlines)
    assert re.fullmatch(r"=+ 2 passed in [\d.]+s =+", summary)
    assert after == report(2, 2)
