"""The metadata CSV read exactly at any size, against Python's ``csv`` module as the reference: multi-line cells
across block boundaries, unclosed quotes anywhere (one rejection each, every later line read), blank lines, CRLF,
byte-order marks and other encodings."""

from __future__ import annotations

import csv
import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders.plane import csvrecords
from builders.plane.ingest import InputError, read_metadata
from builders.recipe import InputSpec

HEADER = ["IMG_ID", "LAT", "LON", "response"]


def reference(text: str) -> tuple[list[tuple[int, list[str]]], list[tuple[int, int]]]:
    """The rule, stated plainly on the whole text with ``csv`` (strict): a record runs to the first line that
    leaves its quotes balanced; it is accepted when ``csv`` reads it as one row of the header's width, else its
    first line is rejected and reading starts again at the next line. Blank lines are not rows. Returns
    ``(accepted, rejected)`` as ``(row, fields)`` and ``(row, line)``."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    width = len(next(csv.reader([lines[0]])))
    accepted, rejected = [], []
    i, row = 1, 0
    while i < len(lines):
        if lines[i] in ("\n", "\r\n"):
            i += 1
            continue
        j, quotes = i, lines[i].count('"')
        while quotes % 2 and j + 1 < len(lines):
            j += 1
            quotes += lines[j].count('"')
        try:
            parsed = list(csv.reader(lines[i : j + 1], strict=True)) if quotes % 2 == 0 else []
        except csv.Error:
            parsed = []
        if len(parsed) == 1 and len(parsed[0]) == width:
            accepted.append((row, parsed[0]))
            i = j + 1
        else:
            rejected.append((row, i + 1))
            i += 1
        row += 1
    return accepted, rejected


def ours(path, **spec) -> tuple[list[tuple[int, list[str]]], list[tuple[int, int]]]:
    table, rejected, n_input = read_metadata(InputSpec(metadata=str(path), images=["x"], **spec))
    columns = [table.column(f).to_pylist() for f in ("id", "lat", "lon", "response")]
    accepted = [(r, list(f)) for r, *f in zip(table.column("row").to_pylist(), *columns)]
    lines = [int(why.split("line ")[1].split(":")[0]) for why in rejected.column("reason").to_pylist()]
    assert n_input == len(accepted) + len(lines)
    return accepted, list(zip(rejected.column("row").to_pylist(), lines))


CELLS = st.one_of(
    st.text(alphabet="ab ,é北", max_size=6),
    st.sampled_from(['a "quoted" word', "multi\nline\ncell", "crlf\r\ninside", "", "trailing,", "\n"]),
)
GOOD = st.lists(CELLS, min_size=4, max_size=4)
BAD = st.sampled_from(
    [
        'x,1,2,"unclosed in the last column',
        'x,"unclosed,1,2',
        "x,1,2",
        "x,1,2,3,4",
        'x,1,2,"closed"then text',
        "   ",
        "",
        'x,a"b,c"d,e',
    ]
)


def write(records: list, terminator: str, quoting: int = csv.QUOTE_MINIMAL) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
    writer.writerow(HEADER)
    for record in records:
        if isinstance(record, str):
            out.write(record + terminator)
        else:
            writer.writerow(record)
    return out.getvalue()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(st.one_of(GOOD, GOOD, GOOD, BAD), max_size=40),
    terminator=st.sampled_from(["\n", "\r\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),  # MP16-Pro's CSV quotes every field
    block=st.sampled_from([1, 2, 5, 13, 64, 257]),
    bom=st.booleans(),
    final_newline=st.booleans(),
)
def test_rows_and_rejections_are_the_references_at_any_block_size(
    tmp_path, monkeypatch, records, terminator, quoting, block, bom, final_newline
):
    text = write(records, terminator, quoting)
    if not final_newline:
        text = text.rstrip("\r\n")
    path = tmp_path / "meta.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    monkeypatch.setattr(csvrecords, "BLOCK", block)
    assert ours(path) == reference(text)


def test_an_unclosed_quote_in_the_last_column_loses_one_line_only(tmp_path):
    lines = [",".join(HEADER)] + [f"id{i},1.5,2.5,fine {i}" for i in range(80)]
    lines[10] = 'bad,1.5,2.5,"never closed'
    lines[40] = 'bad2,1.5,2.5,"also never closed, with a "quote" later'
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    accepted, rejected = ours(tmp_path / "m.csv")
    assert rejected == [(9, 11), (39, 41)]
    assert len(accepted) == 78 and [f[0] for _, f in accepted] == [f"id{i}" for i in range(80) if i not in (9, 39)]


def test_the_release_shape_at_a_sixteenth_crosses_blocks_and_keeps_every_row(tmp_path, monkeypatch):
    """The official release's training CSV: a multi-line ``response`` cell in every row. Here at 1/16 of the
    size through 1/16 of the block; the full size runs in the slow lane below."""
    monkeypatch.setattr(csvrecords, "BLOCK", csvrecords.BLOCK // 16)
    _release_shaped(tmp_path / "release.csv", 2_500)
    accepted, rejected = ours(tmp_path / "release.csv")
    assert (len(accepted), rejected) == (2_500, [])


@pytest.mark.slow
def test_a_16_mb_release_csv_reads_40000_rows(tmp_path):
    size = _release_shaped(tmp_path / "release.csv", 40_000)
    assert size > 2 * csvrecords.BLOCK  # crosses the reader's block boundaries
    accepted, rejected = ours(tmp_path / "release.csv")
    assert (len(accepted), rejected) == (40_000, [])
    assert [f[0] for _, f in accepted] == [f"{i:08d}" for i in range(40_000)]
    assert all(f[3].count("\n") >= 3 for _, f in accepted)


def _release_shaped(path, n: int) -> int:
    rng = random.Random(0)
    words = [
        "the",
        "sign",
        "reads",
        "in",
        "French",
        "with",
        "a",
        "bakery,",
        "cobbled",
        "street",
        "and",
        "mansard",
        "roofs",
    ]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for i in range(n):
            paragraphs = ["<think>" + " ".join(rng.choices(words, k=30)) for _ in range(4)]
            response = "\n\n".join(paragraphs) + ' "quoted" </think>\n<answer>France</answer>'
            writer.writerow([f"{i:08d}", "48.85", "2.35", response])
    return path.stat().st_size


def test_a_latin1_csv_is_refused_naming_the_file_and_the_fix_then_read_with_input_encoding(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("IMG_ID,LAT,LON,response\nid1,1.5,2.5,Bogotá café\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"excel\.csv is not UTF-8.*input\.encoding"):
        ours(path)
    accepted, rejected = ours(path, encoding="latin-1")
    assert accepted == [(0, ["id1", "1.5", "2.5", "Bogotá café"])] and not rejected


def test_a_utf16_csv_is_detected_by_its_byte_order_mark(tmp_path):
    path = tmp_path / "unicode.csv"
    path.write_bytes('IMG_ID,LAT,LON,response\r\nid1,1.5,2.5,"東京\nmulti"\r\n'.encode("utf-16"))
    assert ours(path) == ([(0, ["id1", "1.5", "2.5", "東京\nmulti"])], [])
