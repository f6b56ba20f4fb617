"""The plot of ``gslb plan capacity``: ``plan.png``, demand against the capacity planned for it.

``write_plot(out, doc)`` draws the ``plan.json`` document (``gslb.model.capacity``) as small
multiples, one panel per region of the document in its order, on a grid of three columns (four
past nine regions). Each panel stacks the capacity bought there hour by hour, reserved (constant)
under on-demand under spot, and draws the demand served there as a line on top, so a glance
shows where the plan's headroom is and what it is made of. The x axis is shared: hours from the
plan's start, a tick a day. A region the plan buys nothing in still gets its panel, marked, so
that its absence from the stack is not mistaken for a drawing fault.

Drawn like ``gslb simulate``'s plots (``gslb.ops.simreport``): a ``matplotlib.figure.Figure``
on the Agg canvas, never pyplot; a fixed width and dpi, a height set by the number of rows, and
no ``Software`` text in the PNG, so one document gives the same bytes each time.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from gslb.ops.simreport import DPI, NONE, _no_data, _plain, render_png

__all__ = ["NAME", "dollars", "figure_px", "grid", "plot_plan", "write_plot"]

NAME: Final = "plan.png"
WIDTH_PX: Final = 1400
PANEL_PX: Final = 230  # the height of one row of panels
CHROME_PX: Final = 110  # the figure's title, legend and axis label
MAX_DAY_LABELS: Final = 8  # past this, days are minor ticks and only every k-th is labelled

# One colour per kind of capacity in every panel; the legend is drawn once, for them all.
KINDS: Final = (
    ("reserved", "reserved", "#4c72b0"),
    ("on_demand", "on-demand", "#dd8452"),
    ("spot", "spot", "#55a868"),
)
_DEMAND: Final = "#1d2329"
NO_CAPACITY: Final = "no capacity planned"

FloatArray = npt.NDArray[np.float64]


def write_plot(out: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``plan.png`` into ``out`` (which exists) and return its path."""
    path = out / NAME
    path.write_bytes(render_png(plot_plan(doc)))
    return path


def grid(regions: int) -> tuple[int, int]:
    """Rows and columns for ``regions`` panels: three columns, four past nine regions, fewer
    when there are fewer panels than that; one panel at least (an empty plan says so)."""
    n = max(regions, 1)
    columns = 4 if n > 9 else min(n, 3)
    return math.ceil(n / columns), columns


def figure_px(regions: int) -> tuple[int, int]:
    """The PNG's width and height in pixels for ``regions`` panels."""
    rows, _ = grid(regions)
    return WIDTH_PX, CHROME_PX + PANEL_PX * rows


def plot_plan(doc: Mapping[str, Any]) -> Figure:
    inputs: Mapping[str, Any] = doc.get("inputs", {})
    hourly: Mapping[str, Mapping[str, Any]] = doc.get("hourly", {}).get("regions", {})
    about: Mapping[str, Mapping[str, Any]] = doc.get("regions", {})
    names = [*about, *(r for r in hourly if r not in about)]
    hours = _hours(inputs, hourly.values())
    width, height = figure_px(len(names))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    rows, columns = grid(len(names))
    axes = fig.subplots(rows, columns, sharex=True, squeeze=False).ravel()
    panels = max(len(names), 1)
    for i, ax in enumerate(axes):
        if i >= panels:
            ax.set_visible(False)
            continue
        if names:
            _panel(ax, str(names[i]), about.get(names[i], {}), hourly.get(names[i], {}), hours)
        else:
            _no_data(ax, "the plan has no regions")
            ax.set_xlim(0.0, float(hours))
        if i % columns == 0:
            ax.set_ylabel("GPUs")
        if i + columns >= panels:
            # the lowest panel of its column: sharex left tick labels on the bottom row only,
            # and a blank under this one would leave its column unlabelled. An axis label per
            # column, not one for the figure: constrained layout makes room for a figure's
            # label or for a legend outside the axes, not for both.
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(_x_label(inputs.get("start")), fontsize=8)
    _day_ticks(axes[0], hours, inputs.get("start"))
    survive, total = inputs.get("survive", "?"), dollars(doc.get("cost_usd"))
    fig.suptitle(_plain(f"Plan: survive {survive}, total {total}"))
    fig.legend(handles=_legend(), loc="outside lower center", ncols=len(KINDS) + 1, fontsize=9)
    return fig


def _hours(inputs: Mapping[str, Any], hourly: Iterable[Mapping[str, Any]]) -> int:
    """The planned hours: the inputs say, unless a series is longer (then it is drawn whole)."""
    longest = max(
        (len(h.get(key, ())) for h in hourly for key in ("demand", "on_demand", "spot")),
        default=0,
    )
    return max(int(inputs.get("hours", 0)), longest, 1)


def _series(values: Sequence[float | None], hours: int) -> FloatArray:
    """One value per hour and one more, repeating the last, so that a ``post`` step draws the
    last hour to its end; a short series is 0 past its end, a gap (None) is 0."""
    y = np.zeros(hours + 1, dtype=np.float64)
    given = np.array([0.0 if v is None else float(v) for v in values[:hours]], dtype=np.float64)
    y[: given.size] = given
    y[hours] = y[hours - 1]
    return y


def _panel(
    ax: Axes, name: str, about: Mapping[str, Any], hourly: Mapping[str, Any], hours: int
) -> None:
    x = np.arange(hours + 1, dtype=np.float64)
    reserved = float(hourly.get("reserved", 0.0))
    layers = {
        "reserved": np.full(hours + 1, reserved, dtype=np.float64),
        "on_demand": _series(hourly.get("on_demand", ()), hours),
        "spot": _series(hourly.get("spot", ()), hours),
    }
    base = np.zeros(hours + 1, dtype=np.float64)
    for key, _, colour in KINDS:
        top = base + layers[key]
        ax.fill_between(x, base, top, step="post", color=colour, alpha=0.85, linewidth=0)
        base = top
    demand = _series(hourly.get("demand", ()), hours)
    ax.step(x, demand, where="post", color=_DEMAND, linewidth=1.2, zorder=3)
    if not base.any():
        _no_data(ax, NO_CAPACITY)
    ax.set_xlim(0.0, float(hours))
    ax.set_ylim(0.0, max(float(base.max()), float(demand.max()), 1.0) * 1.08)
    ax.set_title(_title(name, about), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def _title(name: str, about: Mapping[str, Any]) -> str:
    provider = str(about.get("provider", "?"))
    gpu = str(about.get("gpu", "?"))
    return _plain(f"{name} ({provider}, {gpu}) {dollars(about.get('cost_usd'))}")


def dollars(v: float | None) -> str:
    """Whole dollars, as the plan's text table gives them: a week's capacity costs thousands."""
    return NONE if v is None else f"${float(v):,.0f}"


def _legend() -> list[Patch | Line2D]:
    handles: list[Patch | Line2D] = [Patch(color=c, alpha=0.85, label=t) for _, t, c in KINDS]
    handles.append(Line2D([], [], color=_DEMAND, linewidth=1.2, label="demand served"))
    return handles


def _start(start: object) -> datetime.datetime | None:
    try:
        when = datetime.datetime.fromisoformat(str(start))
    except ValueError:
        return None
    # plan.json writes UTC with its offset; a bare time is taken as UTC, never as local time
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC)


def _x_label(start: object) -> str:
    when = _start(start)
    if when is None:
        return "hours from the plan's start"
    return f"hours from {when:%a %d %b %Y %H:%M} UTC"


def _day_ticks(ax: Axes, hours: int, start: object) -> None:
    """A tick a day (the axis is shared: one panel sets them all), labelled with the hour and,
    where the start is known, the weekday (the axis label names the start's date); past
    ``MAX_DAY_LABELS`` days, only every k-th day is labelled, with its date, and the rest are
    minor ticks. Short labels: four columns leave a panel some 300 pixels."""
    days = hours // 24
    step = max(1, math.ceil((days + 1) / MAX_DAY_LABELS))
    major = [24 * d for d in range(0, days + 1, step)]
    minor = [24 * d for d in range(days + 1) if d % step]
    when = _start(start)
    day = "%a" if step == 1 else "%d %b"
    labels = [
        f"{h}" if when is None else f"{h}\n{when + datetime.timedelta(hours=h):{day}}"
        for h in major
    ]
    ax.set_xticks(major, labels)
    ax.set_xticks(minor, minor=True)
