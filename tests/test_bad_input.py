"""Bad input: clear exceptions, never a crash, count left unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from pyatexit import Counter

pytestmark = [pytest.mark.emulated]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
NOT_INTEGERS = ["x", 1.5, 2.0, None, [], b"1", 1j]
OUT_OF_RANGE = [INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**64), 10**100]


@pytest.mark.parametrize("value", NOT_INTEGERS)
def test_constructor_rejects_non_integers(value: Any) -> None:
    with pytest.raises(TypeError, match="must be an integer"):
        Counter(value)
    with pytest.raises(TypeError, match="must be an integer"):
        Counter(number=value)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_constructor_rejects_out_of_range(value: int) -> None:
    with pytest.raises(OverflowError):
        Counter(value)
    with pytest.raises(OverflowError):
        Counter(number=value)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1, 2), {}),
        ((), {"count": 1}),
        ((), {"numbr": 1}),
        ((1,), {"number": 1}),
        ((), {"number": 1, "other": 2}),
    ],
)
def test_constructor_rejects_bad_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError):
        Counter(*args, **kwargs)


def test_subclass_constructor_rejects_the_same() -> None:
    class Sub(Counter):
        pass

    for value in NOT_INTEGERS:
        with pytest.raises(TypeError):
            Sub(value)  # type: ignore[arg-type]
    for value in OUT_OF_RANGE:
        with pytest.raises(OverflowError):
            Sub(value)
    with pytest.raises(TypeError):
        Sub(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sub(numbr=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("value", NOT_INTEGERS)
def test_setting_count_rejects_non_integers(value: Any) -> None:
    c = Counter(3)
    with pytest.raises(TypeError, match="count must be an integer"):
        c.count = value
    assert c.count == 3


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_setting_count_rejects_out_of_range(value: int) -> None:
    c = Counter(3)
    with pytest.raises(OverflowError):
        c.count = value
    assert c.count == 3


def test_deleting_count() -> None:
    c = Counter(3)
    with pytest.raises(AttributeError, match="cannot delete"):
        del c.count
    assert c.count == 3


@pytest.mark.parametrize("method", ["inc", "dec"])
def test_methods_take_no_arguments(method: str) -> None:
    c = Counter(3)
    with pytest.raises(TypeError):
        getattr(c, method)(1)
    with pytest.raises(TypeError):
        getattr(c, method)(x=1)
    assert c.count == 3


def test_inc_at_maximum() -> None:
    c = Counter(INT64_MAX - 1)
    c.inc()
    assert c.count == INT64_MAX
    for _ in range(3):
        with pytest.raises(OverflowError, match="2\\*\\*63-1"):
            c.inc()
        assert c.count == INT64_MAX
    c.dec()
    assert c.count == INT64_MAX - 1


def test_dec_at_minimum() -> None:
    c = Counter(INT64_MIN + 1)
    c.dec()
    assert c.count == INT64_MIN
    for _ in range(3):
        with pytest.raises(OverflowError, match="-2\\*\\*63"):
            c.dec()
        assert c.count == INT64_MIN
    c.inc()
    assert c.count == INT64_MIN + 1


def test_methods_called_on_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        Counter.inc(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Counter.count.__set__(object(), 1)  # type: ignore[attr-defined]


def test_new_with_a_type_that_is_not_a_counter() -> None:
    with pytest.raises(TypeError):
        Counter.__new__(int)
