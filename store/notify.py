"""Alias moves announced to listeners: PostgreSQL NOTIFY, delivered when the move commits.

A server that serves an alias polls the store; on PostgreSQL it also LISTENs, so a deploy
reaches it as soon as the deploying transaction commits. The poll stays as the fallback: a
lost connection or another database only makes the news wait for the next poll.
"""

from __future__ import annotations

import contextlib
import select
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

CHANNEL = "cmem_alias_moves"


def announce_alias_move(session: Session, task: str, alias: str) -> None:
    """Queue a notification in the current transaction (PostgreSQL sends it only on commit)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": f"{task}@{alias}"}
        )


class AliasListener:
    """A dedicated PostgreSQL connection LISTENing for alias moves."""

    def __init__(self, engine: Engine) -> None:
        self._raw: Any = engine.raw_connection()
        self._conn: Any = self._raw.driver_connection
        self._conn.autocommit = True
        with self._conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout_s: float) -> list[str]:
        """Block up to `timeout_s` for moves; returns their `task@alias` payloads (empty on timeout)."""
        if not self._conn.notifies:
            readable, _, _ = select.select([self._conn], [], [], timeout_s)
            if readable:
                self._conn.poll()
        payloads = [n.payload for n in self._conn.notifies]
        self._conn.notifies.clear()
        return payloads

    def close(self) -> None:
        self._raw.close()

    def close_quietly(self) -> None:
        """Close a connection that may already be broken."""
        with contextlib.suppress(Exception):  # the connection is gone either way
            self._raw.close()


def listen_for_alias_moves(engine: Engine) -> AliasListener | None:
    """A listener where the database can push (PostgreSQL through psycopg2), else None."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg2":
        return None
    return AliasListener(engine)
