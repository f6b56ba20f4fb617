"""``gslb fleet ...`` run as real subprocesses against a real ``nats-server`` (tests/natsserver.py).

Each test starts its own server; the CLI is ``python -m gslb fleet ...``, and what it wrote is
read back with an in-process ``FleetStore``, the way an edge would read it. Independent
invocations run side by side to keep the file fast (each one is a Python start-up).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from gslb.core.fleetdoc import document_digest
from gslb.ops.fleetcli import (
    EDGE_DOC_KEYS,
    MAX_REPORTED_REGIONS,
    EdgeDoc,
    RegionSummary,
    RegionView,
    edge_doc,
    region_views,
    regions_cell,
)
from gslb.ops.fleetstore import Drain, FleetStore
from tests.natsserver import NatsServer, nats_server
from tests.ports import free_block

ROOT = Path(__file__).resolve().parents[2]

REGION = """
[[regions]]
name = "{name}"
location = [45.5, -73.57]
provider = "aws"
jurisdiction = "CA"
capacity = 8
  [[regions.endpoints]]
  url = "http://127.0.0.1:{port}"
"""


def document(*names: str) -> str:
    """A valid fleet document: one region (and endpoint) per name."""
    return "".join(REGION.format(name=n, port=9000 + i) for i, n in enumerate(names))


class Run(NamedTuple):
    rc: int
    out: str
    err: str


async def gslb(*args: str, env: dict[str, str] | None = None) -> Run:
    """``python -m gslb ARGS`` (async, as tests/ops/test_cli.py's ``gslb()`` runs it in sync):
    tests start several at once, and the event loop keeps serving in-process NATS clients."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gslb",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def fleet(server: NatsServer, *args: str) -> Run:
    return await gslb("fleet", *args, "--servers", server.url)


def failed(run: Run, rc: int, *words: str) -> str:
    """The one error line of a failed command (exit ``rc``), which holds every one of ``words``."""
    assert run.rc == rc, run
    assert run.out == "", run
    assert "Traceback" not in run.err, run
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gslb: "), run
    for word in words:
        assert word in lines[0], run
    return lines[0]


def pushed_revision(run: Run, text: str) -> int:
    """The revision ``push`` printed; the digest it printed is ``text``'s."""
    assert run.rc == 0, run
    words = run.out.split()
    assert words[:2] == ["pushed", "revision"], run
    assert run.out.rstrip().endswith(f"(sha256 {document_digest(text)})"), run
    return int(words[2])


@asynccontextmanager
async def store(server: NatsServer) -> AsyncIterator[FleetStore]:
    s = await FleetStore.connect(server.url, reconnect_wait=0.05)
    try:
        yield s
    finally:
        await s.close()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- push -----------------------------------------------------------------------------------


async def test_push_prints_revision_and_a_stale_expect_revision_conflicts(tmp_path: Path) -> None:
    one, two = document("r1"), document("r1", "r2")
    # CRLF line ends are pushed as LF: the printed digest is document_digest's, as the edges'.
    f1 = tmp_path / "one.toml"
    f1.write_bytes(one.replace("\n", "\r\n").encode())
    f2 = write(tmp_path, "two.toml", two)
    async with nats_server(tmp_path) as server, store(server) as fs:
        rev1 = pushed_revision(await fleet(server, "push", str(f1)), one)
        assert await fs.get_config() == (rev1, one)
        rev2 = pushed_revision(await fleet(server, "push", f2, "--expect-revision", str(rev1)), two)
        assert rev2 > rev1
        stale, first = await asyncio.gather(
            fleet(server, "push", str(f1), "--expect-revision", str(rev1)),
            fleet(server, "push", str(f1), "--expect-revision", "0"),  # "none yet": one exists
        )
        failed(stale, 1, "conflict", f"at revision {rev2}, not revision {rev1}", "nothing written")
        failed(first, 1, "conflict", f"at revision {rev2}, not no document")
        assert await fs.get_config() == (rev2, two)


async def test_two_concurrent_pushes_one_wins_the_other_conflicts(tmp_path: Path) -> None:
    docs = {"a": document("a1"), "b": document("b1")}
    files = {k: write(tmp_path, f"{k}.toml", v) for k, v in docs.items()}
    async with nats_server(tmp_path) as server, store(server) as fs:
        base = await fs.push_config(document("base"), None)
        a, b = await asyncio.gather(
            *(fleet(server, "push", files[k], "--expect-revision", str(base)) for k in "ab")
        )
        assert sorted([a.rc, b.rc]) == [0, 1], (a, b)
        (winner, won), (_, lost) = sorted(
            [("a", a), ("b", b)], key=lambda kv: kv[1].rc
        )  # the exit-0 one first
        revision = pushed_revision(won, docs[winner])
        failed(lost, 1, "conflict", f"at revision {revision}, not revision {base}")
        assert await fs.get_config() == (revision, docs[winner])


async def test_an_invalid_document_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    bad = {
        "local.toml": (document("r1") + '[server]\nlisten = "0.0.0.0:8080"\n', "[server]"),
        "name.toml": (document("bad region!"), "regions[0].name"),
        "syntax.toml": ("[[regions]\n", "invalid TOML"),
        "empty.toml": ("", "regions"),
    }
    paths = {name: write(tmp_path, name, text) for name, (text, _) in bad.items()}
    async with nats_server(tmp_path) as server, store(server) as fs:
        rev = await fs.push_config(document("good"), None)
        runs = await asyncio.gather(
            *(fleet(server, "push", path) for path in paths.values()),
            fleet(server, "push", str(tmp_path / "missing.toml")),
        )
        for (name, (_, where)), run in zip(bad.items(), runs, strict=False):
            line = failed(run, 2, "invalid fleet document", paths[name], where)
            assert line.count(paths[name]) == 1 or name == "local.toml"  # named, not repeated
        failed(runs[-1], 2, "missing.toml", "cannot read")
        assert await fs.get_config() == (rev, document("good"))
        assert [v.revision for v in await fs.history()] == [rev]


# -- rollback and history -------------------------------------------------------------------


async def test_rollback_restores_an_old_digest_and_history_lists_each(tmp_path: Path) -> None:
    old, new = document("old"), document("new")
    async with nats_server(tmp_path) as server, store(server) as fs:
        started = datetime.now(UTC).replace(microsecond=0)
        r_old = pushed_revision(await fleet(server, "push", write(tmp_path, "o.toml", old)), old)
        r_new = pushed_revision(await fleet(server, "push", write(tmp_path, "n.toml", new)), new)
        back = await fleet(server, "rollback", str(r_old))
        assert back.rc == 0, back
        r_back = int(back.out.split(" as revision ")[1].split()[0])
        assert f"(sha256 {document_digest(old)})" in back.out
        assert await fs.get_config() == (r_back, old)

        history, missing = await asyncio.gather(
            fleet(server, "history"), fleet(server, "rollback", str(r_back + 50))
        )
        assert history.rc == 0 and history.err == "", history
        rows = [line.split("  ") for line in history.out.splitlines()]
        assert [int(r[0]) for r in rows] == [r_old, r_new, r_back]  # newest last
        short = [document_digest(d)[:12] for d in (old, new, old)]
        assert [r[2] for r in rows] == short
        for _, when, _ in rows:
            at = datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert started - timedelta(seconds=1) <= at <= datetime.now(UTC)
        failed(missing, 1, f"no fleet config at revision {r_back + 50}")
        assert await fs.get_config() == (r_back, old)


async def test_rollback_holds_an_old_document_to_todays_rules(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fs:
        # Written around the CLI (a hand-made `nats kv put`): a document push would refuse.
        r_bad = await fs.push_config(document("r1") + "[admin]\n", None)
        r_good = await fs.push_config(document("r2"), r_bad)
        failed(
            await fleet(server, "rollback", str(r_bad)),
            2,
            f"invalid fleet document: revision {r_bad}",
            "[admin]",
        )
        assert await fs.get_config() == (r_good, document("r2"))


# -- drains ---------------------------------------------------------------------------------


async def test_drains_round_trip(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server, store(server) as fs:
        runs = await asyncio.gather(
            fleet(server, "drain", "region", "eu-west"),  # not in any document: allowed
            fleet(server, "drain", "endpoint", "HTTPS://gpu-1.example:8443/"),
            fleet(server, "drain", "region", "eu west"),
            fleet(server, "drain", "endpoint", "ftp://gpu-1.example"),
            fleet(server, "drain", "endpoint", "https://gpu-1.example/v1?x=1"),
        )
        assert [r.rc for r in runs[:2]] == [0, 0], runs
        assert runs[1].out.startswith("drained endpoint https://gpu-1.example:8443 ")
        failed(runs[2], 2, "region: 'eu west' is not a valid name")
        failed(runs[3], 2, "endpoint: URL must start with http:// or https://")
        failed(runs[4], 2, "endpoint: URL must not have a query")
        # The endpoint as the config writes URLs: the form every edge compares with.
        expected = {Drain("region", "eu-west"), Drain("endpoint", "https://gpu-1.example:8443")}
        assert await fs.drains() == expected
        listed = await fleet(server, "drains")
        assert listed.out.splitlines() == ["endpoint https://gpu-1.example:8443", "region eu-west"]

        undrain, again = await asyncio.gather(
            fleet(server, "undrain", "region", "eu-west"),
            fleet(server, "undrain", "region", "us-east"),
        )
        assert (undrain.rc, undrain.out) == (0, "undrained region eu-west\n")
        assert (again.rc, again.out) == (0, "region us-east was not drained\n")
        assert await fs.drains() == {Drain("endpoint", "https://gpu-1.example:8443")}
        listed = await fleet(server, "drains")
        assert listed.out.splitlines() == ["endpoint https://gpu-1.example:8443"]


# -- status ---------------------------------------------------------------------------------


async def test_status_shows_each_edges_report(tmp_path: Path) -> None:
    text = document("r1")
    digest = document_digest(text)
    async with nats_server(tmp_path) as server, store(server) as fs:
        rev = await fs.push_config(text, None)
        now = time.time()
        view: dict[str, RegionSummary] = {
            "us-east": {"endpoints": 2, "up": 2, "fleet_down": 0},
            "ca-central": {"endpoints": 1, "up": 0, "fleet_down": 1},
        }
        fresh: EdgeDoc = edge_doc("nyc-1", "new-york", rev, digest, None, now, view)
        assert tuple(fresh) == EDGE_DOC_KEYS
        await fs.report_edge("nyc-1", fresh)
        await fs.report_edge(
            "fra-1",
            edge_doc("fra-1", "frankfurt", rev, digest, f"revision {rev}: boom", now - 60),
        )
        # A peer's junk: wrong types are dropped, a terminal escape is shown escaped; in its
        # view of the regions only the one well-formed region is kept.
        junk_regions = {
            "ok\x1b[2J": {"endpoints": 3, "up": 1, "fleet_down": 0},
            "more-up-than-endpoints": {"endpoints": 1, "up": 2, "fleet_down": 0},
            "negative": {"endpoints": 1, "up": -1, "fleet_down": 0},
            "bools": {"endpoints": True, "up": 1, "fleet_down": 0},
            "missing": {"endpoints": 1},
            "not-a-map": [1, 1, 0],
        }
        await fs.report_edge(
            "sgp-1", {"site": "sg\x1b[31m", "revision": "7", "at": now, "regions": junk_regions}
        )
        as_json, table = await asyncio.gather(
            fleet(server, "status", "--json"), fleet(server, "status")
        )
    assert as_json.rc == 0, as_json
    doc = json.loads(as_json.out)
    assert doc["config"] == {"revision": rev, "digest": digest}
    assert doc["stale_after_s"] == 10.0  # --servers: no [fleet] publish_interval_s to go by
    edges = {e["edge"]: e for e in doc["edges"]}
    assert list(edges) == ["fra-1", "nyc-1", "sgp-1"]
    nyc, fra, sgp = edges["nyc-1"], edges["fra-1"], edges["sgp-1"]
    assert (nyc["site"], nyc["revision"], nyc["digest"], nyc["error"]) == (
        "new-york",
        rev,
        digest,
        None,
    )
    assert (nyc["stale"], nyc["state"]) == (False, "ok") and 0 <= nyc["seen_s_ago"] < 10
    assert (fra["stale"], fra["state"], fra["error"]) == (True, "stale", f"revision {rev}: boom")
    assert 59 <= fra["seen_s_ago"] < 70
    assert (sgp["site"], sgp["revision"], sgp["digest"], sgp["state"]) == (
        "sg\\x1b[31m",
        None,
        None,
        "behind",
    )
    # Each edge's own view of each region; none from an edge that reported none.
    assert nyc["regions"] == view
    assert fra["regions"] is None
    assert sgp["regions"] == {"ok\\x1b[2J": {"endpoints": 3, "up": 1, "fleet_down": 0}}

    assert table.rc == 0, table
    lines = table.out.splitlines()
    assert lines[0] == f"config: revision {rev}, sha256 {digest[:12]}"
    assert re.fullmatch(r"EDGE +SITE +REVISION +DIGEST +LAST SEEN +STATE +REGIONS +ERROR", lines[1])
    short = digest[:12]
    assert re.fullmatch(
        rf"fra-1 +frankfurt +{rev} +{short} +[67]\d\.\ds ago +stale +- +revision {rev}: boom",
        lines[2],
    )
    assert re.fullmatch(
        rf"nyc-1 +new-york +{rev} +{short} +\d\.\ds ago +ok +us-east 2/2 ca-central 0/1! +-",
        lines[3],
    )
    assert re.fullmatch(
        r"sgp-1 +sg\\x1b\[31m +- +- +\d\.\ds ago +behind +ok\\x1b\[2J 1/3 +-", lines[4]
    )
    assert len(lines) == 5 and "\x1b" not in table.out


def test_an_edges_view_of_regions_is_capped() -> None:
    many = {f"r{i:03}": {"endpoints": 1, "up": 1, "fleet_down": 0} for i in range(300)}
    views = region_views(many)
    assert views is not None and len(views) == MAX_REPORTED_REGIONS == 256
    assert [v.name for v in views[:2]] == ["r000", "r001"]
    assert views[-1] == RegionView("r255", 1, 1, 0)
    assert region_views(None) is None and region_views([["r", 1]]) is None
    assert region_views({}) == ()
    assert regions_cell(()) == "-" and regions_cell(None) == "-"


async def test_status_of_an_empty_bucket(tmp_path: Path) -> None:
    async with nats_server(tmp_path) as server:
        table, history = await asyncio.gather(fleet(server, "status"), fleet(server, "history"))
    assert (table.rc, table.out) == (0, "config: none pushed yet\nedges: none has reported\n")
    assert (history.rc, history.out) == (0, "")
    assert history.err == "gslb: no fleet document has been pushed\n"


# -- reaching NATS --------------------------------------------------------------------------


async def test_unreachable_nats_and_bad_flags_are_one_line(tmp_path: Path) -> None:
    nowhere = f"nats://127.0.0.1:{free_block(1)}"  # nothing listens there
    doc = write(tmp_path, "doc.toml", document("r1"))
    runs = await asyncio.gather(
        gslb("fleet", "push", doc, "--servers", nowhere, "--timeout", "0.5"),
        gslb("fleet", "status", "--servers", nowhere, "--timeout", "0.5"),
        gslb("fleet", "drains"),
        gslb("fleet", "drains", "--servers", nowhere, "--config", doc),
        gslb("fleet", "drains", "--servers", "nats://ops:hunter2@127.0.0.1:4222"),
        gslb("fleet", "drains", "--config", doc),
    )
    for run in runs[:2]:
        failed(run, 1, "cannot reach any NATS server")
    for run in runs[2:4]:
        failed(run, 2, "exactly one")
    assert "hunter2" not in failed(runs[4], 2, "--servers: URL must not carry credentials")
    failed(runs[5], 2, "invalid config", doc, "fleet")  # a fleet document is no edge file


async def test_config_with_user_and_password_env(tmp_path: Path) -> None:
    secret = "Sup3r-s3cret-pw"
    doc_text = document("r1")
    doc = write(tmp_path, "doc.toml", doc_text)
    async with nats_server(tmp_path, user="ops", password=secret) as server:
        edge = write(
            tmp_path,
            "edge.toml",
            f'[fleet]\nservers = ["{server.url}"]\nedge = "nyc-1"\nbucket = "prod"\n'
            f'state_dir = "{tmp_path / "state"}"\nuser = "ops"\n'
            'password_env = "GSLB_TEST_NATS_PW"\npublish_interval_s = 0.5\n',
        )
        env = {**os.environ, "GSLB_TEST_NATS_PW": secret}
        wrong = {**env, "GSLB_TEST_NATS_PW": "not-it"}
        unset = {k: v for k, v in env.items() if k != "GSLB_TEST_NATS_PW"}
        ok, status, refused, missing, anonymous = await asyncio.gather(
            gslb("fleet", "push", doc, "--config", edge, env=env),
            gslb("fleet", "status", "--json", "--config", edge, env=env),
            gslb("fleet", "push", doc, "--config", edge, env=wrong),
            gslb("fleet", "push", doc, "--config", edge, env=unset),
            fleet(server, "drains"),
        )
        rev = pushed_revision(ok, doc_text)
        async with await FleetStore.connect(
            server.url, user="ops", password=secret, bucket="prod"
        ) as fs:
            assert await fs.get_config() == (rev, doc_text)  # in the [fleet] bucket
    assert status.rc == 0, status
    assert json.loads(status.out)["stale_after_s"] == 1.5  # 3 x publish_interval_s
    failed(refused, 1, "NATS refused the credentials")
    failed(missing, 2, edge, "fleet.password_env", "GSLB_TEST_NATS_PW", "is not set")
    failed(anonymous, 1, "NATS refused the credentials")
    for run in (ok, status, refused, missing, anonymous):
        assert secret not in run.out + run.err and "not-it" not in run.out + run.err
