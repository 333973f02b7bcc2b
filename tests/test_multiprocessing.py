"""multiprocessing's workers are processes of their own, each with its own counts:
whether one reports depends on how multiprocessing ends it. A `spawn` worker is a
new interpreter that ends with sys.exit(), and reports; a `fork` worker, and a
`forkserver` one (forked from the server), ends with os._exit(), and does not; a
worker that Pool.terminate() kills by SIGTERM does not."""

from __future__ import annotations

import multiprocessing
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import report, run_python

# A program whose parent makes 1000 calls to inc() before it starts its workers
# and 3 to dec() after, so that its report is (1000, 3); argv names the start
# method and how the workers end. Each worker of a pool makes a Counter and calls
# dec() once when it starts (start()), so that a worker that reports has one
# decrement whatever tasks it ran; the tasks add 1 + 10 + 100 increments in all.
# At exit, after multiprocessing's own exit function (registered after this one,
# so run before it) has ended any pool left open, the parent writes the workers'
# exit codes, sorted, to standard error.
PROGRAM = """
import atexit, sys

workers = []
if __name__ == "__main__":
    atexit.register(
        lambda: print("exit codes:", *sorted(w.exitcode for w in workers),
                      file=sys.stderr)
    )

import multiprocessing, time
from concurrent.futures import ProcessPoolExecutor
import pyatexit

TASKS = [1, 10, 100]
counter = None
started = None
pool = None


def start(queue=None):
    global counter, started
    counter = pyatexit.Counter()
    counter.dec()
    started = queue


def work(n):
    global counter
    if counter is None:
        counter = pyatexit.Counter()
    for _ in range(n):
        counter.inc()
    return n


def leave(n):
    work(n)
    sys.exit(3)


def hang(n):
    work(n)
    started.put(n)
    time.sleep(600)


def main(method, ending):
    global pool
    if method == "default":
        ctx = multiprocessing.get_context()
        print("start method:", ctx.get_start_method(), file=sys.stderr)
    else:
        ctx = multiprocessing.get_context(method)
    if ending == "preload":
        ctx.set_forkserver_preload(["preloaded"])
    parent = pyatexit.Counter()
    for _ in range(1000):
        parent.inc()
    if ending in ("process", "preload"):
        workers.extend(ctx.Process(target=work, args=(n,)) for n in TASKS[:2])
        workers.append(ctx.Process(target=leave, args=(TASKS[2],)))
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    elif ending == "executor":
        with ProcessPoolExecutor(2, mp_context=ctx, initializer=start) as executor:
            assert list(executor.map(work, TASKS)) == TASKS
            workers.extend(multiprocessing.active_children())
    elif ending == "busy-pool-with":
        queue = ctx.Queue()
        with ctx.Pool(2, initializer=start, initargs=(queue,)) as pool:
            pool.map_async(hang, [1, 10], chunksize=1)
            assert sorted(queue.get(timeout=60) for _ in range(2)) == [1, 10]
            workers.extend(multiprocessing.active_children())
    elif ending == "pool-with":
        with ctx.Pool(2, initializer=start) as pool:
            assert pool.map(work, TASKS) == TASKS
            workers.extend(multiprocessing.active_children())
    else:
        pool = ctx.Pool(2, initializer=start)
        assert pool.map(work, TASKS) == TASKS
        workers.extend(multiprocessing.active_children())
        if ending == "pool-close":
            pool.close()
            pool.join()
        elif ending == "pool-terminate":
            pool.terminate()
            pool.join()
        else:
            assert ending == "pool-open"
    for _ in range(3):
        parent.dec()


if __name__ == "__main__":
    main(*sys.argv[1:])
"""

PARENT = (1000, 3)
TASKS_INCREMENTS = 1 + 10 + 100
KILLED = -signal.SIGTERM
ENDINGS = [
    "process",
    "pool-close",
    "executor",
    "pool-terminate",
    "pool-with",
    "pool-open",
]

REPORT = re.compile(
    r"==== dump_inc_dec_count\(\) ====\n"
    r"Increments: (\d+)\nDecrements: (\d+)\n"
    r"== dump_inc_dec_count\(\) END ==\n"
)


def needs(method: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        method not in multiprocessing.get_all_start_methods(),
        reason=f"no {method} start method on this platform",
    )


FORKED = [pytest.param(m, marks=needs(m)) for m in ("fork", "forkserver")]


def run_program(
    tmp_path: Path, method: str, ending: str, **env: str
) -> subprocess.CompletedProcess[str]:
    # A file, not -c: a spawned worker imports the parent's main module.
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    # A pool left open is the point of "pool-open": a debug CPython's
    # ResourceWarning about it is not the program's output.
    warnings = ("-W", "ignore::ResourceWarning")
    return run_python(
        "", args=(*warnings, str(program), method, ending), cwd=tmp_path, env=env
    )


def reports_in(text: str) -> list[tuple[int, int]]:
    """The reports in text, in order; text must hold nothing else."""
    assert REPORT.sub("", text) == "", text
    return [(int(m[1]), int(m[2])) for m in REPORT.finditer(text)]


def exit_codes(stderr: str) -> list[int]:
    """The workers' exit codes that the program wrote, and nothing else."""
    match = re.fullmatch(r"exit codes:((?: -?\d+)*)\n", stderr)
    assert match is not None, stderr
    return [int(code) for code in match[1].split()]


def check_pool_workers(workers: list[tuple[int, int]], codes: list[int]) -> None:
    # Each worker that reports made one decrement when it started; between
    # them, the workers ran every task.
    assert len(workers) == len(codes)
    assert [dec for _, dec in workers] == [1] * len(workers)
    assert sum(inc for inc, _ in workers) == TASKS_INCREMENTS


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("method", FORKED)
def test_forked_workers_never_report(tmp_path: Path, method: str, ending: str) -> None:
    # popen_fork and the forkserver end each child with os._exit(): the only
    # report is the parent's, with the parent's own calls.
    result = run_program(tmp_path, method, ending)
    assert (result.stdout, result.returncode) == (report(*PARENT), 0)
    codes = exit_codes(result.stderr)
    if ending == "process":
        assert codes == [0, 0, 3]
    elif ending in ("pool-close", "executor"):
        assert codes == [0] * len(codes)
        assert 1 <= len(codes) <= 2
    else:
        # terminate() tells idle workers to stop, then kills any left
        assert len(codes) == 2
        assert set(codes) <= {0, KILLED}


@needs("spawn")
def test_spawned_processes_report_before_the_parent(tmp_path: Path) -> None:
    result = run_program(tmp_path, "spawn", "process")
    # the parent joins its workers before it ends; their order varies
    *workers, parent = reports_in(result.stdout)
    assert (parent, sorted(workers)) == (PARENT, [(1, 0), (10, 0), (100, 0)])
    # sys.exit(3) in the target: the worker's exit code, and still its report
    assert (exit_codes(result.stderr), result.returncode) == ([0, 0, 3], 0)


@needs("spawn")
@pytest.mark.parametrize("ending", ["pool-close", "executor"])
def test_spawned_pool_workers_that_end_report(tmp_path: Path, ending: str) -> None:
    result = run_program(tmp_path, "spawn", ending)
    *workers, parent = reports_in(result.stdout)
    codes = exit_codes(result.stderr)
    assert (parent, result.returncode) == (PARENT, 0)
    # a Pool starts all its workers; an executor may need only one
    expected = [[0, 0]] if ending == "pool-close" else [[0], [0, 0]]
    assert codes in expected
    check_pool_workers(workers, codes)


@needs("spawn")
@pytest.mark.parametrize("ending", ["pool-terminate", "pool-with", "pool-open"])
def test_spawned_pool_workers_that_terminate_kills_do_not_report(
    tmp_path: Path, ending: str
) -> None:
    result = run_program(tmp_path, "spawn", ending)
    *workers, parent = reports_in(result.stdout)
    codes = exit_codes(result.stderr)
    assert (parent, result.returncode) == (PARENT, 0)
    assert len(codes) == 2
    assert set(codes) <= {0, KILLED}
    # A spawned worker takes long to finalise: terminate() nearly always kills
    # it on its way out. One that ended first (exit code 0) has reported.
    assert len(workers) == codes.count(0)
    assert [dec for _, dec in workers] == [1] * len(workers)
    if len(workers) == 2:
        check_pool_workers(workers, codes)


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=needs(m)) for m in ("spawn", "fork", "forkserver")]
)
def test_busy_workers_killed_at_the_end_of_a_with_block(
    tmp_path: Path, method: str
) -> None:
    # Each worker has counted (start() and hang()) and sleeps in its task:
    # the end of the with block kills both, and their calls are never reported.
    result = run_program(tmp_path, method, "busy-pool-with")
    assert (result.stdout, result.stderr, result.returncode) == (
        report(*PARENT),
        f"exit codes: {KILLED} {KILLED}\n",
        0,
    )


@needs("spawn")
def test_one_dump_file_collects_every_report(tmp_path: Path) -> None:
    dump = tmp_path / "counts.txt"
    result = run_program(tmp_path, "spawn", "pool-close", PYATEXIT_DUMP_FILE=str(dump))
    assert (result.stdout, result.stderr, result.returncode) == (
        "",
        "exit codes: 0 0\n",
        0,
    )
    # each process appends its own report; the parent's comes last
    *workers, parent = reports_in(dump.read_text())
    assert parent == PARENT
    check_pool_workers(workers, [0, 0])
    everything = [*workers, parent]
    assert (sum(i for i, _ in everything), sum(d for _, d in everything)) == (
        1000 + TASKS_INCREMENTS,
        3 + 2,
    )


@needs("forkserver")
def test_a_forkserver_with_a_counter_reports_after_the_parent(tmp_path: Path) -> None:
    # The server imports the modules it preloads, and ends normally (SystemExit)
    # once every process that may ask it to fork has gone: after the parent.
    (tmp_path / "preloaded.py").write_text(
        "import pyatexit\ncounter = pyatexit.Counter()\ncounter.dec()\ncounter.dec()\n"
    )
    result = run_program(tmp_path, "forkserver", "preload")
    assert (result.stdout, result.stderr, result.returncode) == (
        report(*PARENT) + report(0, 2),
        "exit codes: 0 0 3\n",
        0,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="the default start method on Linux")
def test_default_start_method_on_linux(tmp_path: Path) -> None:
    method = "forkserver" if sys.version_info >= (3, 14) else "fork"
    result = run_program(tmp_path, "default", "pool-close")
    assert (result.stdout, result.stderr, result.returncode) == (
        report(*PARENT),
        f"start method: {method}\nexit codes: 0 0\n",
        0,
    )
