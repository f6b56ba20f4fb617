"""The inputs of ``gslb plan capacity``: demand and prices files, and demand from a scenario.

The shipped example data (``config/plan/``) must read cleanly and match what its README and
issue 14 say of it; every bad file gets one line naming the file and the line (or the JSON
path) and repeating at most 64 characters of the bad field. Demand from a scenario is checked
against first principles: GPUs = requests/s x mean service time / requests per GPU, times the
weekly shape and the growth (docs/design.md, planning).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import runpy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pycountry
import pytest

from gslb.core.config import load_config
from gslb.model.demand import Diurnal
from gslb.model.scenario import Scenario, parse_scenario
from gslb.ops.planinputs import (
    MAX_HOURS,
    MAX_ZONES,
    USER_ASSIGNED_COUNTRIES,
    Demand,
    PlanInputError,
    demand_from_scenario,
    format_demand_csv,
    read_demand,
    read_prices,
)

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "config" / "plan"
EXAMPLE = ROOT / "config" / "example.toml"
ORDINARY = ROOT / "config" / "scenarios" / "ordinary-day.toml"
UTC = datetime.UTC
MARCH_18 = datetime.datetime(2026, 3, 18, tzinfo=UTC)  # a Wednesday
T0 = int(MARCH_18.timestamp())
HYPERSCALERS = {"aws", "gcp", "azure"}
PRICES_HEADER = (
    "region,provider,instance_type,gpu,gpus,on_demand,spot,spot_availability,reserved,"
    "reserved_term_months\n"
)
US_EAST = "us-east,aws,p5.48xlarge,H100,8"


@pytest.fixture(scope="module")
def ordinary() -> Scenario:
    return parse_scenario(ORDINARY.read_text(encoding="utf-8"), str(ORDINARY))


@pytest.fixture(scope="module")
def fleet() -> Any:
    return load_config(EXAMPLE)


def write(tmp: Path, text: str | bytes, name: str = "input.csv") -> Path:
    path = tmp / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def prometheus(*series: dict[str, Any], status: str = "success") -> str:
    return json.dumps({"status": status, "data": {"resultType": "matrix", "result": list(series)}})


def hourly(label: dict[str, str], values: list[str], first: int = T0 + 3600) -> dict[str, Any]:
    return {"metric": label, "values": [[first + 3600 * j, v] for j, v in enumerate(values)]}


def is_country(zone: str) -> bool:
    """ISO 3166-1 alpha-2, or Kosovo's XK as GeoNames has it."""
    return zone in USER_ASSIGNED_COUNTRIES or pycountry.countries.get(alpha_2=zone) is not None


def first_principles_gpus(s: Scenario) -> float:
    """GPUs busy on average over a day: Little's law, then requests per GPU."""
    service_s = (
        s.server.overhead_ms / 1e3
        + s.input_tokens.mean / 1e3 * s.server.prefill_ms_per_1k_tokens / 1e3
        + s.output_tokens.mean * s.server.decode_ms_per_token / 1e3
    )
    return s.total_rps * service_s / (s.server.concurrency / s.server.gpus)


def growth_mean(g: float, hours: int) -> float:
    """The mean of (1 + g) ** (h / 168) for h = 0 .. hours - 1: a geometric series."""
    q = math.pow(1.0 + g, 1.0 / 168.0)
    return (math.pow(q, hours) - 1.0) / (hours * (q - 1.0))


WEEK_SHAPE = (5 * 1.0 + 2 * 0.8) / 7  # weekdays at 1, Saturday and Sunday at 0.8


# --------------------------------------------------------------------- the shipped data


def test_the_shipped_prices_give_one_h100_offer_per_region_of_the_example(fleet: Any) -> None:
    regions = {r.name: r.provider for r in fleet.regions}
    offers = read_prices(PLAN / "prices.csv", regions=regions)
    with (PLAN / "prices.csv").open(newline="", encoding="utf-8") as f:
        rows = {row["region"]: row for row in csv.DictReader(f)}
    assert sorted(o.region for o in offers) == sorted(regions)
    for o in offers:
        row = rows[o.region]
        assert o.provider == regions[o.region] and o.gpu == "H100"
        assert o.gpus_per_instance == int(row["gpus"]) == 8
        # Offers are per GPU-hour: the file's instance prices over the GPUs per instance.
        assert o.on_demand * 8 == pytest.approx(float(row["on_demand"]))
        if o.provider in HYPERSCALERS:  # about USD 98 an instance-hour
            assert 80.0 <= o.on_demand * 8 <= 120.0
        else:  # neoclouds and resellers sell for less
            assert o.on_demand * 8 < 80.0
        if o.spot is not None:
            assert 0.4 <= o.spot / o.on_demand <= 0.7
            assert 0.6 <= o.spot_availability <= 0.9
        else:
            assert o.spot_availability == 0.0
        if o.reserved is not None:
            assert 0.55 <= o.reserved / o.on_demand <= 0.7
            assert o.reserved_term_months == 12
    assert any(o.spot is None for o in offers) and any(o.reserved is None for o in offers)


def test_the_shipped_demand_is_what_make_demand_writes(ordinary: Scenario) -> None:
    script = runpy.run_path(str(PLAN / "make_demand.py"))
    made: Demand = script["make"]()
    shipped = PLAN / "demand.csv"
    assert format_demand_csv(made) == shipped.read_text(encoding="utf-8")
    assert shipped.stat().st_size < 2 * 2**20

    demand = read_demand(shipped)
    assert demand.start == MARCH_18 and demand.hours == 2 * 168
    assert list(demand.zones) == sorted(demand.zones) and all(map(is_country, demand.zones))
    assert demand.gpus.min() >= 0.0
    means = demand.gpus.mean(axis=1)
    assert means.min() >= 0.5 - 0.0005  # smaller countries are left out (README), as rounded
    # What is left is most of the world's demand: the rest are countries under 0.5 GPU each.
    expected = first_principles_gpus(ordinary) * WEEK_SHAPE * growth_mean(0.01, 336)
    assert 0.9 * expected < means.sum() < 1.02 * expected


def test_the_shipped_prometheus_export_reads_hour_by_hour() -> None:
    path = PLAN / "prometheus.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    demand = read_demand(path, regions={"us-east", "eu-central", "ap-southeast", "ca-central"})
    series = {s["metric"]["region"]: s["values"] for s in doc["data"]["result"]}
    assert demand.zones == tuple(sorted(series)) and demand.hours == 48
    first_stamp = min(v[0][0] for v in series.values())
    # Prometheus stamps the mean over the hour before at the hour's end.
    assert demand.start == datetime.datetime.fromtimestamp(first_stamp - 3600, tz=UTC)
    for z, zone in enumerate(demand.zones):
        assert demand.gpus[z].tolist() == [float(v) for _, v in series[zone]]


# ---------------------------------------------------------------------------- demand


def test_a_demand_csv_fills_missing_cells_with_zero_in_any_order(tmp_path: Path) -> None:
    text = (
        "\ufeffzone , gpus,hour\n"  # a spreadsheet's BOM, columns in any order, spaces
        "US,3.5,2026-03-18T01:00:00Z\n"
        "\n"
        "DE,2,2026-03-18T00:00:00+00:00\n"
        "us-east,1e1,2026-03-18T02:00Z\n"
        "US,0,2026-03-18T00:00:00Z\n"
        "XK,0.25,2026-03-18T01:00:00Z\n"  # Kosovo: no ISO code, but GeoNames and GeoIP's
    )
    demand = read_demand(write(tmp_path, text))
    assert demand.start == MARCH_18
    assert demand.zones == ("DE", "US", "XK", "us-east")
    assert demand.gpus.tolist() == [
        [2.0, 0.0, 0.0],
        [0.0, 3.5, 0.0],
        [0.0, 0.25, 0.0],
        [0.0, 0.0, 10.0],
    ]


def test_a_demand_csv_round_trips_through_format_demand_csv(tmp_path: Path) -> None:
    gpus = np.array([[0.0, 1.25, 7.0], [2.5, 0.125, 3.0]])
    demand = Demand(MARCH_18, ("FR", "JP"), gpus)
    back = read_demand(write(tmp_path, format_demand_csv(demand)))
    assert back.start == demand.start and back.zones == demand.zones
    assert np.array_equal(back.gpus, gpus)


def test_a_prometheus_export_prefers_the_zone_label_and_fills_gaps_with_zero(
    tmp_path: Path,
) -> None:
    a = hourly({"zone": "DE", "region": "eu-central"}, ["4", "5", "6"])
    b = hourly({"region": "us-east"}, ["1.5", "2.5"])
    del b["values"][0]  # no samples in the first hour: Prometheus leaves the point out
    demand = read_demand(write(tmp_path, prometheus(a, b), "export.txt"))
    assert demand.zones == ("DE", "us-east") and demand.start == MARCH_18
    assert demand.gpus.tolist() == [[4.0, 5.0, 6.0], [0.0, 2.5, 0.0]]


def test_a_region_zone_must_be_in_the_config_when_regions_are_given(tmp_path: Path) -> None:
    path = write(tmp_path, "hour,zone,gpus\n2026-03-18T00:00Z,mars-1,1\n")
    assert read_demand(path).zones == ("mars-1",)
    with pytest.raises(PlanInputError) as err:
        read_demand(path, regions={"us-east"})
    assert str(err.value) == f"{path}:2: zone 'mars-1' is no region of the config"


H = "hour,zone,gpus\n"
ROW = "2026-03-18T00:00:00Z,US,1\n"
LONG = "x" * 500


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("", None, "empty file"),
        (H, None, "no demand: the file has no rows"),
        ("hour,zone,gpu\n" + ROW, 1, "unknown column 'gpu' (columns: hour, zone, gpus)"),
        ("hour,zone\n2026-03-18T00:00Z,US\n", 1, "missing column gpus"),
        ("hour,zone,gpus,zone\n", 1, "column 'zone' appears twice"),
        (H + "2026-03-18 25:00Z,US,1\n", 2, "hour '2026-03-18 25:00Z' is not an ISO 8601"),
        (H + "2026-03-18T00:30Z,US,1\n", 2, "is not on the hour"),
        (H + "2026-03-18T00:00,US,1\n", 2, "has no time zone"),
        (H + "2026-03-18T02:00+02:00,US,1\n", 2, "is not UTC"),
        (
            H + ROW + "2026-03-18T01:00Z,US,1\n" + "2026-03-18T03:00Z,US,1\n",
            4,
            "no rows for 2026-03-18T02:00:00Z: hours must run without a gap",
        ),
        (H + ROW + "2026-03-18T00:00+00:00,US,2\n", 3, "zone US at 2026-03-18T00:00:00Z is "),
        (H + "2026-03-18T00:00Z,US,-1\n", 2, "gpus: expected a number >= 0, got '-1'"),
        (H + "2026-03-18T00:00Z,US,NaN\n", 2, "got 'NaN'"),
        (H + "2026-03-18T00:00Z,US,inf\n", 2, "got 'inf'"),
        (H + "2026-03-18T00:00Z,US,\n", 2, "got ''"),
        (H + "2026-03-18T00:00Z,XX,1\n", 2, "zone 'XX' is not an ISO 3166-1 country"),
        (H + "2026-03-18T00:00Z,u s,1\n", 2, "neither a country code (upper case) nor a region"),
        (H + "2026-03-18T00:00Z,US,1,2\n", 2, "expected 3 fields, got 4"),
        (H + '2026-03-18T00:00Z,"US,1\n', 2, "not valid CSV"),
        (
            H + ROW + f"{datetime.datetime(2026, 3, 18) + datetime.timedelta(hours=MAX_HOURS)}"
            "Z,US,1\n",
            3,
            f"spans more than {MAX_HOURS} hours",
        ),
        (
            H + "".join(f"2026-03-18T00:00Z,r{i},1\n" for i in range(MAX_ZONES + 1)),
            MAX_ZONES + 2,
            f"more than {MAX_ZONES} zones",
        ),
        (H + f"2026-03-18T00:00Z,{LONG},1\n", 2, "'" + "x" * 64 + "'..."),
    ],
)
def test_a_bad_demand_csv_names_the_file_and_line(
    tmp_path: Path, text: str, where: int | None, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlanInputError) as err:
        read_demand(path)
    message = str(err.value)
    prefix = f"{path}:{where}: " if where is not None else f"{path}: "
    assert message.startswith(prefix) and fragment in message, message
    assert "\n" not in message and "x" * 65 not in message


def test_an_unreadable_demand_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(PlanInputError, match=r"nope\.csv: cannot read it: No such file"):
        read_demand(missing)
    latin = write(tmp_path, (H + "2026-03-18T00:00Z,US,1 \xe9\n").encode("latin-1"))
    with pytest.raises(PlanInputError, match=r"input\.csv: not UTF-8 text"):
        read_demand(latin)


def _values(*pairs: tuple[Any, Any]) -> dict[str, Any]:
    return {"metric": {"region": "us-east"}, "values": [list(p) for p in pairs]}


HOUR_1 = T0 + 3600


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("{not json", None, "not valid JSON"),
        ("{}", "status", 'expected "success", got None'),
        (
            json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
            "status",
            "the export is an error ('bad_data'): 'parse error'",
        ),
        (
            json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}),
            "data.resultType",
            'expected "matrix" (a range query, /api/v1/query_range)',
        ),
        (prometheus(), "data.result", "no series"),
        (
            prometheus(_values((HOUR_1, "1"), (HOUR_1 + 60, "1"))),
            "data.result[0].values[1][0]",
            "the step is 60 s: query with step=1h (3600 s)",
        ),
        (
            prometheus(_values((HOUR_1, "1"), (HOUR_1 + 7200, "1"))),
            "data.result",
            "the step is 7200 s: query with step=1h",
        ),
        (
            prometheus(_values((HOUR_1 + 1800, "1"), (HOUR_1 + 5400, "1"))),
            "data.result[0].values[0][0]",
            "2026-03-18T01:30:00Z is not on the hour: query with start on the hour",
        ),
        (
            prometheus(_values((HOUR_1 + 3600, "1"), (HOUR_1, "1"))),
            "data.result[0].values[1][0]",
            "times must increase",
        ),
        (
            prometheus(_values((HOUR_1, "1"), (HOUR_1 + 3600, "NaN"))),
            "data.result[0].values[1][1]",
            "gpus: expected a number >= 0, got 'NaN'",
        ),
        (
            prometheus(_values((HOUR_1, "-2.5"))),
            "data.result[0].values[0][1]",
            "got '-2.5'",
        ),
        (
            prometheus(_values(("soon", "1"))),
            "data.result[0].values[0][0]",
            "expected a Unix time, got 'soon'",
        ),
        (
            prometheus({"metric": {"instance": "edge-1"}, "values": [[HOUR_1, "1"]]}),
            "data.result[0].metric",
            "no zone, region or country label",
        ),
        (
            prometheus(_values((HOUR_1, "1")), _values((HOUR_1 + 3600, "1"))),
            "data.result[1].metric",
            "a second series for zone us-east",
        ),
        (
            prometheus(_values((HOUR_1, "1"), (HOUR_1 + 3600, "1"), (HOUR_1 + 3 * 3600, "1"))),
            "data.result[0].values[2]",
            "no rows for 2026-03-18T02:00:00Z",
        ),
        (
            prometheus({"metric": {"country": "ZZ"}, "values": [[HOUR_1, "1"]]}),
            "data.result[0].metric.country",
            "zone 'ZZ' is not an ISO 3166-1 country",
        ),
    ],
)
def test_a_bad_prometheus_export_names_the_json_path(
    tmp_path: Path, text: str, where: str | None, fragment: str
) -> None:
    path = write(tmp_path, text, "export.json")
    with pytest.raises(PlanInputError) as err:
        read_demand(path)
    message = str(err.value)
    prefix = f"{path}:{where}: " if where is not None else f"{path}: "
    assert message.startswith(prefix) and fragment in message, message
    assert "\n" not in message


# ---------------------------------------------------------------------------- prices


def test_optional_price_columns_may_be_left_out(tmp_path: Path) -> None:
    text = "gpus,on_demand,region,provider,instance_type,gpu\n4,40,eu-central,coreweave,x,A100\n"
    (offer,) = read_prices(write(tmp_path, text))
    assert (offer.region, offer.provider, offer.gpu) == ("eu-central", "coreweave", "A100")
    assert offer.on_demand == 10.0 and offer.gpus_per_instance == 4
    assert offer.spot is None and offer.spot_availability == 0.0
    assert offer.reserved is None and offer.reserved_term_months == 12


def test_prices_are_per_gpu_hour_with_the_given_term(tmp_path: Path) -> None:
    text = PRICES_HEADER + US_EAST + ",96,40,0.75,60,36\n" + "us-east,aws,p4d,A100,8,32,,,,\n"
    a, b = read_prices(write(tmp_path, text))
    assert (a.on_demand, a.spot, a.spot_availability, a.reserved) == (12.0, 5.0, 0.75, 7.5)
    assert a.reserved_term_months == 36 and a.gpu == "H100"
    assert (b.gpu, b.on_demand, b.spot, b.reserved) == ("A100", 4.0, None, None)


P = PRICES_HEADER


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("", None, "empty file"),
        (P, None, "no offers"),
        (P.replace("region,", "zone,", 1), 1, "unknown column 'zone'"),
        (P.replace(",on_demand", ""), 1, "missing column on_demand"),
        (
            P + US_EAST + ",98,,,,\n" + US_EAST + ",90,,,,\n",
            3,
            "a second offer for H100 in us-east (the first is on line 2)",
        ),
        (P + US_EAST + ",98,40,,,\n", 2, "spot_availability: required with a spot price"),
        (P + US_EAST + ",98,40,1.5,,\n", 2, "spot_availability: expected 0 to 1, got '1.5'"),
        (P + US_EAST + ",98,40,nan,,\n", 2, "spot_availability: expected 0 to 1, got 'nan'"),
        (P + US_EAST + ",98,,0.5,,\n", 2, "spot_availability without a spot price"),
        (
            P + "us-east,aws,p5,H100,0,98,,,,\n",
            2,
            "gpus: expected a whole number from 1 to 1024, got '0'",
        ),
        (P + "us-east,aws,p5,H100,8.5,98,,,,\n", 2, "got '8.5'"),
        (P + US_EAST + ",,,,,\n", 2, "on_demand: required"),
        (P + US_EAST + ",-98,,,,\n", 2, "on_demand: expected a price > 0"),
        (P + US_EAST + ",98,,,NaN,\n", 2, "reserved: expected a price > 0"),
        (P + US_EAST + ",98,,,60,0\n", 2, "reserved_term_months: expected a whole number"),
        (P + US_EAST + ",98,,,,24\n", 2, "reserved_term_months without a reserved price"),
        (P + "us east,aws,p5,H100,8,98,,,,\n", 2, "region: 'us east' is not a name"),
        (P + US_EAST + ",98,,,\n", 2, "expected 10 fields, got 9"),
    ],
)
def test_a_bad_prices_file_names_the_file_and_line(
    tmp_path: Path, text: str, where: int | None, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlanInputError) as err:
        read_prices(path)
    message = str(err.value)
    prefix = f"{path}:{where}: " if where is not None else f"{path}: "
    assert message.startswith(prefix) and fragment in message, message
    assert "\n" not in message


def test_prices_must_name_the_configs_regions_and_providers(tmp_path: Path) -> None:
    regions = {"us-east": "aws"}
    wrong_region = write(tmp_path, P + "mars-1,aws,p5,H100,8,98,,,,\n", "a.csv")
    with pytest.raises(PlanInputError) as err:
        read_prices(wrong_region, regions=regions)
    assert str(err.value) == f"{wrong_region}:2: region 'mars-1' is no region of the config"
    wrong_provider = write(tmp_path, P + "us-east,gcp,a3,H100,8,98,,,,\n", "b.csv")
    with pytest.raises(PlanInputError) as err:
        read_prices(wrong_provider, regions=regions)
    assert str(err.value) == (
        f"{wrong_provider}:2: provider 'gcp': region us-east is on aws in the config"
    )


# -------------------------------------------------------------- demand from a scenario


def test_scenario_demand_averages_to_the_first_principles_figure(
    fleet: Any, ordinary: Scenario
) -> None:
    demand = demand_from_scenario(fleet, ordinary, 2, np.random.default_rng(7))
    assert demand.start == MARCH_18 and demand.hours == 2 * 168
    assert list(demand.zones) == sorted(demand.zones) and all(map(is_country, demand.zones))
    week_1 = float(demand.gpus[:, :168].sum(axis=0).mean())
    expected = first_principles_gpus(ordinary) * WEEK_SHAPE * growth_mean(0.01, 168)
    assert week_1 == pytest.approx(expected, rel=0.02)


def test_without_noise_the_shapes_are_exact(fleet: Any, ordinary: Scenario) -> None:
    # Peak at 20:30 local: Japan (one time zone, UTC+9, no DST) peaks in the hour from 11:00 UTC.
    s = replace(ordinary, diurnal=Diurnal(peak_hour=20.5, trough_ratio=0.25))
    flat = demand_from_scenario(
        fleet, s, 1, np.random.default_rng(1), growth_per_week=0.0, noise_sigma=0.0
    )
    assert float(flat.gpus.sum(axis=0).mean()) == pytest.approx(
        first_principles_gpus(s) * WEEK_SHAPE, rel=1e-9
    )
    jp = flat.gpus[flat.zones.index("JP")]
    assert int(np.argmax(jp[:24])) == 11
    # Saturday 2026-03-21 03:00 UTC is noon in Tokyo; Friday's noon is 24 hours before.
    assert jp[3 * 24 + 3] / jp[2 * 24 + 3] == pytest.approx(0.8, rel=1e-12)
    assert jp[2 * 24 + 3] == pytest.approx(jp[3], rel=1e-12)  # weekdays repeat the day

    growing = demand_from_scenario(
        fleet, s, 2, np.random.default_rng(1), growth_per_week=0.1, weekend=1.0, noise_sigma=0.0
    )
    assert np.allclose(growing.gpus[:, 168:], growing.gpus[:, :168] * 1.1, rtol=1e-12)
    assert growing.gpus[0, 1] / growing.gpus[0, 25] == pytest.approx(1.1 ** (-24 / 168))


def test_noise_is_one_draw_per_country_and_day_with_mean_one(
    fleet: Any, ordinary: Scenario
) -> None:
    s = replace(ordinary, cells=60)
    quiet = demand_from_scenario(fleet, s, 4, np.random.default_rng(3), noise_sigma=0.0)
    noisy = demand_from_scenario(fleet, s, 4, np.random.default_rng(3), noise_sigma=0.05)
    assert noisy.zones == quiet.zones
    ratio = (noisy.gpus / quiet.gpus).reshape(len(noisy.zones), 28, 24)
    assert np.allclose(ratio, ratio[:, :, :1], rtol=1e-12)  # constant within a UTC day
    daily = ratio[:, :, 0].ravel()
    n = daily.size
    # Lognormal with sigma 0.05 and mean 1: the sample mean within 4 standard errors.
    sd = math.sqrt(math.exp(0.05**2) - 1.0)
    assert abs(float(daily.mean()) - 1.0) < 4 * sd / math.sqrt(n)
    assert float(np.log(daily).std()) == pytest.approx(0.05, rel=0.1)


def test_scenario_demand_is_deterministic_by_seed(fleet: Any, ordinary: Scenario) -> None:
    s = replace(ordinary, cells=60)
    a, b, c = (demand_from_scenario(fleet, s, 1, np.random.default_rng(k)) for k in (5, 5, 6))
    assert a.zones == b.zones == c.zones
    assert np.array_equal(a.gpus, b.gpus) and not np.array_equal(a.gpus, c.gpus)


def test_scenario_demand_refuses_bad_arguments(fleet: Any, ordinary: Scenario) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="weeks must be 1 to 59"):
        demand_from_scenario(fleet, ordinary, 0, rng)
    with pytest.raises(ValueError, match="growth_per_week"):
        demand_from_scenario(fleet, ordinary, 1, rng, growth_per_week=-1.0)
