"""The admin status page: one self-contained HTML document served at ``/`` on the admin listener.

The page's parts are package data in ``gslb/data/status/``, so that editors, linters and
``node --check`` see real HTML, CSS, JS and JSON rather than Python string literals:

- ``page.html``: the document, with ``${name}`` slots (``string.Template``) for what is
  computed here: the CSP, the inlined style and script, and the map's geometry;
- ``status.css`` and ``status.js``: inlined into the page (``__CONFIG__`` in the script
  becomes the JSON settings below);
- ``coastline.json``: hand-simplified coastlines, one closed ring of ``[lon, lat]`` points per
  landmass (and per inland sea, painted over the land): recognisable, not accurate.

The page talks to nothing but ``GET /status`` on its own origin, every ``REFRESH_MS``. It draws
each region as a circle on an equirectangular map (colour = state, radius = in-flight requests,
dashed = standby), recent spill flows as curved arrows, and tables of regions and endpoints.

Data from ``/status`` is treated as untrusted: the script builds every node with
``createElement`` / ``textContent`` and never parses strings as HTML. A strict
Content-Security-Policy (in a ``<meta>`` tag, and as a header from ``handle_status_page``) pins
the inline script and style by hash and allows network access only to the page's own origin.
Everything is read and rendered once, at import: the page never changes while gslb runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from string import Template
from typing import Any

from aiohttp import web

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "STATUS_PAGE",
    "handle_status_page",
    "land_paths",
    "project",
    "render_status_page",
]

MAP_WIDTH = 1000.0  # SVG user units for 360 degrees of longitude
MAP_HEIGHT = 500.0  # and for 180 degrees of latitude
LAT_TOP = 84.0  # the part of the map that is shown: no one runs GPUs on the ice caps
LAT_BOTTOM = -58.0
REFRESH_MS = 2000

_ASSETS = "data/status"
Ring = list[tuple[float, float]]


def asset_text(name: str) -> str:
    """One file of ``gslb/data/status/`` (works from a wheel, a zip or an editable install)."""
    return resources.files("gslb").joinpath(f"{_ASSETS}/{name}").read_text(encoding="utf-8")


def _rings(doc: Any, kind: str) -> dict[str, Ring]:
    return {
        name: [(float(lon), float(lat)) for lon, lat in points]
        for name, points in doc[kind].items()
    }


def load_coastlines() -> tuple[dict[str, Ring], dict[str, Ring]]:
    """(landmasses, inland seas) from ``coastline.json``."""
    doc = json.loads(asset_text("coastline.json"))
    return _rings(doc, "land"), _rings(doc, "water")


_LAND, _WATER = load_coastlines()


def _fmt(v: float) -> str:
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


def project(lat: float, lon: float) -> tuple[float, float]:
    """Equirectangular projection onto the map's user units (x east, y down)."""
    return (lon + 180.0) / 360.0 * MAP_WIDTH, (90.0 - lat) / 180.0 * MAP_HEIGHT


def _ring_path(ring: Ring) -> str:
    parts = []
    for i, (lon, lat) in enumerate(ring):
        x, y = project(lat, lon)
        parts.append(f"{'M' if i == 0 else 'L'}{_fmt(x)},{_fmt(y)}")
    return "".join(parts) + "Z"


def land_paths() -> dict[str, str]:
    """SVG path data for each landmass, in map user units."""
    return {name: _ring_path(ring) for name, ring in _LAND.items()}


def _view_top() -> float:
    return (90.0 - LAT_TOP) / 180.0 * MAP_HEIGHT


def _view_height() -> float:
    return (LAT_TOP - LAT_BOTTOM) / 180.0 * MAP_HEIGHT


def _graticule() -> str:
    lines: list[str] = []
    for lon in range(-180, 181, 30):
        x, _ = project(0.0, float(lon))
        lines.append(f"M{_fmt(x)},0V{_fmt(MAP_HEIGHT)}")
    for lat in range(-60, 91, 30):
        _, y = project(float(lat), 0.0)
        lines.append(f"M0,{_fmt(y)}H{_fmt(MAP_WIDTH)}")
    return "".join(lines)


def _land_layer() -> str:
    land = [f'<path class="land" data-name="{n}" d="{d}"/>' for n, d in land_paths().items()]
    water = [
        f'<path class="water" data-name="{n}" d="{_ring_path(r)}"/>' for n, r in _WATER.items()
    ]
    return "\n".join(land + water)


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _script() -> str:
    config = {
        "width": MAP_WIDTH,
        "height": MAP_HEIGHT,
        "top": _view_top(),
        "viewHeight": _view_height(),
        "maxRadius": 22,
        "hotUtil": 0.85,
        "refreshMs": REFRESH_MS,
        "statusPath": "/status",
    }
    return asset_text("status.js").replace("__CONFIG__", json.dumps(config))


def _content_security_policy(script: str, style: str) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_csp_hash(script)}",
            f"style-src {_csp_hash(style)}",
            "connect-src 'self'",
            "img-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )


def render_status_page() -> str:
    """The whole page: a self-contained HTML document with no external references."""
    script = _script()
    style = asset_text("status.css")
    _, equator = project(0.0, 0.0)
    # substitute(), not safe_substitute(): a slot the template names but we do not fill is a
    # bug to fail on at import, not a literal "${...}" to ship.
    return Template(asset_text("page.html")).substitute(
        csp=_content_security_policy(script, style),
        style=style,
        script=script,
        view_top=_fmt(_view_top()),
        view_height=_fmt(_view_height()),
        map_width=_fmt(MAP_WIDTH),
        graticule=_graticule(),
        equator_y=_fmt(equator),
        land=_land_layer(),
    )


STATUS_PAGE: str = render_status_page()
CONTENT_SECURITY_POLICY: str = _content_security_policy(_script(), asset_text("status.css"))


async def handle_status_page(request: web.Request) -> web.Response:
    """aiohttp handler for ``GET /`` on the admin listener."""
    return web.Response(
        text=STATUS_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )
