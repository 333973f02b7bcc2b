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

# Each function and object in a section of its own, named after it.
SECTIONS = ["-ffunction-sections", "-fdata-sections"]
# Sections whose contents are the code and data that matter.
KINDS = (".text", ".data", ".rodata", ".bss", ".tbss", ".tdata")
VARIANTS = {"instrumented": ["-DCOUNT_ALL_DEC_INC"], "uninstrumented": []}

Code = dict[str, tuple[bytes, list[tuple[int, int, str, int]]]]


def _target_of(elf: Any, symbol: Any, addend: int) -> tuple[str, int]:
    """What a relocation points at, independent of where things lie: a
    named symbol, or the bytes at addend in a merged string or constant
    section (a string up to its NUL)."""
    name = symbol.name
    if name and symbol["st_info"]["type"] != "STT_SECTION":
        return name, addend
    index = symbol["st_shndx"]
    if not isinstance(index, int):
        return str(index), addend
    section = elf.get_section(index)
    data = section.data()
    if section["sh_flags"] & 0x10:  # SHF_MERGE: where it lies is arbitrary
        if section["sh_flags"] & 0x20:  # SHF_STRINGS
            end = data.index(b"\0", addend)
            return f"{section.name}:{data[addend:end]!r}", 0
        size = section["sh_entsize"] or 1
        start = addend - addend % size
        return f"{section.name}:{data[start : start + size]!r}", addend % size
    return section.name, addend


def code(obj: Path) -> Code:
    """Each code or data section of an object: its bytes and relocations."""
    found: Code = {}
    with obj.open("rb") as f:
        elf = ELFFile(f)
        relocations: dict[str, list[tuple[int, int, str, int]]] = {}
        for section in elf.iter_sections():
            if not isinstance(section, RelocationSection):
                continue
            target = elf.get_section(section["sh_info"]).name
            symbols = elf.get_section(section["sh_link"])
            entries = []
            for rel in section.iter_relocations():
                addend = rel["r_addend"] if rel.is_RELA() else 0
                name, rest = _target_of(
                    elf, symbols.get_symbol(rel["r_info_sym"]), addend
                )
                entries.append((rel["r_offset"], rel["r_info_type"], name, rest))
            relocations[target] = sorted(entries)
        for section in elf.iter_sections():
            if not section.name.startswith(KINDS) or not section["sh_size"]:
                continue
            if section["sh_type"] == "SHT_NOBITS":
                data = bytes(section["sh_size"])
            else:
                data = section.data()
            if section["sh_flags"] & 0x10:  # merged: the entries, in any order
                data = b"\0".join(sorted(_entries(section, data)))
            found[section.name] = (data, relocations.get(section.name, []))
    return found


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
