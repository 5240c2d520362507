"""A CSV split into records exactly, at any size: quoted cells that span lines (the official release's
``response`` cells), block boundaries anywhere, and malformed lines that cost one rejection each.

The rule (``tests/test_builders/test_csv.py`` states it plainly with Python's ``csv`` module and holds this
module to it): a record ends at the first newline outside quotes (RFC 4180). A record is accepted when ``csv``
(strict) reads it as one row of the header's width. Otherwise its *first line* is rejected, and reading starts
again at the line after it, so an unclosed quote anywhere (the last column too) loses that one line, never the
lines after it. Blank lines are not rows.

The fast path works on whole blocks with numpy: record ends from the quote parity at each newline, then one-line
records whose quotes each enclose a whole field are counted field by field on arrays (MP16-Pro quotes every
field); only the rest meet ``csv``. Arrow then parses the accepted records of each block. A record still open
after ``max_record`` bytes is treated as an unclosed quote.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

QUOTE, NEWLINE, COMMA, CR = 34, 10, 44, 13
BLOCK = 8 << 20  # bytes read at a time
MAX_RECORD = 16 << 20  # a record longer than this is an unclosed quote, not a cell


class EncodingError(ValueError):
    """The bytes are not text in the encoding named (or detected)."""


@dataclass
class _Scan:
    arr: np.ndarray  # the buffer's bytes
    newlines: np.ndarray  # offsets of its newlines
    quotes: np.ndarray  # offsets of its quotes
    ends: np.ndarray  # offsets of the newlines that end a record


@dataclass
class Chunk:
    """The accepted records of one stretch of the file, and what was rejected in it."""

    data: bytes  # accepted records, each ending in a newline, ready for a CSV parser
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # each one's record index (0-based)
    rejected: list[tuple[int, int, str, str]] = field(default_factory=list)  # (row, line, first field, reason)


def utf8_blocks(raw, encoding: str | None, name: str, block: int | None = None) -> Iterator[bytes]:
    """The file's bytes as UTF-8, ``block`` at a time. With no ``encoding`` a byte-order mark decides (UTF-8 or
    UTF-16), else the bytes must be UTF-8; anything else is an :class:`EncodingError` that names the fix."""
    block = block or BLOCK
    head = raw.read(4)
    if encoding is None:
        if head.startswith(codecs.BOM_UTF8):
            head = head[3:]
        elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"
    if encoding is not None and codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig"):
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        offset = 0
        for piece in _pieces(raw, head, block):
            try:
                yield decoder.decode(piece).encode("utf-8")
            except UnicodeDecodeError as e:
                raise EncodingError(f"{name} is not {encoding} at byte {offset + e.start}: {e.reason}") from None
            offset += len(piece)
        yield decoder.decode(b"", final=True).encode("utf-8")
        return
    check = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    for piece in _pieces(raw, head, block):
        try:
            check.decode(piece)
        except UnicodeDecodeError as e:
            bad = piece[e.start : e.start + 4]
            raise EncodingError(
                f"{name} is not UTF-8 (byte {bad[:1].hex()} at offset {offset + e.start}); name its encoding with "
                "input.encoding in the recipe (e.g. latin-1 or cp1252 for Excel's CSVs, utf-16 for Windows "
                "'Unicode text'), or save it as UTF-8"
            ) from None
        offset += len(piece)
        yield piece
    try:
        check.decode(b"", final=True)
    except UnicodeDecodeError:
        raise EncodingError(f"{name} ends inside a UTF-8 character; name its encoding with input.encoding") from None


def _pieces(raw, head: bytes, block: int) -> Iterator[bytes]:
    if head:
        yield head
    while piece := raw.read(block):
        yield piece


def split(blocks: Iterator[bytes], max_record: int = MAX_RECORD) -> tuple[list[str], Iterator[Chunk]]:
    """The header's fields, and the rest of the file as :class:`Chunk` s (one or more a block)."""
    splitter = _Splitter(blocks, max_record)
    return splitter.header(), splitter.chunks()


class _Splitter:
    def __init__(self, blocks: Iterator[bytes], max_record: int):
        self.blocks = iter(blocks)
        self.max_record = max_record
        self.buf = b""
        self.eof = False
        self.line = 1  # the physical line (1-based) at which buf starts
        self.row = 0  # the next record's index
        self.width = 0

    def _more(self) -> None:
        piece = next(self.blocks, None)
        if piece is None:
            self.eof = True
        else:
            self.buf += piece

    def header(self) -> list[str]:
        while True:
            ends = self._scan().ends
            if len(ends) or self.eof:
                break
            self._more()
        if not len(ends) and not self.buf.strip():
            return []
        end = int(ends[0]) + 1 if len(ends) else len(self.buf)
        text = self.buf[:end].decode("utf-8")
        self.line += self.buf.count(b"\n", 0, end)
        self.buf = self.buf[end:]
        fields = next(csv.reader([text.rstrip("\r\n")], strict=True), [])
        self.width = len(fields)
        return fields

    def _scan(self) -> _Scan:
        """buf's newlines and quotes, and the newlines that end a record (outside quotes); at the end of the
        input, the input's end too when its last line has no newline."""
        arr = np.frombuffer(self.buf, np.uint8)
        newlines = np.flatnonzero(arr == NEWLINE)
        quotes = np.flatnonzero(arr == QUOTE)
        ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
        if self.eof and len(arr) and arr[-1] != NEWLINE and len(quotes) % 2 == 0:
            ends = np.append(ends, len(arr) - 1)
        return _Scan(arr, newlines, quotes, ends)

    def chunks(self) -> Iterator[Chunk]:
        while True:
            if self.buf:
                scan = self._scan()
                if len(scan.ends):
                    yield self._take(scan)
                    continue
                if self.eof or len(self.buf) > self.max_record:
                    yield self._reject_first_line()  # an open quote that never closes (or runs past max_record)
                    continue
            if self.eof:
                return
            self._more()

    def _reject_first_line(self) -> Chunk:
        cut = self.buf.find(b"\n")
        cut = len(self.buf) if cut < 0 else cut + 1
        chunk = Chunk(b"")
        self._reject(chunk, self.buf[:cut], "an unclosed quote")
        self.buf = self.buf[cut:]
        self.line += 1
        return chunk

    def _reject(self, chunk: Chunk, record: bytes, reason: str) -> None:
        chunk.rejected.append((self.row, self.line, _first_field(record), f"malformed CSV line {self.line}: {reason}"))
        self.row += 1

    def _take(self, scan: _Scan) -> Chunk:
        """The records that end at ``ends``, up to the first multi-line record whose first line is rejected
        (reading starts again after that line, so the records after it are split anew). Lines without quotes
        and with the header's comma count are accepted on whole arrays; only the others meet ``csv``."""
        buf, arr, ends = self.buf, scan.arr, scan.ends
        starts = np.concatenate([[0], ends[:-1] + 1])
        blank = (ends - starts == 0) | ((ends - starts == 1) & (arr[np.maximum(ends - 1, 0)] == CR))
        special = np.flatnonzero(~blank & ~self._plain(scan, starts))
        count = len(ends)  # records taken: all, unless a multi-line record's first line is rejected
        consumed = data_end = int(ends[-1]) + 1
        cuts: list[tuple[int, int]] = []  # byte ranges of rejected one-line records, left out of the data
        row_of = self.row + np.cumsum(~blank) - 1  # each record's row (blank lines have none)
        keep = ~blank
        chunk = Chunk(b"")
        for i in special:
            s, e = int(starts[i]), int(ends[i]) + 1
            record = buf[s:e]
            reason = self._check(record)
            if not reason:
                continue
            line = self.line + int(np.searchsorted(scan.newlines, s))
            chunk.rejected.append((int(row_of[i]), line, _first_field(record), f"malformed CSV line {line}: {reason}"))
            keep[i] = False
            first_end = record.find(b"\n")
            if 0 <= first_end < len(record) - 1:  # a multi-line record: the lines after its first are read again
                count, consumed, data_end = i + 1, s + first_end + 1, s
                break
            cuts.append((s, e))
        chunk.rows = row_of[:count][keep[:count]]
        pieces, at = [], 0
        for s, e in cuts:
            pieces.append(buf[at:s])
            at = e
        pieces.append(buf[at:data_end])
        chunk.data = b"".join(pieces)
        if chunk.data and not chunk.data.endswith(b"\n"):
            chunk.data += b"\n"
        self.row += int((~blank[:count]).sum())
        self.line += int(np.searchsorted(scan.newlines, consumed))
        self.buf = buf[consumed:]
        return chunk

    def _plain(self, scan: _Scan, starts: np.ndarray) -> np.ndarray:
        """Which records are one line of the header's width whose quotes, if any, each enclose a whole field
        (opened at a field's start, closed before a comma or the line's end, no doubled quotes): what ``csv``
        and Arrow read alike, decided on whole arrays. The rest (rare) go to :meth:`_check`."""
        arr, ends, newlines = scan.arr, scan.ends, scan.newlines
        n, last = len(ends), len(arr) - 1
        quotes = scan.quotes[: np.searchsorted(scan.quotes, ends[-1], side="right")]  # even: records end at even parity
        commas = np.flatnonzero(arr == COMMA)
        opens, closes = quotes[0::2], quotes[1::2]
        record = np.searchsorted(ends, opens)
        after, after2 = arr[np.minimum(closes + 1, last)], arr[np.minimum(closes + 2, last)]
        enclosing = ((opens == starts[record]) | (arr[np.maximum(opens - 1, 0)] == COMMA)) & (
            (closes == ends[record]) | (after == COMMA) | (after == NEWLINE) | ((after == CR) & (after2 == NEWLINE))
        )
        odd_quotes = np.bincount(record, weights=~enclosing, minlength=n) > 0
        inside = np.searchsorted(commas, closes) - np.searchsorted(commas, opens)  # commas within quotes
        fields = np.searchsorted(commas, ends, side="right") - np.searchsorted(commas, starts) + 1
        fields -= np.bincount(record, weights=inside, minlength=n).astype(np.int64)
        multi_line = np.searchsorted(newlines, ends) > np.searchsorted(newlines, starts)
        crs = np.flatnonzero(arr == CR)
        lone = crs[arr[np.minimum(crs + 1, last)] != NEWLINE]  # a carriage return that ends no line
        has_lone = np.bincount(np.searchsorted(ends, lone), minlength=n + 1)[:n] > 0
        return (fields == self.width) & ~odd_quotes & ~multi_line & ~has_lone

    def _check(self, record: bytes) -> str:
        """Why ``record`` is not one row of the header's width ("" when it is), as ``csv`` (strict) reads it."""
        text = record.decode("utf-8")
        try:  # one string: csv reads newlines inside quotes as part of the cell, and refuses any other
            rows = list(csv.reader([text], strict=True))
        except csv.Error as e:
            first = text.split("\n", 1)[0]
            return "an unclosed quote" if first.count('"') % 2 else f"cannot be parsed ({e})"
        if len(rows) != 1:
            return "cannot be parsed"
        if len(rows[0]) != self.width:
            return f"{len(rows[0])} fields, header has {self.width}"
        return ""


def _first_field(record: bytes) -> str:
    """The first field of a rejected record's first line (its id, in most layouts), as far as it can be read."""
    line = record.decode("utf-8").split("\n", 1)[0].rstrip("\r")
    return next(csv.reader([line]), [""])[0] if line else ""
