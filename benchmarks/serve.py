"""Serving benchmark (issue 9): a bounded asyncio httpx client against a real `cmem serve` on 127.0.0.1.

It builds a store (a ViT with random weights: timing does not depend on them; 32 reuse-mode and
8 full-mode tasks with random adapters, 10 classes, m=5), starts the server as a subprocess on a
free loopback port, and measures, each phase bounded in time and request count:
  * throughput, 16 concurrent clients, each request asking for T tasks: T=1, T=32, and 8 reuse
    against 8 full-mode tasks (what separate per-task models cost);
  * latency at T=8: 16 clients sending on a fixed schedule at 80% of the measured capacity (p50,
    p99 from each request's intended send time, so a stalled server is not hidden by clients
    that stop sending), over the time of one batch at that load;
  * HTTP overhead: one client's p50 over the in-process `forward_tasks` time for the same image
    (decoding included on both sides), the two interleaved request by request;
  * 20 alias moves made with the store API while 8 clients keep sending: from each move's commit
    to the first response naming the new version; non-2xx answers; answers that went back;
  * the bad requests of tests/test_serve.py: how many got a 5xx, then whether a good one is answered.

    python benchmarks/serve.py [--model vit_small_patch16_224] [--device cpu|cuda] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the bad requests of test_serve.py
from continual_mem import services
from continual_mem.images import decode_image
from continual_mem.model import MemoryViT
from continual_mem.serve.process import ServeProcess
from store import TaskStore

REUSE_TASKS, FULL_TASKS, CLASSES, MEMORY = 32, 8, 10, 5
T8 = [f"r{i}" for i in range(8)]
LIMITS = ["--max-pixels", "1000000", "--max-images", "8", "--max-request-mb", "1"]  # those tests/test_serve.py assumes
GOALS = {  # key: (goal, True when larger is better)
    "throughput_T32_over_T1": (0.80, True),
    "reuse_over_full_T8": (5.0, True),
    "p99_c16_over_batch_time": (3.0, False),
    "http_overhead_c1": (1.25, False),
    "deploy_to_serve_p99_s": (3.0, False),
    "non_2xx_during_moves": (0, False),
    "version_went_back": (0, False),
    "bad_requests_5xx": (0, False),
}


@dataclass
class Answer:
    intended: float
    sent: float
    received: float
    status: int
    body: dict


# ---------------------------------------------------------------------------------- the store
def build_store(home: Path, model_name: str, model_kwargs: dict) -> None:
    """Backbone `bench`; tasks r0..r31 (reuse) and f0..f7 (full), version 1 deployed; r0 has a version 2."""
    classes = [str(c) for c in range(CLASSES)]
    with TaskStore(home) as store:
        services.add_backbone(store, "bench", model_name, model_kwargs=model_kwargs, random_init=True)
        vit, identity = services.load_backbone(store, "bench")
        model = MemoryViT(vit, identity)
        tasks = [(f"r{i}", "reuse") for i in range(REUSE_TASKS)] + [(f"f{i}", "full") for i in range(FULL_TASKS)]
        for seed, (name, mode) in enumerate(tasks):
            store.register_task(name, "bench", classes)
            for version in (1, 2) if name == "r0" else (1,):
                torch.manual_seed(seed * 10 + version)
                model.add_task(name, CLASSES, num_memory=MEMORY, mode=mode, class_names=classes)  # type: ignore[arg-type]
                draft = store.begin_version(name, mode, MEMORY, {"benchmark": "random adapter"})
                path = model.save_task(name, home / f"{name}-{version}.safetensors")
                store.complete_version(draft.ref, path, {})
                model.remove_task(name)
            store.set_alias(name, "production", 1)


def test_image(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- clients
async def send(client: httpx.AsyncClient, image: bytes, tasks: list[str], intended: float) -> Answer:
    sent = time.perf_counter()
    response = await client.post(
        "/v1/predict", files={"image": ("x.png", image, "image/png")}, data={"tasks": ",".join(tasks)}
    )
    received = time.perf_counter()
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return Answer(intended, sent, received, response.status_code, body)


async def closed_loop(
    url: str, image: bytes, tasks: list[str], clients: int, seconds: float, limit: int = 20_000
) -> tuple[list[Answer], float]:
    """`clients` each send the next request when the last is answered, for `seconds`."""
    answers: list[Answer] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter()
        stop = start + seconds

        async def one_client() -> None:
            while time.perf_counter() < stop and len(answers) < limit:
                answers.append(await send(client, image, tasks, time.perf_counter()))

        await asyncio.gather(*(one_client() for _ in range(clients)))
        return answers, time.perf_counter() - start


async def scheduled(
    url: str, image: bytes, tasks: list[str], clients: int, rate: float, seconds: float
) -> list[Answer]:
    """Each client sends on a fixed schedule (rate/clients per second); latency counts from that schedule."""
    interval = clients / rate
    answers: list[Answer] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter() + 0.05

        async def one_client(offset: float) -> None:
            k = 0
            while (intended := start + offset + k * interval) < start + seconds:
                await asyncio.sleep(max(0.0, intended - time.perf_counter()))
                answers.append(await send(client, image, tasks, intended))
                k += 1

        await asyncio.gather(*(one_client(i * interval / clients) for i in range(clients)))
    return answers


def images_per_s(answers: list[Answer], seconds: float) -> float:
    return sum(a.status == 200 for a in answers) / seconds


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000.0, q))


# ---------------------------------------------------------------------------------- phases
def throughput(url: str, image: bytes, seconds: float) -> dict[str, float]:
    out = {}
    for label, tasks in (
        ("T1", ["r0"]),
        ("T32", [f"r{i}" for i in range(32)]),
        ("reuse_T8", T8),
        ("full_T8", [f"f{i}" for i in range(8)]),
    ):
        asyncio.run(closed_loop(url, image, tasks, 4, 1.0))  # warm-up
        answers, elapsed = asyncio.run(closed_loop(url, image, tasks, 16, seconds))
        out[f"images_per_s_{label}"] = images_per_s(answers, elapsed)
    out["throughput_T32_over_T1"] = out["images_per_s_T32"] / out["images_per_s_T1"]
    out["reuse_over_full_T8"] = out["images_per_s_reuse_T8"] / out["images_per_s_full_T8"]
    return out


def latency(url: str, image: bytes, seconds: float, capacity: float) -> dict[str, float]:
    """16 clients on a fixed schedule at 80% of the capacity measured at T=8."""
    loaded = asyncio.run(scheduled(url, image, T8, 16, 0.8 * capacity, seconds))
    waits = [a.received - a.intended for a in loaded if a.status == 200]
    batch_ms = statistics.median(a.body["timing_ms"]["inference"] for a in loaded if a.status == 200)
    p99 = percentile_ms(waits, 99)
    return {
        "p50_ms_c16": percentile_ms(waits, 50),
        "p99_ms_c16": p99,
        "batch_ms_c16": batch_ms,
        "p99_c16_over_batch_time": p99 / batch_ms,
        "rate_c16": 0.8 * capacity,
    }


def http_overhead(url: str, home: Path, image: bytes, device: str, repeats: int) -> dict[str, float]:
    """One client's latency against the same work in this process, interleaved so load hits both alike.

    In process: decode + resize + normalise + `forward_tasks` + softmax and top-k of the 8 tasks.
    """
    with TaskStore(home) as store:
        loaded = services.load_versions(store, T8)
    model = loaded.model.to(device).eval()

    def in_process() -> None:
        with torch.inference_mode():
            logits = model.forward_tasks(loaded.spec.batch([decode_image(image)]).to(device)).logits
            [v.float().softmax(-1).topk(3).values.tolist() for v in logits.values()]

    http, local = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(repeats + 3):
            start = time.perf_counter()
            client.post("/v1/predict", files={"image": ("x.png", image, "image/png")}, data={"tasks": ",".join(T8)})
            middle = time.perf_counter()
            in_process()
            if i >= 3:  # warm-up
                http.append(middle - start)
                local.append(time.perf_counter() - middle)
    p50, local_p50 = statistics.median(http) * 1000, statistics.median(local) * 1000
    return {"p50_ms_c1": p50, "inprocess_ms": local_p50, "http_overhead_c1": p50 / local_p50}


def alias_moves(url: str, home: Path, image: bytes, moves: int, every_s: float) -> dict[str, float]:
    """Move r0's alias `moves` times while 8 clients send; what each response names, when."""
    commits: list[tuple[float, int]] = []

    async def run() -> list[Answer]:
        stop = asyncio.Event()
        answers: list[Answer] = []
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def one_client() -> None:
                while not stop.is_set():
                    answers.append(await send(client, image, T8, time.perf_counter()))

            clients = [asyncio.create_task(one_client()) for _ in range(8)]
            with TaskStore(home) as store:
                for i in range(moves):
                    await asyncio.sleep(every_s)
                    target = 2 if i % 2 == 0 else 1
                    await asyncio.to_thread(store.set_alias, "r0", "production", target)
                    commits.append((time.perf_counter(), target))
            await asyncio.sleep(every_s)
            stop.set()
            await asyncio.gather(*clients)
        return answers

    answers = sorted(asyncio.run(run()), key=lambda a: a.received)
    delays, went_back = [], 0
    for i, (committed, target) in enumerate(commits):
        window_end = commits[i + 1][0] if i + 1 < len(commits) else float("inf")
        in_window = [a for a in answers if committed <= a.received < window_end and a.status == 200]
        first_new = next((a for a in in_window if a.body["predictions"]["r0"]["version"] == target), None)
        if first_new is None:
            delays.append(float("inf"))
            continue
        delays.append(first_new.received - committed)
        went_back += sum(
            1 for a in in_window if a.sent > first_new.received and a.body["predictions"]["r0"]["version"] != target
        )
    served = [d for d in delays if d != float("inf")]
    return {
        # A move not served before the next one counts as the slowest (p99 is then null: unmeasured).
        "deploy_to_serve_p50_s": _percentile_or_none(delays, 50),
        "deploy_to_serve_p99_s": _percentile_or_none(delays, 99),
        "moves_not_served_before_next": len(delays) - len(served),
        "non_2xx_during_moves": sum(a.status != 200 for a in answers),
        "version_went_back": went_back,
        "requests_during_moves": len(answers),
    }


def _percentile_or_none(values: list[float], q: float) -> float | None:
    """The q-th percentile without interpolating into an infinite value; None when that is where it lands."""
    value = float(np.percentile(values, q, method="higher"))
    return None if value == float("inf") else value


def bad_requests(url: str, image: bytes) -> dict[str, float]:
    from test_serve import BAD_REQUESTS

    with httpx.Client(base_url=url, timeout=60) as client:
        statuses = [client.post(path, **kwargs).status_code for _, path, kwargs, _, _ in BAD_REQUESTS]
        good = client.post("/v1/predict", files={"image": ("x.png", image, "image/png")}).status_code
    return {"bad_requests": len(statuses), "bad_requests_5xx": sum(s >= 500 for s in statuses), "good_after_bad": good}


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="timm kwarg (JSON value)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed phase")
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30, help="single-client requests for the HTTP overhead")
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kwargs = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.arg)}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        build_store(home, args.model, kwargs)
        with TaskStore(home) as store:
            side = int(store.get_backbone("bench").config["img_size"])
        image = test_image(side)
        result: dict[str, object] = {
            "model": args.model,
            "device": args.device,
            "img_size": side,
            "torch_threads": torch.get_num_threads(),
        }
        with ServeProcess(home, "--device", args.device, "--poll-s", str(args.poll_s), *LIMITS) as server:
            result.update(throughput(server.url, image, args.seconds))
            result.update(latency(server.url, image, args.seconds, float(result["images_per_s_reuse_T8"])))
            result.update(http_overhead(server.url, home, image, args.device, args.repeats))
            result.update(alias_moves(server.url, home, image, args.moves, every_s=args.poll_s + 4.0))
            result.update(bad_requests(server.url, image))
        result["server_exit_code"] = server.returncode
    report(result, args.json)


def report(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        goal = GOALS.get(key)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        verdict = ""
        if goal is not None:
            ok = value is not None and (value >= goal[0] if goal[1] else value <= goal[0])  # type: ignore[operator]
            verdict = f"  (goal {'>=' if goal[1] else '<='} {goal[0]})  {'ok' if ok else 'MISSED'}"
        print(f"{key:28s} {shown:>12s}{verdict}")


if __name__ == "__main__":
    main()
