"""The admin listener: metrics, status, explanations, drains and reloads.

Loopback by default. Reads are open to whoever can reach the listener; mutating calls
(``POST /drain``, ``/undrain``, ``/reload``) need ``Authorization: Bearer <token>`` with the
token from ``admin.token_env`` or ``admin.token_file``, compared in constant time, and are
refused outright when no token is configured. Every mutating call is logged: who (peer
address), what, and the result; never the token.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gslb.core.config import AdminConfig
from gslb.ops.control import Control, ControlError
from gslb.ops.metrics import CONTENT_TYPE, merge_expositions

log = logging.getLogger("gslb.ops.admin")


def load_token(cfg: AdminConfig) -> str | None:
    """The admin token, or ``None`` when none is configured (mutations are then refused)."""
    if cfg.token_file:
        try:
            token = Path(cfg.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.error("admin token file %s unreadable (%s): mutations refused", cfg.token_file, exc)
            return None
        return token or None
    token = os.environ.get(cfg.token_env, "").strip() if cfg.token_env else ""
    return token or None


class Admin:
    def __init__(self, control: Control, token: str | None) -> None:
        self.control = control
        self.token = token
        # Fleet mode: the fleet as this edge sees it (``FleetAgent.status``), in ``/status``
        # under "fleet", and its metrics (``gslb.ops.fleetmetrics``) after the workers' own.
        self.fleet_status: Callable[[], dict[str, Any]] | None = None
        self.fleet_metrics: Callable[[], bytes] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[_errors])
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/status", self.status)
        r.add_get("/explain", self.explain)
        r.add_post("/drain", self.drain)
        r.add_post("/undrain", self.undrain)
        r.add_post("/reload", self.reload)
        return app

    # -- reads ------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        from gslb.ops.statuspage import handle_status_page

        return await handle_status_page(request)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = await self.control.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.control.metrics()
        if self.fleet_metrics is not None:
            body = merge_expositions([body, self.fleet_metrics()])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def status(self, request: web.Request) -> web.Response:
        doc = await self.control.status()
        if self.fleet_status is not None:
            doc["fleet"] = self.fleet_status()
        return _json(doc)

    async def explain(self, request: web.Request) -> web.Response:
        return _json(await self.control.explain(request.query))

    # -- mutations --------------------------------------------------------------------------

    async def drain(self, request: web.Request) -> web.Response:
        return await self._drain(request, True)

    async def undrain(self, request: web.Request) -> web.Response:
        return await self._drain(request, False)

    async def _drain(self, request: web.Request, draining: bool) -> web.Response:
        what = "drain" if draining else "undrain"
        self._authorize(request, what)
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            raise ControlError(400, "body: expected JSON") from None
        try:
            result = await self.control.drain(draining, body)
        except ControlError as exc:
            _audit(request, what, body, f"refused: {exc}")
            raise
        _audit(request, what, result["target"], f"ok, {result['inflight']} in flight")
        return _json(result)

    async def reload(self, request: web.Request) -> web.Response:
        self._authorize(request, "reload")
        result = await self.control.reload()
        outcome = "ok" if result["ok"] else f"failed: {result.get('error')}"
        _audit(request, "reload", {}, f"{outcome}, generation {result['generation']}")
        return _json(result, 200 if result["ok"] else 422)

    def _authorize(self, request: web.Request, what: str) -> None:
        if self.token is None:
            _audit(request, what, {}, "refused: no admin token configured")
            raise ControlError(403, "mutating admin calls are disabled: no token configured")
        given = request.headers.get("Authorization", "")
        scheme, _, credential = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self.token.encode()
        )
        if not ok:
            _audit(request, what, {}, "refused: bad or missing bearer token")
            raise ControlError(401, "a valid bearer token is required")


def _audit(request: web.Request, what: str, target: Any, result: str) -> None:
    log.warning("admin %s %s by %s: %s", what, _target(target), request.remote, result)


def _target(target: Any) -> str:
    if isinstance(target, dict) and target:
        return " ".join(f"{k}={str(v)[:128]}" for k, v in target.items())
    return "-"


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """gslb's JSON errors; never a traceback to the caller."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ControlError as exc:
        return _json({"error": _code(exc.status), "message": str(exc)}, exc.status)
    except web.HTTPException as exc:
        return _json({"error": _code(exc.status), "message": exc.reason}, exc.status)
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return _json({"error": "internal_error", "message": "internal error"}, 500)


def _code(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        422: "reload_failed",
        503: "unavailable",
    }.get(status, "error")


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")
