"""What a user sees when the process ends: every exit path, in a child."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from conftest import CHAPTER_SESSION, ROOT, report, run_python

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.sdist,
    pytest.mark.thread_tally,
    pytest.mark.races,
]


def test_chapter_session_in_the_interactive_repl(tmp_path: Path) -> None:
    result = run_python("", args=("-i",), stdin=CHAPTER_SESSION, cwd=tmp_path)
    assert result.stdout == "9\n-2\n" + report(2, 3)
    assert result.returncode == 0
    assert "Error" not in result.stderr


def test_chapter_session_as_a_script(tmp_path: Path) -> None:
    script = tmp_path / "session.py"
    script.write_text(
        CHAPTER_SESSION.replace("c.count", "print(c.count)").replace(
            "d.count", "print(d.count)"
        )
    )
    result = run_python("", args=(str(script),), cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "9\n-2\n" + report(2, 3),
        "",
        0,
    )


def test_demo_example_replays_the_chapter(tmp_path: Path) -> None:
    expected = (
        "".join(
            f">>> {line}\n" + {"c.count": "9\n", "d.count": "-2\n"}.get(line, "")
            for line in CHAPTER_SESSION.splitlines()
        )
        + ">>> ^D\n"
        + report(2, 3)
    )
    demo = ROOT / "examples" / "chapter_session.py"
    result = run_python("", args=(str(demo),), cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (expected, "", 0)


def test_import_without_a_counter_prints_no_report(tmp_path: Path) -> None:
    result = run_python(
        "import pyatexit; print(pyatexit.inc_dec_counts())", cwd=tmp_path
    )
    assert (result.stdout, result.stderr, result.returncode) == ("(0, 0)\n", "", 0)


def test_a_counter_that_is_never_used_still_reports(tmp_path: Path) -> None:
    result = run_python("import pyatexit; pyatexit.Counter()", cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (report(0, 0), "", 0)


@pytest.mark.parametrize("status", [0, 3, 255])
def test_sys_exit_keeps_its_status(tmp_path: Path, status: int) -> None:
    code = f"""
        import sys, pyatexit
        c = pyatexit.Counter()
        c.inc(); c.inc(); c.dec()
        sys.exit({status})
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        report(2, 1),
        "",
        status,
    )


def test_sys_exit_with_a_message(tmp_path: Path) -> None:
    code = "import sys, pyatexit; pyatexit.Counter().dec(); sys.exit('bye')"
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        report(0, 1),
        "bye\n",
        1,
    )


def test_uncaught_exception(tmp_path: Path) -> None:
    code = "import pyatexit; pyatexit.Counter().inc(); raise ValueError('boom')"
    result = run_python(code, cwd=tmp_path)
    assert result.stdout == report(1, 0)
    assert result.returncode == 1
    assert result.stderr.endswith("ValueError: boom\n")


def test_keyboard_interrupt(tmp_path: Path) -> None:
    code = "import pyatexit; pyatexit.Counter().inc(); raise KeyboardInterrupt"
    result = run_python(code, cwd=tmp_path)
    assert result.stdout == report(1, 0)
    # CPython ends an unhandled KeyboardInterrupt by killing itself with SIGINT.
    assert result.returncode == -signal.SIGINT
    assert result.stderr.endswith("KeyboardInterrupt\n")


def test_real_sigint_during_a_loop(tmp_path: Path) -> None:
    # CPython leaves SIGINT ignored if it started so (a background job of a
    # non-interactive shell): the child asks for the usual handler.
    code = """
        import os, signal, pyatexit
        signal.signal(signal.SIGINT, signal.default_int_handler)
        c = pyatexit.Counter()
        for i in range(5):
            c.inc()
        os.kill(os.getpid(), signal.SIGINT)
        for i in range(100): pass
    """
    result = run_python(code, cwd=tmp_path)
    assert result.stdout == report(5, 0)
    assert result.returncode == -signal.SIGINT


def test_os_exit_skips_the_report(tmp_path: Path) -> None:
    # os._exit() ends the process without finalisation: Py_AtExit never runs.
    code = "import os, pyatexit; pyatexit.Counter().inc(); os._exit(7)"
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == ("", "", 7)


def test_exec_skips_the_report(tmp_path: Path) -> None:
    # os.execv() replaces the program without finalising, as os._exit does.
    code = """
        import os, sys, pyatexit
        pyatexit.Counter().inc()
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-c", "print('new program')"])
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == ("new program\n", "", 0)


def test_fatal_signal_skips_the_report(tmp_path: Path) -> None:
    code = """
        import os, signal, pyatexit
        pyatexit.Counter().inc()
        os.kill(os.getpid(), signal.SIGTERM)
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.returncode) == ("", -signal.SIGTERM)


def test_many_counters_and_subclasses_one_report(tmp_path: Path) -> None:
    code = """
        import pyatexit
        class Up(pyatexit.Counter):
            def inc(self):
                super().inc(); super().inc()
        class Named(pyatexit.Counter):
            def __init__(self, name, number=0):
                super().__init__(number)
                self.name = name
        counters = [pyatexit.Counter(i) for i in range(100)]
        counters += [Up(), Named("x", 4)]
        for c in counters:
            c.inc()
        for c in counters[::2]:
            c.dec()
        print(counters[-2].count, counters[-1].count, counters[-1].name)
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "1 5 x\n" + report(103, 51),
        "",
        0,
    )


def test_threads_report_exact_totals(tmp_path: Path) -> None:
    code = """
        import sys, threading, pyatexit
        sys.setswitchinterval(1e-6)
        shared = pyatexit.Counter()
        def work():
            own = pyatexit.Counter()
            for _ in range(20000):
                shared.inc(); own.inc(); own.dec()
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(shared.count)
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "160000\n" + report(320000, 160000),
        "",
        0,
    )


def test_report_follows_other_output(tmp_path: Path) -> None:
    code = """
        import atexit, pyatexit
        atexit.register(print, "atexit handler")
        pyatexit.Counter().inc()
        print("end of script", end="")
    """
    result = run_python(code, cwd=tmp_path)
    assert result.stdout == "end of scriptatexit handler\n" + report(1, 0)


def test_report_after_output_redirected_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        result = run_python(
            "import pyatexit; print('hi'); pyatexit.Counter().inc()",
            cwd=tmp_path,
            stdout=f,
            stderr=sys.stderr,
        )
    assert result.returncode == 0
    assert out.read_text() == "hi\n" + report(1, 0)


def test_daemon_thread_still_counting_at_exit(tmp_path: Path) -> None:
    # The report reads the counts while a daemon thread may still be between
    # two calls: it must neither crash nor change the exit status.
    code = """
        import threading, pyatexit
        c = pyatexit.Counter()
        started = threading.Event()
        def spin():
            started.set()
            while True:
                c.inc()
        threading.Thread(target=spin, daemon=True).start()
        started.wait()
        while c.count < 1000:
            pass
        print("main done")
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stderr, result.returncode) == ("", 0)
    lines = result.stdout.splitlines()
    assert len(lines) == 5, lines
    assert lines[:2] == ["main done", "==== dump_inc_dec_count() ===="]
    assert lines[2].startswith("Increments: ")
    assert int(lines[2][len("Increments: ") :]) >= 1000
    assert lines[3:] == ["Decrements: 0", "== dump_inc_dec_count() END =="]
