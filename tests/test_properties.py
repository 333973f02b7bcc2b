"""Property tests: the C Counter against the chapter's pure-Python class over
random sequences, and the exit report against the calls a child made."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pyatexit
import pytest
from conftest import PyCounter, import_optional, report, run_python

pytestmark = [pytest.mark.hypothesis]
import_optional("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule  # noqa: E402

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Values spread over the whole range, with the edges where overflow happens.
int64s = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(INT64_MAX - 3, INT64_MAX),
    st.integers(INT64_MIN, INT64_MIN + 3),
    st.integers(-5, 5),
)
any_ints = st.one_of(int64s, st.integers(), st.integers(INT64_MAX - 2, INT64_MAX + 3))


def fits(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX


class CSlotted(pyatexit.Counter):
    __slots__ = ("tag",)


class PySlotted(PyCounter):
    __slots__ = ("tag",)


class CWithDict(pyatexit.Counter):
    pass


class PyWithDict(PyCounter):
    pass


# Each kind of object as a C Counter and as its pure-Python reference.
KINDS = {
    "exact": (pyatexit.Counter, PyCounter),
    "slotted": (CSlotted, PySlotted),
    "with __dict__": (CWithDict, PyWithDict),
}
COPIERS = ["copy", "deepcopy"] + [
    f"pickle{p}" for p in range(pickle.HIGHEST_PROTOCOL + 1)
]


def copied(obj: Any, copier: str) -> Any:
    if copier == "copy":
        return copy.copy(obj)
    if copier == "deepcopy":
        return copy.deepcopy(obj)
    return pickle.loads(pickle.dumps(obj, int(copier[len("pickle") :])))


def tag_of(obj: Any) -> object:
    return getattr(obj, "tag", None)


class CounterMachine(RuleBasedStateMachine):
    """Each pair holds a C Counter and a reference; every operation runs on
    both (the C one refuses what leaves the 64-bit range, and then the
    reference is not changed either)."""

    pairs = Bundle("pairs")

    def __init__(self) -> None:
        super().__init__()
        self.all: list[tuple[pyatexit.Counter, PyCounter]] = []
        self.incs = self.decs = 0
        self.start = pyatexit.inc_dec_counts() if pyatexit.COUNT_ALL_DEC_INC else (0, 0)

    @rule(target=pairs, value=any_ints, kind=st.sampled_from(sorted(KINDS)))
    def construct(self, value: int, kind: str) -> tuple[pyatexit.Counter, PyCounter]:
        c_class, py_class = KINDS[kind]
        if not fits(value):
            try:
                c_class(value)
            except OverflowError:
                pass
            else:
                raise AssertionError(f"Counter({value}) did not overflow")
            value = 0
        pair = (c_class(value), py_class(value))
        self.all.append(pair)
        return pair

    @rule(pair=pairs)
    def inc(self, pair: tuple[pyatexit.Counter, PyCounter]) -> None:
        c, p = pair
        if p.count == INT64_MAX:
            try:
                c.inc()
            except OverflowError:
                return
            raise AssertionError("inc() at the maximum did not overflow")
        c.inc()
        p.inc()
        self.incs += 1

    @rule(pair=pairs)
    def dec(self, pair: tuple[pyatexit.Counter, PyCounter]) -> None:
        c, p = pair
        if p.count == INT64_MIN:
            try:
                c.dec()
            except OverflowError:
                return
            raise AssertionError("dec() at the minimum did not overflow")
        c.dec()
        p.dec()
        self.decs += 1

    @rule(pair=pairs, value=any_ints)
    def set_count(self, pair: tuple[pyatexit.Counter, PyCounter], value: int) -> None:
        c, p = pair
        try:
            c.count = value
        except OverflowError:
            assert not fits(value)
            return
        assert fits(value)
        p.count = value

    @rule(pair=pairs, tag=st.one_of(st.integers(), st.text(max_size=3)))
    def set_tag(self, pair: tuple[pyatexit.Counter, PyCounter], tag: object) -> None:
        c, p = pair
        if type(c) is pyatexit.Counter:
            return  # no room for attributes, as Counter has no __dict__
        c.tag = tag  # type: ignore[attr-defined]
        p.tag = tag  # type: ignore[attr-defined]

    @rule(target=pairs, pair=pairs, copier=st.sampled_from(COPIERS))
    def copy_round_trip(
        self, pair: tuple[pyatexit.Counter, PyCounter], copier: str
    ) -> tuple[pyatexit.Counter, PyCounter]:
        # The reference is deep-copied (the Python class cannot pickle
        # __slots__ below protocol 2; the C one can).
        c, p = pair
        clone = (copied(c, copier), copy.deepcopy(p))
        assert type(clone[0]) is type(c)
        self.all.append(clone)
        return clone

    @invariant()
    def same_state(self) -> None:
        for c, p in self.all:
            assert c.count == p.count
            assert tag_of(c) == tag_of(p)

    @invariant()
    def process_totals(self) -> None:
        if pyatexit.COUNT_ALL_DEC_INC:
            now = pyatexit.inc_dec_counts()
            assert (now[0] - self.start[0], now[1] - self.start[1]) == (
                self.incs,
                self.decs,
            )


TestCounterMachine = CounterMachine.TestCase
# No deadline: the same tests run under sanitizers and a debug CPython.
TestCounterMachine.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    calls=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["inc", "dec"])), max_size=200
    ),
    starts=st.lists(
        st.one_of(st.integers(-5, 5), st.integers(INT64_MIN + 200, INT64_MAX - 200)),
        min_size=4,
        max_size=4,
    ),
)
def test_exit_report_counts_the_calls_made(
    tmp_path: Path, calls: list[tuple[int, str]], starts: list[int]
) -> None:
    lines = ["import pyatexit", f"cs = [pyatexit.Counter(v) for v in {starts}]"]
    lines += [f"cs[{i}].{name}()" for i, name in calls]
    result = run_python("\n".join(lines), cwd=tmp_path)
    incs = sum(name == "inc" for _, name in calls)
    assert (result.stdout, result.stderr, result.returncode) == (
        report(incs, len(calls) - incs),
        "",
        0,
    )
