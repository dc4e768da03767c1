"""Machinery of the browser check (tests/site): the pages of _toc.yml, the local server, the
network rules, and what is collected from each page in Chromium. The pytest fixtures that use it
are in conftest.py; the checks are in test_site.py.

Nothing reaches the network: Chromium resolves no host but 127.0.0.1, and every request that is
not for the local server is aborted and recorded, except the MathJax CDN URL that the pages ask
for, which is answered from a local copy of the same MathJax 3 release (installed by `make site`
from the npm registry into `_build/mathjax`).

Every page is opened twice, once in each colour mode of the theme (the reader's system preference
"light" or "dark", which the theme follows on a first visit since `default_mode` is `auto`):
screenshots `NAME.png` and `NAME-dark.png`.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The built book (another folder may be checked by setting SITE_HTML_DIR).
HTML = Path(os.environ.get("SITE_HTML_DIR", ROOT / "_build" / "html")).resolve()
SCREENSHOTS = ROOT / "_build" / "screenshots"
# Where `make site` puts the npm package `mathjax` (its es5/ folder is what the CDN serves).
MATHJAX = Path(os.environ.get("SITE_MATHJAX_DIR", ROOT / "_build" / "mathjax" / "node_modules" / "mathjax"))
# The pages load MathJax 3 from jsDelivr (Sphinx's default mathjax_path); any 3.x tag or version.
MATHJAX_CDN = re.compile(r"^https://cdn\.jsdelivr\.net/npm/mathjax@3(?:\.[0-9.]+)?/(?P<path>[^?#]+)")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # Belt and braces beside the request routing: no host name resolves except the local server.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
VIEWPORT = {"width": 1280, "height": 900}
# The theme's two colour modes, as the reader's system preference (prefers-color-scheme).
MODES = ("light", "dark")
# WCAG 2.1 contrast ratios for text: 4.5 for body text, 3 for large text (24 px, or 18.66 px bold).
MIN_CONTRAST, MIN_CONTRAST_LARGE = 4.5, 3.0
# Every browser wait (launch, load, network idle): generous, because this 2-core virtual machine
# has slow spells; 30 s once timed out waiting for chapter 2's late requests while the page was fine.
TIMEOUT_MS = 90_000

# Types of sphinx-proof directives (each renders as <div class="proof TYPE admonition">; a proof
# renders as <div class="proof admonition">).
PROOF_TYPES = (
    "axiom", "theorem", "lemma", "definition", "remark", "conjecture", "corollary", "algorithm",
    "criterion", "example", "property", "observation", "proposition", "assumption", "notation",
)


# --------------------------------------------------------------------------------------------
# The pages of the table of contents
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TocPage:
    """One page of `_toc.yml`: its docname (e.g. "book/02_theorem") and where its source is."""

    docname: str

    @property
    def name(self) -> str:
        """The file stem, used for test ids and screenshot names (e.g. "02_theorem")."""
        return self.docname.rsplit("/", 1)[-1]

    @property
    def html(self) -> Path:
        return HTML / f"{self.docname}.html"

    @property
    def url_path(self) -> str:
        return f"/{self.docname}.html"

    def source(self) -> Path | None:
        """The source as Sphinx copied it into `_sources` at build time (.ipynb or .md)."""
        for suffix in (".ipynb", ".md"):
            path = HTML / "_sources" / f"{self.docname}{suffix}"
            if path.exists():
                return path
        return None

    @property
    def is_chapter(self) -> bool:
        """Chapters are the notebooks: they have a Colab launch link."""
        return (ROOT / f"{self.docname}.ipynb").exists()


def _toc_files(entries: list) -> list[str]:
    files: list[str] = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("sections", "chapters", "parts"):
            files.extend(_toc_files(entry.get(key, [])))
    return files


def toc_pages() -> list[TocPage]:
    """Every page of `_toc.yml` in reading order: the root, then each part's chapters."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]] + _toc_files(toc.get("parts", [])) + _toc_files(toc.get("chapters", []))
    names = [re.sub(r"\.(md|ipynb)$", "", f) for f in files]
    return [TocPage(name) for name in names]


# --------------------------------------------------------------------------------------------
# What the browser saw on one page
# --------------------------------------------------------------------------------------------

@dataclass
class RenderedPage:
    page: TocPage
    url: str
    mode: str = "light"                     # the colour mode it was opened in (see MODES)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    blocked_requests: list[str] = field(default_factory=list)
    mathjax: str = ""                       # "done", "absent" (no MathJax on the page), "timeout"
    dom: dict = field(default_factory=dict)  # what COLLECT_JS returned
    # What CONTRAST_JS returned once every dropdown and hidden cell was opened: text too faint.
    low_contrast: list[dict] = field(default_factory=list)
    opened: dict = field(default_factory=dict)  # solutions visible after opening (see OPEN_ALL_JS)
    screenshot: Path | None = None


# Runs in the page once it has loaded, its images have settled and MathJax has finished.
COLLECT_JS = r"""
() => {
  const visible = (el) => el.checkVisibility({checkVisibilityCSS: true}) &&
                          el.getBoundingClientRect().height > 0;
  // Text of the page, element by element, skipping what is not prose.
  const textOf = (skip) => {
    const parts = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
      acceptNode: (node) => node.parentElement && node.parentElement.closest(skip)
        ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
    });
    while (walker.nextNode()) parts.push(walker.currentNode.nodeValue);
    return parts.join('').replace(/[ \t\r\n]+/g, ' ');
  };
  const never = 'script, style, noscript, template, textarea, svg, mjx-container';
  const mathNodes = [...document.querySelectorAll('.math')];
  return {
    images: [...document.images].map((img) => ({
      src: img.getAttribute('src'), complete: img.complete, naturalWidth: img.naturalWidth})),
    math: {
      nodes: mathNodes.length,
      untypeset: mathNodes.filter((el) => !el.querySelector('mjx-container'))
                          .map((el) => el.textContent.trim().slice(0, 80)),
      containers: document.querySelectorAll('mjx-container').length,
      // TeX errors: a syntax error becomes <merror>; an undefined macro (MathJax's noundefined
      // package) becomes red <mtext>. Both read from MathJax's own list of typeset expressions.
      errors: (window.MathJax && MathJax.startup && MathJax.startup.document
               ? [...MathJax.startup.document.math] : [])
        .filter((item) => /<merror|<mtext[^>]*mathcolor="red"/.test(MathJax.startup.toMML(item.root)))
        .map((item) => String(item.math).trim().slice(0, 120)),
    },
    // Prose: no code at all (code may hold "$" and backslashes on purpose).
    prose: textOf(never + ', pre, code, kbd, samp'),
    // Everything a MyST leak could land in: prose, cell outputs and plain literal blocks, but not
    // the code cells' source nor highlighted Python examples.
    markup: textOf(never + ', .cell_input, div[class*="highlight-python"], div[class*="highlight-ipython"], div[class*="highlight-pycon"]'),
    proofBoxes: [...document.querySelectorAll('div.proof.admonition')].map((el) => ({
      classes: [...el.classList],
      title: (el.querySelector(':scope > .admonition-title') ||
              el.querySelector(':scope > p') || el).textContent.replace(/\s+/g, ' ').trim(),
      visible: visible(el),
    })),
    // Blocks wider than the text column: the reader must scroll sideways to see all of them.
    overflowing: [...document.querySelectorAll(
        'article .cell_input pre, article .cell_output pre, article div.highlight pre, ' +
        'article mjx-container[display="true"], article .pst-scrollable-table-container')]
      .filter((el) => el.scrollWidth > el.clientWidth + 1)
      .map((el) => ({
        kind: el.closest('.cell_input') ? 'code cell' : el.closest('.cell_output') ? 'cell output'
          : el.tagName === 'MJX-CONTAINER' ? 'display maths' : el.tagName === 'PRE' ? 'literal block'
          : 'table',
        width: el.scrollWidth, column: el.clientWidth,
        text: (el.tagName === 'MJX-CONTAINER'
               ? (el.querySelector('mjx-assistive-mml') || el).textContent : el.textContent)
              .replace(/\s+/g, ' ').trim().slice(0, 70)})),
    unresolved: [...document.querySelectorAll(
        '.xref.missing, .problematic, .system-message, a.reference.internal:not([href])')]
      .map((el) => el.outerHTML.slice(0, 160)),
    links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
    theme: document.documentElement.dataset.theme || '',
    // sphinx-exercise boxes: exercises are shown, solutions start collapsed (a dropdown).
    exercises: [...document.querySelectorAll('article div.exercise.admonition')].map((el) => ({
      id: el.id, visible: visible(el),
      title: (el.querySelector(':scope > .admonition-title') || el).textContent.replace(/\s+/g, ' ').trim(),
    })),
    solutions: [...document.querySelectorAll('article div.solution.admonition')].map((el) => {
      const link = el.querySelector(':scope > .admonition-title a.reference');
      const content = el.querySelector(':scope > section, :scope > div, :scope > p:not(.admonition-title)');
      return {id: el.id, exercise: link ? decodeURIComponent(link.hash.slice(1)) : '',
              dropdown: el.classList.contains('dropdown'),
              contentVisible: content ? visible(content) : null};
    }),
    // The colour behind each figure of a cell output (the page's, where the image is transparent).
    figures: [...document.querySelectorAll('article .cell_output img')].map((img) => ({
      src: img.getAttribute('src'), background: getComputedStyle(img).backgroundColor})),
  };
}
"""

# Opens what a reader can open: every toggle (solutions, dropdown admonitions) and every <details>
# (hidden code cells); returns how many solutions are visible afterwards.
OPEN_ALL_JS = r"""
async () => {
  document.querySelectorAll('details').forEach((d) => { d.open = true; });
  document.querySelectorAll('button.toggle-button[aria-expanded="false"]').forEach((b) => b.click());
  await new Promise((r) => setTimeout(r, 300));
  const visible = (el) => el.checkVisibility({checkVisibilityCSS: true}) &&
                          el.getBoundingClientRect().height > 0;
  const solutions = [...document.querySelectorAll('article div.solution.admonition')];
  return {solutions: solutions.length,
          visible: solutions.filter((el) => {
            const c = el.querySelector(':scope > section, :scope > div, :scope > p:not(.admonition-title)');
            return c && visible(c);
          }).length};
}
"""

# The contrast of every visible piece of text in the article against what is painted behind it
# (the first ancestor's background colours, alpha-blended down from the page), by the WCAG 2.1
# formula; returns the pieces below the threshold. MathJax output and SVG icons are coloured
# through their container, which is checked instead.
CONTRAST_JS = r"""
([minContrast, minLarge]) => {
  const parse = (c) => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1});
  const luminance = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const backdrop = (el) => {
    const chain = [];
    for (let node = el; node; node = node.parentElement) chain.push(getComputedStyle(node).backgroundColor);
    let colour = {r: 255, g: 255, b: 255, a: 1};  // the canvas behind <html>
    for (const c of chain.reverse()) { const p = parse(c); if (p && p.a > 0) colour = over(p, colour); }
    return colour;
  };
  const skip = 'script, style, noscript, template, svg, mjx-container, .visually-hidden, .headerlink';
  const failures = [];
  const seen = new Set();
  const walker = document.createTreeWalker(document.querySelector('article') || document.body,
                                           NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.nodeValue.trim()) continue;
    const el = node.parentElement;
    if (!el || seen.has(el) || el.closest(skip)) continue;
    seen.add(el);
    if (!(el.checkVisibility({checkVisibilityCSS: true}) && el.getBoundingClientRect().height > 0)) continue;
    const style = getComputedStyle(el);
    const back = backdrop(el);
    const fore = over(parse(style.color), back);
    const [hi, lo] = [luminance(fore), luminance(back)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (bold && size >= 18.66) ? minLarge : minContrast;
    if (ratio < needed) {
      const where = el.closest('.admonition, table, .cell_output, .cell_input, figure, dl, li, p');
      failures.push({ratio: Math.round(ratio * 100) / 100, needed, color: style.color,
                     background: `rgb(${Math.round(back.r)}, ${Math.round(back.g)}, ${Math.round(back.b)})`,
                     text: node.nodeValue.trim().slice(0, 50),
                     where: where ? where.tagName.toLowerCase() + '.' + [...where.classList].join('.') : el.tagName});
    }
  }
  const mathRoots = [...document.querySelectorAll('article mjx-container')];
  for (const el of mathRoots) {
    if (!(el.checkVisibility({checkVisibilityCSS: true}) && el.getBoundingClientRect().height > 0)) continue;
    const back = backdrop(el), fore = over(parse(getComputedStyle(el).color), back);
    const [hi, lo] = [luminance(fore), luminance(back)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < minContrast) failures.push({ratio: Math.round(ratio * 100) / 100, needed: minContrast,
      color: getComputedStyle(el).color, text: 'maths', where: 'mjx-container', background: ''});
  }
  return failures;
}
"""

# Resolves once every <img> has loaded or failed (lazy images are made eager first).
IMAGES_SETTLED_JS = r"""
async () => {
  const imgs = [...document.images];
  imgs.forEach((img) => { if (img.loading === 'lazy') img.loading = 'eager'; });
  await Promise.all(imgs.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
    setTimeout(done, 15000);
  })));
}
"""

# Waits for MathJax 3 to have typeset the page; "absent" where the page does not load it.
MATHJAX_DONE_JS = r"""
async () => {
  const wanted = [...document.scripts].some((s) => /mathjax/i.test(s.src));
  if (!wanted) return 'absent';
  const start = performance.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (performance.now() - start > 20000) return 'timeout';
    await new Promise((r) => setTimeout(r, 50));
  }
  await MathJax.startup.promise;
  return 'done';
}
"""


# --------------------------------------------------------------------------------------------
# Fixtures: server, browser, and the pages rendered once each
# --------------------------------------------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def find_chromium() -> str | None:
    override = os.environ.get("CHROMIUM")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if Path(candidate).exists() else shutil.which(candidate)
        if found:
            return found
    return None


def _mathjax_file(path: str) -> Path | None:
    """The local file that answers the CDN path `path` (e.g. "es5/tex-mml-chtml.js")."""
    target = (MATHJAX / unquote(path)).resolve()
    if MATHJAX.resolve() not in target.parents or not target.is_file():
        return None
    return target


class Site:
    """The book on the local server; `render(page)` opens each page once (cached).

    Each page gets a fresh browser context (empty storage), as for a reader who arrives on it
    first: the verdict on a page then does not depend on which pages were opened before it.
    """

    def __init__(self, browser, url: str):
        self.url = url
        self.browser = browser
        self._current: RenderedPage | None = None
        self._cache: dict[str, RenderedPage] = {}

    def new_context(self, mode: str = "light"):
        """A browser context whose requests go to the local server only (MathJax aside), whose
        system colour preference is `mode` ("light" or "dark")."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        context = self.browser.new_context(viewport=VIEWPORT, service_workers="block",
                                           color_scheme=mode)
        context.set_default_timeout(TIMEOUT_MS)
        context.route("**/*", self._route)
        return context

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.url + "/"):
            route.continue_()
            return
        match = MATHJAX_CDN.match(url)
        if match:
            local = _mathjax_file(match["path"])
            if local is not None:
                route.fulfill(path=str(local))
                return
        if self._current is not None:
            self._current.blocked_requests.append(url)
        route.abort("blockedbyclient")

    def render(self, page: TocPage, mode: str = "light") -> RenderedPage:
        """Open `page` in colour mode `mode`, wait for its images and MathJax, collect what it
        shows, screenshot it (NAME.png, or NAME-dark.png), then open every dropdown and hidden
        cell and measure the contrast of all the text."""
        key = (page.docname, mode)
        if key in self._cache:
            return self._cache[key]
        if not page.html.exists():
            pytest.fail(f"{page.html} was not built although _toc.yml lists it: "
                        "run `make book`", pytrace=False)
        result = RenderedPage(page=page, url=self.url + page.url_path, mode=mode)
        self._current = result
        context = self.new_context(mode)
        tab = context.new_page()
        tab.on("pageerror", lambda error: result.page_errors.append(str(error)))
        tab.on("console", lambda msg: msg.type == "error" and result.console_errors.append(
            f"{msg.text} (at {msg.location.get('url') or '?'})"))
        tab.on("requestfailed", lambda request: request.url.startswith(self.url) and
               result.failed_requests.append(f"{request.url}: {request.failure}"))
        tab.on("response", lambda response: response.status >= 400 and
               result.failed_requests.append(f"{response.url}: HTTP {response.status}"))
        try:
            tab.goto(result.url, wait_until="load")
            tab.evaluate(IMAGES_SETTLED_JS)
            result.mathjax = tab.evaluate(MATHJAX_DONE_JS)
            # Let late requests (MathJax's fonts and menu, the theme's scripts) finish first.
            tab.wait_for_load_state("networkidle")
            result.dom = tab.evaluate(COLLECT_JS)
            suffix = "" if mode == "light" else f"-{mode}"
            result.screenshot = SCREENSHOTS / f"{page.name}{suffix}.png"
            tab.screenshot(path=str(result.screenshot), full_page=True)
            result.opened = tab.evaluate(OPEN_ALL_JS)
            result.low_contrast = tab.evaluate(CONTRAST_JS, [MIN_CONTRAST, MIN_CONTRAST_LARGE])
        finally:
            context.close()
            self._current = None
        self._cache[key] = result
        return result


# --------------------------------------------------------------------------------------------
# Helpers for the link check
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def html_ids(path: Path) -> frozenset[str]:
    """The id (and name) attributes of a built HTML file: the anchors a link may point to."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return frozenset(re.findall(r'\s(?:id|name)="([^"]+)"', text))


def local_target(url: str, site_url: str) -> tuple[Path, str] | None:
    """(file under _build/html, fragment) for a link to the local server, None for others."""
    if not url.startswith(site_url + "/"):
        return None
    parts = urlsplit(url)
    path = HTML / unquote(parts.path).lstrip("/")
    if unquote(parts.path).endswith("/"):
        path = path / "index.html"
    return path, unquote(parts.fragment)
