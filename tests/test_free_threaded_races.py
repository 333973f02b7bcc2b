"""Threads that change the objects and dicts the module is reading, on
free-threaded builds: no crash, every value read is one some thread wrote,
counts exact.  Each race runs in a child under the debug allocator, bounded
to a few seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FREE_THREADED, child_env, report, run_checked

pytestmark = [pytest.mark.races]

free_threaded_only = pytest.mark.skipif(
    not FREE_THREADED,
    reason="a race between threads running at once needs a free-threaded build",
)

# Readers run body(i) for `rounds` rounds or until the deadline, but at
# least `at_least` rounds; writers run until the last reader is done.
# HELPERS goes at the top of every race script.
HELPERS = """\
import copy, pickle, sys, threading, time
import pyatexit
DEADLINE = time.monotonic() + 3
def race(writers, readers, rounds=200000, at_least=0):
    stop = threading.Event()
    errors = []
    start = threading.Barrier(len(writers) + len(readers))
    def write(work):
        start.wait()
        i = 0
        try:
            while not stop.is_set():
                work(i); i += 1
        except BaseException as e:
            errors.append(repr(e))
    def read(work):
        start.wait()
        try:
            for i in range(rounds):
                if i >= at_least and time.monotonic() > DEADLINE:
                    break
                work(i)
        except BaseException as e:
            errors.append(repr(e))
    ws = [threading.Thread(target=write, args=(w,)) for w in writers]
    rs = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in ws + rs: t.start()
    for t in rs: t.join()
    stop.set()
    for t in ws: t.join()
    print("errors", errors)
"""


def run_race(tmp_path: Path, body: str) -> tuple[str, str, int]:
    return run_checked(HELPERS + textwrap.dedent(body), tmp_path, timeout=120)


def assert_clean_race(tmp_path: Path, body: str) -> None:
    """The race ran without an exception in any thread, found nothing bad
    (body prints what it found), and counted nothing."""
    assert run_race(tmp_path, body) == (
        "errors []\nbad []\n" + report(0, 0),
        "",
        0,
    )


@free_threaded_only
def test_copy_racing_a_thread_that_sets_an_attribute(tmp_path: Path) -> None:
    body = """\
    class Sub(pyatexit.Counter):
        def __getstate__(self): return self.__dict__
    o = Sub(5); o.x = 10**6
    bad = []
    def writer(i):
        o.x = 10**6 + (i & 0xFFFF)
    def copier(i):
        v = copy.copy(o).x
        if not 10**6 <= v < 10**6 + 0x10000: bad.append(v)
    race([writer], [copier])
    print("bad", bad)
    """
    assert_clean_race(tmp_path, body)


@free_threaded_only
def test_getstate_reduce_and_pickle_racing_dict_writers(tmp_path: Path) -> None:
    body = """\
    class Sub(pyatexit.Counter): pass
    class Slotted(pyatexit.Counter): __slots__ = ("a", "b")
    o, s = Sub(3), Slotted(4)
    o.x = s.a = s.b = 0
    WRITTEN = range(0, 1 << 16)
    bad = []
    def writer(i):
        o.x = i & 0xFFFF
        o.__dict__.pop("y", None) if i & 1 else setattr(o, "y", i & 0xFFFF)
        s.a = i & 0xFFFF
        try:
            if i % 7 == 0: del s.b
            else: s.b = i & 0xFFFF
        except AttributeError:
            pass  # the other writer deleted it first
    def check(obj):
        if type(obj) is Sub:
            if obj.count != 3 or obj.x not in WRITTEN: bad.append(vars(obj))
            if getattr(obj, "y", 0) not in WRITTEN: bad.append(vars(obj))
        else:
            if obj.count != 4 or obj.a not in WRITTEN: bad.append(obj.a)
            if getattr(obj, "b", 0) not in WRITTEN: bad.append(obj.b)
    def reader(i):
        k = i % 5
        if k == 0:
            st = o.__getstate__()
            if st["count"] != 3 or st["x"] not in WRITTEN: bad.append(st)
            attrs, slots = s.__getstate__()
            if attrs["count"] != 4 or slots["a"] not in WRITTEN: bad.append(slots)
        elif k == 1:
            o.__reduce__(); s.__reduce__()
        elif k == 2:
            check(copy.copy(o)); check(copy.copy(s))
        elif k == 3:
            check(copy.deepcopy(o)); check(copy.deepcopy(s))
        else:
            check(pickle.loads(pickle.dumps(o, 5)))
            check(pickle.loads(pickle.dumps(s, 2)))
    race([writer, writer], [reader, reader])
    print("bad", bad[:3])
    """
    assert_clean_race(tmp_path, body)


@free_threaded_only
def test_setstate_racing_writers_of_the_state_dicts(tmp_path: Path) -> None:
    body = """\
    class Sub(pyatexit.Counter): pass
    class Slotted(pyatexit.Counter): __slots__ = ("a", "b", "__dict__")
    attrs = {"count": 1, "x": [0]}
    slots = {"a": [0]}
    o, s = Sub(1), Slotted(1)  # a state caught cleared leaves count as it was
    bad = []
    def writer(i):
        attrs["x"] = [i]
        attrs.pop("y", None) if i & 1 else attrs.__setitem__("y", (i,))
        slots["a"] = [i]
        slots.pop("b", None) if i & 2 else slots.__setitem__("b", (i,))
        if i % 97 == 0:
            attrs.clear(); attrs.update(count=1, x=[i])
            slots.clear(); slots["a"] = [i]
    def restorer(i):
        o.__setstate__(attrs)
        s.__setstate__((attrs, slots))
        for obj in (o, s):
            if obj.count != 1: bad.append(obj.count)
            x = vars(obj).get("x", [0])
            if type(x) is not list or len(x) != 1: bad.append(x)
        a = getattr(s, "a", [0])
        if type(a) is not list or len(a) != 1: bad.append(a)
    race([writer], [restorer, restorer])
    print("bad", bad[:3])
    """
    assert_clean_race(tmp_path, body)


@free_threaded_only
def test_reduce_racing_writers_of_newargs(tmp_path: Path) -> None:
    body = """\
    shared = [1, 2]
    kwargs = {"k": 1}
    class Args(pyatexit.Counter):
        def __new__(cls, *args, **kw):
            o = super().__new__(cls); o.args = (args, kw); return o
        def __getnewargs__(self): return tuple(shared)
        def __getstate__(self):  # what __new__ saw is not part of the state
            return {k: v for k, v in vars(self).items() if k != "args"}
    class WrongArgs(pyatexit.Counter):
        def __getnewargs__(self): return shared
    class ArgsEx(Args):
        # A copy: CPython's own call reads a kwargs dict without a lock.
        def __getnewargs_ex__(self): return (tuple(shared), dict(kwargs))
    objs = [Args(1), ArgsEx(2)]
    wrong = WrongArgs()
    bad = []
    def writer(i):
        shared.append(i)
        del shared[: len(shared) // 2]
        kwargs["k"] = i
        kwargs.pop("j", None) if i & 1 else kwargs.__setitem__("j", i)
    def reducer(i):
        for o in objs:
            c = copy.copy(o)
            if type(c) is not type(o) or c.count != o.count: bad.append(c)
            args, kw = c.args
            if not all(type(a) is int for a in args): bad.append(args)
            if type(o) is ArgsEx and "k" not in kw: bad.append(kw)
        try:
            wrong.__reduce__()
        except TypeError:
            pass
        else:
            bad.append("a list from __getnewargs__ was taken")
    race([writer], [reducer, reducer])
    print("bad", bad[:3])
    """
    assert_clean_race(tmp_path, body)


@free_threaded_only
def test_rebuild_racing_a_writer_of_the_kwargs_dict(tmp_path: Path) -> None:
    """__getnewargs_ex__ hands out a dict that another thread keeps changing.
    The Python class calls cls.__new__(cls, *args, **kwargs), which copies it
    under its lock; _rebuild must not let CPython unpack it unlocked."""
    body = """\
    kwargs = {"k": 1}
    seen = []
    class ArgsEx(pyatexit.Counter):
        def __new__(cls, *args, **kw):
            seen.append(kw)
            return super().__new__(cls)
        def __getnewargs_ex__(self): return ((), kwargs)
    o = ArgsEx(2)
    bad = []
    def writer(i):
        kwargs["k"] = i
        kwargs.pop("j", None) if i & 1 else kwargs.__setitem__("j", i)
    def reducer(i):
        c = copy.copy(o)
        if type(c) is not ArgsEx or c.count != 2: bad.append(c)
        kw = seen.pop()
        if not set(kw) <= {"k", "j"} or not all(type(v) is int for v in kw.values()):
            bad.append(kw)
    race([writer], [reducer, reducer])
    print("bad", bad[:3])
    """
    assert_clean_race(tmp_path, body)


# Class attributes rebound while other threads copy and pickle: each old
# value is freed at once (a callable object, whose freeing CPython does not
# defer as it does a function's), so a look-up that kept a borrowed
# reference would call freed memory, and its __del__ would run while in use.
REBINDING = """\
import functools
class Bound:
    # A method-like class attribute: __get__ binds it to the instance.
    def __init__(self, f): self.f = f
    def __get__(self, obj, cls=None):
        return self if obj is None else functools.partial(self.f, obj)
    def __del__(self): pass
"""


@free_threaded_only
def test_copy_and_pickle_racing_rebound_class_attributes(tmp_path: Path) -> None:
    body = REBINDING + textwrap.dedent(
        """\
    # The slot "a" belongs to Base: a descriptor of A's own would not
    # apply to the object once another thread has made it a B (CPython's
    # own attribute look-up, in pure Python code too).
    class Base(pyatexit.Counter): __slots__ = ("a", "__dict__")
    class A(Base): __slots__ = ()
    class B(Base): __slots__ = ()
    o = A(7); o.a = 1; o.x = 2
    METHODS = {
        "__getnewargs_ex__": lambda self: ((), {}),
        "__getnewargs__": lambda self: (),
        "__getstate__": pyatexit.Counter.__getstate__,
        "__reduce__": pyatexit.Counter.__reduce__,
        "__reduce_ex__": pyatexit.Counter.__reduce_ex__,
    }
    def rebinder(i):
        for cls in (A, B):
            for name, f in METHODS.items():
                setattr(cls, name, Bound(f))
            cls.__slotnames__ = ["a"]
    def swapper(i):
        o.__class__ = B if i & 1 else A
    done = []
    bad = []
    def reader(i):
        k = i % 4
        if k == 0: c = copy.copy(o)
        elif k == 1: c = copy.deepcopy(o)
        else: c = pickle.loads(pickle.dumps(o, i % 6))
        if type(c) not in (A, B) or (c.count, c.a, c.x) != (7, 1, 2): bad.append(c)
        done.append(i)
    race([rebinder, swapper], [reader, reader, reader], at_least=1000)
    print("bad", bad[:3])
    print("raced", len(done) >= 3000)
    """
    )
    assert run_race(tmp_path, body) == (
        "errors []\nbad []\nraced True\n" + report(0, 0),
        "",
        0,
    )


@free_threaded_only
def test_setstate_items_found_by_another_thread(tmp_path: Path) -> None:
    # A key's __hash__ finds the lists of (key, value) pairs alive while
    # __setstate__ runs and hands them to a thread that empties and refills
    # them: the state's items must be a snapshot nobody else can change.
    # (Each look at every object is slow: a few hundred rounds.)
    body = """\
    import gc
    found = []
    class Key(str):
        __eq__ = str.__eq__
        def __hash__(self):
            for obj in gc.get_objects():
                if type(obj) is list and len(obj) == 3 and all(
                    type(x) is tuple and len(x) == 2 for x in obj
                ):
                    found.append(obj)
            return str.__hash__(self)
    class Sub(pyatexit.Counter): pass
    o = Sub()
    done = []
    bad = []
    def mangler(i):
        while found:
            items = found.pop()
            kept = list(items)
            for _ in range(100):
                items.clear(); items.extend(kept)
    def restorer(i):
        o.__setstate__({"count": 5, Key("k"): [i], "y": (i,)})
        if o.count != 5 or len(vars(o)) != 2: bad.append(vars(o))
        done.append(i)
    race([mangler], [restorer, restorer], at_least=100)
    print("bad", bad[:3])
    print("raced", len(done) >= 200)
    """
    assert run_race(tmp_path, body) == (
        "errors []\nbad []\nraced True\n" + report(0, 0),
        "",
        0,
    )


@free_threaded_only
def test_counting_while_other_threads_copy_and_restore(tmp_path: Path) -> None:
    body = """\
    class Sub(pyatexit.Counter): pass
    up, down = Sub(0), Sub(0)
    done = [0, 0, 0]
    def counter(n):
        def work(i):
            up.inc(); down.dec(); up.inc()
            done[n] += 1
        return work
    def copier(i):
        for c in (up, down):
            copy.copy(c); pickle.loads(pickle.dumps(c))
            c.__setstate__(c.__getstate__())
    race([copier], [counter(0), counter(1), counter(2)], rounds=20000)
    total = sum(done)
    print("exact", pyatexit.inc_dec_counts() == (2 * total, total))
    # Each count only moves one way, and a restore puts back a value it
    # had: it lies between its start and what every call would make it.
    print("counts within their bounds", 0 <= up.count <= 2 * total,
          -total <= down.count <= 0)
    """
    out, err, status = run_race(tmp_path, body)
    assert (err, status) == ("", 0)
    head = "errors []\nexact True\ncounts within their bounds True True\n"
    assert out.startswith(head), out
    # The report adds what the three counting threads did.
    (increments,) = [
        int(line.split()[1])
        for line in out.splitlines()
        if line.startswith("Increments:")
    ]
    assert increments % 2 == 0
    assert out == head + report(increments, increments // 2)


@free_threaded_only
def test_first_counter_from_many_threads_at_once(tmp_path: Path) -> None:
    body = """\
    import threading
    n = 8
    bar = threading.Barrier(n)
    def first():
        bar.wait()
        c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
    ts = [threading.Thread(target=first) for _ in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()
    print(pyatexit.inc_dec_counts())
    """
    for _ in range(5):
        assert run_race(tmp_path, body) == ("(16, 8)\n" + report(16, 8), "", 0)


@free_threaded_only
def test_first_counter_in_a_daemon_thread_while_the_program_exits(
    tmp_path: Path,
) -> None:
    # A daemon thread makes the process's first Counter (and registers the
    # report, noting which standard streams are closed) while the main
    # thread ends the program, whose finalisation callback reads those
    # flags: under ThreadSanitizer, no race between the two.
    code = """\
    import threading, pyatexit
    def first():
        pyatexit.Counter().inc()
    threading.Thread(target=first, daemon=True).start()
    """
    ends = {"", report(0, 0), report(1, 0)}
    for _ in range(10):
        out, err, status = run_checked(code, tmp_path)
        assert (out in ends, err, status) == (True, "", 0), out


# A fork while another thread makes the first Counter (and so registers the
# report); two threads keep the sys module's dict busy, which makes the
# registration slower and the window wider.
FORK_DURING_REGISTRATION = """\
import os, sys, threading, warnings, pyatexit
warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
keys = {f"_k{i}": i for i in range(2000)}
def hammer():
    while True: sys.__dict__.update(keys)
for _ in range(HAMMERS): threading.Thread(target=hammer, daemon=True).start()
bar = threading.Barrier(2)
def first():
    bar.wait(); pyatexit.Counter()
threading.Thread(target=first, daemon=True).start()
bar.wait()
pid = os.fork()
if pid == 0:
    c = pyatexit.Counter(); c.inc(); c.inc(); c.inc(); sys.stdout.flush(); sys.exit(0)
os.waitpid(pid, 0); os._exit(0)
"""


# The same program without pyatexit: a forked child of threads that hold
# CPython's own locks (the sys dict's) can hang in it.
CONTROL = (
    FORK_DURING_REGISTRATION.replace(", pyatexit", "")
    .replace("pyatexit.Counter()", "object()")
    .replace("c = object(); c.inc(); c.inc(); c.inc(); ", "")
)


def _fork_runs(
    tmp_path: Path, hammers: int, runs: int, code: str = FORK_DURING_REGISTRATION
) -> tuple[list[str], int]:
    """stdouts of the runs that ended, and how many were stopped after the
    timeout."""
    code = code.replace("HAMMERS", str(hammers))
    finished, hung = [], 0
    for _ in range(runs):
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=6)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the parent and its forked child
            proc.communicate()
            hung += 1
            continue
        assert (err, proc.returncode) == ("", 0)
        finished.append(out)
    return finished, hung


def _check_fork_runs(tmp_path: Path, hammers: int, wanted: int, most: int) -> None:
    """Runs the program until wanted runs have finished (at most `most`
    runs): each finished child printed its own report, whole."""
    finished: list[str] = []
    hung = 0
    while len(finished) < wanted and len(finished) + hung < most:
        ended, stopped = _fork_runs(tmp_path, hammers, 1)
        finished += ended
        hung += stopped
    assert finished == [report(3, 0)] * len(finished)
    assert len(finished) == wanted, f"{hung} of {len(finished) + hung} runs hung"
    if hung:
        # A hang is CPython's only if the program without pyatexit hangs too.
        for _ in range(4 * most):
            if _fork_runs(tmp_path, hammers, 1, CONTROL)[1]:
                break
        else:
            pytest.fail(f"{hung} runs hung; without pyatexit none did")


@pytest.mark.forks_with_threads
@free_threaded_only
def test_fork_during_registration_keeps_the_childs_report(tmp_path: Path) -> None:
    _check_fork_runs(tmp_path, hammers=2, wanted=10, most=40)


@pytest.mark.forks_with_threads
@pytest.mark.parametrize("hammers", [0, 2])
def test_fork_while_another_thread_makes_the_first_counter(
    tmp_path: Path, hammers: int
) -> None:
    # Runs on every build: with a GIL the registration cannot be cut in two
    # by a fork, and the child always reports its own counts.
    _check_fork_runs(tmp_path, hammers, wanted=5, most=20)
