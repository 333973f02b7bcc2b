"""The shipped type stub: mypy --strict accepts a script using the whole API
and rejects misuse."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sdist, pytest.mark.typing]

GOOD = """
    import copy
    import pickle

    import pyatexit
    from pyatexit import Counter


    class Sub(Counter):
        pass


    def use() -> tuple[int, int]:
        c: Counter = Counter(8)
        d = Counter(number=2)
        c.inc()
        d.dec()
        c.count = c.count + d.count
        c.count = True  # any SupportsIndex
        s = Sub()
        s.inc()
        clone: Counter = copy.deepcopy(c)
        again = pickle.loads(pickle.dumps(clone))
        assert isinstance(again, Counter)
        built: bool = pyatexit.COUNT_ALL_DEC_INC
        if built:
            return pyatexit.inc_dec_counts()
        return (0, 0)
"""

BAD = """
    import pyatexit

    pyatexit.Counter("x")
    pyatexit.Counter().inc(1)
    pyatexit.Counter().count = "a"
    total: str = pyatexit.inc_dec_counts()
    pyatexit.COUNT_ALL_DEC_INC = False
"""


def check(tmp_path: Path, source: str) -> tuple[str, int]:
    from mypy import api  # imported here: sessions without mypy deselect these tests

    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(source))
    out, err, status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(script),
        ]
    )
    return out + err, status


def test_stub_accepts_the_whole_api(tmp_path: Path) -> None:
    output, status = check(tmp_path, GOOD)
    assert status == 0, output


def test_stub_rejects_misuse(tmp_path: Path) -> None:
    output, status = check(tmp_path, BAD)
    assert status == 1
    assert output.count("error:") == 5, output
