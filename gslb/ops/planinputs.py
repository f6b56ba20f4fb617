"""The inputs of ``gslb plan capacity``: hourly GPU demand per zone, and instance prices.

Every problem in an operator's file is a ``PlanInputError`` of one line, ``path:line: what``
(``path:data.result[2].values[7]: what`` for a Prometheus export), that never repeats more
than 64 characters of a bad field: the CLI prints it and exits 2 (``docs/design.md``).

Demand (``read_demand``), told apart by content, not by extension:

* a CSV with the header ``hour,zone,gpus`` (any order): ``hour`` in ISO 8601 UTC (``Z`` or
  ``+00:00``) on the hour, the hour that starts then; ``zone`` an ISO 3166-1 alpha-2 country
  code (upper case) or a gslb region name; ``gpus`` the GPUs that zone needed in that hour, a
  number >= 0. A missing (zone, hour) is 0; a (zone, hour) given twice is an error; the hours
  must run without a gap from the first to the last.
* the JSON body of a Prometheus ``/api/v1/query_range`` answer, with ``step=1h``. Each series
  names its zone in the label ``zone``, else ``region``, else ``country``; its values are GPUs.
  gslb exports ``gslb_inflight{region}``, the requests in flight from an edge to a region, so
  the recommended query is::

      sum by (region) (avg_over_time(gslb_inflight[1h])) / REQUESTS_PER_GPU

  with ``step=1h`` and ``start`` on the hour. ``avg_over_time(...[1h])`` is the mean number
  of requests in flight over the hour before each step; ``sum by (region)`` adds up the edges;
  dividing by the requests one GPU runs at once turns requests into GPUs: a server of 8 GPUs
  that runs 16 requests at once (continuous batching) has REQUESTS_PER_GPU = 16 / 8 = 2, so
  40 requests in flight keep 20 GPUs busy. Prometheus stamps each window's mean at its end,
  so the value at ``T`` is the demand of the hour that starts at ``T - 1h``. Zones are then
  the regions that served the demand, after routing; countries need a ``country`` label
  from elsewhere (gslb keeps no per-country series).

Prices (``read_prices``): a CSV shaped like SkyPilot's catalog (``InstanceType``,
``AcceleratorName``, ``AcceleratorCount``, ``Price``, ``SpotPrice``, ``Region``), one row per
(region, GPU type), prices in USD per instance-hour; the offers come out per GPU-hour.

``demand_from_scenario`` turns a ``gslb simulate`` scenario into weeks of hourly demand per
country, for planning on one part of a series and replaying the rest.
"""

from __future__ import annotations

import csv
import datetime
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from gslb.core.config import Config
from gslb.core.countries import is_country
from gslb.model.demand import SECONDS_PER_HOUR, Cell, cluster, load_cities, rate
from gslb.model.engine import mean_service_s
from gslb.model.procure import Offer
from gslb.model.scenario import Scenario

MAX_HOURS: Final = 10_000
MAX_ZONES: Final = 1_000
MAX_FILE_BYTES: Final = 512 * 1024 * 1024  # 10,000 hours x 1,000 zones of CSV fits
SHOWN_CHARS: Final = 64  # the most of a bad field an error repeats
HOURS_PER_WEEK: Final = 168
DEMAND_COLUMNS: Final = ("hour", "zone", "gpus")
PRICE_COLUMNS: Final = (
    "region",
    "provider",
    "instance_type",
    "gpu",
    "gpus",
    "on_demand",
    "spot",
    "spot_availability",
    "reserved",
    "reserved_term_months",
)
# An empty optional cell has a meaning (no spot market, no reservation, a 12-month term);
# a file may leave these columns out altogether.
OPTIONAL_PRICE_COLUMNS: Final = frozenset(
    {"spot", "spot_availability", "reserved", "reserved_term_months"}
)
# Not in ISO 3166-1, yet GeoNames (the simulator's cities) and GeoIP databases use it: Kosovo.
USER_ASSIGNED_COUNTRIES: Final = frozenset({"XK"})
DEFAULT_TERM_MONTHS: Final = 12
MAX_TERM_MONTHS: Final = 120
MAX_GPUS_PER_INSTANCE: Final = 1024
MAX_PRICE: Final = 1e6  # USD per instance-hour: more is a typo, not a price
_FRAME_MINUTES: Final = 60  # points per hour when averaging the diurnal curve over an hour

FloatArray = npt.NDArray[np.float64]


class PlanInputError(ValueError):
    """A bad input file: ``str(err)`` is one line, ``path:where: what``."""

    def __init__(self, path: str, where: str | int | None, message: str) -> None:
        self.path = path
        self.where = where
        self.message = _one_line(message)
        prefix = f"{path}:{where}" if where not in (None, "") else path
        super().__init__(f"{prefix}: {self.message}")


@dataclass(frozen=True, slots=True, eq=False)  # == on arrays has no single truth value
class Demand:
    """GPUs needed per zone and hour, from ``start`` (UTC, on the hour) on."""

    start: datetime.datetime
    zones: tuple[str, ...]  # sorted
    gpus: FloatArray  # (zones, hours)

    @property
    def hours(self) -> int:
        return int(self.gpus.shape[1])


# ------------------------------------------------------------------------------ demand


def read_demand(path: str | Path, *, regions: Collection[str] | None = None) -> Demand:
    """The demand in a CSV or a Prometheus export; ``PlanInputError`` on any problem.

    With ``regions`` (the config's region names), a zone that is not a country must be one
    of them.
    """
    name = str(path)
    text = _read_text(name)
    if text.lstrip().startswith("{"):
        return _demand_from_prometheus(name, text, regions)
    return _demand_from_csv(name, text, regions)


def _demand_from_csv(path: str, text: str, regions: Collection[str] | None) -> Demand:
    rows = _csv_rows(path, text)
    header_line, header = next(rows, (0, []))
    if not header:
        raise PlanInputError(path, None, "empty file: expected a header hour,zone,gpus")
    col = _header(path, header_line, header, DEMAND_COLUMNS, frozenset())
    cells = _Cells(path)
    hours = _HourParser()
    for line, row in rows:
        if len(row) != len(header):
            raise PlanInputError(path, line, f"expected {len(header)} fields, got {len(row)}")
        hour = hours.parse(row[col["hour"]], path, line)
        zone = _zone(row[col["zone"]], path, line, regions)
        gpus = _gpus(row[col["gpus"]], path, line)
        cells.add(zone, hour, gpus, line)
    return cells.demand()


def _demand_from_prometheus(path: str, text: str, regions: Collection[str] | None) -> Demand:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PlanInputError(path, None, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanInputError(path, None, "expected a Prometheus query_range answer (an object)")
    status = doc.get("status")
    if status == "error":
        kind = _show(doc.get("errorType", ""))
        raise PlanInputError(
            path, "status", f"the export is an error ({kind}): {_show(doc.get('error', ''))}"
        )
    if status != "success":
        raise PlanInputError(path, "status", f'expected "success", got {_show(status)}')
    data = doc.get("data")
    if not isinstance(data, dict):
        raise PlanInputError(path, "data", "expected an object")
    result_type = data.get("resultType")
    if result_type != "matrix":
        raise PlanInputError(
            path,
            "data.resultType",
            f'expected "matrix" (a range query, /api/v1/query_range), got {_show(result_type)}',
        )
    result = data.get("result")
    if not isinstance(result, list):
        raise PlanInputError(path, "data.result", "expected a list of series")
    if not result:
        raise PlanInputError(path, "data.result", "no series: the query matched nothing")
    series = [_series(path, f"data.result[{i}]", s, regions) for i, s in enumerate(result)]
    _check_times(path, series)
    cells = _Cells(path)
    zones: set[str] = set()
    for where, zone, points in series:
        if zone in zones:
            raise PlanInputError(
                path, f"{where}.metric", f"a second series for zone {zone}: sum by (region)"
            )
        zones.add(zone)
        for j, (ts, gpus) in enumerate(points):
            # The mean over (T - 1h, T] is stamped at T: it is the hour that starts at T - 1h.
            cells.add(zone, int(ts) // 3600 - 1, gpus, f"{where}.values[{j}]")
    return cells.demand()


_Series = tuple[str, str, list[tuple[float, float]]]
# Unix times from 1970 to about the year 5000: anything else is no export of this era.
_LATEST_TS = 1e11


def _series(path: str, where: str, s: Any, regions: Collection[str] | None) -> _Series:
    if not isinstance(s, dict):
        raise PlanInputError(path, where, "expected an object with metric and values")
    metric = s.get("metric")
    if not isinstance(metric, dict):
        raise PlanInputError(path, f"{where}.metric", "expected an object of labels")
    label = next((k for k in ("zone", "region", "country") if k in metric), None)
    if label is None:
        raise PlanInputError(
            path, f"{where}.metric", "no zone, region or country label: sum by (region)"
        )
    zone = _zone(metric[label], path, f"{where}.metric.{label}", regions)
    values = s.get("values")
    if not isinstance(values, list) or not values:
        raise PlanInputError(path, f"{where}.values", "expected a list of [time, value] pairs")
    return where, zone, [_point(path, f"{where}.values[{j}]", v) for j, v in enumerate(values)]


def _point(path: str, where: str, v: Any) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise PlanInputError(path, where, 'expected a pair [time, "value"]')
    ts, value = v
    if (
        isinstance(ts, bool)
        or not isinstance(ts, int | float)
        or not 0 <= ts < _LATEST_TS  # NaN fails this too
    ):
        raise PlanInputError(path, f"{where}[0]", f"expected a Unix time, got {_show(ts)}")
    return float(ts), _gpus(value, path, f"{where}[1]")


def _check_times(path: str, series: Sequence[_Series]) -> None:
    """Every series steps by whole hours from a time on the hour, and the step is 1 h.

    A point missing from a series (no samples that hour) is a zero, not an error: only the
    smallest step of all is the query's.
    """
    smallest: float | None = None
    for where, _, points in series:
        for j in range(1, len(points)):
            step = points[j][0] - points[j - 1][0]
            if step <= 0:
                raise PlanInputError(
                    path, f"{where}.values[{j}][0]", "times must increase along a series"
                )
            if step % 3600 != 0:
                raise PlanInputError(
                    path,
                    f"{where}.values[{j}][0]",
                    f"the step is {step:g} s: query with step=1h (3600 s)",
                )
            smallest = step if smallest is None else min(smallest, step)
    if smallest is not None and smallest != 3600:
        raise PlanInputError(
            path, "data.result", f"the step is {smallest:g} s: query with step=1h (3600 s)"
        )
    for where, _, points in series:
        ts = points[0][0]
        if ts % 3600 != 0:
            raise PlanInputError(
                path,
                f"{where}.values[0][0]",
                f"{_iso(ts)} is not on the hour: query with start on the hour",
            )


class _Cells:
    """(zone, hour) -> GPUs as they are read: a duplicate or a gap is an error."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.zones: dict[str, int] = {}
        self.cells: dict[tuple[int, int], float] = {}
        self.first_line: dict[int, str | int] = {}  # per hour: where it first appears
        self.low: int | None = None
        self.high: int | None = None

    def add(self, zone: str, hour: int, gpus: float, where: str | int) -> None:
        z = self.zones.setdefault(zone, len(self.zones))
        if len(self.zones) > MAX_ZONES:
            raise PlanInputError(self.path, where, f"more than {MAX_ZONES} zones")
        if (z, hour) in self.cells:
            raise PlanInputError(
                self.path, where, f"zone {zone} at {_iso(hour * 3600)} is given twice"
            )
        self.low = hour if self.low is None else min(self.low, hour)
        self.high = hour if self.high is None else max(self.high, hour)
        if self.high - self.low + 1 > MAX_HOURS:
            raise PlanInputError(self.path, where, f"spans more than {MAX_HOURS} hours")
        self.cells[(z, hour)] = gpus
        self.first_line.setdefault(hour, where)

    def demand(self) -> Demand:
        if self.low is None or self.high is None:
            raise PlanInputError(self.path, None, "no demand: the file has no rows")
        low, high = self.low, self.high
        present = np.zeros(high - low + 1, dtype=np.bool_)
        present[np.array(list(self.first_line), dtype=np.int64) - low] = True
        if not present.all():
            gap = int(np.argmin(present))  # the first missing hour
            after = gap + int(np.argmax(present[gap:]))  # the next hour present
            raise PlanInputError(
                self.path,
                self.first_line[low + after],
                f"no rows for {_iso((low + gap) * 3600)}: hours must run without a gap from "
                f"{_iso(low * 3600)} to {_iso(high * 3600)}",
            )
        zones = tuple(sorted(self.zones))
        row = {zone: i for i, zone in enumerate(zones)}
        order = [row[zone] for zone in self.zones]  # reading order -> sorted row
        gpus = np.zeros((len(zones), high - low + 1), dtype=np.float64)
        for (z, hour), value in self.cells.items():
            gpus[order[z], hour - low] = value
        start = datetime.datetime.fromtimestamp(low * 3600, tz=datetime.UTC)
        return Demand(start=start, zones=zones, gpus=gpus)


class _HourParser:
    """``hour`` fields to hours since the epoch; each distinct string is parsed once."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def parse(self, field: str, path: str, line: int) -> int:
        hour = self.seen.get(field)
        if hour is None:
            hour = _hour(field, path, line)
            self.seen[field] = hour
        return hour


def _hour(field: str, path: str, line: int) -> int:
    try:
        t = datetime.datetime.fromisoformat(field)
    except ValueError:
        raise PlanInputError(
            path, line, f"hour {_show(field)} is not an ISO 8601 time such as 2026-03-18T00:00Z"
        ) from None
    offset = t.utcoffset()
    if offset is None:
        raise PlanInputError(path, line, f"hour {_show(field)} has no time zone: end it in Z")
    if offset:
        raise PlanInputError(
            path, line, f"hour {_show(field)} is not UTC: give hours in UTC (Z or +00:00)"
        )
    if (t.minute, t.second, t.microsecond) != (0, 0, 0):
        raise PlanInputError(path, line, f"hour {_show(field)} is not on the hour")
    return int(t.timestamp()) // 3600


def _zone(v: Any, path: str, where: str | int, regions: Collection[str] | None) -> str:
    """A country code, or a region name (one of ``regions`` when they are given)."""
    if not isinstance(v, str) or not v:
        raise PlanInputError(path, where, f"zone: expected a country or region, got {_show(v)}")
    if len(v) == 2 and v.isascii() and v.isalpha() and v.isupper():
        if not (is_country(v) or v in USER_ASSIGNED_COUNTRIES):
            raise PlanInputError(path, where, f"zone {_show(v)} is not an ISO 3166-1 country")
        return v
    if len(v) > 128 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in v):
        raise PlanInputError(
            path, where, f"zone {_show(v)} is neither a country code (upper case) nor a region"
        )
    if regions is not None and v not in regions:
        raise PlanInputError(path, where, f"zone {_show(v)} is no region of the config")
    return v


def _gpus(v: Any, path: str, where: str | int) -> float:
    x = _number(v)
    if x is None or not math.isfinite(x) or x < 0:
        raise PlanInputError(path, where, f"gpus: expected a number >= 0, got {_show(v)}")
    return x


# ------------------------------------------------------------------------------ prices


def read_prices(path: str | Path, *, regions: Mapping[str, str] | None = None) -> list[Offer]:
    """The offers in a prices CSV, in file order; ``PlanInputError`` on any problem.

    With ``regions`` (region name -> provider, from the config), each row's region must be
    one of them and its provider the region's.
    """
    name = str(path)
    rows = _csv_rows(name, _read_text(name))
    header_line, header = next(rows, (0, []))
    if not header:
        raise PlanInputError(name, None, "empty file: expected a header " + ",".join(PRICE_COLUMNS))
    col = _header(name, header_line, header, PRICE_COLUMNS, OPTIONAL_PRICE_COLUMNS)
    offers: list[Offer] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise PlanInputError(name, line, f"expected {len(header)} fields, got {len(row)}")
        cell = {c: (row[i] if i >= 0 else "") for c, i in col.items()}
        offer = _offer(cell, name, line, regions)
        key = (offer.region, offer.gpu)
        if key in seen:
            raise PlanInputError(
                name,
                line,
                f"a second offer for {offer.gpu} in {offer.region} (the first is on line "
                f"{seen[key]}): one row per region and GPU",
            )
        seen[key] = line
        offers.append(offer)
    if not offers:
        raise PlanInputError(name, None, "no offers: the file has no rows")
    return offers


def _offer(
    cell: Mapping[str, str], path: str, line: int, regions: Mapping[str, str] | None
) -> Offer:
    region = _name(cell["region"], "region", path, line)
    provider = _name(cell["provider"], "provider", path, line)
    if regions is not None:
        if region not in regions:
            raise PlanInputError(path, line, f"region {_show(region)} is no region of the config")
        if regions[region] != provider:
            raise PlanInputError(
                path,
                line,
                f"provider {_show(provider)}: region {region} is on {regions[region]} in the "
                "config",
            )
    _name(cell["instance_type"], "instance_type", path, line)
    gpu = _name(cell["gpu"], "gpu", path, line)
    gpus = _whole(cell["gpus"], "gpus", 1, MAX_GPUS_PER_INSTANCE, path, line)
    on_demand = _price(cell["on_demand"], "on_demand", path, line)
    if on_demand is None:
        raise PlanInputError(path, line, "on_demand: required (USD per instance-hour)")
    spot = _price(cell["spot"], "spot", path, line)
    availability = _availability(cell["spot_availability"], spot is not None, path, line)
    reserved = _price(cell["reserved"], "reserved", path, line)
    term_field = cell["reserved_term_months"].strip()
    if term_field and reserved is None:
        raise PlanInputError(path, line, "reserved_term_months without a reserved price")
    term = (
        _whole(term_field, "reserved_term_months", 1, MAX_TERM_MONTHS, path, line)
        if term_field
        else DEFAULT_TERM_MONTHS
    )
    try:
        return _make_offer(
            region, provider, gpu, gpus, on_demand, spot, availability, reserved, term
        )
    except ValueError as exc:  # a price so small that per GPU-hour it rounds to 0
        raise PlanInputError(path, line, str(exc)) from None


def _make_offer(
    region: str,
    provider: str,
    gpu: str,
    gpus: int,
    on_demand: float,
    spot: float | None,
    availability: float,
    reserved: float | None,
    term: int,
) -> Offer:
    return Offer(
        region=region,
        provider=provider,
        gpu=gpu,
        on_demand=on_demand / gpus,
        spot=None if spot is None else spot / gpus,
        spot_availability=availability,
        reserved=None if reserved is None else reserved / gpus,
        reserved_term_months=term,
        gpus_per_instance=gpus,
    )


def _name(field: str, column: str, path: str, line: int) -> str:
    v = field.strip()
    if not v:
        raise PlanInputError(path, line, f"{column}: required")
    if len(v) > 128 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in v):
        raise PlanInputError(
            path, line, f"{column}: {_show(v)} is not a name (letters, digits, '-', '_', '.')"
        )
    return v


def _whole(field: str, column: str, low: int, high: int, path: str, line: int) -> int:
    v = field.strip()
    if not v.isascii() or not v.isdigit() or not low <= int(v) <= high:
        raise PlanInputError(
            path, line, f"{column}: expected a whole number from {low} to {high}, got {_show(v)}"
        )
    return int(v)


def _price(field: str, column: str, path: str, line: int) -> float | None:
    """USD per instance-hour, > 0; ``None`` for an empty cell."""
    v = field.strip()
    if not v:
        return None
    x = _number(v)
    if x is None or not 0 < x <= MAX_PRICE:  # NaN fails this too
        raise PlanInputError(
            path, line, f"{column}: expected a price > 0 (USD per instance-hour), got {_show(v)}"
        )
    return x


def _availability(field: str, has_spot: bool, path: str, line: int) -> float:
    v = field.strip()
    if not v:
        if has_spot:
            raise PlanInputError(
                path, line, "spot_availability: required with a spot price (0 to 1)"
            )
        return 0.0
    x = _number(v)
    if x is None or not 0.0 <= x <= 1.0:  # NaN fails both comparisons
        raise PlanInputError(path, line, f"spot_availability: expected 0 to 1, got {_show(v)}")
    if x > 0 and not has_spot:
        raise PlanInputError(path, line, "spot_availability without a spot price")
    return x


# ------------------------------------------------------------------- shared readers


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PlanInputError(path, None, f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PlanInputError(path, None, f"larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        return raw.decode("utf-8-sig")  # a spreadsheet's byte-order mark is no column name
    except UnicodeDecodeError as exc:
        raise PlanInputError(path, None, f"not UTF-8 text (byte {exc.start})") from None


def _csv_rows(path: str, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) per non-blank record, fields stripped; the line is where it ends."""
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise PlanInputError(path, reader.line_num, f"not valid CSV: {exc}") from None
        if row and any(field.strip() for field in row):
            yield reader.line_num, [field.strip() for field in row]


def _header(
    path: str, line: int, header: list[str], columns: Sequence[str], optional: frozenset[str]
) -> dict[str, int]:
    """Column name -> index (-1 for an optional column the file leaves out)."""
    known = set(columns)
    for name in header:
        if name not in known:
            raise PlanInputError(
                path, line, f"unknown column {_show(name)} (columns: {', '.join(columns)})"
            )
    if len(set(header)) != len(header):
        twice = next(n for n in header if header.count(n) > 1)
        raise PlanInputError(path, line, f"column {_show(twice)} appears twice")
    missing = [c for c in columns if c not in header and c not in optional]
    if missing:
        raise PlanInputError(path, line, f"missing column {missing[0]} (a header is required)")
    return {c: header.index(c) if c in header else -1 for c in columns}


def _number(v: Any) -> float | None:
    """A float from a CSV field or a Prometheus value string; ``None`` when it is not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if not isinstance(v, str) or not v or len(v) > 64 or "_" in v:
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _show(v: Any) -> str:
    """A bad field, quoted, cut at 64 characters: an error never echoes a whole line."""
    if not isinstance(v, str):
        s = repr(v)
        return s[:SHOWN_CHARS] + "..." if len(s) > SHOWN_CHARS else s
    shown = repr(v[:SHOWN_CHARS])
    return shown + "..." if len(v) > SHOWN_CHARS else shown


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _iso(ts: float) -> str:
    t = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_demand_csv(demand: Demand, decimals: int = 3) -> str:
    """``demand`` as the CSV ``read_demand`` reads: hour by hour, zones sorted, zeros kept."""
    lines = ["hour,zone,gpus"]
    base = int(demand.start.timestamp())
    for h in range(demand.hours):
        stamp = _iso(base + h * 3600)
        for z, zone in enumerate(demand.zones):
            value = round(float(demand.gpus[z, h]), decimals)
            lines.append(f"{stamp},{zone},{value:.{decimals}f}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- demand from a scenario


def demand_from_scenario(
    cfg: Config,
    scenario: Scenario,
    weeks: int,
    rng: np.random.Generator,
    *,
    growth_per_week: float = 0.01,
    weekend: float = 0.8,
    noise_sigma: float = 0.05,
) -> Demand:
    """``weeks`` weeks of hourly GPU demand per country, from the scenario's demand model.

    An hour's GPUs in a cell = its mean request rate over the hour (``rate()``) x the mean
    time a request holds a slot / the requests one GPU runs at once (``concurrency / gpus``),
    summed per country. The scenario's day repeats, times a weekly shape (``weekend`` on
    Saturdays and Sundays, local time), times ``(1 + growth_per_week) ** (hour / 168)``, times
    one lognormal draw of mean 1 per country and UTC day (``noise_sigma``, from ``rng``).
    Starts at ``scenario.date`` 00:00 UTC, whatever the scenario's ``start_utc_hour``.
    ``cfg`` is the fleet the plan is for: demand does not depend on it (its zones are
    countries), so callers can plan and replay one fleet with one call shape.
    """
    del cfg  # the demand is the world's, whatever the fleet
    if not 1 <= weeks <= MAX_HOURS // HOURS_PER_WEEK:
        raise ValueError(f"weeks must be 1 to {MAX_HOURS // HOURS_PER_WEEK}, got {weeks}")
    if not (math.isfinite(growth_per_week) and growth_per_week > -1.0):
        raise ValueError(f"growth_per_week must be > -1, got {growth_per_week}")
    if not (math.isfinite(weekend) and weekend >= 0):
        raise ValueError(f"weekend must be >= 0, got {weekend}")
    if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    cells = cluster(load_cities(scenario.min_city_population), scenario.cells, scenario.date)
    hours = weeks * HOURS_PER_WEEK
    requests_per_gpu = scenario.server.concurrency / scenario.server.gpus
    gpus_per_rps = mean_service_s(scenario) / requests_per_gpu
    day = _hourly_day(cells, scenario)  # (cells, 24) requests/s
    per_cell = np.tile(day, hours // 24) * gpus_per_rps
    per_cell *= _weekly_shape(cells, scenario.date, hours, weekend)
    zones = tuple(sorted({c.country for c in cells}))
    row = {zone: i for i, zone in enumerate(zones)}
    owner = np.zeros((len(zones), len(cells)), dtype=np.float64)
    owner[[row[c.country] for c in cells], np.arange(len(cells))] = 1.0
    gpus: FloatArray = owner @ per_cell
    h = np.arange(hours, dtype=np.float64)
    gpus *= ((1.0 + growth_per_week) ** (h / HOURS_PER_WEEK))[None, :]
    # E[exp(N(mu, s^2))] = exp(mu + s^2 / 2): this mu keeps the noise's mean at 1.
    noise = rng.lognormal(-(noise_sigma**2) / 2.0, noise_sigma, size=(len(zones), hours // 24))
    gpus *= np.repeat(noise, 24, axis=1)
    d = scenario.date
    start = datetime.datetime(d.year, d.month, d.day, tzinfo=datetime.UTC)
    return Demand(start=start, zones=zones, gpus=gpus)


def _hourly_day(cells: Sequence[Cell], scenario: Scenario) -> FloatArray:
    """Each cell's mean request rate over each UTC hour of the day: (cells, 24).

    Averaged over one point per minute, not taken at the hour's midpoint: a day of 1,440
    evenly spaced points still averages the curve to exactly 1.
    """
    t = (np.arange(24 * _FRAME_MINUTES, dtype=np.float64) + 0.5) * (
        SECONDS_PER_HOUR / _FRAME_MINUTES
    )
    r = rate(cells, scenario.total_rps, scenario.diurnal, t, start_utc_hour=0.0)
    out: FloatArray = r.reshape(24, _FRAME_MINUTES, len(cells)).mean(axis=1).T
    return out


def _weekly_shape(
    cells: Sequence[Cell], first_day: datetime.date, hours: int, weekend: float
) -> FloatArray:
    """``weekend`` in the hours of each cell's local Saturdays and Sundays, else 1."""
    offsets = np.array([c.utc_offset_h for c in cells], dtype=np.float64)
    local_h = np.arange(hours, dtype=np.float64)[None, :] + 0.5 + offsets[:, None]
    weekday = (first_day.weekday() + np.floor(local_h / 24.0).astype(np.int64)) % 7
    out: FloatArray = np.where(weekday >= 5, weekend, 1.0)
    return out
