"""Builds the pyatexit extension; all metadata is in pyproject.toml.

PYATEXIT_COUNT_ALL_DEC_INC=0 at build time leaves out the instrumentation
(the COUNT_ALL_DEC_INC macro); unset or 1 builds it in.
"""

import os

from setuptools import Extension, setup

switch = os.environ.get("PYATEXIT_COUNT_ALL_DEC_INC", "1")
if switch not in ("0", "1"):
    raise SystemExit(f"PYATEXIT_COUNT_ALL_DEC_INC must be 0 or 1, not {switch!r}")

setup(
    ext_modules=[
        Extension(
            "pyatexit",
            sources=["Py_AtExitDemo.c"],
            define_macros=[("COUNT_ALL_DEC_INC", None)] if switch == "1" else [],
        )
    ],
)
