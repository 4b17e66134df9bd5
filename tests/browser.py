"""Rendering an HTML page in Debian's headless chromium, as a reader's browser would (no network, fresh profile)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_chromium = pytest.mark.skipif(not shutil.which("chromium"),
                                    reason="Debian's chromium is not installed (.ci/run installs it)")


def screenshot(page: Path, folder: Path, window: str) -> bytes:
    """The PNG chromium renders of `page` in a `window` ("WIDTH,HEIGHT") viewport; its profile and shot in `folder`."""
    shot = folder / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}", f"--window-size={window}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    return shot.read_bytes()
