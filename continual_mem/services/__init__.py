"""The composition layer: where the task store and the core meet (what the CLI and the server call).

The core knows no store and the store knows no torch; these functions move weights between them:
backbones are rebuilt from their stored safetensors weights (checked against the recorded
fingerprint, `backbones`), adapters are trained into new versions (`training`; several at once, and sweeps, in `together`), deployed versions
are loaded once into one model that answers all of them (`inference`), and versions are evaluated
on labelled data (`evaluation`). No click, no web framework, no Avalanche here.
"""

from .backbones import (
    BUILTIN_BACKBONES,
    Provenance,
    add_backbone,
    add_demo_backbone,
    load_backbone,
    one_off_backbone,
    pretrain_and_add_backbone,
    resolve_backbone,
)
from .baselines import head_only_accuracy, head_only_for_request
from .evaluation import evaluate_version
from .inference import LoadedTasks, Prediction, deployed_refs, load_image_files, load_versions, predict
from .together import Options, RunReport, Variant, check_cache_gb, sweep, sweep_variants, train_together
from .training import TrainRequest, load_task_data, train_version

__all__ = [
    "BUILTIN_BACKBONES",
    "LoadedTasks",
    "Options",
    "Prediction",
    "Provenance",
    "RunReport",
    "TrainRequest",
    "Variant",
    "add_backbone",
    "add_demo_backbone",
    "check_cache_gb",
    "deployed_refs",
    "evaluate_version",
    "head_only_accuracy",
    "head_only_for_request",
    "load_backbone",
    "load_image_files",
    "load_task_data",
    "load_versions",
    "one_off_backbone",
    "predict",
    "pretrain_and_add_backbone",
    "resolve_backbone",
    "sweep",
    "sweep_variants",
    "train_together",
    "train_version",
]
