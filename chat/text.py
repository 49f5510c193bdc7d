"""A streaming reply's text."""


class ReplyText:
    """A reply's text as it streams, held once and compactly: its UTF-8 bytes in one growing buffer.

    A streamed token is a few characters; as a string object of its own in a list it would cost ~60 bytes, and
    open streams hold their replies for minutes. Offsets into it are byte offsets.
    """

    __slots__ = ("_utf8", "deltas")

    def __init__(self) -> None:
        self._utf8 = bytearray()
        # How many deltas were appended (what the progress writer compares with what it saved).
        self.deltas = 0

    def append(self, delta: str) -> None:
        # surrogatepass: a model's lone surrogate (valid in a JSON string) comes back out as it went in.
        self._utf8 += delta.encode("utf-8", "surrogatepass")
        self.deltas += 1

    def size(self) -> int:
        """The text's length in bytes."""
        return len(self._utf8)

    def text(self, start: int = 0) -> str:
        """Everything appended so far, from byte offset `start` (the end of an earlier `text()`, or 0)."""
        with memoryview(self._utf8) as view:
            return str(view[start:], "utf-8", "surrogatepass")
