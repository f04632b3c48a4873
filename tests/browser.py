"""Open a page in the system's headless Chromium (Debian's package) through Playwright.

    python tests/browser.py reports/sweep/index.html docs/report.png [SECTION_ID]   # a screenshot

Also: `serve` starts a server command (mnist-lab ui, mnist-lab dashboard) in its own process
group and stops all of it (uvicorn's workers outlive a killed parent), and `mlflow_runs_page`
opens MLflow's UI on a link as a person would.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from conftest import as_in_a_terminal

# Without the background-networking flags Chromium keeps trying to reach Google's hosts,
# which this machine's closed network refuses.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def inspect_page(path: Path, screenshot: Path | None = None, width: int = 1280, anchor: str = "") -> dict:
    """Section ids, and for each image whether it loaded (complete, with a natural size)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(Path(path).resolve().as_uri() + (f"#{anchor}" if anchor else ""), wait_until="load")
            info = page.evaluate(
                """() => ({
                    sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                    headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent.trim()),
                    images: Array.from(document.images).map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth})),
                    title: document.title,
                    overflowing: document.documentElement.scrollWidth > window.innerWidth + 1,
                    // cards whose content is cut off or needs a sideways scroll
                    clipped: Array.from(document.querySelectorAll('.card')).filter(c => c.scrollWidth > c.clientWidth + 1)
                        .map(c => (c.querySelector('h3') || c).textContent.trim().slice(0, 60)),
                    run_links: Array.from(document.querySelectorAll('a[href*="/runs/"]')).map(a => a.href),
                    text: document.body.innerText,
                })"""
            )
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=False)
            return info
        finally:
            browser.close()


def toc_in_sandbox(path: Path, anchor: str, width: int = 1366, height: int = 768) -> dict:
    """Open the page the way MLflow's artifact viewer does (a blob: URL in an iframe sandboxed to
    allow-scripts) and follow its table-of-contents link to `anchor`: where does the section land?"""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.set_content(f'<iframe id="viewer" sandbox="allow-scripts" style="width:{width - 40}px;height:{height - 40}px"></iframe>')
            page.evaluate("html => { document.getElementById('viewer').src = URL.createObjectURL(new Blob([html], {type: 'text/html'})); }",
                          Path(path).read_text())
            page.wait_for_function("() => window.frames.length && document.getElementById('viewer').src")
            frame = page.frame_locator("#viewer")
            section = frame.locator(f"#{anchor}")
            before = section.evaluate("e => e.getBoundingClientRect().top")
            frame.locator(f"nav a[href='#{anchor}']").click()
            # Waits for the scroll to land (up to 5 s), not a fixed time: a slow machine is not a failure.
            with contextlib.suppress(Exception):
                section.evaluate("e => new Promise(r => { const t0 = Date.now(); (function f() {"
                                 " if (Math.abs(e.getBoundingClientRect().top) < 2 || Date.now() - t0 > 5000) r();"
                                 " else requestAnimationFrame(f); })(); })")
            return {"before": before, "top": section.evaluate("e => e.getBoundingClientRect().top"),
                    "view": height - 40, "errors": errors}
        finally:
            browser.close()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 that no other test of this run is handed. Port 0's ephemeral port,
    closed and handed on, could be drawn by the other pytest-xdist worker before this test's server
    bound it: each worker draws from a range of its own, under Linux's ephemeral range (32768 up),
    never the same port twice, and only a port it could bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = 20000 + 1000 * (int(worker) % 12 if worker.isdigit() else 0)
    for _ in range(200):
        port = random.randrange(low, low + 1000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError(f"no free port in {low}-{low + 999}")


def read_lines(stream, n: int, timeout: float = 60) -> list[str]:
    """The next `n` lines of a server's output, or a failure after `timeout` s (a bare readline on a
    server that went quiet would wait for pytest-timeout's 900 s)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stream.readline() for _ in range(n)), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"{n} lines not printed within {timeout} s; so far: {lines}"
    return lines


@contextlib.contextmanager
def serve(command: list[str], ready_url: str, timeout: float = 120, env: dict | None = None):
    """Run a server until the block ends; yields (process, its first stdout lines so far)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env, preexec_fn=as_in_a_terminal)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{command} exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                urllib.request.urlopen(ready_url, timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(f"{ready_url} not up after {timeout} s") from None
                time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: workers whose parent is gone too
        proc.wait()


@contextlib.contextmanager
def opened(url: str, width: int = 1366, height: int = 768):
    """A page of headless Chromium at `url`, loaded; the browser closes when the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load")
            yield page
        finally:
            browser.close()


def shown_after(path: Path, selector: str, within_ms: int = 8000) -> bool:
    """Does an element matching `selector` become visible within `within_ms` of the page loading?"""
    from playwright.sync_api import TimeoutError

    with opened(Path(path).resolve().as_uri()) as page:
        try:
            page.wait_for_selector(selector, state="visible", timeout=within_ms)
            return True
        except TimeoutError:
            return False


def mlflow_page_text(link: str, wait_for: str) -> str:
    """The text of MLflow's UI at `link`, once `wait_for` shows."""
    with opened(link) as page:
        page.wait_for_selector(f"text={wait_for}", timeout=60_000)
        return page.inner_text("body")


def mlflow_runs_page(link: str, study: str, width: int = 1366, height: int = 768, screenshot: Path | None = None) -> str:
    """Open MLflow's UI at `link`, wait for the study's run, expand it; the page's text."""
    with opened(link, width, height) as page:
        page.wait_for_selector(f"[role=row] >> text={study}", timeout=60_000)
        page.locator("[role=row]", has_text=study).first.locator("button").first.click()  # the + before its name
        page.wait_for_selector(f"text=· {study}", timeout=30_000)
        if screenshot:
            page.screenshot(path=str(screenshot))
        return page.inner_text("body")


if __name__ == "__main__":
    print(inspect_page(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None,
                       anchor=sys.argv[3] if len(sys.argv) > 3 else ""))
