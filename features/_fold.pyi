"""Types of the compiled fold (``features/_fold.c``, built by ``python -m features._build``)."""

from datetime import datetime, tzinfo
from typing import Any

def fold_event(state: Any, event: Any, /) -> str: ...
def configure(
    plans: dict[type, tuple[int, Any, dict[object, Any]]],
    epochs: dict[tzinfo | None, datetime],
    entities: frozenset[type],
    day_us: int,
    longest_window: int,
    outcomes: tuple[str, ...],
    /,
) -> None: ...
def crc32(data: bytes, /) -> int: ...
