"""``gslb plan capacity`` and ``gslb plan validate`` as an operator runs them, on the shipped
example data: the real command, files out, and the plan's promises checked from the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gslb.core.config import parse_toml
from gslb.core.router import Router

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"
PLAN = ROOT / "config" / "plan"


def gslb(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def some_zones(tmp: Path, zones: set[str]) -> Path:
    """The shipped demand export, cut to a few countries (a smaller linear program)."""
    lines = (PLAN / "demand.csv").read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(",")[1] in zones]
    path = tmp / "demand.csv"
    path.write_text("\n".join(keep) + "\n")
    return path


def test_a_plan_from_the_shipped_prometheus_export(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = gslb(
        "plan", "capacity", "--config", str(EXAMPLE), "--demand", str(PLAN / "prometheus.json"),
        "--prices", str(PLAN / "prices.csv"), "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    doc = json.loads((out / "plan.json").read_text())
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "plan.txt").read_text()
    assert table.splitlines()[0].startswith("plan over 48 h") and "total: $" in table
    assert doc["status"] == "optimal" and doc["inputs"]["survive"] == "region"
    assert doc["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in doc["regions"].values()))
    # Every hour, each region's capacity holds what the plan serves there.
    for name, h in doc["hourly"]["regions"].items():
        for k, served in enumerate(h["demand"]):
            assert served <= h["reserved"] + h["on_demand"][k] + h["spot"][k] + 0.05, (name, k)
    # Canada's demand (read from ca-central's own gauge) may only use Canadian regions.
    assert set(doc["zones"]["ca-central"]["allowed"]) <= {"ca-central", "ca-west-standby"}
    for region, r in doc["regions"].items():
        assert r["reserved_gpus"] % r["gpus_per_instance"] == 0, region


def test_residency_and_redundancy_hold_in_a_plan_by_country(tmp_path: Path) -> None:
    demand = some_zones(tmp_path, {"CA", "US", "DE", "FR", "JP", "BR"})
    cfg = parse_toml(EXAMPLE.read_text(), str(EXAMPLE))
    router = Router(cfg)
    docs = {}
    for survive in ("none", "region"):
        out = tmp_path / survive
        done = gslb(
            "plan", "capacity", "--config", str(EXAMPLE), "--demand", str(demand),
            "--prices", str(PLAN / "prices.csv"), "--out", str(out), "--survive", survive,
            "--no-plot",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        docs[survive] = json.loads((out / "plan.json").read_text())
    doc = docs["region"]
    for zone, z in doc["zones"].items():
        mask = router.placement.residency(zone)[0]
        allowed_by_rules = {n for i, n in enumerate(router.names) if mask >> i & 1}
        assert set(z["allowed"]) <= allowed_by_rules, zone
    assert set(doc["zones"]["CA"]["allowed"]) <= {"ca-central", "ca-west-standby"}
    # Surviving the loss of any region costs more than planning for none.
    assert doc["cost_usd"] > docs["none"]["cost_usd"]
    # With any one region lost, the others' capacity still covers every hour's total demand
    # (a necessary condition of N-1, checked from the file alone). No zone here depends on a
    # single region, so none is exempt.
    assert all(len(z["allowed"]) >= 2 for z in doc["zones"].values())
    assert doc["unprotected"] == []
    hourly = doc["hourly"]["regions"]
    hours = doc["inputs"]["hours"]
    total = [sum(h["demand"][k] for h in hourly.values()) for k in range(hours)]
    for lost in hourly:
        for k in range(hours):
            left = sum(
                h["reserved"] + h["on_demand"][k] + h["spot"][k]
                for name, h in hourly.items()
                if name != lost
            )
            assert left + 0.1 >= total[k], (lost, k)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--quantile", "0"), "--quantile: expected a number in (0, 1]"),
        (("--spot-floor", "2"), "--spot-floor: expected a number in [0, 1]"),
        (("--prices", "config/example.toml"), "invalid prices: config/example.toml:1:"),
        (("--demand", "config/example.toml"), "invalid scenario: config/example.toml"),
        (("--demand", "README.md"), "invalid demand: README.md"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    base = {
        "--config": str(EXAMPLE),
        "--demand": str(PLAN / "prometheus.json"),
        "--prices": str(PLAN / "prices.csv"),
        "--out": str(tmp_path / "o"),
    }
    flags = dict(zip(args[::2], args[1::2], strict=True))
    argv = [x for k, v in {**base, **flags}.items() for x in (k, v)]
    done = gslb("plan", "capacity", *argv, "--no-plot")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_plan_on_the_first_weeks_replay_the_next_in_simulate(tmp_path: Path) -> None:
    scenario = tmp_path / "small.toml"
    scenario.write_text(
        '[scenario]\nname = "small"\nseed = 4\ndate = "2026-03-16"\n'
        "[demand]\ntotal_rps = 6\ncells = 40\n[servers]\nconcurrency = 16\n"
    )
    out = tmp_path / "val"
    done = gslb(
        "plan", "validate", "--config", str(EXAMPLE), "--scenario", str(scenario),
        "--prices", str(PLAN / "prices.csv"), "--out", str(out), "--train-weeks", "3",
        "--test-weeks", "1", "--survive", "none",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "validation.json").read_text())
    forecast = result["forecast"]
    assert len(forecast["replay"]) == 1 and forecast["replay"][0]["requests"] > 10_000
    # Planned on three weeks of the same demand model (1% growth a week, daily noise), the
    # forecast costs about what hindsight does, and serves about as well.
    assert 0.85 < result["cost_ratio"] < 1.15
    assert forecast["slo_attainment"] > 0.9
    assert abs(result["slo_gap"]) < 0.05
    assert forecast["replay"][0]["residency_violations"] == 0
    assert "forecast / hindsight" in done.stderr


def test_headroom_scales_the_plan_linearly(tmp_path: Path) -> None:
    costs = {}
    for utilization in ("1.0", "0.5"):
        out = tmp_path / utilization
        done = gslb(
            "plan", "capacity", "--config", str(EXAMPLE), "--demand",
            str(PLAN / "prometheus.json"), "--prices", str(PLAN / "prices.csv"), "--out",
            str(out), "--survive", "none", "--utilization", utilization, "--no-plot",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        doc = json.loads((out / "plan.json").read_text())
        assert doc["inputs"]["utilization"] == float(utilization)
        costs[utilization] = doc["cost_usd_lp"]
    # Planning the demand at half the capacity is the same linear program with twice the
    # demand: twice the cost before instances are rounded.
    assert costs["0.5"] == pytest.approx(2 * costs["1.0"], rel=1e-3)
