"""What lives as long as the process, in one place: made on first use, forgotten by `reset`.

The run hub, the turn and progress writers, the throttle's counters, the key owners, the persona caches: each module
asks `process_state(name, make)` for its own instead of keeping a global, so that tests (and a server's start) begin
from nothing with one call. Two things stay outside, because remaking them is the cost they exist to avoid: the
database's worker thread (`runs.db`, the home of SQLite's one connection) and the tier-0 drift table read from disk
(`chat.scoring`).
"""

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

_made: dict[str, Any] = {}
_lock = threading.Lock()


def process_state(name: str, make: Callable[[], T]) -> T:
    """The process's `name`, made by `make()` the first time it is asked for (once, whichever thread asks)."""
    try:
        return cast(T, _made[name])
    except KeyError:
        with _lock:
            if name not in _made:
                _made[name] = make()
            return cast(T, _made[name])


def forget(name: str) -> None:
    """Drop one part (a setting it was made from changed): the next `process_state(name, …)` makes it again."""
    with _lock:
        _made.pop(name, None)


def reset() -> None:
    """Drop every part: the next use of each makes it again."""
    with _lock:
        _made.clear()
