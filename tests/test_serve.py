"""`cmem serve` (issue 9): real server subprocesses on free loopback ports, real HTTP.

One module-scoped store (a tiny random ViT; reuse tasks `low`, `high` and full-mode `lowf`) and
one shared server for the read-only checks; the tests that move aliases, tamper with files or
stop the process start their own.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits
from test_store_fixtures import pg_schema_url

from continual_mem.cli import cli
from continual_mem.serve.process import ServeProcess
from store import TaskStore

TINY = [
    "--arg",
    "img_size=16",
    "--arg",
    "patch_size=4",
    "--arg",
    "depth=2",
    "--arg",
    "embed_dim=48",
    "--arg",
    "num_heads=3",
]
TRAIN = ["--steps", "4", "--batch-size", "32"]
LOW, HIGH = "builtin:digits?classes=0,1,2", "builtin:digits?classes=7,8,9"
TOLERANCE = 1e-5


def cmem(home: Path, *args: str, db_url: str | None = None, artifacts: str | None = None) -> str:
    store = ["--db", db_url] if db_url else []
    store += ["--artifacts", artifacts] if artifacts else []
    result = CliRunner().invoke(cli, ["--home", str(home), *store, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def build_store(home: Path, db_url: str | None = None, artifacts: str | None = None) -> None:
    """Backbone `tiny`; tasks low (versions 1, 2), high, lowf (full mode); version 1 of each deployed."""
    cmem(home, "init", db_url=db_url, artifacts=artifacts)
    cmem(
        home,
        "backbone",
        "add",
        "tiny",
        "--model",
        "vit_tiny_patch16_224",
        "--random-init",
        *TINY,
        db_url=db_url,
        artifacts=artifacts,
    )
    for name, data, mode in (("low", LOW, "reuse"), ("high", HIGH, "reuse"), ("lowf", LOW, "full")):
        cmem(home, "task", "register", name, "--backbone", "tiny", "--data", data, db_url=db_url, artifacts=artifacts)
        cmem(home, "task", "train", name, "--data", data, "--mode", mode, *TRAIN, db_url=db_url, artifacts=artifacts)
        cmem(home, "deploy", f"{name}@1", db_url=db_url, artifacts=artifacts)
    cmem(home, "task", "train", "low", "--data", LOW, *TRAIN, "--seed", "1", db_url=db_url, artifacts=artifacts)


def digit_images(folder: Path) -> list[Path]:
    """Real 8x8 digits (one of each of 0, 1, 2, 7, 8, 9) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    paths = []
    for label in (0, 1, 2, 7, 8, 9):
        pixels = digits.images[np.flatnonzero(digits.target == label)[0]]
        path = folder / f"digit-{label}.png"
        Image.fromarray((pixels * 255 / 16).astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("serve-home")
    build_store(home)
    digit_images(home / "imgs")
    return home


@pytest.fixture(scope="module")
def images(home: Path) -> list[Path]:
    return sorted((home / "imgs").glob("*.png"))


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory):
    limits = ["--max-pixels", "1000000", "--max-images", "8", "--max-request-mb", "1", "--poll-s", "0.3"]
    log = tmp_path_factory.mktemp("logs") / "shared.log"
    with ServeProcess(home, *limits, env={"CMEM_RELOAD_TOKEN": "s3cret"}, log_path=log) as process:
        yield process
    assert process.returncode == 0, process.log()


def post_image(url: str, path: Path, **fields: str) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(f"{url}/v1/predict", files={"image": (path.name, f, "image/png")}, data=fields, timeout=30)


def expected_from_cmem_predict(home: Path, images: list[Path]) -> dict[str, dict]:
    out = cmem(home, "predict", *map(str, images), "--json", "--top-k", "3")
    return {Path(line["path"]).name: line["predictions"] for line in map(json.loads, out.splitlines())}


def assert_same(served: dict, expected: dict, tasks: list[str]) -> None:
    assert sorted(served) == sorted(tasks)
    for task in tasks:
        assert served[task]["version"] == expected[task]["version"]
        got, want = served[task]["top"], expected[task]["top"]
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert np.allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------------------------- answers
def test_served_probabilities_equal_cmem_predict_alone_and_batched(home, images, server) -> None:
    expected = expected_from_cmem_predict(home, images)
    everything = ["high", "low", "lowf"]
    for path in images:  # alone, one after another
        body = post_image(server.url, path).json()
        assert_same(body["predictions"], expected[path.name], everything)
        assert body["backbone_passes"] == 2  # one shared reuse pass + one for the full-mode task
        assert body["alias"] == "production" and len(body["request_id"]) == 32

    subsets = [["low"], ["high", "low"], ["lowf"], everything, ["low@1", "high"]]

    async def concurrently() -> list[tuple[str, list[str], dict]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def one(path: Path, tasks: list[str]) -> tuple[str, list[str], dict]:
                payload = {"image": base64.b64encode(path.read_bytes()).decode(), "tasks": tasks, "top_k": 3}
                response = await client.post("/v1/predict", json=payload)
                assert response.status_code == 200, response.text
                return path.name, [t.split("@")[0] for t in tasks], response.json()

            jobs = [one(path, tasks) for tasks in subsets for path in images]
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
            batch = client.post("/v1/predict/batch", files=files, data={"top_k": "3"})
            *answers, batch_response = await asyncio.gather(*jobs, batch)
            assert batch_response.status_code == 200, batch_response.text
            for path, result in zip(images, batch_response.json()["results"]):
                answers.append((path.name, everything, result))
            return answers

    answers = asyncio.run(concurrently())
    for name, tasks, body in answers:
        assert_same(body["predictions"], expected[name], tasks)
    assert max(body["batch"]["requests"] for _, _, body in answers if "batch" in body) > 1  # really batched


def test_tasks_lists_what_is_served(home, server) -> None:
    body = httpx.get(f"{server.url}/v1/tasks").json()
    with TaskStore(home) as store:
        deployed = {e.task: e for e in store.deployed("production")}
    assert [t["task"] for t in body["tasks"]] == sorted(deployed)
    for entry in body["tasks"]:
        want = deployed[entry["task"]]
        assert (entry["version"], entry["artifact_sha256"], entry["mode"]) == (
            want.version,
            want.artifact_sha256,
            want.mode,
        )
        assert entry["classes"] == want.class_names and entry["alias"] == "production"
    assert body["pending"] == [] and body["ready"] is True
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_deploy_and_rollback_reach_the_server_within_the_poll(home, images, server) -> None:
    with TaskStore(home) as store:
        for move, version in (
            (lambda: store.set_alias("low", "production", 2), 2),
            (lambda: store.rollback_alias("low", "production"), 1),
        ):
            move()
            moved = time.monotonic()
            while post_image(server.url, images[0], tasks="low").json()["predictions"]["low"]["version"] != version:
                assert time.monotonic() - moved < 0.3 + 5.0, "the move did not reach the server"
                time.sleep(0.02)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'cmem_served_version{task="low"} 1.0' in metrics
    assert sample(metrics, "cmem_deploy_to_serve_seconds_count") >= 2


def test_pinned_versions_answer_beside_the_deployed_ones(images, server) -> None:
    pinned = post_image(server.url, images[0], tasks="low@2,high").json()["predictions"]
    assert pinned["low"]["version"] == 2 and pinned["low"]["alias"] is None
    assert pinned["high"]["version"] == 1 and pinned["high"]["alias"] == "production"
    deployed = post_image(server.url, images[0], tasks="low").json()["predictions"]
    assert deployed["low"]["version"] == 1
    assert pinned["low"]["top"] != deployed["low"]["top"]  # another adapter really answered


def test_reload_endpoint_needs_the_token(server) -> None:
    assert httpx.post(f"{server.url}/v1/reload").status_code == 401
    assert httpx.post(f"{server.url}/v1/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = httpx.post(f"{server.url}/v1/reload", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and len(ok.json()["tasks"]) == 3


# ---------------------------------------------------------------------------------- bad input
def png(size: tuple[int, int] = (8, 8), mode: str = "L", fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt, **save)
    return buffer.getvalue()


def noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def upload(data: bytes, name: str = "x.png", **fields: str) -> dict:
    return {"files": {"image": (name, data, "application/octet-stream")}, "data": fields}


GOOD = png()
B64 = base64.b64encode(GOOD).decode()
BAD_REQUESTS = [
    # (what, path, request kwargs, status, words in the message)
    ("not an image", "/v1/predict", upload(b"hello, world", "notes.txt"), 422, "cannot read image notes.txt"),
    ("truncated PNG", "/v1/predict", upload(noise_png()[:6000]), 422, "truncated or corrupt"),
    ("empty file", "/v1/predict", upload(b""), 422, "empty"),
    ("too many pixels", "/v1/predict", upload(png((1200, 1000))), 413, "megapixels"),
    ("CMYK", "/v1/predict", upload(png((8, 8), "CMYK", "JPEG"), "c.jpg"), 415, "CMYK"),
    ("16-bit", "/v1/predict", upload(png((8, 8), "I;16")), 415, "16/32-bit"),
    ("animated", "/v1/predict", upload(animated_gif(), "a.gif"), 415, "animated"),
    ("body over the limit", "/v1/predict", upload(bytes(2 * 1024 * 1024)), 413, "limit"),
    (
        "too many images",
        "/v1/predict/batch",
        {"files": [("images", ("x.png", GOOD, "image/png"))] * 9},
        413,
        "limit is 8",
    ),
    (
        "two images at /v1/predict",
        "/v1/predict",
        {"files": [("image", ("x.png", GOOD, "image/png"))] * 2},
        422,
        "one image",
    ),
    (
        "no image",
        "/v1/predict",
        {"data": {"tasks": "low"}, "files": {"other": ("x", b"1")}},
        422,
        "unexpected file field",
    ),
    ("no image, JSON", "/v1/predict", {"json": {"tasks": ["low"]}}, 422, "no image"),
    ("unknown task", "/v1/predict", upload(GOOD, tasks="nope"), 404, "not deployed"),
    ("unknown version", "/v1/predict", upload(GOOD, tasks="low@99"), 404, "not found"),
    ("version past 2^63", "/v1/predict", upload(GOOD, tasks="low@99999999999999999999999"), 404, "no version"),
    ("invalid task name", "/v1/predict", upload(GOOD, tasks="Low!"), 422, "invalid task name"),
    ("a path for a task", "/v1/predict", upload(GOOD, tasks="../../etc/passwd"), 422, "invalid task name"),
    ("another alias", "/v1/predict", upload(GOOD, tasks="low@staging"), 422, "pin a version"),
    ("task twice", "/v1/predict", upload(GOOD, tasks="low,low@1"), 422, "more than once"),
    ("top_k 0", "/v1/predict", upload(GOOD, top_k="0"), 422, "top_k"),
    ("top_k text", "/v1/predict", upload(GOOD, top_k="many"), 422, "top_k"),
    ("top_k huge", "/v1/predict", {"json": {"image": B64, "top_k": 10**30}}, 422, "top_k"),
    ("top_k boolean", "/v1/predict", {"json": {"image": B64, "top_k": True}}, 422, "top_k"),
    ("tasks not strings", "/v1/predict", {"json": {"image": B64, "tasks": [1, 2]}}, 422, "tasks must be names"),
    ("unknown form field", "/v1/predict", upload(GOOD, colour="red"), 422, "unknown form field"),
    ("JSON not an object", "/v1/predict", {"json": [B64]}, 422, "must be an object"),
    (
        "broken JSON",
        "/v1/predict",
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        422,
        "not valid JSON",
    ),
    ("bad base64", "/v1/predict", {"json": {"image": "%%%"}}, 422, "not valid base64"),
    ("base64 of text", "/v1/predict", {"json": {"image": base64.b64encode(b"hi").decode()}}, 422, "cannot read image"),
    ("unknown JSON field", "/v1/predict", {"json": {"image": B64, "size": 3}}, 422, "unknown field"),
    ("images not a list", "/v1/predict/batch", {"json": {"images": B64}}, 422, "must be a list"),
    (
        "other content type",
        "/v1/predict",
        {"content": GOOD, "headers": {"content-type": "image/png"}},
        415,
        "multipart",
    ),
    (
        "broken multipart",
        "/v1/predict",
        {"content": b"--x\r\nnope", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        422,
        "image",
    ),
    ("unknown path", "/v2/predict", upload(GOOD), 404, "Not Found"),
]


def test_bad_requests_get_a_4xx_naming_the_problem(server) -> None:
    failures = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for what, path, kwargs, status, words in BAD_REQUESTS:
            response = client.post(path, **kwargs)
            message = response.json()["error"]["message"] if response.status_code >= 400 else response.text
            if response.status_code != status or words not in message:
                failures.append(f"{what}: {response.status_code} {message!r} (wanted {status}, {words!r})")
        assert client.get("/v1/predict").status_code == 405
        assert client.post("/v1/predict", **upload(GOOD)).status_code == 200  # still serving
    assert not failures, "\n".join(failures)
    assert len(BAD_REQUESTS) >= 25
    metrics = httpx.get(f"{server.url}/metrics").text
    server_errors = [  # /readyz answered 503 while the server loaded: that one is by design
        line
        for line in metrics.splitlines()
        if line.startswith("cmem_requests_total") and 'status="5' in line and "/readyz" not in line
    ]
    assert not server_errors, server_errors


def test_metrics_expose_the_serving_figures_with_bounded_labels(server) -> None:
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        'cmem_requests_total{endpoint="/v1/predict",status="200"}',
        "cmem_request_seconds_bucket",
        "cmem_queue_seconds_count",
        "cmem_batch_images_count",
        "cmem_tasks_per_pass_count",
        "cmem_queue_images",
        'cmem_reloads_total{result="ok"}',
        "cmem_deploy_to_serve_seconds_count",
        'cmem_task_images_total{task="low"}',
        "cmem_ready 1.0",
    ):
        assert name in metrics, name
    tasks = {line.split('task="')[1].split('"')[0] for line in metrics.splitlines() if 'task="' in line}
    assert tasks <= {"low", "high", "lowf"}
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in metrics.splitlines() if 'endpoint="' in line}
    assert endpoints <= {
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/tasks",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/reload",
        "other",
    }


def sample(metrics: str, name: str) -> float:
    return float(next(line for line in metrics.splitlines() if line.startswith(name + " ")).split()[1])


# ---------------------------------------------------------------------------------- failures and stops
def test_tampered_artifact_keeps_the_old_version_serving(home, images, tmp_path) -> None:
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    with TaskStore(copy) as store:
        artifact = store.artifacts.verified_path(*_artifact_key(store, "low@2"))
        artifact.write_bytes(artifact.read_bytes()[:-8] + b"tampered")
        with ServeProcess(copy, "--poll-s", "0.2") as server:
            store.set_alias("low", "production", 2)
            deadline = time.monotonic() + 10
            while not (pending := httpx.get(f"{server.url}/v1/tasks").json()["pending"]):
                assert time.monotonic() < deadline, "the failed reload was not reported"
                time.sleep(0.05)
            assert pending[0]["task"] == "low" and pending[0]["wanted_version"] == 2
            assert pending[0]["serving_version"] == 1 and "corrupt" in pending[0]["error"]
            assert post_image(server.url, images[0], tasks="low").json()["predictions"]["low"]["version"] == 1
            metrics = httpx.get(f"{server.url}/metrics").text
            assert 'cmem_reload_failing{task="low"} 1.0' in metrics
            assert "cannot load low@2" in server.log()
    assert server.returncode == 0


def _artifact_key(store: TaskStore, ref: str) -> tuple[str, str]:
    from store.artifacts import artifact_key

    version = store.get_version(ref)
    return artifact_key(version.artifact_sha256), version.artifact_sha256


def test_sigterm_answers_every_request_in_flight(home, images) -> None:
    with ServeProcess(home, "--max-batch", "16") as server:
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]

        async def traffic() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                requests = [asyncio.create_task(client.post("/v1/predict/batch", files=files)) for _ in range(24)]
                await asyncio.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)
                return [r.status_code for r in await asyncio.gather(*requests)]

        statuses = asyncio.run(traffic())
        assert server.stop() == 0, server.log()
    assert statuses == [200] * 24
    assert "stopped" in server.log()


def test_a_full_queue_answers_503_with_retry_after_at_once(home, images) -> None:
    with ServeProcess(home, "--max-batch", "1", "--max-queue", "1") as server:
        payload = {"image": base64.b64encode(images[0].read_bytes()).decode()}

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/v1/predict", json=payload) for _ in range(48)))

        responses = asyncio.run(flood())
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 503}, statuses
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)


@pytest.mark.postgres
def test_two_replicas_on_postgresql_both_switch_on_one_deploy(tmp_path, images) -> None:
    """Stateless replicas: each its own --home, one PostgreSQL database and one artifact root."""
    artifacts = str(tmp_path / "artifacts")
    with pg_schema_url() as url:
        build_store(tmp_path / "admin", db_url=url, artifacts=artifacts)
        # A 60 s poll: only PostgreSQL's NOTIFY can bring the move within the deadline below.
        replica = {"db_url": url, "artifacts": artifacts}
        with (
            ServeProcess(tmp_path / "r1", "--poll-s", "60", **replica) as one,
            ServeProcess(tmp_path / "r2", "--poll-s", "60", **replica) as two,
        ):
            with TaskStore(tmp_path / "admin", db_url=url, artifact_root=artifacts) as store:
                store.set_alias("low", "production", 2)
            moved = time.monotonic()
            for server in (one, two):
                seen = []
                while not seen or seen[-1] != 2:
                    seen.append(post_image(server.url, images[0], tasks="low").json()["predictions"]["low"]["version"])
                    assert time.monotonic() - moved < 10, f"{server.url} still answers {seen[-1]}"
                for _ in range(5):  # never goes back once it answered the new version
                    assert post_image(server.url, images[0], tasks="low").json()["predictions"]["low"]["version"] == 2
            assert "listening for alias moves" in one.log()
        assert (one.returncode, two.returncode) == (0, 0)


# ---------------------------------------------------------------------------------- start-up
def test_readyz_and_predict_answer_503_until_the_first_load(home) -> None:
    from continual_mem.serve.api import create_app
    from continual_mem.serve.config import ServeConfig
    from continual_mem.serve.server import ServerState

    with TaskStore(home) as store:
        state = ServerState(ServeConfig(), store, "test")
        app = create_app(state)

        async def probe() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                before = await client.get("/readyz")
                refused = await client.post("/v1/predict", files={"image": ("x.png", GOOD)})
                await state.deployment.refresh()
                return before, refused, await client.get("/readyz")

        before, refused, after = asyncio.run(probe())
    assert before.status_code == 503 and before.json()["status"] == "loading"
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert after.status_code == 200 and after.json() == {"status": "ready", "generation": 1, "tasks": 3}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--max-wait-ms", "-1"], "--max-wait-ms"),
        (["--poll-s", "0"], "--poll-s"),
        (["--alias", "Prod!"], "invalid alias"),
        (["--device", "cuda"], "no CUDA device"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(home, args, words) -> None:
    result = CliRunner().invoke(cli, ["--home", str(home), "serve", *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert words in lines[0], lines[0]


def test_serve_refuses_a_port_in_use(home) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["--home", str(home), "serve", "--port", str(port)])
    assert (
        result.exit_code == 1
        and result.output.strip() == f"Error: cannot listen on 127.0.0.1:{port}: address already in use"
    )


def test_the_serving_benchmark_runs_and_reports_every_figure(tmp_path) -> None:
    """benchmarks/serve.py end to end on a tiny model and short phases (its figures are in the README)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve.py"
    tiny = ["--model", "vit_tiny_patch16_224", "--arg", "img_size=16", "--arg", "patch_size=8", "--arg", "depth=1"]
    quick = ["--seconds", "0.5", "--moves", "2", "--poll-s", "0.2", "--repeats", "3", "--json"]
    done = subprocess.run([sys.executable, str(script), *tiny, *quick], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in (
        "images_per_s_T1",
        "images_per_s_T32",
        "throughput_T32_over_T1",
        "reuse_over_full_T8",
        "p50_ms_c1",
        "p50_ms_c16",
        "p99_ms_c16",
        "p99_c16_over_batch_time",
        "http_overhead_c1",
        "deploy_to_serve_p99_s",
    ):
        assert result[key] > 0, key
    assert (result["non_2xx_during_moves"], result["version_went_back"], result["bad_requests_5xx"]) == (0, 0, 0)
    assert result["moves_not_served_before_next"] == 0
    assert result["bad_requests"] >= 25 and result["good_after_bad"] == 200 and result["server_exit_code"] == 0


def test_the_engine_detaches_versions_beyond_its_capacity_and_answers_the_same(home, images) -> None:
    """In process: an Engine holding one version at a time still answers every version exactly."""
    import torch

    from continual_mem.images import decode_image
    from continual_mem.serve.engine import Engine, Job
    from continual_mem.serve.snapshot import SnapshotLoader, empty_snapshot

    with TaskStore(home) as store:
        loader = SnapshotLoader(store, torch.device("cpu"))
        snapshot = loader.build(store.deployed("production"), empty_snapshot("production"), 1)
        low2 = loader.pinned("low", 2, snapshot)
    image = (decode_image(images[0]),)
    jobs = [Job(image, (snapshot.tasks["low"],), 3), Job(image, (low2,), 3), Job(image, (snapshot.tasks["high"],), 3)]
    roomy, tight = Engine(torch.device("cpu")), Engine(torch.device("cpu"), capacity=1)
    for job in jobs + jobs:
        want = roomy.run([job])[0][0].per_image
        assert tight.run([job])[0][0].per_image == want
        assert len(tight._models[id(snapshot.tasks["low"].backbone)].tasks) == 1
