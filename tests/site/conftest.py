"""Fixtures of the browser check: the built book served locally, opened in headless Chromium.

`make site` runs these tests against `_build/html` (built by `make book`). Each page listed in
`_toc.yml` is opened once; what the browser saw (errors, images, maths, text, theorem boxes,
links) is collected into a `RenderedPage` (see sitecheck.py) and judged by test_site.py.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest

from sitecheck import CHROMIUM_CANDIDATES, CHROMIUM_FLAGS, HTML, MATHJAX, SCREENSHOTS, TIMEOUT_MS, Site, \
    QuietHandler, find_chromium


@pytest.fixture(scope="session")
def site_url():
    """The built book served by Python's http.server on 127.0.0.1 (a free port) in a thread."""
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML}/index.html is missing: run `make book` first", pytrace=False)
    handler = functools.partial(QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser(site_url):
    """Headless Debian Chromium driven by Playwright; skips where either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (it is in requirements.txt)")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (tried $CHROMIUM, " + ", ".join(CHROMIUM_CANDIDATES)
                    + "); on Debian: apt-get install chromium")
    package = MATHJAX / "package.json"
    if not (MATHJAX / "es5" / "tex-mml-chtml.js").exists():
        pytest.fail(f"MathJax is not installed at {MATHJAX}: run `make site` (it installs it with npm)",
                    pytrace=False)
    version = json.loads(package.read_text())["version"]
    if not version.startswith("3."):
        pytest.fail(f"the pages load MathJax 3 but {MATHJAX} holds MathJax {version}", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS, timeout=TIMEOUT_MS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def site(browser, site_url):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return Site(browser, site_url)
