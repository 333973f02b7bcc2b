"""Every CPython and platform pyatexit builds or tests, as data.

The supported versions are pyproject.toml's classifiers; VERSIONS adds
the free-threaded builds made of them.  Each architecture is one row of
ARCHES: how the wheel tags, Debian, zig and CPython name it, its word size
and byte order, and how it is tested here (the Debian root its tests run
in, through which qemu-user emulator, with or without a C compiler).  The
noxfile's sessions, the wheels, the header derivation and the provisioning
all read these; adding an architecture is a row, adding a CPython version a
classifier (and, for a version no pyenv has, where it comes from in
PROVIDED).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # nox's own dependency before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CLASSIFIERS: list[str] = PYPROJECT["project"]["classifiers"]

# The versions of the classifiers, oldest first.
RELEASES = sorted(
    (
        m.group(1)
        for c in CLASSIFIERS
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    ),
    key=lambda v: tuple(map(int, v.split("."))),
)
# The releases with a free-threaded build that wheels are made for.
FREE_THREADED = ["3.14"]
# Every interpreter a wheel is built for: 3.14t is the free-threaded 3.14.
VERSIONS = [w for v in RELEASES for w in ([v, f"{v}t"] if v in FREE_THREADED else [v])]
# The versions no pyenv here has, and where the test command gets each:
# built from the CPython release source, or Debian unstable's package.
PROVIDED = {"3.14": "source", "3.14t": "source", "3.15": "sid"}
# The versions found on PATH or under pyenv (`nox -s tests-3.X`).
INSTALLED = [v for v in VERSIONS if v not in PROVIDED]
# Debian's CPython of each suite: the suite whose packages, for amd64 and
# every other architecture, give that version's real headers.
DEBIAN_SUITES = {
    "3.9": "bullseye",
    "3.11": "bookworm",
    "3.13": "trixie",
    "3.14": "sid",
    "3.15": "sid",
}
# The Debian release of the roots of other architectures.
ROOT_SUITE = "trixie"


@dataclasses.dataclass(frozen=True)
class Arch:
    """A CPU architecture as the wheel tags (name), Debian (debian) and zig
    (zig) call it, CPython's platform triplets for glibc and musl, the
    oldest glibc its manylinux policy allows, its word size and byte order,
    the baseline CPU that manylinux and Debian assume where zig's default
    assumes more (SSE2 on i686, NEON on ARMv7, z13 on s390x), and the glibc
    whose symbols zig links against, where zig cannot link against the
    policy's: its oldest for ppc64le is 2.19, and since every ppc64le symbol
    of glibc 2.19 that this module uses dates from 2.17, `auditwheel show`
    still finds 2.17.

    How it is tested: `root`, whether a Debian root of it is made (of
    `suite`), `qemu`, the qemu-user emulator that runs its programs here
    (empty: natively), `prefix`, the command that runs them, `compiler`,
    whether the root has a C compiler for the tests that build pyatexit, and
    `musllinux`, whether its musl wheels are built."""

    name: str
    debian: str
    zig: str
    gnu: str
    musl: str
    glibc: str
    bits: int
    byteorder: str
    cpu: tuple[str, ...] = ()
    zig_glibc: str = ""
    root: bool = True
    suite: str = ROOT_SUITE
    qemu: str = ""
    prefix: tuple[str, ...] = ()
    compiler: bool = False
    musllinux: bool = False


# i386: uname() says i686, as on a 32-bit kernel.  arm64: qemu's default CPU
# emulates pointer authentication, which Debian's arm64 binaries use, in
# software at great cost (a short Python script ran ten times slower); a
# Cortex-A72 has none, and runs the same binaries.  s390x and ppc64el: some
# of Debian 13's point-release packages of them have not been reachable, so
# their roots are Debian unstable, with CPython 3.14.  i386 runs the whole
# suite and armhf counts past 2**32 (32-bit): their roots build pyatexit.
# musllinux for x86_64 and aarch64 only: each other one needs a configure of
# CPython (minutes of two cores) for the real 3.14 headers that its derived
# ones are checked against.
ARCHES = [
    Arch("x86_64", "amd64", "x86_64", "x86_64-linux-gnu", "x86_64-linux-musl",
         "2.17", 64, "little", root=False, musllinux=True),
    Arch("i686", "i386", "x86", "i386-linux-gnu", "i386-linux-musl",
         "2.17", 32, "little", cpu=("-mcpu=i686",), prefix=("setarch", "i686"),
         compiler=True),
    Arch("aarch64", "arm64", "aarch64", "aarch64-linux-gnu", "aarch64-linux-musl",
         "2.17", 64, "little", qemu="aarch64",
         prefix=("env", "QEMU_CPU=cortex-a72"), musllinux=True),
    Arch("armv7l", "armhf", "arm", "arm-linux-gnueabihf", "arm-linux-musleabihf",
         "2.17", 32, "little", cpu=("-mcpu=generic+v7a+vfp3d16-neon",), qemu="arm",
         compiler=True),
    Arch("ppc64le", "ppc64el", "powerpc64le", "powerpc64le-linux-gnu",
         "powerpc64le-linux-musl", "2.17", 64, "little", zig_glibc="2.19",
         suite="sid", qemu="ppc64le"),
    Arch("s390x", "s390x", "s390x", "s390x-linux-gnu", "s390x-linux-musl",
         "2.17", 64, "big", cpu=("-mcpu=z196",), suite="sid", qemu="s390x"),
    Arch("riscv64", "riscv64", "riscv64", "riscv64-linux-gnu", "riscv64-linux-musl",
         "2.31", 64, "little", qemu="riscv64"),
]  # fmt: skip
# The architectures with a Debian root, by their Debian names.
ROOTS = {a.debian: a for a in ARCHES if a.root}


def problems() -> list[str]:
    """Where the table, the package metadata and the README disagree."""
    found = []
    oldest = PYPROJECT["project"]["requires-python"]
    if oldest != f">={RELEASES[0]}":
        found.append(
            f"requires-python is {oldest!r}, the oldest classifier {RELEASES[0]}"
        )
    for name, versions in (("PROVIDED", PROVIDED), ("DEBIAN_SUITES", DEBIAN_SUITES)):
        if unknown := sorted(set(versions) - set(VERSIONS)):
            found.append(f"{name} names versions without a classifier: {unknown}")
    if unknown := sorted(set(FREE_THREADED) - set(RELEASES)):
        found.append(f"FREE_THREADED names versions without a classifier: {unknown}")
    stable = "Programming Language :: Python :: Free Threading :: 3 - Stable"
    if (stable in CLASSIFIERS) != bool(FREE_THREADED):
        found.append(f"the classifier {stable!r} and FREE_THREADED disagree")
    if ARCHES[0].name != "x86_64" or ARCHES[0].root:
        found.append("the first row of ARCHES is x86_64, the machine that builds")
    if len({a.name for a in ARCHES}) != len(ARCHES) or len(ROOTS) != sum(
        a.root for a in ARCHES
    ):
        found.append("two rows of ARCHES share a name")
    readme = (ROOT / "README.md").read_text()
    for said in (
        f"CPython {RELEASES[0]} to {RELEASES[-1]}",
        *(f"free-threaded {v}t" for v in FREE_THREADED),
    ):
        if said not in readme:
            found.append(f"README.md does not say {said!r}")
    return found


if __name__ == "__main__":
    for problem in problems():
        print(f"targets: {problem}", file=sys.stderr)
    sys.exit(1 if problems() else 0)
