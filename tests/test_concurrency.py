"""Counts stay exact with many threads, and on 3.12+ with isolated
subinterpreters that each have their own GIL."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Callable

import pyatexit
import pytest
from conftest import SUBINTERPRETERS, report, requires_subinterpreters, run_python

pytestmark = [pytest.mark.emulated, pytest.mark.thread_tally, pytest.mark.races]

needs_counting = pytest.mark.skipif(
    not pyatexit.COUNT_ALL_DEC_INC, reason="pyatexit built without COUNT_ALL_DEC_INC"
)


def hammer(threads: int, work: Callable[[], None]) -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)


def test_shared_counter_across_threads() -> None:
    shared = pyatexit.Counter()

    def work() -> None:
        for _ in range(20000):
            shared.inc()
            shared.inc()
            shared.dec()

    hammer(8, work)
    assert shared.count == 8 * 20000


@needs_counting
def test_process_totals_across_threads() -> None:
    before = pyatexit.inc_dec_counts()

    def work() -> None:
        own = pyatexit.Counter()
        for _ in range(10000):
            own.inc()
            own.dec()
            own.dec()

    hammer(8, work)
    after = pyatexit.inc_dec_counts()
    assert (after[0] - before[0], after[1] - before[1]) == (80000, 160000)


def test_first_allocations_race_registers_once(tmp_path: Path) -> None:
    code = """
        import threading, pyatexit
        barrier = threading.Barrier(16)
        def work():
            barrier.wait()
            pyatexit.Counter().inc()
        ts = [threading.Thread(target=work) for _ in range(16)]
        for t in ts: t.start()
        for t in ts: t.join()
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (report(16, 0), "", 0)


# --- subinterpreters ------------------------------------------------------


@requires_subinterpreters
def test_one_subinterpreter_counts_into_the_report(tmp_path: Path) -> None:
    code = (
        SUBINTERPRETERS
        + """
import pyatexit
main_type = pyatexit.Counter
c = pyatexit.Counter(); c.inc()
interp = create()
run(interp, '''
import pyatexit
c = pyatexit.Counter(40)
for _ in range(1000):
    c.inc()
c.dec()
assert c.count == 1039, c.count
assert pyatexit.inc_dec_counts() == (1001, 1), pyatexit.inc_dec_counts()
''')
interpreters.destroy(interp)
print(pyatexit.inc_dec_counts())
"""
    )
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "(1001, 1)\n" + report(1001, 1),
        "",
        0,
    )


@requires_subinterpreters
def test_each_subinterpreter_gets_its_own_module_and_type(tmp_path: Path) -> None:
    code = (
        SUBINTERPRETERS
        + """
import pyatexit
interp = create()
run(interp, '''
import pyatexit, sys
assert sys.modules["pyatexit"] is pyatexit
main = __import__("builtins")  # nothing is shared with the main interpreter
print(id(pyatexit), id(pyatexit.Counter), flush=True)
''')
interpreters.destroy(interp)
print(id(pyatexit), id(pyatexit.Counter))
"""
    )
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sub_ids, main_ids = result.stdout.splitlines()
    assert set(sub_ids.split()).isdisjoint(main_ids.split())


@requires_subinterpreters
def test_parallel_subinterpreters_exact_totals(tmp_path: Path) -> None:
    code = (
        SUBINTERPRETERS
        + """
import pyatexit
N, INTERPS = 200000, 4
body = f'''
import pyatexit
c = pyatexit.Counter()
for _ in range({N}):
    c.inc()
for _ in range({N} // 2):
    c.dec()
'''
interps = [create() for _ in range(INTERPS)]
threads = [threading.Thread(target=run, args=(i, body)) for i in interps]
for t in threads: t.start()
for t in threads: t.join()
for i in interps:
    interpreters.destroy(i)
# Interpreters made after others finished reuse their tallies.
again = create()
run(again, body)
interpreters.destroy(again)
print(pyatexit.inc_dec_counts())
"""
    )
    result = run_python(code, cwd=tmp_path)
    n = 200000 * 5
    assert (result.stdout, result.stderr, result.returncode) == (
        f"({n}, {n // 2})\n" + report(n, n // 2),
        "",
        0,
    )


@requires_subinterpreters
def test_a_freed_counter_never_gives_its_interpreters_tally_away(
    tmp_path: Path,
) -> None:
    # Each live Counter holds its interpreter's tally, as the module does.
    # If freeing one gave the tally back while the module still counted
    # into it, a subinterpreter would claim it and the two would add to it
    # at the same time, losing counts.
    code = (
        SUBINTERPRETERS
        + """
import pyatexit
pyatexit.Counter()  # made and freed at once
N = 2_000_000
body = f'''
import pyatexit
c = pyatexit.Counter()
for _ in range({N}):
    c.inc()
'''
interp = create()
sub = threading.Thread(target=run, args=(interp, body))
c = pyatexit.Counter()
sub.start()
while sub.is_alive():
    for _ in range(1000):
        c.inc()
sub.join()
interpreters.destroy(interp)
print(pyatexit.inc_dec_counts() == (N + c.count, 0))
"""
    )
    result = run_python(code, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": "/dev/null"})
    assert (result.stdout, result.stderr, result.returncode) == ("True\n", "", 0)


@requires_subinterpreters
def test_first_counter_in_a_subinterpreter_registers_the_report(tmp_path: Path) -> None:
    code = (
        SUBINTERPRETERS
        + """
interp = create()
run(interp, 'import pyatexit; pyatexit.Counter().dec()')
interpreters.destroy(interp)
"""
    )
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (report(0, 1), "", 0)


@pytest.mark.skipif(
    importlib.util.find_spec("concurrent.interpreters") is None,
    reason="concurrent.interpreters is new in Python 3.14",
)
def test_concurrent_interpreters_in_threads(tmp_path: Path) -> None:
    code = """
        import threading
        from concurrent import interpreters
        def work():
            interp = interpreters.create()
            interp.exec(
                "import pyatexit\\n"
                "c = pyatexit.Counter()\\n"
                "for _ in range(50000):\\n"
                "    c.inc()\\n"
            )
            interp.close()
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads: t.start()
        for t in threads: t.join()
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        report(150000, 0),
        "",
        0,
    )


# --- threads that come and go -----------------------------------------------


@needs_counting
def test_threads_created_and_ending_while_others_count(tmp_path: Path) -> None:
    # Long-lived threads count while short-lived ones start, count and end,
    # handing their tallies on; every count reaches the report, including
    # those of threads that ended long before exit.
    code = """
        import threading, pyatexit
        shared = pyatexit.Counter()
        STEADY, ROUNDS = 20000, 60
        def steady():
            own = pyatexit.Counter()
            for _ in range(STEADY):
                own.inc(); shared.dec()
        def brief(k):
            c = pyatexit.Counter()
            for _ in range(k):
                c.inc()
            shared.inc()
        steady_threads = [threading.Thread(target=steady) for _ in range(2)]
        for t in steady_threads: t.start()
        for round in range(ROUNDS):
            batch = [threading.Thread(target=brief, args=(i,)) for i in range(8)]
            for t in batch: t.start()
            for t in batch: t.join()
        for t in steady_threads: t.join()
        steady_calls = 2 * STEADY
        brief_incs = ROUNDS * (sum(range(8)) + 8)
        print(pyatexit.inc_dec_counts() == (steady_calls + brief_incs, steady_calls))
        print(shared.count == ROUNDS * 8 - steady_calls)
        print(steady_calls + brief_incs, steady_calls)
    """
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, second, totals, *rest = result.stdout.splitlines()
    incs, decs = map(int, totals.split())
    assert (first, second) == ("True", "True")
    assert "\n".join(rest) + "\n" == report(incs, decs)


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"),
    reason="only a free-threaded CPython runs without the GIL",
)
def test_import_keeps_the_gil_off(tmp_path: Path) -> None:
    # A module that does not declare Py_mod_gil turns the GIL back on, with a
    # RuntimeWarning, for the whole process.
    code = (
        "import sys, pyatexit; pyatexit.Counter().inc(); print(sys._is_gil_enabled())"
    )
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "False\n" + report(1, 0),
        "",
        0,
    )
