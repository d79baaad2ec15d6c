"""The classical baseline as a cross-validated method (``nucleisam baseline``): no model at all.

Per fold, the parameters of :func:`~nucleisam.classical.classical_instances` are tuned on the fold's
validation images with :func:`~nucleisam.classical.tune_classical` (the search the model's runs use
for their classical row); the training images are not used, since the method learns nothing. The
run goes through the same runner (:func:`nucleisam.experiments.cv.run_cv`) and writes the same
folder as ``nucleisam cv``, without ``adapter.safetensors``, ``history.csv`` and ``curves.png``.
Nothing on this path imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucleisam.classical import classical_instances, tune_classical
from nucleisam.config import BaselineConfig, to_dict
from nucleisam.data.datasets import Sample
from nucleisam.experiments.method import FitInfo, FoldSplit, OneProcess, load_tile, mean_scores
from nucleisam.experiments.runs import Log

METHOD = "classical"


class ClassicalMethod:
    """Hematoxylin threshold + distance-peak watershed, its parameters tuned per fold
    (:class:`~nucleisam.experiments.method.Method`)."""

    primary = METHOD
    batch_size = 1
    history_file = None

    def __init__(self, config: BaselineConfig) -> None:
        self.config = config
        self.select_metric: str = config.select_metric
        self.processes = OneProcess()
        self.params = config.classical

    def check(self) -> None:
        """No weights, no device: nothing to check beyond the configuration."""

    def fit(self, split: FoldSplit, directory: Path, *, resume: bool, log: Log) -> FitInfo:
        """Nothing to learn: each fold starts from ``config.classical``."""
        self.params = self.config.classical
        return FitInfo()

    def tune(self, val: Sequence[Sample], *, log: Log) -> dict[str, Any]:
        tiles = [load_tile(sample) for sample in val]
        tuning = tune_classical(tiles, config=self.config.classical, metric=self.select_metric)
        self.params = tuning.config
        log(
            f"parameters tuned on {len(val)} validation images: mean {tuning.metric} "
            f"{tuning.start_score:.4f} → {tuning.score:.4f}"
        )
        return {
            "select_metric": tuning.metric,
            "val_default": tuning.start_score,
            "val_tuned": mean_scores(
                (tile.labels, classical_instances(tile.image, self.params), tile.vague) for tile in tiles
            ),
            "classical_params": to_dict(self.params),
        }

    def segment_all(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{METHOD: classical_instances(image, self.params)} for image in images]

    def save(self, directory: Path) -> None:
        """Nothing beyond ``metrics.json``, which records the tuned parameters."""
