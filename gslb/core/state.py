"""Live per-region figures that the router reads on every request.

The shell (proxy accounting, health checkers, load pollers) writes them; the router reads them
synchronously inside one event loop, so no locks and no copies: a ``LiveView`` is the current
view, laid out as flat arrays in config order so the scoring kernel can read them directly.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any


class LiveView:
    """``routable[i]`` (0/1) and ``load[i]`` (in-flight + queued) for region ``i``.

    ``last_resort[i]`` is 1 for a region that is healthy but held down after a recovery:
    the router uses such regions only when nothing else allowed is routable, so flap damping
    never turns into a refusal.
    """

    __slots__ = ("last_resort", "load", "names", "routable")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.routable = bytearray(b"\x01" * len(self.names))
        self.last_resort = bytearray(b"\x01" * len(self.names))
        self.load = array("d", [0.0] * len(self.names))

    def index(self, name: str) -> int:
        return self.names.index(name)

    def set(self, name: str, *, load: float | None = None, routable: bool | None = None) -> None:
        i = self.index(name)
        if load is not None:
            self.load[i] = float(load)
        if routable is not None:
            self.routable[i] = self.last_resort[i] = 1 if routable else 0

    @classmethod
    def from_document(cls, names: Sequence[str], doc: Mapping[str, Any]) -> LiveView:
        """Build from ``{"regions": {NAME: {"inflight": N, "queued": N, "routable": bool}}}``.

        Raises ``ValueError`` naming the offending key (this is operator input for
        ``gslb route --state``).
        """
        snap = cls(names)
        regions = doc.get("regions", {}) if isinstance(doc, Mapping) else None
        if not isinstance(regions, Mapping):
            raise ValueError("regions: expected an object of region name -> figures")
        for name, figs in regions.items():
            if name not in snap.names:
                raise ValueError(f"regions.{name}: no such region in the config")
            if not isinstance(figs, Mapping):
                raise ValueError(f"regions.{name}: expected an object")
            unknown = set(figs) - {"inflight", "queued", "routable"}
            if unknown:
                raise ValueError(f"regions.{name}.{sorted(unknown)[0]}: unknown key")
            load = 0.0
            for key in ("inflight", "queued"):
                v = figs.get(key, 0)
                if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                    raise ValueError(f"regions.{name}.{key}: expected a number >= 0")
                load += float(v)
            routable = figs.get("routable", True)
            if not isinstance(routable, bool):
                raise ValueError(f"regions.{name}.routable: expected true or false")
            snap.set(name, load=load, routable=routable)
        return snap
