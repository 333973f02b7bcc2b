"""When Py_AtExit() has no free slot left."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_python

pytestmark = [pytest.mark.emulated, pytest.mark.ctypes]

# Fills every free Py_AtExit() slot with a harmless C function (getpid takes
# no arguments and touches no Python state, so it is safe after finalisation).
FILL_SLOTS = """
import ctypes
libc = ctypes.CDLL(None)
getpid = ctypes.cast(libc.getpid, ctypes.c_void_p)
at_exit = ctypes.pythonapi.Py_AtExit
at_exit.argtypes = [ctypes.c_void_p]
at_exit.restype = ctypes.c_int
filled = 0
while at_exit(getpid) == 0:
    filled += 1
assert 0 < filled <= 32, filled
"""


def test_no_free_slot_raises_runtime_error_and_retries(tmp_path: Path) -> None:
    code = (
        FILL_SLOTS
        + """
import pyatexit
for attempt in range(2):
    try:
        pyatexit.Counter()
    except RuntimeError as e:
        print(type(e.__cause__).__name__, e)
    else:
        print("allocated")
"""
    )
    result = run_python(code, cwd=tmp_path)
    message = (
        "pyatexit cannot register its exit report: Py_AtExit() has no free slot "
        "(CPython allows 32 per process, shared by all extensions)"
    )
    assert (result.stdout, result.stderr, result.returncode) == (
        f"NoneType {message}\n" * 2,
        "",
        0,
    )


def test_registered_before_the_slots_ran_out(tmp_path: Path) -> None:
    code = (
        "import pyatexit\nc = pyatexit.Counter()\n"
        + FILL_SLOTS
        + "c.inc()\npyatexit.Counter().inc()\n"
    )
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:3] == ["Increments: 2", "Decrements: 0"]
