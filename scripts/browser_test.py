"""Real-browser check of notebook 03's explorer (`make browser-test`).

Starts a throwaway JupyterLab on a temporary copy of the notebook's folder (JupyterLab autosaves),
opens the notebook in Debian's chromium driven by Playwright (the PyPI package, never its own
browser download), runs all cells, moves the compression-ratio slider one step with the keyboard
and checks that the explorer's readout text and its PNG both change. The facts behind each step are
as found to work with JupyterLab 4 and ipywidgets 8. Exit 0 with a one-line summary on success;
on failure: the step, what the page showed, the server log's tail and a failure screenshot.

    HASHROBUST_DATA=../shared/datasets .venv/bin/python scripts/browser_test.py [--notebook PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Locator, Page, expect, sync_playwright

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-default-apps"]
# User settings of the test server. An overrides.json in JUPYTERLAB_SETTINGS_DIR is ignored (JupyterLab reads
# overrides only from the app's settings dir); a user-settings file there works (checked with /lab/api/settings).
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},  # all cells in the DOM
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":  # no news toast over the screenshot
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
}
KERNEL_IDLE = re.compile(r"\|\s*Idle")  # status bar "Python 3 (ipykernel) | Idle"; the toolbar's
# execution indicator already reads "idle" while the status bar still says "No Kernel | Initializing"
RATIO_SLIDER = ".widget-hslider:has-text('compression ratio')"
RUNNING = ".jp-InputPrompt:has-text('*')"  # "[*]:" marks a queued or running cell
TIMEOUT_MS = {"server": 60_000, "kernel": 90_000, "run": 120_000, "update": 30_000}


class StepFailed(Exception):
    """A check failed; the message says what was expected and what was found."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port serving workdir/notebooks, with config, data and settings under workdir."""
    for name, settings in USER_SETTINGS.items():
        path = workdir / "lab-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ, "TQDM_DISABLE": "1", "JUPYTERLAB_SETTINGS_DIR": str(workdir / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"), "JUPYTER_CONFIG_DIR": str(workdir / "config"),
           "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_RUNTIME_DIR": str(workdir / "runtime")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
               f"--ServerApp.token={token}", f"--ServerApp.root_dir={workdir / 'notebooks'}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + TIMEOUT_MS["server"] / 1000
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    raise StepFailed(f"JupyterLab did not answer on port {port} (exit code {server.poll()}); see the log below")


def stop_server(server: subprocess.Popen, workdir: Path) -> None:
    """Stop the server by its PID, then any kernel it left (found by its connection file under workdir)."""
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(workdir).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
                print(f"note: killed leftover kernel process {cmdline.parent.name}", file=sys.stderr)
        except OSError:
            pass


def wait_for_slider(page: Page, handle: Locator) -> None:
    """Wait for the ratio slider; fail early once no cell is queued or running (all ran, or one raised)."""
    deadline = time.monotonic() + TIMEOUT_MS["run"] / 1000
    page.wait_for_timeout(2000)  # Run All marks the queued cells [*]
    while not handle.is_visible():
        if page.locator(RUNNING).count() == 0:
            raise StepFailed("no cell is queued or running and no ratio slider is visible "
                             "(a cell raised, or the notebook shows no CompressionAttackExplorer)")
        if time.monotonic() > deadline:
            raise StepFailed(f"no ratio slider after {TIMEOUT_MS['run'] / 1000:.0f} s of running cells")
        page.wait_for_timeout(500)


def page_report(page: Page) -> str:
    """What the page shows: status bar, dialogs, prompts, error outputs, sliders and readouts."""
    def texts(selector: str) -> list[str]:
        return [text.strip()[:600] for text in page.locator(selector).all_inner_texts()]

    stderr = '[data-mime-type="application/vnd.jupyter.stderr"]'  # tracebacks and warnings

    return "\n".join([
        f"  url: {page.url}",
        f"  status bar: {' / '.join(filter(None, texts('.jp-StatusBar-Item'))) or 'none'}",
        f"  dialogs: {texts('.jp-Dialog') or 'none'}",
        f"  cells: {page.locator('.jp-Notebook .jp-Cell').count()}, prompts: {texts('.jp-InputPrompt')}",
        f"  error outputs: {texts(stderr) or 'none'}",
        f"  sliders: {page.locator('.noUi-handle').count()}, ratio sliders: {page.locator(RATIO_SLIDER).count()}",
        f"  widget texts: {texts('.widget-html-content') or 'none'}"])


def check_explorer(page: Page, url: str, screenshot: Path) -> tuple[str, str]:
    """Open, run all, move the ratio slider; return the readout before and after. Raises StepFailed."""
    step = "open the notebook and wait for an idle kernel"
    try:
        page.goto(url, wait_until="domcontentloaded")
        expect(page.locator(".jp-StatusBar-Item", has_text=KERNEL_IDLE)).to_be_visible(timeout=TIMEOUT_MS["kernel"])

        step = "run all cells (menu Run > Run All Cells) and wait for the ratio slider"
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        cell = page.locator(".jp-Cell", has=page.locator(RATIO_SLIDER)).first
        handle = cell.locator(RATIO_SLIDER).locator(".noUi-handle")
        wait_for_slider(page, handle)

        step = "wait until every cell has run (no [*] prompt, kernel idle)"  # comms wait behind running cells
        expect(page.locator(RUNNING)).to_have_count(0, timeout=TIMEOUT_MS["run"])
        expect(page.locator(".jp-StatusBar-Item", has_text=KERNEL_IDLE)).to_be_visible(timeout=TIMEOUT_MS["run"])

        step = "read the explorer's readout and PNG"
        readout = cell.locator(".widget-html-content", has_text="success").first
        image = cell.locator(".jp-RenderedImage img").first
        expect(readout).to_be_visible(timeout=TIMEOUT_MS["update"])
        before, before_src = readout.inner_text(), image.get_attribute("src") or ""
        if not before_src.startswith("data:image/png"):
            raise StepFailed(f"the explorer's image src is not a PNG data URI: {before_src[:80]!r}")

        step = "move the ratio slider one step (focus .noUi-handle, ArrowRight; ArrowLeft at the right end)"
        at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        handle.focus()
        page.keyboard.press("ArrowLeft" if at_end else "ArrowRight")
        expect(readout).not_to_have_text(before, timeout=TIMEOUT_MS["update"])
        step = "wait for the explorer's PNG to change"
        expect(image).not_to_have_attribute("src", before_src, timeout=TIMEOUT_MS["update"])
        after = readout.inner_text()

        step = "save the screenshot"
        cell.evaluate("element => element.scrollIntoView({block: 'center'})")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        return before, after
    except Exception as error:  # Playwright's TimeoutError, AssertionError from expect, StepFailed
        failure = screenshot.with_name(f"{screenshot.stem}_failure.png")
        try:
            page.screenshot(path=str(failure), full_page=True)
            report = f"{page_report(page)}\n  failure screenshot: {failure}"
        except Exception as report_error:  # the page itself is gone
            report = f"  (no page report: {report_error})"
        raise StepFailed(f"step '{step}' failed: {str(error).strip()[:1500]}\n{report}") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=REPO / "notebooks/03_attacking_compressed_models.ipynb",
                        help="the notebook to drive (its folder is copied to a temporary directory)")
    parser.add_argument("--screenshot", type=Path, default=REPO / "results/screenshots/notebook03_slider.png")
    args = parser.parse_args(argv)
    notebook = args.notebook.resolve()
    if not notebook.is_file():
        parser.error(f"no notebook at {notebook}")
    if "HASHROBUST_DATA" not in os.environ:
        print("note: HASHROBUST_DATA is not set; the kernel looks for data in the repository's data/", file=sys.stderr)

    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="hashrobust-browser-"))
    shutil.copytree(notebook.parent, workdir / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port, token, log_path = free_port(), secrets.token_urlsafe(24), workdir / "server.log"
    server = None
    try:
        server = start_server(workdir, port, token, log_path)
        url = f"http://127.0.0.1:{port}/lab/tree/{quote(notebook.name)}?token={token}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                before, after = check_explorer(page, url, args.screenshot.resolve())
            finally:
                browser.close()
    except StepFailed as error:
        log_tail = log_path.read_text(errors="replace").splitlines()[-25:] if log_path.exists() else []
        print(f"browser-test FAILED on {notebook.name} after {time.monotonic() - start:.1f} s: {error}\n"
              f"  server log (last {len(log_tail)} lines):\n    " + "\n    ".join(log_tail), file=sys.stderr)
        return 1
    finally:
        if server is not None:
            stop_server(server, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    args.screenshot.resolve().with_name(f"{args.screenshot.stem}_failure.png").unlink(missing_ok=True)
    print(f"browser-test passed on {notebook.name} in {time.monotonic() - start:.1f} s: "
          f"readout {before!r} -> {after!r}; PNG changed; screenshot {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
