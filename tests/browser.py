"""Drive Debian's headless chromium from tests: dump the DOM after scripts ran, take screenshots.

Chromium runs as a subprocess with a throwaway profile, no sandbox (tests often run as root in
containers), no background networking, and a virtual-time budget so that timers and fetches
settle before it dumps or shoots. It prints noise on stderr (D-Bus, GPU, crash-pad); that is
ignored unless the run fails, when its tail goes into the error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEFAULT_TIMEOUT_S = 90.0
DEFAULT_BUDGET_MS = 5000


class BrowserError(RuntimeError):
    """Chromium failed, timed out, or produced nothing usable."""


def find_chromium() -> str | None:
    """Path to a chromium binary, or None. ``GSLB_CHROMIUM`` overrides the search."""
    override = os.environ.get("GSLB_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _base_args(binary: str, profile: str, budget_ms: int) -> list[str]:
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--mute-audio",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
    ]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.setdefault("HOME", tempfile.gettempdir())
    try:
        return subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:].decode("utf-8", "replace")
        raise BrowserError(f"chromium timed out after {timeout:.0f}s: {tail}") from exc


def _require_binary() -> str:
    binary = find_chromium()
    if binary is None:
        raise BrowserError("chromium not found (apt-get install chromium)")
    return binary


def dump_dom(
    url: str, *, timeout: float = DEFAULT_TIMEOUT_S, budget_ms: int = DEFAULT_BUDGET_MS
) -> str:
    """The serialised DOM of ``url`` after its scripts ran for ``budget_ms`` of virtual time."""
    binary = _require_binary()
    with tempfile.TemporaryDirectory(prefix="gslb-chromium-") as profile:
        args = [*_base_args(binary, profile, budget_ms), "--dump-dom", url]
        proc = _run(args, timeout)
    dom = proc.stdout.decode("utf-8", "replace")
    start = dom.find("<html")
    if start < 0:
        tail = proc.stderr[-2000:].decode("utf-8", "replace")
        raise BrowserError(f"chromium dumped no DOM (exit {proc.returncode}): {tail}")
    return dom[start:]


def screenshot(
    url: str,
    path: str | Path,
    size: tuple[int, int] = (1400, 900),
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    budget_ms: int = DEFAULT_BUDGET_MS,
) -> Path:
    """Save a PNG of ``url`` at ``size`` (width, height) to ``path``; returns the path."""
    binary = _require_binary()
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    width, height = size
    with tempfile.TemporaryDirectory(prefix="gslb-chromium-") as profile:
        args = [
            *_base_args(binary, profile, budget_ms),
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            url,
        ]
        proc = _run(args, timeout)
    if not out.is_file() or out.stat().st_size == 0:
        tail = proc.stderr[-2000:].decode("utf-8", "replace")
        raise BrowserError(f"chromium wrote no screenshot (exit {proc.returncode}): {tail}")
    return out
