"""Numbers quoted in the prose of every chapter come from the code (issue 21, item 1).

A measured number in a chapter's markdown must be glued from the cell that computes it
(``{glue:text}`name``` with :func:`icl_lib.experiments.glue.glue`), or appear in one of the
chapter's outputs, or be listed below with the reason it needs neither. The test reads the
committed notebooks; it cannot tell a measured number from any other, so it looks at every
decimal number, percentage and number in scientific notation (``0.919``, ``3%``, ``2.1e-08``) outside
equations, code, roles and directive options. Integers (sizes, counts, years, section and
figure numbers) are not checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))

# Numbers that the prose may quote without an output or a glue: constants and settings that
# no cell measures, per chapter ("*" for every chapter). Each entry says why.
ALLOWED: dict[str, dict[str, str]] = {
    "*": {},
    "02": {
        "0.03": "a setting: the smallest scale drawn for a null-space matrix E",
        "10%": "a threshold the prose names (where the deployed patch's error crosses it)",
    },
    "04": {"5.4": "arithmetic: 2^29, the ratio of the machine epsilons of float32 and float64"},
    "05": {"0.1": "the tolerance of an assert on the fitted exponent"},
    "06": {
        "0.01": "v1's fine-tuning learning rate, a setting",
        "0.129": "chapter 4's validation loss, the bound the training cell asserts",
        "80%": "the bound better[i] >= 0.8 that the paired cell asserts from i = 10 on",
        "0.3": "the bound |cos_F| < 0.3 that the alignment cell asserts",
        "0.9": "the bound cos_F > 0.9 that the alignment cell asserts for the full weights",
    },
    "07": {"1.2": "float32's machine epsilon, 1.19e-07", "2.2": "float64's machine epsilon, 2.22e-16"},
    "08": {"0.03": "arithmetic: 1/sqrt(1024), the typical cosine of two random directions"},
    "09": {"0.2": "the tolerance of an assert on the fitted exponents"},
    "11": {"1.5": "a model's name, Phi-1.5"},
    "14": {
        "34.6": "arithmetic: 9 z^2 with z = 1.96, where the all-correct Wilson bound reaches 0.9",
        "2510.08734": "an arXiv identifier (Mazzawi et al.)",
        "0.6": "part of a model's name, Qwen3-0.6B",
    },
    "13": {"87.5": "a figure reported by Goldwaser et al. (naive bfloat16 token agreement), quoted with its source"},
    "15": {"2310.15213": "an arXiv identifier (Todd et al.)", "2310.15916": "an arXiv identifier (Hendel et al.)"},
    "10": {
        "2.5": "a bin edge of the distance table (the rise up to it is asserted)",
        "1.5": "a bin edge of the distance table (the crossing near it is asserted)",
    },
}

# What is removed before looking for numbers: display maths, code, MyST roles and their
# targets, directive options, links and HTML comments. Inline maths stays, but only its plain
# decimals count (``$\pm 0.3$``), not exponents or indices.
STRIP = [
    re.compile(r"\$\$.*?\$\$", re.DOTALL),
    re.compile(r"(?i)\b(?:Sections?|Sec\.|Figs?\.|Figures?|Tables?|Eq\.|Chapters?)\s+\d+(?:\.\d+)+"),
    re.compile(r"```[^\n]*\n"),  # the opening line of a fence: directive and argument
    re.compile(r"^\s*:[\w-]+:.*$", re.MULTILINE),  # directive options
    re.compile(r"`[^`\n]*`"),  # inline code and role targets
    re.compile(r"\{[\w:-]+\}"),  # role names
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<!--.*?-->", re.DOTALL),
]
NUMBER = re.compile(r"(?<![\w.^_{])-?(?:\d+(?:\.\d+)?\\?%|\d+\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+)(?![\w.]*\d)")
GLUE = re.compile(r"\{glue(?::text)?\}`([^`]+)`")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def prose_numbers(nb: dict) -> list[tuple[int, str]]:
    """(cell index, number) for every decimal or scientific number in the markdown."""
    found = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for pattern in STRIP:
            text = pattern.sub(" ", text)
        found += [(index, m.group().lstrip("-").replace("\\%", "%")) for m in NUMBER.finditer(text)]
    return found


def outputs_and_glue(nb: dict) -> tuple[str, set[str]]:
    """All text the code cells output (glued values included), and the names glued."""
    texts, names = [], set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            for mime, value in out.get("data", {}).items():
                if mime.endswith("text/plain") or mime == "text/markdown":
                    texts.append("".join(value) if isinstance(value, list) else value)
            scrapbook = out.get("metadata", {}).get("scrapbook")
            if scrapbook:
                names.add(scrapbook["name"])
    return "\n".join(texts), names


def glue_references(nb: dict) -> list[tuple[int, str]]:
    found = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            for ref in GLUE.findall(source):  # "key:fmt", or "OTHER.ipynb::key:fmt" (another chapter's)
                other, _, rest = ref.rpartition("::")
                found.append((index, f"{other}::{rest.split(':')[0]}" if other else ref.split(":")[0]))
    return found


def supported(number: str, outputs: str) -> bool:
    """True when ``number`` stands in the outputs as a number of its own (not inside another); a
    percentage also when its fraction is printed (3% as 0.03)."""
    forms = [number]
    if number.endswith("%"):
        forms.append(f"{float(number[:-1]) / 100:g}")
    return any(re.search(rf"(?<![\w.]){re.escape(form)}(?![\w]|\.\d)", outputs) for form in forms)


def test_the_extraction():
    nb = {"cells": [{"cell_type": "markdown", "source": [
        "A loss of 0.129, an error of 2.1e-08 and $10^{-8}$ or $0.5$; in 2025, Fig. 3, "
        "section 4.4 of v1, a rate of -0.3 and 7.5%.\n```{prf:definition} Rate 0.3\n:label: x-1.5\n"
        "```\n`0.25` and {glue:text}`loss` [link](a/1.5.html)"]}]}
    assert [n for _, n in prose_numbers(nb)] == ["0.129", "2.1e-08", "0.5", "0.3", "7.5%"]
    assert supported("0.13", "loss 0.13, then") and not supported("0.13", "loss 0.135")
    assert not supported("3.3", "13.3") and supported("1.2e-07", "max 1.2e-07;")
    assert supported("3%", "ratio 0.03") and supported("57%", "pairs: 57%") and not supported("4%", "0.03")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_is_glued_printed_or_listed(path: Path):
    nb = load(path)
    outputs, _ = outputs_and_glue(nb)
    allowed = {**ALLOWED["*"], **ALLOWED.get(path.stem[:2], {})}
    unsupported = [(index, number) for index, number in prose_numbers(nb)
                   if number not in allowed and not supported(number, outputs)]
    assert not unsupported, (
        f"{path.name}: numbers in the prose that no output or glue of the chapter shows, as "
        f"(cell, number): {unsupported}; glue them with icl_lib.experiments.glue.glue and "
        "{glue:text}`name`, print them, or list them in ALLOWED with the reason")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_glue_reference_has_its_value_in_the_chapter(path: Path):
    nb = load(path)
    _, names = outputs_and_glue(nb)

    def glued(name: str) -> bool:
        other, _, key = name.rpartition("::")
        return key in (outputs_and_glue(load(path.parent / other))[1] if other else names)

    missing = [(index, name) for index, name in glue_references(nb) if not glued(name)]
    assert not missing, f"{path.name}: glue references without a glued value: {missing}"
