"""Operations: the control plane's I/O shell.

The admin API and status page, the control fan-out to worker processes and the supervisor,
the periodic runner that probes endpoints and scrapes their load, metrics, the access log,
recent activity, the start-up checks shared by ``serve`` and ``check-config``, and the fleet's
store on NATS JetStream KV (``fleetstore``).

May import: ``gslb.core``, ``gslb.edge`` (the worker it controls), ``aiohttp``, ``nats``,
``asyncio`` and the standard library.
"""
