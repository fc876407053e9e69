"""Issue 14's table of bad inputs and faults over every `cmem` command, run by `test_fuzz.py`.

A `Case` is the arguments (which may name `{home}`, the store's copy, and `{in}`, the prepared
inputs), the words the one `Error:` line must hold, the exit code, and a `setup` that damages the
copy first (the store damage functions are here).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cli_harness import HIGH_DATA, LOW_DATA, TINY_ARGS, flip_bit, ok, sql

HUGE = "99999999999999999999999"
TINY = " ".join(TINY_ARGS)
TRAIN = f"task train low --data {LOW_DATA} --steps 1"
SWEEP = f"task sweep low --data {LOW_DATA} --steps 1"
READ_ONLY_DB = "--db sqlite:///file:{home}/store.db?mode=ro&uri=true"


# ------------------------------------------------------------------------------------ store damage
def corrupt_database(home: Path) -> None:
    (home / "store.db").write_bytes(np.random.default_rng(0).bytes(8192))


def empty_database(home: Path) -> None:
    (home / "store.db").write_bytes(b"")


def future_schema(home: Path) -> None:
    sql(home / "store.db", "UPDATE alembic_version SET version_num = '0099_future'")


def file_instead_of(relative: str) -> Callable[[Path], None]:
    def setup(home: Path) -> None:
        target = home / relative
        shutil.rmtree(target)
        target.write_text("a file")

    return setup


def artifact_of(home: Path, task: str) -> Path:
    query = "SELECT artifact_sha256 FROM task_versions JOIN tasks ON tasks.id = task_id WHERE name = ?"
    ((sha,),) = sql(home / "store.db", query, task)
    return home / "artifacts" / sha[:2] / f"{sha}.safetensors"


def backbone_weights(home: Path) -> Path:
    ((sha,),) = sql(home / "store.db", "SELECT weights_file_sha256 FROM backbones WHERE name = 'tiny'")
    return home / "artifacts" / sha[:2] / f"{sha}.safetensors"


def flipped_artifact(home: Path) -> None:
    flip_bit(artifact_of(home, "low"))


def missing_artifact(home: Path) -> None:
    artifact_of(home, "low").unlink()


def flipped_backbone(home: Path) -> None:
    flip_bit(backbone_weights(home))


def failed_version(home: Path) -> None:
    """low@2: a version whose training failed."""
    sql(
        home / "store.db",
        "INSERT INTO task_versions (task_id, number, status, mode, memory_size, hyperparams, failure_reason,"
        " created_at, finished_at) SELECT id, 2, 'failed', 'reuse', 5, '{}', 'boom', '2026-01-01 00:00:00',"
        " '2026-01-01 00:00:01' FROM tasks WHERE name = 'low'",
    )


def task_on_another_backbone(home: Path) -> None:
    ok(
        home,
        "backbone",
        "add",
        "other",
        "--model",
        "vit_tiny_patch16_224",
        "--random-init",
        *TINY_ARGS,
        "--arg",
        "depth=1",
    )
    ok(home, "task", "register", "other-low", "--backbone", "other", "--classes", "0,1,2")


# ------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    id: str
    args: str
    match: str
    code: int = 1
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    # --- the store itself: where it is, what it is, which schema
    Case("home-is-a-file-init", "--home {in}/a-file init", "a-file is a file, not a folder"),
    Case("home-is-a-file-list", "--home {in}/a-file task list", "no store in"),
    Case("no-store-list", "--home {in}/nothing task list", "no store in"),
    Case("no-store-deployed", "--home {in}/nothing deployed", "no store in"),
    Case("no-store-db-current", "--home {in}/nothing db current", "no store in"),
    Case("no-store-predict", "--home {in}/nothing predict {in}/digits", "no store in"),
    Case("artifacts-tmp-is-a-file", "task list", "tmp is a file, not a folder", setup=file_instead_of("artifacts/tmp")),
    Case("artifacts-is-a-file", "deployed", "artifacts is a file, not a folder", setup=file_instead_of("artifacts")),
    Case("corrupt-db-list", "task list", "is not a SQLite database", setup=corrupt_database),
    Case("corrupt-db-init", "init", "is not a SQLite database", setup=corrupt_database),
    Case("corrupt-db-current", "db current", "is not a SQLite database", setup=corrupt_database),
    Case("corrupt-db-upgrade", "db upgrade", "is not a SQLite database", setup=corrupt_database),
    Case("corrupt-db-predict", "predict {in}/digits", "is not a SQLite database", setup=corrupt_database),
    Case("corrupt-db-scenario-runs", "scenario runs", "is not a SQLite database", setup=corrupt_database),
    Case("corrupt-db-demo", "demo", "is not a SQLite database", setup=corrupt_database),
    Case("empty-db-list", "task list", "no store in", setup=empty_database),
    Case("future-schema-list", "task list", "newer than this code", setup=future_schema),
    Case("future-schema-upgrade", "db upgrade", "newer than this code", setup=future_schema),
    Case("future-schema-init", "init", "newer than this code", setup=future_schema),
    Case("future-schema-deployed", "deployed", "newer than this code", setup=future_schema),
    Case("db-mysql-driver", "--db mysql://u@localhost/cmem task list", "pip install mysqlclient"),
    Case("db-psycopg3-driver", "--db postgresql+psycopg://u@localhost/cmem deployed", "pip install psycopg"),
    Case("db-mysql-upgrade", "--db mysql://u@localhost/cmem db upgrade", "pip install mysqlclient"),
    Case("db-unknown-dialect", "--db nosuch://x/y task list", "nosuch"),
    Case("db-not-a-url", "--db not-a-url task list", "not-a-url"),
    Case("db-sqlite-missing-folder", "--db sqlite:////no/such/folder/x.db task list", "unable to open database file"),
    Case("read-only-register", f"{READ_ONLY_DB} task register x --backbone tiny --classes a,b", "readonly"),
    Case("read-only-import", f"{READ_ONLY_DB} import {{in}}/export.safetensors --task copy", "readonly"),
    Case("read-only-deploy", f"{READ_ONLY_DB} deploy high@1 --alias staging", "readonly"),
    Case("read-only-train", f"{READ_ONLY_DB} {TRAIN}", "readonly"),
    # --- backbones
    Case("backbone-exists", f"backbone add tiny --model vit_tiny_patch16_224 --random-init {TINY}", "already exists"),
    Case("backbone-bad-name", "backbone add Tiny --model vit_tiny_patch16_224 --random-init", "invalid backbone name"),
    Case(
        "backbone-no-weights-file",
        "backbone add b --model vit_tiny_patch16_224 --weights {in}/no.pth",
        "does not exist",
    ),
    Case("backbone-weights-suffix", "backbone add b --model vit_tiny_patch16_224 --weights {in}/notes.txt", "suffix"),
    Case(
        "backbone-garbage-weights",
        f"backbone add b --model vit_tiny_patch16_224 --weights {{in}}/garbage.safetensors {TINY}",
        "cannot load",
    ),
    Case(
        "backbone-weights-and-random",
        "backbone add b --model vit_tiny_patch16_224 --random-init --weights {in}/plain.safetensors",
        "exclude each other",
    ),
    Case("backbone-unknown-model", "backbone add b --model no_such_model --random-init", "no model named"),
    Case("backbone-not-a-vit", "backbone add b --model resnet18 --random-init", "not a timm VisionTransformer"),
    Case(
        "backbone-arg-type",
        "backbone add b --model vit_tiny_patch16_224 --random-init --arg img_size=abc",
        "img_size='abc'",
    ),
    Case(
        "backbone-arg-unknown", "backbone add b --model vit_tiny_patch16_224 --random-init --arg bogus_kw=1", "bogus_kw"
    ),
    Case(
        "backbone-arg-no-equals", "backbone add b --model vit_tiny_patch16_224 --random-init --arg depth", "name=value"
    ),
    Case("backbone-arg-bad-name", "backbone add b --model vit_tiny_patch16_224 --random-init --arg 1x=2", "name=value"),
    Case("backbone-hub-offline", f"backbone add b --model vit_tiny_patch16_224 {TINY}", "--weights FILE"),
    Case("backbone-no-model", "backbone add b --random-init", "Missing option '--model'", code=2),
    Case("pretrain-exists", "backbone pretrain tiny", "already exists"),
    Case("pretrain-epochs-0", "backbone pretrain b --epochs 0", "epochs must be >= 1"),
    Case("pretrain-batch-0", "backbone pretrain b --batch-size 0", "batch size must be >= 1"),
    Case("pretrain-lr-negative", "backbone pretrain b --lr -1", "learning rate must be > 0"),
    Case("pretrain-unknown-data", "backbone pretrain b --data builtin:nosuch", "unknown built-in data set"),
    Case("backbone-list-option", "backbone list --bogus", "No such option", code=2),
    # --- task register
    Case("register-exists", "task register low --backbone tiny --classes a,b", "already exists"),
    Case("register-upper-case", "task register Low --backbone tiny --classes a,b", "invalid task name"),
    Case("register-too-long", f"task register {'x' * 65} --backbone tiny --classes a,b", "invalid task name"),
    Case("register-no-backbone", "task register x --backbone nope --classes a,b", "backbone 'nope' not found"),
    Case("register-both", f"task register x --backbone tiny --classes a,b --data {LOW_DATA}", "exactly one", code=2),
    Case("register-neither", "task register x --backbone tiny", "exactly one", code=2),
    Case("register-repeated-class", "task register x --backbone tiny --classes a,a", "repeated"),
    Case("register-blank-class", "task register x --backbone tiny --classes a,,b", "non-empty"),
    Case("register-missing-data", "task register x --backbone tiny --data {in}/missing", "does not exist"),
    Case("register-unknown-builtin", "task register x --backbone tiny --data builtin:nosuch", "unknown built-in"),
    Case("register-bad-class-ids", "task register x --backbone tiny --data builtin:digits?classes=0,99", "bad options"),
    Case("register-unknown-option", "task register x --backbone tiny --data builtin:digits?bogus=1", "unknown option"),
    Case("register-empty-data", "task register x --backbone tiny --data {in}/empty", "no class sub-folders"),
    # --- task train
    Case("train-no-task", f"task train nope --data {LOW_DATA}", "task 'nope' not found"),
    Case("train-memory-0", f"{TRAIN} --memory 0", "--memory must be at least 1"),
    Case("train-memory-negative", f"{TRAIN} --memory -1", "--memory must be at least 1"),
    Case("train-memory-huge", f"{TRAIN} --memory 100000", "more memory tokens per layer than the 17 tokens"),
    Case("train-memory-absurd", f"{TRAIN} --memory 99999999", "more memory tokens per layer than the 17 tokens"),
    Case("train-memory-not-int", f"{TRAIN} --memory abc", "is not a valid integer", code=2),
    Case("train-device-tpu", f"{TRAIN} --device tpu", "device 'tpu' is not a device"),
    Case("train-device-bad-index", f"{TRAIN} --device cuda:x", "device 'cuda:x' is not a device"),
    Case("train-device-cuda", f"{TRAIN} --device cuda", "no CUDA device"),
    Case("train-epochs-0", f"task train low --data {LOW_DATA} --epochs 0", "epochs must be >= 1"),
    Case("train-steps-0", f"task train low --data {LOW_DATA} --steps 0", "steps must be >= 1"),
    Case("train-batch-0", f"{TRAIN} --batch-size 0", "batch size must be >= 1"),
    Case("train-lr-0", f"{TRAIN} --lr 0", "learning rates must be > 0"),
    Case("train-lr-nan", f"{TRAIN} --lr nan", "learning rates must be > 0"),
    Case("train-head-lr-negative", f"{TRAIN} --head-lr -1", "learning rates must be > 0"),
    Case("train-val-split-high", f"{TRAIN} --val-split 1.5", "validation split must be in [0, 1)"),
    Case("train-val-split-negative", f"{TRAIN} --val-split -0.1", "validation split must be in [0, 1)"),
    Case("train-mode", f"{TRAIN} --mode bogus", "Invalid value for '--mode'", code=2),
    Case("train-missing-data", "task train low --data {in}/missing --steps 1", "does not exist"),
    Case("train-data-is-a-file", "task train low --data {in}/notes.txt --steps 1", "is not a directory"),
    Case("train-empty-data", "task train low --data {in}/empty --steps 1", "no class sub-folders"),
    Case(
        "train-other-classes", "task train low --data builtin:digits?classes=3,4,5 --steps 1", "are not those of task"
    ),
    Case("train-unreadable-image", "task train low --data {in}/corrupt --steps 1", "broken.png"),
    Case("train-empty-class", "task train low --data {in}/empty-class --steps 1", "holds no images"),
    Case(
        "train-skip-bad-empties-a-class", "task train low --data {in}/all-bad --steps 1 --skip-bad", "no readable image"
    ),
    Case("train-image-bomb", "task train low --data {in}/bomb-data --steps 1", "bomb.png is 10000x10000"),
    # --- several tasks together, sweeps (issue 10)
    Case("together-same-task-twice", f"task train low low --data {LOW_DATA} --steps 1", "duplicated variant"),
    Case(
        "together-other-backbone",
        f"task train low other-low --data {LOW_DATA} --steps 1",
        "different backbones",
        setup=task_on_another_backbone,
    ),
    Case(
        "together-other-images",
        f"task train low high --data {LOW_DATA} --data {HIGH_DATA} --steps 1",
        "must label the same images",
    ),
    Case("train-cache-gb-text", f"{TRAIN} --cache-gb lots", "--cache-gb must be a number"),
    Case("train-cache-gb-nan", f"{TRAIN} --cache-gb nan", "--cache-gb must be a finite number >= 0"),
    Case("train-clip-grad-nan", f"{TRAIN} --clip-grad nan", "--clip-grad must be a positive finite number"),
    Case("train-patience-0", f"{TRAIN} --patience 0", "--patience must be at least 1"),
    Case("train-lr-inf", f"{TRAIN} --lr inf", "learning rates must be > 0 and finite"),
    Case("sweep-no-task", f"task sweep nope --data {LOW_DATA} --steps 1", "task 'nope' not found"),
    Case("sweep-memory-empty", f"{SWEEP} --memory ''", "--memory gives no value"),
    Case("sweep-memory-0", f"{SWEEP} --memory 0,5", "--memory must be at least 1"),
    Case("sweep-memory-text", f"{SWEEP} --memory 1,five", "--memory takes comma-separated ints"),
    Case("sweep-lr-nan", f"{SWEEP} --lr 1e-3,nan", "--lr must be positive finite numbers"),
    Case("sweep-lr-negative", f"{SWEEP} --lr -1e-3", "--lr must be positive finite numbers"),
    Case("sweep-duplicated", f"{SWEEP} --memory 1,5 --lr 1e-3,0.001", "duplicated variant"),
    Case("sweep-seeds-empty", f"{SWEEP} --seeds ,", "--seeds takes comma-separated ints"),
    Case("sweep-cache-gb-text", f"{SWEEP} --cache-gb 2GB", "--cache-gb must be a number"),
    Case(
        "sweep-other-classes", "task sweep low --data builtin:digits?classes=3,4,5 --steps 1", "are not those of task"
    ),
    # --- task list, show, versions, delete, tag
    Case("list-no-backbone", "task list --backbone nope", "backbone 'nope' not found"),
    Case("list-bad-tag", "task list --tag Bad", "invalid tag key"),
    Case("show-no-task", "task show nope", "task 'nope' not found"),
    Case("show-bad-name", "task show ../etc", "invalid task name"),
    Case("versions-no-task", "task versions nope", "task 'nope' not found"),
    Case("versions-bad-status", "task versions low --status bogus", "Invalid value for '--status'", code=2),
    Case("delete-no-version", "task delete low", "give the version to delete"),
    Case("delete-aliased", "task delete low@1", "target of alias 'production'"),
    Case("delete-missing-version", "task delete low@99", "version low@99 not found"),
    Case("delete-huge-version", f"task delete low@{HUGE}", "version numbers are at most 2147483647"),
    Case("delete-no-task", "task delete nope@1", "task 'nope' not found"),
    Case("delete-version-0", "task delete low@0", "version numbers start at 1"),
    Case("delete-empty-target", "task delete low@", "invalid reference"),
    Case("tag-no-equals", "task tag low noequals", "must look like key=value", code=2),
    Case("tag-bad-key", "task tag low Bad=1", "invalid tag key"),
    Case("tag-missing-version", "task tag low a=b --version 99", "version low@99 not found"),
    Case("tag-huge-version", f"task tag low a=b --version {HUGE}", "version numbers are at most 2147483647"),
    Case("tag-version-0", "task tag low a=b --version 0", "version must be an integer >= 1"),
    Case("tag-no-task", "task tag nope a=b", "task 'nope' not found"),
    Case("tag-long-value", f"task tag low a={'v' * 501}", "at most 500 characters"),
    # --- deploy, rollback, history, deployed
    Case("deploy-missing-version", "deploy low@9", "version low@9 not found"),
    Case("deploy-no-task", "deploy nope", "task 'nope' not found"),
    Case("deploy-huge-version", f"deploy low@{HUGE}", "version numbers are at most 2147483647"),
    Case("deploy-bad-alias-ref", "deploy low@Bad", "invalid reference"),
    Case("deploy-digit-alias", "deploy low@1 --alias 123", "must not be only digits"),
    Case("deploy-bad-alias", "deploy low@1 --alias Bad", "invalid alias"),
    Case("deploy-no-task-name", "deploy @1", "invalid task name"),
    Case("deploy-failed-version", "deploy low@2", "the version is failed, not ready", setup=failed_version),
    Case("rollback-nothing-earlier", "rollback high", "no earlier version"),
    Case("rollback-no-task", "rollback nope", "task 'nope' not found"),
    Case("rollback-no-alias", "rollback low --alias nosuch", "alias 'nosuch' of task 'low' not found"),
    Case("history-no-task", "history nope", "task 'nope' not found"),
    Case("history-no-alias", "history low --alias nosuch", "alias 'nosuch' of task 'low' not found"),
    Case("history-digit-alias", "history low --alias 123", "must not be only digits"),
    Case("deployed-bad-alias", "deployed --alias Bad", "invalid alias"),
    # --- export
    Case("export-missing-version", "export low@99 {in}/out.safetensors", "version low@99 not found"),
    Case("export-huge-version", f"export low@{HUGE} {{in}}/out.safetensors", "version numbers are at most 2147483647"),
    Case("export-exists", "export low@1 {in}/notes.txt", "already exists"),
    Case("export-to-proc", "export low@1 /proc/low.safetensors", "cannot write /proc/low.safetensors"),
    Case("export-missing-folder", "export low@1 {in}/no/such/low.safetensors", "does not exist"),
    Case("export-to-a-folder", "export low@1 {in}/empty", "is a directory", code=2),
    Case("export-no-task", "export nope@1 {in}/out.safetensors", "task 'nope' not found"),
    Case("export-failed-version", "export low@2 {in}/out.safetensors", "is failed, not ready", setup=failed_version),
    Case("export-missing-artifact", "export low@1 {in}/out.safetensors", "is missing", setup=missing_artifact),
    Case("export-corrupt-artifact", "export low@1 {in}/out.safetensors", "is corrupt", setup=flipped_artifact),
    # --- import
    Case("import-missing-file", "import {in}/no.safetensors", "not found"),
    Case("import-text-file", "import {in}/notes.txt", "not a valid safetensors file"),
    Case("import-not-an-export", "import {in}/plain.safetensors", "not a continual-mem export"),
    Case("import-truncated", "import {in}/truncated.safetensors --task copy", "truncated"),
    Case("import-flipped-bit", "import {in}/flipped.safetensors --task copy", "digest"),
    Case("import-changed-classes", "import {in}/classes.safetensors --task copy", "digest"),
    Case("import-changed-metrics", "import {in}/metrics.safetensors --task copy", "digest"),
    Case("import-changed-depth", "import {in}/depth.safetensors --task copy", "digest"),
    Case("import-no-digest", "import {in}/no-digest.safetensors --task copy", "has no digest"),
    Case("import-other-classes", "import {in}/export.safetensors --task high", "has classes"),
    Case(
        "import-other-backbone",
        "import {in}/export.safetensors --task other-low",
        "uses another backbone",
        setup=task_on_another_backbone,
    ),
    Case("import-bad-task-name", "import {in}/export.safetensors --task Bad", "invalid task name"),
    Case(
        "import-wrong-key",
        "import {in}/signed.safetensors --task copy",
        "signature does not match CMEM_EXPORT_KEY",
        env={"CMEM_EXPORT_KEY": "key-two"},
    ),
    Case(
        "import-unsigned-with-key",
        "import {in}/export.safetensors --task copy",
        "is not signed",
        env={"CMEM_EXPORT_KEY": "key-one"},
    ),
    # --- predict
    Case("predict-no-path", "predict", "Missing argument", code=2),
    Case("predict-missing-path", "predict {in}/missing.png", "does not exist"),
    Case("predict-no-images", "predict {in}/empty", "holds no images"),
    Case("predict-text-file", "predict {in}/notes.txt", "notes.txt: not an image format PIL knows"),
    Case("predict-empty-file", "predict {in}/empty.png", "empty.png: not an image format PIL knows"),
    Case("predict-truncated", "predict {in}/truncated.png", "truncated.png: truncated or corrupt"),
    Case("predict-bomb", "predict {in}/bomb.png", "bomb.png is 10000x10000"),
    Case("predict-animated", "predict {in}/animated.gif", "is animated"),
    Case("predict-cmyk", "predict {in}/cmyk.jpg", "pixel mode CMYK"),
    Case("predict-16-bit", "predict {in}/deep.png", "pixel mode I;16"),
    Case("predict-top-k-0", "predict {in}/digits --top-k 0", "--top-k must be at least 1"),
    Case("predict-batch-0", "predict {in}/digits --batch-size 0", "--batch-size must be at least 1"),
    Case("predict-batch-negative", "predict {in}/digits --batch-size -1", "--batch-size must be at least 1"),
    Case("predict-max-pixels-0", "predict {in}/digits --max-pixels 0", "--max-pixels must be at least 1"),
    Case("predict-task-and-alias", "predict {in}/digits --task low --alias production", "not both"),
    Case("predict-nothing-deployed", "predict {in}/digits --alias staging", "no task is deployed under alias"),
    Case("predict-no-task", "predict {in}/digits --task nope", "task 'nope' not found"),
    Case("predict-missing-version", "predict {in}/digits --task low@99", "version low@99 not found"),
    Case("predict-huge-version", f"predict {{in}}/digits --task low@{HUGE}", "version numbers are at most 2147483647"),
    Case("predict-task-twice", "predict {in}/digits --task low --task low@1", "more than once"),
    Case("predict-no-alias", "predict {in}/digits --task low@canary", "alias 'canary' of task 'low' not found"),
    Case("predict-failed-version", "predict {in}/digits --task low@2", "not ready", setup=failed_version),
    Case("predict-corrupt-artifact", "predict {in}/digits", "is corrupt", setup=flipped_artifact),
    Case("predict-missing-artifact", "predict {in}/digits", "is missing", setup=missing_artifact),
    Case("predict-corrupt-backbone", "predict {in}/digits", "is corrupt", setup=flipped_backbone),
    # --- serve (every refusal comes before a server starts)
    Case("serve-digit-alias", "serve --alias 123", "must not be only digits"),
    Case("serve-bad-alias", "serve --alias Bad", "invalid alias"),
    Case("serve-device", "serve --device tpu", "device 'tpu' is not a device"),
    Case("serve-port-0", "serve --port 0", "--port must be at least 1"),
    Case("serve-port-high", "serve --port 70000", "--port must be in 1..65535"),
    Case("serve-max-batch-0", "serve --max-batch 0", "--max-batch must be at least 1"),
    Case("serve-max-pixels-0", "serve --max-pixels 0", "--max-pixels must be at least 1"),
    Case("serve-poll", "serve --poll-s 0", "--poll-s must be in [0.05, 3600]"),
    Case("serve-queue", "serve --max-queue 2 --max-batch 4", "--max-queue (2) must be at least --max-batch (4)"),
    Case("serve-unknown-host", "serve --host nosuch.invalid", "--host 'nosuch.invalid'"),
    Case("serve-no-store", "--home {in}/nothing serve", "no store in"),
    # --- eval
    Case("eval-missing-version", f"eval low@7 --data {LOW_DATA}", "version low@7 not found"),
    Case("eval-huge-version", f"eval low@{HUGE} --data {LOW_DATA}", "version numbers are at most 2147483647"),
    Case("eval-no-task", f"eval nope --data {LOW_DATA}", "task 'nope' not found"),
    Case("eval-other-classes", "eval low --data builtin:digits?classes=3,4,5", "are not those of task"),
    Case("eval-missing-data", "eval low --data {in}/missing", "does not exist"),
    Case("eval-no-data", "eval low", "Missing option '--data'", code=2),
    Case("eval-image-bomb", "eval low --data {in}/bomb-data", "bomb.png is 10000x10000"),
    Case("eval-failed-version", f"eval low@2 --data {LOW_DATA}", "not ready", setup=failed_version),
    Case("eval-corrupt-artifact", f"eval low --data {LOW_DATA}", "is corrupt", setup=flipped_artifact),
    # --- gc, db, init, demo
    Case("gc-option", "gc --bogus", "No such option", code=2),
    Case("db-no-command", "db bogus", "No such command", code=2),
    Case("init-option", "init --bogus", "No such option", code=2),
    Case("demo-option", "demo --bogus", "No such option", code=2),
    Case("demo-epochs-0", "demo --epochs 0", "--epochs must be at least 1"),
    Case("demo-memory-0", "demo --memory 0", "--memory must be at least 1"),
    # --- scenarios (a tiny random backbone wherever one would load)
    Case("scenario-unknown", "scenario run nosuch -s memory", "unknown scenario 'nosuch'"),
    Case("scenario-unknown-strategy", "scenario run split-digits -s bogus --backbone random", "unknown strategy"),
    Case("scenario-bad-memory-strategy", "scenario run split-digits -s memory-x --backbone random", "memory-M"),
    Case(
        "scenario-absurd-memory",
        "scenario run split-digits -s memory-99999999 --backbone random",
        "more memory tokens per layer than the 65 tokens",
    ),
    Case("scenario-memory-0", "scenario run split-digits -s memory-0 --backbone random", "memory size must be >= 1"),
    Case(
        "scenario-adapter-0", "scenario run split-digits -s adapter-0 --backbone random", "bottleneck size must be >= 1"
    ),
    Case(
        "scenario-bad-adapter-strategy",
        "scenario run split-digits -s memory-5+adapter-x --backbone random",
        "expected memory-M+adapter-R",
    ),
    Case(
        "scenario-absurd-memory-with-adapter",
        "scenario run split-digits -s memory-999+adapter-5 --backbone random",
        "more memory tokens per layer than the 65 tokens",
    ),
    Case("scenario-protocol", "scenario run split-digits -s memory --protocol bogus", "Invalid value", code=2),
    Case("scenario-epochs-0", "scenario run split-digits -s memory --epochs 0", "Invalid value", code=2),
    Case("scenario-class-order", "scenario run split-digits -s memory --class-order a,b", "comma-separated", code=2),
    Case("scenario-missing-folder", "scenario run folder:{in}/missing -s memory --backbone random", "does not exist"),
    Case("scenario-unknown-torchvision", "scenario run torchvision:NOPE -s memory --backbone random", "NOPE"),
    Case(
        "scenario-device",
        "scenario run split-digits -s memory --backbone random --device tpu",
        "device 'tpu' is not a device",
    ),
    Case("scenario-limit-0", "scenario run split-digits -s memory --limit-per-class 0", "Invalid value", code=2),
    Case("compare-unknown", "scenario compare nosuch --backbone random", "unknown scenario 'nosuch'"),
    Case(
        "compare-bad-strategy", "scenario compare split-digits --strategies bogus --backbone random", "unknown strategy"
    ),
    Case("compare-bad-adapter", "scenario compare split-digits --strategies adapter-x --backbone random", "adapter-R"),
    Case("compare-memory-sizes", "scenario compare split-digits --memory-sizes a", "comma-separated", code=2),
    Case("compare-jobs-0", "scenario compare split-digits --jobs 0", "Invalid value", code=2),
    Case("runs-option", "scenario runs --bogus", "No such option", code=2),
    Case("results-seeds", "scenario results --seeds a", "comma-separated", code=2),
]
