"""``TaskStore``'s tasks and their tags (a tag sits on a task or on one of its versions)."""

from __future__ import annotations

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from store import models as m
from store.base import StoreBase
from store.errors import AlreadyExistsError, InvalidStateError, NotFoundError
from store.mapping import task_infos
from store.names import Ref, check_name
from store.records import TaskInfo
from store.validation import check_class_names, check_int, check_text, parse_tag_filter


class TasksMixin(StoreBase):
    """Tasks: register, read, list, archive; tags on tasks and versions."""

    # --- tasks --------------------------------------------------------------------------

    def register_task(self, name: str, backbone: str, class_names: list[str], description: str = "") -> TaskInfo:
        check_name(name, "task name")
        class_names = check_class_names(class_names)
        description = check_text(description, "description", max_len=None, allow_empty=True)

        def work(s: Session) -> TaskInfo:
            backbone_row = self._backbone(s, backbone)
            if s.scalar(select(m.Task.id).where(m.Task.name == name)) is not None:
                raise AlreadyExistsError(f"task {name!r} already exists")
            task = m.Task(name=name, description=description, backbone_id=backbone_row.id, class_names=class_names)
            s.add(task)
            s.flush()
            return task_infos(s, [task])[0]

        return self._write(work, retry_conflicts=True)

    def get_task(self, name: str) -> TaskInfo:
        with self._reader() as s:
            return task_infos(s, [self._task(s, name)])[0]

    def list_tasks(
        self, backbone: str | None = None, tag: str | None = None, include_archived: bool = False
    ) -> list[TaskInfo]:
        """Tasks by name; ``tag`` is ``"key"`` (has the tag) or ``"key=value"``."""
        with self._reader() as s:
            query = select(m.Task).order_by(m.Task.name)
            if backbone is not None:
                query = query.where(m.Task.backbone_id == self._backbone(s, backbone).id)
            if tag is not None:
                key, value = parse_tag_filter(tag)
                condition = and_(m.TaskTag.task_id == m.Task.id, m.TaskTag.key == key)
                if value is not None:
                    condition = and_(condition, m.TaskTag.value == value)
                query = query.where(select(m.TaskTag.task_id).where(condition).exists())
            if not include_archived:
                query = query.where(m.Task.archived_at.is_(None))
            return task_infos(s, s.scalars(query).all())

    def archive_task(self, name: str) -> TaskInfo:
        """Hide a task from listings and refuse new versions; its aliases must be removed first."""

        def work(s: Session) -> TaskInfo:
            task = self._task(s, name)
            aliases = s.scalars(select(m.Alias.name).where(m.Alias.task_id == task.id).order_by(m.Alias.name)).all()
            if aliases:
                raise InvalidStateError(
                    f"task {name!r} has aliases {', '.join(map(repr, aliases))}; remove them before archiving"
                )
            if task.archived_at is None:
                task.archived_at = m.utcnow()
            return task_infos(s, [task])[0]

        return self._write(work)

    def unarchive_task(self, name: str) -> TaskInfo:
        def work(s: Session) -> TaskInfo:
            task = self._task(s, name)
            task.archived_at = None
            return task_infos(s, [task])[0]

        return self._write(work)

    # --- tags ---------------------------------------------------------------------------

    def set_tag(self, task: str, key: str, value: str, version: int | None = None) -> None:
        """Set a tag on a task, or on one of its versions (tags may change on ready versions)."""
        check_name(key, "tag key")
        value = check_text(value, "tag value", max_len=m.TAG_VALUE_LEN, allow_empty=True)

        def work(s: Session) -> None:
            task_row = self._task(s, task)
            row: m.TaskTag | m.VersionTag | None
            if version is None:
                row = s.get(m.TaskTag, (task_row.id, key)) or m.TaskTag(task_id=task_row.id, key=key)
            else:
                target = self._version_of(s, task_row, Ref(task, number=check_int(version, "version", minimum=1)))
                if target.deleted_at is not None:
                    raise InvalidStateError(f"version {task}@{target.number} is deleted")
                row = s.get(m.VersionTag, (target.id, key)) or m.VersionTag(version_id=target.id, key=key)
            row.value = value
            s.add(row)

        self._write(work, retry_conflicts=True)

    def remove_tag(self, task: str, key: str, version: int | None = None) -> None:
        check_name(key, "tag key")

        def work(s: Session) -> None:
            task_row = self._task(s, task)
            row: m.TaskTag | m.VersionTag | None
            if version is None:
                row, owner = s.get(m.TaskTag, (task_row.id, key)), f"task {task!r}"
            else:
                target = self._version_of(s, task_row, Ref(task, number=check_int(version, "version", minimum=1)))
                row, owner = s.get(m.VersionTag, (target.id, key)), f"version {task}@{target.number}"
            if row is None:
                raise NotFoundError(f"tag {key!r} not found on {owner}")
            s.delete(row)

        self._write(work)
