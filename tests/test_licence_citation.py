"""Licence and citation files agree with each other, with the package and with the bibliography."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_licence_file_is_mit_and_names_the_text_licence():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "CC BY 4.0" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "MIT"}


def test_readme_and_footer_state_both_licences():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "MIT" in readme and "CC BY 4.0" in readme
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    footer = config["html"]["extra_footer"]
    assert "CC BY 4.0" in footer and "MIT" in footer


def test_citation_file_is_complete_and_matches_the_bibliography():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    for key in ("cff-version", "message", "title", "authors", "license", "references"):
        assert key in cff, key
    assert cff["cff-version"] == "1.2.0"
    assert set(cff["license"]) == {"MIT", "CC-BY-4.0"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert str(cff["version"]) == project["version"]
    bib = (ROOT / "references.bib").read_text(encoding="utf-8")
    for reference in cff["references"]:
        arxiv = next(i["value"] for i in reference["identifiers"] if i["value"].startswith("arXiv:"))
        eprint = arxiv.removeprefix("arXiv:")
        assert re.search(rf"eprint\s*=\s*{{{re.escape(eprint)}}}", bib), f"{arxiv} is not in references.bib"
        assert reference["title"].lower() in bib.lower(), reference["title"]
    assert {r["identifiers"][0]["value"] for r in cff["references"]} == {"arXiv:2507.16003", "arXiv:2512.11255"}


def test_introduction_has_a_how_to_cite_section():
    import json

    cells = json.loads((ROOT / "book" / "intro.ipynb").read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "## How to cite" in text
    assert "{cite:t}`dherin2025learning`" in text and "{cite:t}`innocenti2025simple`" in text
    assert "CC BY 4.0" in text and "MIT" in text
