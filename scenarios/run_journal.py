"""A journal of finished runs, so that a long `cmem scenario results` resumes where it stopped.

On two CPU cores the whole document takes hours. Each finished run is appended to `runs.jsonl` in
the report folder, one JSON line, as soon as it ends; a later invocation with the same backbone
and plan finds it there and does not run it again. A run's key is everything that decides its
result (scenario, strategy, budget with its seed and rates, device, route, precision) and the
backbone's weights sha256, so a line of another configuration is never taken for this one. Code
changes are not in the key: after changing what a run computes, start over (`--fresh`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from .runner import RunRequest, RunResult, run_requests

JOURNAL = "runs.jsonl"


def request_key(request: RunRequest, backbone_sha256: str) -> str:
    """What decides a run's result, as one canonical JSON string."""
    return json.dumps({"backbone_sha256": backbone_sha256, **asdict(request)}, sort_keys=True)


class RunJournal:
    """The runs finished so far for one backbone, read from and appended to `path`.

    Wall time adds up over invocations: each line records how long its invocation had been
    running when the run ended, so an invocation's time is that of its last kept run.
    """

    def __init__(self, path: Path, backbone_sha256: str) -> None:
        self.path = path
        self.backbone_sha256 = backbone_sha256
        self.invocation = uuid.uuid4().hex
        self._started = time.perf_counter()
        self._done: dict[str, RunResult] = {}
        spans: dict[str, float] = {}
        text = path.read_text() if path.is_file() else ""
        if text and not text.endswith("\n"):  # cut short mid-write: the next line starts on its own
            with path.open("a") as f:
                f.write("\n")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                key, invocation, since = entry["key"], entry["invocation"], float(entry["since_start_s"])
                if json.loads(key)["backbone_sha256"] != backbone_sha256:
                    continue  # another backbone's run: neither its result nor its time is this plan's
                self._done[key] = RunResult.from_dict(entry["result"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short when an earlier invocation was stopped mid-write
            spans[invocation] = max(spans.get(invocation, 0.0), since)
        self.earlier_invocations = len(spans)
        self.earlier_elapsed_s = sum(spans.values())

    def __len__(self) -> int:
        """How many runs of this backbone are kept."""
        return len(self._done)

    def done(self, request: RunRequest) -> RunResult | None:
        """The kept result of `request`, if an earlier invocation finished it."""
        return self._done.get(request_key(request, self.backbone_sha256))

    def add(self, request: RunRequest, result: RunResult) -> None:
        """Keep `result` at once (appended and flushed), so that stopping loses only the runs in flight."""
        key = request_key(request, self.backbone_sha256)
        entry = {
            "key": key,
            "invocation": self.invocation,
            "since_start_s": time.perf_counter() - self._started,
            "result": result.to_dict(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self._done[key] = result

    @property
    def elapsed_s(self) -> float:
        """Wall time of the earlier invocations (to their last kept run) and of this one so far."""
        return self.earlier_elapsed_s + time.perf_counter() - self._started

    def run(
        self,
        requests: Sequence[RunRequest],
        backbone: VisionTransformer,
        jobs: int = 1,
        on_result: Callable[[RunRequest, RunResult], None] | None = None,
        progress: bool | None = None,
    ) -> list[RunResult]:
        """Every request's result, in order: the kept ones from the journal, the others run now
        (`scenarios.runner.run_requests`) and kept as each ends, after `on_result` has seen it."""
        kept = [self.done(r) for r in requests]

        def keep(request: RunRequest, result: RunResult) -> None:
            if on_result is not None:
                on_result(request, result)
            self.add(request, result)

        missing = [r for r, k in zip(requests, kept) if k is None]
        ran = iter(run_requests(missing, backbone, jobs, torch.get_num_threads(), keep, progress))
        return [k if k is not None else next(ran) for k in kept]
