"""Where the report goes when the standard output is not a healthy stream,
and PYATEXIT_DUMP_FILE."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO

import pytest
from conftest import (
    SUBINTERPRETERS,
    build_shared_library,
    report,
    requires_subinterpreters,
    run_python,
)

COUNT = "import pyatexit; c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()\n"


def run_with_fd1(
    code: str, tmp_path: Path, fd1: int | None, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Runs code with standard output on fd1, or with it closed if None."""
    cmd = [sys.executable, *args, "-c", code]
    if fd1 is None:
        # The shell closes descriptor 1 before the interpreter starts.
        cmd = ["/bin/sh", "-c", 'exec "$0" "$@" >&-', *cmd]
    return subprocess.run(
        cmd,
        stdout=fd1,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("sigpipe", ["SIG_IGN", "SIG_DFL"])
def test_pipe_whose_reader_left(tmp_path: Path, sigpipe: str) -> None:
    # With SIGPIPE at its default (a common idiom for command-line tools) a
    # careless write would kill the process and change its exit status.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        code = (
            f"import signal; signal.signal(signal.SIGPIPE, signal.{sigpipe})\n" + COUNT
        )
        result = run_with_fd1(code, tmp_path, write_end)
    finally:
        os.close(write_end)
    assert (result.stderr, result.returncode) == ("", 0)


def test_non_blocking_pipe_that_is_full_at_exit(tmp_path: Path) -> None:
    # A parent may leave the shared descriptor non-blocking; the report waits
    # for the reader instead of being lost to EAGAIN.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    filler = b""
    while True:
        try:
            filler += b"x" * os.write(write_end, b"x" * 4096)
        except BlockingIOError:
            break
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", COUNT],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    time.sleep(0.3)  # let the child reach its exit and find the pipe full
    with os.fdopen(read_end, "rb") as reader:
        out = reader.read()
    _, err = proc.communicate(timeout=60)
    assert (out, err, proc.returncode) == (filler + report(2, 1).encode(), b"", 0)


def test_full_device(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        result = run_with_fd1(COUNT, tmp_path, full.fileno())
    assert (result.stderr, result.returncode) == ("", 0)


def test_closed_from_the_start_and_fd1_reused_by_a_data_file(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    code = (
        COUNT
        + f"""
import os
fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT)
assert fd == 1, fd
os.write(fd, b"data\\n")
"""
    )
    result = run_with_fd1(code, tmp_path, None)
    assert (result.stderr, result.returncode) == ("", 0)
    assert data.read_text() == "data\n"


def test_descriptor_1_reopened_after_registration_gets_the_report(
    tmp_path: Path,
) -> None:
    # The report goes where descriptor 1 points at exit, as printf's would.
    data = tmp_path / "data.txt"
    code = (
        COUNT
        + f"""
import os
os.close(1)
fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT)
assert fd == 1, fd
os.write(fd, b"data\\n")
"""
    )
    with open(tmp_path / "stdout.txt", "w") as out:
        result = run_with_fd1(code, tmp_path, out.fileno())
    assert (result.stderr, result.returncode) == ("", 0)
    assert data.read_text() == "data\n" + report(2, 1)
    assert (tmp_path / "stdout.txt").read_text() == ""


def test_closed_after_registration(tmp_path: Path) -> None:
    code = COUNT + "import os, sys; sys.stdout = None; os.close(1)\n"
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == ("", "", 0)


def test_closed_at_registration_and_reopened_later(tmp_path: Path) -> None:
    # Descriptor 1 was closed when the first Counter was made: the file that
    # takes it later is the program's data, not its output.
    data = tmp_path / "data.txt"
    code = f"""
import os, pyatexit
os.close(1)
c = pyatexit.Counter(); c.inc()
fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT)
assert fd == 1, fd
os.write(fd, b"data\\n")
"""
    result = run_python(code, cwd=tmp_path)
    assert (result.stderr, result.returncode) == ("", 0)
    assert data.read_text() == "data\n"


def test_redirected_with_dup2_after_registration(tmp_path: Path) -> None:
    # A program that sends its standard output to a log after its first
    # Counter finds the report in the log, after everything it printed.
    log = tmp_path / "log.txt"
    code = (
        COUNT
        + f"""
import os, sys
sys.stdout.flush()
fd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT)
os.dup2(fd, 1)
print("to the log")
"""
    )
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == ("", "", 0)
    assert log.read_text() == "to the log\n" + report(2, 1)


def test_capture_redirect_and_restore_by_hand(tmp_path: Path) -> None:
    # What pytest's capture does: descriptor 1 points at a temporary file
    # while the first Counter is made, and is restored before exit.
    capture = tmp_path / "capture.txt"
    code = f"""
import os, pyatexit
saved = os.dup(1)
tmp = os.open({str(capture)!r}, os.O_RDWR | os.O_CREAT)
os.dup2(tmp, 1)
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
os.write(1, b"captured\\n")
os.dup2(saved, 1)
os.close(saved)
os.close(tmp)
os.unlink({str(capture)!r})
print("restored")
"""
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "restored\n" + report(2, 1),
        "",
        0,
    )


def test_sys_stdout_replaced_in_python(tmp_path: Path) -> None:
    # sys.stdout is Python's; the report goes to the descriptor.
    code = "import io, sys\nsys.stdout = io.StringIO()\nprint('kept')\n" + COUNT
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (report(2, 1), "", 0)


DATA_FILE_TAKES_FD = """
import os, pyatexit
def take_fd():
    fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT)
    assert fd == {fd}, fd
    os.write(fd, b"user data\\n")
if {before}:
    take_fd()
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
if not {before}:
    take_fd()
"""


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_started_without_stdout_data_file_on_fd1(tmp_path: Path, before: bool) -> None:
    # CPython sets sys.__stdout__ to None: descriptor 1 is never the output,
    # whether the data file took it before or after the first Counter.
    data = tmp_path / "data.txt"
    code = DATA_FILE_TAKES_FD.format(path=str(data), fd=1, before=before)
    result = run_with_fd1(code, tmp_path, None)
    assert (result.stderr, result.returncode) == ("", 0)
    assert data.read_text() == "user data\n"


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_started_without_stderr_data_file_on_fd2(tmp_path: Path, before: bool) -> None:
    # The same for descriptor 2, which takes the report when
    # PYATEXIT_DUMP_FILE cannot.
    data = tmp_path / "data.txt"
    code = DATA_FILE_TAKES_FD.format(path=str(data), fd=2, before=before)
    result = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYATEXIT_DUMP_FILE": str(tmp_path / "no" / "dir")},
        timeout=60,
        check=False,
    )
    assert (result.stdout, result.stderr, result.returncode) == ("", "", 0)
    assert data.read_text() == "user data\n"


def test_dump_file_appends_whole_reports(tmp_path: Path) -> None:
    dump = tmp_path / "reports.txt"
    dump.write_text("earlier\n")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import pyatexit\nc = pyatexit.Counter()\n"
                f"for _ in range({n}): c.inc()\n",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYATEXIT_DUMP_FILE": str(dump)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(1, 9)
    ]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert (out, err, p.returncode) == (b"", b"", 0)
    text = dump.read_text()
    assert text.startswith("earlier\n")
    reports = sorted(text[len("earlier\n") :].split("==== dump")[1:])
    assert ["==== dump" + r for r in reports] == sorted(
        report(n, 0) for n in range(1, 9)
    )


def test_dump_file_set_at_exit_time(tmp_path: Path) -> None:
    dump = tmp_path / "late.txt"
    code = COUNT + f"import os; os.environ['PYATEXIT_DUMP_FILE'] = {str(dump)!r}\n"
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == ("", "", 0)
    assert dump.read_text() == report(2, 1)


def test_empty_dump_file_means_stdout(tmp_path: Path) -> None:
    result = run_python(COUNT, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": ""})
    assert (result.stdout, result.stderr, result.returncode) == (report(2, 1), "", 0)


# The reasons are the C library's own words (strerror): glibc and musl word
# some of them differently.
@pytest.mark.parametrize(
    ("target", "error"), [("missing-dir/r.txt", errno.ENOENT), (".", errno.EISDIR)]
)
def test_unwritable_dump_file_falls_back_to_stderr(
    tmp_path: Path, target: str, error: int
) -> None:
    reason = os.strerror(error)
    path = tmp_path / target
    result = run_python(COUNT, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": str(path)})
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr == (
        f"pyatexit: cannot append the report to PYATEXIT_DUMP_FILE={path}: {reason}\n"
        + report(2, 1)
    )


def test_dump_file_is_a_fifo_without_reader(tmp_path: Path) -> None:
    # Opening it for writing would block for ever: the exit must not hang.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run_python(COUNT, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": str(fifo)})
    assert (result.stdout, result.returncode) == ("", 0)
    assert result.stderr == (
        f"pyatexit: cannot append the report to PYATEXIT_DUMP_FILE={fifo}: "
        "No such device or address\n" + report(2, 1)
    )


def test_dump_file_on_a_full_device(tmp_path: Path) -> None:
    result = run_python(COUNT, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": "/dev/full"})
    assert (result.stdout, result.returncode) == ("", 0)
    assert result.stderr == (
        "pyatexit: cannot append the report to PYATEXIT_DUMP_FILE=/dev/full: "
        "No space left on device\n" + report(2, 1)
    )


def test_terminal(tmp_path: Path) -> None:
    main, child_side = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", COUNT],
            stdout=child_side,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        os.close(child_side)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO once the child side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
    # The terminal turns "\n" into "\r\n".
    assert b"".join(chunks).decode() == report(2, 1).replace("\n", "\r\n")
    assert (err, proc.returncode) == (b"", 0)


# A C function for Py_AtExit() that prints with C stdio and leaves the text
# in stdio's buffer; registered after the report's, it runs before it.
EXIT_PRINTER = r"""
#include <stdio.h>
void print_at_exit(void) { printf("from a C exit function\n"); }
"""


@pytest.mark.ctypes
def test_c_stdio_output_comes_before_the_report(tmp_path: Path) -> None:
    library = build_shared_library(tmp_path, "exit_printer", EXIT_PRINTER)
    code = f"""
import ctypes, pyatexit
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
libc = ctypes.CDLL(None)
libc.printf(b"printed by C\\n")
printer = ctypes.CDLL({str(library)!r})
at_exit = ctypes.pythonapi.Py_AtExit
at_exit.argtypes = [ctypes.c_void_p]
assert at_exit(ctypes.cast(printer.print_at_exit, ctypes.c_void_p)) == 0
"""
    # Standard output is a pipe, so C stdio buffers it fully.
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (
        "printed by C\nfrom a C exit function\n" + report(2, 1),
        "",
        0,
    )


def long_path(base: Path, length: int) -> str:
    """A path of exactly length characters under a directory that does not
    exist, in components short enough for the file system."""
    path = f"{base}/missing"
    while len(path) < length:
        path += "/" + "d" * min(100, length - len(path) - 1)
    assert len(path) == length
    return path


@pytest.mark.parametrize(
    ("length", "error"),
    [
        (1024, errno.ENOENT),
        (1025, errno.ENOENT),
        (3000, errno.ENOENT),
        (5000, errno.ENAMETOOLONG),
    ],
)
def test_long_dump_file_path_is_shortened_in_the_message(
    tmp_path: Path, length: int, error: int
) -> None:
    # The line that says why is never lost: a path over 1024 bytes is shown
    # as its first and last 510 bytes around "...".
    reason = os.strerror(error)
    path = long_path(tmp_path, length)
    shown = path if length <= 1024 else path[:510] + "..." + path[-510:]
    result = run_python(COUNT, cwd=tmp_path, env={"PYATEXIT_DUMP_FILE": path})
    assert (result.stdout, result.returncode) == ("", 0)
    assert result.stderr == (
        f"pyatexit: cannot append the report to PYATEXIT_DUMP_FILE={shown}: {reason}\n"
        + report(2, 1)
    )


# A script that gives sys.stdout a new file object of its own on descriptor
# 1 (to change its encoding or buffering): the object owns the descriptor,
# and finalisation closes it when it frees the object, before the report.
REWRAPPERS = {
    "open": 'open(1, "w", encoding="utf-8", buffering=1)',
    "os.fdopen": 'os.fdopen(sys.stdout.fileno(), "w", 1)',
    "TextIOWrapper": 'io.TextIOWrapper(io.FileIO(1, "w"))',
}
# A debug build warns when it frees a file object left open, as these
# scripts leave the stdout they made: the tests look at the report only.
UNCLOSED_OK = ("-W", "ignore::ResourceWarning")
REWRAPPED = """
import io, os, sys, pyatexit
sys.stdout = {rewrap}
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
print("hi")
"""


@pytest.mark.parametrize("rewrap", list(REWRAPPERS))
@pytest.mark.parametrize("destination", ["pipe", "file"])
def test_stdout_owned_by_a_new_file_object(
    tmp_path: Path, rewrap: str, destination: str
) -> None:
    code = REWRAPPED.format(rewrap=REWRAPPERS[rewrap])
    if destination == "pipe":
        result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
        out = result.stdout
    else:
        with open(tmp_path / "out.txt", "w") as file:
            result = run_with_fd1(code, tmp_path, file.fileno(), UNCLOSED_OK)
        out = (tmp_path / "out.txt").read_text()
    assert (out, result.stderr, result.returncode) == ("hi\n" + report(2, 1), "", 0)


def read_from_a_terminal(cmd: list[str], cwd: Path) -> tuple[str, bytes, int]:
    """Runs cmd with its standard output on a pseudo-terminal: what it
    wrote there ("\\r\\n" turned back into "\\n"), its stderr and status."""
    main, child_side = os.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=child_side, stderr=subprocess.PIPE, cwd=cwd)
        os.close(child_side)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO once the child side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
    return b"".join(chunks).decode().replace("\r\n", "\n"), err, proc.returncode


@pytest.mark.parametrize("rewrap", list(REWRAPPERS))
def test_terminal_owned_by_a_new_file_object(tmp_path: Path, rewrap: str) -> None:
    code = REWRAPPED.format(rewrap=REWRAPPERS[rewrap])
    out = read_from_a_terminal([sys.executable, *UNCLOSED_OK, "-c", code], tmp_path)
    assert out == ("hi\n" + report(2, 1), b"", 0)


def test_stderr_owned_by_a_new_file_object_takes_the_fallback(tmp_path: Path) -> None:
    # The same for descriptor 2, where the report goes when
    # PYATEXIT_DUMP_FILE cannot take it.
    code = """
import sys, pyatexit
sys.stderr = open(2, "w", buffering=1)
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
"""
    path = tmp_path / "missing" / "dir"
    result = run_python(
        code,
        cwd=tmp_path,
        env={"PYATEXIT_DUMP_FILE": str(path)},
        args=UNCLOSED_OK,
    )
    assert (result.stdout, result.returncode) == ("", 0)
    assert result.stderr == (
        f"pyatexit: cannot append the report to PYATEXIT_DUMP_FILE={path}: "
        "No such file or directory\n" + report(2, 1)
    )


def test_new_file_object_closed_by_the_program(tmp_path: Path) -> None:
    # The program closed descriptor 1 itself: nothing is written there.
    code = REWRAPPED.format(rewrap=REWRAPPERS["open"]) + "sys.stdout.close()\n"
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == ("hi\n", "", 0)


def read_to_the_end(pipe: IO[bytes], timeout: float) -> tuple[bytes, bool]:
    """What a pipe gives until its end or the timeout, and whether its end
    came (every writer closed it)."""
    deadline = time.monotonic() + timeout
    data = b""
    fd = pipe.fileno()
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return data, True
            data += chunk
    return data, False


def run_detached(
    tmp_path: Path, code: str
) -> tuple[tuple[bytes, bool], tuple[bytes, bool], int]:
    """Runs code, which closes its standard streams and then waits on the
    descriptor GO_ON before it ends: what its stdout and stderr gave and
    whether their ends came while it waited, and its exit status."""
    go_on_read, go_on_write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"GO_ON = {go_on_read}\n" + textwrap.dedent(code)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        pass_fds=[go_on_read],
    )
    os.close(go_on_read)
    with proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            # A hold on the pipe shows as an end that never comes.
            out = read_to_the_end(proc.stdout, timeout=30)
            err = read_to_the_end(proc.stderr, timeout=5)
        finally:
            with contextlib.suppress(BrokenPipeError):  # it did not wait
                os.write(go_on_write, b"x")
            os.close(go_on_write)
        return out, err, proc.wait(timeout=60)


@pytest.mark.parametrize(
    "before", ["", "import atexit; atexit._run_exitfuncs()"], ids=["plain", "exitfuncs"]
)
def test_closing_stdout_ends_the_pipe_at_once(tmp_path: Path, before: str) -> None:
    # A daemon closes its standard streams so that its parent, reading a
    # pipe, sees the end while it goes on: pyatexit holds no copy of them
    # while the program runs, even after the program ran the atexit
    # callbacks itself.
    code = f"""
        import os, pyatexit
        c = pyatexit.Counter(); c.inc()
        {before}
        print("detaching", flush=True)
        os.close(0); os.close(1); os.close(2)
        os.read(GO_ON, 1)  # until the parent has seen the end of the pipe
        c.inc()
    """
    assert run_detached(tmp_path, code) == ((b"detaching\n", True), (b"", True), 0)


def test_daemon_forked_by_an_atexit_callback(tmp_path: Path) -> None:
    # A callback registered before pyatexit was imported runs after its
    # own, which took copies of the standard streams: a child forked there
    # must not keep them, nor write its own report into them.
    code = """
        import atexit, os, sys
        def daemonise():
            try:
                pid = os.fork()
            except RuntimeError:  # some versions refuse to fork at the exit
                os.write(2, b"refused\\n")
                return
            if pid == 0:
                os.close(0); os.close(1); os.close(2)
                os.read(GO_ON, 1)
        atexit.register(daemonise)
        import pyatexit
        pyatexit.Counter().inc()
        print("parent done")
    """
    out, err, status = run_detached(tmp_path, code)
    if err == (b"refused\n", True):
        pytest.skip("this CPython refuses os.fork() at the exit")
    assert (out, err, status) == (
        (b"parent done\n" + report(1, 0).encode(), True),
        (b"", True),
        0,
    )


@pytest.mark.parametrize("how", ["atexit", "__del__"])
def test_first_counter_once_finalisation_started(tmp_path: Path, how: str) -> None:
    # The first Counter comes from an atexit callback that runs after
    # pyatexit's, or from a __del__ that finalisation calls after it has
    # closed the script's own stdout file object.
    if how == "atexit":
        code = """
import atexit, sys
def late():
    import pyatexit
    pyatexit.Counter().inc()
atexit.register(late)
import pyatexit
sys.stdout = open(1, "w")
print("script output")
"""
    else:
        code = """
import sys, pyatexit
class Late:
    def __del__(self, Counter=pyatexit.Counter):
        Counter().inc()
sys.stdout = open(1, "w")
print("script output")
keep = Late(); keep.cycle = keep
"""
    result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
    assert (result.stdout, result.stderr, result.returncode) == (
        "script output\n" + report(1, 0),
        "",
        0,
    )


def test_copy_closed_and_its_number_taken_by_a_data_file(tmp_path: Path) -> None:
    # A later atexit callback closes every descriptor above 2, the copies
    # of the standard streams among them, and a data file takes a copy's
    # number: the report never goes there.
    data = tmp_path / "data.bin"
    code = f"""
import atexit, os, sys
def callback():
    os.closerange(3, 256)
    fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT)
    assert fd == 3, fd
    os.write(fd, b"DATA\\n")
atexit.register(callback)
import pyatexit
pyatexit.Counter().inc()
sys.stdout = open(1, "w")
print("script output")
"""
    result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
    assert (result.stdout, result.stderr, result.returncode) == (
        "script output\n",
        "",
        0,
    )
    assert data.read_bytes() == b"DATA\n"


JOURNAL = """
import os, sys, pyatexit
{stdout}
c = pyatexit.Counter(); c.inc()
print("script output")
{close}
class Journal:
    def __del__(self):
        fd = os.open({data!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"RECORD on fd %d\\n" % fd)
journal = Journal()
"""


@pytest.mark.parametrize("closed_by", ["finalisation", "program"])
def test_fd1_closed_and_taken_by_a_data_file_during_finalisation(
    tmp_path: Path, closed_by: str
) -> None:
    # Descriptor 1 is closed, by finalisation (which frees the script's own
    # file object on it) or by the program before it ends; a __del__ that
    # runs later opens a data file, which takes number 1.  The report goes
    # to the standard output the process had when finalisation started, or
    # nowhere if it had none then: never into the data file.
    data = tmp_path / "journal.dat"
    by_finalisation = closed_by == "finalisation"
    code = JOURNAL.format(
        stdout='sys.stdout = open(1, "w", buffering=1)' if by_finalisation else "",
        close="" if by_finalisation else "sys.stdout.flush(); os.close(1)",
        data=str(data),
    )
    result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
    assert (result.stdout, result.stderr, result.returncode) == (
        "script output\n" + (report(1, 0) if by_finalisation else ""),
        "",
        0,
    )
    assert data.read_bytes() == b"RECORD on fd 1\n"


# Ways a program keeps pyatexit's atexit callback from taking the copies of
# the standard streams when finalisation starts.
NO_COPY = {
    "atexit-clear": "atexit._clear()",
    "atexit-unregister": """
for f in gc.get_objects():
    if getattr(f, "__name__", "") == "_pyatexit_finalisation_starts":
        atexit.unregister(f)
""",
    "run-exitfuncs": "atexit._run_exitfuncs()",
    # A later callback runs first and leaves no descriptor free.
    "no-free-descriptor": """
def exhaust():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
held = []
atexit.register(exhaust)
""",
}


@pytest.mark.parametrize("how", NO_COPY)
def test_without_the_copies_a_data_file_that_takes_fd1_stays_clean(
    tmp_path: Path, how: str
) -> None:
    # No copy of descriptor 1 is taken when finalisation starts; then
    # finalisation closes the script's own file object on it and a __del__
    # opens a data file, which takes number 1.  The report goes to
    # descriptor 1 only while it is the file it was when the report was
    # registered: the data file never gets it (the report is lost).
    data = tmp_path / "journal.dat"
    code = JOURNAL.format(
        stdout='import atexit, gc, resource\nsys.stdout = open(1, "w", buffering=1)',
        close=NO_COPY[how],
        data=str(data),
    )
    result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
    assert (result.stdout, result.stderr, result.returncode) == (
        "script output\n",
        "",
        0,
    )
    assert data.read_bytes() == b"RECORD on fd 1\n"


def run_without_stream(
    code: str, fd: int, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """code in a child started with descriptor fd closed; for descriptor 2,
    with a PYATEXIT_DUMP_FILE that cannot be opened, so that the report
    falls back to it."""
    return subprocess.run(
        ["/bin/sh", "-c", f'exec "$0" "$@" {fd}>&-', sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYATEXIT_DUMP_FILE": str(tmp_path / "no" / "dir")}
        if fd == 2
        else None,
        timeout=60,
        check=False,
    )


@requires_subinterpreters
@pytest.mark.parametrize("fd", [1, 2])
@pytest.mark.parametrize("main_imports", [True, False], ids=["main-too", "only-sub"])
def test_started_without_a_stream_that_a_subinterpreter_registered_first(
    tmp_path: Path, fd: int, main_imports: bool
) -> None:
    # A subinterpreter, whose sys.__stdout__ is the data file that took
    # descriptor 1, registers the report; then the main interpreter, which
    # started without a standard output, imports pyatexit, or never does.
    # The data file never gets the report.  (Descriptor 2 when
    # PYATEXIT_DUMP_FILE fails.)
    data = tmp_path / "data.txt"
    main = "import pyatexit\npyatexit.Counter().dec()\n" if main_imports else ""
    code = (
        SUBINTERPRETERS
        + f"""
import os
fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT)
assert fd == {fd}, fd
os.write(fd, b"user data\\n")
interp = create()
run(interp, "import pyatexit; pyatexit.Counter().inc()")
interpreters.destroy(interp)
"""
        + main
    )
    result = run_without_stream(code, fd, tmp_path)
    assert (result.returncode, data.read_text()) == (0, "user data\n")
    assert (result.stdout, result.stderr) == ("", "")


def test_a_second_module_keeps_the_copies_the_first_leaves(tmp_path: Path) -> None:
    # A re-import makes a second module.  The first, which made no Counter,
    # is freed by an atexit callback that runs after pyatexit's; later
    # finalisation closes the script's own file object on descriptor 1, a
    # __del__ opens a data file, which takes number 1, and makes the second
    # module's first Counter.  The copies are the process's: the report
    # goes to the standard output the process had, never to the data file.
    data = tmp_path / "journal.dat"
    code = f"""
import atexit, gc, os, sys
def drop_the_first():
    global first
    first = None
    gc.collect()
atexit.register(drop_the_first)
import pyatexit as first
del sys.modules["pyatexit"]
import pyatexit as second
sys.stdout = open(1, "w", buffering=1)
print("script output")
class Journal:
    def __del__(self, Counter=second.Counter):
        fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"RECORD on fd %d\\n" % fd)
        Counter().inc()
journal = Journal()
"""
    result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
    assert (result.stdout, result.stderr, result.returncode) == (
        "script output\n" + report(1, 0),
        "",
        0,
    )
    assert data.read_bytes() == b"RECORD on fd 1\n"


@requires_subinterpreters
@pytest.mark.skipif(
    sys.version_info >= (3, 14),
    reason="from 3.14 no subinterpreter runs code once finalisation has begun",
)
@pytest.mark.parametrize("fd", [1, 2])
def test_started_without_a_stream_a_subinterpreter_registering_during_finalisation(
    tmp_path: Path, fd: int
) -> None:
    # The main interpreter started without a standard output, and a data
    # file took descriptor 1; the main interpreter never imports pyatexit.
    # A __del__ that finalisation of the main interpreter runs makes a
    # subinterpreter, whose sys.__stdout__ is the data file, import it and
    # make the first Counter.  The data file never gets the report.
    # (Descriptor 2 when PYATEXIT_DUMP_FILE fails.)
    data = tmp_path / "data.txt"
    code = (
        SUBINTERPRETERS
        + f"""
import os
fd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT)
assert fd == {fd}, fd
os.write(fd, b"user data\\n")
interp = create()
class Late:
    def __del__(self, run=run, interp=interp):
        run(interp, "import pyatexit; pyatexit.Counter().inc()")
late = Late()
"""
    )
    result = run_without_stream(code, fd, tmp_path)
    assert (result.returncode, data.read_text()) == (0, "user data\n")
    assert (result.stdout, result.stderr) == ("", "")


def test_a_stream_object_that_names_a_data_file_as_its_real_stream(
    tmp_path: Path,
) -> None:
    # Standard output is a pipe, and the program's sys.stdout, a wrapper of
    # its own, has attributes of the names ipykernel's streams use, one of
    # them the number of a data file the program writes.  The report goes
    # to the pipe, never into the data file.
    data = tmp_path / "data.bin"
    code = f"""
import sys, pyatexit
data = open({str(data)!r}, "wb")
data.write(b"DATA\\n"); data.flush()
class Stream:
    _should_watch = True
    _original_stdstream_fd = 1
    _original_stdstream_copy = data.fileno()
    def __init__(self, real):
        self.real = real
    def write(self, s):
        return self.real.write(s)
    def flush(self):
        self.real.flush()
sys.stdout = Stream(sys.stdout)
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
print("hi")
"""
    result = run_python(code, cwd=tmp_path, args=UNCLOSED_OK)
    assert data.read_bytes() == b"DATA\n"
    assert (result.stdout, result.stderr, result.returncode) == (
        "hi\n" + report(2, 1),
        "",
        0,
    )


def test_without_the_copies_a_data_file_on_the_inode_of_a_deleted_stdout(
    tmp_path: Path,
) -> None:
    # Standard output is a file that only this process has open.  With
    # pyatexit's atexit callback removed (no copy), the program registers
    # the report, closes descriptor 1, deletes that file and creates a data
    # file, which takes number 1 and, where the file system gives a freed
    # inode number to the next file (ext4), would take the old file's number
    # too.  The program closed its output: the data file never gets the
    # report.
    code = """
import atexit, os, sys, pyatexit
atexit._clear()
c = pyatexit.Counter(); c.inc(); c.inc(); c.dec()
sys.stdout.flush()
os.close(1)
os.unlink("out.txt")
fd = os.open("data.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
assert fd == 1, fd
os.write(fd, b"user data\\n")
"""
    result = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" "$@" >out.txt', sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert (result.stdout, result.stderr, result.returncode) == ("", "", 0)
    assert (tmp_path / "data.txt").read_text() == "user data\n"
