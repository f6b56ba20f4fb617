"""``gslb simulate``'s plots and HTML report (``gslb.ops.simreport``), drawn from a real run.

The documents come from the real model: one hour at 20 requests/s over ``config/example.toml``,
with three regions cut to one server each so that gslb spills (the map has flows to draw) and
the geography-blind baselines break residency (the report has violations to flag). The
scenario's name is hostile: the report must escape it.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gslb.core.config import load_config
from gslb.model.demand import cluster, load_cities
from gslb.model.engine import build_world, draw_day, run_policy
from gslb.model.scenario import RegionCapacity, Scenario
from gslb.model.summary import series, summarize
from gslb.ops.simreport import (
    IMAGES,
    focus_policy,
    plot_spill_map,
    plot_utilization,
    render_png,
    top_countries,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(\"x\")</script> & $\\alpha$ 'q'"
NAMES = [image.name for image in IMAGES] + ["report.html"]

Docs = tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def docs() -> Docs:
    scenario = Scenario(
        name=HOSTILE,
        hours=1.0,
        total_rps=20.0,
        cells=30,
        capacity=(
            RegionCapacity("eu-central", reserved=1),
            RegionCapacity("ap-southeast", reserved=1),
            RegionCapacity("sa-east", spot=1),
        ),
    )
    world = build_world(
        load_config(ROOT / "config" / "example.toml"),
        scenario,
        cluster(load_cities(), scenario.cells, scenario.date),
    )
    day = draw_day(world, np.random.default_rng(scenario.seed))
    runs = [run_policy(world, day, policy) for policy in scenario.policies]
    summary, curves = summarize(world, day, runs), series(world, day, runs)
    # What the checks below lean on: otherwise they would pass on an empty map or table.
    assert curves["flows"]["gslb"], "gslb spilled nothing: the map test would test nothing"
    assert any(p["residency_violations"] for p in summary["policies"].values())
    assert summary["policies"]["gslb"]["residency_violations"] == 0
    return summary, curves


@pytest.fixture(scope="module")
def report(docs: Docs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("report")
    return out, write_report(out, *docs)


@pytest.fixture(scope="module")
def page(report: tuple[Path, list[Path]]) -> str:
    return (report[0] / "report.html").read_text(encoding="utf-8")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must have first."""
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_writes_every_file_and_returns_the_page_last(report: tuple[Path, list[Path]]) -> None:
    out, written = report
    assert written == [out / name for name in NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    for path in written:
        assert path.stat().st_size > 0


def test_pngs_are_pngs_of_the_set_size(report: tuple[Path, list[Path]]) -> None:
    out, _ = report
    for image in IMAGES:
        data = (out / image.name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), image.name
        assert png_size(data) == (image.width, image.height), image.name
        assert b"Matplotlib" not in data  # no version text to change the bytes


def test_the_same_documents_give_the_same_bytes_in_another_process(
    docs: Docs, report: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    # The second run reads the documents back from JSON, as summary.json's readers would, in a
    # fresh interpreter with another hash seed: no set order or id may leak into the output.
    first, _ = report
    (tmp_path / "docs.json").write_text(json.dumps({"summary": docs[0], "series": docs[1]}))
    again = tmp_path / "again"
    again.mkdir()
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from gslb.ops.simreport import write_report\n"
        "d = json.loads(Path(sys.argv[1]).read_text())\n"
        "write_report(Path(sys.argv[2]), d['summary'], d['series'])\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "docs.json"), str(again)],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
        timeout=60,
    )
    for name in NAMES:
        assert (again / name).read_bytes() == (first / name).read_bytes(), name


def test_the_page_holds_every_plot_inline(page: str, report: tuple[Path, list[Path]]) -> None:
    out, _ = report
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(u) for u in uris] == [(out / i.name).read_bytes() for i in IMAGES]


def test_the_page_fetches_nothing_and_runs_nothing(page: str) -> None:
    assert re.search(r"https?:", page, re.IGNORECASE) is None
    assert "<script" not in page.lower()
    assert "url(" not in page  # no CSS fetch either
    srcs = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "default-src 'none'" in page  # the CSP forbids any fetch a later edit might add


def test_a_hostile_scenario_name_is_escaped(page: str) -> None:
    assert html.escape(HOSTILE, quote=True) in page
    assert HOSTILE not in page


def test_every_policy_has_a_row_with_its_numbers_for_people(docs: Docs, page: str) -> None:
    summary, _ = docs
    for policy, p in summary["policies"].items():
        row = re.search(rf"<tr[^>]*><td>{re.escape(policy)}</td>(.*?)</tr>", page)
        assert row, policy
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
        ttft = p["ttft_ms"]
        assert cells[:5] == [
            f"{ttft['p50']:,.1f} ms",
            f"{ttft['p95']:,.1f} ms",
            f"{ttft['p99']:,.1f} ms",
            f"{p['slo_attainment'] * 100:.2f}%",
            f"{p['spill_share'] * 100:.1f}%",
        ]
        assert cells[5] == f"{p['residency_violations']:,}"
    assert f"{summary['requests']:,} requests" in page


def test_residency_violations_are_flagged_only_where_there_are_some(docs: Docs, page: str) -> None:
    summary, _ = docs
    bad = {
        policy: p["residency_violations"]
        for policy, p in summary["policies"].items()
        if p["residency_violations"]
    }
    flagged = re.findall(r'<td class="bad">([^<]*)</td>', page)
    assert flagged == [f"{n:,}" for n in bad.values()]
    assert "gslb" not in bad


def test_the_region_table_is_gslbs(docs: Docs, page: str) -> None:
    summary, _ = docs
    section = page.split("<h2>Regions under the gslb policy</h2>", 1)[1].split("<h2>", 1)[0]
    for region, r in summary["policies"]["gslb"]["regions"].items():
        row = re.search(rf"<tr><td>{re.escape(region)}</td>(.*?)</tr>", section)
        assert row, region
        assert f"<td>{r['requests']:,}</td>" in row.group(1)


def test_the_fifteen_countries_with_the_most_requests_most_first(docs: Docs, page: str) -> None:
    summary, _ = docs
    countries = summary["policies"]["gslb"]["countries"]
    expected = sorted(countries, key=lambda c: (-countries[c]["requests"], c))[:15]
    assert [code for code, _ in top_countries(summary)] == expected
    section = page.split("countries with the most requests", 1)[1].split("<h2>", 1)[0]
    codes = re.findall(r"<tr><td>[^<]*\((\w\w)\)</td>", section)
    assert codes == expected


def test_gaps_and_missing_values_render_as_dashes(docs: Docs, tmp_path: Path) -> None:
    summary, curves = copy.deepcopy(docs)
    p = summary["policies"]["nearest"]
    p["ttft_ms"] = {"p50": None, "p95": None, "p99": None}
    p["spill_share"] = p["usd_per_1k_good"] = None
    curves["ttft_p95_ms"]["nearest"] = [None] * curves["bins"]  # no bin served anyone
    curves["ttft_p95_ms"]["gslb"][1] = None
    write_report(tmp_path, summary, curves)
    row = re.search(r"<tr><td>nearest</td>(.*?)</tr>", (tmp_path / "report.html").read_text())
    assert row
    assert re.findall(r"<td>([^<]*)</td>", row.group(1)).count("—") == 5


def test_the_per_region_plots_follow_gslb(docs: Docs) -> None:
    _, curves = docs
    base = render_png(plot_utilization(curves))
    other = copy.deepcopy(curves)
    for values in other["utilization"]["nearest"].values():
        values[:] = [1.2] * len(values)
    assert render_png(plot_utilization(other)) == base  # another policy's curves: not drawn
    mine = copy.deepcopy(curves)
    first = next(iter(mine["utilization"]["gslb"].values()))
    first[:] = [1.2] * len(first)
    assert render_png(plot_utilization(mine)) != base


def test_the_map_draws_gslbs_flows(docs: Docs) -> None:
    _, curves = docs
    base = render_png(plot_spill_map(curves))
    # The same flows (so the same title) to other regions: only the lines move.
    moved = copy.deepcopy(curves)
    n = len(curves["regions"])
    for flow in moved["flows"]["gslb"]:
        flow[2] = (flow[2] + 1) % n
    assert render_png(plot_spill_map(moved)) != base
    # Another policy's flows are only the faint backdrop of where demand comes from.
    backdrop = copy.deepcopy(curves)
    for flow in backdrop["flows"]["least_loaded"]:
        flow[2] = (flow[2] + 1) % n
    assert render_png(plot_spill_map(backdrop)) == base


def test_without_gslb_the_first_policy_is_shown(docs: Docs, tmp_path: Path) -> None:
    summary, curves = copy.deepcopy(docs)
    for doc in (summary["policies"], *(curves[k] for k in ("ttft_p95_ms", "utilization"))):
        del doc["gslb"]
    del curves["flows"]["gslb"], curves["slo_attainment"]["gslb"]
    assert focus_policy(curves) == "nearest"
    write_report(tmp_path, summary, curves)
    assert "<h2>Regions under the nearest policy</h2>" in (tmp_path / "report.html").read_text()
