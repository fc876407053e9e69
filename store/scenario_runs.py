"""Scenario runs: the results of benchmark runs (``cmem scenario``), a small store of their own.

``TaskStore`` opens one on its engine as ``store.scenario_runs`` and keeps its
``record_scenario_run`` / ``list_scenario_runs`` / ``get_scenario_run`` methods, which delegate here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import models as m
from store.base import StoreBase
from store.errors import NotFoundError
from store.mapping import scenario_run_info
from store.records import ScenarioRunInfo
from store.validation import check_finite, check_json, check_matrix, check_text


class ScenarioRunStore(StoreBase):
    """Benchmark results: scenario, strategy, protocol, configuration, metrics and accuracy matrix."""

    def record(
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
        fields = {
            "scenario": check_text(scenario, "scenario"),
            "strategy": check_text(strategy, "strategy"),
            "protocol": check_text(protocol, "protocol"),
            "config": check_json(config, "config", dict),
            "metrics": check_json(metrics, "metrics", dict),
            "accuracy_matrix": check_matrix(accuracy_matrix),
            "wall_time_s": None if wall_time_s is None else check_finite(wall_time_s, "wall_time_s"),
        }

        def work(s: Session) -> ScenarioRunInfo:
            row = m.ScenarioRun(**fields)
            s.add(row)
            s.flush()
            return scenario_run_info(row)

        return self._write(work)

    def list_runs(self, scenario: str | None = None, strategy: str | None = None) -> list[ScenarioRunInfo]:
        query = select(m.ScenarioRun).order_by(m.ScenarioRun.id)
        if scenario is not None:
            query = query.where(m.ScenarioRun.scenario == scenario)
        if strategy is not None:
            query = query.where(m.ScenarioRun.strategy == strategy)
        with self._reader() as s:
            return [scenario_run_info(row) for row in s.scalars(query)]

    def get(self, run_id: int) -> ScenarioRunInfo:
        with self._reader() as s:
            row = s.get(m.ScenarioRun, run_id)
            if row is None:
                raise NotFoundError(f"scenario run {run_id} not found")
            return scenario_run_info(row)
