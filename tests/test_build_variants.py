"""The build switch: PYATEXIT_COUNT_ALL_DEC_INC=0 builds without counting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyatexit
from conftest import CHAPTER_SESSION, ROOT, report, run_python


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
