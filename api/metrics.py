"""The API's Prometheus metrics and the ``/metrics`` endpoint.

Labels are low-cardinality on purpose: the route *template*
(``/v1/support/tickets/{ticket_id:str}``), never the path, so no ticket id, user id or address
ever becomes a label value.

Several API processes: ``helpdesk serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the server starts its workers, every worker writes its samples there, and
whichever worker answers ``/metrics`` reports the sum over all of them (prometheus-client's
multiprocess mode). Without that variable (tests, a single process) the default registry is used.

Recording is a few microseconds per request: the labelled children are looked up once per
label combination and kept, so a request costs one counter increment and one histogram
observation.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from litestar import Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A path that matched no route: one label value for all of them (scanners send thousands).
UNMATCHED = "unmatched"

REQUESTS = Counter(
    "helpdesk_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "helpdesk_http_request_duration_seconds",
    "Time from a request's arrival to its response, by route template and method.",
    ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge(
    "helpdesk_http_requests_in_flight",
    "Requests being served right now.",
    multiprocess_mode="livesum",
)
WAITING_FOR_DATABASE = Gauge(
    "helpdesk_http_requests_waiting_for_database",
    "Requests queued for a database connection slot (the pool is fully in use).",
    multiprocess_mode="livesum",
)
RATE_LIMIT_REFUSALS = Counter(
    "helpdesk_rate_limit_refusals_total",
    "Requests refused with 429 because their caller was over the per-user limit.",
)
AUTH_FAILURES = Counter(
    "helpdesk_auth_failures_total",
    "Requests refused with 401, by reason (missing, malformed, expired, bad_signature, "
    "invalid_claims).",
    ["reason"],
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_requests: dict[tuple[str, str, int], Counter] = {}
_latency: dict[tuple[str, str], Histogram] = {}


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    if method not in _METHODS:
        method = "other"  # a client may send any token as a method; keep the label set small
    key = (route, method, status)
    counter = _requests.get(key)
    if counter is None:
        counter = _requests[key] = REQUESTS.labels(route, method, str(status))
    counter.inc()
    timing_key = (route, method)
    histogram = _latency.get(timing_key)
    if histogram is None:
        histogram = _latency[timing_key] = LATENCY.labels(route, method)
    histogram.observe(seconds)


def record_unrouted(method: str, status: int) -> None:
    """A request that matched no route (404, or 405 for a method the path lacks): Litestar runs
    middleware per route, so the access middleware never saw it; counted here, without timing,
    under the one label value ``unmatched`` (scanners send thousands of different paths)."""
    method = method if method in _METHODS else "other"
    REQUESTS.labels(UNMATCHED, method, str(status)).inc()


def prepare_multiprocess_dir(path: Path) -> None:
    """An empty directory for this server run's samples, named in the environment the
    server's workers inherit. Emptied on every start: samples of a previous run's processes
    would otherwise be added to this run's (prometheus-client's documented requirement)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)


def exposition() -> bytes:
    """The current samples in Prometheus' text format (all processes in multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@get(
    "/metrics",
    include_in_schema=False,
    summary="Prometheus metrics of the API processes",
    media_type=CONTENT_TYPE_LATEST,
    sync_to_thread=False,
)
def metrics_endpoint() -> Response[bytes]:
    # No token: Prometheus scrapes without one. Keep /metrics off the public ingress (README,
    # "Operating it"); it carries counts and timings only, no ids, addresses or bodies.
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
