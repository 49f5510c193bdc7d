"""What lives as long as the process, in one place: made on first use, forgotten by `reset`.

The run hub, the turn and progress writers, the throttle's counters, the key owners, the persona caches: each module
asks `process_state(name, make)` for its own instead of keeping a global, so that tests (and a server's start) begin
from nothing with one call. What stays outside is what remaking would cost the most: the database's worker thread
(`runs.db`, the home of SQLite's one connection) and the embedders, whose weights and tier-0 table are read from disk
(`llm.embeddings`, `llm.static_embeddings`).
"""

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
V = TypeVar("V")


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
        _close(_made.pop(name, None))


def reset() -> None:
    """Drop every part (closing those that hold a thread): the next use of each makes it again."""
    with _lock:
        parts = list(_made.values())
        _made.clear()
    for part in parts:
        _close(part)


def _close(part: Any) -> None:
    if isinstance(part, Stoppable):
        part.close()


class Stoppable(ABC):
    """A part that holds a thread or a connection: `reset` closes it."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the thread or connection."""


class Lru(Generic[V]):
    """A map of at most `size` entries, the least recently used dropped first; shared by threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
