"""Model: MobileSAM (kornia), checkpoint download/verification, LoRA, SAM and instance heads, adapters.

Public API: :class:`ModelConfig`, :class:`LoraConfig`, :func:`build_model` → :class:`NucleiSam`,
:func:`save_adapter`, :func:`load_adapter`, :func:`download_checkpoint`.
"""

from nucleisam.model.adapter import adapter_train_mpp, load_adapter, read_adapter_metadata, save_adapter
from nucleisam.model.checkpoint import (
    CHECKPOINT_SHA256,
    CHECKPOINT_URL,
    default_checkpoint_path,
    download_checkpoint,
)
from nucleisam.model.lora import LoraConfig
from nucleisam.model.network import HEADS, MODES, ModelConfig, NucleiSam, build_model

__all__ = [
    "CHECKPOINT_SHA256",
    "CHECKPOINT_URL",
    "HEADS",
    "MODES",
    "LoraConfig",
    "ModelConfig",
    "NucleiSam",
    "adapter_train_mpp",
    "build_model",
    "default_checkpoint_path",
    "download_checkpoint",
    "load_adapter",
    "read_adapter_metadata",
    "save_adapter",
]
