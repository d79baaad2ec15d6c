"""Model: MobileSAM (kornia), checkpoint download/verification, LoRA, SAM and instance heads, adapters.

Public API: :func:`build_model` (from a :class:`nucleisam.config.ModelConfig`) → :class:`NucleiSam`,
:func:`save_adapter`, :func:`load_adapter`, :func:`download_checkpoint`.
"""

from nucleisam.model.adapter import (
    adapter_model_config,
    adapter_postprocess,
    adapter_train_mpp,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from nucleisam.model.checkpoint import (
    CHECKPOINT_SHA256,
    CHECKPOINT_URL,
    default_checkpoint_path,
    download_checkpoint,
)
from nucleisam.model.network import NucleiSam, build_model

__all__ = [
    "CHECKPOINT_SHA256",
    "CHECKPOINT_URL",
    "NucleiSam",
    "adapter_model_config",
    "adapter_postprocess",
    "adapter_train_mpp",
    "build_model",
    "default_checkpoint_path",
    "download_checkpoint",
    "load_adapter",
    "read_adapter_metadata",
    "save_adapter",
]
