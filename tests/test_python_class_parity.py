"""Subclassing Counter as one would subclass the Python class it replaces:
copy and pickle follow the standard protocol, abstract methods, weak
references, garbage-collected cycles.  Each check compares Counter with the
pure-Python reference class."""

from __future__ import annotations

import abc
import copy
import copyreg
import dataclasses
import functools
import gc
import importlib
import pickle
import sys
import weakref
from pathlib import Path
from typing import Any, Callable

import pyatexit
import pytest
from conftest import PyCounter, report, run_python
from pyatexit import Counter

pytestmark = [pytest.mark.emulated]

BASES = {"C": Counter, "Py": PyCounter}


def name(shape: str, base: type) -> str:
    return f"{shape}_{'C' if base is Counter else 'Py'}"


def register(cls: type) -> type:
    """Gives a class made in a function a module-level name, for pickle."""
    cls.__qualname__ = cls.__name__
    for attr, value in vars(cls).items():
        func = getattr(value, "__func__", value)
        if callable(func) and hasattr(func, "__qualname__"):
            func.__qualname__ = f"{cls.__name__}.{attr}"
    globals()[cls.__name__] = cls
    return cls


def plain(base: type) -> type:
    return type(name("Plain", base), (base,), {})


def slotted(base: type) -> type:
    return type(name("Slotted", base), (base,), {"__slots__": ("a", "b")})


def slots_and_dict(base: type) -> type:
    # The Python class has a __dict__ already.
    slots = ("a", "__dict__") if base is Counter else ("a",)
    return type(name("SlotsAndDict", base), (base,), {"__slots__": slots})


def custom_state(base: type) -> type:
    # Leaves its cache out of the state, and marks a restored instance.
    def __getstate__(self: Any) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "cache"}

    def __setstate__(self: Any, state: dict[str, Any]) -> None:
        vars(self).update(state, restored=True)

    return type(
        name("CustomState", base),
        (base,),
        {"__getstate__": __getstate__, "__setstate__": __setstate__},
    )


def setstate_only(base: type) -> type:
    def __setstate__(self: Any, state: Any) -> None:
        self.seen = repr(sorted(state.items())) if isinstance(state, dict) else state

    return type(name("SetstateOnly", base), (base,), {"__setstate__": __setstate__})


def object_new(base: Any, cls: type) -> Any:
    return base.__new__(cls)


def base_init(base: Any, obj: Any) -> None:
    base.__init__(obj)


def new_with_args(base: type) -> type:
    # __new__ needs its argument back: __getnewargs__ gives it.
    def __new__(cls: type, label: str) -> Any:
        obj = object_new(base, cls)
        obj.label = label
        return obj

    def __init__(self: Any, label: str) -> None:
        base_init(base, self)

    def __getnewargs__(self: Any) -> tuple[str]:
        return (self.label,)

    return type(
        name("NewWithArgs", base),
        (base,),
        {"__new__": __new__, "__init__": __init__, "__getnewargs__": __getnewargs__},
    )


def new_with_kwargs(base: type) -> type:
    def __new__(cls: type, *, label: str) -> Any:
        obj = object_new(base, cls)
        obj.label = label
        return obj

    def __init__(self: Any, *, label: str) -> None:
        base_init(base, self)

    def __getnewargs_ex__(self: Any) -> tuple[tuple[()], dict[str, str]]:
        return (), {"label": self.label}

    return type(
        name("NewWithKwargs", base),
        (base,),
        {
            "__new__": __new__,
            "__init__": __init__,
            "__getnewargs_ex__": __getnewargs_ex__,
        },
    )


def frozen_dataclass(base: type) -> type:
    # slots=True (3.10+) gives it a __getstate__ and __setstate__ of its own.
    options = {"slots": True} if sys.version_info >= (3, 10) else {}
    cls = type(name("Frozen", base), (base,), {"__annotations__": {"x": int}})
    made: type = dataclasses.dataclass(frozen=True, **options)(cls)
    return made


SHAPES: dict[str, Callable[[type], type]] = {
    "plain": plain,
    "slotted": slotted,
    "slots_and_dict": slots_and_dict,
    "custom_state": custom_state,
    "setstate_only": setstate_only,
    "new_with_args": new_with_args,
    "new_with_kwargs": new_with_kwargs,
    "frozen_dataclass": frozen_dataclass,
}
CLASSES = {
    (shape, label): register(make(base))
    for shape, make in SHAPES.items()
    for label, base in BASES.items()
}
# The shapes whose classes customise none of the hooks: every piece of
# their state comes back.
UNCUSTOMISED = {"plain", "slotted", "slots_and_dict"}


def build(shape: str, label: str) -> Any:
    """An instance with count 5 and some state of each kind it can hold."""
    cls = CLASSES[shape, label]
    if shape == "frozen_dataclass":
        obj = cls(x=3)
        if label == "C":
            for _ in range(5):
                obj.inc()
        return obj
    obj = (
        cls(label="L")
        if shape == "new_with_kwargs"
        else (cls("L") if shape == "new_with_args" else cls())
    )
    obj.count = 5
    if shape in ("slotted", "slots_and_dict"):
        obj.a = [1, 2]
    if shape != "slotted":
        obj.items = {"k": [3]}
    if shape == "custom_state":
        obj.cache = "dropped"
    return obj


def state_of(obj: Any) -> dict[str, Any]:
    """Everything an instance holds, count included."""
    state = dict(getattr(obj, "__dict__", {}))
    for slot in copyreg._slotnames(type(obj)):  # type: ignore[attr-defined]
        if hasattr(obj, slot):
            state[slot] = getattr(obj, slot)
    if hasattr(obj, "count"):
        state["count"] = obj.count
    return state


def without_count(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "count"}


def pickle_round_trip(obj: Any, protocol: int) -> Any:
    return pickle.loads(pickle.dumps(obj, protocol))


COPIERS: dict[str, Callable[[Any], Any]] = {
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    **{
        f"pickle{p}": functools.partial(pickle_round_trip, protocol=p)
        for p in range(pickle.HIGHEST_PROTOCOL + 1)
    },
}


@pytest.mark.parametrize("copier", COPIERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_copy_and_pickle_follow_the_protocol(shape: str, copier: str) -> None:
    c, py = build(shape, "C"), build(shape, "Py")
    c_copy = COPIERS[copier](c)
    assert type(c_copy) is type(c)
    assert c_copy.count == c.count == 5
    if shape in UNCUSTOMISED:
        assert state_of(c_copy) == state_of(c)
    try:
        py_copy = COPIERS[copier](py)
    except TypeError:
        # The Python class cannot pickle __slots__ below protocol 2.
        assert shape in ("slotted", "slots_and_dict")
        assert copier in ("pickle0", "pickle1")
        return
    assert without_count(state_of(c_copy)) == without_count(state_of(py_copy))


def test_deepcopy_copies_slot_values() -> None:
    c = build("slotted", "C")
    clone = copy.deepcopy(c)
    assert clone.a == c.a
    assert clone.a is not c.a


def test_frozen_dataclass_is_not_set_through_setattr() -> None:
    c = build("frozen_dataclass", "C")
    with pytest.raises((dataclasses.FrozenInstanceError, TypeError)):
        c.count = 1
    clone = pickle.loads(pickle.dumps(c))
    assert (clone.x, clone.count) == (3, 5)


def test_reduce_of_the_exact_type_calls_counter() -> None:
    assert Counter(9).__reduce__() == (Counter, (9,))
    assert pickle.loads(pickle.dumps(Counter(-3), 0)).count == -3


def test_rebuild_refuses_what_is_not_a_counter() -> None:
    rebuild: Any = pyatexit._rebuild
    with pytest.raises(TypeError, match="subclass of Counter"):
        rebuild(int, 1, (), {})
    with pytest.raises(TypeError, match="tuple and a dict"):
        rebuild(CLASSES["plain", "C"], 1, [], {})
    with pytest.raises(OverflowError):
        rebuild(CLASSES["plain", "C"], 2**63, (), {})
    with pytest.raises(TypeError, match="keywords must be strings"):
        rebuild(CLASSES["plain", "C"], 1, (), {1: 2})

    class Odd(Counter):
        def __new__(cls) -> Any:
            return 42

    with pytest.raises(TypeError, match="not a Counter"):
        rebuild(Odd, 1, (), {})


def new_needs_a_name(base: type) -> type:
    # No __getnewargs__: copyreg rebuilds below protocol 2 without calling
    # __new__, and from protocol 2 calls it with no arguments, which fails.
    def __new__(cls: type, name: str, number: int = 0) -> Any:
        obj = object_new(base, cls)
        obj.name = name
        return obj

    def __init__(self: Any, name: str, number: int = 0) -> None:
        base_init(base, self)
        self.count = number

    return register(
        type(
            name("NewNeedsAName", base),
            (base,),
            {"__new__": __new__, "__init__": __init__},
        )
    )


NEEDS_A_NAME = {label: new_needs_a_name(base) for label, base in BASES.items()}


def outcome(action: Callable[[], Any]) -> tuple[object, ...]:
    try:
        obj = action()
    except Exception as e:
        return ("raised", type(e))
    return ("made", type(obj).__name__.rsplit("_", 1)[0], obj.name, obj.count)


@pytest.mark.parametrize("copier", COPIERS)
def test_new_that_needs_arguments_follows_copyreg(copier: str) -> None:
    # Protocols 0 and 1 rebuild without __new__; the others need arguments.
    c, py = (NEEDS_A_NAME[label]("n", 5) for label in ("C", "Py"))
    c_outcome, py_outcome = (
        outcome(functools.partial(COPIERS[copier], o)) for o in (c, py)
    )
    assert c_outcome == py_outcome
    expected_to_work = copier in ("pickle0", "pickle1")
    assert c_outcome[0] == ("made" if expected_to_work else "raised")


def false_state(base: type) -> type:
    def __getstate__(self: Any) -> dict[str, Any]:
        return {}

    def __setstate__(self: Any, state: Any) -> None:
        self.set_with = state

    return register(
        type(
            name("FalseState", base),
            (base,),
            {"__getstate__": __getstate__, "__setstate__": __setstate__},
        )
    )


FALSE_STATE = {label: false_state(base) for label, base in BASES.items()}


@pytest.mark.parametrize("copier", COPIERS)
def test_false_state_is_left_out_below_protocol_2(copier: str) -> None:
    # copyreg leaves out a state that is false; from protocol 2 only None.
    copies = {label: COPIERS[copier](cls()) for label, cls in FALSE_STATE.items()}
    set_with = {label: vars(o).get("set_with", "unset") for label, o in copies.items()}
    assert set_with["C"] == set_with["Py"]
    assert set_with["C"] == ("unset" if copier in ("pickle0", "pickle1") else {})
    assert copies["C"].count == 0  # count is carried along all the same


def test_rebuild_without_arguments_does_not_call_new() -> None:
    obj: Any = pyatexit._rebuild(NEEDS_A_NAME["C"], 7)
    assert (type(obj), obj.count, hasattr(obj, "name")) == (NEEDS_A_NAME["C"], 7, False)
    with pytest.raises(TypeError, match="both None"):
        pyatexit._rebuild(NEEDS_A_NAME["C"], 7, None, {})


def count_redefinitions(base: type) -> dict[str, type]:
    """Subclasses that give `count` a meaning of their own."""

    def get(self: Any) -> Any:
        return self._n

    def put(self: Any, value: Any) -> None:
        self._n = value

    annotated = {"__annotations__": {"count": int}, "count": 0}
    made = {
        "class_default": type(name("ClassDefault", base), (base,), dict(annotated)),
        "dataclass": dataclasses.dataclass(
            type(name("DataclassCount", base), (base,), dict(annotated))
        ),
        "slot": type(name("SlotCount", base), (base,), {"__slots__": ("count",)}),
        "property": type(
            name("PropertyCount", base), (base,), {"count": property(get, put)}
        ),
    }
    return {shape: register(cls) for shape, cls in made.items()}


REDEFINED = {label: count_redefinitions(base) for label, base in BASES.items()}


@pytest.mark.parametrize("shape", list(REDEFINED["C"]))
def test_subclass_that_redefines_count(shape: str) -> None:
    # inc() is `self.count += 1` through the attribute protocol, as in the
    # Python class, and is still counted.  (The Python class cannot pickle
    # __slots__ below protocol 2.)
    slots_below_2 = ("pickle0", "pickle1") if shape == "slot" else ()
    seen = {}
    for label in BASES:
        cls = REDEFINED[label][shape]
        fresh = cls()
        before = pyatexit.inc_dec_counts() if pyatexit.COUNT_ALL_DEC_INC else (0, 0)
        obj = cls(5)
        obj.inc()
        obj.inc()
        obj.dec()
        if label == "C" and pyatexit.COUNT_ALL_DEC_INC:
            after = pyatexit.inc_dec_counts()
            assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
        copies = {
            copier: COPIERS[copier](obj).count
            for copier in COPIERS
            if label == "C" or copier not in slots_below_2
        }
        seen[label] = (fresh.count, obj.count, copies)
    everywhere = dict.fromkeys(COPIERS, 6)
    assert seen["C"] == (0, 6, everywhere)
    for copier in slots_below_2:
        del everywhere[copier]
    assert seen["Py"] == (0, 6, everywhere)


def make(name: str, base: Any, **attrs: Any) -> Any:
    return type(name, (base,), attrs)


def class_default_deleted(base: Any) -> list[int]:
    default = make("Default", base, count=0)
    obj = default(4)
    obj.inc()
    del default.count
    seen = [obj.count]
    obj.inc()
    seen.append(obj.count)
    obj.count = 9
    obj.dec()
    seen += [obj.count, copy.copy(obj).count, default(2).count]
    return seen


def class_default_changed(base: Any) -> list[int]:
    default = make("Default", base, count=0)
    obj = default(4)
    default.count = 100
    obj.inc()
    return [obj.count, default().count]


def class_without_default_assigned(base: Any) -> list[int]:
    obj = make("Default", base, count=0)(4)
    obj.inc()
    obj.__class__ = make("Without", base)
    seen = [obj.count]
    obj.inc()
    seen.append(obj.count)
    return seen


def bases_without_default_assigned(base: Any) -> list[int]:
    leaf = make("Leaf", make("Default", base, count=0))
    obj = leaf(4)
    obj.inc()
    leaf.__bases__ = (make("Without", base),)
    seen = [obj.count]
    obj.dec()
    seen += [obj.count, copy.deepcopy(obj).count]
    return seen


def class_left_and_come_back_to(base: Any) -> list[int]:
    # The class it comes back to has kept its version tag.
    plain, default = make("Plain", base), make("Default", base, count=0)
    obj = plain(5)
    obj.inc()
    obj.__class__ = default
    obj.count = 10
    obj.__class__ = plain
    seen = [obj.count, copy.copy(obj).count]
    obj.inc()
    seen.append(obj.count)
    return seen


CLASS_CHANGES: dict[Callable[[Any], list[int]], tuple[int, int]] = {
    class_default_deleted: (2, 1),
    class_default_changed: (1, 0),
    class_without_default_assigned: (2, 0),
    bases_without_default_assigned: (1, 1),
    class_left_and_come_back_to: (2, 0),
}


@pytest.mark.parametrize("change", list(CLASS_CHANGES))
def test_count_follows_a_class_that_stops_redefining_it(
    change: Callable[[Any], list[int]],
) -> None:
    # The Python class keeps count in the instance's __dict__, where it is
    # found again once the class no longer hides it.
    before = pyatexit.inc_dec_counts()
    seen = change(Counter)
    assert seen == change(PyCounter)
    if pyatexit.COUNT_ALL_DEC_INC:
        after = pyatexit.inc_dec_counts()
        steps = (after[0] - before[0], after[1] - before[1])
        assert steps == CLASS_CHANGES[change]


def test_count_left_in_the_dict_that_is_not_an_int_stays_there() -> None:
    default = make("Default", Counter, count=0)
    obj = default()
    obj.count = "four"
    del default.count
    assert (obj.count, vars(obj)) == (0, {"count": "four"})
    obj.inc()
    assert (obj.count, vars(obj)) == (1, {"count": "four"})


class Colliding:
    """A key with the hash of "count" whose __eq__ runs code once."""

    action: Callable[[], None] | None = None

    def __hash__(self) -> int:
        return hash("count")

    def __eq__(self, other: object) -> bool:
        action, self.action = self.action, None
        if action is not None:
            action()
        return False


def test_a_class_changed_by_the_look_up_in_the_dict_is_looked_at_again() -> None:
    # The look-up of count in __dict__ runs a colliding key's __eq__, which
    # makes the class redefine count again: the count stays in __dict__, as
    # for the Python class.
    seen = {}
    for label, base in BASES.items():
        default = make("Default", base, count=0)
        obj = default(5)
        del default.count

        def redefine(cls: Any = default) -> None:
            cls.count = 0

        d = vars(obj)
        del d["count"]
        key = Colliding()
        d[key] = None
        d["count"] = 5
        key.action = redefine
        obj.inc()
        seen[label] = (obj.count, d["count"])
    assert seen["C"] == seen["Py"] == (6, 6)


def test_a_count_whose_del_changes_the_class_is_hidden_as_by_a_late_attribute() -> None:
    # Moved out of __dict__, the count's last reference goes, and its
    # __del__ makes the class redefine count: the count is in the object, as
    # when a class attribute is added while instances exist.
    default = make("Default", Counter, count=0)

    class Five(int):
        def __del__(self) -> None:
            default.count = 0

    before = pyatexit.inc_dec_counts()
    obj = default(Five(5))
    del default.count
    obj.inc()
    assert (obj.count, vars(obj)) == (1, {"count": 1})
    if pyatexit.COUNT_ALL_DEC_INC:
        after = pyatexit.inc_dec_counts()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


def test_class_is_objects_own() -> None:
    obj = make("Sub", Counter)()
    assert obj.__class__ is type(obj)
    assert type(obj).__class__ is type
    with pytest.raises(TypeError, match="__class__"):
        del obj.__class__
    with pytest.raises(TypeError):
        obj.__class__ = int
    with pytest.raises(TypeError):
        Counter().__class__ = make("Sub", Counter)
    assert type(obj).__name__ == "Sub"


def late_class_attribute(base: Any) -> tuple[int, int]:
    late = make("Late", base)
    obj = late(4)
    late.count = 0
    before = obj.count
    obj.inc()
    return before, obj.count


def late_write_to_the_dict(base: Any) -> tuple[int, int]:
    obj = make("Sub", base)(4)
    vars(obj)["count"] = 50
    obj.inc()
    return obj.count, vars(obj)["count"]


def test_deliberate_differences_of_a_count_kept_in_the_object() -> None:
    # The README's deliberate differences: Counter keeps count in the object,
    # not in the instance's __dict__, so a class attribute added while
    # instances exist hides their counts, and a value written straight into
    # __dict__ is not their count.
    assert late_class_attribute(Counter) == (0, 1)
    assert late_class_attribute(PyCounter) == (4, 5)
    assert late_write_to_the_dict(Counter) == (5, 50)
    assert late_write_to_the_dict(PyCounter) == (51, 51)


def test_property_without_setter_for_count() -> None:
    for base in BASES.values():
        cls = type("ReadOnly", (base,), {"count": property(lambda self: 42)})
        with pytest.raises(AttributeError):
            cls()


def test_repr_of_a_redefined_count() -> None:
    obj = REDEFINED["C"]["class_default"](3)
    obj.inc()
    assert repr(obj) == "ClassDefault_C(4)"


def test_bad_getnewargs_raises_as_for_the_python_class() -> None:
    for base in (Counter, PyCounter):
        cls = type("Bad", (base,), {"__getnewargs__": lambda self: [1]})
        with pytest.raises(TypeError, match="__getnewargs__ should return a tuple"):
            copy.copy(cls())


def abstract(base: type) -> type:
    class P(base, abc.ABC):  # type: ignore[misc]
        @abc.abstractmethod
        def m(self) -> None: ...

    return P


@pytest.mark.parametrize("args", [(), (3,)])
def test_abstract_subclass_cannot_be_instantiated(args: tuple[int, ...]) -> None:
    messages = []
    for base in (Counter, PyCounter):
        with pytest.raises(TypeError) as raised:
            abstract(base)(*args)
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("Can't instantiate abstract class P")


def test_concrete_subclass_of_an_abstract_one() -> None:
    class Q(abstract(Counter)):  # type: ignore[misc]
        def m(self) -> None:
            pass

    assert Q(4).count == 4


@pytest.mark.parametrize("label", BASES)
@pytest.mark.parametrize("shape", ["exact", "plain", "slotted"])
def test_weak_references(shape: str, label: str) -> None:
    base = BASES[label]
    cls = base if shape == "exact" else CLASSES[shape, label]
    obj = cls()
    ref = weakref.ref(obj)
    finalized: list[str] = []
    weakref.finalize(obj, finalized.append, "gone")
    live = weakref.WeakSet([obj])
    values = weakref.WeakValueDictionary({"k": obj})
    assert ref() is obj
    assert (len(live), list(values)) == (1, ["k"])
    del obj
    gc.collect()
    assert (ref(), finalized, len(live), list(values)) == (None, ["gone"], 0, [])


def test_module_type_and_instance_cycle_is_collected() -> None:
    old = sys.modules.pop("pyatexit")
    try:
        module = importlib.import_module("pyatexit")
        module.default = module.Counter()  # type: ignore[attr-defined]
        refs = [
            weakref.ref(module),
            weakref.ref(module.Counter),
            weakref.ref(module.default),
        ]
        del sys.modules["pyatexit"], module
        gc.collect()
        assert [r() for r in refs] == [None, None, None]
    finally:
        sys.modules["pyatexit"] = old


def test_counter_in_a_cycle_with_itself_is_collected() -> None:
    sub = CLASSES["plain", "C"]()
    sub.me = sub
    ref = weakref.ref(sub)
    del sub
    gc.collect()
    assert ref() is None


def test_gc_sees_the_type_from_the_instance() -> None:
    c = Counter()
    assert type(c) in gc.get_referents(c)
    assert gc.is_tracked(c)


def test_counts_of_collected_cycles_stay_in_the_report(tmp_path: Path) -> None:
    code = """
        import gc, pyatexit
        gc.disable()
        pyatexit.default = pyatexit.Counter()
        pyatexit.default.inc()
        class Sub(pyatexit.Counter):
            pass
        s = Sub(); s.me = s; s.dec(); del s
        gc.collect()
    """
    result = run_python(code, cwd=tmp_path)
    assert (result.stdout, result.stderr, result.returncode) == (report(1, 1), "", 0)


class RenamedModuleSub(Counter):
    pass


@pytest.mark.parametrize("change", ["rebound", "deleted"])
def test_copy_after_the_module_name_changed(change: str) -> None:
    # Code may rebind or delete pyatexit.__name__: copies are still made
    # with the module imported as pyatexit, as they are of a Python class.
    saved = pyatexit.__name__
    try:
        if change == "rebound":
            pyatexit.__name__ = 42  # type: ignore[assignment]
        else:
            del pyatexit.__name__
        made = [
            copy.copy(RenamedModuleSub(3)),
            copy.deepcopy(RenamedModuleSub(3)),
            pickle.loads(pickle.dumps(RenamedModuleSub(3), 2)),
            pickle.loads(pickle.dumps(RenamedModuleSub(3), 0)),
        ]
    finally:
        pyatexit.__name__ = saved
    assert [(type(c), c.count) for c in made] == [(RenamedModuleSub, 3)] * 4
