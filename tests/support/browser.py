"""Real headless Chromium for tests: Debian's /usr/bin/chromium driven by playwright-python.

Playwright's own browser download does not work offline, so the Makefile installs Debian's
chromium and the tests point playwright at it. Tests that use it are marked ``browser``: without it
they skip with the reason, and the run's summary counts them (support.prerequisites).
"""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The machine has no network: without these Chromium keeps trying Google's hosts.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def missing() -> str | None:
    """Why no browser can be started here, or None when one can."""
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed (make test installs it: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401  # imported only to see that it can be
    except ImportError as e:
        return f"playwright cannot be imported ({e}): pip install -e '.[test]'"
    return None


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium browser (playwright ``Browser``); only for tests marked ``browser``, which
    skip, counted, where it cannot start (support.prerequisites)."""
    reason = missing()
    if reason:
        pytest.fail(f"{reason}; a test that starts a browser is marked @pytest.mark.browser, so it skips instead")
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on a free loopback port; yields the base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))) as url:
        yield url


@contextmanager
def serving(server) -> Iterator[str]:
    """Run ``server`` (a loopback ``socketserver`` HTTP server, werkzeug's included) in a thread for
    as long as the block runs; yields its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
