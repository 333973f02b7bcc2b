"""Each process reports the calls made in it: a forked child starts at zero,
so the reports of a process tree add up to the calls made in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import report, run_python

pytestmark = [pytest.mark.emulated, pytest.mark.thread_tally]

# A process in a tree: (incs before forking, decs after its children end,
# how it ends, its children).
Node = tuple[int, int, str, list["Node"]]

TREE_SCRIPT = """
import os, sys, pyatexit
c = pyatexit.Counter()
def run(node):
    incs, decs, ending, children = node
    for _ in range(incs):
        c.inc()
    pids = []
    for child in children:
        pid = os.fork()
        if pid == 0:
            run(child)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    for _ in range(decs):
        c.dec()
    if ending == "os._exit":
        os._exit(0)
    sys.exit(0)
run({tree!r})
"""

REPORT = re.compile(
    r"==== dump_inc_dec_count\(\) ====\n"
    r"Increments: (\d+)\nDecrements: (\d+)\n"
    r"== dump_inc_dec_count\(\) END ==\n"
)


def reports_in(text: str) -> list[tuple[int, int]]:
    """The reports in text, which must hold nothing else."""
    found = [(int(m[1]), int(m[2])) for m in REPORT.finditer(text)]
    assert REPORT.sub("", text) == "", text
    return found


def normal_exits(node: Node) -> list[tuple[int, int]]:
    incs, decs, ending, children = node
    own = [(incs, decs)] if ending == "sys.exit" else []
    return own + [r for child in children for r in normal_exits(child)]


def test_parent_and_forked_children_report_their_own_calls(tmp_path: Path) -> None:
    tree: Node = (1000, 0, "sys.exit", [(0, 1, "sys.exit", [])] * 3)
    result = run_python(TREE_SCRIPT.format(tree=tree), cwd=tmp_path)
    assert (result.stderr, result.returncode) == ("", 0)
    assert sorted(reports_in(result.stdout)) == sorted([(0, 1)] * 3 + [(1000, 0)])


TREES: list[Node] = [
    # forks of forks, some ending normally and some with os._exit
    (
        5,
        7,
        "sys.exit",
        [
            (11, 13, "os._exit", [(17, 19, "sys.exit", []), (23, 0, "os._exit", [])]),
            (29, 31, "sys.exit", [(37, 41, "sys.exit", [(43, 47, "sys.exit", [])])]),
        ],
    ),
    (0, 0, "sys.exit", [(3, 0, "sys.exit", [(0, 2, "os._exit", [])])] * 2),
]


@pytest.mark.parametrize("tree", TREES)
def test_reports_of_a_process_tree_add_up(tmp_path: Path, tree: Node) -> None:
    result = run_python(TREE_SCRIPT.format(tree=tree), cwd=tmp_path)
    assert (result.stderr, result.returncode) == ("", 0)
    found = reports_in(result.stdout)
    expected = normal_exits(tree)
    assert sorted(found) == sorted(expected)
    assert tuple(map(sum, zip(*found))) == tuple(map(sum, zip(*expected)))


def test_child_forked_from_another_thread_counts_from_zero(tmp_path: Path) -> None:
    # A child forked from a thread has only that thread; it ends with
    # os._exit (its thread cannot finalise the interpreter), after printing
    # what it counted.
    code = """
        import os, threading, pyatexit
        c = pyatexit.Counter()
        for _ in range(10):
            c.inc()
        def work():
            c.inc()
            pid = os.fork()
            if pid == 0:
                before = pyatexit.inc_dec_counts()
                c.dec(); c.dec()
                other = threading.Thread(target=c.dec)
                other.start(); other.join()
                print(before, pyatexit.inc_dec_counts(), flush=True)
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0
        t = threading.Thread(target=work)
        t.start(); t.join()
        c.dec()
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.returncode) == (
        "(0, 0) (0, 3)\n" + report(11, 1),
        0,
    )


def test_multiprocessing_fork_workers_leave_the_parent_report_alone(
    tmp_path: Path,
) -> None:
    # multiprocessing's workers end with os._exit: no report of their own,
    # and their calls are not in the parent's.
    code = """
        import multiprocessing, pyatexit
        c = pyatexit.Counter()
        def work(n, queue=None):
            for _ in range(n):
                c.inc()
            if queue is not None:
                queue.put(pyatexit.inc_dec_counts())
        if __name__ == "__main__":
            c.dec()
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(2) as pool:
                pool.map(work, [100, 200, 300])
            queue = ctx.Queue()
            p = ctx.Process(target=work, args=(50, queue))
            p.start()
            print(queue.get(timeout=60))
            p.join()
            print(p.exitcode)
            c.inc()
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.returncode) == ("(50, 0)\n0\n" + report(1, 1), 0)
