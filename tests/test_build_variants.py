"""The build switches: PYATEXIT_COUNT_ALL_DEC_INC=0 builds without counting;
PYATEXIT_TALLY_START starts the counts near 2**32 to show that they do not
wrap there, even on a 32-bit system."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyatexit
import pytest
from conftest import CHAPTER_SESSION, ROOT, build_variant, report, run_python

pytestmark = [pytest.mark.build_switches]


def test_default_build_is_instrumented(tmp_path: Path) -> None:
    result = run_python(
        "import pyatexit; print(pyatexit.COUNT_ALL_DEC_INC)", cwd=tmp_path
    )
    assert result.stdout == "True\n"
    assert pyatexit.COUNT_ALL_DEC_INC is True


def test_uninstrumented_build_behaves_and_never_reports(
    tmp_path: Path, uninstrumented: Path
) -> None:
    code = f"""
        import pyatexit
        assert pyatexit.__file__.startswith({str(uninstrumented)!r}), pyatexit.__file__
        print(pyatexit.COUNT_ALL_DEC_INC)
        c = pyatexit.Counter(8); c.inc(); c.inc(); c.dec(); print(c.count)
        try:
            pyatexit.inc_dec_counts()
        except RuntimeError as e:
            print("RuntimeError:", e)
    """
    result = run_python(code, cwd=tmp_path, pythonpath=uninstrumented)
    assert (result.stdout, result.stderr, result.returncode) == (
        "False\n9\nRuntimeError: pyatexit was built without COUNT_ALL_DEC_INC, "
        "so it does not count inc() and dec() calls\n",
        "",
        0,
    )


def test_uninstrumented_chapter_session(tmp_path: Path, uninstrumented: Path) -> None:
    result = run_python(
        "", args=("-i",), stdin=CHAPTER_SESSION, cwd=tmp_path, pythonpath=uninstrumented
    )
    assert (result.stdout, result.returncode) == ("9\n-2\n", 0)


def test_instrumented_chapter_session_for_comparison(tmp_path: Path) -> None:
    result = run_python("", args=("-i",), stdin=CHAPTER_SESSION, cwd=tmp_path)
    assert (result.stdout, result.returncode) == ("9\n-2\n" + report(2, 3), 0)


def test_bad_switch_value_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={"PYATEXIT_COUNT_ALL_DEC_INC": "no", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "PYATEXIT_COUNT_ALL_DEC_INC must be 0 or 1, not 'no'" in result.stderr


@pytest.mark.parametrize(
    ("switch", "value", "message"),
    [
        ("PYATEXIT_PORTABLE_TLS", "yes", "must be 0 or 1, not 'yes'"),
        ("PYATEXIT_TALLY_START", "-1", "must be from 0 to 2**64-1, not '-1'"),
        ("PYATEXIT_TALLY_START", "0x10", "must be from 0 to 2**64-1, not '0x10'"),
        (
            "PYATEXIT_TALLY_START",
            str(2**64),
            f"must be from 0 to 2**64-1, not '{2**64}'",
        ),
    ],
)
def test_bad_test_switch_value_is_refused(
    switch: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={switch: value, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert f"{switch} {message}" in result.stderr


@pytest.fixture(scope="module")
def starting_near_2_32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pyatexit built so that every tally starts at 2**32-2."""
    return build_variant(tmp_path_factory, PYATEXIT_TALLY_START=str(2**32 - 2))


def test_counts_go_past_2_32(tmp_path: Path, starting_near_2_32: Path) -> None:
    # Three inc() and one dec() from 2**32-2: a 32-bit count would wrap to
    # (1, 4294967295), and a report printed through a 32-bit format would
    # show 1.
    code = f"""
        import pyatexit
        assert pyatexit.__file__.startswith({str(starting_near_2_32)!r})
        c = pyatexit.Counter()
        c.inc(); c.inc(); c.inc(); c.dec()
        print(c.count, pyatexit.inc_dec_counts())
    """
    result = run_python(code, cwd=tmp_path, pythonpath=starting_near_2_32)
    assert (result.stdout, result.stderr, result.returncode) == (
        "2 (4294967297, 4294967295)\n" + report(4294967297, 4294967295),
        "",
        0,
    )
