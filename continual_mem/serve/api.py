"""The HTTP API: routes, error bodies, the body-size guard and per-request metrics.

    POST /v1/predict         one image -> per task: version, alias, top labels
    POST /v1/predict/batch   several images in one request (bounded)
    GET  /v1/tasks           what is served, and what the store wants where a reload failed
    GET  /healthz            the process answers
    GET  /readyz             503 until the deployed set is loaded
    GET  /metrics            Prometheus
    POST /v1/reload          reload now (only when CMEM_RELOAD_TOKEN is set; Bearer token)

Every error is `{"error": {"status": ..., "message": ...}}` with a 4xx status naming the problem;
a 5xx means a bug or an overloaded server (503 with Retry-After), never bad input.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import QueueFull, ShuttingDown
from .config import reload_token
from .engine import Job, JobAnswer
from .requests import ApiError, decode_images, read_predict_input, resolve_tasks
from .snapshot import ServedTask, Snapshot

if TYPE_CHECKING:
    from .server import ServerState

log = logging.getLogger("cmem.serve")
ENDPOINTS = frozenset(
    {"/v1/predict", "/v1/predict/batch", "/v1/tasks", "/healthz", "/readyz", "/metrics", "/v1/reload"}
)
_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="continual-mem", version=state.version, lifespan=state.lifespan, docs_url=None, redoc_url=None)
    app.state.cmem = state
    app.add_middleware(BodyLimit, max_bytes=state.config.max_request_bytes)
    app.add_middleware(RequestMetrics, state=state)
    _add_error_handlers(app)
    _add_routes(app)
    return app


# ---------------------------------------------------------------------------------- middleware
class BodyLimit:
    """413 for bodies over the limit: at once from Content-Length, else as the bytes arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await error_response(413, self._message())(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ApiError(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes"


class RequestMetrics:
    """Requests by endpoint and status, and their latency (bounded labels: known routes or 'other')."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500
        started = time.perf_counter()

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def error_response(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.retry_after_s)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "; ".join(str(e.get("msg", e)) for e in exc.errors())[:500])

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


# ---------------------------------------------------------------------------------- routes
def _add_routes(app: FastAPI) -> None:
    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        return await _predict(request, many=False)

    @app.post("/v1/predict/batch")
    async def predict_batch(request: Request) -> JSONResponse:
        return await _predict(request, many=True)

    @app.get("/v1/tasks")
    async def tasks(request: Request) -> dict[str, Any]:
        return tasks_body(_state(request))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        state = _state(request)
        snapshot = state.deployment.snapshot
        if not state.deployment.ready or state.stopping:
            why = "stopping" if state.stopping else "loading"
            return JSONResponse({"status": why, "generation": snapshot.generation}, status_code=503)
        return JSONResponse({"status": "ready", "generation": snapshot.generation, "tasks": len(snapshot.tasks)})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state = _state(request)
        state.metrics.queue_depth.set(state.batcher.queued_images)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/reload")
    async def reload(request: Request) -> dict[str, Any]:
        token = reload_token()
        if token is None:
            raise ApiError(404, "Not Found")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "a valid 'Authorization: Bearer <CMEM_RELOAD_TOKEN>' header is needed")
        state = _state(request)
        await state.deployment.refresh()
        return tasks_body(state)


def _state(request: Request) -> ServerState:
    return request.app.state.cmem  # type: ignore[no-any-return]


async def _predict(request: Request, many: bool) -> JSONResponse:
    started = time.perf_counter()
    state = _state(request)
    request_id = _request_id(request)
    if not state.deployment.ready:
        raise ApiError(503, "the deployed tasks are still loading", retry_after_s=1)
    asked = await read_predict_input(request, many, state.config)
    snapshot = state.deployment.snapshot
    tasks = await resolve_tasks(snapshot, asked.tasks, state.loader)
    decode_started = time.perf_counter()
    sides = {t.backbone.spec.img_size for t in tasks}
    side = sides.pop() if len(sides) == 1 else None
    images = await asyncio.to_thread(decode_images, asked.images, state.config.max_pixels, side)
    decoded = time.perf_counter()
    try:
        answer, timing = await state.batcher.submit(Job(tuple(images), tuple(tasks), asked.top_k))
    except QueueFull:
        raise ApiError(503, "the server is at capacity; retry shortly", retry_after_s=1) from None
    except ShuttingDown:
        raise ApiError(503, "the server is shutting down", retry_after_s=1) from None
    for task in tasks:
        state.metrics.task_images.labels(task.task).inc(len(images))
    state.metrics.queue_time.observe(timing.queue_s)
    timing_ms = {
        "decode": _ms(decoded - decode_started),
        "queue": _ms(timing.queue_s),
        "inference": _ms(timing.inference_s),
        "total": _ms(time.perf_counter() - started),
    }
    body: dict[str, Any] = {"request_id": request_id, "alias": snapshot.alias}
    if many:
        body["results"] = [{"predictions": _predictions(tasks, answer, i)} for i in range(len(images))]
    else:
        body["predictions"] = _predictions(tasks, answer, 0)
    body["backbone_passes"] = answer.backbone_passes
    body["batch"] = {"images": timing.batch_images, "requests": timing.batch_requests}
    body["timing_ms"] = timing_ms
    return JSONResponse(body, headers={"X-Request-ID": request_id})


def _predictions(tasks: list[ServedTask], answer: JobAnswer, image: int) -> dict[str, Any]:
    return {
        t.task: {
            "version": t.version,
            "alias": t.alias,
            "mode": t.mode,
            "top": [{"label": p.label, "probability": p.probability} for p in answer.per_image[image][t.task]],
        }
        for t in tasks
    }


def tasks_body(state: ServerState) -> dict[str, Any]:
    snapshot: Snapshot = state.deployment.snapshot
    pending = []
    for task, failure in sorted(snapshot.failures.items()):
        serving = snapshot.tasks.get(task)
        pending.append(
            {
                "task": task,
                "wanted_version": failure.wanted_version,
                "serving_version": serving.version if serving else None,
                "error": failure.error,
                "since": _iso(failure.since),
            }
        )
    return {
        "alias": snapshot.alias,
        "generation": snapshot.generation,
        "ready": state.deployment.ready,
        "snapshot_built_at": _iso(snapshot.built_at),
        "tasks": [_task_entry(t) for t in snapshot.tasks.values()],
        "pending": pending,
        "store_error": state.deployment.store_error,
    }


def _task_entry(t: ServedTask) -> dict[str, Any]:
    return {
        "task": t.task,
        "alias": t.alias,
        "version": t.version,
        "mode": t.mode,
        "memory": t.memory,
        "classes": list(t.class_names),
        "backbone": t.backbone.name,
        "artifact_sha256": t.artifact_sha256,
        "loaded_since": _iso(t.loaded_since),
    }


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 64 and set(given) <= _REQUEST_ID_CHARS:
        return given
    return uuid.uuid4().hex


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
