"""Load reports: what each inference server says about its own queue.

Local in-flight counts only see this edge's traffic; a server's own metrics include every
edge's. The periodic runner (``gslb.ops.periodic``) scrapes each endpoint whose region sets
``load.kind``, parses the page here, and hands ``running + waiting`` to
``HealthPolicy.on_load_report``; ``FleetState.region_load`` uses a report while it is at most
``load.max_age_s`` old (taking the larger of it and the local in-flight count) and falls back
to local counts after that.

Formats (``load.kind``):

- ``vllm``: Prometheus text; ``vllm:num_requests_running`` + ``vllm:num_requests_waiting``,
  KV cache from ``vllm:kv_cache_usage_perc`` (older releases: ``vllm:gpu_cache_usage_perc``).
- ``sglang``: ``sglang:num_running_reqs`` + ``sglang:num_queue_reqs``, KV cache from
  ``sglang:token_usage``.
- ``tgi``: ``tgi_batch_current_size`` (running) + ``tgi_queue_size`` (waiting); no KV figure.
- ``json``: ``{"running": N, "waiting": N, "kv_cache_usage": 0.4}``; ``running`` and
  ``waiting`` are required numbers >= 0, ``kv_cache_usage`` is optional (a fraction 0..1, or
  null), other keys are ignored so a server may say more.

Counts are summed over every label set (one series per model, per data-parallel engine); the
KV cache figure is the largest one, since the fullest engine is the one that starts preempting.
A page that lacks a required metric, or holds a negative or non-finite value, is an error: a
misconfigured ``kind`` must not look like an idle server.

This module is pure: text in, ``LoadReport`` out. Only the lines of the wanted metrics reach
prometheus_client's parser: a vLLM page carries hundreds of histogram lines, and parsing them
for every endpoint every second would cost the event loop far more than the scrape itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


class LoadReportError(ValueError):
    """A load report that cannot be read; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    running: float
    waiting: float
    kv_cache: float | None = None  # fraction of KV cache in use, 0..1, when the server says

    @property
    def load(self) -> float:
        return self.running + self.waiting


# --------------------------------------------------------------------------------------------
# Prometheus text formats


def _wanted_lines(text: str, names: frozenset[str]) -> str:
    """The sample and HELP/TYPE lines of ``names`` only (see the module docstring)."""
    keep = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            parts = stripped.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] in names:
                keep.append(stripped)
            continue
        end = len(stripped)
        for sep in ("{", " ", "\t"):
            i = stripped.find(sep)
            if i != -1 and i < end:
                end = i
        if stripped[:end] in names:
            keep.append(stripped)
    return "\n".join(keep) + "\n"


def _prometheus_values(text: str, names: Iterable[str]) -> dict[str, list[float]]:
    """Every sample value of each wanted metric name (one per label set)."""
    wanted = frozenset(names)
    out: dict[str, list[float]] = {name: [] for name in wanted}
    try:
        for family in text_string_to_metric_families(_wanted_lines(text, wanted)):
            for sample in family.samples:
                if sample.name in out:
                    out[sample.name].append(_check_value(sample.name, sample.value))
    except LoadReportError:
        raise
    except Exception as exc:  # the parser raises assorted errors on malformed text
        raise LoadReportError(f"malformed Prometheus metrics: {exc}") from None
    return out


def _check_value(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise LoadReportError(f"{name}: expected a finite number >= 0, got {value}")
    return value


def _required_sum(values: dict[str, list[float]], name: str) -> float:
    found = values.get(name)
    if not found:
        raise LoadReportError(f"metric {name} not found (is load.kind right for this server?)")
    return math.fsum(found)


def _kv(values: dict[str, list[float]], *names: str) -> float | None:
    for name in names:
        found = values.get(name)
        if found:
            return max(found)
    return None


def _prometheus_report(
    text: str, running: str, waiting: str, kv_names: tuple[str, ...]
) -> LoadReport:
    values = _prometheus_values(text, (running, waiting, *kv_names))
    return LoadReport(
        running=_required_sum(values, running),
        waiting=_required_sum(values, waiting),
        kv_cache=_kv(values, *kv_names),
    )


def parse_vllm(text: str) -> LoadReport:
    return _prometheus_report(
        text,
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    )


def parse_sglang(text: str) -> LoadReport:
    return _prometheus_report(
        text, "sglang:num_running_reqs", "sglang:num_queue_reqs", ("sglang:token_usage",)
    )


def parse_tgi(text: str) -> LoadReport:
    return _prometheus_report(text, "tgi_batch_current_size", "tgi_queue_size", ())


# --------------------------------------------------------------------------------------------
# JSON


def _json_number(doc: dict[str, object], key: str, required: bool) -> float | None:
    v = doc.get(key)
    if v is None:
        if required:
            raise LoadReportError(f"JSON load report: {key!r} is required")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise LoadReportError(f"JSON load report: {key!r} must be a number, got {v!r:.40}")
    return _check_value(key, float(v))


def parse_json(text: str) -> LoadReport:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LoadReportError(f"JSON load report: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LoadReportError("JSON load report: expected an object")
    running = _json_number(doc, "running", True)
    waiting = _json_number(doc, "waiting", True)
    kv = _json_number(doc, "kv_cache_usage", False)
    assert running is not None and waiting is not None  # required=True guarantees it
    return LoadReport(running=running, waiting=waiting, kv_cache=kv)


PARSERS: dict[str, Callable[[str], LoadReport]] = {
    "vllm": parse_vllm,
    "sglang": parse_sglang,
    "tgi": parse_tgi,
    "json": parse_json,
}


def parse(kind: str, text: str) -> LoadReport:
    parser = PARSERS.get(kind)
    if parser is None:
        raise LoadReportError(f"no load report parser for kind {kind!r}")
    return parser(text)
