"""The book's tables: one function that prints a list of rows as aligned plain-text columns.

Chapters print their results as small tables; each used to build its own f-strings. Here a
table is a list of rows (tuples or dicts), a header, and one format specification per column,
so a chapter's table cell is one call::

    icl.print_table(rows, ("N", "error", "KL"), (".0f", ".2e", ".3f"))

The text is left-aligned for strings and right-aligned for numbers, separated by two spaces,
with a rule under the header. A printed line longer than ``width`` characters is refused
rather than wrapped, since the book's pages hold 74 characters of output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "print_table"]

_NUMBERS = (int, float)


def _cell(value: Any, fmt: str) -> tuple[str, bool]:
    """``(text, is_number)`` of one cell: NumPy scalars and 1-element tensors read with ``.item()``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        return (str(value) if fmt == "" else format(value, fmt)), False
    return format(value, fmt), True


def format_table(rows: Sequence[Sequence[Any] | Mapping[str, Any]], header: Sequence[str],
                 formats: Sequence[str] | None = None, *, width: int = 74) -> str:
    """The table as text: a header line, a rule, and one line per row.

    Args:
        rows: each a sequence of ``len(header)`` values, or a mapping from the header's names.
        header: the column names.
        formats: one format specification per column (``""`` for ``str(value)``); default all ``""``.
        width: the longest line allowed.

    Returns:
        The lines joined by newlines, without a trailing newline.

    Raises:
        ValueError: if a row or ``formats`` does not have one entry per column, a mapping row lacks
            a column, or a line is longer than ``width``.
    """
    header = [str(name) for name in header]
    if not header:
        raise ValueError("a table needs at least one column")
    formats = [""] * len(header) if formats is None else list(formats)
    if len(formats) != len(header):
        raise ValueError(f"{len(formats)} formats for {len(header)} columns")
    cells: list[list[tuple[str, bool]]] = []
    for k, row in enumerate(rows):
        if isinstance(row, Mapping):
            missing = [name for name in header if name not in row]
            if missing:
                raise ValueError(f"row {k} lacks the column(s) {missing}")
            values = [row[name] for name in header]
        else:
            values = list(row)
            if len(values) != len(header):
                raise ValueError(f"row {k} has {len(values)} values for {len(header)} columns")
        cells.append([_cell(value, fmt) for value, fmt in zip(values, formats)])
    widths = [max([len(name)] + [len(row[j][0]) for row in cells]) for j, name in enumerate(header)]
    numeric = [bool(cells) and all(row[j][1] for row in cells) for j in range(len(header))]

    def line(texts: Sequence[str]) -> str:
        parts = [text.rjust(w) if num else text.ljust(w) for text, w, num in zip(texts, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line([text for text, _ in row]) for row in cells]
    too_long = [text for text in lines if len(text) > width]
    if too_long:
        raise ValueError(f"a table line has {len(too_long[0])} characters, more than {width}: {too_long[0]!r}")
    return "\n".join(lines)


def print_table(rows: Sequence[Sequence[Any] | Mapping[str, Any]], header: Sequence[str],
                formats: Sequence[str] | None = None, *, width: int = 74) -> None:
    """Print :func:`format_table` of the same arguments."""
    print(format_table(rows, header, formats, width=width))
