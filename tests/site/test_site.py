"""The rendered book as a reader sees it: every page of `_toc.yml` in headless Chromium.

Run by `make site` (after `make book`); `make unit` does not collect this folder. Each page is
opened once in each colour mode of the theme, light and dark (see conftest.py); each test below
judges one aspect of what the browser saw, so a failure names the page, the mode and the problem.
Screenshots land in `_build/screenshots/NAME.png` (light) and `NAME-dark.png` (dark).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest

from sitecheck import HTML, MODES, PROOF_TYPES, ROOT, RenderedPage, TocPage, html_ids, local_target, toc_pages


def colab_cells():
    """tests/colab_cells.py, which reads the repository and branch from _config.yml (the one place
    that names them) and writes the notebooks' install cells from it."""
    module = sys.modules.get("colab_cells")
    if module is None:
        spec = importlib.util.spec_from_file_location("colab_cells", ROOT / "tests" / "colab_cells.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["colab_cells"] = module
        spec.loader.exec_module(module)
    return module


PAGES = toc_pages()
VIEWS = [(page, mode) for page in PAGES for mode in MODES]
# The launch link Jupyter Book builds from _config.yml's repository.url and repository.branch:
# COLAB_PREFIX + NAME.ipynb, with COLAB_PREFIX = https://colab.research.google.com/github/OWNER/
# REPO/blob/BRANCH/book/.
COLAB_PREFIX = colab_cells().load_source().colab_prefix
COLAB = COLAB_PREFIX + "{}.ipynb"
COLAB_ANY = re.compile("^" + re.escape(COLAB_PREFIX) + r"(?P<name>[A-Za-z0-9_]+)\.ipynb$")

# TeX that MathJax should have replaced: delimiters, and control words outside code.
RAW_TEX = {
    r"\( or \)": re.compile(r"\\[()]"),
    r"\[ or \]": re.compile(r"\\[\[\]]"),
    "$$": re.compile(r"\$\$"),
    "$...$": re.compile(r"\$[^\s$][^$]{0,200}?\$"),
    r"\command": re.compile(r"\\[A-Za-z]{2,}"),
    "_{ or ^{": re.compile(r"[_^]\{"),
}
# MyST syntax that should have become something else.
RAW_MYST = {
    "directive fence": re.compile(r"(```|~~~|:::)\s*\{[\w:.-]+\}"),
    "prf: role or directive": re.compile(r"\{prf:"),
    "role": re.compile(r"\{[A-Za-z][\w:.-]*\}`"),
    "named role": re.compile(r"\{(cite(:\w+)?|doc|ref|numref|eq|eval-rst|math|term|download)\}"),
    "directive option": re.compile(r"(^|\s):(label|class|name|nonumber|caption|tags|numref):(\s|$)"),
    "unresolved reference (??)": re.compile(r"\?\?"),
}


@pytest.fixture(params=VIEWS, ids=[f"{page.name}-{mode}" for page, mode in VIEWS])
def rendered(request, site) -> RenderedPage:
    page, mode = request.param
    return site.render(page, mode)


def context_of(text: str, match: re.Match, width: int = 50) -> str:
    return "…" + text[max(0, match.start() - width): match.end() + width] + "…"


def test_toc_lists_pages():
    names = [page.name for page in PAGES]
    assert names and names[0] == "intro", names
    assert {"api", "references"} <= set(names), names
    assert len(set(names)) == len(names), f"two pages share a name: {names}"


def test_index_redirects_to_the_first_page(site):
    context = site.new_context()
    try:
        tab = context.new_page()
        tab.goto(site.url + "/index.html")
        tab.wait_for_url(site.url + PAGES[0].url_path)
    finally:
        context.close()


def test_no_javascript_errors(rendered):
    # Nothing is ignored: with MathJax served locally, the theme logs no error of its own.
    errors = [f"page error: {e}" for e in rendered.page_errors] + [
        f"console error: {e}" for e in rendered.console_errors]
    assert not errors, f"{rendered.url}:\n" + "\n".join(errors)


def test_no_failed_or_external_requests(rendered):
    """Every resource a page needs is part of the book (MathJax aside, which the test serves)."""
    assert not rendered.failed_requests, f"{rendered.url}: requests failed:\n" + "\n".join(
        rendered.failed_requests)
    assert not rendered.blocked_requests, (
        f"{rendered.url} asked for resources outside the book (blocked by the test):\n"
        + "\n".join(rendered.blocked_requests))


def test_images_load(rendered):
    broken = [img["src"] for img in rendered.dom["images"]
              if not (img["complete"] and img["naturalWidth"] > 0)]
    assert not broken, f"{rendered.url}: images that did not load: {broken}"


def test_maths_is_typeset(rendered):
    math = rendered.dom["math"]
    if math["nodes"]:
        assert rendered.mathjax == "done", f"{rendered.url}: MathJax did not run ({rendered.mathjax})"
        assert not math["untypeset"], f"{rendered.url}: math nodes left untypeset: {math['untypeset']}"
        assert math["containers"] >= math["nodes"], math
    assert not math["errors"], f"{rendered.url}: MathJax reports TeX errors: {math['errors']}"
    text = rendered.dom["prose"]
    leaks = [f"{name}: {context_of(text, m)}" for name, pattern in RAW_TEX.items()
             for m in pattern.finditer(text)]
    assert not leaks, f"{rendered.url}: raw TeX in the text:\n" + "\n".join(leaks[:20])


def test_no_raw_myst(rendered):
    text = rendered.dom["markup"]
    leaks = [f"{name}: {context_of(text, m)}" for name, pattern in RAW_MYST.items()
             for m in pattern.finditer(text)]
    assert not leaks, f"{rendered.url}: MyST syntax leaks into the page:\n" + "\n".join(leaks[:20])


def source_markdown(page: TocPage) -> str:
    """The Markdown of the page's source as built (markdown cells of a notebook, or the .md)."""
    path = page.source()
    assert path is not None, f"no source of {page.docname} in _build/html/_sources"
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


PRF_DIRECTIVE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{prf:(?P<kind>[a-z]+)\}[ \t]*(?P<title>.*?)[ \t]*$",
                           re.MULTILINE)


def test_theorem_boxes_render(rendered):
    """Each {prf:...} directive of the source is a visible box of its kind, with its title."""
    wanted = [(m["kind"], m["title"]) for m in PRF_DIRECTIVE.finditer(source_markdown(rendered.page))]
    boxes = rendered.dom["proofBoxes"]
    got = [next((c for c in box["classes"] if c in PROOF_TYPES), "proof") for box in boxes]
    assert got == [kind for kind, _ in wanted], (
        f"{rendered.url}: source directives {[k for k, _ in wanted]} but rendered boxes {got}")
    for (kind, title), box in zip(wanted, boxes):
        assert box["visible"], f"{rendered.url}: the {kind} box '{title}' is not visible"
        label = "Proof" if kind == "proof" else kind.capitalize()
        assert box["title"].startswith(label), f"{rendered.url}: {kind} box titled {box['title']!r}"
        # The title's words (its maths aside, which MathJax rewrote) appear in the rendered title.
        words = re.findall(r"[A-Za-z0-9]+", re.sub(r"\$[^$]*\$", " ", title))
        missing = [w for w in words if w not in box["title"]]
        assert not missing, f"{rendered.url}: {kind} box {box['title']!r} lacks {missing} of {title!r}"


def test_cross_references_resolve(rendered, site):
    assert not rendered.dom["unresolved"], (
        f"{rendered.url}: unresolved references:\n" + "\n".join(rendered.dom["unresolved"]))
    broken = []
    for url in sorted(set(rendered.dom["links"])):
        target = local_target(url, site.url)
        if target is None:
            continue
        path, fragment = target
        if not path.is_file():
            broken.append(f"{url}: no file {path.relative_to(HTML)}")
        elif fragment and path.suffix == ".html" and fragment not in html_ids(path):
            broken.append(f"{url}: no anchor #{fragment} in {path.relative_to(HTML)}")
    assert not broken, f"{rendered.url}: links to nothing:\n" + "\n".join(broken)


def test_content_fits_the_text_column(rendered):
    """Code, outputs, display maths and tables fit the column at a desktop width (1280 px)."""
    wide = [f"{b['kind']} {b['width']} px in a {b['column']} px column: {b['text']}"
            for b in rendered.dom["overflowing"]]
    assert not wide, (f"{rendered.url}: blocks wider than the text column (the reader must scroll "
                      "sideways; wrap code lines and split long equations):\n" + "\n".join(wide))


def test_colab_links(rendered):
    colab = sorted({url for url in rendered.dom["links"] if "colab.research.google.com" in url})
    for url in colab:
        match = COLAB_ANY.match(url)
        assert match, f"{rendered.url}: malformed Colab link {url}"
        assert (ROOT / "book" / f"{match['name']}.ipynb").exists(), f"{rendered.url}: {url} names no chapter"
    if rendered.page.is_chapter:
        expected = COLAB.format(rendered.page.name)
        assert expected in colab, f"{rendered.url}: no launch link {expected} (found {colab})"


def test_screenshot_saved(rendered):
    from PIL import Image

    assert rendered.screenshot is not None and rendered.screenshot.exists()
    with Image.open(rendered.screenshot) as image:
        width, height = image.size
        assert width >= 1000 and height >= 600, (width, height)
        # A blank page is one colour: a rendered page has text, so many distinct colours.
        colours = image.convert("RGB").resize((200, 200)).getcolors(maxcolors=200 * 200)
        assert len(colours) > 20, f"{rendered.screenshot} looks blank"


def test_page_is_in_the_requested_colour_mode(rendered):
    assert rendered.dom["theme"] == rendered.mode, (
        f"{rendered.url}: opened with the system preference {rendered.mode!r} but the theme shows "
        f"{rendered.dom['theme']!r}")


def test_text_is_readable(rendered):
    """Every visible text, with dropdowns and hidden cells opened, has WCAG AA contrast against
    what is painted behind it (4.5:1, large text 3:1), in light and in dark mode."""
    faint = [f"{f['ratio']} < {f['needed']}: {f['color']} on {f['background']} in {f['where']}: "
             f"{f['text']!r}" for f in rendered.low_contrast]
    assert not faint, (f"{rendered.url} ({rendered.mode} mode): text with too little contrast:\n"
                       + "\n".join(faint[:25]))


def test_figures_sit_on_a_light_background(rendered):
    """A figure's axes, labels and legends are drawn dark on white (matplotlib's default): in dark
    mode each figure keeps a light background of its own (book/_static/custom.css)."""
    if rendered.mode != "dark":
        pytest.skip("light mode: the page itself is white")
    for figure in rendered.dom["figures"]:
        match = re.match(r"rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?", figure["background"])
        assert match, figure
        r, g, b = (float(v) for v in match.groups()[:3])
        alpha = float(match.group(4)) if match.group(4) is not None else 1.0
        assert alpha == 1.0 and min(r, g, b) >= 230, (
            f"{rendered.url}: figure {figure['src']} has background {figure['background']} in dark mode")


EXERCISE_DIRECTIVE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{exercise\}", re.MULTILINE)
SOLUTION_DIRECTIVE = re.compile(r"^[ \t]*(?:`{3,}|:{3,})\{solution(?:-start)?\}[ \t]*(?P<target>\S+)",
                                re.MULTILINE)


def test_exercises_render_with_their_solutions_hidden(rendered):
    """Each {exercise} of the source is a visible box; each solution names its exercise, starts
    collapsed (a dropdown), and opens when clicked."""
    source = source_markdown(rendered.page)
    wanted_exercises = EXERCISE_DIRECTIVE.findall(source)
    wanted_solutions = [m["target"] for m in SOLUTION_DIRECTIVE.finditer(source)]
    exercises, solutions = rendered.dom["exercises"], rendered.dom["solutions"]
    assert len(exercises) == len(wanted_exercises), (
        f"{rendered.url}: {len(wanted_exercises)} exercise directives but {len(exercises)} boxes")
    assert all(box["visible"] and box["title"].startswith("Exercise") for box in exercises), exercises
    assert [s["exercise"] for s in solutions] == wanted_solutions, (
        f"{rendered.url}: solutions link to {[s['exercise'] for s in solutions]}, "
        f"the source has {wanted_solutions}")
    for solution in solutions:
        assert solution["dropdown"] and solution["contentVisible"] is False, (
            f"{rendered.url}: the solution of {solution['exercise']} is not hidden by default")
    assert rendered.opened.get("visible") == len(solutions), (
        f"{rendered.url}: after clicking, {rendered.opened} solutions are visible")
