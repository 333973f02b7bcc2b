"""Every check of pyatexit, one session each.  `nox` runs them all.

Interpreters: every CPython from 3.9 up that is on PATH or installed by pyenv
(under `pyenv root`/versions) is tested; a version that is not installed is
skipped with a message.  Sessions that need Debian packages (valgrind, the
debug CPython, cppcheck) install them with apt-get when run as root, and are
skipped with a message otherwise.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.13t", "3.14t"]
TEST_REQUIREMENTS = ROOT / "tests" / "requirements.txt"
INSTRUMENTED = {"PYATEXIT_COUNT_ALL_DEC_INC": "1"}
IN_CI = bool(os.environ.get("CI"))

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False
nox.options.sessions = [
    "lint",
    "tests",
    "package",
    "sanitizers",
    "valgrind",
    "debug_python",
    "bench_quick",
]


def _add_pyenv_interpreters_to_path() -> None:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    bins = sorted(glob.glob(os.path.join(root, "versions", "*", "bin")))
    if bins:
        os.environ["PATH"] = os.pathsep.join([*bins, os.environ.get("PATH", "")])


_add_pyenv_interpreters_to_path()


def _apt_install(session: nox.Session, *packages: str) -> None:
    """Installs Debian packages, or skips the session saying why it cannot."""
    missing = [
        p
        for p in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.skip(f"needs Debian packages {missing}: run as root on Debian")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


def _install_pyatexit(session: nox.Session, *args: str, **env: str) -> None:
    session.install("-r", str(TEST_REQUIREMENTS))
    session.install(*args, ".", env={**INSTRUMENTED, **env})


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on one CPython (uninstrumented build included)."""
    _install_pyatexit(session)
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The chapter's session, ending with the exit report."""
    session.install(".", env=INSTRUMENTED)
    session.run("python", "examples/chapter_session.py")


@nox.session
def lint(session: nox.Session) -> None:
    """Formats the tree (checks only, on CI) and lints C and Python."""
    session.install("clang-format", "clang-tidy", "ruff", "nox")
    _install_pyatexit(session)
    if IN_CI:
        session.run("clang-format", "--dry-run", "-Werror", "Py_AtExitDemo.c")
        session.run("ruff", "format", "--check", ".")
        session.run("ruff", "check", ".")
    else:
        session.run("clang-format", "-i", "Py_AtExitDemo.c")
        session.run("ruff", "format", ".")
        session.run("ruff", "check", "--fix", ".")
    include = _include_dir(sys.executable)  # the lint venv's interpreter
    for macro in ("-DCOUNT_ALL_DEC_INC", "-UCOUNT_ALL_DEC_INC"):
        session.run(
            "clang-tidy",
            "--quiet",
            "Py_AtExitDemo.c",
            "--",
            f"-I{include}",
            macro,
        )
    _apt_install(session, "cppcheck")
    for macro in ("-DCOUNT_ALL_DEC_INC", "-UCOUNT_ALL_DEC_INC"):
        session.run(
            "cppcheck",
            "--error-exitcode=1",
            "--library=python",
            "--enable=warning,style,performance,portability",
            "--suppress=missingInclude",
            "--suppress=missingIncludeSystem",
            "--std=c11",
            "--quiet",
            macro,
            "Py_AtExitDemo.c",
            external=True,
        )
    session.run("mypy", "--strict", "tests", "examples", "noxfile.py")
    _strict_compile(session)


def _include_dir(python: str) -> str:
    """The directory of Python.h for an interpreter."""
    return subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


STRICT = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers"]


def _strict_compile(session: nox.Session) -> None:
    """Compiles the C file with warnings as errors against the headers of every
    CPython found, both variants; for 3.13+ also as for a free-threaded build
    (Py_GIL_DISABLED), the one way to check that code here."""
    cc = os.environ.get("CC", "cc")
    for version in [v for v in PYTHONS if not v.endswith("t")]:
        python = shutil.which(f"python{version}")
        if python is None:
            session.log(f"strict compile: no python{version}, skipped")
            continue
        include = _include_dir(python)
        builds = [[], ["-DCOUNT_ALL_DEC_INC"]]
        if tuple(map(int, version.split("."))) >= (3, 13):
            builds += [
                ["-DPy_GIL_DISABLED"],
                ["-DPy_GIL_DISABLED", "-DCOUNT_ALL_DEC_INC"],
            ]
        for macros in builds:
            session.run(
                cc,
                *STRICT,
                "-fsyntax-only",
                *macros,
                f"-I{include}",
                "Py_AtExitDemo.c",
                external=True,
            )


@nox.session
def package(session: nox.Session) -> None:
    """sdist and wheel, twine check, then the suite from the installed sdist."""
    session.install("build", "twine")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(dist), env=INSTRUMENTED)
    session.run("twine", "check", "--strict", *map(str, dist.iterdir()))
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dist, filter="data")
        else:
            tar.extractall(dist)
    needed = {
        "Py_AtExitDemo.c",
        "setup.py",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "tests/conftest.py",
        "examples/chapter_session.py",
        "stubs/pyatexit-stubs/__init__.pyi",
    }
    if not needed <= names:
        session.error(f"sdist lacks {sorted(needed - names)}")
    unpacked = dist / sdist.name[: -len(".tar.gz")]
    session.install("-r", str(unpacked / "tests" / "requirements.txt"))
    session.install(str(sdist), env=INSTRUMENTED)
    session.chdir(unpacked)
    session.run("pytest", "-p", "no:cacheprovider")


SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all"


@nox.session(python=["3.11", "3.13"])
def sanitizers(session: nox.Session) -> None:
    """The suite with pyatexit built under AddressSanitizer and UBSan.

    Any report aborts the process that made it with status 86: pytest itself,
    or a child interpreter whose exit status and stderr the tests compare.
    """
    cc = os.environ.get("CC", "gcc")
    runtime = subprocess.run(
        [cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not os.path.isabs(runtime):
        session.skip(f"{cc} has no AddressSanitizer runtime")
    flags = {
        "CC": cc,
        "CFLAGS": f"{SANITIZE} -fno-omit-frame-pointer -g -O1",
        "LDFLAGS": SANITIZE,
    }
    _install_pyatexit(session, "--no-cache-dir", **flags)
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={
            **flags,
            "LD_PRELOAD": runtime,
            "PYTHONMALLOC": "malloc",
            # CPython itself keeps memory until exit: leaks are left to the
            # refcount and valgrind checks.
            "ASAN_OPTIONS": "detect_leaks=0:exitcode=86",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=86",
        },
    )


@nox.session
def valgrind(session: nox.Session) -> None:
    """Memcheck over the chapter's session and many threads counting.

    CPython has memcheck findings of its own (uninitialised bytes in its
    hash seeding, memory it keeps until exit), so the run fails on any error
    or definite leak with a pyatexit frame in its stack.
    """
    _apt_install(session, "valgrind")
    session.install(".", env={**INSTRUMENTED, "CFLAGS": "-g -O1"})
    logs = Path(session.create_tmp()) / "valgrind"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    for script in ("examples/chapter_session.py", "examples/threads.py"):
        session.run(
            "valgrind",
            "--xml=yes",
            f"--xml-file={logs}/{Path(script).stem}-%p.xml",
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "python",
            script,
            external=True,
            env={"PYTHONMALLOC": "malloc"},
        )
    ours = _valgrind_errors_in_pyatexit(logs)
    session.log(f"memcheck errors with a pyatexit frame: {len(ours)}")
    if ours:
        session.error("\n".join(ours))


def _valgrind_errors_in_pyatexit(logs: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    found = []
    files = sorted(logs.glob("*.xml"))
    if not files:
        raise RuntimeError("valgrind wrote no report")
    for path in files:
        for error in ET.parse(path).getroot().iter("error"):
            objs = [o.text or "" for o in error.iter("obj")]
            files_ = [f.text or "" for f in error.iter("file")]
            if any("pyatexit" in o for o in objs) or "Py_AtExitDemo.c" in files_:
                found.append(
                    f"{path.name}: {error.findtext('kind')}: "
                    f"{error.findtext('what') or error.findtext('xwhat/text')}"
                )
    return found


@nox.session(python=False)
def debug_python(session: nox.Session) -> None:
    """The suite on Debian's debug CPython, with the refcount-leak test."""
    _apt_install(session, "python3.11-dbg", "python3.11-dev", "python3.11-venv")
    venv = Path(session.create_tmp()) / "dbg-venv"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("/usr/bin/python3.11d", "-m", "venv", str(venv), external=True)
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "-q", "-U", "pip", external=True)
    session.run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "-r",
        str(TEST_REQUIREMENTS),
        external=True,
    )
    session.run(
        python, "-m", "pip", "install", "-q", ".", external=True, env=INSTRUMENTED
    )
    session.run(
        python,
        "-c",
        "import sys; assert hasattr(sys, 'gettotalrefcount')",
        external=True,
    )
    session.run(
        str(venv / "bin" / "pytest"),
        "-p",
        "no:cacheprovider",
        *session.posargs,
        external=True,
    )


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark table (pyperf); a few minutes."""
    session.install("pyperf", "setuptools>=77")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def bench_quick(session: nox.Session) -> None:
    """The benchmark in a quick mode, only to prove that it runs."""
    session.install("pyperf", "setuptools>=77")
    session.run("python", "benchmarks/bench.py", "--quick")
