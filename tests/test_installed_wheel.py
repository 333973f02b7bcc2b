"""The tests test the wheel that was installed, not the checkout or a build.

The nox sessions that install pyatexit from the wheelhouse name the wheel in
PYATEXIT_EXPECTED_WHEEL: pyatexit must then be imported from this
environment's site-packages, installed by pip from a wheel with exactly that
wheel's tags.  Without it (a build from source) there is nothing to check.
"""

from __future__ import annotations

import importlib.metadata
import os
import sysconfig
from pathlib import Path

import pyatexit
import pytest

EXPECTED = os.environ.get("PYATEXIT_EXPECTED_WHEEL", "")

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(
        not EXPECTED, reason="pyatexit not installed from a wheel of the wheelhouse"
    ),
]


def tags(wheel: str) -> set[str]:
    """The tags a wheel's file name stands for (compressed tag sets expanded)."""
    _name, _version, pythons, abis, platforms = wheel.removesuffix(".whl").split("-")
    return {
        f"{p}-{a}-{pl}"
        for p in pythons.split(".")
        for a in abis.split(".")
        for pl in platforms.split(".")
    }


def test_pyatexit_comes_from_site_packages() -> None:
    site = Path(sysconfig.get_path("platlib")).resolve()
    assert Path(pyatexit.__file__).resolve().parent == site


def test_the_installed_distribution_is_the_expected_wheel() -> None:
    # In this environment's site-packages: `python -m pytest` also puts the
    # checkout on sys.path, where a build may have left pyatexit.egg-info.
    site = str(Path(sysconfig.get_path("platlib")))
    (dist,) = (
        d
        for d in importlib.metadata.distributions(path=[site])
        if d.metadata["Name"] == "pyatexit"
    )
    wheel = dist.read_text("WHEEL") or ""
    installed = {
        line.split(": ", 1)[1]
        for line in wheel.splitlines()
        if line.startswith("Tag: ")
    }
    assert installed == tags(EXPECTED)
    assert (dist.read_text("INSTALLER") or "").strip() == "pip"
    files = {Path(str(f)).name for f in dist.files or []}
    assert Path(pyatexit.__file__).name in files
