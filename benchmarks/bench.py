"""Benchmarks pyatexit against its uninstrumented build, the chapter's code,
pure Python, and the other ways to count calls in a running process.

    python benchmarks/bench.py            # full run (pyperf), a few minutes
    python benchmarks/bench.py --quick    # one value each, only to prove it runs

Every variant is built from this checkout into a cache folder, with the same
compiler and flags, and loaded side by side in each pyperf worker.  The
"mechanism" variants patch only how a count reaches its tally, to compare
the chosen one with the alternatives.

On a free-threaded CPython it times threads instead: one thread on its own
Counter, two threads each on its own Counter, and two threads on one shared
Counter, in ns per inc() call (wall time / all the calls of all threads).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import pyperf

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "Py_AtExitDemo.c"
CHAPTER = ROOT / "benchmarks" / "chapter_counter.c"

# The workers' exit reports go nowhere (the report reads this at exit).
os.environ["PYATEXIT_DUMP_FILE"] = os.devnull

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
TALLY_ADD_BODY = """    atomic_store_explicit(n,
                          atomic_load_explicit(n, memory_order_relaxed) + 1,
                          memory_order_relaxed);"""
FETCH_ADD_BODY = "    atomic_fetch_add_explicit(n, 1, memory_order_relaxed);"
THREAD_TALLY = "static _Thread_local tally *thread_tally TLS_MODEL_INITIAL_EXEC;"
DEFAULT_TLS = "static _Thread_local tally *thread_tally;"


class Mechanism(NamedTuple):
    patches: list[tuple[str, str]]
    cflags: list[str]


# Builds with a GIL: the chosen per-interpreter tally against the others.
GIL_MECHANISMS = {
    # The chapter's approach: one plain global, not exact once interpreters
    # run in parallel.
    "plain global ++": Mechanism(
        [
            (
                "static _Atomic(tally *) tallies;",
                "static _Atomic(tally *) tallies;\nstatic size_t plain_counts[2];",
            ),
            (
                "#define tally_step(t, up) tally_add((up) ? &(t)->inc : &(t)->dec)",
                "#define tally_step(t, up) ((void)(t), plain_counts[up]++)",
            ),
        ],
        [],
    ),
    # An atomic read-modify-write (lock xadd): exact anywhere, but a locked
    # instruction on every call.
    "atomic fetch_add": Mechanism([(TALLY_ADD_BODY, FETCH_ADD_BODY)], []),
}
# Free-threaded builds: the chosen per-thread tally reached through
# initial-exec TLS, against the other TLS models and the shared tally.
FT_MECHANISMS = {
    "thread tally, default TLS model (__tls_get_addr)": Mechanism(
        [(THREAD_TALLY, DEFAULT_TLS)], []
    ),
    "thread tally, TLS descriptors (-mtls-dialect=gnu2)": Mechanism(
        [(THREAD_TALLY, DEFAULT_TLS)],
        ["-mtls-dialect=gnu2"] if platform.machine() == "x86_64" else [],
    ),
    "one tally per interpreter, atomic fetch_add": Mechanism(
        [
            (
                "#if defined(COUNT_ALL_DEC_INC) && !defined(Py_GIL_DISABLED)",
                "#if defined(COUNT_ALL_DEC_INC)",
            ),
            (TALLY_ADD_BODY, FETCH_ADD_BODY),
        ],
        [],
    ),
}
MECHANISMS = FT_MECHANISMS if FREE_THREADED else GIL_MECHANISMS


class PyCounter:
    """The chapter's pure-Python class."""

    def __init__(self, count: int = 0) -> None:
        self.count = count

    def inc(self) -> None:
        self.count += 1

    def dec(self) -> None:
        self.count -= 1


def build(
    name: str,
    module: str,
    source: str,
    macros: list[tuple[str, None]],
    cflags: list[str] | None = None,
) -> Path:
    """Builds one variant (cached by content) and returns the .so path."""
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    key = hashlib.sha256(
        f"{sys.version}{macros}{cflags}{source}".encode()
        + sysconfig.get_platform().encode()
    ).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "pyatexit-bench" / f"{name}-{key}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = out / f"{module}{suffix}"
    if not target.exists():
        out.mkdir(parents=True, exist_ok=True)
        src = out / f"{module}_src.c"
        src.write_text(source)
        ext = Extension(
            module, [str(src)], define_macros=macros, extra_compile_args=cflags or []
        )
        cmd = build_ext(Distribution({"ext_modules": [ext]}))
        cmd.build_lib = str(out)
        cmd.build_temp = str(out / "tmp")
        cmd.ensure_finalized()
        cmd.run()
    return target


def load(module: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


UNCHECKED = (
    "return count_known_own(op) ? counter_step_own(op, up)",
    "return 1 ? counter_step_own(op, up)",
)
UNCHECKED_LABEL = "instrumented, class never looked at"


def variants() -> dict[str, ModuleType]:
    text = SOURCE.read_text()
    counting = [("COUNT_ALL_DEC_INC", None)]
    mods = {
        "instrumented": load("pyatexit", build("on", "pyatexit", text, counting)),
        "uninstrumented": load("pyatexit", build("off", "pyatexit", text, [])),
    }
    # The chapter's module declares no Py_mod_gil: loading it would turn the
    # GIL back on in a free-threaded process.
    if not FREE_THREADED:
        mods["chapter"] = load(
            "chapter_counter",
            build("chapter", "chapter_counter", CHAPTER.read_text(), []),
        )
    for label, mechanism in MECHANISMS.items():
        patched = text
        for old, new in mechanism.patches:
            if old not in patched:
                raise SystemExit(f"benchmark out of date: {old!r} not in the source")
            patched = patched.replace(old, new)
        tag = re.sub(r"[^a-z0-9]+", "-", label.lower())
        path = build(tag, "pyatexit", patched, counting, mechanism.cflags)
        mods[label] = load("pyatexit", path)
    # What a subclass instance's inc() would cost if nothing looked at its
    # class: the rest is CPython's, whose call of a method descriptor is
    # specialised for the descriptor's exact type only.
    if UNCHECKED[0] not in text:
        raise SystemExit(f"benchmark out of date: {UNCHECKED[0]!r} not in the source")
    mods[UNCHECKED_LABEL] = load(
        "pyatexit",
        build("unchecked", "pyatexit", text.replace(*UNCHECKED), counting),
    )
    assert mods["instrumented"].COUNT_ALL_DEC_INC
    assert not mods["uninstrumented"].COUNT_ALL_DEC_INC
    return mods


OPERATIONS = {
    "inc()": ("c.inc()", "c = Counter(5)"),
    "dec()": ("c.dec()", "c = Counter(5)"),
    "Counter(5)": ("Counter(5)", "pass"),
    "read count": ("c.count", "c = Counter(5)"),
    "set count": ("c.count = 7", "c = Counter(5)"),
}

PROFILERS = {
    "cProfile": (
        "import cProfile; p = cProfile.Profile(); c = Counter(5); p.enable()",
        "p.disable()",
    ),
    "sys.setprofile counter": (
        "import sys, collections\n"
        "calls = collections.Counter()\n"
        "def hook(frame, event, arg):\n"
        "    if event == 'c_call':\n"
        "        calls[arg] += 1\n"
        "c = Counter(5); sys.setprofile(hook)",
        "sys.setprofile(None)",
    ),
    "sys.monitoring CALL counter": (
        "import sys, collections\n"
        "mon = sys.monitoring; TOOL = mon.PROFILER_ID\n"
        "calls = collections.Counter()\n"
        "def on_call(code, offset, callable, arg0):\n"
        "    calls[callable] += 1\n"
        "mon.use_tool_id(TOOL, 'bench')\n"
        "mon.register_callback(TOOL, mon.events.CALL, on_call)\n"
        "c = Counter(5); mon.set_events(TOOL, mon.events.CALL)",
        "mon.set_events(TOOL, 0); mon.register_callback(TOOL, mon.events.CALL, None);"
        " mon.free_tool_id(TOOL)",
    ),
}


DUPLICATE = 20


def time_func(stmt: str, setup: str, teardown: str, ns: dict[str, Any]) -> Any:
    """A pyperf time function running stmt DUPLICATE times per loop, with
    setup and teardown outside the timed part (like timeit, which pyperf's
    own timeit() wraps without returning the result)."""

    def indent(code: str) -> str:
        return textwrap.indent(code, "    ")

    src = (
        "def inner(loops, timer):\n"
        f"{indent(setup)}\n"
        "    it = range(loops)\n"
        "    t0 = timer()\n"
        "    for _ in it:\n"
        f"{indent(indent(chr(10).join([stmt] * DUPLICATE)))}\n"
        "    t1 = timer()\n"
        f"{indent(teardown)}\n"
        "    return t1 - t0\n"
    )
    scope = dict(ns)
    exec(compile(src, "<bench>", "exec"), scope)
    inner = scope["inner"]
    return lambda loops: inner(loops, time.perf_counter)


# Threaded cases: (threads, whether they share one Counter).
THREAD_CASES = {
    "1 thread, own Counter": (1, False),
    "2 threads, own Counters": (2, False),
    "2 threads, one shared Counter": (2, True),
}
THREAD_GOALS = {
    "1 thread, own Counter": 1.02,
    "2 threads, own Counters": 1.05,
    "2 threads, one shared Counter": 1.05,
}


def threads_func(cls: Any, threads: int, shared: bool) -> Callable[[int], float]:
    """A pyperf time function: threads calling inc() DUPLICATE times per loop,
    started together; the wall time of all of them."""
    body = "\n".join(["        inc()"] * DUPLICATE)
    scope: dict[str, Any] = {}
    exec(
        "def work(inc, barrier, loops):\n"
        "    barrier.wait()\n"
        "    for _ in range(loops):\n"
        f"{body}\n",
        scope,
    )
    work = scope["work"]

    def func(loops: int) -> float:
        one = cls()
        counters = [one if shared else cls() for _ in range(threads)]
        barrier = threading.Barrier(threads + 1)
        workers = [
            threading.Thread(target=work, args=(c.inc, barrier, loops))
            for c in counters
        ]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        return time.perf_counter() - t0

    return func


def main_threads(runner: Any, args: Any, mods: dict[str, ModuleType]) -> None:
    """The threaded table, on a free-threaded CPython."""
    results: dict[tuple[str, str], float] = {}
    classes: dict[str, Any] = {
        "instrumented": mods["instrumented"].Counter,
        "uninstrumented": mods["uninstrumented"].Counter,
        "pure Python": PyCounter,
    }
    classes.update({label: mods[label].Counter for label in MECHANISMS})
    for case, (threads, shared) in THREAD_CASES.items():
        for variant, cls in classes.items():
            bench = runner.bench_time_func(
                f"inc() {case} [{variant}]",
                threads_func(cls, threads, shared),
                inner_loops=DUPLICATE * threads,
            )
            if bench is not None and not args.worker:
                results[case, variant] = bench.median()
    if args.worker or not results:
        return
    report_threads(results)
    report_instructions(mods, 20_000 if "--quick" in sys.argv else 200_000)


def report_threads(results: dict[tuple[str, str], float]) -> None:
    ns = {key: value * 1e9 for key, value in results.items()}
    print()
    print(
        f"CPython {sys.version.split()[0]} free-threaded on "
        f"{sysconfig.get_platform()}, {os.cpu_count()} CPUs; medians in ns per "
        "inc() (wall time / calls of all threads)"
    )
    print()
    print("| case | variant | ns | / uninstrumented | / pure Python |")
    print("|---|---|--:|--:|--:|")
    for (case, variant), value in ns.items():
        base, py = ns[case, "uninstrumented"], ns[case, "pure Python"]
        print(
            f"| {case} | {variant} | {value:.1f} | {value / base:.3f} "
            f"| {value / py:.3f} |"
        )
    print()
    print("| goal: instrumented / uninstrumented | measured | target | met |")
    print("|---|--:|--:|---|")
    for case, target in THREAD_GOALS.items():
        value = ns[case, "instrumented"] / ns[case, "uninstrumented"]
        print(f"| {case} | {value:.3f} | <= {target:.2f} | {verdict(value, target)} |")


def verdict(value: float, target: float) -> str:
    """Whether a goal is met; with --quick (one unrepeated value per case,
    only to prove the benchmarks run) no verdict."""
    if "--quick" in sys.argv:
        return "not judged (--quick)"
    return "yes" if value <= target else "NO"


def main() -> None:
    argv = sys.argv[1:]
    if "--quick" in argv:
        argv = [a for a in argv if a != "--quick"] + ["--debug-single-value", "--quiet"]
    runner = pyperf.Runner()
    args = runner.parse_args(argv)
    mods = variants()
    if FREE_THREADED:
        main_threads(runner, args, mods)
        return
    results: dict[tuple[str, str], float] = {}

    def timeit(
        op: str, variant: str, stmt: str, setup: str, teardown: str = "pass", **ns: Any
    ) -> None:
        func = time_func(stmt, setup, teardown, ns)
        bench = runner.bench_time_func(f"{op} [{variant}]", func, inner_loops=DUPLICATE)
        if bench is not None and not args.worker:
            results[op, variant] = bench.median()

    classes = {
        "instrumented": mods["instrumented"].Counter,
        "uninstrumented": mods["uninstrumented"].Counter,
        "chapter (T_INT)": mods["chapter"].Counter,
        "pure Python": PyCounter,
    }
    for op, (stmt, setup) in OPERATIONS.items():
        for variant, cls in classes.items():
            timeit(op, variant, stmt, setup, Counter=cls)
    for label in MECHANISMS:
        timeit("inc()", label, "c.inc()", "c = Counter(5)", Counter=mods[label].Counter)
    for label, (setup, teardown) in PROFILERS.items():
        if "monitoring" in label and sys.version_info < (3, 12):
            continue
        counter = mods["uninstrumented"].Counter
        timeit(
            "inc()",
            f"uninstrumented + {label}",
            "c.inc()",
            setup,
            teardown,
            Counter=counter,
        )
    timeit(
        "inc_dec_counts()",
        "instrumented",
        "f()",
        "pass",
        f=mods["instrumented"].inc_dec_counts,
    )

    if args.worker or not results:
        return
    report(results)
    report_instructions(mods, 20_000 if "--quick" in sys.argv else 200_000)


# Runs n calls of c.inc() on one variant, on a Counter or an instance of a
# plain subclass; callgrind counts the instructions.
CALLGRIND_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("pyatexit", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
class Sub(mod.Counter): pass
def run(c, n):
    for _ in range(n):
        c.inc()
run((Sub if sys.argv[3] == "subclass" else mod.Counter)(5), int(sys.argv[2]))
"""


def instructions(path: str, n: int, kind: str = "Counter") -> int:
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            CALLGRIND_CHILD,
            path,
            str(n),
            kind,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    assert found, run.stderr
    return int(found.group(1))


def report_instructions(mods: dict[str, ModuleType], n: int) -> None:
    """Instructions per inc() call (loop included), from callgrind: the same
    on every run, whatever else the machine is doing."""
    print()
    if shutil.which("valgrind") is None:
        print("Instructions per inc(): skipped, valgrind is not installed.")
        return
    per = {}
    for label in ("uninstrumented", "instrumented", *MECHANISMS):
        path = str(mods[label].__file__)
        per[label] = (instructions(path, n) - instructions(path, 0)) / n
    base = per["uninstrumented"]
    print(f"Instructions per c.inc() in a loop (callgrind, {n} calls):")
    print()
    print("| variant | instructions | / uninstrumented |")
    print("|---|--:|--:|")
    for label, value in per.items():
        print(f"| {label} | {value:.1f} | {value / base:.3f} |")
    print()
    print("The same on an instance of `class Sub(Counter): pass`:")
    print()
    print("| variant | instructions | / a Counter's |")
    print("|---|--:|--:|")
    for label in ("uninstrumented", "instrumented", UNCHECKED_LABEL):
        path = str(mods[label].__file__)
        sub = (
            instructions(path, n, "subclass") - instructions(path, 0, "subclass")
        ) / n
        own = per.get(label, per["instrumented"])
        print(f"| {label} | {sub:.1f} | {sub / own:.3f} |")


def report(results: dict[tuple[str, str], float]) -> None:
    ns = {key: value * 1e9 for key, value in results.items()}
    print()
    print(
        f"CPython {sys.version.split()[0]} on {sysconfig.get_platform()}, "
        f"{os.cpu_count()} CPUs; medians in ns per operation"
    )
    print()
    header = "| operation | variant | ns | / uninstrumented | / pure Python |"
    print(header)
    print("|---|---|--:|--:|--:|")
    for (op, variant), value in ns.items():
        base = ns.get((op, "uninstrumented"))
        py = ns.get((op, "pure Python"))
        ratio_base = f"{value / base:.3f}" if base else ""
        ratio_py = f"{value / py:.3f}" if py else ""
        print(f"| {op} | {variant} | {value:.1f} | {ratio_base} | {ratio_py} |")
    inst = ns[("inc()", "instrumented")]
    print()
    print("Other ways to count inc() calls, as a multiple of the instrumented build:")
    for (op, variant), value in ns.items():
        if op == "inc()" and variant.startswith("uninstrumented +"):
            print(f"- {variant.split('+ ', 1)[1]}: {value / inst:.1f}x")
    goals = [
        (
            "instrumented inc() / uninstrumented inc()",
            inst / ns[("inc()", "uninstrumented")],
            1.02,
        ),
        ("inc() / pure Python", inst / ns[("inc()", "pure Python")], 0.25),
        (
            "Counter(5) / pure Python",
            ns[("Counter(5)", "instrumented")] / ns[("Counter(5)", "pure Python")],
            0.50,
        ),
        (
            "read count / chapter's T_INT member",
            ns[("read count", "instrumented")] / ns[("read count", "chapter (T_INT)")],
            1.0,
        ),
    ]
    print()
    print("| goal | measured | target | met |")
    print("|---|--:|--:|---|")
    for name, value, target in goals:
        print(f"| {name} | {value:.3f} | <= {target:.2f} | {verdict(value, target)} |")


if __name__ == "__main__":
    main()
