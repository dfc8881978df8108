"""The API's own /metrics: requests by route, method and status, and their latency by route (a registry of
this process's, so the exposition holds these families only and passes `promtool check metrics`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class ApiMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "appliance_api_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "appliance_api_request_duration_seconds",
            "Time to answer an HTTP request (to the start of a stream for SSE and WebSocket), by route template.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.streams = Gauge(
            "appliance_api_event_streams",
            "Open live-progress connections (SSE and WebSocket).",
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # The labelled children of each (route, method, status), looked up once: labels() takes a lock and
        # builds its key on every call. Routes are templates and statuses few.
        children = self._children.get((route, method, status))
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route, method))
            if len(self._children) < 1024:  # methods are the client's words: never an unbounded cache
                self._children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
