"""The admin status page: self-contained HTML, and what a real headless chromium renders from it.

The browser tests serve the page and a fake ``/status`` from a tiny aiohttp app on loopback and
load it in Debian's chromium (``tests/browser.py``). Without chromium they fail, unless
``GSLB_SKIP_BROWSER=1`` says to skip them.

``python -m tests.ops.test_statuspage [PATH]`` regenerates the README screenshot
(``docs/status-page.png``) from the ``FLEET`` fixture.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gslb.ops.statuspage import (
    STATUS_PAGE,
    asset_text,
    handle_status_page,
    land_paths,
    project,
    render_status_page,
)
from tests import browser

ROOT = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = ROOT / "docs" / "status-page.png"
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


def _endpoint(
    region: str,
    n: int,
    subnet: int,
    *,
    state: str = "up",
    inflight: int = 0,
    capacity_type: str = "reserved",
    failures: int = 0,
    cordon: str = "",
    load: float | None = None,
) -> dict[str, Any]:
    return {
        "url": f"http://10.{subnet}.0.{n + 4}:8000",
        "node": f"{region}-node-{n}",
        "capacity_type": capacity_type,
        "state": state,
        "inflight": inflight,
        "consecutive_failures": failures,
        "cordon_reason": cordon,
        "draining": state == "draining",
        "reported_load": load,
    }


def _region(
    name: str,
    provider: str,
    tier: str,
    jurisdiction: str,
    location: tuple[float, float],
    capacity: int,
    endpoints: list[dict[str, Any]],
    *,
    role: str = "active",
    routable: bool = True,
    panic: bool = False,
    draining: bool = False,
    ttfb: float | None = None,
    rtt: float | None = None,
) -> dict[str, Any]:
    inflight = sum(ep["inflight"] for ep in endpoints)
    return {
        "name": name,
        "provider": provider,
        "tier": tier,
        "jurisdiction": jurisdiction,
        "role": role,
        "location": list(location),
        "capacity": capacity,
        "routable": routable,
        "panic": panic,
        "draining": draining,
        "inflight": inflight,
        "load": float(inflight),
        "util": round(inflight / capacity, 4),
        "ewma_ttfb_ms": ttfb,
        "ewma_probe_rtt_ms": rtt,
        "endpoints": endpoints,
    }


def _fleet() -> dict[str, Any]:
    e = _endpoint
    regions = [
        _region(
            "us-east",
            "aws",
            "hyperscaler",
            "US",
            (38.95, -77.45),
            256,
            [
                e("us-east", 1, 1, inflight=104, load=0.81),
                e("us-east", 2, 1, inflight=97, load=0.77),
            ],
            ttfb=182.4,
            rtt=1.9,
        ),
        _region(
            "us-west",
            "gcp",
            "hyperscaler",
            "US",
            (45.60, -121.18),
            192,
            [e("us-west", 1, 2, inflight=41, load=0.4), e("us-west", 2, 2, inflight=38, load=0.37)],
            ttfb=141.0,
            rtt=61.7,
        ),
        _region(
            "us-central-spot",
            "sfcompute",
            "reseller",
            "US",
            (32.78, -96.80),
            128,
            [
                e("us-central-spot", 1, 3, inflight=22, capacity_type="spot", load=0.52),
                e("us-central-spot", 2, 3, state="ejected", capacity_type="spot", failures=6),
                e(
                    "us-central-spot",
                    3,
                    3,
                    state="cordoned",
                    capacity_type="spot",
                    cordon="node us-central-spot-node-2 failed",
                ),
            ],
            panic=True,
            ttfb=420.7,
            rtt=34.2,
        ),
        _region(
            "ca-central",
            "aws",
            "hyperscaler",
            "CA",
            (45.50, -73.57),
            64,
            [e("ca-central", 1, 4, inflight=17, load=0.3)],
            ttfb=133.9,
            rtt=12.8,
        ),
        _region(
            "ca-west-standby",
            "azure",
            "hyperscaler",
            "CA",
            (51.05, -114.07),
            32,
            [e("ca-west-standby", 1, 5, capacity_type="on_demand")],
            role="standby",
            ttfb=None,
            rtt=47.5,
        ),
        _region(
            "eu-west",
            "gcp",
            "hyperscaler",
            "IE",
            (53.35, -6.26),
            192,
            [e("eu-west", 1, 6, inflight=58, load=0.55), e("eu-west", 2, 6, inflight=49, load=0.5)],
            ttfb=158.2,
            rtt=71.4,
        ),
        _region(
            "eu-central",
            "coreweave",
            "neocloud",
            "DE",
            (50.11, 8.68),
            256,
            [
                e("eu-central", 1, 7, inflight=112, load=0.9),
                e("eu-central", 2, 7, inflight=109, load=0.88),
            ],
            ttfb=247.3,
            rtt=88.0,
        ),
        _region(
            "ap-southeast",
            "nebius",
            "neocloud",
            "SG",
            (1.35, 103.82),
            128,
            [e("ap-southeast", 1, 8, inflight=36, load=0.31), e("ap-southeast", 2, 8, inflight=30)],
            ttfb=204.0,
            rtt=231.0,
        ),
        _region(
            "ap-northeast",
            "azure",
            "hyperscaler",
            "JP",
            (35.68, 139.69),
            128,
            [
                e("ap-northeast", 1, 9, state="draining", inflight=9),
                e("ap-northeast", 2, 9, state="draining", inflight=5),
            ],
            draining=True,
            routable=False,
            ttfb=176.5,
            rtt=162.3,
        ),
        _region(
            "sa-east",
            "sfcompute",
            "reseller",
            "BR",
            (-23.55, -46.63),
            64,
            [
                e("sa-east", 1, 10, state="down", failures=12),
                e("sa-east", 2, 10, state="ejected", failures=5, capacity_type="spot"),
            ],
            routable=False,
            ttfb=None,
            rtt=None,
        ),
    ]
    return {
        "generation": 3,
        "uptime_s": 273_845.2,
        "backend": "cython",
        "ready": True,
        "workers": 4,
        "regions": regions,
        "decisions": {
            "local": 18_432,
            "spill": 1_207,
            "failover": 311,
            "local-queued": 96,
            "standby": 0,
            "no-region": 4,
        },
        "spills": [
            {"from": "sa-east", "to": "us-east", "count": 311},
            {"from": "eu-central", "to": "eu-west", "count": 42},
            {"from": "ap-northeast", "to": "ap-southeast", "count": 118},
            {"from": "us-central-spot", "to": "us-east", "count": 57},
            {"from": "ghost-region", "to": "us-east", "count": 3},
        ],
    }


FLEET: dict[str, Any] = _fleet()


def _hostile_fleet() -> dict[str, Any]:
    """``FLEET`` with markup in places the page must treat as text."""
    data = copy.deepcopy(FLEET)
    data["regions"][0]["provider"] = HOSTILE
    data["regions"][1]["endpoints"][0]["cordon_reason"] = HOSTILE
    data["backend"] = "<b>bold</b>"
    return data


def _fleet_mode() -> dict[str, Any]:
    """``FLEET`` as an edge in fleet mode sees it (``/status`` with ``"fleet"``): peers' edge and
    site names carry markup, one endpoint is taken out by the fleet's verdict."""
    data = copy.deepcopy(FLEET)
    data["regions"][1]["endpoints"][1]["state"] = "fleet_down"
    data["fleet"] = {
        "edge": "nyc",
        "site": "new-york",
        "revision": 7,
        "digest": "ab" * 32,
        "error": None,
        "connected": True,
        "quorum": "majority",
        "max_age_s": 5.0,
        "peers": 2,
        "edges": [
            {"edge": "fra", "site": "frankfurt", "revision": 7, "age_s": 0.41, "self": False},
            {"edge": "nyc", "site": "new-york", "revision": 7, "age_s": 0.0, "self": True},
            {"edge": HOSTILE, "site": "<b>bold</b>", "revision": 6, "age_s": 2.25, "self": False},
            "not an edge",
        ],
        "received_total": 1204,
        "dropped_total": {"oversized": 0, "malformed": 3, "stale": 0, "expired": 1},
        "published_total": 602,
        "regions": {
            "us-east": {
                "reporters": 3,
                "see_up": 3,
                "agree": True,
                "fleet_down_endpoints": 0,
                "peer_inflight": 61,
            },
            "us-west": {
                "reporters": 3,
                "see_up": 2,
                "agree": False,
                "fleet_down_endpoints": 1,
                "peer_inflight": 12,
            },
            HOSTILE: {"reporters": 1, "see_up": 1, "agree": True},
        },
    }
    return data


@asynccontextmanager
async def serve(payloads: list[Any], *, then_status: int = 200) -> AsyncIterator[str]:
    """Serve the page at ``/`` and ``payloads`` at ``/status``, one per request; after the last,
    keep answering the last one, or ``then_status`` when that is not 200. Yields the base URL."""
    served: list[int] = []

    async def status(request: web.Request) -> web.Response:
        n = len(served)
        served.append(n)
        if n >= len(payloads) and then_status != 200:
            return web.Response(status=then_status, text="upstream went away")
        return web.json_response(payloads[min(n, len(payloads) - 1)])

    app = web.Application()
    app.router.add_get("/", handle_status_page)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Element] = []
        self.text_parts: list[str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text() for c in self.children)

    def walk(self) -> list[Element]:
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "source", "wbr"}


class DomParser(HTMLParser):
    """Just enough of a tree to find elements by tag/class/attribute and read their text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(el)
        if tag not in VOID:
            self.cur = el

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data: str) -> None:
        self.cur.text_parts.append(data)


def parse(dom: str) -> list[Element]:
    p = DomParser()
    p.feed(dom)
    p.close()
    return p.root.walk()


def by_id(elements: list[Element], ident: str) -> Element:
    found = [e for e in elements if e.attrs.get("id") == ident]
    assert len(found) == 1, ident
    return found[0]


# ------------------------------------------------------------------------------ static checks


def test_page_is_self_contained() -> None:
    page = render_status_page()
    assert page == STATUS_PAGE
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert re.search(r"(?<![\w-])//[\w.-]+\.[a-z]{2,}", lowered) is None  # no protocol-relative
    assert "<script src" not in lowered and re.search(r"<script[^>]*\ssrc=", lowered) is None
    assert "<link" not in lowered
    assert "@import" not in lowered
    assert "@font-face" not in lowered
    assert "innerhtml" not in lowered and "outerhtml" not in lowered
    assert "insertadjacenthtml" not in lowered and "document.write" not in lowered
    # url(...) only ever points inside the document (markers, gradients).
    for target in re.findall(r"url\(\s*([^)]*)\)", page):
        assert target.strip("'\" ").startswith("#"), target
    assert re.search(r"""\b(?:src|href)\s*=\s*["'](?!#)""", page) is None
    # Network: only the same-origin status endpoint.
    assert re.findall(r"fetch\(([^,)]*)", page) == ["CFG.statusPath"]
    assert '"statusPath": "/status"' in page
    assert "connect-src 'self'" in page and "default-src 'none'" in page


def test_page_embeds_svg_world_map() -> None:
    elements = parse(STATUS_PAGE)
    svg = by_id(elements, "map")
    assert svg.tag == "svg"
    land = [e for e in svg.walk() if e.tag == "path" and "land" in e.classes]
    names = {e.attrs["data-name"] for e in land}
    for continent in (
        "north-america",
        "south-america",
        "eurasia",
        "africa",
        "australia",
        "greenland",
    ):
        assert continent in names
        assert land_paths()[continent].count("L") >= 10
    assert [e for e in svg.walk() if e.tag == "path" and "graticule" in e.classes]
    assert [e for e in svg.walk() if e.tag == "marker" and e.attrs.get("id") == "spill-arrow"]
    for layer in ("spills", "regions", "labels"):
        assert by_id(elements, layer).tag == "g"
    assert "<table" in STATUS_PAGE and "regions-body" in STATUS_PAGE


def test_projection_is_equirectangular() -> None:
    assert project(90, -180) == (0.0, 0.0)
    assert project(0, 0) == (500.0, 250.0)
    assert project(-90, 180) == (1000.0, 500.0)
    # Each landmass sits where it belongs: sample the first point of a few rings.
    first = {name: d[1:].split("L")[0].split(",") for name, d in land_paths().items()}
    x, y = (float(v) for v in first["australia"])
    assert 800 < x < 930 and 290 < y < 360
    x, y = (float(v) for v in first["greenland"])
    assert 250 < x < 350 and y < 60


def test_csp_hashes_match_inline_code() -> None:
    import base64
    import hashlib

    page = STATUS_PAGE
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    for code in (script, style):
        digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in page


def test_coastline_data_loads_as_polygons_on_the_globe() -> None:
    doc = json.loads(asset_text("coastline.json"))
    assert set(doc["land"]) >= {"north-america", "eurasia", "africa", "australia"}
    assert set(doc["water"]) == {"black-sea", "caspian-sea"}
    for kind in ("land", "water"):
        for name, ring in doc[kind].items():
            assert len(ring) >= 3, name  # a polygon; the path's Z closes it
            for lon, lat in ring:
                assert -180 <= lon <= 180 and -90 <= lat <= 90, (name, lon, lat)
    # Every ring reaches the page as one path (the seas painted over the land).
    for name in doc["land"]:
        assert f'data-name="{name}"' in STATUS_PAGE
    assert STATUS_PAGE.count('class="water"') == len(doc["water"])


def test_page_template_slots_are_all_filled() -> None:
    assert "${" not in STATUS_PAGE and "__CONFIG__" not in STATUS_PAGE
    # The assets are inlined verbatim: what an editor or linter checks is what ships.
    assert f"<style>{asset_text('status.css')}</style>" in STATUS_PAGE
    script = STATUS_PAGE.split("<script>", 1)[1].split("</script>", 1)[0]
    head, config, tail = asset_text("status.js").partition("__CONFIG__")
    assert config and script.startswith(head) and script.endswith(tail)


def test_script_parses(tmp_path: Path) -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node not installed: the script's syntax is checked by the browser tests")
    script = STATUS_PAGE.split("<script>", 1)[1].split("</script>", 1)[0]
    path = tmp_path / "status.js"
    path.write_text(script)
    done = subprocess.run([node, "--check", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # The check can fail: a broken script is reported.
    path.write_text(script.replace("=>", "=>>", 1))
    broken = subprocess.run([node, "--check", str(path)], capture_output=True, timeout=60)
    assert broken.returncode != 0


def test_every_asset_ships_as_package_data() -> None:
    # setuptools globs package-data patterns per directory: a new folder under gslb/data
    # needs a pattern of its own, or the wheel ships without it.
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["gslb"]
    package = ROOT / "gslb"
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assets = {p for p in (package / "data").rglob("*") if p.is_file()}
    assert {"page.html", "status.css", "status.js", "coastline.json"} <= {p.name for p in assets}
    assert assets <= shipped, sorted(str(p.relative_to(package)) for p in assets - shipped)


async def test_handler_serves_page_with_headers() -> None:
    import aiohttp

    async with serve([FLEET]) as base, aiohttp.ClientSession() as session:
        async with session.get(base) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["Cache-Control"] == "no-store"
            assert await resp.text() == STATUS_PAGE
        async with session.get(base + "status") as resp:
            assert (await resp.json())["generation"] == 3


# ------------------------------------------------------------------------------ real browser


def _need_browser() -> None:
    if browser.find_chromium() is None:
        if os.environ.get("GSLB_SKIP_BROWSER") == "1":
            pytest.skip("chromium not installed and GSLB_SKIP_BROWSER=1")
        pytest.fail("chromium not installed: apt-get install chromium (or GSLB_SKIP_BROWSER=1)")


EXPECTED_STATE = {
    "us-east": "routable",
    "us-west": "routable",
    "us-central-spot": "panic",
    "ca-central": "routable",
    "ca-west-standby": "routable",
    "eu-west": "routable",
    "eu-central": "routable",
    "ap-southeast": "routable",
    "ap-northeast": "draining",
    "sa-east": "unroutable",
}
STATE_FILL = {
    "routable": "#22c55e",
    "panic": "#f59e0b",
    "draining": "#3b82f6",
    "unroutable": "#ef4444",
}


async def test_browser_renders_fleet() -> None:
    _need_browser()
    async with serve([_hostile_fleet()]) as base:
        dom = await asyncio.to_thread(browser.dump_dom, base)
    elements = parse(dom)
    root = next(e for e in elements if e.tag == "html")
    assert root.attrs.get("data-status") == "ok", dom[-3000:]
    assert int(root.attrs["data-refreshes"]) >= 1

    # One circle per region, placed by the projection, coloured and classed by state.
    circles = {
        e.attrs["data-region"]: e for e in elements if e.tag == "circle" and "region" in e.classes
    }
    assert set(circles) == set(EXPECTED_STATE)
    for name, state in EXPECTED_STATE.items():
        c = circles[name]
        assert f"state-{state}" in c.classes, (name, c.attrs)
        assert c.attrs["data-state"] == state
        assert c.attrs["fill"] == STATE_FILL[state]
        region = next(r for r in FLEET["regions"] if r["name"] == name)
        x, y = project(*region["location"])
        assert abs(float(c.attrs["cx"]) - x) < 0.2 and abs(float(c.attrs["cy"]) - y) < 0.2
    assert "role-standby" in circles["ca-west-standby"].classes
    assert "role-active" in circles["us-east"].classes
    # Radius grows with in-flight requests.
    assert float(circles["us-east"].attrs["r"]) > float(circles["ca-central"].attrs["r"])
    assert float(circles["ca-central"].attrs["r"]) > float(circles["sa-east"].attrs["r"])
    labels = {e.attrs["data-region"]: e.text() for e in elements if "label" in e.classes}
    assert labels == {name: name for name in EXPECTED_STATE}

    # Spill arrows: one per known pair, width growing with count; unknown regions are skipped.
    arrows = [e for e in elements if e.tag == "path" and "spill" in e.classes]
    pairs = {(a.attrs["data-from"], a.attrs["data-to"]): a for a in arrows}
    assert set(pairs) == {
        ("sa-east", "us-east"),
        ("eu-central", "eu-west"),
        ("ap-northeast", "ap-southeast"),
        ("us-central-spot", "us-east"),
    }
    for a in arrows:
        assert a.attrs["marker-end"] == "url(#spill-arrow)"
        assert "Q" in a.attrs["d"]  # curved
    assert float(pairs[("sa-east", "us-east")].attrs["stroke-width"]) > float(
        pairs[("eu-central", "eu-west")].attrs["stroke-width"]
    )

    # Region table: a row per region with its state; endpoint table: a row per endpoint.
    rows = [e for e in elements if e.tag == "tr" and "region-row" in e.classes]
    assert [r.attrs["data-region"] for r in rows] == [r["name"] for r in FLEET["regions"]]
    for row in rows:
        state = EXPECTED_STATE[row.attrs["data-region"]]
        assert row.attrs["data-state"] == state
        badge = next(e for e in row.walk() if "badge" in e.classes)
        assert badge.text() == {"unroutable": "not routable"}.get(state, state)
    sa = next(r for r in rows if r.attrs["data-region"] == "sa-east")
    sa_cells = [c.text() for c in sa.children]
    assert sa_cells[:6] == ["sa-east", "sfcompute", "reseller", "BR", "active", "not routable"]
    us = next(r for r in rows if r.attrs["data-region"] == "us-east")
    us_cells = [c.text() for c in us.children]
    assert us_cells[6] == "201" and us_cells[8] == "79%" and us_cells[9] == "182 ms"
    eps = [e for e in elements if e.tag == "tr" and "endpoint-row" in e.classes]
    assert len(eps) == sum(len(r["endpoints"]) for r in FLEET["regions"])
    cordoned = next(e for e in eps if e.attrs["data-state"] == "cordoned")
    assert "node us-central-spot-node-2 failed" in cordoned.text()
    assert "http://10.3.0.7:8000" in cordoned.text()

    # Header and decisions.
    assert by_id(elements, "f-generation").text() == "3"
    assert by_id(elements, "f-uptime").text() == "3d 4h"
    assert by_id(elements, "f-ready").text() == "yes"
    assert by_id(elements, "s-routable").text() == "8 / 10"
    assert by_id(elements, "f-refresh").text() != "never"
    decisions = {e.attrs["data-decision"]: e.text() for e in elements if "bar-row" in e.classes}
    assert decisions["spill"] == "spill1,207"
    assert by_id(elements, "banner").text() == ""
    # Not in fleet mode: no fleet section.
    assert "hidden" in by_id(elements, "fleet-section").attrs

    # Markup from /status stayed text: no element was created from it.
    assert not [e for e in elements if e.tag in ("img", "b")]
    assert HOSTILE in us.text()
    assert by_id(elements, "f-backend").text() == "<b>bold</b>"
    assert next(e for e in elements if e.tag == "title").text() == "gslb status"


def _fleet_parts(elements: list[Element]) -> tuple[Element, dict[str, str], list[Element]]:
    """The fleet section, its facts (key -> value text), and its edge rows."""
    section = by_id(elements, "fleet-section")
    facts = {
        e.attrs["data-fact"]: next(c for c in e.children if "v" in c.classes).text()
        for e in section.walk()
        if "data-fact" in e.attrs
    }
    return section, facts, [e for e in section.walk() if "fleet-edge-row" in e.classes]


async def test_browser_renders_fleet_mode() -> None:
    _need_browser()
    data = _fleet_mode()
    async with serve([data]) as base:
        dom = await asyncio.to_thread(browser.dump_dom, base)
    elements = parse(dom)
    root = next(e for e in elements if e.tag == "html")
    assert root.attrs.get("data-status") == "ok", dom[-3000:]
    section, facts, edges = _fleet_parts(elements)
    assert "hidden" not in section.attrs
    assert facts == {
        "edge": "nyc",
        "site": "new-york",
        "revision": "7",
        "connected": "connected",
        "peers": "2",
        "quorum": "majority",
    }
    connected = next(e for e in section.walk() if e.attrs.get("data-fact") == "connected")
    assert "good" in connected.classes

    # The edges this one hears, itself marked; a peer on another revision is flagged.
    assert [e.attrs["data-edge"] for e in edges] == ["fra", "nyc", HOSTILE]
    cells = {e.attrs["data-edge"]: [c.text() for c in e.children] for e in edges}
    assert cells["fra"] == ["fra", "frankfurt", "7", "0.4 s ago"]
    assert cells["nyc"] == ["nycthis edge", "new-york", "7", "—"]
    assert cells[HOSTILE] == [HOSTILE, "<b>bold</b>", "6", "2.3 s ago"]
    behind = next(e for e in edges if e.attrs["data-edge"] == HOSTILE).children[2]
    assert "warn" in behind.classes

    # Per-region agreement; a region missing figures shows dashes, not zeros.
    rows = {e.attrs["data-region"]: e for e in section.walk() if "fleet-region-row" in e.classes}
    assert list(rows) == ["us-east", "us-west", HOSTILE]
    assert [c.text() for c in rows["us-east"].children] == ["us-east", "3", "3", "yes", "0", "61"]
    assert [c.text() for c in rows["us-west"].children] == ["us-west", "3", "2", "no", "1", "12"]
    assert rows["us-west"].attrs["data-agree"] == "no"
    assert [c.text() for c in rows[HOSTILE].children] == [HOSTILE, "1", "1", "yes", "0", "—"]
    disagree = next(e for e in rows["us-west"].walk() if "badge" in e.classes)
    assert "s-cordoned" in disagree.classes

    counters = {
        e.attrs["data-counter"]: e.text() for e in section.walk() if "data-counter" in e.attrs
    }
    assert counters == {
        "received": "received1204",
        "published": "published602",
        "dropped oversized": "dropped oversized0",
        "dropped malformed": "dropped malformed3",
        "dropped stale": "dropped stale0",
        "dropped expired": "dropped expired1",
    }

    # An endpoint the fleet's quorum takes out is badged like a down one.
    down = next(
        e for e in elements if "endpoint-row" in e.classes and e.attrs["data-state"] == "fleet_down"
    )
    badge = next(e for e in down.walk() if "badge" in e.classes)
    assert badge.text() == "fleet_down" and "s-fleet_down" in badge.classes
    down_rule = next(r for r in asset_text("status.css").split("}") if ".s-down," in r)
    assert ".s-fleet_down" in down_rule.split("{")[0]

    # Peers' strings stayed text: no element was made of them.
    assert not [e for e in elements if e.tag in ("img", "b")]


async def test_browser_fleet_before_the_first_beat() -> None:
    _need_browser()
    data = copy.deepcopy(FLEET)
    # FleetAgent.status() before the health beat: only the agent's own keys.
    data["fleet"] = {"edge": "nyc", "site": "nyc", "revision": None, "connected": False}
    async with serve([data]) as base:
        dom = await asyncio.to_thread(browser.dump_dom, base)
    elements = parse(dom)
    root = next(e for e in elements if e.tag == "html")
    assert root.attrs.get("data-status") == "ok", dom[-3000:]
    section, facts, edges = _fleet_parts(elements)
    assert "hidden" not in section.attrs
    assert facts["revision"] == "none" and facts["connected"] == "not connected"
    assert facts["peers"] == "–" and facts["quorum"] == "–"
    assert edges == []
    assert by_id(elements, "fleet-edges-body").text() == "No edge heard yet."
    assert by_id(elements, "fleet-regions-body").text() == "No word from the fleet yet."
    assert "dropped malformed0" in by_id(elements, "fleet-drops").text()


async def test_browser_keeps_last_data_and_shows_banner_when_status_fails() -> None:
    _need_browser()
    async with serve([FLEET], then_status=503) as base:
        dom = await asyncio.to_thread(browser.dump_dom, base)
    elements = parse(dom)
    root = next(e for e in elements if e.tag == "html")
    assert root.attrs.get("data-status") == "error"
    assert int(root.attrs["data-refreshes"]) >= 2
    banner = by_id(elements, "banner")
    assert "shown" in banner.classes
    assert "HTTP 503" in banner.text() and "showing data from" in banner.text()
    circles = [e for e in elements if e.tag == "circle" and "region" in e.classes]
    assert len(circles) == len(FLEET["regions"])
    assert len([e for e in elements if "region-row" in e.classes]) == len(FLEET["regions"])


async def test_browser_banner_without_any_data() -> None:
    _need_browser()
    async with serve([], then_status=500) as base:
        dom = await asyncio.to_thread(browser.dump_dom, base)
    elements = parse(dom)
    banner = by_id(elements, "banner")
    assert "shown" in banner.classes and "HTTP 500" in banner.text()
    assert not [e for e in elements if e.tag == "circle" and "region" in e.classes]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_browser_screenshot(tmp_path: Path) -> None:
    _need_browser()
    out = tmp_path / "status.png"
    async with serve([FLEET]) as base:
        await asyncio.to_thread(browser.screenshot, base, out, (1400, 900))
    assert _png_size(out) == (1400, 900)
    assert out.stat().st_size > 30_000  # a blank page compresses to a few KB


async def _write_docs_screenshot(path: Path) -> None:
    async with serve([FLEET]) as base:
        await asyncio.to_thread(browser.screenshot, base, path, (1400, 900))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS_SCREENSHOT
    asyncio.run(_write_docs_screenshot(target))
    print(target, _png_size(target), json.dumps(len(FLEET["regions"])), "regions")
