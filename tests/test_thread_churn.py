"""Memory stays bounded however many short-lived threads count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_python

pytestmark = [pytest.mark.thread_tally, pytest.mark.thread_churn]


@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="AddressSanitizer holds freed memory in quarantine: the process grows "
    "whatever pyatexit does",
)
def test_memory_bounded_with_many_short_lived_threads(tmp_path: Path) -> None:
    # A thread's tally goes back when the thread ends and the next thread
    # takes it: 12,000 threads that each count once must not keep 12,000
    # tallies (64 bytes each and more with malloc's overhead, so 750 KiB or
    # more).  A start and join can take tens of milliseconds on a busy
    # machine: the timeout is for a hang.
    code = """
        import threading, pyatexit
        def peak_kib():  # this process's own peak, unlike ru_maxrss
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        c = pyatexit.Counter()
        def churn(n):
            for _ in range(n):
                t = threading.Thread(target=c.inc)
                t.start(); t.join()
        churn(2000)
        before = peak_kib()
        churn(12000)
        after = peak_kib()
        print(c.count, pyatexit.inc_dec_counts(), after - before < 512)
    """
    result = run_python(
        code, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": "/dev/null"}, timeout=900
    )
    assert (result.stdout, result.stderr, result.returncode) == (
        "14000 (14000, 0) True\n",
        "",
        0,
    )
