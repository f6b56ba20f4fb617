"""The core: everything that decides, and nothing that does I/O.

Config model, countries, geo math and the latency model, placement (residency,
certifications, models), the scoring kernel (``_scoring.pyx``) and its pure-Python twin,
the router, the live fleet figures, the health policy (outlier detection, active health,
cordons, hold-down, latency learning), the forwarding state machine, client-address trust,
header rules, load-report parsers and explanations.

May import: the standard library (no ``asyncio``, ``socket``, ``ssl``), pure libraries
(``multidict``, ``pycountry``, ``prometheus_client``'s text parser), and ``gslb.core`` itself.
Never ``aiohttp``, never ``gslb.edge``, ``gslb.ops`` or ``gslb.sim``, and it never reads a
clock: time comes in as arguments. ``tests/test_layers.py`` holds it to this.
"""
