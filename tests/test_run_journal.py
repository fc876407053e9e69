"""`cmem scenario results` resumes: finished runs are kept in a journal and not run again."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_vit

from scenarios.run_journal import JOURNAL, RunJournal
from scenarios.runner import Budget, RunRequest, ScenarioKey, StrategySpec, run_requests

FAST = Budget(epochs=1, batch_size=16)
KEY = ScenarioKey("split-digits", "task", limit_per_class=6)

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a, b) -> bool:
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_a_stopped_run_resumes_where_it_stopped(tmp_path) -> None:
    backbone = tiny_vit(num_classes=8)
    head, memory = (RunRequest(KEY, StrategySpec.parse(label), FAST) for label in ("head-only", "memory-1"))
    path = tmp_path / JOURNAL
    (first,) = RunJournal(path, "sha-a").run([head], backbone, progress=False)
    path.write_text(path.read_text() + '{"key": "cut short by a st')  # stopped mid-write

    again = RunJournal(path, "sha-a")
    assert len(again) == 1 and again.earlier_invocations == 1 and again.earlier_elapsed_s > 0
    assert _same(again.done(head), first) and again.done(memory) is None
    seen = []
    both = again.run([head, memory], backbone, on_result=lambda request, result: seen.append(request))
    assert seen == [memory]  # only what was missing ran
    assert _same(both[0], first)
    (alone,) = run_requests([memory], backbone, progress=False)
    assert both[1].accuracy_matrix == alone.accuracy_matrix  # a resumed plan computes what a fresh one does

    later = RunJournal(path, "sha-a")
    assert len(later) == 2 and later.earlier_invocations == 2 and _same(later.done(memory), both[1])
    assert later.earlier_elapsed_s >= again.earlier_elapsed_s
    assert len(RunJournal(path, "sha-b")) == 0  # another backbone's runs are never taken
    assert RunJournal(path, "sha-b").earlier_invocations == 0  # nor their time counted
    other_seed = RunRequest(KEY, StrategySpec.parse("head-only"), Budget(epochs=1, batch_size=16, seed=1))
    assert later.done(other_seed) is None
