"""Region scoring kernel: hand-built scenarios, invariants, and Cython == Python twin.

Every test runs against both backends (the ``backend`` fixture, tests/conftest.py). A missing
or refused compiled backend is a failure, not a skip, unless ``GSLB_NO_EXTENSIONS=1`` says the
extension is deliberately not used.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb.core import _scoring_py, scoring
from gslb.core.scoring import FAILOVER, LOCAL, LOCAL_QUEUED, NO_REGION, REASONS, SPILL, STANDBY

ROOT = Path(__file__).resolve().parents[2]
NO_EXTENSIONS = os.environ.get("GSLB_NO_EXTENSIONS") == "1"
# Every reason code and every verdict the twin defines, by name, in code order.
CODE_NAMES = ("NO_REGION", "LOCAL", "FAILOVER", "SPILL", "LOCAL_QUEUED", "STANDBY")
VERDICT_NAMES = (
    "CHOSEN",
    "NOT_ALLOWED",
    "NOT_ROUTABLE",
    "STANDBY_UNUSED",
    "BUSY",
    "OVER_BUDGET",
    "NOT_BETTER",
)


def compiled() -> ModuleType:
    """The compiled backend; fails when it is missing or refused, unless it was disabled."""
    found = scoring.backends().get("cython")
    if found is None:
        if NO_EXTENSIONS:
            pytest.skip("compiled backend disabled by GSLB_NO_EXTENSIONS=1")
        pytest.fail(
            f"scoring backend 'cython' is not usable ({scoring.REFUSED or 'not built'}): "
            "build it with `make build` (or set GSLB_NO_EXTENSIONS=1)"
        )
    return found


# --- fleets -------------------------------------------------------------------------------


@dataclass
class R:
    """One region of a hand-built fleet (defaults: idle, active, routable, allowed)."""

    net: float
    load: float = 0.0
    cap: float = 4.0
    svc: float = 100.0
    active: bool = True
    routable: bool = True
    allowed: bool = True


@dataclass
class Fleet:
    active: list[bool]
    capacity: list[float]
    service_ms: list[float]
    allowed: bytes
    routable: bytes
    net_ms: list[float]
    load: list[float]
    budget_ms: float = 200.0
    spill_utilization: float = 0.8
    spill_penalty_ms: float = 20.0
    service_overrides: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def of(cls, regions: list[R], **scalars: Any) -> Fleet:
        return cls(
            active=[r.active for r in regions],
            capacity=[r.cap for r in regions],
            service_ms=[r.svc for r in regions],
            allowed=bytes(r.allowed for r in regions),
            routable=bytes(r.routable for r in regions),
            net_ms=[r.net for r in regions],
            load=[r.load for r in regions],
            **scalars,
        )

    @property
    def n(self) -> int:
        return len(self.active)

    def kernel(self, mod: ModuleType) -> Any:
        k = mod.Kernel(
            self.active,
            self.capacity,
            self.service_ms,
            self.spill_utilization,
            self.spill_penalty_ms,
        )
        for index, value in self.service_overrides:
            k.set_service_ms(index, value)
        return k

    def decide(self, mod: ModuleType, limit: int = 0) -> tuple[int, tuple[int, ...]]:
        """``(reason, order)``; ``home`` has tests of its own."""
        reason, order, _ = self.decide_home(mod, limit)
        return reason, order

    def decide_home(self, mod: ModuleType, limit: int = 0) -> tuple[int, tuple[int, ...], int]:
        result: tuple[int, tuple[int, ...], int] = self.kernel(mod).decide(
            self.allowed,
            bytearray(self.routable),
            array("d", self.net_ms),
            array("d", self.load),
            self.budget_ms,
            limit,
        )
        return result

    def explain(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """The twin's decision with its verdict on every region."""
        result: tuple[int, tuple[int, ...], tuple[int, ...]] = self.kernel(_scoring_py).explain(
            self.allowed,
            bytearray(self.routable),
            array("d", self.net_ms),
            array("d", self.load),
            self.budget_ms,
        )
        return result

    def service(self, i: int) -> float:
        value = self.service_ms[i]
        for index, override in self.service_overrides:
            if index == i:
                value = override
        return value


def run(mod: ModuleType, regions: list[R], **scalars: Any) -> tuple[int, tuple[int, ...]]:
    return Fleet.of(regions, **scalars).decide(mod)


# --- API ----------------------------------------------------------------------------------


def test_compiled_backend_is_selected() -> None:
    if NO_EXTENSIONS:
        assert scoring.BACKEND == "python"
        assert set(scoring.backends()) == {"python"}
    else:
        module = compiled()
        assert scoring.BACKEND == "cython" and scoring.REFUSED is None
        assert scoring.Kernel is module.Kernel
        # The real build is current: stamped with the digest of the .pyx beside it.
        assert scoring.stale(module) is None
        source = Path(module.__file__ or "").with_name(scoring.SOURCE)
        assert hashlib.sha256(source.read_bytes()).hexdigest() == module.SOURCE_SHA256


def test_env_forces_python_twin() -> None:
    env = {**os.environ, "GSLB_NO_EXTENSIONS": "1", "PYTHONPATH": str(ROOT)}
    code = "import gslb.core.scoring as s; print(s.BACKEND, sorted(s.backends()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["python", "['python']"]


def test_reason_codes_and_verdicts_exist_once_in_the_twin() -> None:
    # The names are the contract: Decision.reason, the route metric label, the access log.
    assert REASONS == ("no-region", "local", "failover", "spill", "local-queued", "standby")
    assert len(CODE_NAMES) == len(REASONS)
    assert [getattr(_scoring_py, n) for n in CODE_NAMES] == list(range(len(REASONS)))
    # gslb.core.scoring re-exports the twin's objects, it does not define its own.
    assert scoring.REASONS is _scoring_py.REASONS
    assert all(getattr(scoring, n) is getattr(_scoring_py, n) for n in CODE_NAMES)
    assert len(VERDICT_NAMES) == len(_scoring_py.VERDICTS)
    assert [getattr(_scoring_py, n) for n in VERDICT_NAMES] == list(range(len(VERDICT_NAMES)))
    # Every upper-case name of the twin is one of those, so none can be added unchecked.
    public = {n for n in vars(_scoring_py) if n.isupper()}
    assert public == {*CODE_NAMES, "REASONS", *VERDICT_NAMES, "VERDICTS"}


def test_compiled_constants_are_the_twins() -> None:
    """The compiled module's codes are its C enum values; each must equal the twin's code."""
    module = compiled()
    public = {n for n in vars(module) if n.isupper()}
    assert public == {*CODE_NAMES, "SOURCE_SHA256"}  # no REASONS: the names live in the twin
    assert {n: getattr(module, n) for n in CODE_NAMES} == {
        n: getattr(_scoring_py, n) for n in CODE_NAMES
    }


# --- stale builds -------------------------------------------------------------------------


def fake_build(tmp_path: Path, source: bytes | None, digest: str | None) -> ModuleType:
    """A stand-in compiled module in ``tmp_path`` with ``source`` as its .pyx (None: none)."""
    module = ModuleType("gslb.core._scoring")
    module.__file__ = str(tmp_path / "_scoring.cpython-311-x86_64-linux-gnu.so")
    if digest is not None:
        module.SOURCE_SHA256 = digest  # type: ignore[attr-defined]
    if source is not None:
        (tmp_path / scoring.SOURCE).write_bytes(source)
    return module


def test_a_build_from_other_source_text_is_stale(tmp_path: Path) -> None:
    text = b"# the kernel\n"
    digest = hashlib.sha256(text).hexdigest()
    assert scoring.stale(fake_build(tmp_path, text, digest)) is None
    edited = scoring.stale(fake_build(tmp_path, text + b"# edited\n", digest))
    assert edited is not None
    assert "built from another _scoring.pyx" in edited and "make build" in edited
    assert "\n" not in edited  # one line for the operator
    unstamped = scoring.stale(fake_build(tmp_path, text, None))
    assert unstamped is not None and "no source digest" in unstamped


def test_an_installed_build_without_its_source_is_trusted(tmp_path: Path) -> None:
    assert scoring.stale(fake_build(tmp_path, None, None)) is None
    assert scoring.stale(fake_build(tmp_path, None, "0" * 64)) is None


def copy_package(tmp_path: Path) -> Path:
    """The modules ``import gslb.core.scoring`` needs, and the real build, in a directory of
    their own: the copy can be made stale without touching the real build."""
    core = ROOT / "gslb" / "core"
    built = sorted(core.glob("_scoring*.so"))
    if not built:
        if NO_EXTENSIONS:
            pytest.skip("no compiled kernel built (GSLB_NO_EXTENSIONS=1)")
        pytest.fail("gslb/core/_scoring*.so is not built: `make build`")
    package = tmp_path / "gslb" / "core"
    package.mkdir(parents=True)
    shutil.copy2(ROOT / "gslb" / "__init__.py", package.parent / "__init__.py")
    for name in ("__init__.py", "scoring.py", "_scoring_py.py", scoring.SOURCE, built[0].name):
        shutil.copy2(core / name, package / name)
    return package


def import_scoring(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GSLB_NO_EXTENSIONS"}
    environ.update(PYTHONPATH=str(root), PYTHONWARNINGS="default", **env)
    code = (
        "import gslb.core.scoring as s; print(s.__file__); print(s.BACKEND, sorted(s.backends()))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=environ, cwd=root, capture_output=True, text=True
    )


def test_a_stale_build_is_refused_loudly_and_the_twin_scores(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    current = import_scoring(tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.splitlines() == [
        str(package / "scoring.py"),  # the copy, not the checkout
        "cython ['cython', 'python']",
    ]
    assert "refusing" not in current.stderr
    # The .pyx changes and nobody rebuilds: same mtimes as a fresh build would have.
    source = package / scoring.SOURCE
    stat = source.stat()
    source.write_bytes(source.read_bytes() + b"\n# a newer rule\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    stale = import_scoring(tmp_path)
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.splitlines()[1] == "python ['python']"
    assert "RuntimeWarning: gslb: refusing the compiled scoring kernel" in stale.stderr
    assert "built from another _scoring.pyx" in stale.stderr and "make build" in stale.stderr
    # Told not to use the extension, there is nothing to refuse and nothing to say.
    off = import_scoring(tmp_path, GSLB_NO_EXTENSIONS="1")
    assert off.stdout.splitlines()[1] == "python ['python']" and off.stderr == ""


# One fleet per reason code: every code the compiled kernel returns is the twin's, and the
# twin's explanation chooses the same region.
EVERY_REASON = [
    pytest.param([R(10, allowed=False)], NO_REGION, (), id="no-region"),
    pytest.param([R(10), R(30)], LOCAL, (0, 1), id="local"),
    pytest.param([R(10, routable=False), R(30)], FAILOVER, (1,), id="failover"),
    pytest.param([R(10, load=8.0), R(30)], SPILL, (1, 0), id="spill"),
    pytest.param([R(10, load=8.0), R(120)], LOCAL_QUEUED, (0, 1), id="local-queued"),
    pytest.param([R(10, routable=False), R(50, active=False)], STANDBY, (1,), id="standby"),
]


def test_every_reason_is_covered_below() -> None:
    assert sorted(p.values[1] for p in EVERY_REASON) == list(range(len(REASONS)))


@pytest.mark.parametrize(("regions", "code", "order"), EVERY_REASON)
def test_every_reason_code_agrees_with_the_twins_explanation(
    backend: ModuleType, regions: list[R], code: int, order: tuple[int, ...]
) -> None:
    fleet = Fleet.of(regions)
    assert fleet.decide(backend) == (code, order)
    reason, explained, verdicts = fleet.explain()
    assert (reason, explained) == (code, order)
    chosen = [i for i, v in enumerate(verdicts) if v == _scoring_py.CHOSEN]
    assert chosen == list(order[:1])


def test_wait_ms(backend: ModuleType) -> None:
    assert backend.wait_ms(0.0, 4.0, 100.0) == 0.0
    assert backend.wait_ms(3.0, 4.0, 100.0) == 0.0  # the next request still gets a free slot
    assert backend.wait_ms(4.0, 4.0, 100.0) == 25.0
    assert backend.wait_ms(8.0, 4.0, 100.0) == 125.0
    assert backend.wait_ms(0.5, 0.5, 10.0) == 20.0


def test_kernel_attributes_and_validation(backend: ModuleType) -> None:
    k = backend.Kernel([True, False], [4.0, 2.0], [100.0, 50.0], 0.8, 20.0)
    assert k.n == 2
    with pytest.raises(AttributeError):
        k.n = 3
    with pytest.raises(ValueError):
        backend.Kernel([True, False], [4.0], [100.0, 50.0], 0.8, 20.0)
    with pytest.raises(ValueError):
        backend.Kernel([True], [4.0], [100.0, 50.0], 0.8, 20.0)
    with pytest.raises(ValueError):
        backend.Kernel([True], [0.0], [100.0], 0.8, 20.0)
    with pytest.raises(ValueError):
        backend.Kernel([True], [4.0], [-1.0], 0.8, 20.0)
    with pytest.raises(IndexError):
        k.set_service_ms(2, 10.0)
    with pytest.raises(IndexError):
        k.set_service_ms(-1, 10.0)
    with pytest.raises(ValueError):
        k.set_service_ms(0, 0.0)
    empty = backend.Kernel([], [], [], 0.8, 20.0)
    assert empty.n == 0
    assert empty.decide(b"", b"", array("d"), array("d"), 100.0) == (NO_REGION, (), -1)


def test_length_mismatch_raises(backend: ModuleType) -> None:
    k = backend.Kernel([True] * 3, [4.0] * 3, [100.0] * 3, 0.8, 20.0)
    ok_b, ok_d = b"\x01" * 3, array("d", [1.0] * 3)
    short_b, short_d = b"\x01" * 2, array("d", [1.0] * 4)
    assert k.decide(ok_b, ok_b, ok_d, ok_d, 100.0)[0] == LOCAL
    for args in (
        (short_b, ok_b, ok_d, ok_d),
        (ok_b, bytearray(short_b), ok_d, ok_d),
        (ok_b, ok_b, short_d, ok_d),
        (ok_b, ok_b, ok_d, short_d),
        (b"", b"", array("d"), array("d")),
    ):
        with pytest.raises(ValueError):
            k.decide(*args, 100.0)


def test_accepts_other_buffers(backend: ModuleType) -> None:
    """bytes/bytearray/array('d') are the fast path; other contiguous buffers also work."""
    k = backend.Kernel([True, True, True], [4.0] * 3, [100.0] * 3, 0.8, 20.0)
    net, load = array("d", [30.0, 10.0, 20.0]), array("d", [0.0, 0.0, 0.0])
    expected = (LOCAL, (1, 2, 0))
    assert k.decide(b"\x01\x02\xff", b"\x01\x01\x01", net, load, 100.0)[:2] == expected
    assert k.decide(bytearray(b"\x01\x01\x01"), b"\x01\x01\x01", net, load, 100.0)[:2] == expected
    mv = memoryview(b"\x01\x01\x01")
    assert k.decide(mv, mv, memoryview(net), memoryview(load), 100.0)[:2] == expected


# --- hand-built scenarios -----------------------------------------------------------------
# Defaults: capacity 4, service 100 ms, spill at util >= 0.8, penalty 20 ms, budget 200 ms.
# wait_ms(load=8, cap=4, svc=100) = 125; wait_ms(load=12, ...) = 225.


def test_local(backend: ModuleType) -> None:
    assert run(backend, [R(10), R(50), R(30)]) == (LOCAL, (0, 2, 1))


def test_local_ignores_budget(backend: ModuleType) -> None:
    assert run(backend, [R(500), R(900)], budget_ms=100.0) == (LOCAL, (0, 1))


def test_nearest_is_taken_among_allowed_only(backend: ModuleType) -> None:
    assert run(backend, [R(10, allowed=False), R(30), R(20)]) == (LOCAL, (2, 1))


def test_failover_when_nearest_unroutable(backend: ModuleType) -> None:
    assert run(backend, [R(10, routable=False), R(50), R(30)]) == (FAILOVER, (2, 1))
    # the budget does not apply to failover either
    regions = [R(10, routable=False), R(400)]
    assert run(backend, regions, budget_ms=100.0) == (FAILOVER, (1,))


def test_standby_not_used_while_an_active_region_is_routable(backend: ModuleType) -> None:
    regions = [R(300, load=100.0), R(5, active=False)]
    assert run(backend, regions) == (LOCAL_QUEUED, (0,))
    assert run(backend, [R(5, active=False), R(300)]) == (LOCAL, (1,))


def test_spill(backend: ModuleType) -> None:
    # home 0 costs 10 + 125 = 135; region 1 costs 30 (+20 penalty = 50); region 2 costs 60
    regions = [R(10, load=8.0), R(30), R(60)]
    assert run(backend, regions) == (SPILL, (1, 2, 0))


def test_spill_target_must_be_below_spill_utilization(backend: ModuleType) -> None:
    # region 1 is close but at util 0.8; region 2 is the best target below the threshold
    regions = [R(10, load=8.0), R(20, load=3.2), R(60)]
    assert run(backend, regions) == (SPILL, (2, 1, 0))


def test_spill_ties_go_to_first_listed(backend: ModuleType) -> None:
    regions = [R(10, load=8.0), R(60), R(40, load=1.5, cap=2.0, svc=80.0), R(60)]
    # regions 1, 2 and 3 are all eligible and all cost 60 (2: 40 + 0.5/2*80)
    assert run(backend, regions) == (SPILL, (1, 2, 3, 0))


def test_local_queued_when_budget_excludes_spill_target(backend: ModuleType) -> None:
    # home costs 10 + 225 = 235; region 1 would cost 210 + 20 = 230 < 235 but 210 > budget
    regions = [R(10, load=12.0), R(210)]
    assert run(backend, regions, budget_ms=200.0) == (LOCAL_QUEUED, (0, 1))
    assert run(backend, regions, budget_ms=210.0) == (SPILL, (1, 0))


def test_local_queued_when_spill_is_not_faster(backend: ModuleType) -> None:
    # home costs 135; region 1 costs 120 + 20 = 140
    assert run(backend, [R(10, load=8.0), R(120)]) == (LOCAL_QUEUED, (0, 1))
    # exactly equal (115 + 20 == 135) is not strictly faster
    assert run(backend, [R(10, load=8.0), R(115)]) == (LOCAL_QUEUED, (0, 1))
    assert run(backend, [R(10, load=8.0), R(114)]) == (SPILL, (1, 0))


def test_local_queued_without_any_spill_candidate(backend: ModuleType) -> None:
    assert run(backend, [R(10, load=8.0)]) == (LOCAL_QUEUED, (0,))
    assert run(backend, [R(10, load=8.0), R(20, load=8.0)]) == (LOCAL_QUEUED, (0, 1))


def test_set_service_ms_changes_the_spill_decision(backend: ModuleType) -> None:
    fleet = Fleet.of([R(10, load=8.0), R(120)])
    assert fleet.decide(backend) == (LOCAL_QUEUED, (0, 1))  # home 135 < 140
    fleet.service_overrides = [(0, 200.0)]  # home now 10 + 250 = 260
    assert fleet.decide(backend) == (SPILL, (1, 0))


def test_standby(backend: ModuleType) -> None:
    regions = [
        R(10, routable=False),
        R(50, active=False),
        R(20, active=False),
        R(5, active=False, routable=False),
        R(1, active=False, allowed=False),
    ]
    assert run(backend, regions) == (STANDBY, (2, 1))


def test_standby_fallbacks_by_cost(backend: ModuleType) -> None:
    # chosen by least net even though loaded; fallbacks by net + wait: 50, 155
    regions = [
        R(20, load=12.0, active=False),
        R(30, load=8.0, active=False),
        R(50, active=False),
    ]
    assert run(backend, regions) == (STANDBY, (0, 2, 1))


def test_no_region_when_nothing_allowed(backend: ModuleType) -> None:
    regions = [R(10, allowed=False), R(20, active=False, allowed=False)]
    assert run(backend, regions) == (NO_REGION, ())


def test_no_region_when_nothing_routable(backend: ModuleType) -> None:
    regions = [R(10, routable=False), R(20, active=False, routable=False), R(1, allowed=False)]
    assert run(backend, regions) == (NO_REGION, ())


def test_ties_go_to_first_listed(backend: ModuleType) -> None:
    assert run(backend, [R(30), R(10), R(10)]) == (LOCAL, (1, 2, 0))
    # nearest ties: region 0 (unroutable) is listed first, so region 1 is a failover
    assert run(backend, [R(10, routable=False), R(10)]) == (FAILOVER, (1,))
    assert run(backend, [R(10), R(10, routable=False)]) == (LOCAL, (0,))


def test_fallbacks_ordered_by_net_plus_wait_then_index(backend: ModuleType) -> None:
    regions = [
        R(10),
        R(20),  # cost 20
        R(15, load=4.0, svc=20.0),  # cost 15 + 5 = 20
        R(5, load=8.0),  # cost 5 + 125 = 130, nearest net but worst cost
        R(100),  # cost 100
        R(1, routable=False),
        R(2, allowed=False),
    ]
    # region 3 is home (least net) but at util 2.0 and spills to region 0 (10 + 20 < 130)
    assert run(backend, regions) == (SPILL, (0, 1, 2, 4, 3))
    regions[3] = R(5, load=3.0)  # util 0.75: stays local, not nearest (5 is unroutable)
    assert run(backend, regions) == (FAILOVER, (3, 0, 1, 2, 4))


# --- properties ---------------------------------------------------------------------------


def values(discrete: list[float], low: float, high: float) -> st.SearchStrategy[float]:
    """Mostly a handful of values (so ties happen), sometimes any float in [low, high]."""
    return st.one_of(
        st.sampled_from(discrete),
        st.sampled_from(discrete),
        st.floats(low, high, allow_nan=False, allow_infinity=False),
    )


# Each column's values come from a handful of values (so ties happen), arbitrary floats, or a
# mix. The mode is drawn per column; region strategies are built once per mode combination
# (fresh strategy objects per example would make generation several times slower).
COLUMNS = (
    ([0.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0], 0.0, 400.0),  # net_ms
    ([0.0, 1.0, 2.0, 3.0, 4.0, 7.0, 8.0, 16.0], 0.0, 100.0),  # load
    ([0.5, 1.0, 2.0, 4.0, 8.0], 0.25, 64.0),  # capacity
    ([10.0, 50.0, 100.0, 400.0], 0.5, 2000.0),  # service_ms
)
MODES = st.sampled_from(("discrete", "discrete", "continuous", "mixed"))

# (active, allowed, routable): nonzero byte = true; mostly active, allowed and routable
FLAGS = st.sampled_from(
    [
        (active, allowed, routable)
        for active in (True, True, True, False)
        for allowed in (0, 1, 1, 2, 255)
        for routable in (0, 1, 1, 1, 255)
    ]
)


@functools.cache
def region_strategy(modes: tuple[str, ...]) -> st.SearchStrategy[tuple[Any, ...]]:
    columns: list[st.SearchStrategy[float]] = []
    for mode, (discrete, low, high) in zip(modes, COLUMNS, strict=True):
        if mode == "discrete":
            columns.append(st.sampled_from(discrete))
        elif mode == "continuous":
            columns.append(st.floats(low, high, allow_nan=False, allow_infinity=False))
        else:
            columns.append(values(discrete, low, high))
    return st.tuples(FLAGS, *columns)


OVERRIDE_MS = values([10.0, 400.0], 0.5, 2000.0)
BUDGET_MS = values([0.0, 50.0, 100.0, 200.0, 1e9], 0.0, 1000.0)
SPILL_UTILIZATION = values([0.0, 0.5, 0.8, 1.0, 1.5, 2.0], 0.0, 3.0)
SPILL_PENALTY_MS = values([0.0, 10.0, 20.0, 50.0], 0.0, 300.0)


@st.composite
def fleets(draw: st.DrawFn, min_n: int = 1, max_n: int = 12) -> Fleet:
    n = draw(st.integers(min_n, max_n))
    modes = tuple(draw(MODES) for _ in COLUMNS)
    rows = draw(st.lists(region_strategy(modes), min_size=n, max_size=n))
    overrides = draw(st.lists(st.tuples(st.integers(0, n - 1), OVERRIDE_MS), max_size=2))
    return Fleet(
        active=[flags[0] for flags, *_ in rows],
        allowed=bytes(flags[1] for flags, *_ in rows),
        routable=bytes(flags[2] for flags, *_ in rows),
        net_ms=[row[1] for row in rows],
        load=[row[2] for row in rows],
        capacity=[row[3] for row in rows],
        service_ms=[row[4] for row in rows],
        budget_ms=draw(BUDGET_MS),
        spill_utilization=draw(SPILL_UTILIZATION),
        spill_penalty_ms=draw(SPILL_PENALTY_MS),
        service_overrides=overrides,
    )


PROPERTY = settings(max_examples=2000, deadline=None, derandomize=True)


def check_invariants(f: Fleet, reason: int, order: tuple[int, ...]) -> None:
    """Everything the decision rule promises, restated independently of the kernel."""
    p = _scoring_py
    n = f.n
    allowed = [i for i in range(n) if f.allowed[i]]
    pool = [i for i in allowed if f.active[i] and f.routable[i]]
    standby = [i for i in allowed if not f.active[i] and f.routable[i]]

    def cost(i: int) -> float:
        return f.net_ms[i] + p.wait_ms(f.load[i], f.capacity[i], f.service(i))

    def util(i: int) -> float:
        return f.load[i] / f.capacity[i]

    def least_net(regions: list[int]) -> int:
        return min(regions, key=lambda i: (f.net_ms[i], i))

    def assert_fallbacks_sorted() -> None:
        keys = [(cost(i), i) for i in order[1:]]
        assert keys == sorted(keys)

    assert isinstance(reason, int) and 0 <= reason < len(p.REASONS)
    assert all(isinstance(i, int) for i in order)
    assert len(set(order)) == len(order)
    assert set(order) <= set(allowed)
    assert (reason == p.NO_REGION) == (order == ())

    if reason == p.NO_REGION:
        assert not pool and not standby
        return
    if reason == p.STANDBY:
        assert not pool
        assert order[0] == least_net(standby)
        assert set(order) == set(standby)
        assert_fallbacks_sorted()
        return

    assert pool, "an active region was chosen although none is routable"
    assert set(order) == set(pool)
    assert_fallbacks_sorted()
    home = least_net(pool)
    nearest = least_net([i for i in allowed if f.active[i]])
    below = util(home) < f.spill_utilization
    assert (reason in (p.LOCAL, p.FAILOVER)) == below  # no budget check on local/failover
    penalty = f.spill_penalty_ms
    targets = [
        i for i in pool if i != home and util(i) < f.spill_utilization and cost(i) <= f.budget_ms
    ]
    if reason in (p.LOCAL, p.FAILOVER):
        assert order[0] == home
        assert (reason == p.LOCAL) == (home == nearest)
    elif reason == p.SPILL:
        chosen = order[0]
        assert chosen in targets
        assert cost(chosen) <= f.budget_ms
        assert chosen == min(targets, key=lambda i: (cost(i) + penalty, i))
        assert cost(chosen) + penalty < cost(home)
    else:
        assert reason == p.LOCAL_QUEUED
        assert order[0] == home
        assert all(not (cost(i) + penalty < cost(home)) for i in targets)


def check_explanation(f: Fleet, reason: int, order: tuple[int, ...]) -> None:
    """The twin's explanation tells the decision's story: same choice, a verdict that fits
    every region."""
    p = _scoring_py
    explained, explained_order, verdicts = f.explain()
    assert (explained, explained_order) == (reason, order)
    assert len(verdicts) == f.n and all(0 <= v < len(p.VERDICTS) for v in verdicts)
    assert [i for i, v in enumerate(verdicts) if v == p.CHOSEN] == list(order[:1])
    for i, verdict in enumerate(verdicts):
        assert (verdict == p.NOT_ALLOWED) == (not f.allowed[i])
        if f.allowed[i] and not f.routable[i]:
            assert verdict == p.NOT_ROUTABLE
        if i in order[1:]:  # a fallback: allowed, routable, just not the best now
            assert verdict in (p.NOT_BETTER, p.BUSY, p.OVER_BUDGET)
    if reason == p.SPILL:
        home = min(order, key=lambda i: (f.net_ms[i], i))  # order holds the whole pool
        assert verdicts[home] == p.BUSY


def check_fleet(f: Fleet) -> None:
    results = {name: f.decide(mod) for name, mod in scoring.backends().items()}
    for result in results.values():
        check_invariants(f, *result)
    # Every backend's decision is the twin's, and so is the twin's explanation of it.
    assert len(set(results.values())) == 1
    check_explanation(f, *results["python"])


# One generated fleet is checked against both backends (generation dominates the runtime).
@PROPERTY
@given(fleets())
def test_properties(f: Fleet) -> None:
    check_fleet(f)


# The request path asks for only as many candidates as it may attempt: the bounded insertion
# must keep exactly the first ``limit`` entries of the full order, ties included.
@settings(max_examples=1000, deadline=None, derandomize=True)
@given(fleets(), st.integers(1, 5))
def test_limit_keeps_a_prefix_of_the_full_order(f: Fleet, limit: int) -> None:
    for mod in scoring.backends().values():
        reason, order = f.decide(mod)
        assert f.decide(mod, limit) == (reason, order[:limit])


# More than 48 fallbacks exercises the kernel's binary-insertion path.
@settings(max_examples=150, deadline=None, derandomize=True)
@given(fleets(min_n=40, max_n=140))
def test_properties_on_large_fleets(f: Fleet) -> None:
    check_fleet(f)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    values([0.0, 1.0, 3.0, 4.0, 8.0], 0.0, 1e6),
    values([0.5, 1.0, 4.0], 1e-3, 1e6),
    values([10.0, 100.0], 1e-3, 1e6),
)
def test_wait_ms_agrees(load: float, capacity: float, service_ms: float) -> None:
    results = {mod.wait_ms(load, capacity, service_ms) for mod in scoring.backends().values()}
    assert len(results) == 1
    assert results.pop() >= 0.0


# --- home: the region a spill leaves -------------------------------------------------------


def _home_by_definition(f: Fleet) -> int:
    """The nearest routable active allowed region; else the chosen standby; else -1."""

    def ok(i: int, active: bool) -> bool:
        return bool(f.allowed[i]) and bool(f.routable[i]) and f.active[i] == active

    for active in (True, False):
        members = [i for i in range(len(f.active)) if ok(i, active)]
        if members:
            return min(members, key=lambda i: (f.net_ms[i], i))
    return -1


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(fleets(), st.integers(0, 3))
def test_home_comes_with_the_decision(f: Fleet, limit: int) -> None:
    homes = {name: f.decide_home(mod, limit)[2] for name, mod in scoring.backends().items()}
    assert set(homes.values()) == {_home_by_definition(f)}
    reason, order, home = f.decide_home(_scoring_py)
    if reason == SPILL:
        assert home in order[1:]  # a spill leaves a routable home behind as a fallback
    elif order:
        assert home == order[0]  # every other route serves at home
    else:
        assert home == -1
