"""Provides the CPythons that the test sessions need and no package offers.

    python3 -m tools.provision WHAT [WHAT ...]

with WHAT among 3.14, 3.14t, 3.14t-tsan, 3.14-musl, 3.14t-musl, sid, i386,
armhf, arm64, s390x, riscv64 and ppc64el, prints the path of each
interpreter (or of the Debian root for `sid` and the architectures),
building or making it first if it is not in the cache, one after the
other.  The noxfile imports this module and calls the same
functions; its `provision` session runs this script in the background for
everything the later sessions need, so that a fresh machine builds while
the first sessions test.

* 3.14, 3.14t and 3.14t-tsan are built from the CPython release source at
  `$PYATEXIT_CPYTHON_SOURCE` (default: `../shared/cpython/Python-3.14.7.tar.xz`
  beside the checkout): the default build, the free-threaded build, and the
  free-threaded build under ThreadSanitizer.  3.14-musl and 3.14t-musl are
  the same two builds against musl instead of glibc (Debian's musl-gcc, with
  the kernel headers CPython needs; dynamically linked, so that they load
  extension modules), without the modules whose libraries Debian builds for
  glibc only (ctypes, zlib, ssl and others).
* sid is a Debian unstable root made with debootstrap, with CPython 3.15 and
  3.14 from Debian's packages (and their debug builds), a C compiler and CA
  certificates.  Commands run in it through `chroot_command()`, in a private
  mount namespace, with the checkout at the same path as outside.
* i386, armhf, arm64, s390x, riscv64 and ppc64el are Debian roots of those
  architectures, made with debootstrap: Debian 13 (trixie) with its CPython
  3.13, and Debian unstable with CPython 3.14 for s390x and ppc64el, with
  gcc, entered the same way.  i386 runs natively on x86_64; the others run
  through qemu-user (the qemu-user-static package and binfmt_misc, which
  are installed, mounted and enabled as needed).  Each has a virtual
  environment with the test requirements, installed by this machine's pip
  for the root's Python and platform (under qemu, the root's own pip takes
  minutes) and byte-compiled once by the root's interpreter.

Everything is cached under `$PYATEXIT_PYTHONS_CACHE` (default
`~/.cache/pyatexit-pythons`), outside the checkout, and reused while the
recipe that made it is unchanged.  A lock keeps two runs from building the
same thing at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tools import targets

if TYPE_CHECKING:
    import nox

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(
    os.environ.get("PYATEXIT_PYTHONS_CACHE")
    or Path.home() / ".cache" / "pyatexit-pythons"
)
SOURCE = Path(
    os.environ.get("PYATEXIT_CPYTHON_SOURCE")
    or ROOT.parent / "shared" / "cpython" / "Python-3.14.7.tar.xz"
)

# configure flags of each build made from SOURCE
# (no build installs CPython's own test suite or its _test* modules: no test
# here uses them, and installing them is most of a build's install time).
BUILDS = {
    "3.14": ["--disable-test-modules"],
    "3.14t": ["--disable-gil", "--disable-test-modules"],
    "3.14t-tsan": [
        "--disable-gil",
        "--with-thread-sanitizer",
        "--disable-test-modules",
    ],
    "3.14-musl": ["--without-ensurepip", "--disable-test-modules"],
    "3.14t-musl": ["--disable-gil", "--without-ensurepip", "--disable-test-modules"],
}
# The musl builds: Debian's musl-gcc, which sees only musl's headers, given
# the kernel's too (CPython includes <linux/...> and <asm/...>).  gcc would
# name glibc's multiarch triplet, which configure rejects beside musl's.
# pkg-config finds nothing: Debian's libraries (zlib, libffi, OpenSSL...)
# are built for glibc.  ensurepip needs zlib; pip comes from this machine.
MUSL_PACKAGES = ["musl", "musl-dev", "musl-tools", "linux-libc-dev"]
MUSL_KERNEL_HEADERS = {
    "linux": "/usr/include/linux",
    "asm-generic": "/usr/include/asm-generic",
    "asm": "/usr/include/x86_64-linux-gnu/asm",
}
MUSL_CC = """\
#!/bin/sh
for arg; do [ "$arg" = --print-multiarch ] && exit 0; done
exec musl-gcc -isystem "$(dirname "$0")/include" "$@"
"""
BUILD_DEPENDENCIES = [
    "build-essential",
    "pkg-config",
    "libssl-dev",
    "zlib1g-dev",
    "libffi-dev",
    "libbz2-dev",
    "liblzma-dev",
    "libsqlite3-dev",
    "libreadline-dev",
    "uuid-dev",
]
# Debian unstable packages in the sid root.
SID_PACKAGES = [
    "python3.15-dev",
    "python3.15-venv",
    "python3.15-dbg",
    "python3.14-dev",
    "python3.14-venv",
    "python3.14-dbg",
    "gcc",
    "libc6-dev",
    "ca-certificates",
]
# The packages in the roots of other architectures (targets.ARCHES): their
# CPython, and what building pyatexit and its tests need where the root has
# a compiler.
FOREIGN_PACKAGES = ["python3"]
BUILD_PACKAGES = ["python3-dev", "gcc", "libc6-dev"]


def foreign_packages(arch: str) -> list[str]:
    return BUILD_PACKAGES if targets.ROOTS[arch].compiler else FOREIGN_PACKAGES


BINFMT = Path("/proc/sys/fs/binfmt_misc")


def log(message: str) -> None:
    print(f"provision: {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str | Path], **kwargs: object) -> None:
    log("$ " + shlex.join(map(str, cmd)))
    subprocess.run(list(map(str, cmd)), check=True, **kwargs)  # type: ignore[call-overload]


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def made_once(
    lock: str, folder: Path, make: Callable[[], object], done: Path | None = None
) -> Path:
    """folder, as make() makes it, once: under the lock named lock (two runs
    never make it at once), unless it is complete, what a run left of it is
    removed and make() makes it.  It is complete once done exists: what
    make() makes last (its result, moved into place whole), or by default
    folder/.complete, written when make() returns.  A run that was stopped
    leaves nothing that counts as made."""
    complete = done or folder / ".complete"
    with locked(lock):
        if not complete.exists():
            remove_root(folder)
            make()
            if done is None:
                complete.write_text("")
    return folder


def recipe_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def missing_packages(packages: Sequence[str]) -> list[str]:
    """The Debian packages of packages that are not installed."""
    return [
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


def can_apt_install() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


def apt_install(packages: Sequence[str]) -> None:
    """Installs the Debian packages that are missing (root only)."""
    missing = missing_packages(packages)
    if not missing:
        return
    if not can_apt_install():
        raise SystemExit(f"provision: needs Debian packages {missing} (run as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # One at a time: a background provisioning job may be installing too.
    with locked("apt"):
        missing = missing_packages(packages)
        if missing:
            run(["apt-get", "update", "-qq"], env=env)
            run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def is_free_threaded(python: str) -> bool:
    out = subprocess.run(
        [
            python,
            "-c",
            "import sysconfig; "
            "print(bool(sysconfig.get_config_var('Py_GIL_DISABLED')))",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return out == "True"


def pyenv_bins() -> list[str]:
    """The bin folder of each version that pyenv installed (under
    `$PYENV_ROOT`, by default ~/.pyenv), by name."""
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    return sorted(glob.glob(os.path.join(pyenv, "versions", "*", "bin")))


def installed_python(version: str) -> str | None:
    """The user's own CPython version (3.12, 3.14t, 3.15d...), not one made
    here: the first `python{version}` in pyenv_bins(), then on PATH, that is
    free-threaded exactly where version says so (a free-threaded install
    also has a `python3.14`, which never stands in for the default build).
    The noxfile puts pyenv_bins() first on PATH, so that nox finds the same
    CPython for a session of that version (tests-3.12)."""
    path = [*pyenv_bins(), *os.environ.get("PATH", "").split(os.pathsep)]
    for folder in dict.fromkeys(path):
        python = shutil.which(f"python{version}", path=folder)
        if python is None or Path(python).resolve().is_relative_to(CACHE.resolve()):
            continue
        if is_free_threaded(python) == version.endswith("t"):
            return python
    return None


def interpreter(version: str) -> Interpreter:
    """CPython version (3.9 to 3.15, 3.14t, or 3.15d, the debug build) for
    the sessions and the wheels: the user's own (installed_python), else one
    made here: 3.14 and 3.14t built from SOURCE, 3.15 and 3.15d in the
    Debian unstable root."""
    found = installed_python(version)
    if found is not None:
        return Interpreter(found)
    if version in BUILDS:
        return Interpreter(str(build_cpython(version)))
    if targets.PROVIDED.get(version.removesuffix("d")) == "sid":
        return Interpreter(f"/usr/bin/python{version}", sid_root())
    raise SystemExit(f"provision: no CPython {version} (pyenv or PATH)")


def musl_cc() -> Path:
    """A C compiler command for musl (MUSL_CC), made once into the cache:
    the musl builds keep its path for building extension modules."""
    key = recipe_key(MUSL_CC, MUSL_KERNEL_HEADERS)
    cc = CACHE / f"musl-cc-{key}" / "cc"

    def make() -> None:
        apt_install(MUSL_PACKAGES)
        include = cc.parent / "include"
        include.mkdir(parents=True)
        for name, target in MUSL_KERNEL_HEADERS.items():
            (include / name).symlink_to(target)
        partial = cc.with_suffix(".partial")
        partial.write_text(MUSL_CC)
        partial.chmod(0o755)
        partial.rename(cc)

    made_once("musl-cc", cc.parent, make, done=cc)
    return cc


def build_cpython(flavor: str) -> Path:
    """Builds one flavour from SOURCE into the cache; returns its python."""
    flags = BUILDS[flavor]
    if not SOURCE.is_file():
        raise SystemExit(f"provision: no CPython source at {SOURCE}")
    musl = flavor.endswith("-musl")
    compiler = {"CC": str(musl_cc())} if musl else {}
    key = recipe_key(SOURCE.name, SOURCE.stat().st_size, flags, *compiler.values())
    prefix = CACHE / f"cpython-{flavor}-{key}"
    exe = prefix / "bin" / ("python3.14t" if "t" in flavor[4:] else "python3.14")

    def make() -> None:
        apt_install(BUILD_DEPENDENCIES + (MUSL_PACKAGES if musl else []))
        # Older builds of this flavour only: "cpython-3.14-*" also matches
        # the 3.14-musl builds, "cpython-3.14t-*" the 3.14t-tsan ones.
        for stale in CACHE.glob(f"cpython-{flavor}-*"):
            if stale.name.rsplit("-", 1)[0] == f"cpython-{flavor}":
                shutil.rmtree(stale)
        with tempfile.TemporaryDirectory(prefix="cpython-build-") as tmp:
            log(f"building CPython {flavor} from {SOURCE} (a few minutes)")
            with tarfile.open(SOURCE) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
            (src,) = Path(tmp).iterdir()
            staging = Path(f"{prefix}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            quiet = {"stdout": subprocess.DEVNULL}
            env = dict(os.environ)
            if musl:
                (Path(tmp) / "no-pkg-config").mkdir()
                env.update(compiler, PKG_CONFIG_LIBDIR=f"{tmp}/no-pkg-config")
            ensurepip = [] if musl else ["--with-ensurepip=install"]
            run(
                ["./configure", f"--prefix={prefix}", *ensurepip, *flags],
                cwd=src,
                env=env,
                **quiet,
            )
            jobs = str(os.cpu_count() or 2)
            run(["make", f"-j{jobs}"], cwd=src, env=env, **quiet)
            # Byte-compiling the whole library under ThreadSanitizer takes
            # many minutes: only the top level is compiled there.
            compile_opts = "-j0 -l" if "tsan" in flavor else "-j0"
            run(
                [
                    "make",
                    "install",
                    f"DESTDIR={staging}",
                    f"COMPILEALL_OPTS={compile_opts}",
                ],
                cwd=src,
                env=env,
                **quiet,
            )
            # DESTDIR keeps the prefix below it; move it into place whole.
            shutil.move(str(staging / str(prefix).lstrip("/")), prefix)
            shutil.rmtree(staging)
        if not exe.exists():
            raise SystemExit(f"provision: the build made no {exe}")

    made_once(f"cpython-{flavor}", prefix, make, done=exe)
    return exe


def tsan_suppressions(python: Path) -> Path:
    """CPython's own ThreadSanitizer suppressions for free-threaded builds,
    from the source the build at python was made from."""
    path = python.parent.parent / "share" / "tsan-suppressions-free-threading.txt"
    if not path.exists():
        member = "Tools/tsan/suppressions_free_threading.txt"
        with tarfile.open(SOURCE) as tar:
            (name,) = [n for n in tar.getnames() if n.endswith("/" + member)]
            data = tar.extractfile(name)
            assert data is not None
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.read())
    return path


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line form)."""
    sources = [Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d")]
    files = [
        p
        for s in sources
        if s.exists()
        for p in ([s] if s.is_file() else sorted(s.iterdir()))
    ]
    for path in files:
        text = path.read_text(errors="replace")
        for match in re.finditer(
            r"^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M
        ):
            uri = match.group(1) or match.group(2)
            if uri.rstrip("/").endswith("/debian"):
                return uri
    raise SystemExit("provision: no Debian mirror found in the apt sources")


def sid_root() -> Path:
    """A Debian unstable root with CPython 3.15 and 3.14, made once."""
    key = recipe_key(SID_PACKAGES)
    root = CACHE / f"sid-{key}"

    def make() -> None:
        apt_install(["debootstrap"])
        for stale in CACHE.glob("sid-*"):
            shutil.rmtree(stale)
        partial = Path(f"{root}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        log("making a Debian unstable root with CPython 3.15 (a minute or two)")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(SID_PACKAGES),
                "sid",
                partial,
                apt_mirror(),
            ],
            stdout=subprocess.DEVNULL,
        )
        shutil.move(str(partial), root)

    return made_once("sid", root, make)


def foreign_arch_problem(arch: str) -> str | None:
    """Why this machine cannot run programs of arch, or None once it can:
    installs qemu-user-static, mounts binfmt_misc and enables the emulator
    for arch when they are missing (root on Debian only)."""
    machine = os.uname().machine
    if machine != "x86_64":
        return f"the {arch} root is made for an x86_64 machine, not {machine}"
    if os.geteuid() != 0:
        return f"making and entering the {arch} root needs root (debootstrap, chroot)"
    emulator = targets.ROOTS[arch].qemu
    if not emulator:
        return None
    packages = ["qemu-user-static", "binfmt-support"]
    missing = missing_packages(packages)
    if missing and not can_apt_install():
        return f"running {arch} programs needs the Debian packages {missing}"
    apt_install(missing)
    if not (BINFMT / "register").exists():
        try:
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT])
        except subprocess.CalledProcessError:
            return f"binfmt_misc cannot be mounted at {BINFMT}, so {arch} cannot run"
    entry = BINFMT / f"qemu-{emulator}"
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(["update-binfmts", "--enable", f"qemu-{emulator}"], check=False)
    if not entry.exists() or "enabled" not in entry.read_text():
        return f"the qemu-{emulator} emulator is not registered with binfmt_misc"
    # F: the kernel opened the emulator when it was registered, so it also
    # serves inside a chroot that has no such file.
    flags = re.search(r"^flags: (\S*)", entry.read_text(), re.M)
    if flags is None or "F" not in flags.group(1):
        return f"qemu-{emulator} is registered without the F flag: unusable in a chroot"
    return None


def remove_root(root: Path) -> None:
    """Removes a Debian root, first unmounting what a debootstrap that was
    stopped may have left mounted in it (its /proc, /sys), so that the
    removal never reaches into the host's own files."""
    prefix = str(root.resolve()) + "/"
    mounts = [
        line.split()[1].replace("\\040", " ")
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        run(["umount", "--lazy", mount])
    shutil.rmtree(root, ignore_errors=True)


# How a root of another architecture is made: mmdebstrap, which fetches the
# packages with apt, several at once, and installs them with the root's own
# dpkg (under qemu).  The Essential packages and foreign_packages() only: no
# apt (no package is added to a root later) and no documentation.  While
# the packages are configured, py3compile and py3clean are diverted to a
# no-op: python3's maintainer scripts byte-compile /usr/share/python3 with
# them, which no test imports and which took from 16 s to over 5 minutes
# under qemu here.  The standard library's own bytecode (made by python3.X's
# scripts with py_compile) is kept: every interpreter that the tests start
# would otherwise compile what it imports (PYTHONDONTWRITEBYTECODE).
DIVERTED = ["/usr/bin/py3compile", "/usr/bin/py3clean"]
MMDEBSTRAP_OPTIONS = [
    "--variant=essential",
    # apt refuses an unstable Release file past its Valid-Until date, which
    # a mirror that is not kept current serves (debootstrap never checks).
    '--aptopt=Acquire::Check-Valid-Until "false"',
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--essential-hook="
    + " && ".join(
        f'chroot "$1" dpkg-divert --quiet --local --rename --add {path}'
        f" && printf '#!/bin/sh\\nexit 0\\n' > \"$1{path}\""
        f' && chmod 755 "$1{path}"'
        for path in DIVERTED
    ),
    "--customize-hook="
    + " && ".join(
        f'rm "$1{path}" && chroot "$1" dpkg-divert --quiet --local --rename'
        f" --remove {path}"
        for path in DIVERTED
    ),
]


def foreign_root(arch: str) -> Path:
    """A Debian root of arch (13 for i386, armhf, arm64, riscv64; unstable for
    s390x and ppc64el) with its CPython (and gcc where its tests build
    pyatexit: its row's `compiler`), made once.  The caller first
    checks that this machine can run arch's programs (`foreign_arch_problem`)."""
    suite = targets.ROOTS[arch].suite
    packages = foreign_packages(arch)
    key = recipe_key(suite, arch, packages, MMDEBSTRAP_OPTIONS)
    root = CACHE / f"debian-{arch}-{suite}-{key}"

    def make() -> None:
        apt_install(["mmdebstrap", "arch-test"])
        for stale in CACHE.glob(f"debian-{arch}-*"):
            remove_root(stale)
        partial = Path(f"{root}.partial")
        log(f"making a Debian {suite} {arch} root (a few minutes)")
        run(
            [
                *targets.ROOTS[arch].prefix,
                "mmdebstrap",
                "--mode=root",
                "--quiet",
                f"--architectures={arch}",
                *MMDEBSTRAP_OPTIONS,
                "--include=" + ",".join(packages),
                suite,
                partial,
                apt_mirror(),
            ],
            stdout=subprocess.DEVNULL,
        )
        shutil.move(str(partial), root)

    return made_once(f"{arch}-root", root, make)


def chroot_command(root: Path, cmd: Sequence[str], cwd: Path) -> list[str]:
    """cmd run inside a Debian root made here, in cwd, in a private mount
    namespace that shows /proc, /dev, the host's DNS and CA bundle, and the
    checkout at the same path; the mounts vanish with the process."""
    binds = [ROOT]
    for path in (Path("/etc/resolv.conf"), Path("/etc/ssl/certs/ca-certificates.crt")):
        if path.exists():
            binds.append(path)
    script = [f"mount -t proc proc {shlex.quote(str(root / 'proc'))}"]
    script.append(f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}")
    for path in binds:
        target = shlex.quote(str(root) + str(path))
        if path.is_dir():
            script.append(f"mkdir -p {target}")
        else:
            script.append(f"mkdir -p $(dirname {target}) && touch {target}")
        script.append(f"mount --bind {shlex.quote(str(path))} {target}")
    inner = f"cd {shlex.quote(str(cwd))} && exec " + shlex.join(cmd)
    script.append(
        f"exec chroot {shlex.quote(str(root))} /bin/sh -c {shlex.quote(inner)}"
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-ec",
        "; ".join(script),
    ]


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """A CPython: on this machine, or inside a Debian root (`root`: Debian
    unstable, or a Debian of another architecture), where its commands run
    through chroot with the checkout at the same path, after `prefix` (how
    the root's architecture runs here)."""

    python: str
    root: Path | None = None
    prefix: tuple[str, ...] = ()

    def command(self, *cmd: str | Path, cwd: Path = ROOT) -> list[str]:
        """cmd as it runs beside this python: in its root, in cwd, if any."""
        args = [str(c) for c in cmd]
        if self.root is not None:
            args = chroot_command(self.root, args, cwd)
        return [*self.prefix, *args]

    def output(self, *args: str) -> str:
        """What this python prints, run with args in the checkout."""
        return subprocess.run(
            self.command(self.python, *args),
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()

    def run(self, session: nox.Session, *args: str | Path, **env: str) -> None:
        """Runs this python with args in a session, with env."""
        session.run(*self.command(self.python, *args), external=True, env=env)


# What a copy of the checkout to build from leaves out: git's folder and what
# .gitignore names (environments, caches, and what a build makes, such as an
# extension module or its objects built in place).
NOT_SOURCES = [
    ".git", "build", "dist", "*.egg-info", "*.so", "*.o", "__pycache__", ".venv",
    ".nox", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "wheelhouse",
]  # fmt: skip


def copy_checkout(destination: Path) -> Path:
    """A fresh copy of the checkout's sources at destination."""
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    return destination


def tests_requirements(*, typing: bool) -> list[str]:
    """The test requirements; without mypy where the typing tests do not run
    (it compiles from source where it has no wheel)."""
    needed = (ROOT / "tests" / "requirements.txt").read_text().split()
    return needed if typing else [r for r in needed if not r.startswith("mypy")]


def requirements_without_hypothesis() -> list[str]:
    """The test requirements but mypy and Hypothesis, for the builds that
    run neither the typing nor the Hypothesis tests: under ThreadSanitizer
    Hypothesis's import alone takes most of a minute, and the musl builds
    lack zlib, which it imports (so do the property and hostile-object
    tests, which use it)."""
    return [r for r in tests_requirements(typing=False) if "hypothesis" not in r]


def host_test_env(
    python: Path, requirements: Sequence[str], installer: Path | None = None
) -> Path:
    """A folder with requirements installed for python (by its own pip, or
    that of installer, a virtual environment of it; with their bytecode),
    made once per interpreter build and requirements: on a slow interpreter
    (ThreadSanitizer) that takes minutes.  Sessions reach it through a .pth
    file in a virtual environment of their own."""
    built = python.resolve()
    key = recipe_key(str(built), built.stat().st_mtime_ns, list(requirements))
    site = CACHE / f"env-{key}"

    def make() -> None:
        log(f"making a test environment for {python}, once")
        pip = installer or python
        run([pip, "-m", "pip", "install", "-q", "--target", site, *requirements])

    return made_once(f"env-{key}", site, make)


# What a wheel must match to install on an interpreter: its Python version
# ("3.13"), ABI ("cp313", "cp314t") and the platform tags it accepts, best
# first ("manylinux_2_41_aarch64", ..., "linux_aarch64"); no platforms: this
# machine's (for pure-Python packages).
TargetTags = tuple[str, str, list[str]]
# Printed by an interpreter that has pip (or packaging) on its path.
TAGS_SCRIPT = """\
import sys, sysconfig
try:
    from packaging import tags
except ImportError:
    from pip._vendor.packaging import tags
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
print("%d.%d" % sys.version_info[:2])
print("cp%d%d%s" % (*sys.version_info[:2], t))
print(" ".join(dict.fromkeys(tag.platform for tag in tags.sys_tags())))
"""


def parse_tags(output: str) -> TargetTags:
    python_version, abi, platforms = output.strip().splitlines()
    return python_version, abi, platforms.split()


PURELIB_SCRIPT = "import sysconfig; print(sysconfig.get_path('purelib'))"
VERSION_SCRIPT = "import sys; print('%d.%d' % sys.version_info[:2])"


def host_pip_install(
    target: Path, tags: TargetTags, packages: Sequence[str], *options: str
) -> None:
    """Installs wheels of packages into target with this machine's pip, for
    another interpreter (tags): built for another platform or C library, or
    running slowly under qemu, where its own pip takes minutes."""
    python_version, abi, platforms = tags
    binary = [f"--abi={abi}", *(f"--platform={p}" for p in platforms)]
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--root-user-action=ignore",
            "--upgrade",
            "--target",
            target,
            "--only-binary",
            ":all:",
            "--implementation",
            "cp",
            "--python-version",
            python_version,
            *(binary if platforms else []),
            *options,
            *packages,
        ]
    )


def foreign_test_env(arch: str, requirements: Sequence[str]) -> Path:
    """The python (a path inside the root) of a virtual environment with
    requirements in arch's root, made once per root and requirements.  The
    root's own pip would take minutes under qemu-user: this machine's pip
    installs pip and the requirements, as wheels for the root's Python and
    platform (`pip check` in the root confirms that nothing is missing), and
    the root's interpreter byte-compiles them once, since the tests' many
    interpreters would otherwise compile what they import every time
    (PYTHONDONTWRITEBYTECODE)."""
    root = foreign_root(arch)
    venv = Path("/opt") / f"pyatexit-tests-{recipe_key(list(requirements), 2)}"
    on_host = root / venv.relative_to("/")
    prefix = list(targets.ROOTS[arch].prefix)
    python = str(venv / "bin" / "python")

    def in_root(*cmd: str) -> str:
        log(f"$ {shlex.join(cmd)} (in the {arch} root)")
        argv = [*prefix, *chroot_command(root, cmd, ROOT)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"provision: that failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def make() -> None:
        for stale in (root / "opt").glob("pyatexit-tests-*"):
            shutil.rmtree(stale)
        log(f"making the test environment in the {arch} root, once")
        in_root("/usr/bin/python3", "-m", "venv", "--without-pip", str(venv))
        site = in_root(python, "-c", PURELIB_SCRIPT).strip()
        on_host_site = root / site.lstrip("/")
        # pip (pure Python) first: its packaging tells the root's tags.
        version = in_root(python, "-c", VERSION_SCRIPT).strip()
        host_pip_install(on_host_site, (version, "", []), ["pip"])
        tags = parse_tags(in_root(python, "-c", TAGS_SCRIPT))
        host_pip_install(on_host_site, tags, requirements)
        in_root(python, "-m", "compileall", "-q", "-j0", site)
        in_root(python, "-m", "pip", "check")

    made_once(f"{arch}-tests-venv", on_host, make)
    return venv / "bin" / "python"


def musl_test_env(python: Path, requirements: Sequence[str]) -> Path:
    """A folder with requirements (pure Python) for a musl build, which has
    no pip (ensurepip needs zlib): installed by this machine's pip for the
    build's tags, which packaging, installed first, tells, and byte-compiled
    by the build; made once per build and requirements.  Sessions reach it
    through a .pth file, as with `host_test_env`."""
    built = python.resolve()
    key = recipe_key(str(built), built.stat().st_mtime_ns, list(requirements))
    site = CACHE / f"env-musl-{key}"

    def output(*code: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(site)}
        return subprocess.run(
            [python, "-c", *code], capture_output=True, text=True, check=True, env=env
        ).stdout

    def make() -> None:
        log(f"making a test environment for {python}, once")
        version = output(VERSION_SCRIPT).strip()
        host_pip_install(site, (version, "", []), ["packaging"])
        tags = parse_tags(output(TAGS_SCRIPT))
        if not any(p.startswith("musllinux_") for p in tags[2]):
            raise SystemExit(f"provision: {python} is not a musl build: {tags}")
        host_pip_install(site, tags, requirements)
        run([python, "-m", "compileall", "-q", "-j0", site])

    return made_once(f"env-musl-{key}", site, make)


def provide(what: str) -> Path:
    """The interpreter or root named what (as on the command line); for an
    architecture, also the test environment its session uses by default
    (the whole suite, typing tests included, where it runs natively)."""
    if what in targets.ROOTS:
        problem = foreign_arch_problem(what)
        if problem is not None:
            raise SystemExit(f"provision: {problem}")
        typing = not targets.ROOTS[what].qemu
        foreign_test_env(what, tests_requirements(typing=typing))
        return foreign_root(what)
    if what == "sid":
        return sid_root()
    python = build_cpython(what)
    if what == "3.14t-tsan":
        host_test_env(python, requirements_without_hypothesis())
    if what.endswith("-musl"):
        musl_test_env(python, requirements_without_hypothesis())
    return python


def main(argv: list[str]) -> int:
    known = (*BUILDS, "sid", *targets.ROOTS)
    if not argv or any(a not in known for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    for what in argv:  # one after the other
        print(provide(what), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
