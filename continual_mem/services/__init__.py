"""The composition layer: where the task store and the core meet (what the CLI and the server call).

The core knows no store and the store knows no torch; these functions move weights between them:
backbones are rebuilt from their stored safetensors weights (checked against the recorded
fingerprint, `backbones`), adapters are trained into new versions (`training`), deployed versions
are loaded once into one model that answers all of them (`inference`), and versions are evaluated
on labelled data (`evaluation`). No click, no web framework, no Avalanche here.
"""

from .backbones import (
    BUILTIN_BACKBONES,
    Provenance,
    add_backbone,
    load_backbone,
    one_off_backbone,
    pretrain_and_add_backbone,
    resolve_backbone,
)
from .evaluation import evaluate_version
from .inference import LoadedTasks, Prediction, deployed_refs, load_image_files, load_versions, predict
from .training import TrainRequest, load_task_data, train_version

__all__ = [
    "BUILTIN_BACKBONES",
    "LoadedTasks",
    "Prediction",
    "Provenance",
    "TrainRequest",
    "add_backbone",
    "deployed_refs",
    "evaluate_version",
    "load_backbone",
    "load_image_files",
    "load_task_data",
    "load_versions",
    "one_off_backbone",
    "predict",
    "pretrain_and_add_backbone",
    "resolve_backbone",
    "train_version",
]
