"""Type stub for the pyatexit C extension."""

from typing import Any, Final, SupportsIndex, TypeVar

_C = TypeVar("_C", bound=Counter)

COUNT_ALL_DEC_INC: Final[bool]

class Counter:
    """An up/down counter; count is a signed 64-bit integer."""

    def __init__(self, number: SupportsIndex = 0) -> None: ...
    @property
    def count(self) -> int: ...
    @count.setter
    def count(self, value: SupportsIndex) -> None: ...
    def inc(self) -> None: ...
    def dec(self) -> None: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __getstate__(
        self,
    ) -> dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]: ...
    def __setstate__(
        self,
        state: dict[str, Any] | tuple[dict[str, Any] | None, dict[str, Any] | None],
    ) -> None: ...

def inc_dec_counts() -> tuple[int, int]: ...
def _rebuild(
    cls: type[_C],
    count: SupportsIndex,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    /,
) -> _C: ...
