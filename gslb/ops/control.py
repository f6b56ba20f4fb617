"""The control plane between the admin listener and the workers.

One interface, two implementations:

* ``LocalControl`` drives a ``Worker`` in the same process (``--workers 1``, tests, demo).
* ``RemoteControl`` fans each call out to N worker processes over their control sockets
  (Unix domain sockets in a private directory) and merges the answers: status figures and
  metrics are summed, drains and reloads go to every worker.

Each worker serves ``control_app(LocalControl(worker))`` on its socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from gslb.core.config import ConfigError, parse_toml
from gslb.core.fleet import endpoint_load, saturation_load
from gslb.core.policy import BadControlHeader
from gslb.edge.server import Worker
from gslb.ops.metrics import merge_expositions

log = logging.getLogger("gslb.ops.control")

DRAIN_KEYS = ("region", "node", "endpoint")


class ControlError(Exception):
    """A control request that cannot be carried out; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Control(Protocol):
    async def status(self) -> dict[str, Any]: ...

    async def metrics(self) -> bytes: ...

    async def explain(self, query: Mapping[str, str]) -> dict[str, Any]: ...

    async def drain(self, draining: bool, target: Mapping[str, Any]) -> dict[str, Any]: ...

    async def reload(self, text: str | None = None) -> dict[str, Any]: ...

    async def ready(self) -> bool: ...


def drain_target(body: Any) -> dict[str, str]:
    """Validate ``{"region": NAME}`` / ``{"node": NAME}`` / ``{"endpoint": URL}``."""
    if not isinstance(body, Mapping):
        raise ControlError(400, 'expected a JSON object such as {"region": "us-east"}')
    keys = [k for k in DRAIN_KEYS if k in body]
    extra = sorted(set(body) - set(DRAIN_KEYS))
    if len(keys) != 1 or extra:
        raise ControlError(400, "name exactly one of region, node or endpoint")
    value = body[keys[0]]
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ControlError(400, f"{keys[0]}: expected a non-empty string")
    return {keys[0]: value}


class LocalControl:
    """Control of the worker in this process."""

    def __init__(self, worker: Worker, config_path: str | None) -> None:
        self.worker = worker
        self.config_path = config_path

    async def status(self) -> dict[str, Any]:
        return self.worker.status()

    async def metrics(self) -> bytes:
        return self.worker.metrics.exposition()

    async def ready(self) -> bool:
        return self.worker.ready

    async def explain(self, query: Mapping[str, str]) -> dict[str, Any]:
        ip = query.get("ip")
        if not ip:
            raise ControlError(400, "ip: required")
        budget: float | None = None
        if query.get("budget_ms"):
            try:
                budget = float(query["budget_ms"])
            except ValueError:
                raise ControlError(400, "budget_ms: expected a number") from None
        try:
            return self.worker.explain(
                ip, budget, query.get("require"), query.get("residency"), query.get("model")
            )
        except (ValueError, BadControlHeader) as exc:
            raise ControlError(400, str(exc)) from None

    async def drain(self, draining: bool, target: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.worker.drain(draining, drain_target(target))
        except KeyError as exc:
            raise ControlError(404, str(exc.args[0]) if exc.args else "not found") from None

    async def reload(self, text: str | None = None) -> dict[str, Any]:
        """Re-read the config file (or take ``text``); a bad one keeps the running config."""
        source = self.config_path or "<config>"
        try:
            if text is None:
                if self.config_path is None:
                    raise ConfigError("", "no config file to reload from")
                try:
                    text = Path(self.config_path).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ConfigError(source, f"cannot read config: {exc}") from None
            cfg = parse_toml(text, source)
            await self.worker.reload(cfg)
        except ConfigError as exc:
            self.worker.metrics.reload_result(False)
            log.error("reload refused, still on generation %d: %s", self.generation, exc)
            return {"ok": False, "error": str(exc), "generation": self.generation}
        self.worker.metrics.reload_result(True)
        return {"ok": True, "generation": self.generation}

    @property
    def generation(self) -> int:
        return self.worker.runtime.generation


# --------------------------------------------------------------------------- worker socket


def control_app(local: LocalControl) -> web.Application:
    """The control API a worker serves on its Unix socket (reached only by its supervisor)."""

    async def status(request: web.Request) -> web.Response:
        return _json(await local.status())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await local.metrics())

    async def ready(request: web.Request) -> web.Response:
        return _json({"ready": await local.ready()})

    async def explain(request: web.Request) -> web.Response:
        try:
            return _json(await local.explain(request.query))
        except ControlError as exc:
            return _json({"error": str(exc)}, exc.status)

    async def drain(request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        try:
            return _json(await local.drain(bool(body["draining"]), body["target"]))
        except ControlError as exc:
            return _json({"error": str(exc)}, exc.status)

    async def reload(request: web.Request) -> web.Response:
        body = await request.json(loads=orjson.loads)
        return _json(await local.reload(body.get("text")))

    async def shared(request: web.Request) -> web.Response:
        return _json(local.worker.apply_shared(orjson.loads(await request.read())))

    app = web.Application(client_max_size=64 * 1024 * 1024)  # a share of a large fleet
    app.router.add_post("/shared", shared)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ready", ready)
    app.router.add_get("/explain", explain)
    app.router.add_post("/drain", drain)
    app.router.add_post("/reload", reload)
    return app


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


# --------------------------------------------------------------------------- fan-out


class RemoteControl:
    """Control of N worker processes through their control sockets."""

    def __init__(self, sockets: Sequence[str], timeout_s: float = 5.0) -> None:
        self.sockets = list(sockets)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, sock: str, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        conn = aiohttp.UnixConnector(path=sock)
        async with aiohttp.ClientSession(connector=conn, timeout=self.timeout) as session:
            async with session.request(method, f"http://worker{path}", **kw) as resp:
                return resp.status, await resp.read()

    async def _all(self, method: str, path: str, **kw: Any) -> list[tuple[int, bytes]]:
        results = await asyncio.gather(
            *(self._call(s, method, path, **kw) for s in self.sockets), return_exceptions=True
        )
        out: list[tuple[int, bytes]] = []
        for sock, res in zip(self.sockets, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("worker control %s unreachable: %s", sock, res)
                out.append((503, orjson.dumps({"error": "worker unreachable"})))
            else:
                out.append(res)
        return out

    async def status(self) -> dict[str, Any]:
        docs = [orjson.loads(b) for code, b in await self._all("GET", "/status") if code == 200]
        if not docs:
            raise ControlError(503, "no worker answered")
        return merge_status(docs, len(self.sockets))

    async def metrics(self) -> bytes:
        pages = [b for code, b in await self._all("GET", "/metrics") if code == 200]
        return merge_expositions(pages)

    async def ready(self) -> bool:
        answers = await self._all("GET", "/ready")
        return all(code == 200 and orjson.loads(b)["ready"] for code, b in answers)

    async def explain(self, query: Mapping[str, str]) -> dict[str, Any]:
        # Any worker's view will do; they route on the same config and similar health.
        code, body = await self._call(self.sockets[0], "GET", "/explain", params=dict(query))
        doc: dict[str, Any] = orjson.loads(body)
        if code != 200:
            raise ControlError(code, str(doc.get("error")))
        return doc

    async def drain(self, draining: bool, target: Mapping[str, Any]) -> dict[str, Any]:
        payload = {"draining": draining, "target": drain_target(target)}
        answers = await self._all("POST", "/drain", json=payload)
        docs = [orjson.loads(b) for _, b in answers]
        for code, doc in zip((c for c, _ in answers), docs, strict=True):
            if code != 200:
                raise ControlError(code, str(doc.get("error")))
        merged = dict(docs[0])
        merged["inflight"] = sum(d["inflight"] for d in docs)
        merged["drained"] = all(d["drained"] for d in docs)
        merged["workers"] = len(docs)
        return merged

    async def reload(self, text: str | None = None) -> dict[str, Any]:
        answers = await self._all("POST", "/reload", json={"text": text})
        docs = [orjson.loads(b) for _, b in answers]
        ok = all(code == 200 and d.get("ok") for (code, _), d in zip(answers, docs, strict=True))
        errors = sorted({str(d.get("error")) for d in docs if not d.get("ok")})
        return {
            "ok": ok,
            "generation": max((d.get("generation", -1) for d in docs), default=-1),
            **({"error": "; ".join(errors)} if errors else {}),
        }


def merge_status(docs: Sequence[dict[str, Any]], workers: int) -> dict[str, Any]:
    """One edge-wide status from per-worker ones: load and in-flight add up across workers."""
    base: dict[str, Any] = orjson.loads(orjson.dumps(docs[0]))  # a deep copy
    base["workers"] = workers
    base["ready"] = all(d.get("ready") for d in docs) and len(docs) == workers
    decisions: Counter[str] = Counter()
    spills: Counter[tuple[str, str]] = Counter()
    for d in docs:
        decisions.update(d.get("decisions", {}))
        for s in d.get("spills", []):
            spills[(s["from"], s["to"])] += s["count"]
    base["decisions"] = dict(decisions)
    base["spills"] = [{"from": a, "to": b, "count": n} for (a, b), n in spills.most_common()]
    for i, region in enumerate(base["regions"]):
        others = [d["regions"][i] for d in docs[1:] if i < len(d["regions"])]
        region["inflight"] += sum(o["inflight"] for o in others)
        # A region is routable for the edge if any worker can route to it.
        region["routable"] = region["routable"] or any(o["routable"] for o in others)
        penalty = saturation_load(region["capacity"], len(region["endpoints"]))
        load = 0.0
        for j, ep in enumerate(region["endpoints"]):
            views = [ep, *(o["endpoints"][j] for o in others)]
            ep["inflight"] = sum(v["inflight"] for v in views)
            # A server's own report is one figure per edge, however many workers read it.
            reports = [v["reported_load"] for v in views if v["reported_load"] is not None]
            ep["reported_load"] = max(reports) if reports else None
            saturated = any(v["saturated_remaining_s"] > 0 for v in views)
            load += endpoint_load(ep["reported_load"], ep["inflight"], saturated, penalty)
        region["load"] = round(load, 3)
        region["util"] = round(load / region["capacity"], 4)
    return base
