"""``gslb simulate`` as an operator runs it: the real command, the shipped config, files out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"
ORDINARY = ROOT / "config" / "scenarios" / "ordinary-day.toml"


def small(tmp: Path, extra: str = "") -> Path:
    """The ordinary day, lighter: 8 requests/s over 60 cells."""
    text = ORDINARY.read_text()
    text = text.replace("total_rps = 200", "total_rps = 8").replace("cells = 300", "cells = 60")
    path = tmp / "small.toml"
    path.write_text(text + extra)
    return path


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gslb", "simulate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_same_seed_gives_the_same_summary_byte_for_byte(tmp_path: Path) -> None:
    scenario = small(tmp_path)
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, seed in zip(outs, ("5", "5", "6"), strict=True):
        done = simulate(
            "--config", str(EXAMPLE), "--scenario", str(scenario), "--out", str(out),
            "--seed", seed, "--hours", "2", "--no-plots",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    a, b, c = ((o / "summary.json").read_bytes() for o in outs)
    assert a == b and a != c
    assert (outs[0] / "series.json").read_bytes() == (outs[1] / "series.json").read_bytes()
    summary = json.loads(a)
    assert summary["scenario"]["hours"] == 2 and summary["scenario"]["seed"] == 5
    assert set(summary["policies"]) == {
        "nearest", "least_loaded", "round_robin", "waterfall", "envoy", "gslb",
    }  # fmt: skip
    gslb = summary["policies"]["gslb"]
    assert gslb["residency_violations"] == 0
    # Around 8 requests/s for two hours (the diurnal curve moves the mean of a part-day).
    assert 0.3 * 8 * 7200 < summary["requests"] < 2.0 * 8 * 7200
    assert 0 < gslb["ttft_ms"]["p50"] <= gslb["ttft_ms"]["p99"]
    assert set(gslb["regions"]) >= {"us-east", "ca-central", "ap-southeast"}
    assert "CA" in gslb["countries"] and "JP" in gslb["countries"]
    timing = json.loads((outs[0] / "timing.json").read_text())
    assert timing["requests"] == summary["requests"] and timing["requests_per_s"] > 0
    assert "gslb" in done.stderr and "residency violations 0" in done.stderr


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ("\n[oops]\nx = 1\n", (), "small.toml: oops: unknown key"),
        ("", ("--hours", "99"), "--hours: expected a number > 0 and <= 24"),
        ("", ("--seed", "-1"), "--seed: expected a whole number >= 0"),
        (
            '\n[[capacity]]\nregion = "mars"\nreserved = 2\n',
            (),
            "invalid scenario: capacity: no region 'mars' in the config",
        ),
        (
            '\n[[failures.outages]]\nregion = "us-east"\nprovider = "aws"\n',
            (),
            "small.toml: failures.outages[0]: name exactly one of region or provider",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, extra: str, args: tuple[str, ...], message: str
) -> None:
    done = simulate(
        "--config", str(EXAMPLE), "--scenario", str(small(tmp_path, extra)),
        "--out", str(tmp_path / "out"), "--no-plots", *args,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_bad_config_names_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("capacity = 256", "capacity = -1", 1))
    done = simulate(
        "--config", str(bad), "--scenario", str(ORDINARY), "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "invalid config" in done.stderr and "capacity" in done.stderr
    assert "Traceback" not in done.stderr
