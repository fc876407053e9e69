"""What a predict request asks for, read and checked before any work is queued.

Images come as multipart uploads (`image`, or `images` repeated for a batch) or base64 in JSON
(`image`, or `images`: a list); options are `tasks` (names, `name@VERSION` pins or
`name@ALIAS` for the served alias; a list or a comma-separated string) and `top_k`. Every
refusal is an `ApiError` whose message names the field and the problem. No request value is
ever used as a file path: tasks are looked up in the served snapshot and the store only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from continual_mem.images import ImageError, ImageTooLargeError, UnsupportedImageError, decode_image, to_side
from store import NotFoundError, StoreError
from store.names import MAX_VERSION, parse_ref

from .config import ServeConfig
from .snapshot import LoadError, ServedTask, Snapshot, SnapshotLoader

MAX_TASKS_PER_REQUEST = 256
MAX_FIELD_BYTES = 64 * 1024
_PRINTABLE = re.compile(r"[^\w.\- ]")


class ApiError(Exception):
    """A refusal with its HTTP status; the message is shown to the client as it is."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class PredictInput:
    images: list[tuple[str, bytes]]
    tasks: list[str] | None
    top_k: int


async def read_predict_input(request: Request, many: bool, config: ServeConfig) -> PredictInput:
    """Parse either body form; `many` is the batch endpoint (`images`), else one `image`."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        fields, files = await _read_multipart(request, config)
    elif kind == "application/json":
        fields, files = await _read_json(request, many)
    else:
        raise ApiError(415, "send the image as multipart/form-data or as base64 in application/json")
    images = _images(files, many, config)
    return PredictInput(images, _tasks(fields.get("tasks")), _top_k(fields.get("top_k", 3), config))


async def _read_multipart(request: Request, config: ServeConfig) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    try:
        form = await request.form(
            max_files=config.max_images_per_request + 1, max_fields=32, max_part_size=MAX_FIELD_BYTES
        )
    except MultiPartException as exc:
        status = 413 if "too many" in str(exc).lower() or "exceeded" in str(exc).lower() else 422
        raise ApiError(status, f"malformed multipart body: {exc}") from None
    fields: dict[str, Any] = {}
    files: dict[str, list[Any]] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(key, []).append((_shown_name(value.filename, key), await value.read()))
        elif key == "tasks":
            fields.setdefault("tasks", []).append(value)
        elif key == "top_k":
            fields["top_k"] = value
        else:
            raise ApiError(422, f"unknown form field {key[:40]!r} (expected image(s), tasks, top_k)")
    return fields, files


async def _read_json(request: Request, many: bool) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, f"the body is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the JSON body must be an object")
    unknown = sorted(set(body) - {"image", "images", "tasks", "top_k"})
    if unknown:
        raise ApiError(
            422, f"unknown field(s) {', '.join(k[:40] for k in unknown[:5])} (expected image(s), tasks, top_k)"
        )
    files: dict[str, list[Any]] = {}
    if "image" in body:
        files["image"] = [("image", _base64(body["image"], "image"))]
    if "images" in body:
        items = body["images"]
        if not isinstance(items, list):
            raise ApiError(422, "'images' must be a list of base64 strings")
        files["images"] = [(f"images[{i}]", _base64(item, f"images[{i}]")) for i, item in enumerate(items)]
    fields = {k: body[k] for k in ("tasks", "top_k") if k in body}
    return fields, files


def _base64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{name} is not valid base64") from None


def _images(files: dict[str, list[Any]], many: bool, config: ServeConfig) -> list[tuple[str, bytes]]:
    expected = "images" if many else "image"
    other = sorted(set(files) - {expected, "image"} if many else set(files) - {"image"})
    if other:
        raise ApiError(422, f"unexpected file field(s) {', '.join(o[:40] for o in other)}; send {expected!r}")
    images = [*files.get("images", []), *files.get("image", [])] if many else files.get("image", [])
    if not images:
        raise ApiError(422, f"no image: send the {expected!r} field")
    if not many and len(images) > 1:
        raise ApiError(422, "one image per request here; use /v1/predict/batch for several")
    if len(images) > config.max_images_per_request:
        raise ApiError(413, f"{len(images)} images in one request; the limit is {config.max_images_per_request}")
    return images


def _shown_name(filename: str | None, field: str) -> str:
    """A file name fit for an error message (never used to open anything)."""
    return _PRINTABLE.sub("_", filename or field)[:80] or field


def _tasks(value: object) -> list[str] | None:
    if value is None:
        return None
    items: list[object] = value if isinstance(value, list) else [value]
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ApiError(422, "tasks must be names (a list of strings, or one comma-separated string)")
        names.extend(part.strip() for part in item.split(",") if part.strip())
    if not names:
        return None
    if len(names) > MAX_TASKS_PER_REQUEST:
        raise ApiError(422, f"{len(names)} tasks asked for; at most {MAX_TASKS_PER_REQUEST}")
    return names


def _top_k(value: object, config: ServeConfig) -> int:
    if isinstance(value, bool):
        raise ApiError(422, "top_k must be an integer")
    try:
        top_k = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        top_k = None
    if top_k is None or not 1 <= top_k <= config.max_top_k:
        raise ApiError(422, f"top_k must be an integer in 1..{config.max_top_k}, got {str(value)[:20]!r}")
    return top_k


# ---------------------------------------------------------------------------------- tasks
async def resolve_tasks(snapshot: Snapshot, asked: list[str] | None, loader: SnapshotLoader) -> list[ServedTask]:
    """The task versions that answer: everything deployed, or what `asked` names (pins included)."""
    if asked is None:
        if not snapshot.tasks:
            raise ApiError(404, f"no task is deployed under alias {snapshot.alias!r}")
        return list(snapshot.tasks.values())
    chosen: dict[str, ServedTask] = {}
    for item in asked:
        served = await _resolve_one(snapshot, item, loader)
        if served.task in chosen:
            raise ApiError(422, f"task {served.task!r} asked for more than once")
        chosen[served.task] = served
    return list(chosen.values())


async def _resolve_one(snapshot: Snapshot, item: str, loader: SnapshotLoader) -> ServedTask:
    try:
        ref = parse_ref(item)
    except StoreError as exc:
        raise ApiError(422, str(exc)) from None
    deployed = snapshot.tasks.get(ref.task)
    if ref.alias is not None and ref.alias != snapshot.alias:
        raise ApiError(422, f"{item!r}: this server serves alias {snapshot.alias!r}; pin a version number instead")
    if ref.number is None:
        if deployed is None:
            known = ", ".join(snapshot.tasks) or "none"
            raise ApiError(404, f"task {ref.task!r} is not deployed under alias {snapshot.alias!r} (deployed: {known})")
        return deployed
    if deployed is not None and deployed.version == ref.number:
        return deployed
    if ref.number > MAX_VERSION:
        raise ApiError(404, f"task {ref.task!r} has no version {ref.number}")
    try:
        return await asyncio.to_thread(loader.pinned, ref.task, ref.number, snapshot)
    except NotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except (LoadError, StoreError) as exc:
        raise ApiError(409, f"{item} cannot be served: {exc}") from None


# ---------------------------------------------------------------------------------- images
def decode_images(images: list[tuple[str, bytes]], max_pixels: int, side: int | None) -> list[Any]:
    """Decode every image (in a worker thread, beside inference), resized to `side` when the tasks
    asked for share one backbone; the first bad image refuses the request."""
    decoded = []
    for name, data in images:
        try:
            image = decode_image(data, name, max_pixels)
        except ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except UnsupportedImageError as exc:
            raise ApiError(415, str(exc)) from None
        except ImageError as exc:
            raise ApiError(422, str(exc)) from None
        decoded.append(image if side is None else to_side(image, side))
    return decoded
