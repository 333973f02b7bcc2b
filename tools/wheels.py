"""Wheels of pyatexit for every CPython and Linux platform it supports, built
here from the sdist, without containers, as cibuildwheel would build them.

`build()` makes the sdist from a copy of the checkout, unpacks it, and for
each target (a CPython version on a platform) runs setuptools from a fresh
copy of it, under the interpreter of that version (3.15 in the Debian
unstable root), with zig cc as the compiler for the target, the target's
headers (headers.py) and a sysconfig of the target's (its extension suffix
and ABI), with the project's strict flags and the instrumentation on.
`auditwheel repair` gives each wheel the lowest platform tag it meets;
`check()` proves it with `auditwheel show`, checks the metadata and the
files of every wheel, and `twine check --strict`.  Two builds of one commit
give the same bytes: zip times come from SOURCE_DATE_EPOCH (the commit's
time), and nothing of the build's paths reaches the wheel.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from email.parser import HeaderParser
from pathlib import Path

from tools import headers, provision
from tools.provision import Interpreter
from tools.targets import CLASSIFIERS as PROJECT_CLASSIFIERS

SETUPTOOLS = "setuptools==82.0.1"
WHEELHOUSE = provision.ROOT / "wheelhouse"
MANIFEST = "wheels.json"
# What a wheel is made of: a change in any of these makes the wheelhouse stale.
SOURCES = [
    "Py_AtExitDemo.c",
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "stubs/pyatexit-stubs/__init__.pyi",
    "tools/headers.py",
    "tools/wheels.py",
]
PLATFORMS = [
    *headers.GNU,
    *(p for p in headers.MUSL if p.arch.musllinux),
]
# Every wheel's METADATA carries pyproject's classifiers of the versions and
# free-threading (which must be PyPI's), and says Linux.
CLASSIFIERS = [
    *(
        c
        for c in PROJECT_CLASSIFIERS
        if c.startswith("Programming Language :: Python :: 3.")
    ),
    *(c for c in PROJECT_CLASSIFIERS if "Free Threading" in c),
    "Operating System :: POSIX :: Linux",
]


@dataclasses.dataclass(frozen=True)
class Target:
    """A CPython version (3.14t: free-threaded) on a platform."""

    version: str
    platform: headers.Platform

    @property
    def name(self) -> str:
        return f"{self.version}-{self.platform.name}"

    @property
    def abi(self) -> str:
        return "cp" + self.version.replace(".", "")

    @property
    def soabi(self) -> str:
        # Before 3.13 CPython named musl platforms as glibc ones (gh-87278):
        # a musl CPython 3.12 imports .cpython-312-x86_64-linux-gnu.so.
        minor = int(self.version.rstrip("t").split(".")[1])
        musl_as_gnu = self.platform.libc == "musl" and minor < 13
        triplet = self.platform.arch.gnu if musl_as_gnu else self.platform.triplet
        return f"cpython-{self.abi[2:]}-{triplet}"

    @property
    def ext_suffix(self) -> str:
        return f".{self.soabi}.so"

    @property
    def platform_tags(self) -> set[str]:
        """The platform tags its wheel's name must carry: the PEP 600 tag,
        and its manylinux2014 alias where there is one."""
        tag = self.platform.tag
        if tag.startswith("manylinux_2_17_"):
            return {tag, tag.replace("manylinux_2_17_", "manylinux2014_")}
        return {tag}


def targets(
    versions: Sequence[str] = headers.VERSIONS,
    platforms: Sequence[headers.Platform] = PLATFORMS,
) -> list[Target]:
    return [Target(v, p) for p in platforms for v in versions]


def source_hash() -> str:
    """A hash of what the wheels are made of (SOURCES), to tell a stale
    wheelhouse."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (provision.ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def source_date_epoch() -> str:
    """SOURCE_DATE_EPOCH if set, else the time of the checkout's commit."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return os.environ["SOURCE_DATE_EPOCH"]
    return subprocess.run(
        ["git", "-C", str(provision.ROOT), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def x86_64_headers(
    pythons: dict[str, Interpreter], triplet: str = "x86_64-linux-gnu"
) -> dict[str, tuple[Path, str]]:
    """The include folders of the interpreters here (not in a root, where
    Debian's dispatching pyconfig.h needs its compiler), as headers.py
    takes them."""
    found = {}
    for version, python in pythons.items():
        if python.root is not None:
            continue
        include, full = python.output(
            "-c",
            "import sys, sysconfig; print(sysconfig.get_path('include')); "
            "print('.'.join(map(str, sys.version_info[:3])))",
        ).splitlines()
        found[version] = (
            Path(include),
            f"CPython {full}{'t' if version.endswith('t') else ''} ({python.python}), "
            f"{triplet}",
        )
    return found


def build_env(python: Interpreter) -> Interpreter:
    """A virtual environment of python with SETUPTOOLS, made once (in the
    cache, or in python's root), that builds its wheels."""
    if python.root is None:
        resolved = Path(python.python).resolve()
        key = provision.recipe_key(
            str(resolved), resolved.stat().st_mtime_ns, SETUPTOOLS
        )
        venv = provision.CACHE / f"wheel-build-{key}"
        inside = venv
    else:
        key = provision.recipe_key(python.python, SETUPTOOLS)
        inside = Path("/opt") / f"pyatexit-wheel-build-{key}"
        venv = python.root / inside.relative_to("/")
    built = Interpreter(str(inside / "bin" / "python"), python.root)

    def make() -> None:
        provision.log(f"making a wheel-building environment for {python.python}")
        provision.run(python.command(python.python, "-m", "venv", inside))
        provision.run(
            python.command(built.python, "-m", "pip", "install", "-q", SETUPTOOLS)
        )

    provision.made_once(f"wheel-build-{key}", venv, make)
    return built


def zig_for(python: Interpreter) -> tuple[Path, Path]:
    """The zig binary and its cache folder as python's builds see them: the
    cache's, or, in a Debian root, a copy in it (hard links)."""
    zig = headers.zig()
    cache = Path(headers.zig_env()["ZIG_GLOBAL_CACHE_DIR"])
    if python.root is None:
        return zig, cache
    inside = Path("/opt") / zig.parent.parent.name
    copy = python.root / inside.relative_to("/")
    provision.made_once(
        f"zig-in-{python.root.name}",
        copy,
        lambda: shutil.copytree(zig.parent, copy / "ziglang", copy_function=os.link),
    )
    return inside / "ziglang" / "zig", inside / "zig-cache"


# -- building -------------------------------------------------------------------


def make_sdist(tools: Path, work: Path) -> Path:
    """The sdist, made from a copy of the checkout (setuptools writes its
    egg-info beside the sources), and unpacked: returns the unpacked tree."""
    copy = work / "checkout"
    shutil.rmtree(work, ignore_errors=True)
    provision.copy_checkout(copy)
    provision.run(
        [
            tools / "python",
            "-m",
            "build",
            "--sdist",
            "--no-isolation",
            "--outdir",
            work / "sdist",
            copy,
        ],
        stdout=subprocess.DEVNULL,
    )
    (sdist,) = (work / "sdist").glob("pyatexit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(work / "sdist", filter="data")
        else:
            tar.extractall(work / "sdist")
    return work / "sdist" / sdist.name[: -len(".tar.gz")]


SYSCONFIGDATA = "_sysconfigdata_pyatexit_target"


# The name musl's own toolchain (Alpine's) gives the C library on each
# architecture, which the musllinux policy knows; zig links it as libc.so.
# musl's loader takes any libc.* for itself, so both load.
MUSL_LIBC = {
    "x86_64": "libc.musl-x86_64.so.1",
    "i686": "libc.musl-x86.so.1",
    "aarch64": "libc.musl-aarch64.so.1",
    "armv7l": "libc.musl-armv7.so.1",
    "ppc64le": "libc.musl-ppc64le.so.1",
    "s390x": "libc.musl-s390x.so.1",
    "riscv64": "libc.musl-riscv64.so.1",
}


def _linker(target: Target, folder: Path, compiler: str, tools: Path) -> str:
    """The command that links target's extension: zig cc -shared, and for
    musl a script that then names the C library as musl's toolchain does
    (with a copy of patchelf beside it, which a Debian root sees too)."""
    # The parts of the C library that zig compiles and links in statically
    # (glibc's libc_nonshared: pthread_atfork) come with debug information
    # and the paths of zig's cache: stripped.
    link = f"{compiler} -shared -Wl,--strip-debug"
    if target.platform.libc != "musl":
        return link
    shutil.copy(tools / "patchelf", folder / "patchelf")
    script = folder / "link"
    script.write_text(
        "#!/bin/sh\n"
        "set -e\n"
        f'{link} "$@"\n'
        'while [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; done\n'
        f"{folder}/patchelf --replace-needed libc.so "
        f'{MUSL_LIBC[target.platform.arch.name]} "$out"\n'
    )
    script.chmod(0o755)
    return str(script)


def _sysconfigdata(target: Target, include: Path, compiler: str, linker: str) -> str:
    """A sysconfigdata module for target: the interpreter's own, with what
    setuptools and bdist_wheel read about the target (compiler, headers,
    extension suffix, ABI) replaced."""
    overrides = {
        "CC": compiler,
        "LDSHARED": linker,
        "CFLAGS": "",
        "CCSHARED": "-fPIC",
        "LDFLAGS": "",
        "CPPFLAGS": "",
        "AR": "false",
        "ARFLAGS": "",
        "EXT_SUFFIX": target.ext_suffix,
        "SOABI": target.soabi,
        "SHLIB_SUFFIX": ".so",
        "MULTIARCH": target.platform.triplet,
        "HOST_GNU_TYPE": target.platform.triplet,
        "MACHDEP": "linux",
        "INCLUDEPY": str(include),
        "CONFINCLUDEPY": str(include),
        "Py_ENABLE_SHARED": 0,
        "Py_GIL_DISABLED": int(target.version.endswith("t")),
        "Py_DEBUG": 0,
    }
    return (
        '"""The build-time configuration of the target, over the interpreter\'s."""\n'
        "import sys\n\n"
        "_own = __import__(\n"
        '    f"_sysconfigdata_{sys.abiflags}_{sys.platform}_"\n'
        "    f\"{getattr(sys.implementation, '_multiarch', '')}\"\n"
        ")\n"
        "build_time_vars = dict(_own.build_time_vars)\n"
        f"build_time_vars.update({overrides!r})\n"
    )


def build_one(
    target: Target,
    include: Path,
    builder: Interpreter,
    unpacked: Path,
    work: Path,
    tools: Path,
    epoch: str,
) -> Path:
    """Builds target's wheel from a fresh copy of the unpacked sdist in
    work, repairs it (its platform tag) and returns it."""
    folder = work / target.name
    shutil.rmtree(folder, ignore_errors=True)
    src = folder / "src"
    shutil.copytree(unpacked, src)
    target_include = folder / "include" / include.name
    shutil.copytree(include, target_include)
    (folder / "sysconfig").mkdir()
    zig, zig_cache = zig_for(builder)
    compiler = " ".join(
        [
            str(zig),
            "cc",
            "-target",
            target.platform.zig_target,
            *target.platform.arch.cpu,
        ]
    )
    linker = _linker(target, folder, compiler, tools)
    (folder / "sysconfig" / f"{SYSCONFIGDATA}.py").write_text(
        _sysconfigdata(target, target_include, compiler, linker)
    )
    cflags = [
        *headers.OPTIMIZE,
        *headers.STRICT,
        f"-ffile-prefix-map={folder}=/pyatexit",
        f"-I{target_include}",
    ]
    unset = ("CC", "CXX", "CFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED", "AR", "ARFLAGS")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in unset and not k.startswith(("PYATEXIT_", "PYTHON", "_PYTHON"))
    }
    env.update(
        {
            "CC": compiler,
            "LDSHARED": linker,
            "CFLAGS": " ".join(cflags),
            "PYATEXIT_COUNT_ALL_DEC_INC": "1",
            "PYTHONPATH": str(folder / "sysconfig"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "_PYTHON_SYSCONFIGDATA_NAME": SYSCONFIGDATA,
            "_PYTHON_HOST_PLATFORM": f"linux-{target.platform.arch.name}",
            "SOURCE_DATE_EPOCH": epoch,
            "ZIG_GLOBAL_CACHE_DIR": str(zig_cache),
        }
    )
    dist = folder / "dist"
    code = (
        "import sys; from setuptools import build_meta; "
        f"print(build_meta.build_wheel({str(dist)!r}))"
    )
    log = folder / "build.log"
    with open(log, "wb") as out:
        built = subprocess.run(
            builder.command(builder.python, "-c", code, cwd=src),
            cwd=src,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            umask=0o022,
        )
    if built.returncode != 0:
        raise SystemExit(f"wheels: {target.name} failed:\n{log.read_text()[-4000:]}")
    (wheel,) = dist.glob("*.whl")
    repaired = folder / "repaired"
    subprocess.run(
        [tools / "auditwheel", "repair", "--plat", "auto", "-w", repaired, wheel],
        env={
            **os.environ,
            "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
            "SOURCE_DATE_EPOCH": epoch,
        },
        capture_output=True,
        check=True,
    )
    (final,) = repaired.glob("*.whl")
    return final


def build(
    tools: Path,
    work: Path,
    out: Path,
    wanted: Sequence[Target],
    catalogue: headers.Catalogue,
    pythons: dict[str, Interpreter],
    epoch: str,
    jobs: int = 2,
) -> dict[str, Target]:
    """Builds the wanted targets' wheels from a fresh sdist into out (made
    empty first), two at a time, with epoch as SOURCE_DATE_EPOCH: {wheel
    file name: target}."""
    unpacked = make_sdist(tools, work)
    builders = {v: build_env(pythons[v]) for v in sorted({t.version for t in wanted})}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def one(target: Target) -> tuple[str, Target]:
        chosen = catalogue.chosen[target.version, target.platform.name]
        wheel = build_one(
            target,
            chosen.include,
            builders[target.version],
            unpacked,
            work,
            tools,
            epoch,
        )
        shutil.copy(wheel, out / wheel.name)
        provision.log(f"built {wheel.name}")
        return wheel.name, target

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return dict(pool.map(one, wanted))


# -- checks -------------------------------------------------------------------


WHEEL_NAME = re.compile(
    r"^pyatexit-(?P<version>[^-]+)-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


def _auditwheel_show(tools: Path, wheel: Path) -> str:
    return subprocess.run(
        [tools / "auditwheel", "show", wheel],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def check_wheel(tools: Path, wheel: Path, target: Target) -> list[str]:
    """What is wrong with one wheel: its name and tags, what auditwheel show
    finds, its files and its metadata."""
    problems = []
    match = WHEEL_NAME.match(wheel.name)
    if match is None:
        return [f"{wheel.name}: not a pyatexit wheel name"]
    plats = set(match["plat"].split("."))
    python_tag = target.abi.rstrip("t")  # cp314-cp314t: the ABI is free-threaded
    if (match["python"], match["abi"]) != (python_tag, target.abi):
        problems.append(f"{wheel.name}: not {python_tag}-{target.abi}")
    if plats != target.platform_tags:
        problems.append(
            f"{wheel.name}: platform tags {plats}, not {target.platform_tags}"
        )
    if any(p.startswith("linux_") for p in plats):
        problems.append(f"{wheel.name}: a linux_ tag")
    show = " ".join(_auditwheel_show(tools, wheel).split())
    found = re.search(r'consistent with the following platform tag: "([^"]+)"', show)
    if found is None or found.group(1) != target.platform.tag:
        problems.append(
            f"{wheel.name}: auditwheel show finds "
            f"{found.group(1) if found else 'no tag'}, not {target.platform.tag}"
        )
    if "external shared libraries are required" in show:
        problems.append(f"{wheel.name}: needs external libraries: {show}")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"pyatexit-{match['version']}.dist-info"
        needed = {
            f"pyatexit{target.ext_suffix}",
            "pyatexit-stubs/__init__.pyi",
            f"{dist_info}/licenses/LICENSE",
            f"{dist_info}/METADATA",
            f"{dist_info}/WHEEL",
            f"{dist_info}/RECORD",
        }
        if not needed <= names:
            problems.append(f"{wheel.name}: lacks {sorted(needed - names)}")
        extensions = [n for n in names if n.endswith(".so")]
        if extensions != [f"pyatexit{target.ext_suffix}"]:
            problems.append(f"{wheel.name}: extension modules {extensions}")
        metadata = HeaderParser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        classifiers = metadata.get_all("Classifier") or []
        missing = [c for c in CLASSIFIERS if c not in classifiers]
        if missing:
            problems.append(f"{wheel.name}: METADATA lacks classifiers {missing}")
        elf = zf.read(f"pyatexit{target.ext_suffix}")
        problems += [f"{wheel.name}: {p}" for p in _elf_problems(elf, target)]
    # The only libraries it links with are the C library's.
    needed = set(_needed(elf))
    allowed = (
        {MUSL_LIBC[target.platform.arch.name]}
        if target.platform.libc == "musl"
        else {"libc.so.6", "libpthread.so.0"}
    )
    if not needed or needed - allowed:
        problems.append(f"{wheel.name}: links {sorted(needed)}, not only {allowed}")
    return problems


# ELF e_machine and class (32/64-bit) and byte order of each architecture.
ELF_MACHINES = {
    "x86_64": (62, 2, 1),
    "i686": (3, 1, 1),
    "aarch64": (183, 2, 1),
    "armv7l": (40, 1, 1),
    "ppc64le": (21, 2, 1),
    "s390x": (22, 2, 2),
    "riscv64": (243, 2, 1),
}


def _needed(elf: bytes) -> list[str]:
    """The libraries a shared object names (DT_NEEDED), as readelf reads
    them for any architecture."""
    with tempfile.NamedTemporaryFile(suffix=".so") as so:
        so.write(elf)
        so.flush()
        dynamic = subprocess.run(
            ["readelf", "--dynamic", "--wide", so.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)


def _elf_problems(elf: bytes, target: Target) -> list[str]:
    """The extension module is an ELF shared object for target's machine."""
    machine, elf_class, order = ELF_MACHINES[target.platform.arch.name]
    if elf[:4] != b"\x7fELF":
        return ["the extension module is not ELF"]
    found = (
        int.from_bytes(elf[18:20], "little" if elf[5] == 1 else "big"),
        elf[4],
        elf[5],
    )
    if found != (machine, elf_class, order):
        return [f"ELF machine, class, order {found}, not {(machine, elf_class, order)}"]
    return []


def check(tools: Path, out: Path, built: dict[str, Target]) -> list[str]:
    """Every check of the wheels in out: each wheel's (check_wheel), one
    wheel per target and nothing else, PyPI's classifiers, twine."""
    unknown = subprocess.run(
        [
            tools / "python",
            "-c",
            "import sys, trove_classifiers as t; "
            "print(*(c for c in sys.argv[1:] if c not in t.classifiers), sep='\\n')",
            *CLASSIFIERS,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    problems = [f"{c}: not a PyPI classifier (trove-classifiers)" for c in unknown if c]
    present = sorted(p.name for p in out.glob("*.whl"))
    if present != sorted(built):
        problems.append(f"{out}: wheels {present}, built {sorted(built)}")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for found in pool.map(
            lambda item: check_wheel(tools, out / item[0], item[1]),
            sorted(built.items()),
        ):
            problems += found
    twine = subprocess.run(
        [tools / "twine", "check", "--strict", *sorted(out.glob("*.whl"))],
        capture_output=True,
        text=True,
        check=False,
    )
    if twine.returncode != 0:
        problems.append(f"twine check --strict:\n{twine.stdout}{twine.stderr}")
    return problems


def compare(first: Path, second: Path, names: Sequence[str]) -> list[str]:
    """The wheels of names that are not byte-identical in two folders."""
    problems = []
    for name in names:
        a, b = first / name, second / name
        if not b.exists():
            problems.append(f"{name}: the second build made no such wheel")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{name}: the second build differs")
    return problems


def write_manifest(
    out: Path, built: dict[str, Target], catalogue: headers.Catalogue, epoch: str
) -> None:
    """wheels.json (what each wheel is, from which sources, and where its
    headers came from) and HEADERS.md, the same as a table."""
    records = {}
    for name, target in sorted(built.items()):
        h = catalogue.chosen[target.version, target.platform.name]
        records[name] = {
            "version": target.version,
            "platform": target.platform.name,
            "tag": target.platform.tag,
            "pyconfig": h.source,
            "real": h.real,
            "public_headers": h.public or h.source,
            "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(),
        }
    (out / MANIFEST).write_text(
        json.dumps(
            {"source": source_hash(), "source_date_epoch": epoch, "wheels": records},
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    lines = [
        "# Where each wheel's CPython headers came from",
        "",
        "The public headers are the same on every platform; `pyconfig.h` is",
        "made for one.  *real*: made for that platform (by Debian's build, by",
        "CPython's configure, or the building interpreter's own); *derived*:",
        "the x86_64 glibc one of that version with a nearby version's",
        "differences between x86_64 glibc and the platform applied, checked",
        "by compiling (`tools/headers.py`).",
        "",
        "The public headers of every wheel of a version are those of the",
        "interpreter that builds it.",
        "",
        "| wheel | pyconfig.h | from | public headers |",
        "| --- | --- | --- | --- |",
    ]
    for name, record in records.items():
        kind = "real" if record["real"] else "derived"
        lines.append(
            f"| `{name}` | {kind} | {record['pyconfig']} | {record['public_headers']} |"
        )
    (out / "HEADERS.md").write_text("\n".join(lines) + "\n")


def wheel_for(version: str, platform: str = "x86_64-gnu") -> str | None:
    """The wheel in WHEELHOUSE for version on platform, if the wheelhouse
    was built from the sources as they are now; else None."""
    try:
        manifest = json.loads((WHEELHOUSE / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("source") != source_hash():
        return None
    for name, record in manifest["wheels"].items():
        same = (record["version"], record["platform"]) == (version, platform)
        if same and (WHEELHOUSE / name).exists():
            return str(name)
    return None


if __name__ == "__main__":
    print(source_hash(), file=sys.stdout)
