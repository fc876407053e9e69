"""Argument and state checks of the task store: each raises the store's typed error, with the reason.

Argument checks return the value as it will be stored (``check_json``: as it reads back).
State checks refuse an operation on a version in the wrong state (deleted, not ready, ...).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from store import models as m
from store.errors import InvalidStateError, InvalidValueError, NotFoundError
from store.names import check_name

TEXT_LEN = 200


# --- arguments ----------------------------------------------------------------------------


def check_text(value: object, what: str, max_len: int | None = TEXT_LEN, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise InvalidValueError(f"{what} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise InvalidValueError(f"{what} must be at most {max_len} characters, got {len(value)}")
    return value


def check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def check_sha256(value: object, what: str) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidValueError(f"{what} must be a sha256 hex digest (64 hex digits), got {value!r}")
    return text


def check_status(value: str) -> str:
    if value not in m.VERSION_STATUSES:
        raise InvalidValueError(f"unknown status {value!r}: expected one of {', '.join(m.VERSION_STATUSES)}")
    return value


def check_json(value: Any, what: str, kind: type) -> Any:
    """Check ``value`` is JSON data of type ``kind`` and return it as it will read back.

    NaN and infinity are refused: PostgreSQL's json type cannot hold them. Use None.
    """
    if not isinstance(value, kind):
        raise InvalidValueError(f"{what} must be a {kind.__name__}, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"{what} must be JSON data without NaN or infinity ({exc})") from exc


def check_class_names(value: object) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidValueError(f"class_names must be a non-empty list of strings, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(f"class names must be non-empty strings, got {name!r}")
    repeated = sorted(name for name, count in Counter(value).items() if count > 1)
    if repeated:
        raise InvalidValueError(f"class names must be unique; repeated: {', '.join(map(repr, repeated))}")
    return list(value)


def check_matrix(value: object) -> list[list[float]]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(row, (list, tuple)) for row in value):
        raise InvalidValueError("accuracy_matrix must be a list of lists of numbers")
    return [[check_finite(x, "accuracy_matrix entry") for x in row] for row in value]


def parse_tag_filter(tag: str) -> tuple[str, str | None]:
    key, sep, value = tag.partition("=")
    return check_name(key, "tag key"), (value if sep else None)


def local_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{what} {path} not found")
    return path


# --- states -------------------------------------------------------------------------------


def check_training(task: m.Task, version: m.TaskVersion) -> None:
    ref = f"{task.name}@{version.number}"
    if version.deleted_at is not None:
        raise InvalidStateError(f"version {ref} is deleted and cannot be changed")
    if version.status == "ready":
        raise InvalidStateError(f"version {ref} is ready and cannot be changed")
    if version.status != "training":
        raise InvalidStateError(
            f"version {ref} is {version.status}; only a training version can be completed or failed"
        )


def check_usable(task: m.Task, version: m.TaskVersion, action: str) -> None:
    ref = f"{task.name}@{version.number}"
    if version.deleted_at is not None:
        raise InvalidStateError(f"version {ref} is deleted and cannot be {action}")
    if version.status != "ready":
        raise InvalidStateError(f"version {ref} is {version.status}, not ready, and cannot be {action}")


def check_alias_target(task: m.Task, version: m.TaskVersion, action: str) -> None:
    ref = f"{task.name}@{version.number}"
    if version.deleted_at is not None:
        raise InvalidStateError(f"cannot {action} {ref}: the version is deleted")
    if version.status != "ready":
        raise InvalidStateError(f"cannot {action} {ref}: the version is {version.status}, not ready")
