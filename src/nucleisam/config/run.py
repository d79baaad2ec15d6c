"""The root of a training / cross-validation run's configuration: one section per stage.

A run is fully described by one :class:`Config`: defaults, updated from a YAML/TOML file
(``--config``), values of dedicated CLI options and ``--set section.key=value`` overrides (see
:mod:`nucleisam.config.core`). The resolved tree is saved as ``config.yaml`` in the run folder, so
``--config <run>/config.yaml`` repeats a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nucleisam.config.classical import ClassicalConfig
from nucleisam.config.core import load_config
from nucleisam.config.data import DataConfig
from nucleisam.config.model import ModelConfig
from nucleisam.config.postprocess import PostprocessConfig
from nucleisam.config.train import TrainConfig


@dataclass(frozen=True)
class Config:
    """Everything a run needs, one section per stage (the YAML keys of ``configs/default.yaml``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


def load_run_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> Config:
    """The run configuration: defaults, then the file ``path`` (YAML/TOML), then ``values`` (dotted
    key → value from CLI options), then ``--set`` overrides."""
    return load_config(Config, path, overrides, values)


@dataclass(frozen=True)
class BaselineConfig:
    """What a classical-method run computes from: the data and its folds, the parameters each fold
    starts its search from, and the validation metric the search maximises (its ``config.yaml``)."""

    data: DataConfig = field(default_factory=DataConfig)
    classical: ClassicalConfig = field(default_factory=ClassicalConfig)
    select_metric: Literal["aji", "aji_plus", "pq", "dice"] = "aji"


def load_baseline_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> BaselineConfig:
    """Defaults, then the file ``path`` (e.g. a run's ``config.yaml``), then ``values`` (dotted key →
    value from CLI options), then ``--set`` overrides."""
    return load_config(BaselineConfig, path, overrides, values)
