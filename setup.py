"""Builds the pyatexit extension; all metadata is in pyproject.toml.

Build switches, read from the environment:

* PYATEXIT_COUNT_ALL_DEC_INC=0 leaves out the instrumentation (the
  COUNT_ALL_DEC_INC macro); unset or 1 builds it in.
* PYATEXIT_PORTABLE_TLS=1 compiles the free-threaded build's thread tally
  with the default TLS model, as on musl, macOS and the BSDs, instead of
  glibc's initial-exec model (for testing that path on glibc).
* PYATEXIT_TALLY_START=N starts the counts at N instead of 0: for tests
  only, to count past 2**32 on a 32-bit system quickly.
"""

from __future__ import annotations

import hashlib
import os

from setuptools import Extension, setup


def switch(name: str) -> bool:
    value = os.environ.get(name, "")
    if value not in ("", "0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, not {value!r}")
    return value == "1"


count_all = os.environ.get("PYATEXIT_COUNT_ALL_DEC_INC", "1")
if count_all not in ("0", "1"):
    raise SystemExit(f"PYATEXIT_COUNT_ALL_DEC_INC must be 0 or 1, not {count_all!r}")
macros: list[tuple[str, str | None]] = []
if count_all == "1":
    macros.append(("COUNT_ALL_DEC_INC", None))
if switch("PYATEXIT_PORTABLE_TLS"):
    macros.append(("PYATEXIT_PORTABLE_TLS", None))
start = os.environ.get("PYATEXIT_TALLY_START", "")
if start:
    if not start.isdigit() or int(start) >= 2**64:
        raise SystemExit(
            f"PYATEXIT_TALLY_START must be from 0 to 2**64-1, not {start!r}"
        )
    macros.append(("PYATEXIT_TALLY_START", f"UINT64_C({int(start)})"))

# setuptools keeps a build whose sources have not changed, whatever the
# switches or compiler flags: each configuration builds in a folder of its own.
configuration = repr(
    [macros, *(os.environ.get(v) for v in ("CC", "CFLAGS", "CPPFLAGS", "LDFLAGS"))]
)
build_base = os.path.join(
    "build", hashlib.sha256(configuration.encode()).hexdigest()[:12]
)

setup(
    ext_modules=[
        Extension("pyatexit", sources=["Py_AtExitDemo.c"], define_macros=macros)
    ],
    options={"build": {"build_base": build_base}},
)
