"""Open every page of the built web book in a real browser and check what a reader sees.

    .venv/bin/python scripts/book_browser_test.py [--build] [--html build/book/html] [--screenshots DIR]

Serves build/book/html (from `python scripts/build_book.py`; `--build` runs it first) on 127.0.0.1 with
http.server and opens each page (every .html file outside _static/ and _sources/) in Debian's chromium through
PyPI playwright, as scripts/browser_test.py does. Any request to another host is blocked and counted as a
failure: the book must work offline. On each page:
1. it loads: HTTP 200, a main content element with text, no console error and no uncaught script error;
2. every <img> in the main content is displayed (complete, naturalWidth > 0), notebook output images included;
3. math renders: after MathJax's startup promise, no `mjx-merror`, every math element (Sphinx's `.math`) holds a
   rendered `mjx-container`, no display equation is cut off at the left, and the pages in MATH_PAGES have math;
4. every link to this server answers 200 (fetched once per URL), and a link's #fragment names an element id of
   its target page; links to other hosts are counted, not followed.
Prints one summary line; on failure, each failure by page, and exits 1.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urldefrag, urlsplit

if TYPE_CHECKING:  # playwright is imported where the browser starts: the helpers above it need only the stdlib
    from playwright.sync_api import ConsoleMessage, Page, Route

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "build" / "book" / "html"
SKIPPED_DIRS = {"_static", "_sources", "_images"}
MAIN = "main#main-content"  # sphinx-book-theme's (pydata-sphinx-theme's) page content
# Notebook pages whose markdown is full of equations: they must show rendered math, so that a configuration
# that drops MyST's dollarmath (leaving "$...$" as text, with no math element to check) fails here.
MATH_PAGES = ["notebooks/01_hashednets.html", "notebooks/02_adversarial_examples.html",
              "notebooks/05_gradient_inhibition.html"]
TIMEOUT_MS = 30_000

# In the page, after load: make every image eager, wait for each to decode (or fail), then report them.
IMAGES_JS = """async (selector) => {
  const images = [...document.querySelectorAll(selector + " img")];
  images.forEach(img => { img.loading = "eager"; });
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  return images.map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                             width: img.naturalWidth, output: img.closest(".cell_output") !== null}));
}"""
# Wait for MathJax (when the page loads it) to typeset, then count what it rendered and what failed.
MATH_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const sources = [...document.querySelectorAll(".math")];
  return {mathjax: Boolean(window.MathJax && MathJax.version), version: window.MathJax ? MathJax.version : null,
          sources: sources.length, rendered: document.querySelectorAll("mjx-container").length,
          errors: [...document.querySelectorAll("mjx-merror")].map(e => e.textContent.slice(0, 120)),
          clipped: [...document.querySelectorAll("div.math > mjx-container")]
                   .filter(c => c.getBoundingClientRect().left < c.parentElement.getBoundingClientRect().left - 1)
                   .map(c => c.textContent.slice(0, 120)),
          unrendered: sources.filter(e => !e.querySelector("mjx-container"))
                             .map(e => e.textContent.trim().slice(0, 120))};
}"""


@dataclass
class Totals:
    """What the test checked, over all pages."""

    pages: int = 0
    images: int = 0
    output_images: int = 0
    math: int = 0
    internal_links: int = 0
    unique_urls: int = 0
    external_links: int = 0
    failures: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, page: str, message: str) -> None:
        self.failures.setdefault(page, []).append(message)


class IdCollector(HTMLParser):
    """The `id` (and legacy `name`) attributes of an HTML document: the fragments a link may point at."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for key, value in attrs if key in ("id", "name") and value)


class LinkChecker:
    """Fetches each internal URL once (status, and the element ids of an HTML answer)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[int, set[str]]] = {}

    def fetch(self, url: str) -> tuple[int, set[str]]:
        """(HTTP status, ids in the document) of `url`, a URL without fragment; 0 when there is no answer."""
        if url not in self.cache:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    status, body = response.status, response.read()
                    is_html = response.headers.get_content_type() == "text/html"
            except urllib.error.HTTPError as error:
                status, body, is_html = error.code, b"", False
            except OSError:
                status, body, is_html = 0, b"", False
            collector = IdCollector()
            if is_html:
                collector.feed(body.decode("utf-8", errors="replace"))
            self.cache[url] = (status, collector.ids)
        return self.cache[url]

    def problem(self, href: str) -> str | None:
        """Why an internal link is broken, or None."""
        url, fragment = urldefrag(href)
        status, ids = self.fetch(url)
        if status != 200:
            return f"link {href} answers HTTP {status or 'nothing'}"
        if fragment and fragment not in ids:
            return f"link {href}: no element with id '{fragment}' on {url}"
        return None


def book_pages(html: Path) -> list[str]:
    """Every HTML page of the book, relative POSIX paths, sorted; assets and page sources left out."""
    return sorted(path.relative_to(html).as_posix() for path in html.rglob("*.html")
                  if not SKIPPED_DIRS & set(path.relative_to(html).parts))


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """A quiet static file server for `root` on a free 127.0.0.1 port, in a thread; yields its base URL."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def check_page(page: Page, base: str, name: str, links: LinkChecker, totals: Totals,
               console: list[str], screenshots: Path | None) -> None:
    """Run the four checks on one page; record failures in `totals`."""
    console.clear()
    response = page.goto(base + name, wait_until="load", timeout=TIMEOUT_MS)
    if response is None or response.status != 200:
        totals.fail(name, f"HTTP {response.status if response else 'no response'}")
        return
    main = page.locator(MAIN)
    if main.count() != 1 or not main.inner_text().strip():
        totals.fail(name, f"no main content ({MAIN}: {main.count()} elements)")

    for image in page.evaluate(IMAGES_JS, MAIN):
        totals.images += 1
        totals.output_images += image["output"]
        if not (image["complete"] and image["width"] > 0):
            totals.fail(name, f"image not displayed: {image['src']}")

    math = page.evaluate(MATH_JS)
    totals.math += math["rendered"]
    if math["sources"] and not math["mathjax"]:
        totals.fail(name, f"{math['sources']} math elements but MathJax did not load")
    for error in math["errors"]:
        totals.fail(name, f"MathJax error: {error}")
    for source in math["unrendered"]:
        totals.fail(name, f"math not rendered: {source}")
    for source in math["clipped"]:
        totals.fail(name, f"display math starts left of its box (its beginning is cut off): {source}")
    if name in MATH_PAGES and math["rendered"] == 0:
        totals.fail(name, "no rendered math on a page whose notebook has equations")

    origin = urlsplit(base).netloc
    for href in page.eval_on_selector_all("a[href]", "anchors => anchors.map(a => a.href)"):
        parts = urlsplit(href)
        if parts.scheme in ("http", "https") and parts.netloc == origin:
            totals.internal_links += 1
            if (problem := links.problem(href)) is not None:
                totals.fail(name, problem)
        elif parts.scheme in ("http", "https"):
            totals.external_links += 1

    page.wait_for_timeout(100)  # let late console messages (a failed font, say) arrive
    for message in console:
        totals.fail(name, message)
    if screenshots is not None:
        target = screenshots / (name.removesuffix(".html").replace("/", "__") + ".png")
        page.screenshot(path=str(target), full_page=False)
    totals.pages += 1


def run(html: Path, screenshots: Path | None) -> Totals:
    """Check every page of the book in `html`; return what was checked and what failed."""
    totals, links = Totals(), LinkChecker()
    pages = book_pages(html)
    if "index.html" not in pages:
        totals.fail("index.html", f"missing: is the book built? ({html})")
        return totals
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    from browser_test import CHROMIUM, CHROMIUM_ARGS  # the same Debian chromium and launch flags
    from playwright.sync_api import sync_playwright

    with serve(html) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            current: list[str] = [""]  # the page being checked, for the handlers below
            console: list[str] = []

            def offline_only(route: Route) -> None:
                if urlsplit(route.request.url).netloc == urlsplit(base).netloc or route.request.url.startswith(
                        ("data:", "blob:")):
                    route.continue_()
                else:
                    totals.fail(current[0], f"request to another host blocked: {route.request.url}")
                    route.abort()

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    console.append(f"console error: {message.text[:300]} ({message.location.get('url', '')})")

            context.route("**/*", offline_only)
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda error: console.append(f"uncaught script error: {str(error)[:300]}"))
            for name in pages:
                current[0] = name
                try:
                    check_page(page, base, name, links, totals, console, screenshots)
                except Exception as error:  # Playwright's TimeoutError or Error: the page could not be checked
                    totals.fail(name, f"could not be checked: {str(error).strip()[:500]}")
        finally:
            browser.close()
    totals.unique_urls = len(links.cache)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=HTML, help="the built book (default: build/book/html)")
    parser.add_argument("--build", action="store_true", help="build the book first (scripts/build_book.py)")
    parser.add_argument("--screenshots", type=Path, help="save a screenshot of each page into this folder")
    args = parser.parse_args(argv)
    if args.build:
        import build_book  # scripts/ is on sys.path when this file runs as a script

        if build_book.main([]) != 0:
            return 1

    start = time.monotonic()
    totals = run(args.html.resolve(), args.screenshots)
    summary = (f"{totals.pages} pages, {totals.images} images ({totals.output_images} notebook outputs), "
               f"{totals.math} math elements rendered, {totals.internal_links} internal links checked "
               f"({totals.unique_urls} distinct URLs), "
               f"{totals.external_links} external links skipped, in {time.monotonic() - start:.1f} s")
    if totals.failures:
        count = sum(len(messages) for messages in totals.failures.values())
        print(f"book-browser-test FAILED: {count} failures on {len(totals.failures)} pages ({summary})",
              file=sys.stderr)
        for name, messages in sorted(totals.failures.items()):
            print(f"  {name}:\n    " + "\n    ".join(messages), file=sys.stderr)
        return 1
    print(f"book-browser-test passed: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
