"""Whether two versions of Py_AtExitDemo.c compile to the same code: each is
compiled with the wheels' compiler and flags against a target's headers, with
each function and data object in a section of its own, and the two objects
are compared section by section, by name: a function's bytes, and its
relocations by what they point at (a function or object by name, a string or
constant by its bytes).  Functions and data may move; nothing else may
change.  `nox -s same_code -- REV` compares REV's C file with the checkout's
on every wheel target, instrumented and not."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from tools import headers

# Each function and object in a section of its own, named after it; and no
# merging of static variables into one block (LLVM's GlobalMerge, on ARM,
# PowerPC and RISC-V), whose layout follows the order they are defined in:
# what is compared is each function's code, wherever its data lies.
SECTIONS = [
    "-ffunction-sections",
    "-fdata-sections",
    "-mllvm",
    "-enable-global-merge=false",
]
# Sections whose contents are the code and data that matter.
KINDS = (".text", ".data", ".rodata", ".bss", ".tbss", ".tdata")
VARIANTS = {"instrumented": ["-DCOUNT_ALL_DEC_INC"], "uninstrumented": []}

Code = dict[str, tuple[bytes, list[tuple[int, int, str, int]]]]


# REL targets keep a relocation's addend in the bytes it patches: for these
# relocation types (i386, and ARM's data words) a little-endian int32 that is
# read and then masked; other patched bytes are masked.
WORD_ADDENDS = {
    "EM_386": {1, 2, 3, 4, 9, 10, 43},
    "EM_ARM": {2, 3, 24, 25, 26, 96},
}


def code(obj: Path) -> Code:
    """Each code or data section of an object: its bytes and relocations,
    each relocation by what it points at (see _Resolver)."""
    found: Code = {}
    with obj.open("rb") as f:
        elf = ELFFile(f)
        resolver = _Resolver(elf)
        for section in elf.iter_sections():
            if not section.name.startswith(KINDS) or not section["sh_size"]:
                continue
            patched = bytearray(section["sh_size"])
            if section["sh_type"] != "SHT_NOBITS":
                patched[:] = section.data()
                for rel in resolver.raw.get(section.name, []):
                    if not rel.is_RELA():
                        patched[rel["r_offset"] : rel["r_offset"] + 4] = bytes(4)
            data = bytes(patched)
            if section["sh_flags"] & SHF_MERGE:  # the entries, in any order
                data = b"\0".join(sorted(_entries(section, data)))
            found[section.name] = (data, resolver.relocations(section.name))
    return found


SHF_MERGE, SHF_STRINGS = 0x10, 0x20


class _Resolver:
    """What each relocation points at, independent of where things lie: a
    named symbol with its addend; an entry of a merged string or constant
    section (whose order is arbitrary) by its bytes; a place in another
    section (a local label, clang's .L.str.N, .LCPI, .Lpcrel_hi, or a
    section symbol) that holds a relocation itself (a TOC or GOT-like
    entry) by what that one points at, and any other place by its section
    and offset."""

    def __init__(self, elf: Any) -> None:
        self.elf = elf
        self.machine = elf["e_machine"]
        self.raw: dict[str, list[Any]] = {}
        self.symbols: dict[str, Any] = {}
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection):
                name = elf.get_section(section["sh_info"]).name
                self.raw[name] = list(section.iter_relocations())
                self.symbols[name] = elf.get_section(section["sh_link"])

    def relocations(self, name: str) -> list[tuple[int, int, str, int]]:
        return sorted(
            (rel["r_offset"], rel["r_info_type"], *self._target(name, rel, 0))
            for rel in self.raw.get(name, [])
        )

    def _addend(self, section: str, rel: Any) -> int:
        if rel.is_RELA():
            return int(rel["r_addend"])
        if rel["r_info_type"] not in WORD_ADDENDS.get(self.machine, set()):
            return 0
        data = self.elf.get_section_by_name(section).data()
        at = rel["r_offset"]
        return int.from_bytes(data[at : at + 4], "little", signed=True)

    def _target(self, name: str, rel: Any, depth: int) -> tuple[str, int]:
        symbol = self.symbols[name].get_symbol(rel["r_info_sym"])
        addend = self._addend(name, rel)
        index = symbol["st_shndx"]
        info = symbol["st_info"]
        local = info["bind"] == "STB_LOCAL" and (
            info["type"] == "STT_SECTION" or symbol.name.startswith(".L")
        )
        if not local or not isinstance(index, int) or not index:
            return symbol.name, addend
        section = self.elf.get_section(index)
        at, rest = (
            (addend, 0)
            if info["type"] == "STT_SECTION"
            else (symbol["st_value"], addend)
        )
        if section["sh_flags"] & SHF_MERGE:
            data = section.data()
            if section["sh_flags"] & SHF_STRINGS:
                entry = data[at : data.index(b"\0", at)]
            else:
                entry = data[at : at + (section["sh_entsize"] or 1)]
            return f"{section.name}:{entry!r}", rest
        place = at + rest if info["type"] != "STT_SECTION" else at
        inner = [r for r in self.raw.get(section.name, []) if r["r_offset"] == place]
        if inner and depth < 3 and not section.name.startswith(".text"):
            target, more = self._target(section.name, inner[0], depth + 1)
            return f"->{target}", more
        return section.name, place


def _entries(section: Any, data: bytes) -> list[bytes]:
    if section["sh_flags"] & 0x20:
        return data.split(b"\0")
    size = section["sh_entsize"] or 1
    return [data[i : i + size] for i in range(0, len(data), size)]


def compile_object(
    source: Path, h: headers.Headers, flags: Sequence[str], out: Path
) -> None:
    cmd = [
        *headers.compiler(h.platform),
        *headers.STRICT,
        *headers.OPTIMIZE,
        *SECTIONS,
        *flags,
        f"-I{h.include}",
        "-c",
        str(source),
        "-o",
        str(out),
    ]
    subprocess.run(cmd, env=headers.zig_env(), check=True, capture_output=True)


def differences(old: Path, new: Path, h: headers.Headers) -> list[str]:
    """What differs between old and new compiled against h, both variants."""
    found = []
    with tempfile.TemporaryDirectory(prefix="pyatexit-same-code-") as tmp:
        for variant, flags in VARIANTS.items():
            objects = []
            for which, source in (("old", old), ("new", new)):
                out = Path(tmp) / f"{which}-{variant}.o"
                compile_object(source, h, flags, out)
                objects.append(code(out))
            before, after = objects
            where = f"{h.version} {h.platform.name} {variant}"
            for name in sorted(before.keys() | after.keys()):
                if name not in after:
                    found.append(f"{where}: {name} is gone")
                elif name not in before:
                    found.append(f"{where}: {name} is new")
                elif before[name][0] != after[name][0]:
                    found.append(f"{where}: {name} has other bytes")
                elif before[name][1] != after[name][1]:
                    found.append(f"{where}: {name} has other relocations")
    return found


def main(argv: Sequence[str]) -> int:
    """old.c new.c targets.json (a list of {version, platform, include})."""
    old, new, listing = (Path(a) for a in argv)
    rows = json.loads(listing.read_text())
    problems = []
    for row in rows:
        h = headers.Headers(
            row["version"],
            headers.platform(row["platform"]),
            Path(row["include"]),
            "",
            True,
        )
        problems += differences(old, new, h)
    for problem in problems:
        print(problem)
    print(
        f"same code: {len(rows)} targets, instrumented and not: "
        f"{'no difference' if not problems else f'{len(problems)} differences'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
