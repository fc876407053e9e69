"""``TaskStore``: the API the CLI and the scenarios call, one class made of one part per concern.

Its methods live beside what they manage: ``store.backbones``, ``store.tasks`` (and tags),
``store.versions``, ``store.aliases``, ``store.exchange`` (export/import), with the shared
sessions and lookups in ``store.base``; scenario runs are a small store of their own
(``store.scenario_runs``). Every public method runs in its own short transaction and returns
frozen records (``store.records``), never ORM rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from store import models as m
from store.aliases import AliasesMixin
from store.artifacts import artifact_key, open_artifact_store, refuse_files_in_the_way, suffix_of
from store.backbones import BackbonesMixin
from store.db import ensure_schema, make_engine
from store.exchange import ExchangeMixin
from store.notify import AliasListener, listen_for_alias_moves
from store.records import ScenarioRunInfo, VersionRef
from store.scenario_runs import ScenarioRunStore
from store.tasks import TasksMixin

__all__ = ["TaskStore", "VersionRef"]


class TaskStore(BackbonesMixin, TasksMixin, ExchangeMixin, AliasesMixin):
    """Versioned task entries in a SQL database, with their artifacts as content-addressed files.

    ``home`` holds the default SQLite database (``store.db``), the default artifact
    root (``artifacts/``) and a cache of remote artifacts (``cache/``). ``db_url``
    takes any SQLAlchemy URL; ``artifact_root`` a directory or an fsspec URL.
    With ``upgrade`` an older schema is migrated on open; without it an older
    schema raises ``SchemaVersionError``. A newer schema always does. Opening creates
    ``home`` only for the default SQLite database; folders appear on the first write,
    and a file where one of them belongs is refused (``StorageError``).
    """

    def __init__(
        self,
        home: str | Path,
        db_url: str | None = None,
        artifact_root: str | None = None,
        upgrade: bool = True,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        refuse_files_in_the_way(self.home)
        if db_url is None:  # the SQLite database lives there
            self.home.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url or f"sqlite:///{self.home / 'store.db'}"
        engine = make_engine(self.db_url)
        try:
            ensure_schema(engine, upgrade)
        except BaseException:
            engine.dispose()
            raise
        super().__init__(engine)
        self.scenario_runs = ScenarioRunStore(engine)
        self.artifacts = open_artifact_store(
            artifact_root if artifact_root is not None else self.home / "artifacts",
            cache_dir=self.home / "cache",
        )

    def alias_listener(self) -> AliasListener | None:
        """A listener told of every alias move as it commits (PostgreSQL), or None: then poll."""
        return listen_for_alias_moves(self._engine)

    def close(self) -> None:
        """Close the database connections (the store must not be used afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> TaskStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- scenario runs (see store.scenario_runs) -----------------------------------------

    def record_scenario_run(
        self,
        scenario: str,
        strategy: str,
        protocol: str,
        config: dict[str, Any],
        metrics: dict[str, Any],
        accuracy_matrix: list[list[float]],
        wall_time_s: float | None = None,
    ) -> ScenarioRunInfo:
        """Keep the result of a benchmark run; ``accuracy_matrix[i][j]``: accuracy on experience j after training i."""
        return self.scenario_runs.record(
            scenario, strategy, protocol, config, metrics, accuracy_matrix, wall_time_s=wall_time_s
        )

    def list_scenario_runs(self, scenario: str | None = None, strategy: str | None = None) -> list[ScenarioRunInfo]:
        return self.scenario_runs.list_runs(scenario=scenario, strategy=strategy)

    def get_scenario_run(self, run_id: int) -> ScenarioRunInfo:
        return self.scenario_runs.get(run_id)

    # --- maintenance --------------------------------------------------------------------

    def gc(self, dry_run: bool = False, min_age_s: float = 3600.0) -> list[str]:
        """Remove artifact files no row refers to, and temp files of writes that never finished.

        Returns their URIs. Only files older than ``min_age_s`` are considered: a
        file just renamed into place may belong to a ``complete_version`` that has
        not committed yet. The files are listed before the references are read, so
        a file committed in between is seen as referenced. ``training`` versions
        are left alone (``fail_stale`` marks abandoned ones failed).
        """
        candidates = [entry for entry in self.artifacts.entries() if entry.age_s >= min_age_s]
        with self._reader() as s:
            referenced = {
                artifact_key(sha256, suffix_of(uri))
                for sha256, uri in s.execute(
                    select(m.TaskVersion.artifact_sha256, m.TaskVersion.artifact_uri)
                    .where(m.TaskVersion.artifact_sha256.is_not(None))
                    .union(
                        select(m.Backbone.weights_file_sha256, m.Backbone.weights_uri).where(
                            m.Backbone.weights_file_sha256.is_not(None)
                        )
                    )
                )
                if sha256 is not None and uri is not None
            }
        removed = []
        for entry in candidates:
            if entry.is_temp or entry.key not in referenced:
                if not dry_run:
                    self.artifacts.remove(entry.key)
                removed.append(self.artifacts.uri(entry.key))
        return removed
