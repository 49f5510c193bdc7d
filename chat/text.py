"""A streaming reply's text."""


class ReplyText:
    """A reply's text as it streams: deltas are appended and joined every so often, so it is held once, compactly.

    A streamed token is a few characters; as a string object of its own in a list it costs ~60 bytes. Open
    streams hold their replies for minutes.
    """

    __slots__ = ("_parts", "deltas")
    JOIN_EVERY = 32

    def __init__(self) -> None:
        self._parts: list[str] = []
        # How many deltas were appended (what the progress writer compares with what it saved).
        self.deltas = 0

    def append(self, delta: str) -> None:
        self._parts.append(delta)
        self.deltas += 1
        if len(self._parts) >= self.JOIN_EVERY:
            self._parts = ["".join(self._parts)]

    def text(self) -> str:
        """Everything appended so far."""
        if len(self._parts) != 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0]
