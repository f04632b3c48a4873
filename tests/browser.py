"""Open a page in the system's headless Chromium (Debian's package) through Playwright.

    python tests/browser.py reports/sweep/index.html docs/report.png [SECTION_ID]   # a screenshot
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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
                })"""
            )
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=False)
            return info
        finally:
            browser.close()


if __name__ == "__main__":
    print(inspect_page(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None,
                       anchor=sys.argv[3] if len(sys.argv) > 3 else ""))
