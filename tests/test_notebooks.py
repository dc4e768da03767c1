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
CHAPTERS = sorted(p for p in BOOK.glob("*.ipynb"))

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


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
class TestChapter:
    def test_name_and_kernel(self, path: Path):
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), "chapters are named NN_slug.ipynb"
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
