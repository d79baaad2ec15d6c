"""Typed configuration, readable and checkable without torch: one mechanism, one dataclass tree.

:mod:`~nucleisam.config.core` is the mechanism (files, ``--set`` overrides, strict conversion of
nested dicts to dataclasses and back); one module per section holds its dataclass, its range checks
(errors name the dotted key, e.g. ``model.lora.rank``) and the constants they need. The stages
(``nucleisam.data``, ``.model``, ``.postprocess``, ``.classical``, ``.train``) take their options
from here; a run's root is :class:`Config`, saved as the run folder's ``config.yaml``.
"""

from nucleisam.config.classical import ClassicalConfig
from nucleisam.config.core import (
    CONFIG_SUFFIXES,
    ConfigError,
    apply_overrides,
    assign,
    dump_config,
    from_dict,
    load_config,
    parse_override,
    read_config_file,
    require,
    save_config,
    to_dict,
)
from nucleisam.config.data import NUINSSEG_MPP, PLAUSIBLE_MPP, DataConfig
from nucleisam.config.model import (
    BLOCK_TARGETS,
    DEFAULT_WIDTHS,
    ENCODER_STRIDE,
    HEADS,
    KNOWN_TARGETS,
    MIN_INPUT_SIZE,
    MODES,
    NUM_ATTENTION_BLOCKS,
    SEED_LORA,
    LoraConfig,
    ModelConfig,
    check_input_size,
)
from nucleisam.config.postprocess import PostprocessConfig
from nucleisam.config.run import BaselineConfig, Config, load_baseline_config, load_run_config
from nucleisam.config.train import LossConfig, TrainConfig

__all__ = [
    "BLOCK_TARGETS",
    "CONFIG_SUFFIXES",
    "DEFAULT_WIDTHS",
    "ENCODER_STRIDE",
    "HEADS",
    "KNOWN_TARGETS",
    "MIN_INPUT_SIZE",
    "MODES",
    "NUINSSEG_MPP",
    "NUM_ATTENTION_BLOCKS",
    "PLAUSIBLE_MPP",
    "SEED_LORA",
    "BaselineConfig",
    "ClassicalConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LoraConfig",
    "LossConfig",
    "ModelConfig",
    "PostprocessConfig",
    "TrainConfig",
    "apply_overrides",
    "assign",
    "check_input_size",
    "dump_config",
    "from_dict",
    "load_baseline_config",
    "load_config",
    "load_run_config",
    "parse_override",
    "read_config_file",
    "require",
    "save_config",
    "to_dict",
]
