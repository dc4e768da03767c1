"""The book's one nbval sanitize file and the round-off convention it relies on.

Convention (book/sanitize.cfg): a figure whose digits are floating-point round-off is printed
with ``f"{x:.1e}"`` (one decimal) by a cell that asserts a bound on it; every other number in
scientific notation has two or more decimals or none. nbval then masks exactly the round-off.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))
# f"{x:.1e}" in a print, or ".1e" as the format of icl_lib.glue (a value glued into the prose)
ONE_DECIMAL_FORMAT = re.compile(r":[<>^+\- ]?\d*\.1e\}|[\"']\.1e[\"']")


def sanitize_rules() -> dict[str, tuple[re.Pattern[str], str]]:
    """The ``[name]`` / ``regex:`` / ``replace:`` triples of the sanitize file, as nbval reads them."""
    rules, name, regex = {}, None, None
    for line in (BOOK / "sanitize.cfg").read_text().splitlines():
        if line.startswith("["):
            name = line.strip("[]")
        elif line.startswith("regex: "):
            regex = re.compile(line.removeprefix("regex: "))
        elif line.startswith("replace: "):
            assert name is not None and regex is not None, "a replace: line without its section and regex:"
            rules[name] = (regex, line.removeprefix("replace: "))
            regex = None
    return rules


def sanitize(text: str) -> str:
    for regex, replacement in sanitize_rules().values():
        text = regex.sub(replacement, text)
    return text


def test_the_file_has_one_roundoff_rule_and_the_address_rule():
    assert sorted(sanitize_rules()) == ["address", "roundoff"]


@pytest.mark.parametrize(
    "printed",
    ["3.2e-08", "5.2e-05", "2.2e-05", "0.0e+00", "-4.7e-05", "1.1e-16", "7.2e-14", "9.9e+11", "1.6e-123"],
)
def test_every_one_decimal_figure_is_masked_whatever_its_exponent(printed):
    assert sanitize(f"largest {printed}, median {printed};") == "largest ROUNDOFF, median ROUNDOFF;"


@pytest.mark.parametrize("printed", ["1.19e-07", "-4.70e-05", "13.2e-08", "1e-08", "4e+11", "0.129", "1.07e+04", "10.31"])
def test_numbers_outside_the_convention_are_compared_as_printed(printed):
    assert sanitize(f"value {printed}.") == f"value {printed}."


def test_addresses_are_masked():
    assert sanitize("<Foo object at 0x7f3a2c1b9d30>") == "<Foo object at 0xADDRESS>"


def code_cells(path: Path) -> list[tuple[int, str, str]]:
    """(index among code cells, source, text of the outputs) for every code cell of a chapter."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    found = []
    for index, cell in enumerate(cells):
        texts = []
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            for mime, value in output.get("data", {}).items():
                # text/plain, and the hidden text/plain of a value glued with myst-nb
                if mime.endswith("text/plain"):
                    texts.append("".join(value))
        found.append((index, "".join(cell["source"]), "".join(texts)))
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_roundoff_figures_come_from_cells_that_bound_them(path):
    """A one-decimal figure in an output is printed by a cell that formats with .1e and asserts."""
    masked = sanitize_rules()["roundoff"][0]
    cells = code_cells(path)
    for index, source, outputs in cells:
        if masked.search(outputs):
            assert ONE_DECIMAL_FORMAT.search(source), (
                f"{path.name}, code cell {index}: prints a one-decimal figure "
                f"({masked.search(outputs).group()}) that is not formatted with .1e: nbval would mask a "
                "number that is not round-off (print it with two decimals, e.g. .2e or .3g)"
            )
        if ONE_DECIMAL_FORMAT.search(source):
            # some chapters print a table in one cell, plot it in the next and assert after
            asserted_soon_after = any("assert" in later for _, later, _ in cells[index + 1 : index + 3])
            assert "assert" in source or asserted_soon_after, (
                f"{path.name}, code cell {index}: prints a round-off figure (.1e) without asserting a bound"
            )

