"""Bounded little-endian byte reader for binary evidence formats.

Every read is checked against the reader's window; a short read raises
:class:`~teeflow.errors.ParseError` naming the field and the absolute offset, so
parsers built on it are total (no ``IndexError`` / ``struct.error`` can escape).
"""

from __future__ import annotations

from teeflow.errors import ParseError

__all__ = ["ByteReader"]


class ByteReader:
    """Sequential reader over ``data[start:end]`` with absolute offsets in errors.

    Args:
        data: the whole buffer (bytes; not copied).
        start: first readable offset (default 0).
        end: one past the last readable offset (default ``len(data)``).

    Raises:
        ParseError: if ``start``/``end`` do not describe a window inside ``data``.
    """

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        stop = len(data) if end is None else end
        if not 0 <= start <= stop <= len(data):
            raise ParseError(f"invalid reader window [{start}, {stop}) over {len(data)} bytes")
        self._data = data
        self._pos = start
        self._end = stop

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte to read."""
        return self._pos

    @property
    def end(self) -> int:
        """Absolute offset one past the window."""
        return self._end

    @property
    def remaining(self) -> int:
        """Bytes left in the window."""
        return self._end - self._pos

    def _take(self, n: int, what: str) -> int:
        if n < 0:
            raise ParseError(f"{what}: negative length {n} at offset {self._pos}")
        if n > self._end - self._pos:
            raise ParseError(
                f"{what}: need {n} bytes at offset {self._pos}, only {self._end - self._pos} left"
            )
        start = self._pos
        self._pos = start + n
        return start

    def read(self, n: int, what: str = "field") -> bytes:
        """Return the next ``n`` bytes. Raises ParseError on a short read."""
        start = self._take(n, what)
        return self._data[start : start + n]

    def u8(self, what: str = "u8") -> int:
        """Read an unsigned 8-bit integer."""
        start = self._take(1, what)
        return self._data[start]

    def u16(self, what: str = "u16") -> int:
        """Read an unsigned little-endian 16-bit integer."""
        start = self._take(2, what)
        return int.from_bytes(self._data[start : start + 2], "little")

    def u32(self, what: str = "u32") -> int:
        """Read an unsigned little-endian 32-bit integer."""
        start = self._take(4, what)
        return int.from_bytes(self._data[start : start + 4], "little")

    def u64(self, what: str = "u64") -> int:
        """Read an unsigned little-endian 64-bit integer."""
        start = self._take(8, what)
        return int.from_bytes(self._data[start : start + 8], "little")

    def sub(self, n: int, what: str = "structure") -> ByteReader:
        """Return a reader over the next ``n`` bytes and skip them here.

        The sub-reader cannot read past its ``n`` bytes, so nested lengths can never
        overrun their enclosing declared length. Raises ParseError on a short read.
        """
        start = self._take(n, what)
        return ByteReader(self._data, start, start + n)

    def expect_end(self, what: str = "structure") -> None:
        """Raise ParseError if unread bytes remain in the window."""
        if self._pos != self._end:
            raise ParseError(
                f"{what}: {self._end - self._pos} unexpected bytes at offset {self._pos}"
            )
