"""The edge: the data plane's I/O shell around the core.

The public listener and its worker (``server``), the proxy and the WebSocket relay that drive
``gslb.core.forward``, connection limits and refusals of malformed requests, the GeoIP
reader, and the per-config ``Runtime`` (upstream TLS contexts, timeouts).

May import: ``gslb.core``, ``gslb.ops`` for observers and background tasks, ``aiohttp``,
``asyncio`` and the rest of the standard library. Decides nothing itself: where a request
goes is the router's answer, what to do next is the exchange's.
"""
