"""TaskStore API: names, lifecycle, immutability, aliases, tags, search, scenario runs.

Every test runs on SQLite and on PostgreSQL (skipped with a reason when no server answers).
"""

from __future__ import annotations

import re
from datetime import UTC
from pathlib import Path

import pytest
import test_store_fixtures as fx
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from test_store_fixtures import WEIGHTS_SHA, make_artifact, ready_version

from store import (
    AlreadyExistsError,
    InvalidNameError,
    InvalidStateError,
    InvalidValueError,
    NotFoundError,
    TaskStore,
)
from store import models as m

# Shared fixtures, bound here so they take precedence over same-named conftest fixtures.
db_url = fx.db_url
sqlite_store = fx.sqlite_store
store = fx.store

BAD_NAMES = ["", "..", "../x", "x/y", "a b", "Digits", ".hidden", "-x", "_x", "a" * 65, "tâche", "a@b", None]


# --- names and references -------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_task_names_are_refused_with_the_rule(sqlite_store: TaskStore, name: object) -> None:
    with pytest.raises(InvalidNameError) as err:
        sqlite_store.register_task(name, "vit-tiny", ["a"])  # type: ignore[arg-type]
    assert repr(name) in str(err.value)
    assert "1-64 characters of a-z, 0-9" in str(err.value)


def test_good_names_are_accepted(store: TaskStore) -> None:
    for name in ["a", "0", "a" * 64, "cifar-10.split_3"]:
        assert store.register_task(name, "vit-tiny", ["x"]).name == name


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("nope", NotFoundError, "task 'nope' not found"),
        ("nope@1", NotFoundError, "task 'nope' not found"),
        ("digits@9", NotFoundError, "version digits@9 not found"),
        ("digits@production", NotFoundError, "alias 'production' of task 'digits' not found"),
        ("digits", NotFoundError, "task 'digits' has no ready version"),
        ("digits@", InvalidNameError, "invalid reference 'digits@'"),
        ("digits@0", InvalidNameError, "invalid reference 'digits@0': version numbers start at 1"),
        ("Digits@1", InvalidNameError, "invalid task name 'Digits'"),
        ("digits@a/b", InvalidNameError, "invalid reference 'digits@a/b'"),
    ],
)
def test_unknown_or_bad_references(sqlite_store: TaskStore, ref: str, error: type, message: str) -> None:
    with pytest.raises(error, match=r"^" + re.escape(message)) as err:
        sqlite_store.get_version(ref)
    assert "\n" not in str(err.value)


def test_unknown_backbone_and_duplicates(store: TaskStore) -> None:
    with pytest.raises(NotFoundError, match=r"^backbone 'resnet' not found$"):
        store.register_task("other", "resnet", ["a"])
    with pytest.raises(AlreadyExistsError, match=r"^task 'digits' already exists$"):
        store.register_task("digits", "vit-tiny", ["a"])
    with pytest.raises(AlreadyExistsError, match=r"^backbone 'vit-tiny' already exists$"):
        store.register_backbone("vit-tiny", "vit_tiny_patch16_224", WEIGHTS_SHA, {})
    with pytest.raises(NotFoundError, match=r"^task 'ghost' not found$"):
        store.begin_version("ghost", "memory", 4, {})


@pytest.mark.parametrize(
    ("class_names", "message"),
    [
        ([], "non-empty list"),
        (["a", "a", "b"], "repeated: 'a'"),
        (["a", ""], "non-empty strings"),
        (["a", 3], "non-empty strings"),
        ("abc", "non-empty list"),
    ],
)
def test_bad_class_names(sqlite_store: TaskStore, class_names: object, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        sqlite_store.register_task("t", "vit-tiny", class_names)  # type: ignore[arg-type]


def test_bad_values(store: TaskStore) -> None:
    with pytest.raises(InvalidValueError, match=r"weights_sha256 must be a sha256"):
        store.register_backbone("b", "vit", "xyz", {})
    with pytest.raises(InvalidValueError, match=r"hyperparams must be JSON data without NaN"):
        store.begin_version("digits", "memory", 4, {"lr": float("nan")})
    with pytest.raises(InvalidValueError, match=r"memory_size must be an integer >= 0"):
        store.begin_version("digits", "memory", -1, {})
    with pytest.raises(InvalidValueError, match=r"hyperparams must be a dict"):
        store.begin_version("digits", "memory", 4, [1, 2])  # type: ignore[arg-type]


# --- versions -------------------------------------------------------------------------------


def test_version_lifecycle(store: TaskStore, tmp_path: Path) -> None:
    started = store.begin_version("digits", "memory", 4, {"lr": 0.01}, data_fingerprint="fp1")
    assert (started.ref, started.status, started.metrics) == ("digits@1", "training", None)
    assert started.artifact_sha256 is None
    assert started.created_at.tzinfo == UTC

    done = store.complete_version(started, make_artifact(tmp_path / "a.safetensors"), {"accuracy": 0.9})
    assert (done.status, done.metrics, done.data_fingerprint) == ("ready", {"accuracy": 0.9}, "fp1")
    assert done.artifact_size == (tmp_path / "a.safetensors").stat().st_size
    assert done.finished_at is not None and done.finished_at.tzinfo == UTC
    assert done.finished_at >= done.created_at
    assert store.get_version("digits") == done
    assert store.get_version("digits@1") == done

    second = store.begin_version("digits", "memory", 8, {"lr": 0.02}, parent_version=1)
    assert (second.number, second.parent_version) == (2, 1)
    failed = store.fail_version("digits@2", "out of memory")
    assert (failed.status, failed.failure_reason) == ("failed", "out of memory")
    assert store.get_version("digits").number == 1  # latest *ready*
    assert [v.number for v in store.list_versions("digits")] == [1, 2]
    assert [v.number for v in store.list_versions("digits", status="failed")] == [2]


def test_ready_version_cannot_be_changed(store: TaskStore, tmp_path: Path) -> None:
    number = ready_version(store, "digits", tmp_path)
    artifact = make_artifact(tmp_path / "other.safetensors", seed=7)
    with pytest.raises(InvalidStateError, match=r"^version digits@1 is ready and cannot be changed$"):
        store.complete_version(f"digits@{number}", artifact, {"accuracy": 1.0})
    with pytest.raises(InvalidStateError, match=r"^version digits@1 is ready and cannot be changed$"):
        store.fail_version("digits@1", "oops")
    failed = store.begin_version("digits", "memory", 4, {})
    store.fail_version(failed, "crash")
    with pytest.raises(InvalidStateError, match=r"^version digits@2 is failed; only a training version"):
        store.complete_version(failed, artifact, {})
    assert store.get_version("digits@1").metrics == {"accuracy": 0.5}


def test_orm_guard_refuses_changes_to_a_ready_row(store: TaskStore, tmp_path: Path) -> None:
    """Even code that goes around the API and edits the row through an ORM session is refused."""
    ready_version(store, "digits", tmp_path)
    with Session(store._engine) as session:
        row = session.scalars(select(m.TaskVersion).where(m.TaskVersion.number == 1)).one()
        row.metrics = {"accuracy": 1.0}
        with pytest.raises(InvalidStateError, match=r"is ready and cannot be changed .attempted: metrics"):
            session.flush()


def test_evaluations_append_without_changing_the_version(store: TaskStore, tmp_path: Path) -> None:
    ready_version(store, "digits", tmp_path)
    store.add_evaluation("digits@1", "builtin:digits/test", {"accuracy": 0.8})
    info = store.add_evaluation("digits@1", "folder:/data/new", {"accuracy": 0.7})
    assert [(e.data_source, e.metrics) for e in info.evaluations] == [
        ("builtin:digits/test", {"accuracy": 0.8}),
        ("folder:/data/new", {"accuracy": 0.7}),
    ]
    assert info.metrics == {"accuracy": 0.5}
    training = store.begin_version("digits", "memory", 4, {})
    with pytest.raises(InvalidStateError, match=r"digits@2 is training, not ready, and cannot be evaluated"):
        store.add_evaluation(training, "x", {})


def test_deleted_numbers_are_never_reused(store: TaskStore, tmp_path: Path) -> None:
    for seed in range(3):
        ready_version(store, "digits", tmp_path, seed)
    deleted = store.delete_version("digits@3")
    assert deleted.deleted
    assert store.begin_version("digits", "memory", 4, {}).number == 4
    assert [v.number for v in store.list_versions("digits")] == [1, 2, 4]
    assert [v.number for v in store.list_versions("digits", include_deleted=True)] == [1, 2, 3, 4]
    assert store.get_version("digits").number == 2
    with pytest.raises(InvalidStateError, match=r"^version digits@3 is already deleted$"):
        store.delete_version("digits@3")
    with pytest.raises(InvalidStateError, match=r"version digits@3 is deleted and cannot be loaded"):
        store.artifact_path("digits@3")


def test_delete_is_refused_while_an_alias_points_at_the_version(store: TaskStore, tmp_path: Path) -> None:
    ready_version(store, "digits", tmp_path)
    store.set_alias("digits", "production", 1)
    with pytest.raises(InvalidStateError, match=r"^version digits@1 is the target of alias 'production'; move or"):
        store.delete_version("digits@1")


def test_archived_task(store: TaskStore, tmp_path: Path) -> None:
    ready_version(store, "digits", tmp_path)
    store.set_alias("digits", "production", 1)
    with pytest.raises(InvalidStateError, match=r"has aliases 'production'; remove them before archiving"):
        store.archive_task("digits")
    store.remove_alias("digits", "production")
    assert store.archive_task("digits").archived
    assert store.list_tasks() == []
    assert [t.name for t in store.list_tasks(include_archived=True)] == ["digits"]
    with pytest.raises(InvalidStateError, match=r"^task 'digits' is archived"):
        store.begin_version("digits", "memory", 4, {})
    assert not store.unarchive_task("digits").archived


# --- aliases --------------------------------------------------------------------------------


def test_alias_moves_history_and_rollback(store: TaskStore, tmp_path: Path) -> None:
    for seed in range(3):
        ready_version(store, "digits", tmp_path, seed)
    store.set_alias("digits", "production", 1, actor="alice")
    store.set_alias("digits@2", "production", actor="bob")
    moved = store.set_alias("digits", "production", 3)
    assert (moved.ref, store.get_version("digits@production").number) == ("digits@3", 3)
    assert store.set_alias("digits", "production", 3) == moved  # no-op, no history row

    assert store.rollback_alias("digits", "production", actor="carol").version == 2
    assert store.rollback_alias("digits", "production").version == 1
    with pytest.raises(InvalidStateError, match=r"has no earlier version to roll back to"):
        store.rollback_alias("digits", "production")

    history = store.alias_history("digits", "production")
    assert [(h.kind, h.from_version, h.to_version, h.actor) for h in history] == [
        ("set", None, 1, "alice"),
        ("set", 1, 2, "bob"),
        ("set", 2, 3, None),
        ("rollback", 3, 2, "carol"),
        ("rollback", 2, 1, None),
    ]
    assert all(h.moved_at.tzinfo == UTC for h in history)
    assert store.get_version("digits@1").aliases == ["production"]
    assert store.get_task("digits").aliases == {"production": 1}

    store.remove_alias("digits", "production", actor="dave")
    with pytest.raises(NotFoundError, match=r"alias 'production' of task 'digits' not found"):
        store.get_version("digits@production")
    assert store.alias_history("digits", "production")[-1].kind == "remove"


def test_rollback_refuses_a_deleted_previous_target(store: TaskStore, tmp_path: Path) -> None:
    ready_version(store, "digits", tmp_path, 0)
    ready_version(store, "digits", tmp_path, 1)
    store.set_alias("digits", "staging", 1)
    store.set_alias("digits", "staging", 2)
    store.delete_version("digits@1")
    with pytest.raises(
        InvalidStateError, match=r"^cannot roll back alias .staging. to digits@1: the version is deleted"
    ):
        store.rollback_alias("digits", "staging")
    assert store.get_version("digits@staging").number == 2


def test_alias_only_to_a_ready_version_of_the_same_task(store: TaskStore, tmp_path: Path) -> None:
    ready_version(store, "digits", tmp_path, 0)  # 1 ready
    store.begin_version("digits", "memory", 4, {})  # 2 training
    store.fail_version(store.begin_version("digits", "memory", 4, {}), "x")  # 3 failed
    ready_version(store, "digits", tmp_path, 1)  # 4 ready, then deleted
    store.delete_version("digits@4")
    store.register_task("letters", "vit-tiny", ["a", "b"])
    ready_version(store, "letters", tmp_path, 2)
    ready_version(store, "letters", tmp_path, 3)  # letters@2 exists, digits@2 is training

    for number, problem in [(2, "training, not ready"), (3, "failed, not ready"), (4, "deleted")]:
        expected = rf"^cannot point alias 'production' at digits@{number}: the version is {problem}$"
        with pytest.raises(InvalidStateError, match=expected):
            store.set_alias("digits", "production", number)
    with pytest.raises(NotFoundError, match=r"^version digits@9 not found$"):
        store.set_alias("digits", "production", 9)
    with pytest.raises(InvalidNameError, match=r"must not be only digits"):
        store.set_alias("digits", "123", 1)
    with pytest.raises(InvalidNameError, match=r"needs a version number"):
        store.set_alias("digits", "production")
    assert store.deployed() == []


def test_composite_foreign_key_keeps_aliases_inside_their_task(store: TaskStore, tmp_path: Path) -> None:
    """The database itself refuses an alias row naming a version number its task does not have."""
    store.register_task("letters", "vit-tiny", ["a", "b"])
    ready_version(store, "letters", tmp_path, 0)
    ready_version(store, "letters", tmp_path, 1)
    ready_version(store, "digits", tmp_path, 2)
    store.set_alias("digits", "production", 1)
    with Session(store._engine) as session:
        digits_id = session.scalar(select(m.Task.id).where(m.Task.name == "digits"))
        with pytest.raises(IntegrityError):
            session.execute(update(m.Alias).where(m.Alias.task_id == digits_id).values(version_number=2))
            session.flush()
        session.rollback()
        with pytest.raises(IntegrityError):
            session.execute(
                insert(m.Alias).values(task_id=digits_id, name="staging", version_number=2, updated_at=m.utcnow())
            )
            session.flush()


def test_deployed_lists_every_alias_with_its_metrics(store: TaskStore, tmp_path: Path) -> None:
    store.register_task("letters", "vit-tiny", ["a", "b"])
    ready_version(store, "digits", tmp_path, 0)
    ready_version(store, "letters", tmp_path, 1)
    store.set_alias("digits", "production", 1)
    store.set_alias("letters", "production", 1)
    store.set_alias("letters", "staging", 1)
    entries = store.deployed()
    assert [(e.task, e.alias, e.version) for e in entries] == [
        ("digits", "production", 1),
        ("letters", "production", 1),
        ("letters", "staging", 1),
    ]
    first = entries[0]
    assert (first.backbone, first.class_names, first.metrics) == ("vit-tiny", ["0", "1", "2"], {"accuracy": 0.5})
    assert first.artifact_size > 0 and len(first.artifact_sha256) == 64
    assert [e.task for e in store.deployed("production")] == ["digits", "letters"]


# --- tags and search ------------------------------------------------------------------------


def test_tags_and_search(store: TaskStore, tmp_path: Path) -> None:
    store.register_backbone("vit-small", "vit_small_patch16_224", "cd" * 32, {})
    store.register_task("letters", "vit-small", ["a", "b"])
    ready_version(store, "digits", tmp_path, 0)
    ready_version(store, "digits", tmp_path, 1)
    ready_version(store, "letters", tmp_path, 2)
    store.begin_version("letters", "memory", 4, {})
    store.set_tag("digits", "owner", "vision-team")
    store.set_tag("digits", "owner", "ml-team")  # overwrite
    store.set_tag("digits", "candidate", "yes", version=2)
    store.set_alias("letters", "production", 1)

    assert store.get_task("digits").tags == {"owner": "ml-team"}
    assert store.get_version("digits@2").tags == {"candidate": "yes"}
    assert [t.name for t in store.list_tasks(tag="owner")] == ["digits"]
    assert [t.name for t in store.list_tasks(tag="owner=vision-team")] == []
    assert [t.name for t in store.list_tasks(backbone="vit-small")] == ["letters"]

    def refs(**filters: str) -> list[str]:
        return [v.ref for v in store.search_versions(**filters)]

    assert refs() == ["digits@1", "digits@2", "letters@1", "letters@2"]
    assert refs(status="ready") == ["digits@1", "digits@2", "letters@1"]
    assert refs(tag="candidate=yes") == ["digits@2"]
    assert refs(alias="production") == ["letters@1"]
    assert refs(backbone="vit-small", status="training") == ["letters@2"]
    assert refs(task="digits", tag="candidate") == ["digits@2"]
    with pytest.raises(InvalidValueError, match=r"unknown status 'done'"):
        store.search_versions(status="done")
    with pytest.raises(NotFoundError, match=r"^backbone 'nope' not found$"):
        store.search_versions(backbone="nope")

    store.remove_tag("digits", "candidate", version=2)
    assert store.get_version("digits@2").tags == {}
    with pytest.raises(NotFoundError, match=r"^tag 'candidate' not found on version digits@2$"):
        store.remove_tag("digits", "candidate", version=2)
    with pytest.raises(InvalidNameError, match=r"invalid tag key 'Bad Key'"):
        store.set_tag("digits", "Bad Key", "x")


# --- backbones and scenario runs ------------------------------------------------------------


def test_backbone_weights_file_is_stored_and_verified(store: TaskStore, tmp_path: Path) -> None:
    weights = make_artifact(tmp_path / "weights.safetensors", seed=5)
    info = store.register_backbone("vit-pre", "vit_tiny_patch16_224", "ef" * 32, {"depth": 4}, weights_file=weights)
    assert info.weights_size == weights.stat().st_size
    path = store.backbone_weights_path("vit-pre")
    assert path is not None and path.read_bytes() == weights.read_bytes() and path.suffix == ".safetensors"
    assert store.backbone_weights_path("vit-tiny") is None
    assert [b.name for b in store.list_backbones()] == ["vit-pre", "vit-tiny"]
    assert store.get_backbone("vit-pre").config == {"depth": 4}


def test_scenario_runs(store: TaskStore) -> None:
    first = store.record_scenario_run(
        "split-digits", "memory", "task-il", {"epochs": 1}, {"avg_acc": 0.9}, [[0.9, 0.1], [0.9, 0.8]], 12.5
    )
    store.record_scenario_run("split-digits", "naive", "class-il", {}, {"avg_acc": 0.4}, [[0.9], [0.2]])
    store.record_scenario_run("synthetic", "memory", "task-il", {}, {}, [])
    assert store.get_scenario_run(first.id) == first
    assert first.accuracy_matrix == [[0.9, 0.1], [0.9, 0.8]] and first.created_at.tzinfo == UTC
    assert [r.strategy for r in store.list_scenario_runs(scenario="split-digits")] == ["memory", "naive"]
    assert [r.scenario for r in store.list_scenario_runs(strategy="memory")] == ["split-digits", "synthetic"]
    with pytest.raises(NotFoundError, match=r"^scenario run 999 not found$"):
        store.get_scenario_run(999)
    with pytest.raises(InvalidValueError, match=r"accuracy_matrix entry must be a finite number"):
        store.record_scenario_run("s", "x", "p", {}, {}, [[float("nan")]])
