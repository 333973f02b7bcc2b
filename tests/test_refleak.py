"""Reference leaks, counted by a debug CPython (`nox -s debug_python`)."""

from __future__ import annotations

import abc
import copy
import pickle
import sys
import weakref
from typing import Callable

import pyatexit
import pytest
from pyatexit import Counter

gettotalrefcount: Callable[[], int] | None = getattr(sys, "gettotalrefcount", None)
pytestmark = pytest.mark.skipif(
    gettotalrefcount is None,
    reason="sys.gettotalrefcount() exists only in a debug build of CPython",
)


class Sub(Counter):
    pass


class Slotted(Counter):
    __slots__ = ("a",)
    a: list[int]


class NewArgs(Counter):
    def __new__(cls, label: str) -> NewArgs:
        return super().__new__(cls)

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def __getnewargs__(self) -> tuple[str]:
        return (self.label,)


class Abstract(Counter, abc.ABC):
    @abc.abstractmethod
    def m(self) -> None: ...


def _slotted() -> Slotted:
    s = Slotted(4)
    s.a = [1]
    return s


def _raises(fn: Callable[[], object], exc: type[BaseException]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except exc:
            pass
        else:
            raise AssertionError("no exception")

    return call


def _set_count(c: Counter, value: object) -> None:
    c.count = value  # type: ignore[assignment]


def _del_count(c: Counter) -> None:
    del c.count


c = Counter(5)
top = Counter(2**63 - 1)
bottom = Counter(-(2**63))
ENTRY_POINTS: dict[str, Callable[[], object]] = {
    "Counter()": Counter,
    "Counter(5)": lambda: Counter(5),
    "Counter(number=5)": lambda: Counter(number=5),
    "Sub(5)": lambda: Sub(5),
    "inc": c.inc,
    "dec": c.dec,
    "get count": lambda: c.count,
    "set count": lambda: _set_count(c, 7),
    "repr": lambda: repr(c),
    "reduce": c.__reduce__,
    "pickle": lambda: pickle.loads(pickle.dumps(Sub(3))),
    "deepcopy": lambda: copy.deepcopy(c),
    "inc_dec_counts": pyatexit.inc_dec_counts,
    "getstate": lambda: _slotted().__getstate__(),
    "setstate": lambda: _slotted().__setstate__(({"count": 3}, {"a": 2})),
    "copy slotted": lambda: copy.copy(_slotted()),
    "pickle slotted": lambda: pickle.loads(pickle.dumps(_slotted(), 0)),
    "pickle newargs": lambda: pickle.loads(pickle.dumps(NewArgs("x"))),
    "rebuild": lambda: pyatexit._rebuild(Sub, 3, (), {}),
    "weakref": lambda: weakref.ref(c),
    "Abstract()": _raises(Abstract, TypeError),
    "rebuild(int)": _raises(
        lambda: pyatexit._rebuild(int, 1, (), {}),  # type: ignore[type-var]
        TypeError,
    ),
    "setstate bad": _raises(lambda: c.__setstate__(5), TypeError),  # type: ignore[arg-type]
    "Counter('x')": _raises(lambda: Counter("x"), TypeError),  # type: ignore[arg-type]
    "Counter(2**64)": _raises(lambda: Counter(2**64), OverflowError),
    "Counter(1, 2)": _raises(lambda: Counter(1, 2), TypeError),  # type: ignore[call-arg]
    "Counter(x=1)": _raises(lambda: Counter(x=1), TypeError),  # type: ignore[call-arg]
    "Sub('x')": _raises(lambda: Sub("x"), TypeError),  # type: ignore[arg-type]
    "count = 'a'": _raises(lambda: _set_count(c, "a"), TypeError),
    "count = 2**64": _raises(lambda: _set_count(c, 2**64), OverflowError),
    "del count": _raises(lambda: _del_count(c), AttributeError),
    "inc overflow": _raises(top.inc, OverflowError),
    "dec overflow": _raises(bottom.dec, OverflowError),
}


def test_no_reference_leak() -> None:
    assert gettotalrefcount is not None
    leaks = {}
    for name, fn in ENTRY_POINTS.items():
        deltas = []
        for _ in range(4):
            before = gettotalrefcount()
            for _ in range(2000):
                fn()
            deltas.append(gettotalrefcount() - before)
        # The first round may warm caches; a leak shows in every round.
        if max(deltas[1:]) >= 20:
            leaks[name] = deltas
    assert not leaks
