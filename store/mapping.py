"""Rows to records: the frozen ``store.records`` the API returns, built from ORM rows in few queries.

``task_infos`` and ``version_infos`` load the tags, aliases and evaluations of many rows at once
(one query per kind, in chunks that fit any bound-parameter limit), never one query per row.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.orm import Session

from store import models as m
from store.records import BackboneInfo, EvaluationInfo, ScenarioRunInfo, TaskInfo, VersionInfo

IN_CHUNK = 5000  # stays below SQLite's and PostgreSQL's bound-parameter limits

AnyRow = Row[*tuple[Any, ...]]
AnySelect = Select[*tuple[Any, ...]]


def select_in(s: Session, make_query: Callable[[list[int]], AnySelect], ids: Iterable[int]) -> list[AnyRow]:
    """Run ``make_query(chunk)`` over ``ids`` in chunks small enough for any bound-parameter limit."""
    unique = sorted(set(ids))
    rows: list[AnyRow] = []
    for start in range(0, len(unique), IN_CHUNK):
        rows.extend(s.execute(make_query(unique[start : start + IN_CHUNK])).all())
    return rows


def decode_json_batch(values: list[Any]) -> list[Any]:
    """Decode JSON texts with one parser call, several times faster than one call per value.

    Drivers that decode JSON themselves (psycopg2) hand back objects, which pass through.
    """
    if all(isinstance(value, str) for value in values):
        return list(json.loads("[" + ",".join(values) + "]"))
    return [json.loads(value) if isinstance(value, str) else value for value in values]


def task_infos(s: Session, tasks: Sequence[m.Task]) -> list[TaskInfo]:
    task_ids = [t.id for t in tasks]
    backbones: dict[int, str] = dict(
        select_in(
            s,
            lambda ids: select(m.Backbone.id, m.Backbone.name).where(m.Backbone.id.in_(ids)),
            {t.backbone_id for t in tasks},
        )
    )
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for task_id, key, value in select_in(
        s,
        lambda ids: select(m.TaskTag.task_id, m.TaskTag.key, m.TaskTag.value).where(m.TaskTag.task_id.in_(ids)),
        task_ids,
    ):
        tags[task_id][key] = value
    aliases: dict[int, dict[str, int]] = defaultdict(dict)
    for task_id, name, number in select_in(
        s,
        lambda ids: select(m.Alias.task_id, m.Alias.name, m.Alias.version_number).where(m.Alias.task_id.in_(ids)),
        task_ids,
    ):
        aliases[task_id][name] = number
    return [
        TaskInfo(
            name=t.name,
            description=t.description,
            backbone=backbones[t.backbone_id],
            class_names=list(t.class_names),
            created_at=t.created_at,
            archived_at=t.archived_at,
            tags=dict(sorted(tags[t.id].items())),
            aliases=dict(sorted(aliases[t.id].items())),
        )
        for t in tasks
    ]


def version_infos(s: Session, versions: Sequence[m.TaskVersion]) -> list[VersionInfo]:
    """Records for ``versions`` with their tags, aliases and evaluations (four queries in all)."""
    version_ids = [v.id for v in versions]
    task_ids = {v.task_id for v in versions}
    names = {
        task_id: (task_name, backbone_name)
        for task_id, task_name, backbone_name in select_in(
            s,
            lambda ids: (
                select(m.Task.id, m.Task.name, m.Backbone.name)
                .join(m.Backbone, m.Task.backbone_id == m.Backbone.id)
                .where(m.Task.id.in_(ids))
            ),
            task_ids,
        )
    }
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    for version_id, key, value in select_in(
        s,
        lambda ids: select(m.VersionTag.version_id, m.VersionTag.key, m.VersionTag.value).where(
            m.VersionTag.version_id.in_(ids)
        ),
        version_ids,
    ):
        tags[version_id][key] = value
    evaluations: dict[int, list[EvaluationInfo]] = defaultdict(list)
    for version_id, source, metrics, created_at in select_in(
        s,
        lambda ids: (
            select(m.Evaluation.version_id, m.Evaluation.data_source, m.Evaluation.metrics, m.Evaluation.created_at)
            .where(m.Evaluation.version_id.in_(ids))
            .order_by(m.Evaluation.id)
        ),
        version_ids,
    ):
        evaluations[version_id].append(EvaluationInfo(source, metrics, created_at))
    aliases: dict[tuple[int, int], list[str]] = defaultdict(list)
    for task_id, number, name in select_in(
        s,
        lambda ids: (
            select(m.Alias.task_id, m.Alias.version_number, m.Alias.name)
            .where(m.Alias.task_id.in_(ids))
            .order_by(m.Alias.name)
        ),
        task_ids,
    ):
        aliases[(task_id, number)].append(name)
    return [
        VersionInfo(
            task=names[v.task_id][0],
            number=v.number,
            status=v.status,
            backbone=names[v.task_id][1],
            mode=v.mode,
            memory_size=v.memory_size,
            hyperparams=v.hyperparams,
            metrics=v.metrics,
            data_fingerprint=v.data_fingerprint,
            parent_version=v.parent_version,
            artifact_uri=v.artifact_uri,
            artifact_sha256=v.artifact_sha256,
            artifact_size=v.artifact_size,
            failure_reason=v.failure_reason,
            created_at=v.created_at,
            finished_at=v.finished_at,
            deleted_at=v.deleted_at,
            tags=dict(sorted(tags[v.id].items())),
            aliases=aliases[(v.task_id, v.number)],
            evaluations=evaluations[v.id],
        )
        for v in versions
    ]


def backbone_info(row: m.Backbone) -> BackboneInfo:
    return BackboneInfo(
        name=row.name,
        timm_name=row.timm_name,
        weights_sha256=row.weights_sha256,
        config=row.config,
        weights_uri=row.weights_uri,
        weights_file_sha256=row.weights_file_sha256,
        weights_size=row.weights_size,
        created_at=row.created_at,
    )


def scenario_run_info(row: m.ScenarioRun) -> ScenarioRunInfo:
    return ScenarioRunInfo(
        id=row.id,
        scenario=row.scenario,
        strategy=row.strategy,
        protocol=row.protocol,
        config=row.config,
        metrics=row.metrics,
        accuracy_matrix=row.accuracy_matrix,
        wall_time_s=row.wall_time_s,
        created_at=row.created_at,
    )
