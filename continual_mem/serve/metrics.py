"""Prometheus metrics of one server process, in a registry of its own.

Label values are bounded: `endpoint` is a route template (or "other"), `status` an HTTP code,
`result` one of three words, and `task` a task name the store deploys or pins (never a version,
an image name or anything else a client chooses freely).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double every counter for no use here
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cmem_requests", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "cmem_request_seconds",
            "Request latency, arrival to answer.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "cmem_queue_seconds", "Time a request waited for its batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_time = Histogram(
            "cmem_batch_seconds", "Inference time of one batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_images = Histogram("cmem_batch_images", "Images per batch.", buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("cmem_batch_requests", "Requests per batch.", buckets=SIZE_BUCKETS, registry=r)
        self.tasks_per_pass = Histogram(
            "cmem_tasks_per_pass", "Reuse-mode tasks answered by one backbone pass.", buckets=SIZE_BUCKETS, registry=r
        )
        self.full_task_runs = Counter(
            "cmem_full_task_runs", "Image x full-mode task runs (one backbone pass each).", registry=r
        )
        self.queue_depth = Gauge("cmem_queue_images", "Images waiting for a batch.", registry=r)
        self.reloads = Counter(
            "cmem_reloads", "Reloads of the served set, by result (ok, partial, failed).", ["result"], registry=r
        )
        self.deploy_to_serve = Histogram(
            "cmem_deploy_to_serve_seconds",
            "From an alias move's commit to the swap that serves it.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.task_images = Counter("cmem_task_images", "Images answered, by task.", ["task"], registry=r)
        self.served_version = Gauge("cmem_served_version", "Version serving each deployed task.", ["task"], registry=r)
        self.reload_failing = Gauge(
            "cmem_reload_failing", "1 for a task whose wanted version cannot be loaded.", ["task"], registry=r
        )
        self.generation = Gauge("cmem_snapshot_generation", "Generation of the served snapshot.", registry=r)
        self.ready = Gauge("cmem_ready", "1 once the deployed set is loaded.", registry=r)
        for result in ("ok", "partial", "failed"):
            self.reloads.labels(result)
