"""Hygiene of the committed chapter notebooks (what keeps nbval green on every machine).

These tests read the notebooks as JSON; they do not execute them (nbval does that).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
# Every notebook of the book: the introduction (book/intro.ipynb, the root page) and the chapters.
NOTEBOOKS = sorted(p for p in BOOK.glob("*.ipynb"))
CHAPTER_NAME = re.compile(r"\d\d[a-z]?_[a-z0-9_]+\.ipynb")  # 11b: a chapter split after 11
CHAPTERS = [p for p in NOTEBOOKS if CHAPTER_NAME.fullmatch(p.name)]

# Paths of this or any machine, and object reprs with memory addresses, must not leak into outputs.
MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/tmp/|/Users/|site-packages|[A-Z]:\\\\)")
MEMORY_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def output_texts(nb: dict):
    """Yield (cell index, text) for every textual output."""
    for index, cell in enumerate(code_cells(nb)):
        for out in cell.get("outputs", []):
            if "text" in out:
                yield index, "".join(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    yield index, "".join(value) if isinstance(value, list) else value


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks under book/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
class TestChapter:
    def test_name_and_kernel(self, path: Path):
        assert path.name == "intro.ipynb" or CHAPTER_NAME.fullmatch(path.name), (
            "notebooks are the introduction, intro.ipynb, and chapters named NN_slug.ipynb")
        nb = load(path)
        assert nb["nbformat"] == 4
        assert nb["metadata"]["kernelspec"]["name"] == "python3"

    def test_executed_top_to_bottom(self, path: Path):
        counts = [cell["execution_count"] for cell in code_cells(load(path))]
        assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}: run `make notebooks`"
        for cell in code_cells(load(path)):
            for out in cell.get("outputs", []):
                if out["output_type"] == "execute_result":
                    assert out["execution_count"] == cell["execution_count"]

    def test_no_errors_no_stderr(self, path: Path):
        for cell in code_cells(load(path)):
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", f"error output in {path.name}: {out.get('ename')}"
                assert out.get("name") != "stderr", f"stderr output in {path.name}: {''.join(out.get('text', ''))[:200]}"

    def test_colab_cell_then_seeded_imports(self, path: Path):
        cells = code_cells(load(path))
        colab, imports = cells[0], cells[1]
        source = "".join(colab["source"])
        assert '"google.colab" in sys.modules' in source and "pip install" in source
        assert "remove-cell" in colab["metadata"].get("tags", [])
        assert colab.get("outputs", []) == [], "the Colab cell prints nothing outside Colab"
        imports_source = "".join(imports["source"])
        assert "import icl_lib as icl" in imports_source and "icl.seed_everything(" in imports_source

    def test_outputs_are_machine_independent(self, path: Path):
        for index, text in output_texts(load(path)):
            assert not MACHINE_PATH.search(text), f"cell {index}: machine path in output: {text[:200]!r}"
            assert not MEMORY_ADDRESS.search(text), f"cell {index}: memory address in output: {text[:200]!r}"

    def test_figures_are_png(self, path: Path):
        for cell in code_cells(load(path)):
            for out in cell.get("outputs", []):
                images = [mime for mime in out.get("data", {}) if mime.startswith("image/")]
                assert all(mime == "image/png" for mime in images), f"non-PNG figure {images} in {path.name}"

    def test_every_claim_ends_in_asserts(self, path: Path):
        if path.name == "intro.ipynb":
            pytest.skip("the introduction states no result of its own: it draws one schematic")
        sources = "".join("".join(cell["source"]) for cell in code_cells(load(path)))
        assert "assert " in sources, "a chapter checks its claims with asserts"


def test_table_of_contents_lists_every_chapter_once():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = re.findall(r"file:\s*book/([\w/]+)", toc)
    chapters = [p.stem for p in CHAPTERS]
    assert sorted(set(listed) & set(chapters)) == chapters, "every chapter appears in _toc.yml"
    assert len(listed) == len(set(listed)), "no file appears twice in _toc.yml"
    for name in listed:
        assert (BOOK / f"{name}.ipynb").exists() or (BOOK / f"{name}.md").exists(), f"{name} is in _toc.yml but missing"


EXERCISE = re.compile(r"^```\{exercise\}[ \t]*(?P<title>.+)\n:label:[ \t]*(?P<label>\S+)", re.MULTILINE)
SOLUTION = re.compile(r"^```\{solution(?P<gated>-start)?\}[ \t]*(?P<target>\S+)\n(?P<options>(?::[\w-]+:.*\n?)*)",
                      re.MULTILINE)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_ends_with_exercises_and_folded_solutions(path: Path):
    """Every chapter ends with an Exercises section: 3-5 sphinx-exercise boxes, one of them an open
    question, each followed by its solution folded away (a dropdown); a solution with code runs
    inside the chapter and its last code cell ends in an assert (so nbval checks it)."""
    cells = load(path)["cells"]
    starts = [i for i, c in enumerate(cells)
              if c["cell_type"] == "markdown" and "".join(c["source"]).startswith("## Exercises")]
    assert len(starts) == 1, "one '## Exercises' section per chapter"
    tail = cells[starts[0]:]
    text = "\n\n".join("".join(c["source"]) for c in tail if c["cell_type"] == "markdown")
    assert not re.search(r"^#{1,2} ", text.split("\n", 1)[1], re.MULTILINE), "the exercises come last"
    exercises = EXERCISE.findall(text)
    assert 3 <= len(exercises) <= 5, f"{len(exercises)} exercises"
    labels = [label for _, label in exercises]
    assert len(set(labels)) == len(labels)
    assert all(label.startswith(f"ex-{path.name[:2]}-") for label in labels), labels
    assert sum(title.startswith("Open question") for title, _ in exercises) == 1, "one open question"
    solutions = list(SOLUTION.finditer(text))
    assert [s["target"] for s in solutions] == labels, "each exercise is followed by its solution"
    assert all(":class: dropdown" in s["options"] for s in solutions), "solutions are hidden by default"
    inside, last_code = False, None
    for cell in tail:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            assert inside, "every code cell of the exercises belongs to a solution"
            last_code = source
            continue
        if "{solution-end}" in source:
            assert inside and last_code is not None, "a gated solution holds code"
            last_line = [line for line in last_code.splitlines() if line.strip()][-1]
            assert last_line.lstrip().startswith("assert "), f"a computed solution ends in an assert: {last_line!r}"
            inside, last_code = False, None
        if "{solution-start}" in source:
            assert source.rfind("{solution-start}") > source.rfind("{solution-end}")
            inside = True
    assert not inside, "a solution-start without its solution-end"
