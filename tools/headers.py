"""The CPython headers each wheel is compiled against, where they come from,
and the proof that the ones derived here compile like real ones.

An extension sees its interpreter through the headers: the public ones
(CPython's `Include/`), the same on every platform, and `pyconfig.h`, which
`configure` writes for one platform (word size, byte order, C library,
free-threading).  A wheel for aarch64 and CPython 3.13 must be compiled
against a 3.13 `pyconfig.h` made for aarch64.  Where a wheel's come from:

* real, x86_64 with glibc: the interpreter that builds the wheel (pyenv's
  3.9 to 3.13, the 3.14 and 3.14t that provision.py builds) and, for 3.15,
  Debian unstable's package, which sid's python3.15 uses;
* real, Debian's `libpython3.X-dev` of each architecture: bullseye (3.9),
  bookworm (3.11), trixie (3.13), unstable (3.14, 3.15), checked against
  the signed Release file;
* real, the `configure` of the CPython 3.14 source (provision.SOURCE), run
  for the target with zig cc as the cross-compiler: 3.14t for glibc, 3.14
  and 3.14t for musl (and 3.14 for glibc, to compare with Debian's);
* derived, where no real one exists (3.10 and 3.12 off x86_64, for
  example): the x86_64 glibc `pyconfig.h` of that version, with the
  macros that differ between x86_64 glibc and the target in a nearby
  version's real pair of headers (same builder, same version) applied.

`prove()` applies the same derivation wherever a real header also exists,
from every other version's pair, and compiles Py_AtExitDemo.c with the
derived and with the real header (same zig target and flags): the object
code must be byte-identical, or the derivation is wrong and the run fails.

Everything downloaded, configured or compiled is cached under
provision.CACHE, keyed by the recipe that made it; a warm machine asks no
mirror anything.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tools import provision, targets

ZIGLANG = "ziglang==0.17.1"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Results configure cannot find out when cross-compiling, as every Linux
# has them: a pseudo-terminal master at /dev/ptmx (and no /dev/ptc), and a
# working getaddrinfo().
CONFIGURE_CACHE_VALUES = [
    "ac_cv_file__dev_ptmx=yes",
    "ac_cv_file__dev_ptc=no",
    "ac_cv_buggy_getaddrinfo=no",
]
# Code generation shared by the wheels and the proof: CPython's own release
# options, without debug information (zig cc adds it unless told), which
# would carry the build's paths.
OPTIMIZE = ["-O2", "-g0", "-DNDEBUG", "-fno-strict-overflow", "-fPIC"]
# What the wheels build: the instrumentation on.
MACROS = ["-DCOUNT_ALL_DEC_INC"]


Arch = targets.Arch
ARCHES = {a.name: a for a in targets.ARCHES}
VERSIONS = targets.VERSIONS
DEBIAN_SUITES = targets.DEBIAN_SUITES


@dataclasses.dataclass(frozen=True)
class Platform:
    """An architecture with a C library: "gnu" (glibc) or "musl"."""

    arch: Arch
    libc: str

    @property
    def name(self) -> str:
        return f"{self.arch.name}-{self.libc}"

    @property
    def triplet(self) -> str:
        return self.arch.gnu if self.libc == "gnu" else self.arch.musl

    @property
    def zig_target(self) -> str:
        abi = self.triplet.split("-linux-")[1]
        # glibc: the oldest version the policy allows, whose symbol versions
        # zig links against.
        glibc = self.arch.zig_glibc or self.arch.glibc
        return f"{self.arch.zig}-linux-{abi}" + (
            f".{glibc}" if self.libc == "gnu" else ""
        )

    @property
    def tag(self) -> str:
        """The platform tag of its wheels."""
        if self.libc == "musl":
            return f"musllinux_1_2_{self.arch.name}"
        return f"manylinux_{self.arch.glibc.replace('.', '_')}_{self.arch.name}"


def platform(name: str) -> Platform:
    arch, libc = name.rsplit("-", 1)
    return Platform(ARCHES[arch], libc)


GNU = [Platform(a, "gnu") for a in ARCHES.values()]
MUSL = [Platform(a, "musl") for a in ARCHES.values()]
X86_64_GNU = GNU[0]


@dataclasses.dataclass(frozen=True)
class Headers:
    """One CPython version's headers for one platform: the folder that
    holds Python.h and pyconfig.h, where they came from, and whether
    pyconfig.h is real (made for that platform) or derived here."""

    version: str
    platform: Platform
    include: Path
    source: str
    real: bool
    # Who made it (a Debian package version, a configure run, an
    # interpreter): one builder's public headers never differ by platform.
    builder: str = ""
    # Where the public headers in include came from, if not from source.
    public: str = ""

    @property
    def pyconfig(self) -> Path:
        return self.include / "pyconfig.h"


def zig() -> Path:
    """The zig binary of ZIGLANG (PyPI), installed once into the cache."""
    key = provision.recipe_key(ZIGLANG)
    target = provision.CACHE / f"zig-{key}"
    pip = ["python3", "-m", "pip", "install", "-q", "--target", str(target), ZIGLANG]
    provision.made_once(f"zig-{key}", target, lambda: provision.run(pip))
    return target / "ziglang" / "zig"


def zig_env() -> dict[str, str]:
    """zig's cache of compiled C libraries, kept with the compiler."""
    cache = zig().parent.parent / "zig-cache"
    return {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache)}


def compiler(target: Platform) -> list[str]:
    return [str(zig()), "cc", "-target", target.zig_target, *target.arch.cpu]


def python_dir(version: str) -> str:
    """The folder name of version's headers: python3.14t for 3.14t."""
    return f"python{version}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hash(folder: Path) -> str:
    """A hash of a folder's files, names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


# -- Debian packages --------------------------------------------------------


def _fetch(url: str) -> bytes:
    provision.log(f"fetching {url}")
    with urllib.request.urlopen(url, timeout=120) as response:
        data: bytes = response.read()
    return data


_lock = threading.Lock()
_release: dict[str, str] = {}
_indexes: dict[tuple[str, str], str] = {}


def _release_hashes(suite: str) -> str:
    """The signed Release file of suite, its signature checked with
    Debian's archive keyring (the text lists every index's SHA256)."""
    with _lock:
        if suite not in _release:
            url = f"{provision.apt_mirror().rstrip('/')}/dists/{suite}/InRelease"
            checked = subprocess.run(
                ["gpgv", "--keyring", str(KEYRING), "--output", "-", "-"],
                input=_fetch(url),
                capture_output=True,
                check=False,
            )
            if checked.returncode != 0:
                raise SystemExit(
                    f"headers: the {suite} Release file fails its signature check:\n"
                    + checked.stderr.decode(errors="replace")
                )
            _release[suite] = checked.stdout.decode()
        return _release[suite]


def _index(suite: str, debian_arch: str) -> str:
    """suite's Packages index for debian_arch, checked against the hash the
    signed Release file gives ("" if it has none); fetched once a run."""
    release = _release_hashes(suite)
    with _lock:
        if (suite, debian_arch) not in _indexes:
            index = f"main/binary-{debian_arch}/Packages.xz"
            match = re.search(
                rf"^ ([0-9a-f]{{64}})\s+\d+\s+{re.escape(index)}$",
                release.split("\nSHA256:", 1)[1],
                re.M,
            )
            text = ""
            if match is not None:
                url = f"{provision.apt_mirror().rstrip('/')}/dists/{suite}/{index}"
                data = _fetch(url)
                if hashlib.sha256(data).hexdigest() != match.group(1):
                    raise SystemExit(f"headers: {url} does not match its Release hash")
                text = lzma.decompress(data).decode()
            _indexes[suite, debian_arch] = text
        return _indexes[suite, debian_arch]


def _package_stanza(
    suite: str, debian_arch: str, package: str
) -> dict[str, str] | None:
    """The Packages entry of package in suite for debian_arch, or None."""
    for block in _index(suite, debian_arch).split("\n\n"):
        if f"\nPackage: {package}\n" in f"\n{block}\n":
            return dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", block, re.M))
    return None


def debian_headers(version: str, debian_arch: str) -> tuple[Path, str] | None:
    """Debian's headers of version for debian_arch, with pyconfig.h for that
    architecture in place of Debian's dispatching one, and where they came
    from; None if the suite has no such package.  Downloaded once."""
    suite = DEBIAN_SUITES[version]
    package = f"libpython{version}-dev"
    key = provision.recipe_key("debian-headers", 1, suite, debian_arch, package)
    folder = (
        provision.CACHE / "headers" / f"debian-{suite}-{debian_arch}-{version}-{key}"
    )

    def make() -> None:
        folder.mkdir(parents=True)
        stanza = _package_stanza(suite, debian_arch, package)
        if stanza is None:
            (folder / ".none").write_text("")
            return
        deb = folder / Path(stanza["Filename"]).name
        deb.write_bytes(
            _fetch(f"{provision.apt_mirror().rstrip('/')}/{stanza['Filename']}")
        )
        if _sha256(deb) != stanza["SHA256"]:
            raise SystemExit(f"headers: {deb.name} does not match its SHA256")
        tree = folder / "deb"
        provision.run(["dpkg-deb", "-x", deb, tree])
        public = tree / "usr" / "include" / python_dir(version)
        (specific,) = (tree / "usr" / "include").glob(
            f"*/{python_dir(version)}/pyconfig.h"
        )
        include = folder / "include" / python_dir(version)
        shutil.copytree(public, include)
        shutil.copy(specific, include / "pyconfig.h")
        shutil.rmtree(tree)
        deb.unlink()
        (folder / "SOURCE").write_text(
            f"Debian {suite} {package} {stanza['Version']} {debian_arch}"
        )

    # .none: the suite has no such package (before, .none came without .complete).
    if not (folder / ".none").exists():
        provision.made_once(f"headers-{folder.name}", folder, make)
    if (folder / ".none").exists():
        return None
    return folder / "include" / python_dir(version), (folder / "SOURCE").read_text()


# -- configure ----------------------------------------------------------------


def configured(target: Platform, build_python: str) -> dict[str, tuple[Path, str]]:
    """pyconfig.h of 3.14 and 3.14t for target, from the configure of the
    CPython 3.14 source run with zig cc as the cross-compiler, with the
    source's public headers beside it: {"3.14": (include, source), ...}.
    The free-threaded configure reuses the default one's config.cache, so
    that it checks only what --disable-gil changes.  Made once."""
    compiler_line = " ".join(compiler(target))
    key = provision.recipe_key(
        "configure",
        1,
        provision.SOURCE.name,
        provision.SOURCE.stat().st_size,
        compiler_line.replace(str(zig()), ZIGLANG),
        CONFIGURE_CACHE_VALUES,
    )
    folder = provision.CACHE / "headers" / f"configure-{target.name}-{key}"
    release = provision.SOURCE.name.removesuffix(".tar.xz").replace("Python-", "")

    def make() -> None:
        with tempfile.TemporaryDirectory(prefix="pyatexit-configure-") as tmp:
            with tarfile.open(provision.SOURCE) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:
                    tar.extractall(tmp)
            (src,) = (p for p in Path(tmp).iterdir() if p.is_dir())
            cache_file = Path(tmp) / "config.cache"
            for version, flags in (("3.14", []), ("3.14t", ["--disable-gil"])):
                build = Path(tmp) / f"build-{version}"
                build.mkdir()
                provision.log(
                    f"configure of CPython {release} {' '.join(flags)} "
                    f"for {target.triplet} (a few minutes)"
                )
                provision.run(
                    [
                        src / "configure",
                        f"--host={target.triplet}",
                        "--build=x86_64-pc-linux-gnu",
                        f"--with-build-python={build_python}",
                        f"--cache-file={cache_file}",
                        *flags,
                        f"CC={compiler_line}",
                        *CONFIGURE_CACHE_VALUES,
                    ],
                    cwd=build,
                    env=zig_env(),
                    stdout=subprocess.DEVNULL,
                )
                include = folder / version / "include" / python_dir(version)
                shutil.copytree(src / "Include", include)
                shutil.copy(build / "pyconfig.h", include / "pyconfig.h")
                described = f" --disable-gil ({version})" if flags else ""
                (folder / version / "SOURCE").write_text(
                    f"configure of CPython {release}{described} for {target.triplet}"
                )

    provision.made_once(f"headers-{folder.name}", folder, make)
    return {
        version: (
            folder / version / "include" / python_dir(version),
            (folder / version / "SOURCE").read_text(),
        )
        for version in ("3.14", "3.14t")
    }


# -- derivation ---------------------------------------------------------------

_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)(.*)$")
_UNDEF = re.compile(r"^\s*/\*\s*#\s*undef\s+(\w+)\s*\*/\s*$|^\s*#\s*undef\s+(\w+)\s*$")


def _name(line: str) -> str | None:
    """The macro a line of pyconfig.h defines or leaves undefined."""
    define = _DEFINE.match(line)
    if define:
        return define.group(1)
    undef = _UNDEF.match(line)
    return (undef.group(1) or undef.group(2)) if undef else None


def _active(lines: list[str]) -> list[bool]:
    """Whether each line counts on Linux: not in the branch of pyconfig.h
    for Apple's universal builds (`#if defined AC_APPLE_UNIVERSAL_BUILD`),
    which defines WORDS_BIGENDIAN on every platform."""
    stack: list[bool] = []  # True: an inactive branch
    active = []
    for line in lines:
        directive = line.strip().replace(" ", "")
        if directive.startswith("#if"):
            stack.append("AC_APPLE_UNIVERSAL_BUILD" in directive)
        elif directive.startswith("#else") and stack:
            stack[-1] = False
        elif directive.startswith("#endif") and stack:
            stack.pop()
        active.append(not any(stack))
    return active


def macros(text: str) -> dict[str, str | None]:
    """The macros a pyconfig.h defines (name: value) or leaves undefined
    (name: None), as configure writes them."""
    found: dict[str, str | None] = {}
    lines = text.splitlines()
    for line, active in zip(lines, _active(lines)):
        if not active:
            continue
        define = _DEFINE.match(line)
        if define:
            found[define.group(1)] = " ".join(define.group(2).split())
            continue
        undef = _UNDEF.match(line)
        if undef:
            found.setdefault(undef.group(1) or undef.group(2), None)
    return found


def differences(text_a: str, text_b: str) -> dict[str, str | None]:
    """What changes from header a to header b: each macro whose definition
    differs, with its definition in b (None: undefined there)."""
    a, b = macros(text_a), macros(text_b)
    return {n: b.get(n) for n in sorted(a.keys() | b.keys()) if a.get(n) != b.get(n)}


def derive(base: str, changes: dict[str, str | None], note: str) -> str:
    """base (a pyconfig.h) with changes applied line by line; a macro that
    base does not mention is added before its closing #endif."""
    lines = []
    seen = set()
    base_lines = base.splitlines()
    for line, active in zip(base_lines, _active(base_lines)):
        name = _name(line)
        if active and name is not None and name in changes:
            seen.add(name)
            value = changes[name]
            line = (
                f"/* #undef {name} */" if value is None else f"#define {name} {value}"
            )
        lines.append(line)
    added = [
        f"#define {n} {v}"
        for n, v in changes.items()
        if n not in seen and v is not None
    ]
    if added:
        last = max(i for i, line in enumerate(lines) if line.startswith("#endif"))
        lines[last:last] = added
    comment = "/* " + note.replace("*/", "* /") + " */"
    return "\n".join([comment, *lines]) + "\n"


@dataclasses.dataclass(frozen=True)
class Pair:
    """A version's real x86_64 glibc header and its real header for another
    platform, from the same builder (a Debian suite, or configure)."""

    version: str
    x86_64: Headers
    target: Headers

    def changes(self) -> dict[str, str | None]:
        return differences(
            self.x86_64.pyconfig.read_text(), self.target.pyconfig.read_text()
        )


def _assemble(public: Path, pyconfig: str, version: str) -> Path:
    """A folder with public's headers and the pyconfig.h text given, in the
    cache, named by its content."""
    key = hashlib.sha256(
        (tree_hash(public) + hashlib.sha256(pyconfig.encode()).hexdigest()).encode()
    ).hexdigest()[:16]
    folder = provision.CACHE / "headers" / "derived" / key
    include = folder / python_dir(version)

    def make() -> None:
        shutil.copytree(public, include)
        (include / "pyconfig.h").write_text(pyconfig)

    provision.made_once(f"headers-derived-{key}", folder, make)
    return include


def with_public(real: Headers, base: Headers) -> Headers:
    """real's pyconfig.h with base's public headers: every wheel of a
    version is compiled against the public headers of the interpreter that
    builds it (those of an older patch release may include what zig's C
    library lacks: Debian 11's 3.9.2 Python.h includes <crypt.h>)."""
    include = _assemble(base.include, real.pyconfig.read_text(), real.version)
    return dataclasses.replace(real, include=include, public=base.source)


def derived(base: Headers, pair: Pair) -> Headers:
    """base's version for pair's target platform: base's pyconfig.h (real,
    x86_64 glibc) with pair's differences applied, and base's public
    headers."""
    note = (
        f"Derived by tools/headers.py for {pair.target.platform.triplet}: the "
        f"pyconfig.h of {base.source} with the differences between "
        f"{pair.x86_64.source} and {pair.target.source} applied."
    )
    text = derive(base.pyconfig.read_text(), pair.changes(), note)
    include = _assemble(base.include, text, base.version)
    source = (
        f"derived from {base.source} and the pair {pair.x86_64.source} / "
        f"{pair.target.source}"
    )
    return Headers(
        base.version, pair.target.platform, include, source, False, "", base.source
    )


def _number(version: str) -> int:
    return int(version.rstrip("t").split(".")[1])


def nearest(version: str, pairs: Iterable[Pair]) -> Pair:
    """The pair of the nearest version, of the same kind (free-threaded or
    not) where one is as near; the newer one on a tie."""
    return min(
        pairs,
        key=lambda p: (
            abs(_number(p.version) - _number(version)),
            p.version.endswith("t") != version.endswith("t"),
            -_number(p.version),
        ),
    )


# -- all of them ----------------------------------------------------------------


@dataclasses.dataclass
class Catalogue:
    """Every header found: the ones the wheels use (chosen), and the real
    ones and pairs the proof compares."""

    chosen: dict[tuple[str, str], Headers]
    real: list[Headers]
    pairs: dict[str, list[Pair]]  # by platform name
    x86_64: dict[str, Headers]  # the interpreters' own, by version


def catalogue(
    x86_64: dict[str, tuple[Path, str]],
    build_python: str,
    platforms: Sequence[Platform],
    jobs: int = 2,
    versions: Sequence[str] = VERSIONS,
    x86_64_musl: dict[str, tuple[Path, str]] | None = None,
) -> Catalogue:
    """The headers of each of versions (by default every one in VERSIONS)
    for each of platforms.

    x86_64 gives versions' real x86_64 glibc headers (the include folder of
    the interpreter that builds their wheels, and a description); a version
    it lacks takes Debian's amd64 package's.  x86_64_musl gives real x86_64
    musl headers the same way (CPythons built here against musl, from the
    source the x86_64 glibc 3.14 and 3.14t were built from: a pair).  Other
    musl platforms take configure's (with configure's x86_64 glibc ones as
    their pair); glibc ones take Debian's, the free-threaded 3.14 derived
    from them.  build_python is a CPython 3.14 for configure.  Downloads
    and configure runs go jobs at a time."""
    others = [p for p in platforms if p != X86_64_GNU]
    debian_jobs = [
        (v, p) for v in DEBIAN_SUITES for p in [X86_64_GNU, *others] if p.libc == "gnu"
    ]
    native_musl = x86_64_musl or {}
    configure_musl = [
        p
        for p in others
        if p.libc == "musl" and not (p.arch == X86_64_GNU.arch and native_musl)
    ]
    configure_targets = [X86_64_GNU, *configure_musl] if configure_musl else []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        debian_found = list(
            pool.map(
                lambda job: debian_headers(job[0], job[1].arch.debian), debian_jobs
            )
        )
        configure_found = list(
            pool.map(lambda p: configured(p, build_python), configure_targets)
        )
    debian: dict[tuple[str, Platform], Headers] = {
        (v, p): Headers(v, p, found[0], found[1], True, found[1].rsplit(" ", 1)[0])
        for (v, p), found in zip(debian_jobs, debian_found)
        if found is not None
    }
    configure: dict[tuple[str, Platform], Headers] = {
        (v, p): Headers(v, p, inc, src, True, src.split(" for ")[0])
        for p, results in zip(configure_targets, configure_found)
        for v, (inc, src) in results.items()
    }
    base = {
        v: Headers(v, X86_64_GNU, inc, src, True, src)
        for v, (inc, src) in x86_64.items()
    }
    x86_64_musl_platform = Platform(X86_64_GNU.arch, "musl")
    built_musl = {
        (v, x86_64_musl_platform): Headers(v, x86_64_musl_platform, inc, src, True, src)
        for v, (inc, src) in native_musl.items()
    }
    for v in versions:
        if v not in base:
            base[v] = debian[v, X86_64_GNU]
    real = list(base.values())
    pairs: dict[str, list[Pair]] = {}
    chosen: dict[tuple[str, str], Headers] = {}
    for v in versions:
        chosen[v, X86_64_GNU.name] = base[v]
    # The x86_64 glibc CPythons built here are the musl builds' pair.
    built_gnu = {(v, X86_64_GNU): base[v] for v, _ in built_musl if v in base}
    for target in others:
        found = [
            h
            for (v, p), h in [
                *debian.items(),
                *configure.items(),
                *built_musl.items(),
            ]
            if p == target
        ]
        real += found
        pairs[target.name] = [
            Pair(h.version, same_x86_64[h.version, X86_64_GNU], h)
            for same, same_x86_64 in (
                (debian, debian),
                (configure, configure),
                (built_musl, built_gnu),
            )
            for (v, p), h in same.items()
            if p == target and (v, X86_64_GNU) in same_x86_64
        ]
        for version in versions:
            # Debian's or a build's (a real interpreter's) first, then
            # configure's; else derived from the nearest version's pair.
            real_one = (
                debian.get((version, target))
                or built_musl.get((version, target))
                or configure.get((version, target))
            )
            if real_one is None:
                pair = nearest(version, pairs[target.name])
                chosen[version, target.name] = derived(base[version], pair)
            else:
                chosen[version, target.name] = with_public(real_one, base[version])
    return Catalogue(chosen, real, pairs, base)


# -- the proof ----------------------------------------------------------------


def object_hash(source: Path, headers: Headers) -> str:
    """The SHA256 of source compiled (-c) against headers for their
    platform, with the wheels' flags; cached by everything that goes in."""
    target = headers.platform
    cmd = [
        *compiler(target),
        *STRICT,
        *OPTIMIZE,
        *MACROS,
        f"-ffile-prefix-map={headers.include}=/python-include",
        f"-I{headers.include}",
        "-c",
        source.name,
        "-o",
    ]
    key = provision.recipe_key(
        "object",
        [c.replace(str(zig()), ZIGLANG) for c in cmd],
        hashlib.sha256(source.read_bytes()).hexdigest(),
        tree_hash(headers.include),
    )
    record = provision.CACHE / "headers" / "objects" / key
    if record.exists():
        return record.read_text()
    with tempfile.TemporaryDirectory(prefix="pyatexit-proof-") as tmp:
        shutil.copy(source, Path(tmp) / source.name)
        out = Path(tmp) / "out.o"
        built = subprocess.run(
            [*cmd, str(out)], cwd=tmp, env=zig_env(), capture_output=True, check=False
        )
        if built.returncode != 0:
            raise RuntimeError(
                f"{source.name} does not compile for {target.name} against "
                f"{headers.source}:\n{built.stderr.decode(errors='replace')}"
            )
        digest = _sha256(out)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(digest)
    return digest


# The strict flags: a wheel's compile is warning-free, as is the lint
# session's compile against every CPython.
STRICT = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    real: Headers
    derived: Headers
    pair: Pair
    identical: bool
    macro_differences: dict[str, tuple[str | None, str | None]]


def _public_files(include: Path) -> dict[str, str]:
    return {
        str(p.relative_to(include)): _sha256(p)
        for p in include.rglob("*")
        if p.is_file() and p.name != "pyconfig.h"
    }


def public_headers_problems(cat: Catalogue) -> list[str]:
    """Where the public headers (all but pyconfig.h) of one builder and
    version differ between platforms: derivation assumes they never do."""
    problems = []
    groups: dict[tuple[str, str], list[Headers]] = {}
    for h in cat.real:
        groups.setdefault((h.version, h.builder), []).append(h)
    for (version, builder), members in sorted(groups.items()):
        first = _public_files(members[0].include)
        for other in members[1:]:
            if _public_files(other.include) != first:
                problems.append(
                    f"{version}, {builder}: the public headers of "
                    f"{members[0].platform.name} and {other.platform.name} differ"
                )
    return problems


def prove(
    cat: Catalogue, source: Path, jobs: int = 2
) -> tuple[list[Comparison], list[str]]:
    """Derives every real header off x86_64 glibc from every other pair for
    its platform (from the x86_64 glibc header of the wheels of that
    version), compiles source with the derived and the real pyconfig.h (both
    with the public headers of the wheels, so that only pyconfig.h differs),
    and compares the objects.  Returns the comparisons, and the problems:
    any that differ, and any public headers that differ between platforms."""
    jobs_list: list[tuple[Headers, Headers, Pair]] = []
    for real in cat.real:
        if real.platform == X86_64_GNU or real.version not in cat.x86_64:
            continue
        for pair in cat.pairs[real.platform.name]:
            if pair.target == real:
                continue
            base = cat.x86_64[real.version]
            candidate = derived(base, pair)
            jobs_list.append((with_public(real, base), candidate, pair))

    def compare(job: tuple[Headers, Headers, Pair]) -> Comparison:
        real, candidate, pair = job
        same = object_hash(source, real) == object_hash(source, candidate)
        diff = {}
        if not same:
            r, d = (
                macros(real.pyconfig.read_text()),
                macros(candidate.pyconfig.read_text()),
            )
            diff = {
                n: (r.get(n), d.get(n))
                for n in sorted(r.keys() | d.keys())
                if r.get(n) != d.get(n)
            }
        return Comparison(real, candidate, pair, same, diff)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(compare, jobs_list))
    problems = public_headers_problems(cat)
    for c in results:
        if not c.identical:
            problems.append(
                f"{c.real.version} {c.real.platform.name}: derived with the "
                f"{c.pair.version} pair compiles differently from {c.real.source}; "
                f"macros (real, derived): {c.macro_differences}"
            )
    return results, problems


def controls(cat: Catalogue, source: Path) -> set[str]:
    """The platforms where some real header compiles differently from that
    version's x86_64 glibc one used as it is: there the proof above can
    tell a wrong pyconfig.h from a right one (on x86_64 musl, say, the
    differences may not reach this code at all)."""
    differ = set()
    for real in cat.real:
        base = cat.x86_64.get(real.version)
        if real.platform == X86_64_GNU or base is None:
            continue
        as_is = dataclasses.replace(base, platform=real.platform)
        try:
            same = object_hash(source, with_public(real, base)) == object_hash(
                source, as_is
            )
        except RuntimeError:  # pyport.h: "LONG_BIT definition appears wrong"
            same = False
        if not same:
            differ.add(real.platform.name)
    return differ


def chosen_rows(cat: Catalogue) -> Iterator[tuple[str, str, Headers]]:
    for (version, name), h in sorted(cat.chosen.items()):
        yield version, name, h
