"""Operations: the control plane's I/O shell.

The admin API and status page, the control fan-out to worker processes and the supervisor
(with the instance's one prober, ``healthhub``), the periodic runner that probes endpoints and
scrapes their load, metrics, the access log, recent activity, the start-up checks shared by
``serve`` and ``check-config``, fleet mode on NATS JetStream (``fleetstore``, ``fleetagent``,
``fleetpeers``, ``fleetcli``, ``fleetmetrics``), and the commands that drive the models:
``gslb simulate`` (``simulate``, ``simreport``) and the planner's inputs (``planinputs``).

May import: ``gslb.core``, ``gslb.edge`` (the worker it controls), ``gslb.model``, ``aiohttp``,
``nats``, ``asyncio``, numpy, matplotlib and the standard library.
"""
