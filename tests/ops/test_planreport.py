"""The plot of ``gslb plan capacity`` (``gslb.ops.planreport``), drawn from hand-made plan.json
documents shaped like ``gslb.model.capacity.plan_document``'s."""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from gslb.ops.planreport import KINDS, NAME, NO_CAPACITY, figure_px, grid, plot_plan, write_plot
from gslb.ops.simreport import render_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOURS = 48


def _region(i: int, hours: int, *, empty: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """One region's entry in ``regions`` and in ``hourly.regions``: a diurnal demand, reserved
    under its trough, on-demand and spot over it; or nothing at all."""
    t = np.arange(hours)
    demand = 20.0 + 8.0 * i + 10.0 * np.sin(2 * np.pi * t / 24.0) ** 2
    reserved = 0 if empty else 16 + 8 * i
    over = np.maximum(demand - reserved, 0.0)
    on_demand = np.zeros(hours) if empty else np.round(0.6 * over, 2)
    spot = np.zeros(hours) if empty else np.round(over - on_demand + 1.0, 2)
    about = {"provider": "aws", "gpu": "H100", "cost_usd": 0.0 if empty else 1234.5 * (i + 1)}
    series = {
        "demand": [0.0] * hours if empty else [round(float(v), 2) for v in demand],
        "reserved": reserved,
        "on_demand": [float(v) for v in on_demand],
        "spot": [float(v) for v in spot],
    }
    return about, series


def _doc(names: list[str], hours: int = HOURS, empty: frozenset[str] = frozenset()) -> Any:
    regions: dict[str, Any] = {}
    hourly: dict[str, Any] = {}
    for i, name in enumerate(names):
        regions[name], hourly[name] = _region(i, hours, empty=name in empty)
    return {
        "inputs": {"hours": hours, "start": "2026-03-16T00:00:00+00:00", "survive": "region"},
        "cost_usd": round(sum(r["cost_usd"] for r in regions.values()), 2),
        "regions": regions,
        "hourly": {"regions": hourly},
    }


# Not in alphabetical order: the panels must follow the document.
THREE = ["us-east", "eu-central", "ap-southeast"]


@pytest.fixture(scope="module")
def doc() -> Any:
    return _doc(THREE, empty=frozenset({"ap-southeast"}))


@pytest.fixture(scope="module")
def drawn(doc: Any) -> Figure:
    fig = plot_plan(doc)
    fig.draw_without_rendering()  # lays out the ticks, as saving does
    return fig


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must have first."""
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def panels(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_visible()]


def texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_writes_a_png_of_the_set_size_and_the_same_bytes_each_time(
    doc: Any, tmp_path: Path
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    path = write_plot(first, doc)
    assert path == first / NAME == first / "plan.png"
    assert sorted(p.name for p in first.iterdir()) == ["plan.png"]
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert grid(3) == (1, 3)  # three regions: one row
    assert png_size(data) == figure_px(3) == (1400, 340)
    assert b"Matplotlib" not in data  # no version text to change the bytes
    assert write_plot(second, copy.deepcopy(doc)).read_bytes() == data


def test_a_panel_per_region_in_the_documents_order_titled_with_its_cost(drawn: Figure) -> None:
    assert [ax.get_title() for ax in panels(drawn)] == [
        r"us-east (aws, H100) \$1,234",
        r"eu-central (aws, H100) \$2,469",
        r"ap-southeast (aws, H100) \$0",
    ]
    assert drawn.get_suptitle() == r"Plan: survive region, total \$3,704"


def test_the_capacity_is_stacked_reserved_on_demand_spot_under_the_demand(
    doc: Any, drawn: Figure
) -> None:
    for ax, name in zip(panels(drawn)[:2], THREE[:2], strict=True):
        h = doc["hourly"]["regions"][name]
        reserved = float(h["reserved"])
        on_demand, spot = np.array(h["on_demand"]), np.array(h["spot"])
        fills = [c for c in ax.collections if isinstance(c, PolyCollection)]
        tops = [
            max(float(np.asarray(p.vertices)[:, 1].max()) for p in c.get_paths()) for c in fills
        ]
        assert tops == pytest.approx(
            [reserved, (reserved + on_demand).max(), (reserved + on_demand + spot).max()]
        )
        # the same colour for a kind in every panel: the one the legend shows
        for fill, (_, _, colour) in zip(fills, KINDS, strict=True):
            assert np.asarray(fill.get_facecolor())[0, :3] == pytest.approx(to_rgb(colour))
        (line,) = ax.get_lines()
        assert np.asarray(line.get_ydata())[:HOURS] == pytest.approx(h["demand"])
        assert line.get_zorder() > max(c.get_zorder() for c in fills)  # the demand on top


def test_an_empty_region_keeps_its_panel_and_says_so(drawn: Figure) -> None:
    *planned, empty = panels(drawn)
    assert texts(empty) == [NO_CAPACITY]
    assert all(NO_CAPACITY not in texts(ax) for ax in planned)


def test_one_legend_for_the_whole_figure(drawn: Figure) -> None:
    assert all(ax.get_legend() is None for ax in drawn.axes)
    (legend,) = drawn.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["reserved", "on-demand", "spot", "demand served"]


def test_the_x_axis_is_shared_with_a_tick_a_day(drawn: Figure) -> None:
    for ax in panels(drawn):
        assert ax.get_xlim() == (0.0, HOURS)
        assert list(ax.get_xticks()) == [0, 24, 48]
    labels = [t.get_text() for t in panels(drawn)[0].get_xticklabels()]
    assert labels == ["0\nMon", "24\nTue", "48\nWed"]  # 2026-03-16 is a Monday


def test_a_long_plan_labels_at_most_eight_days(tmp_path: Path) -> None:
    weeks = 4 * 168
    fig = plot_plan(_doc(["us-east"], hours=weeks))
    ax = panels(fig)[0]
    major, minor = list(ax.get_xticks()), list(ax.get_xticks(minor=True))
    assert 2 <= len(major) <= 8 and major[0] == 0
    assert sorted(major + minor) == list(range(0, weeks + 1, 24))  # still a tick a day


def test_twelve_regions_lay_out_on_four_columns(tmp_path: Path) -> None:
    names = [f"region-{i}" for i in range(12)]
    data = write_plot(tmp_path, _doc(names, hours=168)).read_bytes()
    assert grid(12) == (3, 4)
    assert png_size(data) == figure_px(12) == (1400, 800)
    assert [ax.get_title().split(" ")[0] for ax in panels(plot_plan(_doc(names)))] == names


def test_a_short_last_row_keeps_the_x_labels_above_its_blanks() -> None:
    fig = plot_plan(_doc([f"region-{i}" for i in range(10)]))
    fig.draw_without_rendering()
    assert grid(10) == (3, 4)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 10 and len(fig.axes) == 12
    labelled = [any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()) for ax in shown]
    # row 1: none; row 2: the two over the blanks; row 3: both
    assert labelled == [False] * 6 + [True, True, True, True]
    named = [ax.get_xlabel() for ax in shown]
    assert named == [""] * 6 + ["hours from Mon 16 Mar 2026 00:00 UTC"] * 4


def test_a_plan_without_regions_says_so(tmp_path: Path) -> None:
    doc = _doc([])
    data = write_plot(tmp_path, doc).read_bytes()
    assert png_size(data) == figure_px(0) == figure_px(1)
    (ax,) = panels(plot_plan(doc))
    assert texts(ax) == ["the plan has no regions"]


def test_odd_names_are_drawn_as_they_are(tmp_path: Path) -> None:
    doc = _doc(["<b>", "us$east$"])
    doc["regions"]["<b>"]["provider"] = "a & b"
    doc["inputs"]["survive"] = "$x$"
    path = write_plot(tmp_path, doc)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    fig = plot_plan(doc)
    assert fig.get_suptitle().startswith(r"Plan: survive \$x\$, total \$")
    titles = [ax.get_title() for ax in panels(fig)]
    assert titles[0] == r"<b> (a & b, H100) \$1,234"
    assert titles[1].startswith(r"us\$east\$ (aws")  # no math mode


def test_what_is_drawn_follows_the_document(doc: Any) -> None:
    base = render_png(plot_plan(doc))
    more_spot = copy.deepcopy(doc)
    more_spot["hourly"]["regions"]["us-east"]["spot"][10] += 25.0
    assert render_png(plot_plan(more_spot)) != base
