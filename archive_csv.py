"""The archive's CSV files (meters.csv, areas.csv) as operators save them, read into topology
records: tolerant where that is safe, strict where a guess would change the energy.

Tolerated: a UTF-8 byte-order mark and CRLF line ends (Excel's "CSV UTF-8"), ``;`` or tab as
delimiter (Excel in locales with a decimal comma), spaces and capitals in the header, blank rows.
Refused: an empty file, a header without the required columns, a row with more or fewer cells
than the header, a blank multiplier (1.0 would silently undercount a CT-connected meter by its
CT ratio). Every bad row is reported with its line number, all in one CsvError.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "meters.csv"
>>> _ = path.write_bytes(b"\\xef\\xbb\\xbfMeter_ID;area_id;multiplier\\r\\nm1;A;80\\r\\n")
>>> table = read_table(path, required=("meter_id", "area_id", "multiplier"))
>>> table.dialect(), table.rows
("delimiter ';', UTF-8 BOM, CRLF", [(2, {'meter_id': 'm1', 'area_id': 'A', 'multiplier': '80'})])
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from topology import Area, Bounds, MeterRecord

DELIMITERS = (",", ";", "\t")
METER_COLUMNS = ("meter_id", "area_id", "multiplier")
AREA_COLUMNS = ("area_id",)


class CsvError(ValueError):
    """A CSV file that cannot be loaded: the file, and every problem with its line number."""

    def __init__(self, path: Path, problems: Sequence[tuple[int | None, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        where = [f"line {line}: {msg}" if line is not None else msg for line, msg in self.problems]
        if len(where) == 1:
            text = f"{path}: {where[0]}"
        else:
            text = f"{path}: {len(where)} bad rows\n" + "\n".join(f"  {w}" for w in where)
        super().__init__(text)


@dataclass(frozen=True)
class CsvTable:
    """A CSV file's rows as (line number, {column: stripped cell}), and how the file was written."""

    path: Path
    delimiter: str
    bom: bool
    crlf: bool
    rows: list[tuple[int, dict[str, str]]]
    problems: list[tuple[int | None, str]]  # rows left out: wrong number of cells

    def dialect(self) -> str:
        """What the reader had to detect, for the command's report."""
        parts = [f"delimiter {'tab' if self.delimiter == chr(9) else repr(self.delimiter)}"]
        if self.bom:
            parts.append("UTF-8 BOM")
        if self.crlf:
            parts.append("CRLF")
        return ", ".join(parts)


def _sniff(header: str) -> str:
    """The delimiter of a header line: the candidate occurring most often in it (column names
    hold none of them), ',' for a one-column file."""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_table(path: Path, *, required: Sequence[str]) -> CsvTable:
    """Read ``path`` whole. A file that is empty, unreadable or lacks a ``required`` column raises
    CsvError; rows with more or fewer cells than the header are left out and listed in
    ``problems``, for the caller to report with its own findings."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CsvError(path, [(None, f"cannot read: {exc.strerror or exc}")]) from None
    bom = raw.startswith(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(path, [(None, f'not UTF-8 (byte {exc.start}): save it as "CSV UTF-8"')]) from None
    if not text.strip():
        expected = f"expected a header ({', '.join(required)}) and rows"
        raise CsvError(path, [(None, f"the file is empty: {expected}")])
    first = next(line for line in text.splitlines() if line.strip())
    delimiter = _sniff(first)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[tuple[int | None, str]] = []
    last = 0
    try:
        for cells in reader:
            line, last = last + 1, reader.line_num  # a quoted cell may span lines
            if not any(c.strip() for c in cells):
                continue  # blank rows, or Excel's trailing ";;;"
            if header is None:
                header = [c.strip().lower() for c in cells]
                missing = [c for c in required if c not in header]
                dupes = sorted({c for c in header if header.count(c) > 1})
                if missing or dupes:
                    found = ", ".join(header)
                    why = f"no column {', '.join(missing)}" if missing else f"column {', '.join(dupes)} twice"
                    raise CsvError(path, [(line, f"{why} in the header ({found}; delimiter {delimiter!r})")])
                continue
            if len(cells) != len(header):
                problems.append((line, f"{len(cells)} cells, the header has {len(header)}"))
                continue
            rows.append((line, {name: cell.strip() for name, cell in zip(header, cells, strict=True)}))
    except csv.Error as exc:
        problems.append((last + 1, f"unreadable CSV: {exc}"))
    if not rows and not problems:
        raise CsvError(path, [(None, "no rows after the header")])
    return CsvTable(path, delimiter, bom, b"\r\n" in raw, rows, problems)


def read_meters(path: Path) -> tuple[list[MeterRecord], CsvTable]:
    """Every record of a meters CSV (columns as MeterRecord; meter_id, area_id and multiplier
    required, the others default); raises CsvError listing every bad row."""
    table = read_table(path, required=METER_COLUMNS)
    records: list[MeterRecord] = []
    problems = list(table.problems)
    for line, row in table.rows:
        if not row["multiplier"]:
            problems.append((line, "multiplier is blank: give the CT x PT ratio (1 for a direct meter)"))
            continue
        try:
            records.append(MeterRecord.from_dict(row))
        except ValueError as exc:
            problems.append((line, str(exc)))
    if problems:
        raise CsvError(path, sorted(problems, key=_line))
    return records, table


def read_areas(path: Path) -> tuple[list[Area], CsvTable]:
    """Areas CSV: ``area_id,area_class[,loss_lower,loss_upper]`` (both bounds empty: the class's);
    raises CsvError listing every bad row."""
    table = read_table(path, required=AREA_COLUMNS)
    areas: list[Area] = []
    problems = list(table.problems)
    for line, row in table.rows:
        lo, hi = row.get("loss_lower", ""), row.get("loss_upper", "")
        try:
            if not row["area_id"]:
                raise ValueError("area_id is blank")
            if bool(lo) != bool(hi):
                raise ValueError("loss_lower and loss_upper go together: give both or neither")
            bounds = Bounds(float(lo), float(hi)) if lo else None
        except ValueError as exc:
            problems.append((line, str(exc)))
            continue
        areas.append(Area(row["area_id"], row.get("area_class") or "urban", bounds))
    if problems:
        raise CsvError(path, sorted(problems, key=_line))
    return areas, table


def _line(problem: tuple[int | None, str]) -> int:
    return problem[0] or 0
