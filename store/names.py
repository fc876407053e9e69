"""Name rules and ``task[@version|@alias]`` reference parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from store.errors import InvalidNameError

NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DIGITS_RE = re.compile(r"[0-9]+")
#: The largest version number: what a 32-bit signed INTEGER column (PostgreSQL's) holds. A larger
#: one names no version (lookups say "not found" without asking the database, which would overflow).
MAX_VERSION = 2**31 - 1


def check_name(name: object, kind: str = "name") -> str:
    """Return ``name`` if it follows the rule, else raise ``InvalidNameError``.

    The rule keeps names safe as file names and URL parts: no separators, no
    ``..``, no leading dot or dash, no upper case.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(f"invalid {kind} {name!r}: must be {NAME_RULE}")
    return name


def check_alias(alias: object) -> str:
    """Alias names follow the name rule and must not be pure digits (``t@3`` is a version)."""
    check_name(alias, "alias")
    assert isinstance(alias, str)
    if _DIGITS_RE.fullmatch(alias):
        raise InvalidNameError(f"invalid alias {alias!r}: must not be only digits (that reads as a version number)")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``task`` alone means its latest ready version."""

    task: str
    number: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.task}@{self.number}"
        if self.alias is not None:
            return f"{self.task}@{self.alias}"
        return self.task


def parse_ref(ref: str) -> Ref:
    """Parse ``"name"``, ``"name@3"`` or ``"name@alias"``."""
    if not isinstance(ref, str):
        raise InvalidNameError(f"invalid reference {ref!r}: expected 'task', 'task@3' or 'task@alias'")
    task, sep, target = ref.partition("@")
    check_name(task, "task name")
    if not sep:
        return Ref(task)
    if _DIGITS_RE.fullmatch(target):
        number = int(target)
        if number < 1:
            raise InvalidNameError(f"invalid reference {ref!r}: version numbers start at 1")
        return Ref(task, number=number)
    if not _NAME_RE.fullmatch(target):
        raise InvalidNameError(
            f"invalid reference {ref!r}: expected 'task', 'task@3' or 'task@alias' (alias: {NAME_RULE})"
        )
    return Ref(task, alias=target)
