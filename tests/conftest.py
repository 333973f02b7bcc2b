"""Helpers shared by the tests: child interpreters and the expected report."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The chapter's session, as typed at the interactive prompt.
CHAPTER_SESSION = """\
import pyatexit
c = pyatexit.Counter(8)
c.inc()
c.inc()
c.dec()
c.count
d = pyatexit.Counter()
d.dec()
d.dec()
d.count
"""


class PyCounter:
    """The chapter's pure-Python class: the reference for Counter."""

    def __init__(self, number: int = 0) -> None:
        self.count = number

    def inc(self) -> None:
        self.count += 1

    def dec(self) -> None:
        self.count -= 1


def report(increments: int, decrements: int) -> str:
    """The exit report, byte for byte as the chapter prints it."""
    return (
        "==== dump_inc_dec_count() ====\n"
        f"Increments: {increments}\n"
        f"Decrements: {decrements}\n"
        "== dump_inc_dec_count() END ==\n"
    )


def child_env(**extra: str) -> dict[str, str]:
    # A child is a program, not the test running it: ipykernel, for one,
    # leaves descriptors 1 and 2 alone under pytest (PYTEST_CURRENT_TEST).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PYATEXIT_")) and k != "PYTEST_CURRENT_TEST"
    }
    # A child on a debug or sanitizer build inherits what it needs to start.
    for key in ("PYTHONMALLOC", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def memcheck_prefix() -> list[str]:
    """valgrind's memcheck before each child interpreter, when the valgrind
    session asks for it by naming a folder for its XML logs."""
    logs = os.environ.get("PYATEXIT_VALGRIND_LOGS")
    if not logs:
        return []
    return [
        "valgrind",
        "-q",
        "--xml=yes",
        f"--xml-file={logs}/child-%p.xml",
        "--leak-check=no",
    ]


def run_python(
    code: str,
    *,
    args: tuple[str, ...] = (),
    stdin: str | None = None,
    cwd: Path,
    pythonpath: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: int | IO[str] = subprocess.PIPE,
    stderr: int | IO[str] = subprocess.PIPE,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Runs code in a child interpreter started in cwd (never the source tree,
    so that only the installed or the explicitly given module is imported)."""
    full_env = child_env(**(env or {}))
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    cmd = [*memcheck_prefix(), sys.executable, *args]
    if code:
        cmd += ["-c", textwrap.dedent(code)]
    return subprocess.run(
        cmd,
        input=stdin,
        stdout=stdout,
        stderr=stderr,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def c_compiler() -> list[str]:
    """The C compiler that built this interpreter's extensions."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        pytest.fail(f"no C compiler {cc!r} to build a test helper")
    return cc.split()


def build_shared_library(tmp_path: Path, name: str, source: str) -> Path:
    """Compiles a small C helper for a test into a shared library."""
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / f"lib{name}.so"
    cmd = [*c_compiler(), "-shared", "-fPIC", str(src), "-o", str(out)]
    built = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert built.returncode == 0, " ".join(cmd) + "\n" + built.stderr
    return out


def build_variant(tmp_path_factory: pytest.TempPathFactory, **switches: str) -> Path:
    """A directory holding pyatexit built from a copy of the checkout with
    the build switches (environment variables) given, for a child to import
    through PYTHONPATH."""
    name = "-".join(switches).lower() or "default"
    src = tmp_path_factory.mktemp(f"{name}-src")
    for file in (
        "setup.py",
        "pyproject.toml",
        "Py_AtExitDemo.c",
        "README.md",
        "LICENSE",
    ):
        shutil.copy(ROOT / file, src / file)
    shutil.copytree(ROOT / "stubs", src / "stubs")
    out = tmp_path_factory.mktemp(name)
    env = child_env(**switches)
    for key in ("CC", "CFLAGS", "LDFLAGS", "LDSHARED"):
        if key in os.environ:
            env[key] = os.environ[key]
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(out),
            "--build-temp",
            str(src / "tmp"),
        ],
        cwd=src,
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return out


@pytest.fixture(scope="session")
def uninstrumented(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding pyatexit built with PYATEXIT_COUNT_ALL_DEC_INC=0."""
    return build_variant(tmp_path_factory, PYATEXIT_COUNT_ALL_DEC_INC="0")


# Whether this interpreter runs without a GIL (3.13t and later).
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

# The debug allocator fills freed memory and checks every block it frees, so
# that a use of freed memory in a child shows as a crash or a fatal error.
DEBUG_MALLOC = {"PYTHONMALLOC": "debug"}


def run_checked(
    code: str, cwd: Path, *, timeout: float = 120, **env: str
) -> tuple[str, str, int]:
    """Runs code in a child under the debug allocator: (stdout, stderr, status).
    Output is decoded leniently: a fatal error may print raw memory."""
    result = subprocess.run(
        [*memcheck_prefix(), sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        cwd=cwd,
        env=child_env(**DEBUG_MALLOC, **env),
        timeout=timeout,
        check=False,
    )
    return (
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
        result.returncode,
    )


# Code that defines create() and run(interp, code) for isolated
# subinterpreters with their own GIL, for a child interpreter.
SUBINTERPRETERS = """
import sys, threading
try:
    import _interpreters as interpreters           # 3.13+
    def create():
        return interpreters.create("isolated")
    def run(interp, code):
        error = interpreters.exec(interp, code)
        assert error is None, error
except ImportError:
    import _xxsubinterpreters as interpreters      # 3.12
    def create():
        return interpreters.create(isolated=True)
    def run(interp, code):
        interpreters.run_string(interp, code)
"""

requires_subinterpreters = pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="isolated subinterpreters with their own GIL exist from Python 3.12",
)


# Whether this run selects its tests by marker (-m), set when it starts.
SELECTED_BY_MARKER = False


def pytest_configure(config: pytest.Config) -> None:
    global SELECTED_BY_MARKER
    SELECTED_BY_MARKER = bool(config.option.markexpr)


def import_optional(name: str) -> None:
    """For a test file whose tests need a package that only some sessions
    install, marked to say so: a session without it deselects the marker,
    and the file skips at import; a run that does not select by marker asked
    for these tests, and fails without the package."""
    if importlib.util.find_spec(name) is not None:
        return
    if not SELECTED_BY_MARKER:
        pytest.fail(f"{name} is not installed (see tests/requirements*.txt)")
    pytest.skip(f"{name} is not installed", allow_module_level=True)
