"""``TaskStore``'s aliases: named pointers at ready versions, every move kept; what is deployed."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Text, select, type_coerce
from sqlalchemy.orm import Session

from store import models as m
from store.base import StoreBase, alias_target_join
from store.errors import InvalidNameError, InvalidStateError, NotFoundError
from store.mapping import decode_json_batch
from store.names import Ref, check_alias, check_name, parse_ref
from store.notify import announce_alias_move
from store.records import AliasInfo, AliasMove, DeployedEntry
from store.validation import check_alias_target, check_int, check_text


class AliasesMixin(StoreBase):
    """Aliases: set, roll back, remove, their history, and the deployed listing."""

    def _move_alias(
        self, s: Session, task: m.Task, alias: str, to: int | None, kind: str, actor: str | None
    ) -> AliasInfo | None:
        """Point (or, with ``to=None``, remove) an alias and append the move to its history."""
        row = s.scalar(select(m.Alias).where(m.Alias.task_id == task.id, m.Alias.name == alias).with_for_update())
        now = m.utcnow()
        s.add(
            m.AliasMove(
                task_id=task.id,
                alias=alias,
                kind=kind,
                from_version=row.version_number if row else None,
                to_version=to,
                actor=actor,
                moved_at=now,
            )
        )
        announce_alias_move(s, task.name, alias)
        if to is None:
            if row is not None:
                s.delete(row)
            s.flush()
            return None
        if row is None:
            row = m.Alias(task_id=task.id, name=alias, version_number=to, updated_at=now)
            s.add(row)
        else:
            row.version_number = to
            row.updated_at = now
        s.flush()
        return AliasInfo(task=task.name, alias=alias, version=to, updated_at=now)

    def set_alias(
        self, ref_or_task: str, alias: str, version: int | None = None, actor: str | None = None
    ) -> AliasInfo:
        """Point ``alias`` of a task at one of its ready versions: ``set_alias("t", "production", 3)``
        or ``set_alias("t@3", "production")``. Moving to the current target changes nothing.
        """
        check_alias(alias)
        if version is None:
            parsed = parse_ref(ref_or_task)
            if parsed.number is None:
                raise InvalidNameError(
                    f"set_alias needs a version number: pass version= or a reference like '{parsed.task}@3'"
                )
            task_name, number = parsed.task, parsed.number
        else:
            task_name, number = check_name(ref_or_task, "task name"), check_int(version, "version", minimum=1)
        actor = None if actor is None else check_text(actor, "actor")

        def work(s: Session) -> AliasInfo:
            task = self._task(s, task_name)
            target = self._version_of(s, task, Ref(task_name, number=number), lock=True)
            check_alias_target(task, target, f"point alias {alias!r} at")
            current = s.scalar(select(m.Alias).where(m.Alias.task_id == task.id, m.Alias.name == alias))
            if current is not None and current.version_number == number:
                return AliasInfo(task=task_name, alias=alias, version=number, updated_at=current.updated_at)
            moved = self._move_alias(s, task, alias, number, "set", actor)
            assert moved is not None
            return moved

        return self._write(work, retry_conflicts=True)

    def rollback_alias(self, task: str, alias: str, actor: str | None = None) -> AliasInfo:
        """Move ``alias`` back to the target it had before its last ``set`` (rollbacks unwind further)."""
        check_alias(alias)
        actor = None if actor is None else check_text(actor, "actor")

        def work(s: Session) -> AliasInfo:
            task_row = self._task(s, task)
            self._alias_row(s, task_row, alias)
            # Replay the history as a stack: a set pushes, a rollback pops, a removal clears.
            stack: list[int | None] = []
            for kind, to_version in s.execute(
                select(m.AliasMove.kind, m.AliasMove.to_version)
                .where(m.AliasMove.task_id == task_row.id, m.AliasMove.alias == alias)
                .order_by(m.AliasMove.id)
            ):
                if kind == "set":
                    stack.append(to_version)
                elif kind == "rollback":
                    stack.pop()
                else:
                    stack.clear()
            if len(stack) < 2 or stack[-2] is None:
                raise InvalidStateError(f"alias {alias!r} of task {task!r} has no earlier version to roll back to")
            number = stack[-2]
            target = self._version_of(s, task_row, Ref(task, number=number), lock=True)
            check_alias_target(task_row, target, f"roll back alias {alias!r} to")
            moved = self._move_alias(s, task_row, alias, number, "rollback", actor)
            assert moved is not None
            return moved

        return self._write(work)

    def remove_alias(self, task: str, alias: str, actor: str | None = None) -> None:
        check_alias(alias)
        actor = None if actor is None else check_text(actor, "actor")

        def work(s: Session) -> None:
            task_row = self._task(s, task)
            self._alias_row(s, task_row, alias)
            self._move_alias(s, task_row, alias, None, "remove", actor)

        self._write(work)

    def alias_history(self, task: str, alias: str) -> list[AliasMove]:
        """Every move of the alias, oldest first (also after it was removed)."""
        check_alias(alias)
        with self._reader() as s:
            task_row = self._task(s, task)
            moves = s.scalars(
                select(m.AliasMove)
                .where(m.AliasMove.task_id == task_row.id, m.AliasMove.alias == alias)
                .order_by(m.AliasMove.id)
            ).all()
            if not moves:
                raise NotFoundError(f"alias {alias!r} of task {task!r} not found")
            return [
                AliasMove(task, alias, mv.kind, mv.from_version, mv.to_version, mv.actor, mv.moved_at) for mv in moves
            ]

    def deployed(self, alias: str | None = None) -> list[DeployedEntry]:
        """Every alias (or every alias named ``alias``) with its version's metrics, by task then alias.

        This is the listing a predictor starts from, so it runs as one Core query
        (no ORM row handling) and decodes the JSON columns in one batch.
        """
        query = (
            select(
                m.Task.name,
                m.Alias.name,
                m.Alias.version_number,
                m.Backbone.name,
                type_coerce(m.Task.class_names, Text),
                m.TaskVersion.mode,
                m.TaskVersion.memory_size,
                type_coerce(m.TaskVersion.metrics, Text),
                m.TaskVersion.artifact_sha256,
                m.TaskVersion.artifact_size,
                m.Alias.updated_at,
            )
            .join_from(m.Alias, m.Task, m.Alias.task_id == m.Task.id)
            .join(m.Backbone, m.Task.backbone_id == m.Backbone.id)
            .join(m.TaskVersion, alias_target_join())
            .order_by(m.Task.name, m.Alias.name)
        )
        if alias is not None:
            query = query.where(m.Alias.name == check_alias(alias))
        with self._reader() as s:
            rows = s.connection().execute(query).all()
        decoded = decode_json_batch([value for row in rows for value in (row[4], row[7])])
        # Aliases only point at ready versions, which have an artifact (a CHECK constraint), hence the casts.
        return [
            DeployedEntry(
                task=task,
                alias=name,
                version=number,
                backbone=backbone,
                class_names=decoded[2 * i],
                mode=mode,
                memory_size=memory,
                metrics=decoded[2 * i + 1],
                artifact_sha256=cast(str, sha),
                artifact_size=cast(int, size),
                updated_at=updated_at,
            )
            for i, (task, name, number, backbone, _, mode, memory, _, sha, size, updated_at) in enumerate(rows)
        ]
