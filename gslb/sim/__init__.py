"""Simulation: fake inference regions and the demo.

The vLLM-like scheduler simulation (``fakesched``), the stress endpoints tests use
(``fakestress``), the fake region server and its command line (``fakeregion``), and
``gslb demo``. Later: what simulates a day of world traffic and plans capacity.

May import anything in ``gslb``; nothing outside ``gslb.sim`` (and ``gslb.cli``) imports it,
except the tests and the demo's own wiring.
"""
