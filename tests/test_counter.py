"""Using Counter in a running process: the behaviour of the Python class."""

from __future__ import annotations

import copy
import gc
import importlib
import inspect
import pickle
import pydoc
import sys

import pyatexit
import pytest
from conftest import PyCounter
from pyatexit import Counter

pytestmark = [pytest.mark.emulated, pytest.mark.sdist]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
needs_counting = pytest.mark.skipif(
    not pyatexit.COUNT_ALL_DEC_INC, reason="pyatexit built without COUNT_ALL_DEC_INC"
)


def test_chapter_session_values() -> None:
    c = Counter(8)
    c.inc()
    c.inc()
    c.dec()
    d = Counter()
    d.dec()
    d.dec()
    assert (c.count, d.count) == (9, -2)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((), {}, 0),
        ((5,), {}, 5),
        ((), {"number": -7}, -7),
        ((True,), {}, 1),
        ((INT64_MAX,), {}, INT64_MAX),
        ((INT64_MIN,), {}, INT64_MIN),
    ],
)
def test_construct(
    args: tuple[int, ...], kwargs: dict[str, int], expected: int
) -> None:
    c = Counter(*args, **kwargs)
    assert c.count == expected
    assert type(c.count) is int


def test_count_accepts_objects_with_index() -> None:
    class Five:
        def __index__(self) -> int:
            return 5

    c = Counter(Five())
    assert c.count == 5
    c.count = Five()
    assert c.count == 5


def test_count_is_read_write() -> None:
    c = Counter()
    c.count = 41
    c.inc()
    assert c.count == 42


def test_inc_dec_return_none() -> None:
    c = Counter()
    assert c.inc() is None  # type: ignore[func-returns-value]
    assert c.dec() is None  # type: ignore[func-returns-value]


def test_reinit_resets_like_the_python_class() -> None:
    c = Counter(3)
    c.__init__(10)  # type: ignore[misc]
    assert c.count == 10


def test_matches_python_reference_over_a_sequence() -> None:
    c, p = Counter(3), PyCounter(3)
    for step in "iidddidiiiidd":
        for obj in (c, p):
            (obj.inc if step == "i" else obj.dec)()
        assert c.count == p.count


def test_subclass() -> None:
    class Twice(Counter):
        def inc(self) -> None:
            super().inc()
            super().inc()

    t = Twice(1)
    t.inc()
    assert t.count == 3
    assert isinstance(t, Counter)
    assert repr(t) == "Twice(3)"


def test_subclass_with_own_new_and_init() -> None:
    class Labelled(Counter):
        def __new__(cls, label: str, number: int = 0) -> Labelled:
            return super().__new__(cls)

        def __init__(self, label: str, number: int = 0) -> None:
            super().__init__(number)
            self.label = label

    lab = Labelled("x", 4)
    assert (lab.label, lab.count) == ("x", 4)


def test_repr_evaluates_back() -> None:
    for value in (0, 9, -2, INT64_MAX, INT64_MIN):
        c = Counter(value)
        assert repr(c) == f"pyatexit.Counter({value})"
        again = eval(repr(c), {"pyatexit": pyatexit})
        assert type(again) is Counter
        assert again.count == value
        assert again is not c


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle(protocol: int) -> None:
    c = Counter(INT64_MIN)
    clone = pickle.loads(pickle.dumps(c, protocol))
    assert type(clone) is Counter
    assert clone.count == INT64_MIN
    clone.inc()
    assert c.count == INT64_MIN


class Tagged(Counter):
    """A subclass at module level, so that pickle can find it."""

    def __init__(self, tag: str) -> None:  # a signature Counter does not have
        super().__init__()
        self.tag = tag
        self.items: list[int] = []


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_subclass(protocol: int) -> None:
    t = Tagged("a")
    t.count = 12
    clone = pickle.loads(pickle.dumps(t, protocol))
    assert type(clone) is Tagged
    assert (clone.count, clone.tag) == (12, "a")


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_copy(copier: object) -> None:
    c = Counter(5)
    d = copier(c)  # type: ignore[operator]
    assert type(d) is Counter
    assert d.count == 5
    d.inc()
    assert c.count == 5


def test_deepcopy_subclass_copies_attributes() -> None:
    t = Tagged("x")
    t.items = [1]
    shallow, deep = copy.copy(t), copy.deepcopy(t)
    assert shallow.items is t.items
    assert deep.items == [1]
    assert deep.items is not t.items
    assert type(deep) is Tagged


def test_class_signature() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("3.9's PyType_FromSpec drops the text signature of a type's doc")
    assert str(inspect.signature(Counter)) == "(number=0)"
    assert Counter.__doc__ is not None
    assert Counter.__doc__.startswith("An up/down counter")


def test_signatures_and_docstrings() -> None:
    assert str(inspect.signature(Counter.inc)) == "(self, /)"
    assert str(inspect.signature(Counter.dec)) == "(self, /)"
    assert str(inspect.signature(pyatexit.inc_dec_counts)) == "()"
    for obj in (
        pyatexit,
        Counter,
        Counter.inc,
        Counter.dec,
        pyatexit.inc_dec_counts,
        Counter.__reduce__,
    ):
        assert obj.__doc__, obj
        assert len(obj.__doc__) > 20, obj
    assert Counter.count.__doc__


def test_help_shows_signatures_and_docs() -> None:
    text = pydoc.plain(pydoc.render_doc(pyatexit))
    for expected in (
        "Instrument a C extension for the whole life of the process.",
        "inc(self, /)\n",
        "Add one to count.",
        "dec(self, /)\n",
        "Subtract one from count.",
        "inc_dec_counts()\n",
        "Return (increments, decrements)",
        "The counter's value",
    ):
        assert expected in text, expected
    if sys.version_info >= (3, 10):
        assert "Counter(number=0)" in text


def test_type_is_immutable_where_cpython_allows() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("heap types cannot be made immutable before Python 3.10")
    with pytest.raises(TypeError):
        Counter.inc = lambda self: None  # type: ignore[method-assign]


def test_module_attributes() -> None:
    assert Counter.__module__ == "pyatexit"
    assert Counter.__name__ == "Counter"
    assert isinstance(pyatexit.COUNT_ALL_DEC_INC, bool)


def test_fresh_import_makes_a_new_module_and_type() -> None:
    # Multi-phase initialisation: each import runs exec again.
    old = sys.modules.pop("pyatexit")
    try:
        new = importlib.import_module("pyatexit")
        assert new is not old
        assert new.Counter is not old.Counter
        assert new.Counter(3).count == 3
    finally:
        sys.modules["pyatexit"] = old


@needs_counting
def test_inc_dec_counts_follows_every_counter() -> None:
    before = pyatexit.inc_dec_counts()
    c, t = Counter(), Tagged("t")
    for _ in range(5):
        c.inc()
    t.dec()
    t.dec()
    after = pyatexit.inc_dec_counts()
    assert (after[0] - before[0], after[1] - before[1]) == (5, 2)


@needs_counting
def test_failed_calls_are_not_counted() -> None:
    c = Counter(INT64_MAX)
    before = pyatexit.inc_dec_counts()
    with pytest.raises(OverflowError):
        c.inc()
    assert pyatexit.inc_dec_counts() == before


@needs_counting
def test_counts_from_a_reimported_module_add_up() -> None:
    old = sys.modules.pop("pyatexit")
    try:
        new = importlib.import_module("pyatexit")
        before = old.inc_dec_counts()
        new.Counter().inc()
        old.Counter().inc()
        assert (
            old.inc_dec_counts() == new.inc_dec_counts() == (before[0] + 2, before[1])
        )
    finally:
        sys.modules["pyatexit"] = old


def test_no_leak_over_many_calls() -> None:
    def churn() -> None:
        for i in range(1000):
            c = Counter(i)
            c.inc()
            c.dec()
            c.count = i
            _ = c.count
            repr(c)
            pickle.loads(pickle.dumps(c))
            copy.deepcopy(c)
            t = Tagged("x")
            t.inc()
            if pyatexit.COUNT_ALL_DEC_INC:
                pyatexit.inc_dec_counts()
            for bad in ("x", 1.5, 2**64):
                with pytest.raises((TypeError, OverflowError)):
                    Counter(bad)  # type: ignore[arg-type]

    churn()
    gc.collect()
    before = len(gc.get_objects())
    churn()
    gc.collect()
    assert len(gc.get_objects()) - before < 10
