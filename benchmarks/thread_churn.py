"""Memory of a process whose short-lived threads each count, as the number
of threads grows: the tallies stay as many as the threads alive at once.

    python benchmarks/thread_churn.py [THREADS]     # default 1,000,000

Prints the peak resident set size after each tenth of the threads, and the
counts, which must equal the number of threads.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading

import pyatexit


def peak_mib() -> float:
    """This process's peak resident set size (ru_maxrss would include the
    parent's, inherited across fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    os.environ["PYATEXIT_DUMP_FILE"] = os.devnull  # the report is not the point
    c = pyatexit.Counter()
    build = "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "GIL"
    print(f"CPython {sys.version.split()[0]} ({build}), {total:,} threads")
    print()
    print("| threads so far | peak RSS (MiB) | inc() counted |")
    print("|--:|--:|--:|")
    step = max(total // 10, 1)
    for done in range(0, total, step):
        for _ in range(min(step, total - done)):
            t = threading.Thread(target=c.inc)
            t.start()
            t.join()
        peak = peak_mib()
        counted = pyatexit.inc_dec_counts()[0]
        print(f"| {done + step:,} | {peak:.1f} | {counted:,} |", flush=True)
    assert c.count == total


if __name__ == "__main__":
    main()
